"""Hugging Face GPT-2 folders: load one into a `GPT`, write a `GPT` back as one.

A folder as users download it from the Hugging Face hub holds
    config.json          n_layer, n_head, n_embd, n_positions, vocab_size, layer_norm_epsilon, ...
    model.safetensors    the weights (or model.safetensors.index.json + shards for the big sizes)
    vocab.json merges.txt   the byte-level BPE tokenizer (`BPETokenizer.from_gpt2`)
Every GPT-2 size reads from config.json alone (distilgpt2, gpt2, gpt2-medium, -large, -xl).

The weight names are ours already (`wte.weight`, `h.0.attn.c_attn.weight`, ...; Linear weights
(in, out), which is GPT-2's Conv1D layout), so loading renames nothing and transposes nothing. What
differs between files, and is handled here:
  - the names carry a `transformer.` prefix (what `GPT2LMHeadModel.save_pretrained` writes) or not
    (OpenAI's original `gpt2` upload);
  - `h.{i}.attn.bias` (the causal mask) and `h.{i}.attn.masked_bias` are buffers, not weights:
    dropped;
  - `lm_head.weight`, where a file has it, is the tied copy of `wte.weight`: checked equal, dropped;
  - dtypes F32, F16, BF16 (and F64). NumPy has no bfloat16, so a BF16 tensor is read as its raw
    uint16 bits and widened to float32 by shifting them into the high half of a 32-bit word
    (bfloat16 is float32 with the low 16 mantissa bits cut off, so this is exact). Everything is
    cast to float32 unless another dtype is asked for.
The safetensors file is parsed here (8-byte header length, JSON header, raw little-endian data)
rather than through the `safetensors` package, because that package's numpy side cannot return
bfloat16; writing goes through the package (safetensors.numpy.save_file).

Saving writes config.json (the keys GPT2LMHeadModel reads, activation "gelu_new", tied
embeddings), model.safetensors with `transformer.`-prefixed names and no lm_head (transformers
re-ties it from wte, as in the files it writes itself), and vocab.json / merges.txt when a
tokenizer is given. Files are written atomically (temp file, fsync, rename).

Follows: nanoGPT `GPT.from_pretrained`, the Hugging Face GPT-2 file layout, the safetensors format.
Deliberately does not: read `pytorch_model.bin` (a pickle; the error says how to convert it),
download anything, keep weights memory-mapped, or load other architectures.
"""
import json
import os
import pathlib
import re

import numpy as np

from tinygrad_gpt import backend, checkpoint

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
PREFIX = "transformer."
_BUFFER = re.compile(r"^h\.\d+\.attn\.(bias|masked_bias)$")  # the causal-mask buffers, not weights
_DTYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "F64": np.dtype("<f8"), "BF16": np.dtype("<u2")}
# activations equal to GPT-2's tanh-approximated GELU (tinygrad_gpt/kernels/reference.py gelu_forward)
_GELU_TANH = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")


class PretrainedError(ValueError):
    """A GPT-2 folder exists but its content does not make a GPT (bad config, missing tensor, ...)."""


# ---------------------------------------------------------------------------------------------
# config.json <-> GPTConfig
# ---------------------------------------------------------------------------------------------

def config_from_hf(hf, source, dropout=0.0):
    """GPTConfig from the dict of a GPT-2 config.json (`source` names the file in errors)."""
    from tinygrad_gpt.model import GPTConfig

    def need(key):
        if key not in hf:
            raise PretrainedError(f"{source}: missing the key {key!r}")
        value = hf[key]
        if not isinstance(value, int) or isinstance(value, bool):
            raise PretrainedError(f"{source}: {key} must be an integer, got {value!r}")
        return value

    if hf.get("model_type", "gpt2") != "gpt2":
        raise PretrainedError(f"{source}: model_type is {hf.get('model_type')!r}, only 'gpt2' loads")
    act = hf.get("activation_function", "gelu_new")
    if act not in _GELU_TANH:
        raise PretrainedError(f"{source}: activation_function {act!r} is not supported; the model uses "
                              f"GPT-2's tanh GELU ({' / '.join(_GELU_TANH)})")
    n_embd = need("n_embd")
    n_inner = hf.get("n_inner")
    if n_inner is not None and n_inner != 4 * n_embd:
        raise PretrainedError(f"{source}: n_inner {n_inner} is not 4 * n_embd = {4 * n_embd}, which the MLP assumes")
    for key, ok in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                    ("add_cross_attention", False)):
        if hf.get(key, ok) != ok:
            raise PretrainedError(f"{source}: {key}={hf[key]!r} is not supported (only {ok})")
    if not hf.get("tie_word_embeddings", True):
        raise PretrainedError(f"{source}: tie_word_embeddings is false; the model ties lm_head to wte")
    eps = hf.get("layer_norm_epsilon", 1e-5)
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not eps > 0:
        raise PretrainedError(f"{source}: layer_norm_epsilon must be a number > 0, got {eps!r}")
    try:
        return GPTConfig(vocab_size=need("vocab_size"), block_size=need("n_positions"), n_layer=need("n_layer"),
                         n_head=need("n_head"), n_embd=n_embd, dropout=dropout, bias=True,
                         layer_norm_epsilon=float(eps))
    except ValueError as exc:
        raise PretrainedError(f"{source}: {exc}") from None


