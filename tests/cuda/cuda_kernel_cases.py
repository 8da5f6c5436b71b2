"""Every CuPy kernel in tinygrad_gpt/kernels/cuda against its NumPy reference in tinygrad_gpt/kernels/reference.py: the cases.

Not a test module itself: `bind(cupy, cuda, emulated)` gives a fresh copy of these tests bound to
one backend, and two test modules collect them:
- tests/cuda/test_cuda_kernels.py: real cupy and kernels.cuda on a GPU (skipped, with the reason,
  where cupy or a GPU is absent);
- tests/cuda/test_cuda_kernels_emulated.py: the same CUDA C run on the CPU by tinygrad_gpt/cuda_emulator/
  (every CI run), the preset-size shapes (PRESET_SIZE, up to 25 M elements) included: they are
  the only cases whose grid-stride loops wrap (GELU at 25 M > 65,536 blocks x 256 threads).

"Equal" is the norm-wise relative error of tests/kernels/test_kernels.py (the CPU issue's tolerances):
    rel_err(a, ref) = ||a - ref||_2 / ||ref||_2  below 1e-5 in float32 and 1e-10 in float64,
with the same `scale` for outputs that are exact cancellations (layer-norm dx at C = 1, attention
dq and dk at T = 1). The reference runs in NumPy on the host copies of the same inputs, so on a GPU
this also compares the GPU's float arithmetic against the CPU's.

Inputs are fresh random draws each run (seed printed; replay with TINYGRAD_GPT_TEST_SEED), at
several shapes per kernel: size-1 edges, odd sizes, non-multiples of every tile size (attention
T = 1, 7, 33, 65, 100 against tiles of 16/32/64 rows; hs = 5, 9, 20 padded to 16/32), the presets'
training sizes (gpu: B*T = 16384 rows, C = 384, T = 256, hs = 64), GPT-2's vocabulary (V = 50257,
the block-per-row CE kernel), and non-contiguous views (transposed heads of a fused qkv array).

Follows: llm.c `dev/cuda` (validate against the CPU before timing). Does not: time anything
(benchmarks/cuda_kernels.py does).
"""
import importlib.util
import math
import os
import pathlib

import numpy as np
import pytest

from tinygrad_gpt import kernels
from tinygrad_gpt.kernels import reference

# bound by bind(): the cupy module, the kernels.cuda package, and whether they are the emulator
cupy = cuda = None
EMULATED = False
# the presets' training sizes (up to 25 M elements): ~75 s in the emulator, so a quick local run
# can leave them out with TINYGRAD_GPT_EMULATE_LARGE=0 (CI runs them: no GPU has run them yet)
PRESET_SIZE = pytest.mark.skipif('EMULATED and os.environ.get("TINYGRAD_GPT_EMULATE_LARGE", "1") == "0"',
                                 reason="preset-size case left out of the emulator (TINYGRAD_GPT_EMULATE_LARGE=0)")


def bind(cupy_module, cuda_module, emulated):
    """{name: test function} of a fresh copy of this file whose `cupy` and `cuda` are these."""
    spec = importlib.util.spec_from_file_location(
        f"cuda_kernel_cases_{'emulated' if emulated else 'gpu'}", pathlib.Path(__file__))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.cupy, module.cuda, module.EMULATED = cupy_module, cuda_module, emulated
    return {name: fn for name, fn in vars(module).items() if name.startswith("test_")}


DTYPES = [np.float32, np.float64]
TOL = {np.float32: 1e-5, np.float64: 1e-10}


