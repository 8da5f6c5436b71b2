"""RLHF on Shakespeare: tune a character GPT with PPO, GRPO, RLOO or DPO so that its completions end positive.

    python examples/rlhf_sentiment.py --checkpoint out/shakespeare-cpu  # PPO against VADER
    python examples/rlhf_sentiment.py --checkpoint DIR --algo grpo         # or rloo, dpo (same budget)
    python examples/rlhf_sentiment.py --checkpoint DIR --reward model      # against a learned reward model
    python examples/rlhf_sentiment.py                                       # trains a tiny model first (minutes)

Prints 8 completions of fixed validation prompts with their VADER scores, then a progress bar over
PPO steps (mean score, KL per char to the reference, beta, clip fraction, value loss, entropy),
then the same 8 prompts after. With --reward model, 4 reference samples per prompt are compared in
pairs by VADER, a reward model is trained on the pairs (per-word valences; --rm-model gpt for a GPT
backbone with a pooled head; held-out pairwise accuracy printed) and PPO optimises
it, while the bar shows both the learned reward (proxy) and VADER (gold). Metrics per step go to
--out/metrics.jsonl; the tuned policy is saved to --out (loadable with runs.load_model, or
`python examples/shakespeare.py --sample --out OUT`).

Every field of the method's config is a flag (PPOConfig, GRPOConfig, RLOOConfig or DPOConfig: --lr,
--ppo-epochs / --epochs, --init-kl-coef, --group-size, ...). Health warnings (diagnostics.py) print as
they happen; the curves are drawn into --out at the end when matplotlib is installed.
Exit status as examples/shakespeare.py's: 3 when a loss, gradient, parameter or the policy's output
turns NaN or infinite (the policy after the last step whose values were all finite is saved, if
any step was); Ctrl-C (130) or SIGTERM (143) drops the step in progress at once and saves the
policy after the last finished step ("stopped at step N"); nothing is saved before the first step
finishes. One process only: under mpirun with several ranks it refuses to start (exit 2).
Follows: Ziegler et al. 2019's sentiment task (there: IMDB and a classifier; here: Shakespeare and
VADER). Deliberately does not: resume a PPO run (the optimizer state is not saved).
"""
import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import numpy as np  # noqa: E402

from tinygrad_gpt import checkpoint as checkpoint_module  # noqa: E402  (`checkpoint` names a directory below)
from tinygrad_gpt import cli, data, distributed  # noqa: E402
from tinygrad_gpt.plot import write_plots_if_possible  # noqa: E402
from tinygrad_gpt.rlhf import (ALGOS, CONFIGS, TRAINERS, PolicyWithValue, RewardModelConfig,  # noqa: E402
                               VaderScorer, frozen_copy, make_preference_pairs, make_reward_model,
                               pairwise_accuracy, prompt_batches, sample_responses, train_reward_model)
from tinygrad_gpt.rlhf.reward_model import REPORT_MARGIN  # noqa: E402
from tinygrad_gpt.train import NonFiniteLoss  # noqa: E402
from tinygrad_gpt.runs import load_model, tokenizer_of  # noqa: E402


def algo_of(argv):
    """The --algo value of argv (default ppo): it decides which config's fields become flags."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--algo", choices=ALGOS, default="ppo")
    return pre.parse_known_args(argv)[0].algo


def build_parser(description=None, algo="ppo"):
    p = argparse.ArgumentParser(description=description or __doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--algo", choices=ALGOS, default="ppo", help="the RLHF method (its config's fields are flags)")
    p.add_argument("--checkpoint", default=None, help="a Shakespeare GPT checkpoint dir (none: train a tiny one)")
    p.add_argument("--data", default=None, help="path to tinyshakespeare.txt (else $TINYSHAKESPEARE, cache, download)")
    p.add_argument("--out", default="out/rlhf", help="where the tuned policy and metrics.jsonl go")
    p.add_argument("--reward", choices=["vader", "model"], default="vader",
                   help="optimise VADER directly, or a reward model learned from VADER-labelled pairs")
    p.add_argument("--no-progress", action="store_true")
    cli.add_flags(p, RewardModelConfig, prefix="rm_", skip=("seed",),
                  title="reward model, with --reward model (RewardModelConfig fields)")
    config_cls = CONFIGS[algo]
    cli.add_flags(p, config_cls, use_defaults=True, title=f"{algo.upper()} ({config_cls.__name__} fields)")
    return p


def config_from(args):
    """The --algo's config dataclass (PPOConfig, GRPOConfig, ...) from the parsed flags."""
    cls = CONFIGS[args.algo]
    return cls(**cli.values_from(args, cli.flag_fields(cls)))


