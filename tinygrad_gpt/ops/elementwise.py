"""Elementwise ops with numpy broadcasting, each Function's backward directly below its forward.

Binary ops broadcast their inputs as numpy does; every backward then calls the one shared
`unbroadcast`, which sums the gradient over the axes that broadcasting stretched, so that each
input gets a gradient of its own shape. Shapes: any; `X` below means "the broadcast shape".

Follows: the first tinygrad release (ops_cpu.py), numpy broadcasting rules. Deliberately does
not: type-promote (both inputs must share a dtype: a float32 tensor times a float64 array is an
error rather than a silent upcast; Tensor's operators bring Python numbers and arrays to one
dtype first, by the rules in tinygrad_gpt/tensor.py's docstring), or support complex numbers.
"""
import numpy as np

from tinygrad_gpt import kernels
from tinygrad_gpt.backend import array_module
from tinygrad_gpt.tensor import Function, Tensor, unwrap


def unbroadcast(grad, shape):
    """Sum `grad` down to `shape`: undo numpy broadcasting in backward.

    forward broadcast (3, 1) -> (2, 3, 4): a leading axis was added and axis 1 stretched,
    so backward sums over axis 0 (added) and axis 2 (stretched, keepdims).
    """
    if grad.shape == shape:
        return grad
    extra = grad.ndim - len(shape)
    if extra:
        grad = grad.sum(axis=tuple(range(extra)))                 # drop added leading axes
    stretched = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if stretched:
        grad = grad.sum(axis=stretched, keepdims=True)            # (shape)
    return grad


def _check_dtypes(name, a, b):
    """Binary ops: same dtype (no silent upcasts) and shapes that broadcast; errors name the op."""
    if a.dtype != b.dtype:
        raise TypeError(f"{name}: dtypes differ, {a.dtype} and {b.dtype}; convert one with .astype() "
                        f"(no silent upcasts)")
    if a.shape != b.shape:
        try:
            np.broadcast_shapes(a.shape, b.shape)
        except ValueError:
            raise ValueError(f"{name}: shapes {a.shape} and {b.shape} do not broadcast") from None


def check_float(name, *arrays):
    """Ops defined on real numbers (exp, log, sqrt, tanh, sigmoid, gelu, softmax, cross-entropy,
    layer norm, dropout, attention): floating-point inputs of one dtype. An integer input would
    give float64 (exp), float16 (exp of bool) or truncated zeros (sigmoid, gelu of int64), so it is
    refused, naming the op and the dtypes."""
    dtypes = [str(a.dtype) for a in arrays]
    if any(a.dtype.kind != "f" for a in arrays):
        raise TypeError(f"{name}: needs floating-point tensors, got dtype {', '.join(dtypes)}; convert with "
                        f".astype(np.float32)")
    if len(set(dtypes)) > 1:
        raise TypeError(f"{name}: dtypes differ, {', '.join(dtypes)}; convert with .astype() (no silent upcasts)")


class Add(Function):
    @staticmethod
    def forward(ctx, a, b):
        _check_dtypes("add", a, b)
        ctx.a_shape, ctx.b_shape = a.shape, b.shape
        return a + b                                              # (X)

    @staticmethod
    def backward(ctx, dout):
        # forward: out = a + b, so da = dout and db = dout (summed over broadcast axes)
        return unbroadcast(dout, ctx.a_shape), unbroadcast(dout, ctx.b_shape)


class Sub(Function):
    @staticmethod
    def forward(ctx, a, b):
        _check_dtypes("sub", a, b)
        ctx.a_shape, ctx.b_shape = a.shape, b.shape
        return a - b                                              # (X)

    @staticmethod
    def backward(ctx, dout):
        # forward: out = a - b, so da = dout and db = -dout
        return unbroadcast(dout, ctx.a_shape), unbroadcast(-dout, ctx.b_shape)


