"""Causal self-attention as tiled, flash-style CUDA kernels: no (T, T) array in global memory, in
forward or backward.

Same names, signatures and results as `kernels.reference.attention_forward/backward`.
q (B, nh, T, hs) and k, v (B, nh, L, hs) are handled as BH = B * nh independent heads. The queries
sit at positions t0..t0+T-1 (t0 = 0 in training; one decoding step over a KV cache has T = 1 at
t0 = the cache length), so query row i sees keys [0, t0 + i] and no query reads a key at or past
W = t0 + T (the rest of a preallocated cache).

forward (`attention_forward_kernel`, grid (BH, ceil(T / BR)), BR threads per block):
    one thread per query row; its q row (times scale) and its output accumulator live in
    registers, zero-padded to HSP = 16, 32 or 64 (the smallest >= hs; hs > 64 goes to the
    reference). The keys the block's rows may see, [0, min(t0 + r0 + BR, W)), are visited in tiles of
    BC keys, staged in shared memory (every thread reads the same key at once: a broadcast, no
    bank conflicts). Per tile, the online-softmax recurrence of FlashAttention:
        s_j   = q . k_j  (masked: -inf for key j > t0 + row)     BC scores in registers
        m_new = max(m, max_j s_j);  alpha = exp(m - m_new)        (s_j kept in shared memory)
        acc   = alpha * acc + sum_j exp(s_j - m_new) v_j;  l = alpha * l + sum_j exp(s_j - m_new)
    and at the end out = acc / l, lse = m + log l. A tile in which every key is masked for a row
    (possible when BR > BC) leaves that row's (m, l, acc) unchanged.
backward, two kernels, both recomputing p = exp(q . k * scale - lse) tile by tile:
    `attention_backward_dq_kernel` (grid like forward, one thread per query row): rowdot
    D = dout . out (stored for the next kernel), then over the key tiles
    ds_j = p_j (dout . v_j - D), dq = scale * sum_j ds_j k_j, all in registers. No atomics.
    `attention_backward_dkdv_kernel` (grid (BH, ceil(L / BC)), one thread per key): the block's
    keys and values sit in shared memory (rows padded to HSP + 1 so that 32 threads reading 32
    different rows hit 32 banks); the query rows that can see them, [max(c0 - t0, 0), T), are visited in tiles
    of BR rows (q * scale, dout, lse, D in shared memory), accumulating in registers
        dv_j += p_ij dout_i,   dk_j += ds_ij (q_i * scale).
Tile sizes (BR, BC): float (64, 32) forward and dq, (32, 32) dk/dv; double (32, 16) and (16, 16),
so every kernel's static shared memory stays under 48 KiB (16-33 KiB).

The CUDA emulator (tinygrad_gpt/cuda_emulator/) runs these kernels on the CPU against the reference
(tests/cuda/test_cuda_kernels_emulated.py, and mutations in tests/cuda/test_cuda_emulator.py);
tests/cuda/test_cuda_kernels.py runs them on a GPU.

Follows: Dao et al., "FlashAttention" (2022) and "FlashAttention-2" (2023): online softmax,
lse saved, D = rowsum(dout * out), p recomputed in backward, dq in its own pass instead of atomics.
Does not: use tensor cores (the dot products are FMAs over registers and shared memory), support
hs > 64 (the reference runs instead, materialising (T, T) scores), apply dropout, or take a
non-causal mask. float32 and float64 only (other dtypes: the reference).

Dimension legend: B batch, nh heads, T queries, L keys (>= W = t0 + T), hs head size, BH = B * nh,
HSP padded head size,
BR query rows per tile, BC keys per tile.
"""
import cupy

from tinygrad_gpt.kernels import reference
from tinygrad_gpt.kernels.cuda._common import ceil_div, common_float_dtype, ctype, get_kernel

HEAD_SIZES = (16, 32, 64)                  # HSP instantiations; hs is padded up to one of these
FORWARD_TILES = {"float": (64, 32), "double": (32, 16)}   # (BR, BC) for forward and dq
DKDV_TILES = {"float": (32, 32), "double": (16, 16)}      # (BR, BC) for dk/dv

