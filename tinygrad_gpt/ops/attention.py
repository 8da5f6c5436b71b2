"""Causal self-attention as one op: q (B, nh, T, hs), k, v (B, nh, L, hs) -> out (B, nh, T, hs).

The queries sit at positions t0..t0+T-1 and see the keys 0..t0+T-1: t0 = 0 and L = T in training
and scoring; a step of cached generation has its T new queries at t0 = the cache length, over the
cache's keys (L = block_size; the slots past t0 + T are not read). One kernel serves both.

forward, per batch b and head h (tinygrad_gpt/kernels/reference.py writes every line out), W = t0 + T:
  1. scores = q k^T / sqrt(hs)                      (T, W)
  2. scores[t, s] = -inf for s > t0 + t             the causal mask: no peeking at the future
  3. p = softmax(scores) over s                     (T, W)   keep only lse = log sum_s exp(scores)
  4. out = p v                                      (T, hs)
backward, in reverse:
  4. dv = p^T dout,  dp = dout v^T
  3. dscores = p * (dp - rowdot),  rowdot[t] = sum_s p[t, s] dp[t, s] = dout[t] . out[t]
  2. masked entries were constants: p = 0 there, so dscores = 0 there
  1. dq = dscores k / sqrt(hs),  dk = dscores^T q / sqrt(hs)
Only (out, lse) are kept between forward and backward (flash-style): p is recomputed from
q, k and lse, so no (T, W) array outlives the forward.

The packed form (`causal_self_attention_qkv`) takes c_attn's output (B, T, 3C) and, with a KV
cache, appends this call's keys and values to it first. The cached keys of earlier calls are
constants of the op: its gradient reaches this call's qkv only (generation runs under no_grad).

Rotary position embedding (`rotary`, Rotary) rotates each channel pair (i, i + hs/2) of a query
or key at position p by the angle theta[p, i] = p * base^(-2i/hs), so that q_p . k_s depends on
the positions only through p - s (Su et al. 2021). Its backward is the rotation's transpose, the
rotation by -theta. The packed op applies it, and QK-norm (a gain-free RMSNorm of each head's q
and k), between the split and the attention when asked (`rope_base`, `qk_norm`); the keys then go
into the cache rotated, at their own positions, so a cached step sees what the full forward sees.
In backward, dq and dk go back through the rotation, then through the norm.

Follows: Vaswani et al. 2017; FlashAttention (Dao et al. 2022) for what is saved; llm.c
attention_backward; RoFormer and GPT-NeoX (the halves layout of rotary); nanochat (QK-norm
without a gain). Deliberately does not: support padding masks or cross-attention, send gradients
into the keys and values a cache holds from earlier calls, or rotate part of a head only.

Dimension legend: B batch, T queries (new positions), L keys, nh heads, hs head size, C = nh * hs.
"""
import math

import numpy as np

from tinygrad_gpt import kernels
from tinygrad_gpt.backend import array_module
from tinygrad_gpt.ops.elementwise import check_float
from tinygrad_gpt.tensor import Function


def split_heads(qkv, n_head):
    """The packed projection qkv (B, T, 3C) as its q, k, v heads: a (3, B, nh, T, hs) view.

    c_attn's output columns are [q | k | v], each C = nh * hs wide with head h at h*hs..(h+1)*hs
    (GPT-2's layout); `join_heads` is the inverse.
    """
    B, T, C3 = qkv.shape
    if C3 % (3 * n_head):
        raise ValueError(f"attention: qkv width {C3} is not 3 * n_head ({n_head}) * head size")
    hs = C3 // (3 * n_head)
    return qkv.reshape(B, T, 3, n_head, hs).transpose(2, 0, 3, 1, 4)  # (3, B, nh, T, hs) view


def join_heads(q, k, v):
    """q, k, v (B, nh, T, hs) packed back as qkv (B, T, 3C): the inverse of `split_heads`."""
    B, nh, T, hs = q.shape
    qkv = array_module(q).empty((B, T, 3, nh, hs), dtype=q.dtype)  # (B, T, 3, nh, hs)
    qkv[:, :, 0] = q.transpose(0, 2, 1, 3)
    qkv[:, :, 1] = k.transpose(0, 2, 1, 3)
    qkv[:, :, 2] = v.transpose(0, 2, 1, 3)
    return qkv.reshape(B, T, 3 * nh * hs)                          # (B, T, 3C)


_ROTARY_TABLES = {}  # (array module, hs, base, dtype) -> (cos, sin) (n, hs/2) for positions 0..n-1


