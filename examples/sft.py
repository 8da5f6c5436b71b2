"""Tune a base GPT to chat: supervised fine-tuning on conversations, the loss on the assistant's words only.

    python examples/sft.py --init-from out/shakespeare-256 --out out/sft     # tiny Shakespeare's dialogue
    python examples/sft.py --init-from out/shakespeare-256 --conversations chats.jsonl --out out/sft
    python examples/sft.py --init-from gpt2 --conversations chats.jsonl --out out/gpt2-chat  # a GPT-2 folder
    python examples/sft.py --out out/sft --resume                            # continue after Ctrl-C
    python -m tinygrad_gpt.chat out/sft                                      # then talk to it

--init-from is a run directory (examples/shakespeare.py's --out) or a Hugging Face GPT-2 folder;
its tokenizer gains the chat tokens <|user|>, <|assistant|>, <|end|> and its embedding the rows for
them. The conversations are a JSONL file of {"messages": [{"role": ..., "content": ...}, ...]}
(--conversations), or, without one, tiny Shakespeare's dialogue: each speech as the user's
message, the next speaker's as the reply (`python -m tinygrad_gpt.chat_format FILE` writes it out
to read). --val-fraction of the conversations are held out for the val loss. Prints the
untrained reply to a held-out conversation, a progress bar per epoch and, after each epoch, the
train and val loss (per assistant token) and the reply again. Checkpoints go to --out after every
epoch, on Ctrl-C or SIGTERM, and at the end (meta.kind "sft"); metrics.jsonl beside them.

Every TrainConfig field is a flag (defaults for SFT: --lr 3e-4 --min-lr 3e-5 --warmup-iters 20
--epochs 3 --batch-size 8); --block-size crops the base's position table (a GPT-2 base to 256
unless given). Exit status as examples/shakespeare.py's: 0 done, 1 runtime error, 2 usage error,
3 non-finite loss, 130 Ctrl-C, 143 SIGTERM (both after saving a checkpoint).

The training command is a script, as examples/shakespeare.py and rlhf_sentiment.py are: the
recipes people copy and change live in examples/, the library (tinygrad_gpt/sft.py) holds the
parts, and the `python -m tinygrad_gpt.*` commands are the tools that read any run (chat, serve,
plot). Follows: nanochat's chat_sft. Deliberately does not: run under mpirun with several ranks.
"""
import argparse
import re
import sys
from pathlib import Path


from tinygrad_gpt import backend, chat_format, checkpoint, cli, data, distributed, runs, sft
from tinygrad_gpt.runs import load_model, tokenizer_of
from tinygrad_gpt.train import NonFiniteLoss, TrainConfig, resume_configs

