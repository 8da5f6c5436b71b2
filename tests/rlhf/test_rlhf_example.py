"""examples/rlhf_sentiment.py end to end on a tiny untrained checkpoint: prints, metrics, a loadable policy.

The scripts run as a person runs them, in a process of their own (`run_script`); what they share,
tinygrad_gpt/rlhf/run.py, is tested by calling it.
"""
import json

import numpy as np
import pytest

from conftest import REPO, require_shakespeare
from rlhf_task import run_script, tiny_checkpoint as _tiny_checkpoint


def _flags(tmp_path, data_path, reward):
    return ["--checkpoint", str(tmp_path / "ckpt"), "--data", str(data_path), "--out", str(tmp_path / "rlhf"),
            "--steps", "2", "--batch-size", "8", "--minibatch-size", "4", "--prompt-len", "12", "--response-len",
            "12", "--ppo-epochs", "1", "--norm-batches", "1", "--no-progress", "--reward", reward,
            "--rm-prompts", "16", "--rm-steps", "2"]


def test_example_runs_and_saves(tmp_path):
    data_path = require_shakespeare()
    from tinygrad_gpt.runs import load_model

    cfg = _tiny_checkpoint(tmp_path, data_path)
    out = tmp_path / "rlhf"
    r = run_script("examples/rlhf_sentiment.py", *_flags(tmp_path, data_path, "vader"))
    assert r.returncode == 0, r.stderr[-3000:]
    printed = r.stdout
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
    _tiny_checkpoint(tmp_path, data_path)
    r = run_script("examples/rlhf_sentiment.py", *_flags(tmp_path, data_path, "model"))
    assert r.returncode == 2 and "error: reward model: " in r.stderr and "--rm-prompts" in r.stderr, r.stderr[-3000:]


def _saved_reward_model(tmp_path, alphabet=None):
    """A reward model on the tiny checkpoint's trunk with a random head, saved as a run (kind reward-model)."""
    from tinygrad_gpt.rlhf import RewardModel, RewardModelConfig
    from tinygrad_gpt.rlhf.reward_model import save_reward_model
    from tinygrad_gpt.runs import load_model, tokenizer_of
    from tinygrad_gpt.tokenizers.char import CharTokenizer

    gpt, meta, _ = load_model(tmp_path / "ckpt")
    tok = tokenizer_of(meta, tmp_path / "ckpt") if alphabet is None else CharTokenizer(alphabet)
    rm = RewardModel(gpt, tok.decode, head_hidden=8)
    rm.head.weight.data[...] = np.random.default_rng(0).normal(size=rm.head.weight.shape)
    save_reward_model(tmp_path / "rm", rm, RewardModelConfig(head_hidden=8), tok, {"heldout_accuracy": 0.5})
    return tmp_path / "rm"


