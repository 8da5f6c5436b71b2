"""Softmax + cross-entropy, fused, as Numba kernels: one pass over the logits for the loss, one for
dlogits; no one-hot and no probabilities are ever stored.

Large logits: every exp and the loss work on the row minus its max, so the magnitude cancels
before anything is rounded (loss = log sum exp(x - max) - (x[target] - max)). The backward
recomputes the softmax as exp(x - max) / sum exp(x - max) instead of exp(x - lse): lse = max +
log sum is rounded at the logits' magnitude (in float32 at |x| ~ 1e6 a step of 0.0625), and
exp(x - lse) would carry that error into every probability (1-3% there). The lse argument keeps
the signature that reference and CUDA share; this kernel does not need it.

Same names, signatures and results as `kernels.reference.softmax_cross_entropy_forward/backward`:
targets equal to `ignore_index` give loss 0 and a zero dlogits row; other negative targets count
from the end (as NumPy indexing does) and targets outside [-V, V) raise IndexError, as the
reference does. float32 uses the vectorisable `exp_f32` of `_common.py`; float64 uses libm.
Serial (a call is tens of microseconds at the `cpu` preset; see `_common.py` on threads).

Follows: llm.c `crossentropy_softmax_backward` (dlogits = dloss * (p - onehot) in one sweep).
Does not: average the losses (the op does that, and hands each row its share as dlosses), apply
label smoothing, or handle float16 (that goes to the NumPy reference).

Dimension legend: N rows (B*T), V vocabulary.
"""
import math

import numpy as np

from tinygrad_gpt.kernels import reference
from tinygrad_gpt.kernels.cpu._common import as_index_array, common_float_dtype, fast_exp, kernel, row_max


@kernel()
def _ce_forward(logits, targets, ignore_index, losses, lse):
    """Fills losses and lse; returns -1, or the position of the first bad target (then stops)."""
    N, V = logits.shape
    dt = logits.dtype.type
    for i in range(N):
        t = targets[i]
        if t != ignore_index and (t < -V or t >= V):
            return i
        rowmax = row_max(logits, i, V)
        s = dt(0.0)
        for j in range(V):
            s += fast_exp(logits[i, j] - rowmax)
        log_s = math.log(s)                                        # the lse of the shifted row
        lse[i] = rowmax + log_s                                    # lse = max + log sum exp(x - max)
        if t == ignore_index:
            losses[i] = dt(0.0)
        else:
            if t < 0:
                t += V
            # loss = lse - logits[t] = log_s - (logits[t] - max): the max cancels before rounding
            losses[i] = log_s - (logits[i, t] - rowmax)
    return -1


@kernel()
def _ce_backward(dlosses, logits, lse, targets, ignore_index, dlogits):
    """Fills dlogits; returns -1, or the position of the first bad target (then stops)."""
    N, V = logits.shape
    dt = logits.dtype.type
    for i in range(N):
        t = targets[i]
        if t == ignore_index:
            for j in range(V):
                dlogits[i, j] = dt(0.0)
            continue
        if t < -V or t >= V:
            return i
        if t < 0:
            t += V
        # forward: loss = lse - logits[t], so dlogits = dloss * (softmax(logits) - onehot(t)),
        # softmax = exp(x - max) / sum exp(x - max), recomputed (see the module docstring)
        d = dlosses[i]
        rowmax = row_max(logits, i, V)
        s = dt(0.0)
        for j in range(V):
            e = fast_exp(logits[i, j] - rowmax)
            dlogits[i, j] = e
            s += e
        scale = d / s
        for j in range(V):
            dlogits[i, j] *= scale
        dlogits[i, t] -= d
    return -1


def _raise_bad_target(targets, bad, V, ignore_index, fn):
    raise IndexError(f"{fn}: targets[{bad}] = {targets[bad]} is outside [0, {V}) and is not "
                     f"ignore_index ({ignore_index})")


def softmax_cross_entropy_forward(logits, targets, ignore_index=-100):
    """Per-row loss = lse(logits) - logits[target]; 0 where target == ignore_index.

    logits (N, V), targets (N,) integers. Returns losses (N,) and lse (N,) (row log-sum-exp).
    """
    dtype = common_float_dtype(logits)
    if dtype is None or logits.ndim != 2 or np.shape(targets) != logits.shape[:1] \
            or logits.shape[1] == 0:
        return reference.softmax_cross_entropy_forward(logits, targets, ignore_index)
    targets = as_index_array(targets, "targets", "softmax_cross_entropy_forward")  # (N,)
    N, V = logits.shape
    losses = np.empty(N, dtype=dtype)                              # (N,)
    lse = np.empty(N, dtype=dtype)                                 # (N,)
    bad = _ce_forward(np.ascontiguousarray(logits), targets, ignore_index, losses, lse)
    if bad >= 0:
        _raise_bad_target(targets, bad, V, ignore_index, "softmax_cross_entropy_forward")
    return losses, lse


def softmax_cross_entropy_backward(dlosses, logits, lse, targets, ignore_index=-100):
    """dlogits (N, V) = dloss * (softmax(logits) - onehot(target)); zero rows where ignored."""
    dtype = common_float_dtype(logits, lse)
    if dtype is None or logits.ndim != 2 or np.shape(targets) != logits.shape[:1] \
            or lse.shape != logits.shape[:1]:
        return reference.softmax_cross_entropy_backward(dlosses, logits, lse, targets,
                                                        ignore_index)
    targets = as_index_array(targets, "targets", "softmax_cross_entropy_backward")  # (N,)
    N, V = logits.shape
    # like the reference, dlosses is cast to the logits dtype (and may be a broadcastable scalar)
    if not (isinstance(dlosses, np.ndarray) and dlosses.dtype == dtype and dlosses.shape == (N,)):
        dlosses = np.broadcast_to(np.asarray(dlosses, dtype=dtype), (N,))  # (N,)
    dlogits = np.empty((N, V), dtype=dtype)                        # (N, V)
    bad = _ce_backward(np.ascontiguousarray(dlosses), np.ascontiguousarray(logits),
                       np.ascontiguousarray(lse), targets, ignore_index, dlogits)
    if bad >= 0:
        _raise_bad_target(targets, bad, V, ignore_index, "softmax_cross_entropy_backward")
    return dlogits
