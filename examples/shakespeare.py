"""Train a character-level GPT on tiny Shakespeare, or sample from a trained one.

    python examples/shakespeare.py                       # the cpu preset, 5 epochs
    python examples/shakespeare.py --preset tiny         # seconds: a smoke test
    python examples/shakespeare.py --max-iters 2000      # the cpu benchmark run
    python examples/shakespeare.py --preset speedrun --target-val-loss 1.60   # train until the loss is reached
    python examples/shakespeare.py --preset gpu --device cuda --max-iters 5000 --eval-every 500
    python examples/shakespeare.py --resume              # continue the run in --out
    python examples/shakespeare.py --sample --prompt "ROMEO:"
    python examples/shakespeare.py --init-from gpt2 --sample --prompt "ROMEO:"   # a Hugging Face GPT-2 folder
    python examples/shakespeare.py --init-from gpt2 --out out/ft                 # fine-tune it (preset finetune)
    python examples/shakespeare.py --out out/ft --export-pretrained gpt2-shakespeare  # back to a GPT-2 folder
    mpirun -n 2 python examples/shakespeare.py           # data parallel: the same training, 2 processes

Prints an untrained sample first, then a progress bar per epoch and, after each epoch, the train
and validation loss and a sample. Checkpoints (safetensors + JSON, atomic) go to --out after every
epoch, on Ctrl-C or SIGTERM, and at the end; metrics.jsonl beside them. A run locks --out while it
writes (a second run there is refused), and a fresh run does not replace the run an --out holds
unless given --overwrite; --resume continues with the checkpoint's settings. A flag the chosen
mode does not read (--lr with --sample, --temperature when training) is named in a warning. Every
GPTConfig and TrainConfig field is a flag (tinygrad_gpt/cli.py), range-checked as declared in
tinygrad_gpt/settings.py before anything runs. With --target-val-loss L the run measures the loss over
the whole validation split at each evaluation (--eval-every N steps, and each epoch's end) and stops
as soon as it is <= L, printing the training time to the target (evaluation excluded), the tokens
seen and the loss; every evaluation's record in metrics.jsonl carries train_s and tokens. Exit status:
0 done (the target reached, if one was given), 1 runtime error, 2 usage error, 3 non-finite loss,
4 the budget (--max-iters / --epochs) ended above --target-val-loss, 130 Ctrl-C, 143 SIGTERM. --sample streams
the tokens as they are generated (Ctrl-C keeps what was printed, exit 130). With --init-from DIR the
model and the GPT-2 tokenizer come from a Hugging Face GPT-2 folder (config.json,
model.safetensors, vocab.json, merges.txt); --export-pretrained writes a checkpoint back as one.

Follows: nanoGPT's train.py and sample.py, one script. Deliberately does not: read config files
(every setting is a flag; presets fill in the rest).
"""
import argparse
import sys
from pathlib import Path


import numpy as np

from tinygrad_gpt import backend, checkpoint, cli, data, distributed, pretrained, runs
from tinygrad_gpt.model import GPT, GPTConfig
from tinygrad_gpt.plot import write_plots_if_possible
from tinygrad_gpt.tokenizers import BasicTokenizer, BPETokenizer, tokenizer_from_dict
from tinygrad_gpt.tokenizers.char import CharTokenizer
from tinygrad_gpt.tokenizers.stream import TextStream
from tinygrad_gpt.train import (PRESETS, NonFiniteLoss, Trainer, TrainConfig, describe_presets,
                                preset_configs, preset_settings, resume_configs)
from tinygrad_gpt.runs import check_resumable, load_model, tokenizer_of

