"""Training a GPT on a token stream: TrainConfig, presets, evaluation, checkpoints, resume.

`examples/shakespeare.py` maps its flags onto `TrainConfig` and `GPTConfig` and calls `Trainer`;
the RLHF example and the benchmarks reuse the same loop. One epoch is one shuffled pass over the
training split in block_size windows (`epoch_mode="windows"`), or over every start position
(`"all_starts"`, the `original` preset's epoch). After each epoch: train and val loss (estimated on
`eval_batches` held-out batches drawn with a fixed seed, so epochs are comparable), a sample, and a
checkpoint (a saved run of kind "train": runs.py writes, reads and checks it). Ctrl-C (SIGINT) or
SIGTERM finishes the current step, saves, and exits; a NaN/Inf loss stops the run and keeps the
last good checkpoint. `--resume` (runs.check_resumable) continues with the checkpoint's own
settings (`resume_configs`: a flag may change what a run can change as it goes on, and is refused
where it contradicts what was trained); metrics.jsonl keeps one record per step across a crash
and resume. Before training, `check_memory` refuses a batch whose step cannot
fit in the device's memory at all, instead of failing at the first evaluation an epoch later.
With `log_grad_norms`, each logged step's record also carries the L2 norm of the gradient of each
layer group (wte, wpe, each block h.i, ln_f) and their total, before clipping (`grad_norms`; drawn
by tinygrad_gpt/plot.py).

The optimizer is AdamW, or (`optimizer="muon"`) Muon for the blocks' matrices with AdamW for the
rest (optim.MuonWithAdamW); the rate follows a linear warm-up, then a cosine decay or (`schedule=
"wsd"`) a constant phase and a linear cool-down over the last `cooldown_frac` of the steps, Muon's
rate in proportion to AdamW's. Every evaluation record in metrics.jsonl carries `train_s` (seconds
spent in training steps so far, evaluation and saving excluded; carried across a resume) and
`tokens` (training tokens seen so far). With `target_val_loss`, each evaluation also measures the
loss over the whole validation split (`split_loss`: every block_size window once), and the run
stops, saving a checkpoint, as soon as it is <= the target (`Trainer.target_reached` holds that
evaluation's record; None when the budget ended first).

Gradient accumulation (`grad_accum` N) splits each batch of `batch_size` rows into N micro-batches
of batch_size / N; each micro-batch's mean loss is back-propagated with weight rows_i / rows, so the
accumulated gradient and the summed loss are the whole batch's (a short last batch included), and
the optimizer steps once per batch: only peak memory changes, not the training.

Data parallel (`world`, a distributed.World from mpirun): `batch_size` stays the global batch;
every rank draws it, trains on its slice (then on micro-batches of that), gradients are
all-reduced in buckets before clipping, and rank 0 alone prints, logs and writes checkpoints
(which record the world size, so a run resumes on another number of ranks). Each rank draws its
own dropout masks, from a generator seeded by (seed, step, rank) each step (World.seed_dropout),
so a resumed run draws the same ones. A stop request (SIGINT, SIGTERM) on any rank is all-reduced
with the loss each step, so every rank stops after the same step and one checkpoint; rank 0 also
saves the last finished step the moment it is signalled, because mpirun, signalled itself, kills
the ranks 0.25 s after passing SIGTERM on.

Follows: nanoGPT train.py (AdamW, warmup + cosine, clipping, estimate_loss, gradient accumulation);
the modded-nanogpt speedrun (Muon, warm-up / constant / cool-down, training time to a target loss).
Deliberately does not: mixed precision.
"""
import json
import math
import os
import signal
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from tinygrad_gpt import backend, checkpoint, data, runs
from tinygrad_gpt.backend import DEVICES, array_module, get_xp, to_numpy
from tinygrad_gpt.settings import check_fields, setting
from tinygrad_gpt.model import GPTConfig
from tinygrad_gpt.optim import AdamW, MuonWithAdamW, clip_grad_norm, cosine_lr, decay_groups, wsd_lr
from tinygrad_gpt.tensor import Tensor, no_grad


