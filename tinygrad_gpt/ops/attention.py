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
from tinygrad_gpt.tensor import Function


class CausalSelfAttention(Function):
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
    return CausalSelfAttention.apply(q, k, v)
