"""The readable NumPy specification of every fused kernel: plain arrays in, plain arrays out.

Each function here is what `tinygrad_gpt/kernels/cpu/` (Numba) and `tinygrad_gpt/kernels/cuda/` (CuPy) implement faster,
with the same name and signature; tests and benchmarks check those against these. The code is
array-module generic (`xp` is numpy or cupy, taken from the inputs), so the same reference runs on
both devices when kernels are switched off (TINYGRAD_GPT_KERNELS=reference).

Follows: llm.c's `doc/layernorm/layernorm.py` and `dev/cuda` references (forward caches, backward
recomputes); FlashAttention (keep only the row log-sum-exp of the attention softmax, recompute the
probabilities in backward). Does not: import tinygrad_gpt, allocate anything it does not return.

Dimension legend: N rows, C channels, V vocabulary, B batch, nh heads, T time (queries), L keys,
hs head size, M any leading axes taken together.
"""
import importlib
import math

import numpy as np

# the names every kernel module (cpu/, cuda/) must provide, with these signatures
KERNELS = (
    "layernorm_forward", "layernorm_backward", "rmsnorm_forward", "rmsnorm_backward",
    "rotary_forward", "rotary_backward", "gelu_forward", "gelu_backward", "relu2_forward", "relu2_backward",
    "softmax_cross_entropy_forward", "softmax_cross_entropy_backward",
    "attention_forward", "attention_backward", "embedding_backward", "adamw_update",
    "dropout_forward", "dropout_backward", "muon_momentum", "muon_apply",
)


def is_cupy_array(x):
    """Whether x is a cupy array, asked without importing cupy on CPU-only machines: the package
    that defines x's type is "cupy" (or "cupy_emulated", the CPU stand-in of cuda_emulator). The
    one test of the project: kernels' dispatch and the engine's backend both ask it."""
    return type(x).__module__.startswith("cupy")


def get_array_module(x):
    """numpy for numpy arrays (and scalars), cupy for cupy arrays (the stand-in's module for its own)."""
    if is_cupy_array(x):
        return importlib.import_module(type(x).__module__.split(".")[0])
    return np


# ------------------------------------------------------------------------------------------------
# layer norm over the last axis
# ------------------------------------------------------------------------------------------------
def layernorm_forward(x, weight, bias, eps=1e-5):
    """out = (x - mean) * rstd * weight + bias, per row. x (N, C); returns out, mean, rstd."""
    xp = get_array_module(x)
    mean = x.mean(axis=1)                                          # (N,)      1
    xc = x - mean[:, None]                                         # (N, C)    2
    var = (xc * xc).mean(axis=1)                                   # (N,)      3
    rstd = 1.0 / xp.sqrt(var + x.dtype.type(eps))                  # (N,)      4
    xhat = xc * rstd[:, None]                                      # (N, C)    5
    out = xhat * weight + bias                                     # (N, C)    6
    return out, mean, rstd.astype(x.dtype, copy=False)


def layernorm_backward(dout, x, weight, mean, rstd):
    """Gradients of layernorm_forward: dx (N, C), dweight (C,), dbias (C,)."""
    xhat = (x - mean[:, None]) * rstd[:, None]                     # (N, C)  recompute line 5
    # forward 6: out = xhat * weight + bias
    dbias = dout.sum(axis=0)                                       # (C,)
    dweight = (dout * xhat).sum(axis=0)                            # (C,)
    dxhat = dout * weight                                          # (N, C)
    # forward 1-5: xhat = (x - mean) * rstd with mean and rstd functions of x; the standard result
    # dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
    dx = rstd[:, None] * (dxhat - dxhat.mean(axis=1, keepdims=True)
                          - xhat * (dxhat * xhat).mean(axis=1, keepdims=True))  # (N, C)
    return dx, dweight, dbias


