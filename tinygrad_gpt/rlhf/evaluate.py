"""Evaluation on a fixed prompt set: gold score, KL to the reference, and fluency under the reference.

For a GPT `model` (the tuned policy, or the reference itself) and fixed prompts (N, P), each
prompt gets `samples` responses drawn with seeded generators (seed k for sample k, so two models
see the same random numbers), and per character:

    score     VADER (or any scorer) of each response, mean and fraction above `positive` (the
              config's positive_threshold; VADER's +0.05 by default)
    kl        exact KL( model || reference ) per token, at the sampling temperature, averaged
    ref_nll   -log q_ref(a_t | s_t) at temperature 1: the reference's loss on these completions

Fluency is ref_nll(policy completions) - ref_nll(reference completions): how much less likely the
reference finds the tuned text than its own; "good good good" hacking would blow it up.

The benchmark's verdict on a run (`check_targets`, `results_table`) and the comparison of runs by
recipe (`recipe_of`, `time_to_target` on the training curves) live here too, so that
benchmarks/rlhf.py and benchmarks/rlhf_summary.py only read flags and files and print.

Dimension legend: N prompts, P prompt tokens, R response tokens, V vocabulary.

Follows: Ziegler et al. 2019 / Stiennon et al. 2020 (score against KL to the reference as the figure
of merit). Deliberately does not: judge fluency with a model other than the reference (there is none offline).
"""
import json
from dataclasses import asdict, dataclass

import numpy as np

from tinygrad_gpt.backend import get_xp
from tinygrad_gpt.model import context_windows
from tinygrad_gpt.rlhf.advantage import kl_per_token
from tinygrad_gpt.rlhf.config import CONFIGS
from tinygrad_gpt.rlhf.policy import response_logprobs
from tinygrad_gpt.rlhf.rollout import sample_responses
from tinygrad_gpt.rlhf.scorers import POSITIVE_THRESHOLD


@dataclass
class EvalResult:
    score_mean: float        # mean gold score
    pos_frac: float          # fraction of responses scoring > positive
    kl_per_char: float       # mean exact KL to the reference per response token (nats)
    ref_nll_per_char: float  # the reference's loss on these responses (nats / char, temperature 1)
    scores: np.ndarray       # (N * samples,)
    texts: list              # N * samples responses, sample-major: [all prompts sample 0, ... sample 1]
    prompts: np.ndarray      # (N, P)

    def summary(self):
        return {"score_mean": round(self.score_mean, 4), "pos_frac": round(self.pos_frac, 4),
                "kl_per_char": round(self.kl_per_char, 4), "ref_nll_per_char": round(self.ref_nll_per_char, 4)}


def evaluate(model, reference, prompts, response_len, temperature, scorer, decode, samples=2,
             positive=POSITIVE_THRESHOLD, stride=None, batch_size=64):
    """EvalResult of GPT `model` on prompts (N, P); see the module docstring."""
    prompts = np.asarray(prompts, dtype=np.int64)
    N, P = prompts.shape
    windows = context_windows(P, response_len, model.config.block_size, stride)
    xp = get_xp(model.device)
    scores, texts, kls, nlls = [], [], [], []
    for k in range(samples):
        rng = np.random.default_rng(k)
        for lo in range(0, N, batch_size):
            batch = prompts[lo:lo + batch_size]                           # (b, P)
            resp = sample_responses(model, batch, response_len, temperature, rng, stride)  # (b, R)
            seq = xp.asarray(np.concatenate([batch, resp], axis=1))       # (b, P + R)
            logp, _ = response_logprobs(model, seq, windows, temperature)     # (b, R, V)
            logq, _ = response_logprobs(reference, seq, windows, temperature)  # (b, R, V)
            logq1, _ = response_logprobs(reference, seq, windows, 1.0)        # (b, R, V)
            kls.append(kl_per_token(logp, logq).mean(axis=1))             # (b,)
            nlls.append(-np.take_along_axis(logq1, resp[..., None], -1)[..., 0].mean(axis=1))  # (b,)
            batch_texts = [decode(r.tolist()) for r in resp]
            texts.extend(batch_texts)
            scores.append(scorer(batch_texts))
    scores = np.concatenate(scores)
    return EvalResult(float(scores.mean()), float((scores > positive).mean()), float(np.concatenate(kls).mean()),
                      float(np.concatenate(nlls).mean()), scores, texts, prompts)


# ---- the benchmark's targets and tables (benchmarks/rlhf.py, benchmarks/rlhf_summary.py) ---------
# Ziegler et al.'s sentiment task asks for a clearly positive policy at a small KL without losing
# fluency; on this task that reads: mean VADER and its gain over the reference, the fraction of
# positive completions, the exact KL per character, and the reference's extra loss on the text
TARGET_SCORE, TARGET_GAIN, TARGET_FRACTION, TARGET_KL, TARGET_FLUENCY = 0.40, 0.30, 0.70, 0.10, 0.15
WINDOW = 10  # steps in the rolling mean of the training curves (time to target, the summary's plot)


