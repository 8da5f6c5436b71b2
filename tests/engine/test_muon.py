"""Muon: the Newton-Schulz orthogonalisation, one step against a hand-written NumPy Muon, the split
of a GPT's parameters, and the optimizer state through a checkpoint.

Newton-Schulz acts on singular values alone: for G = U diag(s) V^T, X = G / ||G||_F = U diag(s / |s|) V^T
and each iteration X <- a X + b X X^T X + c (X X^T)^2 X = U diag(p(s)) V^T with p(s) = a s + b s^3 + c s^5.
So the output is U diag(p^5(s / |s|)) V^T, which the tests compute by hand from a G built with known
U, s, V. The hand-written Muon step works in PyTorch's (out, in) layout, literally as Keller Jordan's
`muon_update` and `SingleDeviceMuon.step` do, so that it also checks the translation to the
project's (in, out) storage (the transpose, and the max(1, rows / cols) ** 0.5 scale).
Tolerances: float64 1e-10 relative, float32 2e-5 (the iteration's matmuls in float32).
"""
import numpy as np
import pytest

from tinygrad_gpt import Tensor, checkpoint
from tinygrad_gpt.model import GPT, GPTConfig
from tinygrad_gpt.optim import (NS_COEFFICIENTS, AdamW, Muon, MuonWithAdamW, muon_scale, newton_schulz,
                                split_for_muon)
from tinygrad_gpt.train import train_step

A, B, C = NS_COEFFICIENTS
SV_RANGE = (0.68, 1.21)  # where 5 steps take every singular value >= 0.003 of ||G||_F (see optim.py)


def with_singular_values(rng, rows, cols, s):
    """G = U diag(s) V^T (rows, cols) with random orthonormal U (rows, k), V (cols, k), k = len(s)."""
    k = len(s)
    U, _ = np.linalg.qr(rng.standard_normal((rows, k)))           # (rows, k)
    V, _ = np.linalg.qr(rng.standard_normal((cols, k)))           # (cols, k)
    return (U * s) @ V.T, U, V                                     # (rows, cols)


def polynomial(s, steps):
    for _ in range(steps):
        s = A * s + B * s ** 3 + C * s ** 5
    return s


def in_range(O):
    sv = np.linalg.svd(np.asarray(O, dtype=np.float64), compute_uv=False)
    return SV_RANGE[0] <= sv.min() and sv.max() <= SV_RANGE[1], (sv.min(), sv.max())


@pytest.mark.parametrize("rows, cols", [(7, 19), (19, 7), (12, 12), (1, 5)])
def test_newton_schulz_is_the_polynomial_of_the_singular_values(rng, rows, cols):
    k = min(rows, cols)
    s = rng.uniform(0.05, 3.0, k)                                  # (k,)
    G, U, V = with_singular_values(rng, rows, cols, s)
    want = (U * polynomial(s / (np.linalg.norm(s) + 1e-7), 5)) @ V.T
    got = newton_schulz(G, steps=5)
    assert got.shape == G.shape and got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-10 * np.abs(want).max())
    # float32 stays float32
    got32 = newton_schulz(G.astype(np.float32), steps=5)
    assert got32.dtype == np.float32
    np.testing.assert_allclose(got32, want, rtol=0, atol=2e-5 * np.abs(want).max() * max(rows, cols))


