"""Byte-level BPE tokenizers in three tiers, each adding one idea.

- `BasicTokenizer`: BPE over the raw UTF-8 bytes of the whole text; nothing splits it.
- `RegexTokenizer`: first cut the text into chunks with a split pattern (GPT-2's by default, or
  GPT-4's, or your own), then BPE inside each chunk; merges never cross a chunk boundary.
- `BPETokenizer`: adds special tokens (`<|endoftext|>` and your own) with tiktoken's
  `allowed_special` / `disallowed_special` rules. Loads the real GPT-2 files and encodes exactly as
  GPT-2 does (`tokenizers.load_gpt2(dir)`).

Every tier has `train(text, vocab_size)`, `encode(text) -> list[int]`, `decode(ids) -> str`,
`encode_batch(texts)`, `vocab_size` and `to_dict()` (JSON-serialisable, for checkpoints;
`tokenizer_from_dict` and every file reader rebuild a tokenizer with `from_parts`). Files are
formats.py's: this module knows no file format.

Model. Ids 0..255 need not be the bytes in order (GPT-2 permutes them): `byte_ids[b]` is the id of
byte b. `merges[r] = (a, b, new)` is the merge of rank r. Encoding a chunk merges, again and again,
the adjacent pair of lowest rank (GPT-2's `bpe()`); a chunk's ids are cached. Training counts
pairs over the distinct chunks weighted by how often each occurs, and merges the most frequent
pair; ties go to the smallest (left id, right id), so training is deterministic and independent of
chunk order. If no pair is left before `vocab_size` is reached, training stops early (the
vocabulary is then smaller; `vocab_size` says how big).

Decoding joins the tokens' bytes and decodes them as UTF-8 with errors="replace": bytes that are
not valid UTF-8 (a token sequence cut mid-character) become U+FFFD, as in GPT-2's `decode`.

Fast and readable paths. The hot loops are Numba kernels in `fastbpe.py` (and the GPT-2 split
scanner in `pretokenize.py`); the readable references below (`bpe_reference`,
`train_merges_reference`) define the behaviour and the tests hold the kernels to them. Setting
the project's one kernel switch (TINYGRAD_GPT_KERNELS=reference, or `kernels.set_backend("reference")`;
see tinygrad_gpt/kernels/__init__.py) runs the references instead; `tokenizer.fast = False` (or True) pins one
tokenizer either way.

Follows: Sennrich et al. 2016; OpenAI GPT-2 `encoder.py`; tiktoken (special-token rules); minbpe
(the three tiers and the "aaabdaaabac" example).

Deliberately does not: normalise text (no NFC, no prefix space), add special tokens around text,
treat lone surrogates (they raise), or parallelise encode_batch (one thread; output order kept).
"""
import re
from collections import Counter

import numpy as np

from tinygrad_gpt import kernels
from tinygrad_gpt.tokenizers import fastbpe
from tinygrad_gpt.tokenizers.pretokenize import (
    GPT2_SPLIT_PATTERN, GPT4_SPLIT_PATTERN, SPLIT_PATTERNS, codepoints, compiled, resolve_pattern, split)

FORMAT_NAME = "tinygrad_gpt.bpe"
FORMAT_VERSION = 1
ENDOFTEXT = "<|endoftext|>"


# ----------------------------------------------------------------------------------------------
# The readable references


def merge_pair(ids, pair, new):
    """`ids` with every occurrence of `pair` replaced by `new`, scanning left to right."""
    out = []
    i = 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(new)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def bpe_reference(ids, merge_ranks):
    """GPT-2's `bpe()` on ids: merge every occurrence of the lowest-ranked pair until none is left.

    merge_ranks: {(a, b): (rank, new_id)}.
    """
    ids = list(ids)
    while len(ids) >= 2:
        best = min(zip(ids, ids[1:]), key=lambda p: merge_ranks.get(p, (float("inf"),))[0])
        if best not in merge_ranks:
            break
        ids = merge_pair(ids, best, merge_ranks[best][1])
    return ids


def train_merges_reference(words, first_new_id, n_merges):
    """Recount every pair each merge (minbpe style): the spec of `fastbpe.train_merges`.

    words: [(ids, count)]. Returns [(a, b)]; merge m makes id first_new_id + m.
    """
    words = [(list(ids), count) for ids, count in words]
    merges = []
    for m in range(n_merges):
        counts = {}
        for ids, count in words:
            for pair in zip(ids, ids[1:]):
                counts[pair] = counts.get(pair, 0) + count
        if not counts:
            break
        best = min(counts, key=lambda p: (-counts[p], p))  # most frequent, then smallest pair
        words = [(merge_pair(ids, best, first_new_id + m), count) for ids, count in words]
        merges.append(best)
    return merges


# ----------------------------------------------------------------------------------------------
# Tier 1


