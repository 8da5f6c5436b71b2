"""Muon's two elementwise passes as CUDA kernels: the Nesterov momentum, and the update's apply.

Same names, signatures and results as `kernels.reference.muon_momentum` / `muon_apply`: every
scalar is cast to the parameter dtype first, as there (1 - lr wd and lr * scale are computed on the
host in float64). Between the two the optimizer runs the Newton-Schulz iteration: matrix products,
which CuPy sends to cuBLAS. Contiguous arrays are updated where they lie; a non-contiguous param or
momentum goes through a contiguous copy that is written back (correct, one extra pass).

subtle: RawKernels, not ElementwiseKernels, for the reason adamw.py gives: this source compiles
with bare NVRTC, so tests/cuda/test_cuda_compile.py checks it on machines without a GPU.

Follows: Keller Jordan's Muon (`muon_update` and the step of `SingleDeviceMuon`).
Does not: orthogonalise (optim.newton_schulz does), launch one kernel for all matrices, or handle
float16 / mixed dtypes (those go to the reference).

Dimension legend: P elements of one weight matrix (flattened).
"""
import cupy

from tinygrad_gpt.kernels import reference
from tinygrad_gpt.kernels._common import flat_inplace
from tinygrad_gpt.kernels.cuda._common import THREADS, common_float_dtype, ctype, get_kernel, grid_for

SOURCE = r"""
template <typename T>
__global__ void muon_momentum_kernel(const T* __restrict__ grad, T* __restrict__ momentum,
                                     T* __restrict__ out, long long n, T beta, T one_minus_beta) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const T g = grad[i];
        const T m = beta * momentum[i] + one_minus_beta * g;          // m = b m + (1 - b) g
        momentum[i] = m;
        out[i] = beta * m + one_minus_beta * g;                        // u = b m + (1 - b) g
    }
}

template <typename T>
__global__ void muon_apply_kernel(T* __restrict__ param, const T* __restrict__ update, long long n,
                                  T keep, T step) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        param[i] = param[i] * keep - step * update[i];                 // p = p (1 - lr wd) - lr s u
    }
}
"""

NAME_EXPRESSIONS = ["muon_momentum_kernel<float>", "muon_momentum_kernel<double>",
                    "muon_apply_kernel<float>", "muon_apply_kernel<double>"]


def muon_momentum(grad, momentum, beta):
    """Muon's Nesterov momentum: updates `momentum` in place, returns what Newton-Schulz orthogonalises.

    m = beta m + (1 - beta) g;  u = beta m + (1 - beta) g   (the new m: one more momentum step ahead)
    """
    dtype = common_float_dtype(grad, momentum)
    if dtype is None or grad.shape != momentum.shape:
        return reference.muon_momentum(grad, momentum, beta)
    out = cupy.empty(momentum.shape, dtype=dtype)                  # momentum's shape
    if momentum.size == 0:
        return out
    dt = dtype.type
    flat_m, back_m = flat_inplace(momentum)                       # (P,)
    flat_grad = cupy.ascontiguousarray(grad).reshape(-1)          # (P,)
    get_kernel(SOURCE, NAME_EXPRESSIONS, f"muon_momentum_kernel<{ctype(dtype)}>")(
        grid_for(momentum.size), (THREADS,),
        (flat_grad, flat_m, out.reshape(-1), cupy.int64(momentum.size), dt(beta), dt(1 - beta)))
    if back_m is not None:
        back_m[...] = flat_m.reshape(back_m.shape)
    return out


def muon_apply(param, update, lr, scale, weight_decay):
    """Muon's step on `param`, in place: param = param * (1 - lr wd) - lr * scale * update."""
    dtype = common_float_dtype(param, update)
    if dtype is None or param.shape != update.shape:
        return reference.muon_apply(param, update, lr, scale, weight_decay)
    if param.size == 0:
        return None
    dt = dtype.type
    flat_param, back_param = flat_inplace(param)                  # (P,)
    flat_update = cupy.ascontiguousarray(update).reshape(-1)      # (P,)
    get_kernel(SOURCE, NAME_EXPRESSIONS, f"muon_apply_kernel<{ctype(dtype)}>")(
        grid_for(param.size), (THREADS,),
        (flat_param, flat_update, cupy.int64(param.size), dt(1 - lr * weight_decay), dt(lr * scale)))
    if back_param is not None:
        back_param[...] = flat_param.reshape(back_param.shape)
    return None