# which command reads each kind of saved run (runs.KINDS), for the messages that meet another kind
READERS = {f"rlhf-{m}": "sample it with --sample, tune it further with examples/rlhf_sentiment.py --checkpoint"
           for m in runs.RLHF_METHODS}


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\nFollows:")[0], epilog=describe_presets(),
                                formatter_class=cli.HelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="default: cpu, or finetune with --init-from")
    p.add_argument("--device", choices=backend.DEVICES, default="cpu", help="where the arrays live (cuda: cupy)")
    p.add_argument("--data", default=None,
                   help="path to tinyshakespeare.txt (default: $TINYSHAKESPEARE, then the cache, then a download)")
    p.add_argument("--out", default=None, help="checkpoint directory (default out/shakespeare-<preset>)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run saved in --out, with its settings (flags may change what a run can "
                        "change as it goes on, e.g. --max-iters, --lr)")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh in an --out that holds a run, deleting its checkpoint and metrics")
    p.add_argument("--sample", action="store_true",
                   help="only sample (streamed) from the checkpoint in --out, or from --init-from DIR")
    p.add_argument("--export-pretrained", default=None, metavar="DIR",
                   help="write the checkpoint in --out as a Hugging Face GPT-2 folder in DIR, then exit "
                        "(default: no export)")
    p.add_argument("--prompt", default="\n", help="the text sampling starts from (default: a newline)")
    p.add_argument("--num-tokens", type=cli.bounded(int, ge=1), default=500, help="tokens to sample with --sample")
    p.add_argument("--temperature", type=cli.bounded(float, gt=0), default=0.8,
                   help="sampling temperature: lower is more conservative")
    p.add_argument("--top-k", type=cli.bounded(int, ge=1), default=None,
                   help="sample among the k most likely tokens only (default: all)")
    p.add_argument("--top-p", type=cli.bounded(float, gt=0, le=1), default=None,
                   help="sample among the most likely tokens whose mass reaches p (default: all)")
    p.add_argument("--tokenizer", choices=["char", "bpe"], default=None,
                   help="char (default), or bpe; --resume takes the checkpoint's")
    p.add_argument("--vocab-size", type=cli.bounded(int, ge=257), default=None,
                   help="BPE vocabulary size with --tokenizer bpe (default 512)")
    p.add_argument("--dtype", choices=["float32", "float64"], default=None,
                   help="default: float32, or the checkpoint's with --resume")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs, CI)")
    cli.add_flags(p, GPTConfig, title="model (a preset's value, else the default)", presets=preset_settings())
    cli.add_flags(p, TrainConfig, title="training (a preset's value, else the default)", presets=preset_settings())
    return p


def load_tokens(args, tokenizer=None, source=None):
    """(tokenizer, tokens) of the data; with `tokenizer` (a checkpoint's), the data must fit it."""
    path = data.find_data(args.data)
    text = data.load_text(path)
    if tokenizer is not None:
        return tokenizer, encode_for(tokenizer, text, path, source)
    if init_from(args):
        tokenizer = pretrained.load_tokenizer(init_from(args))  # no more ids than the model has rows
        return tokenizer, np.asarray(tokenizer.encode(text), dtype=np.int64)
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


def init_from(args):
    """The --init-from folder, or None (a flag not given leaves no attribute: see cli.add_flags)."""
    return getattr(args, "init_from", None)


def encode_prompt(tokenizer, prompt):
    """Prompt ids; a BPE tokenizer reads special tokens such as <|endoftext|> as their ids."""
    ids = tokenizer.encode(prompt, allowed_special="all") if isinstance(tokenizer, BPETokenizer) \
        else tokenizer.encode(prompt)
    if not ids:
        raise ValueError("--prompt must hold at least one character")
    return ids


def sample_only(args, out_dir):
    """Stream --num-tokens sampled tokens after --prompt; Ctrl-C keeps what was printed (exit 130)."""
    if init_from(args):
        model = GPT.from_pretrained(init_from(args), dtype=np.dtype(args.dtype or "float32"), device=args.device)
        tokenizer = pretrained.load_tokenizer(init_from(args), model.config.vocab_size)
    else:
        model, meta, _ = load_model(out_dir, device=args.device)
        tokenizer = tokenizer_of(meta, out_dir)
    prompt = encode_prompt(tokenizer, args.prompt)
    stream = TextStream(tokenizer)
    stream.write(args.prompt)
    try:
        model.generate(np.array([prompt]), args.num_tokens, temperature=args.temperature, top_k=args.top_k,
                       top_p=args.top_p, seed=getattr(args, "seed", 0), on_token=lambda ids: stream(ids[0]))
    except KeyboardInterrupt:
        stream.close()
        print("interrupted: the text above is what was sampled", file=sys.stderr)
        return cli.EXIT_SIGINT
    stream.close()
    return 0


