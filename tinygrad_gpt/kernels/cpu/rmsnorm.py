"""RMSNorm over the last axis, forward and backward, as Numba kernels (one pass over each row).

Same names, signatures and results as `kernels.reference.rmsnorm_forward/backward`; float32 and
float64, the input dtype kept throughout (accumulators included); `weight` may be None (no gain,
as the model's QK-norm uses it), then the kernels skip the gain and backward returns dweight None.
Serial, as layer norm: a call at the `cpu` preset is tens of microseconds (see `_common.py`).

Follows: Zhang & Sennrich 2019, "Root Mean Square Layer Normalization"; llm.c's layernorm kernels
(forward caches rstd, backward recomputes xhat from it). Does not: normalise over any axis but the
last, or accept a weight of another dtype than x (those calls, and float16, go to the reference).

Dimension legend: N rows, C channels.
"""
import math

import numpy as np

from tinygrad_gpt.kernels import reference
from tinygrad_gpt.kernels.cpu._common import common_float_dtype, kernel


@kernel()
def _rmsnorm_forward(x, weight, has_weight, eps, out, rstd):
    N, C = x.shape
    dt = x.dtype.type
    n_c = dt(C)
    for i in range(N):
        ss = dt(0.0)
        for c in range(C):
            ss += x[i, c] * x[i, c]                                # forward 1
        r = dt(1.0) / math.sqrt(ss / n_c + eps)                    # forward 2
        if has_weight:
            for c in range(C):
                out[i, c] = (x[i, c] * r) * weight[c]              # forward 3-4
        else:
            for c in range(C):
                out[i, c] = x[i, c] * r                            # forward 3
        rstd[i] = r


@kernel()
def _rmsnorm_backward(dout, x, weight, has_weight, rstd, dx, dweight):
    N, C = x.shape
    dt = x.dtype.type
    n_c = dt(C)
    if has_weight:
        for c in range(C):
            dweight[c] = dt(0.0)
    for i in range(N):
        r = rstd[i]
        # forward 4: out = xhat * weight, so dweight += dout * xhat and dxhat = dout * weight;
        # also the row mean the dx formula needs
        s = dt(0.0)
        for c in range(C):
            xhat = x[i, c] * r
            g = dout[i, c]
            if has_weight:
                dweight[c] += g * xhat
                g = g * weight[c]
            s += g * xhat
        m = s / n_c
        # forward 1-3: dx = rstd * (dxhat - xhat * mean(dxhat * xhat))
        for c in range(C):
            g = dout[i, c] * weight[c] if has_weight else dout[i, c]
            dx[i, c] = r * (g - x[i, c] * r * m)


def rmsnorm_forward(x, weight, eps=1e-5):
    """out = x * rstd * weight, rstd = 1 / sqrt(mean(x^2) + eps), per row. x (N, C); weight (C,),
    or None for no gain (out = x * rstd). Returns out, rstd."""
    has_weight = weight is not None
    dtype = common_float_dtype(x, weight) if has_weight else common_float_dtype(x)
    if dtype is None or x.ndim != 2 or (has_weight and weight.shape != x.shape[1:]):
        return reference.rmsnorm_forward(x, weight, eps)
    N, C = x.shape
    out = np.empty((N, C), dtype=dtype)                            # (N, C)
    rstd = np.empty(N, dtype=dtype)                                # (N,)
    w = np.ascontiguousarray(weight) if has_weight else np.empty(0, dtype=dtype)  # (C,) or unread
    _rmsnorm_forward(np.ascontiguousarray(x), w, has_weight, dtype.type(eps), out, rstd)
    return out, rstd


def rmsnorm_backward(dout, x, weight, rstd):
    """Gradients of rmsnorm_forward: dx (N, C), and dweight (C,) (None when weight is None)."""
    has_weight = weight is not None
    dtype = common_float_dtype(dout, x, rstd, *((weight,) if has_weight else ()))
    if dtype is None or x.ndim != 2 or dout.shape != x.shape or rstd.shape != x.shape[:1] \
            or (has_weight and weight.shape != x.shape[1:]):
        return reference.rmsnorm_backward(dout, x, weight, rstd)
    N, C = x.shape
    dx = np.empty((N, C), dtype=dtype)                             # (N, C)
    dweight = np.empty(C if has_weight else 0, dtype=dtype)        # (C,) or unwritten
    w = np.ascontiguousarray(weight) if has_weight else dweight
    _rmsnorm_backward(np.ascontiguousarray(dout), np.ascontiguousarray(x), w, has_weight,
                      np.ascontiguousarray(rstd), dx, dweight)
    return dx, (dweight if has_weight else None)