def rel_err(a, ref, scale=0.0):
    a = np.asarray(a, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    diff = np.linalg.norm(a - ref)
    return 0.0 if diff == 0 else diff / max(np.linalg.norm(ref), scale)


def assert_close(got, want, dtype, what, scale=0.0):
    """got: a cupy array from the kernel; want: the NumPy reference's array."""
    assert isinstance(got, cupy.ndarray), f"{what}: expected a cupy array, got {type(got).__name__}"
    got = got.get()
    assert got.shape == want.shape, f"{what}: shape {got.shape} != reference {want.shape}"
    assert got.dtype == want.dtype == np.dtype(dtype), f"{what}: dtype {got.dtype}, reference {want.dtype}"
    assert np.isfinite(got).all() == np.isfinite(want).all(), f"{what}: non-finite entries differ"
    err = rel_err(got, want, scale)
    assert err < TOL[dtype], f"{what}: relative error {err:.3g} >= {TOL[dtype]:g} ({np.dtype(dtype)})"


def normal(rng, shape, dtype, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(dtype)


def dev(*arrays):
    return tuple(cupy.asarray(a) for a in arrays)


def strided(a):
    """A non-contiguous device view with a's values: every other column of a wider array."""
    wide = cupy.zeros(a.shape[:-1] + (2 * a.shape[-1],), dtype=a.dtype)
    wide[..., ::2] = cupy.asarray(a)
    return wide[..., ::2]


# ------------------------------------------------------------------------------------------------
# module
# ------------------------------------------------------------------------------------------------
@pytest.mark.skipif("EMULATED", reason="dispatch is by cupy's own array type, which the emulator does not have")
def test_dispatch_picks_cuda_kernels_for_cupy_arrays():
    kernels.set_backend("fused")
    try:
        assert kernels.for_array(cupy.zeros(3)) is cuda
        assert kernels.for_array(np.zeros(3)) is not cuda
    finally:
        kernels.set_backend(None)


# ------------------------------------------------------------------------------------------------
# layer norm
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (33, 384), (768, 128),
                                   pytest.param((16384, 384), marks=PRESET_SIZE), (5, 1000)])
@pytest.mark.parametrize("contiguous", [True, False])
def test_layernorm(rng, dtype, shape, contiguous):
    N, C = shape
    x = normal(rng, (N, C), dtype, 3.0) + dtype(1.5)               # (N, C) off-centre
    weight, bias = normal(rng, C, dtype), normal(rng, C, dtype)    # (C,)
    dout = normal(rng, (N, C), dtype)                              # (N, C)
    dx_, dw_, db_, dd_ = dev(x, weight, bias, dout)
    if not contiguous:
        dx_, dd_ = strided(x), strided(dout)
    want = reference.layernorm_forward(x, weight, bias)
    got = cuda.layernorm_forward(dx_, dw_, db_)
    for name, g, w in zip(("out", "mean", "rstd"), got, want):
        assert_close(g, w, dtype, f"layernorm_forward {name} {shape}")
    _, mean, rstd = want
    want = reference.layernorm_backward(dout, x, weight, mean, rstd)
    got = cuda.layernorm_backward(dd_, dx_, dw_, *dev(mean, rstd))
    terms = np.linalg.norm(rstd[:, None] * dout * weight)
    for name, g, w in zip(("dx", "dweight", "dbias"), got, want):
        assert_close(g, w, dtype, f"layernorm_backward {name} {shape}", scale=terms)


def test_layernorm_backward_is_deterministic(rng):
    x, dout = normal(rng, (4096, 384), np.float32), normal(rng, (4096, 384), np.float32)
    w = normal(rng, 384, np.float32)
    _, mean, rstd = cuda.layernorm_forward(*dev(x, w, w))
    a = cuda.layernorm_backward(*dev(dout, x, w), mean, rstd)
    b = cuda.layernorm_backward(*dev(dout, x, w), mean, rstd)
    for g, h in zip(a, b):
        assert bool((g == h).all())


# ------------------------------------------------------------------------------------------------
# RMSNorm (with a gain, and without: QK-norm)
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (33, 384), (768, 128), (3072, 32),
                                   pytest.param((16384, 384), marks=PRESET_SIZE), (5, 1000)])
