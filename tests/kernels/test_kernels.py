"""Every Numba kernel in tinygrad_gpt/kernels/cpu against its NumPy reference in tinygrad_gpt/kernels/reference.py.

What "equal" means here: for every output array, the norm-based relative error
    rel_err(a, ref) = ||a - ref||_2 / ||ref||_2        (Frobenius norm over the whole array)
is below 1e-5 in float32 and 1e-10 in float64. Elementwise relative error is ill-posed for these
kernels in float32: layer-norm backward and the attention gradients are differences of nearly
equal sums (dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))), so single entries near
zero carry a relative error of order one in both implementations, while the array as a whole
agrees to ~1e-7 (float32) and ~1e-16 (float64). Where the reference is (nearly) zero because terms
cancel (layer-norm dx at C = 1, attention dq and dk at T = 1, GELU for x << 0 where 1 + tanh u
cancels), the denominator is the norm of the cancelling terms if that is larger (`scale` below);
0 / 0 counts as equal.

Inputs are fresh random draws each run (the seed is in the failure message, so a failure can be
replayed with KERNEL_TEST_SEED=<seed>), at several shapes each: odd sizes, size-1 edges, the `cpu`
preset's training sizes, and non-contiguous views (every other column of a wider array, or a
transposed view of a fused qkv array, as the model produces).

Follows: llm.c `dev/cuda` (every kernel validated against the CPU reference before it is timed).
Does not: time anything (benchmarks/cpu_kernels.py does), or test the CuPy kernels.

The first run compiles every kernel in both dtypes (tens of seconds on a 2-core machine); Numba's
cache (`cache=True`) makes later runs load them in about a second.
"""
import inspect
import os

import numpy as np
import pytest

numba = pytest.importorskip("numba")

from tinygrad_gpt import kernels  # noqa: E402
from tinygrad_gpt.kernels import cpu, reference  # noqa: E402

DTYPES = [np.float32, np.float64]
TOL = {np.float32: 1e-5, np.float64: 1e-10}


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------
@pytest.fixture
def rng(request):
    """A fresh generator per test; its seed is printed if the test fails."""
    seed = int(os.environ.get("KERNEL_TEST_SEED", np.random.SeedSequence().entropy % 2**32))
    request.node.user_properties.append(("seed", seed))
    print(f"seed {seed} (replay with KERNEL_TEST_SEED={seed})")
    return np.random.default_rng(seed)


def rel_err(a, ref, scale=0.0):
    """||a - ref|| / max(||ref||, scale), computed in float64; 0 when both sides are 0.

    `scale` is for outputs that are differences of nearly equal terms and can be (almost) exactly
    zero in the reference: it is the norm of those terms, the size rounding errors are relative to.
    """
    a = np.asarray(a, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    diff = np.linalg.norm(a - ref)
    denom = max(np.linalg.norm(ref), scale)
    return 0.0 if diff == 0 else diff / denom


def assert_close(got, want, dtype, what, scale=0.0):
    """Same shape, same dtype, rel_err below the dtype's tolerance."""
    assert got.shape == want.shape, f"{what}: shape {got.shape} != reference {want.shape}"
    assert got.dtype == want.dtype == np.dtype(dtype), \
        f"{what}: dtype {got.dtype}, reference {want.dtype}, expected {np.dtype(dtype)}"
    err = rel_err(got, want, scale)
    assert err < TOL[dtype], f"{what}: relative error {err:.3g} >= {TOL[dtype]:g} ({np.dtype(dtype)})"


def noncontig(a):
    """A non-contiguous view holding the same values as a: every other entry of a wider array."""
    a = np.asarray(a)
    wide = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), dtype=a.dtype)  # (..., 2 * last)
    wide[..., ::2] = a
    view = wide[..., ::2]                                          # a.shape, strided
    assert not view.flags.c_contiguous or a.size <= 1
    return view


def normal(rng, shape, dtype, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(dtype)


# ------------------------------------------------------------------------------------------------
# the module itself
# ------------------------------------------------------------------------------------------------
def test_cpu_exports_every_reference_function_with_the_same_signature():
    public = [name for name, obj in vars(reference).items()
              if not name.startswith("_") and inspect.isfunction(obj)
              and obj.__module__ == reference.__name__]
    assert "attention_backward" in public and "adamw_update" in public
    for name in public:
        assert hasattr(cpu, name), f"kernels.cpu does not export {name}"
        assert inspect.signature(getattr(cpu, name)) == inspect.signature(getattr(reference, name)), \
            f"{name}: signature differs from the reference"
        assert name in cpu.__all__, f"{name} missing from kernels.cpu.__all__"


def test_dispatch_picks_cpu_kernels_for_numpy_arrays():
    kernels.set_backend("fused")
    try:
        assert kernels.for_array(np.zeros(3)) is cpu
    finally:
        kernels.set_backend(None)
    kernels.set_backend("reference")
    try:
        assert kernels.for_array(np.zeros(3)) is reference
    finally:
        kernels.set_backend(None)


@pytest.mark.parametrize("value,want", [("reference", "reference"), (" Off ", "reference"), ("0", "reference"),
                                        ("fused", "cpu"), ("1", "cpu"), ("", "cpu")])
def test_kernel_switch_accepts_its_values(monkeypatch, value, want):
    monkeypatch.setenv("TINYGRAD_GPT_KERNELS", value)
    assert kernels.for_array(np.zeros(3)) is {"reference": reference, "cpu": cpu}[want]


@pytest.mark.parametrize("typo", ["refrence", "cuda", "2"])
def test_kernel_switch_refuses_an_unknown_value_listing_the_accepted_ones(monkeypatch, typo):
    """A typo once silently kept the fused kernels, so an A/B comparison compared nothing."""
    monkeypatch.setenv("TINYGRAD_GPT_KERNELS", typo)
    with pytest.raises(ValueError, match=f"TINYGRAD_GPT_KERNELS='{typo}' is not a known value: use "
                                         f"'reference'.*or 'fused'"):
        kernels.for_array(np.zeros(3))
    kernels.set_backend("reference")  # set_backend wins over the environment
    try:
        assert kernels.for_array(np.zeros(3)) is reference
    finally:
        kernels.set_backend(None)


def test_numba_disable_jit_runs_the_references_with_one_warning(tmp_path):
    """NUMBA_DISABLE_JIT=1 once failed with "<intrinsic atomic_add> is not usable in pure-python":
    now every kernel runs its reference, and one warning says so; the loss is the reference's."""
    import subprocess
    import sys
    script = (
        "import warnings, numpy as np\n"
        "warnings.simplefilter('always')\n"
        "from tinygrad_gpt import kernels\n"
        "from tinygrad_gpt.model import GPT, GPTConfig\n"
        "m = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8))\n"
        "idx = np.arange(16).reshape(2, 8) % 11\n"
        "for _ in range(2):\n"
        "    _, loss = m(idx, idx); loss.backward()\n"
        "print(kernels.for_array(idx) is kernels.reference, repr(loss.item()))\n"
    )
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    runs = {}
    for name, extra in [("nojit", {"NUMBA_DISABLE_JIT": "1"}), ("reference", {"TINYGRAD_GPT_KERNELS": "reference"})]:
        env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_DISABLE_JIT", "TINYGRAD_GPT_KERNELS")}
        env.update(extra, PYTHONPATH=repo)
        runs[name] = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True,
                                    text=True, timeout=300)
    nojit = runs["nojit"]
    assert nojit.returncode == 0, nojit.stderr
    assert nojit.stderr.count("NUMBA_DISABLE_JIT=1: the fused kernels need Numba's compiler") == 1, nojit.stderr
    assert nojit.stdout.split()[0] == "True"
    assert nojit.stdout == runs["reference"].stdout


