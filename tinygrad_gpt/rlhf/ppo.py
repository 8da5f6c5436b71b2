"""PPOTrainer: rollout -> score -> per-token rewards -> GAE -> clipped PPO epochs, one step at a time.

One `step()` (Ziegler et al. 2019, Algorithm 1; Schulman et al. 2017, Algorithm 1):

    1. prompts (B, P) from the validation split; responses (B, R) sampled by pi_old  (rollout.py)
    2. s_b  = normaliser(score(response_b))              the scorer (scorers.shaped_score: sign(s) |s|^p
                                                         + bonus [s > threshold]), or the learned reward model
    3. r_bt = -beta KL_bt + [t = R - 1] s_b               advantage.shaped_rewards
    4. A, R = GAE(r, V_old; gamma, lambda);  A <- whiten(A)
    5. for ppo_epochs: shuffle the B sequences into minibatches; for each:
         logits, V = policy(windows of the minibatch)               (graph recorded)
         logp_t = log softmax(logits / tau)[a_t]
         loss   = L_CLIP(logp, logp_old, A) + vf_coef L_VF(V, V_old, R) - ent_coef H(logits)
                  + kl_loss_coef L_KL(logits, log pi_ref)
         skip the minibatch if mean(r_t) > ratio_threshold (logged), else backward, clip, AdamW step;
         stop all epochs early once the old->new KL estimate mean((r - 1) - log r) > target_kl
    6. beta <- KL controller(mean_b sum_t KL_bt)

If a reward model is given, PPO optimises its score (the proxy) while the scorer (VADER, the gold)
is still computed and reported, so over-optimisation of the proxy shows in the metrics.

Dimension legend: B batch, P prompt, R response, V vocabulary, M minibatch.
Follows: Ziegler et al. 2019 lm-human-preferences, TRL PPOTrainer, OpenAI baselines ppo2.
Deliberately does not: distribute rollouts, run the reference on a separate device, or keep the
optimizer state across separate runs (a saved policy starts a fresh AdamW).
"""
import time

import numpy as np

from tinygrad_gpt import backend, checkpoint
from tinygrad_gpt.backend import get_xp
from tinygrad_gpt.optim import AdamW, clip_grad_norm, decay_groups
from tinygrad_gpt.rlhf.advantage import AdaptiveKLController, FixedKLController, gae, shaped_rewards
from tinygrad_gpt.rlhf.losses import entropy, kl_to_reference, policy_loss, value_loss, whiten
from tinygrad_gpt.rlhf.policy import response_windows, score_windows, token_logprobs
from tinygrad_gpt.rlhf.rollout import prompt_batches, rollout
from tinygrad_gpt.rlhf.scorers import ScoreNormalizer, shaped_score