def config_to_hf(config, dtype="float32"):
    """The config.json dict GPT2LMHeadModel reads for `config` (a GPTConfig)."""
    if not config.bias:
        raise PretrainedError("save_pretrained: GPT-2 has biases in every Linear and LayerNorm; "
                              "this model was built with bias=False")
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.block_size,
        "n_ctx": config.block_size,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": None,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": config.layer_norm_epsilon,
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": 0.0,  # the fused attention never materialises its probabilities to drop them
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": True,
        "bos_token_id": 50256,
        "eos_token_id": 50256,
        "use_cache": True,
        "dtype": dtype,
    }


# ---------------------------------------------------------------------------------------------
# safetensors, read by hand (bfloat16 included)
# ---------------------------------------------------------------------------------------------

def iter_safetensors(path, dtype=np.float32):
    """(name, numpy array of `dtype`) for each tensor of a .safetensors file, read one at a time.

    F32 / F16 / BF16 / F64 tensors. The header is validated first (offsets inside the file, byte
    counts that match the shapes), so a truncated file is reported by tensor name.
    """
    path = pathlib.Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise PretrainedError(f"{path}: {size} bytes, too short for a safetensors header")
        n = int.from_bytes(head, "little")
        if n > size - 8:
            raise PretrainedError(f"{path}: the header claims {n} bytes, the file holds {size - 8} after the length")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise PretrainedError(f"{path}: the header is not valid JSON ({exc})") from None
        if not isinstance(header, dict):
            raise PretrainedError(f"{path}: the header is not a JSON object")
        base = 8 + n
        entries = []
        for name, info in header.items():
            if name == "__metadata__":
                continue
            try:
                kind, shape, (start, end) = info["dtype"], tuple(int(d) for d in info["shape"]), info["data_offsets"]
            except (KeyError, TypeError, ValueError):
                raise PretrainedError(f"{path}: tensor {name!r} has a malformed header entry {info!r:.200}") from None
            if kind not in _DTYPES:
                raise PretrainedError(f"{path}: tensor {name!r} has dtype {kind}; only "
                                      f"{', '.join(sorted(_DTYPES))} load")
            count = int(np.prod(shape, dtype=np.int64))
            if end - start != count * _DTYPES[kind].itemsize or start < 0 or base + end > size:
                raise PretrainedError(f"{path}: tensor {name!r} ({kind}, shape {shape}) needs bytes "
                                      f"[{start}, {end}) of the data, which the file (truncated?) does not hold")
            entries.append((start, name, kind, shape, count))
        for start, name, kind, shape, count in sorted(entries):
            f.seek(base + start)
            a = np.fromfile(f, dtype=_DTYPES[kind], count=count).reshape(shape)
            if kind == "BF16":  # the high 16 bits of a float32: widen exactly
                a = (a.astype(np.uint32) << 16).view(np.float32)
            yield name, a.astype(dtype, copy=False)


def read_safetensors(path, dtype=np.float32):
    """{name: numpy array of `dtype`} of a whole .safetensors file."""
    return dict(iter_safetensors(path, dtype))


def _weight_files(directory):
    """The .safetensors files of a folder: model.safetensors, or the shards its index names."""
    single, index = directory / WEIGHTS_NAME, directory / INDEX_NAME
    if single.is_file():
        return [single]
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            shards = sorted(set(weight_map.values()))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise PretrainedError(f"{index}: not a safetensors index with a 'weight_map' ({exc!r})") from None
        for shard in shards:
            if not (directory / shard).is_file():
                raise FileNotFoundError(f"{index} names the shard {shard}, which does not exist")
        return [directory / shard for shard in shards]
    if any((directory / name).is_file() for name in ("pytorch_model.bin", "pytorch_model.bin.index.json")):
        raise PretrainedError(
            f"{directory} holds pytorch_model.bin but no {WEIGHTS_NAME}; convert it to safetensors once, with "
            f"PyTorch and transformers installed: python -c \"from transformers import GPT2LMHeadModel; "
            f"GPT2LMHeadModel.from_pretrained('{directory}').save_pretrained('{directory}', "
            f"safe_serialization=True)\"")
    raise FileNotFoundError(f"{directory}: no {WEIGHTS_NAME} (expected a Hugging Face GPT-2 folder: "
                            f"config.json, model.safetensors, vocab.json, merges.txt)")


