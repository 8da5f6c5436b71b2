"""tinygrad_gpt/plot.py and docs/make_figures.py: non-empty PNGs from real runs, and the numbers drawn.

Curves from real metrics files (a training run and RLHF runs overlaid); the gradient norms that
--log-grad-norms logs against the same norms computed directly on a replica of the model; the
attention probabilities against a softmax written out here from the weights (rows sum to 1, the
future is 0); the PPO ratios the hook keeps against the clip fraction the trainer itself reports;
and the one command that makes the tour's four pictures, on a tiny run.
"""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO
from tinygrad_gpt import plot


pytest.importorskip("matplotlib")


def _png(path):
    data = path.read_bytes()
    return len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_training_and_rlhf_runs(tmp_path):
    """A real Trainer run (2 steps) and two real GRPO runs (2 steps each) -> training.png, rlhf.png."""
    from tinygrad_gpt.model import GPT, GPTConfig
    from tinygrad_gpt.rlhf import GRPOConfig, GRPOTrainer
    from tinygrad_gpt.train import TrainConfig, Trainer
    from rlhf_task import TOK, prompt_tokens, tiny_policy, vowel_fraction

    tokens = prompt_tokens(3000)
    cfg = TrainConfig(batch_size=4, max_iters=20, log_every=5, eval_every=10, eval_batches=2, warmup_iters=2,
                      out_dir=str(tmp_path / "train"))
    gpt = GPT(GPTConfig(vocab_size=TOK.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16), seed=0)
    Trainer(gpt, TOK, tokens[:2500], tokens[2500:], cfg, progress=False).train()
    runs = []
    for seed in (0, 1):
        policy, ref = tiny_policy(seed=2)
        trainer = GRPOTrainer(policy, ref, TOK, tokens, vowel_fraction,
                              GRPOConfig(steps=2, batch_size=8, group_size=4, prompt_len=8, response_len=8,
                                         minibatch_size=8, epochs=1, norm_batches=1, seed=seed), log=lambda *a: None)
        run = tmp_path / f"grpo-{seed}"
        run.mkdir()
        with open(run / "metrics.jsonl", "w") as f:
            for _ in range(2):
                f.write(json.dumps(trainer.step()) + "\n")
        runs.append(run)
    assert plot.main([str(tmp_path / "train"), *map(str, runs), "--out", str(tmp_path / "png")]) == 0
    assert _png(tmp_path / "png" / "training.png") and _png(tmp_path / "png" / "rlhf.png")


def test_plot_errors_name_the_file_and_line(tmp_path, capsys):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\nnot json\n')
    assert plot.main([str(tmp_path)]) == 2
    assert "metrics.jsonl line 2" in capsys.readouterr().err
    assert plot.main([str(tmp_path / "missing")]) == 2
    assert "no metrics file" in capsys.readouterr().err


# ---- --log-grad-norms ----------------------------------------------------------------------------------
def _tiny_trainer(tmp_path, device="cpu", **train_kw):
    from tinygrad_gpt.model import GPT, GPTConfig
    from tinygrad_gpt.train import TrainConfig, Trainer
    from rlhf_task import TOK, prompt_tokens

    tokens = prompt_tokens(3000)
    cfg = TrainConfig(**dict(dict(batch_size=4, max_iters=1, log_every=1, eval_batches=1, warmup_iters=0,
                                  out_dir=str(tmp_path / "run"), device=device), **train_kw))
    gpt_cfg = GPTConfig(vocab_size=TOK.vocab_size, block_size=16, n_layer=3, n_head=2, n_embd=16)
    make_model = (lambda device="cpu": GPT(gpt_cfg, seed=3, dtype=np.float64, device=device))
    return Trainer(make_model(device), TOK, tokens[:2500], tokens[2500:], cfg, log=lambda *a: None, progress=False), \
        make_model


