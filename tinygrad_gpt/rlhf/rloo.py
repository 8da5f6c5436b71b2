"""RLOO: REINFORCE with a leave-one-out baseline over k samples per prompt, the KL in the reward.

Ahmadian et al. 2024 ("Back to Basics: Revisiting REINFORCE Style Optimization for Learning from
Human Feedback in LLMs", eq. 6): k responses y_1..y_k per prompt; the whole response is one action.

    R_i    = s_i - beta sum_t KL_it                      the KL to the reference in the reward, as PPO's
                                                         (KL_t sampled log pi(a_t) - log q(a_t), or exact)
    b_i    = 1/(k-1) sum_{j != i} R_j                    the mean of the *other* k - 1 rewards
    A_i    = R_i - b_i  (= k/(k-1) (R_i - mean_g R))
    L      = -1/B sum_i A_i sum_t m_it logp_it           "reinforce" (the paper's): grad = -E[A grad log pi(y)]
    or the clipped ratio of PPO (losses.PolicyLoss) with A_i on every token of y_i  ("clipped", TRL's
    RLOOTrainer), over several epochs.

The baseline leaves the sample out so that it does not depend on y_i: E[b_i grad log pi(y_i)] = 0
and the gradient stays unbiased (a baseline that includes R_i would shrink A_i by (k-1)/k and
correlate with it).

Hand-computed example (tests/test_rlhf_rloo.py): rewards R = [4, 0, 2, 6], k = 4: sum 12, baselines
b = [(12-4)/3, 12/3, (12-2)/3, (12-6)/3] = [8/3, 4, 10/3, 2], A = [4/3, -4, -4/3, 4] (= 4/3 (R - 3)).
REINFORCE loss for log-probs (one token each) logp = [-1, -2, -1, -0.5]:
    L = -(4/3 (-1) - 4 (-2) - 4/3 (-1) + 4 (-0.5)) / 4 = -(8 - 2) / 4 = -1.5,  dL/dlogp = -A / 4.

Dimension legend: B responses (B / k prompts x k), T response tokens.
Follows: Ahmadian et al. 2024, Kool et al. 2019 ("Buy 4 REINFORCE samples, get a baseline for free!"),
TRL's RLOOTrainer. Deliberately does not: normalise the advantages (the paper does not; scores are
normalised to std 1 on reference samples already), or use a value head.
"""
import time

import numpy as np

from tinygrad_gpt.backend import array_module
from tinygrad_gpt.rlhf.diagnostics import zero_spread_fraction
from tinygrad_gpt.rlhf.losses import _check_mask, _data, policy_loss
from tinygrad_gpt.rlhf.trainer import RLHFTrainer
from tinygrad_gpt.tensor import Function


def leave_one_out_baseline(rewards, group_size):
    """b_i (B,): the mean reward of the other group_size - 1 samples in i's group (consecutive rows)."""
    r = np.asarray(rewards, dtype=np.float64)
    if r.ndim != 1 or r.size % group_size or group_size < 2:
        raise ValueError(f"leave_one_out_baseline: rewards of shape {r.shape} do not split into groups of "
                         f"{group_size} (need 1-D, a multiple of group_size, group_size >= 2)")
    g = r.reshape(-1, group_size)                                         # (B / k, k)
    return ((g.sum(axis=1, keepdims=True) - g) / (group_size - 1)).reshape(-1)  # (B,) (sum - R_i) / (k - 1)


def rloo_advantages(rewards, group_size):
    """A_i = R_i - b_i (B,)."""
    return np.asarray(rewards, dtype=np.float64) - leave_one_out_baseline(rewards, group_size)  # (B,)


