"""Tests of the pre-tokenizers: the Numba GPT-2 scanner must cut exactly where `regex` does.

What it covers: hand-derived splits of the GPT-2 pattern's tricky alternatives (contractions,
the space that joins the next word, whitespace runs before text and at the end), equality of the
scanner and `regex.finditer` on a varied corpus, on tiny Shakespeare (found as the scripts find it;
skipped if absent) and on arbitrary Unicode strings
(hypothesis), and the category table agreeing with `regex` for every code point.

Follows: GPT-2 `encoder.py` (the pattern). Does not: test the GPT-4 pattern's speed (it has no
scanner; it goes through `regex`).
"""

import numpy as np
import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from tinygrad_gpt.tokenizers.pretokenize import (
    GPT2_SPLIT_PATTERN, GPT4_SPLIT_PATTERN, LETTER, NUMBER, OTHER, SPACE, category_table, chunks, split_gpt2,
    split_regex)

from conftest import require_shakespeare


def _scanner_chunks(text):
    starts, ends = split_gpt2(text)
    return [text[s:e] for s, e in zip(starts.tolist(), ends.tolist())]


@pytest.mark.parametrize("text, expected", [
    # contractions come first and are case-sensitive: "'S" is not one, so "'" joins nothing
    ("I'm you'll we've", ["I", "'m", " you", "'ll", " we", "'ve"]),
    ("IT'S", ["IT", "'", "S"]),
    # one space joins the letters, digits or punctuation after it
    ("a 12 !?", ["a", " 12", " !?"]),
    # a run of spaces before a word leaves its last space to the word (\s+(?!\S))
    ("a   b", ["a", "  ", " b"]),
    # a single newline before a word is its own chunk (\s+), as is a trailing run (whole)
    ("a\nb  ", ["a", "\n", "b", "  "]),
    ("\n\n x", ["\n\n", " x"]),
    ("", []),
])
def test_gpt2_split_by_hand(text, expected):
    assert _scanner_chunks(text) == expected
    assert regex.findall(GPT2_SPLIT_PATTERN, text) == expected


VARIED = ("Hello, world! It's 2024-06-01T12:00Z; x=3.14 y='a'  \t\n\n  indent\r\n"
          "naïve café ZÜRICH Ⅻ ½ ٣٤ 日本語 한국어 🙂👍🏽 e\u0301 \u00a0nbsp \u2028sep \u3000ideo '' ''s 's")


def test_scanner_equals_regex_on_varied_text():
    assert _scanner_chunks(VARIED) == regex.findall(GPT2_SPLIT_PATTERN, VARIED)


def test_scanner_equals_regex_on_tiny_shakespeare():
    text = require_shakespeare().read_text(encoding="utf-8")
    fast = split_gpt2(text)
    spec = split_regex(text, GPT2_SPLIT_PATTERN)
    assert np.array_equal(fast[0], spec[0]) and np.array_equal(fast[1], spec[1])


@settings(max_examples=300, deadline=None)
@given(text=st.text())
def test_scanner_equals_regex_on_any_unicode(text):
    assert _scanner_chunks(text) == regex.findall(GPT2_SPLIT_PATTERN, text)


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet=st.sampled_from(" \t\n\r\x0b\x85\xa0'sdmtrvelLA1٣x.,!漢🙂\u0301"), max_size=30))
def test_scanner_equals_regex_on_dense_alphabet(text):
    """An alphabet of the characters that steer the pattern, so every alternative gets exercised."""
    assert _scanner_chunks(text) == regex.findall(GPT2_SPLIT_PATTERN, text)


def test_category_table_agrees_with_regex():
    table = category_table()
    rng = np.random.default_rng(0)
    sample = np.concatenate([np.arange(0, 0x3000), rng.integers(0x3000, 0x110000, 20000)])
    for cp in sample.tolist():
        ch = chr(cp)
        want = (LETTER if regex.match(r"\p{L}", ch) else NUMBER if regex.match(r"\p{N}", ch)
                else SPACE if regex.match(r"\s", ch) else OTHER)
        assert table[cp] == want, hex(cp)


def test_gpt4_pattern_goes_through_regex():
    text = "I'LL pay 12345 dollars\n\n  ok"
    assert chunks(text, GPT4_SPLIT_PATTERN) == regex.findall(GPT4_SPLIT_PATTERN, text)
    assert chunks(text, GPT4_SPLIT_PATTERN)[:4] == ["I", "'LL", " pay", " "]