# ---------------------------------------------------------------------------------------------
# the two entry points (GPT.from_pretrained / GPT.save_pretrained call these)
# ---------------------------------------------------------------------------------------------

def read_config(directory):
    """The dict of `directory`/config.json."""
    config_path = pathlib.Path(directory).expanduser() / CONFIG_NAME
    if not config_path.is_file():
        raise FileNotFoundError(f"from_pretrained: {config_path} does not exist (a GPT-2 folder needs config.json)")
    try:
        hf = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PretrainedError(f"{config_path}: not valid JSON ({exc})") from None
    if not isinstance(hf, dict):
        raise PretrainedError(f"{config_path}: expected a JSON object")
    return hf


def from_pretrained(directory, dtype=np.float32, device="cpu", dropout=0.0):
    """A GPT with the weights of the Hugging Face GPT-2 folder `directory` (see the file docstring)."""
    from tinygrad_gpt.model import GPT

    directory = pathlib.Path(directory).expanduser()
    if not directory.is_dir():
        raise FileNotFoundError(f"from_pretrained: {directory} is not a directory")
    hf = read_config(directory)
    config = config_from_hf(hf, directory / CONFIG_NAME, dropout=dropout)
    dtype = np.dtype(dtype)
    files = _weight_files(directory)
    model = GPT(config, seed=0, dtype=dtype, device=device)
    params = dict(model.named_parameters())
    loaded, extra, lm_head = set(), [], None
    for path in files:
        for name, a in iter_safetensors(path, dtype):
            key = name[len(PREFIX):] if name.startswith(PREFIX) else name
            if _BUFFER.match(key):
                continue
            if key == "lm_head.weight":
                lm_head = a  # the tied copy of wte: compared below, never loaded
                continue
            if key not in params:
                extra.append(name)
                continue
            if key in loaded:
                raise PretrainedError(f"{path}: tensor {key!r} appears twice (with and without the "
                                      f"{PREFIX!r} prefix?)")
            p = params[key]
            if a.shape != p.shape:
                raise PretrainedError(f"{path}: tensor {name!r} has shape {a.shape} in the file, "
                                      f"config.json gives {p.shape}")
            # one tensor at a time replaces its random twin, so peak memory stays near one model
            p.data = backend.to_device(np.ascontiguousarray(a), device)
            p.grad = None
            loaded.add(key)
    missing = [n for n in params if n not in loaded]
    if missing or extra:
        raise PretrainedError(f"{directory}: the weights do not match config.json (n_layer {config.n_layer}): "
                              f"missing {missing[:8]}{'...' if len(missing) > 8 else ''}, "
                              f"extra {extra[:8]}{'...' if len(extra) > 8 else ''}")
    if lm_head is not None:
        wte = backend.to_numpy(model.wte.weight.data)
        if lm_head.shape != wte.shape or not np.array_equal(lm_head, wte):
            raise PretrainedError(f"{directory}: lm_head.weight (shape {lm_head.shape}) differs from wte.weight "
                                  f"(shape {wte.shape}); only a head tied to the embedding loads")
    return model


def save_pretrained(model, directory, tokenizer=None):
    """Write `model` (and the BPE `tokenizer`, if given) as a folder GPT2LMHeadModel.from_pretrained reads."""
    st = checkpoint._safetensors_numpy()
    directory = pathlib.Path(directory).expanduser()
    if directory.exists() and not directory.is_dir():
        raise PretrainedError(f"save_pretrained: {directory} is a file; a GPT-2 folder is a directory "
                              f"(config.json, model.safetensors, ...): give a directory path")
    directory.mkdir(parents=True, exist_ok=True)
    state = {}
    dtype = None
    for name, p in model.named_parameters():
        a = np.ascontiguousarray(backend.to_numpy(p.data))
        dtype = dtype or a.dtype
        state[PREFIX + name] = a
    hf = config_to_hf(model.config, dtype=str(dtype))
    checkpoint.write_atomic(directory / WEIGHTS_NAME,
                            lambda tmp: st.save_file(state, tmp, metadata={"format": "pt"}))

    def write_json(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(hf, f, indent=2)
            f.write("\n")
    checkpoint.write_atomic(directory / CONFIG_NAME, write_json)
    umask = os.umask(0)
    os.umask(umask)
    for name in (WEIGHTS_NAME, CONFIG_NAME):  # temp files are made 0600; give them a plain file's mode
        os.chmod(directory / name, 0o666 & ~umask)
    if tokenizer is not None:
        if not hasattr(tokenizer, "save_gpt2"):
            raise TypeError(f"save_pretrained: tokenizer must be a BPETokenizer (it writes vocab.json and "
                            f"merges.txt), got {type(tokenizer).__name__}")
        tokenizer.save_gpt2(os.fspath(directory))
    return directory
