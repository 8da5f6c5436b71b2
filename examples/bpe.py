"""Train a byte-level BPE tokenizer on a text file and show what it learned.

Prints the vocabulary size, the compression ratio (UTF-8 bytes per token on the training text),
the first and last merges, a round trip on a sample sentence, and saves the tokenizer in the
project's format (loadable with `tinygrad_gpt.tokenizers.load_tokenizer`).

    python examples/bpe.py                                   # tiny Shakespeare, 4,096 tokens
    python examples/bpe.py --data my.txt --vocab-size 1024 --pattern gpt4 --out my.bpe

The text is found as in the rest of the project: --data, else the TINYSHAKESPEARE environment
variable, else ../shared/data/tinyshakespeare.txt next to the repository.

Follows: minbpe's `train.py`. Deliberately does not: download data, or save in the GPT-2/tiktoken
formats (call `save_gpt2` / `save_tiktoken` for those).
"""
import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tinygrad_gpt.tokenizers import BasicTokenizer, BPETokenizer, load_tokenizer  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tinyshakespeare.txt"


def main():
    from tinygrad_gpt.backend import tune_host_allocator
    tune_host_allocator()  # glibc's malloc thresholds, for this process: see backend.py
    ap = argparse.ArgumentParser(description="Train a byte-level BPE tokenizer on a text file.")
    ap.add_argument("--data", default=os.environ.get("TINYSHAKESPEARE", str(DEFAULT_DATA)),
                    help="UTF-8 text file to train on")
    ap.add_argument("--vocab-size", type=int, default=4096, help="tokens in all: 256 bytes + merges + specials")
    ap.add_argument("--pattern", default="gpt2",
                    help="split pattern: gpt2, gpt4, none (basic tier: no split) or a regex")
    ap.add_argument("--out", default="bpe.tokenizer", help="where to save the trained tokenizer")
    ap.add_argument("--sample", default="To be, or not to be: that is the question. 🙂", help="round-trip text")
    args = ap.parse_args()

    if not Path(args.data).is_file():
        sys.exit(f"--data: {args.data} does not exist (pass --data or set TINYSHAKESPEARE)")
    text = Path(args.data).read_text(encoding="utf-8")
    if args.pattern == "none":
        tok = BasicTokenizer()
    else:
        tok = BPETokenizer(pattern=args.pattern, special_tokens=["<|endoftext|>"])

    t0 = time.perf_counter()
    tok.train(text, args.vocab_size)
    t_train = time.perf_counter() - t0
    t0 = time.perf_counter()
    ids = tok.encode(text)
    t_enc = time.perf_counter() - t0
    n_bytes = len(text.encode("utf-8"))

    print(f"trained on {args.data}: {n_bytes:,} bytes in {t_train:.2f} s")
    print(f"vocab size: {tok.vocab_size} ({len(tok.merges)} merges, {len(tok.special_tokens)} special)")
    print(f"compression: {n_bytes:,} bytes -> {len(ids):,} tokens = {n_bytes / max(1, len(ids)):.2f} bytes/token "
          f"(encoded in {t_enc:.2f} s)")
    show = lambda m: f"({m[0]}, {m[1]}) -> {m[2]} {tok.vocab[m[2]].decode('utf-8', errors='replace')!r}"  # noqa: E731
    print("first merges: " + ", ".join(show(m) for m in tok.merges[:5]))
    print("last merges:  " + ", ".join(show(m) for m in tok.merges[-5:]))
    sample_ids = tok.encode(args.sample)
    back = tok.decode(sample_ids)
    print(f"round trip: {args.sample!r} -> {sample_ids} -> {back!r} ({'ok' if back == args.sample else 'MISMATCH'})")
    tok.save(args.out)
    assert load_tokenizer(args.out).encode(args.sample) == sample_ids
    print(f"saved to {args.out}")


if __name__ == "__main__":
    main()