@pytest.mark.parametrize("contiguous", [True, False])
@pytest.mark.parametrize("gain", [True, False])
def test_rmsnorm(rng, dtype, shape, contiguous, gain):
    N, C = shape
    x = normal(rng, (N, C), dtype, 3.0) + dtype(1.5)               # (N, C) off-centre: no mean is removed
    weight = normal(rng, C, dtype) if gain else None               # (C,)
    dout = normal(rng, (N, C), dtype)                              # (N, C)
    dx_, dd_ = (strided(x), strided(dout)) if not contiguous else dev(x, dout)
    dw_ = cupy.asarray(weight) if gain else None
    want = reference.rmsnorm_forward(x, weight)
    got = cuda.rmsnorm_forward(dx_, dw_)
    for name, g, w in zip(("out", "rstd"), got, want):
        assert_close(g, w, dtype, f"rmsnorm_forward {name} {shape}")
    rstd = want[1]
    want = reference.rmsnorm_backward(dout, x, weight, rstd)
    got = cuda.rmsnorm_backward(dd_, dx_, dw_, cupy.asarray(rstd))
    terms = np.linalg.norm(rstd[:, None] * dout * (weight if gain else 1))
    assert_close(got[0], want[0], dtype, f"rmsnorm_backward dx {shape}", scale=terms)
    if gain:
        assert_close(got[1], want[1], dtype, f"rmsnorm_backward dweight {shape}")
    else:
        assert got[1] is None and want[1] is None


def test_rmsnorm_backward_is_deterministic(rng):
    x, dout = normal(rng, (4096, 384), np.float32), normal(rng, (4096, 384), np.float32)
    w = normal(rng, 384, np.float32)
    _, rstd = cuda.rmsnorm_forward(*dev(x, w))
    a = cuda.rmsnorm_backward(*dev(dout, x, w), rstd)
    b = cuda.rmsnorm_backward(*dev(dout, x, w), rstd)
    for g, h in zip(a, b):
        assert bool((g == h).all())


# ------------------------------------------------------------------------------------------------
# rotary position embedding
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 2), (3, 7, 10), (2, 3, 5, 8), (12, 4, 64, 32),
                                   pytest.param((64, 6, 256, 64), marks=PRESET_SIZE)])
@pytest.mark.parametrize("contiguous", [True, False])
def test_rotary(rng, dtype, shape, contiguous):
    x = normal(rng, shape, dtype)                                  # (..., T, hs)
    dout = normal(rng, shape, dtype)                               # (..., T, hs)
    theta = rng.uniform(-10.0, 10.0, (shape[-2], shape[-1] // 2))  # (T, hs/2) any angles
    cos, sin = np.cos(theta).astype(dtype), np.sin(theta).astype(dtype)
    dx_, dd_ = (strided(x), strided(dout)) if not contiguous else dev(x, dout)
    dc_, ds_ = dev(cos, sin)
    out = cuda.rotary_forward(dx_, dc_, ds_)
    assert_close(out, reference.rotary_forward(x, cos, sin), dtype, f"rotary_forward {shape}")
    assert_close(cuda.rotary_backward(dd_, dc_, ds_), reference.rotary_backward(dout, cos, sin), dtype,
                 f"rotary_backward {shape}")
    assert_close(cuda.rotary_backward(out, dc_, ds_), x, dtype, f"rotary round trip {shape}")


def test_rotary_shape_errors_name_the_shapes():
    with pytest.raises(ValueError, match=r"must be \(T, hs // 2\) = \(3, 2\) for x \(1, 3, 4\), got \(2, 2\)"):
        cuda.rotary_forward(cupy.zeros((1, 3, 4)), cupy.zeros((2, 2)), cupy.zeros((2, 2)))


# ------------------------------------------------------------------------------------------------
# GELU
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(), (1,), (7, 13), (3, 5, 17),
                                   pytest.param((64, 256, 1536), marks=PRESET_SIZE)])
