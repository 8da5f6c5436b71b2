"""Modules: parameters with names, state dicts, train/eval; Linear, Embedding, LayerNorm, RMSNorm, Dropout.

A Module finds its parameters and sub-modules by looking at its own attributes (Tensors with
requires_grad, Modules, and lists of Modules), in the order they were assigned, and names them
with dots: `h.0.attn.c_attn.weight`. Those names and the (in, out) weight layout of Linear follow
Hugging Face GPT-2, so a state dict is readable by other tools.

Follows: PyTorch nn.Module (names, state_dict, train/eval), nanoGPT's model.py. Deliberately does
not: register hooks, buffers with gradients, or parameters nested in dicts.
"""
import math

import numpy as np

from tinygrad_gpt import backend, ops
from tinygrad_gpt.tensor import Tensor


class Module:
    training = True

    def named_children(self):
        for name, value in vars(self).items():
            if isinstance(value, Module):
                yield name, value
            elif isinstance(value, (list, tuple)) and value and all(isinstance(m, Module) for m in value):
                for i, m in enumerate(value):
                    yield f"{name}.{i}", m

    def named_parameters(self, prefix=""):
        """(dotted name, Tensor) for every parameter, each shared tensor once (first name wins)."""
        seen = set()
        for name, p in self._named_parameters_all(prefix):
            if id(p) not in seen:
                seen.add(id(p))
                yield name, p

    def _named_parameters_all(self, prefix):
        for name, value in vars(self).items():
            if isinstance(value, Tensor) and value.requires_grad:
                yield prefix + name, value
        for name, child in self.named_children():
            yield from child._named_parameters_all(f"{prefix}{name}.")

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def modules(self):
        yield self
        for _, child in self.named_children():
            yield from child.modules()

    def train(self, mode=True):
        for m in self.modules():
            m.training = mode
        return self

    def eval(self):
        return self.train(False)

    def zero_grad(self):
        for p in self.parameters():
            p.grad = None

    def num_parameters(self):
        return sum(p.size for p in self.parameters())

    @property
    def device(self):
        """The device the parameters live on ("cpu" for a module without any).

        Derived from the parameters rather than stored, so it stays right after `to(device)`."""
        for _, p in self.named_parameters():
            return p.device
        return "cpu"

    def to(self, device):
        """Move every tensor of the module in place: the parameters and constant tensors (e.g. the
        fixed zero bias of a LayerNorm without bias). Optimizers must be made after this."""
        backend.check_device(device)
        for m in self.modules():
            for value in vars(m).values():
                if isinstance(value, Tensor) and value.device != device:
                    value.data = backend.to_device(value.data, device)
                    value.device = device
                    value.grad = None
        return self

    def state_dict(self):
        """{name: numpy array} (copies, on the CPU) for every parameter."""
        return {name: backend.to_numpy(p.data).copy() for name, p in self.named_parameters()}

    def load_state_dict(self, state, strict=True):
        """Copy arrays into the parameters; names and shapes must match (all of them if strict)."""
        params = dict(self.named_parameters())
        missing = [n for n in params if n not in state]
        unexpected = [n for n in state if n not in params]
        if strict and (missing or unexpected):
            raise KeyError(f"load_state_dict: missing {missing[:8]}{'...' if len(missing) > 8 else ''}, "
                           f"unexpected {unexpected[:8]}{'...' if len(unexpected) > 8 else ''}")
        for name, p in params.items():
            if name not in state:
                continue
            value = np.asarray(backend.to_numpy(state[name]) if not isinstance(state[name], np.ndarray)
                               else state[name])
            if value.shape != p.shape:
                raise ValueError(f"load_state_dict: {name} has shape {value.shape} in the state dict, "
                                 f"the model expects {p.shape}")
            p.data = backend.to_device(value.astype(p.dtype, copy=True), p.device)
            p.grad = None
        return self

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, *args, **kwargs):
        raise NotImplementedError


def _param(array, device):
    return Tensor(array, requires_grad=True, device="cpu").to(device)


class Linear(Module):
    """y = x @ weight + bias with weight stored (in_features, out_features), as GPT-2's Conv1D."""

    def __init__(self, in_features, out_features, bias=True, rng=None, std=None, dtype=np.float32, device="cpu"):
        rng = rng if rng is not None else np.random.default_rng()
        std = std if std is not None else 1.0 / math.sqrt(in_features)
        self.weight = _param(rng.normal(0.0, std, (in_features, out_features)).astype(dtype), device)  # (in, out)
        self.bias = _param(np.zeros(out_features, dtype=dtype), device) if bias else None               # (out,)

    def forward(self, x):
        if x.shape[-1] != self.weight.shape[0]:
            raise ValueError(f"Linear: input has {x.shape[-1]} features (shape {x.shape}), "
                             f"the layer expects {self.weight.shape[0]}")
        return ops.linear(x, self.weight, self.bias)              # (..., out)


class Embedding(Module):
    """A (num_embeddings, dim) table; forward picks rows by integer id."""

    def __init__(self, num_embeddings, dim, rng=None, std=0.02, dtype=np.float32, device="cpu"):
        rng = rng if rng is not None else np.random.default_rng()
        self.weight = _param(rng.normal(0.0, std, (num_embeddings, dim)).astype(dtype), device)  # (V, C)

    def forward(self, idx):
        return ops.embedding(self.weight, idx)                   # (..., C)


class LayerNorm(Module):
    def __init__(self, dim, bias=True, eps=1e-5, dtype=np.float32, device="cpu"):
        self.weight = _param(np.ones(dim, dtype=dtype), device)   # (C,)
        # subtle: without bias the op still needs one; a constant zero that takes no gradient
        self.bias = _param(np.zeros(dim, dtype=dtype), device) if bias else \
            Tensor(np.zeros(dim, dtype=dtype), device="cpu").to(device)
        self.eps = eps

    def forward(self, x):
        return ops.layer_norm(x, self.weight, self.bias, self.eps)


class RMSNorm(Module):
    """x * rstd * weight over the last axis, rstd = 1 / sqrt(mean(x^2) + eps): no mean, no bias."""

    def __init__(self, dim, eps=1e-5, dtype=np.float32, device="cpu"):
        self.weight = _param(np.ones(dim, dtype=dtype), device)   # (C,)
        self.eps = eps

    def forward(self, x):
        return ops.rms_norm(x, self.weight, self.eps)


class Dropout(Module):
    """Dropout with its own seeded generator, so runs are reproducible and resumable."""

    def __init__(self, p, rng=None):
        if not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout: p must be in [0, 1), got {p}")
        self.p = p
        self.rng = rng if rng is not None else np.random.default_rng()

    def forward(self, x):
        return ops.dropout(x, self.p, self.rng, training=self.training)
