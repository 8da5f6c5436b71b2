"""GRPO, RLOO and DPO: hand-computed examples, float64 gradient checks with controls, smoke runs.

The hand-computed numbers are derived in each module's docstring (grpo.py, rloo.py, dpo.py):
    GRPO  group s = [4, 0, 2]: mean 2, unbiased std 2 -> A = [1, -1, 0]; Dr. GRPO A = [2, -2, 0]
    RLOO  R = [4, 0, 2, 6], k = 4: baselines [8/3, 4, 10/3, 2] -> A = [4/3, -4, -4/3, 4]
    DPO   policy = reference -> loss log 2 for every pair, whatever beta

Smoke runs: a 2-layer 32-wide GPT from random initialisation and the fraction of vowels of the
response as the score (the scorer tests/rlhf/test_rlhf_ppo.py uses), a fixed seed and a few steps; the
tuned policy must beat the reference on 128 fixed prompts.
"""
import json
import re
import math

import numpy as np
import pytest

from tinygrad_gpt.gradcheck import gradcheck
from tinygrad_gpt.rlhf.config import DPOConfig, GRPOConfig, PPOConfig, RLOOConfig
from tinygrad_gpt.rlhf.diagnostics import check_health, explained_variance, ratio_stats, zero_spread_fraction
from tinygrad_gpt.rlhf.dpo import DPOLoss, DPOTrainer, dpo_loss
from tinygrad_gpt.rlhf.grpo import GRPOLoss, GRPOTrainer, group_advantages, grpo_loss
from tinygrad_gpt.rlhf.rloo import (ReinforceLoss, RLOOTrainer, leave_one_out_baseline, reinforce_loss,
                                    rloo_advantages)
from tinygrad_gpt.rlhf.pairs import best_worst_pairs, pairs_from_responses
from tinygrad_gpt.tensor import Tensor
from rlhf_task import TOK, prompt_tokens, tiny_policy, vowel_fraction


def t64(x, grad=True):
    return Tensor(np.asarray(x, dtype=np.float64), requires_grad=grad)


def _away_from(x, points, gap):
    x = x.copy()
    for p in points:
        near = np.abs(x - p) < gap
        x[near] = p + np.where(x[near] >= p, gap, -gap)
    return x


# ---- GRPO --------------------------------------------------------------------------------------

def test_grpo_advantage_hand_computed_group():
    np.testing.assert_allclose(group_advantages([4.0, 0.0, 2.0], 3, "grpo", eps=0.0), [1, -1, 0], atol=1e-12)
    np.testing.assert_allclose(group_advantages([4.0, 0.0, 2.0], 3, "dr_grpo"), [2, -2, 0], atol=1e-12)
    # two groups are normalised separately; a flat group gets 0, not a division by zero
    adv = group_advantages([4.0, 0.0, 2.0, 5.0, 5.0, 5.0], 3)
    np.testing.assert_allclose(adv, [2 / (2 + 1e-4), -2 / (2 + 1e-4), 0, 0, 0, 0], atol=1e-12)  # std 2, eps 1e-4
    with pytest.raises(ValueError, match="groups of 4"):
        group_advantages([1.0, 2.0, 3.0], 4)


def test_grpo_loss_hand_example():
    """Module docstring: A = [1, -1, 0], r = [1.5, 0.9, 1.0], eps 0.2 -> L = -0.1, dL/dlogp = [0, 0.3, 0]."""
    old = np.log(np.array([[0.2], [0.5], [0.4]]))
    logp = t64(old + np.log([[1.5], [0.9], [1.0]]))
    loss = grpo_loss(logp, old, old, np.array([1.0, -1.0, 0.0]), np.ones((3, 1)), 0.2, 0.0)
    assert loss.item() == pytest.approx(-0.1, abs=1e-12)
    loss.backward()
    np.testing.assert_allclose(logp.grad, [[0.0], [0.3], [0.0]], atol=1e-12)
    # the k3 term: logq - logp = log 2 on every token adds beta (2 - log 2 - 1) per token, grad -beta / 3
    logp2 = t64(old)
    loss2 = grpo_loss(logp2, old, old + math.log(2.0), np.zeros(3), np.ones((3, 1)), 0.2, kl_coef=1.0)
    assert loss2.item() == pytest.approx(1 - math.log(2.0), abs=1e-12)
    loss2.backward()
    np.testing.assert_allclose(logp2.grad, np.full((3, 1), -1 / 3), atol=1e-12)


