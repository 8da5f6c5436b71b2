"""Device -> array module: the one place that knows "cpu" means numpy and "cuda" means cupy.

Everything in tinygrad_gpt asks this file instead of importing numpy or cupy directly, so the
same op code runs on both devices: `get_xp(device)` for a device name, `array_module(arr)` and
`device_of_array(arr)` for an array. cupy is imported lazily, only when a cuda tensor is asked
for, so CPU users never need it installed. (The kernels package, which never imports
tinygrad_gpt, has its own `kernels.reference.get_array_module` and `kernels.for_array`.)

Does not: move data implicitly between devices (an op whose inputs live on different devices is
an error, raised by `Function.apply` in tensor.py), or manage more than one GPU.
"""
import contextlib

import numpy as np

from tinygrad_gpt.kernels import reference

DEVICES = ("cpu", "cuda")

CUDA_INSTALL_HINT = (
    "install the CUDA extra with `pip install -e \".[cuda]\"` (cupy-cuda12x, for CUDA 12) "
    "on a machine with an NVIDIA GPU, or run with --device cpu"
)

_cupy = None


def _import_cupy():
    """Import cupy once and check that a GPU is visible; raise a RuntimeError that says how to fix it."""
    global _cupy
    if _cupy is not None:
        return _cupy
    try:
        import cupy
    except ImportError as exc:
        raise RuntimeError(f"device 'cuda' needs cupy, which is not installed: {CUDA_INSTALL_HINT}") from exc
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # cupy raises CUDARuntimeError without a driver
        raise RuntimeError(f"device 'cuda': cupy is installed but no CUDA GPU/driver is usable ({exc}); "
                           f"{CUDA_INSTALL_HINT}") from exc
    if count < 1:
        raise RuntimeError(f"device 'cuda': cupy found no GPU; {CUDA_INSTALL_HINT}")
    _cupy = cupy
    return cupy


def check_device(device):
    """Return `device` if it names a known device, else raise a ValueError listing the choices."""
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}: expected one of {DEVICES}")
    return device


def get_xp(device):
    """The array module for `device`: numpy for "cpu", cupy for "cuda"."""
    check_device(device)
    return np if device == "cpu" else _import_cupy()


def array_module(arr):
    """The array module `arr` belongs to: numpy for numpy arrays (and scalars), cupy for cupy's
    (kernels.reference.get_array_module: one definition for the engine and the kernels)."""
    return reference.get_array_module(arr)


def device_of_array(arr):
    """"cpu" for a numpy array (or scalar), "cuda" for a cupy array."""
    return "cuda" if reference.is_cupy_array(arr) else "cpu"


def cuda_available():
    """True when cupy imports and sees a GPU; never raises."""
    try:
        _import_cupy()
        return True
    except RuntimeError:
        return False


def to_device(arr, device):
    """Copy `arr` to `device` (no copy if it is already there)."""
    check_device(device)
    if device_of_array(arr) == device:
        return arr
    if device == "cpu":
        return arr.get()  # cupy -> numpy
    return get_xp("cuda").asarray(arr)


def to_numpy(arr):
    """A numpy array for `arr`, copying from the GPU if needed."""
    return arr if isinstance(arr, np.ndarray) else to_device(arr, "cpu")


# ------------------------------------------------------------------------------------------------
# host allocator
# ------------------------------------------------------------------------------------------------
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
_allocator_tuned = False


def tune_host_allocator(mmap_threshold=64 << 20, trim_threshold=256 << 20):
    """Keep freed activation buffers in the process instead of returning them to the OS.

    subtle: glibc serves every allocation above 128 KiB (most activations at the cpu preset) with a
    fresh mmap and unmaps it on free, so each training step page-faults all of its temporaries in
    again; measured: a cpu-preset step went from ~97 to ~60 ms with the thresholds raised. This
    changes the allocator of the whole process (freed memory stays with it up to the thresholds),
    so it is explicit: train.Trainer, rlhf.PPOTrainer and the scripts in examples/ and benchmarks/
    call it; importing tinygrad_gpt does not. glibc only (a no-op elsewhere); TINYGRAD_GPT_MALLOC=default
    keeps the system behaviour. Returns True when the thresholds were set.
    """
    global _allocator_tuned
    import os
    import sys
    setting = os.environ.get("TINYGRAD_GPT_MALLOC", "").strip().lower()
    if setting not in ("", "tuned", "default"):
        raise ValueError(f"TINYGRAD_GPT_MALLOC={os.environ['TINYGRAD_GPT_MALLOC']!r}: expected 'default' (glibc's "
                         f"own thresholds) or 'tuned' (the default: raised thresholds), or unset")
    if _allocator_tuned or setting == "default":
        return _allocator_tuned
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(M_MMAP_THRESHOLD, int(mmap_threshold)) == 1
        ok = libc.mallopt(M_TRIM_THRESHOLD, int(trim_threshold)) == 1 and ok
    except (OSError, AttributeError):  # not glibc (e.g. musl): leave the allocator alone
        return False
    _allocator_tuned = ok
    return ok


_blas_local = None  # numpy's OpenBLAS openblas_set_num_threads_local, or False where there is none


def _blas_thread_setter():
    """openblas_set_num_threads_local of the OpenBLAS numpy is linked to (found among the libraries
    this process has loaded), or None: another BLAS, an OpenBLAS older than 0.3.27, not Linux."""
    global _blas_local
    if _blas_local is None:
        _blas_local = False
        try:
            import ctypes
            with open("/proc/self/maps") as maps:
                paths = sorted({line.split()[-1] for line in maps if "openblas" in line.lower()
                                and line.split()[-1].startswith("/")})
            for path in paths:
                setter = getattr(ctypes.CDLL(path), "openblas_set_num_threads_local", None)
                if setter is not None:
                    setter.restype, setter.argtypes = ctypes.c_int, [ctypes.c_int]
                    _blas_local = setter
                    break
        except OSError:  # no /proc (not Linux) or a library that will not load: leave BLAS alone
            pass
    return _blas_local or None


@contextlib.contextmanager
def blas_single_thread():
    """Inside this block numpy's matrix products run on the calling thread alone (this thread only).

    For threads that each run their own products at once (replicas.py): with BLAS's own threads on
    top they would ask for twice the cores there are. Afterwards this thread follows the process-wide
    setting again (OPENBLAS_NUM_THREADS). A no-op where numpy's BLAS is not an OpenBLAS that can set
    a thread's own count."""
    setter = _blas_thread_setter()
    if setter is None:
        yield
        return
    setter(1)
    try:
        yield
    finally:
        setter(0)  # 0: the process-wide number again
