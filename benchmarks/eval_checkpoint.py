"""Loss of a checkpoint on the WHOLE validation (and optionally training) split, not a sample.

    python benchmarks/eval_checkpoint.py out/shakespeare-cpu [--data PATH] [--train]

The split is cut into consecutive block_size windows (each token predicted once, with up to
block_size - 1 tokens of context, as in training), evaluated in batches under no_grad
(train.split_loss, the loss --target-val-loss compares with). This is the figure recorded in
RESULTS.md; the per-epoch val loss the training script prints is an estimate on eval_batches
random batches. Does not: use a sliding window (which would give every token the full
context and a slightly lower loss).
"""
import argparse
import sys

import numpy as np

from tinygrad_gpt import cli
from tinygrad_gpt import data
from tinygrad_gpt.tokenizers import tokenizer_from_dict
from tinygrad_gpt.runs import load_model
from tinygrad_gpt.train import split_loss


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--data", default=None)
    p.add_argument("--train", action="store_true", help="also evaluate the training split")
    args = p.parse_args()
    model, meta, _ = load_model(args.checkpoint)
    model.eval()
    tok = tokenizer_from_dict(meta["tokenizer"])
    text = data.load_text(data.find_data(args.data))
    ids = np.asarray(tok.encode_array(text) if hasattr(tok, "encode_array") else tok.encode(text), dtype=np.int64)
    train, val = data.split_train_val(ids, meta["train_config"]["val_fraction"])
    print(f"checkpoint {args.checkpoint}: step {meta['state']['step']}")
    T = model.config.block_size
    loss = split_loss(model, val)
    print(f"val loss {loss:.4f} over {(len(val) - 1) // T * T:,} tokens (the whole validation split)")
    if args.train:
        loss = split_loss(model, train)
        print(f"train loss {loss:.4f} over {(len(train) - 1) // T * T:,} tokens")


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
