"""Causal self-attention, fused per (batch, head), as Numba kernels; flash-style: the forward keeps
only the row log-sum-exp, the backward recomputes the probabilities from it.

Same names, signatures and results as `kernels.reference.attention_forward/backward`. The (B, nh)
heads run in order or shared by threads (the caller and a small Python thread pool running a nogil
driver, each claiming the next head from an atomic counter), whichever `ThreadPicker` (in
`_common.py`) last timed faster for this shape. Each head copies its q (times scale), k, v into zero-padded
scratch tiles that fit in L1 (T = 64, hs = 32: 8 KiB each in float32) and visits only the causal
part of the scores: keys 0..i0+3 for the block of query rows i0..i0+3.

subtle: query rows go four at a time. With one row at a time every inner loop (over hs = 32 or
over the ~32 keys a row sees) is shorter than LLVM's vector body (16 lanes x 4 unrolled) and runs
in its scalar or half-width remainder, with loop setup dominating: 10 GFLOP/s. Four rows per pass
over the keys share every load of k and v and give each inner loop four independent
accumulations; that alone made the forward ~2x faster. For the same reason p v (and dscores k in
backward) are dot products over the keys padded with zero probabilities to a multiple of 64
(Tp = T rounded up to 64), so that inner loop runs whole vector bodies. float32 exp is `exp_f32`.

Follows: Dao et al., "FlashAttention" (keep lse, recompute p in backward; rowdot = dout . out);
llm.c `attention_forward` / `attention_backward` (the per-row loop structure).
Does not: tile over T for long sequences (a whole head's (T, hs) tile is assumed to fit in cache;
at T = 1024 it still works, only less cache-friendly), apply dropout, or take a non-causal mask.
Non-contiguous q, k, v (a transposed view of the qkv projection) are copied to contiguous first.

Dimension legend: B batch, nh heads, T time, hs head size; BH = B * nh.
"""
import math
import time

import numpy as np
from concurrent.futures import ThreadPoolExecutor

import numba
from numba import njit

from kernels import reference
from kernels.cpu._common import KERNEL_OPTIONS, ThreadPicker, atomic_add, common_float_dtype, fast_exp, kernel

# B * nh * T * T * hs from which the heads are split over threads (the cpu preset has 6.3M)
PARALLEL_MIN_WORK = 1 << 20


# helpers shared by the forward and backward heads, inlined into them in Numba's IR
# subtle: as plain calls (LLVM left to inline them) the heads were 1.6x slower
_inline = njit(inline="always", **KERNEL_OPTIONS)


@_inline
def _padded_copy(src, scale, dst):
    """dst[:T] = src * scale, dst[T:] = 0: src (T, hs) into a tile with zero rows after it."""
    T, hs = src.shape
    for j in range(T):
        for d in range(hs):
            dst[j, d] = src[j, d] * scale
    for j in range(T, dst.shape[0]):
        for d in range(hs):
            dst[j, d] = src.dtype.type(0.0)


@_inline
def _padded_transpose(src, dstT):
    """dstT[:, :T] = src^T, dstT[:, T:] = 0: src (T, hs) into dstT (hs, Tp).

    subtle: a loop of its own, apart from the row copies, so that those vectorise."""
    T, hs = src.shape
    for d in range(hs):
        for j in range(T):
            dstT[d, j] = src[j, d]
        for j in range(T, dstT.shape[1]):
            dstT[d, j] = src.dtype.type(0.0)


@_inline
def _dot4(a, r, b, i, n):
    """The dot products of rows r..r+3 of a with row i of b over their first n columns.

    Four rows per pass share every load of b and give the loop four independent accumulations
    (see "subtle" in the module docstring)."""
    dt = a.dtype.type
    a0 = dt(0.0)
    a1 = dt(0.0)
    a2 = dt(0.0)
    a3 = dt(0.0)
    for x in range(n):
        bx = b[i, x]
        a0 += a[r, x] * bx
        a1 += a[r + 1, x] * bx
        a2 += a[r + 2, x] * bx
        a3 += a[r + 3, x] * bx
    return a0, a1, a2, a3


