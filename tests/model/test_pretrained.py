"""Hugging Face GPT-2 folders: loading every layout and dtype, the errors, save_pretrained.

Each test writes its own small folder in the layouts real files use: `transformer.`-prefixed names
(what GPT2LMHeadModel.save_pretrained writes) or bare ones (OpenAI's original gpt2 upload, with
the `h.{i}.attn.bias` / `attn.masked_bias` buffers), float32 / float16 / bfloat16 tensors, and a
broken folder of each kind. The weights are those of a small random GPT of ours, so "loaded" means
"every parameter equal to what was written" and the logits equal. The optional tests at the end
(transformers importable) compare logits with transformers' GPT2LMHeadModel in both directions.
"""
import json

import numpy as np
import pytest

from conftest import default_sigint, gpt2_dir, peer
from tinygrad_gpt.model import GPT, GPTConfig
from tinygrad_gpt.pretrained import PretrainedError, config_from_hf, config_to_hf, read_safetensors
from tinygrad_gpt.tokenizers import load_gpt2

safetensors = pytest.importorskip("safetensors")
import safetensors.numpy  # noqa: E402
from safetensors import TensorSpec, serialize_file  # noqa: E402

SMALL = GPTConfig(vocab_size=37, block_size=12, n_layer=2, n_head=2, n_embd=8)


def hf_config(cfg, **extra):
    """config.json as transformers writes it (the keys a downloaded gpt2 folder holds)."""
    return {"activation_function": "gelu_new", "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
            "vocab_size": cfg.vocab_size, "n_positions": cfg.block_size, "n_ctx": cfg.block_size,
            "n_embd": cfg.n_embd, "n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_inner": None,
            "layer_norm_epsilon": cfg.layer_norm_epsilon, "resid_pdrop": 0.1, "embd_pdrop": 0.1,
            "attn_pdrop": 0.1, "initializer_range": 0.02, "bos_token_id": 50256, "eos_token_id": 50256,
            **extra}


