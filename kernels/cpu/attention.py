"""Causal self-attention, fused per (batch, head), as Numba kernels; flash-style: the forward keeps
only the row log-sum-exp, the backward recomputes the probabilities from it.

Same names, signatures and results as `kernels.reference.attention_forward/backward`. The (B, nh)
heads run in order or shared by threads (the caller and a small Python thread pool running a nogil
driver, each claiming the next head from an atomic counter), whichever `ThreadPicker` (in
`_common.py`) last timed faster for this shape.

Each head is a handful of matrix products on four query rows (or four keys) at a time, every one a
call of `gemm4` (`_tile.py`: the four output rows of a tile of columns held in vector registers),
with the softmax in plain loops between them. Only the causal part is computed: the block of query
rows i0..i0+3 multiplies keys 0..i0+3, and key j only meets queries j..T-1. Operands are read where
they lie; the one copy is k (and v in the backward) transposed to (hs, T), so that a block's scores
q k^T are a product with contiguous rows of B. The backward keeps the whole head's probabilities P
and score gradients dS (T, T; 16 KiB each in float32 at the cpu preset), because dv = P^T dout and
dk = dS^T q need their columns, which `gemm4` reads with a stride instead of a transposed copy.

subtle: with Numba loops (dot products of four rows at a time, padded to whole vector bodies) the
same heads ran at ~30 GFLOP/s, most of it horizontal sums and loop overhead; the explicit register
tiles made the backward 2.2x and the forward 1.6x faster (benchmarks/RESULTS.md, Kernels). float32
exp is `exp_f32` (`fast_exp`).

Follows: Dao et al., "FlashAttention" (keep lse, recompute p in backward; rowdot = dout . out);
llm.c `attention_forward` / `attention_backward` (the per-row softmax and its gradient).
Does not: tile over T for long sequences (a head's (T, T) P and dS are assumed to fit in cache;
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
from kernels.cpu._common import (KERNEL_OPTIONS, ThreadPicker, atomic_add, common_float_dtype, fast_exp, kernel,
                                 row_max)
from kernels.cpu._tile import gemm4

# B * nh * T * T * hs from which the heads are split over threads (the cpu preset has 6.3M)
PARALLEL_MIN_WORK = 1 << 20


@njit(inline="always", **KERNEL_OPTIONS)
def _transpose(src, dstT):
    """dstT = src^T: src (T, hs) into dstT (hs, T)."""
    T, hs = src.shape
    for d in range(hs):
        for j in range(T):
            dstT[d, j] = src[j, d]


@kernel()
def _attention_forward_head(q, k, v, scale, out, lse, kT, s):
    """One head: q, k, v, out (T, hs), lse (T,); scratch kT (hs, T), s (4, T)."""
    T, hs = q.shape
    dt = q.dtype.type
    _transpose(k, kT)
    inv_denom = np.empty(4, dtype=q.dtype)                         # (4,)
    for i0 in range(0, T, 4):                                      # query rows i0..i0+nr-1
        nr = min(4, T - i0)
        n = i0 + nr                                                # keys the last of them sees
        # forward 1: scores = q k^T * scale (the scale in the softmax loop)
        gemm4(q, i0 * hs, hs, 1, kT, 0, T, hs, s, 0, T, nr, n, False)
        # forward 2-3: causal mask (row i sees keys j <= i), softmax; s stays unnormalised,
        # forward 4 divides its result by the row sum once
        for c in range(nr):
            i = i0 + c
            m = i + 1                                              # keys row i sees
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
        gemm4(s, 0, T, 1, v, 0, hs, n, out, i0 * hs, hs, nr, hs, False)
        for c in range(nr):
            for d in range(hs):
                out[i0 + c, d] *= inv_denom[c]


@kernel()
def _attention_backward_head(dout, q, k, v, out, lse, scale, dq, dk, dv, kT, vT, P, dS, rowdot):
    """One head: dout, q, k, v, out, dq, dk, dv (T, hs), lse (T,); scratch kT, vT (hs, T),
    P, dS (T, T), rowdot (T,)."""
    T, hs = q.shape
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
        n = i0 + nr                                                # keys 0..n-1
        # recompute forward 1: scores = q k^T * scale; forward 4: out = p v, so dp = dout v^T
        gemm4(q, i0 * hs, hs, 1, kT, 0, T, hs, P, i0 * T, T, nr, n, False)
        gemm4(dout, i0 * hs, hs, 1, vT, 0, T, hs, dS, i0 * T, T, nr, n, False)
        for c in range(nr):
            i = i0 + c
            m = i + 1                                              # keys row i sees
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
        # forward 1: dq = dscores k * scale
        gemm4(dS, i0 * T, T, 1, k, 0, hs, n, dq, i0 * hs, hs, nr, hs, False)
    for j0 in range(0, T, 4):                                      # keys j0..j0+nr-1
        nr = min(4, T - j0)
        # forward 4: dv = p^T dout;  forward 1: dk = dscores^T q * scale; key j meets queries
        # j..T-1, so the products run over those; column j0 + r of P is row r of P^T (stride 1)
        gemm4(P, j0 * T + j0, 1, T, dout, j0 * hs, hs, T - j0, dv, j0 * hs, hs, nr, hs, False)
        gemm4(dS, j0 * T + j0, 1, T, q, j0 * hs, hs, T - j0, dk, j0 * hs, hs, nr, hs, False)


# drivers: each thread allocates its scratch, claims the next head from counters[0] until none is
# left, and counts the heads it finished in counters[1]. The serial version is the calling thread
# alone; the threaded one runs the same driver on the calling thread and the pool at once. nogil
# for the pool.
@kernel(nogil=True)
def _attention_forward_claim(counters, q, k, v, scale, out, lse):
    BH, T, hs = q.shape
    kT = np.empty((hs, T), dtype=q.dtype)                          # (hs, T)
    s = np.empty((4, T), dtype=q.dtype)                            # (4, T)
    bh = atomic_add(counters, 0, 1)
    while bh < BH:
        _attention_forward_head(q[bh], k[bh], v[bh], scale, out[bh], lse[bh], kT, s)
        atomic_add(counters, 1, 1)
        bh = atomic_add(counters, 0, 1)


@kernel(nogil=True)
def _attention_backward_claim(counters, dout, q, k, v, out, lse, scale, dq, dk, dv):
    BH, T, hs = q.shape
    kT = np.empty((hs, T), dtype=q.dtype)                          # (hs, T)
    vT = np.empty((hs, T), dtype=q.dtype)                          # (hs, T)
    P = np.empty((T, T), dtype=q.dtype)                            # (T, T)
    dS = np.empty((T, T), dtype=q.dtype)                           # (T, T)
    rowdot = np.empty(T, dtype=q.dtype)                            # (T,)
    bh = atomic_add(counters, 0, 1)
    while bh < BH:
        _attention_backward_head(dout[bh], q[bh], k[bh], v[bh], out[bh], lse[bh], scale,
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
