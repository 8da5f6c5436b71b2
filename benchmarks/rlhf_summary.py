"""Table of benchmarks/rlhf.py runs by method: medians and ranges over seeds, time and completions to target.

    python benchmarks/rlhf_summary.py out/bench-ppo-s0 out/bench-ppo-s1 out/bench-grpo-s0 ... [--plot score_kl.png]

Reads each RUN_DIR/results.json (the evaluation after the run) and RUN_DIR/metrics.jsonl (the
training rollouts) and groups the runs by recipe: the method ("algo") and the config fields that
differ from that method's current defaults (config.CONFIGS), the seed aside, so that seeds of one
recipe share a row ("rloo" or "dpo beta=0.5 online=True"). Prints a Markdown table for
benchmarks/RESULTS.md: per recipe the median and [min, max] of the evaluated score, fraction >
+0.05, exact KL per char, fluency gap and wall time, the completions generated, the targets met, and
the completions and seconds until the training rollouts' 10-step mean score first reached
`--target` (+0.40; "-" if never, or for offline DPO, whose rollouts are the reference's). That last
pair is a training-curve measure (the rollouts are sampled at the policy's temperature on training
prompts, not the held-out evaluation), and its seconds are the summed step times of the run
(`step_s`), so on a shared machine they carry its load. A closing line names the recipe fastest to
the target by the median of each, among the recipes that met every target in most of their runs.

Runs against a reward model (`--reward model`, `--reward-model DIR`) are a recipe of their own; for
each, a line gives the proxy (the reward model's score) against the gold (VADER) over the rollouts
and the step from which the policy exploits the model (evaluate.exploitation_step), if it does.

With --plot it draws score against KL per char: left, every run's evaluation (one colour per recipe,
the median as a larger mark); right, every run's training rollouts as a path (10-step means of
score and exact KL per token, which for the character tokenizer is per char).

A run's recipe, the rolling mean and the time to target are tinygrad_gpt/rlhf/evaluate.py's.
Deliberately does not: re-evaluate anything (it reads what the runs wrote), or merge runs of
different recipes into one row.
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np


from tinygrad_gpt.rlhf.evaluate import (TARGET_KL, TARGET_SCORE, WINDOW, exploitation_step, recipe_of, rolling,
                                        time_to_target)


def load_run(run_dir, target):
    run_dir = Path(run_dir)
    path = run_dir / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"rlhf_summary: no results.json in {run_dir}")
    res = json.loads(path.read_text())
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    completions, seconds = time_to_target(records, target)
    algo = res.get("algo", "ppo")
    on_policy = not any(r.get("score_of") == "reference" for r in records)
    recipe = recipe_of(algo, res.get("config")) + (" vs reward model" if res.get("reward") == "model" else "")
    proxy = rolling([r["reward_raw"] for r in records if "reward_raw" in r])
    gold = rolling([r["score"] for r in records if "reward_raw" in r])
    return {"dir": str(run_dir), "algo": algo, "recipe": recipe,
            "hacking_step": exploitation_step(records), "proxy": proxy, "gold": gold,
            "score": res["after"]["score_mean"], "frac": res["after"]["pos_frac"],
            "kl": res["after"]["kl_per_char"], "fluency": res["fluency_gap"], "wall": res["wall_s"],
            "completions": res.get("completions"), "met": all(res["checks"].values()),
            "to_target_completions": completions, "to_target_s": seconds,
            "curve_score": rolling([r["score"] for r in records]) if on_policy else np.array([]),
            "curve_kl": rolling([r["kl"] for r in records]) if on_policy else np.array([])}


def _median(values):
    values = [v for v in values if v is not None]
    return float(np.median(values)) if values else None


def _cell(values, fmt):
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    med = fmt.format(float(np.median(values)))
    return med if len(values) == 1 else f"{med} [{fmt.format(min(values))}, {fmt.format(max(values))}]"


def fastest(by_recipe, key):
    """(recipe, median) with the smallest median of `key` among the recipes that met every target in most of
    their runs and whose every run's rollouts reached the score (a run that overshoots the KL is not "at the
    target", however fast its score rose)."""
    best = None
    for recipe, rs in by_recipe.items():
        values = [r[key] for r in rs]
        if any(v is None for v in values) or 2 * sum(r["met"] for r in rs) <= len(rs):
            continue
        med = float(np.median(values))
        if best is None or med < best[1]:
            best = (recipe, med)
    return best


