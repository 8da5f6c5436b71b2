"""Neural-network ops: softmax, log_softmax, cross_entropy, layer_norm, rms_norm, dropout, embedding.

The fused ones (cross_entropy, layer_norm, rms_norm, embedding's backward, gelu) call `kernels.for_array(x)`,
which is the Numba kernel on CPU, the CuPy kernel on GPU, or the NumPy reference in
tinygrad_gpt/kernels/reference.py (where their equations are written out) when TINYGRAD_GPT_KERNELS=reference.

Dimension legend: N rows, C channels, V classes/vocabulary; "..." any leading axes.
Follows: llm.c (layernorm, crossentropy_softmax_backward), PyTorch's functional signatures.
Deliberately does not: support label smoothing or class weights in cross_entropy.
"""
import numpy as np

from tinygrad_gpt import kernels
from tinygrad_gpt.backend import array_module
from tinygrad_gpt.ops.elementwise import check_float
from tinygrad_gpt.tensor import Function, unwrap


class Softmax(Function):
    @staticmethod
    def forward(ctx, a, axis=-1):
        check_float("softmax", a)
        xp = array_module(a)
        e = xp.exp(a - a.max(axis=axis, keepdims=True))           # (X)  subtract the max: no overflow
        ctx.out = e / e.sum(axis=axis, keepdims=True)             # (X)
        ctx.axis = axis
        return ctx.out

    @staticmethod
    def backward(ctx, dout):
        # forward: p_i = exp(a_i) / sum_j exp(a_j), so da_i = p_i (dout_i - sum_j p_j dout_j)
        p = ctx.out
        return p * (dout - (p * dout).sum(axis=ctx.axis, keepdims=True))


class LogSoftmax(Function):
    @staticmethod
    def forward(ctx, a, axis=-1):
        check_float("log_softmax", a)
        xp = array_module(a)
        shifted = a - a.max(axis=axis, keepdims=True)             # (X)
        out = shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))  # (X)
        ctx.out, ctx.axis = out, axis
        return out

    @staticmethod
    def backward(ctx, dout):
        # forward: out_i = a_i - log sum_j exp(a_j), so da_i = dout_i - softmax_i * sum_j dout_j
        xp = array_module(dout)
        return dout - xp.exp(ctx.out) * dout.sum(axis=ctx.axis, keepdims=True)


class CrossEntropy(Function):
    """Mean over the non-ignored targets of -log softmax(logits)[target]; logits (..., V)."""

    @staticmethod
    def forward(ctx, logits, targets, ignore_index=-100):
        check_float("cross_entropy", logits)
        xp = array_module(logits)
        V = logits.shape[-1]
        targets = xp.asarray(targets)
        if targets.shape != logits.shape[:-1]:
            raise ValueError(f"cross_entropy: targets of shape {targets.shape} do not match logits "
                             f"{logits.shape} (expected {logits.shape[:-1]})")
        if targets.dtype.kind not in "iu":
            raise TypeError(f"cross_entropy: targets must be integers, got dtype {targets.dtype}")
        targets = targets.reshape(-1)                             # (N,)
        valid = targets != ignore_index
        if xp is np:
            count = int(valid.sum())
            if count == 0:
                raise ValueError("cross_entropy: every target equals ignore_index, the mean is undefined")
            bad = valid & ((targets < 0) | (targets >= V))
            if bool(bad.any()):
                first = int(targets[bad][0])
                raise IndexError(f"cross_entropy: target {first} is out of range for {V} classes")
            count = logits.dtype.type(count)
        else:
            # subtle: on the GPU these checks would copy to the host (a sync) every step; the count
            # stays a 0-d device array, and the CUDA kernel gives a NaN loss for a bad target
            count = valid.sum().astype(logits.dtype)              # ()
        logits2 = logits.reshape(-1, V)                           # (N, V)
        k = kernels.for_array(logits2)
        losses, lse = k.softmax_cross_entropy_forward(logits2, targets, ignore_index)  # (N,), (N,)
        ctx.logits, ctx.lse, ctx.targets = logits2, lse, targets
        ctx.ignore_index, ctx.count, ctx.in_shape = ignore_index, count, logits.shape
        return xp.asarray(losses.sum() / count, dtype=logits.dtype)  # ()

    @staticmethod
    def backward(ctx, dout):
        # forward: loss = sum_n losses_n / count, so dlosses_n = dout / count for every valid row
        xp = array_module(dout)
        dlosses = xp.asarray(dout / ctx.count, dtype=ctx.logits.dtype)  # () broadcast by the kernel
        k = kernels.for_array(ctx.logits)
        dlogits = k.softmax_cross_entropy_backward(dlosses, ctx.logits, ctx.lse, ctx.targets, ctx.ignore_index)
        return dlogits.reshape(ctx.in_shape)                      # (..., V)


def cross_entropy(logits, targets, ignore_index=-100):
    """Mean cross-entropy of logits (..., V) against integer targets (...); ignore_index rows skipped."""
    targets = unwrap(targets)
    return CrossEntropy.apply(logits, targets=targets, ignore_index=ignore_index)


