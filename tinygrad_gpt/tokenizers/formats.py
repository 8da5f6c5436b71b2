"""Reading and writing BPE tokenizers: GPT-2's files, tiktoken's ranks, and our own format.

- GPT-2: `vocab.json` ({token: id}, tokens spelled with GPT-2's byte -> printable-character map,
  `bytes_to_unicode`) and `merges.txt` (a `#version` line, then `left right` per merge, in rank
  order). Loading assumes the GPT-2 split pattern; vocabulary entries that are neither a byte nor
  the result of a merge are special tokens (GPT-2 has one, `<|endoftext|>` = 50256).
- tiktoken: one `base64(token bytes) rank` per line; the rank is the id. Merges are not stored, so
  loading recovers each token's merge by BPE-encoding its bytes with the lower-ranked tokens, which
  must leave exactly two parts (tiktoken's `_educational.py` does the same). Special tokens are
  not part of the file and are passed separately.
- ours (`save` / `load`): line 1 `tinygrad_gpt.bpe <version>`, line 2 a one-line JSON header
  (tier, pattern, byte_ids, special_tokens, number of merges), then one merge `left right new` per
  line, so that every error can name its line. `to_dict` / `from_dict` carry the same content as
  a JSON-serialisable dict, for checkpoints.

A malformed file raises `TokenizerFileError` (a ValueError) naming the file and the line.

Follows: OpenAI GPT-2 `encoder.py` (bytes_to_unicode, file layout); tiktoken `load.py`
(`load_tiktoken_bpe`) and `_educational.py` (recovering merges from ranks).

Deliberately does not: download anything, read Hugging Face `tokenizer.json`, or store the split
pattern in the GPT-2 and tiktoken formats (they have no place for it; the loaders take it as an
argument, GPT-2's by default).
"""
import base64
import binascii
import functools
import json
import os

from tinygrad_gpt.checkpoint import write_atomic
from tinygrad_gpt.tokenizers.bpe import (
    FORMAT_NAME, FORMAT_VERSION, TIERS, BPETokenizer, bpe_reference)
from tinygrad_gpt.tokenizers.pretokenize import resolve_pattern


class TokenizerFileError(ValueError):
    """A malformed tokenizer file: `path`, `line` (1-based) and what was wrong."""

    def __init__(self, path, line, message):
        self.path, self.line = str(path), line
        super().__init__(f"{path}:{line}: {message}")


@functools.lru_cache(maxsize=1)
def bytes_to_unicode():
    """GPT-2's reversible map from the 256 byte values to printable characters.

    Printable Latin-1 bytes map to themselves; the other 68 (control characters, space, ...) map to
    U+0100 upwards in byte order, so that `Ġ` (U+0120) is the space byte 0x20.
    """
    keep = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
            + list(range(ord("®"), ord("ÿ") + 1)))
    mapping = {}
    n = 0
    for b in range(256):
        if b in keep:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + n)
            n += 1
    return mapping


@functools.lru_cache(maxsize=1)
def unicode_to_bytes():
    return {ch: b for b, ch in bytes_to_unicode().items()}


def _token_to_str(token):
    enc = bytes_to_unicode()
    return "".join(enc[b] for b in token)


def assemble(tier, pattern, byte_ids, merges, special_tokens):
    """A tokenizer of `tier` from its parts (no training)."""
    cls = TIERS[tier]
    if cls is BPETokenizer:
        tok = BPETokenizer(pattern, special_tokens={})
    elif tier == "regex":
        tok = cls(pattern)
    else:
        tok = cls()
    tok.pattern = resolve_pattern(pattern) if tier != "basic" else None
    tok.byte_ids = list(byte_ids)
    tok.merges = [tuple(m) for m in merges]
    tok.special_tokens = dict(special_tokens)
    tok._rebuild()
    return tok


# ----------------------------------------------------------------------------------------------
# Our own format