SOURCE = r"""
// ------------------------------------------------------------------------------------------------
// sK, sV <- rows key0 .. key0 + BC - 1 of this head's k and v (row stride ROW >= HSP in shared
// memory), zero past W (the keys any query sees) and past hs; the block's threads take elements
// tid, tid + nthreads, ...
// ------------------------------------------------------------------------------------------------
template <typename T, int HSP, int ROW, int BC>
__device__ __forceinline__ void load_kv_tile(T (*sK)[ROW], T (*sV)[ROW], const T* __restrict__ k,
                                             const T* __restrict__ v, long long base, int key0, int W,
                                             int hs, int tid, int nthreads) {
    for (int e = tid; e < BC * HSP; e += nthreads) {
        const int j = e / HSP, d = e % HSP;
        const int key = key0 + j;
        const bool ok = key < W && d < hs;
        sK[j][d] = ok ? k[base + (long long)key * hs + d] : T(0);
        sV[j][d] = ok ? v[base + (long long)key * hs + d] : T(0);
    }
}

// ------------------------------------------------------------------------------------------------
// forward: one thread per query row, key tiles of BC in shared memory, online softmax
// ------------------------------------------------------------------------------------------------
template <typename T, int HSP, int BR, int BC>
__global__ void attention_forward_kernel(const T* __restrict__ q, const T* __restrict__ k,
                                         const T* __restrict__ v, T* __restrict__ out,
                                         T* __restrict__ lse, int T_, int L, int t0, int hs, T scale) {
    __shared__ T sK[BC][HSP];
    __shared__ T sV[BC][HSP];
    __shared__ T sS[BC][BR];                                // scores of the tile; column threadIdx.x is this row's
    const T ninf = k_neg_inf<T>();
    const long long bh = blockIdx.x;
    const int r0 = blockIdx.y * BR;
    const int row = r0 + threadIdx.x;                       // query row; its position is t0 + row
    const bool active = row < T_;
    const long long base = bh * T_ * hs;                    // this head's (T, hs) slab of q and out
    const long long kv_base = bh * L * hs;                  // this head's (L, hs) slab of k and v
    const int W = t0 + T_;                                  // keys any query sees

    T qr[HSP];                                              // q row * scale, zero-padded to HSP
    T acc[HSP];                                             // sum_j exp(s_j - m) v_j
    #pragma unroll
    for (int d = 0; d < HSP; d++) {
        qr[d] = (active && d < hs) ? q[base + (long long)row * hs + d] * scale : T(0);
        acc[d] = T(0);
    }
    T m = ninf;                                             // running max of the row's scores
    T l = T(0);                                             // running sum of exp(s_j - m)
    const int kv_end = min(t0 + r0 + BR, W);                // the block's rows see keys [0, kv_end)
    for (int kv0 = 0; kv0 < kv_end; kv0 += BC) {
        __syncthreads();                                    // the previous tile is consumed
        load_kv_tile<T, HSP, HSP, BC>(sK, sV, k, v, kv_base, kv0, W, hs, threadIdx.x, BR);
        __syncthreads();
        // forward 1-2: s_j = (q * scale) . k_j, -inf where key j is in the row's future
        // subtle: the scores go to shared memory, not a register array: a register array needs
        // the j loop fully unrolled (BC x HSP FMAs of code, ~10x the compile time) for no gain
        T tile_max = ninf;
        for (int j = 0; j < BC; j++) {
            T dot = T(0);
            #pragma unroll
            for (int d = 0; d < HSP; d++) dot += qr[d] * sK[j][d];
            const int key = kv0 + j;
            const T s = (key <= t0 + row && key < W) ? dot : ninf;
            sS[j][threadIdx.x] = s;
            tile_max = k_max(tile_max, s);
        }
        // forward 3-4, online: rescale what we have by exp(m - m_new), add this tile
        const T m_new = k_max(m, tile_max);
        if (m_new != ninf) {                                // else: every key here is masked for this row
            const T alpha = k_exp(m - m_new);               // m = -inf: 0 (acc and l are 0 then anyway)
            T p_sum = T(0);
            #pragma unroll
            for (int d = 0; d < HSP; d++) acc[d] *= alpha;
            for (int j = 0; j < BC; j++) {
                const T s = sS[j][threadIdx.x];
                const T p = (s == ninf) ? T(0) : k_exp(s - m_new);
                p_sum += p;
                #pragma unroll
                for (int d = 0; d < HSP; d++) acc[d] += p * sV[j][d];
            }
            l = l * alpha + p_sum;
            m = m_new;
        }
    }
    if (active) {
        const T inv = T(1) / l;                             // forward 3: p = exp(s - m) / l
        #pragma unroll
        for (int d = 0; d < HSP; d++)                       // subtle: d < HSP, not hs: a register
            if (d < hs) out[base + (long long)row * hs + d] = acc[d] * inv;  // array needs constant indices
        lse[bh * T_ + row] = m + k_log(l);
    }
}

// ------------------------------------------------------------------------------------------------
// backward 1: D = dout . out per row, and dq; one thread per query row, key tiles in shared memory
// ------------------------------------------------------------------------------------------------
template <typename T, int HSP, int BR, int BC>
__global__ void attention_backward_dq_kernel(const T* __restrict__ dout, const T* __restrict__ q,
                                             const T* __restrict__ k, const T* __restrict__ v,
                                             const T* __restrict__ out, const T* __restrict__ lse,
                                             T* __restrict__ D, T* __restrict__ dq,
                                             int T_, int L, int t0, int hs, T scale) {
    __shared__ T sK[BC][HSP];
    __shared__ T sV[BC][HSP];
    const long long bh = blockIdx.x;
    const int r0 = blockIdx.y * BR;
    const int row = r0 + threadIdx.x;                       // query row at position t0 + row
    const bool active = row < T_;
    const long long base = bh * T_ * hs;                    // q, dout, out, dq slab (T, hs)
    const long long kv_base = bh * L * hs;                  // k, v slab (L, hs)
    const int W = t0 + T_;                                  // keys any query sees

    T qr[HSP];                                              // q row * scale
    T gr[HSP];                                              // dout row
    T acc[HSP];                                             // sum_j ds_j k_j
    T row_dot = T(0);                                       // D = dout . out = sum_j p_j dp_j
    #pragma unroll
    for (int d = 0; d < HSP; d++) {
        const bool ok = active && d < hs;
        const long long at = base + (long long)row * hs + d;
        qr[d] = ok ? q[at] * scale : T(0);
        gr[d] = ok ? dout[at] : T(0);
        row_dot += ok ? gr[d] * out[at] : T(0);
        acc[d] = T(0);
    }
    const T row_lse = active ? lse[bh * T_ + row] : T(0);
    if (active) D[bh * T_ + row] = row_dot;
    const int kv_end = min(t0 + r0 + BR, W);
    for (int kv0 = 0; kv0 < kv_end; kv0 += BC) {
        __syncthreads();
        load_kv_tile<T, HSP, HSP, BC>(sK, sV, k, v, kv_base, kv0, W, hs, threadIdx.x, BR);
        __syncthreads();
        for (int j = 0; j < BC; j++) {
            const int key = kv0 + j;
            if (key > t0 + row || key >= W) continue;       // forward 2: masked, p = 0, ds = 0
            T s = T(0), dp = T(0);
            #pragma unroll
            for (int d = 0; d < HSP; d++) { s += qr[d] * sK[j][d]; dp += gr[d] * sV[j][d]; }
            const T p = k_exp(s - row_lse);                 // recompute forward 1-3
            const T ds = p * (dp - row_dot);                // forward 3: ds = p (dp - D)
            #pragma unroll
            for (int d = 0; d < HSP; d++) acc[d] += ds * sK[j][d];
        }
    }
    if (active) {                                           // forward 1: dq = ds k * scale
        #pragma unroll
        for (int d = 0; d < HSP; d++)
            if (d < hs) dq[base + (long long)row * hs + d] = acc[d] * scale;
    }
}

// ------------------------------------------------------------------------------------------------
// backward 2: dk, dv; one thread per key, query tiles in shared memory
// ------------------------------------------------------------------------------------------------
template <typename T, int HSP, int BR, int BC>
__global__ void attention_backward_dkdv_kernel(const T* __restrict__ dout, const T* __restrict__ q,
                                               const T* __restrict__ k, const T* __restrict__ v,
                                               const T* __restrict__ lse, const T* __restrict__ D,
                                               T* __restrict__ dk, T* __restrict__ dv,
                                               int T_, int L, int t0, int hs, T scale) {
    __shared__ T sK[BC][HSP + 1];                           // this block's keys, one row per thread
    __shared__ T sV[BC][HSP + 1];                           // (+1: rows start in different banks)
    __shared__ T sQ[BR][HSP];                               // a tile of query rows * scale
    __shared__ T sG[BR][HSP];                               // their dout rows
    __shared__ T sL[BR];                                    // their lse
    __shared__ T sD[BR];                                    // their D = dout . out
    const long long bh = blockIdx.x;
    const int c0 = blockIdx.y * BC;
    const int tid = threadIdx.x;
    const int key = c0 + tid;
    const bool active = key < L;                            // keys past W get dk = dv = 0
    const long long base = bh * T_ * hs;                    // q, dout slab (T, hs)
    const long long kv_base = bh * L * hs;                  // k, v, dk, dv slab (L, hs)
    const int W = t0 + T_;                                  // keys any query sees

    load_kv_tile<T, HSP, HSP + 1, BC>(sK, sV, k, v, kv_base, c0, W, hs, tid, BC);
    T dk_acc[HSP];
    T dv_acc[HSP];
    #pragma unroll
    for (int d = 0; d < HSP; d++) { dk_acc[d] = T(0); dv_acc[d] = T(0); }
    // only query rows i with t0 + i >= key see this key; the first tile holding the first of
    // them for the block's key c0, row i1 = max(c0 - t0, 0), starts at i1 - i1 % BR
    const int i1 = max(c0 - t0, 0);
    for (int q0 = i1 - i1 % BR; q0 < T_; q0 += BR) {
        __syncthreads();                                    // the keys are loaded / the last tile consumed
        for (int e = tid; e < BR * HSP; e += BC) {
            const int i = e / HSP, d = e % HSP;
            const bool ok = q0 + i < T_ && d < hs;
            const long long at = base + (long long)(q0 + i) * hs + d;
            sQ[i][d] = ok ? q[at] * scale : T(0);
            sG[i][d] = ok ? dout[at] : T(0);
        }
        for (int i = tid; i < BR; i += BC) {
            const bool ok = q0 + i < T_;
            sL[i] = ok ? lse[bh * T_ + q0 + i] : T(0);
            sD[i] = ok ? D[bh * T_ + q0 + i] : T(0);
        }
        __syncthreads();
        for (int i = 0; i < BR; i++) {
            const int qrow = q0 + i;
            if (!active || key > t0 + qrow || qrow >= T_) continue;  // forward 2: masked
            T s = T(0), dp = T(0);
            #pragma unroll
            for (int d = 0; d < HSP; d++) { s += sQ[i][d] * sK[tid][d]; dp += sG[i][d] * sV[tid][d]; }
            const T p = k_exp(s - sL[i]);                   // recompute forward 1-3
            const T ds = p * (dp - sD[i]);                  // forward 3
            #pragma unroll
            for (int d = 0; d < HSP; d++) {
                dv_acc[d] += p * sG[i][d];                  // forward 4: dv = p^T dout
                dk_acc[d] += ds * sQ[i][d];                 // forward 1: dk = ds^T (q * scale)
            }
        }
    }
    if (active) {
        #pragma unroll
        for (int d = 0; d < HSP; d++) {
            if (d < hs) {
                dk[kv_base + (long long)key * hs + d] = dk_acc[d];
                dv[kv_base + (long long)key * hs + d] = dv_acc[d];
            }
        }
    }
}
"""


