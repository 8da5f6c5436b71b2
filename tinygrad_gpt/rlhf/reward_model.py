"""The "human feedback" stage: preference pairs labelled by the scorer, and a learned reward model.

Data (as Stiennon et al. 2020 / Ouyang et al. 2022 collect it, with VADER standing in for people):
two responses are sampled from the reference for the same prompt; the one the scorer prefers is
`chosen`, the other `rejected`; pairs whose scores differ by less than `min_margin` are dropped (a
person would call them a tie, and most unlabelled gibberish scores exactly 0).

Model: a GPT backbone (by default a copy of the pretrained policy's weights, as reward models are
initialised from the SFT model) and a scalar head, reading the response tokens only (B, R):

    h = GPT hidden states (B, R, C);   r = mean_t (h_t @ w + b)        (B,)

(mean over positions of a per-position scalar, not the last position alone: a sentiment score is
close to a sum over words, which the mean expresses directly; the last-token head of InstructGPT
would have to route every word through attention.) Trained with the Bradley-Terry loss
L = mean -log sigmoid(r_chosen - r_rejected) (losses.BradleyTerryLoss). Held-out pairwise accuracy
is the fraction of pairs with r_chosen > r_rejected.

Dimension legend: N pairs, R response tokens, C n_embd.
Follows: Christiano et al. 2017, Stiennon et al. 2020 (reward model from pairwise comparisons),
Ouyang et al. 2022 eq. 1. Deliberately does not: see the prompt (the gold score ignores it too),
model ties, or train on more than two responses per prompt.
"""
from dataclasses import dataclass

import numpy as np

from tinygrad_gpt import nn
from tinygrad_gpt.cli import check_fields, setting
from tinygrad_gpt.backend import get_xp
from tinygrad_gpt.optim import AdamW, clip_grad_norm, decay_groups
from tinygrad_gpt.rlhf.losses import bradley_terry_loss
from tinygrad_gpt.rlhf.policy import frozen_copy
from tinygrad_gpt.rlhf.rollout import sample_responses
from tinygrad_gpt.tensor import no_grad


@dataclass
class RewardModelConfig:
    pairs: int = setting(2048, ge=1)               # pairs wanted (before dropping near-ties: prompts sampled)
    min_margin: float = setting(0.05, ge=0)        # drop pairs whose gold scores differ by less (ties)
    heldout_fraction: float = setting(0.2, gt=0, lt=1)  # pairs kept out of training for the accuracy figure
    steps: int = setting(300, ge=1)                # optimiser steps
    batch_size: int = setting(32, ge=1)            # pairs per step
    lr: float = setting(3e-4, gt=0)                # AdamW
    weight_decay: float = setting(0.01, ge=0)
    seed: int = setting(0, ge=0)

    def __post_init__(self):
        check_fields(self)


@dataclass
class PreferencePairs:
    chosen: np.ndarray     # (N, R) response tokens the scorer prefers
    rejected: np.ndarray   # (N, R)
    margin: np.ndarray     # (N,) gold score difference, > 0

    def __len__(self):
        return len(self.chosen)

    def split(self, heldout_fraction, rng):
        order = rng.permutation(len(self))                                # (N,)
        n_held = int(round(len(self) * heldout_fraction))
        take = (lambda idx: PreferencePairs(self.chosen[idx], self.rejected[idx], self.margin[idx]))
        return take(order[n_held:]), take(order[:n_held])


def pairs_from_responses(a, b, scores_a, scores_b, min_margin):
    """PreferencePairs from two responses (N, R) per prompt and their gold scores (N,)."""
    diff = np.asarray(scores_a) - np.asarray(scores_b)                    # (N,)
    keep = np.abs(diff) >= min_margin                                     # (N,)
    a_wins = (diff > 0)[:, None]                                          # (N, 1)
    chosen = np.where(a_wins, a, b)[keep]                                 # (n, R)
    rejected = np.where(a_wins, b, a)[keep]                               # (n, R)
    return PreferencePairs(chosen, rejected, np.abs(diff)[keep])