def test_gelu(rng, dtype, shape):
    x = normal(rng, shape, dtype, 2.0)
    dout = normal(rng, shape, dtype)
    # subtle: for x below about -4, gelu = 0.5 x (1 + tanh u) is a cancellation (tanh u ~ -1), so
    # one ulp of tanh (the GPU's, g++'s and NumPy's differ) is a large relative error of a tiny
    # result: measure against the cancelling terms, as tests/kernels/test_kernels.py does on the CPU.
    # (Seen in the emulator: shape (1,), float64, 11 of 4000 draws over 1e-10 without the scale.)
    x64 = np.asarray(x, dtype=np.float64)
    fwd_scale = np.linalg.norm(0.5 * x64)
    bwd_scale = np.linalg.norm(dout * (0.5 + 0.5 * np.abs(x64) * reference.GELU_SCALE
                                       * (1 + 3 * 0.044715 * x64 * x64)))
    assert_close(cuda.gelu_forward(*dev(x)), reference.gelu_forward(x), dtype, f"gelu_forward {shape}",
                 scale=fwd_scale)
    assert_close(cuda.gelu_backward(*dev(dout, x)), reference.gelu_backward(dout, x), dtype,
                 f"gelu_backward {shape}", scale=bwd_scale)
    if len(shape) >= 1 and shape[-1] > 1:
        assert_close(cuda.gelu_forward(strided(x)), reference.gelu_forward(x), dtype, "gelu strided",
                     scale=fwd_scale)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gelu_saturates(dtype):
    x = np.array([-60.0, -12.0, -5.0, -1e-3, 0.0, 1e-3, 5.0, 12.0, 60.0], dtype=dtype)
    np.testing.assert_allclose(cuda.gelu_forward(cupy.asarray(x)).get(), reference.gelu_forward(x),
                               rtol=TOL[dtype], atol=1e-30)
    np.testing.assert_allclose(cuda.gelu_backward(*dev(np.ones_like(x), x)).get(),
                               reference.gelu_backward(np.ones_like(x), x), rtol=TOL[dtype],
                               atol=1e-6 if dtype == np.float32 else 1e-14)


# ------------------------------------------------------------------------------------------------
# ReLU squared
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(), (1,), (7, 13), (3, 5, 17),
                                   pytest.param((64, 256, 512), marks=PRESET_SIZE)])
def test_relu2(rng, dtype, shape):
    """One rounding per element both ways: bit for bit the reference, strided input included."""
    x = normal(rng, shape, dtype, 2.0)
    dout = normal(rng, shape, dtype)
    np.testing.assert_array_equal(cuda.relu2_forward(*dev(x)).get(), reference.relu2_forward(x))
    np.testing.assert_array_equal(cuda.relu2_backward(*dev(dout, x)).get(), reference.relu2_backward(dout, x))
    if len(shape) >= 1 and shape[-1] > 1:
        np.testing.assert_array_equal(cuda.relu2_forward(strided(x)).get(), reference.relu2_forward(x))


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu2_edges(dtype):
    x = np.array([-np.inf, -3.0, -0.0, 0.0, 2.0 ** -100, 0.5, 3.0, np.inf, np.nan], dtype=dtype)
    dout = np.full_like(x, 1.5)
    np.testing.assert_array_equal(cuda.relu2_forward(cupy.asarray(x)).get(), reference.relu2_forward(x))
    np.testing.assert_array_equal(cuda.relu2_backward(*dev(dout, x)).get(), reference.relu2_backward(dout, x))


# ------------------------------------------------------------------------------------------------
# softmax + cross-entropy
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (768, 65),
                                   pytest.param((16384, 65), marks=PRESET_SIZE), (5, 1025), (9, 50257)])
