"""The engine on device "cuda": gradients, the GPT, training steps, checkpoints across devices,
KV-cache sampling, the training example, no host syncs inside a training step; and the error a
user without a GPU sees.

Most tests take the `cuda` fixture and run twice: [gpu] with cupy on a GPU (skipped, with the
backend's reason, where cupy or a GPU is absent) and [emulated] with the CUDA emulator's (tinygrad_gpt/cuda_emulator/)
stand-in cupy, which runs the same engine code and the same CUDA C kernels on the CPU (every CI
run). Where a result is compared with the CPU, the same model (same seed) runs on both devices;
float64 for gradients (tight tolerances, differences are only summation order), float32 for the
training-step comparison.

No host sync in a step is checked twice over: on a GPU by timing a step queued behind a 1-second
spin kernel (`test_training_step_does_not_sync`), in the emulator by its record of every host copy
(`test_training_step_makes_no_host_copy_emulated`), which also refuses implicit ones as cupy does.

Follows: PyTorch's device-parametrised tests. Does not: time anything (benchmarks/gpu_train.py).
Dimension legend: B batch, T time, V vocabulary.
"""
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO
from tinygrad_gpt import backend, ops
from tinygrad_gpt.gradcheck import gradcheck
from tinygrad_gpt.model import GPT, GPTConfig
from tinygrad_gpt.optim import AdamW, MuonWithAdamW, clip_grad_norm, decay_groups
from tinygrad_gpt.tensor import Tensor


try:
    backend.get_xp("cuda")
    CUDA_SKIP = None
except RuntimeError as exc:
    CUDA_SKIP = f"needs cupy and a GPU: {exc}"

needs_gpu = pytest.mark.skipif(CUDA_SKIP is not None, reason=CUDA_SKIP or "")


@pytest.fixture(params=["gpu", "emulated"])
def cuda(request, monkeypatch):
    """Device "cuda" on a real GPU, or on the CPU through the CUDA emulator (cuda_emulator).

    emulated: for this test only, `cupy` is the emulator's stand-in (sys.modules, the backend)
    and kernels.for_array gives kernels.cuda compiled by it, so the engine's cuda code path runs
    unchanged with every CUDA kernel executed on the CPU; its device arrays refuse implicit host
    conversion as cupy's do and record every explicit host copy. Returns the cupy module in use.
    """
    if request.param == "gpu":
        if CUDA_SKIP is not None:
            pytest.skip(CUDA_SKIP)
        import cupy
        return cupy
    from tinygrad_gpt import cuda_emulator
    return cuda_emulator.activate(monkeypatch)


TINY = dict(vocab_size=37, block_size=24, n_layer=2, n_head=2, n_embd=32)


def _model(device, dtype=np.float32, **overrides):
    return GPT(GPTConfig(**{**TINY, **overrides}), seed=3, dtype=dtype, device=device)


def _batch(rng, B=3, T=24, V=37):
    x = rng.integers(0, V, size=(B, T))                            # (B, T)
    y = rng.integers(0, V, size=(B, T))                            # (B, T)
    return x, y


# ------------------------------------------------------------------------------------------------
# gradients on the GPU
# ------------------------------------------------------------------------------------------------
GRAD_CASES = [
    ("gelu", lambda a: a.gelu(), [(4, 9)]),
    ("layer_norm", lambda x, w, b: ops.layer_norm(x, w, b), [(3, 4, 9), (9,), (9,)]),
    ("cross_entropy", lambda a: ops.cross_entropy(a, Tensor(np.array([[1, 4, 0, 6]]), device="cuda")),
     [(1, 4, 7)]),
    ("attention", lambda q, k, v: ops.causal_self_attention(q, k, v), [(2, 3, 7, 5)] * 3),
    ("attention_qkv", lambda qkv: ops.causal_self_attention_qkv(qkv, 2), [(2, 5, 18)]),
    ("embedding", lambda w: ops.embedding(w, Tensor(np.array([[1, 3, 1], [0, 3, 3]]), device="cuda")),
     [(5, 4)]),
    ("matmul", lambda a, b: a @ b, [(2, 3, 5), (5, 4)]),
]


