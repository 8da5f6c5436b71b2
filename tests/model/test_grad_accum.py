"""Gradient accumulation: N micro-batches give the whole batch's loss and gradient.

Derivation: the batch loss is the mean over B rows (and T positions) of the token losses; split
the rows into pieces of b_i rows, each piece's mean loss is L_i, so L = sum_i (b_i / B) L_i and
dL/dW = sum_i (b_i / B) dL_i/dW. The trainer back-propagates each L_i with weight b_i / B, so the
accumulated gradient equals one backward over the whole batch up to float summation order (float64:
1e-10 stated, ~1e-15 measured). The control accumulates unweighted micro-batch gradients (the
classic mistake) and must differ.
"""
import json
from pathlib import Path

import numpy as np
import pytest

from tinygrad_gpt.model import GPT, GPTConfig
from tinygrad_gpt.tokenizers.char import CharTokenizer
from tinygrad_gpt.train import Trainer, TrainConfig

from conftest import REPO, load_script  # noqa: E402

shakespeare = load_script("shakespeare")

TOL = 1e-10


@pytest.fixture
def corpus(tmp_path):
    rng = np.random.default_rng(1)
    words = ["to", "be", "or", "not", "that", "is", "the", "question", "whether", "tis", "nobler"]
    lines = [" ".join(rng.choice(words, 7)).capitalize() + "." for _ in range(300)]
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _trainer(corpus, tmp_path, grad_accum, batch_size=8):
    text = corpus.read_text()
    tok = CharTokenizer.from_text(text)
    ids = tok.encode_array(text)
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=2, n_head=2, n_embd=16)
    model = GPT(cfg, seed=3, dtype=np.float64)
    train_cfg = TrainConfig(batch_size=batch_size, grad_accum=grad_accum, out_dir=str(tmp_path / "o"))
    return Trainer(model, tok, ids[:6000], ids[6000:], train_cfg, progress=False), ids


def _grads(trainer, x, y):
    trainer.model.zero_grad()
    loss = trainer._forward_backward(x, y)
    return float(loss), [p.grad.copy() for p in trainer.model.parameters()]


def _max_rel(a, b):
    return max(float(np.abs(g - h).max() / (np.abs(h).max() + 1e-300)) for g, h in zip(a, b))


@pytest.mark.parametrize("accum, rows", [(2, 8), (4, 8), (8, 8), (2, 7), (4, 5)])
def test_micro_batches_give_the_whole_batch_loss_and_gradient(corpus, tmp_path, accum, rows):
    """(accum, rows): rows < batch_size is a short last batch that does not split evenly (7 = 4 + 3)."""
    whole, ids = _trainer(corpus, tmp_path, 1)
    split, _ = _trainer(corpus, tmp_path, accum)
    rng = np.random.default_rng(rows * 10 + accum)
    starts = rng.integers(0, 5000, size=rows)
    x = np.stack([ids[s:s + 16] for s in starts])        # (rows, T)
    y = np.stack([ids[s + 1:s + 17] for s in starts])    # (rows, T)
    loss1, g1 = _grads(whole, x, y)
    loss2, g2 = _grads(split, x, y)
    assert len(split.micro_batches(x, y)) == min(accum, rows)
    assert abs(loss1 - loss2) <= TOL * abs(loss1)
    assert _max_rel(g2, g1) <= TOL

    # control: unweighted accumulation (each micro-batch's mean loss at weight 1) is accum x too big
    split.model.zero_grad()
    for xm, ym, _ in split.micro_batches(x, y):
        _, loss = split.model(xm, ym)
        loss.backward()
    bad = [p.grad for p in split.model.parameters()]
    assert _max_rel(bad, g1) > 0.1


def test_grad_accum_must_divide_batch_size():
    with pytest.raises(ValueError, match="batch_size 8 is not divisible by grad_accum 3"):
        TrainConfig(batch_size=8, grad_accum=3)
    with pytest.raises(ValueError, match="grad_accum must be >= 1"):
        TrainConfig(grad_accum=0)


def _losses(out):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


@pytest.mark.parametrize("dtype, tol", [("float64", 1e-10), ("float32", 2e-5)])
def test_training_with_grad_accum_follows_the_same_losses(corpus, tmp_path, dtype, tol):
    """24 steps of the example (tiny preset): --grad-accum 2 and 4 track the plain run step by step.

    float32 drifts by summation order through 24 AdamW updates: 2e-5 stated, 2e-7 measured
    (float64: 2e-16 measured).
    """
    runs = {}
    for accum in (1, 2, 4):
        out = tmp_path / f"accum{accum}"
        assert shakespeare.main(["--preset", "tiny", "--data", str(corpus), "--out", str(out), "--no-progress",
                                 "--epochs", "1", "--iters-per-epoch", "24", "--log-every", "1",
                                 "--eval-batches", "1", "--sample-tokens", "5", "--dtype", dtype,
                                 "--grad-accum", str(accum)]) == 0
        runs[accum] = _losses(out)
    assert sorted(runs[1]) == list(range(1, 25))
    for accum in (2, 4):
        assert sorted(runs[accum]) == sorted(runs[1])
        diff = max(abs(runs[accum][s] - runs[1][s]) / runs[1][s] for s in runs[1])
        assert diff <= tol, f"grad_accum {accum}: losses differ by {diff:.2e} (relative)"
    assert runs[1][24] < runs[1][1] - 0.3  # it trains