def check_targets(before, after):
    """{target: met} for the EvalResults of the reference (before) and of the tuned policy (after),
    both evaluated with VADER's line for a positive text (evaluate's default `positive`)."""
    fluency = after.ref_nll_per_char - before.ref_nll_per_char
    return {
        f"score >= {TARGET_SCORE:.2f}": after.score_mean >= TARGET_SCORE,
        f"score >= reference + {TARGET_GAIN:.2f}": after.score_mean - before.score_mean >= TARGET_GAIN,
        f"fraction > {POSITIVE_THRESHOLD:+.2f} >= {TARGET_FRACTION:.2f}": after.pos_frac >= TARGET_FRACTION,
        f"KL <= {TARGET_KL:.2f} nats/char": after.kl_per_char <= TARGET_KL,
        f"fluency <= +{TARGET_FLUENCY:.2f} nats/char": fluency <= TARGET_FLUENCY,
    }


def fluency_cell(before_nll, after_nll):
    """The policy's reference loss and its gap to the reference's own, signed once: "1.8401 (-0.0237)"."""
    return f"{after_nll:.4f} ({after_nll - before_nll:+.4f})"


def results_table(before, after, name, wall, steps, completions):
    """The Markdown rows of one run for benchmarks/RESULTS.md: each figure, the reference's, the
    policy's, its target and whether it is met; then the wall time."""
    met = list(check_targets(before, after).values())
    yes = (lambda ok: "yes" if ok else "NO")
    return [
        f"| figure | reference | after {name} | target | met |",
        "|---|---|---|---|---|",
        f"| mean VADER ({len(after.prompts)} prompts x {len(after.scores) // len(after.prompts)}) | "
        f"{before.score_mean:+.3f} | {after.score_mean:+.3f} | >= +{TARGET_SCORE:.2f} and >= ref + {TARGET_GAIN:.2f} "
        f"| {yes(met[0] and met[1])} |",
        f"| fraction > {POSITIVE_THRESHOLD:+.2f} | {before.pos_frac:.3f} | {after.pos_frac:.3f} | "
        f">= {TARGET_FRACTION:.2f} | {yes(met[2])} |",
        f"| exact KL to reference (nats/char) | 0 | {after.kl_per_char:.4f} | <= {TARGET_KL:.2f} | {yes(met[3])} |",
        f"| reference loss on completions (nats/char) | {before.ref_nll_per_char:.4f} | "
        f"{fluency_cell(before.ref_nll_per_char, after.ref_nll_per_char)} | <= +{TARGET_FLUENCY:.2f} | "
        f"{yes(met[4])} |",
        f"| wall time, {steps} {name} steps, {completions} completions | | {wall:.0f} s ({wall / steps:.2f} s/step) "
        f"| | |",
    ]


def rolling(values, window=WINDOW):
    """Means of each `window` consecutive values (len - window + 1 of them; none if fewer)."""
    v = np.asarray(values, dtype=float)
    if len(v) < window:
        return np.array([])
    c = np.cumsum(np.concatenate([[0.0], v]))
    return (c[window:] - c[:-window]) / window


def exploitation_step(records, window=WINDOW, drop=0.05):
    """The step from which a policy exploits its reward model, or None: the step (1-based, the end of
    its `window`-step mean) where the rolling gold score (`score`) peaks, when afterwards the gold falls
    by at least `drop` below that peak while the rolling proxy (`reward_raw`) ends above its value
    there (the proxy still rising, the truth falling: reward hacking). Records without a proxy: None.
    Hand example (window 1): gold [0, .2, .3, .1], proxy [0, 1, 2, 3] -> 3 (gold peaks at step 3,
    falls 0.2 while the proxy goes 2 -> 3); proxy [0, 1, 2, 1.5] -> None."""
    rows = [r for r in records if "reward_raw" in r and "score" in r]
    if len(rows) < window:
        return None
    gold = rolling([r["score"] for r in rows], window)                  # (S - window + 1,)
    proxy = rolling([r["reward_raw"] for r in rows], window)
    peak = int(np.argmax(gold))
    after = gold[peak:]
    if after.min() <= gold[peak] - drop and proxy[-1] > proxy[peak]:
        return peak + window                                             # the window's last step, 1-based
    return None


def time_to_target(records, target, window=WINDOW):
    """(completions, seconds) when the rolling `window`-step mean rollout score of a run's metrics
    records first reaches target; (None, None) if never, or for rollouts of the reference (offline DPO)."""
    if any(r.get("score_of") == "reference" for r in records):
        return None, None
    means = rolling([r["score"] for r in records], window)
    elapsed = np.cumsum([r["step_s"] for r in records])
    hits = np.nonzero(means >= target)[0]
    if not len(hits):
        return None, None
    i = hits[0] + window - 1
    return records[i]["completions"], float(elapsed[i])


def recipe_of(algo, config):
    """A run's recipe: its method and the config fields (a dict, as results.json holds them) that
    differ from the method's current defaults, seed and device aside ("rloo", "dpo beta=0.5")."""
    cls = CONFIGS.get(algo)
    if cls is None or not config:
        return algo
    defaults = json.loads(json.dumps(asdict(cls())))  # tuples -> lists, as results.json holds them
    diffs = [f"{k}={v}" for k, v in config.items() if k not in ("seed", "device") and defaults.get(k, v) != v]
    # a field the run's config lacks predates it (the run used whatever the code did then): say so
    diffs += [f"no {k}" for k in defaults if k not in config]
    return " ".join([algo] + diffs)