def write_folder(path, model, prefix="transformer.", buffers=False, dtype="float32", lm_head=False,
                 config=None, drop=(), change=None):
    """A GPT-2 folder holding `model`'s weights, written with the safetensors package."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config or hf_config(model.config)))
    tensors = {}
    for name, p in model.named_parameters():
        a = np.asarray(p.data, dtype=np.float32)
        if change and name in change:
            a = change[name]
        if name not in drop:
            tensors[prefix + name] = a
    if lm_head:
        tensors["lm_head.weight"] = np.asarray(model.wte.weight.data, dtype=np.float32)
    if buffers:  # the causal mask and -1e4 that OpenAI's files carry in every layer
        T = model.config.block_size
        for i in range(model.config.n_layer):
            tensors[f"{prefix}h.{i}.attn.bias"] = np.tril(np.ones((T, T), np.float32))[None, None]
            tensors[f"{prefix}h.{i}.attn.masked_bias"] = np.array(-1e4, np.float32)
    flat, alive = {}, []
    for name, a in tensors.items():
        if dtype == "bfloat16":  # numpy has no bfloat16: the high 16 bits of each float32
            b = (np.ascontiguousarray(a, np.float32).view(np.uint32) >> 16).astype("<u2")
        else:
            b = np.ascontiguousarray(a, dtype=dtype)
        alive.append(b)
        flat[name] = TensorSpec(dtype="bfloat16" if dtype == "bfloat16" else b.dtype.name, shape=b.shape,
                                data_ptr=b.ctypes.data, data_len=b.nbytes)
    serialize_file(flat, str(path / "model.safetensors"), metadata={"format": "pt"})
    return path


def assert_same_weights(model, expected, cast=lambda a: a):
    got = dict(model.named_parameters())
    for name, p in expected.named_parameters():
        np.testing.assert_array_equal(got[name].data, cast(np.asarray(p.data, np.float32)), err_msg=name)


def logits_of(model, idx):
    return model(idx)[0].data


@pytest.mark.parametrize("prefix,buffers,lm_head", [("transformer.", False, False), ("", True, False),
                                                    ("transformer.", True, True), ("", False, True)])
def test_loads_with_and_without_prefix_and_buffers(tmp_path, rng, prefix, buffers, lm_head):
    """Both naming layouts, with the attention-mask buffers and a tied lm_head, load the same weights."""
    src = GPT(SMALL, seed=int(rng.integers(1 << 30)))
    folder = write_folder(tmp_path / "m", src, prefix=prefix, buffers=buffers, lm_head=lm_head)
    model = GPT.from_pretrained(folder)
    assert model.config == SMALL
    assert_same_weights(model, src)
    idx = rng.integers(0, SMALL.vocab_size, (2, SMALL.block_size))
    np.testing.assert_array_equal(logits_of(model, idx), logits_of(src, idx))


def test_float16_file_loads_as_float32_rounded(tmp_path, rng):
    src = GPT(SMALL, seed=int(rng.integers(1 << 30)))
    model = GPT.from_pretrained(write_folder(tmp_path / "m", src, dtype="float16"))
    assert model.wte.weight.dtype == np.float32
    assert_same_weights(model, src, cast=lambda a: a.astype(np.float16).astype(np.float32))


def test_bfloat16_is_widened_exactly(tmp_path, rng):
    """bfloat16 is float32's top 16 bits: 0x3F80 -> 1.0, 0xC020 -> -2.5, 0x3F81 -> 1 + 2^-7.

    The file holds the truncated bits of each weight; the loaded float32 must be those bits with
    16 zero bits appended, i.e. the original with its low mantissa bits cleared.
    """
    src = GPT(SMALL, seed=int(rng.integers(1 << 30)))
    special = np.array([1.0, -2.5, np.float32(1.0 + 2 ** -7) + np.float32(2 ** -12)] + [0.0] * 5, np.float32)
    wpe = np.asarray(src.wpe.weight.data).copy()
    wpe[0] = special
    folder = write_folder(tmp_path / "m", src, dtype="bfloat16", change={"wpe.weight": wpe})
    model = GPT.from_pretrained(folder)
    np.testing.assert_array_equal(model.wpe.weight.data[0, :3], [1.0, -2.5, 1.0078125])
    clear = lambda a: (a.view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32)  # noqa: E731
    np.testing.assert_array_equal(model.h[1].mlp.c_fc.weight.data, clear(np.asarray(src.h[1].mlp.c_fc.weight.data)))


def test_dtype_can_be_asked_for(tmp_path, rng):
    src = GPT(SMALL, seed=int(rng.integers(1 << 30)))
    model = GPT.from_pretrained(write_folder(tmp_path / "m", src), dtype=np.float64)
    assert model.h[0].attn.c_attn.weight.dtype == np.float64


@pytest.mark.parametrize("name,layers,heads,embd", [("distilgpt2", 6, 12, 768), ("gpt2", 12, 12, 768),
                                                    ("gpt2-medium", 24, 16, 1024), ("gpt2-large", 36, 20, 1280),
                                                    ("gpt2-xl", 48, 25, 1600)])
def test_every_gpt2_size_from_its_config(name, layers, heads, embd):
    """The published configs of the five sizes (n_layer, n_head, n_embd; 1024 positions, 50257 tokens)."""
    hf = {"model_type": "gpt2", "activation_function": "gelu_new", "vocab_size": 50257, "n_positions": 1024,
          "n_ctx": 1024, "n_layer": layers, "n_head": heads, "n_embd": embd, "layer_norm_epsilon": 1e-5}
    cfg = GPTConfig(**config_from_hf(hf, name))
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size, cfg.vocab_size) == (layers, heads, embd, 1024, 50257)
    assert GPTConfig(**config_from_hf(config_to_hf(cfg), name)) == cfg


def test_layer_norm_epsilon_is_read_from_the_config(tmp_path, rng):
    """With eps 0.5 instead of 1e-5 every LayerNorm, and so the logits, must change."""
    src = GPT(SMALL, seed=int(rng.integers(1 << 30)))
    cfg = GPTConfig(**{**SMALL.__dict__, "layer_norm_epsilon": 0.5})
    model = GPT.from_pretrained(write_folder(tmp_path / "m", src, config=hf_config(cfg)))
    assert model.config.layer_norm_epsilon == 0.5
    assert {m.eps for m in (model.ln_f, model.h[0].ln_1, model.h[1].ln_2)} == {0.5}
    idx = rng.integers(0, SMALL.vocab_size, (1, 5))
    assert not np.allclose(logits_of(model, idx), logits_of(src, idx))


def test_pytorch_bin_only_names_the_conversion(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(hf_config(SMALL)))
    (folder / "pytorch_model.bin").write_bytes(b"PK\x03\x04 not read")
    with pytest.raises(PretrainedError, match=r"pytorch_model\.bin.*safetensors.*save_pretrained"):
        GPT.from_pretrained(folder)


def test_missing_extra_and_misshapen_tensors_are_named(tmp_path, rng):
    src = GPT(SMALL, seed=int(rng.integers(1 << 30)))
    with pytest.raises(PretrainedError, match=r"missing \['h\.1\.mlp\.c_proj\.bias'\]"):
        GPT.from_pretrained(write_folder(tmp_path / "a", src, drop={"h.1.mlp.c_proj.bias"}))
    extra = hf_config(GPTConfig(**{**SMALL.__dict__, "n_layer": 1}))  # the file has a layer more
    with pytest.raises(PretrainedError, match=r"extra \['transformer\.h\.1\.attn\.c_attn\.bias'"):
        GPT.from_pretrained(write_folder(tmp_path / "b", src, config=extra))
    bad = np.zeros((8, 23), np.float32)
    with pytest.raises(PretrainedError, match=r"'transformer\.h\.0\.attn\.c_attn\.weight' has shape \(8, 23\) "
                                              r"in the file, config\.json gives \(8, 24\)"):
        GPT.from_pretrained(write_folder(tmp_path / "c", src, change={"h.0.attn.c_attn.weight": bad}))


def test_broken_files_and_configs_are_reported(tmp_path, rng):
    src = GPT(SMALL, seed=int(rng.integers(1 << 30)))
    folder = write_folder(tmp_path / "m", src)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[:-10])
    with pytest.raises(PretrainedError, match="truncated"):
        GPT.from_pretrained(folder)
    gelu = write_folder(tmp_path / "g", src, config=hf_config(SMALL, activation_function="gelu"))
    with pytest.raises(PretrainedError, match="activation_function 'gelu'"):
        GPT.from_pretrained(gelu)
    no_key = hf_config(SMALL)
    del no_key["n_head"]
    with pytest.raises(PretrainedError, match="missing the key 'n_head'"):
        GPT.from_pretrained(write_folder(tmp_path / "k", src, config=no_key))
    untied = write_folder(tmp_path / "u", src, lm_head=True)
    flat = read_safetensors(untied / "model.safetensors")
    flat["lm_head.weight"] = flat["lm_head.weight"] + 1
    safetensors.numpy.save_file(flat, str(untied / "model.safetensors"))
    with pytest.raises(PretrainedError, match="lm_head.weight"):
        GPT.from_pretrained(untied)
    with pytest.raises(FileNotFoundError, match="config.json"):
        GPT.from_pretrained(tmp_path)


def test_save_pretrained_round_trip_and_layout(tmp_path, rng):
    """save_pretrained writes GPT2LMHeadModel's layout; reading it back gives the same model."""
    import safetensors.numpy
    src = GPT(SMALL, seed=int(rng.integers(1 << 30)))
    out = src.save_pretrained(tmp_path / "out")
    names = set(safetensors.numpy.load_file(str(out / "model.safetensors")))
    assert names == {"transformer." + n for n, _ in src.named_parameters()}  # no lm_head: tied, as HF writes
    hf = json.loads((out / "config.json").read_text())
    assert hf["architectures"] == ["GPT2LMHeadModel"] and hf["tie_word_embeddings"] is True
    assert (hf["n_positions"], hf["n_layer"], hf["n_head"], hf["n_embd"]) == (12, 2, 2, 8)
    back = GPT.from_pretrained(out)
    assert back.config == SMALL
    assert_same_weights(back, src)


