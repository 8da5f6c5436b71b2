"""Fused kernels, one dispatch: `kernels.for_array(x)` gives the module whose functions run on x.

- numpy arrays  -> `kernels.cpu` (Numba, a hard dependency of the package);
- cupy arrays   -> `kernels.cuda` (CuPy RawKernels) when it is importable, else the reference;
- the environment variable TINYGRAD_GPT_KERNELS=reference (or 0/off) forces the NumPy references
  everywhere, so an A/B comparison is always one flag away; =fused (or unset, 1/on) keeps the fast
  kernels. Any other value (a typo such as `refrence`) raises a ValueError listing the accepted
  values at the first kernel call, rather than silently running the fused kernels.
  `set_backend("reference")` does the same from Python (the tests use it).
- NUMBA_DISABLE_JIT=1 (Numba's debugging switch) turns the fused kernels off, with one warning:
  the Numba kernels use intrinsics (atomics, vector exps) that only exist compiled. Everything
  then runs on the references, which is what the switch is for: stepping through Python.

Every module has the same names and signatures as `tinygrad_gpt/kernels/reference.py`. Plain arrays
in, plain arrays out: this package never imports the engine. It lives inside tinygrad_gpt so that no
top-level name clashes with another distribution's (Hugging Face's `kernels`, which transformers 5
installs, is one).
"""
import os
import warnings

from tinygrad_gpt.kernels import reference

_OFF_VALUES = ("reference", "ref", "numpy", "0", "off", "false", "no")
_ON_VALUES = ("fused", "numba", "1", "on", "true", "yes", "")
_forced = None  # None: follow the environment; "reference" or "fused": set by set_backend
_jit_disabled = None  # numba.config.DISABLE_JIT, read once
_cpu = None
_cuda = None


def set_backend(name):
    """"reference" forces the NumPy references, "fused" the fast kernels, None follows the env."""
    global _forced
    if name not in (None, "reference", "fused"):
        raise ValueError(f"set_backend: expected None, 'reference' or 'fused', got {name!r}")
    _forced = name


def _switch():
    """"fused" or "reference": set_backend's choice, else TINYGRAD_GPT_KERNELS (checked)."""
    if _forced is not None:
        return _forced
    value = os.environ.get("TINYGRAD_GPT_KERNELS", "fused").strip().lower()
    if value in _OFF_VALUES:
        return "reference"
    if value in _ON_VALUES:
        return "fused"
    raise ValueError(f"TINYGRAD_GPT_KERNELS={os.environ['TINYGRAD_GPT_KERNELS']!r} is not a known value: "
                     f"use 'reference' (also {', '.join(_OFF_VALUES[1:])}) or 'fused' (the default; "
                     f"also {', '.join(v for v in _ON_VALUES[1:] if v)})")


def numba_jit_disabled():
    """True when Numba's JIT is switched off (NUMBA_DISABLE_JIT=1); warns once when it is."""
    global _jit_disabled
    if _jit_disabled is None:
        import numba
        _jit_disabled = bool(numba.config.DISABLE_JIT)
        if _jit_disabled:
            warnings.warn("NUMBA_DISABLE_JIT=1: the fused kernels need Numba's compiler, so every kernel "
                          "runs its NumPy reference (as with TINYGRAD_GPT_KERNELS=reference)", RuntimeWarning,
                          stacklevel=3)
    return _jit_disabled


def fused_enabled():
    """True when the fast kernels run: the switch asks for them and Numba's JIT is on."""
    return _switch() == "fused" and not numba_jit_disabled()


def _complete(module):
    """`module` if it provides every kernel in reference.KERNELS, else the reference."""
    missing = [name for name in reference.KERNELS if not hasattr(module, name)]
    return reference if missing else module


def cpu_kernels_cached(module):
    """False when no Numba kernel of `module`'s files has an on-disk cache entry yet (a first run on
    this machine or cache folder: each kernel compiles at its first call, seconds each), True when
    some have, None when that cannot be told (Numba's cache layout is not what this reads)."""
    import sys
    indexes = []
    for name, mod in list(sys.modules.items()):
        if not name.startswith(module.__name__ + ".") or mod is None:
            continue
        for fn in vars(mod).values():
            cache = getattr(fn, "_cache", None)
            index = getattr(getattr(cache, "_cache_file", None), "_index_path", None)
            if isinstance(index, str):
                indexes.append(index)
    if not indexes:
        return None
    return any(os.path.exists(index) for index in indexes)


def _load_cpu():
    global _cpu
    if _cpu is None:
        from tinygrad_gpt.kernels import cpu as module
        if cpu_kernels_cached(module) is False:  # the first steps of a run are slow for this reason
            import sys
            print("tinygrad_gpt: compiling the fused CPU kernels with Numba (first use on this machine: each "
                  "compiles at its first call, a few seconds, and is cached for later runs)", file=sys.stderr)
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
    if reference.is_cupy_array(x):
        return _load_cuda()
    return _load_cpu()