@dataclass
class TrainConfig:
    batch_size: int = setting(12, ge=1)  # rows of one optimizer step, however many micro-batches it is split into
    grad_accum: int = setting(1, ge=1)   # micro-batches per step (batch_size / grad_accum rows each); same loss
                                         # and gradient
    epochs: int = setting(5, ge=1)
    max_iters: int | None = setting(None, ge=1)        # stop after this many steps in total (overrides epochs)
    iters_per_epoch: int | None = setting(None, ge=1)  # cap an epoch's length (the tiny smoke-test preset)
    epoch_mode: str = setting("windows", choices=("windows", "all_starts"))  # "windows": non-overlapping
                                        # block_size windows; "all_starts": every start position
    lr: float = setting(1e-3, gt=0)       # AdamW's peak rate (with --optimizer muon: of the parameters AdamW trains)
    min_lr: float = setting(1e-4, ge=0)  # the schedule decays to this, at the last step; at most lr
    warmup_iters: int = setting(100, ge=0)
    schedule: str = setting("cosine", choices=("cosine", "wsd"))  # after the linear warm-up: "cosine" decay to
                                         # min_lr, or "wsd": constant, then a linear cool-down to min_lr
    cooldown_frac: float = setting(0.4, ge=0, le=1)  # wsd: the last fraction of the iterations cools down
    weight_decay: float = setting(0.1, ge=0)  # AdamW, matrices only; biases and LayerNorm weights get none
    beta1: float = setting(0.9, ge=0, lt=1)
    beta2: float = setting(0.99, ge=0, lt=1)  # nanoGPT's choice for small data (GPT-2 used 0.95-0.999)
    grad_clip: float = setting(1.0, ge=0)     # 0 turns clipping off
    optimizer: str = setting("adamw", choices=("adamw", "muon"))  # "muon": Muon for the blocks' matrices,
                                              # AdamW for embeddings, gains and biases (optim.MuonWithAdamW)
    muon_lr: float = setting(0.02, gt=0)      # Muon's peak rate (spectral norm per step); follows the schedule's
                                              # shape: muon_lr * (rate now / lr)
    muon_momentum: float = setting(0.95, ge=0, lt=1)  # Muon's Nesterov momentum
    muon_ns_steps: int = setting(5, ge=1)     # Newton-Schulz iterations per matrix and step
    target_val_loss: float | None = setting(None, gt=0)  # stop once the loss over the whole validation split,
                                              # measured at each evaluation, is <= this (exit 4 if never)
    eval_batches: int = setting(20, ge=1)     # held-out batches per loss estimate
    eval_every: int | None = setting(None, ge=1)  # also evaluate every N steps (default: only at epoch ends)
    sample_tokens: int = setting(200, ge=1)   # length of the sample printed after each epoch
    log_every: int = setting(10, ge=1)        # steps between bar / metrics updates (a host sync on GPU)
    log_grad_norms: bool = setting(False)     # add each logged step's gradient L2 norm per layer group (wte,
                                              # wpe, h.0 .. h.{n-1}, ln_f, total; before clipping) to its
                                              # metrics.jsonl record; off: no extra work
    seed: int = setting(1337, ge=0)
    device: str = setting("cpu", choices=DEVICES, flag=False)  # scripts have their own --device
    out_dir: str = setting("out/shakespeare", flag=False)      # scripts have their own --out
    val_fraction: float = setting(0.1, gt=0, lt=1)
    init_from: str | None = setting(None, help="a Hugging Face GPT-2 folder: start from its weights and "
                                               "tokenizer (preset finetune unless --preset)")
    bucket_mb: float = setting(4.0, ge=2 ** -20)  # data parallel: size of one flat gradient all-reduce bucket
                                                  # (MB; at least one byte)
    overlap_comm: bool = setting(False)       # data parallel: start each bucket's all-reduce during backward

    def __post_init__(self):
        check_fields(self)
        if self.min_lr > self.lr:
            raise ValueError(f"TrainConfig: min_lr {self.min_lr:g} is above lr {self.lr:g}; the {self.schedule} "
                             f"schedule decays from lr to min_lr (set both, e.g. --lr and --min-lr)")
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
    # nanoGPT's finetune_shakespeare scaled to a CPU, for --init-from a GPT-2 folder (the model's
    # shape comes from its config.json; block_size crops the 1024-position table): small constant lr
    "finetune": (dict(block_size=256, dropout=0.0),
                 dict(batch_size=4, epochs=1, max_iters=300, lr=3e-5, min_lr=3e-5, warmup_iters=0,
                      eval_batches=8, eval_every=100, sample_tokens=100, log_every=5)),
    # time to a target loss (examples/shakespeare.py --preset speedrun --target-val-loss L; benchmarks/
    # speedrun.py): Muon for the blocks' matrices, warm-up then cosine. Muon's Newton-Schulz costs the
    # same per step whatever the batch (~5 (4 d^2 n + 2 d^3) FLOPs per d x n matrix against ~6 d n per
    # token for the step): at width 128 it adds about half a 12-row step; 32 rows of 64 (2,048 tokens)
    # bring it to about a seventh; max_iters is the budget the schedule is planned for, the whole
    # split is measured every 50 steps. The cosine, not the record runs' warm-up / constant /
    # cool-down (--schedule wsd): the run stops at its target about three quarters through, where the
    # cosine's earlier decay got there with fewer tokens. Muon at 0.05, the modded-nanogpt speedrun's
    # rate (0.02, the Muon default, trained slower in a short trial here); AdamW (embeddings, the tied
    # head, gains) at 3e-3: with Muon it no longer trains the matrices. The architecture of the record
    # runs: rotary positions, RMSNorm and QK-norm, ReLU^2, soft-capped logits, zero-initialised
    # projections, no biases (each idea's worth: benchmarks/speedrun.py --ablate)
    "speedrun": (dict(n_layer=4, n_head=4, n_embd=128, block_size=64, dropout=0.0, bias=False, position="rotary",
                      norm="rmsnorm", qk_norm=True, activation="relu2", logit_softcap=30.0, zero_init=True),
                 dict(batch_size=32, max_iters=1000, optimizer="muon", muon_lr=0.05, lr=3e-3, min_lr=3e-4,
                      warmup_iters=50, schedule="cosine", eval_every=50, eval_batches=4,
                      sample_tokens=100)),
    # the configuration the project started from: 4 heads of 16, AdamW 5e-4, every start position
    "original": (dict(n_layer=4, n_head=4, n_embd=64, block_size=32, dropout=0.0),
                 dict(batch_size=64, lr=5e-4, min_lr=5e-4, warmup_iters=0, weight_decay=0.01, beta2=0.999,
                      epoch_mode="all_starts")),
}


