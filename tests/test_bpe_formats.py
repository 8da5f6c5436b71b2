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

from tinygrad_gpt.tokenizers import BasicTokenizer, TokenizerFileError, load_gpt2, load_tiktoken, load_tokenizer, save_gpt2, save_tokenizer
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
    save_tokenizer(tok, p)
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


# ---- Hugging Face tokenizer.json, and merges cut short ----------------------------------------

def _gpt2_tiny_tokenizer(tmp_path):
    _write_gpt2(tmp_path / "src", {"he": 256, "Ġhe": 257, "<|x|>": 258}, ["h e", "Ġ he"])
    return load_gpt2(tmp_path / "src")


def test_save_gpt2_writes_tokenizer_json_that_loads_alone_with_the_same_ids(tmp_path):
    """The same tiny vocabulary as above, written by save_gpt2: vocab.json, merges.txt and
    tokenizer.json. With vocab.json and merges.txt removed, the folder loads from tokenizer.json to
    the same merges, specials and ids (" hehe" -> [257, 256], "<|x|>" -> 258)."""
    save_gpt2(_gpt2_tiny_tokenizer(tmp_path), tmp_path / "out")
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["merges.txt", "tokenizer.json", "vocab.json"]
    doc = json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))
    assert doc["model"]["type"] == "BPE" and doc["model"]["merges"] == [["h", "e"], ["Ġ", "he"]]
    assert doc["added_tokens"][0]["content"] == "<|x|>" and doc["added_tokens"][0]["id"] == 258
    (out / "vocab.json").unlink()
    (out / "merges.txt").unlink()
    tok = load_gpt2(out)
    assert tok.merges == [(104, 101, 256), (32, 256, 257)] and tok.special_tokens == {"<|x|>": 258}
    assert tok.encode(" hehe") == [257, 256] and tok.encode("<|x|>", allowed_special="all") == [258]


def test_tokenizer_json_merges_as_strings_and_a_split_pattern_load(tmp_path):
    """Older tokenizers wrote merges as "left right" strings; a pattern other than GPT-2's is a Split
    before a ByteLevel without its own regex. Pattern r"\\S+|\\s+" keeps " he" apart as " " + "he"."""
    tok = _gpt2_tiny_tokenizer(tmp_path)
    save_gpt2(tok, tmp_path / "out")
    path = tmp_path / "out" / "tokenizer.json"
    doc = json.loads(path.read_text(encoding="utf-8"))
    doc["model"]["merges"] = [" ".join(m) for m in doc["model"]["merges"]]
    doc["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": r"\S+|\s+"}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}
    path.write_text(json.dumps(doc), encoding="utf-8")
    from tinygrad_gpt.tokenizers.formats import load_tokenizer_json
    again = load_tokenizer_json(path)
    assert again.pattern == r"\S+|\s+"
    assert again.encode(" hehe") == [32, 256, 256]


@pytest.mark.parametrize("change, field", [
    (lambda d: d["model"].update(type="WordPiece"), "model.type"),
    (lambda d: d.update(normalizer={"type": "NFC"}), "normalizer"),
    (lambda d: d.update(pre_tokenizer={"type": "Whitespace"}), "pre_tokenizer"),
    (lambda d: d["pre_tokenizer"].update(add_prefix_space=True), "add_prefix_space"),
    (lambda d: d["model"]["merges"].append(["h", "zz"]), "right token 'zz' is not in model.vocab"),
    (lambda d: d["added_tokens"][0].update(id=7), "added_tokens"),
])
def test_tokenizer_json_that_is_not_gpt2s_kind_is_refused_naming_the_field(tmp_path, change, field):
    save_gpt2(_gpt2_tiny_tokenizer(tmp_path), tmp_path / "out")
    path = tmp_path / "out" / "tokenizer.json"
    doc = json.loads(path.read_text(encoding="utf-8"))
    change(doc)
    path.write_text(json.dumps(doc, indent=1), encoding="utf-8")
    from tinygrad_gpt.tokenizers.formats import load_tokenizer_json
    with pytest.raises(TokenizerFileError, match=field) as err:
        load_tokenizer_json(path)
    assert err.value.path == str(path) and err.value.line >= 1


def test_merges_cut_short_are_refused_not_read_as_special_tokens(tmp_path):
    """vocab.json: "he" 256, "Ġhe" 257, "heh" 258, "<|x|>" 259; merges "h e", "Ġ he", "he h" make
    256-258, so "<|x|>" is the one special. With "Ġ he" dropped from merges.txt, 257 is made by no
    merge yet sits below the merged 258: a cut file, refused, not a second special token."""
    _write_gpt2(tmp_path, {"he": 256, "Ġhe": 257, "heh": 258, "<|x|>": 259}, ["h e", "Ġ he", "he h"])
    assert load_gpt2(tmp_path).special_tokens == {"<|x|>": 259}  # control: the whole file loads
    _write_gpt2(tmp_path, {"he": 256, "Ġhe": 257, "heh": 258, "<|x|>": 259}, ["h e", "he h"])
    with pytest.raises(TokenizerFileError, match=r"1 entries .*'Ġhe', id 257.*cut short") as err:
        load_gpt2(tmp_path)
    assert err.value.path.endswith("vocab.json")


def test_a_huge_token_id_is_refused_before_any_table_is_made(tmp_path):
    _write_gpt2(tmp_path, {"he": 256, "<|x|>": 10 ** 9}, ["h e"])
    with pytest.raises(TokenizerFileError, match=r"id of '<\|x\|>' is 1000000000, over the largest"):
        load_gpt2(tmp_path)


def test_folder_with_neither_tokenizer_names_both_kinds(tmp_path):
    with pytest.raises(FileNotFoundError, match="vocab.json does not exist.*tokenizer.json"):
        load_gpt2(tmp_path)
