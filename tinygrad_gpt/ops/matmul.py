"""Matrix multiply, batched and broadcasting: (..., M, K) @ (..., K, N) -> (..., M, N).

The common case in a GPT, activations (B, T, C) times a weight (C, D), is reshaped to one 2-D
GEMM (B*T, C) @ (C, D) in forward and backward: one large BLAS call instead of B small ones, and
the weight gradient comes out already summed over the batch.

Follows: numpy matmul broadcasting; llm.c matmul_forward/backward. Deliberately does not: accept
1-D or 0-D arrays here (Tensor.matmul promotes vectors before calling this op).
"""
from tinygrad_gpt.backend import array_module
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
        xp = array_module(a)
        if ctx.needs_input_grad[0]:
            da = unbroadcast(dout @ xp.swapaxes(b, -1, -2), a.shape)  # (..., M, K)
        if ctx.needs_input_grad[1]:
            db = unbroadcast(xp.swapaxes(a, -1, -2) @ dout, b.shape)  # (..., K, N)
        return da, db


class LinearOp(Function):
    """y = x @ W + b as one op: x (..., in), W (in, out), b (out,) -> y (..., out).

    The same maths as MatMul followed by Add, fused so that the bias is added in place into the
    GEMM's output (no second (N, out) array) and backward computes db in the same place as dW.
    """

    @staticmethod
    def forward(ctx, x, weight, bias):
        if x.dtype != weight.dtype or bias.dtype != weight.dtype:
            raise TypeError(f"linear: dtypes differ, x {x.dtype}, weight {weight.dtype}, bias {bias.dtype}")
        if x.shape[-1] != weight.shape[0] or bias.shape != (weight.shape[1],):
            raise ValueError(f"linear: x {x.shape}, weight {weight.shape} and bias {bias.shape} do not fit "
                             f"(expected x (..., {weight.shape[0]}) and bias ({weight.shape[1]},))")
        x2 = x.reshape(-1, x.shape[-1])                           # (N, in)
        out = x2 @ weight                                         # (N, out)      1
        out += bias                                               # (N, out)      2, in place
        ctx.x2, ctx.weight, ctx.in_shape = x2, weight, x.shape
        return out.reshape(*x.shape[:-1], weight.shape[1])        # (..., out)

    @staticmethod
    def backward(ctx, dout):
        dout2 = dout.reshape(-1, dout.shape[-1])                  # (N, out)
        # forward 2: out += b, so db = dout summed over rows
        dbias = dout2.sum(axis=0) if ctx.needs_input_grad[2] else None  # (out,)
        # forward 1: out = x W, so dW = x^T dout and dx = dout W^T
        dweight = ctx.x2.T @ dout2 if ctx.needs_input_grad[1] else None  # (in, out)
        dx = (dout2 @ ctx.weight.T).reshape(ctx.in_shape) if ctx.needs_input_grad[0] else None  # (..., in)
        return dx, dweight, dbias


def linear(x, weight, bias=None):
    """x @ weight (+ bias), with weight stored (in, out) as GPT-2's Conv1D."""
    return LinearOp.apply(x, weight, bias) if bias is not None else x.matmul(weight)
