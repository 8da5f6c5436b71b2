"""GPT-2 124M on the CPU: tinygrad_gpt against transformers / PyTorch eager, side by side.

    python benchmarks/gpt2.py --torch-python /path/to/venv/bin/python --only parity,decode
    python benchmarks/gpt2.py --torch-python /path/to/venv/bin/python --only train --rounds 2

Random weights in the GPT-2 124M shape (12 layers, 12 heads, 768 wide, 1024 positions, 50257
tokens) are saved by transformers' GPT2LMHeadModel.save_pretrained into a temporary folder, which
both sides then use. Every variant runs in a fresh subprocess with the same thread count pinned
through the environment (OMP/OPENBLAS/MKL/NUMBA_NUM_THREADS) before numpy, numba or torch load;
variants alternate round by round. Figures:
  parity   max |logits ours - logits transformers| on one (1, 64) batch, ours loaded from the folder
  decode   batch 1, a 32-token prompt, 128 new tokens, greedy with the KV cache: tokens/s of
           GPT.generate(top_k=1) and of transformers' generate(do_sample=False, use_cache=True);
           the memory-bandwidth floor per token is the weight bytes over the measured copy bandwidth
           (numpy copy of a 512 MB array, read + write counted), and each side's fraction of it
  train    one step at batch 4 x 256 (forward, backward, clip to 1.0, AdamW): ms and tokens/s, ours
           against PyTorch eager (the benchmarks/torch_gpt.py model, F.scaled_dot_product_attention),
           the step's GEMM floor (its matmul FLOPs over the measured sgemm GFLOP/s) and the peak RSS
           of each process (ru_maxrss, which includes the interpreter and libraries)
The worker prints one JSON line; the driver prints the table.

Does not: make torch or transformers dependencies (they are imported only in the peer workers),
download weights, or time anything but the CPU.
"""
import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHAPE = dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50257)
PROMPT, NEW = 32, 128
TRAIN_B, TRAIN_T = 4, 256


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---- workers: each runs in its own process -----------------------------------------------------

def worker_save(args):
    """transformers: random 124M GPT2LMHeadModel -> folder; its logits and greedy tokens -> .npy."""
    import numpy as np
    import torch
    import transformers
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=SHAPE["n_layer"], n_head=SHAPE["n_head"], n_embd=SHAPE["n_embd"],
                                  n_positions=SHAPE["block_size"], vocab_size=SHAPE["vocab_size"])
    model = transformers.GPT2LMHeadModel(cfg).eval()
    model.save_pretrained(args.folder)
    idx = np.random.default_rng(0).integers(0, SHAPE["vocab_size"], (1, 64))
    with torch.no_grad():
        np.save(Path(args.folder) / "bench_logits.npy", model(torch.tensor(idx)).logits.numpy())
    np.save(Path(args.folder) / "bench_idx.npy", idx)
    return {"params": sum(p.numel() for p in model.parameters())}


def worker_parity_ours(args):
    import numpy as np
    from tinygrad_gpt.model import GPT
    model = GPT.from_pretrained(args.folder)
    idx = np.load(Path(args.folder) / "bench_idx.npy")
    want = np.load(Path(args.folder) / "bench_logits.npy")
    got = model(idx)[0].data
    return {"max_abs_diff": float(np.abs(got - want).max()), "max_abs_logit": float(np.abs(want).max())}


def _prompt():
    import numpy as np
    return np.random.default_rng(1).integers(0, SHAPE["vocab_size"], (1, PROMPT))


def worker_decode_ours(args):
    from tinygrad_gpt.model import GPT
    model = GPT.from_pretrained(args.folder)
    prompt = _prompt()
    model.generate(prompt, 4, top_k=1)  # warm-up: kernels compiled, caches allocated once
    t0 = time.perf_counter()
    out = model.generate(prompt, NEW, top_k=1)
    s = time.perf_counter() - t0
    return {"s": s, "tokens": out[0, PROMPT:].tolist(), "rss_mb": peak_rss_mb()}


def worker_decode_hf(args):
    import torch
    import transformers
    torch.set_num_threads(args.threads)
    model = transformers.GPT2LMHeadModel.from_pretrained(args.folder).eval()
    prompt = torch.tensor(_prompt())
    kw = dict(do_sample=False, use_cache=True, pad_token_id=0)
    with torch.no_grad():
        model.generate(prompt, max_new_tokens=4, min_new_tokens=4, **kw)
        t0 = time.perf_counter()
        out = model.generate(prompt, max_new_tokens=NEW, min_new_tokens=NEW, **kw)
        s = time.perf_counter() - t0
    return {"s": s, "tokens": out[0, PROMPT:].tolist(), "rss_mb": peak_rss_mb()}


