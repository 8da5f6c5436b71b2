"""RMSNorm over the last axis, forward and backward, as CUDA kernels (CuPy RawModule).

Same names, signatures and results as `kernels.reference.rmsnorm_forward/backward`; float32 and
float64 (templates), the input dtype kept throughout; `weight` None (no gain) is a flag, and then
backward returns dweight None. Other dtypes go to the reference. The launches are layer norm's
(kernels/cuda/layernorm.py), one reduction fewer:

- forward: one warp per row (8 rows per 256-thread block); the lanes stride over C and the sum of
  squares is a warp-shuffle reduction.
- backward dx: one warp per row, one shuffle reduction (mean(dxhat * xhat)).
- backward dweight: column sums over all N rows, deterministic (no atomics): a first kernel gives
  each (32-row chunk, column) one thread, a second adds the chunks of each column in order.

Follows: Zhang & Sennrich 2019 (RMSNorm); llm.c `layernorm_forward_kernel3` / `layernorm_backward`
for the launch shapes. Does not: normalise over any axis but the last, or fuse the residual add.

Dimension legend: N rows, C channels, G row chunks of the dweight reduction.
"""
import cupy

from tinygrad_gpt.kernels import reference
from tinygrad_gpt.kernels.cuda._common import THREADS, ceil_div, common_float_dtype, ctype, get_kernel

ROWS_PER_CHUNK = 32  # rows each thread of the dweight partial-sum kernel adds up
COLS_PER_BLOCK = 128

SOURCE = r"""
// weight is read only when has_weight is nonzero (RMSNorm without a gain passes any pointer)
template <typename T>
__global__ void rmsnorm_forward_kernel(const T* __restrict__ x, const T* __restrict__ weight, int has_weight,
                                       T* __restrict__ out, T* __restrict__ rstd, int N, int C, T eps) {
    const int lane = threadIdx.x & 31;
    const long long row = (long long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= N) return;  // the whole warp leaves together, so no shuffle misses a lane
    const T* xr = x + row * C;
    // forward 1-2: rstd = 1 / sqrt(mean(x^2) + eps)
    T ss = T(0);
    for (int c = lane; c < C; c += 32) ss += xr[c] * xr[c];
    const T r = T(1) / k_sqrt(warp_sum(ss) / T(C) + eps);
    // forward 3-4: out = x * rstd * weight
    T* o = out + row * C;
    for (int c = lane; c < C; c += 32) o[c] = has_weight ? (xr[c] * r) * weight[c] : xr[c] * r;
    if (lane == 0) rstd[row] = r;
}

template <typename T>
__global__ void rmsnorm_backward_dx_kernel(const T* __restrict__ dout, const T* __restrict__ x,
                                           const T* __restrict__ weight, int has_weight,
                                           const T* __restrict__ rstd, T* __restrict__ dx, int N, int C) {
    const int lane = threadIdx.x & 31;
    const long long row = (long long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= N) return;
    const T* g = dout + row * C;
    const T* xr = x + row * C;
    const T r = rstd[row];
    // forward 4: out = xhat * weight, so dxhat = dout * weight
    T s = T(0);
    for (int c = lane; c < C; c += 32) {
        const T dxhat = has_weight ? g[c] * weight[c] : g[c];
        s += dxhat * (xr[c] * r);
    }
    const T mean_dxhat_xhat = warp_sum(s) / T(C);
    // forward 1-3: dx = rstd * (dxhat - xhat * mean(dxhat * xhat))
    T* d = dx + row * C;
    for (int c = lane; c < C; c += 32) {
        const T dxhat = has_weight ? g[c] * weight[c] : g[c];
        d[c] = r * (dxhat - (xr[c] * r) * mean_dxhat_xhat);
    }
}

// grid (ceil(C / blockDim.x), G): thread (chunk, c) sums rows [chunk * rows, (chunk + 1) * rows)
template <typename T>
__global__ void rmsnorm_backward_dweight_partial_kernel(const T* __restrict__ dout, const T* __restrict__ x,
                                                        const T* __restrict__ rstd,
                                                        T* __restrict__ partial_dweight, int N, int C, int rows) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    const int chunk = blockIdx.y;
    if (c >= C) return;
    const long long n0 = (long long)chunk * rows;
    const long long n1 = min((long long)N, n0 + rows);
    T dw = T(0);
    for (long long n = n0; n < n1; n++)
        dw += dout[n * C + c] * (x[n * C + c] * rstd[n]);  // forward 4: dweight = sum_n dout * xhat
    partial_dweight[(long long)chunk * C + c] = dw;
}

template <typename T>
__global__ void rmsnorm_backward_dweight_reduce_kernel(const T* __restrict__ partial_dweight,
                                                       T* __restrict__ dweight, int G, int C) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    T dw = T(0);
    for (int g = 0; g < G; g++) dw += partial_dweight[(long long)g * C + c];  // in chunk order: deterministic
    dweight[c] = dw;
}
"""