def test_fast_exp_tanh_accuracy():
    """The float32 polynomials in _common.py: exp relative error < 3e-7, tanh absolute < 5e-7;
    the float64 tanh (via expm1) within 1e-14 relative of NumPy's."""
    from tinygrad_gpt.kernels.cpu._common import exp_f32, tanh_f32
    vexp = numba.vectorize(["float32(float32)"])(exp_f32.py_func)
    vtanh = numba.vectorize(["float32(float32)"])(tanh_f32.py_func)
    x = np.linspace(-87.0, 88.0, 400_001, dtype=np.float32)       # (400001,)
    want = np.exp(x.astype(np.float64))
    assert np.max(np.abs(vexp(x) - want) / want) < 3e-7
    x = np.linspace(-20.0, 20.0, 400_001, dtype=np.float32)       # (400001,)
    assert np.max(np.abs(vtanh(x) - np.tanh(x.astype(np.float64)))) < 5e-7
    from tinygrad_gpt.kernels.cpu._common import tanh_f64
    x = np.linspace(-30.0, 30.0, 200_001)                         # (200001,) float64
    got = numba.vectorize(["float64(float64)"])(tanh_f64.py_func)(x)
    np.testing.assert_allclose(got, np.tanh(x), rtol=1e-14, atol=1e-300)
    special = np.array([-np.inf, np.inf, np.nan, -200.0, 200.0, 0.0], dtype=np.float32)
    with np.errstate(invalid="ignore"):  # inf - inf inside the polynomials, selected away
        np.testing.assert_array_equal(vexp(special), [0.0, np.inf, np.nan, 0.0, np.inf, 1.0])
        np.testing.assert_array_equal(vtanh(special), [-1.0, 1.0, np.nan, -1.0, 1.0, 0.0])