def bpe_from_dict(d, source="from_dict"):
    """A BPE tokenizer (any tier) from its `to_dict()`, every field checked; errors name `source`."""
    if not isinstance(d, dict):
        raise ValueError(f"{source}: expected a dict, got {type(d).__name__}")
    if d.get("format") != FORMAT_NAME:
        raise ValueError(f"{source}: 'format' must be {FORMAT_NAME!r}, got {d.get('format')!r}")
    if d.get("version") != FORMAT_VERSION:
        raise ValueError(f"{source}: unsupported version {d.get('version')!r} (this code reads {FORMAT_VERSION})")
    for key in ("tier", "pattern", "byte_ids", "merges", "special_tokens"):
        if key not in d:
            raise ValueError(f"{source}: missing key {key!r}")
    if d["tier"] not in TIERS:
        raise ValueError(f"{source}: 'tier' must be one of {sorted(TIERS)}, got {d['tier']!r}")
    for k, m in enumerate(d["merges"]):
        if not (isinstance(m, (list, tuple)) and len(m) == 3 and all(isinstance(x, int) for x in m)):
            raise ValueError(f"{source}: merges[{k}] must be [left, right, new] ints, got {m!r}")
    return assemble(d["tier"], d["pattern"], d["byte_ids"], d["merges"], d["special_tokens"])


def save_tokenizer(tok, path):
    d = tok.to_dict()
    header = {key: d[key] for key in ("tier", "pattern", "byte_ids", "special_tokens")}
    header["merges"] = len(d["merges"])
    lines = [f"{FORMAT_NAME} {FORMAT_VERSION}", json.dumps(header, ensure_ascii=True)]
    lines.extend(f"{a} {b} {new}" for a, b, new in d["merges"])
    _atomic_write(path, "\n".join(lines) + "\n")


def load_tokenizer(path):
    lines = _read_text(path, "load_tokenizer").split("\n")
    first = lines[0].split(" ")
    if len(first) != 2 or first[0] != FORMAT_NAME:
        raise TokenizerFileError(path, 1, f"expected '{FORMAT_NAME} <version>', got {lines[0][:60]!r}")
    if first[1] != str(FORMAT_VERSION):
        raise TokenizerFileError(path, 1, f"unsupported version {first[1]!r} (this code reads {FORMAT_VERSION})")
    if len(lines) < 2:
        raise TokenizerFileError(path, 2, "missing the JSON header line")
    try:
        header = json.loads(lines[1])
    except json.JSONDecodeError as err:
        raise TokenizerFileError(path, 2, f"header is not valid JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(header, dict):
        raise TokenizerFileError(path, 2, "header must be a JSON object")
    for key in ("tier", "pattern", "byte_ids", "special_tokens", "merges"):
        if key not in header:
            raise TokenizerFileError(path, 2, f"header lacks {key!r}")
    if header["tier"] not in TIERS:
        raise TokenizerFileError(path, 2, f"tier must be one of {sorted(TIERS)}, got {header['tier']!r}")
    byte_ids = header["byte_ids"]
    if not (isinstance(byte_ids, list) and len(byte_ids) == 256 and len(set(byte_ids)) == 256
            and all(isinstance(i, int) for i in byte_ids)):
        raise TokenizerFileError(path, 2, "byte_ids must list 256 distinct ints")
    defined = set(byte_ids)
    merges = []
    n_merges = header["merges"]
    body = lines[2:]
    if body and body[-1] == "":
        body = body[:-1]
    if len(body) != n_merges:
        raise TokenizerFileError(path, 2 + len(body), f"header promises {n_merges} merges, file has {len(body)}")
    for k, line in enumerate(body):
        lineno = 3 + k
        parts = line.split(" ")
        try:
            a, b, new = (int(p) for p in parts)
            if len(parts) != 3:
                raise ValueError
        except ValueError:
            raise TokenizerFileError(path, lineno,
                                     f"expected 'left right new' (three ints), got {line[:60]!r}") from None
        for side, tok_id in (("left", a), ("right", b)):
            if tok_id not in defined:
                raise TokenizerFileError(path, lineno, f"{side} id {tok_id} is not defined by an earlier line")
        if new in defined:
            raise TokenizerFileError(path, lineno, f"new id {new} is already defined")
        defined.add(new)
        merges.append((a, b, new))
    try:
        return assemble(header["tier"], header["pattern"], byte_ids, merges, header["special_tokens"])
    except (ValueError, TypeError, KeyError) as err:
        raise TokenizerFileError(path, 2, str(err)) from None


def _atomic_write(path, text):
    """`text` into `path` through the package's one atomic writer (temp file, fsync, rename)."""
    def write(tmp):
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
    write_atomic(path, write)


def _read_text(path, what):
    """The UTF-8 text of a tokenizer file; a missing, directory or binary file is named."""
    if os.path.isdir(path):
        raise IsADirectoryError(f"{what}: {path} is a directory, not a tokenizer file")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what}: {path} does not exist")
    with open(path, "rb") as f:
        raw = f.read()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise TokenizerFileError(path, line, f"not UTF-8 text (byte 0x{raw[err.start]:02x} at offset "
                                             f"{err.start}): not a tokenizer file") from None


