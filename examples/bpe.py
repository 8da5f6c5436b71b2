"""Train a byte-level BPE tokenizer on a text file and show what it learned.

Prints the vocabulary size, the compression ratio (UTF-8 bytes per token on the training text),
the first and last merges, a round trip on a sample sentence, and saves the tokenizer in the
project's format (loadable with `tinygrad_gpt.tokenizers.load_tokenizer`).

    python examples/bpe.py                                   # tiny Shakespeare, 4,096 tokens
    python examples/bpe.py --data my.txt --vocab-size 1024 --pattern gpt4 --out my.bpe

The text is found as in the rest of the project (`data.find_data`): --data, then the
TINYSHAKESPEARE environment variable, then the cache, then a download. The tokenizer goes to
out/bpe.tokenizer unless --out says otherwise.

Only a lossless tokenizer is saved. Before training, --pattern must cover every character of the
training text and of --sample (a pattern that can match the empty string, or skips a character
such as "." skips newlines, is a usage error naming it), and --sample must encode; after training,
the training text and the sample must decode back to themselves, else nothing is saved (exit 1).

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
from tinygrad_gpt.tokenizers import BPETokenizer, BasicTokenizer, load_tokenizer, save_tokenizer  # noqa: E402
from tinygrad_gpt.tokenizers.pretokenize import compiled, resolve_pattern, split  # noqa: E402


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


def uncovered(text, pattern):
    """The index of the first character of `text` that no chunk of `pattern` covers, or None.

    A split is lossless when its chunks tile the text: the first starts at 0, each starts where
    the previous ends, the last ends at the end. A character between two chunks is dropped by
    every encoding, so no merge can bring it back.
    """
    starts, ends = split(text, pattern)
    starts, ends = starts.tolist(), ends.tolist()
    if not text:
        return None
    if not starts or starts[0] != 0:
        return 0
    for end, next_start in zip(ends, starts[1:]):
        if next_start != end:
            return end
    return None if ends[-1] == len(text) else ends[-1]


def where(text, i):
    """'x' at line L, column C: character i of `text`, for a person."""
    line_start = text.rfind("\n", 0, i) + 1
    return f"{text[i]!r} at line {text.count(chr(10), 0, i) + 1}, column {i - line_start + 1}"


def check_pattern(ap, pattern):
    """--pattern must be a regular expression that matches no empty string."""
    if not pattern:
        ap.error("--pattern is empty: give gpt2, gpt4, none or a regular expression")
    try:
        regex = compiled(resolve_pattern(pattern))
    except Exception as exc:  # the regex module's own error type
        ap.error(f"--pattern: {pattern!r} is not a valid regular expression ({exc})")
    if regex.fullmatch("") is not None:
        ap.error(f"--pattern: {pattern!r} matches the empty string; a split pattern must match at least one "
                 f"character (text it does not match would be dropped)")


def check_coverage(ap, args, text, data_path):
    """--pattern must cover every character of the training text and of --sample."""
    pattern = resolve_pattern(args.pattern)
    for what, source, body in (("the training text", str(data_path), text), ("--sample", "--sample", args.sample)):
        i = uncovered(body, pattern)
        if i is not None:
            ap.error(f"--pattern {args.pattern!r} does not cover {what}: {where(body, i)} of {source} falls between "
                     f"its matches and would be lost; a split pattern must match every character (GPT-2's ends "
                     f"in \\s+ to take what is left)")


def check_round_trip(text, back, what):
    """Raise RuntimeError unless `back` (text encoded and decoded) is `text`; names the first difference."""
    if back != text:
        i = next((k for k, (a, b) in enumerate(zip(back, text)) if a != b), min(len(back), len(text)))
        raise RuntimeError(f"{what} does not decode back to itself (first difference at character {i}: "
                           f"{text[i:i + 20]!r} became {back[i:i + 20]!r}); the tokenizer was not saved")


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
    ap = argparse.ArgumentParser(description=__doc__.split("\nFollows:")[0], formatter_class=cli.HelpFormatter)
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
    ap = build_parser()
    args = ap.parse_args(argv)

    check_out(args.out)
    if args.pattern == "none":
        tok = BasicTokenizer()
    else:
        check_pattern(ap, args.pattern)
        tok = BPETokenizer(pattern=args.pattern, special_tokens=["<|endoftext|>"])
    least = 256 + len(tok._special_names())
    if args.vocab_size < least:
        ap.error(f"--vocab-size must be >= {least} (256 bytes + special tokens), got {args.vocab_size}")
    data_path = data.find_data(args.data)
    text = read_text(data_path)
    if args.pattern != "none":
        check_coverage(ap, args, text, data_path)
    # a special token's text (<|endoftext|> between documents) is the special token, in both texts
    encode = (lambda t: tok.encode(t, allowed_special="all")) if isinstance(tok, BPETokenizer) else tok.encode
    try:  # before training: the untrained tokenizer encodes what the trained one will
        encode(args.sample)
    except ValueError as exc:  # a lone surrogate (from bytes that are not UTF-8 on the command line)
        ap.error(f"--sample: {exc}")

    t0 = time.perf_counter()
    tok.train(text, args.vocab_size)
    t_train = time.perf_counter() - t0
    t0 = time.perf_counter()
    ids = encode(text)
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
    sample_ids = encode(args.sample)
    back = tok.decode(sample_ids)
    print(f"round trip: {args.sample!r} -> {sample_ids} -> {back!r} ({'ok' if back == args.sample else 'MISMATCH'})")
    check_round_trip(text, tok.decode(ids), f"the training text {data_path}")
    check_round_trip(args.sample, back, "--sample")
    save_tokenizer(tok, args.out)
    saved = load_tokenizer(args.out)
    if (saved.encode(args.sample, allowed_special="all") if isinstance(saved, BPETokenizer)
            else saved.encode(args.sample)) != sample_ids:
        raise RuntimeError(f"{args.out}: the saved tokenizer encodes the sample differently")
    print(f"saved to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
