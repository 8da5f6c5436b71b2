"""GRPO: group-relative advantages, the clipped ratio, and the KL to the reference as a loss term.

Shao et al. 2024 ("DeepSeekMath", section 4.1, eq. 3 and the "outcome supervision" advantage): for
each prompt, G responses are sampled; their scores s_1..s_G give every token of response i the
same advantage, and no value head is needed:

    A_i   = (s_i - mean_g s) / (std_g s + eps)                 "grpo" (the default; std is the
                                                                unbiased one, n - 1, as TRL's)
    A_i   = s_i - mean_g s                                      "dr_grpo" (Liu et al. 2025, "Understanding
                                                                R1-Zero-Like Training": no std division)
    r_it  = exp(logp_it - logp_old_it)
    k3_it = exp(logq_it - logp_it) - (logq_it - logp_it) - 1    the KL estimator of the paper (>= 0)
    l_it  = max(-A_i r_it, -A_i clip(r_it, 1 - eps, 1 + eps)) + beta k3_it
    L     = 1/B sum_i 1/n_i sum_t m_it l_it                     "grpo": mean over each response, then over
                                                                responses (n_i = its token count)
    L     = 1/(B T) sum_i sum_t m_it l_it                        "dr_grpo": one constant normaliser T

With the exact KL (config kl_estimator "exact") the k3 term is left out here (beta = 0) and the
trainer adds beta * losses.KLToReference over the vocabulary instead. (Responses here have a fixed
length, so the two normalisers agree unless a mask removes tokens.)

Hand-computed example (tests/test_rlhf_grpo.py): one group, scores s = [4, 0, 2]: mean 2, unbiased
std sqrt((4 + 4 + 0) / 2) = 2, so A = [1, -1, 0] ("grpo", eps 0) and [2, -2, 0] ("dr_grpo").
One token per response, ratios r = [1.5, 0.9, 1.0], eps 0.2, beta 0, "grpo" aggregation:
    l = [max(-1.5, -1.2), max(0.9, 0.9), 0] = [-1.2, 0.9, 0];  L = (-1.2 + 0.9 + 0) / 3 = -0.1
    dL/dlogp = [0 (clipped), -A r / 3 = 0.9 / 3 = 0.3, 0]
With beta = 1 and logq - logp = log 2 for every token, k3 = 2 - log 2 - 1 = 0.3069 is added to each
l, and dk3/dlogp = 1 - exp(logq - logp) = -1 (divided by 3 in L).

Dimension legend: B responses (B / G prompts x G), T response tokens, V vocabulary, G group size.
Follows: DeepSeekMath (Shao et al. 2024), TRL's GRPOTrainer (loss layout, unbiased std), Dr. GRPO.
Deliberately does not: filter zero-spread groups out of the batch (their advantage is 0, they add
only the KL term; diagnostics report their fraction), or iterate the reference model (it stays frozen).
"""
import time

import numpy as np

from tinygrad_gpt.backend import array_module
from tinygrad_gpt.rlhf.diagnostics import zero_spread_fraction
from tinygrad_gpt.rlhf.losses import _check_mask, _data, _same_shape, kl_to_reference
from tinygrad_gpt.rlhf.trainer import RLHFTrainer
from tinygrad_gpt.tensor import Function

VARIANTS = ("grpo", "dr_grpo")