def rotary_tables(xp, t0, T, hs, base, dtype):
    """cos, sin (T, hs/2) of the rotary angles theta[p, i] = p * base^(-2i/hs) at positions
    p = t0..t0+T-1, as arrays of module xp and `dtype` (views of rows of a cached table).

    The angles are computed in float64 on the host and cast once; the table is kept per (xp, hs,
    base, dtype) and grows to the next power of two >= t0 + T when a later position is asked for,
    so training and every step of cached generation read rows of the same arrays.
    """
    if hs % 2 or hs < 2:
        raise ValueError(f"rotary: the head size must be even, got {hs}")
    if not (math.isfinite(base) and base > 1):
        raise ValueError(f"rotary: base must be a finite number > 1, got {base}")
    key = (xp.__name__, hs, float(base), np.dtype(dtype).str)
    tables = _ROTARY_TABLES.get(key)
    if tables is None or tables[0].shape[0] < t0 + T:
        n = max(64, 1 << (t0 + T - 1).bit_length())               # positions the new table covers
        inv_freq = float(base) ** (-np.arange(0, hs, 2, dtype=np.float64) / hs)  # (hs/2,)
        theta = np.arange(n, dtype=np.float64)[:, None] * inv_freq[None, :]     # (n, hs/2)
        tables = (xp.asarray(np.cos(theta).astype(dtype)), xp.asarray(np.sin(theta).astype(dtype)))
        _ROTARY_TABLES[key] = tables
    return tables[0][t0:t0 + T], tables[1][t0:t0 + T]              # (T, hs/2) each


class Rotary(Function):
    """Rotary position embedding of x (..., T, hs), row t at position t0 + t (the cache offset).

    forward:  out = R(theta) x, per channel pair (i, i + hs/2) at row t (kernels/reference.py):
              out_i = x_i cos - x_{i+hs/2} sin,  out_{i+hs/2} = x_i sin + x_{i+hs/2} cos
    backward: R is orthogonal, so dx = R^T dout = R(-theta) dout (the kernel with -sin)
    """

    @staticmethod
    def forward(ctx, x, t0=0, base=10000.0):
        check_float("rotary", x)
        if x.ndim < 2:
            raise ValueError(f"rotary: x must be (..., T, hs), got shape {x.shape}")
        if int(t0) != t0 or t0 < 0:
            raise ValueError(f"rotary: the position offset t0 must be an integer >= 0, got {t0}")
        ctx.cos, ctx.sin = rotary_tables(array_module(x), int(t0), x.shape[-2], x.shape[-1], base, x.dtype)
        return kernels.for_array(x).rotary_forward(x, ctx.cos, ctx.sin)  # (..., T, hs)

    @staticmethod
    def backward(ctx, dout):
        # forward: out = R(theta) x, so dx = R(theta)^T dout = R(-theta) dout
        return kernels.for_array(dout).rotary_backward(dout, ctx.cos, ctx.sin)  # (..., T, hs)


def rotary(x, t0=0, base=10000.0):
    """q or k (B, nh, T, hs) with rotary position embedding at positions t0..t0+T-1."""
    return Rotary.apply(x, t0=t0, base=base)


class CausalSelfAttentionOp(Function):
    @staticmethod
    def forward(ctx, q, k, v, t0=0):
        if not q.ndim == k.ndim == v.ndim == 4:
            raise ValueError(f"causal_self_attention: q (B, nh, T, hs) and k, v (B, nh, L, hs) must be 4-D, "
                             f"got {q.shape}, {k.shape}, {v.shape}")
        check_float("causal_self_attention", q, k, v)
        # the kernels check that the shapes fit together (one batch, heads, hs; L >= t0 + T)
        scale = 1.0 / math.sqrt(q.shape[-1])
        out, lse = kernels.for_array(q).attention_forward(q, k, v, scale, t0)  # (B, nh, T, hs), (B, nh, T)
        ctx.q, ctx.k, ctx.v, ctx.out, ctx.lse, ctx.scale, ctx.t0 = q, k, v, out, lse, scale, t0
        return out

    @staticmethod
    def backward(ctx, dout):
        # the equations, line by line, are in the module docstring and in tinygrad_gpt/kernels/reference.py
        return kernels.for_array(dout).attention_backward(dout, ctx.q, ctx.k, ctx.v, ctx.out, ctx.lse, ctx.scale,
                                                          ctx.t0)


