"""Tests of the encode kernel's edge paths against the readable reference.

What it covers: the chunk cache when it fills up and starts over (a deliberately tiny cache),
chunks longer than the cache limit (encoded every time, never cached), the basic tier's single
long chunk (the heap-based merge is O(n log n), the reference O(n * merges)), encode_batch, and
GPT-2's "merge every occurrence of the best pair" agreeing with the kernel's "one lowest-ranked
pair at a time, leftmost first" on overlapping pairs; and the project's one kernel switch turning
the tokenizer's kernels off as it does every other kernel.

Follows: tiktoken's `_byte_pair_merge` (the kernel), GPT-2 `bpe()` (the reference). Does not:
need the GPT-2 files (the tokenizers here are trained in the test).
"""
import random

import pytest

from tinygrad_gpt import kernels
from tinygrad_gpt.tokenizers import BPETokenizer, BasicTokenizer, RegexTokenizer, tokenizer_from_dict
from tinygrad_gpt.tokenizers import fastbpe
from tinygrad_gpt.tokenizers.bpe import bpe_reference

TEXT = ("So shaken as we are, so wan with care, find we a time for frighted peace to pant, "
        "and breathe short-winded accents of new broils to be commenced in strands afar remote.\n") * 5


def _reference_ids(tok, text):
    ref = tokenizer_from_dict(tok.to_dict())
    ref.fast = False
    return ref.encode(text)


def test_overlapping_pairs_hand_derived():
    """Merges: (a, a) -> 256, (256, a) -> 257. "aaaaa": GPT-2 merges (a, a) at 0-1 and 2-3 first
    (left to right, non-overlapping) -> [256, 256, a]; then (256, a) at 1-2 -> [256, 257]."""
    tok = BasicTokenizer()
    tok.merges = [(97, 97, 256), (256, 97, 257)]
    tok._rebuild()
    assert bpe_reference([97] * 5, tok.merge_ranks) == [256, 257]
    assert tok.encode("aaaaa") == [256, 257]


def test_cache_that_fills_up_starts_over():
    tok = RegexTokenizer().train(TEXT, 256 + 50)
    expected = _reference_ids(tok, TEXT)
    tok._cache = fastbpe.ChunkCache(entries=4, byte_budget=16)
    assert tok.encode(TEXT) == expected
    assert tok.encode(TEXT) == expected  # second pass: hits and restarts mixed
    assert 0 < tok._cache.state[0] <= 4  # entries in use never exceed the capacity
    hits = tok._cache.state[3]
    assert tok.encode(" so so so so") == _reference_ids(tok, " so so so so")
    assert tok._cache.state[3] - hits >= 3  # the repeats of " so" came from the cache


def test_chunks_longer_than_the_cache_limit():
    tok = RegexTokenizer().train("aaaa bbbb " * 20, 256 + 6)
    text = "a" * 1001 + " " + "b" * 300 + "  " + " " * 400 + "x"
    assert fastbpe.CACHE_MAX_CHUNK < 300
    assert tok.encode(text) == _reference_ids(tok, text)
    assert tok.decode(tok.encode(text)) == text


def test_basic_tier_long_text_equals_reference():
    rng = random.Random(7)
    text = "".join(rng.choice(["the ", "then ", "hen ", "e", "t", "🙂", "\n"]) for _ in range(800))
    tok = BasicTokenizer().train(text, 256 + 40)
    assert tok.encode(text) == _reference_ids(tok, text)


def test_encode_batch_equals_encode():
    tok = BPETokenizer().train(TEXT, 256 + 30 + 1)
    texts = ["So shaken", "", "as we are<|endoftext|>", "🙂 frighted"]
    assert tok.encode_batch(texts, allowed_special="all") == [tok.encode(t, allowed_special="all") for t in texts]
    with pytest.raises(TypeError, match="list of str"):
        tok.encode_batch("a single string")


def test_kernel_switch_reaches_the_tokenizer(monkeypatch):
    """`kernels.set_backend` and TINYGRAD_GPT_KERNELS decide for tokenizers too (made before or
    after the switch), and `fast = ...` pins one tokenizer whatever the switch says."""
    before = RegexTokenizer()
    pinned = RegexTokenizer()
    pinned.fast = True
    kernels.set_backend("reference")
    try:
        assert before.fast is False and RegexTokenizer().fast is False
        assert pinned.fast is True
        # the references do the work then: same ids as the kernels give
        tok = RegexTokenizer()
        tok.train(TEXT, 300)
        fast = tokenizer_from_dict(tok.to_dict())
        fast.fast = True
        assert tok.encode(TEXT) == fast.encode(TEXT)
    finally:
        kernels.set_backend(None)
    assert before.fast is True
    monkeypatch.setenv("TINYGRAD_GPT_KERNELS", "reference")
    assert before.fast is False and pinned.fast is True