def _grpo_inputs(rng, B=4, T=5, eps=0.2):
    old = rng.normal(-2.0, 0.5, (B, T))
    log_ratio = _away_from(rng.normal(0, 0.3, (B, T)), [math.log(1 - eps), math.log(1 + eps)], 0.01)
    ref = old + rng.normal(0, 0.5, (B, T))
    adv = _away_from(rng.normal(0, 1, B), [0.0], 0.01)
    mask = (rng.random((B, T)) < 0.8).astype(np.float64)
    mask[:, 0] = 1.0
    return old, old + log_ratio, ref, adv, mask


@pytest.mark.parametrize("normaliser", ["grpo", "dr_grpo"])
def test_grpo_loss_gradcheck(rng, normaliser):
    old, new, ref, adv, mask = _grpo_inputs(rng)
    ratio = np.exp(new - old)
    assert ((ratio < 0.8) | (ratio > 1.2)).any(), "some token must be outside the clip range"
    res = gradcheck(lambda lp: grpo_loss(lp, old, ref, adv, mask, 0.2, 0.3, normaliser), [t64(new)])
    assert res.ok, res


def test_gradcheck_control_catches_grpo_without_the_k3_gradient(rng):
    """Control: a backward that forgets the KL term's gradient must fail the same check."""

    class NoKLBackward(GRPOLoss):
        @staticmethod
        def backward(ctx, dout):
            dl = dout * ctx.weight
            return ctx.ratio * np.where(ctx.use_unclipped, -ctx.adv * dl, 0)

    old, new, ref, adv, mask = _grpo_inputs(rng)
    fn = (lambda lp: NoKLBackward.apply(lp, old_logprobs=old, ref_logprobs=ref, advantages=adv, mask=mask,
                                        clip_eps=0.2, kl_coef=0.3, normaliser="grpo"))
    assert not gradcheck(fn, [t64(new)]).ok


# ---- RLOO --------------------------------------------------------------------------------------

def test_rloo_baseline_hand_computed_and_excludes_the_sample_itself(rng):
    rewards = np.array([4.0, 0.0, 2.0, 6.0])
    np.testing.assert_allclose(leave_one_out_baseline(rewards, 4), [8 / 3, 4, 10 / 3, 2], atol=1e-12)
    np.testing.assert_allclose(rloo_advantages(rewards, 4), [4 / 3, -4, -4 / 3, 4], atol=1e-12)
    # changing sample i's reward leaves its own baseline unchanged and moves every other one in its group
    r = rng.normal(0, 1, 12)
    for i in range(12):
        bumped = r.copy()
        bumped[i] += 10.0
        diff = leave_one_out_baseline(bumped, 4) - leave_one_out_baseline(r, 4)
        group = np.arange(12) // 4 == i // 4
        assert abs(diff[i]) < 1e-12                                       # 0 up to rounding of the sum
        np.testing.assert_allclose(diff[group & (np.arange(12) != i)], 10.0 / 3, atol=1e-12)
        assert np.all(diff[~group] == 0.0)


def test_reinforce_loss_hand_example():
    """rloo.py docstring: A = [4/3, -4, -4/3, 4], logp = [-1, -2, -1, -0.5] -> L = -1.5, dL/dlogp = -A / 4."""
    adv = np.array([4 / 3, -4, -4 / 3, 4])
    logp = t64([[-1.0], [-2.0], [-1.0], [-0.5]])
    loss = reinforce_loss(logp, adv, np.ones((4, 1)))
    assert loss.item() == pytest.approx(-1.5, abs=1e-12)
    loss.backward()
    np.testing.assert_allclose(logp.grad[:, 0], -adv / 4, atol=1e-12)


def test_reinforce_loss_gradcheck_and_control(rng):
    lp = rng.normal(-2, 0.5, (3, 6))
    adv = rng.normal(0, 1, 3)
    mask = (rng.random((3, 6)) < 0.7).astype(np.float64)
    res = gradcheck(lambda x: reinforce_loss(x, adv, mask), [t64(lp)])
    assert res.ok, res

    class Unmasked(ReinforceLoss):          # control: forgets that masked tokens take no gradient
        @staticmethod
        def backward(ctx, dout):
            return np.broadcast_to((-ctx.adv * dout / ctx.B)[:, None], ctx.m.shape).copy()

    mask[0, 0] = 0.0
    assert not gradcheck(lambda x: Unmasked.apply(x, advantages=adv, mask=mask), [t64(lp)]).ok