def causal_self_attention(q, k, v, t0=0):
    """Causal softmax attention of q (B, nh, T, hs) at positions t0.. over k, v Tensors (B, nh, L, hs)."""
    return CausalSelfAttentionOp.apply(q, k, v, t0=t0)


def _queries_keys(qkv, n_head, t0, rope_base, qk_norm, eps):
    """The packed projection qkv (B, T, 3C) as (qk, v, saved): qk (2, B, nh, T, hs) its queries and
    keys after QK-norm and rotary at positions t0.. (each only if asked for), v (B, nh, T, hs) a
    view, and what backward needs: (raw qk, rstd) of the norm, (cos, sin) of the rotation.

        1. q, k, v = split_heads(qkv)
        2. q, k = q * rstd_q, k * rstd_k       if qk_norm: gain-free RMSNorm over hs
        3. q, k = R(theta) q, R(theta) k       if rope_base: the rotation at positions t0..t0+T-1

    QK-norm without a gain, as nanochat's: it adds no parameter (the model keeps GPT-2's parameter
    names, and every gain an optimizer must treat apart is a block norm's), and it commutes with
    the rotation, which keeps each head's length, so "before rotary" and "after" are one model;
    a gain per head channel would not commute with it (the pair (i, i + hs/2) would be scaled
    unequally before turning). What it gives up is a learned temperature: with |q| = |k| = sqrt(hs)
    every score q . k / sqrt(hs) lies in [-sqrt(hs), sqrt(hs)], and within that range only how
    c_attn aligns q and k decides how sharp a head attends.
    """
    xp = array_module(qkv)
    heads = split_heads(qkv, n_head)                               # (3, B, nh, T, hs) view       1
    qk, norm, tables = heads[:2], None, None                       # (2, B, nh, T, hs) view
    hs = qk.shape[-1]
    if qk_norm:
        raw = xp.ascontiguousarray(qk)                             # (2, B, nh, T, hs)
        out, rstd = kernels.for_array(raw).rmsnorm_forward(raw.reshape(-1, hs), None, eps)  # (2BnhT, hs)  2
        qk, norm = out.reshape(raw.shape), (raw, rstd)             # (2, B, nh, T, hs)
    if rope_base is not None:
        tables = rotary_tables(xp, t0, qk.shape[-2], hs, rope_base, qkv.dtype)  # (T, hs/2) each
        qk = kernels.for_array(qkv).rotary_forward(qk, *tables)    # (2, B, nh, T, hs)              3
    return qk, heads[2], (norm, tables)


def _queries_keys_backward(dq, dk, saved):
    """dq, dk (B, nh, T, hs) of the attention back through _queries_keys' lines 3 and 2."""
    norm, tables = saved
    if norm is None and tables is None:
        return dq, dk
    xp = array_module(dq)
    dqk = xp.stack([dq, dk])                                       # (2, B, nh, T, hs)
    k = kernels.for_array(dqk)
    if tables is not None:
        # line 3: qk = R(theta) qk_normed, so dqk_normed = R(-theta) dqk
        dqk = k.rotary_backward(dqk, *tables)                      # (2, B, nh, T, hs)
    if norm is not None:
        # line 2: qk_normed = qk * rstd, the rmsnorm kernel's backward without a gain
        raw, rstd = norm
        hs = raw.shape[-1]
        dqk, _ = k.rmsnorm_backward(dqk.reshape(-1, hs), raw.reshape(-1, hs), None, rstd)  # (2BnhT, hs)
        dqk = dqk.reshape(raw.shape)                               # (2, B, nh, T, hs)
    return dqk[0], dqk[1]


