"""What every RLHF trainer shares: prompts, rollouts, scores, the update loop, the optimiser, saving.

`RLHFTrainer` holds a policy (PolicyWithValue: PPO uses its value head, the other methods leave
it at zero), the frozen reference, the scorer (gold) and an optional reward model (proxy), and
gives the methods (ppo.PPOTrainer, grpo.GRPOTrainer, rloo.RLOOTrainer, dpo.DPOTrainer):

    next_prompts()     (B / group_size, P) prompts, each repeated group_size times -> (B, P)
    make_rollout()     sampled responses with log-probs, reference log-probs and KL (rollout.py)
    scored_rollout()   a rollout with its gold scores, raw rewards and normalised scores
    raw_rewards()      (gold scores, the reward optimised before normalising)
    fit_normalizer()   the reward's mean and std on reference samples (scores then mean 0, std 1)
    update()           the update loop: epochs of minibatches -> log-probs -> ratio -> the method's
                       loss -> optimizer_step -> per-minibatch stats (an Updates)
    optimizer_step()   one update: the loss and the gradient checked finite, clipped, AdamW
    rollout_metrics()  the step's score (mean, fraction above cfg.positive_threshold), reward and KL
    finish_metrics()   the common step metrics, health warnings logged (diagnostics.py); keeps the step
    run()              the steps, stopped cleanly by SIGINT / SIGTERM, then save()
    save()             the tuned GPT as a checkpoint runs.load_model reads (meta.kind "rlhf-<algo>")

A method writes two things: `step()`, which makes the step's data (a rollout and its advantages,
or preference pairs), calls `update()` and returns the step's metrics dict (one line of
metrics.jsonl), and `loss()`, its objective on one minibatch, with its equations in its docstring.
The update loop, for `epochs` passes over the step's items (the first in rollout order, then
shuffled by self.rng), for each minibatch mb of cfg.minibatch_size items:

    logits, values = policy(windows of the sequences of mb)        (M, R, V), (M, R)  graph recorded
    logp_t  = log softmax(logits_t)[a_t]                           (M, R)  log pi_theta(a_t | s_t)
    r_t     = exp(logp_t - logp_old_t)                             (M, R)  float64, for the stats only
    skip the minibatch if skip_minibatch(epoch, mb, r) (PPO: a ratio far above 1)
    loss, stats = self.loss(mb, logits, values, logp, mask, **the step's data)
    optimizer_step(loss); keep loss, entropy, ratio_stats(r) and the loss's stats
    stop the epochs if stop_early(those ratio stats) (PPO: the old->new KL passed target_kl)

# subtle: the first epoch keeps the rollout's order, so its first minibatch has the very rows (and
# shapes) of the rollout's scoring chunks; that makes its first ratio exactly 1 (BLAS can round a
# row differently at another place in M), which `first_ratio_dev` reports and check_health checks.

Kept steps. A step is kept (`self.kept`, a copy of every policy parameter with the step count) only
when every value it made was finite: each update's loss and gradient norm before AdamW applies it,
and at its end every parameter and the policy's logits and values on a fixed probe batch (finite
but huge weights overflow there, not in the parameters). Otherwise the step raises
train.NonFiniteLoss naming the step and what went non-finite, and `restore_kept()` puts the
policy back to the last kept step: the rule of the training script (exit 3, the last good state
kept) for every method. The copy costs one policy's memory and one copy per step. `run()` does
the same for SIGINT and SIGTERM: the step in progress is abandoned at once (an RLHF step can take
minutes, longer than a scheduler's grace period), the policy goes back to the last kept step and
is saved.

Dimension legend: B items of a step, M minibatch, P prompt, R response tokens, V vocabulary.
Follows: TRL's trainers (one base, a loss per method). Deliberately does not: run several methods in
one trainer, keep optimiser state across separate runs, or run under MPI (one process; the
example refuses mpirun with several ranks).
"""
import math
import signal
import time
from dataclasses import asdict, dataclass

import numpy as np

