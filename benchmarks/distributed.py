"""Data-parallel figures: MPI all-reduce bandwidth, step time of 1 process vs 2 ranks, and the
on-paper scaling of GPT-2 124M over a ring all-reduce.

    python benchmarks/distributed.py allreduce            # 2 ranks, buckets 64 KB .. 64 MB, vs memcpy
    python benchmarks/distributed.py step --shape cpu     # 1 proc x 2 threads vs 2 ranks x 1 thread
    python benchmarks/distributed.py step --shape gpt2-124m --steps 3
    python benchmarks/distributed.py paper --step-s 8.0 --batch-tokens 512   # the scaling table

`allreduce` times an in-place MPI_Allreduce (SUM, float32) of each bucket size between 2 ranks
(median of repeats after a barrier) and, in the same processes, np.copyto of the same size; GB/s is
bucket bytes / time for both (the all-reduce's "algorithm bandwidth"; with 2 ranks the bus bandwidth
2(n-1)/n x that is the same figure). `step` runs forward, backward, the bucketed all-reduce
(tinygrad_gpt.distributed.GradAllreduce), clip and AdamW on random tokens, the same global batch in
every variant, variants interleaved over rounds; "comm" is the time a rank spends in
GradAllreduce.reduce() (with overlap: what is left to wait for after backward). `paper` turns a
measured step time into ring all-reduce estimates for 2, 8 and 64 nodes at 10 and 100 Gb/s.

Workers are started as `mpirun -n 2 python benchmarks/distributed.py worker-...` (root allowed
through the environment). Does not: measure several hosts (one machine here)
or NCCL (no GPU); the paper table is arithmetic on the measured figures, labelled as such.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SHAPES = {  # (GPTConfig fields, global batch rows)
    "cpu": (dict(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128), 12),
    # GPT-2 small's parameter shapes (124M with the 50257 vocabulary); T = 256 keeps a CPU step short
    "gpt2-124m": (dict(vocab_size=50257, block_size=256, n_layer=12, n_head=12, n_embd=768), 2),
}
SIZES = [2 ** k for k in range(16, 27, 2)]  # 64 KB .. 64 MB


def _env(threads):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        env[name] = str(threads)
    return env


def _launch(ranks, threads, *args):
    cmd = [sys.executable, __file__, *args]
    if ranks > 1:
        # subtle: no --oversubscribe with ranks <= cores: it makes Open MPI yield the core while it
        # waits, and on a loaded machine every collective then took ~16 ms instead of ~30 us
        cmd = ["mpirun", "-n", str(ranks), "--bind-to", "none", *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True, env=_env(threads), timeout=900)
    if out.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    return json.loads([line for line in out.stdout.splitlines() if line.startswith("{")][-1])


# ---- workers (inside mpirun) ---------------------------------------------------------------------
def worker_allreduce(repeats):
    import numpy as np
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    rows = []
    for nbytes in SIZES:
        buf = np.ones(nbytes // 4, dtype=np.float32)            # (n,)
        src, dst = np.ones_like(buf), np.empty_like(buf)
        reps = max(5, min(repeats, int(2 ** 26 / nbytes) * 5))
        ar, cp = [], []
        for _ in range(reps):
            comm.Barrier()
            t0 = time.perf_counter()
            comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
            ar.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            np.copyto(dst, src)
            cp.append(time.perf_counter() - t0)
        worst = comm.allreduce(statistics.median(ar), op=MPI.MAX)
        rows.append({"bytes": nbytes, "allreduce_s": worst, "memcpy_s": statistics.median(cp), "repeats": reps})
    if comm.Get_rank() == 0:
        print(json.dumps({"rows": rows}))


def worker_step(shape, steps, overlap, bucket_mb):
    import numpy as np

    from tinygrad_gpt import distributed
    from tinygrad_gpt.model import GPT, GPTConfig
    from tinygrad_gpt.optim import AdamW, clip_grad_norm, decay_groups

    world = distributed.from_environment()
    size, rank = (1, 0) if world is None else (world.size, world.rank)
    cfg, batch = SHAPES[shape]
    model = GPT(GPTConfig(**cfg), seed=0)
    opt = AdamW(decay_groups(model.named_parameters(), 0.1), lr=1e-4, betas=(0.9, 0.95))
    sync = None if world is None else world.gradient_reducer(model.parameters(), int(bucket_mb * 2 ** 20), overlap)
    rng = np.random.default_rng(0)
    T = cfg["block_size"]
    mine = distributed.shard(batch, rank, size)
    step_s, comm_s = [], []
    for i in range(steps + 1):                                      # the first is a warm-up
        x = rng.integers(0, cfg["vocab_size"], (batch, T))[mine]     # (B / ranks, T)
        y = rng.integers(0, cfg["vocab_size"], (batch, T))[mine]
        if world is not None:
            world.barrier()
        t0 = time.perf_counter()
        model.zero_grad()
        _, loss = model(x, y)
        if sync is not None:
            sync.arm()
        loss.backward(np.full(loss.shape, len(mine) / batch, dtype=loss.dtype))
        t1 = time.perf_counter()
        if sync is not None:
            sync.reduce()
        t2 = time.perf_counter()
        clip_grad_norm(model.parameters(), 1.0)
        opt.step()
        t3 = time.perf_counter()
        if i:
            step_s.append(t3 - t0)
            comm_s.append(t2 - t1)
    if rank == 0:
        print(json.dumps({"step_s": statistics.median(step_s), "comm_s": statistics.median(comm_s),
                          "params": model.num_parameters(), "tokens": batch * T}))


# ---- the launcher --------------------------------------------------------------------------------
def run_allreduce(args):
    res = _launch(2, 1, "worker-allreduce", "--repeats", str(args.repeats))
    print("| bucket | all-reduce, 2 ranks | GB/s | memcpy GB/s (same size, one rank) | all-reduce / memcpy |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for r in res["rows"]:
        ar, cp = r["bytes"] / r["allreduce_s"] / 1e9, r["bytes"] / r["memcpy_s"] / 1e9
        size = f"{r['bytes'] // 1024} KB" if r["bytes"] < 2 ** 20 else f"{r['bytes'] // 2 ** 20} MB"
        print(f"| {size} | {r['allreduce_s'] * 1e3:.3f} ms | {ar:.2f} | {cp:.2f} | {ar / cp:.2f} |")


def run_step(args):
    variants = [("1 process x 2 threads", 1, 2, False), ("2 ranks x 1 thread", 2, 1, False),
                ("2 ranks x 1 thread, overlap", 2, 1, True)]
    results = {name: [] for name, *_ in variants}
    for _ in range(args.rounds):
        for name, ranks, threads, overlap in variants:
            extra = ["--overlap"] if overlap else []
            results[name].append(_launch(ranks, threads, "worker-step", "--shape", args.shape, "--steps",
                                         str(args.steps), "--bucket-mb", str(args.bucket_mb), *extra))
    first = results[variants[0][0]][0]
    print(f"shape {args.shape}: {first['params']:,} parameters, {first['tokens']} tokens per step, "
          f"{args.rounds} rounds x {args.steps} steps (median of medians)")
    print("| variant | step ms | tokens/s | comm ms | comm share |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, *_ in variants:
        step = statistics.median(r["step_s"] for r in results[name])
        comm = statistics.median(r["comm_s"] for r in results[name])
        print(f"| {name} | {step * 1e3:.1f} | {first['tokens'] / step:,.0f} | {comm * 1e3:.1f} | {comm / step:.0%} |")


def run_paper(args):
    """Ring all-reduce per step: 2 (N - 1) / N x S / bandwidth + 2 (N - 1) x latency."""
    grad_bytes = args.params * 4
    print(f"per-node step {args.step_s:.2f} s (measured, {args.batch_tokens} tokens per node), gradients "
          f"{grad_bytes / 1e6:.0f} MB float32, latency {args.latency_us} us per ring hop")
    print("| nodes | link | all-reduce s | step s, no overlap | efficiency | step s, full overlap | efficiency |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    for gbit in (10, 100):
        for n in (2, 8, 64):
            comm = 2 * (n - 1) / n * grad_bytes / (gbit * 1e9 / 8) + 2 * (n - 1) * args.latency_us * 1e-6
            plain, hidden = args.step_s + comm, max(args.step_s, comm)
            print(f"| {n} | {gbit} Gb/s | {comm:.3f} | {plain:.2f} | {args.step_s / plain:.0%} | {hidden:.2f} | "
                  f"{args.step_s / hidden:.0%} |")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("allreduce")
    a.add_argument("--repeats", type=int, default=50)
    s = sub.add_parser("step")
    s.add_argument("--shape", choices=sorted(SHAPES), default="cpu")
    s.add_argument("--steps", type=int, default=20)
    s.add_argument("--rounds", type=int, default=3)
    s.add_argument("--bucket-mb", type=float, default=4.0)
    q = sub.add_parser("paper")
    q.add_argument("--step-s", type=float, required=True, help="measured compute time of one step on one node")
    q.add_argument("--batch-tokens", type=int, required=True)
    q.add_argument("--params", type=int, default=124_439_808)
    q.add_argument("--latency-us", type=float, default=20.0)
    wa = sub.add_parser("worker-allreduce")
    wa.add_argument("--repeats", type=int, default=50)
    ws = sub.add_parser("worker-step")
    ws.add_argument("--shape", choices=sorted(SHAPES), default="cpu")
    ws.add_argument("--steps", type=int, default=20)
    ws.add_argument("--bucket-mb", type=float, default=4.0)
    ws.add_argument("--overlap", action="store_true")
    args = p.parse_args()
    if args.cmd == "allreduce":
        run_allreduce(args)
    elif args.cmd == "step":
        run_step(args)
    elif args.cmd == "paper":
        run_paper(args)
    elif args.cmd == "worker-allreduce":
        worker_allreduce(args.repeats)
    else:
        worker_step(args.shape, args.steps, args.overlap, args.bucket_mb)


if __name__ == "__main__":
    main()
