"""Table of benchmarks/rlhf.py runs by method: medians and ranges over seeds, time and completions to target.

    python benchmarks/rlhf_summary.py out/bench-ppo-s0 out/bench-ppo-s1 out/bench-grpo-s0 ... [--plot score_kl.png]

Reads each RUN_DIR/results.json (the evaluation after the run) and RUN_DIR/metrics.jsonl (the
training rollouts), groups the runs by their "algo", and prints a Markdown table for
benchmarks/RESULTS.md: per method the median and [min, max] of the evaluated score, fraction > +0.05,
exact KL per char, fluency gap and wall time, the completions generated, the targets met, and the
completions and seconds until the training rollouts' 10-step mean score first reached `--target`
(+0.40; "-" if never, or for offline DPO, whose rollouts are the reference's). With --plot it
draws the evaluated score against KL per char, one colour per method (matplotlib).

Deliberately does not: re-evaluate anything (it reads what the runs wrote).
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np


def time_to_target(records, target, window=10):
    """(completions, seconds) when the rolling `window`-step mean rollout score first reaches target."""
    if any(r.get("score_of") == "reference" for r in records):
        return None, None
    scores = [r["score"] for r in records]
    elapsed = np.cumsum([r["step_s"] for r in records])
    for i in range(window - 1, len(scores)):
        if np.mean(scores[i - window + 1:i + 1]) >= target:
            return records[i]["completions"], float(elapsed[i])
    return None, None


def load_run(run_dir, target):
    run_dir = Path(run_dir)
    path = run_dir / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"rlhf_summary: no results.json in {run_dir}")
    res = json.loads(path.read_text())
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    completions, seconds = time_to_target(records, target)
    return {"algo": res.get("algo", "ppo"), "score": res["after"]["score_mean"], "frac": res["after"]["pos_frac"],
            "kl": res["after"]["kl_per_char"], "fluency": res["fluency_gap"], "wall": res["wall_s"],
            "completions": res.get("completions"), "met": all(res["checks"].values()),
            "to_target_completions": completions, "to_target_s": seconds}


def _cell(values, fmt):
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    med = fmt.format(float(np.median(values)))
    return med if len(values) == 1 else f"{med} [{fmt.format(min(values))}, {fmt.format(max(values))}]"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--target", type=float, default=0.40, help="rollout score for the time-to-target columns")
    p.add_argument("--plot", default=None, help="write score against KL per char to this PNG")
    args = p.parse_args(argv)
    try:
        runs = [load_run(d, args.target) for d in args.runs]
    except (FileNotFoundError, KeyError, json.JSONDecodeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    by_algo = {}
    for r in runs:
        by_algo.setdefault(r["algo"], []).append(r)
    print(f"| method | seeds | score | > +0.05 | KL/char | fluency | wall s | completions | all targets | "
          f"to rollout score {args.target:+.2f}: completions / s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for algo, rs in by_algo.items():
        col = (lambda key: [r[key] for r in rs])
        print(f"| {algo} | {len(rs)} | {_cell(col('score'), '{:+.3f}')} | {_cell(col('frac'), '{:.3f}')} | "
              f"{_cell(col('kl'), '{:.4f}')} | {_cell(col('fluency'), '{:+.3f}')} | {_cell(col('wall'), '{:.0f}')} | "
              f"{_cell(col('completions'), '{:.0f}')} | {sum(r['met'] for r in rs)} of {len(rs)} | "
              f"{_cell(col('to_target_completions'), '{:.0f}')} / {_cell(col('to_target_s'), '{:.0f}')} |")
    if args.plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(6, 4.5))
        for i, (algo, rs) in enumerate(by_algo.items()):
            ax.plot([r["kl"] for r in rs], [r["score"] for r in rs], "o", color=f"C{i}", label=algo)
        ax.axhline(0.40, ls="--", color="grey", lw=0.8)
        ax.axvline(0.10, ls="--", color="grey", lw=0.8)
        ax.set_xlabel("exact KL to the reference (nats / char)")
        ax.set_ylabel("mean VADER, 128 held-out prompts x 2")
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=100)
        print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