def _name(kernel, t, hsp):
    br, bc = (DKDV_TILES if kernel == "attention_backward_dkdv_kernel" else FORWARD_TILES)[t]
    return f"{kernel}<{t}, {hsp}, {br}, {bc}>"


NAME_EXPRESSIONS = [_name(kernel, t, hsp) for t in ("float", "double") for hsp in HEAD_SIZES
                    for kernel in ("attention_forward_kernel", "attention_backward_dq_kernel",
                                   "attention_backward_dkdv_kernel")]


def padded_head_size(hs):
    """The HSP instantiation for head size hs, or None when hs > 64 (the reference runs then)."""
    return next((h for h in HEAD_SIZES if hs <= h), None)


def _kernel(name, dtype, hsp):
    return get_kernel(SOURCE, NAME_EXPRESSIONS, _name(name, ctype(dtype), hsp))


def _heads(a):
    """(B, nh, T, hs) -> contiguous (B*nh, T, hs), copying only if a is not contiguous."""
    return cupy.ascontiguousarray(a).reshape(-1, a.shape[-2], a.shape[-1])  # (BH, T, hs)


def _supported(dtype, q):
    return dtype is not None and q.ndim >= 2 and q.size > 0 and padded_head_size(q.shape[-1]) is not None


def attention_forward(q, k, v, scale, t0=0):
    """out = softmax(mask(q k^T * scale)) v, causal, queries at positions t0..t0+T-1.

    q (B, nh, T, hs); k, v (B, nh, L, hs), L >= t0 + T: query i sees keys 0..t0+i (keys past
    t0 + T are not read). Returns out (B, nh, T, hs) and lse (B, nh, T), the log-sum-exp of each
    row of masked scores.
    """
    T, L = reference._attention_shapes(q, k, v, t0)
    dtype = common_float_dtype(q, k, v)
    if not _supported(dtype, q):
        return reference.attention_forward(q, k, v, scale, t0)
    hs = q.shape[-1]
    BH = q.size // (T * hs)
    hsp = padded_head_size(hs)
    br, _ = FORWARD_TILES[ctype(dtype)]
    out = cupy.empty(q.shape, dtype=dtype)                         # (B, nh, T, hs)
    lse = cupy.empty(q.shape[:-1], dtype=dtype)                    # (B, nh, T)
    _kernel("attention_forward_kernel", dtype, hsp)(
        (BH, ceil_div(T, br)), (br,),
        (_heads(q), _heads(k), _heads(v), out, lse, cupy.int32(T), cupy.int32(L), cupy.int32(t0),
         cupy.int32(hs), dtype.type(scale)))
    return out, lse


