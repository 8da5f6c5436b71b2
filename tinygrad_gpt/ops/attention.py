"""Causal self-attention as one op: q, k, v (B, nh, T, hs) -> out (B, nh, T, hs).

forward, per batch b and head h (kernels/reference.py writes every line out):
  1. scores = q k^T / sqrt(hs)                      (T, T)
  2. scores[t, s] = -inf for s > t                  the causal mask: no peeking at the future
  3. p = softmax(scores) over s                     (T, T)   keep only lse = log sum_s exp(scores)
  4. out = p v                                      (T, hs)
backward, in reverse:
  4. dv = p^T dout,  dp = dout v^T
  3. dscores = p * (dp - rowdot),  rowdot[t] = sum_s p[t, s] dp[t, s] = dout[t] . out[t]
  2. masked entries were constants: p = 0 there, so dscores = 0 there
  1. dq = dscores k / sqrt(hs),  dk = dscores^T q / sqrt(hs)
Only (out, lse) are kept between forward and backward (flash-style): p is recomputed from
q, k and lse, so no (T, T) array outlives the forward.

Follows: Vaswani et al. 2017; FlashAttention (Dao et al. 2022) for what is saved; llm.c
attention_backward. Deliberately does not: support padding masks or cross-attention.
"""
import math

import kernels
from tinygrad_gpt.backend import array_module
from tinygrad_gpt.tensor import Function


class CausalSelfAttentionOp(Function):
    @staticmethod
    def forward(ctx, q, k, v):
        if not (q.shape == k.shape == v.shape) or q.ndim != 4:
            raise ValueError(f"causal_self_attention: q, k, v must share one (B, nh, T, hs) shape, "
                             f"got {q.shape}, {k.shape}, {v.shape}")
        scale = 1.0 / math.sqrt(q.shape[-1])
        out, lse = kernels.for_array(q).attention_forward(q, k, v, scale)  # (B, nh, T, hs), (B, nh, T)
        ctx.q, ctx.k, ctx.v, ctx.out, ctx.lse, ctx.scale = q, k, v, out, lse, scale
        return out

    @staticmethod
    def backward(ctx, dout):
        # the equations, line by line, are in the module docstring and in kernels/reference.py
        return kernels.for_array(dout).attention_backward(dout, ctx.q, ctx.k, ctx.v, ctx.out, ctx.lse, ctx.scale)


def causal_self_attention(q, k, v):
    """Causal softmax attention of q, k, v Tensors (B, nh, T, hs)."""
    return CausalSelfAttentionOp.apply(q, k, v)


class CausalSelfAttentionQKVOp(Function):
    """The same attention, taking the packed c_attn output: qkv (B, T, 3C) -> y (B, T, C).

    Splitting the heads and merging them again happen inside the op, so the model's graph holds one
    node instead of split + 3 transposes + merge, and backward writes dq, dk, dv straight into one
    (B, T, 3C) gradient.
    """

    @staticmethod
    def forward(ctx, qkv, n_head):
        B, T, C3 = qkv.shape
        if C3 % (3 * n_head):
            raise ValueError(f"attention: qkv width {C3} is not 3 * n_head ({n_head}) * head size")
        hs = C3 // (3 * n_head)
        xp = array_module(qkv)
        heads = qkv.reshape(B, T, 3, n_head, hs).transpose(2, 0, 3, 1, 4)  # (3, B, nh, T, hs) view
        q = xp.ascontiguousarray(heads[0])                        # (B, nh, T, hs)
        k = xp.ascontiguousarray(heads[1])                        # (B, nh, T, hs)
        v = xp.ascontiguousarray(heads[2])                        # (B, nh, T, hs)
        scale = 1.0 / math.sqrt(hs)
        out, lse = kernels.for_array(q).attention_forward(q, k, v, scale)  # (B, nh, T, hs), (B, nh, T)
        ctx.q, ctx.k, ctx.v, ctx.out, ctx.lse, ctx.scale = q, k, v, out, lse, scale
        return out.transpose(0, 2, 1, 3).reshape(B, T, n_head * hs)  # (B, T, C) merge heads

    @staticmethod
    def backward(ctx, dy):
        xp = array_module(dy)
        B, nh, T, hs = ctx.q.shape
        # forward, last line: y = out merged over heads, so dout = dy split into heads
        dout = xp.ascontiguousarray(dy.reshape(B, T, nh, hs).transpose(0, 2, 1, 3))  # (B, nh, T, hs)
        dq, dk, dv = kernels.for_array(dout).attention_backward(dout, ctx.q, ctx.k, ctx.v, ctx.out, ctx.lse,
                                                                ctx.scale)
        # forward, first lines: q, k, v were slices of qkv, so dqkv is the three stacked back
        dqkv = xp.empty((B, T, 3, nh, hs), dtype=dy.dtype)       # (B, T, 3, nh, hs)
        dqkv[:, :, 0] = dq.transpose(0, 2, 1, 3)
        dqkv[:, :, 1] = dk.transpose(0, 2, 1, 3)
        dqkv[:, :, 2] = dv.transpose(0, 2, 1, 3)
        return dqkv.reshape(B, T, 3 * nh * hs)                    # (B, T, 3C)


def causal_self_attention_qkv(qkv, n_head):
    """Causal attention straight from the packed projection qkv (B, T, 3C); returns (B, T, C)."""
    return CausalSelfAttentionQKVOp.apply(qkv, n_head=n_head)