from tinygrad_gpt import backend, checkpoint
from tinygrad_gpt.backend import get_xp
from tinygrad_gpt.model import context_windows
from tinygrad_gpt.optim import AdamW, clip_grad_norm, decay_groups
from tinygrad_gpt.rlhf.advantage import AdaptiveKLController, FixedKLController
from tinygrad_gpt.rlhf.diagnostics import check_health, mean_of, ratio_stats
from tinygrad_gpt.rlhf.losses import entropy
from tinygrad_gpt.rlhf.policy import score_windows, token_logprobs
from tinygrad_gpt.rlhf.rollout import prompt_batches, rollout, sample_responses, score_rollout
from tinygrad_gpt.rlhf.scorers import ScoreNormalizer, shaped_score
from tinygrad_gpt.tensor import no_grad
from tinygrad_gpt.train import NonFiniteLoss

RESULTS = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated"}  # run()'s result per signal
PROBE_ROWS, PROBE_LAST = 4, 16  # the probe batch: rows of tokens, and the positions whose logits are checked


@dataclass
class KeptStep:
    """The last step whose every value was finite: what a signal or a non-finite value goes back to."""
    step: int                 # steps kept so far (0: none, the policy is the starting one)
    completions: int
    kl_coef: float | None     # beta after that step (None before the first)
    params: list              # a copy of each policy parameter's array (the GPT's, then the value head's)
    metrics: dict | None      # that step's metrics (None before the first)


@dataclass
class Updates:
    """What one step's update loop did: a list per statistic (one value per minibatch update) and counts."""
    stats: dict                        # name -> [value per update]: loss, entropy, ratio_stats' keys, the loss's
    first_ratio_dev: float | None = None  # max |r - 1| on the first minibatch: 0 up to rounding (pi_theta = pi_old)
    updates: int = 0                   # optimizer updates made
    skipped: int = 0                   # minibatches skipped (skip_minibatch)
    early_stop: bool = False           # the epochs stopped early (stop_early)

    def metrics(self):
        """The step's update metrics: the mean of each statistic (nan when no update made one) and the counts."""
        out = {key: mean_of(self.stats, key) for key in self.stats}
        out.update(first_ratio_dev=self.first_ratio_dev, updates=self.updates, skipped=self.skipped,
                   early_stop=self.early_stop)
        return out


