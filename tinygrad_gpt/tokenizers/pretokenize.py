"""Pre-tokenization: cut text into the chunks that byte-level BPE never merges across.

What it is: the GPT-2 and GPT-4 split patterns, a readable splitter that runs them through the
`regex` package (the spec), and a Numba scanner that implements the GPT-2 pattern by hand over a
Unicode category table (the fast path; `tests/tokenizers/test_pretokenizer.py` checks it equals the `regex`
split on the same corpora). Chunks are returned as (starts, ends) arrays of code-point offsets
into the string, so nothing is copied on the hot path.

Follows: OpenAI's GPT-2 `encoder.py` (the pattern), tiktoken's `cl100k_base` (the GPT-4 pattern,
as minbpe's `regex.py` spells it). The category table is built by asking the `regex` package itself
which code points are `\\p{L}`, `\\p{N}` and `\\s`, so both paths agree on the same Unicode version
(Python's `unicodedata` may be older than `regex`'s tables).

Deliberately does not: scan the GPT-4 pattern natively (it goes through `regex`, slower but
exact), or accept strings with lone surrogates on the fast path (they cannot be UTF-8 encoded; the
caller reports them).
"""
import functools

import numpy as np

try:
    import regex
except ImportError:  # the `bpe` extra; the error is raised where a pattern is actually used
    regex = None

from numba import njit

# The GPT-2 split pattern, verbatim from openai/gpt-2 src/encoder.py.
GPT2_SPLIT_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# The GPT-4 (cl100k_base) split pattern, as in tiktoken and minbpe.
GPT4_SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
    r"""|\s*[\r\n]|\s+(?!\S)|\s+"""
)
SPLIT_PATTERNS = {"gpt2": GPT2_SPLIT_PATTERN, "gpt4": GPT4_SPLIT_PATTERN}

# Code-point classes in the category table (uint8, one entry per code point).
OTHER, LETTER, NUMBER, SPACE = 0, 1, 2, 3
N_CODEPOINTS = 0x110000


def require_regex():
    if regex is None:
        raise ImportError(
            "the regex-split tokenizers need the `regex` package: pip install regex "
            "(or pip install tinygrad_gpt[bpe])")
    return regex


def resolve_pattern(pattern):
    """`"gpt2"`, `"gpt4"` or a pattern string -> the pattern string (None stays None)."""
    if pattern is None:
        return None
    if not isinstance(pattern, str):
        raise TypeError(f"pattern: expected 'gpt2', 'gpt4', a regex string or None, got {type(pattern).__name__}")
    return SPLIT_PATTERNS.get(pattern, pattern)


@functools.lru_cache(maxsize=16)
def compiled(pattern):
    return require_regex().compile(pattern)


def split_regex(text, pattern):
    """The spec: chunk (starts, ends) of `regex.finditer(pattern, text)`, int64 arrays."""
    spans = [m.span() for m in compiled(pattern).finditer(text)]
    if not spans:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    bounds = np.array(spans, dtype=np.int64)  # (n_chunks, 2)
    return bounds[:, 0].copy(), bounds[:, 1].copy()


@functools.lru_cache(maxsize=1)
def category_table():
    """uint8[0x110000]: SPACE for `\\s`, LETTER for `\\p{L}`, NUMBER for `\\p{N}`, else OTHER.

    Built by running `regex` over a string of every code point once (about 0.2 s), so the scanner
    and the `regex` spec classify every character identically.
    """
    rx = require_regex()
    # subtle: lone surrogates are legal in a Python str, and `regex` classifies them (as OTHER).
    everything = "".join(map(chr, range(N_CODEPOINTS)))
    table = np.zeros(N_CODEPOINTS, dtype=np.uint8)
    for cls, pat in ((LETTER, r"\p{L}+"), (NUMBER, r"\p{N}+"), (SPACE, r"\s+")):
        for m in rx.finditer(pat, everything):
            start, end = m.span()
            if np.any(table[start:end] != OTHER):
                raise RuntimeError(f"category_table: {pat} overlaps another class at U+{start:04X}")
            table[start:end] = cls
    return table


def codepoints(text):
    """The code points of `text` as uint32 (ValueError naming the index of a lone surrogate)."""
    try:
        return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    except UnicodeEncodeError as err:
        raise ValueError(
            f"text: lone surrogate U+{ord(text[err.start]):04X} at index {err.start} cannot be "
            f"encoded as UTF-8") from None


_APOS, _SPACE_CHAR = 39, 32


@njit(cache=True)
def _gpt2_split(cps, cat):
    """Chunk ends of the GPT-2 pattern over code points `cps`; mirrors its alternatives in order."""
    n = cps.shape[0]
    ends = np.empty(n, dtype=np.int64)  # at most one chunk per code point
    k = 0
    i = 0
    while i < n:
        c = cps[i]
        j = -1
        # 1. 's|'t|'re|'ve|'m|'ll|'d  (case-sensitive; no alternative is a prefix of another)
        if c == _APOS and i + 1 < n:
            d = cps[i + 1]
            if d == 115 or d == 116 or d == 109 or d == 100:  # s t m d
                j = i + 2
            elif i + 2 < n:
                e = cps[i + 2]
                if (d == 114 and e == 101) or (d == 118 and e == 101) or (d == 108 and e == 108):  # re ve ll
                    j = i + 3
        if j < 0:
            cc = cat[c]
            start = i
            if c == _SPACE_CHAR and i + 1 < n and cat[cps[i + 1]] != SPACE:
                # 2-4. ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+`: the space joins the run after it
                cc = cat[cps[i + 1]]
                start = i + 1
            if cc != SPACE:
                j = start + 1
                while j < n and cat[cps[j]] == cc:
                    j += 1
            else:
                # 5. `\s+(?!\S)`: the whole run if it ends the text, else the run less its last
                #    character (which then leads the next chunk); 6. `\s+` for a run of one.
                e = i + 1
                while e < n and cat[cps[e]] == SPACE:
                    e += 1
                if e == n or e - i == 1:
                    j = e
                else:
                    j = e - 1
        ends[k] = j
        k += 1
        i = j
    return ends[:k]


def split_gpt2(text_or_cps):
    """The fast path: chunk (starts, ends) of the GPT-2 pattern, equal to `split_regex(..., GPT2)`."""
    cps = codepoints(text_or_cps) if isinstance(text_or_cps, str) else text_or_cps
    ends = _gpt2_split(cps, category_table())  # (n_chunks,)
    starts = np.empty_like(ends)  # (n_chunks,)
    if ends.shape[0]:
        starts[0] = 0
        starts[1:] = ends[:-1]
    return starts, ends


def split(text, pattern, fast=True):
    """Chunk (starts, ends) of `text` under `pattern` (None: the whole text is one chunk)."""
    if pattern is None:
        n = len(text)
        return np.zeros(1 if n else 0, np.int64), np.full(1 if n else 0, n, np.int64)
    if fast and pattern == GPT2_SPLIT_PATTERN:
        return split_gpt2(text)
    return split_regex(text, pattern)


def chunks(text, pattern, fast=True):
    """The chunk strings themselves (for training counts and for reading)."""
    starts, ends = split(text, pattern, fast)
    return [text[s:e] for s, e in zip(starts.tolist(), ends.tolist())]