@kernel()
def _attention_forward_head(q, k, v, scale, out, lse):
    """One head: q, k, v, out (T, hs), lse (T,)."""
    T, hs = q.shape
    dt = q.dtype.type
    T4 = (T + 3) // 4 * 4                                          # rows padded to the 4-row block
    Tp = (T + 63) // 64 * 64                                       # keys padded to a vector body
    # copies of this head padded with zeros (rows T..T4-1, columns T..Tp-1), q times scale;
    # subtle: np.empty plus zeroing only the padding, since zeroing whole tiles was ~15% of the
    # time at the cpu preset
    qs = np.empty((T4, hs), dtype=q.dtype)                         # (T4, hs)  q * scale
    kh = np.empty((T4, hs), dtype=q.dtype)                         # (T4, hs)
    vT = np.empty((hs, Tp), dtype=q.dtype)                         # (hs, Tp)  v transposed
    _padded_copy(q, scale, qs)
    _padded_copy(k, dt(1.0), kh)
    _padded_transpose(v, vT)
    p = np.zeros((4, Tp), dtype=q.dtype)                           # (4, Tp)  scores, then probs
    rowmax = np.empty(4, dtype=q.dtype)                            # (4,)
    inv_denom = np.empty(4, dtype=q.dtype)                         # (4,)
    for i0 in range(0, T, 4):                                      # query rows i0..i0+3 together
        n = i0 + 4                                                 # keys 0..i0+3: the causal span
        n64 = (n + 63) // 64 * 64                                  # ... padded with zero probs
        # forward 1: scores = q k^T * scale, four query rows per pass over the keys; the row
        # maxima ride along (keys 0..i0 are visible to all four rows)
        m0 = dt(-np.inf)
        m1 = dt(-np.inf)
        m2 = dt(-np.inf)
        m3 = dt(-np.inf)
        for j in range(n):
            s0, s1, s2, s3 = _dot4(qs, i0, kh, j, hs)
            p[0, j] = s0
            p[1, j] = s1
            p[2, j] = s2
            p[3, j] = s3
            if j <= i0:
                m0 = s0 if s0 > m0 else m0
                m1 = s1 if s1 > m1 else m1
                m2 = s2 if s2 > m2 else m2
                m3 = s3 if s3 > m3 else m3
        rowmax[0] = m0
        rowmax[1] = m1
        rowmax[2] = m2
        rowmax[3] = m3
        # forward 2-3: causal mask (row i0+c sees keys j <= i0+c), softmax; the exp runs over
        # all n64 columns (whole vector bodies) and masks (entries past n are stale); p stays
        # unnormalised here, forward 4 divides its result by the row sum once
        for c in range(4):
            m = i0 + c + 1                                         # keys this row sees
            mx = rowmax[c]
            for j in range(i0 + 1, m):                             # the keys only later rows see
                mx = p[c, j] if p[c, j] > mx else mx
            denom = dt(0.0)
            for j in range(n64):
                e = fast_exp(p[c, j] - mx)
                if j >= m:
                    e = dt(0.0)                                    # forward 2: masked
                p[c, j] = e
                denom += e
            inv_denom[c] = dt(1.0) / denom                         # forward 3: p = e / sum e
            if i0 + c < T:
                lse[i0 + c] = mx + math.log(denom)
        # forward 4: out = p v, as dot products over the (padded) keys, four rows at a time
        i1 = inv_denom[0]
        i2 = inv_denom[1]
        i3 = inv_denom[2]
        i4 = inv_denom[3]
        for d in range(hs):
            a0, a1, a2, a3 = _dot4(p, 0, vT, d, n64)
            out[i0, d] = a0 * i1
            if i0 + 1 < T:
                out[i0 + 1, d] = a1 * i2
            if i0 + 2 < T:
                out[i0 + 2, d] = a2 * i3
            if i0 + 3 < T:
                out[i0 + 3, d] = a3 * i4


