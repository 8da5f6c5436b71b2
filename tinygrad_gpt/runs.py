"""Saved runs: what a run directory holds, writing it, reading and checking it.

A run directory is a checkpoint (checkpoint.py: safetensors weights, a JSON record with the
meta, atomic writes) whose meta says what the run was:

    kind          "train" (a training run: resumable), "sft" (a chat-tuned run, tinygrad_gpt/sft.py),
                  "rlhf-<method>" (a policy an RLHF method tuned: sampled from, or tuned further,
                  never resumed as training) or "reward-model" (rlhf/reward_model.py); see KINDS
    model_config  the GPTConfig fields, each checked on load (absent for a reward model without a GPT)
    tokenizer     the tokenizer's to_dict(), so a run encodes and decodes text by itself
    world_size    how many processes wrote it (data parallel)
    ...           what the kind adds: a training run's train_config, loop state and dropout
                  generator (train.Trainer.save), an RLHF run's method config and step

`save_run` writes one (Trainer.save and the RLHF trainers call it), `load_model` reads one back as
a GPT after `check_meta` has checked every field it needs (errors name the file and the field),
`tokenizer_of` rebuilds its tokenizer, and `check_resumable` says whether --resume may continue
it. Which command reads which kind is the commands' business: the library names kinds, not scripts.

Follows: nanochat's checkpoint manager (one module that saves and loads every kind of run).
Deliberately does not: know the scripts, the training loop or the RL methods (their configs are
stored as given and checked by their owners), or keep several checkpoints of one run.
"""
from dataclasses import asdict, fields
from pathlib import Path

from tinygrad_gpt import checkpoint
from tinygrad_gpt.model import GPT, GPTConfig

METRICS = "metrics.jsonl"  # one JSON record per logged step, beside the checkpoint
TRAIN = "train"  # the kind train.Trainer.save writes; only these can be resumed
SFT = "sft"      # the kind sft.SFTTrainer.save writes: a chat-tuned run (its own --resume continues it)
REWARD_MODEL = "reward-model"  # the kind rlhf.save_reward_model writes: a response's score, learned from pairs
RLHF_METHODS = ("ppo", "grpo", "rloo", "dpo")
KINDS = {TRAIN: "a training run (resumable)",
         SFT: "a chat-tuned run (supervised on conversations; chat with it, or continue its tuning)",
         REWARD_MODEL: "a reward model (scores responses; RLHF optimises it with --reward-model DIR)",
         **{f"rlhf-{m}": f"a policy tuned by RLHF ({m}; sample from it or tune it further)" for m in RLHF_METHODS}}


# subtle: GPTConfig fields that came after the first checkpoints; a checkpoint without one was
# written before it existed, so with its default (1e-5; GPT-2's architecture), which GPTConfig fills in
NEWER_MODEL_FIELDS = ("layer_norm_epsilon", "position", "rope_base", "norm", "qk_norm", "activation",
                      "logit_softcap", "zero_init")


def _meta_error(directory, message):
    return checkpoint.CheckpointError(f"{Path(directory) / checkpoint.JSON_NAME}: {message}")


def save_run(directory, kind, model, tokenizer, optimizer_state=None, tensors=None, world_size=1, **meta):
    """Write `model` as a run of `kind` into `directory` (atomically: see checkpoint.save_checkpoint).

    tensors: {role: {name: array}} saved beside the model (PPO's value head), read back with
    checkpoint.load_tensors. meta: what the kind adds (JSON-serialisable, or arrays: checkpoint.py
    stores those apart).
    """
    if kind not in KINDS:
        raise ValueError(f"save_run: kind {kind!r} is not one of {sorted(KINDS)}")
    # subtle: a model without a GPT config (the words reward model) saves no model_config
    config = {"model_config": asdict(model.config)} if getattr(model, "config", None) is not None else {}
    record = {"kind": kind, **config, "tokenizer": tokenizer.to_dict(), "world_size": world_size, **meta}
    return checkpoint.save_checkpoint(directory, model.state_dict(), record, optimizer_state=optimizer_state,
                                      tensors=tensors)


def start_fresh(directory, overwrite):
    """A fresh run into `directory` (locked by the caller): refused if it holds a run (a checkpoint or
    metrics), unless `overwrite`, which deletes that run's checkpoint and metrics first."""
    directory = Path(directory)
    held = [name for name in (checkpoint.JSON_NAME, METRICS) if (directory / name).exists()]
    if held and not overwrite:
        raise ValueError(f"--out {directory} already holds a run ({', '.join(held)}): continue it with --resume, "
                         f"start afresh there with --overwrite (which deletes it), or choose another --out")
    if held:
        checkpoint.remove_checkpoint(directory)
        (directory / METRICS).unlink(missing_ok=True)


