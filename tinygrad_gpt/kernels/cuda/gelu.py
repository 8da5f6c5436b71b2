"""GELU (tanh approximation, GPT-2), forward and backward, as CUDA kernels (CuPy RawModule).

Same names, signatures and results as `kernels.reference.gelu_forward/backward`; any shape (the
wrapper flattens a contiguous copy), float32 and float64. One grid-stride loop each: memory bound,
one read (two in backward) and one write per element, where the naive CuPy composition makes about
ten passes (x*x*x, the sums, tanh, ...), each a read and a write of a temporary.

Follows: llm.c `gelu_forward_kernel` / `gelu_backward_kernel`. Does not: fuse the bias add of the
preceding matmul, or use tanh.approx (accuracy first; the kernel is bandwidth bound anyway).

Dimension legend: n elements (any shape, flattened).
"""
import functools

from tinygrad_gpt.kernels import reference
from tinygrad_gpt.kernels.cuda._common import ctype, elementwise, get_kernel
from tinygrad_gpt.kernels.reference import GELU_SCALE

SOURCE = r"""
template <typename T>
__global__ void gelu_forward_kernel(const T* __restrict__ x, T* __restrict__ out, long long n, T s) {
    const T c = T(0.044715);
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const T xi = x[i];
        const T u = s * (xi + c * xi * xi * xi);                       // forward 1
        out[i] = T(0.5) * xi * (T(1) + k_tanh(u));                      // forward 2
    }
}

template <typename T>
__global__ void gelu_backward_kernel(const T* __restrict__ dout, const T* __restrict__ x,
                                     T* __restrict__ dx, long long n, T s) {
    const T c = T(0.044715);
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const T xi = x[i];
        const T th = k_tanh(s * (xi + c * xi * xi * xi));              // recompute forward 1
        // forward 2: out = 0.5 x (1 + tanh u), u = s (x + c x^3), so
        // dout/dx = 0.5 (1 + th) + 0.5 x (1 - th^2) s (1 + 3 c x^2)
        const T local = T(0.5) * (T(1) + th) + T(0.5) * xi * (T(1) - th * th) * s * (T(1) + T(3) * c * xi * xi);
        dx[i] = dout[i] * local;
    }
}
"""

NAME_EXPRESSIONS = [f"{kernel}<{t}>" for t in ("float", "double")
                    for kernel in ("gelu_forward_kernel", "gelu_backward_kernel")]


def _kernel(name, dtype):
    return get_kernel(SOURCE, NAME_EXPRESSIONS, f"{name}<{ctype(dtype)}>")


def gelu_forward(x):
    """out = 0.5 * x * (1 + tanh(s * (x + 0.044715 x^3))), s = sqrt(2/pi). Any shape."""
    return elementwise(functools.partial(_kernel, "gelu_forward_kernel"), reference.gelu_forward,
                       (x,), (GELU_SCALE,))


def gelu_backward(dout, x):
    """dx of gelu_forward."""
    return elementwise(functools.partial(_kernel, "gelu_backward_kernel"), reference.gelu_backward,
                       (dout, x), (GELU_SCALE,))