@kernel()
def _attention_backward_head(dout, q, k, v, out, lse, scale, dq, dk, dv):
    """One head: dout, q, k, v, out, dq, dk, dv (T, hs), lse (T,)."""
    T, hs = q.shape
    dt = q.dtype.type
    T4 = (T + 3) // 4 * 4                                          # rows padded to the 4-row block
    Tp = (T + 63) // 64 * 64                                       # keys padded to a vector body
    # padded copies as in the forward (zeros only where padding); the four row copies share one
    # pass with rowdot here instead of four _padded_copy calls (one read of dout instead of two)
    qs = np.empty((T4, hs), dtype=q.dtype)                         # (T4, hs)  q * scale
    kh = np.empty((T4, hs), dtype=q.dtype)                         # (T4, hs)
    vh = np.empty((T4, hs), dtype=q.dtype)                         # (T4, hs)
    gh = np.empty((T4, hs), dtype=q.dtype)                         # (T4, hs)  dout
    kT = np.empty((hs, Tp), dtype=q.dtype)                         # (hs, Tp)  k transposed
    dkh = np.zeros((T4, hs), dtype=q.dtype)                        # (T4, hs)  dk accumulator
    dvh = np.zeros((T4, hs), dtype=q.dtype)                        # (T4, hs)  dv accumulator
    rowdot = np.zeros(T4, dtype=q.dtype)                           # (T4,)     dout . out per row
    for j in range(T):
        r = dt(0.0)
        for d in range(hs):
            qs[j, d] = q[j, d] * scale
            kh[j, d] = k[j, d]
            vh[j, d] = v[j, d]
            gh[j, d] = dout[j, d]
            r += dout[j, d] * out[j, d]
        rowdot[j] = r
    for j in range(T, T4):
        for d in range(hs):
            qs[j, d] = dt(0.0)
            kh[j, d] = dt(0.0)
            vh[j, d] = dt(0.0)
            gh[j, d] = dt(0.0)
    _padded_transpose(k, kT)
    p = np.zeros((4, Tp), dtype=q.dtype)                           # (4, Tp)  probs
    ds = np.zeros((4, Tp), dtype=q.dtype)                          # (4, Tp)  dp, then dscores
    for i0 in range(0, T, 4):                                      # query rows i0..i0+3 together
        n = i0 + 4                                                 # keys 0..i0+3
        n64 = (n + 63) // 64 * 64
        # recompute forward 1: scores = q k^T * scale; forward 4: out = p v, so dp = dout v^T
        for j in range(n):
            s0, s1, s2, s3 = _dot4(qs, i0, kh, j, hs)
            g0, g1, g2, g3 = _dot4(gh, i0, vh, j, hs)
            p[0, j] = s0
            p[1, j] = s1
            p[2, j] = s2
            p[3, j] = s3
            ds[0, j] = g0
            ds[1, j] = g1
            ds[2, j] = g2
            ds[3, j] = g3
        for c in range(4):
            i = i0 + c
            m = i + 1 if i < T else 0                              # keys row i sees (0: padding)
            row_lse = lse[i] if i < T else dt(0.0)
            row_dot = rowdot[i]
            for j in range(n64):                                   # whole vector bodies
                # recompute forward 2-3: p = exp(scores - lse), 0 where masked (and past n,
                # where p and dp hold stale values)
                pj = fast_exp(p[c, j] - row_lse)
                # forward 3: dscores = p * (dp - rowdot), rowdot = sum_j p_j dp_j = dout . out
                dsj = pj * (ds[c, j] - row_dot)
                if j >= m:
                    pj = dt(0.0)
                    dsj = dt(0.0)
                p[c, j] = pj
                ds[c, j] = dsj
        # forward 4: dv = p^T dout;  forward 1: dk = dscores^T (q * scale)
        for j in range(n):
            p0 = p[0, j]
            p1 = p[1, j]
            p2 = p[2, j]
            p3 = p[3, j]
            d0 = ds[0, j]
            d1 = ds[1, j]
            d2 = ds[2, j]
            d3 = ds[3, j]
            for d in range(hs):
                dvh[j, d] += p0 * gh[i0, d] + p1 * gh[i0 + 1, d] + p2 * gh[i0 + 2, d] \
                    + p3 * gh[i0 + 3, d]
                dkh[j, d] += d0 * qs[i0, d] + d1 * qs[i0 + 1, d] + d2 * qs[i0 + 2, d] \
                    + d3 * qs[i0 + 3, d]
        # forward 1: dq = dscores k * scale, as dot products over the (padded) keys
        for d in range(hs):
            a0, a1, a2, a3 = _dot4(ds, 0, kT, d, n64)
            dq[i0, d] = a0 * scale
            if i0 + 1 < T:
                dq[i0 + 1, d] = a1 * scale
            if i0 + 2 < T:
                dq[i0 + 2, d] = a2 * scale
            if i0 + 3 < T:
                dq[i0 + 3, d] = a3 * scale
    for j in range(T):
        for d in range(hs):
            dk[j, d] = dkh[j, d]
            dv[j, d] = dvh[j, d]


