"""The project's figures: `python -m tinygrad_gpt.plot`, one function per figure (matplotlib, the `plot` extra).

    python -m tinygrad_gpt.plot RUN_DIR [RUN_DIR ...] [--out DIR]     curves from metrics.jsonl
    python -m tinygrad_gpt.plot --attention CKPT_DIR [--prompt TEXT]  attention maps of a checkpoint
    python -m tinygrad_gpt.plot --ppo-ratios FILE.npz                 one PPO step's ratio histogram

Curves (`plot_runs`). A run directory holds the metrics.jsonl that examples/shakespeare.py
(train.Trainer) or examples/rlhf_sentiment.py / benchmarks/rlhf.py write, one JSON object per line.
The kind of run is read from its records:

    training  records with "loss" (per log interval: loss, lr, tokens_per_s) and "val_loss" (per
              evaluation)  ->  training.png: loss and val loss, lr, tokens/s against the step;
              records with "grad_norms" (--log-grad-norms true)  ->  grad_norms.png: the gradient
              norm of each layer group (wte, wpe, h.i, ln_f; before clipping) against the step
    RLHF      records with "score" (one per step)  ->  rlhf.png: score, KL to the reference, beta,
              clip fraction, entropy, proxy (reward_raw) vs gold (score) for runs that optimised a
              reward model, and score against KL; the x axis is completions generated, so methods
              with different batches compare at the same budget

Offline DPO's rollouts are the reference's samples ("score_of": "reference"), so its score panels
leave it out. Several runs are overlaid on the same axes, labelled by their directory name; the PNGs go to --out
(default: the first run's directory). A metric a run lacks is skipped for that run.

Attention maps (`plot_attention`): the attention probabilities p (T, T) of every layer and head of a
checkpoint for a prompt, from `GPT.attention_probs`, which reads each block's qkv and recomputes
p = exp(q k^T / sqrt(hs) - lse) with the log-sum-exp lse of the model's attention kernel, as that
kernel's backward does (ops/attention.py attention_probs).

PPO ratios (`plot_ppo_ratios`): the ratio r_t = pi_theta / pi_old of every token the clipped
objective saw in one PPO step, per epoch, split by the sign of the advantage, with the clip region
[1 - eps, 1 + eps]. `RatioRecorder` is the PPOTrainer.on_ratios hook that keeps them (an .npz file).

Follows: nanoGPT's / TRL's logged curves; the attention-map grids of Vig 2019 (bertviz) drawn as
plain heat maps. Deliberately does not: smooth curves (the points are the logged values), read
TensorBoard files, draw attention of a batch (one prompt), or need matplotlib anywhere but here.
"""
import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

from tinygrad_gpt.jsonl import read_json_lines

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
    for lineno, record in read_json_lines(path, where=lambda lineno: f"plot: {path} line {lineno}"):
        if not isinstance(record, dict):  # the scripts write one object per line; anything else is foreign
            raise ValueError(f"plot: {path} line {lineno} is not a JSON object (one record per line), "
                             f"got {json.dumps(record)[:60]!r}")
        records.append(record)
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


def _number(value):
    """True for a finite int or float (not a bool): what a curve can draw."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _series(records, key, x_key):
    xs, ys = [], []
    for r in records:
        if _number(r.get(key)) and _number(r.get(x_key)):
            xs.append(r[x_key]), ys.append(r[key])
    return xs, ys


def _out_dir(out_dir, flag="--out"):
    """`out_dir` as a Path, created if missing; a file there is a usage error, not a FileExistsError."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"plot: {flag} {out_dir} is a file; the PNGs go into a directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt
    return plt


def _panel_data(key, records, x_key):
    """The curves panel `key` draws for one run: [(xs, ys, style, suffix)], [] when it has none."""
    # subtle: offline DPO samples from the reference, so its rollout score says nothing of the policy
    if key in ("score", "reward_raw", "score_vs_kl") and any(r.get("score_of") == "reference" for r in records):
        return []
    if key == "reward_raw":
        # subtle: without a reward model the proxy is the gold score itself; nothing to compare
        if all(not (_number(r.get("reward_raw")) and _number(r.get("score")))
               or abs(r["reward_raw"] - r["score"]) < 1e-12 for r in records):
            return []
        return [(*_series(records, "reward_raw", x_key), "-", " proxy"),
                (*_series(records, "score", x_key), "--", " gold")]
    if key == "score_vs_kl":
        pts = [(r["kl"], r["score"]) for r in records if _number(r.get("kl")) and _number(r.get("score"))]
        return [(*map(list, zip(*pts)), ".", "")] if pts else []
    xs, ys = _series(records, key, x_key)
    return [(xs, ys, "o-" if key == "val_loss" else "-", "")] if xs else []