def test_softmax_cross_entropy(rng, dtype, shape):
    N, V = shape
    logits = normal(rng, (N, V), dtype, 4.0)                       # (N, V)
    targets = rng.integers(0, V, size=N)                           # (N,)
    targets[rng.random(N) < 0.3] = -100
    targets[0] = V - 1
    dlosses = normal(rng, N, dtype)                                # (N,)
    want = reference.softmax_cross_entropy_forward(logits, targets)
    got = cuda.softmax_cross_entropy_forward(*dev(logits, targets))
    for name, g, w in zip(("losses", "lse"), got, want):
        assert_close(g, w, dtype, f"softmax_cross_entropy_forward {name} {shape}")
    lse = want[1]
    assert_close(cuda.softmax_cross_entropy_backward(*dev(dlosses, logits, lse, targets)),
                 reference.softmax_cross_entropy_backward(dlosses, logits, lse, targets),
                 dtype, f"softmax_cross_entropy_backward {shape}")
    # a 0-d device dlosses (what the op passes: dout / count) broadcasts like the reference
    assert_close(cuda.softmax_cross_entropy_backward(cupy.asarray(dtype(0.5)), *dev(logits, lse, targets)),
                 reference.softmax_cross_entropy_backward(dtype(0.5), logits, lse, targets),
                 dtype, f"softmax_cross_entropy_backward scalar dloss {shape}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_ignore_index_and_negative_targets(rng, dtype):
    N, V = 9, 11
    logits = normal(rng, (N, V), dtype, 30.0)
    targets = np.array([0, 3, -1, 10, 4, -1, 7, 2, 9])
    losses, lse = cuda.softmax_cross_entropy_forward(*dev(logits, targets), ignore_index=-1)
    want_losses, want_lse = reference.softmax_cross_entropy_forward(logits, targets, ignore_index=-1)
    assert_close(losses, want_losses, dtype, "losses, ignore_index=-1")
    assert bool((losses[cupy.asarray(targets) == -1] == 0).all())
    # default ignore_index: -1 is the last class, as in NumPy indexing
    assert_close(cuda.softmax_cross_entropy_forward(*dev(logits, targets))[0],
                 reference.softmax_cross_entropy_forward(logits, targets)[0], dtype, "negative targets")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("V", [1, 5, 31, 32, 33, 65, 200, 1500])
def test_cross_entropy_large_and_masked_logits(rng, dtype, V):
    """The online (max, sum) per lane and its merge across lanes: logits of scale 20 (exp would
    overflow a naive sum), and a row whose first half is -inf, so that some lanes (or warps, in the
    block-per-row kernel at V > 1024) see only -inf and must merge as empty."""
    logits = normal(rng, (4, V), dtype, 20.0)                      # (4, V)
    logits[1, : V // 2] = -np.inf
    targets = np.full(4, V - 1)                                    # (4,) never a masked class
    want = reference.softmax_cross_entropy_forward(logits, targets)
    got = cuda.softmax_cross_entropy_forward(*dev(logits, targets))
    for name, g, w in zip(("losses", "lse"), got, want):
        assert_close(g, w, dtype, f"softmax_cross_entropy_forward {name} V={V}, masked row")


@pytest.mark.parametrize("V", [65, 1500])
def test_cross_entropy_loss_exact_at_large_float32_logits(rng, V):
    """Logits of 1e6 + N(0, 1): lse rounds to 0.0625 steps there, so lse - logits[t] was off by up
    to 0.03; the loss is computed from the shifted row and matches float64 to float32's precision."""
    base = rng.standard_normal((4, V))                             # (4, V) float64
    targets = rng.integers(0, V, 4)                                # (4,)
    exact = reference.softmax_cross_entropy_forward(base, targets)[0]  # the shift does not change it
    logits = (base + 1e6).astype(np.float32)                       # (4, V)
    shifted = logits.astype(np.float64) - 1e6                      # the float32 values, exactly
    want = reference.softmax_cross_entropy_forward(shifted, targets)[0]
    got = cupy.asnumpy(cuda.softmax_cross_entropy_forward(*dev(logits, targets))[0])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert np.abs(want - exact).max() < 0.1                        # rounding of the inputs only


def test_cross_entropy_bad_targets_give_nan_or_raise_when_checked(monkeypatch):
    logits = cupy.zeros((3, 5), dtype=cupy.float32)
    losses, _ = cuda.softmax_cross_entropy_forward(logits, cupy.asarray([0, 5, 1]))
    assert bool(cupy.isnan(losses[1])) and bool(cupy.isfinite(losses[0]))
    monkeypatch.setenv("TINYGRAD_GPT_CUDA_CHECKS", "1")
    with pytest.raises(IndexError, match=r"targets\[1\] = 5"):
        cuda.softmax_cross_entropy_forward(logits, cupy.asarray([0, 5, 1]))


# ------------------------------------------------------------------------------------------------
# attention
# ------------------------------------------------------------------------------------------------
ATTN_SHAPES = [(1, 1, 1, 4), (2, 3, 1, 5), (2, 3, 7, 5), (1, 2, 33, 9), (1, 2, 65, 20),
               (2, 2, 100, 32), (12, 4, 64, 32), pytest.param((4, 6, 256, 64), marks=PRESET_SIZE),
               (1, 1, 300, 64),
               (1, 2, 17, 80)]                                     # hs = 80: the reference fallback


def _qkv(rng, shape, dtype, contiguous):
    B, nh, T, hs = shape
    qkv = normal(rng, (B, T, 3, nh, hs), dtype)                    # (B, T, 3, nh, hs) as c_attn gives
    host = [np.ascontiguousarray(qkv[:, :, i].transpose(0, 2, 1, 3)) for i in range(3)]  # (B, nh, T, hs)
    d = cupy.asarray(qkv)
    device = [d[:, :, i].transpose(0, 2, 1, 3) for i in range(3)]  # (B, nh, T, hs) views
    if contiguous:
        device = [cupy.ascontiguousarray(a) for a in device]
    return host, device


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", ATTN_SHAPES)
@pytest.mark.parametrize("contiguous", [True, False])
def test_attention(rng, dtype, shape, contiguous):
    (q, k, v), (dq_, dk_, dv_) = _qkv(rng, shape, dtype, contiguous)
    dout = normal(rng, shape, dtype)
    scale = 1.0 / math.sqrt(shape[-1])
    want_out, want_lse = reference.attention_forward(q, k, v, scale)
    got_out, got_lse = cuda.attention_forward(dq_, dk_, dv_, scale)
    assert_close(got_out, want_out, dtype, f"attention_forward out {shape}")
    assert_close(got_lse, want_lse, dtype, f"attention_forward lse {shape}")
    want = reference.attention_backward(dout, q, k, v, want_out, want_lse, scale)
    got = cuda.attention_backward(cupy.asarray(dout), dq_, dk_, dv_, *dev(want_out, want_lse), scale)
    terms = np.linalg.norm(dout) * np.linalg.norm(v) * np.linalg.norm(k) * scale
    for name, g, w in zip(("dq", "dk", "dv"), got, want):
        assert_close(g, w, dtype, f"attention_backward {name} {shape}", scale=terms)


def test_attention_is_causal(rng):
    (q, k, v), _ = _qkv(rng, (1, 2, 70, 16), np.float32, True)
    out, _ = cuda.attention_forward(*dev(q, k, v), 0.25)
    k2, v2 = k.copy(), v.copy()
    k2[:, :, 40:] += 10.0
    v2[:, :, 40:] -= 3.0
    out2, _ = cuda.attention_forward(*dev(q, k2, v2), 0.25)
    assert bool((out[:, :, :40] == out2[:, :, :40]).all())
    assert not bool(cupy.allclose(out[:, :, 40:], out2[:, :, 40:]))


# (B, nh, T, hs, t0, L): queries at positions t0..t0+T-1 over the first t0 + T of L keys. T = 1 is a
# decoding step (one block of queries over many key tiles); t0 not a multiple of any tile shifts
# the query tiles against the key tiles; L > t0 + T is a preallocated cache whose tail is not read
ATTN_OFFSET_SHAPES = [(1, 1, 1, 4, 0, 1), (2, 3, 1, 5, 6, 7), (1, 2, 1, 64, 69, 128), (2, 3, 7, 5, 1, 8),
                      (1, 2, 33, 9, 5, 40), (2, 2, 9, 16, 3, 20), (1, 1, 70, 32, 35, 200),
                      (1, 2, 3, 80, 10, 13)]                       # hs = 80: the reference fallback


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", ATTN_OFFSET_SHAPES)
def test_attention_query_offset(rng, dtype, shape):
    B, nh, T, hs, t0, L = shape
    W = t0 + T
    q = normal(rng, (B, nh, T, hs), dtype)                         # (B, nh, T, hs)
    k, v = normal(rng, (B, nh, L, hs), dtype), normal(rng, (B, nh, L, hs), dtype)  # (B, nh, L, hs)
    k[:, :, W:] = np.nan                                           # never to be read
    v[:, :, W:] = np.nan
    dout = normal(rng, q.shape, dtype)
    scale = 1.0 / math.sqrt(hs)
    want_out, want_lse = reference.attention_forward(q, k, v, scale, t0)
    got_out, got_lse = cuda.attention_forward(*dev(q, k, v), scale, t0)
    assert_close(got_out, want_out, dtype, f"attention_forward out {shape}")
    assert_close(got_lse, want_lse, dtype, f"attention_forward lse {shape}")
    want = reference.attention_backward(dout, q, k, v, want_out, want_lse, scale, t0)
    got = cuda.attention_backward(*dev(dout, q, k, v, want_out, want_lse), scale, t0)
    terms = np.linalg.norm(dout) * np.linalg.norm(v[:, :, :W]) * np.linalg.norm(k[:, :, :W]) * scale
    for name, g, w in zip(("dq", "dk", "dv"), got, want):
        assert_close(g, w, dtype, f"attention_backward {name} {shape}", scale=terms)
    for name, g in zip(("dk", "dv"), got[1:]):
        assert not bool(g[:, :, W:].any()), f"attention_backward {name} {shape}: keys past t0 + T have a gradient"


def test_attention_offset_zero_is_the_square_kernel(rng):
    """t0 = 0 over L = T keys (training's attention) gives the same arrays as the call without one."""
    (q, k, v), (dq_, dk_, dv_) = _qkv(rng, (2, 3, 37, 20), np.float32, True)
    dout = cupy.asarray(normal(rng, q.shape, np.float32))
    plain = cuda.attention_forward(dq_, dk_, dv_, 0.3)
    offset = cuda.attention_forward(dq_, dk_, dv_, 0.3, 0)
    for a, b in zip(plain, offset):
        assert bool((a == b).all())
    for a, b in zip(cuda.attention_backward(dout, dq_, dk_, dv_, *plain, 0.3),
                    cuda.attention_backward(dout, dq_, dk_, dv_, *plain, 0.3, 0)):
        assert bool((a == b).all())


# ------------------------------------------------------------------------------------------------
# embedding backward
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N,C,V", [(1, 1, 1), (7, 13, 5), pytest.param(16384, 384, 65, marks=PRESET_SIZE),
                                   pytest.param(16384, 384, 256, marks=PRESET_SIZE), (300, 20, 256),
                                   (64, 128, 50257)])
