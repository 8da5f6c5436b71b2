"""AdamW update as a Numba kernel: one pass over a parameter, updating param, m and v in place.

Same name, signature and result as `kernels.reference.adamw_update` (every scalar is cast to the
parameter dtype first, as there). Serial: the optimizer calls it once per parameter tensor, most
of them small. Contiguous arrays are updated where they lie; a non-contiguous
param, m or v is updated through a contiguous copy that is written back (correct, one extra pass).

Follows: Loshchilov & Hutter, "Decoupled Weight Decay Regularization"; llm.c `adamw_kernel`.
Does not: clip gradients, or skip weight decay for some parameters (the optimizer chooses
weight_decay per parameter group), or handle float16 / mixed dtypes (those go to the reference).
"""
import math

import numpy as np

from tinygrad_gpt.kernels import reference
from tinygrad_gpt.kernels._common import flat_inplace
from tinygrad_gpt.kernels.cpu._common import common_float_dtype, kernel


@kernel()
def _adamw_update(param, grad, m, v, lr, beta1, one_minus_beta1, beta2, one_minus_beta2,
                  mhat_scale, vhat_scale, eps, weight_decay):
    for i in range(param.size):
        g = grad[i]
        mi = beta1 * m[i] + one_minus_beta1 * g                    # m = b1 m + (1 - b1) g
        vi = beta2 * v[i] + one_minus_beta2 * (g * g)              # v = b2 v + (1 - b2) g^2
        m[i] = mi
        v[i] = vi
        update = (mi * mhat_scale) / (math.sqrt(vi * vhat_scale) + eps) + weight_decay * param[i]
        param[i] -= lr * update


def adamw_update(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step):
    """Decoupled-weight-decay Adam (Loshchilov & Hutter), updating param, m and v in place.

    m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;  mhat = m / (1 - b1^t);  vhat = v / (1 - b2^t)
    param -= lr * (mhat / (sqrt(vhat) + eps) + wd * param)      (t = step, counted from 1)
    """
    dtype = common_float_dtype(param, grad, m, v)
    if dtype is None or not (param.shape == grad.shape == m.shape == v.shape):
        return reference.adamw_update(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step)
    dt = dtype.type
    flat_param, back_param = flat_inplace(param)                  # (P,)
    flat_m, back_m = flat_inplace(m)                              # (P,)
    flat_v, back_v = flat_inplace(v)                              # (P,)
    flat_grad = np.ascontiguousarray(grad).reshape(-1)            # (P,)
    _adamw_update(flat_param, flat_grad, flat_m, flat_v, dt(lr), dt(beta1), dt(1 - beta1),
                  dt(beta2), dt(1 - beta2), dt(1.0 / (1 - beta1 ** step)),
                  dt(1.0 / (1 - beta2 ** step)), dt(eps), dt(weight_decay))
    for flat, target in ((flat_param, back_param), (flat_m, back_m), (flat_v, back_v)):
        if target is not None:
            target[...] = flat.reshape(target.shape)