def panels_to_draw(kind, runs):
    """([(key, title)] of the panels some run has data for, {(key, run index): (curves, x key)})."""
    curves = {}
    all_panels = TRAIN_PANELS if kind == "training" else RLHF_PANELS
    for i, records in enumerate(runs):
        x_key = "completions" if kind == "rlhf" and any("completions" in r for r in records) else "step"
        for key, _ in all_panels:
            curves[key, i] = (_panel_data(key, records, x_key), x_key)
    panels = [(key, title) for key, title in all_panels if any(curves[key, i][0] for i in range(len(runs)))]
    return panels, curves


def plot_runs(run_dirs, out_dir=None):
    """Draw the PNGs for the runs (overlaid by kind; grad_norms.png for the training runs that
    logged gradient norms); returns the list of paths written. A panel no run has data for (the
    proxy-vs-gold panel of runs scored by VADER itself, say) is left out, not drawn empty."""
    plt = _pyplot()
    runs = [(Path(d), read_metrics(d)) for d in run_dirs]
    out_dir = _out_dir(out_dir if out_dir else runs[0][0])
    by_kind = {}
    for d, records in runs:
        by_kind.setdefault(run_kind(records), []).append((d, records))
    written = []
    for kind, group in by_kind.items():
        panels, curves = panels_to_draw(kind, [records for _, records in group])
        cols = min(4 if kind == "rlhf" else 2, max(1, len(panels)))
        rows = max(1, -(-len(panels) // cols))
        fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.75 * rows), squeeze=False)
        for ax in axes.ravel()[len(panels):]:
            ax.set_visible(False)
        for ax, (key, title) in zip(axes.ravel(), panels):
            for i, (d, records) in enumerate(group):
                data, x_key = curves[key, i]
                label, color = d.resolve().name, f"C{i % 10}"
                for xs, ys, style, suffix in data:
                    alpha = 0.6 if key == "score_vs_kl" else 1.0
                    ax.plot(xs, ys, style, color=color, alpha=alpha, label=label + suffix)
                ax.set_xlabel("exact KL to reference (nats / token)" if key == "score_vs_kl"
                              else "completions generated" if x_key == "completions" else "step")
            ax.set_title(title)
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=7)
        fig.tight_layout()
        path = out_dir / f"{kind}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    with_norms = [(d, records) for d, records in by_kind.get("training", []) if grad_norm_series(records)]
    if with_norms:
        written.append(plot_grad_norms(with_norms, out_dir / "grad_norms.png"))
    return written


# ---- gradient norms per layer group ----------------------------------------------------------------
def grad_norm_series(records):
    """{group: (steps, norms)} from the records' "grad_norms" (train.grad_norms), in logged order."""
    series = {}
    for r in records:
        norms = r.get("grad_norms")
        if not isinstance(norms, dict) or not _number(r.get("step")):
            continue
        for group, value in norms.items():
            if _number(value):
                xs, ys = series.setdefault(group, ([], []))
                xs.append(r["step"])
                ys.append(value)
    return series


def _grad_clip_of(run_dir):
    """The run's TrainConfig.grad_clip from its checkpoint.json, or None (no checkpoint, clipping off)."""
    from tinygrad_gpt.checkpoint import JSON_NAME
    try:
        meta = json.loads((Path(run_dir) / JSON_NAME).read_text(encoding="utf-8"))
        clip = meta.get("meta", meta).get("train_config", {}).get("grad_clip")
    except (OSError, ValueError, AttributeError):
        return None
    return clip if isinstance(clip, (int, float)) and clip > 0 else None