def _batches(n):
    import numpy as np
    rng = np.random.default_rng(0)
    return [(rng.integers(0, SHAPE["vocab_size"], (TRAIN_B, TRAIN_T)),
             rng.integers(0, SHAPE["vocab_size"], (TRAIN_B, TRAIN_T))) for _ in range(n)]


def worker_train_ours(args):
    from tinygrad_gpt.model import GPT, GPTConfig
    from tinygrad_gpt.optim import AdamW, decay_groups
    from tinygrad_gpt.train import train_step
    model = GPT(GPTConfig(**{k: SHAPE[k] for k in SHAPE}), seed=0)
    opt = AdamW(decay_groups(model.named_parameters(), 0.1), lr=3e-4, betas=(0.9, 0.99))
    times, rss = [], []
    for i, (x, y) in enumerate(_batches(args.warmup + args.iters)):
        t0 = time.perf_counter()
        loss_value = train_step(model, opt, x, y, grad_clip=1.0).item()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
        rss.append(peak_rss_mb())
    return {"ms": [t * 1000 for t in times], "rss_mb": rss, "loss": loss_value}


def worker_train_torch(args):
    import torch
    from torch_gpt import make_torch_adamw, make_torch_gpt
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = make_torch_gpt(SHAPE["n_layer"], SHAPE["n_head"], SHAPE["n_embd"], SHAPE["block_size"], SHAPE["vocab_size"])
    opt = make_torch_adamw(model, lr=3e-4)
    times, rss = [], []
    for i, (x, y) in enumerate(_batches(args.warmup + args.iters)):
        x, y = torch.tensor(x), torch.tensor(y)
        t0 = time.perf_counter()
        loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss_value = loss.item()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
        rss.append(peak_rss_mb())
    return {"ms": [t * 1000 for t in times], "rss_mb": rss, "loss": loss_value}


def worker_machine(args):
    """Copy bandwidth (GB/s, read + write) and float32 sgemm GFLOP/s at the model's GEMM shapes."""
    import numpy as np
    a = np.ones(128 * 1024 * 1024, np.float32)  # 512 MB
    b = np.empty_like(a)
    copies = []
    for _ in range(5):
        t0 = time.perf_counter()
        np.copyto(b, a)
        copies.append(time.perf_counter() - t0)
    gemm = {}
    N = TRAIN_B * TRAIN_T
    for name, (m, k, n) in {"c_fc": (N, 768, 3072), "lm_head": (N, 768, 50257)}.items():
        x, w = np.ones((m, k), np.float32), np.ones((k, n), np.float32)
        x @ w
        ts = []
        for _ in range(3):
            t0 = time.perf_counter()
            x @ w
            ts.append(time.perf_counter() - t0)
        gemm[name] = 2 * m * k * n / min(ts) / 1e9
    return {"copy_gb_s": 2 * a.nbytes / min(copies) / 1e9, "sgemm_gflop_s": gemm}


WORKERS = {"save": worker_save, "parity-ours": worker_parity_ours, "decode-ours": worker_decode_ours,
           "decode-hf": worker_decode_hf, "train-ours": worker_train_ours, "train-torch": worker_train_torch,
           "machine": worker_machine}
PEER = {"save", "decode-hf", "train-torch"}


# ---- the driver ----------------------------------------------------------------------------------

