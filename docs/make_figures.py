"""The gradient tour's pictures, from real runs, by one command: `python docs/make_figures.py --out docs/images`.

From scratch, on a CPU, in a few minutes:

  1. train the Shakespeare GPT (`--preset cpu`, `--iters` steps) with `--log-grad-norms true` into
     WORK/train, through examples/shakespeare.py's own entry point
  2. attention_maps.png     the attention of every layer and head of that checkpoint for --prompt
                            (tinygrad_gpt/plot.py attention_figure)
  3. grad_norms.png         per-layer-group gradient norms over the run, and
     training_curves.png    its loss / val loss, lr and tokens/s (plot.plot_runs on WORK/train)
  4. --ppo-steps PPO steps from that checkpoint against VADER (the RLHF example's task, through the
     driver it calls, tinygrad_gpt/rlhf/run.py), the ratios
     of the last step kept by the PPOTrainer.on_ratios hook (plot.RatioRecorder) in
     WORK/ppo/ratios.npz  ->  ppo_ratio_clip.png (plot.plot_ppo_ratios)

WORK is --work (kept; it must not hold a run already) or a temporary directory removed at the end.
`--preset tiny --iters 20 --ppo-steps 1 --ppo-batch 8` is the seconds-long version tests/test_plot.py
runs. Every figure is drawn by the functions `python -m tinygrad_gpt.plot` uses, so the CLI draws
the same pictures from the same files.

Needs the `plot` (matplotlib) and `rlhf` (vaderSentiment) extras. Follows: the examples' entry
points (no second training loop). Deliberately does not: download
anything but the data file when it is missing, use a GPU, or cache a run between invocations.
"""
import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from tinygrad_gpt import cli, plot  # noqa: E402

FIGURES = ("attention_maps.png", "grad_norms.png", "training_curves.png", "ppo_ratio_clip.png")


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", required=True, help="where the four PNGs go (docs/images)")
    p.add_argument("--work", default=None, help="directory for the runs (kept); default: a temporary one")
    p.add_argument("--data", default=None, help="path to tinyshakespeare.txt (else $TINYSHAKESPEARE, cache, download)")
    p.add_argument("--preset", choices=("cpu", "tiny"), default="cpu", help="the training preset")
    p.add_argument("--iters", type=cli.bounded(int, ge=1), default=1500, help="training steps")
    p.add_argument("--prompt", default=None,
                   help=f"text for the attention maps (default: {plot.DEFAULT_PROMPT!r}, cut to the block size)")
    p.add_argument("--ppo-steps", type=cli.bounded(int, ge=1), default=3,
                   help="PPO steps; the last one's ratios are drawn")
    p.add_argument("--ppo-batch", type=cli.bounded(int, ge=4), default=32,
                   help="PPO rollouts per step (4 minibatches of a quarter each)")
    p.add_argument("--ppo-lr", type=cli.bounded(float, gt=0), default=1e-4, help="PPO learning rate")
    p.add_argument("--seed", type=cli.bounded(int, ge=0), default=0, help="PPO seed")
    return p


def train(args, run_dir):
    """Step 1: examples/shakespeare.py with --log-grad-norms true; evaluates 8 times over the run."""
    from examples.shakespeare import main as train_main
    flags = ["--preset", args.preset, "--max-iters", str(args.iters), "--eval-every", str(max(1, args.iters // 8)),
             "--log-grad-norms", "true", "--log-every", str(max(1, min(10, args.iters // 20))),
             "--out", str(run_dir), "--no-progress"]
    if args.data:
        flags += ["--data", args.data]
    status = train_main(flags)
    if status != 0:
        raise RuntimeError(f"training into {run_dir} failed (exit status {status})")


def ppo_ratios(args, run_dir, ppo_dir):
    """Step 4: a few PPO steps from the checkpoint; returns the last step's ratio file."""
    from tinygrad_gpt.rlhf import PolicyWithValue, PPOConfig, PPOTrainer, VaderScorer, frozen_copy
    from tinygrad_gpt.rlhf.run import load_setup, run_rlhf

    gpt, tokenizer, prompt_tokens, _ = load_setup(run_dir, args.data)
    half = gpt.config.block_size // 2  # prompt and response fill one block: one window per sequence
    cfg = PPOConfig(steps=args.ppo_steps, batch_size=args.ppo_batch, prompt_len=half, response_len=half,
                    minibatch_size=args.ppo_batch // 4, ppo_epochs=4, lr=args.ppo_lr, norm_batches=1,
                    seed=args.seed)
    trainer = PPOTrainer(PolicyWithValue(gpt), frozen_copy(gpt), tokenizer, prompt_tokens, VaderScorer(), cfg)
    recorder = plot.RatioRecorder(step=cfg.steps)
    trainer.on_ratios = recorder
    run_rlhf(trainer, cfg.steps, ppo_dir / "metrics.jsonl", progress=False)
    return recorder.save(ppo_dir / "ratios.npz", cfg.clip_eps)


def make_figures(args, work):
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    run_dir, ppo_dir = work / "train", work / "ppo"
    if run_dir.exists() or ppo_dir.exists():
        raise ValueError(f"--work {work} already holds a run ({run_dir} or {ppo_dir}): choose a new directory")
    times = {}
    t0 = time.perf_counter()
    train(args, run_dir)
    times["train_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    from tinygrad_gpt.runs import load_model
    block = load_model(run_dir)[0].config.block_size
    prompt = args.prompt if args.prompt is not None else plot.DEFAULT_PROMPT[:block]
    plot.attention_figure(run_dir, prompt, out)
    with tempfile.TemporaryDirectory() as curves:
        written = {p.name: p for p in plot.plot_runs([run_dir], curves)}
        if "grad_norms.png" not in written:
            raise RuntimeError(f"{run_dir}/metrics.jsonl carries no grad_norms: --log-grad-norms did not log")
        shutil.copyfile(written["grad_norms.png"], out / "grad_norms.png")
        shutil.copyfile(written["training.png"], out / "training_curves.png")
    times["plots_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    ppo_dir.mkdir(parents=True)
    ratios = ppo_ratios(args, run_dir, ppo_dir)
    plot.plot_ppo_ratios(plot.read_ratios(ratios), out / "ppo_ratio_clip.png")
    times["ppo_s"] = time.perf_counter() - t0
    for name in FIGURES:
        print(f"{out / name}: {(out / name).stat().st_size / 1024:.0f} KB")
    print("seconds: " + json.dumps({k: round(v, 1) for k, v in times.items()}))
    return 0


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.work is not None:
        work = Path(args.work)
        work.mkdir(parents=True, exist_ok=True)
        return make_figures(args, work)
    with tempfile.TemporaryDirectory(prefix="make_figures-") as work:
        return make_figures(args, Path(work))


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
