"""Property tests (hypothesis) for every BPE tier.

What it covers: decode(encode(s)) == s for arbitrary Unicode strings (hypothesis' default text
strategy: every code point except lone surrogates) on each tier, fast and reference paths giving
the same ids, training being deterministic, and a trained tokenizer that is saved (our format,
to_dict, GPT-2 files, tiktoken ranks) and loaded encoding identically.

Follows: the hypothesis docs' round-trip pattern. Does not: use the network; files go to tmp_path.
"""
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tinygrad_gpt.tokenizers import BPETokenizer, BasicTokenizer, RegexTokenizer, load_gpt2, load_tiktoken, save_gpt2, save_tiktoken, save_tokenizer
from tinygrad_gpt.tokenizers import load_tokenizer, tokenizer_from_dict

CORPUS = ("The quick brown fox jumps over the lazy dog; I'll say it's 1234 times.\n"
          "Ünïcödé: 日本語 テキスト, emoji 🙂🙂, tabs\t\tand   spaces.\n") * 4


def _tiers():
    return {
        "basic": BasicTokenizer().train(CORPUS, 256 + 40),
        "regex-gpt2": RegexTokenizer("gpt2").train(CORPUS, 256 + 40),
        "regex-gpt4": RegexTokenizer("gpt4").train(CORPUS, 256 + 40),
        "special": BPETokenizer(special_tokens=["<|endoftext|>"]).train(CORPUS, 256 + 40 + 1),
    }


TIERS = _tiers()
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("name", list(TIERS))
@SETTINGS
@given(text=st.text())
def test_round_trip_any_unicode(name, text):
    tok = TIERS[name]
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    tok.fast = False
    try:
        assert tok.encode(text) == ids
    finally:
        tok.fast = True


@SETTINGS
@given(text=st.text(alphabet=st.sampled_from("ab c\n'é🙂1"), max_size=40))
def test_round_trip_dense_alphabet(text):
    """Few distinct characters, so the learned merges actually fire inside `text`."""
    for tok in TIERS.values():
        assert tok.decode(tok.encode(text)) == text


@settings(max_examples=40, deadline=None)
@given(text=st.text(alphabet=st.sampled_from("abc d'\n1"), min_size=1, max_size=60),
       n_merges=st.integers(0, 12))
def test_training_is_deterministic_and_fast_equals_reference(text, n_merges):
    a = RegexTokenizer().train(text, 256 + n_merges)
    b = RegexTokenizer().train(text, 256 + n_merges)
    ref = RegexTokenizer()
    ref.fast = False
    ref.train(text, 256 + n_merges)
    assert a.merges == b.merges == ref.merges
    assert a.encode(text) == ref.encode(text)


@pytest.mark.parametrize("name", list(TIERS))
def test_saved_and_loaded_encodes_identically(name, tmp_path):
    tok = TIERS[name]
    probe = CORPUS + "unseen words: zebra quokka 42 🙂<|endoftext|>"
    kwargs = {"allowed_special": "all"} if name == "special" else {}
    expected = tok.encode(probe, **kwargs)

    save_tokenizer(tok, tmp_path / "tok.bpe")
    loaded = load_tokenizer(tmp_path / "tok.bpe")
    assert type(loaded) is type(tok) and loaded.merges == tok.merges and loaded.pattern == tok.pattern
    assert loaded.encode(probe, **kwargs) == expected

    again = tokenizer_from_dict(json.loads(json.dumps(tok.to_dict())))
    assert again.encode(probe, **kwargs) == expected
    assert tokenizer_from_dict(tok.to_dict()).encode(probe, **kwargs) == expected  # the checkpoint reader

    if name in ("regex-gpt2", "special"):  # these two formats assume the GPT-2 split pattern
        save_gpt2(tok, tmp_path / "gpt2")
        assert load_gpt2(tmp_path / "gpt2").encode(probe, allowed_special="all") == expected
        save_tiktoken(tok, tmp_path / "ranks.tiktoken")
        from_ranks = load_tiktoken(tmp_path / "ranks.tiktoken", special_tokens=tok.special_tokens)
        assert from_ranks.merges == tok.merges
        assert from_ranks.encode(probe, **kwargs) == expected