# ---- DPO ---------------------------------------------------------------------------------------

def test_dpo_loss_is_log2_when_policy_equals_reference(rng):
    lc, lr = rng.normal(-30, 5, 7), rng.normal(-30, 5, 7)
    for beta in (0.1, 1.0, 5.0):
        assert dpo_loss(t64(lc), t64(lr), lc, lr, beta).item() == pytest.approx(math.log(2), abs=1e-12)


def test_dpo_loss_hand_example():
    """dpo.py docstring: beta 0.5; u = [0, log 3] -> L = (log 2 + log 4/3) / 2, grads [-1/8, -1/16]."""
    pc, pr = t64([-3.0, 2 * math.log(3) + 1.0]), t64([-3.0, 0.0])
    loss = dpo_loss(pc, pr, np.array([-5.0, 1.0]), np.array([-5.0, 0.0]), beta=0.5)
    assert loss.item() == pytest.approx((math.log(2) + math.log(4 / 3)) / 2, abs=1e-12)
    loss.backward()
    np.testing.assert_allclose(pc.grad, [-1 / 8, -1 / 16], atol=1e-12)
    np.testing.assert_allclose(pr.grad, [1 / 8, 1 / 16], atol=1e-12)


def test_dpo_loss_gradcheck_and_control(rng):
    pc, pr, rc, rr = (rng.normal(-20, 3, 9) for _ in range(4))
    res = gradcheck(lambda a, b: dpo_loss(a, b, rc, rr, 0.3), [t64(pc), t64(pr)])
    assert res.ok, res

    class NoBeta(DPOLoss):                  # control: forgets du/ddelta = beta
        @staticmethod
        def backward(ctx, dout):
            du = -dout / ctx.n / (1 + np.exp(ctx.u))
            return du, -du

    fn = (lambda a, b: NoBeta.apply(a, b, ref_chosen=rc, ref_rejected=rr, beta=0.3))
    assert not gradcheck(fn, [t64(pc), t64(pr)]).ok


def test_dpo_best_worst_pairs_by_hand():
    """Groups of 3 rows: the best-scored row against the worst, a group closer than min_margin dropped."""
    seqs = np.arange(9)[:, None] * np.ones((1, 4), int)                  # row i is [i, i, i, i]
    scores = np.array([0.2, 0.9, -0.5,    0.30, 0.31, 0.30,    0.0, -0.1, 0.7])
    pairs = best_worst_pairs(seqs, scores, 3, min_margin=0.05)
    assert pairs.chosen[:, 0].tolist() == [1, 8] and pairs.rejected[:, 0].tolist() == [2, 7]
    np.testing.assert_allclose(pairs.margin, [1.4, 0.8])
    # every score equal: still two different rows (first best, last worst), kept only at min_margin 0
    flat = best_worst_pairs(seqs[:3], np.zeros(3), 3, min_margin=0.0)
    assert (flat.chosen[:, 0].tolist(), flat.rejected[:, 0].tolist()) == ([0], [2])
    assert len(best_worst_pairs(seqs[:3], np.zeros(3), 3, min_margin=1e-9)) == 0


def test_dpo_best_worst_of_two_is_the_reward_models_pairing(rng):
    a, b = rng.integers(0, 50, (20, 6)), rng.integers(0, 50, (20, 6))
    sa, sb = rng.normal(0, 0.3, 20), rng.normal(0, 0.3, 20)
    sb[:5] = sa[:5] + rng.uniform(-0.04, 0.04, 5)                         # five near-ties to drop
    sb[5:10] = sa[5:10] + rng.choice([-1, 1], 5) * rng.uniform(0.06, 0.5, 5)  # five clear pairs to keep
    seqs = np.stack([a, b], axis=1).reshape(40, 6)                        # rows 2i, 2i + 1: prompt i's two
    scores = np.stack([sa, sb], axis=1).reshape(40)
    ours, theirs = best_worst_pairs(seqs, scores, 2, 0.05), pairs_from_responses(a, b, sa, sb, 0.05)
    assert 0 < len(ours) < 20
    for field in ("chosen", "rejected", "margin"):
        np.testing.assert_array_equal(getattr(ours, field), getattr(theirs, field))