def export_pretrained(args, out_dir):
    """Write the checkpoint in --out as a Hugging Face GPT-2 folder (weights, config, tokenizer)."""
    model, meta, _ = load_model(out_dir, device="cpu")
    tokenizer = tokenizer_of(meta, out_dir)
    if not isinstance(tokenizer, BasicTokenizer):  # every byte-level BPE tier has a GPT-2 form
        raise ValueError(f"--export-pretrained: the checkpoint in {out_dir} uses a character tokenizer; a GPT-2 "
                         f"folder needs a byte-level BPE one (train with --init-from or --tokenizer bpe)")
    directory = model.save_pretrained(args.export_pretrained, tokenizer=tokenizer)
    print(f"wrote {directory} (config.json, model.safetensors, vocab.json, merges.txt)")
    return 0


# the model's shape and architecture come from --init-from's config.json (GPT-2's); these flags
# would contradict it
PRETRAINED_SHAPE = ("n_layer", "n_head", "n_embd", "bias", "layer_norm_epsilon", "position", "rope_base", "norm",
                    "qk_norm", "activation", "logit_softcap", "zero_init")


def pretrained_model(args, gpt_cfg, dtype):
    """The --init-from model, its position table cropped to the run's block_size."""
    model = GPT.from_pretrained(init_from(args), dtype=dtype, device=args.device, dropout=gpt_cfg.dropout)
    if gpt_cfg.block_size > model.config.block_size:
        raise ValueError(f"--block-size {gpt_cfg.block_size} is longer than the {model.config.block_size} "
                         f"positions of {init_from(args)}")
    return model.crop_block_size(gpt_cfg.block_size)


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    args.given = cli.given_flags(parser, argv)  # {dest: flag} of what the command line holds
    args.preset_given = args.preset is not None
    args.preset = args.preset or ("finetune" if init_from(args) else "cpu")
    world = distributed.from_environment(args.device)  # None unless mpirun started several processes
    if world is None:
        return run(args, parser)  # what escapes goes to cli.run_main: its message and exit status
    try:
        return run(args, parser, world)
    except (Exception, KeyboardInterrupt) as exc:
        # one rank failing ends the whole job (MPI_Abort) with this rank's message and the exit
        # status cli.run_main gives one process for the same exception, never a hang
        world.abort_for(exc)


# the flags each mode reads; any other flag given is named in a warning (it would change nothing)
SAMPLE_FLAGS = {"out", "sample", "prompt", "num_tokens", "temperature", "top_k", "top_p", "device", "seed",
                "init_from", "dtype"}
EXPORT_FLAGS = {"out", "export_pretrained"}
SAMPLING_ONLY = ("prompt", "num_tokens", "temperature", "top_k", "top_p")


def warn_unused(args, mode, used):
    """Name the given flags that `mode` does not read, on stderr (they used to be ignored silently)."""
    unused = [flag for dest, flag in args.given.items() if dest not in used]
    if mode == "--sample" and "dtype" in args.given and not init_from(args):
        unused.append("--dtype (the checkpoint's dtype is used)")
    if unused:
        print(f"warning: {mode} ignores {', '.join(unused)}", file=sys.stderr)


def check_flags(args, parser):
    """Refuse flags that this command would ignore or that contradict each other (usage errors, exit 2)."""
    if args.resume and args.overwrite:
        parser.error("--resume continues the run in --out, --overwrite replaces it: give one of them")
    if args.vocab_size is not None and args.tokenizer != "bpe" and not args.resume:
        parser.error(f"--vocab-size {args.vocab_size} sets the size of a BPE vocabulary: it needs --tokenizer bpe"
                     + (f" (the model of --init-from {init_from(args)} brings its own)" if init_from(args) else ""))
    if init_from(args) and args.tokenizer is not None and not args.resume:
        parser.error(f"--tokenizer {args.tokenizer}: with --init-from the tokenizer is the one of {init_from(args)}")
    if init_from(args) and not args.resume:
        fixed = [cli.flag_name(n) for n in PRETRAINED_SHAPE if hasattr(args, n)]
        if fixed:
            parser.error(f"{', '.join(fixed)}: with --init-from the model's shape comes from "
                         f"{init_from(args)}/config.json")