def test_embedding_backward(rng, dtype, N, C, V):
    dout = normal(rng, (N, C), dtype)
    idx = rng.integers(0, V, size=N)
    assert_close(cuda.embedding_backward(*dev(dout, idx), V), reference.embedding_backward(dout, idx, V),
                 dtype, f"embedding_backward {(N, C, V)}")


def test_embedding_backward_repeated_and_negative_ids():
    dout = np.arange(10, dtype=np.float64).reshape(5, 2)          # (5, 2)
    idx = np.array([2, 0, 2, 2, -1])
    want = np.array([[2, 3], [0, 0], [10, 13], [8, 9]], dtype=np.float64)
    np.testing.assert_array_equal(cuda.embedding_backward(*dev(dout, idx), 4).get(), want)


# ------------------------------------------------------------------------------------------------
# AdamW
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1,), (7,), (13, 17), (384, 1536), (65, 384)])
@pytest.mark.parametrize("contiguous", [True, False])
def test_adamw_update(rng, dtype, shape, contiguous):
    param = normal(rng, shape, dtype)
    m = normal(rng, shape, dtype, 0.1)
    v = np.abs(normal(rng, shape, dtype, 0.01))
    mine = [cupy.asarray(a) if contiguous else strided(a) for a in (param, m, v)]
    theirs = [param.copy(), m.copy(), v.copy()]
    hyper = dict(lr=3e-4, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1)
    for step in (1, 2, 3):
        grad = normal(rng, shape, dtype)
        assert cuda.adamw_update(mine[0], cupy.asarray(grad), mine[1], mine[2], step=step, **hyper) is None
        reference.adamw_update(theirs[0], grad, theirs[1], theirs[2], step=step, **hyper)
    for name, a, b in zip(("param", "m", "v"), mine, theirs):
        assert_close(a, b, dtype, f"adamw_update {name} {shape} (in place)")