# ----------------------------------------------------------------------------------------------
# GPT-2: vocab.json + merges.txt


def _line_of(text, needle):
    """1-based line of the first occurrence of `needle` in `text` (1 if absent)."""
    idx = text.find(needle)
    return text.count("\n", 0, idx) + 1 if idx >= 0 else 1


def load_gpt2(directory, pattern="gpt2"):
    """BPETokenizer from GPT-2's `vocab.json` and `merges.txt` in `directory`."""
    vocab_path = os.path.join(directory, "vocab.json")
    merges_path = os.path.join(directory, "merges.txt")
    for p in (vocab_path, merges_path):
        if not os.path.isfile(p):
            raise FileNotFoundError(f"load_gpt2: {p} does not exist (expected GPT-2's vocab.json and merges.txt)")
    raw = _read_text(vocab_path, "load_gpt2")
    try:
        encoder = json.loads(raw)
    except json.JSONDecodeError as err:
        raise TokenizerFileError(vocab_path, err.lineno, f"not valid JSON: {err.msg} (column {err.colno})") from None
    if not isinstance(encoder, dict):
        raise TokenizerFileError(vocab_path, 1, "expected a JSON object {token: id}")
    decoder = unicode_to_bytes()
    token_bytes = {}  # id -> bytes
    by_str = {}
    for s, i in encoder.items():
        if not isinstance(i, int) or isinstance(i, bool) or i < 0:
            raise TokenizerFileError(vocab_path, _line_of(raw, json.dumps(s)),
                                     f"id of {s!r} must be an int >= 0, got {i!r}")
        try:
            token_bytes[i] = bytes(decoder[ch] for ch in s)
        except KeyError as err:
            raise TokenizerFileError(vocab_path, _line_of(raw, json.dumps(s)),
                                     f"token {s!r} has character {err.args[0]!r} outside GPT-2's byte map") from None
        if i in by_str:
            raise TokenizerFileError(vocab_path, _line_of(raw, json.dumps(s)), f"id {i} is given to two tokens")
        by_str[i] = s
    byte_ids = []
    enc = bytes_to_unicode()
    for b in range(256):
        if enc[b] not in encoder:
            raise TokenizerFileError(vocab_path, 1, f"the byte token {enc[b]!r} (byte 0x{b:02x}) is missing")
        byte_ids.append(encoder[enc[b]])
    merge_lines = _read_text(merges_path, "load_gpt2").split("\n")
    merges = []
    made = set(byte_ids)
    for k, line in enumerate(merge_lines):
        if (k == 0 and line.startswith("#version")) or not line:
            continue
        parts = line.split(" ")
        if len(parts) != 2:
            raise TokenizerFileError(merges_path, k + 1, f"expected 'left right', got {line[:60]!r}")
        for side, s in zip(("left", "right"), parts):
            if s not in encoder:
                raise TokenizerFileError(merges_path, k + 1, f"{side} token {s!r} is not in vocab.json")
        joined = parts[0] + parts[1]
        if joined not in encoder:
            raise TokenizerFileError(merges_path, k + 1, f"merged token {joined!r} is not in vocab.json")
        a, b, new = encoder[parts[0]], encoder[parts[1]], encoder[joined]
        if new in made:
            raise TokenizerFileError(merges_path, k + 1, f"merged token {joined!r} (id {new}) is made twice")
        made.add(new)
        merges.append((a, b, new))
    # subtle: a vocabulary entry that no byte and no merge produces can only be a special token
    specials = {token_bytes[i].decode("utf-8", errors="replace"): i for i in sorted(token_bytes) if i not in made}
    try:
        return assemble("special", pattern, byte_ids, merges, specials)
    except ValueError as err:
        raise TokenizerFileError(merges_path, 1, str(err)) from None


