"""Rotary position embedding, forward and backward, as one CUDA kernel (CuPy RawModule).

Same names, signatures and results as `kernels.reference.rotary_forward/backward`; x of any shape
(..., T, hs) with an even hs, flattened to (M, T, hs) (a contiguous copy if needed); float32 and
float64. One grid-stride loop, a thread per channel pair: two reads of x, two of the (T, hs/2)
tables (small, cached), two writes. Backward is the same kernel with the sines negated (the
transpose of a rotation is the rotation by -theta).

Follows: Su et al. 2021, "RoFormer"; GPT-NeoX (the halves layout). Does not: compute the angle
tables (ops/attention.py does), or rotate part of a head only.

Dimension legend: M leading axes taken together (B * nh), T time, hs head size, h = hs / 2.
"""
import cupy

from tinygrad_gpt.kernels import reference
from tinygrad_gpt.kernels.cuda._common import THREADS, common_float_dtype, ctype, get_kernel, grid_for

SOURCE = r"""
// pair p = (m * T + t) * h + i rotates x[m, t, i] and x[m, t, i + h] by theta[t, i] (sign -1: by -theta)
template <typename T>
__global__ void rotary_kernel(const T* __restrict__ x, const T* __restrict__ cos_t, const T* __restrict__ sin_t,
                              T* __restrict__ out, long long pairs, int seq, int h, T sign) {
    for (long long p = (long long)blockIdx.x * blockDim.x + threadIdx.x; p < pairs;
         p += (long long)gridDim.x * blockDim.x) {
        const int i = (int)(p % h);
        const long long row = p / h;                                  // m * T + t
        const int t = (int)(row % seq);
        const T c = cos_t[(long long)t * h + i];
        const T s = sign * sin_t[(long long)t * h + i];
        const long long base = row * 2 * h;
        const T a = x[base + i];
        const T b = x[base + i + h];
        out[base + i] = a * c - b * s;                                // forward 1
        out[base + i + h] = a * s + b * c;                            // forward 2
    }
}
"""

NAME_EXPRESSIONS = [f"rotary_kernel<{t}>" for t in ("float", "double")]


def _rotate(x, cos, sin, sign):
    """x rotated by the tables' angles (sign 1) or by their negatives (sign -1); None if the kernel
    does not take these arrays (the caller then runs the reference)."""
    dtype = common_float_dtype(x, cos, sin)
    if dtype is None:
        return None
    h = reference._rotary_shapes(x, cos, sin)                      # ValueError naming the shapes
    out = cupy.empty(x.shape, dtype=dtype)                         # (..., T, hs)
    pairs = x.size // 2
    if pairs:
        get_kernel(SOURCE, NAME_EXPRESSIONS, f"rotary_kernel<{ctype(dtype)}>")(
            grid_for(pairs), (THREADS,),
            (cupy.ascontiguousarray(x), cupy.ascontiguousarray(cos), cupy.ascontiguousarray(sin), out,
             cupy.int64(pairs), cupy.int32(x.shape[-2]), cupy.int32(h), dtype.type(sign)))
    return out


def rotary_forward(x, cos, sin):
    """Rotate each channel pair (i, i + hs/2) of x (..., T, hs) at row t by theta[t, i] (tables
    cos, sin (T, hs/2)); see the reference for the equations. Returns out, x's shape."""
    out = _rotate(x, cos, sin, 1.0)
    return reference.rotary_forward(x, cos, sin) if out is None else out


def rotary_backward(dout, cos, sin):
    """dx of rotary_forward: the transposed rotation, which is the rotation by -theta."""
    # forward 1-2: dx = R(theta)^T dout = R(-theta) dout, so the same kernel with -sin
    dx = _rotate(dout, cos, sin, -1.0)
    return reference.rotary_backward(dout, cos, sin) if dx is None else dx