class Mul(Function):
    @staticmethod
    def forward(ctx, a, b):
        _check_dtypes("mul", a, b)
        ctx.a, ctx.b = a, b
        return a * b                                              # (X)

    @staticmethod
    def backward(ctx, dout):
        # forward: out = a * b, so da = dout * b and db = dout * a
        a, b = ctx.a, ctx.b
        da = unbroadcast(dout * b, a.shape) if ctx.needs_input_grad[0] else None
        db = unbroadcast(dout * a, b.shape) if ctx.needs_input_grad[1] else None
        return da, db


class Div(Function):
    @staticmethod
    def forward(ctx, a, b):
        _check_dtypes("div", a, b)
        ctx.a, ctx.b = a, b
        return a / b                                              # (X)

    @staticmethod
    def backward(ctx, dout):
        # forward: out = a / b, so da = dout / b and db = -dout * a / b^2
        a, b = ctx.a, ctx.b
        da = unbroadcast(dout / b, a.shape) if ctx.needs_input_grad[0] else None
        db = unbroadcast(-dout * a / (b * b), b.shape) if ctx.needs_input_grad[1] else None
        return da, db


class Neg(Function):
    @staticmethod
    def forward(ctx, a):
        return -a

    @staticmethod
    def backward(ctx, dout):
        # forward: out = -a, so da = -dout
        return -dout


class PowScalar(Function):
    """a ** p for a Python-number exponent p (the common case: squares, cubes, square roots)."""

    @staticmethod
    def forward(ctx, a, exponent):
        ctx.a, ctx.p = a, exponent
        if exponent == 2:
            return a * a                                          # subtle: a * a, not a ** 2 (much faster)
        if exponent == 3:
            return a * a * a
        return a ** a.dtype.type(exponent)

    @staticmethod
    def backward(ctx, dout):
        # forward: out = a^p, so da = dout * p * a^(p - 1)
        a, p = ctx.a, ctx.p
        if p == 2:
            return dout * (a + a)
        if p == 3:
            return dout * a.dtype.type(3) * a * a
        return dout * a.dtype.type(p) * a ** a.dtype.type(p - 1)


class Pow(Function):
    """a ** b with both a tensor; the gradient for b needs a > 0 (it involves log a)."""

    @staticmethod
    def forward(ctx, a, b):
        _check_dtypes("pow", a, b)
        out = a ** b                                              # (X)
        ctx.a, ctx.b, ctx.out = a, b, out
        return out

    @staticmethod
    def backward(ctx, dout):
        a, b, out = ctx.a, ctx.b, ctx.out
        # forward: out = a^b, so da = dout * b * a^(b - 1) and db = dout * out * log(a)
        da = unbroadcast(dout * b * a ** (b - 1), a.shape) if ctx.needs_input_grad[0] else None
        db = None
        if ctx.needs_input_grad[1]:
            xp = array_module(a)
            db = unbroadcast(dout * out * xp.log(a), b.shape)
        return da, db


class Exp(Function):
    @staticmethod
    def forward(ctx, a):
        check_float("exp", a)
        xp = array_module(a)
        ctx.out = xp.exp(a)
        return ctx.out

    @staticmethod
    def backward(ctx, dout):
        # forward: out = exp(a), so da = dout * out
        return dout * ctx.out


class Log(Function):
    @staticmethod
    def forward(ctx, a):
        check_float("log", a)
        xp = array_module(a)
        ctx.a = a
        return xp.log(a)

    @staticmethod
    def backward(ctx, dout):
        # forward: out = log(a), so da = dout / a
        return dout / ctx.a


class Sqrt(Function):
    @staticmethod
    def forward(ctx, a):
        check_float("sqrt", a)
        xp = array_module(a)
        ctx.out = xp.sqrt(a)
        return ctx.out

    @staticmethod
    def backward(ctx, dout):
        # forward: out = sqrt(a), so da = dout / (2 out)
        return dout / (ctx.out + ctx.out)


class Tanh(Function):
    @staticmethod
    def forward(ctx, a):
        check_float("tanh", a)
        xp = array_module(a)
        ctx.out = xp.tanh(a)
        return ctx.out

    @staticmethod
    def backward(ctx, dout):
        # forward: out = tanh(a), so da = dout * (1 - out^2)
        out = ctx.out
        return dout * (1 - out * out)