@pytest.mark.parametrize("shape", [(32, 96), (96, 32), (3, 128, 384), (2, 50, 20)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_newton_schulz_singular_values_land_in_range(rng, shape, dtype):
    """A Gaussian matrix (longer side >= 2.5 x the shorter, so its smallest singular value is far
    above 0.003 |s|): every singular value of the output within [0.68, 1.21]; a stack is the
    per-matrix result. Control: one step leaves them far outside, and the check says so."""
    G = rng.standard_normal(shape).astype(dtype)
    O = newton_schulz(G, steps=5)
    assert O.shape == G.shape and O.dtype == np.dtype(dtype)
    for i, matrix in enumerate(O.reshape(-1, *shape[-2:])):
        ok, (lo, hi) = in_range(matrix)
        assert ok, f"matrix {i}: singular values in [{lo:.3f}, {hi:.3f}], outside {SV_RANGE}"
        one = newton_schulz(G.reshape(-1, *shape[-2:])[i], steps=5)
        np.testing.assert_allclose(matrix, one, rtol=0, atol=1e-5 if dtype == np.float32 else 1e-12)
    ok, (lo, hi) = in_range(newton_schulz(G, steps=1).reshape(-1, *shape[-2:])[0])
    assert not ok, f"control: one step gave singular values in [{lo:.3f}, {hi:.3f}], inside {SV_RANGE}"


def keller_muon_step(W, grad, buf, lr, beta, weight_decay, steps, nesterov=True):
    """One Muon step in PyTorch's layout, by hand: W, grad, buf are (in, out) as stored here and are
    viewed as PyTorch's (out, in) weight. Returns the new W and buf (float64)."""
    Wt, G, M = W.T.astype(np.float64), grad.T.astype(np.float64), buf.T.astype(np.float64)   # (out, in)
    M = M + (1 - beta) * (G - M)                                   # momentum.lerp_(grad, 1 - beta)
    U = G + beta * (M - G) if nesterov else M                      # grad.lerp_(momentum, beta): Nesterov
    X = U.T if U.shape[0] > U.shape[1] else U
    X = X / (np.linalg.norm(X) + 1e-7)
    for _ in range(steps):
        S = X @ X.T
        X = A * X + (B * S + C * S @ S) @ X
    X = X.T if U.shape[0] > U.shape[1] else X
    X = X * max(1, U.shape[0] / U.shape[1]) ** 0.5                 # max(1, rows / cols) ** 0.5
    Wt = Wt * (1 - lr * weight_decay) - lr * X
    return Wt.T, M.T


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_muon_step_equals_a_hand_written_numpy_muon(rng, kernel_backend, dtype):
    """Three steps on a wide (8, 24), a tall (24, 8) and a second (8, 24) matrix (orthogonalised
    in one stack with the first): the same weights and momentum as keller_muon_step's. Control: the
    hand step without Nesterov (update = momentum) differs (from the second step on: the first
    momentum is a multiple of the gradient, which orthogonalises to the same matrix)."""
    shapes = [(8, 24), (24, 8), (8, 24)]
    params = [Tensor(rng.standard_normal(s).astype(dtype) * 0.1, requires_grad=True) for s in shapes]
    want = [p.data.astype(np.float64) for p in params]
    bufs = [np.zeros(s) for s in shapes]
    hyper = dict(lr=0.05, beta=0.9, weight_decay=0.1, steps=5)
    opt = Muon(params, lr=hyper["lr"], momentum=hyper["beta"], ns_steps=5, weight_decay=hyper["weight_decay"])
    for step in range(3):
        grads = [rng.standard_normal(s).astype(dtype) for s in shapes]
        for p, g in zip(params, grads):
            p.grad = g
        before = [p.data.astype(np.float64) for p in params]
        opt.step()
        for i, g in enumerate(grads):
            no_nesterov = keller_muon_step(want[i], g, bufs[i], nesterov=False, **hyper)[0]
            want[i], bufs[i] = keller_muon_step(want[i], g, bufs[i], **hyper)
            if step > 0:
                assert np.abs(no_nesterov - want[i]).max() > 1e-4, "control: Nesterov changes the step"
        tol = 1e-10 if dtype == np.float64 else 2e-5
        for i, p in enumerate(params):
            step = np.abs(want[i] - before[i]).max()
            assert np.abs(p.data - want[i]).max() <= tol * max(1.0, step * 10), (shapes[i], np.abs(p.data - want[i]).max())
            np.testing.assert_allclose(opt.momentum[i], bufs[i], rtol=0, atol=tol)
    assert muon_scale((8, 24)) == pytest.approx(3 ** 0.5) and muon_scale((24, 8)) == 1.0


def test_muon_refuses_a_vector_naming_adamw():
    with pytest.raises(ValueError, match=r"matrices \(2-D\), got one of shape \(5,\).*AdamW"):
        Muon([Tensor(np.zeros(5), requires_grad=True)])


def tiny_gpt(seed=0):
    return GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=16), seed=seed)