# ------------------------------------------------------------------------------------------------
# RMSNorm over the last axis: layer norm without the mean, and a gain without a bias
# ------------------------------------------------------------------------------------------------
def rmsnorm_forward(x, weight, eps=1e-5):
    """out = x * rstd * weight, rstd = 1 / sqrt(mean(x^2) + eps), per row. x (N, C); weight (C,),
    or None for no gain (out = x * rstd). Returns out, rstd."""
    xp = get_array_module(x)
    ms = (x * x).mean(axis=1)                                      # (N,)      1
    rstd = 1.0 / xp.sqrt(ms + x.dtype.type(eps))                   # (N,)      2
    xhat = x * rstd[:, None]                                       # (N, C)    3
    out = xhat if weight is None else xhat * weight                # (N, C)    4
    return out, rstd.astype(x.dtype, copy=False)


def rmsnorm_backward(dout, x, weight, rstd):
    """Gradients of rmsnorm_forward: dx (N, C), and dweight (C,) (None when weight is None)."""
    xhat = x * rstd[:, None]                                       # (N, C)  recompute line 3
    # forward 4: out = xhat * weight, so dweight = sum_n dout * xhat and dxhat = dout * weight
    dweight = None if weight is None else (dout * xhat).sum(axis=0)  # (C,)
    dxhat = dout if weight is None else dout * weight              # (N, C)
    # forward 1-3: xhat_j = x_j * rstd with d rstd / d x_i = -rstd^3 x_i / C, so
    # dx_i = rstd * dxhat_i - rstd^3 x_i / C * sum_j dxhat_j x_j = rstd * (dxhat_i - xhat_i * mean(dxhat * xhat))
    # (layer norm's formula without its mean(dxhat) term: there is no mean to subtract)
    dx = rstd[:, None] * (dxhat - xhat * (dxhat * xhat).mean(axis=1, keepdims=True))  # (N, C)
    return dx, dweight


# ------------------------------------------------------------------------------------------------
# rotary position embedding: rotate pairs of channels by a position-dependent angle
# ------------------------------------------------------------------------------------------------
def _rotary_shapes(x, cos, sin):
    """hs // 2 for x (..., T, hs) and tables cos, sin (T, hs // 2); ValueError naming the shapes
    otherwise. Private: the shape rule the cpu and cuda rotary wrappers share."""
    if x.ndim < 2 or x.shape[-1] % 2:
        raise ValueError(f"rotary: x must be (..., T, hs) with an even head size hs, got shape {x.shape}")
    half = x.shape[-1] // 2
    if cos.shape != (x.shape[-2], half) or sin.shape != cos.shape:
        raise ValueError(f"rotary: cos and sin must be (T, hs // 2) = {(x.shape[-2], half)} for x {x.shape}, "
                         f"got {cos.shape} and {sin.shape}")
    return half


def rotary_forward(x, cos, sin):
    """Rotate each channel pair (i, i + hs/2) of x (..., T, hs) at row t by the angle theta[t, i]
    whose cosine and sine the tables cos, sin (T, hs/2) hold (the halves layout of GPT-NeoX and
    Llama; RoFormer pairs neighbours instead, the same rotation in another channel order):

        out[..., t, i]        = x[..., t, i] cos[t, i] - x[..., t, i + hs/2] sin[t, i]     1
        out[..., t, i + hs/2] = x[..., t, i] sin[t, i] + x[..., t, i + hs/2] cos[t, i]     2

    Returns out, x's shape (contiguous).
    """
    xp = get_array_module(x)
    h = _rotary_shapes(x, cos, sin)
    x1, x2 = x[..., :h], x[..., h:]                                # (..., T, hs/2) each
    out = xp.empty(x.shape, dtype=x.dtype)                         # (..., T, hs)
    out[..., :h] = x1 * cos - x2 * sin                             # 1
    out[..., h:] = x1 * sin + x2 * cos                             # 2
    return out


