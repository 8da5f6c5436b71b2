"""benchmarks/speedrun.py end to end at --quick: the PyTorch baseline, ours to its loss, one ablation.

The quick pipeline (the tiny preset's shape, a 2 s baseline budget, one seed, one thread) is the
full benchmark's code path: the baseline worker's whole-split loss becomes our target, our run
stops at the first evaluation at or below it (or says it did not), and results.json and the
printed tables carry every field the lead's full run reports. Skipped without torch (the peer).
"""
import json
import os
import subprocess
import sys

from conftest import REPO, peer, require_shakespeare


def test_quick_speedrun_reports_every_field(tmp_path):
    peer("torch")
    data = require_shakespeare()
    out = tmp_path / "speedrun"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "speedrun.py"), "--quick", "--seeds", "1",
                           "--threads", "1", "--budget", "2", "--ablations", "cosine,rotary", "--data", str(data),
                           "--out", str(out)], capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["budget_s"] == 2 and results["quick"] and results["threads"] == 1
    rows = {row["variant"]: row for row in results["rows"]}
    skipped = dict(results["skipped"])
    # rotary: run where this build has it and the recipe uses it, else listed as skipped, saying why
    assert set(rows) - {"no rotary"} == {"baseline", "recipe", "no cosine"} and ("no rotary" in rows) != ("no rotary" in skipped)
    assert "no rotary" in rows or skipped["no rotary"] in (
        "--position learned: this build has no such setting", "the recipe does not use it (--position learned is its setting)")
    base = rows["baseline"]
    assert base["steps"] > 0 and base["tokens"] == base["steps"] * 8 * 32 and 2 <= base["train_s"] < 4
    assert 0 < base["loss"] < 5
    for label, row in rows.items():
        if label == "baseline":
            continue
        assert row["target"] == base["loss"] and row["tokens"] % (8 * 32) == 0 and row["train_s"] > 0
        if row["reached"]:
            assert row["loss"] <= base["loss"] + 5e-5 and abs(row["ratio"] - row["train_s"] / 2) < 1e-9
        else:
            assert row["ratio"] is None and row["loss"] > base["loss"]
    assert rows["no cosine"]["flags"] == "--schedule wsd" and rows["recipe"]["flags"] == ""
    text = proc.stdout
    assert "| seed | baseline loss L | baseline tokens | ours: time to L |" in text
    assert "median over 1 seeds: our time to L / budget" in text
    assert "| no cosine | --schedule wsd |" in text
    assert ("| no rotary | skipped: " in text) == ("no rotary" in skipped)