def preset_settings():
    """{preset: {field: value}}: what each preset sets (model and training fields together)."""
    return {name: {**model_kw, **train_kw} for name, (model_kw, train_kw) in PRESETS.items()}


def describe_presets():
    """The presets as text for a script's --help: each preset's settings, in flag spelling."""
    from tinygrad_gpt.cli import flag_name, show_value
    import textwrap
    lines = ["presets (--preset NAME; a flag overrides any value; unset fields keep their defaults):"]
    for name, values in preset_settings().items():
        text = ", ".join(f"{flag_name(k)} {show_value(v)}" for k, v in values.items())
        lines.extend(textwrap.wrap(text, width=100, initial_indent=f"  {name:9} ", subsequent_indent=" " * 12))
    return "\n".join(lines)


def preset_configs(name, vocab_size, **overrides):
    """GPTConfig and TrainConfig for a preset, with `overrides` applied (None sets an optional field to None)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}: choose one of {sorted(PRESETS)}")
    model_kw, train_kw = dict(PRESETS[name][0]), dict(PRESETS[name][1])
    model_names = {f.name for f in fields(GPTConfig)}
    train_names = {f.name for f in fields(TrainConfig)}
    for key, value in overrides.items():
        if key in model_names:
            model_kw[key] = value
        elif key in train_names:
            train_kw[key] = value
        else:
            raise ValueError(f"unknown setting {key!r}")
    return GPTConfig(vocab_size=vocab_size, **model_kw), TrainConfig(**train_kw)


def make_optimizer(model, config):
    """The optimizer `config.optimizer` names for a GPT: AdamW (decay_groups), or Muon with AdamW."""
    betas = (config.beta1, config.beta2)
    if config.optimizer == "muon":
        return MuonWithAdamW(model.named_parameters(), lr=config.lr, betas=betas, weight_decay=config.weight_decay,
                             muon_lr=config.muon_lr, muon_momentum=config.muon_momentum,
                             ns_steps=config.muon_ns_steps)
    return AdamW(decay_groups(model.named_parameters(), config.weight_decay), lr=config.lr, betas=betas)


def split_loss(model, tokens, batch_size=64):
    """The mean loss of `model` over a whole split: every non-overlapping block_size window
    (data.split_windows), each token predicted once, in batches of batch_size rows, under no_grad.

    The figure the target of --target-val-loss is compared with (and benchmarks/eval_checkpoint.py
    prints): the per-epoch val loss is an estimate on eval_batches random batches. Call it with the
    model in eval mode (dropout off). Returns a float.
    """
    x_all, y_all = data.split_windows(tokens, model.config.block_size)   # (n, T), (n, T)
    xp = get_xp(model.wte.weight.device)
    losses, rows = [], []
    with no_grad():
        for i in range(0, len(x_all), batch_size):
            x, y = x_all[i:i + batch_size], y_all[i:i + batch_size]     # (b, T), (b, T)
            _, loss = model(x, xp.asarray(y))
            losses.append(loss.data)                                     # stays on the device: one sync below
            rows.append(len(x))
    means = to_numpy(xp.stack(losses)).astype(np.float64)                # (batches,) each batch's mean
    return float((means * np.asarray(rows)).sum() / len(x_all))


def train_step(model, opt, x, y, grad_clip=1.0, replicas=None):
    """One plain optimizer step on one batch: forward, zero_grad, backward, clip, opt.step; returns
    the loss Tensor. `replicas` (a replicas.Replicas of `model`) runs the forward and backward over
    its threads; the loss is then a Tensor without a graph. The step the benchmarks time (Trainer
    adds accumulation, data parallel, schedules, logging and checkpoints around the same order)."""
    if replicas is not None:
        model.zero_grad()
        loss = Tensor(replicas.forward_backward(x, y))
    else:
        _, loss = model(x, y)
        model.zero_grad()
        loss.backward()
    if grad_clip:
        clip_grad_norm(model.parameters(), grad_clip)
    opt.step()
    return loss


class NonFiniteLoss(RuntimeError):
    pass


def step_memory(model_config, batch_size, rows, itemsize, n_params):
    """Rough bytes a run needs at its peak: (total, what dominates), an estimate, not a measurement.

    Parameters, gradients and AdamW's two moments: 4 * n_params * itemsize. On top, the larger of
      training, one micro-batch of `rows` rows: rows * T * (n_layer * 16 * C + 2 * V) * itemsize,
        the activations backward keeps (about 16 C per position per block: layer norms, qkv,
        attention output, the 4C-wide MLP before and after GELU, residuals) plus logits and their
        gradient;
      evaluation, `batch_size` rows at once without a graph: batch_size * T * (8 * C + 2 * V) * itemsize
        plus the int64 inputs and targets.
    It errs low rather than high: it is there to refuse what cannot fit, not to police the margin.
    """
    T, C, V, L = model_config.block_size, model_config.n_embd, model_config.vocab_size, model_config.n_layer
    state = 4 * n_params * itemsize
    train = rows * T * (L * 16 * C + 2 * V) * itemsize
    evaluate = batch_size * T * ((8 * C + 2 * V) * itemsize + 16)
    return state + max(train, evaluate), ("training" if train >= evaluate else "evaluation")


def memory_of(device):
    """Bytes of memory of `device` (the machine's physical memory for "cpu", the GPU's for "cuda"),
    or None where it cannot be asked."""
    try:
        if device == "cuda":
            return int(get_xp("cuda").cuda.Device().mem_info[1])
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError, RuntimeError):
        return None


def check_memory(model_config, config, n_params, itemsize, world_size=1):
    """Raise ValueError naming --batch-size when one step cannot fit in the device's memory at all.

    Checked before training starts: an evaluation that cannot allocate its batch_size rows would
    otherwise fail an epoch later, with nothing saved.
    """
    rows = -(-config.batch_size // (config.grad_accum * world_size))  # one micro-batch of one rank
    need, part = step_memory(model_config, config.batch_size, rows, itemsize, n_params)
    have = memory_of(config.device)
    if have is not None and need > have:
        hint = ("lower --batch-size" if part == "evaluation" else
                "lower --batch-size or raise --grad-accum (rows per micro-batch)")
        raise ValueError(f"--batch-size {config.batch_size}: one {part} step needs about {need / 2 ** 30:,.1f} GiB "
                         f"({rows if part == 'training' else config.batch_size} rows x {model_config.block_size} "
                         f"positions, plus the parameters, gradients and AdamW moments), more than the "
                         f"{have / 2 ** 30:,.1f} GiB of memory of device {config.device}: {hint}")


def grad_group(name):
    """The layer group of a GPT parameter name: "wte", "wpe", "h.{i}" (a block) or "ln_f".

    The lm_head is tied to wte (GPT.logits), so the head's gradient is part of wte's.
    """
    parts = name.split(".")
    return f"h.{parts[1]}" if parts[0] == "h" else parts[0]


def grad_norms(model):
    """{group: L2 norm of the gradients of that group's parameters} plus "total", as Python floats.

    Groups by `grad_group`, in the model's parameter order (wte, wpe, h.0, ..., ln_f). Reads the
    .grad arrays as they are (call it before clip_grad_norm to see the unclipped norms): one dot
    product per parameter, as clip_grad_norm does, and one transfer to the host for all groups.
    "total" is the norm clip_grad_norm compares with max_norm.
    """
    squares = {}
    xp = None
    for name, p in model.named_parameters():
        if p.grad is None:
            continue
        xp = array_module(p.grad)
        sq = xp.vdot(p.grad.ravel(), p.grad.ravel())                    # () sum of squares
        group = grad_group(name)
        squares[group] = sq if group not in squares else squares[group] + sq
    if not squares:
        return {}
    host = to_numpy(xp.stack([xp.asarray(v, dtype=xp.float64) for v in squares.values()]))  # (groups,) one sync
    norms = {group: float(np.sqrt(value)) for group, value in zip(squares, host)}
    norms["total"] = float(np.sqrt(host.sum()))
    return norms


@dataclass
class TrainState:
    step: int = 0            # optimizer steps taken
    epoch: int = 0           # the epoch in progress (0-based)
    batch: int = 0           # batches of that epoch already trained on
    epoch_rng: dict = field(default_factory=dict)  # data-shuffle generator state at the epoch's start
    history: list = field(default_factory=list)    # per-epoch {"epoch", "train_loss", "val_loss", ...}
    train_s: float = 0.0     # seconds spent training so far (steps only: evaluation and saving excluded)
    tokens: int = 0          # training tokens seen so far (the global batch's, in data parallel)


class Trainer:
    """Trains `model` on token arrays; prints (via `log`) what a person watching needs to see."""

    def __init__(self, model, tokenizer, train_tokens, val_tokens, config, log=print, progress=True, world=None):
        backend.tune_host_allocator()  # process-wide malloc thresholds: see its docstring
        self.model, self.tokenizer, self.cfg = model, tokenizer, config
        self.train_tokens, self.val_tokens = train_tokens, val_tokens
        self.world = world                                   # None: one process, no MPI
        self.is_root = world is None or world.is_root        # rank 0 prints and writes
        self.log = log if self.is_root else (lambda *args, **kwargs: None)
        self.progress = progress and self.is_root
        self.grad_sync = None
        if world is not None:
            if config.batch_size % (world.size * config.grad_accum):
                raise ValueError(f"TrainConfig: batch_size {config.batch_size} is not divisible by {world.size} ranks "
                                 f"x grad_accum {config.grad_accum}")
            world.check_same(model_config=asdict(model.config), train_config=asdict(config),
                             tokenizer=tokenizer.to_dict(), train_tokens=np.asarray(train_tokens),
                             val_tokens=np.asarray(val_tokens), dtype=str(model.wte.weight.dtype))
            self.grad_sync = world.gradient_reducer(model.parameters(), int(config.bucket_mb * 2 ** 20),
                                                    overlap=config.overlap_comm)
        self.opt = make_optimizer(model, config)
        self.state = TrainState(epoch_rng=np.random.default_rng(config.seed).bit_generator.state)
        # subtle: measured once; building the batches shuffles every start position (1M of them in
        # the "original" preset, 44 ms), and lr_at() needs the epoch length on every step
        n = len(self.epoch_batches(self.state.epoch_rng))
        self._iters_per_epoch = min(n, config.iters_per_epoch) if config.iters_per_epoch else n
        self.out_dir = Path(config.out_dir)
        self._interrupted = None  # the signal that asked this process to stop (SIGINT or SIGTERM)
        self._agreed_stop = None  # data parallel: the stop every rank agreed on at the last all-reduce
        self._busy = False        # the weights, optimizer or loop state are changing (an early save waits)
        self._save_soon = False   # data parallel, rank 0: a signal asked for a save as soon as that state is whole
        self._saved_at = None     # (step, epoch, batch) of the checkpoint last written
        self._clock = None        # perf_counter() when the training clock (TrainState.train_s) last started
        self.target_reached = None  # the evaluation record whose whole-split val loss met target_val_loss
        self.xp = get_xp(config.device)
        # checked here, not at the first evaluation an epoch later: every estimate draws windows of
        # block_size + 1 tokens from each split
        need = model.config.block_size + 1
        for split, tokens, hint in (("validation", val_tokens, "raise val_fraction (--val-fraction)"),
                                    ("training", train_tokens, "lower val_fraction (--val-fraction)")):
            if len(tokens) < need:
                raise ValueError(f"the {split} split has {len(tokens)} tokens, fewer than block_size + 1 = "
                                 f"{need}, so no batch can be drawn from it: {hint} or use more data")
        check_memory(model.config, config, model.num_parameters(), model.wte.weight.dtype.itemsize,
                     1 if world is None else world.size)

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
        """AdamW's rate at `step` (Muon's is muon_lr times this / lr: MuonWithAdamW.set_lr)."""
        c = self.cfg
        if c.schedule == "wsd":
            return wsd_lr(step, c.lr, c.min_lr, c.warmup_iters, self.total_iters(), c.cooldown_frac)
        return cosine_lr(step, c.lr, c.min_lr, c.warmup_iters, self.total_iters())

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

    def whole_split_loss(self, tokens):
        """The loss over every block_size window of `tokens` (`split_loss`), in batch_size rows (the
        evaluation batch check_memory allows for)."""
        was_training = self.model.training
        self.model.eval()
        try:
            return split_loss(self.model, tokens, self.cfg.batch_size)
        finally:
            self.model.train(was_training)

    def sample(self, seed, prompt="\n", tokens=None):
        ids = np.array([self.tokenizer.encode(prompt)], dtype=np.int64)
        out = self.model.generate(ids, tokens or self.cfg.sample_tokens, temperature=1.0, top_k=None, seed=seed)
        return self.tokenizer.decode(out[0].tolist())

    # ---- checkpoints ------------------------------------------------------------------------
    def save(self):
        """Write the checkpoint (rank 0 only; the other ranks hold the same state)."""
        if not self.is_root:
            return
        runs.save_run(self.out_dir, runs.TRAIN, self.model, self.tokenizer, optimizer_state=self.opt.state_dict(),
                      world_size=1 if self.world is None else self.world.size, train_config=asdict(self.cfg),
                      state=asdict(self.state), dropout_rng=checkpoint.rng_state(self.model.drop_rng))
        self._saved_at = (self.state.step, self.state.epoch, self.state.batch)

    def restore(self, meta, optimizer_state):
        """Continue from a checkpoint `check_resumable` accepted; drops metrics of replayed steps."""
        self.opt.load_state_dict(optimizer_state)
        self.state = TrainState(**meta["state"])
        self.model.drop_rng.bit_generator.state = meta["dropout_rng"]
        self._drop_metrics_after(self.state.step)

    def _drop_metrics_after(self, step):
        """After a crash the steps since the last checkpoint run again: keep one record per step."""
        path = self.out_dir / "metrics.jsonl"
        if not path.is_file():
            return
        kept = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut by the crash
                continue
            if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
                kept.append(line)
        text = "".join(line + "\n" for line in kept)
        checkpoint.write_atomic(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))

    def sync_from_root(self):
        """Data parallel: every rank takes rank 0's parameters, optimizer moments and loop state."""
        w = self.world
        w.broadcast_arrays([p.data for p in self.model.parameters()] + self.opt.state_arrays())
        t, state, drop = w.bcast((self.opt.t, asdict(self.state), self.model.drop_rng.bit_generator.state))
        self.opt.t, self.state = t, TrainState(**state)
        self.model.drop_rng.bit_generator.state = drop

    def _metrics(self, record):
        if not self.is_root:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.out_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def _kept_checkpoint(self):
        """What a run that stops without saving leaves behind, for its message."""
        path = self.out_dir / checkpoint.JSON_NAME
        try:
            step = json.loads(path.read_text(encoding="utf-8"))["meta"]["state"]["step"]
        except (OSError, ValueError, KeyError, TypeError):
            step = None
        if not path.is_file():
            return f"and no checkpoint exists in {self.out_dir} (none was saved before this step)"
        return f"the last good checkpoint in {self.out_dir}" + (f" (step {step})" if step is not None else "") \
            + " is kept"

    # ---- the loop ---------------------------------------------------------------------------
    def _on_signal(self, signum, frame):
        if self._interrupted is not None:  # a second signal: stop now, without saving
            raise KeyboardInterrupt
        self._interrupted = signum  # one assignment: _reduce_loss_and_stop reads it once
        name = "interrupt" if signum == signal.SIGINT else "terminate"
        self.log(f"\n{name}: finishing this step, then saving a checkpoint (Ctrl-C again to abort)")
        if self.world is not None and self.is_root:
            # subtle: mpirun, when it is signalled itself, sends the ranks SIGTERM and SIGKILL 0.25 s
            # later (README): rank 0 writes the last finished step now, before the ranks agree to stop
            self._save_soon = True
            if not self._busy:
                self._save_early()

    def _save_early(self):
        """Rank 0's save of the last finished step on a signal; the agreed stop saves again after its step."""
        self._save_soon = False
        if self._saved_at != (self.state.step, self.state.epoch, self.state.batch):
            try:
                self.save()
            except OSError:
                pass  # the save after the agreed stop tries again and reports

    def _idle(self):
        """The end of a change to the weights, optimizer or loop state: a save a signal asked for now runs."""
        self._busy = False
        if self._save_soon:
            self._save_early()

    def _stopping(self):
        """The signal to stop after this step for (SIGINT, SIGTERM), or None to go on.

        One process: the signal this process received. Data parallel: only what every rank agreed
        on at the last step's all-reduce; subtle: a signal that lands after it waits for the next
        step's, else this rank would stop one step before the others and wait for them in a
        collective for ever.
        """
        return self._interrupted if self.world is None else self._agreed_stop

    def _stopped(self):
        return "terminated" if self._stopping() == signal.SIGTERM else "interrupted"

    def train(self):
        """Run the remaining epochs. Returns "done", "interrupted" (SIGINT, Ctrl-C) or "terminated"
        (SIGTERM, as schedulers and `docker stop` send): both save a checkpoint first. Raises
        NonFiniteLoss."""
        from tqdm import tqdm

        total = self.total_iters()
        per_epoch = self.iters_per_epoch()
        previous_handlers = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        if self.world is not None:
            self.sync_from_root()  # a resumed rank 0's state (or its fresh one) on every rank
        model, opt, st, cfg = self.model, self.opt, self.state, self.cfg
        model.train()
        self.target_reached = None
        self._clock_start()
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
                    if self.world is not None:  # each rank its own dropout masks, the same on a resume
                        self.world.seed_dropout(model.drop_rng, cfg.seed, st.step)
                    loss = self._forward_backward(x, y)
                    log_now = (st.step + 1) % cfg.log_every == 0 or st.batch + 1 == steps_this_epoch
                    norms = grad_norms(model) if cfg.log_grad_norms and log_now and self.is_root else None
                    if cfg.grad_clip:
                        clip_grad_norm(model.parameters(), cfg.grad_clip)
                    loss_value = float(loss) if (log_now or cfg.device == "cpu") and loss is not None else None
                    if self.world is not None:
                        loss_value = self._reduce_loss_and_stop(loss_value, log_now)
                    if loss_value is not None and not math.isfinite(loss_value):
                        raise NonFiniteLoss(f"loss is {loss_value} at step {st.step + 1} (epoch {st.epoch + 1}, "
                                            f"batch {st.batch + 1}); stopping without saving, "
                                            + self._kept_checkpoint())
                    self._busy = True
                    opt.step()
                    st.step += 1
                    st.batch += 1
                    st.tokens += x.size
                    tokens_since += x.size
                    bar.update(1)
                    if log_now:
                        now = time.perf_counter()
                        tok_s = tokens_since / max(now - t_last, 1e-9)
                        bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}")
                        record = {"step": st.step, "epoch": st.epoch + 1, "loss": loss_value, "lr": lr,
                                  "tokens_per_s": round(tok_s, 1)}
                        if norms is not None:
                            record["grad_norms"] = norms
                        self._metrics(record)
                        t_last, tokens_since = now, 0
                    self._idle()
                    # not at the epoch's (or the run's) last step: the epoch's own evaluation follows at once
                    if cfg.eval_every and st.step % cfg.eval_every == 0 and st.batch < steps_this_epoch:
                        self._clock_stop()
                        self._evaluate(bar, f"step {st.step}")
                        self._clock_start()
                    if self._stopping() is not None or st.step >= total or self.target_reached:
                        break
                bar.close()
                self._clock_stop()
                if self.target_reached and st.batch < steps_this_epoch:
                    self._busy = True
                    self.save()
                    self._idle()
                    self._barrier()
                    return "done"
                if self._stopping() is not None and st.batch < steps_this_epoch:
                    self._busy = True
                    self.save()
                    self._idle()
                    self.log(f"stopped at step {st.step} (epoch {st.epoch + 1}, batch {st.batch}); checkpoint saved "
                             f"to {self.out_dir}; continue with --resume")
                    self._barrier()
                    return self._stopped()
                record = self._evaluate(None, f"epoch {st.epoch + 1}") if not self.target_reached else None
                self._busy = True
                if record is not None:
                    record.update(epoch=st.epoch + 1)
                    st.history.append(record)
                # the next epoch: a new shuffle from a generator that follows on from this one
                next_rng = checkpoint.restore_rng(st.epoch_rng)
                next_rng.random()  # advance so each epoch's shuffle differs
                st.epoch_rng = np.random.default_rng(next_rng.integers(2 ** 63)).bit_generator.state
                st.epoch += 1
                st.batch = 0
                self.save()
                self._idle()
                self._barrier()
                if self.target_reached:
                    return "done"
                if self._stopping() is not None:
                    self.log(f"stopped after epoch {st.epoch}; checkpoint saved to {self.out_dir}")
                    return self._stopped()
                self._clock_start()
            return "done"
        finally:
            for sig, handler in previous_handlers.items():
                signal.signal(sig, handler)

    def _barrier(self):
        if self.world is not None:
            self.world.barrier()   # rank 0 has written the checkpoint; every rank goes on together

    def _reduce_loss_and_stop(self, loss_value, log_now):
        """Data parallel, once per step: sum the ranks' weighted losses and their stop requests.

        Every rank then holds the global batch's loss (for the non-finite check and the log) and
        stops after this step if any rank was asked to; SIGTERM on any rank outranks SIGINT on
        another, so every rank exits with the same status (143, else 130).
        """
        want_loss = log_now or self.cfg.device == "cpu"
        asked = self._interrupted  # read once: a signal may land while the all-reduce runs
        total, n_int, n_term = self.world.sum_host([(loss_value or 0.0) if want_loss else 0.0,
                                                    float(asked is not None and asked != signal.SIGTERM),
                                                    float(asked == signal.SIGTERM)])
        self._agreed_stop = signal.SIGTERM if n_term else signal.SIGINT if n_int else None
        return float(total) if want_loss else None

    def micro_batches(self, x, y):
        """(x_i, y_i, weight_i) for the micro-batches of one batch: grad_accum row ranges of x (B, T).

        weight_i = rows_i / B, so sum_i weight_i * mean-loss_i is the mean loss of the whole batch;
        np.array_split keeps them exact when a short last batch does not divide evenly (empty
        pieces are left out).
        """
        rows = x.shape[0]
        mine = np.arange(rows)
        if self.world is not None:  # this rank's slice of the global batch
            from tinygrad_gpt.distributed import shard
            mine = shard(rows, self.world.rank, self.world.size)
        return [(x[r], y[r], len(r) / rows) for r in np.array_split(mine, self.cfg.grad_accum) if len(r)]

    def _forward_backward(self, x, y):
        """Forward and backward over the micro-batches of (x, y); returns the batch's mean loss.

        The loss comes back as a 0-d array on the model's device (no host sync on the GPU).
        """
        total = None
        pieces = self.micro_batches(x, y)
        for k, (xm, ym, weight) in enumerate(pieces):
            _, loss = self.model(xm, self.xp.asarray(ym))   # xm (numpy) is range-checked on the host, then uploaded
            w = loss.dtype.type(weight)
            if self.grad_sync is not None and k == len(pieces) - 1:
                self.grad_sync.arm()  # the last backward of the step: buckets may start from its hooks
            # d(total)/d(loss_i) = weight_i: the gradient of the whole batch's mean accumulates
            loss.backward(self.xp.full(loss.shape, w, dtype=loss.dtype))
            total = loss.data * w if total is None else total + loss.data * w
        if self.grad_sync is not None:
            self.grad_sync.reduce()   # the summed weighted gradients: the global batch's mean gradient
        return total

    def _clock_start(self):
        self._clock = time.perf_counter()

    def _clock_stop(self):
        """Add the seconds since _clock_start to TrainState.train_s (evaluation and saving run stopped)."""
        if self._clock is not None:
            self.state.train_s += time.perf_counter() - self._clock
            self._clock = None

    def _evaluate(self, bar, label):
        """Estimate the train and val loss, print a sample; with target_val_loss, also the loss over
        the whole validation split, and mark the target reached when it is <= target_val_loss
        (data parallel: rank 0 decides, every rank learns it). Returns the record."""
        st, target = self.state, self.cfg.target_val_loss
        record = {"step": st.step}
        if self.is_root:  # rank 0 evaluates and samples; the others wait at the next collective
            t0 = time.perf_counter()
            train_loss = self.estimate_loss(self.train_tokens, seed=1)
            val_loss = self.estimate_loss(self.val_tokens, seed=2)
            whole = self.whole_split_loss(self.val_tokens) if target is not None else None
            text = self.sample(seed=self.cfg.seed + st.step)
            record.update(train_loss=round(train_loss, 4), val_loss=round(val_loss, 4))
            if whole is not None:
                record["whole_val_loss"] = round(whole, 4)
            record.update(train_s=round(st.train_s, 3), tokens=st.tokens, eval_s=round(time.perf_counter() - t0, 2))
            self._metrics(dict(record, label=label))
            self.log(f"{label}: step {st.step}, train loss {train_loss:.4f}, val loss {val_loss:.4f}"
                     + (f", whole-split val loss {whole:.4f} (target {target:g})" if whole is not None else ""))
            self.log(f"--- sample ---\n{text}\n--------------")
            if whole is not None and whole <= target:
                self.target_reached = record
        if target is not None and self.world is not None:
            self.target_reached = self.world.bcast(self.target_reached)
        return record