class CausalSelfAttentionQKVOp(Function):
    """The same attention, taking the packed c_attn output: qkv (B, T, 3C) -> y (B, T, C).

    Splitting the heads and merging them again happen inside the op, so the model's graph holds one
    node instead of split + 3 transposes + merge, and backward writes dq, dk, dv straight into one
    (B, T, 3C) gradient. With `cache` (model.KVCache: `.length`, `.append(k, v)`), this call's
    keys and values are appended to it and the queries attend at t0 = the length before.
    rope_base (a number: rotary at that base) and qk_norm (gain-free RMSNorm of q and k, with
    `eps`) transform q and k between the split and the attention (`_queries_keys`); off, the op
    is GPT-2's attention and does nothing more.
    """

    @staticmethod
    def forward(ctx, qkv, n_head, cache=None, rope_base=None, qk_norm=False, eps=1e-5):
        check_float("causal_self_attention_qkv", qkv)
        B, T, C3 = qkv.shape
        xp = array_module(qkv)
        t0 = 0 if cache is None else cache.length                  # the queries' first position
        qk, v, ctx.saved = _queries_keys(qkv, n_head, t0, rope_base, qk_norm, eps)  # (2, B, nh, T, hs), view
        q = xp.ascontiguousarray(qk[0])                            # (B, nh, T, hs)
        if cache is None:
            k = xp.ascontiguousarray(qk[1])                        # (B, nh, T, hs)
            v = xp.ascontiguousarray(v)                            # (B, nh, T, hs)
        else:
            # subtle: the cache's buffers are kept for backward; later appends write only slots
            # past t0 + T, which this call's attention never reads, so they stay valid
            k, v = cache.append(qk[1], v)                          # (B, nh, Tmax, hs) each
        scale = 1.0 / math.sqrt(q.shape[-1])
        out, lse = kernels.for_array(q).attention_forward(q, k, v, scale, t0)  # (B, nh, T, hs), (B, nh, T)
        ctx.q, ctx.k, ctx.v, ctx.out, ctx.lse, ctx.scale, ctx.t0 = q, k, v, out, lse, scale, t0
        return out.transpose(0, 2, 1, 3).reshape(B, T, C3 // 3)   # (B, T, C) merge heads

    @staticmethod
    def backward(ctx, dy):
        xp = array_module(dy)
        B, nh, T, hs = ctx.q.shape
        t0 = ctx.t0
        # forward, last line: y = out merged over heads, so dout = dy split into heads
        dout = xp.ascontiguousarray(dy.reshape(B, T, nh, hs).transpose(0, 2, 1, 3))  # (B, nh, T, hs)
        dq, dk, dv = kernels.for_array(dout).attention_backward(dout, ctx.q, ctx.k, ctx.v, ctx.out, ctx.lse,
                                                                ctx.scale, t0)  # dk, dv (B, nh, L, hs)
        # forward, first lines: q, k (transformed by _queries_keys) and v were slices of qkv (k, v
        # at cache slots t0..t0+T-1), so dqkv is the three stacked back; the cache's earlier slots
        # were constants
        dq, dk = _queries_keys_backward(dq, dk[:, :, t0:t0 + T], ctx.saved)  # (B, nh, T, hs) each
        return join_heads(dq, dk, dv[:, :, t0:t0 + T])             # (B, T, 3C)


def attention_probs(qkv, n_head, rope_base=None, qk_norm=False, eps=1e-5):
    """The attention probabilities p (B, nh, T, T) float64 of the packed projection qkv (B, T, 3C)
    (an array; rope_base, qk_norm and eps as the attention op takes them), as this op's backward
    recomputes them from the forward's row log-sum-exp lse:

        p = exp(q k^T / sqrt(hs) - lse)                 (masked: 0 above the diagonal)

    so the rows sum to 1 only if these scores are the kernel's. For pictures (plot.py) and for
    reading a trained model; it records nothing.
    """
    xp = array_module(qkv)
    qk, v, _ = _queries_keys(qkv, n_head, 0, rope_base, qk_norm, eps)       # (2, B, nh, T, hs), view
    q, k, v = (xp.ascontiguousarray(a) for a in (qk[0], qk[1], v))          # (B, nh, T, hs) each
    scale = 1.0 / math.sqrt(q.shape[-1])
    _, lse = kernels.for_array(q).attention_forward(q, k, v, scale, 0)      # (B, nh, T) the model's kernel
    T = q.shape[2]
    scores = (q.astype(xp.float64) @ k.astype(xp.float64).swapaxes(-1, -2)) * scale  # (B, nh, T, T)
    future = xp.arange(T)[None, :] > xp.arange(T)[:, None]                   # (T, T) key after query
    return xp.exp(xp.where(future, -xp.inf, scores) - lse.astype(xp.float64)[..., None])  # (B, nh, T, T)


def causal_self_attention_qkv(qkv, n_head, cache=None, rope_base=None, qk_norm=False, eps=1e-5):
    """Causal attention straight from the packed projection qkv (B, T, 3C); returns (B, T, C).

    With a KV cache the T new positions attend over the cached ones too (and are appended).
    rope_base: rotary embeddings of q and k at that base (None: none, as GPT-2); qk_norm: a
    gain-free RMSNorm (epsilon eps) of each head's q and k, before the rotation.
    """
    return CausalSelfAttentionQKVOp.apply(qkv, n_head=n_head, cache=cache, rope_base=rope_base, qk_norm=qk_norm,
                                          eps=eps)