def test_a_saved_reward_model_is_optimised_without_training_one(tmp_path):
    data_path = require_shakespeare()
    from tinygrad_gpt.runs import load_model

    _tiny_checkpoint(tmp_path, data_path)
    rm_dir = _saved_reward_model(tmp_path)
    flags = [f for f in _flags(tmp_path, data_path, "model") if f not in ("--reward", "model")]
    r = run_script("examples/rlhf_sentiment.py", *flags, "--reward-model", rm_dir)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"reward model from {rm_dir}" in r.stdout and "reward model data" not in r.stdout  # loaded, not trained
    metrics = [json.loads(line) for line in (tmp_path / "rlhf" / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(m["reward_raw"]) for m in metrics) and len(metrics) == 2
    _, meta, _ = load_model(tmp_path / "rlhf")
    assert meta["reward"] == "model" and meta["reward_model"]["loaded_from"] == str(rm_dir)

    r = run_script("examples/rlhf_sentiment.py", *flags, "--reward", "vader", "--reward-model", rm_dir)
    assert r.returncode == 2 and "--reward vader optimises VADER itself" in r.stderr, r.stderr[-2000:]
    r = run_script("examples/rlhf_sentiment.py", *flags, "--reward-model", tmp_path / "ckpt")
    assert r.returncode == 2 and "not a reward model" in r.stderr, r.stderr[-2000:]


def test_a_reward_model_of_another_tokenizer_is_refused(tmp_path):
    data_path = require_shakespeare()
    _tiny_checkpoint(tmp_path, data_path)
    # the same characters in another order: the same vocabulary size, other ids
    rm_dir = _saved_reward_model(tmp_path, alphabet=sorted(set(data_path.read_text()))[::-1])
    flags = [f for f in _flags(tmp_path, data_path, "model") if f not in ("--reward", "model")]
    r = run_script("examples/rlhf_sentiment.py", *flags, "--reward-model", rm_dir)
    assert r.returncode == 2 and "reads text with another tokenizer" in r.stderr, r.stderr[-2000:]


def test_change_summary_says_when_the_change_is_noise():
    """Paired per-prompt changes: [0.2, 0.0] -> mean 0.1, sample std sqrt(0.02) = 0.1414, standard
    error 0.1414 / sqrt(2) = 0.1: 0.1 is within 2 standard errors. [0.1, 0.1, 0.1, 0.1] -> mean 0.1,
    std 0: beyond. The sentence must not call noise progress."""
    from tinygrad_gpt.rlhf.run import change_summary
    noisy = change_summary([0.0, 0.0], [0.2, 0.0], steps=3)
    assert "+0.000 before, +0.100 after (+0.100, standard error 0.100)" in noisy
    assert "within 2 standard errors" in noisy and "3 step(s) show no measurable effect" in noisy
    clear = change_summary([0.0] * 4, [0.1] * 4, steps=50)
    assert "more than 2 standard errors from no change" in clear


def test_without_a_checkpoint_the_library_trains_the_small_model(tmp_path):
    """load_setup with no checkpoint trains the cpu preset's character GPT into OUT/pretrained (here 2
    steps on 20,000 characters): a training run load_model reads, whose validation split gives the
    prompts, 80% for the run and 20% held out (10% of 20,000 = 2,000 tokens -> 1,600 and 400)."""
    from tinygrad_gpt.rlhf.run import load_setup, train_small_model
    from tinygrad_gpt.runs import load_model
    small = tmp_path / "small.txt"
    small.write_text(open(require_shakespeare(), encoding="utf-8").read()[:20000], encoding="utf-8")
    gpt, tokenizer, run_tokens, heldout = load_setup(None, small, tmp_path / "rl", log=lambda *a: None,
                                                     small_model_iters=2)
    model, meta, optimizer_state = load_model(tmp_path / "rl" / "pretrained")
    assert meta["kind"] == "train" and meta["state"]["step"] == 2 and optimizer_state is not None
    assert gpt.config == model.config and (gpt.config.n_layer, gpt.config.block_size) == (4, 64)
    assert len(run_tokens) == 1600 and len(heldout) == 400 and tokenizer.decode(run_tokens[:5].tolist())
    # a directory that cannot hold it is refused before any training
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is not a directory"):
        train_small_model(tmp_path / "file", small, max_iters=2, log=lambda *a: None)


def test_rlhf_scripts_import_the_library_not_a_script():
    """No script imports a script: the RLHF example and benchmarks import tinygrad_gpt only (their
    shared driver is tinygrad_gpt/rlhf/run.py), never examples/ or another benchmark module."""
    import ast
    scripts = ["examples/rlhf_sentiment.py", "benchmarks/rlhf.py", "benchmarks/rlhf_summary.py",
               "benchmarks/reward_model.py"]
    local = {p.stem for folder in ("examples", "benchmarks") for p in (REPO / folder).glob("*.py")} | {
        "examples", "benchmarks"}
    for script in scripts:
        tree = ast.parse((REPO / script).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert name.split(".")[0] not in local, f"{script} imports {name}"
