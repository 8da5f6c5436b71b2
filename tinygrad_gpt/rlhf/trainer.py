"""What every RLHF trainer shares: prompts, rollouts, scores and their normaliser, the optimiser, saving.

`SampledTrainer` holds a policy (PolicyWithValue: PPO uses its value head, the other methods leave
it at zero), the frozen reference, the scorer (gold) and an optional reward model (proxy), and
gives the subclasses (ppo.PPOTrainer, grpo.GRPOTrainer, rloo.RLOOTrainer, dpo.DPOTrainer):

    next_prompts()    (B / group_size, P) prompts, each repeated group_size times -> (B, P)
    make_rollout()    sampled responses with log-probs, reference log-probs and KL (rollout.py)
    scored_rollout()  a rollout with its gold scores, raw rewards and normalised scores
    raw_rewards()     (gold scores, the reward optimised before normalising)
    fit_normalizer()  the reward's mean and std on reference samples (scores then mean 0, std 1)
    finish_metrics()  the common step metrics, health warnings logged (diagnostics.py)
    save()            the tuned GPT as a checkpoint train.load_model reads (meta.kind "rlhf-<algo>")

Each subclass's `step()` returns the step's metrics dict (one line of metrics.jsonl).
Follows: TRL's trainers (one base, a loss per method). Deliberately does not: run several methods in
one trainer, or keep optimiser state across separate runs.
"""
import time
from dataclasses import asdict

import numpy as np

from tinygrad_gpt import backend, checkpoint
from tinygrad_gpt.backend import get_xp
from tinygrad_gpt.optim import AdamW, clip_grad_norm, decay_groups
from tinygrad_gpt.rlhf.advantage import AdaptiveKLController, FixedKLController
from tinygrad_gpt.rlhf.diagnostics import check_health
from tinygrad_gpt.rlhf.policy import response_windows
from tinygrad_gpt.rlhf.rollout import prompt_batches, rollout, sample_responses, score_rollout
from tinygrad_gpt.rlhf.scorers import ScoreNormalizer, shaped_score