def rotary_backward(dout, cos, sin):
    """dx of rotary_forward: the transposed rotation, which is the rotation by -theta."""
    xp = get_array_module(dout)
    h = _rotary_shapes(dout, cos, sin)
    # forward 1-2: (out1, out2) = R (x1, x2) with R = [[cos, -sin], [sin, cos]] per pair, so
    # (dx1, dx2) = R^T (dout1, dout2): dx1 = dout1 cos + dout2 sin, dx2 = -dout1 sin + dout2 cos
    d1, d2 = dout[..., :h], dout[..., h:]                          # (..., T, hs/2) each
    dx = xp.empty(dout.shape, dtype=dout.dtype)                    # (..., T, hs)
    dx[..., :h] = d1 * cos + d2 * sin
    dx[..., h:] = d2 * cos - d1 * sin
    return dx


# ------------------------------------------------------------------------------------------------
# GELU, tanh approximation (GPT-2)
# ------------------------------------------------------------------------------------------------
GELU_SCALE = math.sqrt(2.0 / math.pi)


def gelu_forward(x):
    """out = 0.5 * x * (1 + tanh(s * (x + 0.044715 x^3))), s = sqrt(2/pi). Any shape."""
    xp = get_array_module(x)
    s = x.dtype.type(GELU_SCALE)
    c = x.dtype.type(0.044715)
    u = s * (x + c * x * x * x)                                    # 1
    return x.dtype.type(0.5) * x * (1 + xp.tanh(u))                # 2


def gelu_backward(dout, x):
    """dx of gelu_forward."""
    xp = get_array_module(x)
    s = x.dtype.type(GELU_SCALE)
    c = x.dtype.type(0.044715)
    u = s * (x + c * x * x * x)                                    # recompute 1
    th = xp.tanh(u)
    # forward 2: out = 0.5 x (1 + tanh u), u = s (x + c x^3)
    # dout/dx = 0.5 (1 + th) + 0.5 x (1 - th^2) s (1 + 3 c x^2)
    half = x.dtype.type(0.5)
    local = half * (1 + th) + half * x * (1 - th * th) * s * (1 + 3 * c * x * x)
    return dout * local


# ------------------------------------------------------------------------------------------------
# ReLU squared (the modern GPT's MLP activation)
# ------------------------------------------------------------------------------------------------
def relu2_forward(x):
    """out = max(x, 0)^2. Any shape."""
    xp = get_array_module(x)
    r = xp.maximum(x, x.dtype.type(0))                             # 1
    return r * r                                                   # 2


def relu2_backward(dout, x):
    """dx of relu2_forward: 2 max(x, 0) dout."""
    xp = get_array_module(x)
    # forward 2: out = r^2, so dr = 2 r dout; forward 1: r = max(x, 0), so dx = dr where x > 0, and
    # r = 0 (so dx = 0) elsewhere: the derivative is continuous at 0, no kink to choose at
    dx = dout * xp.maximum(x, x.dtype.type(0))                     # r dout
    dx += dx                                                       # 2 r dout, exact
    return dx


# ------------------------------------------------------------------------------------------------
# softmax + cross-entropy, fused: no one-hot, no stored probabilities
# ------------------------------------------------------------------------------------------------
def softmax_cross_entropy_forward(logits, targets, ignore_index=-100):
    """Per-row loss = lse(logits) - logits[target]; 0 where target == ignore_index.

    logits (N, V), targets (N,) integers. Returns losses (N,) and lse (N,) (row log-sum-exp).
    The loss is computed from the shifted row, log sum exp(x - max) - (x[target] - max), so the
    max cancels before rounding: float32 logits near 1e6 keep the loss exact to float32's ~1e-7
    (lse - x[target] would round lse at 1e6, to 0.0625).
    """
    xp = get_array_module(logits)
    rowmax = logits.max(axis=1)                                    # (N,)
    shifted = logits - rowmax[:, None]                             # (N, V) <= 0
    log_s = xp.log(xp.exp(shifted).sum(axis=1))                    # (N,) lse of the shifted row
    lse = rowmax + log_s                                           # (N,)
    valid = targets != ignore_index                                # (N,)
    safe = xp.where(valid, targets, 0)                             # (N,)
    picked = shifted[xp.arange(logits.shape[0]), safe]             # (N,) x[target] - max
    losses = xp.where(valid, log_s - picked, 0).astype(logits.dtype, copy=False)  # (N,)
    return losses, lse