def test_split_for_muon_takes_the_blocks_matrices_only():
    hidden, rest = split_for_muon(tiny_gpt().named_parameters())
    assert [n for n, _ in hidden] == [f"h.{i}.{m}.weight" for i in range(2)
                                      for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]
    names = [n for n, _ in rest]
    assert "wte.weight" in names and "wpe.weight" in names and "ln_f.weight" in names
    assert all(p.ndim == 1 for n, p in rest if n.startswith("h."))


def test_muon_with_adamw_follows_the_schedule_from_each_peak():
    opt = MuonWithAdamW(tiny_gpt().named_parameters(), lr=2e-3, muon_lr=0.04)
    opt.set_lr(5e-4)  # a quarter of the peak
    assert {g["lr"] for g in opt.adamw.param_groups} == {5e-4}
    assert [g["lr"] for g in opt.muon.param_groups] == [pytest.approx(0.01)]


def _batches(rng, n):
    return [(rng.integers(0, 11, (3, 8)), rng.integers(0, 11, (3, 8))) for _ in range(n)]


def test_muon_state_round_trips_through_a_checkpoint(rng, tmp_path, kernel_backend):
    """Two steps, a checkpoint on disk (weights and optimizer state), then one more step: the
    resumed model and optimizer take exactly the step the original takes. Control: a fresh
    optimizer on the same weights (momentum and AdamW moments zero) steps elsewhere."""
    batches = _batches(rng, 3)
    model = tiny_gpt()
    opt = MuonWithAdamW(model.named_parameters(), lr=1e-3, muon_lr=0.02)
    for x, y in batches[:2]:
        train_step(model, opt, x, y)
    checkpoint.save_checkpoint(tmp_path / "run", model.state_dict(), {"step": 2}, optimizer_state=opt.state_dict())
    state_dict, optimizer_state, _ = checkpoint.load_checkpoint(tmp_path / "run")
    resumed, fresh = tiny_gpt(seed=1).load_state_dict(state_dict), tiny_gpt(seed=1).load_state_dict(state_dict)
    opt_resumed = MuonWithAdamW(resumed.named_parameters(), lr=1e-3, muon_lr=0.02)
    opt_resumed.load_state_dict(optimizer_state)
    assert opt_resumed.t == 2
    for a, b in zip(opt.state_arrays(), opt_resumed.state_arrays()):
        np.testing.assert_array_equal(a, b)
    opt_fresh = MuonWithAdamW(fresh.named_parameters(), lr=1e-3, muon_lr=0.02)
    x, y = batches[2]
    for m, o in ((model, opt), (resumed, opt_resumed), (fresh, opt_fresh)):
        train_step(m, o, x, y)
    for name, p in model.named_parameters():
        np.testing.assert_array_equal(dict(resumed.named_parameters())[name].data, p.data, err_msg=name)
    moved = max(np.abs(dict(fresh.named_parameters())[n].data - p.data).max() for n, p in model.named_parameters())
    assert moved > 1e-4, "control: without the saved state the step must differ"


def test_load_state_dict_refuses_another_optimizers_state(rng):
    model = tiny_gpt()
    adamw_state = AdamW(model.parameters()).state_dict()
    with pytest.raises(ValueError, match=r"Muon with AdamW.*got keys \['arrays', 't'\]"):
        MuonWithAdamW(model.named_parameters()).load_state_dict(adamw_state)
    muon_state = MuonWithAdamW(model.named_parameters()).state_dict()
    with pytest.raises(ValueError, match=r"expected AdamW's state.*got keys \['adamw', 'muon'\]"):
        AdamW(model.parameters()).load_state_dict(muon_state)
