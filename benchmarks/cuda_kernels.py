"""Each CUDA kernel against its naive CuPy composition (the reference run on cupy arrays), on a GPU.

    python benchmarks/cuda_kernels.py                 # the gpu preset's sizes
    python benchmarks/cuda_kernels.py --repeats 50

For every kernel: validate first (the kernel's output against the reference's on the same device
arrays, norm-wise relative error, stop on a mismatch), then time both with CUDA events (median of
--repeats after 3 warm-up calls), and print ms, the kernel's effective bandwidth (the bytes it must
move at least: every input read once, every output written once) and that as a fraction of the
card's copy bandwidth, measured here by a device-to-device cupy copy of 256 MiB (read + write).
Attention also prints GFLOP/s (4 T^2 hs / 2 per head forward, causal; 2.5x that backward).

Sizes: the gpu preset (B = 64, T = 256, C = 384, nh = 6, hs = 64, V = 65), N = B * T rows.

Follows: llm.c `dev/cuda/*.cu` (validate, then benchmark, print GB/s). Does not: time matmuls
(cuBLAS through CuPy, not ours), or compare with PyTorch (benchmarks/gpu_train.py does, for the
whole step).
"""
import argparse
import math
import sys


import numpy as np

from tinygrad_gpt import backend


def timed(fn, repeats, cupy):
    """Median milliseconds of fn() over `repeats` calls, CUDA events around each."""
    for _ in range(3):
        fn()
    start, stop = cupy.cuda.Event(), cupy.cuda.Event()
    times = []
    for _ in range(repeats):
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, stop))
    return float(np.median(times))


def copy_bandwidth(cupy, repeats, mib=256):
    """GB/s of a device-to-device copy (bytes read + written), the card's practical ceiling."""
    a = cupy.ones(mib * 256 * 1024, dtype=cupy.float32)            # mib MiB
    b = cupy.empty_like(a)
    ms = timed(lambda: b.__setitem__(Ellipsis, a), repeats, cupy)
    return 2 * a.nbytes / (ms * 1e-3) / 1e9


