"""Health diagnostics of an RLHF step: the numbers that tell a healthy run from a broken one.

Every trainer (PPO, GRPO, RLOO, DPO) logs these per step in metrics.jsonl, and `check_health` turns
those that leave their healthy range into warning lines (printed, and kept under "warnings"):

    ratio_mean, ratio_std   r_t = pi_theta / pi_old over the updated tokens. The first minibatch of a
                            step must have r = 1 exactly (pi_theta is pi_old); far from 1 there means
                            the log-probs were recomputed differently from how they were sampled.
    clipfrac                fraction of tokens with |r - 1| > eps; above ~0.3 the step is too large
    approx_kl_k1, approx_kl KL(pi_old || pi_theta) from tokens sampled by pi_old (Schulman's estimators,
                            http://joschu.net/blog/kl-approx.html):  k1 = mean(-log r) (unbiased, can be
                            < 0),  k3 = mean((r - 1) - log r) (unbiased, >= 0, lower variance)
    kl                      exact KL(pi_theta || pi_ref) per token of the rollout, summed over the
                            vocabulary: never negative; growing without bound means the KL control failed
    kl_sampled              the per-token sampled estimate log pi(a) - log q(a) averaged over the batch;
                            clearly negative means the policy puts *less* mass on its own samples than the
                            reference does, a sign of a broken log-prob or temperature mismatch
    entropy                 mean entropy of the policy per token (nats); collapse toward 0 is mode collapse
    explained_var           PPO's value head: 1 - Var(R - V) / Var(R); <= 0 means it predicts nothing
    adv_mean, adv_std       of the advantages used (whitened or group-normalised: mean ~0)
    zero_spread_frac        GRPO / RLOO: fraction of groups whose scores are all equal (no signal)
    reward_margin, reward_acc  DPO: mean implicit-reward margin beta (delta_policy - delta_reference) of
                            the pairs, and the fraction with margin > 0

Follows: Schulman's KL estimators, TRL's logged statistics (clipfrac, approxkl, explained variance),
the "37 implementation details of PPO" checks. Deliberately does not: stop a run (it warns only).
"""
from dataclasses import dataclass

import numpy as np


def ratio_stats(ratio, clip_eps=None):
    """Diagnostics of the ratios r (any shape, float64) of one minibatch: a dict of floats."""
    r = np.asarray(ratio, dtype=np.float64)
    log_r = np.log(r)
    out = {"ratio_mean": float(r.mean()), "ratio_std": float(r.std()),
           "approx_kl_k1": float((-log_r).mean()),                        # k1 = E_old[log pi_old - log pi]
           "approx_kl": float(((r - 1) - log_r).mean())}                  # k3 = E_old[(r - 1) - log r]
    if clip_eps is not None:
        out["clipfrac"] = float((np.abs(r - 1) > clip_eps).mean())
    return out


def explained_variance(values, returns):
    """1 - Var(returns - values) / Var(returns); nan when the returns do not vary."""
    values, returns = np.asarray(values, dtype=np.float64), np.asarray(returns, dtype=np.float64)
    var = returns.var()
    return float("nan") if var == 0 else float(1.0 - (returns - values).var() / var)


def zero_spread_fraction(scores, group_size):
    """Fraction of the groups of `group_size` consecutive scores (B,) whose scores are all equal."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1, group_size)      # (n, G)
    return float((s.max(axis=1) - s.min(axis=1) <= 1e-12).mean())


def mean_of(stats, key):
    """The mean of a per-minibatch list `stats[key]`, nan if empty."""
    return float(np.mean(stats[key])) if stats.get(key) else float("nan")


@dataclass
class HealthLimits:
    first_ratio_dev: float = 1e-3    # max |r - 1| on a step's first minibatch (should be 0: pi_theta = pi_old)
    clipfrac: float = 0.3            # clip fraction above this: the updates are too large
    kl_explode: float = 0.3          # exact KL to the reference per token above this (3x the 0.10 target)
    kl_negative: float = -0.01       # the batch mean of the sampled KL estimate per token below this
    approx_kl: float = 0.1           # old->new KL (k3) per token above this within one step
    entropy_min: float = 0.3         # mean entropy per token below this (nats): the policy is collapsing


def check_health(m, limits=None):
    """Warning lines (a list of str) for the metrics dict `m` of one step, against `limits`."""
    lim = limits or HealthLimits()
    step, out = m.get("step"), []
    get = (lambda k: m.get(k, float("nan")))
    dev = m.get("first_ratio_dev")
    if dev is not None and np.isfinite(dev) and dev > lim.first_ratio_dev:
        out.append(f"ratio far from 1 on the first minibatch (max |r - 1| = {dev:.3g} > {lim.first_ratio_dev}): "
                   f"the recomputed log-probs differ from those sampled")
    if get("clipfrac") > lim.clipfrac:
        out.append(f"clip fraction {get('clipfrac'):.2f} > {lim.clipfrac}: steps too large (lower lr or epochs)")
    if get("kl") > lim.kl_explode:
        out.append(f"KL to the reference {get('kl'):.3f} nats/token > {lim.kl_explode}: exploding")
    if get("kl_sampled") < lim.kl_negative:
        out.append(f"sampled KL to the reference is negative ({get('kl_sampled'):.4f} nats/token): check the "
                   f"log-probs and the temperature")
    if get("approx_kl") > lim.approx_kl:
        out.append(f"old->new KL (k3) {get('approx_kl'):.3f} > {lim.approx_kl} within one step")
    if get("entropy") < lim.entropy_min:
        out.append(f"entropy {get('entropy'):.3f} nats/token < {lim.entropy_min}: the policy is collapsing")
    if m.get("zero_spread_frac") == 1.0:
        out.append("every group has zero score spread: no learning signal this step")
    if m.get("pairs") == 0:
        out.append("no preference pair this step (every pair tied): no update")
    return [f"step {step}: warning: {w}" for w in out]