def test_save_pretrained_onto_a_file_names_it_and_leaves_it(tmp_path, rng):
    """A file where the folder should go is named in the error and left as it was."""
    target = tmp_path / "model.bin"
    target.write_bytes(b"keep me")
    with pytest.raises(PretrainedError, match="model.bin is a file"):
        GPT(SMALL, seed=int(rng.integers(1 << 30))).save_pretrained(target)
    assert target.read_bytes() == b"keep me"


def test_tokenizer_from_the_folder_round_trips(tmp_path):
    """The real GPT-2 vocabulary: <|endoftext|> is 50256, and save_pretrained writes the same files."""
    if not (gpt2_dir() / "vocab.json").is_file():
        pytest.skip(f"no GPT-2 vocab.json in {gpt2_dir()}")
    tok = load_gpt2(gpt2_dir())
    assert tok.special_tokens == {"<|endoftext|>": 50256} and tok.vocab_size == 50257
    text = "Hello world, ROMEO:\n  thou art"
    model = GPT(GPTConfig(vocab_size=50257, block_size=8, n_layer=1, n_head=1, n_embd=4))
    out = model.save_pretrained(tmp_path / "out", tokenizer=tok)
    again = load_gpt2(out)
    assert again.encode(text) == tok.encode(text)
    assert tok.encode("Hello world") == [15496, 995]  # GPT-2's published ids
    assert json.loads((out / "vocab.json").read_text()) == json.loads((gpt2_dir() / "vocab.json").read_text())


