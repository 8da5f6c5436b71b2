"""Layer norm over the last axis, forward and backward, as CUDA kernels (CuPy RawModule).

Same names, signatures and results as `kernels.reference.layernorm_forward/backward`; float32 and
float64 (templates), the input dtype kept throughout. Other dtypes go to the reference.

- forward: one warp per row (8 rows per 256-thread block); the lanes stride over C, the row sum
  and the sum of squared deviations are warp-shuffle reductions (two passes over the row, the
  second from L1/L2, as the reference's `xc * xc` is: no E[x^2] - E[x]^2 cancellation).
- backward dx: one warp per row again, two shuffle reductions (mean(dxhat), mean(dxhat * xhat)).
- backward dweight, dbias: column sums over all N rows. Deterministic, no atomics: a first kernel
  gives each (32-row chunk, column) one thread that sums its chunk (threads of a block take
  adjacent columns, so reads are coalesced), a second sums the chunks of each column in order.
  The result does not depend on scheduling, so two runs give identical bits.

Follows: llm.c `layernorm_forward_kernel3` (warp per row, cooperative groups there, shuffles here)
and `layernorm_backward`. Does not: normalise over any axis but the last, fuse the residual add.

Dimension legend: N rows, C channels, G row chunks of the parameter-gradient reduction.
"""
import cupy

from tinygrad_gpt.kernels import reference
from tinygrad_gpt.kernels.cuda._common import THREADS, ceil_div, common_float_dtype, ctype, get_kernel

ROWS_PER_CHUNK = 32  # rows each thread of the dweight/dbias partial-sum kernel adds up
COLS_PER_BLOCK = 128

SOURCE = r"""
template <typename T>
__global__ void layernorm_forward_kernel(const T* __restrict__ x, const T* __restrict__ weight,
                                         const T* __restrict__ bias, T* __restrict__ out,
                                         T* __restrict__ mean, T* __restrict__ rstd,
                                         int N, int C, T eps) {
    const int lane = threadIdx.x & 31;
    const long long row = (long long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= N) return;  // the whole warp leaves together, so no shuffle misses a lane
    const T* xr = x + row * C;
    // forward 1: mean
    T s = T(0);
    for (int c = lane; c < C; c += 32) s += xr[c];
    const T m = warp_sum(s) / T(C);
    // forward 2-4: var = mean((x - mean)^2), rstd = 1 / sqrt(var + eps)
    T v = T(0);
    for (int c = lane; c < C; c += 32) { const T d = xr[c] - m; v += d * d; }
    const T r = T(1) / k_sqrt(warp_sum(v) / T(C) + eps);
    // forward 5-6: out = (x - mean) * rstd * weight + bias
    T* o = out + row * C;
    for (int c = lane; c < C; c += 32) o[c] = ((xr[c] - m) * r) * weight[c] + bias[c];
    if (lane == 0) { mean[row] = m; rstd[row] = r; }
}

template <typename T>
__global__ void layernorm_backward_dx_kernel(const T* __restrict__ dout, const T* __restrict__ x,
                                             const T* __restrict__ weight, const T* __restrict__ mean,
                                             const T* __restrict__ rstd, T* __restrict__ dx,
                                             int N, int C) {
    const int lane = threadIdx.x & 31;
    const long long row = (long long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= N) return;
    const T* g = dout + row * C;
    const T* xr = x + row * C;
    const T m = mean[row];
    const T r = rstd[row];
    // forward 6: out = xhat * weight + bias, so dxhat = dout * weight
    T s1 = T(0), s2 = T(0);
    for (int c = lane; c < C; c += 32) {
        const T dxhat = g[c] * weight[c];
        const T xhat = (xr[c] - m) * r;
        s1 += dxhat;
        s2 += dxhat * xhat;
    }
    const T mean_dxhat = warp_sum(s1) / T(C);
    const T mean_dxhat_xhat = warp_sum(s2) / T(C);
    // forward 1-5: dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
    T* d = dx + row * C;
    for (int c = lane; c < C; c += 32) {
        const T dxhat = g[c] * weight[c];
        const T xhat = (xr[c] - m) * r;
        d[c] = r * (dxhat - mean_dxhat - xhat * mean_dxhat_xhat);
    }
}

// grid (ceil(C / blockDim.x), G): thread (chunk, c) sums rows [chunk * rows, (chunk + 1) * rows)
template <typename T>
__global__ void layernorm_backward_params_partial_kernel(const T* __restrict__ dout, const T* __restrict__ x,
                                                         const T* __restrict__ mean, const T* __restrict__ rstd,
                                                         T* __restrict__ partial_dweight,
                                                         T* __restrict__ partial_dbias,
                                                         int N, int C, int rows) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    const int chunk = blockIdx.y;
    if (c >= C) return;
    const long long n0 = (long long)chunk * rows;
    const long long n1 = min((long long)N, n0 + rows);
    T dw = T(0), db = T(0);
    for (long long n = n0; n < n1; n++) {
        const T g = dout[n * C + c];
        db += g;                                           // forward 6: dbias = sum_n dout
        dw += g * ((x[n * C + c] - mean[n]) * rstd[n]);     // forward 6: dweight = sum_n dout * xhat
    }
    partial_dweight[(long long)chunk * C + c] = dw;
    partial_dbias[(long long)chunk * C + c] = db;
}

template <typename T>
__global__ void layernorm_backward_params_reduce_kernel(const T* __restrict__ partial_dweight,
                                                        const T* __restrict__ partial_dbias,
                                                        T* __restrict__ dweight, T* __restrict__ dbias,
                                                        int G, int C) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    T dw = T(0), db = T(0);
    for (int g = 0; g < G; g++) {  // in chunk order: deterministic
        dw += partial_dweight[(long long)g * C + c];
        db += partial_dbias[(long long)g * C + c];
    }
    dweight[c] = dw;
    dbias[c] = db;
}
"""

