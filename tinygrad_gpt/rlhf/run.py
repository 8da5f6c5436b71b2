"""The RLHF driver that examples/rlhf_sentiment.py and benchmarks/rlhf.py call: flags, set-up, run, report.

    p = build_parser(algo=algo_of(argv))            every field of the --algo's config is a flag
    args = p.parse_args(argv); cfg = config_from(args)
    gpt, tokenizer, prompt_tokens, heldout_tokens = load_setup(args.checkpoint, args.data, args.out)
    reward_model, info = reward_model_for(args, gpt, tokenizer, prompt_tokens, cfg, scorer, out)  # --reward model
    trainer = make_trainer(args.algo, cfg, gpt, frozen_copy(gpt), tokenizer, prompt_tokens, scorer, reward_model)
    trainer.run(cfg.steps, on_step=MetricsLog(trainer, cfg.steps, out / "metrics.jsonl"), save=...)

The pieces:
    algo_of, build_parser, config_from, reward_of, reward_model_config_from   the command line of both scripts
    load_setup          a checkpoint (or a small model trained first) -> the GPT, its tokenizer and the
                        validation split's prompt tokens: the first 80% for the run, the rest held out
    fixed_prompts, show_completions   a fixed set of held-out prompts and their completions, scored
    build_reward_model  reference samples labelled by the scorer in pairs -> a trained reward model
    reward_model_for    a run's reward model: loaded (--reward-model DIR), or built and saved in --out
    make_trainer        the --algo's trainer around a PolicyWithValue
    MetricsLog          one JSON line of metrics per step, the progress bar and the legend of its names
    run_rlhf            steps with a MetricsLog, no signal handling and no save (the benchmark, figures)
    change_summary      the fixed prompts' mean score before and after, against its sampling noise
    check_out           --out must not hold a training run the tuned policy would replace

Follows: nanochat's split between the library and its phase scripts (the scripts parse flags and call
this). Deliberately does not: parse sys.argv itself, exit the process, or handle signals (the
trainers' run() does, and the scripts turn its result into an exit status).
"""
import argparse
import json
import time
from pathlib import Path

import numpy as np

from tinygrad_gpt import checkpoint, cli, data
from tinygrad_gpt.model import GPT
from tinygrad_gpt.rlhf.config import ALGOS, CONFIGS
from tinygrad_gpt.rlhf.dpo import DPOTrainer
from tinygrad_gpt.rlhf.grpo import GRPOTrainer
from tinygrad_gpt.rlhf.policy import PolicyWithValue
from tinygrad_gpt.rlhf.ppo import PPOTrainer
from tinygrad_gpt.rlhf.pairs import make_preference_pairs
from tinygrad_gpt.rlhf.reward_model import (REPORT_MARGIN, RewardModelConfig, load_reward_model, make_reward_model,
                                            pairwise_accuracy, save_reward_model, train_reward_model)
from tinygrad_gpt.rlhf.rloo import RLOOTrainer
from tinygrad_gpt.rlhf.rollout import prompt_batches, sample_responses
from tinygrad_gpt.tokenizers.char import CharTokenizer
from tinygrad_gpt.runs import load_model, tokenizer_of
from tinygrad_gpt.train import Trainer, preset_configs

TRAINERS = {"ppo": PPOTrainer, "grpo": GRPOTrainer, "rloo": RLOOTrainer, "dpo": DPOTrainer}
RUN_FRACTION = 0.8  # the run's prompts come from the first 80% of the validation split, evaluation's from the rest