def save_gpt2(tok, directory):
    os.makedirs(directory, exist_ok=True)
    encoder = {}
    for i, token in sorted(tok.vocab.items()):
        encoder[_token_to_str(token)] = i
    lines = ["#version: 0.2"]
    for a, b, _ in tok.merges:
        lines.append(f"{_token_to_str(tok.vocab[a])} {_token_to_str(tok.vocab[b])}")
    _atomic_write(os.path.join(directory, "vocab.json"), json.dumps(encoder, ensure_ascii=False))
    _atomic_write(os.path.join(directory, "merges.txt"), "\n".join(lines) + "\n")


# ----------------------------------------------------------------------------------------------
# tiktoken ranks


def save_tiktoken(tok, path):
    special_ids = set(tok.special_tokens.values())
    lines = [f"{base64.b64encode(token).decode('ascii')} {i}"
             for i, token in sorted(tok.vocab.items()) if i not in special_ids]
    _atomic_write(path, "\n".join(lines) + "\n")


def load_tiktoken(path, special_tokens=None, pattern="gpt2"):
    """BPETokenizer from a tiktoken ranks file; `special_tokens` {name: id} are added as given."""
    lines = _read_text(path, "load_tiktoken").split("\n")
    ranked = []  # (rank, bytes, line number)
    seen_tokens, seen_ranks = {}, {}
    for k, line in enumerate(lines):
        if not line:
            continue
        parts = line.split(" ")
        if len(parts) != 2:
            raise TokenizerFileError(path, k + 1, f"expected 'base64token rank', got {line[:60]!r}")
        try:
            token = base64.b64decode(parts[0], validate=True)
        except (binascii.Error, ValueError):
            raise TokenizerFileError(path, k + 1, f"{parts[0][:40]!r} is not valid base64") from None
        try:
            rank = int(parts[1])
        except ValueError:
            raise TokenizerFileError(path, k + 1, f"rank {parts[1][:20]!r} is not an int") from None
        if not token or rank < 0:
            raise TokenizerFileError(path, k + 1, "a token must be non-empty and its rank >= 0")
        if token in seen_tokens:
            raise TokenizerFileError(path, k + 1, f"token {token!r} already has rank (line {seen_tokens[token]})")
        if rank in seen_ranks:
            raise TokenizerFileError(path, k + 1, f"rank {rank} is already used (line {seen_ranks[rank]})")
        seen_tokens[token], seen_ranks[rank] = k + 1, k + 1
        ranked.append((rank, token, k + 1))
    ranked.sort()
    byte_ids = [None] * 256
    for rank, token, _ in ranked:
        if len(token) == 1:
            byte_ids[token[0]] = rank
    missing = [b for b in range(256) if byte_ids[b] is None]
    if missing:
        raise TokenizerFileError(path, len(lines), f"the single-byte token 0x{missing[0]:02x} is missing "
                                                   f"({len(missing)} of 256 missing)")
    merge_ranks = {}
    merges = []
    vocab = {i: bytes([b]) for b, i in enumerate(byte_ids)}
    for rank, token, lineno in ranked:
        if len(token) == 1:
            continue
        parts = bpe_reference([byte_ids[b] for b in token], merge_ranks)
        if len(parts) != 2:
            raise TokenizerFileError(path, lineno, f"token {token!r} (rank {rank}) is not the merge of two "
                                                   f"lower-ranked tokens (BPE leaves {len(parts)} parts)")
        merge_ranks[(parts[0], parts[1])] = (len(merges), rank)
        merges.append((parts[0], parts[1], rank))
        vocab[rank] = token
    return assemble("special", pattern, byte_ids, merges, special_tokens or {})