# drivers: each thread claims the next head from counters[0] until none is left, and counts the
# heads it finished in counters[1]. The serial version is the calling thread alone; the threaded
# one runs the same driver on the calling thread and the pool at once. nogil for the pool.
@kernel(nogil=True)
def _attention_forward_claim(counters, q, k, v, scale, out, lse):
    BH = q.shape[0]
    bh = atomic_add(counters, 0, 1)
    while bh < BH:
        _attention_forward_head(q[bh], k[bh], v[bh], scale, out[bh], lse[bh])
        atomic_add(counters, 1, 1)
        bh = atomic_add(counters, 0, 1)


@kernel(nogil=True)
def _attention_backward_claim(counters, dout, q, k, v, out, lse, scale, dq, dk, dv):
    BH = q.shape[0]
    bh = atomic_add(counters, 0, 1)
    while bh < BH:
        _attention_backward_head(dout[bh], q[bh], k[bh], v[bh], out[bh], lse[bh], scale,
                                 dq[bh], dk[bh], dv[bh])
        atomic_add(counters, 1, 1)
        bh = atomic_add(counters, 0, 1)


_pool = None


def _run_threaded(claim, *args):
    """Run `claim` on the calling thread and on numba.get_num_threads() - 1 pool threads, all taking
    heads (axis 0 of every array argument) from one atomic counter; return once every head is done.

    subtle: heads are claimed one at a time, not split into fixed ranges. On this VM a pool thread
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


def _may_use_threads(BH, T, hs):
    """Threads are worth trying with two or more heads, threads, and ~0.1 ms of work or more."""
    return BH > 1 and BH * T * T * hs >= PARALLEL_MIN_WORK and numba.get_num_threads() > 1


# forward and backward each keep their own timings (see ThreadPicker in _common.py)
_forward_picker = ThreadPicker()
_backward_picker = ThreadPicker()


def _heads(a):
    """(B, nh, T, hs) -> contiguous (B*nh, T, hs), copying only if a is not contiguous."""
    return np.ascontiguousarray(a).reshape(-1, a.shape[-2], a.shape[-1])  # (BH, T, hs)


def attention_forward(q, k, v, scale):
    """out = softmax(mask(q k^T * scale)) v, causal. q, k, v (B, nh, T, hs).

    Returns out (B, nh, T, hs) and lse (B, nh, T), the log-sum-exp of each row of masked scores.
    """
    dtype = common_float_dtype(q, k, v)
    if dtype is None or q.ndim < 2 or not (q.shape == k.shape == v.shape) or q.size == 0:
        return reference.attention_forward(q, k, v, scale)
    T, hs = q.shape[-2:]
    out = np.empty(q.shape, dtype=dtype)                           # (B, nh, T, hs)
    lse = np.empty(q.shape[:-1], dtype=dtype)                      # (B, nh, T)
    q3, k3, v3 = _heads(q), _heads(k), _heads(v)                   # (BH, T, hs)
    args = (q3, k3, v3, dtype.type(scale), out.reshape(-1, T, hs), lse.reshape(-1, T))
    BH = q3.shape[0]
    if _may_use_threads(BH, T, hs):
        _forward_picker.run((BH, T, hs, dtype, numba.get_num_threads()),
                            _attention_forward_serial, _attention_forward_threaded, *args)
    else:
        _attention_forward_serial(*args)
    return out, lse


def attention_backward(dout, q, k, v, out, lse, scale):
    """dq, dk, dv of attention_forward, recomputing the probabilities from lse."""
    dtype = common_float_dtype(dout, q, k, v, out, lse)
    if dtype is None or q.ndim < 2 or not (q.shape == k.shape == v.shape == dout.shape
                                           == out.shape) or lse.shape != q.shape[:-1] \
            or q.size == 0:
        return reference.attention_backward(dout, q, k, v, out, lse, scale)
    T, hs = q.shape[-2:]
    dq = np.empty(q.shape, dtype=dtype)                            # (B, nh, T, hs)
    dk = np.empty(q.shape, dtype=dtype)                            # (B, nh, T, hs)
    dv = np.empty(q.shape, dtype=dtype)                            # (B, nh, T, hs)
    args = (_heads(dout), _heads(q), _heads(k), _heads(v), _heads(out),
            np.ascontiguousarray(lse).reshape(-1, T), dtype.type(scale),
            dq.reshape(-1, T, hs), dk.reshape(-1, T, hs), dv.reshape(-1, T, hs))
    BH = q.size // (T * hs)
    if _may_use_threads(BH, T, hs):
        _backward_picker.run((BH, T, hs, dtype, numba.get_num_threads()),
                             _attention_backward_serial, _attention_backward_threaded, *args)
    else:
        _attention_backward_serial(*args)
    return dq, dk, dv
