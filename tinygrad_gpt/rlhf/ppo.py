"""PPOTrainer: rollout -> score -> per-token rewards -> GAE -> clipped PPO epochs, one step at a time.

One `step()` (Ziegler et al. 2019, Algorithm 1; Schulman et al. 2017, Algorithm 1):

    1. prompts (B, P) from the validation split; responses (B, R) sampled by pi_old  (rollout.py)
    2. s_b  = normaliser(score(response_b))              the scorer (scorers.shaped_score: sign(s) |s|^p
                                                         + bonus [s > threshold]), or the learned reward model
    3. r_bt = -beta KL_bt + [t = R - 1] s_b               advantage.shaped_rewards
    4. A, R = GAE(r, V_old; gamma, lambda);  A <- whiten(A)
    5. for ppo_epochs (RLHFTrainer.update, the loop every method shares; PPO gives it loss(),
       skip_minibatch() and stop_early()): shuffle the B sequences into minibatches; for each:
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
from tinygrad_gpt.rlhf.diagnostics import explained_variance
from tinygrad_gpt.rlhf.losses import entropy, kl_to_reference, policy_loss, value_loss, whiten
from tinygrad_gpt.rlhf.trainer import RLHFTrainer


class PPOTrainer(RLHFTrainer):
    """PPO on `policy` (PolicyWithValue) against `reference` (a frozen GPT).

    scorer: texts -> gold scores (N,) (e.g. VaderScorer); reward_model: optional RewardModel whose
    score of the response tokens is optimised instead (the scorer is then only reported).
    prompt_tokens: the token array prompts are cut from (the validation split). log: print-like.
    """

    algo = "ppo"
    loss_stats = ("policy_loss", "value_loss", "kl_loss")

    def __init__(self, policy, reference, tokenizer, prompt_tokens, scorer, config, reward_model=None, log=print):
        super().__init__(policy, reference, tokenizer, prompt_tokens, scorer, config, reward_model, log,
                         clip_eps=config.clip_eps)
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
        """One rollout batch and its PPO epochs (steps 1-6 of the module docstring); returns its metrics."""
        c = self.cfg
        t0 = time.perf_counter()
        roll, gold, raw, scores, t_rollout = self.scored_rollout(next(self.prompts))  # scores (B,) s_b
        beta = self.kl_ctl.value
        rewards = shaped_rewards(scores, roll.kl.astype(np.float64), beta)  # (B, R) r_t = -beta KL_t (+ s_b)
        advantages, returns = gae(rewards, roll.values.astype(np.float64), c.gamma, c.lam)  # (B, R), (B, R)
        B, R = advantages.shape
        if c.whiten_advantages:
            advantages = whiten(advantages, np.ones((B, R), dtype=np.float64))  # (B, R) every token counts
        if c.anneal_lr:                                                   # lr, ..., lr / steps (last step)
            self.opt.set_lr(c.lr * max(1 - self.step_count / c.steps, 1 / c.steps))
        updates = self.update(roll.sequences, roll.logprobs, B, c.ppo_epochs, roll=roll, advantages=advantages,
                              returns=returns)
        mean_seq_kl = float(roll.kl.sum(axis=1).mean())                   # mean_b sum_t KL_bt (the estimator's)
        self.kl_ctl.update(mean_seq_kl, B)
        metrics = {**self.rollout_metrics(gold, raw, beta, roll, scores, mean_seq_kl), **updates.metrics(),
                   "explained_var": explained_variance(roll.values, returns),  # of V_old for the returns
                   "adv_mean": float(advantages.mean()), "adv_std": float(advantages.std())}
        return self.finish_metrics(metrics, t0, t_rollout, B)

    def loss(self, mb, logits, values, logp, mask, roll, advantages, returns):
        """PPO's objective on the minibatch (losses.py, Schulman et al. 2017 eq. 7 and ppo2's value clip):

            r_t    = exp(logp_t - logp_old_t)
            L_CLIP = mean_m( max(-A_t r_t, -A_t clip(r_t, 1 - eps, 1 + eps)) )     eps = clip_eps
            L_VF   = 1/2 mean_m( max((V_t - R_t)^2, (V_old_t + clip(V_t - V_old_t, -c, c) - R_t)^2) )
            H      = mean_m( -sum_v p_t(v) log p_t(v) )
            L_KL   = mean_m( sum_v p_t(v) (log p_t(v) - log q_t(v)) )      exact KL to the reference q
            loss   = L_CLIP + vf_coef L_VF - ent_coef H + kl_loss_coef L_KL

        with A, R the whitened GAE advantages and the returns (B, R) of the step, V_old its values."""
        c = self.cfg
        pg = policy_loss(logp, roll.logprobs[mb], advantages[mb], mask, c.clip_eps)
        vf = value_loss(values, roll.values[mb], returns[mb], mask, c.clip_value)
        stats = {"policy_loss": pg.item(), "value_loss": vf.item()}
        loss = pg + vf * c.vf_coef
        if c.ent_coef:
            loss = loss - entropy(logits, mask) * c.ent_coef
        if c.kl_loss_coef:
            kl_loss = kl_to_reference(logits, roll.ref_logq[mb], mask)
            loss = loss + kl_loss * c.kl_loss_coef
            stats["kl_loss"] = kl_loss.item()
        return loss, stats

    def skip_minibatch(self, epoch, mb, ratio, advantages, **data):
        """Hands the ratios to on_ratios; skips (and logs) a minibatch whose mean ratio exceeds ratio_threshold."""
        if self.on_ratios is not None:
            self.on_ratios(self.step_count + 1, epoch, ratio, advantages[mb])
        if ratio.mean() > self.cfg.ratio_threshold:
            self.log(f"step {self.step_count + 1}: skipping a minibatch, mean ratio {ratio.mean():.3g} > "
                     f"ratio_threshold {self.cfg.ratio_threshold}")
            return True
        return False

    def stop_early(self, epoch, ratio_stats):
        """Ends the epochs (and logs it) once the old->new KL (k3) of an update passes target_kl."""
        c = self.cfg
        if c.target_kl is None or not ratio_stats["approx_kl"] > c.target_kl:
            return False
        self.log(f"step {self.step_count + 1}: early stop in epoch {epoch + 1}, old->new KL "
                 f"{ratio_stats['approx_kl']:.4f} > target_kl {c.target_kl}")
        return True

    def save(self, directory, extra_meta=None):
        """As RLHFTrainer.save (meta.kind "rlhf-ppo"), with the PPO keys earlier checkpoints carried
        (ppo_config, ppo_steps); the value head beside it (`checkpoint.load_tensors(directory, "value_head")`)."""
        from dataclasses import asdict
        meta = {"ppo_config": asdict(self.cfg), "ppo_steps": self.step_count}
        meta.update(extra_meta or {})
        return super().save(directory, meta)

    def extra_tensors(self):
        return {"value_head": {"weight": self.policy.v_head.weight.numpy(), "bias": self.policy.v_head.bias.numpy()}}
