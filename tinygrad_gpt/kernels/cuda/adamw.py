"""AdamW update as one CUDA kernel: one pass over a parameter, updating param, m and v in place.

Same name, signature and result as `kernels.reference.adamw_update`: every scalar is cast to the
parameter dtype first, as there; the bias corrections 1 / (1 - beta^t) are computed on the host in
float64 and passed in (no pow in the kernel, no host sync: the step count is a Python int).
Contiguous arrays are updated where they lie; a non-contiguous param, m or v goes through a
contiguous copy that is written back (correct, one extra pass).

subtle: a RawKernel, not an ElementwiseKernel. ElementwiseKernel would do the same (it generates
this loop), but its generated code needs CuPy's headers and a GPU to compile, while this source
compiles with bare NVRTC, so tests/cuda/test_cuda_compile.py checks it on machines without a GPU.

Follows: Loshchilov & Hutter, "Decoupled Weight Decay Regularization"; llm.c `adamw_kernel2`.
Does not: clip gradients, launch one kernel for all parameters (one launch per parameter, ~80 for
the gpu preset), or handle float16 / mixed dtypes (those go to the reference).

Dimension legend: P elements of one parameter (flattened).
"""
import cupy

from tinygrad_gpt.kernels import reference
from tinygrad_gpt.kernels._common import flat_inplace
from tinygrad_gpt.kernels.cuda._common import THREADS, common_float_dtype, ctype, get_kernel, grid_for

SOURCE = r"""
template <typename T>
__global__ void adamw_kernel(T* __restrict__ param, const T* __restrict__ grad, T* __restrict__ m,
                             T* __restrict__ v, long long n, T lr, T beta1, T one_minus_beta1,
                             T beta2, T one_minus_beta2, T mhat_scale, T vhat_scale, T eps,
                             T weight_decay) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const T g = grad[i];
        const T mi = beta1 * m[i] + one_minus_beta1 * g;             // m = b1 m + (1 - b1) g
        const T vi = beta2 * v[i] + one_minus_beta2 * (g * g);       // v = b2 v + (1 - b2) g^2
        m[i] = mi;
        v[i] = vi;
        const T p = param[i];
        const T update = (mi * mhat_scale) / (k_sqrt(vi * vhat_scale) + eps) + weight_decay * p;
        param[i] = p - lr * update;
    }
}
"""

NAME_EXPRESSIONS = ["adamw_kernel<float>", "adamw_kernel<double>"]


def adamw_update(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step):
    """Decoupled-weight-decay Adam (Loshchilov & Hutter), updating param, m and v in place.

    m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;  mhat = m / (1 - b1^t);  vhat = v / (1 - b2^t)
    param -= lr * (mhat / (sqrt(vhat) + eps) + wd * param)      (t = step, counted from 1)
    """
    dtype = common_float_dtype(param, grad, m, v)
    if dtype is None or not (param.shape == grad.shape == m.shape == v.shape):
        return reference.adamw_update(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step)
    if param.size == 0:
        return None
    dt = dtype.type
    flat_param, back_param = flat_inplace(param)                  # (P,)
    flat_m, back_m = flat_inplace(m)                              # (P,)
    flat_v, back_v = flat_inplace(v)                              # (P,)
    flat_grad = cupy.ascontiguousarray(grad).reshape(-1)           # (P,)
    get_kernel(SOURCE, NAME_EXPRESSIONS, f"adamw_kernel<{ctype(dtype)}>")(
        grid_for(param.size), (THREADS,),
        (flat_param, flat_grad, flat_m, flat_v, cupy.int64(param.size), dt(lr), dt(beta1),
         dt(1 - beta1), dt(beta2), dt(1 - beta2), dt(1.0 / (1 - beta1 ** step)),
         dt(1.0 / (1 - beta2 ** step)), dt(eps), dt(weight_decay)))
    for flat, target in ((flat_param, back_param), (flat_m, back_m), (flat_v, back_v)):
        if target is not None:
            target[...] = flat.reshape(target.shape)
    return None