def make_preference_pairs(gpt, prompt_iter, n_prompts, response_len, temperature, scorer, decode, rng,
                          min_margin=0.05, stride=None, log=None):
    """Sample two responses per prompt with `gpt`, label them with `scorer`; PreferencePairs."""
    a_all, b_all, sa_all, sb_all, done = [], [], [], [], 0
    while done < n_prompts:
        prompts = next(prompt_iter)                                       # (B, P)
        both = np.concatenate([prompts, prompts], axis=0)                 # (2B, P) each prompt twice
        responses = sample_responses(gpt, both, response_len, temperature, rng, stride)  # (2B, R)
        scores = scorer([decode(r.tolist()) for r in responses])          # (2B,)
        B = len(prompts)
        a_all.append(responses[:B]), b_all.append(responses[B:])
        sa_all.append(scores[:B]), sb_all.append(scores[B:])
        done += B
        if log:
            log(f"preference data: {done}/{n_prompts} prompts sampled")
    cat = np.concatenate
    return pairs_from_responses(cat(a_all)[:n_prompts], cat(b_all)[:n_prompts], cat(sa_all)[:n_prompts],
                                cat(sb_all)[:n_prompts], min_margin)


class RewardModel(nn.Module):
    """r(response) = mean_t (h_t @ w + b) over a GPT's hidden states h (B, R, C); w, b start at 0."""

    def __init__(self, gpt, copy=True):
        self.gpt = frozen_copy(gpt) if copy else gpt  # a copy: training it must not touch the policy
        self.gpt.eval()
        C = self.gpt.config.n_embd
        self.head = nn.Linear(C, 1, bias=True, std=0.0, dtype=self.gpt.wte.weight.dtype, device=self.gpt.device)

    def forward(self, responses):
        """Rewards (B,) for response token ids (B, R), R <= block_size."""
        x = self.gpt.hidden(responses)                                    # (B, R, C)
        B, R, C = x.shape
        per_token = (x.reshape(B * R, C) @ self.head.weight + self.head.bias).reshape(B, R)  # (B, R)
        return per_token.mean(axis=1)                                     # (B,)

    def score(self, responses, batch_size=128):
        """No-graph rewards (N,) float64 numpy for responses (N, R)."""
        xp = get_xp(self.gpt.device)
        out = []
        with no_grad():
            for lo in range(0, len(responses), batch_size):
                out.append(self(xp.asarray(responses[lo:lo + batch_size])).numpy())
        return np.concatenate(out).astype(np.float64)                     # (N,)


def pairwise_accuracy(model, pairs):
    """Fraction of pairs with r(chosen) > r(rejected)."""
    if len(pairs) == 0:
        raise ValueError("pairwise_accuracy: no pairs")
    return float((model.score(pairs.chosen) > model.score(pairs.rejected)).mean())


def train_reward_model(model, pairs, config, log=None):
    """Bradley-Terry training on `pairs`; returns the list of per-step losses."""
    if len(pairs) < 2:
        raise ValueError(f"train_reward_model: need >= 2 pairs, got {len(pairs)} (lower min_margin or sample more)")
    rng = np.random.default_rng(config.seed)
    xp = get_xp(model.gpt.device)
    opt = AdamW(decay_groups(model.named_parameters(), config.weight_decay), lr=config.lr, betas=(0.9, 0.95),
                weight_decay=config.weight_decay)
    losses, order, pos = [], rng.permutation(len(pairs)), 0
    bs = min(config.batch_size, len(pairs))
    for step in range(config.steps):
        if pos + bs > len(pairs):
            order, pos = rng.permutation(len(pairs)), 0
        idx = order[pos:pos + bs]                                         # (M,)
        pos += bs
        both = np.concatenate([pairs.chosen[idx], pairs.rejected[idx]])   # (2M, R) one forward for both
        r = model(xp.asarray(both))                                       # (2M,)
        loss = bradley_terry_loss(r[:bs], r[bs:])
        model.zero_grad()
        loss.backward()
        clip_grad_norm(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if log and (step + 1) % 50 == 0:
            log(f"reward model step {step + 1}/{config.steps}: loss {np.mean(losses[-50:]):.4f}")
    return losses