def resume_state(args, out_dir, root, world):
    """--resume: rank 0's (model, meta, optimizer_state) and, on every rank, what the configs are built
    from: the checkpoint's tokenizer, model and training configs and dtype (rank 0 reads, all receive)."""
    resumed, saved = None, None
    if root:  # a checkpoint rank 0 refuses raises here and aborts the job with its message
        resumed = load_model(out_dir, device=args.device)
        meta = resumed[1]
        check_resumable(meta, out_dir, tokenizer=args.tokenizer, vocab_size=args.vocab_size, readers=READERS)
        dtype = str(resumed[0].wte.weight.dtype)
        if args.dtype is not None and args.dtype != dtype:
            raise ValueError(f"--resume: --dtype {args.dtype}, but the checkpoint in {out_dir} was trained in {dtype}; "
                             f"leave --dtype out to continue in the checkpoint's")
        saved = {"tokenizer": tokenizer_of(meta, out_dir).to_dict(), "model_config": meta["model_config"],
                 "train_config": meta["train_config"], "dtype": dtype}
    if world is not None:
        saved = world.bcast(saved)
    return resumed, saved


def run(args, parser, world=None):
    root = world is None or world.is_root
    say = print if root else (lambda *a, **k: None)  # rank 0 alone prints
    out_dir = Path(args.out or f"out/shakespeare-{args.preset}")
    backend.get_xp(args.device)  # fail early, with the install hint, if cuda is not usable
    if (args.sample or args.export_pretrained) and not root:
        return 0  # under mpirun rank 0 alone samples (once) and writes the export
    if args.sample:
        warn_unused(args, "--sample", SAMPLE_FLAGS)
        return sample_only(args, out_dir)
    if args.export_pretrained:
        warn_unused(args, "--export-pretrained", EXPORT_FLAGS | {"device"})
        return export_pretrained(args, out_dir)
    if root:
        warn_unused(args, "a training run", set(args.given) - set(SAMPLING_ONLY))
    check_flags(args, parser)
    flags = cli.values_from(args, cli.flag_fields(GPTConfig) + cli.flag_fields(TrainConfig))

    # rank 0 alone writes, and holds --out's lock until the run ends: a second run into the same
    # --out is refused (its saves and metrics would interleave with this one's)
    lock = None
    if root and (not args.resume or out_dir.is_dir()):
        if not args.resume:
            checkpoint.check_writable(out_dir, "--out")  # before any work: a read-only or file --out
        lock = checkpoint.lock_directory(out_dir, "--out")
    try:
        return train_run(args, parser, world, out_dir, flags, say, root)
    finally:
        if lock is not None:
            lock.release()