# ------------------------------------------------------------------------------------------------
# layer norm
# ------------------------------------------------------------------------------------------------
LN_SHAPES = [(1, 1), (7, 13), (768, 128), (5, 384)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", LN_SHAPES)
@pytest.mark.parametrize("contiguous", [True, False])
def test_layernorm(rng, dtype, shape, contiguous):
    N, C = shape
    x = normal(rng, (N, C), dtype, 3.0) + dtype(1.5)               # (N, C) off-centre
    weight = normal(rng, C, dtype)                                 # (C,)
    bias = normal(rng, C, dtype)                                   # (C,)
    dout = normal(rng, (N, C), dtype)                              # (N, C)
    if not contiguous:
        x, weight, dout = noncontig(x), noncontig(weight), noncontig(dout)
    want = reference.layernorm_forward(x, weight, bias)
    got = cpu.layernorm_forward(x, weight, bias)
    for name, g, w in zip(("out", "mean", "rstd"), got, want):
        assert_close(g, w, dtype, f"layernorm_forward {name} {shape}")
    _, mean, rstd = want
    want = reference.layernorm_backward(dout, x, weight, mean, rstd)
    got = cpu.layernorm_backward(dout, x, weight, mean, rstd)
    # dx = rstd * (dout * weight - ...): at C = 1 the terms cancel to 0, so measure against them
    terms = np.linalg.norm(rstd[:, None] * dout * weight)
    for name, g, w in zip(("dx", "dweight", "dbias"), got, want):
        assert_close(g, w, dtype, f"layernorm_backward {name} {shape}", scale=terms)


# ------------------------------------------------------------------------------------------------
# RMSNorm (with a gain, and without: QK-norm)
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", LN_SHAPES + [(96, 32)])
@pytest.mark.parametrize("contiguous", [True, False])
@pytest.mark.parametrize("gain", [True, False])
def test_rmsnorm(rng, dtype, shape, contiguous, gain):
    N, C = shape
    x = normal(rng, (N, C), dtype, 3.0) + dtype(1.5)               # (N, C) off-centre: no mean is removed
    weight = normal(rng, C, dtype) if gain else None               # (C,)
    dout = normal(rng, (N, C), dtype)                              # (N, C)
    if not contiguous:
        x, dout = noncontig(x), noncontig(dout)
        weight = noncontig(weight) if gain else None
    want = reference.rmsnorm_forward(x, weight)
    got = cpu.rmsnorm_forward(x, weight)
    for name, g, w in zip(("out", "rstd"), got, want):
        assert_close(g, w, dtype, f"rmsnorm_forward {name} {shape}")
    rstd = want[1]
    want = reference.rmsnorm_backward(dout, x, weight, rstd)
    got = cpu.rmsnorm_backward(dout, x, weight, rstd)
    # dx = rstd * (dxhat - xhat * mean(dxhat * xhat)): at C = 1 the two terms cancel to 0
    terms = np.linalg.norm(rstd[:, None] * dout * (weight if gain else 1))
    assert_close(got[0], want[0], dtype, f"rmsnorm_backward dx {shape}", scale=terms)
    if gain:
        assert_close(got[1], want[1], dtype, f"rmsnorm_backward dweight {shape}")
    else:
        assert got[1] is None and want[1] is None


def test_rmsnorm_is_layer_norm_of_a_centred_row(rng):
    """A row of mean 0 normalises alike under both (layer norm's mean is 0, its variance the mean
    square): the two kernels agree there, and the gain-free RMSNorm is the gain 1."""
    x = normal(rng, (5, 16), np.float64)                           # (5, 16)
    x -= x.mean(axis=1, keepdims=True)                             # rows of mean 0
    ones, zeros = np.ones(16), np.zeros(16)                        # (16,)
    out, rstd = cpu.rmsnorm_forward(x, ones)
    ln_out, _, ln_rstd = cpu.layernorm_forward(x, ones, zeros)
    np.testing.assert_allclose(out, ln_out, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(rstd, ln_rstd, rtol=1e-12)
    np.testing.assert_array_equal(cpu.rmsnorm_forward(x, None)[0], out)


# ------------------------------------------------------------------------------------------------
# rotary position embedding
# ------------------------------------------------------------------------------------------------
ROTARY_SHAPES = [(1, 2), (3, 7, 10), (2, 3, 5, 8), (12, 4, 64, 32)]  # (..., T, hs)


def rotary_tables(rng, T, hs, dtype):
    """cos, sin (T, hs/2) of random angles: the kernels rotate by whatever the tables hold."""
    theta = rng.uniform(-10.0, 10.0, (T, hs // 2))                 # (T, hs/2)
    return np.cos(theta).astype(dtype), np.sin(theta).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", ROTARY_SHAPES)
@pytest.mark.parametrize("contiguous", [True, False])
def test_rotary(rng, dtype, shape, contiguous):
    x = normal(rng, shape, dtype)                                  # (..., T, hs)
    dout = normal(rng, shape, dtype)                               # (..., T, hs)
    cos, sin = rotary_tables(rng, *shape[-2:], dtype)              # (T, hs/2) each
    if not contiguous:
        x, dout = noncontig(x), noncontig(dout)
    out = cpu.rotary_forward(x, cos, sin)
    assert_close(out, reference.rotary_forward(x, cos, sin), dtype, f"rotary_forward {shape}")
    assert_close(cpu.rotary_backward(dout, cos, sin), reference.rotary_backward(dout, cos, sin), dtype,
                 f"rotary_backward {shape}")
    # a rotation keeps each pair's length, and backward (the transpose) undoes forward
    h = shape[-1] // 2
    np.testing.assert_allclose(out[..., :h] ** 2 + out[..., h:] ** 2, x[..., :h] ** 2 + x[..., h:] ** 2,
                               rtol=TOL[dtype] * 10, atol=TOL[dtype])
    assert_close(cpu.rotary_backward(out, cos, sin), np.ascontiguousarray(x), dtype, f"rotary round trip {shape}")


def test_rotary_by_hand():
    """hs = 4: the pairs are channels (0, 2) and (1, 3). A quarter turn sends (a, b) to (-b, a),
    no turn leaves the pair alone; backward turns the other way."""
    x = np.array([[1.0, 2.0, 3.0, 4.0]])                           # (T=1, hs=4)
    cos = np.array([[0.0, 1.0]])                                   # (1, 2): pair 0 a quarter turn, pair 1 none
    sin = np.array([[1.0, 0.0]])
    for module in (reference, cpu):
        np.testing.assert_array_equal(module.rotary_forward(x, cos, sin), [[-3.0, 2.0, 1.0, 4.0]])
        np.testing.assert_array_equal(module.rotary_backward(x, cos, sin), [[3.0, 2.0, -1.0, 4.0]])


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_rotary_shape_errors_name_the_shapes(backend):
    module = {"reference": reference, "cpu": cpu}[backend]
    with pytest.raises(ValueError, match=r"even head size hs, got shape \(2, 5\)"):
        module.rotary_forward(np.zeros((2, 5)), np.zeros((2, 2)), np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"must be \(T, hs // 2\) = \(3, 2\) for x \(1, 3, 4\), got \(2, 2\)"):
        module.rotary_forward(np.zeros((1, 3, 4)), np.zeros((2, 2)), np.zeros((2, 2)))


# ------------------------------------------------------------------------------------------------
# GELU
# ------------------------------------------------------------------------------------------------
GELU_SHAPES = [(), (1,), (7, 13), (3, 5, 17), (768, 512)]


def _elementwise_inputs(rng, shape, dtype, contiguous):
    """x (scale 2) and dout of `shape`, both strided views when not `contiguous` (0-d: skipped)."""
    if not contiguous and len(shape) == 0:
        pytest.skip("a 0-d array has no stride")
    x = normal(rng, shape, dtype, 2.0)                             # shape
    dout = normal(rng, shape, dtype)                               # shape
    if not contiguous:
        x, dout = noncontig(x), noncontig(dout)
    return x, dout


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", GELU_SHAPES)
@pytest.mark.parametrize("contiguous", [True, False])
def test_gelu(rng, dtype, shape, contiguous):
    x, dout = _elementwise_inputs(rng, shape, dtype, contiguous)   # shape, shape
    # out = 0.5 x (1 + tanh u): for x << 0 the 1 and tanh u cancel, and both implementations are
    # off by ~eps * 0.5 |x| there (a one-element array makes that the whole norm), so measure
    # against the cancelling terms; the same for the local derivative in backward
    x64 = np.asarray(x, dtype=np.float64)
    terms_fwd = np.linalg.norm(0.5 * x64)
    terms_bwd = np.linalg.norm(dout * (0.5 + 0.5 * np.abs(x64) * reference.GELU_SCALE
                                       * (1 + 3 * 0.044715 * x64 * x64)))
    assert_close(cpu.gelu_forward(x), reference.gelu_forward(x), dtype, f"gelu_forward {shape}",
                 scale=terms_fwd)
    assert_close(cpu.gelu_backward(dout, x), reference.gelu_backward(dout, x), dtype,
                 f"gelu_backward {shape}", scale=terms_bwd)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gelu_saturates_like_the_reference(dtype):
    """Large |x|: tanh saturates to +-1, so gelu(x) = x for x >> 0 and 0 for x << 0.

    Elementwise here, so an absolute term too: near x = -5, 1 + tanh(u) cancels to ~1e-7 and both
    implementations carry an error of about eps * |x| there.
    """
    x = np.array([-60.0, -12.0, -5.0, -1e-3, 0.0, 1e-3, 5.0, 12.0, 60.0], dtype=dtype)  # (9,)
    atol = 1e-6 if dtype == np.float32 else 1e-14
    np.testing.assert_allclose(cpu.gelu_forward(x), reference.gelu_forward(x),
                               rtol=TOL[dtype], atol=atol)
    dout = np.ones_like(x)                                         # (9,)
    np.testing.assert_allclose(cpu.gelu_backward(dout, x), reference.gelu_backward(dout, x),
                               rtol=TOL[dtype], atol=atol)


# ------------------------------------------------------------------------------------------------
# ReLU squared
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", GELU_SHAPES)
@pytest.mark.parametrize("contiguous", [True, False])
def test_relu2(rng, dtype, shape, contiguous):
    """max(x, 0)^2 and 2 max(x, 0) dout round once per element both ways: bit for bit the reference."""
    x, dout = _elementwise_inputs(rng, shape, dtype, contiguous)   # shape, shape
    out = cpu.relu2_forward(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    np.testing.assert_array_equal(out, reference.relu2_forward(x))
    np.testing.assert_array_equal(cpu.relu2_backward(dout, x), reference.relu2_backward(dout, x))


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu2_edges_like_the_reference(dtype):
    """0 and -0 give 0 and slope 0, nan propagates (as numpy.maximum), +inf stays inf, -inf gives 0."""
    x = np.array([-np.inf, -3.0, -0.0, 0.0, 2.0 ** -100, 0.5, 3.0, np.inf, np.nan], dtype=dtype)  # (9,)
    dout = np.full_like(x, 1.5)                                    # (9,)
    expected = np.array([0.0, 0.0, 0.0, 0.0, 2.0 ** -200, 0.25, 9.0, np.inf, np.nan]).astype(dtype)
    for module in (reference, cpu):
        np.testing.assert_array_equal(module.relu2_forward(x), expected)
        np.testing.assert_array_equal(module.relu2_backward(dout, x),
                                      np.array([0, 0, 0, 0, 3 * 2.0 ** -100, 1.5, 9.0, np.inf, np.nan]).astype(dtype))


# ------------------------------------------------------------------------------------------------
# softmax + cross-entropy
# ------------------------------------------------------------------------------------------------
CE_SHAPES = [(1, 1), (7, 13), (768, 65), (5, 1000)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", CE_SHAPES)
@pytest.mark.parametrize("contiguous", [True, False])
def test_softmax_cross_entropy(rng, dtype, shape, contiguous):
    N, V = shape
    logits = normal(rng, (N, V), dtype, 4.0)                       # (N, V)
    targets = rng.integers(0, V, size=N)                           # (N,)
    targets[rng.random(N) < 0.3] = -100                            # some ignored rows
    targets[0] = V - 1
    dlosses = normal(rng, N, dtype)                                # (N,)
    if not contiguous:
        logits, dlosses = noncontig(logits), noncontig(dlosses)
        targets = noncontig(targets)
    want = reference.softmax_cross_entropy_forward(logits, targets)
    got = cpu.softmax_cross_entropy_forward(logits, targets)
    for name, g, w in zip(("losses", "lse"), got, want):
        assert_close(g, w, dtype, f"softmax_cross_entropy_forward {name} {shape}")
    lse = want[1]
    assert_close(cpu.softmax_cross_entropy_backward(dlosses, logits, lse, targets),
                 reference.softmax_cross_entropy_backward(dlosses, logits, lse, targets),
                 dtype, f"softmax_cross_entropy_backward {shape}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_ignore_index(rng, dtype):
    """Ignored rows: loss 0, dlogits row 0; a custom ignore_index; negative targets wrap; all rows
    ignored; int32 targets; large logits (stability)."""
    N, V = 9, 11
    logits = normal(rng, (N, V), dtype, 30.0)                      # (N, V) large: exp would overflow
    targets = np.array([0, 3, -1, 10, 4, -1, 7, 2, 9], dtype=np.int32)  # (N,) -1 = ignore here
    dlosses = np.full(N, 1.0 / N, dtype=dtype)                     # (N,)
    losses, lse = cpu.softmax_cross_entropy_forward(logits, targets, ignore_index=-1)
    ref_losses, ref_lse = reference.softmax_cross_entropy_forward(logits, targets, ignore_index=-1)
    assert np.all(losses[targets == -1] == 0)
    assert_close(losses, ref_losses, dtype, "losses, ignore_index=-1")
    assert_close(lse, ref_lse, dtype, "lse, ignore_index=-1")
    dlogits = cpu.softmax_cross_entropy_backward(dlosses, logits, lse, targets, ignore_index=-1)
    assert np.all(dlogits[targets == -1] == 0)
    assert_close(dlogits, reference.softmax_cross_entropy_backward(dlosses, logits, ref_lse,
                                                                   targets, ignore_index=-1),
                 dtype, "dlogits, ignore_index=-1")
    # each valid row of dlogits sums to 0 (softmax sums to 1, minus the one-hot), times dloss
    np.testing.assert_allclose(dlogits.sum(axis=1), 0, atol=1e-6)
    # with the default ignore_index, -1 is an ordinary target: the last class, as in NumPy indexing
    losses, _ = cpu.softmax_cross_entropy_forward(logits, targets)
    assert_close(losses, reference.softmax_cross_entropy_forward(logits, targets)[0], dtype,
                 "losses, negative targets")
    # every row ignored
    ignored = np.full(N, -100)                                     # (N,)
    losses, lse = cpu.softmax_cross_entropy_forward(logits, ignored)
    assert np.all(losses == 0)
    assert np.all(cpu.softmax_cross_entropy_backward(dlosses, logits, lse, ignored) == 0)


@pytest.mark.parametrize("module", ["cpu", "reference"])
@pytest.mark.parametrize("offset", [1e6, -1e6, 3e4])
def test_cross_entropy_at_large_float32_logits_matches_float64(rng, module, offset):
    """float32 logits near 1e6: loss and dlogits equal a float64 computation on the same float32
    values, to float32 precision. lse - logits[t] rounded lse at 1e6 (steps of 0.0625: a loss of
    1.4375 for 1.4076) and exp(logits - lse) put that error into every probability (1-3%)."""
    k = {"cpu": cpu, "reference": reference}[module]
    N, V = 33, 17
    logits = (normal(rng, (N, V), np.float64, 2.0) + offset).astype(np.float32)  # (N, V)
    targets = rng.integers(0, V, N)                                # (N,)
    dlosses = np.full(N, 1.0 / N, np.float32)                      # (N,)
    exact = logits.astype(np.float64)                              # (N, V) the same values, float64
    shifted = exact - exact.max(axis=1, keepdims=True)             # (N, V)
    p = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)  # (N, V)
    want_loss = -np.log(p[np.arange(N), targets])                  # (N,)
    want_d = p * dlosses[:, None].astype(np.float64)               # (N, V)
    want_d[np.arange(N), targets] -= dlosses                       # minus the one-hot
    losses, lse = k.softmax_cross_entropy_forward(logits, targets)
    assert losses.dtype == np.float32
    np.testing.assert_allclose(losses, want_loss, rtol=1e-5, atol=1e-6)
    dlogits = k.softmax_cross_entropy_backward(dlosses, logits, lse, targets)
    assert dlogits.dtype == np.float32
    assert rel_err(dlogits, want_d) < 1e-5, f"dlogits relative error {rel_err(dlogits, want_d):.3g}"


def test_cross_entropy_rejects_out_of_range_targets():
    logits = np.zeros((3, 5), dtype=np.float32)                    # (3, 5)
    with pytest.raises(IndexError, match=r"targets\[1\] = 5"):
        cpu.softmax_cross_entropy_forward(logits, np.array([0, 5, 1]))
    with pytest.raises(IndexError, match="targets"):
        cpu.softmax_cross_entropy_backward(np.ones(3, np.float32), logits,
                                           np.zeros(3, np.float32), np.array([0, 1, -6]))


# ------------------------------------------------------------------------------------------------
# causal attention
# ------------------------------------------------------------------------------------------------
# (1, 2, 70, 40): more keys and head columns than one gemm4 tile holds (32 float32 / 16 float64
# columns with AVX-512, half that with AVX2), plus a partial tile of each
ATTN_SHAPES = [(1, 1, 1, 4), (2, 3, 1, 5), (2, 3, 7, 5), (1, 2, 33, 9), (1, 2, 70, 40), (12, 4, 64, 32)]


def _qkv(rng, shape, dtype, contiguous):
    """q, k, v of shape (B, nh, T, hs): contiguous, or views of one (B, T, 3, nh, hs) array."""
    B, nh, T, hs = shape
    qkv = normal(rng, (B, T, 3, nh, hs), dtype)                    # (B, T, 3, nh, hs) as c_attn gives
    q, k, v = (qkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))  # (B, nh, T, hs) views
    if contiguous:
        q, k, v = (np.ascontiguousarray(a) for a in (q, k, v))
    elif T > 1:
        assert not q.flags.c_contiguous
    return q, k, v


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", ATTN_SHAPES)
@pytest.mark.parametrize("contiguous", [True, False])
def test_attention(rng, dtype, shape, contiguous):
    q, k, v = _qkv(rng, shape, dtype, contiguous)
    dout = normal(rng, shape, dtype)                               # (B, nh, T, hs)
    if not contiguous:
        dout = noncontig(dout)
    scale = 1.0 / np.sqrt(shape[-1])
    want_out, want_lse = reference.attention_forward(q, k, v, scale)
    got_out, got_lse = cpu.attention_forward(q, k, v, scale)
    assert_close(got_out, want_out, dtype, f"attention_forward out {shape}")
    assert_close(got_lse, want_lse, dtype, f"attention_forward lse {shape}")
    want = reference.attention_backward(dout, q, k, v, want_out, want_lse, scale)
    got = cpu.attention_backward(dout, q, k, v, want_out, want_lse, scale)
    # dscores = p * (dout . v_j - dout . out): at T = 1, out = v and the two cancel (dq = dk = 0
    # up to rounding, in both), so measure dq and dk against the size of the cancelling terms
    terms = np.linalg.norm(dout) * np.linalg.norm(v) * np.linalg.norm(k) * scale
    for name, g, w in zip(("dq", "dk", "dv"), got, want):
        assert_close(g, w, dtype, f"attention_backward {name} {shape}", scale=terms)


@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_is_causal(rng, dtype):
    """Changing key/value t must not change outputs at rows before t."""
    q, k, v = _qkv(rng, (1, 2, 9, 4), dtype, True)
    out, _ = cpu.attention_forward(q, k, v, 0.5)
    k2, v2 = k.copy(), v.copy()
    k2[:, :, 5:] += 10.0
    v2[:, :, 5:] -= 3.0
    out2, _ = cpu.attention_forward(q, k2, v2, 0.5)
    np.testing.assert_array_equal(out[:, :, :5], out2[:, :, :5])
    assert not np.allclose(out[:, :, 5:], out2[:, :, 5:])


# (B, nh, T, hs, t0, L): queries at positions t0..t0+T-1 over the first t0 + T of L keys. T = 1 is
# a decoding step; t0 % 4 != 0 shifts the query blocks against the key blocks of the backward;
# L > t0 + T is a preallocated cache whose tail must not be read
ATTN_OFFSET_SHAPES = [(1, 1, 1, 4, 0, 1), (2, 3, 1, 5, 6, 7), (1, 2, 1, 40, 69, 128), (2, 3, 7, 5, 1, 8),
                      (1, 2, 33, 9, 5, 40), (2, 2, 9, 16, 3, 20), (1, 2, 3, 40, 70, 73), (3, 4, 5, 8, 13, 18)]


def _offset_qkv(rng, shape, dtype):
    """q (B, nh, T, hs), k, v (B, nh, L, hs) with NaN in the keys past t0 + T (never to be read)."""
    B, nh, T, hs, t0, L = shape
    q = normal(rng, (B, nh, T, hs), dtype)                         # (B, nh, T, hs)
    k, v = normal(rng, (B, nh, L, hs), dtype), normal(rng, (B, nh, L, hs), dtype)  # (B, nh, L, hs)
    k[:, :, t0 + T:] = np.nan
    v[:, :, t0 + T:] = np.nan
    return q, k, v


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", ATTN_OFFSET_SHAPES)
def test_attention_query_offset(rng, dtype, shape):
    """Queries at t0.. against the reference, and against the reference's square attention over the
    whole sequence (rows t0.. of it); keys past t0 + T get zero gradients and are not read."""
    B, nh, T, hs, t0, L = shape
    q, k, v = _offset_qkv(rng, shape, dtype)
    dout = normal(rng, q.shape, dtype)                             # (B, nh, T, hs)
    scale = 1.0 / np.sqrt(hs)
    want_out, want_lse = reference.attention_forward(q, k, v, scale, t0)
    got_out, got_lse = cpu.attention_forward(q, k, v, scale, t0)
    assert np.isfinite(want_out).all() and np.isfinite(got_out).all(), "a key past t0 + T was read"
    assert_close(got_out, want_out, dtype, f"attention_forward out {shape}")
    assert_close(got_lse, want_lse, dtype, f"attention_forward lse {shape}")
    # the same rows of the square causal attention of a sequence whose last T positions are q
    W = t0 + T
    q_full = np.concatenate([normal(rng, (B, nh, t0, hs), dtype), q], axis=2)  # (B, nh, W, hs)
    full_out, full_lse = reference.attention_forward(q_full, k[:, :, :W], v[:, :, :W], scale)
    assert_close(got_out, np.ascontiguousarray(full_out[:, :, t0:]), dtype, f"rows {t0}.. of square attention {shape}")
    assert_close(got_lse, np.ascontiguousarray(full_lse[:, :, t0:]), dtype, f"lse rows {t0}.. {shape}")
    want = reference.attention_backward(dout, q, k, v, want_out, want_lse, scale, t0)
    got = cpu.attention_backward(dout, q, k, v, want_out, want_lse, scale, t0)
    terms = np.linalg.norm(dout) * np.linalg.norm(v[:, :, :W]) * np.linalg.norm(k[:, :, :W]) * scale
    for name, g, w in zip(("dq", "dk", "dv"), got, want):
        assert np.isfinite(g).all(), f"attention_backward {name} {shape}: a key past t0 + T was read"
        assert_close(g, w, dtype, f"attention_backward {name} {shape}", scale=terms)
    for name, g in zip(("dk", "dv"), got[1:]):
        assert not g[:, :, W:].any(), f"attention_backward {name} {shape}: keys past t0 + T have a gradient"


@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_offset_zero_is_the_square_kernel(rng, dtype):
    """t0 = 0 over L = T keys is training's attention: the same arrays, bit for bit, as the call
    without an offset (the default), and the same as the reference."""
    q, k, v = _qkv(rng, (2, 3, 37, 20), dtype, False)
    dout = normal(rng, q.shape, dtype)
    plain = cpu.attention_forward(q, k, v, 0.3)
    offset = cpu.attention_forward(q, k, v, 0.3, 0)
    for a, b in zip(plain, offset):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(cpu.attention_backward(dout, q, k, v, *plain, 0.3),
                    cpu.attention_backward(dout, q, k, v, *plain, 0.3, 0)):
        np.testing.assert_array_equal(a, b)
    assert_close(plain[0], reference.attention_forward(q, k, v, 0.3)[0], dtype, "t0 = 0 forward")


@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_decoding_steps_equal_the_square_rows(rng, dtype):
    """Forty steps of T = 1 at t0 = 0, 1, ..., over one growing key array (the by-rows scores of a
    single query block), give the rows of one square attention over the forty positions."""
    q, k, v = (normal(rng, (2, 3, 40, 12), dtype) for _ in range(3))  # (B, nh, T, hs)
    square, square_lse = cpu.attention_forward(q, k, v, 0.25)
    steps = [cpu.attention_forward(q[:, :, t:t + 1], k, v, 0.25, t) for t in range(40)]  # (2, 3, 1, 12) each
    assert_close(np.concatenate([o for o, _ in steps], axis=2), square, dtype, "decoded out")
    assert_close(np.concatenate([l for _, l in steps], axis=2), square_lse, dtype, "decoded lse")


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_attention_offset_errors_name_the_shapes(backend):
    module = {"reference": reference, "cpu": cpu}[backend]
    q = np.zeros((1, 2, 3, 4), np.float32)
    k = np.zeros((1, 2, 5, 4), np.float32)
    with pytest.raises(ValueError, match=r"t0 = 3 with 3 queries.*5 keys"):
        module.attention_forward(q, k, k, 0.5, 3)
    with pytest.raises(ValueError, match=r"t0 = -1"):
        module.attention_forward(q, k, k, 0.5, -1)
    with pytest.raises(ValueError, match=r"q \(1, 2, 3, 4\), k \(1, 2, 5, 4\), v \(1, 2, 5, 3\)"):
        module.attention_forward(q, k, np.zeros((1, 2, 5, 3), np.float32), 0.5, 2)


def test_attention_serial_and_threaded_drivers_agree_bit_for_bit(rng):
    """ThreadPicker may run either driver from call to call; the heads are independent, so the
    two must give identical arrays, not merely close ones (three threads: uneven head ranges)."""
    from tinygrad_gpt.kernels.cpu import attention as attn
    q, k, v = (normal(rng, (13, 7, 5), np.float32) for _ in range(3))  # (BH, T, hs)
    dout = normal(rng, (13, 7, 5), np.float32)                     # (BH, T, hs)
    outs = []
    threads = numba.get_num_threads()
    numba.set_num_threads(min(3, numba.config.NUMBA_NUM_THREADS))
    try:
        for fwd, bwd in ((attn._attention_forward_serial, attn._attention_backward_serial),
                         (attn._attention_forward_threaded, attn._attention_backward_threaded)):
            out = np.empty_like(q)                                 # (BH, T, hs)
            lse = np.empty(q.shape[:2], dtype=q.dtype)             # (BH, T)
            fwd(q, k, v, np.float32(0.4), 0, out, lse)
            grads = [np.empty_like(q) for _ in range(3)]           # dq, dk, dv (BH, T, hs)
            bwd(dout, q, k, v, out, lse, np.float32(0.4), 0, *grads)
            outs.append([out, lse] + grads)
    finally:
        numba.set_num_threads(threads)
    for a, b in zip(*outs):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M,K,N", [(1, 1, 1), (4, 0, 5), (3, 5, 7), (7, 33, 70), (64, 32, 64)])
def test_gemm4_matches_numpy(rng, dtype, M, K, N):
    """The register-tile product attention is built from, on its own: C = A B and C += A^T B
    (A read through a stride), with partial row blocks (M % 4), partial column tiles and K = 0,
    inside larger arrays so that offsets and leading dimensions are exercised too."""
    from numba import njit
    from tinygrad_gpt.kernels.cpu._tile import gemm4

    @njit
    def products(A, AT, B, C, CT, M, K, N):
        """C[:M, :N] = A[:M, :K] @ B[1:K+1, :N];  CT[:M, :N] += AT[:K, :M]^T @ B[1:K+1, :N]."""
        for i0 in range(0, M, 4):
            nr = min(4, M - i0)
            gemm4(A, i0 * A.shape[1], A.shape[1], 1, B, B.shape[1], B.shape[1], K,
                  C, i0 * C.shape[1], C.shape[1], nr, N, False)
            gemm4(AT, i0, 1, AT.shape[1], B, B.shape[1], B.shape[1], K,
                  CT, i0 * CT.shape[1], CT.shape[1], nr, N, True)

    A = normal(rng, (M, K + 3), dtype)                             # (M, K + 3) rows wider than K
    AT = np.ascontiguousarray(A[:, :K].T)                          # (K, M)
    B = normal(rng, (K + 1, N + 2), dtype)                         # (K + 1, N + 2) row 0 unused
    C = np.full((M + 1, N + 2), 7.0, dtype=dtype)                  # (M + 1, N + 2) row M, cols N.. untouched
    CT = normal(rng, (M, N + 2), dtype)                            # (M, N + 2)
    CT0 = CT.copy()
    products(A, AT, B, C, CT, M, K, N)
    want = (A[:, :K].astype(np.float64) @ B[1:K + 1, :N].astype(np.float64)).astype(dtype)  # (M, N)
    assert_close(C[:M, :N], want, dtype, "C = A B")
    assert_close(CT[:, :N] - CT0[:, :N], want, dtype, "C += A^T B")
    np.testing.assert_array_equal(C[M], 7.0)                       # rows past nrows: not written
    np.testing.assert_array_equal(C[:, N:], 7.0)                   # columns past ncols: not written
    np.testing.assert_array_equal(CT[:, N:], CT0[:, N:])


def test_atomic_add_hands_out_every_index_exactly_once():
    """Four threads claim indices from one counter without the GIL, as the attention drivers claim
    heads: each of 2M indices must be claimed once. (A plain load-then-store fetch-add in the same
    loop was measured to hand out millions of indices twice on 2 cores.)"""
    from concurrent.futures import ThreadPoolExecutor
    from numba import njit
    from tinygrad_gpt.kernels.cpu._common import atomic_add

    @njit(nogil=True)
    def claim_all(counters, claimed):
        n = claimed.shape[0]
        i = atomic_add(counters, 0, 1)
        while i < n:
            claimed[i] += 1
            i = atomic_add(counters, 0, 1)

    counters = np.zeros(1, dtype=np.int64)       # (1,) next index
    claimed = np.zeros(2_000_000, dtype=np.int64)
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: claim_all(counters, claimed), range(4)))
    assert np.all(claimed == 1), f"{int((claimed != 1).sum())} indices claimed != once"
    assert counters[0] == claimed.size + 4       # each thread stops after one claim past the end


def test_thread_picker_keeps_the_faster_version_and_rechecks():
    import time
    from tinygrad_gpt.kernels.cpu._common import ThreadPicker
    calls = []
    fast = lambda: calls.append("serial")                            # noqa: E731
    slow = lambda: (calls.append("parallel"), time.sleep(0.003))    # noqa: E731
    picker = ThreadPicker(recheck=5)
    for _ in range(10):
        picker.run("shape", fast, slow)
    # call 1 times serial, call 2 parallel; then serial, except call 5 and 10 re-time parallel
    assert calls == ["serial", "parallel", "serial", "serial", "parallel",
                     "serial", "serial", "serial", "serial", "parallel"]


# ------------------------------------------------------------------------------------------------
# embedding backward
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N,C,V", [(1, 1, 1), (7, 13, 5), (768, 128, 65), (64, 128, 64)])
@pytest.mark.parametrize("contiguous", [True, False])
def test_embedding_backward(rng, dtype, N, C, V, contiguous):
    dout = normal(rng, (N, C), dtype)                              # (N, C)
    idx = rng.integers(0, V, size=N)                               # (N,) repeats when N > V
    if not contiguous:
        dout, idx = noncontig(dout), noncontig(idx)
    assert_close(cpu.embedding_backward(dout, idx, V), reference.embedding_backward(dout, idx, V),
                 dtype, f"embedding_backward {(N, C, V)}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_embedding_backward_repeated_indices(dtype):
    """Hand-derived: idx = [2, 0, 2, 2, -1], V = 4: rows 2 and 0 get sums, row 3 gets dout[4]
    (-1 is the last row, as in NumPy), row 1 stays 0."""
    dout = np.arange(10, dtype=dtype).reshape(5, 2)                # (5, 2) rows [0,1],[2,3],...
    idx = np.array([2, 0, 2, 2, -1], dtype=np.int32)               # (5,)
    want = np.array([[2, 3], [0, 0], [0 + 4 + 6, 1 + 5 + 7], [8, 9]], dtype=dtype)  # (4, 2)
    got = cpu.embedding_backward(dout, idx, 4)
    np.testing.assert_array_equal(got, want)
    assert got.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(got, reference.embedding_backward(dout, idx, 4))
    with pytest.raises(IndexError, match=r"idx\[1\] = 4"):
        cpu.embedding_backward(dout[:2], np.array([0, 4]), 4)


# ------------------------------------------------------------------------------------------------
# AdamW
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1,), (7,), (13, 17), (128, 512)])
@pytest.mark.parametrize("contiguous", [True, False])
def test_adamw_update(rng, dtype, shape, contiguous):
    param = normal(rng, shape, dtype)                              # shape
    m = normal(rng, shape, dtype, 0.1)                             # shape
    v = np.abs(normal(rng, shape, dtype, 0.01))                    # shape
    mine = [param.copy(), m.copy(), v.copy()]
    theirs = [param.copy(), m.copy(), v.copy()]
    if not contiguous:
        mine = [noncontig(a) for a in mine]
    hyper = dict(lr=3e-4, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1)
    for step in (1, 2, 3):
        grad = normal(rng, shape, dtype)                           # shape
        g_mine = grad if contiguous else noncontig(grad)
        assert cpu.adamw_update(mine[0], g_mine, mine[1], mine[2], step=step, **hyper) is None
        reference.adamw_update(theirs[0], grad, theirs[1], theirs[2], step=step, **hyper)
    for name, a, b in zip(("param", "m", "v"), mine, theirs):
        assert_close(a, b, dtype, f"adamw_update {name} {shape} (updated in place)")
    assert not np.array_equal(mine[0], param)


# ------------------------------------------------------------------------------------------------
# Muon: the momentum pass and the apply pass (in place)
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (128, 512), (512, 128)])
@pytest.mark.parametrize("contiguous", [True, False])
def test_muon_momentum_and_apply(rng, dtype, shape, contiguous):
    """Three steps of momentum then apply (the update a fresh array each step, as Newton-Schulz
    returns one), against the reference; non-contiguous: the param, momentum, gradient and update
    are strided views (the param and momentum updated through a copy that is written back)."""
    param, momentum = normal(rng, shape, dtype), normal(rng, shape, dtype, 0.1)
    mine, theirs = [param.copy(), momentum.copy()], [param.copy(), momentum.copy()]
    if not contiguous:
        mine = [noncontig(a) for a in mine]
    for step in range(3):
        grad = normal(rng, shape, dtype)                           # shape
        g_mine = grad if contiguous else noncontig(grad)
        u_mine = cpu.muon_momentum(g_mine, mine[1], beta=0.95)
        u_ref = reference.muon_momentum(grad, theirs[1], beta=0.95)
        assert u_mine.shape == shape and u_mine.dtype == np.dtype(dtype)
        assert_close(u_mine, u_ref, dtype, f"muon_momentum update {shape}")
        assert_close(mine[1], theirs[1], dtype, f"muon_momentum momentum {shape} (in place)")
        wd = 0.1 * step                                            # 0 on the first step: no decay
        update = normal(rng, shape, dtype)                         # shape: stands for the orthogonalised u
        assert cpu.muon_apply(mine[0], update if contiguous else noncontig(update), lr=0.02, scale=1.7,
                              weight_decay=wd) is None
        reference.muon_apply(theirs[0], update, lr=0.02, scale=1.7, weight_decay=wd)
        assert_close(mine[0], theirs[0], dtype, f"muon_apply param {shape} (in place)")
    assert not np.array_equal(mine[0], param)