class LayerNormOp(Function):
    """Normalise over the last axis, then scale and shift: (..., C) with weight, bias (C,)."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps=1e-5):
        check_float("layer_norm", x, weight, bias)
        C = x.shape[-1]
        if weight.shape != (C,) or bias.shape != (C,):
            raise ValueError(f"layer_norm: input has {C} channels but weight is {weight.shape}, bias {bias.shape}")
        x2 = x.reshape(-1, C)                                     # (N, C)
        out, mean, rstd = kernels.for_array(x2).layernorm_forward(x2, weight, bias, eps)  # (N, C), (N,), (N,)
        ctx.x, ctx.weight, ctx.mean, ctx.rstd, ctx.in_shape = x2, weight, mean, rstd, x.shape
        return out.reshape(x.shape)                               # (..., C)

    @staticmethod
    def backward(ctx, dout):
        dout2 = dout.reshape(ctx.x.shape)                         # (N, C)
        dx, dweight, dbias = kernels.for_array(dout2).layernorm_backward(dout2, ctx.x, ctx.weight, ctx.mean, ctx.rstd)
        return dx.reshape(ctx.in_shape), dweight, dbias


def layer_norm(x, weight, bias, eps=1e-5):
    return LayerNormOp.apply(x, weight, bias, eps=eps)


class RMSNormOp(Function):
    """Normalise by the root mean square over the last axis, then scale: (..., C) with weight (C,),
    or without a weight (`rms_norm(x)`: no gain, as the model's QK-norm uses it).

        out = x * rstd * weight,  rstd = 1 / sqrt(mean(x^2) + eps)

    Layer norm without the mean subtraction and without the bias (Zhang & Sennrich 2019). The
    equations and the backward are written out in tinygrad_gpt/kernels/reference.py.
    """

    @staticmethod
    def forward(ctx, x, weight=None, eps=1e-5):
        check_float("rms_norm", x, *(() if weight is None else (weight,)))
        C = x.shape[-1]
        if weight is not None and weight.shape != (C,):
            raise ValueError(f"rms_norm: input has {C} channels but weight is {weight.shape}, expected ({C},)")
        x2 = x.reshape(-1, C)                                     # (N, C)
        out, rstd = kernels.for_array(x2).rmsnorm_forward(x2, weight, eps)  # (N, C), (N,)
        ctx.x, ctx.weight, ctx.rstd, ctx.in_shape = x2, weight, rstd, x.shape
        return out.reshape(x.shape)                               # (..., C)

    @staticmethod
    def backward(ctx, dout):
        dout2 = dout.reshape(ctx.x.shape)                         # (N, C)
        dx, dweight = kernels.for_array(dout2).rmsnorm_backward(dout2, ctx.x, ctx.weight, ctx.rstd)
        dx = dx.reshape(ctx.in_shape)                             # (..., C)
        return dx if ctx.weight is None else (dx, dweight)


def rms_norm(x, weight=None, eps=1e-5):
    """RMSNorm of x (..., C) over its last axis, times weight (C,) if one is given."""
    if weight is None:
        return RMSNormOp.apply(x, eps=eps)
    return RMSNormOp.apply(x, weight, eps=eps)


class DropoutOp(Function):
    """Inverted dropout: zero each element with probability p, scale the rest by 1 / (1 - p).

    The mask is a hash of (seed, element index) (kernels: dropout_forward / dropout_backward), the
    seed drawn from the layer's host generator: one seeded stream on both devices (reproducible,
    and resumable, since only the host generator's state is checkpointed), the same mask on CPU
    and GPU, nothing drawn or uploaded on the GPU, and no mask kept for backward (recomputed).
    """

    @staticmethod
    def forward(ctx, a, p, rng):
        check_float("dropout", a)
        ctx.p = p
        ctx.seed = int(rng.integers(2 ** 63))
        return kernels.for_array(a).dropout_forward(a, p, ctx.seed)

    @staticmethod
    def backward(ctx, dout):
        # forward: out = a * keep / (1 - p), so da = dout * keep / (1 - p), keep recomputed
        return kernels.for_array(dout).dropout_backward(dout, ctx.p, ctx.seed)


def dropout(x, p, rng, training=True):
    """Dropout with probability p using numpy Generator `rng` (seedable); identity when not training."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout: p must be in [0, 1), got {p}")
    if not training or p == 0.0:
        return x
    return DropoutOp.apply(x, p=p, rng=rng)


class EmbeddingOp(Function):
    """out[...] = weight[idx[...]]: rows of a (V, C) table picked by integer ids."""

    @staticmethod
    def forward(ctx, weight, idx):
        xp = array_module(weight)
        idx = xp.asarray(idx)
        V = weight.shape[0]
        if idx.dtype.kind not in "iu":
            raise TypeError(f"embedding: ids must be integers, got dtype {idx.dtype}")
        # ids on the GPU are not checked here (a sync per call); GPT.forward checks them on the host
        if xp is np and idx.size and (int(idx.min()) < 0 or int(idx.max()) >= V):
            bad = int(idx.max()) if int(idx.max()) >= V else int(idx.min())
            raise IndexError(f"embedding: token id {bad} is out of range for a table of {V} rows")
        ctx.idx, ctx.V = idx.reshape(-1), V
        return weight[idx]                                        # (..., C)

    @staticmethod
    def backward(ctx, dout):
        # forward: out[n] = weight[idx[n]], so dweight[idx[n]] += dout[n] (ids may repeat)
        dout2 = dout.reshape(-1, dout.shape[-1])                  # (N, C)
        return kernels.for_array(dout2).embedding_backward(dout2, ctx.idx, ctx.V)


def embedding(weight, idx):
    idx = unwrap(idx)
    return EmbeddingOp.apply(weight, idx=idx)
