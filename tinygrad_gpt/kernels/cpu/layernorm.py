"""Layer norm over the last axis, forward and backward, as Numba kernels (one pass over each row).

Same names, signatures and results as `kernels.reference.layernorm_forward/backward`; float32 and
float64, the input dtype kept throughout (accumulators included). Serial: at the `cpu` preset a
call is ~30 us, less than what waking threads can cost (see tinygrad_gpt/kernels/cpu/_common.py).

Follows: llm.c `layernorm_forward` / `layernorm_backward` (forward caches mean and rstd, backward
recomputes xhat from them). Does not: normalise over any axis but the last, or accept weights of a
different dtype than x (those calls, and float16, go to the NumPy reference).

Dimension legend: N rows, C channels.
"""
import math

import numpy as np
from tinygrad_gpt.kernels import reference
from tinygrad_gpt.kernels.cpu._common import common_float_dtype, kernel

@kernel()
def _layernorm_forward(x, weight, bias, eps, out, mean, rstd):
    N, C = x.shape
    dt = x.dtype.type
    n_c = dt(C)
    for i in range(N):
        s = dt(0.0)
        for c in range(C):
            s += x[i, c]
        mu = s / n_c                                               # forward 1
        ss = dt(0.0)
        for c in range(C):
            d = x[i, c] - mu                                       # forward 2
            ss += d * d
        r = dt(1.0) / math.sqrt(ss / n_c + eps)                    # forward 3-4
        for c in range(C):
            out[i, c] = (x[i, c] - mu) * r * weight[c] + bias[c]   # forward 5-6
        mean[i] = mu
        rstd[i] = r


@kernel()
def _layernorm_backward(dout, x, weight, mean, rstd, dx, dweight, dbias):
    N, C = x.shape
    dt = x.dtype.type
    n_c = dt(C)
    for c in range(C):
        dweight[c] = dt(0.0)
        dbias[c] = dt(0.0)
    for i in range(N):
        mu = mean[i]
        r = rstd[i]
        # forward 6: out = xhat * weight + bias, so dbias += dout, dweight += dout * xhat,
        # dxhat = dout * weight; also the two row means the dx formula needs
        s_dxhat = dt(0.0)
        s_dxhat_xhat = dt(0.0)
        for c in range(C):
            xhat = (x[i, c] - mu) * r
            g = dout[i, c]
            dxhat = g * weight[c]
            dbias[c] += g
            dweight[c] += g * xhat
            s_dxhat += dxhat
            s_dxhat_xhat += dxhat * xhat
        m1 = s_dxhat / n_c
        m2 = s_dxhat_xhat / n_c
        # forward 1-5: dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
        for c in range(C):
            xhat = (x[i, c] - mu) * r
            dx[i, c] = r * (dout[i, c] * weight[c] - m1 - xhat * m2)


def layernorm_forward(x, weight, bias, eps=1e-5):
    """out = (x - mean) * rstd * weight + bias, per row. x (N, C); returns out, mean, rstd."""
    dtype = common_float_dtype(x, weight, bias)
    if dtype is None or x.ndim != 2:
        return reference.layernorm_forward(x, weight, bias, eps)
    x = np.ascontiguousarray(x)
    N, C = x.shape
    out = np.empty((N, C), dtype=dtype)                            # (N, C)
    mean = np.empty(N, dtype=dtype)                                # (N,)
    rstd = np.empty(N, dtype=dtype)                                # (N,)
    _layernorm_forward(x, np.ascontiguousarray(weight), np.ascontiguousarray(bias),
                       dtype.type(eps), out, mean, rstd)
    return out, mean, rstd


def layernorm_backward(dout, x, weight, mean, rstd):
    """Gradients of layernorm_forward: dx (N, C), dweight (C,), dbias (C,)."""
    dtype = common_float_dtype(dout, x, weight, mean, rstd)
    if dtype is None or x.ndim != 2 or dout.shape != x.shape:
        return reference.layernorm_backward(dout, x, weight, mean, rstd)
    N, C = x.shape
    dx = np.empty((N, C), dtype=dtype)                             # (N, C)
    dweight = np.empty(C, dtype=dtype)                             # (C,)
    dbias = np.empty(C, dtype=dtype)                               # (C,)
    _layernorm_backward(np.ascontiguousarray(dout), np.ascontiguousarray(x),
                        np.ascontiguousarray(weight), np.ascontiguousarray(mean),
                        np.ascontiguousarray(rstd), dx, dweight, dbias)
    return dx, dweight, dbias