def group_advantages(scores, group_size, variant="grpo", eps=1e-4):
    """Advantages (B,) of scores (B,) in consecutive groups of group_size; see the module docstring."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1 or s.size % group_size or group_size < 2:
        raise ValueError(f"group_advantages: scores of shape {s.shape} do not split into groups of {group_size} "
                         f"(need 1-D, a multiple of group_size, group_size >= 2)")
    if variant not in VARIANTS:
        raise ValueError(f"group_advantages: variant must be one of {VARIANTS}, got {variant!r}")
    g = s.reshape(-1, group_size)                                         # (B / G, G)
    centered = g - g.mean(axis=1, keepdims=True)                          # (B / G, G) s - mean_g
    if variant == "dr_grpo":
        return centered.reshape(-1)                                       # (B,)
    std = g.std(axis=1, ddof=1, keepdims=True)                            # (B / G, 1) unbiased
    return (centered / (std + eps)).reshape(-1)                           # (B,)


class GRPOLoss(Function):
    """L of the module docstring, a scalar, from new log-probs (B, T) of the sampled tokens."""

    @staticmethod
    def forward(ctx, logprobs, old_logprobs, ref_logprobs, advantages, mask, clip_eps, kl_coef, normaliser):
        xp = array_module(logprobs)
        _same_shape("grpo_loss", logprobs, old_logprobs=old_logprobs, ref_logprobs=ref_logprobs)
        if advantages.shape != logprobs.shape[:1]:
            raise ValueError(f"grpo_loss: advantages has shape {advantages.shape}, expected "
                             f"({logprobs.shape[0]},) (one per response of logprobs {logprobs.shape})")
        _check_mask("grpo_loss", logprobs, mask)
        dt = logprobs.dtype.type
        B, T = logprobs.shape
        m = mask.astype(logprobs.dtype, copy=False)                       # (B, T)
        if normaliser == "grpo":
            n_i = m.sum(axis=1, keepdims=True)                            # (B, 1) tokens per response
            if float(n_i.min()) <= 0:
                raise ValueError("grpo_loss: a response has no token in the mask (its mean is undefined)")
            weight = m / (n_i * dt(B))                                    # (B, T) 1 / (B n_i)
        elif normaliser == "dr_grpo":
            weight = m / dt(B * T)                                        # (B, T) 1 / (B T)
        else:
            raise ValueError(f"grpo_loss: normaliser must be one of {VARIANTS}, got {normaliser!r}")
        adv = advantages[:, None]                                         # (B, 1) A_i on every token
        ratio = xp.exp(logprobs - old_logprobs)                           # F1 (B, T) r = exp(logp - logp_old)
        clipped_ratio = xp.clip(ratio, dt(1 - clip_eps), dt(1 + clip_eps))  # F2 (B, T)
        unclipped = -adv * ratio                                          # F3 (B, T) -A r
        clipped = -adv * clipped_ratio                                    # F4 (B, T) -A clip(r)
        # subtle: inside the range both terms are equal; take the unclipped one (its gradient is true)
        inside = (ratio >= dt(1 - clip_eps)) & (ratio <= dt(1 + clip_eps))  # (B, T)
        use_unclipped = inside | (unclipped >= clipped)                   # (B, T)
        surrogate = xp.where(use_unclipped, unclipped, clipped)           # F5 (B, T) max(-A r, -A clip(r))
        log_q_over_p = ref_logprobs - logprobs                            # F6 (B, T) logq - logp
        q_over_p = xp.exp(log_q_over_p)                                   # F7 (B, T) q / p
        k3 = q_over_p - log_q_over_p - dt(1)                              # F8 (B, T) k3 >= 0
        per_token = surrogate + dt(kl_coef) * k3                          # F9 (B, T) l_it
        ctx.ratio, ctx.adv, ctx.use_unclipped, ctx.q_over_p = ratio, adv, use_unclipped, q_over_p
        ctx.weight, ctx.kl_coef = weight, dt(kl_coef)
        return xp.asarray((per_token * weight).sum(), dtype=logprobs.dtype)  # F10 () sum w l

    @staticmethod
    def backward(ctx, dout):
        xp = array_module(dout)
        # F10: L = sum w_it l_it, so dl_it = dout w_it
        dl = dout * ctx.weight                                            # (B, T)
        # F9: l = surrogate + beta k3;  F8 through F6: dk3/dlogp = -(q/p) + 1 (d(logq - logp)/dlogp = -1)
        dlogp_kl = ctx.kl_coef * (1 - ctx.q_over_p) * dl                  # (B, T)
        # F5: only the unclipped term carries a gradient (the clipped one wins only where clip() is
        # flat); F3: dr = -A dsurrogate;  F1: dlogp = r dr
        dratio = xp.where(ctx.use_unclipped, -ctx.adv * dl, 0)            # (B, T)
        return (ctx.ratio * dratio + dlogp_kl).astype(dout.dtype, copy=False)


def grpo_loss(logprobs, old_logprobs, ref_logprobs, advantages, mask, clip_eps=0.2, kl_coef=0.0,
              normaliser="grpo"):
    """GRPO's loss (a scalar Tensor) for new log-probs `logprobs` (B, T) Tensor; the rest are arrays."""
    lp = _data(logprobs)
    xp = array_module(lp)
    cast = (lambda a: xp.asarray(_data(a), dtype=lp.dtype))
    return GRPOLoss.apply(logprobs, old_logprobs=cast(old_logprobs), ref_logprobs=cast(ref_logprobs),
                          advantages=cast(advantages), mask=xp.asarray(_data(mask)), clip_eps=float(clip_eps),
                          kl_coef=float(kl_coef), normaliser=normaliser)


