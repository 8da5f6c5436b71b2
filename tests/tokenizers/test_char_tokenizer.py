"""Tests for tinygrad_gpt/tokenizers/char.py.

Hand derivation used throughout: "hello" has the characters {h, e, l, o}; sorted by code point
they are e(101) < h(104) < l(108) < o(111), so e=0, h=1, l=2, o=3 and "hello" -> [1, 0, 2, 2, 3].
"""
import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tinygrad_gpt.tokenizers.char import CharTokenizer, UnknownCharacterError

from conftest import NO_DATA_REASON, shakespeare_path

REAL_PATH = shakespeare_path()


def test_from_text_sorts_unique_characters():
    tok = CharTokenizer.from_text("hello")
    assert tok.chars == ["e", "h", "l", "o"] and tok.vocab_size == 4
    assert tok.encode("hello") == [1, 0, 2, 2, 3]
    assert tok.decode([1, 0, 2, 2, 3]) == "hello"


def test_from_list_keeps_the_given_order():
    tok = CharTokenizer(["o", "l", "e", "h"])
    assert tok.encode("hello") == [3, 2, 1, 1, 0]
    assert tok.decode(np.array([3, 2, 1, 1, 0], dtype=np.uint8)) == "hello"


def test_encode_array_is_int64_and_matches_encode():
    tok = CharTokenizer.from_text("hello")
    ids = tok.encode_array("ohhel")
    assert ids.dtype == np.int64 and ids.tolist() == [3, 1, 1, 0, 2] == tok.encode("ohhel")
    assert tok.encode("") == [] and tok.decode([]) == ""


def test_characters_outside_the_bmp_count_as_one_position():
    tok = CharTokenizer.from_text("a\U0001F600b")  # a(97) b(98) 😀(0x1F600) -> a=0, b=1, 😀=2
    assert tok.encode("b\U0001F600a") == [1, 2, 0]
    with pytest.raises(UnknownCharacterError, match=r"'c' \(U\+0063\) at position 2"):
        tok.encode("\U0001F600\U0001F600c")  # position counts characters, not bytes


def test_unknown_character_names_it_and_its_position():
    tok = CharTokenizer.from_text("hello")
    with pytest.raises(ValueError, match=r"character 'x' \(U\+0078\) at position 3 is not in the "
                                         r"vocabulary of 4 characters") as info:
        tok.encode("helxo")
    assert isinstance(info.value, UnknownCharacterError)
    assert (info.value.char, info.value.position) == ("x", 3)
    with pytest.raises(UnknownCharacterError, match=r"'\\n'.*position 0"):
        tok.encode_array("\nhello")


def test_decode_out_of_range_names_the_id_and_vocab_size():
    tok = CharTokenizer.from_text("hello")
    with pytest.raises(ValueError, match=r"id 4 at position 1 is out of range for vocab_size 4"):
        tok.decode([0, 4])
    with pytest.raises(ValueError, match=r"id -1 at position 0 is out of range"):
        tok.decode(np.array([-1, 0]))  # no Python-style negative indexing
    with pytest.raises(ValueError, match=r"1-D sequence of integers.*float64"):
        tok.decode([0.0, 1.0])


def test_bad_alphabets_are_rejected():
    with pytest.raises(ValueError, match=r"chars\[2\] = 'a' repeats chars\[0\]"):
        CharTokenizer(["a", "b", "a"])
    with pytest.raises(ValueError, match=r"chars\[1\] must be a one-character string, got 'bc'"):
        CharTokenizer(["a", "bc"])
    with pytest.raises(ValueError, match="text is empty"):
        CharTokenizer.from_text("")


def test_dict_round_trip_through_json():
    tok = CharTokenizer.from_text("To be,\nor not!")
    d = json.loads(json.dumps(tok.to_dict()))
    assert d["type"] == "char"
    again = CharTokenizer.from_dict(d)
    assert again == tok and again.encode("be or") == tok.encode("be or")
    with pytest.raises(ValueError, match=r"expected type 'char', got 'bpe'"):
        CharTokenizer.from_dict({"type": "bpe", "chars": ["a"]})


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1))
def test_decode_inverts_encode(text):
    tok = CharTokenizer.from_text(text)
    assert tok.vocab_size == len(set(text))
    assert tok.decode(tok.encode_array(text)) == text
    assert tok.encode(text) == [tok.chars.index(c) for c in text]  # the slow, obvious definition


@pytest.mark.skipif(REAL_PATH is None, reason=NO_DATA_REASON)
def test_tiny_shakespeare_has_65_characters_and_round_trips():
    text = REAL_PATH.read_text(encoding="utf-8")
    tok = CharTokenizer.from_text(text)
    assert tok.vocab_size == 65
    assert tok.chars[:2] == ["\n", " "] and tok.chars[-1] == "z"
    ids = tok.encode_array(text)
    assert ids.shape == (1_115_394,) and ids[:5].tolist() == tok.encode("First")
    assert tok.decode(ids) == text


def test_special_tokens_take_the_ids_after_the_alphabet():
    """"hello" (e 0, h 1, l 2, o 3) with <|user|>, <|end|>: ids 4 and 5, vocab_size 6; decode writes
    their names; text never encodes to them (a typed "<|user|>" is characters, unknown here)."""
    tok = CharTokenizer.from_text("hello", special_tokens=["<|user|>", "<|end|>"])
    assert tok.special_tokens == {"<|user|>": 4, "<|end|>": 5} and tok.vocab_size == 6
    assert tok.decode([4, 1, 0, 2, 2, 3, 5, 5, 3]) == "<|user|>hello<|end|><|end|>o"
    assert tok.encode("hello") == [1, 0, 2, 2, 3]
    with pytest.raises(UnknownCharacterError, match=r"'<' \(U\+003C\) at position 0 is not in the vocabulary of 4 "
                                                     r"characters"):
        tok.encode("<|user|>")
    with pytest.raises(ValueError, match=r"id 6 at position 1 is out of range for vocab_size 6"):
        tok.decode([4, 6])


def test_special_tokens_round_trip_and_a_dict_without_them_has_none():
    tok = CharTokenizer.from_text("hello").with_special_tokens(["<|a|>", "<|b|>"])
    d = json.loads(json.dumps(tok.to_dict()))
    assert d["special_tokens"] == ["<|a|>", "<|b|>"] and CharTokenizer.from_dict(d) == tok
    plain = CharTokenizer.from_text("hello")
    assert "special_tokens" not in plain.to_dict() and plain != tok
    assert tok.with_special_tokens(["<|b|>", "<|c|>"]).special_tokens == {"<|a|>": 4, "<|b|>": 5, "<|c|>": 6}


def test_bad_special_tokens_are_named():
    with pytest.raises(ValueError, match=r"special_tokens\[0\] must be a name of at least two characters"):
        CharTokenizer("ab", ["c"])
    with pytest.raises(ValueError, match=r"special_tokens\[1\] = '<\|x\|>' is given twice"):
        CharTokenizer("ab", ["<|x|>", "<|x|>"])
    with pytest.raises(TypeError, match="not the string|the string"):
        CharTokenizer("ab", "<|x|>")
