"""Smoke test of examples/bpe.py: it trains, prints its report and saves a loadable tokenizer.

What it covers: the script end to end on a small text written to tmp_path (basic and GPT-2-split
tiers), checked against what its report must contain. Follows: nothing in particular.
Does not: check the numbers beyond the vocabulary size and the round trip (test_bpe_train.py does).
"""
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from tinygrad_gpt.tokenizers import load_tokenizer

ROOT = REPO


@pytest.mark.parametrize("pattern", ["gpt2", "none"])
def test_example_trains_reports_and_saves(tmp_path, pattern):
    data = tmp_path / "text.txt"
    data.write_text("To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n" * 20,
                    encoding="utf-8")
    out = tmp_path / "tok.bpe"
    run = subprocess.run([sys.executable, str(ROOT / "examples" / "bpe.py"), "--data", str(data),
                          "--vocab-size", "300", "--pattern", pattern, "--out", str(out)],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "vocab size: 300" in run.stdout and "bytes/token" in run.stdout
    assert "first merges:" in run.stdout and "last merges:" in run.stdout and "(ok)" in run.stdout
    assert load_tokenizer(out).vocab_size == 300


def test_example_names_a_missing_file(tmp_path):
    run = subprocess.run([sys.executable, str(ROOT / "examples" / "bpe.py"), "--data", str(tmp_path / "nope.txt")],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert run.returncode != 0 and "--data" in run.stderr and "nope.txt" in run.stderr


def _example(tmp_path, *flags, text="ab cd\nef gh\n" * 30):
    data = tmp_path / "text.txt"
    data.write_text(text, encoding="utf-8")
    return subprocess.run([sys.executable, str(ROOT / "examples" / "bpe.py"), "--data", str(data),
                           "--vocab-size", "270", "--out", str(tmp_path / "tok.bpe"), *flags],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)


@pytest.mark.parametrize("flags, says", [
    (("--pattern", "."), "--pattern '.' does not cover the training text: '\\n' at line 1, column 6"),
    (("--pattern", "[a-z]+"), "--pattern '[a-z]+' does not cover the training text: ' ' at line 1, column 3"),
    (("--pattern", "[a-z \\n]+"), "does not cover --sample: 'T' at line 1, column 1 of --sample"),
    (("--pattern", "x*"), "--pattern: 'x*' matches the empty string"),
    (("--pattern", ""), "--pattern is empty")])
def test_a_lossy_pattern_is_refused_before_training_and_nothing_is_saved(tmp_path, flags, says):
    """"." skips newlines, "[a-z]+" spaces, "x*" matches "" everywhere: a tokenizer that split so would
    lose those characters, so the pattern is a usage error (exit 2), found before any training."""
    run = _example(tmp_path, *flags)
    assert run.returncode == 2 and says in run.stderr and "Traceback" not in run.stderr, run.stderr
    assert "trained on" not in run.stdout and not (tmp_path / "tok.bpe").exists()


def test_a_pattern_that_covers_everything_trains(tmp_path):
    run = _example(tmp_path, "--pattern", "[a-z]+| |\\n", "--sample", "ab ef\n")
    assert run.returncode == 0 and "(ok)" in run.stdout, run.stderr
    assert load_tokenizer(tmp_path / "tok.bpe").decode(load_tokenizer(tmp_path / "tok.bpe").encode("ef ab\n")) \
        == "ef ab\n"


def test_special_tokens_in_the_text_round_trip_as_special_tokens(tmp_path):
    """<|endoftext|> between documents is the special token, in the training text and in --sample."""
    run = _example(tmp_path, "--sample", "ab<|endoftext|>cd", text="ab cd<|endoftext|>ef gh\n" * 30)
    assert run.returncode == 0 and "(ok)" in run.stdout, run.stderr
    tok = load_tokenizer(tmp_path / "tok.bpe")
    assert tok.special_tokens["<|endoftext|>"] in tok.encode("ab<|endoftext|>cd", allowed_special="all")


def test_a_round_trip_mismatch_after_training_saves_nothing(tmp_path, monkeypatch):
    """Were decoding to lose a character anyway, the script stops with an error and saves nothing."""
    import importlib.util
    from tinygrad_gpt.tokenizers import BPETokenizer
    spec = importlib.util.spec_from_file_location("bpe_example", ROOT / "examples" / "bpe.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    real = BPETokenizer.decode
    monkeypatch.setattr(BPETokenizer, "decode", lambda self, ids: real(self, ids).replace("\n", ""))
    data = tmp_path / "text.txt"
    data.write_text("ab cd\nef gh\n" * 30, encoding="utf-8")
    with pytest.raises(RuntimeError, match=r"training text .* does not decode back to itself .*character 5: "
                                           r"'\\nef gh.*the tokenizer was not saved"):
        example.main(["--data", str(data), "--vocab-size", "270", "--out", str(tmp_path / "tok.bpe")])
    assert not (tmp_path / "tok.bpe").exists()


def test_the_library_refuses_an_empty_matching_pattern_and_trains_on_empty_chunks():
    """'(?=a)' matches only "" (before each a): no chunk has a pair, so there is nothing to merge."""
    from tinygrad_gpt.tokenizers import RegexTokenizer
    for pattern in ("", "x*", "(a|)"):
        with pytest.raises(ValueError, match="matches the empty string"):
            RegexTokenizer(pattern)
    assert RegexTokenizer("(?=a)").train("aaa", 260).merges == []
