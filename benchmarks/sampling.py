"""Sampling speed of GPT.generate with and without the KV cache (tokens/s, median of repeats).

    python benchmarks/sampling.py --preset cpu --tokens 256 --batch 1

Without the cache every new token re-runs the model over the whole context (up to block_size);
with it, each step runs one position and attends over cached keys and values. Both paths are
validated first: greedy-equivalent sampling (same seed) must give identical tokens while the
context fits in block_size. Does not: time the first call (Numba compilation is excluded by a
warm-up run).
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tinygrad_gpt.model import GPT, GPTConfig  # noqa: E402

PRESETS = {
    "cpu": dict(n_layer=4, n_head=4, n_embd=128, block_size=64),
    "gpu": dict(n_layer=6, n_head=6, n_embd=384, block_size=256),
    "original": dict(n_layer=4, n_head=4, n_embd=64, block_size=32),
}


def main():
    from tinygrad_gpt.backend import tune_host_allocator
    tune_host_allocator()  # glibc's malloc thresholds, for this process: see backend.py
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    model = GPT(GPTConfig(vocab_size=65, **PRESETS[args.preset]), seed=0)
    prompt = np.zeros((args.batch, 1), dtype=np.int64)
    fit = model.config.block_size - 1
    a = model.generate(prompt, fit, seed=3, use_cache=True)
    b = model.generate(prompt, fit, seed=3, use_cache=False)
    if not np.array_equal(a, b):
        raise SystemExit("validation failed: cached and uncached sampling differ inside block_size")
    print(f"validated: cached == uncached for {fit} tokens; preset {args.preset}, batch {args.batch}")
    for use_cache in (True, False):
        times = []
        for r in range(args.repeats):
            t0 = time.perf_counter()
            model.generate(prompt, args.tokens, seed=r, use_cache=use_cache)
            times.append(time.perf_counter() - t0)
        rate = args.batch * args.tokens / statistics.median(times)
        print(f"{'with' if use_cache else 'without':7s} KV cache: {rate:8.1f} tokens/s "
              f"({args.tokens} tokens x batch {args.batch}, median of {args.repeats})")


if __name__ == "__main__":
    main()
