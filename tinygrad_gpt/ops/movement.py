"""Ops that move data without arithmetic: reshape, permute, indexing, gather, concat, stack.

Their backwards route each gradient element back to where its value came from: reshape and
permute invert themselves, basic slicing writes into a zero array, integer-array indexing and
gather scatter-ADD (an index may repeat, and a repeated index collects every gradient).

Follows: numpy indexing semantics (basic slices are views, integer arrays select copies).
Deliberately does not: support boolean-mask indexing with a gradient other than through
`where`/`masked_fill` (use those), or assignment into tensors.
"""
import numpy as np

from tinygrad_gpt.backend import array_module
from tinygrad_gpt.tensor import Function


class Reshape(Function):
    @staticmethod
    def forward(ctx, a, shape):
        ctx.in_shape = a.shape
        try:
            return a.reshape(shape)
        except ValueError:
            raise ValueError(f"reshape: cannot reshape {a.shape} ({a.size} elements) into {shape}") from None

    @staticmethod
    def backward(ctx, dout):
        # forward: out = a.reshape(shape), so da = dout.reshape(a.shape)
        return dout.reshape(ctx.in_shape)


class Permute(Function):
    @staticmethod
    def forward(ctx, a, axes):
        if sorted(ax % a.ndim for ax in axes) != list(range(a.ndim)) or len(axes) != a.ndim:
            raise ValueError(f"permute: axes {axes} are not a permutation of the {a.ndim} axes of {a.shape}")
        ctx.axes = tuple(ax % a.ndim for ax in axes)
        return a.transpose(ctx.axes)

    @staticmethod
    def backward(ctx, dout):
        # forward: out axis i is a's axis axes[i], so da = dout permuted by the inverse permutation
        inverse = [0] * len(ctx.axes)
        for i, ax in enumerate(ctx.axes):
            inverse[ax] = i
        return dout.transpose(inverse)


def _is_advanced(index):
    parts = index if isinstance(index, tuple) else (index,)
    return any(hasattr(p, "shape") and getattr(p, "ndim", 0) > 0 or isinstance(p, list) for p in parts)


class GetItem(Function):
    """a[index] for slices, ints, None, Ellipsis and integer arrays (numpy semantics)."""

    @staticmethod
    def forward(ctx, a, index):
        xp = array_module(a)
        if xp is not np:  # integer-array indices must live where the data lives
            index = tuple(xp.asarray(i) if isinstance(i, (np.ndarray, list)) else i for i in index) \
                if isinstance(index, tuple) else (xp.asarray(index) if isinstance(index, (np.ndarray, list)) else index)
        ctx.in_shape, ctx.dtype, ctx.index = a.shape, a.dtype, index
        ctx.advanced = _is_advanced(index)
        try:
            out = xp.asarray(a[index])                            # a one-element index gives a 0-d array
        except IndexError as exc:
            raise IndexError(f"getitem: index {index!r} is invalid for shape {a.shape}: {exc}") from None
        # subtle: ascontiguousarray would turn a 0-d result into shape (1,); a 0-d array is contiguous
        return out if out.flags.c_contiguous else xp.ascontiguousarray(out)

    @staticmethod
    def backward(ctx, dout):
        xp = array_module(dout)
        da = xp.zeros(ctx.in_shape, dtype=ctx.dtype)              # (a.shape)
        if ctx.advanced:
            # forward: out = a[idx] with integer arrays; an index may repeat, so scatter-ADD
            xp.add.at(da, ctx.index, dout)
        else:
            # forward: out = a[slices] (each element picked at most once), so da[slices] = dout
            da[ctx.index] = dout
        return da