@pytest.mark.parametrize("name,fn,shapes", GRAD_CASES, ids=[c[0] for c in GRAD_CASES])
def test_gradcheck_on_cuda(cuda, name, fn, shapes, rng):
    inputs = [Tensor(rng.standard_normal(s), requires_grad=True, dtype=np.float64, device="cuda")
              for s in shapes]
    result = gradcheck(fn, inputs, tol=1e-6, max_checks=40)
    assert result.ok, f"{name} on cuda: {result}"


# ------------------------------------------------------------------------------------------------
# the GPT: same loss and gradients on both devices
# ------------------------------------------------------------------------------------------------
def test_gpt_forward_backward_matches_cpu(cuda, rng):
    x, y = _batch(rng)
    grads = {}
    for device in ("cpu", "cuda"):
        model = _model(device, np.float64)
        xp = backend.get_xp(device)
        logits, loss = model(xp.asarray(x), xp.asarray(y))
        loss.backward()
        assert isinstance(logits.data, xp.ndarray) and logits.device == device
        grads[device] = (loss.item(), {n: backend.to_numpy(p.grad) for n, p in model.named_parameters()})
    assert abs(grads["cpu"][0] - grads["cuda"][0]) < 1e-10
    for name, g in grads["cpu"][1].items():
        np.testing.assert_allclose(grads["cuda"][1][name], g, rtol=1e-8, atol=1e-12, err_msg=name)


def test_training_steps_match_cpu(cuda, rng):
    """Five AdamW steps with clipping: parameters, moments and batches on the GPU; losses as on CPU.

    One batch, five times: on fresh uniform-random batches the loss stays at ~log V whatever the
    model does, so "it went down" only means something on a batch the model can fit."""
    batches = [_batch(rng)] * 5
    losses = {}
    for device in ("cpu", "cuda"):
        model = _model(device)
        opt = AdamW(decay_groups(model.named_parameters(), 0.1), lr=3e-3, betas=(0.9, 0.99))
        assert all(backend.device_of_array(m) == device for m in opt.m)
        xp = backend.get_xp(device)
        losses[device] = []
        for x, y in batches:
            _, loss = model(xp.asarray(x), xp.asarray(y))
            model.zero_grad()
            loss.backward()
            clip_grad_norm(model.parameters(), 1.0)
            opt.step()
            losses[device].append(loss.item())
    np.testing.assert_allclose(losses["cuda"], losses["cpu"], rtol=2e-4)
    assert losses["cuda"][-1] < losses["cuda"][0]


def test_muon_training_steps_match_cpu(cuda, rng):
    """Five Muon-with-AdamW steps: momenta on the GPU, Newton-Schulz as stacked device matmuls, the
    fused momentum / apply kernels; the same losses and weights as on CPU (float64: differences
    are summation order only)."""
    batches = [_batch(rng)] * 5
    losses, weights = {}, {}
    for device in ("cpu", "cuda"):
        model = _model(device, np.float64)
        opt = MuonWithAdamW(model.named_parameters(), lr=3e-3, muon_lr=0.02)
        assert all(backend.device_of_array(m) == device for m in opt.state_arrays())
        xp = backend.get_xp(device)
        losses[device] = []
        for x, y in batches:
            _, loss = model(xp.asarray(x), xp.asarray(y))
            model.zero_grad()
            loss.backward()
            clip_grad_norm(model.parameters(), 1.0)
            opt.step()
            losses[device].append(loss.item())
        weights[device] = {n: backend.to_numpy(p.data) for n, p in model.named_parameters()}
    np.testing.assert_allclose(losses["cuda"], losses["cpu"], rtol=1e-9)
    for name, w in weights["cpu"].items():
        np.testing.assert_allclose(weights["cuda"][name], w, rtol=1e-7, atol=1e-10, err_msg=name)
    assert losses["cuda"][-1] < losses["cuda"][0]


