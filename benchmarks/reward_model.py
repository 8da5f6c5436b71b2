"""Reward-model benchmark: pairwise accuracy of one RewardModelConfig on VADER-labelled reference samples.

    python benchmarks/reward_model.py --checkpoint out/shakespeare-cpu --samples out/rm-samples.npz
    python benchmarks/reward_model.py --checkpoint DIR --samples FILE --rm-pool mean --rm-steps 800
    python benchmarks/reward_model.py --checkpoint DIR --samples FILE --rm-model words --save out/rm-words

Samples --rm-prompts prompts x 4 responses from the checkpoint once (the first 80% of the validation
split, as the RLHF examples draw their prompts; 64 characters each at temperature 1.0), labels them
with VADER and keeps them in --samples (a .npz of responses (N, 4, R) and scores (N, 4)), so that
every configuration is measured on the same responses. The held-out set is fixed: every pair among
the 4 responses of the last --heldout-fraction of the prompts whose scores differ by >= 0.05 (the
distribution of pairs of two independent samples, 4 times as many of them), and reported also over
every pair that differs at all (> 0), whatever min_margin the configuration trains with.
Training uses the first samples_per_prompt responses of the first prompts of the rest.

Prints the curve (train / held-out accuracy, >= 0.05 and > 0, against training seconds and pairs seen)
at every --eval-every steps, then a Markdown row: config, training pairs, accuracies, seconds of
training. Appends the same as one JSON line to --log when given; --save DIR keeps the trained model
as a "reward-model" run (what `--reward-model DIR` of the RLHF scripts optimises).
Deliberately does not: time under contention control (train seconds are wall time on whatever
machine it runs on), or run PPO (benchmarks/rlhf.py --reward model does).
"""
import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path


import numpy as np

from tinygrad_gpt import cli
from tinygrad_gpt.rlhf import (RewardModelConfig, VaderScorer, make_reward_model, pairs_from_groups,
                               pairwise_accuracy, prompt_batches, sample_responses, train_reward_model)
from tinygrad_gpt.rlhf.reward_model import REPORT_MARGIN, save_reward_model
from tinygrad_gpt.rlhf.run import load_setup

CACHE_SAMPLES = 4   # responses per prompt in the cache (configs may use fewer)


