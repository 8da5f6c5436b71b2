"""Benchmark of the byte-level BPE tokenizer against its peers, validated before it is timed.

What it measures, on tiny Shakespeare, in one run, medians of --repeats alternating runs:
1. Training a GPT-2-split byte-level vocabulary of --vocab-size (4,096): ours end to end (split,
   count distinct chunks, merge) against Hugging Face `tokenizers` (ByteLevel pre-tokenizer without
   prefix space + BpeTrainer, same alphabet and vocabulary size) when importable; and the merge
   loop alone, incremental (`fastbpe.train_merges`) against the naive recount-every-merge trainer
   (`fastbpe.train_merges_naive`, also Numba, so the ratio is the algorithm's), on the same chunks.
2. Encoding the whole text with the real GPT-2 vocabulary on one thread: ours (Numba scanner +
   cached merges; the chunk cache is cleared before every run, so each run starts cold) against
   tiktoken's `encode_ordinary` built from the same files, after checking the ids are identical.
   Also the pieces: the scanner alone, `regex.findall` alone, and our readable reference path.

Usage: python benchmarks/tokenizer.py [--repeats 5] [--vocab-size 4096] [--data FILE] [--gpt2-dir DIR]
Prints a Markdown table (paste it into benchmarks/RESULTS.md).

Follows: llm.c's validate-then-benchmark `main`. Does not: use more than one thread for ours, or
count Numba compilation (one warm-up run first; kernels are cached on disk with cache=True).
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tinygrad_gpt import cli  # noqa: E402
from tinygrad_gpt.tokenizers import GPT2_SPLIT_PATTERN, RegexTokenizer, load_gpt2  # noqa: E402
from tinygrad_gpt.tokenizers import fastbpe  # noqa: E402
from tinygrad_gpt.tokenizers.formats import bytes_to_unicode  # noqa: E402
from tinygrad_gpt.tokenizers.pretokenize import chunks, compiled, split_gpt2  # noqa: E402

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def median_times(fns, repeats):
    """{name: [seconds]} running the functions in turn, `repeats` rounds (alternating evens out noise)."""
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(timed(fn)[0])
    return {name: statistics.median(ts) for name, ts in times.items()}


def hf_trainer(vocab_size):
    try:
        from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    except ImportError:
        return None

    def train(text):
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      show_progress=False, special_tokens=[])
        tok.train_from_iterator([text], trainer=trainer)
        return tok
    return train


def flat_words(text):
    words = [(c.encode("utf-8"), n) for c, n in Counter(chunks(text, GPT2_SPLIT_PATTERN)).items()]
    sym = np.frombuffer(b"".join(w for w, _ in words), dtype=np.uint8).astype(np.int32)  # (N,)
    lengths = np.array([len(w) for w, _ in words])  # (n_words,)
    end = np.zeros(sym.shape[0], dtype=np.bool_)  # (N,)
    end[np.cumsum(lengths) - 1] = True
    weight = np.repeat(np.array([n for _, n in words], dtype=np.int64), lengths)  # (N,)
    return sym, end, weight


def bench_training(text, vocab_size, repeats, rows):
    n_merges = vocab_size - 256
    ours = RegexTokenizer("gpt2")
    ours.train(text, vocab_size)  # warm-up (loads the cached kernels)
    assert len(ours.merges) == n_merges, "validation: ours learned fewer merges than asked"
    fns = {"ours": lambda: RegexTokenizer("gpt2").train(text, vocab_size)}
    hf = hf_trainer(vocab_size)
    if hf is not None:
        hf_tok = hf(text)
        assert hf_tok.get_vocab_size() == vocab_size, f"validation: HF vocab {hf_tok.get_vocab_size()}"
        fns["hf"] = lambda: hf(text)
    t = median_times(fns, repeats)
    rows.append(("train 4,096 vocab, GPT-2 split, end to end: ours", f"{t['ours']:.3f} s", ""))
    if "hf" in t:
        rows.append(("train, same: HF tokenizers " + __import__("tokenizers").__version__, f"{t['hf']:.3f} s",
                     f"ours / HF = {t['ours'] / t['hf']:.2f}x time"))

    sym, end, weight = flat_words(text)
    fast = fastbpe.train_merges(sym.copy(), end, weight, 256, n_merges)
    naive = fastbpe.train_merges_naive(sym.copy(), end, weight, 256, n_merges)
    assert np.array_equal(fast, naive), "validation: incremental and naive trainers disagree"
    t_inc = median_times({"inc": lambda: fastbpe.train_merges(sym.copy(), end, weight, 256, n_merges)}, repeats)["inc"]
    t_naive = median_times({"naive": lambda: fastbpe.train_merges_naive(sym.copy(), end, weight, 256, n_merges)},
                           max(1, min(repeats, 3)))["naive"]
    rows.append((f"merge loop only ({n_merges} merges, {len(sym):,} symbols in {int(end.sum()):,} distinct chunks): "
                 "incremental", f"{t_inc:.3f} s", ""))
    rows.append(("merge loop only: naive recount every merge (Numba)", f"{t_naive:.3f} s",
                 f"speed-up {t_naive / t_inc:.0f}x"))


def tiktoken_encoding(gpt2_dir):
    try:
        import tiktoken
    except ImportError:
        return None
    encoder = json.loads((Path(gpt2_dir) / "vocab.json").read_text(encoding="utf-8"))
    to_byte = {ch: b for b, ch in bytes_to_unicode().items()}
    ranks = {bytes(to_byte[ch] for ch in s): i for s, i in encoder.items() if s != "<|endoftext|>"}
    return tiktoken.Encoding(name="gpt2-local", pat_str=GPT2_SPLIT_PATTERN, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": 50256})


def bench_encoding(text, gpt2_dir, repeats, rows):
    n_bytes = len(text.encode("utf-8"))
    ours = load_gpt2(gpt2_dir)
    ids = ours.encode(text)  # warm-up
    enc = tiktoken_encoding(gpt2_dir)

    def ours_cold():
        ours._cache.clear()
        return ours.encode(text)

    fns = {"ours": ours_cold}
    if enc is not None:
        assert enc.encode_ordinary(text) == ids, "validation: ids differ from tiktoken's"
        fns["tiktoken"] = lambda: enc.encode_ordinary(text)
    fns["scanner"] = lambda: split_gpt2(text)
    pattern = compiled(GPT2_SPLIT_PATTERN)
    fns["regex"] = lambda: pattern.findall(text)
    t = median_times(fns, repeats)
    ours.fast = False
    ours._py_cache.clear()
    assert ours.encode(text) == ids, "validation: reference path differs"
    t_ref = median_times({"ref": lambda: (ours._py_cache.clear(), ours.encode(text))}, max(1, min(repeats, 3)))["ref"]
    mbs = {k: n_bytes / v / 1e6 for k, v in t.items()}
    rows.append((f"encode tiny Shakespeare ({n_bytes:,} bytes -> {len(ids):,} GPT-2 ids), one thread: ours",
                 f"{mbs['ours']:.1f} MB/s", f"{t['ours'] * 1e3:.1f} ms"))
    if "tiktoken" in mbs:
        import tiktoken
        rows.append((f"encode, same text and ranks: tiktoken {tiktoken.__version__} encode_ordinary",
                     f"{mbs['tiktoken']:.1f} MB/s",
                     f"ours / tiktoken = {mbs['ours'] / mbs['tiktoken']:.2f}x throughput, identical ids"))
    rows.append(("  of which: GPT-2 split, Numba scanner alone", f"{mbs['scanner']:.1f} MB/s", ""))
    rows.append(("  for scale: regex.findall with the GPT-2 pattern alone", f"{mbs['regex']:.1f} MB/s", ""))
    rows.append(("  readable reference path (regex + Python bpe, chunk cache)",
                 f"{n_bytes / t_ref / 1e6:.1f} MB/s", ""))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=os.environ.get("TINYSHAKESPEARE", str(DATA / "tinyshakespeare.txt")))
    ap.add_argument("--gpt2-dir", default=os.environ.get("GPT2_DIR", str(DATA / "gpt2")))
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--skip-encode", action="store_true")
    args = ap.parse_args()
    for path, flag in ((args.data, "--data"), (Path(args.gpt2_dir) / "vocab.json", "--gpt2-dir")):
        if not Path(path).is_file():
            sys.exit(f"{flag}: {path} does not exist (set TINYSHAKESPEARE / GPT2_DIR or pass the flag)")
    text = Path(args.data).read_text(encoding="utf-8")
    rows = []
    if not args.skip_train:
        bench_training(text, args.vocab_size, args.repeats, rows)
    if not args.skip_encode:
        bench_encoding(text, args.gpt2_dir, args.repeats, rows)
    print(f"\nmachine: {platform.machine()} {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"median of {args.repeats} alternating repeats\n")
    print("| what | figure | note |\n|---|---|---|")
    for what, figure, note in rows:
        print(f"| {what} | {figure} | {note} |")


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