def _records(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def test_log_grad_norms_equal_a_direct_computation_before_clipping(tmp_path, device):
    """Step 1's logged norms = sqrt(sum of squared gradients) per group, computed here on a CPU replica
    of the model at its initial weights with the trainer's first batch. grad_clip 1e-3 is far
    below the norm, so a norm read after clipping would be 1e-3 and fail. On cuda the norms are
    summed on the device and cross to the host once."""
    trainer, make_model = _tiny_trainer(tmp_path, device, log_grad_norms=True, grad_clip=1e-3)
    x, y = next(iter(trainer.epoch_batches(trainer.state.epoch_rng)))   # the batch step 1 trains on
    trainer.train()
    logged = [r for r in _records(tmp_path / "run") if "loss" in r][0]["grad_norms"]

    replica = make_model()
    _, loss = replica(x, y)
    loss.backward()
    squares = {}
    for name, p in replica.named_parameters():
        group = "h." + name.split(".")[1] if name.startswith("h.") else name.split(".")[0]
        squares[group] = squares.get(group, 0.0) + float((p.grad.astype(np.float64) ** 2).sum())
    direct = {group: math.sqrt(value) for group, value in squares.items()}
    direct["total"] = math.sqrt(sum(squares.values()))
    assert list(logged) == ["wte", "wpe", "h.0", "h.1", "h.2", "ln_f", "total"]
    for group, value in direct.items():
        assert logged[group] == pytest.approx(value, rel=1e-10), group
    assert logged["total"] > 100 * 1e-3   # the unclipped norm, not the clipped one


def test_grad_norms_are_off_by_default(tmp_path):
    trainer, _ = _tiny_trainer(tmp_path)
    trainer.train()
    records = [r for r in _records(tmp_path / "run") if "loss" in r]
    assert records and not any("grad_norms" in r for r in records)


# ---- attention maps --------------------------------------------------------------------------------------
def _direct_attention(model, ids, causal=True):
    """p per layer (n_layer, B, nh, T, T), written out from the weights: ln_1, c_attn, softmax(q k^T / sqrt(hs))
    with -inf above the diagonal (causal); the residual stream is carried from block to block by the model's Block."""
    from tinygrad_gpt.tensor import Tensor
    B, T = ids.shape
    nh, C = model.config.n_head, model.config.n_embd
    hs = C // nh
    x = model.wte.weight.data[ids] + model.wpe.weight.data[:T]                  # (B, T, C)
    maps = []
    for block in model.h:
        ln = block.ln_1
        mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        h = (x - mu) / np.sqrt(var + ln.eps) * ln.weight.data + ln.bias.data     # (B, T, C)
        qkv = h @ block.attn.c_attn.weight.data + block.attn.c_attn.bias.data    # (B, T, 3C)
        q = qkv[..., :C].reshape(B, T, nh, hs).transpose(0, 2, 1, 3)            # (B, nh, T, hs)
        k = qkv[..., C:2 * C].reshape(B, T, nh, hs).transpose(0, 2, 1, 3)       # (B, nh, T, hs)
        s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(hs)                           # (B, nh, T, T)
        if causal:
            s = np.where(np.triu(np.ones((T, T), dtype=bool), 1), -np.inf, s)
        e = np.exp(s - s.max(-1, keepdims=True))
        maps.append(e / e.sum(-1, keepdims=True))
        x = block(Tensor(x)).data                                               # (B, T, C)
    return np.stack(maps)


def test_attention_probs_equal_a_direct_softmax_rows_sum_to_one_causal(rng):
    from tinygrad_gpt.model import GPT, GPTConfig
    model = GPT(GPTConfig(vocab_size=11, block_size=12, n_layer=2, n_head=3, n_embd=12), seed=int(rng.integers(100)),
                dtype=np.float64)
    for block in model.h:  # sharper attention than the 0.02-std init, so the maps are far from uniform
        block.attn.c_attn.weight.data *= 40.0
    ids = rng.integers(0, 11, size=(2, 9))
    logits_before = model(ids)[0].data
    p = plot.attention_probs(model, ids)
    assert p.shape == (2, 2, 3, 9, 9)
    direct = _direct_attention(model, ids)
    np.testing.assert_allclose(p, direct, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-12)
    assert np.all(p[..., np.triu_indices(9, 1)[0], np.triu_indices(9, 1)[1]] == 0)
    assert p.max() > 0.9   # peaked: a uniform map could not tell a wrong score from a right one
    # control: the same softmax without the causal mask is not what the model attends with
    assert not np.allclose(p[..., :-1, :], _direct_attention(model, ids, causal=False)[..., :-1, :], atol=1e-3)
    # the model is left as it was: its c_attn back in place, the same logits as before
    assert all(type(block.attn.c_attn).__name__ == "Linear" for block in model.h)
    np.testing.assert_array_equal(model(ids)[0].data, logits_before)


def test_attention_probs_on_each_device(device, rng):
    """The same maps from the model on `device` (its own attention kernel gives lse) as on the CPU."""
    from tinygrad_gpt.model import GPT, GPTConfig
    cfg = GPTConfig(vocab_size=11, block_size=12, n_layer=2, n_head=2, n_embd=8)
    seed = int(rng.integers(100))
    ids = rng.integers(0, 11, size=(1, 7))
    on_cpu = plot.attention_probs(GPT(cfg, seed=seed, dtype=np.float64), ids)
    on_device = plot.attention_probs(GPT(cfg, seed=seed, dtype=np.float64, device=device), ids)
    np.testing.assert_allclose(on_device, on_cpu, rtol=1e-9, atol=1e-12)


# ---- PPO ratios --------------------------------------------------------------------------------------------
def test_ratio_recorder_keeps_what_the_clipped_objective_saw(tmp_path):
    """The recorded ratios of step 2 reproduce that step's logged clip fraction (the mean over its
    minibatch updates of |r - 1| > eps); every minibatch of every epoch is there; the figure draws."""
    from tinygrad_gpt.rlhf import PPOConfig, PPOTrainer
    from rlhf_task import TOK, prompt_tokens, tiny_policy, vowel_fraction

    policy, ref = tiny_policy(seed=2)
    cfg = PPOConfig(steps=2, batch_size=8, prompt_len=8, response_len=8, minibatch_size=4, ppo_epochs=3,
                    lr=3e-3, target_kl=None, norm_batches=1, seed=0)
    trainer = PPOTrainer(policy, ref, TOK, prompt_tokens(3000), vowel_fraction, cfg, log=lambda *a: None)
    recorder = plot.RatioRecorder(step=2)
    trainer.on_ratios = recorder
    trainer.step()
    assert recorder.ratio == []                                   # step 1 is not kept
    metrics = trainer.step()
    arrays = recorder.arrays()
    per_update = cfg.minibatch_size * cfg.response_len
    assert len(arrays["ratio"]) == cfg.ppo_epochs * cfg.batch_size * cfg.response_len
    assert sorted(set(arrays["epoch"].tolist())) == [0, 1, 2]
    np.testing.assert_allclose(arrays["ratio"][:per_update], 1.0, atol=1e-5)  # pi_theta = pi_old at first
    outside = (np.abs(arrays["ratio"] - 1) > cfg.clip_eps).reshape(-1, per_update).mean(axis=1)
    assert metrics["clipfrac"] == pytest.approx(outside.mean(), abs=1e-12)
    assert np.abs(arrays["ratio"] - 1).max() > 1e-3               # the updates moved the policy
    path = recorder.save(tmp_path / "ratios.npz", cfg.clip_eps)
    assert plot.main(["--ppo-ratios", str(path), "--out", str(tmp_path / "png")]) == 0
    assert _png(tmp_path / "png" / "ppo_ratio_clip.png")


def test_ratio_file_errors_name_the_file(tmp_path, capsys):
    bad = tmp_path / "r.npz"
    np.savez(bad, ratio=np.ones(3))
    assert plot.main(["--ppo-ratios", str(bad)]) == 2
    assert "r.npz lacks the array(s)" in capsys.readouterr().err
    with pytest.raises(ValueError, match="step 5 was not run"):
        plot.RatioRecorder(step=5).save(tmp_path / "x.npz", 0.2)


# ---- the tour's four pictures, by one command ---------------------------------------------------------------
def test_make_figures_writes_the_four_pngs_on_a_tiny_run(tmp_path):
    """docs/make_figures.py end to end (training with --log-grad-norms, attention, curves, PPO) at the
    tiny preset on a small corpus that holds the default prompt's characters."""
    pytest.importorskip("vaderSentiment")
    words = ["now", "is", "the", "winter", "of", "our", "discontent", "made", "glorious", "summer", "yonder",
             "window", "breaks", "light", "through", "soft", "what", "but"]
    rng = np.random.default_rng(0)
    lines = ["ROMEO:\nBut soft, what light through yonder window breaks?"]
    lines += [" ".join(rng.choice(words, 7)).capitalize() + "." for _ in range(500)]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out, work = tmp_path / "images", tmp_path / "work"
    cmd = [sys.executable, str(REPO / "docs" / "make_figures.py"), "--out", str(out), "--work", str(work),
           "--data", str(corpus), "--preset", "tiny", "--iters", "20", "--ppo-steps", "1", "--ppo-batch", "8"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("attention_maps.png", "grad_norms.png", "training_curves.png", "ppo_ratio_clip.png"):
        assert _png(out / name), name
    assert any("grad_norms" in r for r in _records(work / "train"))
    assert (work / "ppo" / "ratios.npz").is_file()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert again.returncode == 2 and "already holds a run" in again.stderr


@pytest.mark.parametrize("line", ["5", "[1, 2]", '"loss"', "null"])
def test_a_metrics_line_that_is_not_an_object_is_named(tmp_path, capsys, line):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n' + line + "\n")
    assert plot.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "metrics.jsonl line 2 is not a JSON object" in err and "Traceback" not in err, err


def test_records_with_values_of_the_wrong_type_are_skipped_not_fatal(tmp_path):
    """A string where a number belongs is left out of its curve (like a NaN), the rest is drawn."""
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"step": 1, "score": 0.5, "kl": 0.1, "reward_raw": "x"}, {"step": "two", "score": 0.6, "kl": "y"},
        {"step": 3, "score": 0.7, "kl": 0.2, "reward_raw": 0.9},
        ]) + "\n")
    assert _png(plot.plot_runs([tmp_path])[0])


