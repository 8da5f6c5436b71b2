"""Causal self-attention, fused per (batch, head), as Numba kernels; flash-style: the forward keeps
only the row log-sum-exp, the backward recomputes the probabilities from it.

Same names, signatures and results as `kernels.reference.attention_forward/backward`. The (B, nh)
heads run in order or shared by threads (the caller and a small Python thread pool running a nogil
driver, each claiming the next head from an atomic counter), whichever `ThreadPicker` (in
`_common.py`) last timed faster for this shape.

Each head is a handful of matrix products on four query rows (or four keys) at a time, every one a
call of `gemm4` (`_tile.py`: the four output rows of a tile of columns held in vector registers),
with the softmax in plain loops between them. The queries sit at positions t0..t0+T-1 (t0 = 0 in
training; a decoding step over a KV cache has T = 1 at t0 = the cache length), so they see the
W = t0 + T first keys. Only the causal part is computed: the block of query rows i0..i0+3
multiplies keys 0..t0+i0+3, and key j only meets queries j-t0..T-1. Operands are read where they
lie; the one copy is k (and v in the backward) transposed to (hs, W), so that a block's scores
q k^T are a product with contiguous rows of B. The backward keeps the whole head's probabilities P
and score gradients dS (T, W; 16 KiB each in float32 at the cpu preset), because dv = P^T dout and
dk = dS^T q need their columns, which `gemm4` reads with a stride instead of a transposed copy.

subtle: with Numba loops (dot products of four rows at a time, padded to whole vector bodies) most
of the time went to horizontal sums and loop overhead; the explicit register tiles are what made
both passes fast (the before/after figures: benchmarks/LOG.md). float32 exp is `exp_f32`
(`fast_exp`).

Follows: Dao et al., "FlashAttention" (keep lse, recompute p in backward; rowdot = dout . out);
llm.c `attention_forward` / `attention_backward` (the per-row softmax and its gradient).
Does not: tile over T for long sequences (a head's (T, W) P and dS are assumed to fit in cache;
at T = 1024 it still works, only less cache-friendly), apply dropout, or take a non-causal mask.
Non-contiguous q, k, v (a transposed view of the qkv projection) are copied to contiguous first.

Dimension legend: B batch, nh heads, T queries, L keys (>= t0 + T; the rest of a preallocated cache is
not read), W = t0 + T keys seen, hs head size; BH = B * nh.
"""
import math
import time

import numpy as np
from concurrent.futures import ThreadPoolExecutor

import numba
from numba import njit

from tinygrad_gpt.kernels import reference
from tinygrad_gpt.kernels.cpu._common import (KERNEL_OPTIONS, ThreadPicker, atomic_add, common_float_dtype, fast_exp, kernel,
                                 row_max)
from tinygrad_gpt.kernels.cpu._tile import gemm4

# B * nh * T * W * hs from which the heads are split over threads (the cpu preset has 6.3M)
PARALLEL_MIN_WORK = 1 << 20


@njit(inline="always", **KERNEL_OPTIONS)
def _transpose(src, dstT):
    """dstT = src[:W]^T: the first W rows of src (L, hs) into dstT (hs, W)."""
    hs, W = dstT.shape
    for d in range(hs):
        for j in range(W):
            dstT[d, j] = src[j, d]


@njit(inline="always", **KERNEL_OPTIONS)
def _scores_by_rows(q, i0, nr, k, n, s):
    """s[c, j] = q[i0 + c] . k[j] for c < nr, j < n: dot products over contiguous rows of k."""
    hs = q.shape[1]
    dt = q.dtype.type
    for c in range(nr):
        for j in range(n):
            acc = dt(0.0)
            for d in range(hs):
                acc += q[i0 + c, d] * k[j, d]
            s[c, j] = acc