# ---- the command line ---------------------------------------------------------------------------
def algo_of(argv):
    """The --algo value of argv (default ppo): it decides which config's fields become flags."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--algo", choices=ALGOS, default="ppo")
    return pre.parse_known_args(argv)[0].algo


def build_parser(description=None, algo="ppo"):
    """The flags of an RLHF script (its --help opens with `description`): --algo, --checkpoint, --data,
    --out, --reward, --no-progress, the reward model's RewardModelConfig fields (--rm-*) and every
    field of the --algo's config."""
    p = argparse.ArgumentParser(description=description, formatter_class=cli.HelpFormatter)
    p.add_argument("--algo", choices=ALGOS, default="ppo", help="the RLHF method (its config's fields are flags)")
    p.add_argument("--checkpoint", default=None,
                   help="a Shakespeare GPT checkpoint dir (default: none, train a small one first)")
    p.add_argument("--data", default=None,
                   help="path to tinyshakespeare.txt (default: $TINYSHAKESPEARE, then the cache, then a download)")
    p.add_argument("--out", default="out/rlhf", help="where the tuned policy and metrics.jsonl go")
    p.add_argument("--reward", choices=["vader", "model"], default=None,
                   help="optimise VADER directly, or a reward model learned from VADER-labelled pairs (saved in "
                        "--out/reward_model) (default: vader; model with --reward-model)")
    p.add_argument("--reward-model", default=None, metavar="DIR",
                   help="optimise the reward model saved in DIR (an earlier run's --out/reward_model) instead of "
                        "training one (default: none)")
    p.add_argument("--preferences", default=None, metavar="FILE",
                   help="judgments from the compare page (python -m tinygrad_gpt.serve): the reward model (--reward "
                        "model) or DPO (--algo dpo) trains on their pairs in place of pairs the scorer labels "
                        "(default: none, the scorer labels them)")
    p.add_argument("--no-progress", action="store_true")
    cli.add_flags(p, RewardModelConfig, prefix="rm_", skip=("seed",),
                  title="reward model, with --reward model (RewardModelConfig fields)")
    config_cls = CONFIGS[algo]
    cli.add_flags(p, config_cls, use_defaults=True, title=f"{algo.upper()} ({config_cls.__name__} fields)")
    return p


def reward_of(args):
    """What the run optimises, "vader" or "model", from --reward and --reward-model (which implies model)."""
    if args.reward_model and args.reward == "vader":
        raise ValueError(f"--reward vader optimises VADER itself, but --reward-model {args.reward_model} names a "
                         f"reward model to optimise: give one of them")
    return args.reward or ("model" if args.reward_model else "vader")


def config_from(args):
    """The --algo's config dataclass (PPOConfig, GRPOConfig, ...) from the parsed flags."""
    cls = CONFIGS[args.algo]
    return cls(**cli.values_from(args, cli.flag_fields(cls)))


def reward_model_config_from(args, seed):
    """RewardModelConfig from the --rm-* flags given (its defaults for the rest), seeded like the method."""
    return RewardModelConfig(**cli.values_from(args, cli.flag_fields(RewardModelConfig, skip=("seed",)),
                                               prefix="rm_"), seed=seed)


# ---- the model and the prompts ------------------------------------------------------------------
def train_small_model(out_dir, data_path=None, max_iters=300, log=print):
    """A character GPT of the cpu preset trained for max_iters steps (a few minutes on a CPU) into
    out_dir, as `examples/shakespeare.py --preset cpu --max-iters 300` trains one; returns out_dir."""
    out_dir = Path(out_dir)
    checkpoint.check_writable(out_dir, "the small model's directory")
    text = data.load_text(data.find_data(data_path))
    tokenizer = CharTokenizer.from_text(text)
    gpt_cfg, train_cfg = preset_configs("cpu", tokenizer.vocab_size, max_iters=max_iters, out_dir=str(out_dir))
    train_tokens, val_tokens = data.split_train_val(tokenizer.encode_array(text), train_cfg.val_fraction)
    log(f"no checkpoint: training a small Shakespeare model into {out_dir} first ({max_iters} steps)")
    model = GPT(gpt_cfg, seed=train_cfg.seed)
    result = Trainer(model, tokenizer, train_tokens, val_tokens, train_cfg, log=log, progress=False).train()
    if result != "done":
        raise RuntimeError(f"training the small model into {out_dir} stopped ({result}) before its last step")
    return out_dir