NAME_EXPRESSIONS = [f"{kernel}<{t}>" for t in ("float", "double") for kernel in (
    "layernorm_forward_kernel", "layernorm_backward_dx_kernel",
    "layernorm_backward_params_partial_kernel", "layernorm_backward_params_reduce_kernel")]


def _kernel(name, dtype):
    return get_kernel(SOURCE, NAME_EXPRESSIONS, f"{name}<{ctype(dtype)}>")


def layernorm_forward(x, weight, bias, eps=1e-5):
    """out = (x - mean) * rstd * weight + bias, per row. x (N, C); returns out, mean, rstd."""
    dtype = common_float_dtype(x, weight, bias)
    if dtype is None or x.ndim != 2 or weight.shape != x.shape[1:] or bias.shape != x.shape[1:] \
            or x.shape[1] == 0:
        return reference.layernorm_forward(x, weight, bias, eps)
    N, C = x.shape
    out = cupy.empty((N, C), dtype=dtype)                          # (N, C)
    mean = cupy.empty(N, dtype=dtype)                              # (N,)
    rstd = cupy.empty(N, dtype=dtype)                              # (N,)
    if N:
        warps = THREADS // 32
        _kernel("layernorm_forward_kernel", dtype)(
            (ceil_div(N, warps),), (THREADS,),
            (cupy.ascontiguousarray(x), cupy.ascontiguousarray(weight), cupy.ascontiguousarray(bias),
             out, mean, rstd, cupy.int32(N), cupy.int32(C), dtype.type(eps)))
    return out, mean, rstd


def layernorm_backward(dout, x, weight, mean, rstd):
    """Gradients of layernorm_forward: dx (N, C), dweight (C,), dbias (C,)."""
    dtype = common_float_dtype(dout, x, weight, mean, rstd)
    if dtype is None or x.ndim != 2 or dout.shape != x.shape or weight.shape != x.shape[1:] \
            or mean.shape != x.shape[:1] or rstd.shape != x.shape[:1] or x.shape[1] == 0:
        return reference.layernorm_backward(dout, x, weight, mean, rstd)
    N, C = x.shape
    dx = cupy.empty((N, C), dtype=dtype)                           # (N, C)
    if N == 0:
        return dx, cupy.zeros(C, dtype=dtype), cupy.zeros(C, dtype=dtype)
    dout, x = cupy.ascontiguousarray(dout), cupy.ascontiguousarray(x)
    weight = cupy.ascontiguousarray(weight)
    mean, rstd = cupy.ascontiguousarray(mean), cupy.ascontiguousarray(rstd)
    warps = THREADS // 32
    _kernel("layernorm_backward_dx_kernel", dtype)(
        (ceil_div(N, warps),), (THREADS,),
        (dout, x, weight, mean, rstd, dx, cupy.int32(N), cupy.int32(C)))
    rows = max(ROWS_PER_CHUNK, ceil_div(N, 65535))                 # gridDim.y is at most 65535
    G = ceil_div(N, rows)
    partial_dweight = cupy.empty((G, C), dtype=dtype)              # (G, C)
    partial_dbias = cupy.empty((G, C), dtype=dtype)                # (G, C)
    _kernel("layernorm_backward_params_partial_kernel", dtype)(
        (ceil_div(C, COLS_PER_BLOCK), G), (COLS_PER_BLOCK,),
        (dout, x, mean, rstd, partial_dweight, partial_dbias, cupy.int32(N), cupy.int32(C),
         cupy.int32(rows)))
    dweight = cupy.empty(C, dtype=dtype)                           # (C,)
    dbias = cupy.empty(C, dtype=dtype)                             # (C,)
    _kernel("layernorm_backward_params_reduce_kernel", dtype)(
        (ceil_div(C, COLS_PER_BLOCK),), (COLS_PER_BLOCK,),
        (partial_dweight, partial_dbias, dweight, dbias, cupy.int32(G), cupy.int32(C)))
    return dx, dweight, dbias
