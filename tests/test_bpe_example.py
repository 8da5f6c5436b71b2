"""Smoke test of examples/bpe.py: it trains, prints its report and saves a loadable tokenizer.

What it covers: the script end to end on a small text written to tmp_path (basic and GPT-2-split
tiers), checked against what its report must contain. Follows: nothing in particular.
Does not: check the numbers beyond the vocabulary size and the round trip (test_bpe_train.py does).
"""
import subprocess
import sys
from pathlib import Path

import pytest

from tinygrad_gpt.tokenizers import load_tokenizer

ROOT = Path(__file__).resolve().parents[1]


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
