"""Softmax + cross-entropy, fused, as CUDA kernels: one pass over the logits for the loss, one for
dlogits; no one-hot and no probabilities are ever stored.

Same names, signatures and results as `kernels.reference.softmax_cross_entropy_forward/backward`:
targets equal to `ignore_index` give loss 0 and a zero dlogits row; other negative targets count
from the end (as NumPy indexing does). Targets outside [-V, V) give a NaN loss and a NaN dlogits
row (visible in the logged loss, without a sync per call); TINYGRAD_GPT_CUDA_CHECKS=1 raises the
reference's IndexError instead.

- forward: each thread keeps an online (max, sum of exp(x - max)) over its share of the row
  (Milakov & Gimelshein, "Online normalizer calculation for softmax"), so the row is read once;
  the pairs are merged across the warp with shuffles (and across warps in shared memory).
  V <= 1024 (characters, small BPE): one warp per row, 8 rows per block; larger V (GPT-2's 50257):
  one 512-thread block per row.
- backward: a flat grid-stride loop over the N * V entries (full occupancy whatever V is):
  dlogits = exp(logits - lse) * dloss, minus dloss at the target. subtle: lse is rounded at the
  logits' magnitude, so with float32 logits of magnitude ~1e5 and above the probabilities carry
  that rounding (the reference and Numba kernels recompute the softmax from the row's max; doing so
  here would read every row twice). Trained logits are orders of magnitude smaller.

Follows: llm.c `crossentropy_softmax_backward_kernel` / `fused_classifier`. Does not: average the
losses (the op does that and hands each row its share as dlosses), or apply label smoothing.

Dimension legend: N rows (B*T), V vocabulary.
"""
import cupy

from tinygrad_gpt.kernels import reference
from tinygrad_gpt.kernels.cuda._common import (THREADS, as_index_array, checks_enabled, ceil_div,
                                  common_float_dtype, ctype, first_bad_index, get_kernel, grid_for)

WARP_ROW_MAX_V = 1024  # up to this V one warp per row, above it one block per row
BLOCK_ROW_THREADS = 512

SOURCE = r"""
// merge the running (max, sum exp(x - max)) pair (m, s) with (m2, s2)
template <typename T>
__device__ __forceinline__ void online_merge(T& m, T& s, T m2, T s2) {
    const T ninf = k_neg_inf<T>();
    const T mm = k_max(m, m2);
    const T a = (m == ninf) ? T(0) : s * k_exp(m - mm);
    const T b = (m2 == ninf) ? T(0) : s2 * k_exp(m2 - mm);
    m = mm;
    s = a + b;
}

// the online (max, sum) of the entries j = first, first + stride, ... of one row
template <typename T>
__device__ __forceinline__ void online_row(const T* row, int V, int first, int stride, T& m, T& s) {
    const T ninf = k_neg_inf<T>();
    m = ninf;
    s = T(0);
    for (int j = first; j < V; j += stride) {
        const T x = row[j];
        if (x > m) { s = (m == ninf ? T(0) : s * k_exp(m - x)) + T(1); m = x; }
        else if (m != ninf) { s += k_exp(x - m); }
    }
}

template <typename T>
__device__ __forceinline__ void ce_finish(const T* row, long long i, T m, T s, int V,
                                          const long long* targets, long long ignore_index,
                                          T* losses, T* lse) {
    const T row_lse = m + k_log(s);                         // lse = max + log sum exp(x - max)
    lse[i] = row_lse;
    long long t = targets[i];
    if (t == ignore_index) { losses[i] = T(0); return; }
    if (t < 0) t += V;
    // loss = lse - logits[target], computed as log s - (logits[target] - max) so that the max
    // cancels before rounding (float32 logits near 1e6 would round lse to 0.0625)
    losses[i] = (t < 0 || t >= V) ? k_nan<T>() : k_log(s) - (row[t] - m);
}

// one warp per row
template <typename T>
__global__ void ce_forward_warp_kernel(const T* __restrict__ logits, const long long* __restrict__ targets,
                                       T* __restrict__ losses, T* __restrict__ lse,
                                       int N, int V, long long ignore_index) {
    const int lane = threadIdx.x & 31;
    const long long i = (long long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (i >= N) return;  // whole warp
    const T* row = logits + i * V;
    T m, s;
    online_row(row, V, lane, 32, m, s);
    #pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
        const T m2 = __shfl_xor_sync(0xffffffffu, m, offset);
        const T s2 = __shfl_xor_sync(0xffffffffu, s, offset);
        online_merge(m, s, m2, s2);
    }
    if (lane == 0) ce_finish(row, i, m, s, V, targets, ignore_index, losses, lse);
}

// one block per row (blockDim.x a multiple of 32, at most 1024)
template <typename T>
__global__ void ce_forward_block_kernel(const T* __restrict__ logits, const long long* __restrict__ targets,
                                        T* __restrict__ losses, T* __restrict__ lse,
                                        int N, int V, long long ignore_index) {
    __shared__ T shared_m[32];
    __shared__ T shared_s[32];
    const long long i = blockIdx.x;
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int warps = blockDim.x >> 5;
    const T* row = logits + i * V;
    T m, s;
    online_row(row, V, threadIdx.x, blockDim.x, m, s);
    #pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
        const T m2 = __shfl_xor_sync(0xffffffffu, m, offset);
        const T s2 = __shfl_xor_sync(0xffffffffu, s, offset);
        online_merge(m, s, m2, s2);
    }
    if (lane == 0) { shared_m[warp] = m; shared_s[warp] = s; }
    __syncthreads();
    if (warp == 0) {
        m = lane < warps ? shared_m[lane] : k_neg_inf<T>();
        s = lane < warps ? shared_s[lane] : T(0);
        #pragma unroll
        for (int offset = 16; offset > 0; offset >>= 1) {
            const T m2 = __shfl_xor_sync(0xffffffffu, m, offset);
            const T s2 = __shfl_xor_sync(0xffffffffu, s, offset);
            online_merge(m, s, m2, s2);
        }
        if (lane == 0) ce_finish(row, i, m, s, V, targets, ignore_index, losses, lse);
    }
}

template <typename T>
__global__ void ce_backward_kernel(const T* __restrict__ dlosses, const T* __restrict__ logits,
                                   const T* __restrict__ lse, const long long* __restrict__ targets,
                                   T* __restrict__ dlogits, long long N, int V, long long ignore_index) {
    const long long total = N * V;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (long long)gridDim.x * blockDim.x) {
        const long long i = e / V;
        const int j = (int)(e - i * V);
        long long t = targets[i];
        if (t == ignore_index) { dlogits[e] = T(0); continue; }
        if (t < 0) t += V;
        if (t < 0 || t >= V) { dlogits[e] = k_nan<T>(); continue; }
        // forward: loss = lse - logits[t], so dlogits = dloss * (softmax(logits) - onehot(t))
        const T d = dlosses[i];
        T g = k_exp(logits[e] - lse[i]) * d;
        if (j == t) g -= d;
        dlogits[e] = g;
    }
}
"""