class ReinforceLoss(Function):
    """L = -1/B sum_i A_i sum_t m_it logp_it, a scalar, from log-probs (B, T) and advantages (B,)."""

    @staticmethod
    def forward(ctx, logprobs, advantages, mask):
        xp = array_module(logprobs)
        if advantages.shape != logprobs.shape[:1]:
            raise ValueError(f"reinforce_loss: advantages has shape {advantages.shape}, expected "
                             f"({logprobs.shape[0]},) (one per response of logprobs {logprobs.shape})")
        _check_mask("reinforce_loss", logprobs, mask)
        B = logprobs.shape[0]
        m = mask.astype(logprobs.dtype, copy=False)                       # (B, T)
        seq_logp = (logprobs * m).sum(axis=1)                             # F1 (B,) log pi(y_i) = sum_t m logp
        ctx.adv, ctx.m, ctx.B = advantages, m, logprobs.dtype.type(B)
        return xp.asarray(-(advantages * seq_logp).sum() / ctx.B, dtype=logprobs.dtype)  # F2 ()

    @staticmethod
    def backward(ctx, dout):
        # F2: L = -sum A_i seq_i / B, so dseq_i = -A_i dout / B;  F1: dlogp_it = m_it dseq_i
        dseq = -ctx.adv * dout / ctx.B                                    # (B,)
        return (ctx.m * dseq[:, None]).astype(dout.dtype, copy=False)     # (B, T)


def reinforce_loss(logprobs, advantages, mask):
    """RLOO's REINFORCE loss (a scalar Tensor) for log-probs (B, T) Tensor; advantages (B,), mask arrays."""
    lp = _data(logprobs)
    xp = array_module(lp)
    return ReinforceLoss.apply(logprobs, advantages=xp.asarray(_data(advantages), dtype=lp.dtype),
                               mask=xp.asarray(_data(mask)))


class RLOOTrainer(RLHFTrainer):
    """RLOO on `policy` (PolicyWithValue; its value head is not used) against `reference`; see RLHFTrainer."""

    algo = "rloo"

    def __init__(self, policy, reference, tokenizer, prompt_tokens, scorer, config, reward_model=None, log=print):
        super().__init__(policy, reference, tokenizer, prompt_tokens, scorer, config, reward_model, log,
                         group_size=config.group_size, clip_eps=config.clip_eps)
        self.kl_ctl = self.kl_controller(config)

    def step(self):
        """One batch of B / k prompts x k responses and its update(s); returns the step's metrics."""
        c = self.cfg
        t0 = time.perf_counter()
        roll, gold, raw, scores, t_rollout = self.scored_rollout(self.next_prompts(), kl_estimator=c.kl_estimator)
        beta = self.kl_ctl.value
        seq_kl = roll.kl.sum(axis=1)                                      # (B,) sum_t KL_t (the estimator's)
        rewards = scores - beta * seq_kl                                  # (B,) R_i = s_i - beta KL_i
        advantages = rloo_advantages(rewards, c.group_size)               # (B,)
        B = len(advantages)
        epochs = 1 if c.update == "reinforce" else c.epochs   # REINFORCE is on-policy: one pass
        updates = self.update(roll.sequences, roll.logprobs, B, epochs, roll=roll, advantages=advantages)
        mean_seq_kl = float(seq_kl.mean())
        self.kl_ctl.update(mean_seq_kl, B)
        metrics = {**self.rollout_metrics(gold, raw, beta, roll, scores, mean_seq_kl), **updates.metrics(),
                   "adv_mean": float(advantages.mean()), "adv_std": float(advantages.std()),
                   "zero_spread_frac": zero_spread_fraction(scores, c.group_size)}
        return self.finish_metrics(metrics, t0, t_rollout, B)

    def loss(self, mb, logits, values, logp, mask, roll, advantages):
        """RLOO's loss on the minibatch, with A_i = R_i - b_i the leave-one-out advantage of response i:

            "reinforce"  L = -1/M sum_i A_i sum_t m_it logp_it              (reinforce_loss)
            "clipped"    L = mean_m( max(-A_i r_it, -A_i clip(r_it, 1 - eps, 1 + eps)) )   (losses.policy_loss)"""
        c = self.cfg
        if c.update == "reinforce":
            return reinforce_loss(logp, advantages[mb], mask), {}
        per_token = np.repeat(advantages[mb, None], logp.shape[1], axis=1)   # (M, R) A_i on every token
        return policy_loss(logp, roll.logprobs[mb], per_token, mask, c.clip_eps), {}
