"""Muon's two elementwise passes as Numba kernels: the Nesterov momentum, and the update's apply.

Same names, signatures and results as `kernels.reference.muon_momentum` / `muon_apply` (every
scalar is cast to the parameter dtype first, as there). Between the two the optimizer runs the
Newton-Schulz iteration, which is matrix products (BLAS through NumPy), not a kernel. Serial, as
AdamW: a few calls per step, each over one weight matrix. Contiguous arrays are updated where they
lie; a non-contiguous param or momentum goes through a contiguous copy that is written back.

Follows: Keller Jordan's Muon (`muon_update`: momentum.lerp_(grad, 1 - beta), then
grad.lerp_(momentum, beta) for Nesterov; `p.mul_(1 - lr wd)`, `p.add_(update, alpha=-lr)`).
Does not: orthogonalise (optim.newton_schulz does), or handle float16 / mixed dtypes (those go to
the reference).

Dimension legend: P elements of one weight matrix (flattened).
"""
import numpy as np

from tinygrad_gpt.kernels import reference
from tinygrad_gpt.kernels._common import flat_inplace
from tinygrad_gpt.kernels.cpu._common import common_float_dtype, kernel


@kernel()
def _muon_momentum(grad, momentum, out, beta, one_minus_beta):
    for i in range(grad.size):
        g = grad[i]
        m = beta * momentum[i] + one_minus_beta * g                # m = b m + (1 - b) g
        momentum[i] = m
        out[i] = beta * m + one_minus_beta * g                     # u = b m + (1 - b) g


@kernel()
def _muon_apply(param, update, keep, step):
    for i in range(param.size):
        param[i] = param[i] * keep - step * update[i]              # p = p (1 - lr wd) - lr s u


def muon_momentum(grad, momentum, beta):
    """Muon's Nesterov momentum: updates `momentum` in place, returns what Newton-Schulz orthogonalises.

    m = beta m + (1 - beta) g;  u = beta m + (1 - beta) g   (the new m: one more momentum step ahead)
    """
    dtype = common_float_dtype(grad, momentum)
    if dtype is None or grad.shape != momentum.shape:
        return reference.muon_momentum(grad, momentum, beta)
    dt = dtype.type
    flat_m, back_m = flat_inplace(momentum)                       # (P,)
    flat_grad = np.ascontiguousarray(grad).reshape(-1)            # (P,)
    out = np.empty(momentum.shape, dtype=dtype)                   # momentum's shape
    _muon_momentum(flat_grad, flat_m, out.reshape(-1), dt(beta), dt(1 - beta))
    if back_m is not None:
        back_m[...] = flat_m.reshape(back_m.shape)
    return out


def muon_apply(param, update, lr, scale, weight_decay):
    """Muon's step on `param`, in place: param = param * (1 - lr wd) - lr * scale * update."""
    dtype = common_float_dtype(param, update)
    if dtype is None or param.shape != update.shape:
        return reference.muon_apply(param, update, lr, scale, weight_decay)
    dt = dtype.type
    flat_param, back_param = flat_inplace(param)                  # (P,)
    flat_update = np.ascontiguousarray(update).reshape(-1)        # (P,)
    _muon_apply(flat_param, flat_update, dt(1 - lr * weight_decay), dt(lr * scale))
    if back_param is not None:
        back_param[...] = flat_param.reshape(back_param.shape)
