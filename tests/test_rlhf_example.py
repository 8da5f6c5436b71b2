"""examples/rlhf_sentiment.py end to end on a tiny untrained checkpoint: prints, metrics, a loadable policy."""
import json
import sys
from dataclasses import asdict

import numpy as np
import pytest

from conftest import REPO, require_shakespeare

sys.path.insert(0, str(REPO))


def _tiny_checkpoint(tmp_path, data_path):
    from tinygrad_gpt import checkpoint, data
    from tinygrad_gpt.model import GPT, GPTConfig
    from tinygrad_gpt.tokenizers.char import CharTokenizer

    tok = CharTokenizer.from_text(data.load_text(data_path))
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16)
    checkpoint.save_checkpoint(tmp_path / "ckpt", GPT(cfg, seed=0).state_dict(),
                               {"model_config": asdict(cfg), "tokenizer": tok.to_dict()})
    return cfg


def _flags(tmp_path, data_path, reward):
    return ["--checkpoint", str(tmp_path / "ckpt"), "--data", str(data_path), "--out", str(tmp_path / "rlhf"),
            "--steps", "2", "--batch-size", "8", "--minibatch-size", "4", "--prompt-len", "12", "--response-len",
            "12", "--ppo-epochs", "1", "--norm-batches", "1", "--no-progress", "--reward", reward,
            "--rm-prompts", "16", "--rm-steps", "2"]


def test_example_runs_and_saves(tmp_path, capsys):
    data_path = require_shakespeare()
    from examples.rlhf_sentiment import main
    from tinygrad_gpt.runs import load_model

    cfg = _tiny_checkpoint(tmp_path, data_path)
    out = tmp_path / "rlhf"
    assert main(_flags(tmp_path, data_path, "vader")) == 0
    printed = capsys.readouterr().out
    assert "before PPO" in printed and "after PPO" in printed and printed.count(" >>> ") == 16
    # the short names of the progress line are explained once, before the first step's line
    assert printed.count("columns: ") == 1 and printed.index("columns: ") < printed.index("step 1: ")
    legend = printed[printed.index("columns: "):].splitlines()[0]
    for name in ("score", "kl", "beta", "clip", "ent", "vf", "ev"):
        assert f"{name} = " in legend, name
    assert "mean VADER of the 8 fixed prompts" in printed
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2]
    model, meta, _ = load_model(out)
    assert meta["reward"] == "vader" and model.config == cfg
    assert np.isfinite(json.loads(lines[-1])["value_loss"])


def test_example_reward_model_without_pairs_says_what_to_do(tmp_path):
    """An untrained model writes no words: VADER scores every sample 0, so there are no pairs."""
    data_path = require_shakespeare()
    from examples.rlhf_sentiment import main

    _tiny_checkpoint(tmp_path, data_path)
    with pytest.raises(ValueError, match="--rm-prompts"):
        main(_flags(tmp_path, data_path, "model"))


def test_change_summary_says_when_the_change_is_noise():
    """Paired per-prompt changes: [0.2, 0.0] -> mean 0.1, sample std sqrt(0.02) = 0.1414, standard
    error 0.1414 / sqrt(2) = 0.1: 0.1 is within 2 standard errors. [0.1, 0.1, 0.1, 0.1] -> mean 0.1,
    std 0: beyond. The sentence must not call noise progress."""
    from examples.rlhf_sentiment import change_summary
    noisy = change_summary([0.0, 0.0], [0.2, 0.0], steps=3)
    assert "+0.000 before, +0.100 after (+0.100, standard error 0.100)" in noisy
    assert "within 2 standard errors" in noisy and "3 step(s) show no measurable effect" in noisy
    clear = change_summary([0.0] * 4, [0.1] * 4, steps=50)
    assert "more than 2 standard errors from no change" in clear
