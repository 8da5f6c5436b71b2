"""Dropout as a Numba kernel: the keep mask is computed, not drawn and stored.

Same names, signatures and results as `kernels.reference.dropout_forward/backward`, bit for bit:
element i (C order) is kept iff the high 32 bits of splitmix64(seed + (i + 1) * golden) are at
least p * 2^32, and a kept element is scaled by 1 / (1 - p). The backward pass recomputes the same
mask from (seed, i), so no mask array is kept between forward and backward. Serial, one pass.

Follows: the counter-based dropout of PyTorch's fused kernels (Philox there, splitmix64 here: a
64-bit hash is enough for a Bernoulli mask and is three multiplies). Does not: handle float16
(the reference runs), or fuse the residual add that follows.

Dimension legend: n elements (any shape, flattened).
"""
import numpy as np

from tinygrad_gpt.kernels import reference
from tinygrad_gpt.kernels.cpu._common import common_float_dtype, kernel

_GAMMA = np.uint64(reference.DROPOUT_GAMMA)
_MIX1 = np.uint64(reference.DROPOUT_MIX1)
_MIX2 = np.uint64(reference.DROPOUT_MIX2)


@kernel()
def _dropout(x, out, seed, threshold, scale):
    # subtle: every integer here is uint64 (a uint64 mixed with an int64 becomes a float in Numba)
    s30, s27, s31, s32 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(32)
    zero = x.dtype.type(0)
    z = seed
    for i in range(x.size):
        z += _GAMMA                                                # seed + (i + 1) * gamma, mod 2^64
        h = (z ^ (z >> s30)) * _MIX1
        h = (h ^ (h >> s27)) * _MIX2
        h = h ^ (h >> s31)
        out[i] = x[i] * scale if (h >> s32) >= threshold else zero  # keep iff hash >= p 2^32


def dropout_forward(x, p, seed):
    """out = x * keep / (1 - p), keep[i] = hash(seed, i) >= p (i the C-order index). Any shape."""
    if common_float_dtype(x) is None:
        return reference.dropout_forward(x, p, seed)
    flat = np.ascontiguousarray(x).reshape(-1)                     # (n,)
    out = np.empty(flat.shape, dtype=x.dtype)                      # (n,)
    _dropout(flat, out, np.uint64(int(seed) % 2 ** 64), np.uint64(reference._dropout_threshold(p)),
             x.dtype.type(1.0 / (1.0 - p)))
    return out.reshape(x.shape)


def dropout_backward(dout, p, seed):
    """dx of dropout_forward (the mask recomputed from seed): dx = dout * keep / (1 - p)."""
    return dropout_forward(dout, p, seed)                          # the same map, applied to dout