def thread_env(threads):
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    env.setdefault("NUMBA_NUM_THREADS", str(threads))
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run(worker, args, folder):
    python = args.torch_python if worker in PEER else sys.executable
    cmd = [python, __file__, "--worker", worker, "--folder", str(folder), "--threads", str(args.threads),
           "--warmup", str(args.warmup), "--iters", str(args.iters)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=thread_env(args.threads))
    if proc.returncode != 0:
        raise RuntimeError(f"{worker} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def step_flops():
    """Matmul FLOPs of one training step: forward 2 * N * (weights of every Linear + the tied head)
    plus attention's QK^T and PV (2 * 2 * B * T^2 * C per layer, the full square), times 3 for
    forward + backward."""
    C, L, V, N = SHAPE["n_embd"], SHAPE["n_layer"], SHAPE["vocab_size"], TRAIN_B * TRAIN_T
    linear = L * (C * 3 * C + C * C + C * 4 * C + 4 * C * C) + C * V
    attention = L * 4 * TRAIN_B * TRAIN_T * TRAIN_T * C
    return 3 * (2 * N * linear + attention)


def main():
    p = argparse.ArgumentParser(description="GPT-2 124M: tinygrad_gpt vs transformers / PyTorch eager")
    p.add_argument("--torch-python", default=str(REPO.parent / "peers" / "bin" / "python"),
                   help="an interpreter with torch and transformers")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--only", default="parity,decode,train", help="comma list of parity, decode, train")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds of each timed pair")
    p.add_argument("--warmup", type=int, default=1, help="untimed training steps per worker")
    p.add_argument("--iters", type=int, default=2, help="timed training steps per worker")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--folder", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(WORKERS[args.worker](args)))
        return 0
    if subprocess.run([args.torch_python, "-c", "import torch, transformers"], capture_output=True).returncode:
        print(f"error: {args.torch_python} cannot import torch and transformers (pass --torch-python)",
              file=sys.stderr)
        return 2
    only = set(args.only.split(","))
    machine = run("machine", args, "-")
    print(f"machine: copy {machine['copy_gb_s']:.1f} GB/s, sgemm "
          + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in machine["sgemm_gflop_s"].items())
          + f", {args.threads} threads", flush=True)
    folder = Path(tempfile.mkdtemp(prefix="gpt2-124m-"))
    try:
        params = run("save", args, folder)["params"]
        weight_bytes = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
        print(f"random GPT-2 124M saved by transformers: {params:,} parameters, {weight_bytes / 1e6:.0f} MB",
              flush=True)
        if "parity" in only:
            out = run("parity-ours", args, folder)
            print(f"parity: max |logits ours - transformers| = {out['max_abs_diff']:.2e} "
                  f"(largest |logit| {out['max_abs_logit']:.2f})", flush=True)
        if "decode" in only:
            res = {"decode-ours": [], "decode-hf": []}
            tokens = {}
            for r in range(args.rounds):
                for w in res:
                    out = run(w, args, folder)
                    res[w].append(NEW / out["s"])
                    tokens[w] = out["tokens"]
                    print(f"round {r + 1}: {w:12s} {NEW / out['s']:7.2f} tokens/s (peak RSS {out['rss_mb']:.0f} MB)",
                          flush=True)
            same = sum(a == b for a, b in zip(tokens["decode-ours"], tokens["decode-hf"]))
            floor_s = weight_bytes / (machine["copy_gb_s"] * 1e9)
            ours, hf = statistics.median(res["decode-ours"]), statistics.median(res["decode-hf"])
            print(f"decode (batch 1, prompt {PROMPT}, {NEW} new, greedy, KV cache; median of {args.rounds}): "
                  f"ours {ours:.2f} tokens/s, transformers {hf:.2f} tokens/s, ratio {ours / hf:.2f}x; "
                  f"greedy tokens equal {same}/{NEW}")
            print(f"  bandwidth floor {floor_s * 1000:.1f} ms/token ({weight_bytes / 1e6:.0f} MB of weights at "
                  f"{machine['copy_gb_s']:.1f} GB/s): ours at {floor_s * ours:.0%} of it, transformers at "
                  f"{floor_s * hf:.0%}", flush=True)
        if "train" in only:
            res = {"train-ours": [], "train-torch": []}
            rss = {"train-ours": [], "train-torch": []}
            for r in range(args.rounds):
                for w in res:
                    out = run(w, args, folder)
                    res[w].extend(out["ms"])
                    rss[w].append(out["rss_mb"])
                    print(f"round {r + 1}: {w:12s} " + " ".join(f"{m:.0f}" for m in out["ms"])
                          + f" ms/step, peak RSS by step {[round(x) for x in out['rss_mb']]} MB", flush=True)
            flops = step_flops()
            gflops = max(machine["sgemm_gflop_s"].values())  # the best rate measured: a true floor
            floor_ms = flops / (gflops * 1e9) * 1000
            ours, torch_ms = statistics.median(res["train-ours"]), statistics.median(res["train-torch"])
            toks = TRAIN_B * TRAIN_T
            print(f"train step (batch {TRAIN_B} x {TRAIN_T}, AdamW, clip; median of {len(res['train-ours'])} steps "
                  f"over {args.rounds} rounds): ours {ours:.0f} ms ({toks / ours * 1000:.0f} tokens/s), torch "
                  f"{torch_ms:.0f} ms ({toks / torch_ms * 1000:.0f} tokens/s), ratio {ours / torch_ms:.2f}")
            print(f"  GEMM floor {floor_ms:.0f} ms ({flops / 1e12:.2f} TFLOP at {gflops:.0f} GFLOP/s): ours "
                  f"{ours / floor_ms:.2f}x of it, torch {torch_ms / floor_ms:.2f}x")
            peak = {w: max(max(x) for x in rss[w]) for w in rss}
            print(f"  peak RSS: ours {peak['train-ours']:.0f} MB, torch {peak['train-torch']:.0f} MB, ratio "
                  f"{peak['train-ours'] / peak['train-torch']:.2f}", flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
