"""Tests of BPE training: the hand example, tie-breaking, and the kernels against the references.

What it covers: minbpe's "aaabdaaabac" derivation; the documented tie-break (highest count, then
smallest (left, right)); early stop when no pair is left; and the incremental Numba trainer, the
naive Numba recount and the readable Python recount agreeing merge for merge (including the
overlapping-pair cases "aaaa" that incremental counting gets wrong most easily).

Follows: minbpe `test_tokenizer.py`. Does not: time anything (see benchmarks/tokenizer.py).
"""
import random

import numpy as np
import pytest

from tinygrad_gpt.tokenizers import BasicTokenizer, BPETokenizer, RegexTokenizer
from tinygrad_gpt.tokenizers import fastbpe
from tinygrad_gpt.tokenizers.bpe import train_merges_reference


@pytest.mark.parametrize("fast", [True, False], ids=["numba", "reference"])
def test_classic_aaabdaaabac(fast):
    """Training on "aaabdaaabac" for 3 merges gives [258, 100, 258, 97, 99].

    Pair counts: aa 4 (overlapping: "aaab" holds two), ab 2, the rest 1 -> merge (97, 97) -> 256:
    [256 97 98 100 256 97 98 97 99]. Now (256, 97) and (97, 98) both occur twice; the tie goes to
    the smaller pair (97, 98) -> 257: [256 257 100 256 257 97 99]. Then (256, 257) occurs twice ->
    258: [258 100 258 97 99]. (minbpe breaks the tie the other way and reaches the same ids.)
    """
    tok = BasicTokenizer()
    tok.fast = fast
    tok.train("aaabdaaabac", 256 + 3)
    assert tok.merges == [(97, 97, 256), (97, 98, 257), (256, 257, 258)]
    assert tok.encode("aaabdaaabac") == [258, 100, 258, 97, 99]
    assert tok.decode([258, 100, 258, 97, 99]) == "aaabdaaabac"


def test_tie_break_prefers_smallest_pair_not_first_seen():
    """"cdab": every pair occurs once; first seen would be (c, d), smallest is (a, b) = (97, 98)."""
    tok = BasicTokenizer().train("cdab", 257)
    assert tok.merges == [(97, 98, 256)]


def test_training_stops_when_no_pair_is_left():
    tok = RegexTokenizer().train("a b", 300)  # chunks "a", " b": one pair (32, 98) in all
    assert tok.merges == [(32, 98, 256)]
    assert tok.vocab_size == 257


def _words(texts_counts):
    return [(list(t.encode("utf-8")), c) for t, c in texts_counts]


def _flat(words):
    sym = np.array([i for w, _ in words for i in w], dtype=np.int32)
    lengths = np.array([len(w) for w, _ in words])
    end = np.zeros(sym.shape[0], dtype=np.bool_)
    end[np.cumsum(lengths) - 1] = True
    weight = np.repeat(np.array([c for _, c in words], dtype=np.int64), lengths)
    return sym, end, weight


CASES = [
    [("aaaa", 1)],  # overlapping pairs: (a, a) counted 3 times, merged twice
    [("aaaaa", 2), ("aa", 3)],
    [("abababab", 1), ("ba", 5)],
    [("hello", 3), (" world", 2), ("hell", 1), ("llll", 4)],
    [("x", 7)],  # no pair at all
]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_incremental_naive_and_reference_agree(case):
    words = _words(CASES[case])
    expected = train_merges_reference(words, 256, 20)
    for kernel in (fastbpe.train_merges, fastbpe.train_merges_naive):
        sym, end, weight = _flat(words)
        got = kernel(sym, end, weight, 256, 20)
        assert [tuple(p) for p in got.tolist()] == expected, kernel.__name__


def test_incremental_agrees_on_random_corpora():
    rng = random.Random(1234)
    for trial in range(30):
        words = [("".join(rng.choice("aab c") for _ in range(rng.randint(1, 12))), rng.randint(1, 5))
                 for _ in range(rng.randint(1, 25))]
        words = _words(words)
        expected = train_merges_reference(words, 256, 40)
        sym, end, weight = _flat(words)
        got = fastbpe.train_merges(sym, end, weight, 256, 40)
        assert [tuple(p) for p in got.tolist()] == expected, (trial, words)


def test_regex_tier_training_matches_reference_path():
    text = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
            "First Citizen:\nYou are all resolved rather to die than to famish?\n") * 3
    fast = BPETokenizer().train(text, 256 + 60 + 1)
    ref = BPETokenizer()
    ref.fast = False
    ref.train(text, 256 + 60 + 1)
    assert fast.merges == ref.merges and len(fast.merges) == 60
    assert fast.encode(text) == ref.encode(text)
    assert fast.decode(fast.encode(text)) == text