@kernel()
def _attention_forward_head(q, k, v, scale, t0, out, lse, kT, s):
    """One head: q, out (T, hs), k, v (L, hs), lse (T,), queries at positions t0..t0+T-1;
    scratch kT (hs, W), s (4, W), W = t0 + T the keys any query sees."""
    T, hs = q.shape
    W = s.shape[1]                                                 # t0 + T
    dt = q.dtype.type
    # subtle: the transposed copy of k pays off over many query blocks; one block (decoding,
    # T <= 4 over a long cache) would spend more time copying k than multiplying, so its scores
    # are dot products with the rows of k where they lie
    by_rows = T <= 4
    if not by_rows:
        _transpose(k, kT)
    inv_denom = np.empty(4, dtype=q.dtype)                         # (4,)
    for i0 in range(0, T, 4):                                      # query rows i0..i0+nr-1
        nr = min(4, T - i0)
        n = t0 + i0 + nr                                           # keys the last of them sees
        # forward 1: scores = q k^T * scale (the scale in the softmax loop)
        if by_rows:
            _scores_by_rows(q, i0, nr, k, n, s)
        else:
            gemm4(q, i0 * hs, hs, 1, kT, 0, W, hs, s, 0, W, nr, n, False)
        # forward 2-3: causal mask (row i, at position t0 + i, sees keys j <= t0 + i), softmax;
        # s stays unnormalised, forward 4 divides its result by the row sum once
        for c in range(nr):
            i = i0 + c
            m = t0 + i + 1                                         # keys row i sees
            for j in range(m):
                s[c, j] *= scale
            mx = row_max(s, c, m)
            denom = dt(0.0)
            for j in range(m):
                e = fast_exp(s[c, j] - mx)
                s[c, j] = e
                denom += e
            for j in range(m, n):
                s[c, j] = dt(0.0)                                  # forward 2: masked
            inv_denom[c] = dt(1.0) / denom                         # forward 3: p = e / sum e
            lse[i] = mx + math.log(denom)
        # forward 4: out = p v
        gemm4(s, 0, W, 1, v, 0, hs, n, out, i0 * hs, hs, nr, hs, False)
        for c in range(nr):
            for d in range(hs):
                out[i0 + c, d] *= inv_denom[c]


@kernel()
def _attention_backward_head(dout, q, k, v, out, lse, scale, t0, dq, dk, dv, kT, vT, P, dS, rowdot):
    """One head: dout, q, out, dq (T, hs), k, v, dk, dv (L, hs), lse (T,), queries at positions
    t0..t0+T-1; scratch kT, vT (hs, W), P, dS (T, W), rowdot (T,), W = t0 + T."""
    T, hs = q.shape
    L = k.shape[0]
    W = kT.shape[1]
    dt = q.dtype.type
    for i in range(T):
        r = dt(0.0)
        for d in range(hs):
            r += dout[i, d] * out[i, d]
        rowdot[i] = r
    _transpose(k, kT)
    _transpose(v, vT)
    for i0 in range(0, T, 4):                                      # query rows i0..i0+nr-1
        nr = min(4, T - i0)
        n = t0 + i0 + nr                                           # keys 0..n-1
        # recompute forward 1: scores = q k^T * scale; forward 4: out = p v, so dp = dout v^T
        gemm4(q, i0 * hs, hs, 1, kT, 0, W, hs, P, i0 * W, W, nr, n, False)
        gemm4(dout, i0 * hs, hs, 1, vT, 0, W, hs, dS, i0 * W, W, nr, n, False)
        for c in range(nr):
            i = i0 + c
            m = t0 + i + 1                                         # keys row i sees
            row_lse = lse[i]
            row_dot = rowdot[i]
            for j in range(n):
                # recompute forward 2-3: p = exp(scores - lse), 0 where masked
                pj = fast_exp(P[i, j] * scale - row_lse)
                # forward 3: dscores = p * (dp - rowdot), rowdot = sum_j p_j dp_j = dout . out;
                # forward 1 multiplies every dscores by scale, done here once
                dsj = pj * (dS[i, j] - row_dot) * scale
                if j >= m:
                    pj = dt(0.0)
                    dsj = dt(0.0)
                P[i, j] = pj
                dS[i, j] = dsj
            # subtle: the key loop below reads a block of 4 columns from the first row that sees
            # its first key; with t0 % 4 != 0 that row's block may end up to 3 columns short of
            # the block's last one, so those are zeros (masked), not left unwritten
            for j in range(n, min(W, n + 3)):
                P[i, j] = dt(0.0)
                dS[i, j] = dt(0.0)
        # forward 1: dq = dscores k * scale
        gemm4(dS, i0 * W, W, 1, k, 0, hs, n, dq, i0 * hs, hs, nr, hs, False)
    for j0 in range(0, W, 4):                                      # keys j0..j0+nr-1
        nr = min(4, W - j0)
        i1 = max(0, j0 - t0)                                       # the first query that sees key j0
        # forward 4: dv = p^T dout;  forward 1: dk = dscores^T q * scale; key j meets queries
        # j-t0..T-1, so the products run over those; column j0 + r of P is row r of P^T (stride 1)
        gemm4(P, i1 * W + j0, 1, W, dout, i1 * hs, hs, T - i1, dv, j0 * hs, hs, nr, hs, False)
        gemm4(dS, i1 * W + j0, 1, W, q, i1 * hs, hs, T - i1, dk, j0 * hs, hs, nr, hs, False)
    for j in range(W, L):                                          # keys no query saw
        for d in range(hs):
            dk[j, d] = dt(0.0)
            dv[j, d] = dt(0.0)


