"""The loop structure of the CUDA kernels, replayed in NumPy on the CPU, against kernels/reference.py.

A GPU is not needed to find algorithmic bugs in a tiled kernel: wrong tile bounds, a causal mask
off by one, a missing online-softmax rescale, a fully masked tile that poisons a row with NaN, a
query-tile start that skips rows. Each `emulate_*` below follows one kernel of
kernels/cuda/attention.py (or cross_entropy.py) statement by statement: one loop iteration per
block of the grid, the threads of a block as one NumPy axis (`row = r0 + arange(BR)` is
`threadIdx.x`), shared-memory tiles as zero-padded arrays of the same shapes, the same masks and
recurrences, the same padding of hs to HSP. The tile sizes are read from the kernel file, and
other (BR, BC) pairs are tried too (BR > BC, BR < BC, neither dividing T).

In float64 the emulation must equal the reference to 1e-12 (relative, norm-wise), so any
structural mistake shows. A control emulation with the alpha rescale left out must fail.

What this cannot catch: CUDA-level bugs (a missing __syncthreads, a race, an argument of the wrong
C type, a register array indexed at run time); tests/test_cuda_compile.py catches some of those
statically, tests/test_cuda_kernels.py the rest, on a GPU.

Dimension legend: BH heads (B * nh), T time, hs head size, HSP padded head size, BR query rows
per block, BC keys per tile, N rows, V vocabulary.
"""
import ast
import math
import pathlib

import numpy as np
import pytest

from kernels import reference

CUDA_DIR = pathlib.Path(__file__).resolve().parents[1] / "kernels" / "cuda"
NINF = -np.inf


