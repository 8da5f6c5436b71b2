"""Every script's --help shows what a person needs before running it: its usage examples (the
docstring's command lines), every option's default, and, for the training script, what each preset
sets. Read from the help text itself, as a person sees it.

Hand example of the parsing: an entry "  --lr LR   > 0; default 0.001; presets: original 0.0005"
has a metavar (LR), so it takes a value and must name its default; "  --resume   continue ..."
has none: a switch, off unless given, with no default to show.
"""
import os
import re
import subprocess
import sys

import pytest

from conftest import REPO
from tinygrad_gpt.train import PRESETS

SCRIPTS = ["shakespeare.py", "bpe.py", "rlhf_sentiment.py", "sft.py"]


def help_text(script):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    run = subprocess.run([sys.executable, str(REPO / "examples" / script), "--help"], capture_output=True,
                         text=True, timeout=120, env=env, cwd=REPO)
    assert run.returncode == 0, run.stderr
    return run.stdout


def option_entries(text):
    """{flag: its whole help entry} for every option of the help text but -h."""
    entries, current = {}, None
    for line in text.splitlines():
        m = re.match(r"^  (--[a-z0-9-]+)(.*)$", line)
        if m:
            current = m.group(1)
            entries[current] = m.group(2)
        elif current and re.match(r"^\s{3,}\S", line):
            entries[current] += " " + line.strip()
        else:
            current = None
    return entries


def takes_value(entry):
    return re.match(r"^ (\{[^}]*\}|[A-Z][A-Z0-9_]*)", entry) is not None


def missing_defaults(text):
    return sorted(flag for flag, entry in option_entries(text).items()
                  if takes_value(entry) and "default" not in entry)


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_option_shows_its_default_and_the_usage_examples_are_shown(script):
    text = help_text(script)
    assert missing_defaults(text) == []
    assert re.search(rf"python examples/{script} ", text), "the docstring's usage examples are not in --help"
    assert "(default: None)" not in text


def test_training_help_lists_what_each_preset_sets():
    text = help_text("shakespeare.py")
    section = text[text.index("presets (--preset NAME"):]
    for name in PRESETS:
        assert re.search(rf"^  {name}\s+--", section, re.M), name
    assert "--n-embd 384" in section and "--epoch-mode all_starts" in section
    entry = option_entries(text)["--batch-size"]
    assert "default 12" in entry and "tiny 8" in entry and "gpu 64" in entry


def test_control_an_option_without_its_default_is_found():
    text = ("options:\n  -h, --help  show this help\n  --lr LR     > 0\n  --resume    continue\n"
            "  --bias {true,false}\n              default true\n")
    assert missing_defaults(text) == ["--lr"]