# what a continued run must keep: they decide which tokens form the training and validation splits,
# what "batch 17 of epoch 3" (the saved position) means, and whose state the saved optimizer state
# is; every other TrainConfig flag may change
RESUME_FIXED = ("batch_size", "epoch_mode", "iters_per_epoch", "val_fraction", "init_from", "optimizer")


def resume_configs(saved, directory, flags, preset=None):
    """(GPTConfig, TrainConfig) of a run continued from a checkpoint: its own settings, `flags` applied.

    saved: the checkpoint's meta (its "model_config" and "train_config"). flags: {field: value} of
    the GPTConfig and TrainConfig flags given on the command line (a preset's values are not
    flags: a continued run keeps what it was trained with). A flag may change what a run can
    change as it goes on (max_iters, epochs, the learning-rate schedule, logging, ...); one that
    contradicts the checkpoint's model or a RESUME_FIXED field is refused, naming the flag and
    both values, and so is a `preset` (given explicitly) whose model differs.
    """
    from tinygrad_gpt.cli import flag_name
    model_saved = asdict(GPTConfig(**saved["model_config"]))  # a field newer than the checkpoint: its default
    train_names = {f.name for f in fields(TrainConfig)}
    train_saved = {k: v for k, v in saved["train_config"].items() if k in train_names}
    defaults = asdict(TrainConfig())
    problems = []
    for name, value in flags.items():
        if name in model_saved and value != model_saved[name]:
            problems.append(f"{flag_name(name)} {model_saved[name]!r} (this command gives {value!r})")
        elif name in RESUME_FIXED and value != train_saved.get(name, defaults[name]):
            problems.append(f"{flag_name(name)} {train_saved.get(name, defaults[name])!r} (this command gives "
                            f"{value!r})")
    if preset is not None:
        for name, value in PRESETS[preset][0].items():
            if name not in flags and value != model_saved[name]:
                problems.append(f"{flag_name(name)} {model_saved[name]!r} (--preset {preset} gives {value!r})")
    if problems:
        raise ValueError(f"--resume: the checkpoint in {directory} was trained with " + ", ".join(problems)
                         + "; leave these out to continue with the checkpoint's settings")
    train_kw = dict(train_saved)
    train_kw.update((k, v) for k, v in flags.items() if k in train_names)
    return GPTConfig(**model_saved), TrainConfig(**train_kw)