SHAKESPEARE = "tiny Shakespeare's dialogue"
# TrainConfig fields that are not flags here: the base is --init-from, one process, windows of text
SKIP_TRAIN = ("init_from", "epoch_mode", "bucket_mb", "overlap_comm")
MODEL_FLAGS = ("block_size",)  # the rest of the model is the base's


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=cli.HelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--init-from", default=None, metavar="DIR",
                   help="the base: a run directory or a Hugging Face GPT-2 folder (no default: needed unless --resume)")
    p.add_argument("--conversations", default=None, metavar="FILE",
                   help=f"JSONL of {{\"messages\": [...]}} (default: {SHAKESPEARE})")
    p.add_argument("--data", default=None, help="tinyshakespeare.txt for the dialogue (default: $TINYSHAKESPEARE, "
                                                "then the cache, then a download)")
    p.add_argument("--max-user-chars", type=cli.bounded(int, ge=1), default=120,
                   help="the dialogue: a speech keeps its last lines within this many characters")
    p.add_argument("--max-reply-chars", type=cli.bounded(int, ge=1), default=120,
                   help="the dialogue: a reply keeps its first lines within this many characters")
    p.add_argument("--out", default="out/sft", help="checkpoint directory")
    p.add_argument("--resume", action="store_true", help="continue the SFT run saved in --out, with its settings")
    p.add_argument("--overwrite", action="store_true", help="start afresh in an --out that holds a run, deleting it")
    p.add_argument("--device", choices=backend.DEVICES, default="cpu", help="where the arrays live (cuda: cupy)")
    p.add_argument("--dtype", choices=["float32", "float64"], default=None,
                   help="a GPT-2 base's load dtype (default float32; a run directory keeps its own)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs, CI)")
    p.add_argument("--block-size", type=cli.bounded(int, ge=1), default=argparse.SUPPRESS,
                   help="positions to train on, at most the base's (default: the base's; 256 for a GPT-2 folder)")
    cli.add_flags(p, TrainConfig, skip=SKIP_TRAIN, title="training (TrainConfig fields; SFT's own defaults)",
                  presets={"sft": sft.DEFAULTS})
    for action in p._actions:  # "default 0.001; presets: sft 0.0003" -> "default 0.0003 (pretraining: 0.001)"
        if action.dest in sft.DEFAULTS:
            action.help = re.sub(r"default ([^;]*); presets: sft (.*)$", r"default \2 (pretraining: \1)", action.help)
    return p


def conversations_of(args, saved=None):
    """(conversations, meta.sft fields) of --conversations, or of tiny Shakespeare's dialogue."""
    if args.conversations:
        path = Path(args.conversations)
        return chat_format.read_conversations(path), {"conversations": str(path), "data_sha256": checkpoint.file_sha256(path)}
    if saved is not None and saved.get("conversations") not in (None, SHAKESPEARE):  # --resume: the run's file
        path = Path(saved["conversations"])
        return chat_format.read_conversations(path), {"conversations": str(path), "data_sha256": checkpoint.file_sha256(path)}
    users = saved.get("max_user_chars", args.max_user_chars) if saved else args.max_user_chars
    replies = saved.get("max_reply_chars", args.max_reply_chars) if saved else args.max_reply_chars
    path = data.find_data(args.data)
    convs = chat_format.shakespeare_dialogue(data.load_text(path), users, replies)
    return convs, {"conversations": SHAKESPEARE, "data_sha256": checkpoint.file_sha256(path),
                   "max_user_chars": users, "max_reply_chars": replies}



def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if distributed.from_environment(args.device) is not None:
        parser.error("SFT runs in one process: start it without mpirun (or with -n 1)")
    if args.resume and args.overwrite:
        parser.error("--resume continues the run in --out, --overwrite replaces it: give one of them")
    if not args.resume and not args.init_from:
        parser.error("--init-from DIR is needed: the base model to tune (a run directory or a GPT-2 folder)")
    if args.resume and args.init_from:
        parser.error("--init-from: --resume continues from the checkpoint in --out, which names its base")
    out_dir = Path(args.out)
    backend.get_xp(args.device)
    if not args.resume:
        checkpoint.check_writable(out_dir, "--out")
    lock = checkpoint.lock_directory(out_dir, "--out") if (not args.resume or out_dir.is_dir()) else None
    try:
        return run(args, parser, out_dir)
    finally:
        if lock is not None:
            lock.release()


