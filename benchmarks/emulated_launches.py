"""Kernel launches and array operations in one training step on device "cuda", counted on the CPU.

    python benchmarks/emulated_launches.py               # 6 layers, 6 heads (the gpu preset's depth)
    python benchmarks/emulated_launches.py --n-layer 2

Runs the engine's cuda path on the CUDA emulator (tinygrad_gpt/cuda_emulator/: the stand-in cupy)
at a small width (the counts do not depend on it) and counts, for one step after a warm-up step
(forward with dropout, backward, clip_grad_norm, AdamW): our RawKernel launches, by kernel, and
every other operation on a device array, by name. Each of the latter is one or more cupy kernel
launches on a GPU, except views (reshape, ravel, transpose, ascontiguousarray of a contiguous
array, getitem with slices) and allocations (empty); the table marks those. On a GPU every launch
costs a few microseconds of host time, so this is the count to cut when a step is host-bound.
Also prints the host copies (syncs) and uploads the step made: there should be none.

Follows: PyTorch's profiler's "number of calls" column, without a GPU. Does not: time anything.
"""
import argparse
import collections
import sys


import numpy as np

NO_LAUNCH = {"reshape", "ravel", "transpose", "ascontiguousarray", "empty", "view", "getitem", "swapaxes"}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n-layer", type=int, default=6)
    p.add_argument("--n-head", type=int, default=6)
    p.add_argument("--n-embd", type=int, default=48)
    p.add_argument("--block-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--dropout", type=float, default=0.2)
    args = p.parse_args(argv)
    import pytest

    from tinygrad_gpt import cuda_emulator
    if cuda_emulator.compiler() is None:
        print("error: the CUDA emulator needs g++ (or $CXX) with C++17", file=sys.stderr)
        return 2
    cupy = cuda_emulator.activate(pytest.MonkeyPatch())           # device "cuda" = the emulator
    ops = collections.Counter()
    cls = cuda_emulator.ndarray

    def counting(name, fn):
        def wrapper(*a, **k):
            ops[name] += 1
            return fn(*a, **k)
        return wrapper

    ufunc, getattr_, getitem, setitem = cls.__array_ufunc__, cls.__getattr__, cls.__getitem__, cls.__setitem__
    cls.__array_ufunc__ = lambda self, u, m, *a, **k: counting(u.__name__ if m == "__call__" else f"{u.__name__}.{m}",
                                                               ufunc)(self, u, m, *a, **k)
    cls.__getitem__ = lambda self, key: counting("getitem", getitem)(self, key)
    cls.__setitem__ = lambda self, key, v: counting("setitem", setitem)(self, key, v)

    def attr(self, name):
        value = getattr_(self, name)
        return counting(name, value) if callable(value) else value
    cls.__getattr__ = attr
    host_call = cuda_emulator._Host.__call__
    cuda_emulator._Host.__call__ = lambda self, *a, **k: counting(
        getattr(self._obj, "__name__", type(self._obj).__name__), host_call)(self, *a, **k)
    for name in ("empty", "zeros", "ones", "asarray", "ascontiguousarray"):
        setattr(cupy, name, counting(name, getattr(cupy, name)))

    from tinygrad_gpt.model import GPT, GPTConfig
    from tinygrad_gpt.optim import AdamW, decay_groups
    from tinygrad_gpt.train import train_step
    cfg = GPTConfig(vocab_size=65, block_size=args.block_size, n_layer=args.n_layer, n_head=args.n_head,
                    n_embd=args.n_embd, dropout=args.dropout)
    model = GPT(cfg, seed=0, dtype=np.float32, device="cuda")
    opt = AdamW(decay_groups(model.named_parameters(), 0.1), lr=1e-3, betas=(0.9, 0.99))
    rng = np.random.default_rng(0)
    x, y = (cupy.asarray(rng.integers(0, 65, (args.batch_size, args.block_size))) for _ in range(2))

    def step():
        train_step(model, opt, x, y, grad_clip=1.0)

    step()
    ops.clear()
    cuda_emulator.launches.clear()
    cuda_emulator.syncs.clear()
    cuda_emulator.uploads.clear()
    step()
    raw = collections.Counter()
    for name, n in cuda_emulator.launches.items():
        raw[name.split("<")[0]] += n
    print(f"{cfg}, {len(model.parameters())} parameter tensors; one step after a warm-up step")
    print(f"our CUDA kernels: {sum(raw.values())} launches")
    for name, n in raw.most_common():
        print(f"  {n:5d}  {name}")
    launching = sum(n for name, n in ops.items() if name not in NO_LAUNCH)
    print(f"other device-array operations: {sum(ops.values())}, of which {launching} launch kernels on a GPU")
    for name, n in ops.most_common():
        print(f"  {n:5d}  {name}{'  (no launch: view / allocation)' if name in NO_LAUNCH else ''}")
    print(f"host copies in the step: {len(cuda_emulator.syncs)}; uploads: {len(cuda_emulator.uploads)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
