"""Training-step time of the gpu preset on CUDA: tinygrad_gpt against PyTorch eager, same card.

    python benchmarks/gpu_train.py                    # 50 timed iterations after 5 warm-up ones
    python benchmarks/gpu_train.py --iters 200 --no-torch

Both sides train the same GPT (gpu preset: 6 layers, 6 heads, n_embd 384, block 256, batch 64,
dropout 0.2, vocabulary 65, tied lm_head) with AdamW (decay on matrices only, lr 1e-3, betas
(0.9, 0.99)) and gradient clipping at 1.0, on random token batches made on the GPU beforehand (the
data does not change the time of a step). A step is forward, backward, clip, AdamW. Timing: wall
clock over --iters steps with one synchronisation at the end (no host copy inside the loop, as in
training; the loss is read once after), so it is what a long run sees per iteration.

PyTorch runs only when `import torch` works here and sees CUDA; it is never a dependency. Its
model is nanoGPT's, in eager mode (no torch.compile), float32, with
`F.scaled_dot_product_attention(is_causal=True)` (what nanoGPT uses, flash attention), TF32 off
on both sides (CuPy's cuBLAS default is full float32 too). Printed: ms/iter each, tokens/s, and
the ratio ours / torch (the target: <= 1.5).

The quality check (val loss <= 1.48 after 5000 iterations) is a real training run, not this:
    python examples/shakespeare.py --device cuda --preset gpu --max-iters 5000 --eval-every 500

Follows: benchmarks/train_step.py (the CPU version). Does not: compare numerics
(tests/test_cuda_engine.py does, against our own CPU path).
"""
import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


from tinygrad_gpt import cli  # noqa: E402
from tinygrad_gpt import backend  # noqa: E402
from tinygrad_gpt.train import PRESETS  # noqa: E402

VOCAB = 65


def preset(name="gpu"):
    model_kw, train_kw = PRESETS[name]
    return dict(model_kw, vocab_size=VOCAB, batch_size=train_kw["batch_size"])


def run_ours(cfg, warmup, iters):
    import cupy
    from tinygrad_gpt.model import GPT, GPTConfig
    from tinygrad_gpt.optim import AdamW, clip_grad_norm, decay_groups
    model = GPT(GPTConfig(**{k: cfg[k] for k in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd",
                                                  "dropout")}), seed=0, device="cuda")
    opt = AdamW(decay_groups(model.named_parameters(), 0.1), lr=1e-3, betas=(0.9, 0.99))
    rs = cupy.random.RandomState(0)
    shape = (cfg["batch_size"], cfg["block_size"])
    batches = [(rs.randint(0, VOCAB, size=shape).astype(cupy.int64),
                rs.randint(0, VOCAB, size=shape).astype(cupy.int64)) for _ in range(8)]

    def step(i):
        x, y = batches[i % len(batches)]
        _, loss = model(x, y)
        model.zero_grad()
        loss.backward()
        clip_grad_norm(model.parameters(), 1.0)
        opt.step()
        return loss

    for i in range(warmup):
        step(i)
    cupy.cuda.Device().synchronize()
    t0 = time.perf_counter()
    for i in range(iters):
        loss = step(i)
    cupy.cuda.Device().synchronize()
    ms = (time.perf_counter() - t0) * 1e3 / iters
    return ms, loss.item()


def run_torch(cfg, warmup, iters):
    import torch
    from torch_gpt import make_torch_adamw, make_torch_gpt
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    dev = torch.device("cuda")
    C, nh, L, Tmax, p = cfg["n_embd"], cfg["n_head"], cfg["n_layer"], cfg["block_size"], cfg["dropout"]

    model = make_torch_gpt(L, nh, C, Tmax, VOCAB, dropout=p, device=dev)
    opt = make_torch_adamw(model)
    g = torch.Generator(device=dev).manual_seed(0)
    shape = (cfg["batch_size"], cfg["block_size"])
    batches = [(torch.randint(0, VOCAB, shape, generator=g, device=dev),
                torch.randint(0, VOCAB, shape, generator=g, device=dev)) for _ in range(8)]

    def step(i):
        x, y = batches[i % len(batches)]
        loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss

    for i in range(warmup):
        step(i)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(iters):
        loss = step(i)
    torch.cuda.synchronize()
    ms = (time.perf_counter() - t0) * 1e3 / iters
    return ms, loss.item(), torch.__version__, torch.cuda.get_device_name(0)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--no-torch", action="store_true", help="time only tinygrad_gpt")
    p.add_argument("--preset", default="gpu", choices=sorted(PRESETS),
                   help="model and batch size (the target is for gpu; tiny is a smoke test)")
    args = p.parse_args(argv)
    try:
        cupy = backend.get_xp("cuda")
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    cfg = preset(args.preset)
    props = cupy.cuda.runtime.getDeviceProperties(0)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    tokens = cfg["batch_size"] * cfg["block_size"]
    print(f"device: {name}; {args.preset} preset {cfg}; {args.iters} timed iterations after {args.warmup} warm-up")
    ms, loss = run_ours(cfg, args.warmup, args.iters)
    print(f"tinygrad_gpt (cupy {cupy.__version__}): {ms:8.2f} ms/iter, {tokens / ms * 1e3:,.0f} tokens/s, "
          f"last loss {loss:.4f}")
    if args.no_torch:
        return 0
    try:
        import torch
        if not torch.cuda.is_available():
            raise ImportError("torch sees no CUDA device")
    except ImportError as exc:
        print(f"pytorch eager: skipped ({exc}); install torch with CUDA to compare")
        return 0
    t_ms, t_loss, version, t_name = run_torch(cfg, args.warmup, args.iters)
    print(f"pytorch eager (torch {version}, {t_name}): {t_ms:8.2f} ms/iter, {tokens / t_ms * 1e3:,.0f} tokens/s, "
          f"last loss {t_loss:.4f}")
    ratio = ms / t_ms
    verdict = ("met" if ratio <= 1.5 else "NOT met") if args.preset == "gpu" else "set for the gpu preset"
    print(f"ratio ours / torch: {ratio:.2f}x (target <= 1.5x: {verdict})")
    if not math.isfinite(loss):
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