# ---- diagnostics and configs -------------------------------------------------------------------

def test_diagnostics_values_and_warnings():
    s = ratio_stats(np.array([1.0, 1.0, 2.0, 0.5]), clip_eps=0.2)
    assert s["clipfrac"] == 0.5 and s["ratio_mean"] == pytest.approx(1.125)
    assert s["approx_kl_k1"] == pytest.approx(-(math.log(2) + math.log(0.5)) / 4)          # = 0
    assert s["approx_kl"] == pytest.approx(((1 - math.log(2)) + (-0.5 - math.log(0.5))) / 4)
    assert explained_variance([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]) == 1.0
    assert explained_variance([0.0, 0.0, 0.0], [1.0, 2.0, 3.0]) == 0.0
    assert zero_spread_fraction([1, 1, 2, 3, 0, 0], 2) == pytest.approx(2 / 3)
    healthy = {"step": 3, "first_ratio_dev": 0.0, "clipfrac": 0.1, "kl": 0.05, "kl_sampled": 0.04,
               "approx_kl": 0.01, "entropy": 1.8, "zero_spread_frac": 0.5}
    assert check_health(healthy) == []
    sick = dict(healthy, first_ratio_dev=0.5, clipfrac=0.6, kl=2.0, kl_sampled=-0.2, entropy=0.01,
                zero_spread_frac=1.0)
    text = "\n".join(check_health(sick))
    for phrase in ("first minibatch", "clip fraction", "exploding", "negative", "collapsing", "zero score spread"):
        assert phrase in text, phrase


def test_configs_name_the_bad_field():
    with pytest.raises(ValueError, match="group_size"):
        GRPOConfig(batch_size=10, group_size=4)
    with pytest.raises(ValueError, match="advantage"):
        GRPOConfig(advantage="ppo")
    with pytest.raises(ValueError, match="kl_estimator"):
        GRPOConfig(kl_estimator="k2")
    with pytest.raises(ValueError, match="group_size"):
        RLOOConfig(group_size=1)
    with pytest.raises(ValueError, match="update"):
        RLOOConfig(update="ppo")
    with pytest.raises(ValueError, match="beta"):
        DPOConfig(beta=0.0)
    with pytest.raises(ValueError, match="DPOConfig: batch_size 10 is not a multiple of group_size 4"):
        DPOConfig(batch_size=10, group_size=4)


# ---- smoke runs --------------------------------------------------------------------------------

def _fixed_score(gpt):
    prompts = np.random.default_rng(9).integers(0, TOK.vocab_size, (128, 8))
    from tinygrad_gpt.rlhf import sample_responses
    responses = sample_responses(gpt, prompts, 12, 1.0, np.random.default_rng(1))
    return float(vowel_fraction([TOK.decode(r.tolist()) for r in responses]).mean())


def _run(trainer_cls, cfg):
    policy, ref = tiny_policy(seed=2)
    trainer = trainer_cls(policy, ref, TOK, prompt_tokens(), vowel_fraction, cfg, log=lambda *a: None)
    history = [trainer.step() for _ in range(cfg.steps)]
    return policy, ref, history


COMMON = dict(batch_size=32, prompt_len=8, response_len=12, norm_batches=1, seed=0, lr=3e-3)


@pytest.mark.parametrize("trainer_cls, cfg", [
    (GRPOTrainer, GRPOConfig(steps=12, group_size=8, epochs=2, minibatch_size=16, init_kl_coef=0.02,
                             adaptive_kl=False, **COMMON)),
    (GRPOTrainer, GRPOConfig(steps=12, group_size=8, epochs=2, minibatch_size=16, init_kl_coef=0.02,
                             adaptive_kl=False, advantage="dr_grpo", kl_estimator="exact", **COMMON)),
    (RLOOTrainer, RLOOConfig(steps=12, group_size=4, minibatch_size=16, init_kl_coef=0.02, adaptive_kl=False,
                             **COMMON)),
    (RLOOTrainer, RLOOConfig(steps=12, group_size=4, epochs=2, minibatch_size=16, init_kl_coef=0.02,
                             adaptive_kl=False, update="clipped", **COMMON)),
    (DPOTrainer, DPOConfig(steps=12, epochs=2, minibatch_size=8, beta=0.1, min_margin=0.01, online=False,
                           group_size=2, **COMMON)),
    (DPOTrainer, DPOConfig(steps=12, epochs=2, minibatch_size=8, beta=0.1, min_margin=0.01, online=True,
                           group_size=2, **COMMON)),
    (DPOTrainer, DPOConfig(steps=12, epochs=2, minibatch_size=4, beta=0.1, min_margin=0.01, online=True,
                           group_size=4, **COMMON)),
], ids=["grpo", "dr_grpo-exact-kl", "rloo-reinforce", "rloo-clipped", "dpo-offline", "dpo-online",
        "dpo-online-best-of-4"])