def softmax_cross_entropy_backward(dlosses, logits, lse, targets, ignore_index=-100):
    """dlogits (N, V) = dloss * (softmax(logits) - onehot(target)); zero rows where ignored.

    The softmax is recomputed from the shifted row, exp(x - max) / sum exp(x - max), rather than
    exp(x - lse): lse is rounded at the logits' magnitude, and at float32 logits near 1e6 that
    error (up to 0.03) would reach every probability. `lse` is kept for the signature the CUDA
    kernel shares (it uses lse); the result is the same wherever lse is exact.
    """
    xp = get_array_module(logits)
    valid = targets != ignore_index                                # (N,)
    scale = xp.where(valid, dlosses, 0).astype(logits.dtype, copy=False)  # (N,)
    e = xp.exp(logits - logits.max(axis=1, keepdims=True))         # (N, V)
    dlogits = e * (scale / e.sum(axis=1))[:, None]                 # (N, V)  softmax * dloss
    rows = xp.arange(logits.shape[0])[valid]
    dlogits[rows, targets[valid]] -= scale[valid]                  # minus onehot * dloss
    return dlogits


# ------------------------------------------------------------------------------------------------
# causal self-attention per (batch, head), flash-style: keep only the row log-sum-exp
# ------------------------------------------------------------------------------------------------
def _attention_shapes(q, k, v, t0):
    """(T, L) of queries q (B, nh, T, hs) at positions t0..t0+T-1 over keys k, v (B, nh, L, hs).

    Keys 0..t0+T-1 are attended; L may be longer (a preallocated cache), the keys past t0+T are
    then ignored. Raises ValueError naming the shapes when they do not fit together. Private: a
    shape rule that the cpu and cuda attention wrappers share, not a kernel they must export.
    """
    if q.ndim < 2 or k.shape != v.shape or k.ndim != q.ndim or q.shape[:-2] != k.shape[:-2] \
            or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"attention: q (..., T, hs) and k, v (..., L, hs) must share their batch, head "
                         f"and head-size axes, got q {q.shape}, k {k.shape}, v {v.shape}")
    T, L = q.shape[-2], k.shape[-2]
    if int(t0) != t0 or t0 < 0 or t0 + T > L:
        raise ValueError(f"attention: query offset t0 = {t0} with {T} queries needs 0 <= t0 and "
                         f"t0 + T <= {L} keys (k {k.shape})")
    return T, L


def _future(xp, T, t0):
    """(T, t0 + T) bool: key j lies after query i's position t0 + i (the causal mask)."""
    return xp.arange(t0 + T)[None, :] > (t0 + xp.arange(T))[:, None]  # (T, W)


def attention_forward(q, k, v, scale, t0=0):
    """out = softmax(mask(q k^T * scale)) v, causal, queries at positions t0..t0+T-1.

    q (B, nh, T, hs); k, v (B, nh, L, hs) with L >= t0 + T: query i sees keys 0..t0+i (t0 = 0 and
    L = T is training's square causal attention; T = 1 at t0 is one decoding step over a cache).
    Returns out (B, nh, T, hs) and lse (B, nh, T), the log-sum-exp of each row of masked scores.
    """
    xp = get_array_module(q)
    T, L = _attention_shapes(q, k, v, t0)
    W = t0 + T                                                     # keys any query sees
    k, v = k[..., :W, :], v[..., :W, :]                            # (B, nh, W, hs)
    scores = (q @ k.swapaxes(-1, -2)) * q.dtype.type(scale)        # (B, nh, T, W)   1
    scores = xp.where(_future(xp, T, t0), -xp.inf, scores)         # (B, nh, T, W)   2
    rowmax = scores.max(axis=-1, keepdims=True)                    # (B, nh, T, 1)
    p = xp.exp(scores - rowmax)                                    # (B, nh, T, W)
    denom = p.sum(axis=-1, keepdims=True)                          # (B, nh, T, 1)
    p = p / denom                                                  # (B, nh, T, W)   3
    out = p @ v                                                    # (B, nh, T, hs)  4
    lse = (rowmax + xp.log(denom))[..., 0]                         # (B, nh, T)
    return out, lse.astype(q.dtype, copy=False)


