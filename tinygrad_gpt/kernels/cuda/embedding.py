"""Embedding backward as a CUDA kernel: scatter-add the rows of dout into the rows of dweight.

Same name, signature and result as `kernels.reference.embedding_backward` (up to the order of
float additions for repeated ids). One thread per element of dout, `atomicAdd` into dweight (zeroed
first): ids repeat (a character vocabulary of 65 rows gets ~250 rows of dout each at B*T = 16384),
and atomics are the simplest correct way to sum them. The order of those additions is whatever
the hardware picks, so float32 results can differ from run to run in the last bits.

Negative ids count from the end, as in NumPy. Ids outside [-V, V) are skipped (no write outside
the table); TINYGRAD_GPT_CUDA_CHECKS=1 raises the reference's IndexError instead (one sync).

Follows: llm.c `encoder_backward` (atomicAdd version). Does not: sort the ids to make the sums
deterministic (llm.c's later bucketed kernel), or handle float16 (that goes to the reference).

Dimension legend: N rows (B*T), C channels, V rows of the table (num_embeddings).
"""
import cupy

from tinygrad_gpt.kernels import reference
from tinygrad_gpt.kernels.cuda._common import (THREADS, as_index_array, checks_enabled, common_float_dtype,
                                  ctype, first_bad_index, get_kernel, grid_for)

SOURCE = r"""
template <typename T>
__global__ void embedding_backward_kernel(const T* __restrict__ dout, const long long* __restrict__ idx,
                                          T* __restrict__ dweight, long long N, int C, long long V) {
    const long long total = N * C;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (long long)gridDim.x * blockDim.x) {
        const long long n = e / C;
        const int c = (int)(e - n * C);
        long long row = idx[n];
        if (row < 0) row += V;                  // negative ids count from the end, as in NumPy
        if (row < 0 || row >= V) continue;      // out of range: skipped (checked on the host on request)
        // forward: out[n] = weight[idx[n]], so dweight[idx[n]] += dout[n]
        atomicAdd(dweight + row * C + c, dout[e]);
    }
}
"""

NAME_EXPRESSIONS = ["embedding_backward_kernel<float>", "embedding_backward_kernel<double>"]


def embedding_backward(dout, idx, num_embeddings):
    """dweight (V, C) with dweight[idx[n]] += dout[n]. dout (N, C), idx (N,) integers."""
    dtype = common_float_dtype(dout)
    if dtype is None or dout.ndim != 2 or getattr(idx, "shape", None) != dout.shape[:1] \
            or getattr(idx, "dtype", None) is None or idx.dtype.kind not in "iu":
        return reference.embedding_backward(dout, idx, num_embeddings)
    N, C = dout.shape
    V = int(num_embeddings)
    idx = as_index_array(idx, N)                                   # (N,) int64
    if checks_enabled():
        bad = first_bad_index(idx, -V, V)
        if bad >= 0:
            raise IndexError(f"embedding_backward: idx[{bad}] = {int(idx[bad])} is outside "
                             f"[0, {V}) (num_embeddings)")
    dweight = cupy.zeros((V, C), dtype=dtype)                      # (V, C)
    if N * C:
        get_kernel(SOURCE, NAME_EXPRESSIONS, f"embedding_backward_kernel<{ctype(dtype)}>")(
            grid_for(N * C), (THREADS,),
            (cupy.ascontiguousarray(dout), idx, dweight, cupy.int64(N), cupy.int32(C), cupy.int64(V)))
    return dweight