def tokenizer_of(meta, directory):
    """The tokenizer `meta["tokenizer"]` describes (meta as load_model returned it, so already checked)."""
    from tinygrad_gpt.tokenizers import tokenizer_from_dict
    if "tokenizer" not in meta:
        raise _meta_error(directory, "meta.tokenizer is missing: the checkpoint cannot encode or decode text")
    try:
        return tokenizer_from_dict(meta["tokenizer"])
    except (KeyError, TypeError, ValueError) as exc:
        raise _meta_error(directory, f"meta.tokenizer is not a valid tokenizer: {exc}") from None


def check_meta(meta, directory):
    """Raise CheckpointError naming the field unless `meta` describes a GPT this code can build.

    Checks meta.model_config (exactly GPTConfig's fields, each in range), meta.tokenizer if there
    is one (rebuildable, its vocabulary the model's vocab_size), meta.kind, and meta.world_size if
    there is one (a positive integer). Returns the GPTConfig.
    """
    config = meta.get("model_config")
    if not isinstance(config, dict):
        raise _meta_error(directory, "meta.model_config is missing or not an object")
    names = {f.name for f in fields(GPTConfig)}
    unknown = sorted(set(config) - names)
    missing = sorted(names - set(config) - set(NEWER_MODEL_FIELDS))
    if unknown or missing:
        raise _meta_error(directory, "meta.model_config " + "; ".join(
            part for part in (f"has unknown field(s) {unknown}" if unknown else "",
                              f"lacks field(s) {missing}" if missing else "") if part))
    try:
        gpt_config = GPTConfig(**config)
    except ValueError as exc:
        raise _meta_error(directory, f"meta.model_config: {exc}") from None
    # subtle: a tokenizer is optional (weights saved by hand need none); tokenizer_of reports its absence
    tokenizer = tokenizer_of(meta, directory) if "tokenizer" in meta else None
    if tokenizer is not None and tokenizer.vocab_size != gpt_config.vocab_size:
        raise _meta_error(directory, f"meta.tokenizer has {tokenizer.vocab_size} tokens but meta.model_config."
                                     f"vocab_size is {gpt_config.vocab_size}: the checkpoint is inconsistent")
    kind = meta.get("kind", TRAIN)
    if kind not in KINDS:
        raise _meta_error(directory, f"meta.kind {kind!r} is not one of {sorted(KINDS)}")
    world_size = meta.get("world_size", 1)  # absent from checkpoints that one process wrote by hand
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise _meta_error(directory, f"meta.world_size must be an integer >= 1 (the number of processes that "
                                     f"trained it), got {world_size!r}")
    return gpt_config


def check_resumable(meta, directory, tokenizer=None, vocab_size=None, readers=None):
    """Raise ValueError unless `meta` (checked by load_model) is a training run --resume can continue.

    tokenizer / vocab_size: what the command line asked for (None = not given); they must agree
    with the checkpoint's tokenizer, which a resumed run always keeps. readers: {kind: what reads
    it}, from the calling script, for the message when the run is of another kind.
    """
    kind = meta.get("kind", TRAIN)
    if kind != TRAIN:
        hint = f" ({readers[kind]})" if readers and kind in readers else ""
        raise ValueError(f"--resume: {directory} holds {KINDS[kind]} (meta.kind {kind!r}){hint}, not a training "
                         f"run that --resume can continue; choose another --out")
    for key in ("state", "dropout_rng", "train_config"):
        if key not in meta:
            raise _meta_error(directory, f"meta.{key} is missing, which --resume needs")
    saved = meta["tokenizer"].get("type", "bpe") if isinstance(meta["tokenizer"], dict) else None
    if tokenizer is not None and tokenizer != saved:
        raise ValueError(f"--resume: --tokenizer {tokenizer}, but the checkpoint in {directory} was trained with "
                         f"--tokenizer {saved}; leave --tokenizer out to use the checkpoint's")
    if vocab_size is not None:
        have = tokenizer_of(meta, directory).vocab_size
        if vocab_size != have:
            raise ValueError(f"--resume: --vocab-size {vocab_size}, but the checkpoint's tokenizer has {have} "
                             f"tokens; leave --vocab-size out to use the checkpoint's")


def load_model(directory, device="cpu"):
    """(model, meta, optimizer_state) from a run directory of any kind; the meta is checked first
    (CheckpointError naming the field), `tokenizer_of(meta, directory)` gives the tokenizer. The
    model is built once, without a random initialisation, and takes the saved weights."""
    state_dict, optimizer_state, meta = checkpoint.load_checkpoint(directory)
    if meta.get("kind") == REWARD_MODEL:
        raise _meta_error(directory, f"meta.kind {REWARD_MODEL!r}: it holds {KINDS[REWARD_MODEL]}, not a GPT to "
                                     f"sample from or tune (read it with rlhf.load_reward_model)")
    config = check_meta(meta, directory)
    dtype = next(iter(state_dict.values())).dtype
    model = GPT(config, seed=0, dtype=dtype, device=device, init=False)  # every weight is loaded next
    try:
        model.load_state_dict(state_dict)
    except (KeyError, ValueError) as exc:
        raise _meta_error(directory, f"the weights do not fit meta.model_config: {exc}") from None
    return model, meta, optimizer_state