class Sigmoid(Function):
    @staticmethod
    def forward(ctx, a):
        check_float("sigmoid", a)
        xp = array_module(a)
        # subtle: written with exp(-|a|) so that neither branch overflows for large |a|
        e = xp.exp(-xp.abs(a))
        ctx.out = xp.where(a >= 0, 1 / (1 + e), e / (1 + e)).astype(a.dtype, copy=False)
        return ctx.out

    @staticmethod
    def backward(ctx, dout):
        # forward: out = 1 / (1 + exp(-a)), so da = dout * out * (1 - out)
        out = ctx.out
        return dout * out * (1 - out)


class Relu(Function):
    @staticmethod
    def forward(ctx, a):
        ctx.positive = a > 0
        return a * ctx.positive

    @staticmethod
    def backward(ctx, dout):
        # forward: out = a if a > 0 else 0, so da = dout where a > 0 (the kink at 0 gets 0)
        return dout * ctx.positive


class Relu2(Function):
    """relu(a)^2, the MLP activation of the modern GPT (So et al. 2021, "Primer"; modded-nanogpt).

    A fused kernel (one pass each way; equations and the backward in kernels/reference.py): in
    NumPy it is two passes each way over the MLP's (N, 4C) activations, each writing a temporary.
    """

    @staticmethod
    def forward(ctx, a):
        check_float("relu2", a)
        ctx.a = a
        return kernels.for_array(a).relu2_forward(a)              # max(a, 0)^2

    @staticmethod
    def backward(ctx, dout):
        return kernels.for_array(dout).relu2_backward(dout, ctx.a)  # 2 max(a, 0) dout


class Softcap(Function):
    """cap * tanh(a / cap): a smooth clamp of a to (-cap, cap), the identity near 0 (slope 1).

    Caps the logits before the loss (Gemma 2; modded-nanogpt), so that no logit can run away.
    Not a fused kernel: its natural fusion is into the cross-entropy kernel (the capped logits
    then never written out), but the logits it caps here are (N, V) at a character vocabulary, a
    few passes over an array smaller than any activation of a block.
    """

    @staticmethod
    def forward(ctx, a, cap):
        check_float("softcap", a)
        if not (isinstance(cap, (int, float, np.floating)) and np.isfinite(cap) and cap > 0):
            raise ValueError(f"softcap: cap must be a finite number > 0, got {cap!r}")
        xp = array_module(a)
        t = xp.tanh(a * a.dtype.type(1.0 / cap))                  # (X)  1
        ctx.t = t
        return t * a.dtype.type(cap)                              # (X)  2

    @staticmethod
    def backward(ctx, dout):
        # forward 2: out = cap * t, so dt = cap * dout; forward 1: t = tanh(a / cap), so
        # da = dt * (1 - t^2) / cap = dout * (1 - t^2): the caps cancel
        da = 1 - ctx.t * ctx.t                                    # (X)
        da *= dout
        return da


class Gelu(Function):
    """GELU with the tanh approximation, as GPT-2: see tinygrad_gpt/kernels/reference.py for the formulas."""

    @staticmethod
    def forward(ctx, a):
        check_float("gelu", a)
        ctx.a = a
        return kernels.for_array(a).gelu_forward(a)

    @staticmethod
    def backward(ctx, dout):
        return kernels.for_array(dout).gelu_backward(dout, ctx.a)


class Maximum(Function):
    """Elementwise max; where a == b the gradient is split evenly, as for max over an axis."""

    @staticmethod
    def forward(ctx, a, b):
        _check_dtypes("maximum", a, b)
        xp = array_module(a)
        out = xp.maximum(a, b)                                    # (X)
        ctx.a_shape, ctx.b_shape = a.shape, b.shape
        ctx.a_wins = (a > b) + (a == b) * a.dtype.type(0.5)       # (X) share of the gradient a gets
        return out

    @staticmethod
    def backward(ctx, dout):
        # forward: out = a where a > b, else b
        w = ctx.a_wins
        return unbroadcast(dout * w, ctx.a_shape), unbroadcast(dout * (1 - w), ctx.b_shape)


