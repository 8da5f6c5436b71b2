"""Benchmark the Numba kernels (tinygrad_gpt/kernels/cpu) against their NumPy references (tinygrad_gpt/kernels/reference.py).

    python benchmarks/cpu_kernels.py                      # both presets, 2 threads, compile times too
    python benchmarks/cpu_kernels.py --presets cpu --threads 1 --no-compile

For every kernel at the training sizes of the `cpu` preset (B=12, T=64, C=128, nh=4, hs=32, V=65,
4 layers) and the `gpu` preset (B=64, T=256, C=384, nh=6, hs=64, V=65, 6 layers), float32:
  1. validate: the Numba result must equal the reference (norm-based relative error < 1e-5, as in
     tests/kernels/test_kernels.py), else the script stops before timing anything;
  2. time: both run a few times to warm up, then alternate reference / Numba for --repeats
     rounds; the table shows medians, the speed-up (ref / numba), and the Numba kernel's
     throughput (from the alternating median); "numba alone" is the median of as many calls of
     the Numba kernel back to back. The two differ where the reference's large temporaries make
     glibc hand memory back to the OS, so that the kernel's fresh output page-faults again; in a
     training step, with other ops between kernel calls, the alternating figure is the realistic
     one. Throughput: GB/s for the memory-bound kernels (bytes each must read and write once), GFLOP/s
     for attention (the causal half only: 2 * hs FLOPs per (query, key <= query) pair per matmul;
     2 matmuls forward, 5 backward counting the recomputed scores).
Then the first-call compile time of every kernel, in a subprocess each: cold (an empty Numba cache:
NUMBA_CACHE_DIR set to a fresh temporary directory) and cached (the same directory, second process).

AdamW is timed as the optimizer uses it: one call per parameter tensor of the preset's GPT (GPT-2
layout, lm_head tied to wte), so per-call overhead counts; Muon's momentum and apply passes the same
way, over the blocks' matrices (its Newton-Schulz matmuls are BLAS, not timed here). Embedding backward is the token table's
(N = B*T indices into V = 65 rows, so every row repeats).

Follows: llm.c `dev/cuda/*.cu` (validate, then benchmark). Does not: time float64 (the gradient
check dtype), or pin threads; the machine these figures come from is shared, so read medians and
re-run when a figure looks off. --threads sets NUMBA_NUM_THREADS for the Numba kernels; NumPy's
BLAS (the reference's batched matmuls in attention) keeps its own default thread count.
"""
import argparse
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PRESETS = {
    # name: B, T, C, n_head, V, n_layer (tinygrad_gpt/train.py PRESETS; V is the char vocabulary)
    "cpu": dict(B=12, T=64, C=128, nh=4, V=65, L=4),
    "gpu": dict(B=64, T=256, C=384, nh=6, V=65, L=6),
}
TOL = 1e-5  # float32, norm-based relative error, as in tests/kernels/test_kernels.py


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2, help="Numba threads (NUMBA_NUM_THREADS)")
    p.add_argument("--presets", default="cpu,gpu", help="comma-separated: cpu, gpu")
    p.add_argument("--repeats", type=int, default=0,
                   help="timed rounds per kernel (default: enough for ~1.5 s, 5 to 200)")
    p.add_argument("--no-compile", action="store_true", help="skip the compile-time measurement")
    return p.parse_args()


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None:
    # before numba is imported: the pool size is fixed when numba starts
    os.environ["NUMBA_NUM_THREADS"] = str(ARGS.threads)

import numpy as np

from tinygrad_gpt.kernels import cpu, reference


