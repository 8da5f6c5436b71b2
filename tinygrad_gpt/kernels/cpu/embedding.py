"""Embedding backward as a Numba kernel: scatter-add the rows of dout into the rows of dweight.

Same name, signature and result as `kernels.reference.embedding_backward`; repeated indices
accumulate, in the order they appear (as `np.add.at` does, so float64 results match it exactly).
Negative indices count from the end, indices outside [-V, V) raise IndexError, as in NumPy.

Follows: llm.c `encoder_backward`. Does not: run in parallel (at N = 768, C = 128 the sequential
loop is ~20 us, below the cost of waking the threads, and rows that repeat an index would need
partitioning by index), or handle float16 (that goes to the NumPy reference).

Dimension legend: N rows (B*T), C channels, V rows of the table (num_embeddings).
"""
import numpy as np

from tinygrad_gpt.kernels import reference
from tinygrad_gpt.kernels.cpu._common import as_index_array, common_float_dtype, kernel


@kernel()
def _embedding_backward(dout, idx, dweight):
    """dweight[idx[n]] += dout[n] for n in order; returns -1, or the position of a bad index."""
    N, C = dout.shape
    V = dweight.shape[0]
    for n in range(N):
        row = idx[n]
        if row < -V or row >= V:
            return n
        if row < 0:
            row += V
        for c in range(C):
            dweight[row, c] += dout[n, c]
    return -1


def embedding_backward(dout, idx, num_embeddings):
    """dweight (V, C) with dweight[idx[n]] += dout[n]. dout (N, C), idx (N,) integers."""
    dtype = common_float_dtype(dout)
    if dtype is None or dout.ndim != 2 or np.shape(idx) != dout.shape[:1]:
        return reference.embedding_backward(dout, idx, num_embeddings)
    idx = as_index_array(idx, "idx", "embedding_backward")        # (N,)
    dweight = np.zeros((num_embeddings, dout.shape[1]), dtype=dtype)  # (V, C)
    bad = _embedding_backward(np.ascontiguousarray(dout), idx, dweight)
    if bad >= 0:
        raise IndexError(f"embedding_backward: idx[{bad}] = {idx[bad]} is outside "
                         f"[0, {num_embeddings}) (num_embeddings)")
    return dweight
