"""PPO's losses, whitening, entropy and Bradley-Terry: hand-computed examples and float64 gradient checks.

Hand-computed clipped surrogate (eps = 0.2, mask all ones, n = 3), L = mean max(-A r, -A clip(r)):
    token  r     A    -A r    -A clip(r)     max (branch)        dL/dlogp = [unclipped] (-A r) / n
    0      1.5   +2   -3.0    -2 * 1.2 = -2.4  -2.4 (clipped)     0       (r above range, A > 0: no push)
    1      0.9   -1   +0.9    +0.9             +0.9 (inside)      0.9 / 3 = 0.3
    2      0.5   +1   -0.5    -1 * 0.8 = -0.8  -0.5 (unclipped)   -0.5 / 3 = -0.1667 (pessimistic branch)
    L = (-2.4 + 0.9 - 0.5) / 3 = -2/3;  the gradient is d/dlogp, and dr/dlogp = r.

Hand-computed clipped value loss (c = 0.2), L = 1/2 mean max((V - R)^2, (V_old + clip(V - V_old) - R)^2):
    token  V    V_old  R     (V-R)^2  V_clip  (V_clip-R)^2  max           dL/dV = [unclipped] (V - R) / n
    0      1.0  0.5    2.0   1.00     0.7     1.69          1.69 (clip)   0
    1      1.0  0.5    0.0   1.00     0.7     0.49          1.00          1.0 / 3
    2      0.6  0.5    1.0   0.16     0.6     0.16          0.16 (inside) -0.4 / 3
    L = 0.5 (1.69 + 1.00 + 0.16) / 3 = 0.475

Hand-computed whitening: x = [1, 2, 3, 100], mask = [1, 1, 1, 0]: mean 2, var (1 + 0 + 1) / 3 = 2/3,
    out = [-1, 0, 1, 0] / sqrt(2/3) = [-1.2247, 0, 1.2247, 0]; the masked 100 changes nothing.
"""
import math

import numpy as np
import pytest

from tinygrad_gpt.gradcheck import gradcheck
from tinygrad_gpt.rlhf.losses import (BradleyTerryLoss, KLToReference, PolicyLoss, ValueLoss, bradley_terry_loss,
                                      entropy, kl_to_reference,
                                      policy_loss, value_loss, whiten)
from tinygrad_gpt.tensor import Tensor


def t64(x, grad=True):
    return Tensor(np.asarray(x, dtype=np.float64), requires_grad=grad)


# ---- hand-computed examples ------------------------------------------------------------------

def test_policy_loss_hand_example():
    old = np.log(np.array([[0.2, 0.5, 0.4]]))
    ratio = np.array([[1.5, 0.9, 0.5]])
    logp = t64(old + np.log(ratio))
    adv = np.array([[2.0, -1.0, 1.0]])
    loss = policy_loss(logp, old, adv, np.ones((1, 3)), clip_eps=0.2)
    assert loss.item() == pytest.approx(-2.0 / 3, abs=1e-12)
    loss.backward()
    # dL/dlogp = r dL/dr
    np.testing.assert_allclose(logp.grad, [[0.0, 0.9 * 0.9 / 3 / 0.9 * 1.0 * 1.0, -0.5 * 0.5 / 3 / 0.5]], atol=1e-12)
    np.testing.assert_allclose(logp.grad, [[0.0, 0.3, -1 / 6]], atol=1e-12)


def test_value_loss_hand_example():
    v = t64([[1.0, 1.0, 0.6]])
    loss = value_loss(v, [[0.5, 0.5, 0.5]], [[2.0, 0.0, 1.0]], np.ones((1, 3)), clip_range=0.2)
    assert loss.item() == pytest.approx(0.475, abs=1e-12)
    loss.backward()
    np.testing.assert_allclose(v.grad, [[0.0, 1 / 3, -0.4 / 3]], atol=1e-12)


def test_whiten_hand_example():
    out = whiten(np.array([[1.0, 2.0, 3.0, 100.0]]), np.array([[1, 1, 1, 0]]))
    np.testing.assert_allclose(out, [[-1 / math.sqrt(2 / 3), 0, 1 / math.sqrt(2 / 3), 0]], atol=1e-7)


