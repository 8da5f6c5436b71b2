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
    from tinygrad_gpt.train import load_model

    cfg = _tiny_checkpoint(tmp_path, data_path)
    out = tmp_path / "rlhf"
    assert main(_flags(tmp_path, data_path, "vader")) == 0
    printed = capsys.readouterr().out
    assert "before PPO" in printed and "after PPO" in printed and printed.count(" >>> ") == 16
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