def attention_backward(dout, q, k, v, out, lse, scale, t0=0):
    """dq (B, nh, T, hs), dk, dv (B, nh, L, hs) of attention_forward, recomputing p from lse.

    Keys past t0 + T were ignored by the forward: their dk and dv are 0.
    """
    xp = get_array_module(q)
    T, L = _attention_shapes(q, k, v, t0)
    W = t0 + T
    kw, vw = k[..., :W, :], v[..., :W, :]                          # (B, nh, W, hs)  forward's first line
    scores = (q @ kw.swapaxes(-1, -2)) * q.dtype.type(scale)       # (B, nh, T, W)  recompute 1
    p = xp.where(_future(xp, T, t0), 0, xp.exp(scores - lse[..., None]))  # (B, nh, T, W)  recompute 2-3
    # forward 4: out = p v, so dp = dout v^T and dv = p^T dout
    dp = dout @ vw.swapaxes(-1, -2)                                # (B, nh, T, W)
    # forward 3: p = softmax(scores) per row, so dscores = p * (dp - sum_j p_j dp_j);
    # sum_j p_j dp_j = sum_j p_j (dout . v_j) = dout . out, one dot product per row
    rowdot = (dout * out).sum(axis=-1, keepdims=True)              # (B, nh, T, 1)
    dscores = p * (dp - rowdot)                                    # (B, nh, T, W)
    # forward 2: masked entries were constants, and p is 0 there, so dscores is 0 there already
    # forward 1: scores = q k^T * scale
    dq = (dscores @ kw) * q.dtype.type(scale)                      # (B, nh, T, hs)
    # forward, first line: only keys [0, W) were read, so the rest get 0
    dvw = p.swapaxes(-1, -2) @ dout                                # (B, nh, W, hs)
    dkw = (dscores.swapaxes(-1, -2) @ q) * q.dtype.type(scale)     # (B, nh, W, hs)
    if W == L:
        return dq, dkw, dvw
    dk = xp.zeros(k.shape, dtype=dkw.dtype)                        # (B, nh, L, hs)
    dv = xp.zeros(k.shape, dtype=dvw.dtype)                        # (B, nh, L, hs)
    dk[..., :W, :] = dkw
    dv[..., :W, :] = dvw
    return dq, dk, dv


# ------------------------------------------------------------------------------------------------
# embedding backward: scatter-add rows of dout into the rows of dweight the indices chose
# ------------------------------------------------------------------------------------------------
def embedding_backward(dout, idx, num_embeddings):
    """dweight (V, C) with dweight[idx[n]] += dout[n]. dout (N, C), idx (N,) integers."""
    xp = get_array_module(dout)
    dweight = xp.zeros((num_embeddings, dout.shape[1]), dtype=dout.dtype)  # (V, C)
    xp.add.at(dweight, idx, dout)
    return dweight


# ------------------------------------------------------------------------------------------------
# dropout with a counter-based mask: element i is kept iff the hash of (seed, i) >> 32 >= p * 2^32
# ------------------------------------------------------------------------------------------------
# splitmix64 (Steele, Lea & Flood, "Fast splittable pseudorandom number generators", 2014): the
# counter i times the golden-ratio increment, plus the seed, through the 64-bit finalizer. Every
# implementation (this, tinygrad_gpt/kernels/cpu, tinygrad_gpt/kernels/cuda) computes the same 64-bit integers, so the masks
# are bit-identical across devices and backends, and the backward pass recomputes the mask from
# (seed, i) instead of storing it.
DROPOUT_GAMMA = 0x9E3779B97F4A7C15
DROPOUT_MIX1 = 0xBF58476D1CE4E5B9
DROPOUT_MIX2 = 0x94D049BB133111EB


