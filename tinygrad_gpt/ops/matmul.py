"""Matrix multiply, batched and broadcasting: (..., M, K) @ (..., K, N) -> (..., M, N).

The common case in a GPT, activations (B, T, C) times a weight (C, D), is reshaped to one 2-D
GEMM (B*T, C) @ (C, D) in forward and backward: one large BLAS call instead of B small ones, and
the weight gradient comes out already summed over the batch.

Follows: numpy matmul broadcasting; llm.c matmul_forward/backward. Deliberately does not: accept
1-D or 0-D arrays here (Tensor.matmul promotes vectors before calling this op).
"""
from kernels.reference import get_array_module
from tinygrad_gpt.ops.elementwise import unbroadcast
from tinygrad_gpt.tensor import Function


class MatMul(Function):
    @staticmethod
    def forward(ctx, a, b):
        if a.dtype != b.dtype:
            raise TypeError(f"matmul: dtypes differ, {a.dtype} and {b.dtype} (no silent upcasts)")
        if a.shape[-1] != b.shape[-2]:
            raise ValueError(f"matmul: shapes {a.shape} and {b.shape} do not align on "
                             f"{a.shape[-1]} != {b.shape[-2]}")
        ctx.a, ctx.b = a, b
        if b.ndim == 2:
            # (..., M, K) @ (K, N): one GEMM over all rows
            out = a.reshape(-1, a.shape[-1]) @ b                  # (B*M, N)
            return out.reshape(*a.shape[:-1], b.shape[-1])        # (..., M, N)
        return a @ b                                              # (..., M, N)

    @staticmethod
    def backward(ctx, dout):
        # forward: out = a @ b, so da = dout @ b^T and db = a^T @ dout (summed over broadcast batch axes)
        a, b = ctx.a, ctx.b
        da = db = None
        if b.ndim == 2:
            dout2 = dout.reshape(-1, dout.shape[-1])              # (B*M, N)
            if ctx.needs_input_grad[0]:
                da = (dout2 @ b.T).reshape(a.shape)               # (..., M, K)
            if ctx.needs_input_grad[1]:
                db = a.reshape(-1, a.shape[-1]).T @ dout2         # (K, N)
            return da, db
        xp = get_array_module(a)
        if ctx.needs_input_grad[0]:
            da = unbroadcast(dout @ xp.swapaxes(b, -1, -2), a.shape)  # (..., M, K)
        if ctx.needs_input_grad[1]:
            db = unbroadcast(xp.swapaxes(a, -1, -2) @ dout, b.shape)  # (..., K, N)
        return da, db
