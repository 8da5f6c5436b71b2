"""Fused kernels, one dispatch: `kernels.for_array(x)` gives the module whose functions run on x.

- numpy arrays  -> `kernels.cpu` (Numba, a hard dependency of the package);
- cupy arrays   -> `kernels.cuda` (CuPy RawKernels) when it is importable, else the reference;
- the environment variable TINYGRAD_GPT_KERNELS=reference (or 0/off) forces the NumPy references
  everywhere, so an A/B comparison is always one flag away. `set_backend("reference")` does the
  same from Python (the tests use it).

Every module has the same names and signatures as `tinygrad_gpt/kernels/reference.py`. Plain arrays
in, plain arrays out: this package never imports the engine. It lives inside tinygrad_gpt so that no
top-level name clashes with another distribution's (Hugging Face's `kernels`, which transformers 5
installs, is one).
"""
import os

from tinygrad_gpt.kernels import reference

_OFF_VALUES = {"0", "off", "reference", "ref", "numpy", "false", "no"}
_forced = None  # None: follow the environment; "reference" or "fused": set by set_backend
_cpu = None
_cuda = None


def set_backend(name):
    """"reference" forces the NumPy references, "fused" the fast kernels, None follows the env."""
    global _forced
    if name not in (None, "reference", "fused"):
        raise ValueError(f"set_backend: expected None, 'reference' or 'fused', got {name!r}")
    _forced = name


def fused_enabled():
    if _forced is not None:
        return _forced == "fused"
    return os.environ.get("TINYGRAD_GPT_KERNELS", "fused").strip().lower() not in _OFF_VALUES


def _complete(module):
    """`module` if it provides every kernel in reference.KERNELS, else the reference."""
    missing = [name for name in reference.KERNELS if not hasattr(module, name)]
    return reference if missing else module


def _load_cpu():
    global _cpu
    if _cpu is None:
        from tinygrad_gpt.kernels import cpu as module
        _cpu = _complete(module)
    return _cpu


def _load_cuda():
    global _cuda
    if _cuda is None:
        try:
            from tinygrad_gpt.kernels import cuda as module
        except ImportError:  # cupy missing
            module = reference
        _cuda = _complete(module)
    return _cuda


def for_array(x):
    """The kernel module for the device that array `x` lives on."""
    if not fused_enabled():
        return reference
    if type(x).__module__.startswith("cupy"):
        return _load_cuda()
    return _load_cpu()
