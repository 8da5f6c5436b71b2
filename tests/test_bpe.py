"""Tests of the byte-level BPE tokenizer against GPT-2 and against hand derivations.

What it covers: GPT-2 exactness with the real `vocab.json` / `merges.txt` (found via the GPT2_DIR
environment variable, default ../shared/data/gpt2 next to the repository; skipped with the reason
when absent), on a varied corpus whose reference ids were produced by tiktoken from the same files
and are written out below, plus a few short strings derived by hand; special-token rules; decode
errors; and, when tiktoken is importable, the whole of tiny Shakespeare against a tiktoken.Encoding
built from the same files (tiny Shakespeare as the scripts find it: $TINYSHAKESPEARE, then the cache).

Follows: tiktoken's tests (special-token rules), minbpe's `test_tokenizer.py`.
Does not: touch the network or the working directory.
"""
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tinygrad_gpt.tokenizers import BPETokenizer, GPT2_SPLIT_PATTERN, load_gpt2, tokenizer_from_dict
from tinygrad_gpt.tokenizers.formats import bytes_to_unicode

from conftest import gpt2_dir, peer, require_shakespeare

GPT2_DIR = gpt2_dir()

needs_gpt2 = pytest.mark.skipif(
    not (GPT2_DIR / "vocab.json").is_file() or not (GPT2_DIR / "merges.txt").is_file(),
    reason=f"GPT-2 files not found in {GPT2_DIR} (set GPT2_DIR to a folder with vocab.json and merges.txt)")


@pytest.fixture(scope="module")
def gpt2():
    return load_gpt2(GPT2_DIR)


# Reference ids from tiktoken over the same vocab.json/merges.txt (see the optional test below,
# which re-derives them whenever tiktoken is importable).
CORPUS = {
    "empty": ("", []),
    "prose": ("The quick brown fox jumps over the lazy dog. It was the best of times, it was the worst of times.",
              [464, 2068, 7586, 21831, 18045, 625, 262, 16931, 3290, 13, 632, 373, 262, 1266, 286, 1661, 11,
               340, 373, 262, 5290, 286, 1661, 13]),
    "code": ("def f(x):\n    return x**2 + 1  # square\n\tif x != 0: print(f'{x=}')\n",
             [4299, 277, 7, 87, 2599, 198, 220, 220, 220, 1441, 2124, 1174, 17, 1343, 352, 220, 1303, 6616,
              198, 197, 361, 2124, 14512, 657, 25, 3601, 7, 69, 6, 90, 87, 28, 92, 11537, 198]),
    "numbers": ("In 1984, 3.14159 and 2,718 cost $1,000,000.00 or 42% of 7e-3.",
                [818, 12844, 11, 513, 13, 1415, 19707, 290, 362, 11, 45720, 1575, 720, 16, 11, 830, 11, 830,
                 13, 405, 393, 5433, 4, 286, 767, 68, 12, 18, 13]),
    "whitespace": ("a  b   c    \n\n\n  d\t\t e \r\n   ",
                   [64, 220, 275, 220, 220, 269, 220, 220, 220, 220, 628, 198, 220, 288, 197, 197, 304, 220,
                    201, 198, 220, 220, 220]),
    "contractions": ("I'm sure they'll say we've done what you'd've LIKED, isn't it? 'tis O'Neil's.",
                     [40, 1101, 1654, 484, 1183, 910, 356, 1053, 1760, 644, 345, 1549, 1053, 406, 18694, 1961,
                      11, 2125, 470, 340, 30, 705, 48010, 440, 6, 29354, 338, 13]),
    "emoji": ("Hello 👋🏽 world 🌍! Family: 👨‍👩‍👧‍👦 ok",
              [15496, 50169, 233, 8582, 237, 121, 995, 12520, 234, 235, 0, 7884, 25, 50169, 101, 447, 235,
               41840, 102, 447, 235, 41840, 100, 447, 235, 41840, 99, 12876]),
    "cjk": ("日本語のテキストと中文文本，还有한국어 텍스트。",
            [33768, 98, 17312, 105, 45739, 252, 5641, 24336, 25084, 43302, 30201, 40792, 23877, 229, 23877,
             229, 17312, 105, 171, 120, 234, 32573, 246, 17312, 231, 47991, 250, 166, 113, 255, 168, 244, 112,
             220, 169, 227, 235, 168, 232, 97, 169, 232, 116, 16764]),
    "combining": ("cafe\u0301 na\u0308ive Z\u0351\u0352a\u0300lgo\u0303 e\u0301\u0301",
                  [66, 8635, 136, 223, 12385, 136, 230, 425, 1168, 137, 239, 137, 240, 64, 136, 222, 75, 2188,
                   136, 225, 304, 136, 223, 136, 223]),
}