class SampledTrainer:
    """The shared part of the RLHF trainers; see the module docstring. `algo` names the method."""

    algo = None

    def __init__(self, policy, reference, tokenizer, prompt_tokens, scorer, config, reward_model=None, log=print,
                 group_size=1):
        backend.tune_host_allocator()  # process-wide malloc thresholds: see its docstring
        self.policy, self.reference, self.tokenizer = policy, reference, tokenizer
        self.scorer, self.reward_model, self.cfg, self.log = scorer, reward_model, config, log
        self.group_size = group_size
        self.rng = np.random.default_rng(config.seed)
        self.prompts = prompt_batches(prompt_tokens, config.batch_size // group_size, config.prompt_len, self.rng)
        self.opt = AdamW(decay_groups(policy.named_parameters(), config.weight_decay), lr=config.lr,
                         betas=config.adam_betas, weight_decay=config.weight_decay)
        self.kl_ctl = None  # set by the methods whose beta a KL controller moves
        self.normalizer = None  # fitted on reference rollouts by fit_normalizer (or on the first step)
        self.windows = response_windows(config.prompt_len, config.response_len, policy.config.block_size,
                                        config.window_stride)
        self.step_count = 0
        self.completions = 0  # completions generated so far (the normaliser's reference samples excluded)
        self.xp = get_xp(policy.gpt.device)

    @staticmethod
    def kl_controller(cfg):
        """beta's controller from a config's init_kl_coef, adaptive_kl, kl_target and kl_horizon."""
        if cfg.adaptive_kl:
            return AdaptiveKLController(cfg.init_kl_coef, cfg.kl_target, cfg.kl_horizon)
        return FixedKLController(cfg.init_kl_coef)

    def optimizer_step(self, loss):
        """One update of every method: gradients of `loss`, clipped to cfg.max_grad_norm (0: no clip), AdamW."""
        self.policy.zero_grad()
        loss.backward()
        if self.cfg.max_grad_norm:
            clip_grad_norm(self.policy.parameters(), self.cfg.max_grad_norm)
        self.opt.step()

    # ---- prompts, rollouts, scores --------------------------------------------------------------
    def decode(self, ids):
        return self.tokenizer.decode(ids)

    def next_prompts(self):
        """(B, P) prompts: B / group_size drawn, each repeated group_size times (groups are consecutive rows)."""
        prompts = next(self.prompts)                                      # (B / G, P)
        return np.repeat(prompts, self.group_size, axis=0) if self.group_size > 1 else prompts  # (B, P)

    def raw_rewards(self, roll):
        """(gold scores, the rewards optimised before normalising), each (B,)."""
        return self.rewards_of(roll.texts, roll.responses)

    def rewards_of(self, texts, responses):
        gold = self.scorer(texts)                                         # (B,)
        if self.reward_model is None:
            c = self.cfg
            return gold, shaped_score(gold, c.score_power, c.positive_bonus, c.positive_threshold)  # (B,), (B,)
        return gold, self.reward_model.score(responses)                   # (B,), (B,)

    def make_rollout(self, prompts, model=None, kl_estimator="exact"):
        """A Rollout of `prompts` (B, P) sampled by the policy (or by `model`, a GPT, e.g. the reference)."""
        c = self.cfg
        if model is None:
            return rollout(self.policy, self.reference, prompts, c.response_len, c.temperature, self.rng,
                           self.decode, kl_estimator, c.window_stride, c.minibatch_size)
        responses = sample_responses(model, prompts, c.response_len, c.temperature, self.rng, c.window_stride)
        return score_rollout(self.policy, self.reference, prompts, responses, c.temperature, self.decode,
                             kl_estimator, c.window_stride, c.minibatch_size)

    def scored_rollout(self, prompts, kl_estimator=None):
        """One batch sampled and scored: (rollout, gold (B,), raw reward (B,), normalised score (B,), seconds).

        The normaliser is fitted on reference samples first, once (its time counts as rollout time).
        `kl_estimator` None keeps make_rollout's own default."""
        t0 = time.perf_counter()
        if self.normalizer is None:
            self.fit_normalizer()
        roll = self.make_rollout(prompts) if kl_estimator is None else self.make_rollout(prompts,
                                                                                           kl_estimator=kl_estimator)
        t_rollout = time.perf_counter() - t0
        gold, raw = self.raw_rewards(roll)                                # (B,), (B,)
        return roll, gold, raw, self.normalizer(raw), t_rollout          # scores: reference mean 0, std 1

    def fit_normalizer(self):
        """Measure the reward's mean and std on norm_batches batches of reference samples (bias and gain)."""
        c, raw = self.cfg, []
        for _ in range(c.norm_batches):
            prompts = self.next_prompts()                                 # (B, P)
            responses = sample_responses(self.reference, prompts, c.response_len, c.temperature, self.rng,
                                         c.window_stride)                 # (B, R)
            raw.append(self.rewards_of([self.decode(r.tolist()) for r in responses], responses)[1])
        self.normalizer = ScoreNormalizer().fit(np.concatenate(raw))
        self.log(f"reward normaliser from {sum(len(r) for r in raw)} reference samples: "
                 f"bias (mean) {self.normalizer.bias:+.4f}, gain (std) {self.normalizer.gain:.4f}")
        return self.normalizer

    # ---- metrics ------------------------------------------------------------------------------
    def finish_metrics(self, metrics, t0, t_rollout, generated):
        """Add the common fields to a step's metrics, log its health warnings, and return it."""
        self.step_count += 1
        self.completions += generated
        metrics = {"step": self.step_count, "algo": self.algo, **metrics,
                   "lr": self.opt.param_groups[0]["lr"], "completions": self.completions,
                   "rollout_s": round(t_rollout, 3), "step_s": round(time.perf_counter() - t0, 3)}
        warnings = check_health(metrics)
        for line in warnings:
            self.log(line)
        metrics["warnings"] = warnings
        return metrics

    # ---- saving -------------------------------------------------------------------------------
    def extra_tensors(self):
        """{role: {name: array}} saved beside the model (checkpoint.load_tensors); none by default."""
        return None

    def save(self, directory, extra_meta=None):
        """The tuned GPT as a checkpoint `train.load_model` reads, meta.kind "rlhf-<algo>" (so --resume
        refuses it); a method's own weights (PPO's value head) beside it as tensors. No optimizer
        state: an RLHF run is not resumed."""
        meta = {"kind": f"rlhf-{self.algo}", "model_config": asdict(self.policy.config),
                "tokenizer": self.tokenizer.to_dict(), "rlhf_algo": self.algo, "rlhf_config": asdict(self.cfg),
                "rlhf_steps": self.step_count, "completions": self.completions,
                "kl_coef": None if self.kl_ctl is None else self.kl_ctl.value,
                "normalizer": None if self.normalizer is None else asdict(self.normalizer)}
        meta.update(extra_meta or {})
        return checkpoint.save_checkpoint(directory, self.policy.gpt.state_dict(), meta,
                                          tensors=self.extra_tensors())
