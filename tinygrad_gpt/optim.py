"""Optimizers and schedules: SGD, AdamW (one fused pass per parameter), clip_grad_norm, cosine LR.

AdamW's update (tinygrad_gpt/kernels/reference.py `adamw_update` writes it out) runs through the kernel
dispatch, so on CPU it is one Numba pass over each parameter and its two moment buffers.
Parameter groups let biases and LayerNorm weights skip weight decay (`decay_groups`).

Follows: Loshchilov & Hutter, "Decoupled Weight Decay Regularization" (AdamW); nanoGPT's
configure_optimizers (decay only tensors with >= 2 dims) and get_lr (linear warmup, cosine decay).
Deliberately does not: implement amsgrad, fused multi-tensor launches, or LR-scheduler classes
(the schedule is a plain function of the step).
"""
import math

import numpy as np

from tinygrad_gpt import kernels
from tinygrad_gpt.backend import array_module


def decay_groups(named_parameters, weight_decay):
    """Two AdamW groups: matrices (>= 2 dims) decay, biases and LayerNorm weights (1 dim) do not."""
    named = list(named_parameters)
    decay = [p for _, p in named if p.ndim >= 2]
    no_decay = [p for _, p in named if p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def _as_groups(params, defaults):
    params = list(params)
    if not params:
        raise ValueError("optimizer: got an empty parameter list")
    groups = params if isinstance(params[0], dict) else [{"params": params}]
    out = []
    for g in groups:
        group = dict(defaults)
        group.update(g)
        group["params"] = list(group["params"])
        for p in group["params"]:
            if not p.requires_grad:
                raise ValueError(f"optimizer: a parameter of shape {p.shape} does not require grad")
        out.append(group)
    return out


class Optimizer:
    def __init__(self, params, defaults):
        self.param_groups = _as_groups(params, defaults)

    def params(self):
        return [p for g in self.param_groups for p in g["params"]]

    def zero_grad(self):
        for p in self.params():
            p.grad = None


class SGD(Optimizer):
    """p -= lr * (g + wd p), with optional momentum buffer b = mu b + g."""

    def __init__(self, params, lr=1e-2, momentum=0.0, weight_decay=0.0):
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})
        self.buffers = {}

    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                dt = p.dtype.type
                g = p.grad + dt(group["weight_decay"]) * p.data if group["weight_decay"] else p.grad
                if group["momentum"]:
                    buf = self.buffers.get(id(p))
                    buf = g.copy() if buf is None else buf * dt(group["momentum"]) + g
                    self.buffers[id(p)] = buf
                    g = buf
                p.data -= dt(group["lr"]) * g


class AdamW(Optimizer):
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay})
        self.t = 0  # steps taken (bias correction uses t + 1 on the next step)
        self.m = [array_module(p.data).zeros_like(p.data) for p in self.params()]  # first moments
        self.v = [array_module(p.data).zeros_like(p.data) for p in self.params()]  # second moments

    def set_lr(self, lr):
        for group in self.param_groups:
            group["lr"] = lr

    def step(self):
        self.t += 1
        i = 0
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                m, v = self.m[i], self.v[i]
                i += 1
                if p.grad is None:
                    continue
                grad = p.grad if p.grad.dtype == p.dtype else p.grad.astype(p.dtype)
                kernels.for_array(p.data).adamw_update(p.data, grad, m, v, group["lr"], beta1, beta2,
                                                       group["eps"], group["weight_decay"], self.t)

    def state_dict(self):
        """Moments as numpy arrays (keyed m.{i} / v.{i} in parameter order) and the step count."""
        from tinygrad_gpt.backend import to_numpy
        arrays = {}
        for i, (m, v) in enumerate(zip(self.m, self.v)):
            arrays[f"m.{i}"] = to_numpy(m)
            arrays[f"v.{i}"] = to_numpy(v)
        return {"t": self.t, "arrays": arrays}

    def load_state_dict(self, state):
        from tinygrad_gpt.backend import to_device
        if len(state["arrays"]) != 2 * len(self.m):
            raise ValueError(f"AdamW.load_state_dict: state has {len(state['arrays']) // 2} moment pairs, "
                             f"the optimizer has {len(self.m)} parameters")
        for i, p in enumerate(self.params()):
            for name, bufs in (("m", self.m), ("v", self.v)):
                arr = np.asarray(state["arrays"][f"{name}.{i}"])
                if arr.shape != p.shape:
                    raise ValueError(f"AdamW.load_state_dict: {name}.{i} has shape {arr.shape}, "
                                     f"parameter {i} has {p.shape}")
                bufs[i] = to_device(arr.astype(p.dtype), p.device)
        self.t = int(state["t"])


def clip_grad_norm(params, max_norm):
    """Scale all gradients so their global L2 norm is at most max_norm; return the norm before.

    One BLAS dot per gradient (no temporaries) and an in-place scale: leaf gradients are arrays the
    engine owns (tensor.py copies them out of the graph), so scaling them in place is safe.
    """
    params = [p for p in params if p.grad is not None]
    if not params:
        return 0.0
    squares = [array_module(p.grad).vdot(p.grad.ravel(), p.grad.ravel()) for p in params]
    xp = array_module(params[0].grad)
    if xp is not np:
        # on the GPU nothing leaves the device: the scale is computed there and applied always
        # (1 when no clipping is needed); the norm is returned as a 0-d device array. One stack
        # and one sum for the total, one cast per dtype: each array op is a kernel launch, and a
        # Python sum / a cast per parameter would be ~150 launches a step at the gpu preset
        total = xp.sqrt(xp.stack(squares).sum())                    # ()
        scale = xp.where(xp.isfinite(total) & (total > max_norm), max_norm / (total + 1e-6), 1.0)
        scales = {}
        for p in params:
            if p.grad.dtype not in scales:
                scales[p.grad.dtype] = scale.astype(p.grad.dtype)
            p.grad *= scales[p.grad.dtype]
        return total
    total = math.sqrt(float(sum(squares)))
    if total > max_norm and math.isfinite(total):
        scale = max_norm / (total + 1e-6)
        for p in params:
            p.grad *= p.grad.dtype.type(scale)
    return total


def cosine_lr(step, max_lr, min_lr, warmup_steps, decay_steps):
    """Linear warmup from 0 to max_lr over warmup_steps, then cosine to min_lr at decay_steps.

    step counts from 0; after decay_steps the rate stays at min_lr.
    """
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= decay_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, decay_steps - warmup_steps)  # 0 -> 1
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (max_lr - min_lr)