def test_cropped_block_size_keeps_the_first_positions(tmp_path, rng):
    src = GPT(SMALL, seed=int(rng.integers(1 << 30)))
    model = GPT.from_pretrained(write_folder(tmp_path / "m", src)).crop_block_size(5)
    assert model.config.block_size == 5 and model.wpe.weight.shape == (5, SMALL.n_embd)
    idx = rng.integers(0, SMALL.vocab_size, (1, 5))
    np.testing.assert_allclose(logits_of(model, idx), logits_of(src, idx), rtol=0, atol=0)
    with pytest.raises(ValueError, match="crop_block_size"):
        model.crop_block_size(6)


# ---- optional: parity with transformers (skipped where it is not importable) -------------------

def _hf_model(torch, transformers, seed):
    cfg = transformers.GPT2Config(vocab_size=101, n_positions=24, n_embd=32, n_layer=3, n_head=4)
    torch.manual_seed(seed)
    return transformers.GPT2LMHeadModel(cfg).eval()


def test_transformers_folder_loads_with_the_same_logits(tmp_path, rng):
    torch = peer("torch")
    transformers = peer("transformers")
    hf = _hf_model(torch, transformers, int(rng.integers(1 << 30)))
    hf.save_pretrained(tmp_path / "hf")
    model = GPT.from_pretrained(tmp_path / "hf")
    idx = rng.integers(0, 101, (2, 24))
    with torch.no_grad():
        want = hf(torch.tensor(idx)).logits.numpy()
    np.testing.assert_allclose(logits_of(model, idx), want, rtol=0, atol=1e-5)
    # the KV cache gives the same logits at every position up to the full context
    caches = model.new_caches(2)
    pieces = [model(idx[:, :1], caches=caches)[0].data]
    for t in range(1, 24):
        pieces.append(model(idx[:, t:t + 1], caches=caches)[0].data)
    np.testing.assert_allclose(np.concatenate(pieces, axis=1), want, rtol=0, atol=1e-5)


def test_save_pretrained_loads_into_transformers_unchanged(tmp_path, rng):
    torch = peer("torch")
    transformers = peer("transformers")
    cfg = GPTConfig(vocab_size=101, block_size=24, n_layer=3, n_head=4, n_embd=32)
    model = GPT(cfg, seed=int(rng.integers(1 << 30)))
    model.save_pretrained(tmp_path / "ours")
    hf, info = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "ours", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    idx = rng.integers(0, 101, (2, 24))
    with torch.no_grad():
        got = hf.eval()(torch.tensor(idx)).logits.numpy()
    np.testing.assert_allclose(got, logits_of(model, idx), rtol=0, atol=1e-5)


# ---- sampling: top-k / top-p by hand, streaming, Ctrl-C ------------------------------------------

class FixedDraws:
    """A stand-in generator whose random() returns the given u values, to pick tokens by hand."""

    def __init__(self, *u):
        self.u = list(u)

    def random(self, shape):
        return np.full(shape, self.u.pop(0))


def test_top_k_and_top_p_renormalise_what_they_keep():
    """p = [0.5, 0.3, 0.15, 0.05]. top_k=2 keeps [0.625, 0.375]: u=0.62 -> 0, u=0.63 -> 1.
    top_p=0.9 keeps tokens whose mass before them is < 0.9 (0, 0.5, 0.8; not 0.95):
    [0.5, 0.3, 0.15] / 0.95, cumulative [0.526, 0.842, 1]: u=0.84 -> 1, 0.85 -> 2, 0.9999 -> 2."""
    from tinygrad_gpt.model import sample_from_logits
    logits = np.log([[0.5, 0.3, 0.15, 0.05]])
    pick = lambda u, **kw: int(sample_from_logits(logits, FixedDraws(u), **kw)[0])  # noqa: E731
    assert [pick(0.62, top_k=2), pick(0.63, top_k=2)] == [0, 1]
    assert [pick(0.84, top_p=0.9), pick(0.85, top_p=0.9), pick(0.9999, top_p=0.9)] == [1, 2, 2]
    assert pick(0.9999) == 3  # the control: unfiltered, the last token is reachable


