"""Tests of the tokenizer file formats: what a malformed file's error says, and exact round trips.

What it covers: each reader (GPT-2 vocab.json + merges.txt, tiktoken ranks, our versioned format)
raising TokenizerFileError that names the file and the 1-based line for a broken line; GPT-2's
byte <-> character map; and a hand-written tiny GPT-2-style vocabulary loading to the merges and
ids one derives by reading it. All files are written under tmp_path.

Follows: GPT-2 `encoder.py` (file layout), tiktoken `load.py`. Does not: read the real GPT-2 files
(test_bpe.py does).
"""
import base64
import json

import pytest

from tinygrad_gpt.tokenizers import BasicTokenizer, TokenizerFileError, load_gpt2, load_tiktoken, load_tokenizer
from tinygrad_gpt.tokenizers.formats import bytes_to_unicode


def _write_gpt2(d, extra_vocab, merges_lines):
    enc = bytes_to_unicode()
    vocab = {enc[b]: b for b in range(256)}  # byte ids in byte order, to keep the arithmetic easy
    vocab.update(extra_vocab)
    d.mkdir(exist_ok=True)
    (d / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (d / "merges.txt").write_text("\n".join(["#version: 0.2"] + merges_lines) + "\n", encoding="utf-8")


def test_bytes_to_unicode_is_gpt2s():
    enc = bytes_to_unicode()
    assert len(set(enc.values())) == 256
    assert enc[ord("a")] == "a" and enc[0x20] == "Ġ" and enc[0x0A] == "Ċ" and enc[0x00] == "Ā"


def test_tiny_gpt2_files_load_as_read(tmp_path):
    """merges "h e" then "Ġ he": ids 256 = "he", 257 = " he" (Ġ is the space); "<|x|>" is made by
    no merge, so it is a special token. " hehe" splits as " hehe" (one chunk) -> [257, 256]."""
    _write_gpt2(tmp_path, {"he": 256, "Ġhe": 257, "<|x|>": 258}, ["h e", "Ġ he"])
    tok = load_gpt2(tmp_path)
    assert tok.merges == [(104, 101, 256), (32, 256, 257)]
    assert tok.special_tokens == {"<|x|>": 258}
    assert tok.encode(" hehe") == [257, 256]
    assert tok.encode("<|x|>", allowed_special="all") == [258]


@pytest.mark.parametrize("merges_lines, line, message", [
    (["h e", "too many fields"], 3, "expected 'left right'"),
    (["h e", "q zz"], 3, "right token 'zz' is not in vocab.json"),
    (["h e", "Ġ h"], 3, "merged token 'Ġh' is not in vocab.json"),
])
def test_gpt2_merges_errors_name_file_and_line(tmp_path, merges_lines, line, message):
    _write_gpt2(tmp_path, {"he": 256}, merges_lines)
    with pytest.raises(TokenizerFileError, match=message) as err:
        load_gpt2(tmp_path)
    assert err.value.path.endswith("merges.txt") and err.value.line == line
    assert f"merges.txt:{line}:" in str(err.value)


def test_gpt2_vocab_errors_name_file_and_line(tmp_path):
    tmp_path.joinpath("merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    tmp_path.joinpath("vocab.json").write_text('{"a": 1,\n "b": 2,\n "c" 3}', encoding="utf-8")
    with pytest.raises(TokenizerFileError, match=r"vocab.json:3: not valid JSON"):
        load_gpt2(tmp_path)
    with pytest.raises(FileNotFoundError, match="vocab.json"):
        load_gpt2(tmp_path / "nowhere")


def _ranks_file(path, rows):
    path.write_text("\n".join(f"{base64.b64encode(t).decode()} {r}" for t, r in rows) + "\n", encoding="utf-8")


def test_tiktoken_errors_name_file_and_line(tmp_path):
    rows = [(bytes([b]), b) for b in range(256)]
    p = tmp_path / "r.tiktoken"
    _ranks_file(p, rows + [(b"ab", 256), (b"abc", 257)])
    tok = load_tiktoken(p)
    assert tok.merges == [(97, 98, 256), (256, 99, 257)]
    p.write_text(p.read_text() + "!!notbase64 258\n", encoding="utf-8")
    with pytest.raises(TokenizerFileError, match=r"r.tiktoken:259: .*not valid base64"):
        load_tiktoken(p)
    _ranks_file(p, rows + [(b"abc", 256)])  # "abc" cannot be two earlier tokens: a|b|c are three
    with pytest.raises(TokenizerFileError, match=r"r.tiktoken:257: token b'abc' \(rank 256\) is not the merge"):
        load_tiktoken(p)
    _ranks_file(p, rows[1:])
    with pytest.raises(TokenizerFileError, match=r"single-byte token 0x00 is missing"):
        load_tiktoken(p)


def test_own_format_errors_name_file_and_line(tmp_path):
    tok = BasicTokenizer().train("aaabdaaabac", 259)
    p = tmp_path / "t.bpe"
    tok.save(p)
    lines = p.read_text(encoding="utf-8").split("\n")
    assert lines[0] == "tinygrad_gpt.bpe 1" and lines[2:5] == ["97 97 256", "97 98 257", "256 257 258"]
    assert load_tokenizer(p).encode("aaabdaaabac") == [258, 100, 258, 97, 99]

    def broken(line_index, text):
        bad = list(lines)
        bad[line_index] = text
        p.write_text("\n".join(bad), encoding="utf-8")
        with pytest.raises(TokenizerFileError) as err:
            load_tokenizer(p)
        return err.value

    assert broken(0, "tinygrad_gpt.bpe 99").line == 1
    assert broken(1, "{not json").line == 2
    err = broken(3, "97 x 257")
    assert err.line == 4 and "three ints" in str(err) and str(p) in str(err)
    err = broken(4, "256 300 258")
    assert err.line == 5 and "right id 300 is not defined" in str(err)
