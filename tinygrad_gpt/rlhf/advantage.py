"""Per-token rewards, KL to the reference, KL controllers and GAE: from one score to A_t and R_t.

A response of T tokens gets one score s (from the scorer or the reward model) after it is written.
PPO needs a reward for every token, so, as Ziegler et al. 2019 ("Fine-Tuning Language Models from
Human Preferences", eq. 2) and Stiennon et al. 2020:

    KL_t  = KL( pi(. | s_t) || pi_ref(. | s_t) ) = sum_v p_t(v) (log p_t(v) - log q_t(v))   ("exact")
         or log pi(a_t | s_t) - log pi_ref(a_t | s_t)                                      ("sampled"; unbiased,
                                                                                            but noisy, can be < 0)
    r_t   = -beta KL_t  +  [t = T - 1] s                                (the score lands on the last token)

Generalised advantage estimation (Schulman et al. 2016, "High-Dimensional Continuous Control Using
Generalized Advantage Estimation", eqs. 11-16), with V_T = 0 (the episode ends after token T - 1):

    delta_t = r_t + gamma V_{t+1} - V_t
    A_t     = delta_t + gamma lambda A_{t+1}      (= sum_l (gamma lambda)^l delta_{t+l}),   A_T = 0
    R_t     = A_t + V_t                           (the value head's regression target)

With gamma = lambda = 1 and V = 0, A_t = sum_{l >= t} r_l, the reward-to-go.

# subtle: which KL estimator goes into the reward changes what PPO optimises. The policy gradient
# credits r_t to the action a_t through log pi(a_t | s_t). The sampled KL_t = log pi(a_t) - log q(a_t)
# depends on a_t, and E[grad log pi(a_t) (log pi(a_t) - log q(a_t))] = grad KL_t: the penalty pulls
# the policy back. The exact KL_t is a function of the state s_t only, so for a_t it is a baseline
# (no gradient); only earlier actions, which led to s_t, feel it: on the cpu preset "exact" let the
# KL grow whatever beta was (benchmarks/LOG.md, 2026-11-22). "exact" is the better *measure* (no
# variance, never < 0); "sampled" is the one that restrains (Ziegler, TRL).

KL coefficient beta: fixed, or adapted (Ziegler et al. 2019, section 2.2) so the mean KL per
sequence tracks a target:  e = clip(KL / target - 1, -0.2, 0.2);  beta <- beta (1 + e n / horizon)
where n is the number of sequences in the step.

Dimension legend: B sequences, T response tokens, V vocabulary.
Follows: the papers above; TRL's compute_rewards / compute_advantages and AdaptiveKLController.
Deliberately does not: handle sequences that end early (no EOS: every response has T tokens; the
mask of the losses is kept for that case but these functions assume full rows).
"""
from dataclasses import dataclass

import numpy as np


def kl_per_token(logp, logq, tokens=None, estimator="exact"):
    """KL_t (B, T) from the policy's and the reference's log-softmaxes logp, logq (B, T, V).

    estimator "exact": sum_v p (log p - log q); "sampled": log p(a_t) - log q(a_t) at tokens (B, T).
    """
    if logp.shape != logq.shape:
        raise ValueError(f"kl_per_token: logp {logp.shape} and logq {logq.shape} differ in shape")
    if estimator == "exact":
        return (np.exp(logp) * (logp - logq)).sum(axis=-1)                # (B, T)
    if estimator == "sampled":
        if tokens is None:
            raise ValueError("kl_per_token: the 'sampled' estimator needs the sampled tokens (B, T)")
        picked = tokens[..., None]                                        # (B, T, 1)
        return (np.take_along_axis(logp, picked, -1) - np.take_along_axis(logq, picked, -1))[..., 0]  # (B, T)
    raise ValueError(f"kl_per_token: estimator must be 'exact' or 'sampled', got {estimator!r}")


def shaped_rewards(scores, kl, beta):
    """r_t = -beta KL_t, plus the score on the last token: scores (B,), kl (B, T) -> (B, T)."""
    scores = np.asarray(scores, dtype=kl.dtype)
    if scores.shape != kl.shape[:1]:
        raise ValueError(f"shaped_rewards: scores has shape {scores.shape}, expected ({kl.shape[0]},) "
                         f"(one score per sequence of kl {kl.shape})")
    rewards = -beta * kl                                                  # (B, T) r_t = -beta KL_t
    rewards[:, -1] += scores                                              # (B, T) + s on t = T - 1
    return rewards


def gae(rewards, values, gamma=1.0, lam=0.95):
    """Advantages A (B, T) and returns R = A + V (B, T) by GAE(gamma, lambda), with V_T = 0."""
    rewards, values = np.asarray(rewards), np.asarray(values)
    if rewards.shape != values.shape or rewards.ndim != 2:
        raise ValueError(f"gae: rewards {rewards.shape} and values {values.shape} must both be (B, T)")
    if not (0.0 <= gamma <= 1.0 and 0.0 <= lam <= 1.0):
        raise ValueError(f"gae: gamma and lambda must be in [0, 1], got gamma={gamma}, lambda={lam}")
    B, T = rewards.shape
    advantages = np.zeros_like(rewards)                                   # (B, T)
    next_advantage = np.zeros(B, dtype=rewards.dtype)                     # (B,) A_{t+1}, A_T = 0
    next_value = np.zeros(B, dtype=rewards.dtype)                         # (B,) V_{t+1}, V_T = 0
    for t in reversed(range(T)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]         # (B,) delta_t = r_t + g V_{t+1} - V_t
        next_advantage = delta + gamma * lam * next_advantage             # (B,) A_t = delta_t + g l A_{t+1}
        advantages[:, t] = next_advantage
        next_value = values[:, t]
    return advantages, advantages + values                                # (B, T), (B, T) R_t = A_t + V_t


@dataclass
class FixedKLController:
    """beta stays where it is."""
    value: float

    def update(self, mean_kl, n_sequences):
        return self.value


@dataclass
class AdaptiveKLController:
    """Ziegler et al. 2019: beta grows when the KL per sequence is above target, shrinks below."""
    value: float     # the current beta
    target: float    # the wanted mean KL per sequence (nats, summed over its tokens)
    horizon: int     # sequences over which beta may change by a factor ~e at the largest error

    def update(self, mean_kl, n_sequences):
        error = float(np.clip(mean_kl / self.target - 1.0, -0.2, 0.2))   # e = clip(KL / target - 1, +-0.2)
        self.value *= 1.0 + error * n_sequences / self.horizon            # beta <- beta (1 + e n / horizon)
        return self.value