@needs_gpt2
@pytest.mark.parametrize("fast", [True, False], ids=["numba", "reference"])
@pytest.mark.parametrize("name", list(CORPUS))
def test_gpt2_corpus_matches_reference_ids(gpt2, name, fast):
    text, expected = CORPUS[name]
    gpt2.fast = fast
    try:
        assert gpt2.encode(text) == expected
        assert gpt2.decode(expected) == text
    finally:
        gpt2.fast = True


@needs_gpt2
def test_control_wrong_split_pattern_is_caught(gpt2):
    """Control: the corpus test must be able to fail. The same GPT-2 merges behind the GPT-4 split
    (digits in runs of at most 3, no space before digits) give other ids for "numbers"."""
    wrong = tokenizer_from_dict({**gpt2.to_dict(), "pattern": "gpt4"})
    text, expected = CORPUS["numbers"]
    assert wrong.encode(text) != expected
    assert wrong.decode(wrong.encode(text)) == text


@needs_gpt2
def test_gpt2_hand_derived(gpt2):
    """Short strings whose ids can be read straight off vocab.json and the split pattern.

    - "hello world": the pattern cuts "hello" | " world"; GPT-2 spells the space byte as "Ġ", and
      vocab.json has "hello" = 31373 and "Ġworld" = 995, each reachable by merges -> [31373, 995].
    - "I'm": the contraction alternative `'m` comes first in the pattern, so "I" | "'m";
      vocab.json: "I" = 40, "'m" = 1101 -> [40, 1101].
    - "  hi": a whitespace run followed by a letter leaves its last space to the word (`\\s+(?!\\S)`),
      so " " | " hi"; "Ġ" = 220, "Ġhi" = 23105 -> [220, 23105].
    - " 2024": ` ?\\p{N}+` takes the space with the digits; "Ġ2024" = 48609 -> [48609].
    """
    vocab = json.loads((GPT2_DIR / "vocab.json").read_text(encoding="utf-8"))
    assert (vocab["hello"], vocab["Ġworld"], vocab["I"], vocab["'m"], vocab["Ġ"], vocab["Ġhi"], vocab["Ġ2024"]) == \
        (31373, 995, 40, 1101, 220, 23105, 48609)
    assert gpt2.encode("hello world") == [31373, 995]
    assert gpt2.encode("I'm") == [40, 1101]
    assert gpt2.encode("  hi") == [220, 23105]
    assert gpt2.encode(" 2024") == [48609]
    assert gpt2.vocab_size == 50257
    assert gpt2.special_tokens == {"<|endoftext|>": 50256}


@needs_gpt2
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text())
def test_gpt2_kernel_equals_gpt2_bpe_on_any_unicode(gpt2, text):
    """The Numba path (scanner + heap merge + cache) against GPT-2's own algorithm (regex + bpe())."""
    ids = gpt2.encode_ordinary(text)
    gpt2.fast = False
    try:
        assert gpt2.encode_ordinary(text) == ids
    finally:
        gpt2.fast = True
    assert gpt2.decode(ids) == text


@needs_gpt2
def test_gpt2_special_tokens(gpt2):
    text = "a<|endoftext|>b"
    with pytest.raises(ValueError, match=r"special token '<\|endoftext\|>' at index 1"):
        gpt2.encode(text)
    assert gpt2.encode(text, allowed_special="all") == [64, 50256, 65]
    assert gpt2.encode(text, allowed_special={"<|endoftext|>"}) == [64, 50256, 65]
    # neither allowed nor disallowed: ordinary text ("<|" "endoftext" "|>")
    ordinary = gpt2.encode(text, disallowed_special=())
    assert 50256 not in ordinary and gpt2.decode(ordinary) == text
    assert gpt2.decode([64, 50256, 65]) == text
    assert gpt2.encode_batch(["a", "<|endoftext|>"], allowed_special="all") == [[64], [50256]]


