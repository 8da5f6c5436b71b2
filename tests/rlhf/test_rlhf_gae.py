"""GAE, shaped rewards, KL estimators and controllers against hand-computed examples.

3-step GAE, gamma = 0.9, lambda = 0.8, r = [0, 0, 1], V = [0.5, 0.6, 0.7], V_3 = 0:
    delta_2 = 1 + 0.9 * 0   - 0.7 = 0.3     A_2 = 0.3
    delta_1 = 0 + 0.9 * 0.7 - 0.6 = 0.03    A_1 = 0.03 + 0.72 * 0.3   = 0.246
    delta_0 = 0 + 0.9 * 0.6 - 0.5 = 0.04    A_0 = 0.04 + 0.72 * 0.246 = 0.21712
    R = A + V = [0.71712, 0.846, 1.0]
"""
import numpy as np
import pytest

from tinygrad_gpt.rlhf.advantage import AdaptiveKLController, FixedKLController, gae, kl_per_token, shaped_rewards


def test_gae_hand_example():
    adv, ret = gae(np.array([[0.0, 0.0, 1.0]]), np.array([[0.5, 0.6, 0.7]]), gamma=0.9, lam=0.8)
    np.testing.assert_allclose(adv, [[0.21712, 0.246, 0.3]], atol=1e-12)
    np.testing.assert_allclose(ret, [[0.71712, 0.846, 1.0]], atol=1e-12)


def test_gae_with_unit_gamma_lambda_and_zero_values_is_reward_to_go(rng):
    r = rng.normal(size=(4, 9))
    adv, ret = gae(r, np.zeros_like(r), gamma=1.0, lam=1.0)
    to_go = np.cumsum(r[:, ::-1], axis=1)[:, ::-1]
    np.testing.assert_allclose(adv, to_go, atol=1e-12)
    np.testing.assert_allclose(ret, to_go, atol=1e-12)
    # control: lambda < 1 is not the reward-to-go
    assert not np.allclose(gae(r, np.zeros_like(r), 1.0, 0.9)[0], to_go)


def test_gae_lambda_zero_is_one_step_td(rng):
    r, v = rng.normal(size=(2, 5)), rng.normal(size=(2, 5))
    adv, _ = gae(r, v, gamma=0.9, lam=0.0)
    next_v = np.concatenate([v[:, 1:], np.zeros((2, 1))], axis=1)
    np.testing.assert_allclose(adv, r + 0.9 * next_v - v, atol=1e-12)


def test_shaped_rewards_put_the_score_on_the_last_token():
    kl = np.array([[0.1, 0.2, 0.3], [0.0, 0.0, 0.5]])
    r = shaped_rewards(np.array([1.0, -2.0]), kl, beta=0.5)
    np.testing.assert_allclose(r, [[-0.05, -0.1, -0.15 + 1.0], [0.0, 0.0, -0.25 - 2.0]])


def test_kl_estimators():
    """p = [0.5, 0.5], q = [0.25, 0.75]: exact KL = 0.5 log 2 + 0.5 log(2/3); sampled at token 0 = log 2."""
    logp = np.log(np.array([[[0.5, 0.5]]]))
    logq = np.log(np.array([[[0.25, 0.75]]]))
    assert kl_per_token(logp, logq)[0, 0] == pytest.approx(0.5 * np.log(2) + 0.5 * np.log(2 / 3))
    assert kl_per_token(logp, logq, np.array([[0]]), "sampled")[0, 0] == pytest.approx(np.log(2))
    assert kl_per_token(logp, logp)[0, 0] == 0.0
    with pytest.raises(ValueError, match="estimator"):
        kl_per_token(logp, logq, estimator="k9")


def test_kl_controllers():
    assert FixedKLController(0.1).update(100.0, 64) == 0.1
    ctl = AdaptiveKLController(0.1, target=4.0, horizon=10000)
    # KL 6 is 50% above target: error clipped to 0.2; beta *= 1 + 0.2 * 64 / 10000
    assert ctl.update(6.0, 64) == pytest.approx(0.1 * (1 + 0.2 * 64 / 10000))
    before = ctl.value
    assert ctl.update(3.0, 64) == pytest.approx(before * (1 - 0.2 * 64 / 10000))  # error -0.25 clipped to -0.2
