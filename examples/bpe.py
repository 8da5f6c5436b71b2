"""Train a byte-level BPE tokenizer on a text file and show what it learned.

Prints the vocabulary size, the compression ratio (UTF-8 bytes per token on the training text),
the first and last merges, a round trip on a sample sentence, and saves the tokenizer in the
project's format (loadable with `tinygrad_gpt.tokenizers.load_tokenizer`).

    python examples/bpe.py                                   # tiny Shakespeare, 4,096 tokens
    python examples/bpe.py --data my.txt --vocab-size 1024 --pattern gpt4 --out my.bpe

The text is found as in the rest of the project (`data.find_data`): --data, then the
TINYSHAKESPEARE environment variable, then the cache, then a download. The tokenizer goes to
out/bpe.tokenizer unless --out says otherwise.

Follows: minbpe's `train.py`. Deliberately does not: save in the GPT-2/tiktoken formats (call
`save_gpt2` / `save_tiktoken` for those).
"""
import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tinygrad_gpt import cli, data  # noqa: E402
from tinygrad_gpt.tokenizers import BasicTokenizer, BPETokenizer, load_tokenizer  # noqa: E402
from tinygrad_gpt.tokenizers.pretokenize import compiled, resolve_pattern  # noqa: E402

def read_text(path):
    """The UTF-8 text of the file --data found; a binary or empty file is a usage error that names it."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"--data: {path} is not UTF-8 text (byte 0x{raw[err.start]:02x} at offset "
                         f"{err.start})") from None
    if not text:
        raise ValueError(f"--data: {path} is empty; there is nothing to learn merges from")
    return text


def check_out(path):
    """Refuse an --out that cannot take the file now, not after minutes of training."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"--out: {path} is a directory; give a file path, e.g. {path / 'bpe.tokenizer'}")
    if path.parent.exists() and not path.parent.is_dir():
        raise ValueError(f"--out: {path.parent} is a file, not a directory")
    path.parent.mkdir(parents=True, exist_ok=True)
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ValueError(f"--out: {path} is not writable")


def build_parser():
    ap = argparse.ArgumentParser(description="Train a byte-level BPE tokenizer on a text file.")
    ap.add_argument("--data", default=None,
                    help="UTF-8 text file to train on (default: tiny Shakespeare from $TINYSHAKESPEARE, the "
                         "cache, or a download)")
    ap.add_argument("--vocab-size", type=cli.bounded(int, ge=256), default=4096,
                    help="tokens in all: 256 bytes + merges + specials")
    ap.add_argument("--pattern", default="gpt2",
                    help="split pattern: gpt2, gpt4, none (basic tier: no split) or a regex")
    ap.add_argument("--out", default="out/bpe.tokenizer", help="where to save the trained tokenizer")
    ap.add_argument("--sample", default="To be, or not to be: that is the question. 🙂", help="round-trip text")
    return ap


def main(argv=None):
    from tinygrad_gpt.backend import tune_host_allocator
    tune_host_allocator()  # glibc's malloc thresholds, for this process: see backend.py
    ap = build_parser()
    args = ap.parse_args(argv)

    check_out(args.out)
    if args.pattern == "none":
        tok = BasicTokenizer()
    else:
        try:
            compiled(resolve_pattern(args.pattern))
        except Exception as exc:  # the regex module's own error type
            ap.error(f"--pattern: {args.pattern!r} is not a valid regular expression ({exc})")
        tok = BPETokenizer(pattern=args.pattern, special_tokens=["<|endoftext|>"])
    least = 256 + len(tok._special_names())
    if args.vocab_size < least:
        ap.error(f"--vocab-size must be >= {least} (256 bytes + special tokens), got {args.vocab_size}")
    data_path = data.find_data(args.data)
    text = read_text(data_path)

    t0 = time.perf_counter()
    tok.train(text, args.vocab_size)
    t_train = time.perf_counter() - t0
    t0 = time.perf_counter()
    ids = tok.encode(text)
    t_enc = time.perf_counter() - t0
    n_bytes = len(text.encode("utf-8"))

    print(f"trained on {data_path}: {n_bytes:,} bytes in {t_train:.2f} s")
    if tok.vocab_size < args.vocab_size:
        print(f"warning: --vocab-size {args.vocab_size} asked for more tokens than this text allows: no pair of "
              f"tokens was left to merge after {len(tok.merges)} merges, so the vocabulary has "
              f"{tok.vocab_size}", file=sys.stderr)
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
    if load_tokenizer(args.out).encode(args.sample) != sample_ids:
        raise RuntimeError(f"{args.out}: the saved tokenizer encodes the sample differently")
    print(f"saved to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