# ------------------------------------------------------------------------------------------------
# dropout: a hashed mask, so the kernel equals the reference bit for bit
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(), (1,), (7, 13), (3, 5, 17), (12, 64, 128)])
@pytest.mark.parametrize("contiguous", [True, False])
def test_dropout(rng, dtype, shape, contiguous):
    if not contiguous and len(shape) == 0:
        pytest.skip("a 0-d array has no stride")
    x = normal(rng, shape, dtype)
    dout = normal(rng, shape, dtype)
    if not contiguous:
        x, dout = noncontig(x), noncontig(dout)
    p, seed = float(rng.uniform(0.05, 0.9)), int(rng.integers(2 ** 63))
    out = cpu.dropout_forward(x, p, seed)
    np.testing.assert_array_equal(out, reference.dropout_forward(x, p, seed))
    assert out.dtype == np.dtype(dtype) and out.shape == np.shape(x)
    dx = cpu.dropout_backward(dout, p, seed)
    np.testing.assert_array_equal(dx, reference.dropout_backward(dout, p, seed))
    # backward uses forward's mask: zero exactly where forward zeroed (x, dout nonzero a.s.)
    np.testing.assert_array_equal(dx == 0, out == 0)


def test_dropout_mask_statistics_and_seeds(rng):
    """The reference mask is a Bernoulli(1 - p) draw: the kept fraction is within 5 sigma of
    1 - p, neighbouring elements are uncorrelated, and another seed gives another mask."""
    n = 200_000
    x = np.ones(n, np.float32)
    for p in (0.1, 0.2, 0.5):
        seed = int(rng.integers(2 ** 63))
        keep = reference.dropout_forward(x, p, seed) != 0
        sigma = np.sqrt(p * (1 - p) / n)
        assert abs((1 - keep.mean()) - p) < 5 * sigma, (p, keep.mean())
        both = np.mean(keep[1:] & keep[:-1])                        # P(keep i and keep i+1)
        assert abs(both - (1 - p) ** 2) < 5 * np.sqrt((1 - p) ** 2 / n), (p, both)
        other = reference.dropout_forward(x, p, seed + 1) != 0
        assert np.mean(keep != other) > p * (1 - p)                 # ~2 p (1 - p) for independent masks
    np.testing.assert_array_equal(reference.dropout_forward(x, 0.0, 7), x)
    with pytest.raises(ValueError, match="p must be in"):
        reference.dropout_forward(x, 1.0, 7)


