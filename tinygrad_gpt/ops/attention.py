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

Follows: Vaswani et al. 2017; FlashAttention (Dao et al. 2022) for what is saved; llm.c
attention_backward. Deliberately does not: support padding masks or cross-attention, or send
gradients into the keys and values a cache holds from earlier calls.

Dimension legend: B batch, T queries (new positions), L keys, nh heads, hs head size, C = nh * hs.
"""
import math

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


class CausalSelfAttentionQKVOp(Function):
    """The same attention, taking the packed c_attn output: qkv (B, T, 3C) -> y (B, T, C).

    Splitting the heads and merging them again happen inside the op, so the model's graph holds one
    node instead of split + 3 transposes + merge, and backward writes dq, dk, dv straight into one
    (B, T, 3C) gradient. With `cache` (model.KVCache: `.length`, `.append(k, v)`), this call's
    keys and values are appended to it and the queries attend at t0 = the length before.
    """

    @staticmethod
    def forward(ctx, qkv, n_head, cache=None):
        check_float("causal_self_attention_qkv", qkv)
        B, T, C3 = qkv.shape
        xp = array_module(qkv)
        heads = split_heads(qkv, n_head)                           # (3, B, nh, T, hs) view
        q = xp.ascontiguousarray(heads[0])                         # (B, nh, T, hs)
        if cache is None:
            t0 = 0
            k = xp.ascontiguousarray(heads[1])                     # (B, nh, T, hs)
            v = xp.ascontiguousarray(heads[2])                     # (B, nh, T, hs)
        else:
            # subtle: the cache's buffers are kept for backward; later appends write only slots
            # past t0 + T, which this call's attention never reads, so they stay valid
            t0 = cache.length
            k, v = cache.append(heads[1], heads[2])                # (B, nh, Tmax, hs) each
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
        # forward, first lines: q, k, v were slices of qkv (k, v at cache slots t0..t0+T-1), so
        # dqkv is the three stacked back; the cache's earlier slots were constants
        return join_heads(dq, dk[:, :, t0:t0 + T], dv[:, :, t0:t0 + T])  # (B, T, 3C)


def attention_probs(qkv, n_head):
    """The attention probabilities p (B, nh, T, T) float64 of the packed projection qkv (B, T, 3C)
    (an array), as this op's backward recomputes them from the forward's row log-sum-exp lse:

        p = exp(q k^T / sqrt(hs) - lse)                 (masked: 0 above the diagonal)

    so the rows sum to 1 only if these scores are the kernel's. For pictures (plot.py) and for
    reading a trained model; it records nothing.
    """
    xp = array_module(qkv)
    q, k, v = (xp.ascontiguousarray(a) for a in split_heads(qkv, n_head))  # (B, nh, T, hs) each
    scale = 1.0 / math.sqrt(q.shape[-1])
    _, lse = kernels.for_array(q).attention_forward(q, k, v, scale, 0)      # (B, nh, T) the model's kernel
    T = q.shape[2]
    scores = (q.astype(xp.float64) @ k.astype(xp.float64).swapaxes(-1, -2)) * scale  # (B, nh, T, T)
    future = xp.arange(T)[None, :] > xp.arange(T)[:, None]                   # (T, T) key after query
    return xp.exp(xp.where(future, -xp.inf, scores) - lse.astype(xp.float64)[..., None])  # (B, nh, T, T)


def causal_self_attention_qkv(qkv, n_head, cache=None):
    """Causal attention straight from the packed projection qkv (B, T, 3C); returns (B, T, C).

    With a KV cache the T new positions attend over the cached ones too (and are appended).
    """
    return CausalSelfAttentionQKVOp.apply(qkv, n_head=n_head, cache=cache)