def plot(by_recipe, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax_eval, ax_curve) = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    for i, (recipe, rs) in enumerate(by_recipe.items()):
        colour = f"C{i % 10}"
        ax_eval.plot([r["kl"] for r in rs], [r["score"] for r in rs], "o", color=colour, alpha=0.6,
                     label=f"{recipe} ({len(rs)})")
        ax_eval.plot([np.median([r["kl"] for r in rs])], [np.median([r["score"] for r in rs])], "D",
                     color=colour, markersize=9, markeredgecolor="black")
        for j, r in enumerate(rs):
            if len(r["curve_kl"]):
                ax_curve.plot(r["curve_kl"], r["curve_score"], "-", color=colour, lw=1, alpha=0.7,
                              label=recipe if j == 0 else None)
                ax_curve.plot(r["curve_kl"][-1:], r["curve_score"][-1:], "o", color=colour, markersize=4)
    for ax in (ax_eval, ax_curve):
        ax.axhline(TARGET_SCORE, ls="--", color="grey", lw=0.8)
        ax.axvline(TARGET_KL, ls="--", color="grey", lw=0.8)
        ax.grid(alpha=0.3)
    ax_eval.set_xlabel("exact KL to the reference (nats / char), evaluation")
    ax_eval.set_ylabel("mean VADER")
    ax_eval.set_title("after the run: 128 held-out prompts x 2 (diamond: median)", fontsize=9)
    ax_curve.set_xlabel("exact KL to the reference (nats / token), training rollouts")
    ax_curve.set_title(f"during the run: {WINDOW}-step means of the rollouts (dot: the end)", fontsize=9)
    ax_eval.legend(fontsize=7)
    ax_curve.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--target", type=float, default=TARGET_SCORE, help="rollout score for the time-to-target columns")
    p.add_argument("--plot", default=None, help="write score against KL per char to this PNG")
    args = p.parse_args(argv)
    try:
        runs = [load_run(d, args.target) for d in args.runs]
    except (FileNotFoundError, KeyError, json.JSONDecodeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    by_recipe = {}
    for r in runs:
        by_recipe.setdefault(r["recipe"], []).append(r)
    print(f"| method | seeds | score | > +0.05 | KL/char | fluency | wall s | completions | all targets | "
          f"to rollout score {args.target:+.2f}: completions / s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for recipe, rs in by_recipe.items():
        col = (lambda key: [r[key] for r in rs])
        print(f"| {recipe} | {len(rs)} | {_cell(col('score'), '{:+.3f}')} | {_cell(col('frac'), '{:.3f}')} | "
              f"{_cell(col('kl'), '{:.4f}')} | {_cell(col('fluency'), '{:+.3f}')} | {_cell(col('wall'), '{:.0f}')} | "
              f"{_cell(col('completions'), '{:.0f}')} | {sum(r['met'] for r in rs)} of {len(rs)} | "
              f"{_cell(col('to_target_completions'), '{:.0f}')} / {_cell(col('to_target_s'), '{:.0f}')} |")
    for r in runs:
        if len(r["proxy"]):
            peak = int(np.argmax(r["gold"]))
            print(f"proxy vs gold ({WINDOW}-step means of the rollouts), {r['dir']}: proxy {r['proxy'][0]:+.2f} -> "
                  f"{r['proxy'][-1]:+.2f}, gold {r['gold'][0]:+.3f} -> {r['gold'][-1]:+.3f} (peak {r['gold'][peak]:+.3f} "
                  f"at step {peak + WINDOW}); " + (f"reward hacking from step {r['hacking_step']} (gold falls from its "
                                                    f"peak while the proxy rises)" if r["hacking_step"] else
                                                    "no reward hacking (the gold does not fall while the proxy rises)"))
    for key, unit in (("to_target_completions", "completions"), ("to_target_s", "s of training steps")):
        best = fastest(by_recipe, key)
        print(f"fastest to a {WINDOW}-step rollout mean of {args.target:+.2f} by {unit} (median; recipes meeting "
              f"every target in most runs): " + ("none" if best is None else f"{best[0]}, {best[1]:.0f}"))
    if args.plot:
        plot(by_recipe, args.plot)
        print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