def _ratios(**change):
    arrays = {"ratio": np.array([0.9, 1.0, 1.3]), "advantage": np.array([1.0, -1.0, 0.5]),
              "epoch": np.array([0, 0, 1]), "step": np.int64(2), "clip_eps": np.float64(0.2)}
    arrays.update(change)
    return arrays


@pytest.mark.parametrize("change, says", [
    (dict(advantage=np.ones(4)), "array 'advantage' has shape (4,), but 'ratio' has shape (3,)"),
    (dict(epoch=np.zeros((3, 1), np.int64)), "array 'epoch' has shape (3, 1), but 'ratio' has shape (3,)"),
    (dict(ratio=np.ones((3, 2)), advantage=np.ones((3, 2)), epoch=np.zeros((3, 2), np.int64)),
     "array 'ratio' has shape (3, 2); expected a 1-D array"),
    (dict(ratio=np.array(["a", "b", "c"])), "array 'ratio' has dtype <U1; expected floats"),
    (dict(epoch=np.array([0.5, 0.0, 1.0])), "array 'epoch' has dtype float64; expected integers"),
    (dict(step=np.array([2, 3])), "array 'step' has shape (2,); expected a scalar"),
    (dict(clip_eps=np.float64(2.0)), "clip_eps must be in (0, 1)"),
    (dict(ratio=np.ones(0), advantage=np.ones(0), epoch=np.zeros(0, np.int64)), "'ratio' is empty")])
