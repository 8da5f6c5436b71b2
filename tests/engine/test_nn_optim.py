"""Modules (names, state dicts, train/eval), the optimizers, clipping and the LR schedule."""
import math

import numpy as np
import pytest

from tinygrad_gpt import Tensor, nn, ops
from tinygrad_gpt.optim import SGD, AdamW, clip_grad_norm, cosine_lr, decay_groups, wsd_lr


class MLP(nn.Module):
    def __init__(self, rng, dtype=np.float32):
        self.fc = nn.Linear(2, 32, rng=rng, dtype=dtype)
        self.ln = nn.LayerNorm(32, dtype=dtype)
        self.layers = [nn.Linear(32, 32, rng=rng, dtype=dtype), nn.Linear(32, 2, rng=rng, dtype=dtype)]
        self.drop = nn.Dropout(0.0)

    def forward(self, x):
        h = self.ln(self.fc(x)).gelu()
        h = self.drop(self.layers[0](h).tanh())
        return self.layers[1](h)


def test_named_parameters_and_state_dict_round_trip(rng):
    m = MLP(rng)
    names = [n for n, _ in m.named_parameters()]
    assert names == ["fc.weight", "fc.bias", "ln.weight", "ln.bias", "layers.0.weight", "layers.0.bias",
                     "layers.1.weight", "layers.1.bias"]
    assert m.fc.weight.shape == (2, 32)  # (in, out) as GPT-2's Conv1D
    sd = m.state_dict()
    m2 = MLP(np.random.default_rng(123)).load_state_dict(sd)
    x = Tensor(rng.standard_normal((5, 2)).astype(np.float32))
    np.testing.assert_array_equal(m(x).data, m2(x).data)


def test_load_state_dict_checks_names_and_shapes(rng):
    m = MLP(rng)
    sd = m.state_dict()
    bad = dict(sd, **{"fc.weight": np.zeros((3, 32), np.float32)})
    with pytest.raises(ValueError, match=r"fc.weight has shape \(3, 32\).*expects \(2, 32\)"):
        m.load_state_dict(bad)
    missing = {k: v for k, v in sd.items() if k != "ln.bias"}
    with pytest.raises(KeyError, match="missing \\['ln.bias'\\]"):
        m.load_state_dict(missing)
    with pytest.raises(KeyError, match="unexpected \\['extra'\\]"):
        m.load_state_dict(dict(sd, extra=np.zeros(1)))


def test_train_eval_flags_propagate(rng):
    m = MLP(rng)
    m.eval()
    assert all(not mod.training for mod in m.modules())
    m.train()
    assert all(mod.training for mod in m.modules())


def test_linear_rejects_wrong_width(rng):
    with pytest.raises(ValueError, match="input has 3 features"):
        nn.Linear(2, 4, rng=rng)(Tensor(np.ones((1, 3), np.float32)))


def _spirals(rng, n=200):
    t = rng.uniform(0, 3 * np.pi, n)
    label = rng.integers(0, 2, n)
    r = t / (3 * np.pi)
    x = np.stack([r * np.cos(t + np.pi * label), r * np.sin(t + np.pi * label)], 1) + rng.normal(0, 0.02, (n, 2))
    return x.astype(np.float32), label


def test_mlp_trains_with_adamw_loss_falls_tenfold(rng):
    """Two interleaved spirals: a 2-32-32-2 MLP must cut its cross-entropy at least tenfold."""
    x, y = _spirals(rng)
    m = MLP(rng)
    opt = AdamW(decay_groups(m.named_parameters(), 1e-4), lr=1e-2)
    first = None
    for step in range(400):
        loss = ops.cross_entropy(m(Tensor(x)), y)
        first = loss.item() if first is None else first
        m.zero_grad()
        loss.backward()
        clip_grad_norm(m.parameters(), 1.0)
        opt.step()
    final = ops.cross_entropy(m(Tensor(x)), y).item()
    assert final < first / 10, f"loss fell only from {first:.3f} to {final:.3f}"


def test_sgd_momentum_matches_hand_computation():
    """f = p^2/2 at p = 1, lr 0.1, momentum 0.9: b1 = 1, p = 0.9; b2 = 0.9 + 0.9 = 1.8, p = 0.72."""
    p = Tensor(np.array([1.0]), requires_grad=True)
    opt = SGD([p], lr=0.1, momentum=0.9)
    for _ in range(2):
        p.grad = None
        (p * p * 0.5).sum().backward()
        opt.step()
    assert abs(p.data[0] - 0.72) < 1e-12


