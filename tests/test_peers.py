"""The project beside its peers in one environment: transformers 5 (and so Hugging Face's `kernels`
distribution), PyTorch, GPT-2 folders as transformers saves them today.

What it covers: a script run from outside the checkout, with the checkout first on the path,
imports Hugging Face's `kernels` and the project's fused kernels (`tinygrad_gpt.kernels`) side by
side, trains and samples our GPT, writes a GPT-2 folder, and transformers builds, loads and
generates in the same process; a folder saved by transformers 5 from a fast tokenizer (only
tokenizer.json) loads with GPT-2's ids; save_pretrained's tokenizer files read in transformers.

Skipped where the peers are absent, except under TINYGRAD_GPT_REQUIRE_PEERS=1 (CI), where that fails.
"""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import REPO, gpt2_dir, peer
from tinygrad_gpt.model import GPT, GPTConfig
from tinygrad_gpt.tokenizers import load_gpt2

TEXT = "Hello world, ROMEO:\n  thou art 123 héllo 🙂<|endoftext|> done"


def needs_gpt2_files():
    if not (gpt2_dir() / "vocab.json").is_file():
        pytest.skip(f"no GPT-2 vocab.json in {gpt2_dir()} (set GPT2_DIR)")


SCRIPT = textwrap.dedent('''
    import pathlib, sys
    import numpy as np
    import kernels                                   # Hugging Face's, installed by transformers 5
    import torch, transformers
    from tinygrad_gpt import kernels as fused, Tensor
    from tinygrad_gpt.model import GPT, GPTConfig
    from tinygrad_gpt.optim import AdamW
    from tinygrad_gpt.tokenizers import load_gpt2

    repo = pathlib.Path(sys.argv[1]).resolve()
    assert repo not in pathlib.Path(kernels.__file__).resolve().parents, kernels.__file__
    assert hasattr(kernels, "get_kernel"), "the top-level kernels is not Hugging Face's"
    assert fused.for_array(np.zeros(1)).__name__ == "tinygrad_gpt.kernels.cpu"

    # ours: a few training steps through every fused kernel, then sampling
    tok = load_gpt2(sys.argv[2])
    ids = tok.encode("Hello world")
    assert ids == [15496, 995], ids
    cfg = GPTConfig(vocab_size=50257, block_size=16, n_layer=2, n_head=2, n_embd=16, dropout=0.1)
    model = GPT(cfg, seed=0)
    opt = AdamW(model.parameters(), lr=3e-3)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 50257, (2, 16))
    losses = []
    for _ in range(4):
        _, loss = model(x, x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses
    sample = model.generate(np.array([ids]), max_new_tokens=5, rng=np.random.default_rng(1))
    assert sample.shape == (1, 7)
    folder = pathlib.Path(sys.argv[3])
    model.save_pretrained(folder, tokenizer=tok)
    again = GPT.from_pretrained(folder)

    # transformers in the same process: build, load our folder, generate
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=97, n_positions=8, n_embd=16,
                                                              n_layer=1, n_head=2)).eval()
    out = hf.generate(torch.zeros((1, 2), dtype=torch.long), max_new_tokens=3, do_sample=False)
    assert out.shape == (1, 5)
    ours = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
    with torch.no_grad():
        want = ours(torch.tensor(x)).logits.numpy()
    got = again(x)[0].data
    assert np.abs(got - want).max() < 1e-4, np.abs(got - want).max()
    out = ours.generate(torch.tensor([ids]), max_new_tokens=3, do_sample=False)
    assert out.shape == (1, 5)
    print("both kernels work in one process")
''')


