"""ReLU squared, forward and backward, as CUDA kernels (CuPy RawModule).

Same names, signatures and results as `kernels.reference.relu2_forward/backward`; any shape (the
wrapper flattens a contiguous copy), float32 and float64. One grid-stride loop each: one read (two
in backward) and one write per element, where the CuPy composition makes two passes each way. NaN
propagates as cupy.maximum's does (the select keeps x unless x <= 0).

Follows: the GELU kernels of this folder. Does not: fuse the preceding matmul.

Dimension legend: n elements (any shape, flattened).
"""
import functools

from tinygrad_gpt.kernels import reference
from tinygrad_gpt.kernels.cuda._common import ctype, elementwise, get_kernel

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
    return elementwise(functools.partial(_kernel, "relu2_forward_kernel"), reference.relu2_forward,
                       (x,))


def relu2_backward(dout, x):
    """dx of relu2_forward: 2 max(x, 0) dout."""
    return elementwise(functools.partial(_kernel, "relu2_backward_kernel"), reference.relu2_backward,
                       (dout, x))
