"""Hugging Face GPT-2 folders: load one into a `GPT`, write a `GPT` back as one.

A folder as users download it from the Hugging Face hub holds
    config.json          n_layer, n_head, n_embd, n_positions, vocab_size, layer_norm_epsilon, ...
    model.safetensors    the weights (or model.safetensors.index.json + shards for the big sizes)
    vocab.json merges.txt   the byte-level BPE tokenizer (`tokenizers.load_gpt2`; or tokenizer.json)
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

Nothing in a folder is trusted before it is checked: every header's fields (dtype, shape, offsets
inside the file) and every tensor's shape against config.json before the model is allocated (a
vocab_size of 10**12 is refused, not attempted), a shard index's names as plain file names of the
folder (`checkpoint.file_in_directory`), every weight finite, and the tokenizer no larger than the
model's vocabulary (`load_tokenizer`).

Saving writes config.json (the keys GPT2LMHeadModel reads, activation "gelu_new", tied
embeddings), model.safetensors with `transformer.`-prefixed names and no lm_head (transformers
re-ties it from wte, as in the files it writes itself), and vocab.json / merges.txt when a
tokenizer is given. Files are written atomically (temp file, fsync, rename).

Only GPT-2's architecture crosses this border, both ways. `save_pretrained` refuses a model whose
GPTConfig leaves it (rotary positions, RMSNorm, QK-norm, ReLU^2, soft-capped logits, no biases:
`architecture_differences`), and `config_from_hf` a config.json that describes one of those by the
keys other Hugging Face architectures use for them (rope_theta, rms_norm_eps, ...); either error
names the GPTConfig fields, e.g. "position='rotary', norm='rmsnorm'". zero_init is not among them:
it is how a model starts, not what it is, so such a model exports as the GPT-2 it is.

Follows: nanoGPT `GPT.from_pretrained`, the Hugging Face GPT-2 file layout, the safetensors format.
Deliberately does not: read `pytorch_model.bin` (a pickle; the error says how to convert it),
download anything, keep weights memory-mapped, or load other architectures.
"""
import json
import math
import os
import pathlib
import re

import numpy as np

from tinygrad_gpt import backend, checkpoint
from tinygrad_gpt.tokenizers import BasicTokenizer, load_gpt2, save_gpt2

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


# the GPTConfig fields that GPT-2's architecture fixes, with GPT-2's value (model.GPTConfig's defaults)
GPT2_ARCHITECTURE = {"bias": True, "position": "learned", "norm": "layernorm", "qk_norm": False,
                     "activation": "gelu", "logit_softcap": 0.0}


def architecture_differences(config):
    """The fields of `config` (a GPTConfig) whose value is not GPT-2's, as the errors name them:
    "position='rotary', norm='rmsnorm'"; "" for GPT-2's architecture."""
    return ", ".join(f"{name}={getattr(config, name)!r}" for name, gpt2 in GPT2_ARCHITECTURE.items()
                     if getattr(config, name) != gpt2)


def _hf_architecture_fields(hf):
    """[(GPTConfig field as the errors name it, config.json key)] for each key of `hf` by which
    another Hugging Face architecture describes one of GPTConfig's non-GPT-2 fields."""
    found = []
    for key in ("rope_theta", "rotary_dim", "rotary_pct", "rope_scaling"):
        if hf.get(key) is not None:
            found.append(("position='rotary'", key))
    if hf.get("position_embedding_type", "absolute") != "absolute":
        found.append((f"position={hf['position_embedding_type']!r}", "position_embedding_type"))
    if hf.get("rms_norm_eps") is not None:
        found.append(("norm='rmsnorm'", "rms_norm_eps"))
    for key in ("qk_layernorm", "use_qk_norm", "qk_norm"):
        if hf.get(key):
            found.append(("qk_norm=True", key))
    if hf.get("activation_function") in ("relu2", "relu_squared"):
        found.append(("activation='relu2'", "activation_function"))
    if hf.get("final_logit_softcapping"):
        found.append((f"logit_softcap={hf['final_logit_softcapping']!r}", "final_logit_softcapping"))
    return found


# ---------------------------------------------------------------------------------------------
# config.json <-> GPTConfig
# ---------------------------------------------------------------------------------------------

def config_from_hf(hf, source, dropout=0.0):
    """{GPTConfig field: value} from the dict of a GPT-2 config.json (`source` names the file in
    errors); what is GPT-2's and not supported is refused here, the fields' ranges by GPTConfig."""

    def need(key):
        if key not in hf:
            raise PretrainedError(f"{source}: missing the key {key!r}")
        value = hf[key]
        if not isinstance(value, int) or isinstance(value, bool):
            raise PretrainedError(f"{source}: {key} must be an integer, got {value!r}")
        return value

    if hf.get("model_type", "gpt2") != "gpt2":
        raise PretrainedError(f"{source}: model_type is {hf.get('model_type')!r}, only 'gpt2' loads")
    modern = _hf_architecture_fields(hf)
    if modern:
        raise PretrainedError(f"{source} describes {', '.join(field for field, _ in modern)} (from the keys "
                              f"{', '.join(key for _, key in modern)}): not GPT-2's architecture, the only one "
                              f"that loads from a Hugging Face folder")
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
    return dict(vocab_size=need("vocab_size"), block_size=need("n_positions"), n_layer=need("n_layer"),
                n_head=need("n_head"), n_embd=n_embd, dropout=dropout, layer_norm_epsilon=float(eps),
                **GPT2_ARCHITECTURE)