def test_low_temperature_is_greedy_and_on_token_streams_each_step(rng):
    model = GPT(SMALL, seed=int(rng.integers(1 << 30)))
    prompt = rng.integers(0, SMALL.vocab_size, (1, 3))
    seen = []
    cold = model.generate(prompt, 20, temperature=1e-6, seed=1, on_token=lambda ids: seen.append(int(ids[0])))
    assert seen == cold[0, 3:].tolist()  # handed over one at a time, in order, past block_size too
    np.testing.assert_array_equal(cold, model.generate(prompt, 20, top_k=1, seed=2))

    def stop(ids):
        seen.append(int(ids[0]))
        if len(seen) == 3:
            raise KeyboardInterrupt
    seen.clear()
    with pytest.raises(KeyboardInterrupt):
        model.train().generate(prompt, 20, seed=1, on_token=stop)
    assert len(seen) == 3 and model.training  # stopped at once, training mode restored


def test_text_stream_holds_back_a_split_utf8_character():
    """A byte-level tokenizer with no merges has id == byte: 'é' is [0xC3, 0xA9]; nothing is written
    after the first byte, 'é' after the second. A character tokenizer writes each id's character."""
    import io
    from tinygrad_gpt.tokenizers import BasicTokenizer, CharTokenizer
    from tinygrad_gpt.tokenizers.stream import TextStream
    out = io.StringIO()
    stream = TextStream(BasicTokenizer(), out)
    writes = []
    for i in [0x61, 0xC3, 0xA9, 0xC3]:
        stream(i)
        writes.append(out.getvalue())
    stream.close()
    assert writes == ["a", "a", "a\u00e9", "a\u00e9"] and out.getvalue() == "a\u00e9\ufffd\n"
    out = io.StringIO()
    chars = CharTokenizer.from_text("ab\n")
    stream = TextStream(chars, out)
    for i in chars.encode("ba"):
        stream(i)
    assert out.getvalue() == "ba"


@pytest.fixture
def gpt2_folder(tmp_path):
    """A small random model with GPT-2's real tokenizer, saved as a GPT-2 folder."""
    if not (gpt2_dir() / "vocab.json").is_file():
        pytest.skip(f"no GPT-2 vocab.json in {gpt2_dir()}")
    model = GPT(GPTConfig(vocab_size=50257, block_size=32, n_layer=1, n_head=2, n_embd=8), seed=3)
    return model.save_pretrained(tmp_path / "gpt2", tokenizer=load_gpt2(gpt2_dir()))


def _example(*args, **kw):
    import os
    import subprocess
    import sys
    from conftest import REPO
    return subprocess.Popen([sys.executable, str(REPO / "examples" / "shakespeare.py"), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ), **kw)


def test_sample_streams_and_ctrl_c_keeps_what_was_printed(gpt2_folder):
    """The first tokens arrive while the process still runs (streamed, flushed); SIGINT then exits 130
    with everything that was printed before it still in the output."""
    import os
    import signal
    import time
    proc = _example("--init-from", str(gpt2_folder), "--sample", "--prompt", "ROMEO:", "--num-tokens", "1000000",
                    preexec_fn=default_sigint)
    got = b""
    deadline = time.time() + 120
    while len(got) < 40 and time.time() < deadline:
        chunk = os.read(proc.stdout.fileno(), 4096)
        if not chunk:
            break
        got += chunk
    assert proc.poll() is None, "the sampler finished before streaming was observed"
    assert got.startswith(b"ROMEO:") and len(got) >= 40
    proc.send_signal(signal.SIGINT)
    rest, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err.decode()
    assert (got + rest).startswith(got) and b"Traceback" not in err


def test_sample_from_a_folder_is_seeded(gpt2_folder):
    outs = []
    for _ in range(2):
        proc = _example("--init-from", str(gpt2_folder), "--sample", "--prompt", "To be", "--num-tokens", "12",
                        "--seed", "5", "--top-k", "50", "--top-p", "0.9", "--temperature", "0.7")
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
        outs.append(out)
    assert outs[0] == outs[1] and outs[0].startswith(b"To be") and len(outs[0]) > len(b"To be\n")