def test_project_and_transformers_work_in_one_process_outside_the_checkout(tmp_path):
    peer("torch")
    peer("transformers")
    needs_gpt2_files()
    (tmp_path / "work").mkdir()
    script = tmp_path / "work" / "both.py"
    script.write_text(SCRIPT, encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=str(REPO), OPENBLAS_NUM_THREADS="1")
    run = subprocess.run([sys.executable, str(script), str(REPO), str(gpt2_dir()), str(tmp_path / "folder")],
                         cwd=tmp_path / "work", capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "both kernels work in one process" in run.stdout


def test_transformers_5_folder_with_only_tokenizer_json_loads_with_gpt2_ids(tmp_path, rng):
    """GPT2TokenizerFast.save_pretrained writes tokenizer.json (no vocab.json / merges.txt); the
    folder loads as tokenizer and model, and its ids are GPT-2's and transformers' own."""
    torch = peer("torch")
    transformers = peer("transformers")
    needs_gpt2_files()
    folder = tmp_path / "hf"
    hf_tok = transformers.GPT2TokenizerFast(str(gpt2_dir() / "vocab.json"),
                                            str(gpt2_dir() / "merges.txt"))
    hf_tok.save_pretrained(folder)
    for name in ("vocab.json", "merges.txt"):  # whatever a future version adds, test the json alone
        (folder / name).unlink(missing_ok=True)
    assert (folder / "tokenizer.json").is_file()
    torch.manual_seed(int(rng.integers(1 << 30)))
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_positions=16, n_embd=8, n_layer=1, n_head=2))
    hf.save_pretrained(folder)
    tok = load_gpt2(folder)
    want = load_gpt2(gpt2_dir()).encode(TEXT, allowed_special="all")
    assert tok.encode(TEXT, allowed_special="all") == want == hf_tok.encode(TEXT)
    assert tok.special_tokens == {"<|endoftext|>": 50256}
    model = GPT.from_pretrained(folder)
    idx = np.array([want[:16]])
    with torch.no_grad():
        logits = hf.eval()(torch.tensor(idx)).logits.numpy()
    np.testing.assert_allclose(model(idx)[0].data, logits, rtol=0, atol=1e-5)


def test_save_pretrained_tokenizer_reads_in_transformers_both_ways(tmp_path):
    """The three files save_pretrained writes: the slow loader reads vocab.json + merges.txt, the
    fast one tokenizer.json, and both give our ids."""
    transformers = peer("transformers")
    needs_gpt2_files()
    tok = load_gpt2(gpt2_dir())
    model = GPT(GPTConfig(vocab_size=50257, block_size=8, n_layer=1, n_head=1, n_embd=4))
    folder = model.save_pretrained(tmp_path / "out", tokenizer=tok)
    assert {"vocab.json", "merges.txt", "tokenizer.json"} <= {p.name for p in folder.iterdir()}
    ours = tok.encode(TEXT, allowed_special="all")
    slow = transformers.GPT2Tokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))
    assert slow.encode(TEXT) == ours == fast.encode(TEXT)
    assert json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))["added_tokens"][0]["id"] == 50256


def test_init_from_a_folder_with_only_tokenizer_json(tmp_path):
    """examples/shakespeare.py --init-from reads the tokenizer from tokenizer.json when vocab.json and
    merges.txt are absent (a transformers-5 folder), and trains."""
    from conftest import require_shakespeare
    needs_gpt2_files()
    model = GPT(GPTConfig(vocab_size=50257, block_size=32, n_layer=1, n_head=2, n_embd=8), seed=3)
    folder = model.save_pretrained(tmp_path / "gpt2", tokenizer=load_gpt2(gpt2_dir()))
    (folder / "vocab.json").unlink()
    (folder / "merges.txt").unlink()
    text = tmp_path / "small.txt"
    text.write_text(require_shakespeare().read_text(encoding="utf-8")[:5000], encoding="utf-8")
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    run = subprocess.run([sys.executable, str(REPO / "examples" / "shakespeare.py"), "--init-from", str(folder),
                          "--data", str(text), "--out", str(tmp_path / "ft"), "--block-size", "16",
                          "--batch-size", "2", "--eval-batches", "1", "--sample-tokens", "3", "--no-progress",
                          "--max-iters", "2"], capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    assert (tmp_path / "ft" / "metrics.jsonl").is_file()