def attention_backward(dout, q, k, v, out, lse, scale, t0=0):
    """dq (B, nh, T, hs), dk, dv (B, nh, L, hs) of attention_forward, recomputing p from lse.

    Keys past t0 + T were ignored by the forward: their dk and dv are 0.
    """
    T, L = reference._attention_shapes(q, k, v, t0)
    dtype = common_float_dtype(dout, q, k, v, out, lse)
    if not _supported(dtype, q) or dout.shape != q.shape or out.shape != q.shape or lse.shape != q.shape[:-1]:
        return reference.attention_backward(dout, q, k, v, out, lse, scale, t0)
    hs = q.shape[-1]
    BH = q.size // (T * hs)
    hsp = padded_head_size(hs)
    t = ctype(dtype)
    dq = cupy.empty(q.shape, dtype=dtype)                          # (B, nh, T, hs)
    dk = cupy.empty(k.shape, dtype=dtype)                          # (B, nh, L, hs)
    dv = cupy.empty(k.shape, dtype=dtype)                          # (B, nh, L, hs)
    D = cupy.empty((BH, T), dtype=dtype)                           # (BH, T)  dout . out per row
    qh, kh, vh, gh = _heads(q), _heads(k), _heads(v), _heads(dout)
    lse_h = cupy.ascontiguousarray(lse).reshape(BH, T)             # (BH, T)
    shape_args = (cupy.int32(T), cupy.int32(L), cupy.int32(t0), cupy.int32(hs), dtype.type(scale))
    br, _ = FORWARD_TILES[t]
    _kernel("attention_backward_dq_kernel", dtype, hsp)(
        (BH, ceil_div(T, br)), (br,), (gh, qh, kh, vh, _heads(out), lse_h, D, dq) + shape_args)
    _, bc = DKDV_TILES[t]
    _kernel("attention_backward_dkdv_kernel", dtype, hsp)(
        (BH, ceil_div(L, bc)), (bc,), (gh, qh, kh, vh, lse_h, D, dk, dv) + shape_args)
    return dq, dk, dv