def _dropout_training_step(cupy, rng):
    """A step function (forward with dropout, backward, clip, AdamW) on a fixed device batch."""
    model = _model("cuda", dropout=0.1)
    opt = AdamW(decay_groups(model.named_parameters(), 0.1), lr=1e-3)
    x, y = (cupy.asarray(a) for a in _batch(rng))

    def step():
        _, loss = model(x, y)
        model.zero_grad()
        loss.backward()
        clip_grad_norm(model.parameters(), 1.0)
        opt.step()
        return loss
    return step


SPIN_SOURCE = r"""
extern "C" __global__ void spin(long long ns) {
    unsigned long long start, now;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(start));
    do {
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
    } while (now - start < (unsigned long long)ns);
}"""


@needs_gpu
def test_training_step_does_not_sync(rng):
    """Nothing in a training step waits for the GPU: a 1-second spin kernel queued first must
    still be running when the step (forward, backward, clip, AdamW) returns to Python.

    Any host copy (int(), float(), .item(), .get(), a numpy array built from device data) would
    wait for the spin kernel, and the step would take >= 1 s of host time.
    """
    import cupy
    # subtle: timed with %globaltimer (nanoseconds), not clock64() cycles: the clock rate that would
    # convert them is gone from cudaDeviceProp in CUDA 13 (getDeviceProperties has no "clockRate")
    spin = cupy.RawKernel(SPIN_SOURCE, "spin")
    step = _dropout_training_step(cupy, rng)
    step().item()                                                  # compile every kernel, fill the pool
    cupy.cuda.Device().synchronize()
    spin((1,), (1,), (np.int64(1_000_000_000),))                   # 1 s of GPU time
    t0 = time.perf_counter()
    loss = step()
    host_s = time.perf_counter() - t0
    cupy.cuda.Device().synchronize()
    assert np.isfinite(loss.item())
    assert host_s < 0.5, (f"a training step took {host_s:.2f} s of host time behind a 1 s GPU kernel: "
                          f"something in it waits for the GPU (a host copy); see the engine patches "
                          f"in benchmarks/LOG.md (the CUDA port's entry)")


@pytest.mark.parametrize("cuda", ["emulated"], indirect=True)
def test_training_step_makes_no_host_copy_emulated(cuda, rng):
    """The CPU stand-in for the spin-kernel test above: its device arrays record every host copy
    (.get(), .item(), float(), int(), bool(), boolean-mask indexing) and every upload, and refuse
    implicit conversions, so a step (forward with dropout, backward, clip, AdamW) must record none,
    and must have run the CUDA kernels (not the references) for every fused op."""
    from tinygrad_gpt import cuda_emulator
    step = _dropout_training_step(cuda, rng)
    step().item()
    cuda_emulator.syncs.clear()
    cuda_emulator.uploads.clear()
    cuda_emulator.launches.clear()
    loss = step()
    assert cuda_emulator.syncs == [], f"host copies inside a training step: {cuda_emulator.syncs}"
    assert cuda_emulator.uploads == [], f"uploads inside a training step: {cuda_emulator.uploads}"
    launched = {name.split("<")[0] for name in cuda_emulator.launches}
    for kernel in ("layernorm_forward_kernel", "layernorm_backward_dx_kernel", "gelu_forward_kernel",
                   "gelu_backward_kernel", "attention_forward_kernel", "attention_backward_dq_kernel",
                   "attention_backward_dkdv_kernel", "ce_forward_warp_kernel", "ce_backward_kernel",
                   "embedding_backward_kernel", "adamw_kernel", "dropout_kernel"):
        assert kernel in launched, f"{kernel} did not run in the step (launched: {sorted(launched)})"
    assert np.isfinite(loss.item()) and cuda_emulator.syncs == [("item", ())]