def rel_err(a, b):
    a, b = a.astype(np.float64), b.astype(np.float64)
    d = float(np.linalg.norm((a - b).ravel().get()))
    return 0.0 if d == 0 else d / max(float(np.linalg.norm(b.ravel().get())), 1e-300)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--B", type=int, default=64)
    p.add_argument("--T", type=int, default=256)
    p.add_argument("--C", type=int, default=384)
    p.add_argument("--n-head", type=int, default=6)
    p.add_argument("--V", type=int, default=65)
    p.add_argument("--copy-mib", type=int, default=256, help="size of the bandwidth-probe copy")
    args = p.parse_args(argv)
    try:
        cupy = backend.get_xp("cuda")
    except RuntimeError as exc:                                    # no cupy or no GPU: say so
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from tinygrad_gpt.kernels import cuda, reference

    props = cupy.cuda.runtime.getDeviceProperties(0)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    peak = copy_bandwidth(cupy, args.repeats, args.copy_mib)
    print(f"device: {name}; measured copy bandwidth {peak:.0f} GB/s (read + write)")
    B, T, C, nh, V = args.B, args.T, args.C, args.n_head, args.V
    hs, N = C // nh, B * T
    rng = cupy.random.RandomState(0)
    f32 = cupy.float32

    def randn(*shape):
        return rng.standard_normal(shape, dtype=f32)

    x, dout, w, b = randn(N, C), randn(N, C), randn(C), randn(C)
    h, dh = randn(N, 4 * C), randn(N, 4 * C)
    logits = randn(N, V) * 4
    targets = rng.randint(0, V, size=N).astype(cupy.int64)
    dlosses = cupy.full(N, 1.0 / N, dtype=f32)
    q, k, v, dq_out = (randn(B, nh, T, hs) for _ in range(4))
    scale = 1.0 / math.sqrt(hs)
    ids = rng.randint(0, V, size=N).astype(cupy.int64)
    P = 12 * C * C                                                  # one block's parameters
    param, grad, m1, v1 = randn(P), randn(P), randn(P) * 0.1, cupy.abs(randn(P)) * 0.01

    _, mean, rstd = reference.layernorm_forward(x, w, b)
    _, lse_ce = reference.softmax_cross_entropy_forward(logits, targets)
    out_attn, lse_attn = reference.attention_forward(q, k, v, scale)
    fb = 4                                                         # bytes per float32
    attn_flops = B * nh * 4 * T * T * hs / 2                       # causal: half the scores
    cases = [
        # name, ours, naive, bytes moved at least, flops (or 0)
        ("layernorm_forward", lambda: cuda.layernorm_forward(x, w, b),
         lambda: reference.layernorm_forward(x, w, b), (2 * N * C + 2 * N) * fb, 0),
        ("layernorm_backward", lambda: cuda.layernorm_backward(dout, x, w, mean, rstd),
         lambda: reference.layernorm_backward(dout, x, w, mean, rstd), (3 * N * C + 2 * N) * fb, 0),
        ("gelu_forward", lambda: cuda.gelu_forward(h), lambda: reference.gelu_forward(h), 2 * h.nbytes, 0),
        ("gelu_backward", lambda: cuda.gelu_backward(dh, h), lambda: reference.gelu_backward(dh, h),
         3 * h.nbytes, 0),
        ("relu2_forward", lambda: cuda.relu2_forward(h), lambda: reference.relu2_forward(h), 2 * h.nbytes, 0),
        ("relu2_backward", lambda: cuda.relu2_backward(dh, h), lambda: reference.relu2_backward(dh, h),
         3 * h.nbytes, 0),
        ("softmax_cross_entropy_forward", lambda: cuda.softmax_cross_entropy_forward(logits, targets),
         lambda: reference.softmax_cross_entropy_forward(logits, targets), logits.nbytes + 8 * N + 2 * N * fb, 0),
        ("softmax_cross_entropy_backward",
         lambda: cuda.softmax_cross_entropy_backward(dlosses, logits, lse_ce, targets),
         lambda: reference.softmax_cross_entropy_backward(dlosses, logits, lse_ce, targets),
         2 * logits.nbytes + 8 * N + 2 * N * fb, 0),
        ("attention_forward", lambda: cuda.attention_forward(q, k, v, scale),
         lambda: reference.attention_forward(q, k, v, scale), 4 * q.nbytes + lse_attn.nbytes, attn_flops),
        ("attention_backward",
         lambda: cuda.attention_backward(dq_out, q, k, v, out_attn, lse_attn, scale),
         lambda: reference.attention_backward(dq_out, q, k, v, out_attn, lse_attn, scale),
         8 * q.nbytes + lse_attn.nbytes, 2.5 * attn_flops),
        ("embedding_backward", lambda: cuda.embedding_backward(dout, ids, V),
         lambda: reference.embedding_backward(dout, ids, V), dout.nbytes + 8 * N + V * C * fb, 0),
        # naive: what the op did before the kernel (a cuRAND generator per call, a stored mask)
        ("dropout_forward", lambda: cuda.dropout_forward(h, 0.2, 12345),
         lambda: h * ((cupy.random.default_rng(12345).random(h.shape, dtype=f32) >= 0.2) * f32(1.25)),
         2 * h.nbytes, 0),
    ]
    print(f"{'kernel':32s} {'ours ms':>9s} {'naive ms':>9s} {'speedup':>8s} {'GB/s':>8s} {'of copy':>8s}  note")
    for name, ours, naive, nbytes, flops in cases:
        a, r = ours(), naive()
        if name == "dropout_forward":                              # another generator: compare
            keep_a, keep_r = float((a != 0).mean()), float((r != 0).mean())   # kept fractions
            print(f"{name}: kept {keep_a:.4f} (kernel), {keep_r:.4f} (cuRAND), want 0.8")
            r = reference.dropout_forward(h, 0.2, 12345)           # and validate against the reference
        a = a if isinstance(a, tuple) else (a,)
        r = r if isinstance(r, tuple) else (r,)
        errs = [rel_err(g, want) for g, want in zip(a, r)]
        if max(errs) > 1e-5:
            print(f"{name}: VALIDATION FAILED, relative errors {errs}; not timing")
            return 1
        t_ours = timed(ours, args.repeats, cupy)
        t_naive = timed(naive, args.repeats, cupy)
        gbs = nbytes / (t_ours * 1e-3) / 1e9
        note = f"{flops / (t_ours * 1e-3) / 1e9:.0f} GFLOP/s" if flops else ""
        print(f"{name:32s} {t_ours:9.3f} {t_naive:9.3f} {t_naive / t_ours:7.1f}x {gbs:8.0f} "
              f"{gbs / peak:7.0%}  {note}")

    # AdamW: in place, so validate on copies, then time on the originals
    mine = [param.copy(), m1.copy(), v1.copy()]
    theirs = [param.copy(), m1.copy(), v1.copy()]
    hyper = dict(lr=1e-3, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.1, step=3)
    cuda.adamw_update(mine[0], grad, mine[1], mine[2], **hyper)
    reference.adamw_update(theirs[0], grad, theirs[1], theirs[2], **hyper)
    errs = [rel_err(g, want) for g, want in zip(mine, theirs)]
    if max(errs) > 1e-5:
        print(f"adamw_update: VALIDATION FAILED, relative errors {errs}")
        return 1
    t_ours = timed(lambda: cuda.adamw_update(param, grad, m1, v1, **hyper), args.repeats, cupy)
    t_naive = timed(lambda: reference.adamw_update(param, grad, m1, v1, **hyper), args.repeats, cupy)
    gbs = 7 * P * fb / (t_ours * 1e-3) / 1e9                       # read p, g, m, v; write p, m, v
    print(f"{'adamw_update':32s} {t_ours:9.3f} {t_naive:9.3f} {t_naive / t_ours:7.1f}x {gbs:8.0f} "
          f"{gbs / peak:7.0%}  P = {P:,}")

    # Muon's momentum and apply passes over one block's parameters (as one (C, 12C) matrix)
    shape = (C, 12 * C)
    w, g2, m2, u2 = (a.reshape(shape) for a in (param.copy(), grad, m1.copy(), randn(P)))
    mine, theirs = [w.copy(), m2.copy()], [w.copy(), m2.copy()]
    u_mine = cuda.muon_momentum(g2, mine[1], 0.95)
    u_ref = reference.muon_momentum(g2, theirs[1], 0.95)
    cuda.muon_apply(mine[0], u2, 0.02, 1.7, 0.1)
    reference.muon_apply(theirs[0], u2, 0.02, 1.7, 0.1)
    errs = [rel_err(a, b) for a, b in zip(mine + [u_mine], theirs + [u_ref])]
    if max(errs) > 1e-5:
        print(f"muon_momentum / muon_apply: VALIDATION FAILED, relative errors {errs}")
        return 1
    for name, ours, naive, moved in (
            ("muon_momentum", lambda: cuda.muon_momentum(g2, m2, 0.95), lambda: reference.muon_momentum(g2, m2, 0.95),
             4),                                                   # read g, m; write m, u
            ("muon_apply", lambda: cuda.muon_apply(w, u2, 0.02, 1.7, 0.1),
             lambda: reference.muon_apply(w, u2, 0.02, 1.7, 0.1), 3)):  # read p, u; write p
        t_ours, t_naive = timed(ours, args.repeats, cupy), timed(naive, args.repeats, cupy)
        gbs = moved * P * fb / (t_ours * 1e-3) / 1e9
        print(f"{name:32s} {t_ours:9.3f} {t_naive:9.3f} {t_naive / t_ours:7.1f}x {gbs:8.0f} "
              f"{gbs / peak:7.0%}  P = {P:,}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