# drivers: each thread allocates its scratch, claims the next head from counters[0] until none is
# left, and counts the heads it finished in counters[1]. The serial version is the calling thread
# alone; the threaded one runs the same driver on the calling thread and the pool at once.
@kernel()
def _attention_forward_claim(counters, q, k, v, scale, t0, out, lse):
    BH, T, hs = q.shape
    W = t0 + T                                                     # keys any query sees
    kT = np.empty((hs, W if T > 4 else 1), dtype=q.dtype)          # (hs, W); unused when T <= 4
    s = np.empty((4, W), dtype=q.dtype)                            # (4, W)
    bh = atomic_add(counters, 0, 1)
    while bh < BH:
        _attention_forward_head(q[bh], k[bh], v[bh], scale, t0, out[bh], lse[bh], kT, s)
        atomic_add(counters, 1, 1)
        bh = atomic_add(counters, 0, 1)


@kernel()
def _attention_backward_claim(counters, dout, q, k, v, out, lse, scale, t0, dq, dk, dv):
    BH, T, hs = q.shape
    W = t0 + T                                                     # keys any query sees
    kT = np.empty((hs, W), dtype=q.dtype)                          # (hs, W)
    vT = np.empty((hs, W), dtype=q.dtype)                          # (hs, W)
    P = np.empty((T, W), dtype=q.dtype)                            # (T, W)
    dS = np.empty((T, W), dtype=q.dtype)                           # (T, W)
    rowdot = np.empty(T, dtype=q.dtype)                            # (T,)
    bh = atomic_add(counters, 0, 1)
    while bh < BH:
        _attention_backward_head(dout[bh], q[bh], k[bh], v[bh], out[bh], lse[bh], scale, t0,
                                 dq[bh], dk[bh], dv[bh], kT, vT, P, dS, rowdot)
        atomic_add(counters, 1, 1)
        bh = atomic_add(counters, 0, 1)


_pool = None


def _run_threaded(claim, *args):
    """Run `claim` on the calling thread and on numba.get_num_threads() - 1 pool threads, all taking
    heads (axis 0 of every array argument) from one atomic counter; return once every head is done.

    subtle: heads are claimed one at a time, not split into fixed ranges. Measured on a 2-core VM: a pool thread
    that has slept (between training ops it always has) took 0.3-0.5 ms to wake, about the whole
    serial kernel at the cpu preset: with fixed halves the caller finished its half and then waited
    for that wake-up. Claiming lets the caller take every head the late thread does not, and it only
    waits for heads another thread has started (at most one per thread, ~15-25 us each). A pool task
    that starts after the work is gone claims nothing and returns; nobody waits for it.
    subtle: not prange. A parallel=True driver around the same head functions compiled 8-10 s
    more per dtype (Numba re-optimises the head inside its gufunc), and its launch waits for every
    thread to arrive.
    """
    global _pool
    n_threads = numba.get_num_threads()
    if _pool is None or _pool._max_workers < n_threads - 1:
        _pool = ThreadPoolExecutor(max_workers=max(1, n_threads - 1),
                                   thread_name_prefix="kernels-cpu")
    BH = args[0].shape[0]
    counters = np.zeros(2, dtype=np.int64)                         # (2,) next head, heads done
    futures = [_pool.submit(claim, counters, *args) for _ in range(n_threads - 1)]
    claim(counters, *args)
    while counters[1] < BH:                                        # heads other threads still run
        for f in futures:
            if f.done() and f.exception() is not None:
                raise f.exception()
        time.sleep(0)                                              # yield (GIL and core) meanwhile


def _attention_forward_serial(*args):
    _attention_forward_claim(np.zeros(2, dtype=np.int64), *args)