class GRPOTrainer(RLHFTrainer):
    """GRPO on `policy` (PolicyWithValue; its value head is not used) against `reference`; see RLHFTrainer."""

    algo = "grpo"
    loss_stats = ("kl_loss",)

    def __init__(self, policy, reference, tokenizer, prompt_tokens, scorer, config, reward_model=None, log=print):
        super().__init__(policy, reference, tokenizer, prompt_tokens, scorer, config, reward_model, log,
                         group_size=config.group_size, clip_eps=config.clip_eps)
        self.kl_ctl = self.kl_controller(config)

    def step(self):
        """One batch of B / G prompts x G responses and its epochs; returns the step's metrics."""
        c = self.cfg
        t0 = time.perf_counter()
        roll, gold, raw, scores, t_rollout = self.scored_rollout(self.next_prompts(), kl_estimator="sampled")
        advantages = group_advantages(scores, c.group_size, c.advantage, c.adv_eps)  # (B,)
        beta = self.kl_ctl.value
        B = len(advantages)
        updates = self.update(roll.sequences, roll.logprobs, B, c.epochs, roll=roll, advantages=advantages,
                              beta=beta)
        mean_seq_kl = float(roll.kl_exact.sum(axis=1).mean())             # exact KL per response (nats)
        self.kl_ctl.update(mean_seq_kl, B)
        metrics = {**self.rollout_metrics(gold, raw, beta, roll, scores, mean_seq_kl), **updates.metrics(),
                   "adv_mean": float(advantages.mean()), "adv_std": float(advantages.std()),
                   "zero_spread_frac": zero_spread_fraction(scores, c.group_size)}
        return self.finish_metrics(metrics, t0, t_rollout, B)

    def loss(self, mb, logits, values, logp, mask, roll, advantages, beta):
        """GRPO's L of the module docstring on the minibatch (grpo_loss): the clipped ratio with A_i on
        every token of response i, plus beta times the KL to the reference,

            l_it = max(-A_i r_it, -A_i clip(r_it, 1 - eps, 1 + eps)) + beta k3_it      kl_estimator "k3"
            L    = 1/B sum_i 1/n_i sum_t m_it l_it    ("grpo"; "dr_grpo": 1/(B T) sum_i sum_t m_it l_it)

        or, with kl_estimator "exact", L without the k3 term plus beta L_KL (losses.KLToReference, the
        exact KL over the vocabulary)."""
        c = self.cfg
        k3_coef = beta if c.kl_estimator == "k3" else 0.0
        loss = grpo_loss(logp, roll.logprobs[mb], roll.ref_logprobs[mb], advantages[mb], mask, c.clip_eps, k3_coef,
                         c.advantage)
        stats = {}
        if c.kl_estimator == "exact" and beta:
            kl_loss = kl_to_reference(logits, roll.ref_logq[mb], mask)
            loss = loss + kl_loss * beta
            stats["kl_loss"] = kl_loss.item()
        return loss, stats