def test_smoke_run_raises_the_score(trainer_cls, cfg):
    policy, ref, history = _run(trainer_cls, cfg)
    assert history[0]["first_ratio_dev"] < 1e-5, "pi_theta must equal pi_old on the first minibatch"
    assert history[-1]["completions"] == cfg.steps * cfg.batch_size
    assert all(np.isfinite(m["loss"]) for m in history)
    before, after = _fixed_score(ref), _fixed_score(policy.gpt)
    print(f"{trainer_cls.algo}: reference {before:.3f}, policy {after:.3f}")
    assert after > before + 0.2, f"{trainer_cls.algo} did not raise the score: reference {before:.3f}, " \
                                  f"policy {after:.3f}"


# ---- the example and the benchmark with --algo ---------------------------------------------------

def _algo_flags(tmp_path, data_path, algo, out):
    flags = ["--algo", algo, "--checkpoint", str(tmp_path / "ckpt"), "--data", str(data_path), "--out", str(out),
             "--steps", "2", "--batch-size", "8", "--minibatch-size", "4", "--prompt-len", "12",
             "--response-len", "12", "--norm-batches", "1", "--no-progress"]
    flags += ["--ppo-epochs", "1"] if algo == "ppo" else ["--epochs", "1"]
    return flags + (["--group-size", "4"] if algo in ("grpo", "rloo") else [])


@pytest.mark.parametrize("algo", ["grpo", "rloo", "dpo"])
def test_example_runs_each_algo(tmp_path, algo):
    from conftest import require_shakespeare
    from rlhf_task import run_script, tiny_checkpoint as _tiny_checkpoint
    data_path = require_shakespeare()
    from tinygrad_gpt.runs import load_model

    cfg = _tiny_checkpoint(tmp_path, data_path)
    out = tmp_path / "run"
    r = run_script("examples/rlhf_sentiment.py", *_algo_flags(tmp_path, data_path, algo, out))
    assert r.returncode == 0, r.stderr[-3000:]
    printed = r.stdout
    assert f"before {algo.upper()}" in printed and f"after {algo.upper()}" in printed
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2] and all(r["algo"] == algo for r in records)
    assert records[-1]["completions"] == 16
    for key in ("ratio_mean", "approx_kl", "approx_kl_k1", "kl", "entropy", "warnings"):
        assert key in records[-1], key
    model, meta, optimizer_state = load_model(out)
    assert meta["rlhf_algo"] == algo and model.config == cfg
    assert meta["kind"] == f"rlhf-{algo}" and optimizer_state is None
    from tinygrad_gpt import checkpoint
    with pytest.raises(checkpoint.CheckpointError):  # only PPO saves a value head beside the model
        checkpoint.load_tensors(out, "value_head")
    pytest.importorskip("matplotlib")
    assert (out / "rlhf.png").stat().st_size > 0


def test_example_bad_algo_field_names_it(tmp_path):
    from conftest import require_shakespeare
    from rlhf_task import run_script, tiny_checkpoint as _tiny_checkpoint
    data_path = require_shakespeare()
    _tiny_checkpoint(tmp_path, data_path)
    r = run_script("examples/rlhf_sentiment.py",
                   *_algo_flags(tmp_path, data_path, "grpo", tmp_path / "run")[:-2], "--group-size", "3")
    assert r.returncode == 2 and "error: " in r.stderr and "group_size" in r.stderr, r.stderr[-3000:]


def test_benchmark_fluency_gap_has_one_sign():
    from tinygrad_gpt.rlhf.evaluate import fluency_cell
    assert fluency_cell(1.8638, 1.8401) == "1.8401 (-0.0237)"
    assert fluency_cell(1.8401, 1.8638) == "1.8638 (+0.0237)"