def _constants(path):
    """Literal top-level constants of a kernel file (read with ast: no cupy needed)."""
    values = {}
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            try:
                values[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                pass
    return values


ATTN = _constants(CUDA_DIR / "attention.py")
HEAD_SIZES = ATTN["HEAD_SIZES"]
KERNEL_FORWARD_TILES = sorted(set(ATTN["FORWARD_TILES"].values()))
KERNEL_DKDV_TILES = sorted(set(ATTN["DKDV_TILES"].values()))


def padded(hs):
    return next(h for h in HEAD_SIZES if hs <= h)


def rel_err(a, ref):
    a, ref = np.asarray(a, np.float64), np.asarray(ref, np.float64)
    d = np.linalg.norm(a - ref)
    return 0.0 if d == 0 else d / max(np.linalg.norm(ref), 1e-300)


def _tile(x, bh, start, count, hs, HSP, scale=1.0):
    """Rows start..start+count-1 of head bh, zero past T and past hs: a shared-memory tile."""
    T = x.shape[1]
    tile = np.zeros((count, HSP))                                  # (count, HSP)
    rows = start + np.arange(count)
    ok = rows < T
    tile[ok, :hs] = x[bh, rows[ok]] * scale
    return tile


# ------------------------------------------------------------------------------------------------
# attention_forward_kernel
# ------------------------------------------------------------------------------------------------
def emulate_forward(q, k, v, scale, BR, BC, rescale=True):
    """q, k, v (BH, T, hs) -> out (BH, T, hs), lse (BH, T), as attention_forward_kernel computes."""
    BH, T, hs = q.shape
    HSP = padded(hs)
    out = np.full((BH, T, hs), np.nan)
    lse = np.full((BH, T), np.nan)
    for bh in range(BH):                                           # blockIdx.x
        for r0 in range(0, T, BR):                                 # blockIdx.y * BR
            row = r0 + np.arange(BR)                               # (BR,) threadIdx.x
            active = row < T
            qr = _tile(q, bh, r0, BR, hs, HSP, scale)              # (BR, HSP) registers
            acc = np.zeros((BR, HSP))
            m = np.full(BR, NINF)
            l = np.zeros(BR)
            kv_end = min(r0 + BR, T)
            for kv0 in range(0, kv_end, BC):
                sK = _tile(k, bh, kv0, BC, hs, HSP)                # (BC, HSP) shared
                sV = _tile(v, bh, kv0, BC, hs, HSP)                # (BC, HSP) shared
                key = kv0 + np.arange(BC)                          # (BC,)
                dot = qr @ sK.T                                    # (BR, BC)
                valid = (key[None, :] <= row[:, None]) & (key[None, :] < T)
                s = np.where(valid, dot, NINF)                     # (BR, BC) sS
                tile_max = s.max(axis=1)                           # (BR,)
                m_new = np.maximum(m, tile_max)
                upd = m_new != NINF                                # rows with a visible key so far
                with np.errstate(invalid="ignore"):
                    alpha = np.where(upd, np.exp(m - m_new), 1.0)  # m = -inf: 0
                    p = np.where(s == NINF, 0.0, np.exp(s - np.where(upd, m_new, 0.0)[:, None]))
                if not rescale:
                    alpha = np.ones_like(alpha)                    # the control's bug
                acc = np.where(upd[:, None], acc * alpha[:, None] + p @ sV, acc)
                l = np.where(upd, l * alpha + p.sum(axis=1), l)
                m = np.where(upd, m_new, m)
            with np.errstate(divide="ignore", invalid="ignore"):
                res = acc * (1.0 / l)[:, None]
                row_lse = m + np.log(l)
            out[bh, row[active]] = res[active, :hs]
            lse[bh, row[active]] = row_lse[active]
    return out, lse


# ------------------------------------------------------------------------------------------------
# attention_backward_dq_kernel and attention_backward_dkdv_kernel
# ------------------------------------------------------------------------------------------------
def emulate_backward_dq(dout, q, k, v, out, lse, scale, BR, BC):
    """-> D (BH, T), dq (BH, T, hs), as attention_backward_dq_kernel computes."""
    BH, T, hs = q.shape
    HSP = padded(hs)
    D = np.full((BH, T), np.nan)
    dq = np.full((BH, T, hs), np.nan)
    for bh in range(BH):
        for r0 in range(0, T, BR):
            row = r0 + np.arange(BR)
            active = row < T
            qr = _tile(q, bh, r0, BR, hs, HSP, scale)              # (BR, HSP)
            gr = _tile(dout, bh, r0, BR, hs, HSP)                  # (BR, HSP)
            orow = _tile(out, bh, r0, BR, hs, HSP)                 # (BR, HSP)
            row_dot = (gr * orow).sum(axis=1)                      # (BR,)
            row_lse = np.zeros(BR)
            row_lse[active] = lse[bh, row[active]]
            D[bh, row[active]] = row_dot[active]
            acc = np.zeros((BR, HSP))
            for kv0 in range(0, min(r0 + BR, T), BC):
                sK = _tile(k, bh, kv0, BC, hs, HSP)
                sV = _tile(v, bh, kv0, BC, hs, HSP)
                for j in range(BC):                                # the kernel's j loop
                    key = kv0 + j
                    visible = (key <= row) & (key < T)             # (BR,) per thread
                    s = qr @ sK[j]                                 # (BR,)
                    dp = gr @ sV[j]
                    p = np.exp(np.where(visible, s - row_lse, NINF))
                    ds = p * (dp - row_dot)
                    acc += np.where(visible, ds, 0.0)[:, None] * sK[j][None, :]
            dq[bh, row[active]] = (acc * scale)[active, :hs]
    return D, dq


def emulate_backward_dkdv(dout, q, k, v, lse, D, scale, BR, BC):
    """-> dk, dv (BH, T, hs), as attention_backward_dkdv_kernel computes."""
    BH, T, hs = q.shape
    HSP = padded(hs)
    dk = np.full((BH, T, hs), np.nan)
    dv = np.full((BH, T, hs), np.nan)
    for bh in range(BH):
        for c0 in range(0, T, BC):                                 # blockIdx.y * BC
            key = c0 + np.arange(BC)                               # (BC,) threadIdx.x
            active = key < T
            sK = _tile(k, bh, c0, BC, hs, HSP)                     # (BC, HSP + 1) in the kernel
            sV = _tile(v, bh, c0, BC, hs, HSP)
            dk_acc = np.zeros((BC, HSP))
            dv_acc = np.zeros((BC, HSP))
            for q0 in range(c0 - c0 % BR, T, BR):
                sQ = _tile(q, bh, q0, BR, hs, HSP, scale)          # (BR, HSP)
                sG = _tile(dout, bh, q0, BR, hs, HSP)              # (BR, HSP)
                rows = q0 + np.arange(BR)
                ok = rows < T
                sL = np.zeros(BR)
                sD = np.zeros(BR)
                sL[ok] = lse[bh, rows[ok]]
                sD[ok] = D[bh, rows[ok]]
                for i in range(BR):                                # the kernel's i loop
                    qrow = q0 + i
                    visible = active & (key <= qrow) & (qrow < T)  # (BC,) per thread
                    s = sK @ sQ[i]                                 # (BC,)
                    dp = sV @ sG[i]
                    p = np.exp(np.where(visible, s - sL[i], NINF))
                    ds = p * (dp - sD[i])
                    dv_acc += p[:, None] * sG[i][None, :]
                    dk_acc += ds[:, None] * sQ[i][None, :]
            dk[bh, key[active]] = dk_acc[active, :hs]
            dv[bh, key[active]] = dv_acc[active, :hs]
    return dk, dv


# ------------------------------------------------------------------------------------------------
# tests
# ------------------------------------------------------------------------------------------------
SHAPES = [(1, 1, 5), (2, 7, 16), (1, 31, 9), (2, 33, 32), (1, 65, 64), (1, 100, 20)]
FORWARD_TILES = sorted(set(KERNEL_FORWARD_TILES) | {(16, 24), (8, 8)})
DKDV_TILES = sorted(set(KERNEL_DKDV_TILES) | {(8, 12), (12, 8)})


def _inputs(rng, BH, T, hs):
    q, k, v, dout = (rng.standard_normal((BH, T, hs)) for _ in range(4))  # (BH, T, hs) each
    return q, k, v, dout, 1.0 / math.sqrt(hs)


def test_the_kernel_tile_sizes_are_emulated():
    assert KERNEL_FORWARD_TILES and KERNEL_DKDV_TILES
    assert set(KERNEL_FORWARD_TILES) <= set(FORWARD_TILES) and set(KERNEL_DKDV_TILES) <= set(DKDV_TILES)


@pytest.mark.parametrize("tiles", FORWARD_TILES)
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_tiling_equals_reference(rng, shape, tiles):
    BH, T, hs = shape
    q, k, v, _, scale = _inputs(rng, BH, T, hs)
    out, lse = emulate_forward(q, k, v, scale, *tiles)
    want_out, want_lse = reference.attention_forward(q[None], k[None], v[None], scale)
    assert rel_err(out, want_out[0]) < 1e-12, f"out, tiles (BR, BC) = {tiles}"
    assert rel_err(lse, want_lse[0]) < 1e-12, f"lse, tiles (BR, BC) = {tiles}"


def test_forward_control_without_rescale_fails(rng):
    """Control: leave out the alpha rescale of the online softmax and the check must fail."""
    q, k, v, _, scale = _inputs(rng, 1, 65, 16)
    q *= 3.0                                                       # scores spread: maxima move between tiles
    out, _ = emulate_forward(q, k, v, scale, 64, 32, rescale=False)
    want, _ = reference.attention_forward(q[None], k[None], v[None], scale)
    assert rel_err(out, want[0]) > 1e-3


@pytest.mark.parametrize("fwd_tiles,dkdv_tiles", list(zip(FORWARD_TILES, DKDV_TILES)))
@pytest.mark.parametrize("shape", SHAPES)
def test_backward_tiling_equals_reference(rng, shape, fwd_tiles, dkdv_tiles):
    BH, T, hs = shape
    q, k, v, dout, scale = _inputs(rng, BH, T, hs)
    out, lse = reference.attention_forward(q[None], k[None], v[None], scale)
    out, lse = out[0], lse[0]
    D, dq = emulate_backward_dq(dout, q, k, v, out, lse, scale, *fwd_tiles)
    dk, dv = emulate_backward_dkdv(dout, q, k, v, lse, D, scale, *dkdv_tiles)
    want = reference.attention_backward(dout[None], q[None], k[None], v[None], out[None], lse[None], scale)
    np.testing.assert_allclose(D, (dout * out).sum(axis=-1), rtol=1e-12, atol=1e-12)
    # at T = 1 dq and dk are exact cancellations (0 up to rounding): measure against the terms
    terms = np.linalg.norm(dout) * np.linalg.norm(v) * np.linalg.norm(k) * scale
    for name, got, w in zip(("dq", "dk", "dv"), (dq, dk, dv), want):
        err = np.linalg.norm(got - w[0]) / max(np.linalg.norm(w[0]), terms * 1e-3, 1e-300)
        assert err < 1e-10, f"{name}: relative error {err:.3g}, tiles {fwd_tiles} / {dkdv_tiles}"


# ------------------------------------------------------------------------------------------------
# cross-entropy: the online (max, sum) per lane and the butterfly merge of ce_forward_warp_kernel
# ------------------------------------------------------------------------------------------------
def _online_row(values):
    """online_row: the (m, s) of one lane over its entries, statement by statement."""
    m, s = NINF, 0.0
    for x in values:
        if x > m:
            s = (0.0 if m == NINF else s * math.exp(m - x)) + 1.0
            m = x
        elif m != NINF:
            s += math.exp(x - m)
    return m, s


def _online_merge(m, s, m2, s2):
    mm = max(m, m2)
    a = 0.0 if m == NINF else s * math.exp(m - mm)
    b = 0.0 if m2 == NINF else s2 * math.exp(m2 - mm)
    return mm, a + b


def emulate_ce_row(row, lanes=32):
    """lse of one row as ce_forward_warp_kernel gets it: 32 lanes, then __shfl_xor_sync 16..1."""
    pairs = [_online_row(row[lane::lanes]) for lane in range(lanes)]
    offset = lanes // 2
    while offset:
        pairs = [_online_merge(*pairs[lane], *pairs[lane ^ offset]) for lane in range(lanes)]
        offset //= 2
    m, s = pairs[0]
    assert all(p == pairs[0] for p in pairs), "every lane must end with the same (m, s)"
    return m + math.log(s)


@pytest.mark.parametrize("V", [1, 5, 31, 32, 33, 65, 200])
def test_cross_entropy_online_lse_equals_reference(rng, V):
    logits = rng.standard_normal((4, V)) * 20.0                    # (4, V) large: exp would overflow naively
    logits[1, : V // 2] = -np.inf                                  # masked entries, some lanes see only -inf
    got = np.array([emulate_ce_row(r) for r in logits])
    _, want = reference.softmax_cross_entropy_forward(logits, np.zeros(4, dtype=np.int64) + V - 1)
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-12)