def test_adamw_first_step_and_decoupled_decay():
    """Step 1: mhat = g, vhat = g^2, so p -= lr * (sign(g) + wd * p) (eps negligible)."""
    p = Tensor(np.array([2.0, -1.0]), requires_grad=True)
    p.grad = np.array([0.5, -3.0])
    AdamW([p], lr=0.1, weight_decay=0.5, eps=1e-12).step()
    np.testing.assert_allclose(p.data, [2.0 - 0.1 * (1 + 1.0), -1.0 - 0.1 * (-1 - 0.5)], rtol=1e-9)


def test_decay_groups_exclude_biases_and_layernorm(rng):
    groups = decay_groups(MLP(rng).named_parameters(), 0.1)
    assert all(p.ndim == 2 for p in groups[0]["params"]) and groups[0]["weight_decay"] == 0.1
    assert all(p.ndim == 1 for p in groups[1]["params"]) and groups[1]["weight_decay"] == 0.0
    assert len(groups[0]["params"]) == 3 and len(groups[1]["params"]) == 5


def test_adamw_state_dict_round_trip(rng):
    m = MLP(rng)
    opt = AdamW(m.parameters(), lr=1e-3)
    for p in m.parameters():
        p.grad = rng.standard_normal(p.shape).astype(np.float32)
    opt.step()
    state = opt.state_dict()
    opt2 = AdamW(m.parameters(), lr=1e-3)
    opt2.load_state_dict(state)
    assert opt2.t == 1
    for a, b in zip(opt.m + opt.v, opt2.m + opt2.v):
        np.testing.assert_array_equal(a, b)


def test_clip_grad_norm():
    """grads (3, 4) and (0,): norm 5; clipped to 1 they become (0.6, 0.8)."""
    a = Tensor(np.zeros(2), requires_grad=True)
    a.grad = np.array([3.0, 4.0])
    b = Tensor(np.zeros(1), requires_grad=True)
    b.grad = np.array([0.0])
    assert clip_grad_norm([a, b], 1.0) == 5.0
    np.testing.assert_allclose(a.grad, [0.6, 0.8], rtol=1e-5)


def test_cosine_schedule_shape():
    """warmup 10 to 1e-3, cosine to 1e-4 at step 110: halfway (step 60) is the mean 5.5e-4."""
    assert cosine_lr(0, 1e-3, 1e-4, 10, 110) == pytest.approx(1e-4)
    assert cosine_lr(9, 1e-3, 1e-4, 10, 110) == pytest.approx(1e-3)
    assert cosine_lr(60, 1e-3, 1e-4, 10, 110) == pytest.approx(5.5e-4)
    assert cosine_lr(110, 1e-3, 1e-4, 10, 110) == pytest.approx(1e-4)
    assert cosine_lr(5000, 1e-3, 1e-4, 10, 110) == pytest.approx(1e-4)
    lrs = [cosine_lr(s, 1e-3, 1e-4, 10, 110) for s in range(10, 111)]
    assert all(x >= y for x, y in zip(lrs, lrs[1:]))
    assert not math.isnan(cosine_lr(0, 1.0, 0.0, 0, 0))


def test_wsd_schedule_by_hand():
    """warm-up 10 to 1e-3, constant, then a linear cool-down over the last 40% of 100 steps: it
    starts at step 60 and reaches 1e-4 at step 100, so step 80 (halfway) is 5.5e-4 and step 90 is
    1e-3 - 0.75 * 9e-4 = 3.25e-4."""
    lr = lambda step, frac=0.4: wsd_lr(step, 1e-3, 1e-4, 10, 100, frac)  # noqa: E731
    assert lr(0) == pytest.approx(1e-4) and lr(4) == pytest.approx(5e-4) and lr(9) == pytest.approx(1e-3)
    assert lr(10) == lr(35) == lr(59) == pytest.approx(1e-3)
    assert lr(60) == pytest.approx(1e-3)
    assert lr(80) == pytest.approx(5.5e-4)
    assert lr(90) == pytest.approx(3.25e-4)
    assert lr(99) == pytest.approx(1e-3 - 39 / 40 * 9e-4)
    assert lr(100) == lr(5000) == pytest.approx(1e-4)
    lrs = [lr(s) for s in range(10, 101)]
    assert all(x >= y for x, y in zip(lrs, lrs[1:]))
    # no cool-down: constant to the end; all cool-down: linear from the end of the warm-up
    assert lr(99, 0.0) == pytest.approx(1e-3) and lr(100, 0.0) == pytest.approx(1e-4)
    assert lr(50, 1.0) == pytest.approx(1e-3 - 0.5 * 9e-4)
    assert lr(5, 1.0) == pytest.approx(6e-4)  # the warm-up wins where the two overlap