def sample_cache(path, gpt, tokenizer, prompt_tokens, n_prompts, seed, log=print):
    """responses (N, 4, R) and VADER scores (N, 4), read from `path` or sampled and written there."""
    path = Path(path)
    if path.is_file():
        z = np.load(path)
        if len(z["scores"]) >= n_prompts:
            return z["responses"][:n_prompts], z["scores"][:n_prompts]
        log(f"{path} holds {len(z['scores'])} prompts, fewer than {n_prompts}: sampling anew")
    rng = np.random.default_rng(seed)
    batches = prompt_batches(prompt_tokens, 64, 64, rng)
    scorer, resp, scores, t0 = VaderScorer(), [], [], time.perf_counter()
    while sum(len(s) for s in scores) < n_prompts:
        prompts = next(batches)                                           # (64, P)
        r = sample_responses(gpt, np.repeat(prompts, CACHE_SAMPLES, axis=0), 64, 1.0, rng)  # (256, R)
        s = scorer([tokenizer.decode(x.tolist()) for x in r])             # (256,)
        resp.append(r.reshape(len(prompts), CACHE_SAMPLES, -1)), scores.append(s.reshape(len(prompts), -1))
        log(f"sampled {sum(len(s) for s in scores)}/{n_prompts} prompts ({time.perf_counter() - t0:.0f} s)")
    resp, scores = np.concatenate(resp)[:n_prompts], np.concatenate(scores)[:n_prompts]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, responses=resp, scores=scores)
    tmp.replace(path)
    return resp, scores


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="the backbone: a Shakespeare GPT checkpoint dir")
    p.add_argument("--data", default=None, help="path to tinyshakespeare.txt (else $TINYSHAKESPEARE)")
    p.add_argument("--samples", required=True, help="the .npz of sampled, scored responses (written if missing)")
    p.add_argument("--cache-prompts", type=cli.bounded(int, ge=16), default=8192,
                   help="prompts in the cache: the held-out prompts are its last --heldout-fraction")
    p.add_argument("--eval-every", type=cli.bounded(int, ge=1), default=None, help="measure every N steps")
    p.add_argument("--log", default=None, help="append the result as a JSON line here")
    p.add_argument("--name", default="", help="the row's label")
    p.add_argument("--save", default=None, metavar="DIR", help="save the trained reward model there (default: not saved)")
    cli.add_flags(p, RewardModelConfig, prefix="rm_", title="reward model (RewardModelConfig fields)")
    args = p.parse_args(argv)
    cfg = RewardModelConfig(**cli.values_from(args, cli.flag_fields(RewardModelConfig), prefix="rm_"))
    gpt, tokenizer, prompt_tokens, _ = load_setup(args.checkpoint, args.data)
    responses, scores = sample_cache(args.samples, gpt, tokenizer, prompt_tokens, args.cache_prompts, seed=1)
    N = len(scores)
    n_held = int(round(N * cfg.heldout_fraction))
    held = pairs_from_groups(responses[N - n_held:], scores[N - n_held:], 0.0)
    held_std, held_any = held.with_margin(REPORT_MARGIN), held.take(np.flatnonzero(held.margin > 0))
    n_train = min(cfg.prompts, N - n_held)
    k = cfg.samples_per_prompt
    if k > CACHE_SAMPLES:
        raise ValueError(f"--rm-samples-per-prompt {k}: the cache holds {CACHE_SAMPLES} per prompt")
    train = pairs_from_groups(responses[:n_train, :k], scores[:n_train, :k], cfg.min_margin)
    print(f"{args.name}: {n_train} prompts x {k} -> {len(train)} training pairs (min margin {cfg.min_margin}); "
          f"held out: {len(held_std)} pairs >= {REPORT_MARGIN}, {len(held_any)} > 0", flush=True)

    model = make_reward_model(cfg, gpt, tokenizer.decode, train)
    curve, t_train = [], [0.0]
    t0 = time.perf_counter()

    def measure(step, pairs_seen):
        t_train[0] += time.perf_counter() - t0
        row = {"step": step, "train_s": round(t_train[0], 1), "pairs_seen": pairs_seen,
               "train_acc": pairwise_accuracy(model, train.take(np.arange(min(len(train), 2000)))),
               "heldout_acc": pairwise_accuracy(model, held_std), "heldout_any_acc": pairwise_accuracy(model, held_any)}
        curve.append(row)
        print(f"  step {step}: train {row['train_acc']:.3f}, held out {row['heldout_acc']:.3f} "
              f"(> 0: {row['heldout_any_acc']:.3f}), {row['train_s']:.0f} s, {row['pairs_seen']} pairs seen", flush=True)

    def timed(step, pairs_seen):
        nonlocal t0
        measure(step, pairs_seen)
        t0 = time.perf_counter()

    train_reward_model(model, train, cfg, every=args.eval_every or cfg.steps, callback=timed)
    best = max(curve, key=lambda r: r["heldout_acc"])
    last = curve[-1]
    print(f"| {args.name} | {len(train)} | {last['train_acc']:.3f} | {last['heldout_acc']:.3f} | "
          f"{last['heldout_any_acc']:.3f} | {last['train_s']:.0f} | best {best['heldout_acc']:.3f} at step "
          f"{best['step']} |")
    if args.save:
        info = {"pairs": len(train), "train_pairs": len(train), "heldout_pairs": len(held_std),
                "train_accuracy": last["train_acc"], "heldout_accuracy": last["heldout_acc"], "train_s": last["train_s"]}
        save_reward_model(args.save, model, cfg, tokenizer, info)
        print(f"saved to {args.save}")
    if args.log:
        with open(args.log, "a", encoding="utf-8") as f:
            f.write(json.dumps({"name": args.name, "config": asdict(cfg), "train_pairs": len(train),
                                "heldout_pairs": len(held_std), "curve": curve}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
