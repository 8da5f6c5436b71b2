"""ReLU squared, forward and backward, as CUDA kernels (CuPy RawModule).

Same names, signatures and results as `kernels.reference.relu2_forward/backward`; any shape (the
wrapper flattens a contiguous copy), float32 and float64. One grid-stride loop each: one read (two
in backward) and one write per element, where the CuPy composition makes two passes each way. NaN
propagates as cupy.maximum's does (the select keeps x unless x <= 0).

Follows: the GELU kernels of this folder. Does not: fuse the preceding matmul.

Dimension legend: n elements (any shape, flattened).
"""
import cupy

from tinygrad_gpt.kernels import reference
from tinygrad_gpt.kernels.cuda._common import THREADS, common_float_dtype, ctype, get_kernel, grid_for

SOURCE = r"""
template <typename T>
__global__ void relu2_forward_kernel(const T* __restrict__ x, T* __restrict__ out, long long n) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const T xi = x[i];
        const T r = xi <= T(0) ? T(0) : xi;                             // forward 1: max(x, 0)
        out[i] = r * r;                                                 // forward 2
    }
}

template <typename T>
__global__ void relu2_backward_kernel(const T* __restrict__ dout, const T* __restrict__ x,
                                      T* __restrict__ dx, long long n) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const T xi = x[i];
        const T r = xi <= T(0) ? T(0) : xi;                             // recompute forward 1
        dx[i] = T(2) * r * dout[i];                                     // forward 2: out = r^2
    }
}
"""

NAME_EXPRESSIONS = [f"{kernel}<{t}>" for t in ("float", "double")
                    for kernel in ("relu2_forward_kernel", "relu2_backward_kernel")]


def _kernel(name, dtype):
    return get_kernel(SOURCE, NAME_EXPRESSIONS, f"{name}<{ctype(dtype)}>")


def relu2_forward(x):
    """out = max(x, 0)^2. Any shape."""
    dtype = common_float_dtype(x)
    if dtype is None:
        return reference.relu2_forward(x)
    out = cupy.empty(x.shape, dtype=dtype)                         # x.shape
    if x.size:
        _kernel("relu2_forward_kernel", dtype)(
            grid_for(x.size), (THREADS,), (cupy.ascontiguousarray(x), out, cupy.int64(x.size)))
    return out


def relu2_backward(dout, x):
    """dx of relu2_forward: 2 max(x, 0) dout."""
    dtype = common_float_dtype(dout, x)
    if dtype is None or dout.shape != x.shape:
        return reference.relu2_backward(dout, x)
    dx = cupy.empty(x.shape, dtype=dtype)                          # x.shape
    if x.size:
        _kernel("relu2_backward_kernel", dtype)(
            grid_for(x.size), (THREADS,),
            (cupy.ascontiguousarray(dout), cupy.ascontiguousarray(x), dx, cupy.int64(x.size)))
    return dx