def test_tied_embedding_backward_makes_no_extra_full_size_copies():
    """wte (V, C) is used by the embedding and by the head: its gradient is the sum of two (V, C)
    arrays. The engine keeps that sum as wte.grad (no copy) and adds into it in place, so backward
    peaks at three (V, C) arrays (the two parts and the sum); copying the sum out, as a gradient
    that an op returned must be, would make four. Measured with tracemalloc (numpy reports to it)."""
    import tracemalloc
    from tinygrad_gpt import nn, ops
    V, C = 20000, 32
    wte = nn.Embedding(V, C, rng=np.random.default_rng(0))
    idx = np.array([[1, 7, 7]])
    # subtle: one untraced pass first, so that compiling or loading the Numba kernels (which
    # allocates) happens outside the measured backward
    ops.cross_entropy(wte(idx) @ wte.weight.T, np.array([[7, 2, 3]])).backward()
    wte.weight.zero_grad()
    logits = wte(idx) @ wte.weight.T                               # (1, 3, V)
    loss = ops.cross_entropy(logits, np.array([[7, 2, 3]]))
    tracemalloc.start()
    loss.backward()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    full = wte.weight.data.nbytes
    assert peak < 3.5 * full, f"backward peaked at {peak / full:.2f} x the (V, C) table"
    # the gradient itself: d/dW of both uses, against a float64 rebuild of the same sum
    w = wte.weight.data.astype(np.float64)
    x = w[idx[0]]                                                  # (3, C)
    z = x @ w.T
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    dz = p.copy()
    dz[np.arange(3), [7, 2, 3]] -= 1
    dz /= 3
    dw = dz.T @ x                                                  # head use
    np.add.at(dw, idx[0], dz @ w)                                  # embedding use
    np.testing.assert_allclose(wte.weight.grad, dw, rtol=1e-4, atol=1e-7)


def test_fine_tune_resume_export_and_reload(gpt2_folder, tmp_path):
    """--init-from trains with the folder's tokenizer and weights (position table cropped to the run's
    block), resumes, and --export-pretrained writes a folder equal to the checkpoint."""
    from conftest import require_shakespeare
    from tinygrad_gpt.runs import load_model
    text = tmp_path / "small.txt"
    text.write_text(require_shakespeare().read_text(encoding="utf-8")[:20000], encoding="utf-8")
    out = tmp_path / "ft"
    common = ["--init-from", str(gpt2_folder), "--data", str(text), "--out", str(out), "--block-size", "16",
              "--batch-size", "2", "--eval-batches", "2", "--sample-tokens", "5", "--no-progress",
              "--lr", "1e-3", "--min-lr", "1e-3", "--grad-accum", "2"]
    for extra in (["--max-iters", "3"], ["--max-iters", "6", "--resume"]):
        proc = _example(*common, *extra)
        stdout, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()[-2000:]
    assert b"resumed from" in stdout and b"at step 3" in stdout
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(line)]
    assert steps[-1] == 6
    trained, meta, _ = load_model(out)
    assert trained.config.block_size == 16 and trained.config.vocab_size == 50257
    start = GPT.from_pretrained(gpt2_folder)
    assert not np.array_equal(trained.h[0].mlp.c_fc.weight.data, start.h[0].mlp.c_fc.weight.data)
    proc = _example("--out", str(out), "--export-pretrained", str(tmp_path / "exported"))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()
    again = GPT.from_pretrained(tmp_path / "exported")
    assert again.config == trained.config
    assert_same_weights(again, trained)
    bad = _example("--init-from", str(gpt2_folder), "--n-layer", "3", "--data", str(text), "--out", str(out))
    _, err = bad.communicate(timeout=120)
    assert bad.returncode == 2 and b"--n-layer" in err and b"Traceback" not in err


def test_accumulating_backward_calls_adds_in_place_and_keeps_leaves_apart():
    """y = a + b hands the same array to both leaves: after two backward calls a.grad and b.grad
    are 2 each, separate arrays, and a.grad is the array of the first call, added into in place."""
    from tinygrad_gpt.tensor import Tensor
    a = Tensor(np.zeros(4), requires_grad=True)
    b = Tensor(np.zeros(4), requires_grad=True)
    (a + b).sum().backward()
    first = a.grad
    (a + b).sum().backward()
    assert a.grad is first and a.grad is not b.grad
    np.testing.assert_array_equal(a.grad, [2, 2, 2, 2])
    np.testing.assert_array_equal(b.grad, [2, 2, 2, 2])


# ---- files that lie: names leading out of the folder, non-finite weights, malformed headers ---------------
def _shard_folder(tmp_path, rng, shard_name):
    """A folder whose index names `shard_name` for every tensor; a real shard sits outside the folder."""
    src = GPT(SMALL, seed=int(rng.integers(1 << 30)))
    outside = write_folder(tmp_path / "outside", src)
    (outside / "model.safetensors").rename(outside / "x.safetensors")
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(hf_config(SMALL)))
    names = safetensors.numpy.load_file(str(outside / "x.safetensors"))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {n: shard_name for n in names}}))
    return folder


