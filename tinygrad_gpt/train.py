"""Training a GPT on a token stream: TrainConfig, presets, evaluation, checkpoints, resume.

`examples/shakespeare.py` maps its flags onto `TrainConfig` and `GPTConfig` and calls `Trainer`;
the RLHF example and the benchmarks reuse the same loop. One epoch is one shuffled pass over the
training split in block_size windows (`epoch_mode="windows"`), or over every start position
(`"all_starts"`, the `original` preset's epoch). After each epoch: train and val loss (estimated on
`eval_batches` held-out batches drawn with a fixed seed, so epochs are comparable), a sample, and a
checkpoint. Ctrl-C finishes the current step, saves, and exits; a NaN/Inf loss stops the run and
keeps the last good checkpoint.

Gradient accumulation (`grad_accum` N) splits each batch of `batch_size` rows into N micro-batches
of batch_size / N; each micro-batch's mean loss is back-propagated with weight rows_i / rows, so the
accumulated gradient and the summed loss are the whole batch's (a short last batch included), and
the optimizer steps once per batch: only peak memory changes, not the training.

Follows: nanoGPT train.py (AdamW, warmup + cosine, clipping, estimate_loss, gradient accumulation).
Deliberately does not: mixed precision.
"""
import json
import math
import signal
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from tinygrad_gpt import backend, checkpoint, data
from tinygrad_gpt.backend import get_xp
from tinygrad_gpt.model import GPT, GPTConfig
from tinygrad_gpt.optim import AdamW, clip_grad_norm, cosine_lr, decay_groups
from tinygrad_gpt.tensor import no_grad


