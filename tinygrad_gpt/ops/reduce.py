"""Reductions over axes: sum, mean, max, var, each with `axis` (None, int or tuple) and `keepdims`.

Every backward first restores the reduced axes (as size-1 axes) so the gradient broadcasts back
over the input. Shapes: input (X), output (X with the reduced axes removed or kept as 1).

Follows: numpy's reduction semantics. Deliberately does not: reduce integer tensors with gradients,
or implement argmax with a gradient (it has none).
"""
from tinygrad_gpt.backend import array_module
from tinygrad_gpt.tensor import Function


def _axes(axis, ndim):
    """`axis` as a sorted tuple of non-negative ints (None means every axis)."""
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    out = []
    for ax in axes:
        if not -ndim <= ax < ndim:
            raise ValueError(f"reduction: axis {ax} is out of range for a tensor with {ndim} dims")
        out.append(ax % ndim)
    return tuple(sorted(set(out)))


def _keep(grad, in_shape, axes):
    """Reshape a reduced gradient so that it broadcasts against the input (keepdims form)."""
    shape = tuple(1 if i in axes else n for i, n in enumerate(in_shape))
    return grad.reshape(shape)


class Sum(Function):
    @staticmethod
    def forward(ctx, a, axis=None, keepdims=False):
        ctx.axes, ctx.in_shape = _axes(axis, a.ndim), a.shape
        return a.sum(axis=ctx.axes, keepdims=keepdims)

    @staticmethod
    def backward(ctx, dout):
        # forward: out = sum_i a_i, so da_i = dout (copied to every summed position)
        return _broadcast_to(_keep(dout, ctx.in_shape, ctx.axes), ctx.in_shape)


class Mean(Function):
    @staticmethod
    def forward(ctx, a, axis=None, keepdims=False):
        ctx.axes, ctx.in_shape = _axes(axis, a.ndim), a.shape
        ctx.count = 1
        for ax in ctx.axes:
            ctx.count *= a.shape[ax]
        return a.mean(axis=ctx.axes, keepdims=keepdims)

    @staticmethod
    def backward(ctx, dout):
        # forward: out = sum_i a_i / n, so da_i = dout / n
        g = _keep(dout, ctx.in_shape, ctx.axes) / dout.dtype.type(ctx.count)
        return _broadcast_to(g, ctx.in_shape)


class Max(Function):
    """Max over axes; ties share the gradient evenly (so finite differences agree at ties)."""

    @staticmethod
    def forward(ctx, a, axis=None, keepdims=False):
        ctx.axes, ctx.in_shape = _axes(axis, a.ndim), a.shape
        out = a.max(axis=ctx.axes, keepdims=True)                 # (X with reduced axes 1)
        winners = a == out                                        # (X)
        ctx.share = winners / winners.sum(axis=ctx.axes, keepdims=True).astype(a.dtype)  # (X)
        return out if keepdims else out.reshape([n for i, n in enumerate(a.shape) if i not in ctx.axes])

    @staticmethod
    def backward(ctx, dout):
        # forward: out = a_k for the k that is largest, so da_k = dout and 0 elsewhere
        return _keep(dout, ctx.in_shape, ctx.axes) * ctx.share


class Var(Function):
    """Variance over axes: mean((a - mean(a))^2) * n / (n - correction)."""

    @staticmethod
    def forward(ctx, a, axis=None, keepdims=False, correction=0):
        ctx.axes, ctx.in_shape = _axes(axis, a.ndim), a.shape
        n = 1
        for ax in ctx.axes:
            n *= a.shape[ax]
        if n - correction <= 0:
            raise ValueError(f"var: {n} elements with correction {correction} leave no degrees of freedom")
        ctx.denom = a.dtype.type(n - correction)
        ctx.centered = a - a.mean(axis=ctx.axes, keepdims=True)    # (X)    1
        sq = ctx.centered * ctx.centered                           # (X)    2
        return sq.sum(axis=ctx.axes, keepdims=keepdims) / ctx.denom  # 3

    @staticmethod
    def backward(ctx, dout):
        # forward 3: out = sum(c^2) / d with c = a - mean(a) (1); the mean's own gradient term
        # sums to zero (sum of c is 0), so da = dout * 2 c / d
        g = _keep(dout, ctx.in_shape, ctx.axes)
        return g * (ctx.centered + ctx.centered) / ctx.denom


def _broadcast_to(g, shape):
    """`g` broadcast to `shape` as a contiguous array (kernels downstream expect real strides)."""
    xp = array_module(g)
    # subtle: .copy(), not ascontiguousarray, which turns a 0-d array (a 0-d loss) into shape (1,)
    return xp.broadcast_to(g, shape).copy()