def test_ratio_arrays_of_the_wrong_shape_or_type_are_named(tmp_path, capsys, change, says):
    path = tmp_path / "r.npz"
    np.savez(path, **_ratios(**change))
    assert plot.main(["--ppo-ratios", str(path), "--out", str(tmp_path / "png")]) == 2
    err = capsys.readouterr().err
    assert says in err and "r.npz" in err and "Traceback" not in err, err


def test_a_ratio_file_of_one_array_and_the_right_file_draw_or_are_named(tmp_path, capsys):
    np.save(tmp_path / "one.npy", np.ones(3))
    assert plot.main(["--ppo-ratios", str(tmp_path / "one.npy")]) == 2
    assert "not an .npz file" in capsys.readouterr().err
    np.savez(tmp_path / "r.npz", **_ratios())
    assert plot.main(["--ppo-ratios", str(tmp_path / "r.npz"), "--out", str(tmp_path / "png")]) == 0
    assert _png(tmp_path / "png" / "ppo_ratio_clip.png")


def test_out_naming_a_file_is_a_usage_error(tmp_path, capsys):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n')
    target = tmp_path / "taken.png"
    target.write_bytes(b"keep")
    np.savez(tmp_path / "r.npz", **_ratios())
    for flags in ([str(tmp_path)], ["--ppo-ratios", str(tmp_path / "r.npz")]):
        assert plot.main([*flags, "--out", str(target)]) == 2
        err = capsys.readouterr().err
        assert "--out" in err and "taken.png is a file" in err and "Traceback" not in err, err
    assert target.read_bytes() == b"keep"
    with pytest.raises(ValueError, match="is a file"):
        plot.plot_runs([tmp_path], target)


def test_a_panel_no_run_has_data_for_is_left_out():
    """A VADER-scored run: its proxy reward is the gold score itself (reward_raw == score), so the
    proxy-vs-gold panel has nothing to compare and is not drawn; with a reward model (proxy differs)
    it is. A run without a KL coefficient (beta) draws no beta panel."""
    from tinygrad_gpt.plot import panels_to_draw
    vader = [{"step": s, "score": 0.1 * s, "reward_raw": 0.1 * s, "kl": 0.01 * s, "clipfrac": 0.1,
              "entropy": 2.0} for s in range(1, 4)]
    keys = [key for key, _ in panels_to_draw("rlhf", [vader])[0]]
    assert "reward_raw" not in keys and "beta" not in keys
    assert keys == ["score", "kl", "clipfrac", "entropy", "score_vs_kl"]
    model = [dict(r, reward_raw=r["reward_raw"] + 0.5) for r in vader]
    assert "reward_raw" in [key for key, _ in panels_to_draw("rlhf", [vader, model])[0]]