@dataclass
class TrainConfig:
    batch_size: int = 12                # rows of one optimizer step, however many micro-batches it is split into
    grad_accum: int = 1                 # micro-batches per step (batch_size / grad_accum rows each); same loss and gradient
    epochs: int = 5
    max_iters: int | None = None        # stop after this many steps in total (overrides epochs)
    iters_per_epoch: int | None = None  # cap an epoch's length (the tiny smoke-test preset)
    epoch_mode: str = "windows"         # "windows": non-overlapping block_size windows; "all_starts"
    lr: float = 1e-3
    min_lr: float = 1e-4                # cosine decay ends here, at the last step
    warmup_iters: int = 100
    weight_decay: float = 0.1           # matrices only; biases and LayerNorm weights get none
    beta1: float = 0.9
    beta2: float = 0.99                 # nanoGPT's choice for small data (GPT-2 used 0.95-0.999)
    grad_clip: float = 1.0              # 0 turns clipping off
    eval_batches: int = 20              # held-out batches per loss estimate
    eval_every: int | None = None       # also evaluate every N steps (default: only at epoch ends)
    sample_tokens: int = 200            # length of the sample printed after each epoch
    log_every: int = 10                 # steps between bar / metrics updates (a host sync on GPU)
    seed: int = 1337
    device: str = "cpu"
    out_dir: str = "out/shakespeare"
    val_fraction: float = 0.1

    def __post_init__(self):
        if self.epoch_mode not in ("windows", "all_starts"):
            raise ValueError(f"TrainConfig: epoch_mode must be 'windows' or 'all_starts', got {self.epoch_mode!r}")
        for name in ("batch_size", "grad_accum", "epochs", "eval_batches", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig: {name} must be >= 1, got {getattr(self, name)}")
        if self.batch_size % self.grad_accum:
            raise ValueError(f"TrainConfig: batch_size {self.batch_size} is not divisible by grad_accum "
                             f"{self.grad_accum} (each micro-batch holds batch_size / grad_accum rows)")


# presets: (GPTConfig fields, TrainConfig fields); every field can still be overridden by a flag
PRESETS = {
    # seconds, for smoke tests: a 2-layer 32-wide model, epochs capped at 30 steps
    "tiny": (dict(n_layer=2, n_head=2, n_embd=32, block_size=32, dropout=0.0),
             dict(batch_size=8, epochs=2, iters_per_epoch=30, warmup_iters=5, eval_batches=4, sample_tokens=60)),
    # the default: nanoGPT's documented CPU configuration
    "cpu": (dict(n_layer=4, n_head=4, n_embd=128, block_size=64, dropout=0.0),
            dict(batch_size=12, lr=1e-3, min_lr=1e-4, warmup_iters=100)),
    # nanoGPT's shakespeare_char (train with --max-iters 5000 --eval-every 500)
    "gpu": (dict(n_layer=6, n_head=6, n_embd=384, block_size=256, dropout=0.2),
            dict(batch_size=64, lr=1e-3, min_lr=1e-4, warmup_iters=100)),
    # the configuration the project started from: 4 heads of 16, AdamW 5e-4, every start position
    "original": (dict(n_layer=4, n_head=4, n_embd=64, block_size=32, dropout=0.0),
                 dict(batch_size=64, lr=5e-4, min_lr=5e-4, warmup_iters=0, weight_decay=0.01, beta2=0.999,
                      epoch_mode="all_starts")),
}


def preset_configs(name, vocab_size, **overrides):
    """GPTConfig and TrainConfig for a preset, with `overrides` (None values ignored) applied."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}: choose one of {sorted(PRESETS)}")
    model_kw, train_kw = dict(PRESETS[name][0]), dict(PRESETS[name][1])
    model_names = {f.name for f in fields(GPTConfig)}
    train_names = {f.name for f in fields(TrainConfig)}
    for key, value in overrides.items():
        if value is None:
            continue
        if key in model_names:
            model_kw[key] = value
        elif key in train_names:
            train_kw[key] = value
        else:
            raise ValueError(f"unknown setting {key!r}")
    return GPTConfig(vocab_size=vocab_size, **model_kw), TrainConfig(**train_kw)


class NonFiniteLoss(RuntimeError):
    pass


@dataclass
class TrainState:
    step: int = 0            # optimizer steps taken
    epoch: int = 0           # the epoch in progress (0-based)
    batch: int = 0           # batches of that epoch already trained on
    epoch_rng: dict = field(default_factory=dict)  # data-shuffle generator state at the epoch's start
    history: list = field(default_factory=list)    # per-epoch {"epoch", "train_loss", "val_loss", ...}


class Trainer:
    """Trains `model` on token arrays; prints (via `log`) what a person watching needs to see."""

    def __init__(self, model, tokenizer, train_tokens, val_tokens, config, log=print, progress=True):
        backend.tune_host_allocator()  # process-wide malloc thresholds: see its docstring
        self.model, self.tokenizer, self.cfg = model, tokenizer, config
        self.train_tokens, self.val_tokens = train_tokens, val_tokens
        self.log, self.progress = log, progress
        self.opt = AdamW(decay_groups(model.named_parameters(), config.weight_decay), lr=config.lr,
                         betas=(config.beta1, config.beta2))
        self.state = TrainState(epoch_rng=np.random.default_rng(config.seed).bit_generator.state)
        # subtle: measured once; building the batches shuffles every start position (1M of them in
        # the "original" preset, 44 ms), and lr_at() needs the epoch length on every step
        n = len(self.epoch_batches(self.state.epoch_rng))
        self._iters_per_epoch = min(n, config.iters_per_epoch) if config.iters_per_epoch else n
        self.out_dir = Path(config.out_dir)
        self._interrupted = False
        self.xp = get_xp(config.device)

    # ---- epochs and schedule --------------------------------------------------------------
    def epoch_batches(self, epoch_rng_state, start_batch=0):
        rng = checkpoint.restore_rng(epoch_rng_state)
        make = data.epoch_batches if self.cfg.epoch_mode == "windows" else data.all_start_batches
        return make(self.train_tokens, self.cfg.batch_size, self.model.config.block_size, rng,
                    start_batch=start_batch)

    def iters_per_epoch(self):
        return self._iters_per_epoch

    def total_iters(self):
        """max_iters when given (it overrides epochs), else epochs x iters_per_epoch."""
        return self.cfg.max_iters if self.cfg.max_iters else self.cfg.epochs * self.iters_per_epoch()

    def lr_at(self, step):
        return cosine_lr(step, self.cfg.lr, self.cfg.min_lr, self.cfg.warmup_iters, self.total_iters())

    # ---- evaluation and sampling ----------------------------------------------------------
    def estimate_loss(self, tokens, seed):
        """Mean loss over eval_batches random batches of `tokens`, the same batches every call."""
        rng = np.random.default_rng(seed)
        was_training = self.model.training
        self.model.eval()
        losses = []
        with no_grad():
            for _ in range(self.cfg.eval_batches):
                x, y = data.get_batch(tokens, self.cfg.batch_size, self.model.config.block_size, rng)
                _, loss = self.model(x, self.xp.asarray(y))      # x checked on the host, then uploaded
                losses.append(loss.data)                         # stays on the device: one sync below
        self.model.train(was_training)
        return float(self.xp.stack(losses).astype(np.float64).mean())

    def sample(self, seed, prompt="\n", tokens=None):
        ids = np.array([self.tokenizer.encode(prompt)], dtype=np.int64)
        out = self.model.generate(ids, tokens or self.cfg.sample_tokens, temperature=1.0, top_k=None, seed=seed)
        return self.tokenizer.decode(out[0].tolist())

    # ---- checkpoints ------------------------------------------------------------------------
    def save(self):
        meta = {
            "format": "tinygrad_gpt-checkpoint-1",
            "model_config": asdict(self.model.config),
            "train_config": asdict(self.cfg),
            "tokenizer": self.tokenizer.to_dict(),
            "state": asdict(self.state),
            "dropout_rng": checkpoint.rng_state(self.model.drop_rng),
        }
        checkpoint.save_checkpoint(self.out_dir, self.model.state_dict(), meta,
                                   optimizer_state=self.opt.state_dict())

    def restore(self, meta, optimizer_state):
        self.opt.load_state_dict(optimizer_state)
        self.state = TrainState(**meta["state"])
        self.model.drop_rng.bit_generator.state = meta["dropout_rng"]

    def _metrics(self, record):
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.out_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    # ---- the loop ---------------------------------------------------------------------------
    def _on_sigint(self, signum, frame):
        if self._interrupted:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self._interrupted = True
        self.log("\ninterrupt: finishing this step, then saving a checkpoint (Ctrl-C again to abort)")

    def train(self):
        """Run the remaining epochs. Returns "done", "interrupted"; raises NonFiniteLoss."""
        from tqdm import tqdm

        total = self.total_iters()
        per_epoch = self.iters_per_epoch()
        previous_handler = signal.signal(signal.SIGINT, self._on_sigint)
        model, opt, st, cfg = self.model, self.opt, self.state, self.cfg
        model.train()
        try:
            while st.step < total:
                batches = self.epoch_batches(st.epoch_rng, start_batch=st.batch)
                steps_this_epoch = min(per_epoch, st.batch + (total - st.step))
                bar = tqdm(total=steps_this_epoch, initial=st.batch, desc=f"epoch {st.epoch + 1}",
                           disable=not self.progress, dynamic_ncols=True, leave=True)
                t_last, tokens_since = time.perf_counter(), 0
                it = iter(batches)
                while st.batch < steps_this_epoch:
                    x, y = next(it)
                    lr = self.lr_at(st.step)
                    opt.set_lr(lr)
                    model.zero_grad()
                    loss = self._forward_backward(x, y)
                    if cfg.grad_clip:
                        clip_grad_norm(model.parameters(), cfg.grad_clip)
                    log_now = (st.step + 1) % cfg.log_every == 0 or st.batch + 1 == steps_this_epoch
                    loss_value = float(loss) if (log_now or cfg.device == "cpu") else None
                    if loss_value is not None and not math.isfinite(loss_value):
                        raise NonFiniteLoss(f"loss is {loss_value} at step {st.step + 1} (epoch {st.epoch + 1}, "
                                            f"batch {st.batch + 1}); stopping without saving, the last good "
                                            f"checkpoint in {self.out_dir} is kept")
                    opt.step()
                    st.step += 1
                    st.batch += 1
                    tokens_since += x.size
                    bar.update(1)
                    if log_now:
                        now = time.perf_counter()
                        tok_s = tokens_since / max(now - t_last, 1e-9)
                        bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}")
                        self._metrics({"step": st.step, "epoch": st.epoch + 1, "loss": loss_value, "lr": lr,
                                       "tokens_per_s": round(tok_s, 1)})
                        t_last, tokens_since = now, 0
                    if cfg.eval_every and st.step % cfg.eval_every == 0 and st.step < total:
                        self._evaluate(bar, f"step {st.step}")
                    if self._interrupted or st.step >= total:
                        break
                bar.close()
                if self._interrupted and st.batch < steps_this_epoch:
                    self.save()
                    self.log(f"stopped at step {st.step} (epoch {st.epoch + 1}, batch {st.batch}); checkpoint saved "
                             f"to {self.out_dir}; continue with --resume")
                    return "interrupted"
                record = self._evaluate(None, f"epoch {st.epoch + 1}")
                record.update(epoch=st.epoch + 1)
                st.history.append(record)
                # the next epoch: a new shuffle from a generator that follows on from this one
                next_rng = checkpoint.restore_rng(st.epoch_rng)
                next_rng.random()  # advance so each epoch's shuffle differs
                st.epoch_rng = np.random.default_rng(next_rng.integers(2 ** 63)).bit_generator.state
                st.epoch += 1
                st.batch = 0
                self.save()
                if self._interrupted:
                    self.log(f"stopped after epoch {st.epoch}; checkpoint saved to {self.out_dir}")
                    return "interrupted"
            return "done"
        finally:
            signal.signal(signal.SIGINT, previous_handler)

    def micro_batches(self, x, y):
        """(x_i, y_i, weight_i) for the micro-batches of one batch: grad_accum row ranges of x (B, T).

        weight_i = rows_i / B, so sum_i weight_i * mean-loss_i is the mean loss of the whole batch;
        np.array_split keeps them exact when a short last batch does not divide evenly (empty
        pieces are left out).
        """
        rows = x.shape[0]
        return [(x[r], y[r], len(r) / rows) for r in np.array_split(np.arange(rows), self.cfg.grad_accum) if len(r)]

    def _forward_backward(self, x, y):
        """Forward and backward over the micro-batches of (x, y); returns the batch's mean loss.

        The loss comes back as a 0-d array on the model's device (no host sync on the GPU).
        """
        total = None
        for xm, ym, weight in self.micro_batches(x, y):
            _, loss = self.model(xm, self.xp.asarray(ym))   # xm (numpy) is range-checked on the host, then uploaded
            w = loss.dtype.type(weight)
            # d(total)/d(loss_i) = weight_i: the gradient of the whole batch's mean accumulates
            loss.backward(self.xp.full(loss.shape, w, dtype=loss.dtype))
            total = loss.data * w if total is None else total + loss.data * w
        return total

    def _evaluate(self, bar, label):
        t0 = time.perf_counter()
        train_loss = self.estimate_loss(self.train_tokens, seed=1)
        val_loss = self.estimate_loss(self.val_tokens, seed=2)
        text = self.sample(seed=self.cfg.seed + self.state.step)
        record = {"step": self.state.step, "train_loss": round(train_loss, 4), "val_loss": round(val_loss, 4),
                  "eval_s": round(time.perf_counter() - t0, 2)}
        self._metrics(dict(record, label=label))
        self.log(f"{label}: step {self.state.step}, train loss {train_loss:.4f}, val loss {val_loss:.4f}")
        self.log(f"--- sample ---\n{text}\n--------------")
        return record


def load_model(directory, device="cpu"):
    """(model, meta, optimizer_state) from a checkpoint directory written by Trainer.save.

    The tokenizer is in the meta, as its dict: `tokenizer_from_dict(meta["tokenizer"])` rebuilds it."""
    state_dict, optimizer_state, meta = checkpoint.load_checkpoint(directory)
    config = GPTConfig(**meta["model_config"])
    dtype = next(iter(state_dict.values())).dtype
    model = GPT(config, seed=0, dtype=dtype, device=device)
    model.load_state_dict(state_dict)
    return model, meta, optimizer_state
