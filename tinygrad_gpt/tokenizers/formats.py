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

- Hugging Face `tokenizer.json` (a byte-level BPE model): read where `vocab.json` / `merges.txt` are
  absent (transformers 5 saves only it from a fast tokenizer), and written beside them, with the
  special tokens as `added_tokens` and a split pattern other than GPT-2's as a Split pre-tokenizer.

Deliberately does not: download anything, read tokenizer.json's of other models (WordPiece,
Unigram, normalizers, a prefix space), or store the split pattern in the GPT-2 and tiktoken formats
(they have no place for it; the loaders take it as an argument, GPT-2's by default).
"""
import base64
import binascii
import functools
import json
import os

from tinygrad_gpt.checkpoint import write_atomic
from tinygrad_gpt.tokenizers.bpe import FORMAT_NAME, FORMAT_VERSION, TIERS, bpe_reference, from_parts
from tinygrad_gpt.tokenizers.pretokenize import GPT2_SPLIT_PATTERN


# Ids are table indices (the vocabulary, the model's embedding rows), so a file may not ask for a
# table of any size: 2**24 is 64 times the largest vocabularies in use.
MAX_TOKEN_ID = 2 ** 24


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
    return from_parts(d["tier"], d["pattern"], d["byte_ids"], d["merges"], d["special_tokens"])


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
        return from_parts(header["tier"], header["pattern"], byte_ids, merges, header["special_tokens"])
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
# GPT-2: vocab.json + merges.txt, or Hugging Face's tokenizer.json

VOCAB_NAME, MERGES_NAME, TOKENIZER_JSON_NAME = "vocab.json", "merges.txt", "tokenizer.json"


def _line_of(text, needle):
    """1-based line of the first occurrence of `needle` in `text` (1 if absent)."""
    idx = text.find(needle)
    return text.count("\n", 0, idx) + 1 if idx >= 0 else 1


def _gpt2_from_parts(encoder, merge_pairs, pattern, specials, vocab_at, merge_at, vocab_name):
    """A BPETokenizer from GPT-2's parts, every part checked.

    encoder: {token string: id} (tokens spelled with `bytes_to_unicode`); merge_pairs: [(left, right)]
    in rank order; specials: {name: id} that the file declares (tokenizer.json's added_tokens) or None
    (vocab.json declares none). vocab_at(token) and merge_at(k) give the (path, line) an error names;
    vocab_name is what the errors call the vocabulary ("vocab.json", "model.vocab").
    """
    decoder = unicode_to_bytes()
    token_bytes = {}  # id -> bytes
    for s, i in encoder.items():
        if not isinstance(i, int) or isinstance(i, bool) or i < 0:
            raise TokenizerFileError(*vocab_at(s), f"id of {s!r} must be an int >= 0, got {i!r}")
        if i >= MAX_TOKEN_ID:
            raise TokenizerFileError(*vocab_at(s), f"id of {s!r} is {i}, over the largest id a tokenizer "
                                                   f"may have ({MAX_TOKEN_ID - 1})")
        if i in token_bytes:
            raise TokenizerFileError(*vocab_at(s), f"id {i} is given to two tokens")
        if specials is not None and s in specials:
            token_bytes[i] = s.encode("utf-8")
            continue
        try:
            token_bytes[i] = bytes(decoder[ch] for ch in s)
        except KeyError as err:
            raise TokenizerFileError(*vocab_at(s), f"token {s!r} has character {err.args[0]!r} outside "
                                                   f"GPT-2's byte map") from None
    byte_ids = []
    enc = bytes_to_unicode()
    for b in range(256):
        if enc[b] not in encoder:
            raise TokenizerFileError(*vocab_at(None), f"the byte token {enc[b]!r} (byte 0x{b:02x}) is missing")
        byte_ids.append(encoder[enc[b]])
    merges = []
    made = set(byte_ids)
    for k, (left, right) in enumerate(merge_pairs):
        for side, s in (("left", left), ("right", right)):
            if s not in encoder:
                raise TokenizerFileError(*merge_at(k), f"{side} token {s!r} is not in {vocab_name}")
        joined = left + right
        if joined not in encoder:
            raise TokenizerFileError(*merge_at(k), f"merged token {joined!r} is not in {vocab_name}")
        a, b, new = encoder[left], encoder[right], encoder[joined]
        if new in made:
            raise TokenizerFileError(*merge_at(k), f"merged token {joined!r} (id {new}) is made twice")
        made.add(new)
        merges.append((a, b, new))
    unmade = sorted(i for i in token_bytes if i not in made)
    if specials is None:
        # subtle: vocab.json names no special tokens, so an entry that no byte and no merge makes is
        # one (GPT-2 has `<|endoftext|>` = 50256). Added tokens come after the merged vocabulary, so
        # an unmade id below a merged one means the merges were cut short, not a special token.
        top = max(made)
        early = [i for i in unmade if i < top]
        if early:
            s = _token_to_str(token_bytes[early[0]])
            raise TokenizerFileError(*vocab_at(s), f"{len(early)} entries (the first {s!r}, id {early[0]}) are made "
                                                   f"by no merge of the {len(merges)} in the merges, yet come before "
                                                   f"merged id {top}: are the merges cut short?")
        specials = {token_bytes[i].decode("utf-8", errors="replace"): i for i in unmade}
    else:
        declared = set(specials.values())
        stray = [i for i in unmade if i not in declared]
        if stray:
            s = _token_to_str(token_bytes[stray[0]])
            raise TokenizerFileError(*vocab_at(s), f"{len(stray)} vocabulary entries (the first {s!r}, id {stray[0]}) "
                                                   f"are made by no merge and are not added tokens: are the merges "
                                                   f"cut short?")
    try:
        return from_parts("special", pattern, byte_ids, merges, specials)
    except ValueError as err:
        raise TokenizerFileError(*merge_at(0), str(err)) from None


def load_gpt2(directory, pattern="gpt2"):
    """BPETokenizer from a GPT-2 folder: `vocab.json` + `merges.txt`, or, where either is absent,
    Hugging Face's `tokenizer.json` (what transformers 5 saves from a fast tokenizer)."""
    vocab_path = os.path.join(directory, VOCAB_NAME)
    merges_path = os.path.join(directory, MERGES_NAME)
    json_path = os.path.join(directory, TOKENIZER_JSON_NAME)
    if not (os.path.isfile(vocab_path) and os.path.isfile(merges_path)):
        if os.path.isfile(json_path):
            return load_tokenizer_json(json_path, pattern=pattern)
        missing = [p for p in (vocab_path, merges_path) if not os.path.isfile(p)]
        raise FileNotFoundError(f"load_gpt2: {missing[0]} does not exist, and neither does {json_path} (a GPT-2 "
                                f"tokenizer is vocab.json + merges.txt, or a Hugging Face tokenizer.json)")
    raw = _read_text(vocab_path, "load_gpt2")
    try:
        encoder = json.loads(raw)
    except json.JSONDecodeError as err:
        raise TokenizerFileError(vocab_path, err.lineno, f"not valid JSON: {err.msg} (column {err.colno})") from None
    if not isinstance(encoder, dict):
        raise TokenizerFileError(vocab_path, 1, "expected a JSON object {token: id}")
    pairs, lines = [], []
    for k, line in enumerate(_read_text(merges_path, "load_gpt2").split("\n")):
        if (k == 0 and line.startswith("#version")) or not line:
            continue
        parts = line.split(" ")
        if len(parts) != 2:
            raise TokenizerFileError(merges_path, k + 1, f"expected 'left right', got {line[:60]!r}")
        pairs.append((parts[0], parts[1]))
        lines.append(k + 1)
    return _gpt2_from_parts(
        encoder, pairs, pattern, None,
        vocab_at=lambda s: (vocab_path, 1 if s is None else _line_of(raw, json.dumps(s))),
        merge_at=lambda k: (merges_path, lines[k] if k < len(lines) else 1), vocab_name=VOCAB_NAME)


def load_tokenizer_json(path, pattern="gpt2"):
    """BPETokenizer from a Hugging Face `tokenizer.json` of a byte-level BPE (GPT-2 and its kin).

    Read: model.vocab, model.merges (as "left right" strings or [left, right] pairs), added_tokens
    (the special tokens), and the split pattern where the pre-tokenizer is a Split before a ByteLevel
    without its own regex; a plain ByteLevel with use_regex splits as GPT-2, the `pattern` argument.
    Refused with the field named: another model type, a normalizer, a non-byte-level pre-tokenizer.
    """
    raw = _read_text(path, "load_tokenizer_json")
    try:
        d = json.loads(raw)
    except json.JSONDecodeError as err:
        raise TokenizerFileError(path, err.lineno, f"not valid JSON: {err.msg} (column {err.colno})") from None
    at = lambda needle: (path, _line_of(raw, needle))  # noqa: E731
    model = d.get("model") if isinstance(d, dict) else None
    if not isinstance(model, dict) or model.get("type") != "BPE":
        got = model.get("type") if isinstance(model, dict) else model
        raise TokenizerFileError(*at('"model"'), f"model.type: expected 'BPE' (a byte-level BPE), got {got!r}")
    if d.get("normalizer") is not None:
        raise TokenizerFileError(*at('"normalizer"'), "normalizer: a GPT-2 tokenizer has none (null); this file "
                                                      "changes the text before splitting, which is not supported")
    pattern = _pattern_of_pre_tokenizer(d.get("pre_tokenizer"), pattern, at)
    encoder, merges = model.get("vocab"), model.get("merges")
    if not isinstance(encoder, dict):
        raise TokenizerFileError(*at('"vocab"'), "model.vocab: expected a JSON object {token: id}")
    if not isinstance(merges, list):
        raise TokenizerFileError(*at('"merges"'), "model.merges: expected a list")
    pairs = []
    for k, m in enumerate(merges):
        if isinstance(m, str) and len(m.split(" ")) == 2:
            pairs.append(tuple(m.split(" ")))
        elif isinstance(m, list) and len(m) == 2 and all(isinstance(x, str) for x in m):
            pairs.append(tuple(m))
        else:
            raise TokenizerFileError(*at('"merges"'), f"model.merges[{k}]: expected 'left right' or [left, right], "
                                                      f"got {m!r}")
    specials = {}
    for k, added in enumerate(d.get("added_tokens") or []):
        if not (isinstance(added, dict) and isinstance(added.get("content"), str) and added["content"]
                and isinstance(added.get("id"), int) and not isinstance(added.get("id"), bool)):
            raise TokenizerFileError(*at('"added_tokens"'), f"added_tokens[{k}]: expected {{'id': int, 'content': "
                                                            f"non-empty string}}, got {added!r}")
        if encoder.get(added["content"], added["id"]) != added["id"]:
            raise TokenizerFileError(*at(json.dumps(added["content"])),
                                     f"added_tokens[{k}]: {added['content']!r} has id {added['id']}, the vocabulary "
                                     f"gives it {encoder[added['content']]}")
        specials[added["content"]] = added["id"]
    encoder = {**encoder, **specials}
    return _gpt2_from_parts(encoder, pairs, pattern, specials,
                            vocab_at=lambda s: at('"vocab"') if s is None else at(json.dumps(s)),
                            merge_at=lambda k: at('"merges"'), vocab_name="model.vocab")


def _pattern_of_pre_tokenizer(pre, pattern, at):
    """The split pattern a tokenizer.json pre-tokenizer applies (see `load_tokenizer_json`)."""
    steps = pre.get("pretokenizers") if isinstance(pre, dict) and pre.get("type") == "Sequence" else [pre]
    if not isinstance(steps, list) or not steps or not all(isinstance(p, dict) for p in steps):
        raise TokenizerFileError(*at('"pre_tokenizer"'), f"pre_tokenizer: expected a ByteLevel (or a Split then a "
                                                         f"ByteLevel), got {pre!r}"[:300])
    kinds = [p.get("type") for p in steps]
    last = steps[-1]
    if kinds == ["ByteLevel"]:
        split = pattern if last.get("use_regex", True) else None
    elif kinds == ["Split", "ByteLevel"] and not last.get("use_regex", True) \
            and isinstance(steps[0].get("pattern"), dict) and isinstance(steps[0]["pattern"].get("Regex"), str) \
            and steps[0].get("behavior") == "Isolated" and not steps[0].get("invert", False):
        split = steps[0]["pattern"]["Regex"]
    else:
        raise TokenizerFileError(*at('"pre_tokenizer"'), f"pre_tokenizer: expected ByteLevel(use_regex) or "
                                                         f"Split(Regex, Isolated) then ByteLevel, got {kinds}")
    if last.get("add_prefix_space"):
        raise TokenizerFileError(*at('"add_prefix_space"'), "pre_tokenizer.add_prefix_space: true puts a space "
                                                            "before the text, which GPT-2 does not; not supported")
    return split


def save_gpt2(tok, directory):
    """`tok` as GPT-2's vocab.json + merges.txt and as Hugging Face's tokenizer.json, so that old and
    new loaders (GPT2Tokenizer, PreTrainedTokenizerFast, AutoTokenizer) read the folder alike."""
    os.makedirs(directory, exist_ok=True)
    encoder = {}
    for i, token in sorted(tok.vocab.items()):
        encoder[_token_to_str(token)] = i
    specials = dict(getattr(tok, "special_tokens", {}))
    for name, i in specials.items():  # specials are spelled as themselves, not byte-mapped
        encoder.pop(_token_to_str(name.encode("utf-8")), None)
        encoder[name] = i
    pairs = [(_token_to_str(tok.vocab[a]), _token_to_str(tok.vocab[b])) for a, b, _ in tok.merges]
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in pairs]
    _atomic_write(os.path.join(directory, VOCAB_NAME), json.dumps(encoder, ensure_ascii=False))
    _atomic_write(os.path.join(directory, MERGES_NAME), "\n".join(lines) + "\n")
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    if tok.pattern == GPT2_SPLIT_PATTERN:
        pre = byte_level
    elif tok.pattern is None:  # the basic tier: no split at all
        pre = {**byte_level, "use_regex": False}
    else:
        pre = {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": tok.pattern}, "behavior": "Isolated", "invert": False},
            {**byte_level, "use_regex": False}]}
    doc = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": i, "content": name, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True} for name, i in sorted(specials.items(), key=lambda x: x[1])],
        "normalizer": None,
        "pre_tokenizer": pre,
        "post_processor": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": encoder, "merges": [list(pair) for pair in pairs]},
    }
    _atomic_write(os.path.join(directory, TOKENIZER_JSON_NAME), json.dumps(doc, ensure_ascii=False, indent=1))


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
    return from_parts("special", pattern, byte_ids, merges, special_tokens or {})