# ------------------------------------------------------------------------------------------------
# cases: (kernel name, reference callable, numba callable, args factory, work measure)
# ------------------------------------------------------------------------------------------------
def rel_err(a, ref):
    a = np.asarray(a, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    diff = np.linalg.norm(a - ref)
    return 0.0 if diff == 0 else diff / np.linalg.norm(ref)


def gpt_parameter_shapes(C, T, V, L):
    """Parameter shapes of the GPT (Hugging Face GPT-2 layout, lm_head tied to wte)."""
    shapes = [(V, C), (T, C)]                                      # wte, wpe
    for _ in range(L):
        shapes += [(C,), (C,),                                     # ln_1 weight, bias
                   (C, 3 * C), (3 * C,), (C, C), (C,),             # attn.c_attn, attn.c_proj
                   (C,), (C,),                                     # ln_2
                   (C, 4 * C), (4 * C,), (4 * C, C), (C,)]         # mlp.c_fc, mlp.c_proj
    return shapes + [(C,), (C,)]                                   # ln_f


def dropout_shape(preset):
    """(B, T, C): the shape of the model's dropouts (embeddings, attention and MLP outputs)."""
    P = PRESETS[preset]
    return (P["B"], P["T"], P["C"])


def make_cases(preset, rng):
    """Every kernel's inputs at this preset's training sizes, float32."""
    P = PRESETS[preset]
    B, T, C, nh, V, L = P["B"], P["T"], P["C"], P["nh"], P["V"], P["L"]
    N, hs = B * T, C // nh
    f = np.float32
    itemsize = 4

    def normal(*shape, scale=1.0):
        return (rng.standard_normal(shape) * scale).astype(f)

    x = normal(N, C, scale=2.0) + f(0.5)                           # (N, C)
    w, b = normal(C), normal(C)                                    # (C,)
    dout_c = normal(N, C)                                          # (N, C)
    _, mean, rstd = reference.layernorm_forward(x, w, b)
    h = normal(N, 4 * C)                                           # (N, 4C) MLP hidden
    dh = normal(N, 4 * C)                                          # (N, 4C)
    logits = normal(N, V, scale=3.0)                               # (N, V)
    targets = rng.integers(0, V, size=N)                           # (N,)
    _, lse_ce = reference.softmax_cross_entropy_forward(logits, targets)
    dlosses = np.full(N, 1.0 / N, dtype=f)                         # (N,) mean loss
    q, k, v, dy = (normal(B, nh, T, hs) for _ in range(4))         # (B, nh, T, hs)
    scale = 1.0 / math.sqrt(hs)
    y, lse_at = reference.attention_forward(q, k, v, scale)
    shapes = gpt_parameter_shapes(C, T, V, L)
    n_params = sum(int(np.prod(s)) for s in shapes)

    def adamw_state(seed):
        """Parameters, gradients and zeroed moments of the whole GPT, float32, from `seed`."""
        r = np.random.default_rng(seed)
        params = [r.standard_normal(s).astype(f) for s in shapes]
        return dict(params=params, grads=[r.standard_normal(s).astype(f) for s in shapes],
                    m=[np.zeros_like(p) for p in params], v=[np.zeros_like(p) for p in params])

    def adamw_all(module, state):
        """One optimizer step: a call per parameter tensor; returns params, m, v (updated)."""
        def run():
            for p, g, m, v_ in zip(state["params"], state["grads"], state["m"], state["v"]):
                module.adamw_update(p, g, m, v_, 1e-3, 0.9, 0.95, 1e-8, 0.1, 10)
            return state["params"] + state["m"] + state["v"]
        return run

    # Muon's two passes, as the optimizer calls them: per block matrix, the momentum then the apply
    # of an update (standing for the orthogonalised momentum, which matmuls make between the two)
    muon_shapes = [(C, 3 * C), (C, C), (C, 4 * C), (4 * C, C)] * L
    n_muon = sum(a * b for a, b in muon_shapes)

    def muon_state(seed):
        r = np.random.default_rng(seed)
        params = [r.standard_normal(s).astype(f) for s in muon_shapes]
        return dict(params=params, grads=[r.standard_normal(s).astype(f) for s in muon_shapes],
                    updates=[r.standard_normal(s).astype(f) for s in muon_shapes],
                    m=[np.zeros_like(p) for p in params])

    def muon_all(module, state):
        """One Muon step's elementwise passes; returns params and momenta (updated in place)."""
        def run():
            for p, g, u, m in zip(state["params"], state["grads"], state["updates"], state["m"]):
                module.muon_momentum(g, m, 0.95)
                module.muon_apply(p, u, 0.02, 1.0, 0.0)
            return state["params"] + state["m"]
        return run

    causal_pairs = B * nh * T * (T + 1) / 2
    gb = 1e-9 * itemsize
    cases = [
        ("layernorm_forward", (x, w, b), gb * 2 * N * C, "GB/s"),
        ("layernorm_backward", (dout_c, x, w, mean, rstd), gb * 3 * N * C, "GB/s"),
        ("gelu_forward", (h,), gb * 2 * N * 4 * C, "GB/s"),
        ("gelu_backward", (dh, h), gb * 3 * N * 4 * C, "GB/s"),
        ("relu2_forward", (h,), gb * 2 * N * 4 * C, "GB/s"),
        ("relu2_backward", (dh, h), gb * 3 * N * 4 * C, "GB/s"),
        ("softmax_cross_entropy_forward", (logits, targets), gb * N * V, "GB/s"),
        ("softmax_cross_entropy_backward", (dlosses, logits, lse_ce, targets), gb * 2 * N * V,
         "GB/s"),
        ("attention_forward", (q, k, v, scale), 1e-9 * 2 * 2 * hs * causal_pairs, "GFLOP/s"),
        ("attention_backward", (dy, q, k, v, y, lse_at, scale), 1e-9 * 5 * 2 * hs * causal_pairs,
         "GFLOP/s"),
        ("embedding_backward", (dout_c, targets, V), gb * (N * C + V * C), "GB/s"),
        ("dropout_forward", (x, 0.2, 12345), gb * 2 * N * C, "GB/s"),   # the model's (B, T, C) dropouts
    ]
    out = []
    for name, args, work, unit in cases:
        out.append((name, (lambda n=name, a=args: getattr(reference, n)(*a)),
                    (lambda n=name, a=args: getattr(cpu, n)(*a)), work, unit))
    # AdamW: each side updates its own copy of the same starting state, in place
    seed = int(rng.integers(2**31))
    out.append((f"adamw_update ({len(shapes)} tensors, {n_params / 1e6:.2f}M)",
                adamw_all(reference, adamw_state(seed)), adamw_all(cpu, adamw_state(seed)),
                gb * 7 * n_params, "GB/s"))
    # Muon: momentum reads g, m and writes m, u; apply reads p, u and writes p
    out.append((f"muon_momentum + muon_apply ({len(muon_shapes)} matrices, {n_muon / 1e6:.2f}M)",
                muon_all(reference, muon_state(seed)), muon_all(cpu, muon_state(seed)), gb * 7 * n_muon, "GB/s"))
    return out


# ------------------------------------------------------------------------------------------------
# validate, then time
# ------------------------------------------------------------------------------------------------
def as_tuple(r):
    if r is None:
        return ()
    return tuple(r) if isinstance(r, (tuple, list)) else (r,)


def validate(name, run_ref, run_nb):
    want = as_tuple(run_ref())
    got = as_tuple(run_nb())
    assert len(want) == len(got), f"{name}: {len(got)} outputs, reference has {len(want)}"
    worst = 0.0
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype, \
            f"{name}: {g.shape} {g.dtype} vs reference {w.shape} {w.dtype}"
        worst = max(worst, rel_err(g, w))
    if not worst < TOL:
        sys.exit(f"{name}: validation FAILED, relative error {worst:.3g} >= {TOL:g}; not timing")
    return worst


def time_pair(run_ref, run_nb, repeats):
    for _ in range(3):
        run_ref()
        run_nb()
    if repeats <= 0:
        t0 = time.perf_counter()
        run_ref()
        run_nb()
        repeats = int(min(200, max(5, 1.5 / max(time.perf_counter() - t0, 1e-6))))
    t_ref, t_nb, t_alone = [], [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run_ref()
        t1 = time.perf_counter()
        run_nb()
        t2 = time.perf_counter()
        t_ref.append(t1 - t0)
        t_nb.append(t2 - t1)
    for _ in range(repeats):
        t0 = time.perf_counter()
        run_nb()
        t_alone.append(time.perf_counter() - t0)
    return float(np.median(t_ref)), float(np.median(t_nb)), float(np.median(t_alone)), repeats


def benchmark(presets, repeats):
    rows = []
    for preset in presets:
        rng = np.random.default_rng(0)
        for name, run_ref, run_nb, work, unit in make_cases(preset, rng):
            if name.startswith(("adamw", "muon")):
                # one step each from the same state, compared; the timed steps then keep going
                want = [a.copy() for a in run_ref()]
                got = [a.copy() for a in run_nb()]
                err = max(rel_err(g, w) for g, w in zip(got, want))
                if not err < TOL:
                    sys.exit(f"{name}: validation FAILED, relative error {err:.3g}; not timing")
            else:
                err = validate(name, run_ref, run_nb)
            t_ref, t_nb, t_alone, n = time_pair(run_ref, run_nb, repeats)
            rows.append((name, preset, t_ref * 1e3, t_nb * 1e3, t_ref / t_nb,
                         f"{work / t_nb:.1f} {unit}", t_alone * 1e3, err, n))
            print(f"  {name:34s} {preset}: ref {t_ref * 1e3:8.3f} ms  numba {t_nb * 1e3:8.3f} ms  "
                  f"x{t_ref / t_nb:5.1f}  (alone {t_alone * 1e3:.3f} ms; err {err:.1e}, "
                  f"{n} repeats)", flush=True)
    return rows


# ------------------------------------------------------------------------------------------------
# compile times, each in a fresh process
# ------------------------------------------------------------------------------------------------
COMPILE_SNIPPET = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np
from tinygrad_gpt.kernels import cpu, reference
times = {"import kernels.cpu": time.perf_counter() - t0}
for dt in (np.float32, np.float64):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 16)).astype(dt); w = np.ones(16, dt)
    _, mean, rstd = reference.layernorm_forward(x, w, w)
    tg = np.arange(8)
    q = rng.standard_normal((1, 2, 5, 4)).astype(dt)
    out, lse = reference.attention_forward(q, q, q, 0.5)
    # big enough for the threaded driver: ThreadPicker runs the (by then compiled) serial driver
    # on the first call of a shape and the threaded one on the second; only the second is timed
    qb = rng.standard_normal((2, 2, 64, 64)).astype(dt)
    outb, lseb = reference.attention_forward(qb, qb, qb, 0.125)
    calls = [
        ("layernorm_forward", (x, w, w)), ("layernorm_backward", (x, x, w, mean, rstd)),
        ("gelu_forward", (x,)), ("gelu_backward", (x, x)),
        ("relu2_forward", (x,)), ("relu2_backward", (x, x)),
        ("softmax_cross_entropy_forward", (x, tg)),
        ("softmax_cross_entropy_backward", (mean, x, mean, tg)),
        ("attention_forward", (q, q, q, 0.5)), ("attention_backward", (q, q, q, q, out, lse, 0.5)),
        ("attention_forward, threaded driver", (qb, qb, qb, 0.125)),
        ("attention_backward, threaded driver", (qb, qb, qb, qb, outb, lseb, 0.125)),
        ("embedding_backward", (x, tg, 8)),
        ("adamw_update", (x.copy(), x, x.copy(), x * x, 1e-3, 0.9, 0.95, 1e-8, 0.1, 1)),
        ("muon_momentum", (x, x.copy(), 0.95)), ("muon_apply", (x.copy(), x, 0.02, 1.0, 0.1)),
        ("dropout_forward", (x, 0.2, 7)),
    ]
    for label, args in calls:
        name = label.split(",")[0]
        if label.endswith("threaded driver"):
            getattr(cpu, name)(*args)
        t = time.perf_counter()
        getattr(cpu, name)(*args)
        times[f"{label} {np.dtype(dt).name}"] = time.perf_counter() - t
