"""PPO end to end on tiny models: windows, the first step's invariants, a smoke run that must learn.

The smoke run's scorer is the fraction of vowels in the response (a character-level reward a
2-layer 32-wide model can learn in 20 steps from random initialisation); VADER needs a model that
already writes words, which is what examples/rlhf_sentiment.py and benchmarks/rlhf.py use.
"""
import numpy as np
import pytest

from rlhf_task import TOK, prompt_tokens, tiny_policy, vowel_fraction
from tinygrad_gpt.model import context_windows
from tinygrad_gpt.rlhf import (PPOConfig, PPOTrainer, VaderScorer, drop_partial_word, rollout, sample_responses,
                               shaped_score, signed_power)


def test_response_windows():
    # fits: one window holding everything
    assert context_windows(16, 16, 32) == [(0, 16, 32)]
    # the benchmark: 64 + 64 with block 64 -> two chunks of 32, each window 64 long
    assert context_windows(64, 64, 64) == [(31, 64, 96), (63, 96, 128)]
    for start, a, b in context_windows(64, 64, 64) + context_windows(5, 30, 8, stride=3):
        assert b - 1 - start <= 64 and start < a
    with pytest.raises(ValueError, match="stride"):
        context_windows(64, 64, 64, stride=65)


def test_sampling_uses_the_context_it_is_scored_with():
    """Log-probs recomputed by the windowed forward equal those the KV-cache sampler drew from."""
    policy, ref = tiny_policy(block_size=16)
    rng = np.random.default_rng(0)
    prompts = rng.integers(0, TOK.vocab_size, (3, 12))
    roll = rollout(policy, ref, prompts, 12, 0.8, np.random.default_rng(5), TOK.decode)
    # replay the sampler with the same generator, recording its log-probs via the model's cache path
    from tinygrad_gpt.tensor import no_grad
    gpt = policy.gpt
    seq = roll.sequences
    for start, a, b in context_windows(12, 12, 16):
        caches = gpt.new_caches(3)
        with no_grad():
            logits, _ = gpt(seq[:, start:a], caches=caches)
            steps = [logits.data[:, -1]]
            for t in range(a, b - 1):
                logits, _ = gpt(seq[:, t:t + 1], caches=caches)
                steps.append(logits.data[:, -1])
        z = np.stack(steps, axis=1).astype(np.float64) / 0.8             # (3, b - a, V)
        logp = z - np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True)) - z.max(-1, keepdims=True)
        picked = np.take_along_axis(logp, seq[:, a:b, None], -1)[..., 0]
        np.testing.assert_allclose(picked, roll.logprobs[:, a - 12:b - 12], atol=2e-5)


@pytest.mark.parametrize("prompt_len, response_len, stride", [(12, 12, None), (3, 30, 5), (20, 5, None)])
def test_rollouts_sample_through_generate(prompt_len, response_len, stride):
    """One sampling loop: sample_responses draws the tokens GPT.generate draws from the same
    generator, windows and temperature (block 16: a sequence past the block, a short prompt with a
    long response, a prompt longer than the block)."""
    policy, _ = tiny_policy(block_size=16)
    prompts = np.random.default_rng(0).integers(0, TOK.vocab_size, (3, prompt_len))
    ours = sample_responses(policy.gpt, prompts, response_len, 0.8, np.random.default_rng(5), stride)
    theirs = policy.gpt.generate(prompts, response_len, temperature=0.8, rng=np.random.default_rng(5), stride=stride)
    np.testing.assert_array_equal(ours, theirs[:, prompt_len:])


def test_first_step_ratio_is_one_and_kl_is_zero():
    policy, ref = tiny_policy()
    cfg = PPOConfig(batch_size=8, prompt_len=8, response_len=8, minibatch_size=4, ppo_epochs=1, norm_batches=1,
                    lr=1e-3, seed=3)
    trainer = PPOTrainer(policy, ref, TOK, prompt_tokens(), vowel_fraction, cfg, log=lambda *a: None)
    trainer.fit_normalizer()
    roll = trainer.make_rollout(next(trainer.prompts))
    assert np.all(roll.kl_exact == 0.0) and np.all(roll.ref_logprobs == roll.logprobs)
    assert np.all(roll.values == 0.0)  # the value head starts at zero
    metrics = trainer.step()
    assert metrics["first_ratio_dev"] == 0.0, "pi_theta must equal pi_old on the first minibatch"
    assert metrics["kl"] == 0.0
    # after an update the policy has moved: a second step sees a KL > 0
    assert trainer.step()["kl"] > 0.0


def test_kl_loss_term_is_reported_and_pulls_toward_the_reference():
    """kl_loss_coef adds mean exact KL(pi || pi_ref) to the loss: reported, and a large weight keeps
    the policy nearer the reference than the same run without it."""
    kls = {}
    for coef in (0.0, 50.0):
        policy, ref = tiny_policy()
        cfg = PPOConfig(batch_size=8, prompt_len=8, response_len=8, minibatch_size=4, ppo_epochs=2, norm_batches=1,
                        lr=3e-3, init_kl_coef=0.0, adaptive_kl=False, kl_loss_coef=coef, target_kl=None, seed=3)
        trainer = PPOTrainer(policy, ref, TOK, prompt_tokens(), vowel_fraction, cfg, log=lambda *a: None)
        metrics = [trainer.step() for _ in range(4)]
        assert np.isnan(metrics[0]["kl_loss"]) if coef == 0 else np.isfinite(metrics[0]["kl_loss"])
        kls[coef] = trainer.step()["kl"]                                  # exact KL of the 5th rollout
    assert kls[50.0] < 0.5 * kls[0.0], kls