class BasicTokenizer:
    """Byte-level BPE over the whole text as one sequence of bytes."""

    tier = "basic"

    def __init__(self):
        self.pattern = None
        self.byte_ids = list(range(256))
        self.merges = []  # [(a, b, new)], rank order
        self.special_tokens = {}  # str -> id (used by the BPETokenizer tier)
        self._fast = None  # None: follow the kernel switch; True / False: pinned by `fast = ...`
        self._rebuild()

    @property
    def fast(self):
        """True when the Numba kernels run: the kernel switch's answer unless pinned by `fast = ...`."""
        return kernels.fused_enabled() if self._fast is None else self._fast

    @fast.setter
    def fast(self, value):
        self._fast = None if value is None else bool(value)

    # -- the model -------------------------------------------------------------------------------

    def _rebuild(self):
        """Derive the vocabulary, the merge tables and empty caches from byte_ids/merges/specials."""
        if sorted(set(self.byte_ids)) != sorted(self.byte_ids) or len(self.byte_ids) != 256:
            raise ValueError("byte_ids: expected 256 distinct ids, one per byte value")
        vocab = {i: bytes([b]) for b, i in enumerate(self.byte_ids)}
        for rank, (a, b, new) in enumerate(self.merges):
            for side, tok in (("left", a), ("right", b)):
                if tok not in vocab:
                    raise ValueError(f"merges[{rank}]: {side} id {tok} is not defined before rank {rank}")
            if new in vocab:
                raise ValueError(f"merges[{rank}]: new id {new} is already in use")
            vocab[new] = vocab[a] + vocab[b]
        for name, i in self.special_tokens.items():
            if i in vocab:
                raise ValueError(f"special_tokens: id {i} of {name!r} is already in use")
            vocab[i] = name.encode("utf-8")
        self.vocab = vocab  # id -> bytes
        size = max(vocab) + 1
        self._decode_table = [vocab.get(i) for i in range(size)]  # id -> bytes or None (a gap)
        self.merge_ranks = {}  # (a, b) -> (rank, new)
        for rank, (a, b, new) in enumerate(self.merges):
            self.merge_ranks.setdefault((a, b), (rank, new))
        merges = np.array([m[:3] for m in self.merges], dtype=np.int64).reshape(-1, 3)  # (n_merges, 3)
        self._mtable = fastbpe.build_merge_table(merges[:, 0].copy(), merges[:, 1].copy(), merges[:, 2].copy())
        self._byte_ids = np.array(self.byte_ids, dtype=np.int64)  # (256,)
        self._cache = fastbpe.ChunkCache()
        self._py_cache = {}

    @property
    def vocab_size(self):
        """One more than the largest id: the size of an embedding table over these ids."""
        return len(self._decode_table)

    # -- training ----------------------------------------------------------------------------------

    def _training_chunks(self, text):
        """The chunks BPE may merge within (here: the whole text)."""
        return [text] if text else []

    def train(self, text, vocab_size, verbose=False):
        """Learn `vocab_size - 256 - len(special tokens)` merges from `text`; returns self."""
        if not isinstance(text, str):
            raise TypeError(f"train: text must be a str, got {type(text).__name__}")
        n_special = len(self._special_names())
        if not isinstance(vocab_size, (int, np.integer)) or vocab_size < 256 + n_special:
            raise ValueError(f"train: vocab_size must be an int >= {256 + n_special} "
                             f"(256 bytes + {n_special} special tokens), got {vocab_size!r}")
        n_merges = int(vocab_size) - 256 - n_special
        counts = Counter(self._training_chunks(text))
        # an empty chunk has no pair to merge (and would index before the start of the flat bytes)
        words = [(chunk.encode("utf-8"), count) for chunk, count in counts.items() if chunk]
        if self.fast:
            pairs = self._train_fast(words, n_merges)
        else:
            pairs = train_merges_reference([(list(w), c) for w, c in words], 256, n_merges)
        self.byte_ids = list(range(256))
        self.merges = [(int(a), int(b), 256 + r) for r, (a, b) in enumerate(pairs)]
        next_id = 256 + len(self.merges)
        self.special_tokens = {name: next_id + k for k, name in enumerate(self._special_names())}
        self._rebuild()
        if verbose:
            for a, b, new in self.merges:
                print(f"merge {new - 256 + 1}/{n_merges}: ({a}, {b}) -> {new} {self.vocab[new]!r}")
        return self

    @staticmethod
    def _train_fast(words, n_merges):
        if not words:
            return []
        flat = np.frombuffer(b"".join(w for w, _ in words), dtype=np.uint8)  # (N,)
        lengths = np.array([len(w) for w, _ in words], dtype=np.int64)  # (n_words,)
        word_end = np.zeros(flat.shape[0], dtype=np.bool_)  # (N,)
        word_end[np.cumsum(lengths) - 1] = True
        weight = np.repeat(np.array([c for _, c in words], dtype=np.int64), lengths)  # (N,)
        return fastbpe.train_merges(flat.astype(np.int32), word_end, weight, 256, n_merges).tolist()

    def _special_names(self):
        return []

    # -- encoding ----------------------------------------------------------------------------------

    def _split(self, text, cps):
        return split(text, self.pattern, fast=self.fast)

    def encode_ordinary(self, text):
        """Ids of `text`, with no special-token handling (special strings are ordinary text)."""
        if not isinstance(text, str):
            raise TypeError(f"encode: text must be a str, got {type(text).__name__}")
        if not text:
            return []
        cps = codepoints(text)  # also rejects lone surrogates, on both paths
        if not self.fast:
            return self._encode_reference(text)
        starts, ends = self._split(text, cps)
        ids = fastbpe.encode_chunks(cps, starts, ends, self._byte_ids, *self._mtable, *self._cache.arrays())
        return ids.tolist()

    def _encode_reference(self, text):
        ids = []
        starts, ends = split(text, self.pattern, fast=False)
        for s, e in zip(starts.tolist(), ends.tolist()):
            chunk = text[s:e]
            cached = self._py_cache.get(chunk)
            if cached is None:
                cached = bpe_reference([self.byte_ids[b] for b in chunk.encode("utf-8")], self.merge_ranks)
                self._py_cache[chunk] = cached
            ids.extend(cached)
        return ids

    def encode(self, text):
        return self.encode_ordinary(text)

    def encode_batch(self, texts, **kwargs):
        """[encode(t) for t in texts], sharing the chunk cache."""
        if isinstance(texts, str):
            raise TypeError("encode_batch: texts must be a list of str, got a single str")
        return [self.encode(t, **kwargs) for t in texts]

    # -- decoding ----------------------------------------------------------------------------------

    def decode_bytes(self, ids):
        """The bytes of `ids` joined; an id outside the vocabulary raises, naming it."""
        table = self._decode_table
        if not isinstance(ids, (list, tuple, np.ndarray)):
            ids = list(ids)  # a generator would be consumed by the first pass
        try:
            parts = [table[i] for i in ids]
            bad = None in parts or (len(parts) and min(ids) < 0)
        except (IndexError, TypeError):
            bad = True
        if bad:
            for pos, i in enumerate(ids):
                if not isinstance(i, (int, np.integer)) or not 0 <= i < len(table) or table[i] is None:
                    raise ValueError(f"decode: id {i!r} at position {pos} is not in the vocabulary "
                                     f"(ids 0..{len(table) - 1})")
        return b"".join(parts)

    def decode(self, ids):
        """Text of `ids`; bytes that are not valid UTF-8 become U+FFFD (errors='replace')."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    # -- persistence -------------------------------------------------------------------------------

    def to_dict(self):
        """A JSON-serialisable description that `tokenizer_from_dict` turns back into an equal tokenizer."""
        return {
            "type": "bpe",  # the key CharTokenizer's dict uses too, so one reader can tell them apart
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "tier": self.tier,
            "pattern": self.pattern,
            "byte_ids": list(self.byte_ids),
            "merges": [list(m) for m in self.merges],
            "special_tokens": dict(self.special_tokens),
        }

    def __repr__(self):
        return (f"{type(self).__name__}(vocab_size={self.vocab_size}, merges={len(self.merges)}, "
                f"special_tokens={len(self.special_tokens)})")


# ----------------------------------------------------------------------------------------------
# Tier 2


class RegexTokenizer(BasicTokenizer):
    """Byte-level BPE inside the chunks of a split pattern ("gpt2", "gpt4" or a regex string).

    A pattern that matches the empty string is refused: it matches "" wherever nothing else does,
    and the characters there fall between chunks, lost to every encoding. A pattern that skips
    characters otherwise (".", which skips newlines) can only be found on a text: examples/bpe.py
    checks its training text.
    """

    tier = "regex"

    def __init__(self, pattern="gpt2"):
        super().__init__()
        self.pattern = resolve_pattern(pattern)
        if self.pattern is not None and self.pattern not in SPLIT_PATTERNS.values() and (
                not self.pattern or compiled(self.pattern).fullmatch("") is not None):
            raise ValueError(f"pattern {pattern!r} matches the empty string; a split pattern must match at least "
                             f"one character (text it does not match would be dropped)")

    def _training_chunks(self, text):
        starts, ends = split(text, self.pattern, fast=self.fast)
        return [text[s:e] for s, e in zip(starts.tolist(), ends.tolist())]

    def _split(self, text, cps):
        if self.fast and self.pattern == GPT2_SPLIT_PATTERN:
            from tinygrad_gpt.tokenizers.pretokenize import split_gpt2
            return split_gpt2(cps)
        return split(text, self.pattern, fast=self.fast)


# ----------------------------------------------------------------------------------------------
# Tier 3


class BPETokenizer(RegexTokenizer):
    """RegexTokenizer plus special tokens, with tiktoken's allowed/disallowed rules.

    special_tokens: names or {name: id}; `train` (re)assigns their ids right after the merges, in
    the order given, so that they count towards `vocab_size`.
    encode(text, allowed_special=(), disallowed_special="all"): a special token of
    `allowed_special` (or "all") becomes its id; one of `disallowed_special` ("all" means every
    special token not allowed) found in the text raises ValueError; any other is ordinary text.
    """

    tier = "special"

    def __init__(self, pattern="gpt2", special_tokens=(ENDOFTEXT,)):
        super().__init__(pattern)
        if isinstance(special_tokens, str):
            raise TypeError(f"special_tokens: expected a list of names or a {{name: id}} dict, got the "
                            f"string {special_tokens!r}")
        for name in special_tokens:
            if not isinstance(name, str) or not name:
                raise ValueError(f"special_tokens: expected non-empty strings, got {name!r}")
        if isinstance(special_tokens, dict):
            self.special_tokens = dict(special_tokens)
        else:  # until training, the ids follow the 256 byte tokens
            self.special_tokens = {name: 256 + k for k, name in enumerate(special_tokens)}
        self._rebuild()

    def _special_names(self):
        return list(self.special_tokens)  # insertion order: the order they were given in

    def _rebuild(self):
        super()._rebuild()
        self._special_re = {}  # frozenset(names) -> compiled alternation, longest first

    def register_special_tokens(self, special_tokens):
        """Add {name: id} (ids outside the merges' range)."""
        self.special_tokens.update(special_tokens)
        self._rebuild()

    def _training_chunks(self, text):
        chunks = []
        for part, is_special in self._segments(text, set(self.special_tokens)):
            if not is_special:
                chunks.extend(super()._training_chunks(part))
        return chunks

    def _finder(self, names):
        key = frozenset(names)
        if key not in self._special_re:
            alternation = "|".join(re.escape(n) for n in sorted(key, key=lambda n: (-len(n), n)))
            self._special_re[key] = re.compile(alternation)
        return self._special_re[key]

    def _segments(self, text, names):
        """(piece, is_special) covering `text`, cut at the special tokens in `names`."""
        if not names:
            yield text, False
            return
        start = 0
        for m in self._finder(names).finditer(text):
            if m.start() > start:
                yield text[start:m.start()], False
            yield m.group(), True
            start = m.end()
        if start < len(text):
            yield text[start:], False

    def _resolve_special(self, allowed_special, disallowed_special):
        every = set(self.special_tokens)
        if allowed_special == "all":
            allowed = every
        else:
            allowed = set(allowed_special)
            unknown = allowed - every
            if unknown:
                raise ValueError(f"encode: allowed_special names tokens that are not special tokens "
                                 f"of this tokenizer: {sorted(unknown)}")
        if disallowed_special == "all":
            disallowed = every - allowed
        else:
            disallowed = set(disallowed_special)
        return allowed, disallowed

    def encode(self, text, allowed_special=frozenset(), disallowed_special="all"):
        if not isinstance(text, str):
            raise TypeError(f"encode: text must be a str, got {type(text).__name__}")
        allowed, disallowed = self._resolve_special(allowed_special, disallowed_special)
        if disallowed:
            m = self._finder(disallowed).search(text)
            if m:
                raise ValueError(
                    f"encode: text contains the special token {m.group()!r} at index {m.start()}; pass "
                    f"allowed_special={{{m.group()!r}}} (or 'all') to encode it as its id, or "
                    f"disallowed_special=() to encode it as ordinary text")
        if not allowed:
            return self.encode_ordinary(text)
        codepoints(text)  # subtle: reports a lone surrogate's index in `text`, not in a piece of it
        ids = []
        for part, is_special in self._segments(text, allowed):
            if is_special:
                ids.append(self.special_tokens[part])
            else:
                ids.extend(self.encode_ordinary(part))
        return ids



TIERS = {cls.tier: cls for cls in (BasicTokenizer, RegexTokenizer, BPETokenizer)}


def from_parts(tier, pattern, byte_ids, merges, special_tokens):
    """A tokenizer of `tier` from its parts (no training): what every file format reads back
    (formats.py), and what `to_dict` holds."""
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
__all__ = ["BasicTokenizer", "RegexTokenizer", "BPETokenizer", "GPT2_SPLIT_PATTERN", "GPT4_SPLIT_PATTERN",
           "ENDOFTEXT", "bpe_reference", "train_merges_reference", "TIERS", "from_parts"]
