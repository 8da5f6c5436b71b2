"""RLHF benchmark: PPO, GRPO, RLOO or DPO from the cpu-preset checkpoint toward positive VADER, on fixed prompts.

    python benchmarks/rlhf.py --checkpoint out/shakespeare-cpu --out out/bench-rlhf   # 150 steps, batch 64
    python benchmarks/rlhf.py --checkpoint DIR --algo grpo --seed 1                     # rloo, dpo likewise
    python benchmarks/rlhf.py --checkpoint DIR --reward model                           # proxy vs gold

Evaluation set: 128 prompts of 64 characters from the last 20% of the validation split (PPO draws
its prompts from the first 80%), 2 seeded samples each, 64 characters, at the run's temperature; the
reference and the tuned policy see the same prompts and the same random numbers. Measured:
    score     mean VADER, and the fraction above +0.05, before and after
    kl        mean exact KL(policy || reference) per character
    fluency   reference loss (nats/char) on the policy's completions minus on its own
    wall      seconds for the whole run and per step, and the completions generated (every method's
              default budget is PPO's: 150 steps x 64)
Targets: score >= +0.40 and >= reference + 0.30; fraction >= 0.70; kl <= 0.10;
fluency <= 0.15. Writes metrics.jsonl (per step) and results.json into --out; prints a Markdown
table for benchmarks/RESULTS.md and 8 completions before and after.

Every field of the --algo's config is a flag (see examples/rlhf_sentiment.py; both call
tinygrad_gpt/rlhf/run.py, and the targets and the table are tinygrad_gpt/rlhf/evaluate.py's);
results.json has the same keys for every method ("algo" names it, "config" holds its fields). The machine's BLAS threads are
whatever OPENBLAS_NUM_THREADS says (the figures in RESULTS.md name it).
Deliberately does not: repeat runs over seeds (one run is 10-20 minutes on 2 cores; loop over --seed).
"""
import json
import os
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path


from tinygrad_gpt import cli
from tinygrad_gpt.plot import write_plots_if_possible
from tinygrad_gpt.rlhf import VaderScorer, frozen_copy
from tinygrad_gpt.rlhf.evaluate import check_targets, evaluate, results_table
from tinygrad_gpt.rlhf.run import (algo_of, build_parser, config_from, fixed_prompts, load_setup, make_trainer,
                                   reward_model_for, reward_of, run_rlhf, show_completions)


def main(argv=None):
    p = build_parser(__doc__.split("\n\n")[0], algo=algo_of(sys.argv[1:] if argv is None else argv))
    p.add_argument("--eval-prompts", type=cli.bounded(int, ge=1), default=128)
    p.add_argument("--eval-samples", type=cli.bounded(int, ge=1), default=2)
    p.set_defaults(out="out/bench-rlhf")
    args = p.parse_args(argv)
    cfg = config_from(args)
    args.reward = reward_of(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    gpt, tokenizer, prompt_tokens, heldout_tokens = load_setup(args.checkpoint, args.data, args.out)
    reference = frozen_copy(gpt)
    scorer = VaderScorer()
    eval_prompts = fixed_prompts(heldout_tokens, args.eval_prompts, cfg.prompt_len, seed=2024)
    ev = (lambda model: evaluate(model, reference, eval_prompts, cfg.response_len, cfg.temperature, scorer,
                                 tokenizer.decode, samples=args.eval_samples, stride=cfg.window_stride))
    t0 = time.perf_counter()
    before = ev(reference)
    print(f"reference on {len(eval_prompts)} x {args.eval_samples}: {before.summary()} "
          f"({time.perf_counter() - t0:.0f} s)", flush=True)

    reward_model, rm_info = None, None
    if args.reward == "model":
        reward_model, rm_info = reward_model_for(args, gpt, tokenizer, prompt_tokens, cfg, scorer, out)
    trainer = make_trainer(args.algo, cfg, gpt, reference, tokenizer, prompt_tokens, scorer, reward_model)
    policy = trainer.policy
    t0 = time.perf_counter()
    history = run_rlhf(trainer, cfg.steps, out / "metrics.jsonl", progress=not args.no_progress)
    wall = time.perf_counter() - t0
    trainer.save(out / "policy", extra_meta={"reward": args.reward, "reward_model": rm_info})
    after = ev(policy.gpt)
    checks = check_targets(before, after)
    fluency = after.ref_nll_per_char - before.ref_nll_per_char
    results = {"before": before.summary(), "after": after.summary(), "fluency_gap": round(fluency, 4),
               "score_gain": round(after.score_mean - before.score_mean, 4), "wall_s": round(wall, 1),
               "s_per_step": round(wall / cfg.steps, 2), "completions": trainer.completions, "checks": checks,
               "algo": args.algo, "config": asdict(cfg), "reward": args.reward, "reward_model": rm_info,
               "checkpoint": args.checkpoint, "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
               "cpu_count": os.cpu_count(), "python": platform.python_version(),
               "final_beta": trainer.kl_ctl.value, "warnings": sum(len(m["warnings"]) for m in history),
               "samples_after": after.texts[:8], "samples_before": before.texts[:8]}
    if reward_model is not None:
        results["proxy_reward_first_last"] = [history[0]["reward_raw"], history[-1]["reward_raw"]]
    (out / "results.json").write_text(json.dumps(results, indent=1, default=float))
    write_plots_if_possible(out)

    name = args.algo.upper()
    print(f"\n8 evaluation completions after {name} (VADER):")
    for text, s in zip(after.texts[:8], after.scores[:8]):
        print(f"[{s:+.3f}] {text.replace(chr(10), '/')}")
    show_completions(f"8 fixed prompts after {name}", policy.gpt, eval_prompts[:8], cfg, tokenizer, scorer)
    print()
    print("\n".join(results_table(before, after, name, wall, cfg.steps, trainer.completions)))
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
