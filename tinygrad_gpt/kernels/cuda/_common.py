"""Shared pieces of the CuPy kernels: the CUDA C preamble, lazy compilation, launch helpers.

Every kernel file in this package holds its CUDA C in one module-level string `SOURCE` (templated
on the element type `T`, instantiated for float and double) and the list `NAME_EXPRESSIONS` of the
instantiations it uses. `module(SOURCE, NAME_EXPRESSIONS)` compiles `PREAMBLE + SOURCE` with NVRTC
the first time each kernel instantiation is launched (not at import: `import kernels.cuda` works, and
fails only with ImportError, on a machine without a GPU), and CuPy caches the binary on disk.
tests/cuda/test_cuda_compile.py compiles the same strings with NVRTC on machines without a GPU, reading
them with `ast`, so `PREAMBLE` and `SOURCE` must stay plain string literals (no f-strings, no
concatenation), and `NAME_EXPRESSIONS` an expression over the file's literal constants.

dtype policy: float32 and float64 run in their own dtype (accumulators included), like
tinygrad_gpt/kernels/cpu. Anything else (float16, mixed dtypes, shapes the reference broadcasts) is handed to
the NumPy/CuPy reference (`tinygrad_gpt/kernels/reference.py` is array-module generic), so a call here never
gives a different answer than the reference would, only a slower one.

Index checks: the reference raises IndexError for out-of-range targets / ids, which on a GPU costs
a device-to-host copy (a sync) per call. The kernels instead give NaN losses for bad targets and
skip bad embedding ids; set TINYGRAD_GPT_CUDA_CHECKS=1 to get the reference's IndexError (one sync
per call, for debugging).

Follows: llm.c `dev/cuda/common.h` (warp reductions, ceil_div). Does not: pick tile sizes by
autotuning, use tensor cores (matmuls go to cuBLAS through CuPy), or support more than one GPU.
"""
import functools
import os

import cupy  # noqa: F401  (ImportError here is what tells tinygrad_gpt/kernels/__init__.py to use the reference)
import numpy as np

# Compiler options. --std=c++14 for templates with default arguments; no --use_fast_math: expf,
# logf and tanhf keep their documented accuracy (a few ulp), which the float32 tolerances of the
# tests (1e-5 relative, norm-wise) assume.
OPTIONS = ("--std=c++14",)

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

# Math overloads so a template body can call k_exp(x) for T = float or double; warp reductions.
# subtle: no #include at all - NVRTC has the CUDA math functions built in but finds no headers
# unless told where they are, and a header-free source compiles the same on every machine.
PREAMBLE = r"""
__device__ __forceinline__ float  k_exp(float x)  { return expf(x); }
__device__ __forceinline__ double k_exp(double x) { return exp(x); }
__device__ __forceinline__ float  k_log(float x)  { return logf(x); }
__device__ __forceinline__ double k_log(double x) { return log(x); }
__device__ __forceinline__ float  k_sqrt(float x)  { return sqrtf(x); }
__device__ __forceinline__ double k_sqrt(double x) { return sqrt(x); }
__device__ __forceinline__ float  k_tanh(float x)  { return tanhf(x); }
__device__ __forceinline__ double k_tanh(double x) { return tanh(x); }
__device__ __forceinline__ float  k_max(float a, float b)   { return fmaxf(a, b); }
__device__ __forceinline__ double k_max(double a, double b) { return fmax(a, b); }

template <typename T> __device__ __forceinline__ T k_neg_inf();
template <> __device__ __forceinline__ float k_neg_inf<float>() { return -__int_as_float(0x7f800000); }
template <> __device__ __forceinline__ double k_neg_inf<double>() {
    return -__longlong_as_double(0x7ff0000000000000LL);
}
template <typename T> __device__ __forceinline__ T k_nan();
template <> __device__ __forceinline__ float k_nan<float>() { return __int_as_float(0x7fffffff); }
template <> __device__ __forceinline__ double k_nan<double>() {
    return __longlong_as_double(0x7fffffffffffffffLL);
}

// sum over the 32 lanes of a warp; every lane gets the result
template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
    #pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

template <typename T>
__device__ __forceinline__ T warp_max(T v) {
    #pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v = k_max(v, __shfl_xor_sync(0xffffffffu, v, offset));
    return v;
}
"""

