"""Curves from metrics.jsonl: `python -m tinygrad_gpt.plot RUN_DIR [RUN_DIR ...] [--out DIR]`.

A run directory holds the metrics.jsonl that examples/shakespeare.py (train.Trainer) or
examples/rlhf_sentiment.py / benchmarks/rlhf.py write, one JSON object per line. The kind of run is
read from its records:

    training  records with "loss" (per log interval: loss, lr, tokens_per_s) and "val_loss" (per
              evaluation)  ->  training.png: loss and val loss, lr, tokens/s against the step
    RLHF      records with "score" (one per step)  ->  rlhf.png: score, KL to the reference, beta,
              clip fraction, entropy, proxy (reward_raw) vs gold (score) for runs that optimised a
              reward model, and score against KL; the x axis is completions generated, so methods
              with different batches compare at the same budget

Offline DPO's rollouts are the reference's samples ("score_of": "reference"), so its score panels
leave it out. Several runs are overlaid on the same axes, labelled by their directory name; the PNGs go to --out
(default: the first run's directory). A metric a run lacks is skipped for that run.

Follows: nanoGPT's / TRL's logged curves. Deliberately does not: smooth curves (the points are the
logged values), read TensorBoard files, or need matplotlib anywhere but here (the `plot` extra).
"""
import argparse
import json
import math
import sys
from pathlib import Path

TRAIN_PANELS = [("loss", "train loss (per log interval)"), ("val_loss", "val loss (per evaluation)"),
                ("lr", "learning rate"), ("tokens_per_s", "tokens / s")]
RLHF_PANELS = [("score", "gold score (rollout mean)"), ("kl", "exact KL to reference (nats / token)"),
               ("beta", "KL coefficient beta"), ("clipfrac", "clip fraction"), ("entropy", "entropy (nats / token)"),
               ("reward_raw", "proxy reward (solid) vs gold score (dashed)"), ("score_vs_kl", "score against KL")]


def read_metrics(run_dir):
    """The records (list of dicts) of RUN_DIR/metrics.jsonl; errors name the file and line."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"plot: no metrics file at {path}")
    records = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise ValueError(f"plot: {path} line {lineno} is not JSON: {exc.msg}") from None
    if not records:
        raise ValueError(f"plot: {path} holds no records")
    return records


def run_kind(records):
    """"rlhf" if the records carry a per-step score, "training" if a loss, else a ValueError."""
    if any("score" in r for r in records):
        return "rlhf"
    if any("loss" in r or "val_loss" in r for r in records):
        return "training"
    raise ValueError("plot: the records carry neither 'score' (RLHF) nor 'loss' (training)")


def _series(records, key, x_key):
    xs, ys = [], []
    for r in records:
        y = r.get(key)
        if isinstance(y, (int, float)) and not isinstance(y, bool) and math.isfinite(y) and x_key in r:
            xs.append(r[x_key]), ys.append(y)
    return xs, ys


def plot_runs(run_dirs, out_dir=None):
    """Draw the PNGs for the runs (overlaid by kind); returns the list of paths written."""
    import matplotlib
    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    runs = [(Path(d), read_metrics(d)) for d in run_dirs]
    out_dir = Path(out_dir) if out_dir else runs[0][0]
    out_dir.mkdir(parents=True, exist_ok=True)
    by_kind = {}
    for d, records in runs:
        by_kind.setdefault(run_kind(records), []).append((d, records))
    written = []
    for kind, group in by_kind.items():
        panels = TRAIN_PANELS if kind == "training" else RLHF_PANELS
        cols = 4 if kind == "rlhf" else 2
        fig, axes = plt.subplots(2, cols, figsize=(5 * cols, 7.5))
        for ax in axes.ravel()[len(panels):]:
            ax.set_visible(False)
        for ax, (key, title) in zip(axes.ravel(), panels):
            for i, (d, records) in enumerate(group):
                x_key = "completions" if kind == "rlhf" and any("completions" in r for r in records) else "step"
                label, color = d.resolve().name, f"C{i % 10}"
                # subtle: offline DPO samples from the reference, so its rollout score says nothing of the policy
                if key in ("score", "reward_raw", "score_vs_kl") and any(r.get("score_of") == "reference"
                                                                         for r in records):
                    continue
                if key == "reward_raw":
                    # subtle: without a reward model the proxy is the gold score itself; nothing to compare
                    if all(abs(r.get("reward_raw", 0.0) - r.get("score", 0.0)) < 1e-12 for r in records):
                        continue
                    xs, ys = _series(records, "reward_raw", x_key)
                    ax.plot(xs, ys, color=color, label=f"{label} proxy")
                    xs, ys = _series(records, "score", x_key)
                    ax.plot(xs, ys, "--", color=color, label=f"{label} gold")
                elif key == "score_vs_kl":
                    pts = [(r["kl"], r["score"]) for r in records
                           if isinstance(r.get("kl"), (int, float)) and math.isfinite(r["kl"]) and "score" in r]
                    if pts:
                        ax.plot(*zip(*pts), ".", color=color, alpha=0.6, label=label)
                    ax.set_xlabel("exact KL to reference (nats / token)")
                    continue
                else:
                    xs, ys = _series(records, key, x_key)
                    if xs:
                        ax.plot(xs, ys, marker="o" if key == "val_loss" else None, color=color, label=label)
                ax.set_xlabel("completions generated" if x_key == "completions" else "step")
            ax.set_title(title)
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=7)
        fig.tight_layout()
        path = out_dir / f"{kind}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written


def write_plots_if_possible(run_dir, log=print):
    """The examples' end-of-run hook: plot RUN_DIR if matplotlib is installed, else say how to."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        log("plots: matplotlib is not installed (pip install -e .[plot]); skipped")
        return []
    paths = plot_runs([run_dir])
    log("plots: " + ", ".join(str(p) for p in paths))
    return paths


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m tinygrad_gpt.plot", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="directories holding metrics.jsonl")
    p.add_argument("--out", default=None, help="where the PNGs go (default: the first RUN_DIR)")
    args = p.parse_args(argv)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("error: plotting needs matplotlib: pip install -e .[plot]", file=sys.stderr)
        return 1
    try:
        paths = plot_runs(args.runs, args.out)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
