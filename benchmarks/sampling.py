"""Sampling speed of GPT.generate with and without the KV cache (tokens/s, median of repeats).

    OPENBLAS_NUM_THREADS=1 python benchmarks/sampling.py --preset cpu --tokens 256 --batch 1
    OPENBLAS_NUM_THREADS=1 python benchmarks/sampling.py --preset gpt2-small --prompt 32 --tokens 128 \
        --cached-only

Without the cache every new token re-runs the model over the whole context (up to block_size);
with it, each step runs one position and attends over cached keys and values. Both paths are
validated first: sampling with the same seed must give identical tokens while the context fits in
block_size. Each repeat times one whole `generate` call (the prompt's prefill included); the
figure is the median over repeats, as wall-clock tokens/s and as tokens per second of this
process's CPU time (the second moves less when other processes share the cores). The weights
are random (seeded): speed does not depend on what they are.
Does not: time the first call (Numba compilation and first allocations are excluded by a warm-up
run), or set thread counts (set OPENBLAS_NUM_THREADS / NUMBA_NUM_THREADS in the environment).
"""
import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tinygrad_gpt import cli  # noqa: E402
from tinygrad_gpt.model import GPT, GPTConfig  # noqa: E402

PRESETS = {
    "cpu": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, vocab_size=65),
    "gpu": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=65),
    "original": dict(n_layer=4, n_head=4, n_embd=64, block_size=32, vocab_size=65),
    "gpt2-small": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50257),  # 124M
}


def positive(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def time_generate(model, prompt, tokens, repeats, use_cache):
    """Median wall and CPU seconds of `repeats` generate calls (seeds 0..repeats-1)."""
    walls, cpus = [], []
    for r in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        model.generate(prompt, tokens, seed=r, use_cache=use_cache)
        cpus.append(time.process_time() - c0)
        walls.append(time.perf_counter() - w0)
    return statistics.median(walls), statistics.median(cpus)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    p.add_argument("--tokens", type=positive, default=256, help="new tokens per generate call")
    p.add_argument("--prompt", type=positive, default=1, help="prompt length (random token ids)")
    p.add_argument("--batch", type=positive, default=1)
    p.add_argument("--repeats", type=positive, default=3)
    p.add_argument("--validate", type=int, default=None,
                   help="tokens of the cached == uncached check (default: to block_size, at most 64; 0 skips)")
    p.add_argument("--cached-only", action="store_true", help="time only the KV-cache path")
    args = p.parse_args()
    config = GPTConfig(**PRESETS[args.preset])
    if args.prompt >= config.block_size:
        p.error(f"--prompt {args.prompt} must be shorter than the preset's block_size {config.block_size}")
    model = GPT(config, seed=0)
    prompt = np.random.default_rng(0).integers(0, config.vocab_size, (args.batch, args.prompt))  # (B, P)
    fit = min(config.block_size - args.prompt, 64) if args.validate is None else args.validate
    if fit > 0:
        a = model.generate(prompt, fit, seed=3, use_cache=True)
        b = model.generate(prompt, fit, seed=3, use_cache=False)
        if not np.array_equal(a, b):
            raise SystemExit("validation failed: cached and uncached sampling differ inside block_size")
        print(f"validated: cached == uncached for {fit} tokens after a {args.prompt}-token prompt")
    else:
        model.generate(prompt, 2, seed=3)  # warm-up only
    print(f"preset {args.preset}, batch {args.batch}, prompt {args.prompt}, {args.tokens} new tokens, "
          f"median of {args.repeats}; OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}, "
          f"load average {os.getloadavg()[0]:.2f}")
    for use_cache in (True,) if args.cached_only else (True, False):
        wall, cpu = time_generate(model, prompt, args.tokens, args.repeats, use_cache)
        n = args.batch * args.tokens
        print(f"{'with' if use_cache else 'without':7s} KV cache: {n / wall:8.1f} tokens/s "
              f"({n / cpu:8.1f} per CPU second)")


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