times["total"] = time.perf_counter() - t0
print(json.dumps(times))
"""


def compile_times(threads):
    import json
    with tempfile.TemporaryDirectory(prefix="numba-cache-") as cache_dir:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir, NUMBA_NUM_THREADS=str(threads),
                   PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        result = {}
        for label in ("cold", "cached"):
            proc = subprocess.run([sys.executable, "-c", COMPILE_SNIPPET], env=env, cwd=ROOT,
                                  capture_output=True, text=True, check=True)
            result[label] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


# ------------------------------------------------------------------------------------------------
def main():
    import numba
    numba.set_num_threads(ARGS.threads)
    presets = [p.strip() for p in ARGS.presets.split(",") if p.strip()]
    for p in presets:
        if p not in PRESETS:
            sys.exit(f"--presets: unknown preset {p!r}, expected some of {sorted(PRESETS)}")
    print(f"numba {numba.__version__}, numpy {np.__version__}, {numba.get_num_threads()} Numba "
          f"threads, {os.cpu_count()} CPUs; float32; validating then timing")
    rows = benchmark(presets, ARGS.repeats)

    print("\n| kernel | preset | ms ref | ms numba | speed-up | numba throughput | ms numba alone |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, preset, ms_ref, ms_nb, speedup, thr, ms_alone, _, _ in rows:
        print(f"| {name} | {preset} | {ms_ref:.3f} | {ms_nb:.3f} | {speedup:.1f}x | {thr} | "
              f"{ms_alone:.3f} |")

    # dropout's kernel replaced an op that drew its mask (the reference is the hash in NumPy
    # integers, slower than that draw): time the old op too, the comparison that matters for training
    print("\ndropout forward, kernel vs the op it replaced (PCG64 uniform draw, compare, mask, multiply):")
    rng = np.random.default_rng(0)
    for preset in presets:
        a = rng.standard_normal(dropout_shape(preset)).astype(np.float32)

        def previous_op():
            keep = rng.random(a.shape, dtype=np.float32) >= 0.2
            return a * (keep * np.float32(1.25)).astype(np.float32, copy=False)
        t_old, t_new, _, n = time_pair(previous_op, lambda: cpu.dropout_forward(a, 0.2, 12345), ARGS.repeats)
        print(f"| dropout_forward vs previous op | {preset} {a.shape} | {t_old * 1e3:.3f} | {t_new * 1e3:.3f} | "
              f"{t_old / t_new:.1f}x | | |")

    if not ARGS.no_compile:
        print("\nfirst-call compile time (s), float32 / float64, fresh process each:")
        ct = compile_times(ARGS.threads)
        print("\n| kernel | cold f32 | cold f64 | cached f32 | cached f64 |")
        print("|---|---:|---:|---:|---:|")
        names = sorted({k.rsplit(" ", 1)[0] for k in ct["cold"] if k.endswith("float32")},
                       key=lambda k: list(ct["cold"]).index(k + " float32"))
        for n in names:
            print(f"| {n} | {ct['cold'][n + ' float32']:.2f} | {ct['cold'][n + ' float64']:.2f} | "
                  f"{ct['cached'][n + ' float32']:.3f} | {ct['cached'][n + ' float64']:.3f} |")
        print(f"| import kernels.cpu | {ct['cold']['import kernels.cpu']:.2f} | | "
              f"{ct['cached']['import kernels.cpu']:.3f} | |")
        print(f"| whole process (import + every kernel, both dtypes) | {ct['cold']['total']:.1f} | | "
              f"{ct['cached']['total']:.2f} | |")


if __name__ == "__main__":
    main()
