"""ReLU squared, forward and backward, as Numba kernels: one pass each.

Same names, signatures and results as `kernels.reference.relu2_forward/backward`, for arrays of any
shape (flattened inside; non-contiguous inputs are copied to contiguous first). The NumPy form makes
two passes each way (max then square; product then doubling), each writing a full temporary; here
each element is read once (twice in backward) and written once. NaN propagates as numpy.maximum's
does (the select keeps x unless x <= 0).

Follows: So et al., "Primer" (the activation); the GELU kernel of this folder (the wrapper).
Does not: fuse the preceding matmul, or handle float16 (that goes to the NumPy reference).
"""
import numpy as np

from tinygrad_gpt.kernels import reference
from tinygrad_gpt.kernels.cpu._common import elementwise, kernel


@kernel()
def _relu2_forward(x, out):
    zero = x.dtype.type(0.0)
    for i in range(x.size):
        xi = x[i]
        r = zero if xi <= zero else xi                             # forward 1: max(x, 0)
        out[i] = r * r                                             # forward 2


@kernel()
def _relu2_backward(dout, x, dx):
    zero = x.dtype.type(0.0)
    two = x.dtype.type(2.0)
    for i in range(x.size):
        xi = x[i]
        r = zero if xi <= zero else xi                             # recompute forward 1
        dx[i] = two * r * dout[i]                                  # forward 2: out = r^2


def relu2_forward(x):
    """out = max(x, 0)^2. Any shape."""
    return elementwise(_relu2_forward, reference.relu2_forward, x)


def relu2_backward(dout, x):
    """dx of relu2_forward: 2 max(x, 0) dout."""
    return elementwise(_relu2_backward, reference.relu2_backward, dout, x)