class Minimum(Function):
    @staticmethod
    def forward(ctx, a, b):
        _check_dtypes("minimum", a, b)
        xp = array_module(a)
        out = xp.minimum(a, b)                                    # (X)
        ctx.a_shape, ctx.b_shape = a.shape, b.shape
        ctx.a_wins = (a < b) + (a == b) * a.dtype.type(0.5)       # (X)
        return out

    @staticmethod
    def backward(ctx, dout):
        # forward: out = a where a < b, else b
        w = ctx.a_wins
        return unbroadcast(dout * w, ctx.a_shape), unbroadcast(dout * (1 - w), ctx.b_shape)


class Clip(Function):
    @staticmethod
    def forward(ctx, a, low=None, high=None):
        if low is None and high is None:
            raise ValueError("clip: give at least one of low and high")
        if low is not None and high is not None and low > high:
            raise ValueError(f"clip: low {low} is above high {high}")
        xp = array_module(a)
        # subtle: each bound in a's dtype, and only the bounds given (an integer a has no -inf)
        out, inside = a, xp.ones(a.shape, dtype=bool)
        if low is not None:
            lo = a.dtype.type(low)
            out, inside = xp.maximum(out, lo), inside & (a >= lo)
        if high is not None:
            hi = a.dtype.type(high)
            out, inside = xp.minimum(out, hi), inside & (a <= hi)
        ctx.inside = inside
        return out

    @staticmethod
    def backward(ctx, dout):
        # forward: out = min(max(a, low), high), so da = dout inside [low, high] and 0 outside
        return dout * ctx.inside


class Where(Function):
    """out = a where cond else b; cond is a plain boolean array (no gradient)."""

    @staticmethod
    def forward(ctx, a, b, cond):
        _check_dtypes("where", a, b)
        xp = array_module(a)
        ctx.cond, ctx.a_shape, ctx.b_shape = cond, a.shape, b.shape
        return xp.where(cond, a, b)                               # (X)

    @staticmethod
    def backward(ctx, dout):
        # forward: out = a where cond else b, so da = dout * cond and db = dout * (not cond)
        xp = array_module(dout)
        zero = dout.dtype.type(0)
        da = unbroadcast(xp.where(ctx.cond, dout, zero), ctx.a_shape)
        db = unbroadcast(xp.where(ctx.cond, zero, dout), ctx.b_shape)
        return da, db


def where(cond, a, b):
    """Select elementwise: a where cond, else b. a or b may be Python numbers or arrays (brought
    to the tensor's dtype by the rules of Tensor's operators, tinygrad_gpt/tensor.py)."""
    if not isinstance(a, Tensor) and not isinstance(b, Tensor):
        raise TypeError("where: at least one of a and b must be a Tensor")
    cond = unwrap(cond)
    if getattr(cond, "dtype", None) is None or cond.dtype != bool:
        raise TypeError(f"where: cond must be a boolean array or Tensor, got {getattr(cond, 'dtype', type(cond))}")
    if isinstance(a, Tensor):
        a, b = a._coerce(b, "where")
    else:
        b, a = b._coerce(a, "where")
    return Where.apply(a, b, cond=cond)


class MaskedFill(Function):
    """out = value where mask, else a (the causal mask: fill future scores with -inf)."""

    @staticmethod
    def forward(ctx, a, mask, value):
        xp = array_module(a)
        mask = xp.asarray(mask)
        if mask.dtype != bool:
            raise TypeError(f"masked_fill: mask must be boolean, got dtype {mask.dtype}")
        try:
            fits = np.broadcast_shapes(mask.shape, a.shape) == a.shape
        except ValueError:
            fits = False
        if not fits:
            raise ValueError(f"masked_fill: mask of shape {mask.shape} does not broadcast to {a.shape}")
        ctx.mask = mask
        return xp.where(mask, a.dtype.type(value), a)              # (a.shape)

    @staticmethod
    def backward(ctx, dout):
        # forward: out = value where mask else a, so da = dout where not mask, 0 where mask
        xp = array_module(dout)
        return xp.where(ctx.mask, dout.dtype.type(0), dout)