def train_run(args, parser, world, out_dir, flags, say, root):
    resumed = None  # rank 0's (model, meta, optimizer_state); the other ranks receive its state in train()
    if args.resume:
        # the checkpoint first: its kind and tokenizer decide how the data is read (no BPE retraining),
        # its configs and dtype are the run's
        resumed, saved = resume_state(args, out_dir, root, world)
        tokenizer, tokens = load_tokens(args, tokenizer_from_dict(saved["tokenizer"]), out_dir)
        gpt_cfg, train_cfg = resume_configs(saved, out_dir, dict(flags, device=args.device, out_dir=str(out_dir)),
                                            preset=args.preset if args.preset_given else None)
        dtype = np.dtype(saved["dtype"])
    else:
        if root:
            runs.start_fresh(out_dir, args.overwrite)
        tokenizer, tokens = load_tokens(args)
        overrides = dict(flags, device=args.device, out_dir=str(out_dir))
        if init_from(args):
            hf = pretrained.config_from_hf(pretrained.read_config(init_from(args)), init_from(args))
            overrides.update({name: hf[name] for name in PRETRAINED_SHAPE if name in hf})
        try:
            gpt_cfg, train_cfg = preset_configs(args.preset, tokenizer.vocab_size, **overrides)
        except ValueError as exc:
            parser.error(str(exc))
        dtype = np.dtype(args.dtype or "float32")
    train_tokens, val_tokens = data.split_train_val(tokens, train_cfg.val_fraction)

    if resumed is not None:
        model = resumed[0]  # the checkpoint's model itself: no second copy of the weights
    elif args.resume:  # another rank: rank 0's weights arrive in train()
        model = GPT(gpt_cfg, seed=train_cfg.seed, dtype=dtype, device=args.device, init=False)
    elif init_from(args):
        model = pretrained_model(args, gpt_cfg, dtype)
        gpt_cfg = model.config
    else:
        model = GPT(gpt_cfg, seed=train_cfg.seed, dtype=dtype, device=args.device)
    trainer = Trainer(model, tokenizer, train_tokens, val_tokens, train_cfg, progress=not args.no_progress,
                      world=world)
    if resumed is not None:
        # subtle: drop every reference to the loaded optimizer arrays once restore has copied them,
        # else a second copy of the AdamW moments stays alive for the whole run
        _, meta, optimizer_state = resumed
        resumed = None
        trainer.restore(meta, optimizer_state)
        del optimizer_state
        ranks = f", saved by {meta.get('world_size', 1)} process(es), now {1 if world is None else world.size}"
        say(f"resumed from {out_dir} at step {trainer.state.step} (epoch {trainer.state.epoch + 1}, "
            f"batch {trainer.state.batch}{ranks})")
    elif not args.resume:
        say(f"tiny Shakespeare: {len(tokens):,} tokens ({len(train_tokens):,} train, {len(val_tokens):,} val), "
            f"vocabulary {tokenizer.vocab_size}")
        say(f"model: {gpt_cfg}, {model.num_parameters():,} parameters, device {args.device}"
            + ("" if world is None else f", {world.size} ranks of {train_cfg.batch_size // world.size} rows"))
        say(f"training: {trainer.total_iters():,} steps, {trainer.iters_per_epoch():,} per epoch, "
            f"batch {train_cfg.batch_size} x block {gpt_cfg.block_size}")
        if root:
            say(f"--- untrained sample ---\n{trainer.sample(seed=train_cfg.seed)}\n------------------------")
    try:
        result = trainer.train()
    except NonFiniteLoss as exc:  # every rank sees the same reduced loss: all stop, rank 0 says why
        if root:
            print(f"error: {exc}", file=sys.stderr)
        return 3
    if result != "done":
        return cli.exit_status(result)
    for record in trainer.state.history if root else ():
        say(f"epoch {record['epoch']}: train loss {record['train_loss']:.4f}, val loss {record['val_loss']:.4f}")
    say(f"checkpoint: {out_dir}")
    if root:  # one plot, by the rank that wrote the checkpoint
        write_plots_if_possible(out_dir)  # training.png beside the checkpoint, when matplotlib is installed
        say(next_steps(out_dir))
    if train_cfg.target_val_loss is not None:
        return target_summary(trainer, train_cfg.target_val_loss, say)
    return 0


def target_summary(trainer, target, say):
    """The --target-val-loss result, one line, and the exit status: 0 reached, 4 not reached."""
    hit = trainer.target_reached
    if hit is None:
        st = trainer.state
        say(f"target val loss {target:g} NOT reached: the budget ended at step {st.step} after {st.train_s:.1f} s of "
            f"training and {st.tokens:,} tokens (exit status {cli.EXIT_TARGET_MISSED})")
        return cli.EXIT_TARGET_MISSED
    say(f"target val loss {target:g} reached at step {hit['step']}: {hit['train_s']:.1f} s of training (evaluation "
        f"excluded), {hit['tokens']:,} tokens, whole-split val loss {hit['whole_val_loss']:.4f}")
    return 0


def next_steps(out_dir):
    """What a person can do with the run just finished (the README's "Next" block, for this run)."""
    out = str(out_dir)
    return "\n".join([
        "next:",
        f"  sample from it   python examples/shakespeare.py --out {out} --sample --prompt \"ROMEO:\"",
        f"  plot its curves  python -m tinygrad_gpt.plot {out}",
        f"  tune it (RLHF)   python examples/rlhf_sentiment.py --checkpoint {out} --steps 20",
        "  read the tour    docs/README.md (as notebooks: pip install -e \".[interactive]\")",
    ])


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