def test_example_trains_resumes_and_samples_on_cuda(cuda, tmp_path, capsys, ctrl_c_after_step):
    """examples/shakespeare.py --device cuda end to end on a small corpus: untrained sample, losses,
    samples, checkpoints; interrupted and resumed it gives the straight run's losses; the checkpoint
    samples on the CPU."""
    import json
    from conftest import load_script
    shakespeare = load_script("shakespeare")
    rng = np.random.default_rng(0)
    words = ["the", "king", "shall", "not", "love", "thee", "my", "lord", "good", "night"]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(" ".join(rng.choice(words, 8)) + "." for _ in range(300)) + "\n")

    def args(out, *extra):
        return ["--device", "cuda", "--preset", "tiny", "--data", str(corpus), "--out", str(out),
                "--no-progress", "--epochs", "2", "--iters-per-epoch", "5", "--log-every", "1",
                "--eval-batches", "2", "--sample-tokens", "20", "--dropout", "0.1", *extra]

    def losses(out):
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        return {r["step"]: r["loss"] for r in rows if "loss" in r}

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert shakespeare.main(args(straight)) == 0
    text = capsys.readouterr().out
    assert "untrained" in text.lower() and "val" in text
    ctrl_c_after_step(3)
    assert shakespeare.main(args(resumed)) == 130
    assert shakespeare.main(args(resumed, "--resume")) == 0
    want, got = losses(straight), losses(resumed)
    assert sorted(got) == sorted(want) and len(want) == 10
    # the GPU's atomicAdd order (embedding backward) may change the last bits between runs
    np.testing.assert_allclose([got[k] for k in sorted(got)], [want[k] for k in sorted(want)], rtol=1e-4)
    samples = {}
    for device in ("cpu", "cuda"):                                 # the checkpoint samples on both
        capsys.readouterr()
        assert shakespeare.main(["--sample", "--device", device, "--out", str(straight), "--prompt",
                                 "the king", "--num-tokens", "15", "--seed", "1", "--top-k", "1"]) in (0, None)
        samples[device] = capsys.readouterr().out.strip()
        assert samples[device].startswith("the king")
    assert samples["cuda"] == samples["cpu"]                       # greedy (top-k 1): the same text


def test_example_trains_the_same_on_both_devices(cuda, tmp_path, capsys):
    """examples/shakespeare.py for 40 steps with dropout on cpu and on cuda, same seed: the loss at
    every step agrees. Dropout masks are hashed from (seed, index), so both devices drop the same
    elements; what differs is only float rounding (Numba vs CUDA kernels, BLAS vs cuBLAS)."""
    import json
    from conftest import load_script
    shakespeare = load_script("shakespeare")
    rng = np.random.default_rng(1)
    words = ["to", "be", "or", "not", "that", "is", "the", "question", "whether", "tis", "nobler"]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(" ".join(rng.choice(words, 9)) + "." for _ in range(400)) + "\n")
    losses = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / device
        assert shakespeare.main(["--device", device, "--preset", "tiny", "--data", str(corpus), "--out", str(out),
                                 "--no-progress", "--epochs", "2", "--iters-per-epoch", "20", "--log-every", "1",
                                 "--eval-batches", "2", "--sample-tokens", "5", "--dropout", "0.1"]) == 0
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        losses[device] = [r["loss"] for r in sorted(rows, key=lambda r: r["step"]) if "loss" in r]
    capsys.readouterr()
    assert len(losses["cpu"]) == len(losses["cuda"]) == 40
    np.testing.assert_allclose(losses["cuda"], losses["cpu"], rtol=1e-3)
    assert losses["cuda"][-1] < losses["cuda"][0] - 0.5                 # and it learns


