"""DPO: the preference loss of a policy against its frozen reference, on scorer-labelled pairs.

Rafailov et al. 2023 ("Direct Preference Optimization", eq. 7): for a prompt x and a pair of
responses y_c (chosen) and y_r (rejected), with log pi(y | x) = sum_t log pi(a_t | s_t):

    delta_policy    = log pi_theta(y_c | x) - log pi_theta(y_r | x)
    delta_reference = log pi_ref(y_c | x)   - log pi_ref(y_r | x)
    u               = beta (delta_policy - delta_reference)    the implicit reward margin
    L               = mean -log sigmoid(u) = mean softplus(-u)

When the policy is the reference, u = 0 and L = log 2 for every pair; dL/dlog pi(y_c) =
-beta sigmoid(-u) / N and dL/dlog pi(y_r) = +beta sigmoid(-u) / N.

Hand-computed example (tests/rlhf/test_rlhf_methods.py): beta = 0.5, N = 2; pair 1 policy = reference
(u = 0: loss log 2, sigmoid(-u) = 1/2); pair 2 delta_policy = 2 log 3 + 1, delta_reference = 1
(u = log 3: loss log(1 + 1/3) = log 4/3, sigmoid(-u) = 1/4).
    L = (log 2 + log 4/3) / 2,  dL/dlogp_c = -0.5 [1/2, 1/4] / 2 = [-1/8, -1/16],  dL/dlogp_r = [1/8, 1/16].

The pairs (DPOTrainer): each step samples batch_size / k prompts x k completions (k = group_size),
labels them with the reward (the scorer, or the reward model if one is given), pairs the best- with
the worst-scored completion of each prompt (`best_worst_pairs`; k = 2 is the reward model's
pairing, pairs.pairs_from_responses), drops near-ties (min_margin), and runs `epochs` passes
of minibatches over those pairs. A larger k buys clearer pairs (a wider score gap) per completion
generated, at batch_size / k pairs per step.
Judged pairs (`preferences`, a preferences.Judged from the compare page's judgments): each step's
pairs are the next batch_size / k of them instead (reshuffled after each pass); the completions the
step samples then only report the policy's score.
Offline DPO (online=False): completions from the frozen reference, the reward model's data drawn
fresh each step. Online / iterated DPO (online=True, the default: DPOConfig's comments say why;
Guo et al. 2024 "Direct Language Model Alignment from Online AI Feedback"): completions from the
current policy.

Dimension legend: N pairs, P prompt tokens, R response tokens, V vocabulary.
Follows: Rafailov et al. 2023; TRL's DPOTrainer (sigmoid loss, implicit rewards, reward accuracy).
Deliberately does not: implement IPO / hinge / label-smoothing variants, or reuse pairs across steps.
"""
import time

import numpy as np

from tinygrad_gpt.backend import array_module
from tinygrad_gpt.rlhf.advantage import FixedKLController, kl_per_token
from tinygrad_gpt.rlhf.losses import check_same_shape
from tinygrad_gpt.rlhf.policy import response_logprobs
from tinygrad_gpt.rlhf.pairs import best_worst_pairs
from tinygrad_gpt.rlhf.rollout import sample_responses
from tinygrad_gpt.rlhf.trainer import RLHFTrainer
from tinygrad_gpt.tensor import Function, unwrap


class DPOLoss(Function):
    """L = mean softplus(-beta ((pc - pr) - (rc - rr))): inputs the policy's sequence log-probs (N,)."""

    @staticmethod
    def forward(ctx, policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta):
        xp = array_module(policy_chosen)
        check_same_shape("dpo_loss", policy_chosen, policy_rejected=policy_rejected, ref_chosen=ref_chosen,
                    ref_rejected=ref_rejected)
        if policy_chosen.ndim != 1 or policy_chosen.size == 0:
            raise ValueError(f"dpo_loss: expected (N,) sequence log-probs with N >= 1, got {policy_chosen.shape}")
        dt = policy_chosen.dtype.type
        delta_policy = policy_chosen - policy_rejected                    # F1 (N,)
        delta_ref = ref_chosen - ref_rejected                             # F2 (N,) constant
        u = dt(beta) * (delta_policy - delta_ref)                         # F3 (N,) implicit reward margin
        losses = xp.logaddexp(dt(0), -u)                                  # F4 (N,) softplus(-u), stable
        ctx.u, ctx.beta, ctx.n = u, dt(beta), dt(u.size)
        return xp.asarray(losses.mean(), dtype=policy_chosen.dtype)       # F5 ()

    @staticmethod
    def backward(ctx, dout):
        xp = array_module(dout)
        # F5: dlosses = dout / N;  F4: dsoftplus(-u)/du = -sigmoid(-u) = -1 / (1 + exp(u))
        du = -dout / ctx.n / (1 + xp.exp(ctx.u))                          # (N,)
        # F3: du/ddelta_policy = beta;  F1: dpc = ddelta, dpr = -ddelta
        ddelta = (ctx.beta * du).astype(dout.dtype, copy=False)           # (N,)
        return ddelta, -ddelta


def dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=0.1):
    """DPO's loss (a scalar Tensor): policy sequence log-probs (N,) Tensors, reference ones arrays."""
    pc = unwrap(policy_chosen)
    xp = array_module(pc)
    return DPOLoss.apply(policy_chosen, policy_rejected, ref_chosen=xp.asarray(unwrap(ref_chosen), dtype=pc.dtype),
                         ref_rejected=xp.asarray(unwrap(ref_rejected), dtype=pc.dtype), beta=float(beta))