# ------------------------------------------------------------------------------------------------
# what the kernels do not handle goes to the reference, with the reference's answer
# ------------------------------------------------------------------------------------------------
def test_other_dtypes_fall_back_to_the_reference(rng):
    x = normal(rng, (4, 6), np.float16)                            # (4, 6)
    np.testing.assert_array_equal(cpu.gelu_forward(x), reference.gelu_forward(x))
    w64 = normal(rng, 6, np.float64)                               # (6,) mixed with float32 x
    x32 = normal(rng, (4, 6), np.float32)                          # (4, 6)
    for g, w in zip(cpu.layernorm_forward(x32, w64, w64), reference.layernorm_forward(x32, w64, w64)):
        np.testing.assert_array_equal(g, w)
    for g, w in zip(cpu.rmsnorm_forward(x32, w64), reference.rmsnorm_forward(x32, w64)):
        np.testing.assert_array_equal(g, w)
    cos = np.ones((4, 3), np.float64)                              # (T, hs/2) float64 tables, float16 x
    np.testing.assert_array_equal(cpu.rotary_forward(x, cos, cos), reference.rotary_forward(x, cos, cos))


def test_first_compilation_is_announced_once_and_not_when_cached(tmp_path):
    """A fresh Numba cache folder: the first run says it is compiling; a second run, with the gelu
    kernel cached by the first, says nothing."""
    import subprocess
    import sys
    code = ("import numpy as np\nfrom tinygrad_gpt import Tensor\n"
            "print((Tensor(np.ones((2, 4), dtype=np.float32)).gelu()).sum().item())")
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba"), TINYGRAD_GPT_KERNELS="fused")
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
            for _ in range(2)]
    assert all(r.returncode == 0 for r in runs), runs[0].stderr + runs[1].stderr
    assert "compiling the fused CPU kernels" in runs[0].stderr
    assert "compiling" not in runs[1].stderr