def test_benchmark_writes_the_same_results_shape_for_every_algo(tmp_path):
    from conftest import require_shakespeare
    from rlhf_task import run_script, tiny_checkpoint as _tiny_checkpoint
    data_path = require_shakespeare()

    _tiny_checkpoint(tmp_path, data_path)
    keys, printed = {}, ""
    for algo in ("ppo", "grpo"):
        out = tmp_path / f"bench-{algo}"
        r = run_script("benchmarks/rlhf.py", *_algo_flags(tmp_path, data_path, algo, out), "--eval-prompts", "4",
                       "--eval-samples", "1")
        assert r.returncode in (0, 1), r.stderr[-3000:]   # 1: a target not met (an untrained model meets none)
        printed += r.stdout
        results = json.loads((out / "results.json").read_text())
        assert results["algo"] == algo and results["completions"] == 16
        keys[algo] = set(results)
    assert keys["ppo"] == keys["grpo"]
    # the fluency gap prints with one sign, whichever it is ("(-0.0237)", never "(+-0.0237)")
    gaps = re.findall(r"\| [0-9.]+ \(([^)]*)\) \| <= \+0\.15 \|", printed)
    assert len(gaps) == 2 and all(re.fullmatch(r"[+-]\d+\.\d{4}", g) for g in gaps), gaps
    # the summary reads both runs back into one table, one row per method
    r = run_script("benchmarks/rlhf_summary.py", tmp_path / "bench-ppo", tmp_path / "bench-grpo")
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [line for line in r.stdout.splitlines() if line.startswith("| ppo") or line.startswith("| grpo")]
    assert len(rows) == 2 and all("| 16 |" in row for row in rows), rows


@pytest.mark.parametrize("cls", ["GRPOConfig", "RLOOConfig"])
def test_grouped_configs_refuse_a_batch_of_partial_groups(cls):
    from tinygrad_gpt.rlhf import config
    with pytest.raises(ValueError, match=f"{cls}: batch_size 6 is not a multiple of group_size 4"):
        getattr(config, cls)(batch_size=6, group_size=4)
    assert getattr(config, cls)(batch_size=8, group_size=4).batch_size == 8


def test_summary_time_to_target_and_recipes_by_hand():
    from tinygrad_gpt.rlhf.evaluate import recipe_of, time_to_target
    # scores 0, 0.1, ..., 0.9 then 1.0 ...: the 3-step mean first reaches 0.5 at step 6 (0.4 + 0.5 + 0.6)
    records = [{"score": i / 10, "step_s": 2.0, "completions": 64 * (i + 1)} for i in range(12)]
    assert time_to_target(records, 0.5, window=3) == (64 * 7, 14.0)
    assert time_to_target(records, 2.0, window=3) == (None, None)
    offline = [dict(r, score_of="reference") for r in records]
    assert time_to_target(offline, 0.5, window=3) == (None, None)
    from dataclasses import asdict
    cfg = json.loads(json.dumps(asdict(DPOConfig())))
    assert recipe_of("dpo", dict(cfg, seed=3)) == "dpo"
    assert recipe_of("dpo", dict(cfg, beta=cfg["beta"] * 2, seed=1)) == f"dpo beta={cfg['beta'] * 2}"


# ---- non-finite values and signals: the same rule for every method -----------------------------

SMALL = dict(batch_size=8, prompt_len=8, response_len=8, norm_batches=1, seed=0, lr=3e-3)
EVERY_METHOD = [
    ("ppo", lambda: PPOConfig(minibatch_size=4, ppo_epochs=1, **SMALL)),
    ("grpo", lambda: GRPOConfig(group_size=4, epochs=1, minibatch_size=4, **SMALL)),
    ("rloo", lambda: RLOOConfig(group_size=4, minibatch_size=4, **SMALL)),
    ("dpo", lambda: DPOConfig(group_size=2, epochs=1, minibatch_size=2, min_margin=0.0, **SMALL)),
]


def _trainer(algo, make_cfg):
    from tinygrad_gpt.rlhf import TRAINERS
    policy, ref = tiny_policy(seed=2)
    return TRAINERS[algo](policy, ref, TOK, prompt_tokens(), vowel_fraction, make_cfg(), log=lambda *a: None)


def _params(trainer):
    return [p.data.copy() for p in trainer.policy.parameters()]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the overflow and NaN it provokes on purpose