def load_setup(checkpoint_dir, data_path=None, out=None, log=print, small_model_iters=300):
    """(gpt, tokenizer, run prompt tokens, held-out prompt tokens) for a checkpoint directory.

    checkpoint_dir None: a small model is trained into out/pretrained first (train_small_model, for
    small_model_iters steps).
    The tokens are the checkpoint's validation split of the data, its first RUN_FRACTION for the
    run's prompts and the rest for the fixed evaluation prompts."""
    if checkpoint_dir is None:
        if out is None:
            raise ValueError("load_setup: no checkpoint, and no `out` directory to train a small model into")
        checkpoint_dir = train_small_model(Path(out) / "pretrained", data_path, small_model_iters, log=log)
    gpt, meta, _ = load_model(checkpoint_dir)
    tokenizer = tokenizer_of(meta, checkpoint_dir)
    text = data.load_text(data.find_data(data_path))
    # a character tokenizer encodes a corpus in one array op; a BPE one (--tokenizer bpe) has encode only
    tokens = (tokenizer.encode_array(text) if hasattr(tokenizer, "encode_array")
              else np.asarray(tokenizer.encode(text), dtype=np.int64))
    _, val = data.split_train_val(tokens, meta.get("train_config", {}).get("val_fraction", 0.1))
    cut = int(len(val) * RUN_FRACTION)
    return gpt, tokenizer, val[:cut], val[cut:]


def fixed_prompts(tokens, n, prompt_len, seed):
    """n distinct windows of prompt_len tokens, at starts drawn once with `seed`: (n, P)."""
    rng = np.random.default_rng(seed)
    starts = rng.choice(len(tokens) - prompt_len, size=n, replace=False)  # (n,)
    return tokens[starts[:, None] + np.arange(prompt_len)[None, :]].astype(np.int64)  # (n, P)


def show_completions(title, gpt, prompts, cfg, tokenizer, scorer, seed=0):
    """Print a completion of each prompt (N, P) with its score; returns the scores (N,)."""
    responses = sample_responses(gpt, prompts, cfg.response_len, cfg.temperature, np.random.default_rng(seed),
                                 cfg.window_stride)
    texts = [tokenizer.decode(r.tolist()) for r in responses]
    scores = scorer(texts)
    print(f"\n=== {title}: mean VADER {scores.mean():+.3f} ===")
    for prompt, text, s in zip(prompts, texts, scores):
        tail = tokenizer.decode(prompt[-24:].tolist()).replace("\n", "/")
        print(f"[{s:+.3f}] ...{tail!s} >>> {text.replace(chr(10), '/')}")
    return scores


# ---- the reward model and the trainer -----------------------------------------------------------
def build_reward_model(gpt, tokenizer, prompt_tokens, cfg, scorer, rm_cfg, log=print, preferences=None):
    """Sample responses from the reference, label every pair with the scorer, train and report the
    reward model of rm_cfg (a RewardModelConfig); returns (reward model, a dict of its figures).

    preferences (preferences.Judged): train on these judged pairs instead (held out by prompt too;
    every pair counts, a person's choice having no score margin)."""
    rng = np.random.default_rng(cfg.seed + 1)
    t0 = time.perf_counter()
    if preferences is not None:
        pairs = preferences.response_pairs()
        train, heldout = pairs.split(rm_cfg.heldout_fraction, rng)
        if len(train) < 2 or len(heldout) < 1:
            raise ValueError(f"reward model: {len(pairs)} judged pairs leave {len(train)} to train on and {len(heldout)} "
                             f"to hold out: judge more comparisons (--preferences)")
        log(f"reward model data: {preferences.summary()} ({len(train)} train, {len(heldout)} held out by prompt)")
    else:
        prompts = prompt_batches(prompt_tokens, cfg.batch_size, cfg.prompt_len, rng)
        pairs = make_preference_pairs(gpt, prompts, rm_cfg.prompts, cfg.response_len, cfg.temperature, scorer,
                                      tokenizer.decode, rng, min(rm_cfg.min_margin, REPORT_MARGIN), cfg.window_stride,
                                      samples_per_prompt=rm_cfg.samples_per_prompt)
        train, heldout = pairs.split(rm_cfg.heldout_fraction, rng)
        train, heldout = train.with_margin(rm_cfg.min_margin), heldout.with_margin(REPORT_MARGIN)
        if len(train) < 2 or len(heldout) < 1:
            raise ValueError(f"reward model: only {len(pairs)} pairs of the responses to {rm_cfg.prompts} prompts differ "
                             f"in VADER score by >= {rm_cfg.min_margin}; sample more with --rm-prompts (or start from "
                             f"a model that writes words)")
        log(f"reward model data: {rm_cfg.prompts} prompts x {rm_cfg.samples_per_prompt} samples -> {len(pairs)} "
            f"non-tied pairs ({len(train)} train, {len(heldout)} held out by prompt), {time.perf_counter() - t0:.0f} s")
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


