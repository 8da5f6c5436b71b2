"""Rotary position embedding, forward and backward, as one Numba kernel (one pass each way).

Same names, signatures and results as `kernels.reference.rotary_forward/backward`, for x of any
shape (..., T, hs) with an even hs (flattened to (M, T, hs) inside; a non-contiguous x is copied
first); float32 and float64. Backward is the same kernel with the sines negated: the transpose of
a rotation is the rotation by -theta. The cosines and sines come in as tables (T, hs/2), so the
kernel is multiply-adds only, no trigonometry; one pass where NumPy makes about eight (the two
halves, four products, a sum and a difference, written back).

Follows: Su et al. 2021, "RoFormer" (the rotation), GPT-NeoX (the halves layout). Does not:
compute the angle tables (ops/attention.py's `rotary_tables` does, once per length), or rotate
only part of the head (partial rotary).

Dimension legend: M leading axes taken together (B * nh), T time, hs head size.
"""
import numpy as np

from tinygrad_gpt.kernels import reference
from tinygrad_gpt.kernels.cpu._common import common_float_dtype, kernel


@kernel()
def _rotary(x, cos, sin, sign, out):
    M, T, hs = x.shape
    h = hs // 2
    for m in range(M):
        for t in range(T):
            for i in range(h):
                c = cos[t, i]
                s = sign * sin[t, i]
                a = x[m, t, i]
                b = x[m, t, i + h]
                out[m, t, i] = a * c - b * s                       # forward 1
                out[m, t, i + h] = a * s + b * c                   # forward 2


def _rotate(x, cos, sin, sign):
    """x rotated by the tables' angles (sign 1) or by their negatives (sign -1); None if the kernel
    does not take these arrays (the caller then runs the reference)."""
    dtype = common_float_dtype(x, cos, sin)
    if dtype is None:
        return None
    reference._rotary_shapes(x, cos, sin)                          # ValueError naming the shapes
    T, hs = x.shape[-2:]
    x3 = np.ascontiguousarray(x).reshape(-1, T, hs)                # (M, T, hs)
    out = np.empty(x3.shape, dtype=dtype)                          # (M, T, hs)
    _rotary(x3, np.ascontiguousarray(cos), np.ascontiguousarray(sin), dtype.type(sign), out)
    return out.reshape(x.shape)                                    # (..., T, hs)


def rotary_forward(x, cos, sin):
    """Rotate each channel pair (i, i + hs/2) of x (..., T, hs) at row t by theta[t, i] (tables
    cos, sin (T, hs/2)); see the reference for the equations. Returns out, x's shape."""
    out = _rotate(x, cos, sin, 1.0)
    return reference.rotary_forward(x, cos, sin) if out is None else out


def rotary_backward(dout, cos, sin):
    """dx of rotary_forward: the transposed rotation, which is the rotation by -theta."""
    # forward 1-2: dx = R(theta)^T dout = R(-theta) dout, so the same kernel with -sin
    dx = _rotate(dout, cos, sin, -1.0)
    return reference.rotary_backward(dout, cos, sin) if dx is None else dx