class _Abandon(BaseException):
    """Raised by run()'s signal handler: the step in progress is dropped. A BaseException, so that
    no `except Exception` on the way swallows it."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


class RLHFTrainer:
    """The shared part of the RLHF trainers; see the module docstring. `algo` names the method;
    `loss_stats` names the statistics its loss() reports (each a metric, nan in a step without them)."""

    algo = None
    loss_stats = ()

    def __init__(self, policy, reference, tokenizer, prompt_tokens, scorer, config, reward_model=None, log=print,
                 group_size=1, clip_eps=None):
        backend.tune_host_allocator()  # process-wide malloc thresholds: see its docstring
        self.policy, self.reference, self.tokenizer = policy, reference, tokenizer
        self.scorer, self.reward_model, self.cfg, self.log = scorer, reward_model, config, log
        self.group_size = group_size
        self.clip_eps = clip_eps  # the clip range of the ratio the clip fraction is counted for (None: not counted)
        self.rng = np.random.default_rng(config.seed)
        self.prompts = prompt_batches(prompt_tokens, config.batch_size // group_size, config.prompt_len, self.rng)
        self.opt = AdamW(decay_groups(policy.named_parameters(), config.weight_decay), lr=config.lr,
                         betas=config.adam_betas, weight_decay=config.weight_decay)
        self.kl_ctl = None  # set by the methods whose beta a KL controller moves
        self.normalizer = None  # fitted on reference rollouts by fit_normalizer (or on the first step)
        self.windows = context_windows(config.prompt_len, config.response_len, policy.config.block_size,
                                        config.window_stride)
        self.step_count = 0
        self.completions = 0  # completions generated so far (the normaliser's reference samples excluded)
        self.xp = get_xp(policy.gpt.device)
        # the probe batch: PROBE_ROWS windows from the start of the prompt tokens (no draw from self.rng)
        n_tok = min(config.prompt_len + config.response_len, policy.config.block_size, len(prompt_tokens))
        rows = max(1, min(PROBE_ROWS, len(prompt_tokens) // max(n_tok, 1)))
        self.probe = np.asarray(prompt_tokens[:rows * n_tok], dtype=np.int64).reshape(rows, n_tok)  # (rows, n)
        self.updates = 0          # optimizer updates in the step in progress
        self.kept = self.keep(None)
        self._stop = None         # the signal run() was asked to stop by
        self._holding = False     # True while run() holds signals back (on_step, save)

    @staticmethod
    def kl_controller(cfg):
        """beta's controller from a config's init_kl_coef, adaptive_kl, kl_target and kl_horizon."""
        if cfg.adaptive_kl:
            return AdaptiveKLController(cfg.init_kl_coef, cfg.kl_target, cfg.kl_horizon)
        return FixedKLController(cfg.init_kl_coef)

    # ---- the update loop ----------------------------------------------------------------------
    def update(self, sequences, old_logprobs, items, epochs, **data):
        """`epochs` passes of minibatches over the step's `items`; returns an Updates (module docstring).

        sequences (N, P + R) token ids and old_logprobs (N, R), log pi_old of their last R tokens;
        minibatch_rows maps a minibatch of items to its rows (an item is a row, a DPO pair two).
        `data` (the step's advantages, returns, ...) is passed on to self.loss."""
        c, xp = self.cfg, self.xp
        R = old_logprobs.shape[1]
        dtype = self.policy.gpt.wte.weight.dtype
        ratio_keys = ("ratio_mean", "ratio_std", "approx_kl_k1", "approx_kl")  # ratio_stats' keys
        ratio_keys += ("clipfrac",) if self.clip_eps is not None else ()
        up = Updates({key: [] for key in ("loss", "entropy", *ratio_keys, *self.loss_stats)})
        for epoch in range(epochs):
            order = np.arange(items) if epoch == 0 else self.rng.permutation(items)  # (items,) see the subtle note
            for lo in range(0, items, c.minibatch_size):
                mb = order[lo:lo + c.minibatch_size]                      # (M,) items
                rows = self.minibatch_rows(mb, items)                     # (M,) rows (DPO: (2M,))
                mask = xp.ones((len(rows), R), dtype=dtype)               # (M, R) fixed length: every token counts
                logits, values = score_windows(self.policy, xp.asarray(sequences[rows]), self.windows,
                                               c.temperature)             # (M, R, V), (M, R)
                logp = token_logprobs(logits, xp.asarray(sequences[rows, -R:]))  # (M, R) log pi_theta(a_t | s_t)
                ratio = np.exp(logp.numpy().astype(np.float64) - old_logprobs[rows])  # (M, R) r_t
                if up.first_ratio_dev is None:
                    up.first_ratio_dev = float(np.abs(ratio - 1).max())  # 0 up to rounding: pi_theta = pi_old
                if self.skip_minibatch(epoch, mb, ratio, **data):
                    up.skipped += 1
                    continue
                loss, stats = self.loss(mb, logits, values, logp, mask, **data)
                with no_grad():
                    stats["entropy"] = entropy(logits, mask).item()      # mean entropy per token (nats)
                self.optimizer_step(loss)
                up.updates += 1
                stats["loss"] = loss.item()
                rs = ratio_stats(ratio, self.clip_eps)                    # ratio, k1 / k3 KL, clip fraction
                for key, value in {**stats, **rs}.items():
                    up.stats[key].append(value)
                if self.stop_early(epoch, rs):
                    up.early_stop = True
                    break
            if up.early_stop:
                break
        return up

    def loss(self, mb, logits, values, logp, mask, **data):
        """The method's objective on minibatch `mb` (item indices): (a scalar Tensor, {stat: float}).

        logits (M, R, V) and values (M, R) of the policy (graph recorded), logp (M, R) the log-probs of
        the response tokens, mask (M, R) ones; data as given to update()."""
        raise NotImplementedError(f"{type(self).__name__} has no loss")

    def minibatch_rows(self, mb, items):
        """The rows of `sequences` that minibatch `mb` of update() covers: the items themselves."""
        return mb

    def skip_minibatch(self, epoch, mb, ratio, **data):
        """True to leave minibatch mb out of this step (counted in "skipped"); ratio (M, R) its r_t."""
        return False

    def stop_early(self, epoch, ratio_stats):
        """True to end the step's epochs after this update; ratio_stats of its minibatch (diagnostics.py)."""
        return False

    def optimizer_step(self, loss):
        """One update of every method: gradients of `loss`, clipped to cfg.max_grad_norm (0: no clip), AdamW.

        Raises NonFiniteLoss before AdamW touches a parameter if the loss or the gradient's norm is
        NaN or infinite."""
        self.updates += 1
        value = loss.item()
        if not math.isfinite(value):
            raise self.non_finite(f"the loss of update {self.updates} is {value}")
        self.policy.zero_grad()
        loss.backward()
        # max_norm inf: the norm alone (clip_grad_norm never scales by an infinite bound)
        norm = float(clip_grad_norm(self.policy.parameters(), self.cfg.max_grad_norm or math.inf))
        if not math.isfinite(norm):
            raise self.non_finite(f"the gradient of update {self.updates} is non-finite (its norm is {norm}; the "
                                  f"loss was {value:.6g})")
        self.opt.step()
        self._check_stop()  # a signal whose exception a __del__ swallowed ends the step here

    # ---- finite values, kept steps --------------------------------------------------------------
    def non_finite(self, what):
        """The NonFiniteLoss of the step in progress: its number and what went non-finite."""
        return NonFiniteLoss(f"step {self.step_count + 1}: {what}")

    def check_policy(self):
        """Raise NonFiniteLoss unless every policy parameter, and the policy's logits and values on the
        probe batch, are finite (weights can be finite and still overflow a forward pass)."""
        xp = self.xp
        for name, p in self.policy.named_parameters():
            if not bool(xp.isfinite(p.data).all()):
                bad = int((~xp.isfinite(p.data)).sum())
                raise self.non_finite(f"after its updates, parameter {name} holds {bad} non-finite value(s) of "
                                      f"{p.data.size}")
        with no_grad():
            logits, values = self.policy(xp.asarray(self.probe), last=min(PROBE_LAST, self.probe.shape[1]))
        for what, t in (("logits", logits), ("values", values)):
            if not bool(xp.isfinite(t.data).all()):
                raise self.non_finite(f"after its updates, the policy's {what} on a probe batch are non-finite (the "
                                      f"parameters are finite but overflow a forward pass)")

    def keep(self, metrics):
        """A KeptStep of the policy as it is now (a copy of every parameter)."""
        return KeptStep(self.step_count, self.completions, None if self.kl_ctl is None else self.kl_ctl.value,
                        [p.data.copy() for p in self.policy.parameters()], metrics)

    def restore_kept(self):
        """Put the policy, the step count, the completions and beta back to the last kept step. The
        optimizer's moments and the random generator stay where they are (a run ends after this)."""
        kept = self.kept
        for p, saved in zip(self.policy.parameters(), kept.params):
            p.data[...] = saved
            p.grad = None
        self.step_count, self.completions = kept.step, kept.completions
        if self.kl_ctl is not None and kept.kl_coef is not None:
            self.kl_ctl.value = kept.kl_coef
        self.updates = 0

    # ---- the run: steps, signals, the save ---------------------------------------------------------
    def run(self, steps, on_step=None, save=None):
        """`steps` steps, then save(); returns "done", "interrupted" (SIGINT) or "terminated" (SIGTERM).

        on_step(metrics) follows each kept step (a metrics line, the progress bar); save() writes the
        policy (e.g. self.save(out)), once, at the end. SIGINT or SIGTERM abandons the step in
        progress at once: the policy goes back to the last kept step, which save() then writes (when
        no step was kept, nothing is saved). A second signal stops at once (KeyboardInterrupt,
        nothing saved). Signals are held back while on_step and save() run, so a metrics line is
        never cut and a save never abandoned. A non-finite value raises NonFiniteLoss after the
        policy went back to the last kept step and save() wrote it (if a step was kept).
        """
        previous = {sig: signal.signal(sig, self._on_signal) for sig in RESULTS}
        self._stop, reported = None, self.kept.step
        try:
            try:
                for _ in range(steps):
                    metrics = self.step()
                    if on_step is not None:
                        self._held(on_step, metrics)
                    reported = self.kept.step
                    self._check_stop()
                result = "done"
            except _Abandon as stop:
                result = RESULTS[stop.signum]
                self.restore_kept()
                if on_step is not None and self.kept.step > reported:  # kept, but stopped before on_step
                    self._held(on_step, self.kept.metrics)
            except NonFiniteLoss:
                self.restore_kept()
                if save is not None and self.kept.step:
                    self._held(save)
                raise
            if save is not None and self.kept.step:
                self._held(save)
            if result == "done" and self._stop is not None:  # a signal during the last on_step or save
                result = RESULTS[self._stop]
            return result
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._stop = None

    def _on_signal(self, signum, frame):
        if self._stop is not None:  # a second signal: stop now, without saving
            raise KeyboardInterrupt
        self._stop = signum
        if not self._holding:
            raise _Abandon(signum)

    def _held(self, fn, *args):
        """fn(*args) with signals held back: one that arrives is acted on when fn returns."""
        self._holding = True
        try:
            return fn(*args)
        finally:
            self._holding = False

    def _check_stop(self):
        if self._stop is not None and not self._holding:
            raise _Abandon(self._stop)

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
        raw = self.reward_model.score(responses)                          # (B,)
        if not np.isfinite(raw).all():
            raise self.non_finite(f"the reward model scored {int((~np.isfinite(raw)).sum())} of {len(raw)} "
                                  f"responses NaN or infinite")
        return gold, raw                                                  # (B,), (B,)

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
    def rollout_metrics(self, gold, raw, beta, roll=None, scores=None, kl_seq=None):
        """The metrics of a step's completions: the gold score's mean and the fraction of completions
        above cfg.positive_threshold, the mean reward optimised (raw) and beta; with the Rollout, the
        mean normalised score, the exact KL per token to the reference and its sampled estimate, and
        kl_seq, the mean KL per response that the KL controller was given."""
        metrics = {"score": float(gold.mean()),                           # gold (VADER) mean of the completions
                   "score_pos_frac": float((gold > self.cfg.positive_threshold).mean()),
                   "reward_raw": float(raw.mean())}                       # what was optimised (= score w/o RM)
        if roll is not None:
            metrics.update({
                "reward_norm": float(scores.mean()),
                "kl": float(roll.kl_exact.mean()),                        # exact KL per token to the reference
                "kl_sampled": float((roll.logprobs - roll.ref_logprobs).mean()),  # its sampled estimate per token
                "kl_seq": kl_seq})
        metrics["beta"] = beta
        return metrics

    def finish_metrics(self, metrics, t0, t_rollout, generated):
        """Add the common fields to a step's metrics, log its health warnings, keep the step (after
        check_policy), and return the metrics."""
        self.check_policy()
        self.step_count += 1
        self.completions += generated
        metrics = {"step": self.step_count, "algo": self.algo, **metrics,
                   "lr": self.opt.param_groups[0]["lr"], "completions": self.completions,
                   "rollout_s": round(t_rollout, 3), "step_s": round(time.perf_counter() - t0, 3)}
        warnings = check_health(metrics)
        for line in warnings:
            self.log(line)
        metrics["warnings"] = warnings
        self.kept = self.keep(metrics)  # subtle: one assignment, so a signal finds either step whole
        self.updates = 0
        return metrics

    # ---- saving -------------------------------------------------------------------------------
    def extra_tensors(self):
        """{role: {name: array}} saved beside the model (checkpoint.load_tensors); none by default."""
        return None

    def save(self, directory, extra_meta=None):
        """The tuned GPT as a checkpoint `runs.load_model` reads, meta.kind "rlhf-<algo>" (so --resume
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
