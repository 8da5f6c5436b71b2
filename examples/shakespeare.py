"""Train a character-level GPT on tiny Shakespeare, or sample from a trained one.

    python examples/shakespeare.py                       # the cpu preset, 5 epochs
    python examples/shakespeare.py --preset tiny         # seconds: a smoke test
    python examples/shakespeare.py --max-iters 2000      # the cpu benchmark run
    python examples/shakespeare.py --preset gpu --device cuda --max-iters 5000 --eval-every 500
    python examples/shakespeare.py --resume              # continue the run in --out
    python examples/shakespeare.py --sample --prompt "ROMEO:"

Prints an untrained sample first, then a progress bar per epoch and, after each epoch, the train
and validation loss and a sample. Checkpoints (safetensors + JSON, atomic) go to --out after every
epoch, on Ctrl-C or SIGTERM, and at the end; metrics.jsonl beside them. Every GPTConfig and
TrainConfig field is a flag (tinygrad_gpt/cli.py), range-checked before anything runs. Exit status:
0 done, 1 runtime error, 2 usage error, 3 non-finite loss, 130 Ctrl-C, 143 SIGTERM.

Follows: nanoGPT's train.py and sample.py, one script. Deliberately does not: read config files
(every setting is a flag; presets fill in the rest).
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import numpy as np  # noqa: E402

from tinygrad_gpt import backend, checkpoint, cli, data  # noqa: E402
from tinygrad_gpt.model import GPTConfig  # noqa: E402
from tinygrad_gpt.tokenizers.char import CharTokenizer  # noqa: E402
from tinygrad_gpt.model import GPT  # noqa: E402
from tinygrad_gpt.train import (PRESETS, NonFiniteLoss, Trainer, TrainConfig, check_resumable, load_model,  # noqa: E402
                                preset_configs, tokenizer_of)


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
    p.add_argument("--num-tokens", type=cli.bounded(int, ge=1), default=500, help="tokens to sample with --sample")
    p.add_argument("--temperature", type=cli.bounded(float, gt=0), default=0.8)
    p.add_argument("--top-k", type=cli.bounded(int, ge=1), default=None)
    p.add_argument("--top-p", type=cli.bounded(float, gt=0, le=1), default=None)
    p.add_argument("--tokenizer", choices=["char", "bpe"], default=None,
                   help="char (default), or bpe; --resume takes the checkpoint's")
    p.add_argument("--vocab-size", type=cli.bounded(int, ge=257), default=None,
                   help="BPE vocabulary size with --tokenizer bpe (default 512)")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs, CI)")
    cli.add_flags(p, GPTConfig, title="model (default: from the preset)")
    cli.add_flags(p, TrainConfig, title="training (default: from the preset)")
    return p


def load_tokens(args, tokenizer=None, source=None):
    """(tokenizer, tokens) of the data; with `tokenizer` (a checkpoint's), the data must fit it."""
    path = data.find_data(args.data)
    text = data.load_text(path)
    if tokenizer is not None:
        return tokenizer, encode_for(tokenizer, text, path, source)
    if args.tokenizer in (None, "char"):
        tokenizer = CharTokenizer.from_text(text)
        return tokenizer, tokenizer.encode_array(text)
    from tinygrad_gpt.tokenizers import RegexTokenizer
    train_part = text[:int(len(text) * 0.9)]
    tokenizer = RegexTokenizer()
    tokenizer.train(train_part, args.vocab_size or 512)
    return tokenizer, np.asarray(tokenizer.encode(text), dtype=np.int64)


def encode_for(tokenizer, text, path, source):
    """`text` in `tokenizer`'s ids; characters its alphabet lacks are a usage error, all named."""
    if isinstance(tokenizer, CharTokenizer):
        alphabet = set(tokenizer.chars)
        present = set(text)
        unknown = sorted(present - alphabet)
        if unknown:
            absent = sorted(alphabet - present)
            raise ValueError(f"--resume: --data {path} has {len(unknown)} character(s) that the tokenizer of "
                             f"the checkpoint in {source} does not know: {''.join(unknown[:40])!r}"
                             + (f" (and lacks {''.join(absent[:40])!r}, which it knows)" if absent else "")
                             + "; train a new run (another --out) for this text")
        return tokenizer.encode_array(text)
    return np.asarray(tokenizer.encode(text), dtype=np.int64)


def sample_only(args, out_dir):
    model, meta, _ = load_model(out_dir, device=args.device)
    tokenizer = tokenizer_of(meta, out_dir)
    prompt = tokenizer.encode(args.prompt)
    if not prompt:
        raise ValueError("--prompt must hold at least one character")
    ids = model.generate(np.array([prompt]), args.num_tokens, temperature=args.temperature, top_k=args.top_k,
                         top_p=args.top_p, seed=getattr(args, "seed", 0))
    print(tokenizer.decode(ids[0].tolist()))
    return 0


def main(argv=None):
    from tinygrad_gpt.backend import tune_host_allocator
    tune_host_allocator()  # glibc's malloc thresholds, for this process: see backend.py
    parser = build_parser()
    args = parser.parse_args(argv)
    out_dir = Path(args.out or f"out/shakespeare-{args.preset}")
    backend.get_xp(args.device)  # fail early, with the install hint, if cuda is not usable
    if args.sample:
        return sample_only(args, out_dir)

    resumed = None
    if args.resume:
        # the checkpoint first: its kind and tokenizer decide how the data is read (no BPE retraining)
        resumed = load_model(out_dir, device=args.device)
        check_resumable(resumed[1], out_dir, tokenizer=args.tokenizer, vocab_size=args.vocab_size)
        tokenizer, tokens = load_tokens(args, tokenizer_of(resumed[1], out_dir), out_dir)
    else:
        checkpoint.check_writable(out_dir, "--out")  # before any work: a read-only or file --out
        tokenizer, tokens = load_tokens(args)
    overrides = cli.values_from(args, cli.flag_fields(GPTConfig) + cli.flag_fields(TrainConfig))
    overrides.update(device=args.device, out_dir=str(out_dir))
    try:
        gpt_cfg, train_cfg = preset_configs(args.preset, tokenizer.vocab_size, **overrides)
    except ValueError as exc:
        parser.error(str(exc))
    train_tokens, val_tokens = data.split_train_val(tokens, train_cfg.val_fraction)
    dtype = np.float32 if args.dtype == "float32" else np.float64

    model = GPT(gpt_cfg, seed=train_cfg.seed, dtype=dtype, device=args.device)
    trainer = Trainer(model, tokenizer, train_tokens, val_tokens, train_cfg, progress=not args.no_progress)
    if resumed is not None:
        loaded, meta, optimizer_state = resumed
        differ = {k: (meta["model_config"][k], v) for k, v in gpt_cfg.__dict__.items() if meta["model_config"][k] != v}
        if differ:
            raise ValueError("--resume: the checkpoint in " + str(out_dir) + " was trained with " + ", ".join(
                f"{cli.flag_name(k)} {old!r} (these flags give {new!r})" for k, (old, new) in differ.items()))
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
    if result != "done":
        return cli.exit_status(result)
    for record in trainer.state.history:
        print(f"epoch {record['epoch']}: train loss {record['train_loss']:.4f}, val loss {record['val_loss']:.4f}")
    print(f"checkpoint: {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
