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

Dimension legend: N prompts, P prompt tokens, R response tokens, V vocabulary.
Follows: Ziegler et al. 2019 / Stiennon et al. 2020 (score against KL to the reference as the figure
of merit). Deliberately does not: judge fluency with a model other than the reference (there is none offline).
"""
from dataclasses import dataclass

import numpy as np

from tinygrad_gpt.backend import get_xp
from tinygrad_gpt.rlhf.advantage import kl_per_token
from tinygrad_gpt.model import context_windows
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