@pytest.mark.parametrize("algo, make_cfg", EVERY_METHOD, ids=[a for a, _ in EVERY_METHOD])
def test_a_non_finite_step_is_not_kept_and_the_last_finite_policy_is_saved(algo, make_cfg):
    """Step 1 at lr 3e-3 is kept; then lr 1e30: the first update of step 2 makes the weights ~1e30
    (finite), after which a loss, or the probe batch's logits, overflow. The step must raise
    NonFiniteLoss naming step 2, and the saved policy must be the one after step 1, bit for bit."""
    from tinygrad_gpt.train import NonFiniteLoss
    trainer = _trainer(algo, make_cfg)
    saved, seen = [], []
    after_step_1 = []

    def on_step(m):
        seen.append(m["step"])
        if m["step"] == 1:
            after_step_1.extend(_params(trainer))
            trainer.opt.set_lr(1e30)

    with pytest.raises(NonFiniteLoss, match=r"^step 2: (the loss of update \d+ is (nan|inf)|after its updates)"):
        trainer.run(5, on_step=on_step, save=lambda: saved.append(_params(trainer)))
    assert seen == [1] and trainer.step_count == 1 and trainer.kept.step == 1
    assert len(saved) == 1
    for got, want in zip(saved[0], after_step_1):
        np.testing.assert_array_equal(got, want)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the overflow and NaN it provokes on purpose
def test_a_non_finite_first_step_saves_nothing():
    """lr 1e30 from the start: no step is ever kept, so save() is never called (the policy on disk, if
    any, is not replaced by a broken one) and the policy in memory is the starting one again."""
    from tinygrad_gpt.train import NonFiniteLoss
    trainer = _trainer("ppo", lambda: PPOConfig(minibatch_size=4, ppo_epochs=2, **dict(SMALL, lr=1e30)))
    start = _params(trainer)
    saved = []
    with pytest.raises(NonFiniteLoss, match=r"^step 1: "):
        trainer.run(3, save=lambda: saved.append(1))
    assert saved == [] and trainer.step_count == 0
    for got, want in zip(_params(trainer), start):
        np.testing.assert_array_equal(got, want)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the overflow and NaN it provokes on purpose
def test_a_non_finite_gradient_is_refused_before_the_update():
    """d sqrt(x)/dx at x = 0 is infinite: the loss sqrt(0 * w) is 0, finite, and its gradient is NaN
    (0 * inf). No parameter may change, and the error names the gradient."""
    from tinygrad_gpt.train import NonFiniteLoss
    trainer = _trainer("grpo", EVERY_METHOD[1][1])
    before = _params(trainer)
    loss = (trainer.policy.gpt.wte.weight * 0.0).sum().sqrt()
    assert loss.item() == 0.0
    with pytest.raises(NonFiniteLoss, match="step 1: the gradient of update 1 is non-finite"):
        trainer.optimizer_step(loss)
    for got, want in zip(_params(trainer), before):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("algo, make_cfg", EVERY_METHOD, ids=[a for a, _ in EVERY_METHOD])
