"""Optimizers and schedules: SGD, AdamW, Muon (fused update kernels), clip_grad_norm, cosine and WSD LR.

AdamW's update (tinygrad_gpt/kernels/reference.py `adamw_update` writes it out) runs through the kernel
dispatch, so on CPU it is one Numba pass over each parameter and its two moment buffers.
Parameter groups let biases and LayerNorm weights skip weight decay (`decay_groups`).

Muon (MomentUm Orthogonalized by Newton-Schulz) trains the 2-D weights of the blocks: it keeps
SGD's Nesterov momentum and replaces each matrix's update by the nearest semi-orthogonal matrix
(every singular value moved towards 1), computed by `newton_schulz`, a few matrix products in the
parameter's dtype. The two elementwise passes around it (momentum before, the weight update after:
`kernels.reference.muon_momentum` / `muon_apply`) run through the kernel dispatch as AdamW does.
Matrices of one shape are orthogonalised together, as one stacked matmul. `MuonWithAdamW` is the
GPT's optimizer with Muon: Muon for the blocks' matrices (`split_for_muon`), AdamW for the
embeddings (the lm head is tied to wte), gains and biases, one `step` and one schedule.

Follows: Loshchilov & Hutter, "Decoupled Weight Decay Regularization" (AdamW); nanoGPT's
configure_optimizers (decay only tensors with >= 2 dims) and get_lr (linear warmup, cosine decay);
Keller Jordan's Muon (github.com/KellerJordan/Muon: the quintic Newton-Schulz coefficients, the
Frobenius normalisation, the max(1, rows / cols) ** 0.5 scale) and the modded-nanogpt speedrun's
warm-up / constant / linear cool-down schedule. Deliberately does not: implement amsgrad, fused
multi-tensor launches, LR-scheduler classes (a schedule is a plain function of the step), or
Muon in bfloat16 (NumPy has none; the iteration runs in the parameter's dtype).

Dimension legend: k matrices of one shape, m <= n the short and long side of a matrix.
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

    def state_arrays(self):
        """Every state array (moments), to broadcast in place from one process to the others."""
        return self.m + self.v

    def load_state_dict(self, state):
        from tinygrad_gpt.backend import to_device
        if not isinstance(state, dict) or "arrays" not in state or "t" not in state:
            raise ValueError(f"AdamW.load_state_dict: expected AdamW's state ({{'t', 'arrays'}}), got keys "
                             f"{sorted(state) if isinstance(state, dict) else type(state).__name__}")
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


def wsd_lr(step, max_lr, min_lr, warmup_steps, total_steps, cooldown_frac):
    """Warm-up, stable, decay: linear warm-up from 0 to max_lr over warmup_steps, max_lr, then a
    linear cool-down to min_lr over the last cooldown_frac of total_steps.

    step counts from 0, as in cosine_lr: the cool-down starts at total_steps * (1 - cooldown_frac)
    and reaches min_lr at total_steps (after the last step); after that the rate stays at min_lr.
    The warm-up wins where it overlaps the cool-down (a run shorter than its warm-up).
    """
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= total_steps:
        return min_lr
    cooldown = cooldown_frac * total_steps
    start = total_steps - cooldown                                  # first step of the cool-down
    if step < start:
        return max_lr
    progress = (step - start) / cooldown                            # 0 -> 1
    return max_lr + (min_lr - max_lr) * progress


# ---- Muon ----------------------------------------------------------------------------------------
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # quintic: slope 3.4445 at 0, so 5 steps take every singular
                                             # value >= 0.003 (of X, normalised) into [0.68, 1.21], not to 1


def newton_schulz(G, steps=5, eps=1e-7):
    """The semi-orthogonal matrix nearest to G (U V^T of G = U S V^T), approximately: `steps` quintic
    Newton-Schulz iterations move each singular value into [0.68, 1.21] (5 steps; those below 0.003 of
    ||G||_F stay smaller), which trains as well as U V^T (Keller Jordan's measurement).

    G: (..., rows, cols), a matrix or a stack of them, float32 or float64 (the arithmetic stays in
    G's dtype). X = G / (||G||_F + eps) has every singular value <= 1; then, on the short side
    (X transposed when rows > cols, so that A is m x m with m the smaller size),
        A = X X^T;   X = a X + (b A + c A A) X
    which maps each singular value s to a s + b s^3 + c s^5. Returns an array of G's shape.
    """
    xp = array_module(G)
    dt = G.dtype.type
    a, b, c = (dt(k) for k in NS_COEFFICIENTS)
    tall = G.shape[-2] > G.shape[-1]
    X = G.swapaxes(-2, -1) if tall else G                         # (..., m, n)
    norm = xp.sqrt((X * X).sum(axis=(-2, -1), keepdims=True))     # (..., 1, 1)
    X = xp.ascontiguousarray(X / (norm + dt(eps)))                 # (..., m, n)  ||X||_2 <= ||X||_F <= 1
    for _ in range(steps):
        A = X @ X.swapaxes(-2, -1)                                 # (..., m, m)
        B = b * A + c * (A @ A)                                    # (..., m, m)
        X = a * X + B @ X                                          # (..., m, n)
    return X.swapaxes(-2, -1) if tall else X                       # (..., rows, cols)


def muon_scale(shape):
    """Muon's shape factor for a weight stored (in, out), as the project's Linear stores it:
    max(1, fan_out / fan_in) ** 0.5, the reference's max(1, rows / cols) ** 0.5 of PyTorch's
    (out, in) weights. A semi-orthogonal (in, out) update with out > in has RMS sqrt(1 / out); the
    factor keeps a wide matrix's per-element update as large as a square one's would be."""
    fan_in, fan_out = shape
    return max(1.0, fan_out / fan_in) ** 0.5


class Muon(Optimizer):
    """Muon for 2-D weights stored (in, out): Nesterov momentum, orthogonalised, scaled, applied.

    Per matrix W with gradient g (Keller Jordan's `muon_update` and step):
        m = beta m + (1 - beta) g;  u = beta m + (1 - beta) g           (kernels: muon_momentum)
        O = newton_schulz(u, ns_steps)                                   (matmuls, stacked per shape)
        W = W (1 - lr wd) - lr * muon_scale(W.shape) * O                 (kernels: muon_apply)
    lr is in units of spectral norm per step; weight_decay is decoupled, as AdamW's.
    """

    def __init__(self, params, lr=0.02, momentum=0.95, ns_steps=5, weight_decay=0.0):
        super().__init__(params, {"lr": lr, "momentum": momentum, "ns_steps": ns_steps,
                                  "weight_decay": weight_decay})
        for p in self.params():
            if p.ndim != 2:
                raise ValueError(f"Muon: parameters must be matrices (2-D), got one of shape {p.shape}; "
                                 f"train embeddings, gains and biases with AdamW (MuonWithAdamW does)")
        self.momentum = [array_module(p.data).zeros_like(p.data) for p in self.params()]  # per matrix

    def set_lr(self, lr):
        for group in self.param_groups:
            group["lr"] = lr

    def step(self):
        i = 0
        for group in self.param_groups:
            by_shape = {}  # shape -> [(param, momentum-applied update)], orthogonalised as one stack
            for p in group["params"]:
                buf = self.momentum[i]
                i += 1
                if p.grad is None:
                    continue
                grad = p.grad if p.grad.dtype == p.dtype else p.grad.astype(p.dtype)
                u = kernels.for_array(p.data).muon_momentum(grad, buf, group["momentum"])  # (in, out)
                by_shape.setdefault(p.shape, []).append((p, u))
            for shape, items in by_shape.items():
                xp = array_module(items[0][1])
                stack = xp.stack([u for _, u in items])                                  # (k, in, out)
                ortho = newton_schulz(stack, group["ns_steps"])                          # (k, in, out)
                scale = muon_scale(shape)
                for (p, _), o in zip(items, ortho):
                    kernels.for_array(p.data).muon_apply(p.data, o, group["lr"], scale, group["weight_decay"])

    def state_arrays(self):
        """Every state array (momentum buffers), to broadcast in place from one process to the others."""
        return list(self.momentum)

    def state_dict(self):
        """Momentum buffers as numpy arrays, keyed momentum.{i} in parameter order."""
        from tinygrad_gpt.backend import to_numpy
        return {"arrays": {f"momentum.{i}": to_numpy(m) for i, m in enumerate(self.momentum)}}

    def load_state_dict(self, state):
        from tinygrad_gpt.backend import to_device
        if not isinstance(state, dict) or "arrays" not in state:
            raise ValueError(f"Muon.load_state_dict: expected Muon's state ({{'arrays'}}), got keys "
                             f"{sorted(state) if isinstance(state, dict) else type(state).__name__}")
        if len(state["arrays"]) != len(self.momentum):
            raise ValueError(f"Muon.load_state_dict: state has {len(state['arrays'])} momentum buffers, "
                             f"the optimizer has {len(self.momentum)} matrices")
        for i, p in enumerate(self.params()):
            arr = np.asarray(state["arrays"][f"momentum.{i}"])
            if arr.shape != p.shape:
                raise ValueError(f"Muon.load_state_dict: momentum.{i} has shape {arr.shape}, "
                                 f"matrix {i} has {p.shape}")
            self.momentum[i] = to_device(arr.astype(p.dtype), p.device)


def split_for_muon(named_parameters):
    """([(name, p)] for Muon, [(name, p)] for AdamW) of a GPT's parameters.

    Muon: the 2-D weights inside the blocks (names h.{i}.*: the attention and MLP matrices).
    AdamW: everything else, the embeddings (wte is also the tied lm head), gains and biases:
    Muon is for hidden matrices, not for lookup tables or the output layer.
    """
    hidden, rest = [], []
    for name, p in named_parameters:
        (hidden if name.startswith("h.") and p.ndim == 2 else rest).append((name, p))
    return hidden, rest


class MuonWithAdamW:
    """A GPT's optimizer with Muon: Muon for the blocks' matrices, AdamW (decay_groups) for the rest.

    One step, one schedule: set_lr(lr) gives AdamW lr and Muon muon_lr * lr / lr_peak, so both
    follow the same warm-up and decay shape, each from its own peak. The optimizer state is both
    optimizers' (state_dict: {"adamw": ..., "muon": ...}); t counts steps, as AdamW's.
    """

    def __init__(self, named_parameters, lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1, muon_lr=0.02,
                 muon_momentum=0.95, ns_steps=5, muon_weight_decay=0.0):
        hidden, rest = split_for_muon(named_parameters)
        if not hidden:
            raise ValueError("MuonWithAdamW: the model has no 2-D weights in blocks named h.{i} for Muon")
        self.adamw = AdamW(decay_groups(rest, weight_decay), lr=lr, betas=betas)
        self.muon = Muon([p for _, p in hidden], lr=muon_lr, momentum=muon_momentum, ns_steps=ns_steps,
                         weight_decay=muon_weight_decay)
        self.lr_peak, self.muon_lr_peak = lr, muon_lr

    @property
    def param_groups(self):
        return self.adamw.param_groups + self.muon.param_groups

    @property
    def t(self):
        return self.adamw.t

    @t.setter
    def t(self, value):
        self.adamw.t = value

    def params(self):
        return self.adamw.params() + self.muon.params()

    def zero_grad(self):
        self.adamw.zero_grad()
        self.muon.zero_grad()

    def set_lr(self, lr):
        self.adamw.set_lr(lr)
        self.muon.set_lr(self.muon_lr_peak * lr / self.lr_peak)

    def step(self):
        self.adamw.step()
        self.muon.step()

    def state_arrays(self):
        return self.adamw.state_arrays() + self.muon.state_arrays()

    def state_dict(self):
        return {"adamw": self.adamw.state_dict(), "muon": self.muon.state_dict()}

    def load_state_dict(self, state):
        if not isinstance(state, dict) or set(state) != {"adamw", "muon"}:
            raise ValueError(f"MuonWithAdamW.load_state_dict: expected the state of Muon with AdamW "
                             f"({{'adamw', 'muon'}}), got keys "
                             f"{sorted(state) if isinstance(state, dict) else type(state).__name__}")
        self.adamw.load_state_dict(state["adamw"])
        self.muon.load_state_dict(state["muon"])
