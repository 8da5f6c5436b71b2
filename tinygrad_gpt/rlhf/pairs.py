"""Preference pairs: two responses to one prompt, the one preferred `chosen`, the other `rejected`.

Data as Stiennon et al. 2020 / Ouyang et al. 2022 collect it, with a scorer (VADER) standing in for
people: k responses are sampled for each prompt and every pair of them is compared (InstructGPT
ranks K = 4..9 and trains on all K(K-1)/2 pairs); the one the scorer prefers is `chosen`; pairs
whose scores differ by less than `min_margin` are dropped (a person would call them a tie, and
most unlabelled gibberish scores exactly 0). Pairs are split into train and held out by prompt,
so that no response is in both. The reward model (reward_model.py) and DPO (dpo.py, best against
worst of each group of its own samples) train on them.

Dimension legend: N pairs, k responses per prompt, R response tokens, B rows, T tokens.
Deliberately does not: model ties, or see who labelled a pair.
"""
from dataclasses import dataclass

import numpy as np

from tinygrad_gpt.rlhf.rollout import sample_responses


@dataclass
class PreferencePairs:
    chosen: np.ndarray     # (N, R) response tokens the scorer prefers
    rejected: np.ndarray   # (N, R)
    margin: np.ndarray     # (N,) gold score difference, > 0
    group: np.ndarray = None  # (N,) index of the prompt both responses answer (pairs of one prompt split together)

    def __post_init__(self):
        if self.group is None:
            self.group = np.arange(len(self.chosen))

    def __len__(self):
        return len(self.chosen)

    def take(self, idx):
        return PreferencePairs(self.chosen[idx], self.rejected[idx], self.margin[idx], self.group[idx])

    def split(self, heldout_fraction, rng):
        """(train, held out) by prompt: every pair of a held-out prompt is held out, so no response is in both."""
        groups = rng.permutation(np.unique(self.group))                   # (G,)
        n_held = int(round(len(groups) * heldout_fraction))
        held = np.isin(self.group, groups[:n_held])                       # (N,)
        return self.take(np.flatnonzero(~held)), self.take(np.flatnonzero(held))

    def by_prompt(self):
        """The pairs of each prompt: a list of index arrays, one per distinct group, in group order."""
        order = np.argsort(self.group, kind="stable")                     # (N,)
        return np.split(order, np.flatnonzero(np.diff(self.group[order])) + 1)

    def with_margin(self, min_margin):
        """The pairs whose gold scores differ by at least min_margin."""
        return self.take(np.flatnonzero(self.margin >= min_margin))


def pairs_from_responses(a, b, scores_a, scores_b, min_margin):
    """PreferencePairs from two responses (N, R) per prompt and their gold scores (N,)."""
    diff = np.asarray(scores_a) - np.asarray(scores_b)                    # (N,)
    keep = np.abs(diff) >= min_margin                                     # (N,)
    a_wins = (diff > 0)[:, None]                                          # (N, 1)
    chosen = np.where(a_wins, a, b)[keep]                                 # (n, R)
    rejected = np.where(a_wins, b, a)[keep]                               # (n, R)
    return PreferencePairs(chosen, rejected, np.abs(diff)[keep], np.flatnonzero(keep))


def pairs_from_groups(responses, scores, min_margin):
    """Every pair (i < j) of the k responses of each prompt, responses (N, k, R) and scores (N, k).

    k = 4 gives 6 comparisons per prompt where k = 2 gives 1, for twice the samples (InstructGPT
    ranks K = 4..9 responses and trains on all K(K-1)/2 pairs of each prompt).
    """
    responses, scores = np.asarray(responses), np.asarray(scores, dtype=np.float64)
    N, k, _ = responses.shape
    i, j = np.triu_indices(k, 1)                                          # (k(k-1)/2,) each
    a = responses[:, i].reshape(N * len(i), -1)                           # (N k(k-1)/2, R)
    b = responses[:, j].reshape(N * len(i), -1)
    pairs = pairs_from_responses(a, b, scores[:, i].ravel(), scores[:, j].ravel(), min_margin)
    pairs.group = pairs.group // len(i)                                   # pair index -> prompt index
    return pairs


def make_preference_pairs(gpt, prompt_iter, n_prompts, response_len, temperature, scorer, decode, rng,
                          min_margin=0.05, stride=None, log=None, samples_per_prompt=2):
    """Sample k = samples_per_prompt responses per prompt with `gpt`, label every pair of them with `scorer`."""
    k = samples_per_prompt
    if k < 2:
        raise ValueError(f"make_preference_pairs: samples_per_prompt must be >= 2, got {k}")
    resp_all, score_all, done = [], [], 0
    while done < n_prompts:
        prompts = next(prompt_iter)                                       # (B, P)
        B = len(prompts)
        each = np.repeat(prompts, k, axis=0)                              # (B k, P) each prompt k times
        responses = sample_responses(gpt, each, response_len, temperature, rng, stride)  # (B k, R)
        scores = scorer([decode(r.tolist()) for r in responses])          # (B k,)
        resp_all.append(responses.reshape(B, k, -1)), score_all.append(np.asarray(scores).reshape(B, k))
        done += B
        if log:
            log(f"preference data: {done}/{n_prompts} prompts x {k} samples")
    return pairs_from_groups(np.concatenate(resp_all)[:n_prompts], np.concatenate(score_all)[:n_prompts],
                             min_margin)


def best_worst_pairs(seqs, scores, group_size, min_margin):
    """PreferencePairs from groups of `group_size` consecutive rows of seqs (B, T) with scores (B,): per
    group its best-scored row (the first if several) against its worst (the last if several), kept when
    their scores differ by >= min_margin. With group_size 2 these are pairs_from_responses' pairs
    (an exact tie, kept only when min_margin is 0, is ordered the other way)."""
    k = group_size
    s = np.asarray(scores).reshape(-1, k)                                 # (B / k, k)
    base = np.arange(len(s)) * k                                          # (B / k,) first row of each group
    best = s.argmax(axis=1)                                               # (B / k,)
    worst = k - 1 - s[:, ::-1].argmin(axis=1)                             # (B / k,) != best unless k == 1
    margin = s.max(axis=1) - s.min(axis=1)                                # (B / k,) >= 0
    keep = margin >= min_margin                                           # (B / k,)
    return PreferencePairs(seqs[(base + best)[keep]], seqs[(base + worst)[keep]], margin[keep])