def test_bradley_terry_hand_example():
    """margins 0 and log 3: losses log 2 and log(1 + 1/3); mean = (log 2 + log 4/3) / 2."""
    rc, rr = t64([0.0, math.log(3.0)]), t64([0.0, 0.0])
    loss = bradley_terry_loss(rc, rr)
    assert loss.item() == pytest.approx((math.log(2) + math.log(4 / 3)) / 2, abs=1e-12)
    loss.backward()
    # dL/drc = -sigmoid(-margin) / 2 = [-1/4, -1/8]
    np.testing.assert_allclose(rc.grad, [-0.25, -0.125], atol=1e-12)
    np.testing.assert_allclose(rr.grad, [0.25, 0.125], atol=1e-12)


def test_losses_reject_bad_input():
    with pytest.raises(ValueError, match="mask selects no element"):
        policy_loss(t64([[0.0]]), [[0.0]], [[1.0]], np.zeros((1, 1)))
    with pytest.raises(ValueError, match="advantages has shape"):
        policy_loss(t64([[0.0, 1.0]]), [[0.0, 1.0]], [[1.0]], np.ones((1, 2)))
    with pytest.raises(ValueError, match="ref_logprobs has shape"):
        kl_to_reference(t64(np.zeros((1, 2, 3))), np.zeros((1, 2, 4)), np.ones((1, 2)))
    with pytest.raises(ValueError, match="mask has shape"):
        kl_to_reference(t64(np.zeros((1, 2, 3))), np.zeros((1, 2, 3)), np.ones((2, 1)))


# ---- gradient checks on fresh random inputs ---------------------------------------------------

def _away_from(x, points, gap):
    """Push entries of x that lie within gap of any kink point out to point + gap (keeps FD valid)."""
    x = x.copy()
    for p in points:
        near = np.abs(x - p) < gap
        x[near] = p + np.where(x[near] >= p, gap, -gap)
    return x


def _ppo_inputs(rng, B=3, T=7, eps=0.2):
    old = rng.normal(-2.0, 0.5, (B, T))                                   # (B, T)
    log_ratio = _away_from(rng.normal(0, 0.3, (B, T)), [math.log(1 - eps), math.log(1 + eps)], 0.01)
    adv = _away_from(rng.normal(0, 1, (B, T)), [0.0], 0.01)
    mask = (rng.random((B, T)) < 0.8).astype(np.float64)
    mask[0, 0] = 1.0
    return old, old + log_ratio, adv, mask


def test_policy_loss_gradcheck(rng):
    old, new, adv, mask = _ppo_inputs(rng)
    ratio = np.exp(new - old)
    assert ((ratio < 0.8) | (ratio > 1.2)).any() and ((ratio > 0.8) & (ratio < 1.2)).any(), "both branches"
    res = gradcheck(lambda lp: policy_loss(lp, old, adv, mask, 0.2), [t64(new)])
    assert res.ok, res


def test_value_loss_gradcheck(rng):
    B, T = 4, 5
    old = rng.normal(0, 1, (B, T))
    v = old + _away_from(rng.normal(0, 0.4, (B, T)), [-0.2, 0.2], 0.01)
    returns = rng.normal(0, 1, (B, T))
    mask = np.ones((B, T))
    mask[1, 2] = 0
    res = gradcheck(lambda x: value_loss(x, old, returns, mask, 0.2), [t64(v)])
    assert res.ok, res


def test_whiten_gradcheck(rng):
    x = rng.normal(0.3, 2.0, (3, 6))
    mask = (rng.random((3, 6)) < 0.7).astype(np.float64)
    mask[0, :2] = 1.0
    res = gradcheck(lambda a: whiten(a, mask), [t64(x)])
    assert res.ok, res


def test_entropy_gradcheck(rng):
    logits = rng.normal(0, 2, (2, 5, 7))
    mask = np.ones((2, 5))
    mask[1, 3:] = 0
    res = gradcheck(lambda z: entropy(z, mask), [t64(logits)])
    assert res.ok, res


def test_bradley_terry_gradcheck(rng):
    res = gradcheck(bradley_terry_loss, [t64(rng.normal(0, 2, 9)), t64(rng.normal(0, 2, 9))])
    assert res.ok, res


def test_gradcheck_control_catches_a_policy_loss_without_clipping(rng):
    """Control: a backward that forgets the clipping (always -A r) must fail the same check."""

    class NoClipBackward(PolicyLoss):
        @staticmethod
        def backward(ctx, dout):
            return ctx.ratio * (-ctx.advantages * dout * ctx.mask / ctx.n)

    old, new, adv, mask = _ppo_inputs(rng)
    # make sure some token is on the clipped branch (r > 1 + eps with A > 0)
    new[0, 0], adv[0, 0], mask[0, 0] = old[0, 0] + 0.5, 1.0, 1.0
    fn = (lambda lp: NoClipBackward.apply(lp, old_logprobs=old, advantages=adv, mask=mask, clip_eps=0.2))
    assert not gradcheck(fn, [t64(new)]).ok