def reward_model_config_from(args, seed):
    """RewardModelConfig from the --rm-* flags given (its defaults for the rest), seeded like the method."""
    return RewardModelConfig(**cli.values_from(args, cli.flag_fields(RewardModelConfig, skip=("seed",)),
                                               prefix="rm_"), seed=seed)


def train_tiny_model(data_path, out_dir):
    """No checkpoint given: train a small model for a few hundred steps (a few minutes on a CPU)."""
    from examples.shakespeare import main as train_main
    out = Path(out_dir) / "pretrained"
    print(f"no --checkpoint: training a small Shakespeare model into {out} first")
    flags = ["--preset", "cpu", "--max-iters", "300", "--out", str(out), "--no-progress"]
    if data_path:
        flags += ["--data", data_path]
    if train_main(flags) != 0:
        raise RuntimeError("training the small model failed")
    return out


def load_setup(args):
    """(gpt, tokenizer, ppo prompt tokens, held-out prompt tokens) from --checkpoint / --data."""
    checkpoint = args.checkpoint or train_tiny_model(args.data, args.out)
    gpt, meta, _ = load_model(checkpoint)
    tokenizer = tokenizer_of(meta, checkpoint)
    text = data.load_text(data.find_data(args.data))
    # a character tokenizer encodes a corpus in one array op; a BPE one (--tokenizer bpe) has encode only
    tokens = (tokenizer.encode_array(text) if hasattr(tokenizer, "encode_array")
              else np.asarray(tokenizer.encode(text), dtype=np.int64))
    _, val = data.split_train_val(tokens, meta.get("train_config", {}).get("val_fraction", 0.1))
    cut = int(len(val) * 0.8)  # PPO prompts from the first 80% of val, evaluation prompts from the rest
    return gpt, tokenizer, val[:cut], val[cut:]


def fixed_prompts(tokens, n, prompt_len, seed):
    rng = np.random.default_rng(seed)
    starts = rng.choice(len(tokens) - prompt_len, size=n, replace=False)  # (n,)
    return tokens[starts[:, None] + np.arange(prompt_len)[None, :]].astype(np.int64)  # (n, P)


def show_completions(title, gpt, prompts, cfg, tokenizer, scorer, seed=0):
    responses = sample_responses(gpt, prompts, cfg.response_len, cfg.temperature, np.random.default_rng(seed),
                                 cfg.window_stride)
    texts = [tokenizer.decode(r.tolist()) for r in responses]
    scores = scorer(texts)
    print(f"\n=== {title}: mean VADER {scores.mean():+.3f} ===")
    for prompt, text, s in zip(prompts, texts, scores):
        tail = tokenizer.decode(prompt[-24:].tolist()).replace("\n", "/")
        print(f"[{s:+.3f}] ...{tail!s} >>> {text.replace(chr(10), '/')}")
    return scores


def build_reward_model(gpt, tokenizer, prompt_tokens, cfg, scorer, args, log=print):
    """Sample responses from the reference, label every pair with VADER, train and report the reward model."""
    rm_cfg = reward_model_config_from(args, cfg.seed)
    rng = np.random.default_rng(cfg.seed + 1)
    prompts = prompt_batches(prompt_tokens, cfg.batch_size, cfg.prompt_len, rng)
    t0 = time.perf_counter()
    pairs = make_preference_pairs(gpt, prompts, rm_cfg.prompts, cfg.response_len, cfg.temperature, scorer,
                                  tokenizer.decode, rng, min(rm_cfg.min_margin, REPORT_MARGIN), cfg.window_stride,
                                  samples_per_prompt=rm_cfg.samples_per_prompt)
    train, heldout = pairs.split(rm_cfg.heldout_fraction, rng)
    train, heldout = train.with_margin(rm_cfg.min_margin), heldout.with_margin(REPORT_MARGIN)
    if len(train) < 2 or len(heldout) < 1:
        raise ValueError(f"reward model: only {len(pairs)} pairs of the responses to {rm_cfg.prompts} prompts differ in "
                         f"VADER score by >= {rm_cfg.min_margin}; sample more with --rm-prompts (or start from a "
                         f"model that writes words)")
    log(f"reward model data: {rm_cfg.prompts} prompts x {rm_cfg.samples_per_prompt} samples -> {len(pairs)} non-tied "
        f"pairs ({len(train)} train, {len(heldout)} held out by prompt), {time.perf_counter() - t0:.0f} s")
    rm = make_reward_model(rm_cfg, gpt, tokenizer.decode, train)
    t1 = time.perf_counter()
    losses = train_reward_model(rm, train, rm_cfg, log=log)
    info = {"model": rm_cfg.model, "pairs": len(pairs), "train_pairs": len(train), "heldout_pairs": len(heldout),
            "final_loss": float(np.mean(losses[-20:])), "train_accuracy": pairwise_accuracy(rm, train),
            "heldout_accuracy": pairwise_accuracy(rm, heldout), "train_s": round(time.perf_counter() - t1, 1),
            "seconds": round(time.perf_counter() - t0, 1)}
    log(f"reward model ({rm_cfg.model}): held-out pairwise accuracy {info['heldout_accuracy']:.3f} "
        f"(train {info['train_accuracy']:.3f}, chance 0.5; {info['train_s']:.0f} s of training)")
    return rm, info