def test_gpu_benchmark_scripts_run(cuda, capsys, monkeypatch):
    """benchmarks/cuda_kernels.py and benchmarks/gpu_train.py end to end at small sizes, so a
    script error shows up before a GPU's limited time is spent on it (their figures mean nothing
    in the emulator: it is the CPU)."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))  # undone after the test
    import cuda_kernels
    import gpu_train
    assert cuda_kernels.main(["--repeats", "2", "--B", "2", "--T", "33", "--C", "48", "--n-head", "3",
                              "--V", "11", "--copy-mib", "4"]) == 0
    out = capsys.readouterr().out
    for kernel in ("layernorm_forward", "layernorm_backward", "gelu_forward", "gelu_backward",
                   "softmax_cross_entropy_forward", "softmax_cross_entropy_backward", "attention_forward",
                   "attention_backward", "embedding_backward", "adamw_update", "dropout_forward"):
        assert f"\n{kernel} " in out, f"{kernel} missing from the benchmark table:\n{out}"
    assert "VALIDATION FAILED" not in out
    assert gpu_train.main(["--preset", "tiny", "--iters", "2", "--warmup", "1", "--no-torch"]) == 0
    assert "ms/iter" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------
# checkpoints across devices, sampling on the GPU
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("save_on,load_on", [("cuda", "cpu"), ("cpu", "cuda")])
def test_checkpoint_moves_between_devices(cuda, tmp_path, rng, save_on, load_on):
    from tinygrad_gpt import checkpoint
    from tinygrad_gpt.runs import load_model
    model = _model(save_on)
    opt = AdamW(model.parameters(), lr=1e-3)
    x, y = _batch(rng)
    xp = backend.get_xp(save_on)
    _, loss = model(xp.asarray(x), xp.asarray(y))
    loss.backward()
    opt.step()
    meta = {"model_config": dict(TINY, dropout=0.0, bias=True)}
    checkpoint.save_checkpoint(tmp_path, model.state_dict(), meta, optimizer_state=opt.state_dict())
    loaded, _, optimizer_state = load_model(tmp_path, device=load_on)
    assert all(p.device == load_on for p in loaded.parameters())
    opt2 = AdamW(loaded.parameters(), lr=1e-3)
    opt2.load_state_dict(optimizer_state)
    assert all(backend.device_of_array(m) == load_on for m in opt2.m)
    want, _ = model(xp.asarray(x))
    got, _ = loaded(backend.get_xp(load_on).asarray(x))
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-6)


def test_kv_cache_sampling_on_cuda_matches_cpu(cuda):
    prompt = np.array([[1, 5, 7]])
    out = {}
    for device in ("cpu", "cuda"):
        model = _model(device, np.float64)
        # top_k=1: greedy, so float rounding between devices cannot flip a sampled token
        out[device] = model.generate(prompt, 40, top_k=1, seed=0, use_cache=True)
        uncached = model.generate(prompt, 40, top_k=1, seed=0, use_cache=False)
        np.testing.assert_array_equal(out[device], uncached)
    np.testing.assert_array_equal(out["cuda"], out["cpu"])


def test_kernels_switched_off_run_the_reference_on_cuda(cuda, monkeypatch, rng):
    """TINYGRAD_GPT_KERNELS=reference: the xp-generic references run on the GPU, same loss."""
    x, y = _batch(rng)
    model = _model("cuda", np.float64)
    import cupy
    _, fused = model(cupy.asarray(x), cupy.asarray(y))
    monkeypatch.setenv("TINYGRAD_GPT_KERNELS", "reference")
    _, ref = model(cupy.asarray(x), cupy.asarray(y))
    assert abs(fused.item() - ref.item()) < 1e-10


# ------------------------------------------------------------------------------------------------
# without a GPU: the error says so, and how to install the extra (runs on CPU machines)
# ------------------------------------------------------------------------------------------------
@pytest.mark.skipif(CUDA_SKIP is None, reason="a GPU is usable here, so there is no error to see")
def test_device_cuda_without_gpu_says_how_to_install(tmp_path, capsys):
    from conftest import load_script
    shakespeare = load_script("shakespeare")
    with pytest.raises(RuntimeError, match=r'pip install -e "\.\[cuda\]"'):
        shakespeare.main(["--device", "cuda", "--preset", "tiny", "--out", str(tmp_path / "out")])
    with pytest.raises(RuntimeError, match="device 'cuda'"):
        Tensor.zeros(2, 3, device="cuda")