# ------------------------------------------------------------------------------------------------
# Muon: the momentum pass and the apply pass (in place)
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (128, 512), (384, 1536)])
@pytest.mark.parametrize("contiguous", [True, False])
def test_muon_momentum_and_apply(rng, dtype, shape, contiguous):
    param, momentum = normal(rng, shape, dtype), normal(rng, shape, dtype, 0.1)
    mine = [cupy.asarray(a) if contiguous else strided(a) for a in (param, momentum)]
    theirs = [param.copy(), momentum.copy()]
    for step in range(3):
        grad, update = normal(rng, shape, dtype), normal(rng, shape, dtype)
        u = cuda.muon_momentum(cupy.asarray(grad) if contiguous else strided(grad), mine[1], beta=0.95)
        assert_close(u, reference.muon_momentum(grad, theirs[1], beta=0.95), dtype, f"muon_momentum update {shape}")
        assert_close(mine[1], theirs[1], dtype, f"muon_momentum momentum {shape} (in place)")
        wd = 0.1 * step
        assert cuda.muon_apply(mine[0], cupy.asarray(update) if contiguous else strided(update), lr=0.02,
                               scale=1.7, weight_decay=wd) is None
        reference.muon_apply(theirs[0], update, lr=0.02, scale=1.7, weight_decay=wd)
        assert_close(mine[0], theirs[0], dtype, f"muon_apply param {shape} (in place)")