@pytest.mark.parametrize("shard", ["../outside/x.safetensors", "/etc/passwd", "..", "a\\b.safetensors"])
def test_a_shard_index_may_not_name_files_outside_the_folder(tmp_path, rng, shard):
    folder = _shard_folder(tmp_path, rng, shard)
    with pytest.raises(PretrainedError, match=r"model\.safetensors\.index\.json.*plain file name"):
        GPT.from_pretrained(folder)


def test_a_shard_index_naming_its_own_files_loads(tmp_path, rng):
    folder = _shard_folder(tmp_path, rng, "x.safetensors")
    (tmp_path / "outside" / "x.safetensors").rename(folder / "x.safetensors")
    GPT.from_pretrained(folder)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_weights_are_refused_naming_the_tensor(tmp_path, rng, value):
    src = GPT(SMALL, seed=int(rng.integers(1 << 30)))
    bad = np.asarray(src.h[1].mlp.c_fc.weight.data, np.float32).copy()
    bad[3, 5] = value
    folder = write_folder(tmp_path / "m", src, change={"h.1.mlp.c_fc.weight": bad})
    with pytest.raises(PretrainedError, match=r"model\.safetensors: tensor 'transformer\.h\.1\.mlp\.c_fc\.weight' "
                                              r"holds 1 non-finite"):
        GPT.from_pretrained(folder)


def _rewrite_header(path, edit):
    """Rewrite a safetensors file's JSON header through `edit` (the data stays as it was)."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    edit(header)
    text = json.dumps(header).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + raw[8 + n:])


@pytest.mark.parametrize("field, value, says", [
    ("data_offsets", ["0", "40"], "data_offsets must be a list of two integers"),
    ("data_offsets", [0], "data_offsets must be a list of two integers"),
    ("data_offsets", [True, 40], "data_offsets must be a list of two integers"),
    ("data_offsets", [-8, 32], "needs 32 bytes at data_offsets"),
    ("data_offsets", [0, 10 ** 30], "needs 32 bytes at data_offsets"),
    ("shape", [8, "1"], "shape must be a list of integers"),
    ("shape", [-8], "shape must be a list of integers"),
    ("shape", [10 ** 20, 10 ** 20], f"needs 4{'0' * 40} bytes"),
    ("shape", None, "shape must be a list of integers"),
    ("dtype", 7, "has dtype 7"),
    ("dtype", "I64", "has dtype 'I64'")])
def test_a_malformed_header_entry_is_named(tmp_path, rng, field, value, says):
    """ln_f.bias (8 float32 = 32 bytes) gets a bad header field: an error naming file and tensor, no TypeError."""
    folder = write_folder(tmp_path / "m", GPT(SMALL, seed=int(rng.integers(1 << 30))))
    _rewrite_header(folder / "model.safetensors", lambda h: h["transformer.ln_f.bias"].__setitem__(field, value))
    with pytest.raises(PretrainedError, match=r"model\.safetensors: tensor 'transformer\.ln_f\.bias'.*" + says):
        GPT.from_pretrained(folder)


def test_a_config_that_contradicts_the_weights_is_refused_before_allocating(tmp_path, rng):
    """vocab_size 10**12 would need 32 TB for wte at n_embd 8: refused from the header's (37, 8)."""
    src = GPT(SMALL, seed=int(rng.integers(1 << 30)))
    folder = write_folder(tmp_path / "m", src, config=hf_config(SMALL, vocab_size=10 ** 12))
    with pytest.raises(PretrainedError, match=r"'transformer\.wte\.weight' has shape \(37, 8\) in the file, "
                                              r"config\.json gives \(1000000000000, 8\)"):
        GPT.from_pretrained(folder)


@pytest.mark.parametrize("bias", [True, False])
def test_expected_shapes_are_the_model_parameters(bias):
    cfg = GPTConfig(vocab_size=11, block_size=5, n_layer=3, n_head=2, n_embd=4, bias=bias)
    assert GPT.parameter_shapes(cfg) == {n: p.shape for n, p in GPT(cfg).named_parameters()}


