"""Rollouts: fixed-length prompts -> fixed-length sampled responses, with everything PPO records.

For a batch of B prompts of P tokens, `rollout` samples R tokens each with the policy's GPT
(`sample_responses`: GPT.generate's loop, one KV cache per window of model.context_windows, so every
token is drawn from exactly the context it is scored with later), at temperature tau:

    a_t ~ softmax(logits_t / tau)

then, in one batched no-graph pass per model over the finished sequences, records

    logprobs      log pi_old(a_t | s_t)    (B, R)    the policy that sampled (tau applied)
    ref_logprobs  log pi_ref(a_t | s_t)    (B, R)    the frozen reference (tau applied)
    values        V_old(s_t)               (B, R)
    kl            KL_t (exact or sampled)  (B, R)    and kl_exact (B, R) always, for reporting

# subtle: the log-probs come from that second pass, not from the sampling pass. Both run the same
# fused attention kernel, but a one-token step sums its scores in another order than the square
# attention's row, and the sampling pass multiplies B rows at a time where the PPO forward
# multiplies B * L: BLAS may round a (M, K) @ (K, N) product differently for another M (seen in
# the MLP's c_proj, K = 4C: logits apart by up to ~1e-6 at the cpu preset). That would
# make the first PPO ratio 1 +- 1e-7 instead of exactly 1. The extra pass costs about one
# forward. It runs in chunks of the PPO minibatch size for the same reason: same shapes as the
# PPO forward, same bits, a ratio of exactly 1.

`prompt_batches` cuts fixed-length windows from the validation tokens (no padding needed).

Dimension legend: B batch, P prompt tokens, R response tokens, V vocabulary, C n_embd.
Follows: Ziegler et al. 2019 (rollouts with a frozen reference), TRL's PPOTrainer.generate/step.
Deliberately does not: stop at an end-of-text token (responses always have R tokens), or use top-k
/ nucleus filtering (the log-probs PPO needs would then be of the filtered distribution).
"""
from dataclasses import dataclass

import numpy as np

from tinygrad_gpt.backend import get_xp
from tinygrad_gpt.model import context_windows
from tinygrad_gpt.rlhf.advantage import kl_per_token
from tinygrad_gpt.rlhf.policy import response_logprobs


@dataclass
class Rollout:
    prompts: np.ndarray        # (B, P) int64
    responses: np.ndarray      # (B, R) int64
    logprobs: np.ndarray       # (B, R) log pi_old of the sampled tokens
    ref_logprobs: np.ndarray   # (B, R) log pi_ref of the sampled tokens
    values: np.ndarray         # (B, R) V_old
    kl: np.ndarray             # (B, R) KL_t by the configured estimator (enters the reward)
    kl_exact: np.ndarray       # (B, R) exact KL_t (reported)
    texts: list                # B decoded responses
    ref_logq: np.ndarray       # (B, R, V) log pi_ref of every token (the kl_loss_coef term)

    @property
    def sequences(self):
        return np.concatenate([self.prompts, self.responses], axis=1)  # (B, P + R)


def prompt_batches(tokens, batch_size, prompt_len, rng):
    """Endless (B, P) batches of prompt windows drawn at random from `tokens` (e.g. the val split)."""
    tokens = np.asarray(tokens)
    if len(tokens) <= prompt_len:
        raise ValueError(f"prompt_batches: {len(tokens)} tokens cannot hold a prompt of {prompt_len}")
    while True:
        starts = rng.integers(0, len(tokens) - prompt_len, size=batch_size)          # (B,)
        yield tokens[starts[:, None] + np.arange(prompt_len)[None, :]].astype(np.int64)  # (B, P)


def sample_responses(gpt, prompts, response_len, temperature, rng, stride=None):
    """(B, R) tokens sampled after prompts (B, P) at temperature: GPT.generate's loop, a KV cache per
    window of model.context_windows (stride: new tokens per window past block_size)."""
    prompts = np.asarray(prompts, dtype=np.int64)
    out = gpt.generate(prompts, response_len, temperature=temperature, rng=rng, stride=stride)  # (B, P + R)
    return out[:, prompts.shape[1]:]                                      # (B, R)


def rollout(policy, reference, prompts, response_len, temperature, rng, decode, kl_estimator="exact",
            stride=None, chunk=None):
    """Sample responses to prompts (B, P) with the policy and record a Rollout (see module doc)."""
    prompts = np.asarray(prompts, dtype=np.int64)
    responses = sample_responses(policy.gpt, prompts, response_len, temperature, rng, stride)  # (B, R)
    return score_rollout(policy, reference, prompts, responses, temperature, decode, kl_estimator, stride, chunk)


def score_rollout(policy, reference, prompts, responses, temperature, decode, kl_estimator="exact", stride=None,
                  chunk=None):
    """The no-graph pass of `rollout` for given prompts (B, P) and responses (B, R), `chunk` rows at a time."""
    B, P = prompts.shape
    R = responses.shape[1]
    seq = np.concatenate([prompts, responses], axis=1)                    # (B, P + R)
    windows = context_windows(P, R, policy.config.block_size, stride)
    xp = get_xp(policy.gpt.device)
    chunk = chunk or B
    parts = [response_logprobs(policy, xp.asarray(seq[lo:lo + chunk]), windows, temperature)
             for lo in range(0, B, chunk)]
    logp = np.concatenate([p[0] for p in parts])                          # (B, R, V)
    values = np.concatenate([p[1] for p in parts])                        # (B, R)
    logq = np.concatenate([response_logprobs(reference, xp.asarray(seq[lo:lo + chunk]), windows, temperature)[0]
                           for lo in range(0, B, chunk)])                 # (B, R, V)
    picked = responses[..., None]                                         # (B, R, 1)
    logprobs = np.take_along_axis(logp, picked, -1)[..., 0]               # (B, R)
    ref_logprobs = np.take_along_axis(logq, picked, -1)[..., 0]           # (B, R)
    kl_exact = kl_per_token(logp, logq, estimator="exact")                # (B, R)
    kl = kl_exact if kl_estimator == "exact" else kl_per_token(logp, logq, responses, kl_estimator)  # (B, R)
    texts = [decode(row.tolist()) for row in responses]
    return Rollout(prompts, responses, logprobs, ref_logprobs, values, kl, kl_exact, texts, logq)