def test_a_signal_in_a_step_drops_it_and_saves_the_last_kept_step(algo, make_cfg, monkeypatch):
    """A real SIGTERM arrives right after the first AdamW update of step 3 (the policy has moved):
    the step is dropped, the policy goes back to the one after step 2 and is saved once, "terminated"."""
    import signal
    from tinygrad_gpt import optim
    trainer = _trainer(algo, make_cfg)
    kept, saved = {}, []
    original = optim.AdamW.step

    def step(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        if trainer.step_count == 2:   # an update of step 3
            signal.raise_signal(signal.SIGTERM)
        return result
    monkeypatch.setattr(optim.AdamW, "step", step)
    on_step = (lambda m: kept.__setitem__(m["step"], _params(trainer)))
    assert trainer.run(10, on_step=on_step, save=lambda: saved.append(_params(trainer))) == "terminated"
    assert sorted(kept) == [1, 2] and trainer.step_count == 2 and len(saved) == 1
    for got, want in zip(saved[0], kept[2]):
        np.testing.assert_array_equal(got, want)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL   # the handlers are given back


def test_a_signal_during_on_step_waits_for_it_then_stops():
    """SIGINT while the metrics line is written: the line is finished, then the run stops "interrupted"
    after that step (nothing dropped) and saves it."""
    import signal
    trainer = _trainer("rloo", EVERY_METHOD[2][1])
    lines, saved = [], []

    def on_step(m):
        if m["step"] == 2:
            signal.raise_signal(signal.SIGINT)
        lines.append(m["step"])
    assert trainer.run(5, on_step=on_step, save=lambda: saved.append(trainer.step_count)) == "interrupted"
    assert lines == [1, 2] and saved == [2]


# ---- the update loop every method shares -------------------------------------------------------

@pytest.mark.parametrize("algo, make_cfg", EVERY_METHOD, ids=[a for a, _ in EVERY_METHOD])
def test_score_pos_frac_counts_scores_above_the_configs_threshold(algo, make_cfg):
    """positive_threshold 0.3: score_pos_frac is the fraction of the step's gold scores (the last
    scorer call of the step) above 0.3, for every method (vowel fractions of random text, about
    5/33 on average, fall on both sides of 0.3 and mostly above VADER's 0.05)."""
    from dataclasses import replace
    from tinygrad_gpt.rlhf import TRAINERS
    returned = []

    def scorer(texts):
        returned.append(vowel_fraction(texts))
        return returned[-1]
    policy, ref = tiny_policy(seed=2)
    cfg = replace(make_cfg(), positive_threshold=0.3)
    trainer = TRAINERS[algo](policy, ref, TOK, prompt_tokens(), scorer, cfg, log=lambda *a: None)
    metrics = trainer.step()
    assert metrics["score_pos_frac"] == float((returned[-1] > 0.3).mean())
    assert metrics["score_pos_frac"] != float((returned[-1] > 0.05).mean())


def test_a_method_is_its_loss_and_the_update_loop_is_shared():
    """A method written as a loss alone (here -mean log pi, a weight passed through update's data):
    RLHFTrainer.update hands it minibatches of 3 of the 8 rollout rows, in rollout order on the first
    epoch ([0, 1, 2], [3, 4, 5], [6, 7]) and a permutation of all 8 on the second; the first ratio is
    exactly 1; 6 updates; the loss's own statistic is averaged: (3 + 3 + 2 + 3 + 3 + 2) / 6 = 8 / 3.
    Without a clip range no clip fraction is reported."""
    from tinygrad_gpt.rlhf.trainer import RLHFTrainer
    seen = []

    class MeanLogprob(RLHFTrainer):
        algo = "mean-logprob"
        loss_stats = ("rows",)

        def loss(self, mb, logits, values, logp, mask, weight):
            seen.append(list(mb))
            return logp.mean() * -weight, {"rows": float(len(mb))}

    policy, ref = tiny_policy(seed=2)
    cfg = RLOOConfig(group_size=2, minibatch_size=3, epochs=2, **SMALL)
    trainer = MeanLogprob(policy, ref, TOK, prompt_tokens(), vowel_fraction, cfg, log=lambda *a: None)
    roll = trainer.make_rollout(trainer.next_prompts())
    updates = trainer.update(roll.sequences, roll.logprobs, 8, 2, weight=1.0)
    assert seen[:3] == [[0, 1, 2], [3, 4, 5], [6, 7]]
    assert sorted(sum(seen[3:], [])) == list(range(8))
    metrics = updates.metrics()
    assert metrics["first_ratio_dev"] == 0.0 and metrics["updates"] == 6 and metrics["skipped"] == 0
    assert metrics["rows"] == pytest.approx(8 / 3) and np.isfinite(metrics["loss"])
    assert "clipfrac" not in metrics and metrics["early_stop"] is False


def test_exploitation_step_names_where_gold_falls_as_the_proxy_rises():
    """Hand example of evaluate.exploitation_step (window 1): the gold peaks at step 3 and falls by 0.2
    while the proxy climbs on: hacking from step 3; a proxy that falls with the gold is no hacking."""
    from tinygrad_gpt.rlhf.evaluate import exploitation_step
    rec = [{"score": g, "reward_raw": p} for g, p in zip([0, 0.2, 0.3, 0.1], [0, 1, 2, 3])]
    assert exploitation_step(rec, window=1) == 3
    rec[-1]["reward_raw"] = 1.5
    assert exploitation_step(rec, window=1) is None
    assert exploitation_step([{"score": 0.1}] * 5, window=1) is None          # no proxy: VADER itself
