"""Dropout as a CUDA kernel (CuPy RawModule): the keep mask is computed per element, not drawn.

Same names, signatures and results as `kernels.reference.dropout_forward/backward`, bit for bit:
element i (C order) is kept iff the high 32 bits of splitmix64(seed + (i + 1) * golden) are at
least p * 2^32, and a kept element is scaled by 1 / (1 - p). The backward pass recomputes the mask
from (seed, i): one read and one write per element each way, no mask array, no generator state.

subtle: this replaces `cupy.random.default_rng(seed).random(...) >= p`, which on every call
allocated and initialised a cuRAND XORWOW generator (256,000 states by default, curand_init per
state with its own subsequence, documented as the slow part of cuRAND's device API), wrote a
float32 array of uniforms, compared it, and kept the mask for backward: about four passes and a
state initialisation per dropout, thirteen dropouts a step at the gpu preset.

Follows: the counter-based dropout of PyTorch's fused kernels (Philox there, splitmix64 here).
Does not: fuse the residual add that follows, or handle float16 (the reference runs).

Dimension legend: n elements (any shape, flattened).
"""
import cupy

from tinygrad_gpt.kernels import reference
from tinygrad_gpt.kernels.cuda._common import THREADS, common_float_dtype, ctype, get_kernel, grid_for

SOURCE = r"""
template <typename T>
__global__ void dropout_kernel(const T* __restrict__ x, T* __restrict__ out, long long n,
                               unsigned long long seed, unsigned long long threshold, T scale) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        // splitmix64 of seed + (i + 1) * golden, mod 2^64 (tinygrad_gpt/kernels/reference.py dropout_keep)
        unsigned long long z = seed + (unsigned long long)(i + 1) * 0x9E3779B97F4A7C15ULL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
        z = z ^ (z >> 31);
        out[i] = ((z >> 32) >= threshold) ? x[i] * scale : T(0);   // keep iff hash >= p 2^32
    }
}
"""

NAME_EXPRESSIONS = ["dropout_kernel<float>", "dropout_kernel<double>"]


def dropout_forward(x, p, seed):
    """out = x * keep / (1 - p), keep[i] = hash(seed, i) >= p (i the C-order index). Any shape."""
    dtype = common_float_dtype(x)
    if dtype is None:
        return reference.dropout_forward(x, p, seed)
    out = cupy.empty(x.shape, dtype=dtype)                         # x.shape
    if x.size:
        get_kernel(SOURCE, NAME_EXPRESSIONS, f"dropout_kernel<{ctype(dtype)}>")(
            grid_for(x.size), (THREADS,),
            (cupy.ascontiguousarray(x), out, cupy.int64(x.size), cupy.uint64(int(seed) % 2 ** 64),
             cupy.uint64(reference._dropout_threshold(p)), dtype.type(1.0 / (1.0 - p))))
    return out


def dropout_backward(dout, p, seed):
    """dx of dropout_forward (the mask recomputed from seed): dx = dout * keep / (1 - p)."""
    return dropout_forward(dout, p, seed)                          # the same map, applied to dout