def config_to_hf(config, dtype="float32"):
    """The config.json dict GPT2LMHeadModel reads for `config` (a GPTConfig); PretrainedError
    naming the fields if `config` is not GPT-2's architecture."""
    differences = architecture_differences(config)
    if differences:
        gpt2 = ", ".join(f"{name}={value!r}" for name, value in GPT2_ARCHITECTURE.items()
                         if getattr(config, name) != value)
        raise PretrainedError(f"save_pretrained: GPT2LMHeadModel holds GPT-2's architecture only, and this model "
                              f"has {differences} (GPT-2: {gpt2})")
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

def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def read_header(path):
    """(entries, base) of a .safetensors file: entries {name: (dtype, shape, start, end)}, checked.

    Each entry must have a known dtype string, a shape of ints >= 0, and data_offsets of two
    ints 0 <= start <= end whose span holds exactly the shape's bytes and lies inside the file.
    `base` is the offset of the data (8 + the header's length). Errors name the file and tensor.
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
    entries = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        where = f"{path}: tensor {name!r}"
        if not isinstance(info, dict):
            raise PretrainedError(f"{where}: the header entry must be an object, got {info!r:.200}")
        kind, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if not isinstance(kind, str) or kind not in _DTYPES:
            raise PretrainedError(f"{where} has dtype {kind!r:.50}; only {', '.join(sorted(_DTYPES))} load")
        if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
            raise PretrainedError(f"{where}: shape must be a list of integers >= 0, got {shape!r:.200}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)):
            raise PretrainedError(f"{where}: data_offsets must be a list of two integers [start, end], "
                                  f"got {offsets!r:.200}")
        start, end = offsets
        shape = tuple(shape)
        count = math.prod(shape)  # Python ints: no overflow, however large the claimed shape
        if not 0 <= start <= end or end - start != count * _DTYPES[kind].itemsize or base + end > size:
            raise PretrainedError(f"{where} ({kind}, shape {shape}) needs {count * _DTYPES[kind].itemsize} "
                                  f"bytes at data_offsets [{start}, {end}) of {size - base} bytes of data: "
                                  f"the header is inconsistent or the file truncated")
        entries[name] = (kind, shape, start, end)
    return entries, base


def iter_safetensors(path, dtype=np.float32):
    """(name, numpy array of `dtype`) for each tensor of a .safetensors file, read one at a time.

    F32 / F16 / BF16 / F64 tensors. The header is validated first (`read_header`: field types,
    offsets inside the file, byte counts that match the shapes), so a truncated or hand-made file
    is reported by tensor name. Values are returned as stored (NaN included: from_pretrained checks).
    """
    path = pathlib.Path(path)
    entries, base = read_header(path)
    with open(path, "rb") as f:
        for name, (kind, shape, start, end) in sorted(entries.items(), key=lambda item: item[1][2]):
            f.seek(base + start)
            a = np.fromfile(f, dtype=_DTYPES[kind], count=math.prod(shape)).reshape(shape)
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
        # a shard is a file of this folder: the index may not lead elsewhere (but a hub cache
        # snapshot's files are links to ../../blobs/, so links are followed)
        paths = [checkpoint.file_in_directory(directory, shard, index, error=PretrainedError, links_may_leave=True)
                 for shard in shards]
        for shard, path in zip(shards, paths):
            if not path.is_file():
                raise FileNotFoundError(f"{index} names the shard {shard}, which does not exist")
        return paths
    if any((directory / name).is_file() for name in ("pytorch_model.bin", "pytorch_model.bin.index.json")):
        raise PretrainedError(
            f"{directory} holds pytorch_model.bin but no {WEIGHTS_NAME}; convert it to safetensors once, with "
            f"PyTorch and transformers installed: python -c \"from transformers import GPT2LMHeadModel; "
            f"GPT2LMHeadModel.from_pretrained('{directory}').save_pretrained('{directory}', "
            f"safe_serialization=True)\"")
    raise FileNotFoundError(f"{directory}: no {WEIGHTS_NAME} (expected a Hugging Face GPT-2 folder: "
                            f"config.json, model.safetensors, vocab.json, merges.txt)")


# ---------------------------------------------------------------------------------------------
# the entry points (GPT.from_pretrained and GPT.save_pretrained call these)
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


def plan_weights(directory, want):
    """{path: {file name: our name}} of the tensors to load, after checking every header against
    `want` ({our name: shape}: GPT.parameter_shapes of config.json's config).

    Drops the attention-mask buffers; keeps "lm_head.weight" (the tied copy, compared, not loaded).
    Raises PretrainedError for a malformed header, a tensor twice, missing or extra tensors, or a
    shape config.json does not give, all before anything is allocated.
    """
    directory = pathlib.Path(directory).expanduser()
    files = _weight_files(directory)
    plan, seen, extra = {}, {}, []
    for path in files:
        entries, _ = read_header(path)
        plan[path] = {}
        for name, (kind, shape, start, end) in entries.items():
            key = name[len(PREFIX):] if name.startswith(PREFIX) else name
            if _BUFFER.match(key):
                continue
            if key == "lm_head.weight":
                plan[path][name] = key
                continue
            if key not in want:
                extra.append(name)
                continue
            if key in seen:
                raise PretrainedError(f"{path}: tensor {key!r} appears twice (also in {seen[key]}; with and "
                                      f"without the {PREFIX!r} prefix?)")
            if shape != want[key]:
                raise PretrainedError(f"{path}: tensor {name!r} has shape {shape} in the file, config.json "
                                      f"gives {want[key]}")
            seen[key] = path
            plan[path][name] = key
    missing = [n for n in want if n not in seen]
    if missing or extra:
        raise PretrainedError(f"{directory}: the weights do not match config.json (n_layer "
                              f"{sum(1 for k in want if k.endswith('.ln_1.weight'))}): "
                              f"missing {missing[:8]}{'...' if len(missing) > 8 else ''}, "
                              f"extra {extra[:8]}{'...' if len(extra) > 8 else ''}")
    return plan


def load_weights(model, plan, dtype=np.float32):
    """Fill `model` (built without a random initialisation: GPT(init=False)) from the files of
    `plan` (plan_weights'), each tensor checked finite and replacing its zero twin one at a time,
    so peak memory stays near one model. The lm_head, where a file has one, must equal wte."""
    device = model.device
    params = dict(model.named_parameters())
    lm_head, source = None, None
    for path, names in plan.items():
        for name, a in iter_safetensors(path, dtype):
            key = names.get(name)
            if key is None:
                continue
            checkpoint.check_finite(name, a, str(path), error=PretrainedError)
            if key == "lm_head.weight":
                lm_head, source = a, path  # the tied copy of wte: compared below, never loaded
                continue
            p = params[key]
            p.data = backend.to_device(np.ascontiguousarray(a), device)
            p.grad = None
    if lm_head is not None:
        wte = backend.to_numpy(model.wte.weight.data)
        if lm_head.shape != wte.shape or not np.array_equal(lm_head, wte):
            raise PretrainedError(f"{source}: lm_head.weight (shape {lm_head.shape}) differs from wte.weight "
                                  f"(shape {wte.shape}); only a head tied to the embedding loads")
    return model


def load_tokenizer(directory, vocab_size=None):
    """The byte-level BPE tokenizer of the GPT-2 folder `directory` (vocab.json + merges.txt, or
    tokenizer.json).

    It may not have more ids than the model has embedding rows (`vocab_size`; config.json's when
    None): an id >= vocab_size would fail at the first sample, so it is refused here, naming both.
    """
    directory = pathlib.Path(directory).expanduser()
    if vocab_size is None:
        vocab_size = config_from_hf(read_config(directory), directory / CONFIG_NAME)["vocab_size"]
    tokenizer = load_gpt2(directory)
    if tokenizer.vocab_size > vocab_size:
        raise PretrainedError(f"{directory}: the tokenizer has {tokenizer.vocab_size} ids, more than config.json's "
                              f"vocab_size {vocab_size}: the model has no embedding for ids {vocab_size} and up")
    return tokenizer


def save_pretrained(model, directory, tokenizer=None):
    """Write `model` (and the BPE `tokenizer`, if given) as a folder GPT2LMHeadModel.from_pretrained reads."""
    st = checkpoint.safetensors_numpy()
    directory = pathlib.Path(directory).expanduser()
    if directory.exists() and not directory.is_dir():
        raise PretrainedError(f"save_pretrained: {directory} is a file; a GPT-2 folder is a directory "
                              f"(config.json, model.safetensors, ...): give a directory path")
    hf = config_to_hf(model.config, dtype=str(model.wte.weight.dtype))  # refuses another architecture: nothing written
    directory.mkdir(parents=True, exist_ok=True)
    state = {PREFIX + name: np.ascontiguousarray(backend.to_numpy(p.data)) for name, p in model.named_parameters()}
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
        if not isinstance(tokenizer, BasicTokenizer):  # every byte-level BPE tier
            raise TypeError(f"save_pretrained: tokenizer must be a BPETokenizer (it writes vocab.json and "
                            f"merges.txt), got {type(tokenizer).__name__}")
        save_gpt2(tokenizer, os.fspath(directory))
    return directory
