"""Train a character-level GPT on tiny Shakespeare, or sample from a trained one.

    python examples/shakespeare.py                       # the cpu preset, 5 epochs
    python examples/shakespeare.py --preset tiny         # seconds: a smoke test
    python examples/shakespeare.py --max-iters 2000      # the cpu benchmark run
    python examples/shakespeare.py --preset gpu --device cuda --max-iters 5000 --eval-every 500
    python examples/shakespeare.py --resume              # continue the run in --out
    python examples/shakespeare.py --sample --prompt "ROMEO:"

Prints an untrained sample first, then a progress bar per epoch and, after each epoch, the train
and validation loss and a sample. Checkpoints (safetensors + JSON, atomic) go to --out after every
epoch, on Ctrl-C, and at the end; metrics.jsonl beside them.

Follows: nanoGPT's train.py and sample.py, one script. Deliberately does not: read config files
(every setting is a flag; presets fill in the rest).
"""
import argparse
import sys
from dataclasses import fields
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import numpy as np  # noqa: E402

from tinygrad_gpt import backend, data  # noqa: E402
from tinygrad_gpt.model import GPT, GPTConfig  # noqa: E402
from tinygrad_gpt.tokenizers import tokenizer_from_dict  # noqa: E402
from tinygrad_gpt.tokenizers.char import CharTokenizer  # noqa: E402
from tinygrad_gpt.train import PRESETS, NonFiniteLoss, Trainer, TrainConfig, load_model, preset_configs  # noqa: E402


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    p.add_argument("--device", choices=backend.DEVICES, default="cpu")
    p.add_argument("--data", default=None, help="path to tinyshakespeare.txt (else $TINYSHAKESPEARE, cache, download)")
    p.add_argument("--out", default=None, help="checkpoint directory (default out/shakespeare-<preset>)")
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    p.add_argument("--sample", action="store_true", help="only sample from the checkpoint in --out")
    p.add_argument("--prompt", default="\n")
    p.add_argument("--num-tokens", type=int, default=500, help="tokens to sample with --sample")
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--tokenizer", choices=["char", "bpe"], default="char")
    p.add_argument("--vocab-size", type=int, default=512, help="BPE vocabulary size with --tokenizer bpe")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs, CI)")
    model = p.add_argument_group("model (default: from the preset)")
    for f in fields(GPTConfig):
        if f.name == "vocab_size":
            continue
        kind = (lambda s: s.lower() in ("1", "true", "yes")) if f.type in (bool, "bool") else \
            (float if f.type in (float, "float") else int)
        model.add_argument("--" + f.name.replace("_", "-"), type=kind, default=None)
    train = p.add_argument_group("training (default: from the preset)")
    for f in fields(TrainConfig):
        if f.name in ("device", "out_dir"):
            continue
        kind = str if f.name == "epoch_mode" else float if f.name in (
            "lr", "min_lr", "weight_decay", "beta1", "beta2", "grad_clip", "val_fraction") else int
        train.add_argument("--" + f.name.replace("_", "-"), type=kind, default=None)
    return p


def load_tokens(args):
    path = data.find_data(args.data)
    text = data.load_text(path)
    if args.tokenizer == "char":
        tokenizer = CharTokenizer.from_text(text)
        tokens = tokenizer.encode_array(text)
    else:
        from tinygrad_gpt.tokenizers import RegexTokenizer
        train_part = text[:int(len(text) * 0.9)]
        tokenizer = RegexTokenizer()
        tokenizer.train(train_part, args.vocab_size)
        tokens = np.asarray(tokenizer.encode(text), dtype=np.int64)
    return tokenizer, tokens


def sample_only(args, out_dir):
    model, meta, _ = load_model(out_dir, device=args.device)
    tokenizer = tokenizer_from_dict(meta["tokenizer"])
    prompt = tokenizer.encode(args.prompt)
    if not prompt:
        raise ValueError("--prompt must hold at least one character")
    ids = model.generate(np.array([prompt]), args.num_tokens, temperature=args.temperature, top_k=args.top_k,
                         top_p=args.top_p, seed=args.seed if args.seed is not None else 0)
    print(tokenizer.decode(ids[0].tolist()))


def main(argv=None):
    from tinygrad_gpt.backend import tune_host_allocator
    tune_host_allocator()  # glibc's malloc thresholds, for this process: see backend.py
    args = build_parser().parse_args(argv)
    out_dir = Path(args.out or f"out/shakespeare-{args.preset}")
    backend.get_xp(args.device)  # fail early, with the install hint, if cuda is not usable
    if args.sample:
        return sample_only(args, out_dir)

    tokenizer, tokens = load_tokens(args)
    overrides = {f.name: getattr(args, f.name) for f in fields(GPTConfig) if f.name != "vocab_size"}
    overrides.update({f.name: getattr(args, f.name) for f in fields(TrainConfig)
                      if f.name not in ("device", "out_dir")})
    overrides.update(device=args.device, out_dir=str(out_dir))
    gpt_cfg, train_cfg = preset_configs(args.preset, tokenizer.vocab_size, **overrides)
    train_tokens, val_tokens = data.split_train_val(tokens, train_cfg.val_fraction)
    dtype = np.float32 if args.dtype == "float32" else np.float64

    model = GPT(gpt_cfg, seed=train_cfg.seed, dtype=dtype, device=args.device)
    trainer = Trainer(model, tokenizer, train_tokens, val_tokens, train_cfg, progress=not args.no_progress)
    if args.resume:
        loaded, meta, optimizer_state = load_model(out_dir, device=args.device)
        if meta["model_config"] != {**gpt_cfg.__dict__}:
            raise ValueError(f"--resume: the checkpoint in {out_dir} was trained with {meta['model_config']}, "
                             f"these flags give {gpt_cfg.__dict__}")
        model.load_state_dict(loaded.state_dict())
        trainer.restore(meta, optimizer_state)
        print(f"resumed from {out_dir} at step {trainer.state.step} (epoch {trainer.state.epoch + 1}, "
              f"batch {trainer.state.batch})")
    else:
        print(f"tiny Shakespeare: {len(tokens):,} tokens ({len(train_tokens):,} train, {len(val_tokens):,} val), "
              f"vocabulary {tokenizer.vocab_size}")
        print(f"model: {gpt_cfg}, {model.num_parameters():,} parameters, device {args.device}")
        print(f"training: {trainer.total_iters():,} steps, {trainer.iters_per_epoch():,} per epoch, "
              f"batch {train_cfg.batch_size} x block {gpt_cfg.block_size}")
        print(f"--- untrained sample ---\n{trainer.sample(seed=train_cfg.seed)}\n------------------------")
    try:
        result = trainer.train()
    except NonFiniteLoss as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    if result == "interrupted":
        return 130
    for record in trainer.state.history:
        print(f"epoch {record['epoch']}: train loss {record['train_loss']:.4f}, val loss {record['val_loss']:.4f}")
    print(f"checkpoint: {out_dir}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ValueError, FileNotFoundError, RuntimeError, IndexError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("aborted", file=sys.stderr)
        sys.exit(130)
