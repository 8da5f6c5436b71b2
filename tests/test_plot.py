"""python -m tinygrad_gpt.plot: non-empty PNGs from real metrics files (a training run and RLHF runs overlaid)."""
import json

import pytest

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
    from test_rlhf_ppo import TOK, prompt_tokens, tiny_policy, vowel_fraction

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