NAME_EXPRESSIONS = [f"{kernel}<{t}>" for t in ("float", "double") for kernel in (
    "rmsnorm_forward_kernel", "rmsnorm_backward_dx_kernel",
    "rmsnorm_backward_dweight_partial_kernel", "rmsnorm_backward_dweight_reduce_kernel")]


def _kernel(name, dtype):
    return get_kernel(SOURCE, NAME_EXPRESSIONS, f"{name}<{ctype(dtype)}>")


def rmsnorm_forward(x, weight, eps=1e-5):
    """out = x * rstd * weight, rstd = 1 / sqrt(mean(x^2) + eps), per row. x (N, C); weight (C,),
    or None for no gain (out = x * rstd). Returns out, rstd."""
    has_weight = weight is not None
    dtype = common_float_dtype(x, weight) if has_weight else common_float_dtype(x)
    if dtype is None or x.ndim != 2 or x.shape[1] == 0 or (has_weight and weight.shape != x.shape[1:]):
        return reference.rmsnorm_forward(x, weight, eps)
    N, C = x.shape
    out = cupy.empty((N, C), dtype=dtype)                          # (N, C)
    rstd = cupy.empty(N, dtype=dtype)                              # (N,)
    if N:
        x = cupy.ascontiguousarray(x)
        w = cupy.ascontiguousarray(weight) if has_weight else x   # x: a pointer of the right type, unread
        _kernel("rmsnorm_forward_kernel", dtype)(
            (ceil_div(N, THREADS // 32),), (THREADS,),
            (x, w, cupy.int32(has_weight), out, rstd, cupy.int32(N), cupy.int32(C), dtype.type(eps)))
    return out, rstd


def rmsnorm_backward(dout, x, weight, rstd):
    """Gradients of rmsnorm_forward: dx (N, C), and dweight (C,) (None when weight is None)."""
    has_weight = weight is not None
    dtype = common_float_dtype(dout, x, rstd, *((weight,) if has_weight else ()))
    if dtype is None or x.ndim != 2 or dout.shape != x.shape or rstd.shape != x.shape[:1] or x.shape[1] == 0 \
            or (has_weight and weight.shape != x.shape[1:]):
        return reference.rmsnorm_backward(dout, x, weight, rstd)
    N, C = x.shape
    dx = cupy.empty((N, C), dtype=dtype)                           # (N, C)
    if N == 0:
        return dx, (cupy.zeros(C, dtype=dtype) if has_weight else None)
    dout, x, rstd = cupy.ascontiguousarray(dout), cupy.ascontiguousarray(x), cupy.ascontiguousarray(rstd)
    w = cupy.ascontiguousarray(weight) if has_weight else x        # x: a pointer of the right type, unread
    _kernel("rmsnorm_backward_dx_kernel", dtype)(
        (ceil_div(N, THREADS // 32),), (THREADS,),
        (dout, x, w, cupy.int32(has_weight), rstd, dx, cupy.int32(N), cupy.int32(C)))
    if not has_weight:
        return dx, None
    rows = max(ROWS_PER_CHUNK, ceil_div(N, 65535))                 # gridDim.y is at most 65535
    G = ceil_div(N, rows)
    partial_dweight = cupy.empty((G, C), dtype=dtype)              # (G, C)
    _kernel("rmsnorm_backward_dweight_partial_kernel", dtype)(
        (ceil_div(C, COLS_PER_BLOCK), G), (COLS_PER_BLOCK,),
        (dout, x, rstd, partial_dweight, cupy.int32(N), cupy.int32(C), cupy.int32(rows)))
    dweight = cupy.empty(C, dtype=dtype)                           # (C,)
    _kernel("rmsnorm_backward_dweight_reduce_kernel", dtype)(
        (ceil_div(C, COLS_PER_BLOCK),), (COLS_PER_BLOCK,),
        (partial_dweight, dweight, cupy.int32(G), cupy.int32(C)))
    return dx, dweight