# what the progress bar's short names stand for; printed once, for the names the method shows
LEGEND = {"rm": "the reward model's score (the proxy optimised)", "score": "mean VADER of the step's completions",
          "kl": "exact KL to the reference, nats per token", "beta": "the KL coefficient",
          "clip": "fraction of ratios clipped", "ent": "entropy per token, nats",
          "vf": "value-head loss", "ev": "explained variance of the value head (1 perfect, <= 0 no better than "
                                         "the mean)",
          "flat": "fraction of prompt groups whose scores were all equal (no signal)",
          "pairs": "preference pairs used", "margin": "DPO's implicit reward margin"}


def progress_fields(m, has_reward_model=False):
    """The short health figures of one step's metrics for the progress bar."""
    post = {"score": f"{m['score']:+.3f}", "kl": f"{m['kl']:.3f}", "beta": f"{m['beta']:.3f}"}
    if np.isfinite(m.get("clipfrac", float("nan"))):
        post["clip"] = f"{m['clipfrac']:.2f}"
    post["ent"] = f"{m['entropy']:.2f}"
    if "value_loss" in m:
        post.update(vf=f"{m['value_loss']:.3f}", ev=f"{m['explained_var']:.2f}")
    if "zero_spread_frac" in m:
        post["flat"] = f"{m['zero_spread_frac']:.2f}"
    if "reward_margin" in m:
        post.update(pairs=str(m["pairs"]), margin=f"{m['reward_margin']:+.3f}")
    if has_reward_model:
        post = {"rm": f"{m['reward_raw']:+.3f}", **post}
    return post


def legend(post):
    """One line naming what each short name of a progress line stands for."""
    return "columns: " + "; ".join(f"{k} = {LEGEND[k]}" for k in post if k in LEGEND)


class MetricsLog:
    """on_step for trainer.run: one JSON line of metrics per kept step, the progress bar (or a printed
    line per step), and the legend of its short names before the first."""

    def __init__(self, trainer, steps, metrics_path, progress=True):
        from tqdm import tqdm
        self.trainer, self.progress, self.history = trainer, progress, []
        metrics_path = Path(metrics_path)
        metrics_path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(metrics_path, "w", encoding="utf-8")
        self.bar = tqdm(total=steps, desc=trainer.algo.upper(), disable=not progress, dynamic_ncols=True)

    def __call__(self, m):
        self.history.append(m)
        self.file.write(json.dumps(m) + "\n")
        self.file.flush()
        post = progress_fields(m, self.trainer.reward_model is not None)
        if len(self.history) == 1:
            self.bar.write(legend(post))
        self.bar.update(1)
        self.bar.set_postfix(post)
        if not self.progress:
            print(f"step {m['step']}: " + ", ".join(f"{k} {v}" for k, v in post.items()), flush=True)

    def close(self):
        self.bar.close()
        self.file.close()


def run_rlhf(trainer, steps, metrics_path, progress=True):
    """steps steps of the trainer with a progress bar; one JSON line of metrics per step; returns them.

    No signal handling and no save (benchmarks/rlhf.py, docs/make_figures.py); main() runs
    trainer.run, which stops cleanly on a signal and saves the last kept step."""
    log = MetricsLog(trainer, steps, metrics_path, progress)
    try:
        for _ in range(steps):
            log(trainer.step())
    finally:
        log.close()
    return log.history