class DPOTrainer(RLHFTrainer):
    """DPO on `policy` (PolicyWithValue; its value head is not used) against `reference`; see RLHFTrainer."""

    algo = "dpo"
    loss_stats = ("reward_margin", "reward_acc")

    def __init__(self, policy, reference, tokenizer, prompt_tokens, scorer, config, reward_model=None, log=print,
                 preferences=None):
        super().__init__(policy, reference, tokenizer, prompt_tokens, scorer, config, reward_model, log,
                         group_size=config.group_size)
        self.kl_ctl = FixedKLController(config.beta)   # DPO's beta, reported as "beta" like the others'
        # judged pairs (preferences.Judged) to train on in place of sampled ones: batch_size / group_size a
        # step, in a shuffled order that starts again when it runs out
        self.judged = preferences.sequence_pairs() if preferences is not None else None
        self.judged_order, self.judged_at = np.zeros(0, dtype=np.int64), 0

    def next_judged(self, n):
        """The next n judged pairs (PreferencePairs of sequences), reshuffled after each pass."""
        picked = []
        while len(picked) < min(n, len(self.judged)):
            if self.judged_at >= len(self.judged_order):
                self.judged_order, self.judged_at = self.rng.permutation(len(self.judged)), 0
            picked.append(self.judged_order[self.judged_at])
            self.judged_at += 1
        return self.judged.take(np.asarray(picked, dtype=np.int64))

    def sequence_logprobs(self, model, seq, R):
        """No-graph (log pi(y) (N,), full log-softmax (N, R, V)) of responses (the last R tokens of seq)."""
        c = self.cfg
        parts = [response_logprobs(model, self.xp.asarray(seq[lo:lo + c.minibatch_size]), self.windows,
                                   c.temperature)[0] for lo in range(0, len(seq), c.minibatch_size)]
        logp = np.concatenate(parts)                                      # (N, R, V)
        picked = np.take_along_axis(logp, seq[:, -R:, None], -1)[..., 0]  # (N, R)
        return picked.sum(axis=1), picked, logp                           # (N,), (N, R), (N, R, V)

    def step(self):
        """Sample, label and filter this step's pairs, then `epochs` passes of DPO; returns the metrics."""
        c = self.cfg
        t0 = time.perf_counter()
        prompts = self.next_prompts()                                     # (kn, P) each prompt k times
        generator = self.policy.gpt if c.online else self.reference
        responses = sample_responses(generator, prompts, c.response_len, c.temperature, self.rng,
                                     c.window_stride)                     # (kn, R)
        t_rollout = time.perf_counter() - t0
        texts = [self.decode(r.tolist()) for r in responses]
        gold, raw = self.rewards_of(texts, responses)                     # (kn,), (kn,)
        seqs = np.concatenate([prompts, responses], axis=1)               # (kn, P + R)
        # rows ki .. ki + k - 1 share a prompt; the pair's sequences carry it (identical in both)
        pairs = best_worst_pairs(seqs, raw, c.group_size, c.min_margin)   # <= n pairs
        if self.judged is not None:  # a person's pairs instead; the samples above only report the score
            pairs = self.next_judged(len(prompts) // c.group_size)
        N, R = len(pairs), c.response_len
        both = np.concatenate([pairs.chosen, pairs.rejected])             # (2N, P + R) chosen, then rejected
        ref_seq, old_tok, kl = np.zeros(0), np.zeros((0, R)), float("nan")
        if N:
            ref_seq, _, logq = self.sequence_logprobs(self.reference, both, R)  # (2N,), (2N, R, V)
            _, old_tok, logp = self.sequence_logprobs(self.policy, both, R)  # (2N, R), (2N, R, V)
            kl = float(kl_per_token(logp, logq).mean())                   # exact KL to the reference per token
        updates = self.update(both, old_tok, N, c.epochs, ref_seq=ref_seq)
        metrics = {**self.rollout_metrics(gold, raw, c.beta),
                   "score_of": "policy" if c.online else "reference",  # whose completions "score" is
                   "pairs": N, "kl": kl, **updates.metrics()}
        return self.finish_metrics(metrics, t0, t_rollout, len(responses))

    def minibatch_rows(self, mb, items):
        """A minibatch of M pairs is 2M rows: the chosen sequences, then the rejected ones."""
        return np.concatenate([mb, mb + items])                           # (2M,)

    def loss(self, mb, logits, values, logp, mask, ref_seq):
        """DPO's loss (DPOLoss, the module docstring) on the M pairs of the minibatch, whose 2M rows are
        the chosen then the rejected responses; ref_seq (2N,) the reference's log q(y) of every row:

            log pi(y) = sum_t logp_t
            u         = beta ((log pi(y_c) - log pi(y_r)) - (log q(y_c) - log q(y_r)))
            L         = mean softplus(-u)

        also reports the mean implicit reward margin u and the fraction of pairs with u > 0."""
        c = self.cfg
        M, N = len(mb), len(ref_seq) // 2
        seq_lp = logp.sum(axis=1)                                         # (2M,) log pi(y)
        loss = dpo_loss(seq_lp[:M], seq_lp[M:], ref_seq[mb], ref_seq[mb + N], c.beta)
        lp = seq_lp.numpy()                                               # (2M,)
        u = c.beta * ((lp[:M] - lp[M:]) - (ref_seq[mb] - ref_seq[mb + N]))  # (M,)
        return loss, {"reward_margin": float(u.mean()), "reward_acc": float((u > 0).mean())}