@needs_gpt2
def test_decode_errors_and_replacement(gpt2):
    with pytest.raises(ValueError, match=r"id 50257 at position 1 is not in the vocabulary"):
        gpt2.decode([64, 50257])
    with pytest.raises(ValueError, match=r"id -1 at position 0"):
        gpt2.decode([-1])
    # "🌍" is the bytes F0 9F 8C 8D; GPT-2 has "\xf0\x9f" = 8582 and one token per trailing byte, so
    # a prefix of the ids is a cut UTF-8 sequence, which decodes to U+FFFD
    ids = gpt2.encode("🌍")
    assert ids == [8582, 234, 235] and gpt2.decode(ids) == "🌍"
    assert gpt2.decode(ids[:1]) == "\ufffd" and gpt2.decode_bytes(ids[:1]) == b"\xf0\x9f"


@needs_gpt2
def test_tiktoken_parity_on_tiny_shakespeare(gpt2):
    tiktoken = peer("tiktoken")
    encoder = json.loads((GPT2_DIR / "vocab.json").read_text(encoding="utf-8"))
    to_byte = {ch: b for b, ch in bytes_to_unicode().items()}
    ranks = {bytes(to_byte[ch] for ch in s): i for s, i in encoder.items() if s != "<|endoftext|>"}
    enc = tiktoken.Encoding(name="gpt2-local", pat_str=GPT2_SPLIT_PATTERN, mergeable_ranks=ranks,
                            special_tokens={"<|endoftext|>": 50256})
    text = require_shakespeare().read_text(encoding="utf-8")
    ours = gpt2.encode(text)
    assert ours == enc.encode_ordinary(text)
    assert len(ours) == 338025
    assert gpt2.decode(ours) == text
    for name, (corpus_text, expected) in CORPUS.items():
        assert enc.encode_ordinary(corpus_text) == expected, name


def test_special_tokens_on_a_trained_tokenizer():
    tok = BPETokenizer(special_tokens=["<|endoftext|>", "<|pad|>"]).train("ab ab ab<|endoftext|>ab", 258 + 2)
    # merges: "ab" (count 4) -> 256, then " ab" = (32, 256) (count 2) -> 257; specials follow
    assert tok.merges == [(97, 98, 256), (32, 256, 257)]
    assert tok.special_tokens == {"<|endoftext|>": 258, "<|pad|>": 259}
    assert tok.encode("ab<|pad|> ab", allowed_special={"<|pad|>"}) == [256, 259, 257]
    with pytest.raises(ValueError, match="<|endoftext|>"):
        tok.encode("x<|endoftext|>", allowed_special={"<|pad|>"})
    with pytest.raises(ValueError, match="allowed_special"):
        tok.encode("x", allowed_special={"<|nope|>"})


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="vocab_size"):
        BPETokenizer().train("abc", 100)
    with pytest.raises(TypeError, match="text must be a str"):
        BPETokenizer().encode(b"bytes")
    with pytest.raises(ValueError, match="lone surrogate U\\+D800 at index 1"):
        BPETokenizer().encode("a\ud800")


def test_register_special_tokens_adds_ids_that_encode_and_decode():
    """A trained tokenizer of 258 ids (256 bytes + "ab" + <|endoftext|>): registering <|user|> as
    258 makes it one id when allowed, and ordinary text (its bytes) when not."""
    tok = BPETokenizer(special_tokens=["<|endoftext|>"]).train("ab ab ab", 258)
    assert tok.vocab_size == 258
    tok.register_special_tokens({"<|user|>": 258})
    assert tok.vocab_size == 259 and tok.special_tokens["<|user|>"] == 258
    assert tok.encode("<|user|>ab", allowed_special="all") == [258, 256]
    assert tok.decode([258, 256]) == "<|user|>ab"
    assert tok.encode("<|user|>", disallowed_special=()) == list(b"<|user|>")
