"""RLHF on Shakespeare: tune a character GPT with PPO, GRPO, RLOO or DPO so that its completions end positive.

    python examples/rlhf_sentiment.py --checkpoint out/shakespeare-cpu  # PPO against VADER
    python examples/rlhf_sentiment.py --checkpoint DIR --algo grpo         # or rloo, dpo (same budget)
    python examples/rlhf_sentiment.py --checkpoint DIR --reward model      # against a learned reward model
    python examples/rlhf_sentiment.py --checkpoint DIR --reward model --preferences judged.jsonl  # people's pairs
    python examples/rlhf_sentiment.py --checkpoint DIR --algo dpo --preferences judged.jsonl
    python examples/rlhf_sentiment.py                                       # trains a tiny model first (minutes)

The default run (150 steps of 64 completions) takes about 6 minutes on a 2-core CPU (2.4 s a step
on the project's AMD VM); --steps 20 takes under a minute, too few steps for its change to mean
much (the closing line says whether it is more than noise).

Prints 8 completions of fixed validation prompts with their VADER scores, then a progress bar over
PPO steps (mean score, KL per char to the reference, beta, clip fraction, value loss, entropy),
then the same 8 prompts after. With --reward model, 4 reference samples per prompt are compared in
pairs by VADER, a reward model is trained on the pairs (the policy's trunk with a scalar head read
at word ends; --rm-model words for per-word valences; held-out pairwise accuracy printed), saved to
--out/reward_model, and PPO optimises it (--reward-model DIR optimises a saved one again), while the bar shows both the learned reward (proxy) and VADER (gold). --preferences FILE takes
the pairs from judgments made on the compare page (python -m tinygrad_gpt.serve; see
tinygrad_gpt/preferences.py): the reward model trains on them, or DPO takes its pairs from them,
in place of pairs VADER labels. Metrics per step go to
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
The driver is the library's (tinygrad_gpt/rlhf/run.py, which benchmarks/rlhf.py calls too); this
script parses the flags, runs it and turns the outcome into an exit status.
Follows: Ziegler et al. 2019's sentiment task (there: IMDB and a classifier; here: Shakespeare and
VADER). Deliberately does not: resume a PPO run (the optimizer state is not saved).
"""
import sys
import time
from pathlib import Path


from tinygrad_gpt import checkpoint, cli, distributed
from tinygrad_gpt.plot import write_plots_if_possible
from tinygrad_gpt.preferences import load_preferences
from tinygrad_gpt.rlhf import VaderScorer, frozen_copy
from tinygrad_gpt.rlhf.run import (MetricsLog, algo_of, build_parser, change_summary, check_out, config_from,
                                   fixed_prompts, load_setup, make_trainer, reward_model_for, reward_of,
                                   show_completions)
from tinygrad_gpt.train import NonFiniteLoss


def main(argv=None):
    algo = algo_of(sys.argv[1:] if argv is None else argv)
    args = build_parser(__doc__.split("\nFollows:")[0], algo=algo).parse_args(argv)
    ranks = distributed.launched_size()
    if ranks > 1:  # N copies would tune N policies into one --out; rank 0 alone says so
        if distributed.launched_rank() != 0:
            # subtle: not 2: mpirun would then kill rank 0 before it prints why; the job's status is rank 0's
            return cli.EXIT_OK
        raise ValueError(f"RLHF runs in one process, but mpirun started {ranks}: run "
                         f"examples/rlhf_sentiment.py without mpirun (or with -n 1)")
    cfg = config_from(args)
    args.reward = reward_of(args)
    if args.preferences and args.reward_model:
        raise ValueError(f"--preferences trains a reward model, --reward-model {args.reward_model} names one "
                         f"already trained: give one of them")
    if args.preferences and args.reward != "model" and args.algo != "dpo":
        raise ValueError(f"--preferences: the judgments train a reward model (--reward model) or DPO (--algo dpo), "
                         f"not {args.algo} against VADER")
    check_out(args.out)
    # one writer per --out, as the training script: a second run into it is refused, naming this one
    lock = checkpoint.lock_directory(args.out, "--out")
    try:
        return tune(args, cfg)
    finally:
        lock.release()


def tune(args, cfg):
    """The RLHF run of main, with --out locked: before/after completions, the steps, the save."""
    gpt, tokenizer, prompt_tokens, heldout_tokens = load_setup(args.checkpoint, args.data, args.out)
    reference = frozen_copy(gpt)
    scorer = VaderScorer()
    shown = fixed_prompts(heldout_tokens, 8, cfg.prompt_len, seed=1234)
    name = args.algo.upper()
    before = show_completions(f"before {name}", reference, shown, cfg, tokenizer, scorer)

    preferences = None
    if args.preferences:
        preferences = load_preferences(args.preferences, cfg.prompt_len, cfg.response_len, gpt.config.vocab_size)
        print(f"--preferences {args.preferences}: {preferences.summary()}")
    reward_model, rm_info = None, None
    if args.reward == "model":
        reward_model, rm_info = reward_model_for(args, gpt, tokenizer, prompt_tokens, cfg, scorer, args.out,
                                                 preferences=preferences)
    trainer = make_trainer(args.algo, cfg, gpt, reference, tokenizer, prompt_tokens, scorer, reward_model,
                           preferences=preferences if args.algo == "dpo" else None)
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