def reward_model_for(args, gpt, tokenizer, prompt_tokens, cfg, scorer, out, log=print, preferences=None):
    """(reward model, its figures) for a run that optimises one: loaded from --reward-model DIR, or
    trained (build_reward_model) and saved into out/reward_model, where a later run's --reward-model
    finds it."""
    if args.reward_model:
        rm, rm_tokenizer, saved = load_reward_model(args.reward_model, device=gpt.device)
        if rm_tokenizer.to_dict() != tokenizer.to_dict():
            raise ValueError(f"--reward-model {args.reward_model} reads text with another tokenizer than the policy "
                             f"of --checkpoint {args.checkpoint}: train its reward model from the same checkpoint")
        info = {**saved.get("info", {}), "loaded_from": str(args.reward_model)}
        log(f"reward model from {args.reward_model} ({saved['config']['model']}; held-out pairwise accuracy "
            f"{info.get('heldout_accuracy', float('nan')):.3f} when trained)")
        return rm, info
    rm_cfg = reward_model_config_from(args, cfg.seed)
    rm, info = build_reward_model(gpt, tokenizer, prompt_tokens, cfg, scorer, rm_cfg, log=log,
                                  preferences=preferences)
    directory = Path(out) / "reward_model"
    save_reward_model(directory, rm, rm_cfg, tokenizer, info)
    log(f"reward model saved to {directory} (optimise it again with --reward-model {directory})")
    return rm, {**info, "saved_to": str(directory)}


def make_trainer(algo, cfg, gpt, reference, tokenizer, prompt_tokens, scorer, reward_model=None, preferences=None):
    """The trainer of `algo` on a PolicyWithValue around gpt (only PPO trains its value head); DPO takes
    its pairs from `preferences` (preferences.Judged) when given."""
    extra = {"preferences": preferences} if preferences is not None else {}
    if extra and algo != "dpo":
        raise ValueError(f"--preferences: {algo} trains on rewards, not pairs; give --reward model (a reward model "
                         f"learned from the judgments) or --algo dpo")
    return TRAINERS[algo](PolicyWithValue(gpt), reference, tokenizer, prompt_tokens, scorer, cfg,
                          reward_model=reward_model, **extra)


def check_out(out):
    """--out must be writable and must not hold a training run: saving the policy would replace it."""
    checkpoint.check_writable(out, "--out")
    if (Path(out) / checkpoint.JSON_NAME).is_file():
        try:
            kind = checkpoint.load_checkpoint(out, verify=False)[2].get("kind", "train")
        except (ValueError, OSError):
            kind = None
        if kind == "train":
            raise ValueError(f"--out {out} holds a training run (examples/shakespeare.py); the tuned policy "
                             f"would replace it: choose another --out")


# ---- progress and metrics -----------------------------------------------------------------------
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

    No signal handling and no save (benchmarks/rlhf.py, docs/make_figures.py); the example runs
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
