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

from tinygrad_gpt.rlhf.advantage import gae, shaped_rewards
from tinygrad_gpt.rlhf.diagnostics import explained_variance, ratio_stats
from tinygrad_gpt.rlhf.losses import entropy, kl_to_reference, policy_loss, value_loss, whiten
from tinygrad_gpt.rlhf.policy import score_windows, token_logprobs
from tinygrad_gpt.rlhf.trainer import SampledTrainer


class PPOTrainer(SampledTrainer):
    """PPO on `policy` (PolicyWithValue) against `reference` (a frozen GPT).

    scorer: texts -> gold scores (N,) (e.g. VaderScorer); reward_model: optional RewardModel whose
    score of the response tokens is optimised instead (the scorer is then only reported).
    prompt_tokens: the token array prompts are cut from (the validation split). log: print-like.
    """

    algo = "ppo"

    def __init__(self, policy, reference, tokenizer, prompt_tokens, scorer, config, reward_model=None, log=print):
        super().__init__(policy, reference, tokenizer, prompt_tokens, scorer, config, reward_model, log)
        policy.value_trunk_grad = config.value_trunk_grad
        self.kl_ctl = self.kl_controller(config)
        # optional observer of the clipped objective's inputs: called for every minibatch as
        # on_ratios(step, epoch, ratio (M, R), advantages (M, R)) with the float64 arrays L_CLIP sees
        # (step counts from 1); tinygrad_gpt/plot.py draws one step's ratios. None: nothing kept
        self.on_ratios = None

    def make_rollout(self, prompts, model=None, kl_estimator=None):
        return super().make_rollout(prompts, model, kl_estimator or self.cfg.kl_estimator)

    # ---- one PPO step -------------------------------------------------------------------------
    def step(self):
        """One rollout batch and its PPO epochs; returns the step's metrics (a dict of floats)."""
        c, xp = self.cfg, self.xp
        t0 = time.perf_counter()
        roll, gold, raw, scores, t_rollout = self.scored_rollout(next(self.prompts))  # scores (B,) s_b
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
                 "approx_kl_k1": [], "ratio_mean": [], "ratio_std": [], "kl_loss": []}
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
                if self.on_ratios is not None:
                    self.on_ratios(self.step_count + 1, epoch, ratio, advantages[mb])
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
                self.optimizer_step(loss)
                updates += 1
                rs = ratio_stats(ratio, c.clip_eps)                       # ratio, clip fraction, k1 / k3 KL
                approx_kl = rs["approx_kl"]                               # k3 estimate of KL(pi_old || pi_theta)
                stats["policy_loss"].append(pg.item())
                stats["value_loss"].append(vf.item())
                stats["entropy"].append(ent.item())
                for key, value in rs.items():
                    stats[key].append(value)
                if c.target_kl is not None and approx_kl > c.target_kl:
                    early_stop = True
                    break
            if early_stop:
                self.log(f"step {self.step_count + 1}: early stop in epoch {epoch + 1}, old->new KL "
                         f"{stats['approx_kl'][-1]:.4f} > target_kl {c.target_kl}")
                break

        mean_seq_kl = float(roll.kl.sum(axis=1).mean())                   # mean_b sum_t KL_bt (the estimator's)
        self.kl_ctl.update(mean_seq_kl, B)
        mean = (lambda k: float(np.mean(stats[k])) if stats[k] else float("nan"))
        metrics = {
            "score": float(gold.mean()),                                   # gold (VADER) mean of the rollout
            "score_pos_frac": float((gold > 0.05).mean()),
            "reward_raw": float(raw.mean()),                               # what PPO optimised (= score w/o RM)
            "reward_norm": float(scores.mean()),
            "kl": float(roll.kl_exact.mean()),                             # exact KL per token to the reference
            "kl_sampled": float((roll.logprobs - roll.ref_logprobs).mean()),  # its sampled estimate per token
            "kl_seq": mean_seq_kl,
            "beta": beta,
            "clipfrac": mean("clipfrac"),
            "value_loss": mean("value_loss"),
            "explained_var": explained_variance(roll.values, returns),    # of V_old for the returns
            "policy_loss": mean("policy_loss"),
            "entropy": mean("entropy"),
            "approx_kl": mean("approx_kl"),
            "approx_kl_k1": mean("approx_kl_k1"),
            "kl_loss": mean("kl_loss"),
            "ratio_mean": mean("ratio_mean"),
            "ratio_std": mean("ratio_std"),
            "first_ratio_dev": first_ratio_dev,
            "adv_mean": float(advantages.mean()),
            "adv_std": float(advantages.std()),
            "updates": updates,
            "skipped": skipped,
            "early_stop": early_stop,
        }
        return self.finish_metrics(metrics, t0, t_rollout, B)

    def save(self, directory, extra_meta=None):
        """As SampledTrainer.save (meta.kind "rlhf-ppo"), with the PPO keys earlier checkpoints carried
        (ppo_config, ppo_steps); the value head beside it (`checkpoint.load_tensors(directory, "value_head")`)."""
        from dataclasses import asdict
        meta = {"ppo_config": asdict(self.cfg), "ppo_steps": self.step_count}
        meta.update(extra_meta or {})
        return super().save(directory, meta)

    def extra_tensors(self):
        return {"value_head": {"weight": self.policy.v_head.weight.numpy(), "bias": self.policy.v_head.bias.numpy()}}