def plot_grad_norms(runs, path):
    """grad_norms.png: one panel per run (run_dir, records): each layer group's gradient norm
    (before clipping) against the step, log scale; blocks shaded from the first (light) to the
    last (dark); the total dashed, with the run's clipping threshold dotted when it has one."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(runs), figsize=(7 * len(runs), 4.8), squeeze=False)
    for ax, (d, records) in zip(axes[0], runs):
        series = grad_norm_series(records)
        blocks = [g for g in series if g.startswith("h.")]
        cmap = plt.get_cmap("viridis")
        for group, (xs, ys) in series.items():
            if group in blocks:
                i = blocks.index(group)
                style = dict(color=cmap(0.85 - 0.75 * i / max(1, len(blocks) - 1)), label=f"block {group}")
            elif group == "total":
                style = dict(color="black", linestyle="--", label="total (what clipping sees)")
            else:
                names = {"wte": "wte (token embedding + tied head)", "wpe": "wpe (positions)", "ln_f": "ln_f"}
                style = dict(color={"wte": "C3", "wpe": "C1", "ln_f": "C4"}.get(group, "C7"),
                             label=names.get(group, group))
            ax.plot(xs, ys, linewidth=1.2, **style)
        clip = _grad_clip_of(d)
        if clip is not None:
            ax.axhline(clip, color="grey", linestyle=":", label=f"grad_clip {clip:g}")
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("gradient L2 norm (before clipping)")
        ax.set_title(f"gradient norm per layer group: {d.resolve().name}")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


# ---- attention maps ----------------------------------------------------------------------------------
def attention_probs(model, idx):
    """The attention probabilities of every layer and head of `model` (a GPT) for token ids idx
    (B, T), as a float64 numpy array (n_layer, B, nh, T, T): GPT.attention_probs, which recomputes
    them as the attention kernel's backward does (ops/attention.py attention_probs)."""
    from tinygrad_gpt.backend import to_numpy
    return np.stack([to_numpy(p) for p in model.attention_probs(idx)])  # (n_layer, B, nh, T, T)


def _token_label(text):
    return text.replace("\n", "\u23ce").replace(" ", "\u2423") or "?"


def plot_attention(model, tokenizer, prompt, path):
    """attention_maps.png: one heat map per layer (row) and head (column) for `prompt` (text).

    Query positions run down, keys across, each labelled with its token (newline as a return
    sign, space as an open box). The colour scale is p ** 0.5, so weak attention still shows.
    """
    from matplotlib.colors import PowerNorm
    plt = _pyplot()
    ids = list(tokenizer.encode(prompt))
    if not ids:
        raise ValueError("plot: the prompt encodes to no tokens")
    block = model.config.block_size
    if len(ids) > block:
        raise ValueError(f"plot: the prompt is {len(ids)} tokens, longer than the model's block_size {block}")
    probs = attention_probs(model, np.array([ids], dtype=np.int64))[:, 0]          # (n_layer, nh, T, T)
    n_layer, nh, T, _ = probs.shape
    labels = [_token_label(tokenizer.decode([i])) for i in ids]
    size = min(4.5, max(2.2, 0.075 * T))                         # inches per map: ~5 pt per token
    fig, axes = plt.subplots(n_layer, nh, figsize=(size * nh + 1.0, size * n_layer + 0.6), squeeze=False,
                             layout="constrained")
    norm = PowerNorm(0.5, vmin=0.0, vmax=1.0)
    cmap = plt.get_cmap("magma", 32)  # 32 levels: the eye tells no more apart, and the PNG stays small
    for layer in range(n_layer):
        for head in range(nh):
            ax = axes[layer, head]
            image = ax.imshow(probs[layer, head], cmap=cmap, norm=norm, interpolation="nearest")
            ax.set_title(f"layer {layer} head {head}", fontsize=8)
            ax.set_xticks(range(T))
            ax.set_yticks(range(T))
            ax.set_xticklabels(labels if layer == n_layer - 1 else [], fontsize=5, rotation=90)
            ax.set_yticklabels(labels if head == 0 else [], fontsize=5)
            ax.tick_params(length=0, pad=1)
    fig.suptitle(f"attention probabilities, query (down) over key (across): {prompt!r}"[:120], fontsize=9)
    fig.colorbar(image, ax=axes, shrink=0.5, label="p (colour scale p ** 0.5)")
    path = Path(path)
    fig.savefig(path, dpi=100, pil_kwargs={"optimize": True})
    plt.close(fig)
    return path