class Gather(Function):
    """out[..., j] = a[..., index[..., j]] along the last axis."""

    @staticmethod
    def forward(ctx, a, index):
        xp = array_module(a)
        index = xp.asarray(index)
        if index.dtype.kind not in "iu":
            raise TypeError(f"gather: index must be integers, got dtype {index.dtype}")
        if index.shape[:-1] != a.shape[:-1]:
            raise ValueError(f"gather: index shape {index.shape} must match {a.shape} on all but the last axis")
        n = a.shape[-1]
        if index.size and (int(index.min()) < -n or int(index.max()) >= n):
            raise IndexError(f"gather: index out of range for last axis of size {n} "
                             f"(got min {int(index.min())}, max {int(index.max())})")
        ctx.in_shape, ctx.index = a.shape, index % n
        return xp.take_along_axis(a, ctx.index, axis=-1)          # (..., J)

    @staticmethod
    def backward(ctx, dout):
        # forward: out[r, j] = a[r, index[r, j]], so da[r, index[r, j]] += dout[r, j]
        xp = array_module(dout)
        n, j = ctx.in_shape[-1], ctx.index.shape[-1]
        rows = ctx.index.size // j if j else 0
        da = xp.zeros((rows, n), dtype=dout.dtype)                # (R, n)
        row_ids = xp.repeat(xp.arange(rows), j)                   # (R * J,)
        xp.add.at(da, (row_ids, ctx.index.reshape(-1)), dout.reshape(-1))
        return da.reshape(ctx.in_shape)


def _check_one_dtype(name, arrays):
    """concat and stack: every input has one dtype (numpy would upcast, and a float32 leaf would
    get a float64 gradient)."""
    dtypes = sorted({str(a.dtype) for a in arrays})
    if len(dtypes) > 1:
        raise TypeError(f"{name}: dtypes differ, {', '.join(dtypes)}; convert with .astype() (no silent upcasts)")


class Concat(Function):
    @staticmethod
    def forward(ctx, *arrays, axis=0):
        _check_one_dtype("concat", arrays)
        xp = array_module(arrays[0])
        ctx.axis = axis % arrays[0].ndim
        ctx.sizes = [a.shape[ctx.axis] for a in arrays]
        try:
            return xp.concatenate(arrays, axis=ctx.axis)
        except ValueError as exc:
            raise ValueError(f"concat: shapes {[a.shape for a in arrays]} do not fit along axis {axis}: {exc}") from None

    @staticmethod
    def backward(ctx, dout):
        # forward: out = [a0 | a1 | ...] along axis, so each input gets its slice of dout
        grads, start = [], 0
        for size in ctx.sizes:
            index = (slice(None),) * ctx.axis + (slice(start, start + size),)
            grads.append(dout[index])
            start += size
        return tuple(grads)


class Stack(Function):
    @staticmethod
    def forward(ctx, *arrays, axis=0):
        _check_one_dtype("stack", arrays)
        xp = array_module(arrays[0])
        shapes = {a.shape for a in arrays}
        if len(shapes) != 1:
            raise ValueError(f"stack: all inputs need one shape, got {sorted(shapes)}")
        ctx.axis = axis % (arrays[0].ndim + 1)
        return xp.stack(arrays, axis=ctx.axis)

    @staticmethod
    def backward(ctx, dout):
        # forward: out[..., i, ...] = a_i, so da_i = dout taken at i along the new axis
        return tuple(dout.take(i, axis=ctx.axis) for i in range(dout.shape[ctx.axis]))


def concat(tensors, axis=0):
    """Join tensors along an existing axis."""
    tensors = list(tensors)
    if not tensors:
        raise ValueError("concat: needs at least one tensor, got none")
    if any(getattr(t, "ndim", 1) == 0 for t in tensors):
        raise ValueError(f"concat: 0-d tensors have no axis to join along (shapes "
                         f"{[getattr(t, 'shape', None) for t in tensors]}); use stack")
    return Concat.apply(*tensors, axis=axis)


def stack(tensors, axis=0):
    """Join same-shape tensors along a new axis."""
    tensors = list(tensors)
    if not tensors:
        raise ValueError("stack: needs at least one tensor, got none")
    return Stack.apply(*tensors, axis=axis)