def _attention_backward_serial(*args):
    _attention_backward_claim(np.zeros(2, dtype=np.int64), *args)


def _attention_forward_threaded(*args):
    _run_threaded(_attention_forward_claim, *args)


def _attention_backward_threaded(*args):
    _run_threaded(_attention_backward_claim, *args)


def _may_use_threads(BH, T, W, hs):
    """Threads are worth trying with two or more heads, threads, and ~0.1 ms of work or more."""
    return BH > 1 and BH * T * W * hs >= PARALLEL_MIN_WORK and numba.get_num_threads() > 1


def _picker_key(BH, T, W, hs, dtype):
    """ThreadPicker's shape key; W rounded up to a power of two, so that decoding (T = 1, W one
    longer every step) shares one timing per doubling instead of re-timing every step."""
    return BH, T, 1 << (W - 1).bit_length(), hs, dtype, numba.get_num_threads()


# forward and backward each keep their own timings (see ThreadPicker in _common.py)
_forward_picker = ThreadPicker()
_backward_picker = ThreadPicker()


def _heads(a):
    """(B, nh, T, hs) -> contiguous (B*nh, T, hs), copying only if a is not contiguous."""
    return np.ascontiguousarray(a).reshape(-1, a.shape[-2], a.shape[-1])  # (BH, T, hs)


def attention_forward(q, k, v, scale, t0=0):
    """out = softmax(mask(q k^T * scale)) v, causal, queries at positions t0..t0+T-1.

    q (B, nh, T, hs); k, v (B, nh, L, hs), L >= t0 + T: query i sees keys 0..t0+i (keys past
    t0 + T are not read). Returns out (B, nh, T, hs) and lse (B, nh, T), the log-sum-exp of each
    row of masked scores.
    """
    T, L = reference._attention_shapes(q, k, v, t0)
    dtype = common_float_dtype(q, k, v)
    if dtype is None or q.size == 0:
        return reference.attention_forward(q, k, v, scale, t0)
    hs = q.shape[-1]
    t0 = int(t0)
    out = np.empty(q.shape, dtype=dtype)                           # (B, nh, T, hs)
    lse = np.empty(q.shape[:-1], dtype=dtype)                      # (B, nh, T)
    q3, k3, v3 = _heads(q), _heads(k), _heads(v)                   # (BH, T, hs), (BH, L, hs)
    args = (q3, k3, v3, dtype.type(scale), t0, out.reshape(-1, T, hs), lse.reshape(-1, T))
    BH = q3.shape[0]
    if _may_use_threads(BH, T, t0 + T, hs):
        _forward_picker.run(_picker_key(BH, T, t0 + T, hs, dtype),
                            _attention_forward_serial, _attention_forward_threaded, *args)
    else:
        _attention_forward_serial(*args)
    return out, lse


def attention_backward(dout, q, k, v, out, lse, scale, t0=0):
    """dq (B, nh, T, hs), dk, dv (B, nh, L, hs) of attention_forward, recomputing p from lse.

    Keys past t0 + T were ignored by the forward: their dk and dv are 0.
    """
    T, L = reference._attention_shapes(q, k, v, t0)
    dtype = common_float_dtype(dout, q, k, v, out, lse)
    if dtype is None or dout.shape != q.shape or out.shape != q.shape or lse.shape != q.shape[:-1] \
            or q.size == 0:
        return reference.attention_backward(dout, q, k, v, out, lse, scale, t0)
    hs = q.shape[-1]
    t0 = int(t0)
    dq = np.empty(q.shape, dtype=dtype)                            # (B, nh, T, hs)
    dk = np.empty(k.shape, dtype=dtype)                            # (B, nh, L, hs)
    dv = np.empty(k.shape, dtype=dtype)                            # (B, nh, L, hs)
    args = (_heads(dout), _heads(q), _heads(k), _heads(v), _heads(out),
            np.ascontiguousarray(lse).reshape(-1, T), dtype.type(scale), t0,
            dq.reshape(-1, T, hs), dk.reshape(-1, L, hs), dv.reshape(-1, L, hs))
    BH = q.size // (T * hs)
    if _may_use_threads(BH, T, t0 + T, hs):
        _backward_picker.run(_picker_key(BH, T, t0 + T, hs, dtype),
                             _attention_backward_serial, _attention_backward_threaded, *args)
    else:
        _attention_backward_serial(*args)
    return dq, dk, dv