# ---- PPO ratios and the clip region -------------------------------------------------------------------
class RatioRecorder:
    """A PPOTrainer.on_ratios hook that keeps the ratios of every minibatch of one step.

    trainer.on_ratios = RatioRecorder(step=3); run the steps; recorder.save(path, clip_eps).
    """

    def __init__(self, step):
        self.step = step
        self.ratio, self.advantage, self.epoch = [], [], []

    def __call__(self, step, epoch, ratio, advantages):
        if step != self.step:
            return
        r = np.asarray(ratio, dtype=np.float64).ravel()           # (M * R,)
        self.ratio.append(r)
        self.advantage.append(np.asarray(advantages, dtype=np.float64).ravel())
        self.epoch.append(np.full(r.shape, epoch, dtype=np.int64))

    def arrays(self):
        if not self.ratio:
            raise ValueError(f"RatioRecorder: step {self.step} was not run (or the trainer's on_ratios was not set)")
        return {"ratio": np.concatenate(self.ratio), "advantage": np.concatenate(self.advantage),
                "epoch": np.concatenate(self.epoch), "step": np.int64(self.step)}

    def save(self, path, clip_eps):
        """Write ratio, advantage, epoch (one entry per token per minibatch update), step, clip_eps (.npz)."""
        from tinygrad_gpt.checkpoint import write_atomic
        arrays = dict(self.arrays(), clip_eps=np.float64(clip_eps))

        def write(tmp):
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
        write_atomic(path, write)
        return Path(path)