def change_summary(before, after, steps):
    """One honest line on the mean VADER of the fixed prompts before and after: the change, and
    whether it stands out of the sampling noise (2 standard errors of the paired per-prompt change)."""
    diff = np.asarray(after, dtype=np.float64) - np.asarray(before, dtype=np.float64)  # (n,) per prompt
    n, change = len(diff), float(diff.mean())
    se = float(diff.std(ddof=1) / np.sqrt(n)) if n > 1 else float("inf")
    line = (f"mean VADER of the {n} fixed prompts: {np.mean(before):+.3f} before, {np.mean(after):+.3f} after "
            f"({change:+.3f}, standard error {se:.3f})")
    if not abs(change) > 2 * se:
        return line + (f": within 2 standard errors of no change, so these {steps} step(s) show no measurable "
                       f"effect on them (run more --steps)")
    return line + ": more than 2 standard errors from no change"


def make_trainer(args, cfg, gpt, reference, tokenizer, prompt_tokens, scorer, reward_model):
    """The --algo's trainer on a PolicyWithValue around gpt (only PPO trains its value head)."""
    return TRAINERS[args.algo](PolicyWithValue(gpt), reference, tokenizer, prompt_tokens, scorer, cfg,
                               reward_model=reward_model)


def check_out(out):
    """--out must be writable and must not hold a training run: saving the policy would replace it."""
    checkpoint_module.check_writable(out, "--out")
    if (Path(out) / checkpoint_module.JSON_NAME).is_file():
        try:
            kind = checkpoint_module.load_checkpoint(out, verify=False)[2].get("kind", "train")
        except (ValueError, OSError):
            kind = None
        if kind == "train":
            raise ValueError(f"--out {out} holds a training run (examples/shakespeare.py); the tuned policy "
                             f"would replace it: choose another --out")


def main(argv=None):
    from tinygrad_gpt.backend import tune_host_allocator
    tune_host_allocator()  # glibc's malloc thresholds, for this process: see backend.py
    args = build_parser(algo=algo_of(sys.argv[1:] if argv is None else argv)).parse_args(argv)
    ranks = distributed.launched_size()
    if ranks > 1:  # N copies would tune N policies into one --out; rank 0 alone says so
        if distributed.launched_rank() != 0:
            # subtle: not 2: mpirun would then kill rank 0 before it prints why; the job's status is rank 0's
            return cli.EXIT_OK
        raise ValueError(f"RLHF runs in one process, but mpirun started {ranks}: run "
                         f"examples/rlhf_sentiment.py without mpirun (or with -n 1)")
    cfg = config_from(args)
    check_out(args.out)
    gpt, tokenizer, prompt_tokens, heldout_tokens = load_setup(args)
    reference = frozen_copy(gpt)
    scorer = VaderScorer()
    shown = fixed_prompts(heldout_tokens, 8, cfg.prompt_len, seed=1234)
    name = args.algo.upper()
    before = show_completions(f"before {name}", reference, shown, cfg, tokenizer, scorer)

    reward_model, rm_info = None, None
    if args.reward == "model":
        reward_model, rm_info = build_reward_model(gpt, tokenizer, prompt_tokens, cfg, scorer, args)
    trainer = make_trainer(args, cfg, gpt, reference, tokenizer, prompt_tokens, scorer, reward_model)
    out = Path(args.out)
    t0 = time.perf_counter()
    log = MetricsLog(trainer, cfg.steps, out / "metrics.jsonl", progress=not args.no_progress)
    save = (lambda: trainer.save(out, extra_meta={"reward": args.reward, "reward_model": rm_info}))
    try:
        result = trainer.run(cfg.steps, on_step=log, save=save)
    except NonFiniteLoss as exc:
        kept = trainer.kept.step
        hint = "" if "reward model" in str(exc) else " (try a smaller --lr)"
        print(f"error: {exc}; " + (f"the policy after step {kept}, the last with finite values, is saved to {out}"
                                   if kept else "no step finished with finite values, so nothing is saved") + hint,
              file=sys.stderr)
        return cli.EXIT_NONFINITE
    finally:
        log.close()
    wall = time.perf_counter() - t0
    if result != "done":
        kept = trainer.kept.step
        print(f"\nstopped at step {kept} of {cfg.steps} ({result}): " +
              (f"the policy after step {kept} is saved to {out}" if kept else "no step had finished, nothing is saved"),
              flush=True)
        return cli.exit_status(result)
    print(f"\n{cfg.steps} {name} steps in {wall:.0f} s ({wall / cfg.steps:.2f} s/step); last step: score "
          f"{log.history[-1]['score']:+.3f}, KL {log.history[-1]['kl']:.4f} nats/char; policy saved to {out}")
    after = show_completions(f"after {name}", trainer.policy.gpt, shown, cfg, tokenizer, scorer)
    print(change_summary(before, after, cfg.steps))
    write_plots_if_possible(out)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