NAME_EXPRESSIONS = [f"{kernel}<{t}>" for t in ("float", "double") for kernel in (
    "ce_forward_warp_kernel", "ce_forward_block_kernel", "ce_backward_kernel")]


def _kernel(name, dtype):
    return get_kernel(SOURCE, NAME_EXPRESSIONS, f"{name}<{ctype(dtype)}>")


def _targets(targets, N, V, ignore_index, fn):
    targets = as_index_array(targets, N)                           # (N,) int64
    if checks_enabled():
        bad = first_bad_index(targets, -V, V, ignore=ignore_index)
        if bad >= 0:
            raise IndexError(f"{fn}: targets[{bad}] = {int(targets[bad])} is outside [0, {V}) and "
                             f"is not ignore_index ({ignore_index})")
    return targets


def _is_int_array(a, n):
    return getattr(a, "shape", None) == (n,) and getattr(a, "dtype", None) is not None \
        and a.dtype.kind in "iu"


def softmax_cross_entropy_forward(logits, targets, ignore_index=-100):
    """Per-row loss = lse(logits) - logits[target]; 0 where target == ignore_index.

    logits (N, V), targets (N,) integers. Returns losses (N,) and lse (N,) (row log-sum-exp).
    """
    dtype = common_float_dtype(logits)
    if dtype is None or logits.ndim != 2 or logits.shape[1] == 0 \
            or not _is_int_array(targets, logits.shape[0]):
        return reference.softmax_cross_entropy_forward(logits, targets, ignore_index)
    N, V = logits.shape
    targets = _targets(targets, N, V, ignore_index, "softmax_cross_entropy_forward")
    losses = cupy.empty(N, dtype=dtype)                            # (N,)
    lse = cupy.empty(N, dtype=dtype)                               # (N,)
    if N == 0:
        return losses, lse
    args = (cupy.ascontiguousarray(logits), targets, losses, lse, cupy.int32(N), cupy.int32(V),
            cupy.int64(ignore_index))
    if V <= WARP_ROW_MAX_V:
        warps = THREADS // 32
        _kernel("ce_forward_warp_kernel", dtype)((ceil_div(N, warps),), (THREADS,), args)
    else:
        _kernel("ce_forward_block_kernel", dtype)((N,), (BLOCK_ROW_THREADS,), args)
    return losses, lse


def softmax_cross_entropy_backward(dlosses, logits, lse, targets, ignore_index=-100):
    """dlogits (N, V) = dloss * (softmax(logits) - onehot(target)); zero rows where ignored."""
    dtype = common_float_dtype(logits, lse)
    if dtype is None or logits.ndim != 2 or lse.shape != logits.shape[:1] \
            or not _is_int_array(targets, logits.shape[0]):
        return reference.softmax_cross_entropy_backward(dlosses, logits, lse, targets, ignore_index)
    N, V = logits.shape
    targets = _targets(targets, N, V, ignore_index, "softmax_cross_entropy_backward")
    # like the reference, dlosses is cast to the logits dtype and may be a broadcastable scalar
    # (a 0-d device array stays on the device: no sync)
    dlosses = cupy.ascontiguousarray(cupy.broadcast_to(cupy.asarray(dlosses, dtype=dtype), (N,)))  # (N,)
    dlogits = cupy.empty((N, V), dtype=dtype)                      # (N, V)
    if N * V:
        _kernel("ce_backward_kernel", dtype)(
            grid_for(N * V), (THREADS,),
            (dlosses, cupy.ascontiguousarray(logits), cupy.ascontiguousarray(lse), targets, dlogits,
             cupy.int64(N), cupy.int32(V), cupy.int64(ignore_index)))
    return dlogits