class PPOTrainer:
    """PPO on `policy` (PolicyWithValue) against `reference` (a frozen GPT).

    scorer: texts -> gold scores (N,) (e.g. VaderScorer); reward_model: optional RewardModel whose
    score of the response tokens is optimised instead (the scorer is then only reported).
    prompt_tokens: the token array prompts are cut from (the validation split). log: print-like.
    """

    def __init__(self, policy, reference, tokenizer, prompt_tokens, scorer, config, reward_model=None, log=print):
        backend.tune_host_allocator()  # process-wide malloc thresholds: see its docstring
        self.policy, self.reference, self.tokenizer = policy, reference, tokenizer
        self.scorer, self.reward_model, self.cfg, self.log = scorer, reward_model, config, log
        policy.value_trunk_grad = config.value_trunk_grad
        self.rng = np.random.default_rng(config.seed)
        self.prompts = prompt_batches(prompt_tokens, config.batch_size, config.prompt_len, self.rng)
        self.opt = AdamW(decay_groups(policy.named_parameters(), config.weight_decay), lr=config.lr,
                         betas=config.adam_betas, weight_decay=config.weight_decay)
        self.kl_ctl = (AdaptiveKLController(config.init_kl_coef, config.kl_target, config.kl_horizon)
                       if config.adaptive_kl else FixedKLController(config.init_kl_coef))
        self.normalizer = None  # fitted on reference rollouts by fit_normalizer (or on the first step)
        self.windows = response_windows(config.prompt_len, config.response_len, policy.config.block_size,
                                        config.window_stride)
        self.step_count = 0
        self.xp = get_xp(policy.gpt.device)

    # ---- scores -------------------------------------------------------------------------------
    def decode(self, ids):
        return self.tokenizer.decode(ids)

    def raw_rewards(self, roll):
        """(gold scores, the rewards PPO optimises before normalising), each (B,)."""
        gold = self.scorer(roll.texts)                                   # (B,)
        if self.reward_model is None:
            c = self.cfg
            return gold, shaped_score(gold, c.score_power, c.positive_bonus, c.positive_threshold)  # (B,), (B,)
        return gold, self.reward_model.score(roll.responses)             # (B,), (B,)

    def make_rollout(self, prompts, model=None):
        """A Rollout of `prompts` (B, P) sampled by the policy (or by `model`, a GPT, e.g. the reference)."""
        c = self.cfg
        if model is None:
            return rollout(self.policy, self.reference, prompts, c.response_len, c.temperature, self.rng,
                           self.decode, c.kl_estimator, c.window_stride, c.minibatch_size)
        from tinygrad_gpt.rlhf.rollout import sample_responses, score_rollout
        responses = sample_responses(model, prompts, c.response_len, c.temperature, self.rng, c.window_stride)
        return score_rollout(self.policy, self.reference, prompts, responses, c.temperature, self.decode,
                             c.kl_estimator, c.window_stride, c.minibatch_size)

    def fit_normalizer(self):
        """Measure the reward's mean and std on norm_batches rollouts of the reference (gain and bias)."""
        raw = []
        for _ in range(self.cfg.norm_batches):
            roll = self.make_rollout(next(self.prompts), model=self.reference)
            raw.append(self.raw_rewards(roll)[1])
        self.normalizer = ScoreNormalizer().fit(np.concatenate(raw))
        self.log(f"reward normaliser from {sum(len(r) for r in raw)} reference samples: "
                 f"bias (mean) {self.normalizer.bias:+.4f}, gain (std) {self.normalizer.gain:.4f}")
        return self.normalizer

    # ---- one PPO step -------------------------------------------------------------------------
    def step(self):
        """One rollout batch and its PPO epochs; returns the step's metrics (a dict of floats)."""
        c, xp = self.cfg, self.xp
        t0 = time.perf_counter()
        if self.normalizer is None:
            self.fit_normalizer()
        roll = self.make_rollout(next(self.prompts))
        t_rollout = time.perf_counter() - t0
        gold, raw = self.raw_rewards(roll)                                # (B,), (B,)
        scores = self.normalizer(raw)                                     # (B,) s_b, reference: mean 0 std 1
        beta = self.kl_ctl.value
        rewards = shaped_rewards(scores, roll.kl.astype(np.float64), beta)  # (B, R) r_t = -beta KL_t (+ s_b)
        advantages, returns = gae(rewards, roll.values.astype(np.float64), c.gamma, c.lam)  # (B, R), (B, R)
        B, R = advantages.shape
        mask = np.ones((B, R), dtype=np.float64)                          # (B, R) fixed length: all tokens count
        if c.whiten_advantages:
            advantages = whiten(advantages, mask)                         # (B, R)
        seq = roll.sequences                                              # (B, P + R)
        if c.anneal_lr:                                                   # lr, ..., lr / steps (last step)
            self.opt.set_lr(c.lr * max(1 - self.step_count / c.steps, 1 / c.steps))

        stats = {"policy_loss": [], "value_loss": [], "entropy": [], "clipfrac": [], "approx_kl": [],
                 "ratio_mean": [], "kl_loss": []}
        skipped, early_stop, updates = 0, False, 0
        first_ratio_dev = None
        dtype = self.policy.gpt.wte.weight.dtype
        for epoch in range(c.ppo_epochs):
            # subtle: the rows are i.i.d. draws already, so the first epoch keeps their order; its
            # minibatches then have the very rows (and shapes) of the rollout's chunks, which makes
            # the first ratio exactly 1 (BLAS can round a row differently at another place in M)
            order = np.arange(B) if epoch == 0 else self.rng.permutation(B)  # (B,) shuffled after epoch 0
            for lo in range(0, B, c.minibatch_size):
                mb = order[lo:lo + c.minibatch_size]                      # (M,)
                mmask = xp.asarray(mask[mb], dtype=dtype)                 # (M, R)
                logits, values = score_windows(self.policy, xp.asarray(seq[mb]), self.windows, c.temperature)
                logp = token_logprobs(logits, xp.asarray(roll.responses[mb]))  # (M, R) log pi_theta(a_t | s_t)
                old = roll.logprobs[mb]                                   # (M, R)
                ratio = np.exp(logp.numpy().astype(np.float64) - old)    # (M, R) r_t, for the checks below
                if first_ratio_dev is None:
                    first_ratio_dev = float(np.abs(ratio - 1).max())      # 0 up to rounding: pi_theta = pi_old
                if ratio.mean() > c.ratio_threshold:
                    skipped += 1
                    self.log(f"step {self.step_count + 1}: skipping a minibatch, mean ratio {ratio.mean():.3g} > "
                             f"ratio_threshold {c.ratio_threshold}")
                    continue
                pg = policy_loss(logp, old, advantages[mb], mmask, c.clip_eps)
                vf = value_loss(values, roll.values[mb], returns[mb], mmask, c.clip_value)
                ent = entropy(logits, mmask)
                loss = pg + vf * c.vf_coef
                if c.ent_coef:
                    loss = loss - ent * c.ent_coef
                if c.kl_loss_coef:
                    kl_loss = kl_to_reference(logits, roll.ref_logq[mb], mmask)
                    loss = loss + kl_loss * c.kl_loss_coef
                    stats["kl_loss"].append(kl_loss.item())
                self.policy.zero_grad()
                loss.backward()
                if c.max_grad_norm:
                    clip_grad_norm(self.policy.parameters(), c.max_grad_norm)
                self.opt.step()
                updates += 1
                approx_kl = float(((ratio - 1) - np.log(ratio)).mean())  # k3 estimate of KL(pi_old || pi_theta)
                stats["policy_loss"].append(pg.item())
                stats["value_loss"].append(vf.item())
                stats["entropy"].append(ent.item())
                stats["clipfrac"].append(float((np.abs(ratio - 1) > c.clip_eps).mean()))
                stats["approx_kl"].append(approx_kl)
                stats["ratio_mean"].append(float(ratio.mean()))
                if c.target_kl is not None and approx_kl > c.target_kl:
                    early_stop = True
                    break
            if early_stop:
                self.log(f"step {self.step_count + 1}: early stop in epoch {epoch + 1}, old->new KL "
                         f"{stats['approx_kl'][-1]:.4f} > target_kl {c.target_kl}")
                break

        mean_seq_kl = float(roll.kl.sum(axis=1).mean())                   # mean_b sum_t KL_bt (the estimator's)
        self.kl_ctl.update(mean_seq_kl, B)
        self.step_count += 1
        mean = (lambda k: float(np.mean(stats[k])) if stats[k] else float("nan"))
        return {
            "step": self.step_count,
            "score": float(gold.mean()),                                   # gold (VADER) mean of the rollout
            "score_pos_frac": float((gold > 0.05).mean()),
            "reward_raw": float(raw.mean()),                               # what PPO optimised (= score w/o RM)
            "reward_norm": float(scores.mean()),
            "kl": float(roll.kl_exact.mean()),                             # exact KL per token to the reference
            "kl_seq": mean_seq_kl,
            "beta": beta,
            "lr": self.opt.param_groups[0]["lr"],
            "clipfrac": mean("clipfrac"),
            "value_loss": mean("value_loss"),
            "policy_loss": mean("policy_loss"),
            "entropy": mean("entropy"),
            "approx_kl": mean("approx_kl"),
            "kl_loss": mean("kl_loss"),
            "ratio_mean": mean("ratio_mean"),
            "first_ratio_dev": first_ratio_dev,
            "updates": updates,
            "skipped": skipped,
            "early_stop": early_stop,
            "rollout_s": round(t_rollout, 3),
            "step_s": round(time.perf_counter() - t0, 3),
        }

    # ---- saving -------------------------------------------------------------------------------
    def save(self, directory, extra_meta=None):
        """The tuned GPT as a checkpoint `train.load_model` reads; the value head beside it
        (`checkpoint.load_tensors(directory, "value_head")`). No optimizer state: a PPO run is not resumed."""
        from dataclasses import asdict
        meta = {"kind": "rlhf-ppo", "model_config": asdict(self.policy.config),
                "tokenizer": self.tokenizer.to_dict(), "ppo_config": asdict(self.cfg), "ppo_steps": self.step_count,
                "kl_coef": self.kl_ctl.value,
                "normalizer": None if self.normalizer is None else asdict(self.normalizer)}
        meta.update(extra_meta or {})
        value_head = {"weight": self.policy.v_head.weight.numpy(), "bias": self.policy.v_head.bias.numpy()}
        return checkpoint.save_checkpoint(directory, self.policy.gpt.state_dict(), meta,
                                          tensors={"value_head": value_head})