def test_gradcheck_control_catches_a_value_loss_without_clipping(rng):
    class NoClipBackward(ValueLoss):
        @staticmethod
        def backward(ctx, dout):
            return dout * ctx.mask / ctx.n * ctx.err

    old = np.zeros((1, 3))
    v = np.array([[1.0, 0.1, -1.0]])
    returns = np.array([[3.0, 0.0, -3.0]])  # tokens 0 and 2: the clipped square wins
    fn = (lambda x: NoClipBackward.apply(x, old_values=old, returns=returns, mask=np.ones((1, 3)), clip_range=0.2))
    assert not gradcheck(fn, [t64(v)]).ok


def _log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_kl_to_reference_value_and_gradcheck(rng):
    logits, ref = rng.normal(0, 2, (2, 5, 7)), rng.normal(0, 2, (2, 5, 7))
    logq = _log_softmax(ref)
    mask = np.ones((2, 5))
    mask[0, 4:] = 0
    # value: a direct sum over the vocabulary
    logp = _log_softmax(logits)
    expected = ((np.exp(logp) * (logp - logq)).sum(-1) * mask).sum() / mask.sum()
    assert abs(kl_to_reference(t64(logits), logq, mask).item() - expected) < 1e-12
    assert kl_to_reference(t64(ref), logq, mask).item() == pytest.approx(0.0, abs=1e-12)  # KL(q || q) = 0
    res = gradcheck(lambda z: kl_to_reference(z, logq, mask), [t64(logits)])
    assert res.ok, res


def test_gradcheck_control_catches_a_kl_backward_without_the_centring(rng):
    """Control: dropping "- KL_t" (the softmax Jacobian's second term) must fail the same check."""

    class Uncentred(KLToReference):
        @staticmethod
        def backward(ctx, dout):
            return ctx.p * ctx.log_ratio * (dout * ctx.m / ctx.n)[..., None]

    logits, logq = rng.normal(0, 2, (2, 4, 6)), _log_softmax(rng.normal(0, 2, (2, 4, 6)))
    fn = (lambda z: Uncentred.apply(z, ref_logprobs=logq, mask=np.ones((2, 4))))
    assert not gradcheck(fn, [t64(logits)]).ok


def test_whole_ppo_objective_gradcheck(rng):
    """The PPO loss through a float64 policy (GPT + value head), w.r.t. a sample of its parameters."""
    from tinygrad_gpt.model import GPT, GPTConfig, context_windows
    from tinygrad_gpt.rlhf.policy import PolicyWithValue, score_windows, token_logprobs

    cfg = GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8)
    policy = PolicyWithValue(GPT(cfg, seed=int(rng.integers(1000)), dtype=np.float64))
    policy.v_head.weight.data[...] = rng.normal(0, 0.3, policy.v_head.weight.shape)
    B, P, R = 3, 4, 6
    seq = rng.integers(0, 11, (B, P + R))
    windows = context_windows(P, R, cfg.block_size, stride=3)            # two windows: exercises the chunks
    assert len(windows) == 2
    old = rng.normal(-2.4, 0.1, (B, R))
    adv = _away_from(rng.normal(0, 1, (B, R)), [0.0], 0.01)
    old_v, returns = rng.normal(0, 1, (B, R)), rng.normal(0, 1, (B, R))
    mask = np.ones((B, R))
    ref_logq = _log_softmax(rng.normal(0, 1, (B, R, 11)))

    def objective(*params):
        logits, values = score_windows(policy, seq, windows, temperature=0.7)
        logp = token_logprobs(logits, seq[:, P:])
        return (policy_loss(logp, old, adv, mask, 0.2) + value_loss(values, old_v, returns, mask, 10.0) * 0.5
                - entropy(logits, mask) * 0.01 + kl_to_reference(logits, ref_logq, mask) * 0.1)

    params = [policy.gpt.h[0].attn.c_attn.weight, policy.gpt.wte.weight, policy.v_head.weight]
    # tol 1e-5: through a whole model the float64 rounding of ~100 ops reaches ~1e-6 on some elements
    res = gradcheck(objective, params, max_checks=12, tol=1e-5, seed=int(rng.integers(1000)))
    assert res.ok, res