def run(args, parser, out_dir):
    train_flags = cli.values_from(args, cli.flag_fields(TrainConfig, skip=SKIP_TRAIN))
    model_flags = cli.values_from(args, MODEL_FLAGS)
    if args.resume:
        model, meta, optimizer_state = load_model(out_dir, device=args.device)
        sft.check_resumable(meta, out_dir)
        tokenizer = tokenizer_of(meta, out_dir)
        conversations, source = conversations_of(args, meta["sft"])
        if source["data_sha256"] != meta["sft"].get("data_sha256"):
            raise ValueError(f"--resume: the conversations ({source['conversations']}) are not the ones the run in "
                             f"{out_dir} was trained on (their SHA-256 differs); start a new run for them")
        gpt_cfg, train_cfg = resume_configs(meta, out_dir, dict(train_flags, **model_flags, device=args.device,
                                                                out_dir=str(out_dir)))
        sft_meta = meta["sft"]
    else:
        runs.start_fresh(out_dir, args.overwrite)
        conversations, source = conversations_of(args)
        model, tokenizer, base_kind = sft.load_base(args.init_from, device=args.device, dtype=args.dtype)
        block = model_flags.get("block_size", min(model.config.block_size, sft.GPT2_BLOCK) if base_kind == "gpt2"
                                else model.config.block_size)
        if block > model.config.block_size:
            raise ValueError(f"--block-size {block} is longer than the {model.config.block_size} positions of "
                             f"{args.init_from}")
        model.crop_block_size(block)
        if not chat_format.has_chat_tokens(tokenizer):
            tokenizer = chat_format.add_chat_tokens(tokenizer)
            sft.grow_vocab(model, tokenizer.vocab_size)
        gpt_cfg = model.config
        train_cfg = TrainConfig(**{**sft.DEFAULTS, **train_flags, "device": args.device, "out_dir": str(out_dir),
                                   "init_from": str(args.init_from)})
        sft_meta = dict(source, base=str(args.init_from), base_kind=base_kind)
    train_rows, val_rows, held = sft.prepare(conversations, tokenizer, gpt_cfg.block_size, train_cfg.val_fraction,
                                             seed=train_cfg.seed)
    sample = held[0][:-1]  # the first held-out conversation, its reply left to the model
    trainer = sft.SFTTrainer(model, tokenizer, train_rows, val_rows, train_cfg, sample_messages=sample,
                             sft_meta=dict(sft_meta, train_conversations=train_rows.packed.conversations,
                                           heldout_conversations=val_rows.packed.conversations),
                             progress=not args.no_progress)
    if args.resume:
        trainer.restore(meta, optimizer_state)
        del optimizer_state
        print(f"resumed from {out_dir} at step {trainer.state.step} (epoch {trainer.state.epoch + 1}, "
              f"batch {trainer.state.batch})")
    else:
        tp, vp = train_rows.packed, val_rows.packed
        print(f"{source['conversations']}: {len(conversations):,} conversations, {tp.conversations:,} train in "
              f"{train_rows.rows:,} rows of {gpt_cfg.block_size + 1} tokens ({tp.trained_tokens:,} assistant tokens), "
              f"{vp.conversations:,} held out ({vp.trained_tokens:,} assistant tokens)")
        if tp.truncated + vp.truncated or tp.dropped + vp.dropped:
            print(f"note: {tp.truncated + vp.truncated} conversations longer than a row were cut to it, "
                  f"{tp.dropped + vp.dropped} with no assistant token left were dropped (raise --block-size)")
        print(f"model: {gpt_cfg}, {model.num_parameters():,} parameters, from {args.init_from}")
        print(f"training: {trainer.total_iters():,} steps, {trainer.iters_per_epoch():,} per epoch, batch "
              f"{train_cfg.batch_size}")
        print(f"--- before tuning ---\n{trainer.sample(seed=train_cfg.seed)}\n---------------------")
    try:
        result = trainer.train()
    except NonFiniteLoss as exc:
        print(f"error: {exc}", file=sys.stderr)
        return cli.EXIT_NONFINITE
    if result != "done":
        return cli.exit_status(result)
    for record in trainer.state.history:
        print(f"epoch {record['epoch']}: train loss {record['train_loss']:.4f}, val loss {record['val_loss']:.4f} "
              f"(per assistant token)")
    print(f"checkpoint: {out_dir}\nnext:\n  talk to it        python -m tinygrad_gpt.chat {out_dir}\n"
          f"  in a browser      python -m tinygrad_gpt.serve {out_dir} --port 8000")
    return cli.EXIT_OK


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
