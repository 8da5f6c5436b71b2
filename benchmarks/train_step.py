"""Time one full training step (forward, backward, clip, AdamW) of the GPT: ours vs PyTorch eager and compiled.

    python benchmarks/train_step.py --preset cpu --threads 2
    python benchmarks/train_step.py --preset cpu --torch-python /path/to/venv/bin/python

Each variant runs in a fresh subprocess with the thread count pinned through the environment
(OMP/OPENBLAS/MKL/NUMBA_NUM_THREADS) before numpy, numba or torch are imported:
  ours-fused      tinygrad_gpt with the Numba kernels
  ours-threads    the same step over --threads threads, each on its rows of the batch
                  (replicas.Replicas), with OPENBLAS_NUM_THREADS=1 as that class asks
  ours-reference  tinygrad_gpt with TINYGRAD_GPT_KERNELS=reference (NumPy references)
  torch-eager     the same architecture, init scheme, batch and optimizer in PyTorch eager
                  (skipped with a note when no interpreter with torch is found)
  torch-compiled  the same under torch.compile (inductor; its compilation happens in the warm-up
                  steps, which are not timed; --no-compiled skips it)
Variants are interleaved over --rounds rounds so that machine noise hits all of them alike; each
round reports the median ms/iter over --iters timed steps after --warmup steps, and the table shows
the median over rounds, tokens/s and the ratio ours / torch.

Does not: make PyTorch a dependency (it is only imported in the torch worker), or compare
numerics (tests/engine/test_torch_parity.py does that).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PRESETS = {  # the model/batch shapes of examples/shakespeare.py's presets (dropout off for timing)
    "tiny": dict(n_layer=2, n_head=2, n_embd=32, block_size=32, batch_size=8),
    "cpu": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12),
    "original": dict(n_layer=4, n_head=4, n_embd=64, block_size=32, batch_size=64),
    "gpu": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, batch_size=64),
}
VOCAB = 65


def worker_ours(cfg, warmup, iters, replica_threads=0):
    import time

    import numpy as np

    from tinygrad_gpt.backend import tune_host_allocator
    from tinygrad_gpt.model import GPT, GPTConfig
    from tinygrad_gpt.optim import AdamW, decay_groups
    from tinygrad_gpt.replicas import Replicas
    from tinygrad_gpt.train import train_step

    tune_host_allocator()  # as the Trainer does: glibc's malloc thresholds, see backend.py
    model = GPT(GPTConfig(vocab_size=VOCAB, block_size=cfg["block_size"], n_layer=cfg["n_layer"],
                          n_head=cfg["n_head"], n_embd=cfg["n_embd"]), seed=0)
    opt = AdamW(decay_groups(model.named_parameters(), 0.1), lr=1e-3, betas=(0.9, 0.99))
    replicas = Replicas(model, replica_threads) if replica_threads else None
    rng = np.random.default_rng(0)
    times, losses = [], []
    for i in range(warmup + iters):
        x = rng.integers(0, VOCAB, (cfg["batch_size"], cfg["block_size"]))
        y = rng.integers(0, VOCAB, (cfg["batch_size"], cfg["block_size"]))
        t0 = time.perf_counter()
        losses.append(train_step(model, opt, x, y, grad_clip=1.0, replicas=replicas).item())
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    if replicas is not None:
        replicas.close()
    return times, losses


def worker_torch(cfg, warmup, iters, threads, compiled=False):
    import time

    import torch

    from torch_gpt import make_torch_adamw, make_torch_gpt

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = make_torch_gpt(cfg["n_layer"], cfg["n_head"], cfg["n_embd"], cfg["block_size"], VOCAB)
    opt = make_torch_adamw(model)
    step_model = torch.compile(model) if compiled else model  # the forward and its backward compiled
    g = torch.Generator().manual_seed(0)
    times, losses = [], []
    for i in range(warmup + iters):
        x = torch.randint(0, VOCAB, (cfg["batch_size"], cfg["block_size"]), generator=g)
        y = torch.randint(0, VOCAB, (cfg["batch_size"], cfg["block_size"]), generator=g)
        t0 = time.perf_counter()
        loss = step_model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times, losses


def thread_env(threads, kernels=None):
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    env.setdefault("NUMBA_NUM_THREADS", str(threads))
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    if kernels:
        env["TINYGRAD_GPT_KERNELS"] = kernels
    return env


def run_variant(python, variant, args):
    cmd = [python, __file__, "--worker", variant, "--preset", args.preset, "--threads", str(args.threads),
           "--warmup", str(args.warmup), "--iters", str(args.iters)]
    kernels = {"ours-fused": "fused", "ours-threads": "fused", "ours-reference": "reference"}.get(variant)
    env = thread_env(args.threads, kernels)
    if variant == "ours-threads":
        env["OPENBLAS_NUM_THREADS"] = "1"   # the threads split the batch; see replicas.Replicas
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{variant} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def find_torch_python(explicit):
    candidates = [explicit] if explicit else [sys.executable, str(REPO.parent / "torchvenv" / "bin" / "python")]
    for py in candidates:
        if py and Path(py).exists() and subprocess.run([py, "-c", "import torch"], capture_output=True).returncode == 0:
            return py
    return None


def main():
    p = argparse.ArgumentParser(description="GPT training-step time: tinygrad_gpt vs PyTorch eager and compiled")
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--torch-python", default=None, help="an interpreter with torch (default: this one, "
                                                        "then ../torchvenv/bin/python)")
    p.add_argument("--no-reference", action="store_true", help="skip the kernels-off variant")
    p.add_argument("--no-compiled", action="store_true", help="skip the torch.compile variant")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    cfg = PRESETS[args.preset]

    if args.worker:
        if args.worker.startswith("torch-"):
            times, losses = worker_torch(cfg, args.warmup, args.iters, args.threads,
                                         compiled=args.worker == "torch-compiled")
        else:
            times, losses = worker_ours(cfg, args.warmup, args.iters,
                                        args.threads if args.worker == "ours-threads" else 0)
        print(json.dumps({"ms": statistics.median(times) * 1000, "first_loss": losses[0]}))
        return

    variants = ["ours-fused"] + (["ours-threads"] if args.threads > 1 else []) \
        + ([] if args.no_reference else ["ours-reference"])
    torch_python = find_torch_python(args.torch_python)
    if torch_python:
        variants += ["torch-eager"] + ([] if args.no_compiled else ["torch-compiled"])
    else:
        print("note: no interpreter with torch found; PyTorch column skipped (pass --torch-python)")
    results = {v: [] for v in variants}
    for r in range(args.rounds):
        for v in variants:
            out = run_variant(torch_python if v.startswith("torch-") else sys.executable, v, args)
            results[v].append(out["ms"])
            print(f"round {r + 1}: {v:15s} {out['ms']:8.1f} ms/iter  (first loss {out['first_loss']:.3f})",
                  flush=True)
    tokens = cfg["batch_size"] * cfg["block_size"]
    print(f"\npreset {args.preset} {cfg}, {args.threads} threads, median over {args.rounds} rounds of the "
          f"median of {args.iters} steps")
    print(f"{'variant':15s} {'ms/iter':>9s} {'tokens/s':>10s} {'vs eager':>9s} {'vs compiled':>12s}")
    peers = {v: statistics.median(results[v]) for v in ("torch-eager", "torch-compiled") if v in results}
    for v in variants:
        ms = statistics.median(results[v])
        ratios = [f"{ms / peers[peer]:{w}.2f}" if peer in peers else f"{'-':>{w}s}"
                  for peer, w in (("torch-eager", 9), ("torch-compiled", 12))]
        print(f"{v:15s} {ms:9.1f} {tokens / ms * 1000:10.0f} {' '.join(ratios)}")


if __name__ == "__main__":
    main()
