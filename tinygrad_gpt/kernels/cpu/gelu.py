"""GELU (tanh approximation, as in GPT-2), forward and backward, as Numba kernels: one pass each.

Same names, signatures and results as `kernels.reference.gelu_forward/backward`, for arrays of any
shape (flattened inside; non-contiguous inputs are copied to contiguous first). float32 uses the
vectorisable `tanh_f32` of `_common.py` (absolute error < 5e-7); float64 uses `tanh_f64` (libm's expm1).
Serial: the vectorised loop does the `cpu` preset's (768, 512) in ~0.1 ms.

Follows: Hendrycks & Gimpel, "Gaussian Error Linear Units" (the tanh form); llm.c `gelu_forward`.
Does not: fuse the bias add of the preceding Linear (the matmul owns it), or handle float16 (that
goes to the NumPy reference).
"""
import numpy as np

from tinygrad_gpt.kernels import reference
from tinygrad_gpt.kernels.cpu._common import elementwise, fast_tanh, kernel

GELU_SCALE = reference.GELU_SCALE


@kernel()
def _gelu_forward(x, out):
    dt = x.dtype.type
    s = dt(GELU_SCALE)
    c = dt(0.044715)
    half = dt(0.5)
    one = dt(1.0)
    for i in range(x.size):
        xi = x[i]
        u = s * (xi + c * xi * xi * xi)                            # forward 1
        out[i] = half * xi * (one + fast_tanh(u))                  # forward 2


@kernel()
def _gelu_backward(dout, x, dx):
    dt = x.dtype.type
    s = dt(GELU_SCALE)
    c = dt(0.044715)
    half = dt(0.5)
    one = dt(1.0)
    three = dt(3.0)
    for i in range(x.size):
        xi = x[i]
        th = fast_tanh(s * (xi + c * xi * xi * xi))                # recompute forward 1
        # forward 2: out = 0.5 x (1 + tanh u), u = s (x + c x^3)
        # dout/dx = 0.5 (1 + th) + 0.5 x (1 - th^2) s (1 + 3 c x^2)
        local = half * (one + th) + half * xi * (one - th * th) * s * (one + three * c * xi * xi)
        dx[i] = dout[i] * local


def gelu_forward(x):
    """out = 0.5 * x * (1 + tanh(s * (x + 0.044715 x^3))), s = sqrt(2/pi). Any shape."""
    return elementwise(_gelu_forward, reference.gelu_forward, x)


def gelu_backward(dout, x):
    """dx of gelu_forward."""
    return elementwise(_gelu_backward, reference.gelu_backward, dout, x)