THREADS = 256  # threads per block for the elementwise and row kernels


def ceil_div(a, b):
    return (a + b - 1) // b


@functools.lru_cache(maxsize=None)
def _raw_module(source, name_expressions):
    return cupy.RawModule(code=PREAMBLE + source, options=OPTIONS, name_expressions=name_expressions)


def get_kernel(source, name_expressions, name):
    """The compiled kernel `name` (one of name_expressions) of a SOURCE string; compiled once.

    Each instantiation is compiled on its own (the other templates of the source cost nothing),
    so the first call of a kernel waits for one instantiation, not for all of them.
    """
    if name not in name_expressions:
        raise KeyError(f"{name} is not one of the instantiations {list(name_expressions)}")
    return _raw_module(source, (name,)).get_function(name)


def ctype(dtype):
    """The C type name of a float dtype, for picking a template instantiation."""
    return "float" if np.dtype(dtype) == np.float32 else "double"


def common_float_dtype(*arrays):
    """The shared dtype if every array is a cupy float32 or float64 array of that one dtype, else None."""
    if not all(isinstance(a, cupy.ndarray) for a in arrays):
        return None
    dtypes = {np.dtype(a.dtype) for a in arrays}
    if len(dtypes) != 1:
        return None
    dtype = dtypes.pop()
    return dtype if dtype in FLOAT_DTYPES else None


def elementwise(kernel_of, reference_fn, arrays, scalars=()):
    """One grid-stride launch of kernel_of(dtype), whose arguments are the inputs, out, n and then
    `scalars` (cast to the dtype), over same-shape float32 / float64 cupy arrays of any shape
    (contiguous copies where they are not); reference_fn(*arrays) for anything else. The wrapper of
    every one-pass elementwise kernel."""
    dtype = common_float_dtype(*arrays)
    if dtype is None or any(a.shape != arrays[0].shape for a in arrays):
        return reference_fn(*arrays)
    out = cupy.empty(arrays[0].shape, dtype=dtype)                 # the inputs' shape
    if out.size:
        kernel_of(dtype)(grid_for(out.size), (THREADS,),
                         (*(cupy.ascontiguousarray(a) for a in arrays), out, cupy.int64(out.size),
                          *(dtype.type(v) for v in scalars)))
    return out


def checks_enabled():
    """TINYGRAD_GPT_CUDA_CHECKS=1: raise the reference's IndexError (costs a sync per call)."""
    return os.environ.get("TINYGRAD_GPT_CUDA_CHECKS", "0").strip().lower() in ("1", "true", "yes", "on")


def as_index_array(idx, n):
    """idx as a contiguous int64 cupy array of shape (n,) (ids from numpy are uploaded)."""
    idx = cupy.ascontiguousarray(cupy.asarray(idx, dtype=cupy.int64))
    if idx.shape != (n,):
        raise ValueError(f"expected {n} integer ids, got shape {idx.shape}")
    return idx


def first_bad_index(idx, low, high, ignore=None):
    """Position of the first entry of idx outside [low, high) (and != ignore), or -1. Syncs."""
    bad = (idx < low) | (idx >= high)
    if ignore is not None:
        bad &= idx != ignore
    if not bool(bad.any()):
        return -1
    return int(cupy.argmax(bad))


def grid_for(n, threads=THREADS, max_blocks=65536):
    """A 1-D grid for a grid-stride loop over n elements."""
    return (max(1, min(ceil_div(n, threads), max_blocks)),)