# ------------------------------------------------------------------------------------------------
# dropout: a hashed mask, equal to the reference bit for bit
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(), (1,), (7, 13), (3, 5, 17), (4, 33, 100),
                                   pytest.param((64, 256, 384), marks=PRESET_SIZE)])
def test_dropout(rng, dtype, shape):
    x, dout = normal(rng, shape, dtype), normal(rng, shape, dtype)
    p, seed = float(rng.uniform(0.05, 0.9)), int(rng.integers(2 ** 63))
    out = cuda.dropout_forward(cupy.asarray(x), p, seed)
    assert isinstance(out, cupy.ndarray) and out.dtype == np.dtype(dtype) and out.shape == x.shape
    np.testing.assert_array_equal(out.get(), reference.dropout_forward(x, p, seed))
    dx = cuda.dropout_backward(cupy.asarray(dout), p, seed)
    np.testing.assert_array_equal(dx.get(), reference.dropout_backward(dout, p, seed))
    if len(shape) >= 1 and shape[-1] > 1:
        np.testing.assert_array_equal(cuda.dropout_forward(strided(x), p, seed).get(),
                                      reference.dropout_forward(x, p, seed))


# ------------------------------------------------------------------------------------------------
# what the kernels do not take goes to the reference, on the device
# ------------------------------------------------------------------------------------------------
def test_float16_falls_back_to_the_reference(rng):
    x = cupy.asarray(normal(rng, (4, 6), np.float16))
    got = cuda.gelu_forward(x)
    assert isinstance(got, cupy.ndarray) and got.dtype == np.float16
    np.testing.assert_array_equal(got.get(), reference.gelu_forward(x).get())


@pytest.mark.skipif(os.environ.get("TINYGRAD_GPT_KERNELS", "") in ("0", "off", "reference"),
                    reason="kernels switched off")
@pytest.mark.skipif("EMULATED", reason="NVRTC's per-instantiation compile is a GPU-side property")
def test_first_launch_compiles_only_what_it_needs():
    """A kernel instantiation compiles on its own (seconds), not the whole file's templates."""
    import time
    from tinygrad_gpt.kernels.cuda import _common
    _common._raw_module.cache_clear()
    t0 = time.perf_counter()
    cuda.gelu_forward(cupy.ones(3, dtype=cupy.float32))
    cupy.cuda.Device().synchronize()
    assert time.perf_counter() - t0 < 60