def test_weights_are_loaded_without_a_random_initialisation_first(tmp_path, rng, monkeypatch):
    """GPT(init=False) draws nothing (zeros, LayerNorm weights one); from_pretrained builds it so, then
    loads every weight: no normal() draw is made while loading."""
    model = GPT(SMALL, init=False)
    for name, p in model.named_parameters():
        want = 1.0 if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")) else 0.0
        assert np.all(p.data == want), name
    src = GPT(SMALL, seed=int(rng.integers(1 << 30)))
    folder = write_folder(tmp_path / "m", src)
    draws, real = [], np.random.default_rng

    class Spy:
        def __init__(self, *args, **kwargs):
            self.generator = real(*args, **kwargs)

        def normal(self, *args, **kwargs):
            draws.append(args)
            return self.generator.normal(*args, **kwargs)

        def __getattr__(self, name):
            return getattr(self.generator, name)
    monkeypatch.setattr(np.random, "default_rng", Spy)
    GPT(SMALL)
    assert draws, "the spy sees a random initialisation"
    draws.clear()
    assert_same_weights(GPT.from_pretrained(folder), src)
    assert draws == []


def test_a_tokenizer_with_more_ids_than_the_model_is_refused(tmp_path, rng):
    """A tokenizer of 300 ids beside a config.json of vocab_size 280: ids 280..299 have no row."""
    from tinygrad_gpt.pretrained import load_tokenizer
    from tinygrad_gpt.tokenizers import BPETokenizer
    tok = BPETokenizer().train(" ".join(str(i * 7919) for i in range(3000)), 300)
    assert tok.vocab_size == 300
    cfg = GPTConfig(**{**SMALL.__dict__, "vocab_size": 280})
    folder = GPT(cfg, seed=1).save_pretrained(tmp_path / "m", tokenizer=tok)
    with pytest.raises(PretrainedError, match=r"has 300 ids, more than config\.json's vocab_size 280"):
        load_tokenizer(folder)
    roomy = GPT(GPTConfig(**{**SMALL.__dict__, "vocab_size": 304}), seed=1).save_pretrained(tmp_path / "r", tokenizer=tok)
    assert load_tokenizer(roomy).vocab_size == 300  # fewer ids than rows (a padded vocabulary) is fine


# ---- only GPT-2's architecture crosses: the modern fields are refused both ways, by name ----------
@pytest.mark.parametrize("fields, says", [
    (dict(position="rotary", norm="rmsnorm"), "position='rotary', norm='rmsnorm'"),
    (dict(qk_norm=True), "qk_norm=True"),
    (dict(activation="relu2"), "activation='relu2'"),
    (dict(logit_softcap=15.0), "logit_softcap=15.0"),
    (dict(bias=False), "bias=False"),
])
def test_save_pretrained_refuses_another_architecture_naming_the_fields(tmp_path, fields, says):
    """The error names each field that is not GPT-2's (and GPT-2's value), and nothing is written."""
    model = GPT(GPTConfig(**{**SMALL.__dict__, **fields}), seed=0)
    with pytest.raises(PretrainedError, match=f"this model has {says} \\(GPT-2: "):
        model.save_pretrained(tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(PretrainedError, match=says):
        config_to_hf(model.config)


def test_zero_init_is_how_a_model_starts_and_exports_as_gpt2(tmp_path):
    model = GPT(GPTConfig(**{**SMALL.__dict__, "zero_init": True}), seed=0)
    back = GPT.from_pretrained(model.save_pretrained(tmp_path / "out"))
    assert back.config == SMALL                             # zero_init is not part of config.json
    assert_same_weights(back, model)


@pytest.mark.parametrize("extra, says", [
    (dict(rope_theta=10000.0, rms_norm_eps=1e-6),
     r"describes position='rotary', norm='rmsnorm' \(from the keys rope_theta, rms_norm_eps\)"),
    (dict(final_logit_softcapping=30.0), r"describes logit_softcap=30.0 \(from the keys final_logit_softcapping\)"),
    (dict(activation_function="relu2"), r"describes activation='relu2'"),
    (dict(qk_layernorm=True), r"describes qk_norm=True"),
])
def test_from_pretrained_refuses_a_config_of_another_architecture_naming_the_fields(tmp_path, rng, extra, says):
    """A config.json with the keys other Hugging Face architectures use for rotary positions,
    RMSNorm, soft-capping, ReLU^2 or QK-norm is refused before any weight is read."""
    write_folder(tmp_path / "m", GPT(SMALL, seed=0), config=hf_config(SMALL, **extra))
    with pytest.raises(PretrainedError, match=says + ".*not GPT-2's architecture"):
        GPT.from_pretrained(tmp_path / "m")
    with pytest.raises(PretrainedError, match=says):
        config_from_hf(hf_config(SMALL, **extra), "config.json")
    # the same keys at a GPT-2 value (absent, null, false) load
    assert GPTConfig(**config_from_hf(hf_config(SMALL, rope_scaling=None, qk_layernorm=False,
                                                position_embedding_type="absolute"), "config.json")) == SMALL