@pytest.mark.parametrize("anneal", [False, True])
def test_lr_is_constant_or_annealed_linearly(anneal):
    policy, ref = tiny_policy()
    cfg = PPOConfig(steps=4, batch_size=8, prompt_len=8, response_len=8, minibatch_size=8, ppo_epochs=1,
                    norm_batches=1, lr=1e-3, anneal_lr=anneal, seed=3)
    trainer = PPOTrainer(policy, ref, TOK, prompt_tokens(), vowel_fraction, cfg, log=lambda *a: None)
    lrs = [trainer.step()["lr"] for _ in range(cfg.steps)]
    expected = [1e-3, 7.5e-4, 5e-4, 2.5e-4] if anneal else [1e-3] * 4
    np.testing.assert_allclose(lrs, expected, rtol=1e-12)


def test_ppo_smoke_run_raises_the_score():
    policy, ref = tiny_policy(seed=2)
    cfg = PPOConfig(steps=20, batch_size=32, prompt_len=8, response_len=12, minibatch_size=16, ppo_epochs=2,
                    lr=3e-3, init_kl_coef=0.02, norm_batches=1, seed=0, target_kl=None)
    trainer = PPOTrainer(policy, ref, TOK, prompt_tokens(), vowel_fraction, cfg, log=lambda *a: None)
    history = [trainer.step() for _ in range(cfg.steps)]
    assert all(np.isfinite(m["value_loss"]) for m in history)
    # evaluate both models on the same fixed prompts
    prompts = np.random.default_rng(9).integers(0, TOK.vocab_size, (128, 8))
    score = (lambda gpt: vowel_fraction([TOK.decode(r.tolist()) for r in
                                         sample_responses(gpt, prompts, 12, 1.0, np.random.default_rng(1))]).mean())
    before, after = score(ref), score(policy.gpt)
    assert after > before + 0.1, f"PPO did not raise the score: reference {before:.3f}, policy {after:.3f}"


def test_vader_scorer_drops_the_partial_word():
    assert drop_partial_word("I love thee swe") == "I love thee "
    assert drop_partial_word("I love thee!") == "I love thee!"
    assert drop_partial_word("sweet") == ""
    scorer = VaderScorer()
    # "goo" is cut off: not "good"; the complete "good" counts
    s = scorer(["the king is goo", "the king is good ", "the king is dead."])
    assert s[0] == 0.0 and s[1] > 0.3 and s[2] < -0.3


def test_ppo_config_errors_name_the_field():
    with pytest.raises(ValueError, match="minibatch_size"):
        PPOConfig(batch_size=10, minibatch_size=4)
    with pytest.raises(ValueError, match="kl_estimator"):
        PPOConfig(kl_estimator="k2")
    with pytest.raises(ValueError, match="score_power"):
        PPOConfig(score_power=0.0)
    with pytest.raises(ValueError, match="positive_bonus"):
        PPOConfig(positive_bonus=-1.0)


def test_signed_power_keeps_sign_and_order_and_lifts_mild_scores(rng):
    s = rng.uniform(-1, 1, 200)
    assert np.array_equal(signed_power(s, 1.0), s)
    t = signed_power(s, 0.5)
    np.testing.assert_allclose(np.abs(t) ** 2, np.abs(s), rtol=1e-12)
    assert np.array_equal(np.sign(t), np.sign(s))
    assert np.all(np.diff(t[np.argsort(s)]) >= 0)                 # monotone
    # concave above 0: neutral -> mildly positive gains more than positive -> more positive
    assert signed_power(0.1, 0.5) - signed_power(0.0, 0.5) > signed_power(0.6, 0.5) - signed_power(0.5, 0.5)


def test_shaped_score_adds_the_bonus_above_the_threshold_only(rng):
    s = rng.uniform(-1, 1, 200)
    assert np.array_equal(shaped_score(s), s)
    t = shaped_score(s, bonus=0.5, threshold=0.05)
    np.testing.assert_array_equal(t - s, np.where(s > 0.05, 0.5, 0.0))
    np.testing.assert_allclose(shaped_score(s, power=0.5, bonus=0.5), signed_power(s, 0.5) + 0.5 * (s > 0.05))


def test_trainer_optimises_the_powered_score():
    policy, ref = tiny_policy()
    cfg = PPOConfig(batch_size=8, prompt_len=8, response_len=8, minibatch_size=4, ppo_epochs=1, norm_batches=1,
                    score_power=0.5, seed=3)
    trainer = PPOTrainer(policy, ref, TOK, prompt_tokens(), vowel_fraction, cfg, log=lambda *a: None)
    roll = trainer.make_rollout(next(trainer.prompts))
    gold, raw = trainer.raw_rewards(roll)
    np.testing.assert_allclose(raw, np.sqrt(gold), rtol=1e-12)   # vowel fractions are >= 0
    assert not np.allclose(raw, gold)


def test_save_loads_with_load_model(tmp_path):
    from tinygrad_gpt.runs import load_model
    policy, ref = tiny_policy()
    cfg = PPOConfig(batch_size=4, prompt_len=8, response_len=8, minibatch_size=4, ppo_epochs=1, norm_batches=1)
    trainer = PPOTrainer(policy, ref, TOK, prompt_tokens(), vowel_fraction, cfg, log=lambda *a: None)
    trainer.step()
    trainer.save(tmp_path / "tuned")
    from tinygrad_gpt.checkpoint import load_tensors
    model, meta, optimizer_state = load_model(tmp_path / "tuned")
    for name, p in policy.gpt.named_parameters():
        np.testing.assert_array_equal(dict(model.named_parameters())[name].data, p.data)
    value_head = load_tensors(tmp_path / "tuned", "value_head")
    assert meta["ppo_steps"] == 1 and value_head["weight"].shape == (32, 1)
    assert optimizer_state is None and meta["kind"] == "rlhf-ppo"