def _dropout_threshold(p):
    """The 32-bit threshold on the hash's high half: P(drop) = threshold / 2^32 (p to 2^-32).
    (Used by tinygrad_gpt/kernels/cpu and tinygrad_gpt/kernels/cuda too; private so that every public function here is a
    kernel the backends must provide.)"""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout: p must be in [0, 1), got {p}")
    return min(int(p * 2.0 ** 32), 2 ** 32 - 1)


def _dropout_keep(xp, n, p, seed):
    """Boolean keep mask (n,) for flat indices 0..n-1: hash(seed, i) >> 32 >= _dropout_threshold(p)."""
    u64 = xp.uint64
    z = (xp.arange(1, n + 1, dtype=u64) * u64(DROPOUT_GAMMA)) + u64(int(seed) % 2 ** 64)  # wraps mod 2^64
    z = (z ^ (z >> u64(30))) * u64(DROPOUT_MIX1)
    z = (z ^ (z >> u64(27))) * u64(DROPOUT_MIX2)
    z = z ^ (z >> u64(31))
    return (z >> u64(32)) >= u64(_dropout_threshold(p))


def dropout_forward(x, p, seed):
    """out = x * keep / (1 - p), keep[i] = hash(seed, i) >= p (i the C-order index). Any shape."""
    xp = get_array_module(x)
    keep = _dropout_keep(xp, x.size, p, seed).reshape(x.shape)
    return xp.where(keep, x * x.dtype.type(1.0 / (1.0 - p)), x.dtype.type(0))


def dropout_backward(dout, p, seed):
    """dx of dropout_forward (the mask recomputed from seed): dx = dout * keep / (1 - p)."""
    return dropout_forward(dout, p, seed)


# ------------------------------------------------------------------------------------------------
# AdamW, one pass over a parameter (in place)
# ------------------------------------------------------------------------------------------------
def adamw_update(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step):
    """Decoupled-weight-decay Adam (Loshchilov & Hutter), updating param, m and v in place.

    m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;  mhat = m / (1 - b1^t);  vhat = v / (1 - b2^t)
    param -= lr * (mhat / (sqrt(vhat) + eps) + wd * param)      (t = step, counted from 1)
    """
    xp = get_array_module(param)
    dt = param.dtype.type
    m *= dt(beta1)
    m += dt(1 - beta1) * grad
    v *= dt(beta2)
    v += dt(1 - beta2) * (grad * grad)
    mhat_scale = dt(1.0 / (1 - beta1 ** step))
    vhat_scale = dt(1.0 / (1 - beta2 ** step))
    update = (m * mhat_scale) / (xp.sqrt(v * vhat_scale) + dt(eps)) + dt(weight_decay) * param
    param -= dt(lr) * update


# ------------------------------------------------------------------------------------------------
# Muon: Nesterov momentum before the Newton-Schulz orthogonalisation, the update after it
# ------------------------------------------------------------------------------------------------
def muon_momentum(grad, momentum, beta):
    """Muon's Nesterov momentum: updates `momentum` in place, returns what Newton-Schulz orthogonalises.

    m = beta m + (1 - beta) g;  u = beta m + (1 - beta) g   (the new m: one more momentum step ahead)
    grad and momentum have one shape; u is a new array of it, in momentum's dtype.
    """
    dt = momentum.dtype.type
    momentum *= dt(beta)
    momentum += dt(1 - beta) * grad                                # m = b m + (1 - b) g
    return dt(beta) * momentum + dt(1 - beta) * grad               # u = b m + (1 - b) g


def muon_apply(param, update, lr, scale, weight_decay):
    """Muon's step on `param`, in place: param = param * (1 - lr wd) - lr * scale * update.

    update: the orthogonalised momentum (param's shape); scale: the shape factor
    max(1, fan_out / fan_in) ** 0.5. Both factors are computed in float64 and cast to param's dtype.
    """
    dt = param.dtype.type
    if weight_decay:
        param *= dt(1 - lr * weight_decay)
    param -= dt(lr * scale) * update