def read_ratios(path):
    """The arrays RatioRecorder.save wrote; errors name the file and the missing array."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"plot: no ratio file at {path}")
    try:
        loaded = np.load(path)  # no pickles: an object array is refused with a ValueError
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ValueError(f"one array of shape {loaded.shape}, an .npy file")
        with loaded as f:
            data = {key: f[key] for key in f.files}
    except (OSError, ValueError) as exc:
        raise ValueError(f"plot: {path} is not an .npz file of PPO ratios: {exc}") from None
    missing = [key for key in ("ratio", "advantage", "epoch", "step", "clip_eps") if key not in data]
    if missing:
        raise ValueError(f"plot: {path} lacks the array(s) {missing} (write it with RatioRecorder.save)")
    # what RatioRecorder.save writes: three 1-D arrays of one entry per token update, two scalars
    kinds = {"ratio": "f", "advantage": "f", "epoch": "iu", "step": "iu", "clip_eps": "fiu"}
    for key, allowed in kinds.items():
        a = data[key]
        if a.dtype.kind not in allowed:
            raise ValueError(f"plot: {path}: array {key!r} has dtype {a.dtype}; expected "
                             f"{'floats' if allowed == 'f' else 'integers' if allowed == 'iu' else 'a number'}")
    n = data["ratio"].shape
    if len(n) != 1:
        raise ValueError(f"plot: {path}: array 'ratio' has shape {n}; expected a 1-D array (one entry per token "
                         f"update)")
    for key in ("advantage", "epoch"):
        if data[key].shape != n:
            raise ValueError(f"plot: {path}: array {key!r} has shape {data[key].shape}, but 'ratio' has shape {n}; "
                             f"expected three 1-D arrays of the same length (one entry per token update)")
    if n[0] == 0:
        raise ValueError(f"plot: {path}: array 'ratio' is empty (shape {n}); no update was recorded")
    for key in ("step", "clip_eps"):
        if data[key].shape != ():
            raise ValueError(f"plot: {path}: array {key!r} has shape {data[key].shape}; expected a scalar, shape ()")
    if not (np.isfinite(data["clip_eps"]) and 0 < data["clip_eps"] < 1):
        raise ValueError(f"plot: {path}: clip_eps must be in (0, 1), got {data['clip_eps']}")
    return data


def plot_ppo_ratios(ratios, path):
    """ppo_ratio_clip.png: per PPO epoch of one step, the histogram of r_t = pi_theta / pi_old over
    the tokens each minibatch update saw, stacked by the sign of the advantage, with the clip
    region [1 - eps, 1 + eps] shaded. A token outside it on the side its advantage pushes towards
    (A > 0, r > 1 + eps; A < 0, r < 1 - eps) takes the clipped term: its gradient is 0.
    `ratios`: the dict read_ratios returns (or RatioRecorder.arrays() plus clip_eps)."""
    plt = _pyplot()
    r, adv, epoch = ratios["ratio"], ratios["advantage"], ratios["epoch"]
    eps, step = float(ratios["clip_eps"]), int(ratios["step"])
    epochs = sorted(set(epoch.tolist()))
    lo = min(float(r.min()), 1 - 1.5 * eps)
    hi = max(float(r.max()), 1 + 1.5 * eps)
    bins = np.linspace(lo, hi, 61)
    fig, axes = plt.subplots(1, len(epochs), figsize=(3.6 * len(epochs) + 0.6, 3.8), squeeze=False, sharey=True)
    for ax, e in zip(axes[0], epochs):
        sel = epoch == e
        re, ae = r[sel], adv[sel]
        ax.axvspan(1 - eps, 1 + eps, color="C2", alpha=0.12, label=f"[1 - eps, 1 + eps], eps {eps:g}")
        ax.hist([re[ae > 0], re[ae <= 0]], bins=bins, stacked=True, color=["C0", "C3"],
                label=["A > 0", "A <= 0"])
        zero_grad = ((ae > 0) & (re > 1 + eps)) | ((ae < 0) & (re < 1 - eps))
        outside = np.abs(re - 1) > eps
        ax.set_yscale("log")
        ax.set_title(f"epoch {e + 1}: {outside.mean():.1%} outside, {zero_grad.mean():.1%} zero-gradient", fontsize=8)
        ax.set_xlabel("ratio r = pi_theta / pi_old")
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("tokens (log scale)")
    axes[0, 0].legend(fontsize=7, loc="upper left")
    fig.suptitle(f"PPO step {step}: ratios the clipped objective saw, {len(r):,} token-updates", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


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


DEFAULT_PROMPT = "ROMEO:\nBut soft, what light through yonder window breaks?"


def attention_figure(checkpoint_dir, prompt, out_dir):
    """attention_maps.png in out_dir for a checkpoint (runs.load_model) and its own tokenizer."""
    from tinygrad_gpt.runs import load_model, tokenizer_of
    out_dir = _out_dir(out_dir)
    model, meta, _ = load_model(checkpoint_dir)
    tokenizer = tokenizer_of(meta, checkpoint_dir)
    return plot_attention(model, tokenizer, prompt, out_dir / "attention_maps.png")


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m tinygrad_gpt.plot", description=__doc__.split("\n\n")[0],
                                epilog="\n\n".join(__doc__.split("\n\n")[1:2]),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="*", metavar="RUN_DIR", help="directories holding metrics.jsonl: curves "
                   "(training.png, grad_norms.png, rlhf.png)")
    p.add_argument("--attention", metavar="CKPT_DIR", default=None,
                   help="a checkpoint directory: attention_maps.png for --prompt")
    p.add_argument("--prompt", default=DEFAULT_PROMPT, help="the text whose attention --attention draws")
    p.add_argument("--ppo-ratios", metavar="FILE", default=None,
                   help="an .npz of one PPO step's ratios (plot.RatioRecorder.save): ppo_ratio_clip.png")
    p.add_argument("--out", default=None, help="where the PNGs go (default: the first RUN_DIR, else the "
                   "checkpoint directory, else the ratio file's directory)")
    args = p.parse_args(argv)
    if not (args.runs or args.attention or args.ppo_ratios):
        p.error("nothing to draw: give RUN_DIR(s), --attention CKPT_DIR or --ppo-ratios FILE")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("error: plotting needs matplotlib: pip install -e .[plot]", file=sys.stderr)
        return 1
    paths = []
    try:
        if args.out and Path(args.out).exists() and not Path(args.out).is_dir():  # before any work
            raise ValueError(f"plot: --out {args.out} is a file; the PNGs go into a directory")
        if args.runs:
            paths += plot_runs(args.runs, args.out)
        if args.attention:
            paths.append(attention_figure(args.attention, args.prompt, args.out or args.attention))
        if args.ppo_ratios:
            ratios = read_ratios(args.ppo_ratios)
            out_dir = _out_dir(args.out if args.out else Path(args.ppo_ratios).parent)
            paths.append(plot_ppo_ratios(ratios, out_dir / "ppo_ratio_clip.png"))
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
