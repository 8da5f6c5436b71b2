"""Every op's hand-written backward against central finite differences, float64, fresh inputs.

Each case is (name, function of Tensors, input shapes, input kind). Shapes are odd and, for binary
ops, broadcast (a (3, 1, 5) against a (4, 1)), so the shared `unbroadcast` is exercised too.
Tolerance: worst per-element relative error (measure in tinygrad_gpt/gradcheck.py) < 1e-6.
The last tests are controls: a deliberately wrong backward must be caught.
"""
import numpy as np
import pytest

from tinygrad_gpt import Function, Tensor, gradcheck, ops

TOL = 1e-6


def _inputs(rng, shapes, kind, device="cpu"):
    out = []
    for shape in shapes:
        x = rng.standard_normal(shape)
        if kind == "positive":
            x = rng.uniform(0.5, 2.0, shape)
        elif kind == "apart":  # values far from kinks/ties (relu at 0, max ties, clip edges)
            x = rng.choice([-1.0, 1.0], shape) * rng.uniform(0.2, 2.0, shape) + rng.uniform(-0.01, 0.01, shape)
        out.append(Tensor(x, requires_grad=True, dtype=np.float64).to(device))
    return out


def _idx(shape, high, seed=7):
    return np.random.default_rng(seed).integers(0, high, shape)


def _cached_attention(qkv, n_head=2, t0=5, seed=3, **transforms):
    """The packed attention of qkv (B, T, 3C) appended to a KV cache that already holds t0 fixed
    positions (a fresh cache per call, since the op appends to it): queries at t0..t0+T-1.
    transforms: the op's rope_base and qk_norm."""
    from tinygrad_gpt.backend import get_xp
    from tinygrad_gpt.model import GPTConfig, KVCache
    B, T, C3 = qkv.shape
    config = GPTConfig(vocab_size=2, block_size=t0 + T + 2, n_head=n_head, n_embd=C3 // 3)  # 2 slots unused
    xp = get_xp(qkv.device)
    cache = KVCache(B, config, qkv.data.dtype, xp)
    past = np.random.default_rng(seed).standard_normal((2, B, n_head, t0, C3 // (3 * n_head)))
    cache.append(xp.asarray(past[0]), xp.asarray(past[1]))       # (B, nh, t0, hs) each
    return ops.causal_self_attention_qkv(qkv, n_head, cache, **transforms)


CASES = [
    ("add", lambda a, b: a + b, [(3, 1, 5), (4, 1)], "normal"),
    ("sub", lambda a, b: a - b, [(4, 1), (3, 1, 5)], "normal"),
    ("mul", lambda a, b: a * b, [(3, 4, 5), (5,)], "normal"),
    ("div", lambda a, b: a / b, [(3, 4, 5), (4, 1)], "positive"),
    ("neg", lambda a: -a, [(3, 5)], "normal"),
    ("pow_scalar_2", lambda a: a ** 2, [(3, 5)], "normal"),
    ("pow_scalar_3", lambda a: a ** 3, [(3, 5)], "normal"),
    ("pow_scalar_frac", lambda a: a ** 1.7, [(3, 5)], "positive"),
    ("pow_tensor", lambda a, b: a ** b, [(3, 5), (5,)], "positive"),
    ("rsub_rdiv", lambda a: (2.0 - a) * (3.0 / a), [(3, 5)], "positive"),
    ("exp", lambda a: a.exp(), [(3, 5)], "normal"),
    ("log", lambda a: a.log(), [(3, 5)], "positive"),
    ("sqrt", lambda a: a.sqrt(), [(3, 5)], "positive"),
    ("tanh", lambda a: a.tanh(), [(3, 5)], "normal"),
    ("relu", lambda a: a.relu(), [(3, 7)], "apart"),
    ("gelu", lambda a: a.gelu(), [(3, 7)], "normal"),
    # relu2's slope is continuous at 0 but its second derivative jumps there, which a difference
    # straddling 0 misjudges by up to eps: kept apart from 0, as relu is
    ("relu2", lambda a: a.relu2(), [(3, 7)], "apart"),
    ("softcap", lambda a: (a * 2.0).softcap(1.5), [(3, 7)], "normal"),  # into the saturating part too
    ("sigmoid", lambda a: a.sigmoid(), [(3, 7)], "normal"),
    ("maximum", lambda a, b: a.maximum(b), [(3, 5), (5,)], "normal"),
    ("minimum", lambda a, b: a.minimum(b), [(3, 5), (3, 1)], "normal"),
    ("clip", lambda a: a.clip(-0.5, 0.7), [(4, 5)], "apart"),
    ("where", lambda a, b: ops.where(a > 0.1, a, b), [(3, 5), (5,)], "apart"),
    ("masked_fill", lambda a: a.masked_fill(np.triu(np.ones((5, 5), bool), 1), -3.0), [(2, 5, 5)], "normal"),
    ("sum_all", lambda a: a.sum(), [(3, 4, 5)], "normal"),
    ("sum_axis", lambda a: a.sum(axis=1), [(3, 4, 5)], "normal"),
    ("sum_axes_keepdims", lambda a: a.sum(axis=(0, 2), keepdims=True), [(3, 4, 5)], "normal"),
    ("mean_axis", lambda a: a.mean(axis=-1), [(3, 4, 5)], "normal"),
    ("mean_all", lambda a: a.mean(), [(3, 4, 5)], "normal"),
    ("max_axis", lambda a: a.max(axis=1), [(3, 4, 5)], "normal"),
    ("max_all_keepdims", lambda a: a.max(keepdims=True), [(3, 4, 5)], "normal"),
    ("var_axis", lambda a: a.var(axis=2), [(3, 4, 5)], "normal"),
    ("var_unbiased", lambda a: a.var(axis=(0, 1), keepdims=True, correction=1), [(3, 4, 5)], "normal"),
    ("matmul_2d", lambda a, b: a @ b, [(3, 5), (5, 4)], "normal"),
    ("matmul_3d_2d", lambda a, b: a @ b, [(2, 3, 5), (5, 4)], "normal"),
    ("matmul_batched", lambda a, b: a @ b, [(2, 3, 7, 5), (2, 3, 5, 7)], "normal"),
    ("matmul_broadcast", lambda a, b: a @ b, [(2, 3, 4, 5), (3, 5, 2)], "normal"),
    ("matmul_vec", lambda a, b: a @ b, [(3, 5), (5,)], "normal"),
    ("linear", lambda x, w, b: ops.linear(x, w, b), [(2, 3, 5), (5, 4), (4,)], "normal"),
    ("reshape", lambda a: a.reshape(5, 3, 4) * 1.0, [(3, 4, 5)], "normal"),
    ("permute", lambda a: a.permute(2, 0, 1), [(3, 4, 5)], "normal"),
    ("transpose", lambda a: a.transpose(0, 2), [(3, 4, 5)], "normal"),
    ("slice", lambda a: a[1:, ::2, -3:], [(3, 4, 5)], "normal"),
    ("int_index_repeat", lambda a: a[np.array([0, 2, 0, 0])], [(3, 5)], "normal"),
    ("mixed_index", lambda a: a[:, np.array([1, 1, 3]), 2], [(3, 4, 5)], "normal"),
    ("gather_last", lambda a: a.gather(_idx((3, 4, 6), 5)), [(3, 4, 5)], "normal"),
    ("concat", lambda a, b: ops.concat([a, b, a], axis=1), [(3, 2, 5), (3, 4, 5)], "normal"),
    ("split", lambda a: a.split([1, 3, 1], axis=-1)[1] * a.split(1, axis=0)[2][..., :3], [(3, 4, 5)], "normal"),
    ("stack", lambda a, b: ops.stack([a, b], axis=1), [(3, 5), (3, 5)], "normal"),
    ("embedding", lambda w: ops.embedding(w, _idx((3, 7), 11)), [(11, 6)], "normal"),
    ("softmax", lambda a: a.softmax(axis=-1), [(3, 4, 7)], "normal"),
    ("softmax_axis0", lambda a: a.softmax(axis=0), [(3, 4, 7)], "normal"),
    ("log_softmax", lambda a: a.log_softmax(axis=-1), [(3, 4, 7)], "normal"),
    ("cross_entropy", lambda a: ops.cross_entropy(a, _idx((3, 4), 7)), [(3, 4, 7)], "normal"),
    ("layer_norm", lambda x, w, b: ops.layer_norm(x, w, b), [(3, 4, 9), (9,), (9,)], "normal"),
    ("rms_norm", lambda x, w: ops.rms_norm(x, w), [(3, 4, 9), (9,)], "normal"),
    ("rms_norm_no_gain", lambda x: ops.rms_norm(x, eps=1e-3), [(3, 4, 9)], "normal"),
    ("rotary", lambda x: ops.rotary(x), [(2, 3, 5, 8)], "normal"),
    ("rotary_offset", lambda x: ops.rotary(x, t0=7, base=100.0), [(2, 3, 5, 6)], "normal"),
    ("dropout", lambda a: ops.dropout(a, 0.3, np.random.default_rng(5)), [(4, 9)], "normal"),
    ("attention", lambda q, k, v: ops.causal_self_attention(q, k, v), [(2, 3, 7, 5)] * 3, "normal"),
    # queries at positions 5..7 over 9 keys: the 9th is past t0 + T (a cache's unused slot, gradient 0)
    ("attention_offset", lambda q, k, v: ops.causal_self_attention(q, k, v, t0=5),
     [(2, 3, 3, 5), (2, 3, 9, 5), (2, 3, 9, 5)], "normal"),
    ("attention_decode_step", lambda q, k, v: ops.causal_self_attention(q, k, v, t0=6),
     [(1, 2, 1, 7), (1, 2, 7, 7), (1, 2, 7, 7)], "normal"),
    ("attention_qkv", lambda qkv: ops.causal_self_attention_qkv(qkv, 2), [(2, 5, 18)], "normal"),
    ("attention_qkv_cached", lambda qkv: _cached_attention(qkv), [(2, 3, 18)], "normal"),
    # the modern GPT's attention: q and k rotated (even head size 4), normalised, or both; cached too
    ("attention_qkv_rotary", lambda qkv: ops.causal_self_attention_qkv(qkv, 2, rope_base=100.0),
     [(2, 5, 24)], "normal"),
    ("attention_qkv_qk_norm", lambda qkv: ops.causal_self_attention_qkv(qkv, 2, qk_norm=True), [(2, 5, 18)],
     "normal"),
    ("attention_qkv_rotary_qk_norm", lambda qkv: ops.causal_self_attention_qkv(qkv, 2, rope_base=100.0,
                                                                                 qk_norm=True),
     [(2, 5, 24)], "normal"),
    ("attention_qkv_rotary_qk_norm_cached", lambda qkv: _cached_attention(qkv, rope_base=100.0, qk_norm=True),
     [(2, 3, 24)], "normal"),
]


@pytest.mark.parametrize("name,fn,shapes,kind", CASES, ids=[c[0] for c in CASES])
def test_op_gradient(name, fn, shapes, kind, rng, device):
    inputs = _inputs(rng, shapes, kind, device)
    result = gradcheck(fn, inputs, tol=TOL)
    assert result.ok, f"{name} on {device}: {result}"


def test_cross_entropy_ignore_index_gradient(rng):
    logits = Tensor(rng.standard_normal((5, 7, 11)), requires_grad=True, dtype=np.float64)
    targets = rng.integers(0, 11, (5, 7))
    targets[rng.random((5, 7)) < 0.3] = -1
    targets[0, 0] = 3  # at least one valid target
    result = gradcheck(lambda a: ops.cross_entropy(a, targets, ignore_index=-1), [logits], tol=TOL)
    assert result.ok, str(result)


def _chat_targets(rng, shape, V):
    """Targets as chat tuning makes them: -100 (the default ignore index) on about half the
    positions (user turns, padding), in runs, with at least one learned target."""
    targets = rng.integers(0, V, shape)
    targets[rng.random(shape) < 0.5] = -100
    targets[..., :2] = -100                   # a row that opens with a user turn
    targets[0, -1] = int(rng.integers(0, V))
    return targets


def test_cross_entropy_default_ignore_index_gradient_both_backends(kernel_backend, rng):
    """The loss SFT trains with: mean over the learned targets only, ignore_index -100 (the
    default), through the reference and the fused kernels."""
    logits = Tensor(rng.standard_normal((3, 9, 13)), requires_grad=True, dtype=np.float64)
    targets = _chat_targets(rng, (3, 9), 13)
    result = gradcheck(lambda a: ops.cross_entropy(a, targets), [logits], tol=TOL)
    assert result.ok, f"{kernel_backend}: {result}"


@pytest.mark.parametrize("name", ["gelu", "relu2", "layer_norm", "cross_entropy", "embedding", "attention",
                                  "attention_offset", "attention_decode_step", "attention_qkv_cached",
                                  "rms_norm", "rms_norm_no_gain", "rotary_offset",
                                  "attention_qkv_rotary_qk_norm_cached"])
def test_fused_op_gradient_both_backends(name, kernel_backend, rng):
    """The fused ops pass the finite-difference check with the reference AND the Numba kernels."""
    _, fn, shapes, kind = next(c for c in CASES if c[0] == name)
    result = gradcheck(fn, _inputs(rng, shapes, kind), tol=TOL)
    assert result.ok, f"{name} ({kernel_backend}): {result}"


def test_relu2_and_softcap_by_hand():
    """relu2: (-2, 0, 3) -> (0, 0, 9), slope 2x -> (0, 0, 6). softcap at cap 2: 2 tanh(x / 2), so
    x = 0 -> 0 with slope 1, and x = 2 atanh(0.5) -> 1 with slope 1 - 0.5^2 = 0.75."""
    x = Tensor(np.array([-2.0, 0.0, 3.0]), requires_grad=True)
    y = x.relu2()
    y.sum().backward()
    np.testing.assert_array_equal(y.numpy(), [0.0, 0.0, 9.0])
    np.testing.assert_array_equal(x.grad, [0.0, 0.0, 6.0])
    x = Tensor(np.array([0.0, 2.0 * np.arctanh(0.5)]), requires_grad=True)
    y = x.softcap(2.0)
    y.sum().backward()
    np.testing.assert_allclose(y.numpy(), [0.0, 1.0], rtol=1e-15, atol=1e-15)
    np.testing.assert_allclose(x.grad, [1.0, 0.75], rtol=1e-15)
    with pytest.raises(ValueError, match=r"softcap: cap must be a finite number > 0, got 0"):
        x.softcap(0)


def test_rms_norm_by_hand():
    """x = (3, 4): mean(x^2) = 12.5, so with eps 0 and gain (1, 2) out = (3, 8) / sqrt(12.5)."""
    x = Tensor(np.array([[3.0, 4.0]]), requires_grad=True)
    w = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    np.testing.assert_allclose(ops.rms_norm(x, w, eps=0.0).numpy(), [[3.0 / 12.5 ** 0.5, 8.0 / 12.5 ** 0.5]],
                               rtol=1e-15)
    with pytest.raises(ValueError, match=r"rms_norm: input has 2 channels but weight is \(3,\), expected \(2,\)"):
        ops.rms_norm(x, Tensor(np.ones(3)))


def test_rotary_by_hand_and_relative():
    """Position 0 is no rotation; at position p, pair 0 (the fastest, theta = p) turns by p radians.
    And the point of it: q_p . k_s depends on p - s only, so shifting both positions by 5 (the
    cache offset t0) leaves every score as it was."""
    x = Tensor(np.array([[1.0, 0.0, 0.0, 0.0]] * 2))               # (T=2, hs=4)
    out = ops.rotary(x).numpy()                                    # positions 0, 1
    np.testing.assert_allclose(out, [[1.0, 0.0, 0.0, 0.0], [np.cos(1.0), 0.0, np.sin(1.0), 0.0]], atol=1e-15)
    rng = np.random.default_rng(0)
    q, k = (Tensor(rng.standard_normal((1, 2, 6, 8))) for _ in range(2))
    scores = [(ops.rotary(q, t0=t0) @ ops.rotary(k, t0=t0).transpose()).numpy() for t0 in (0, 5)]
    np.testing.assert_allclose(scores[0], scores[1], rtol=1e-12, atol=1e-12)


def test_packed_attention_with_rotary_and_qk_norm_is_the_composition(rng, kernel_backend):
    """The packed op's q and k transforms are the functional ops composed by hand: split, rms_norm
    without a gain, rotary, attention, merge; the same output and the same gradient."""
    B, T, nh, hs = 2, 6, 3, 4
    qkv_np = rng.standard_normal((B, T, 3 * nh * hs))
    dy = rng.standard_normal((B, T, nh * hs))

    def by_hand(qkv):
        q, k, v = (qkv[:, :, i * nh * hs:(i + 1) * nh * hs].reshape(B, T, nh, hs).transpose(1, 2) for i in range(3))
        q, k = (ops.rotary(ops.rms_norm(a, eps=1e-5), base=50.0) for a in (q, k))
        return ops.causal_self_attention(q, k, v).transpose(1, 2).reshape(B, T, nh * hs)

    results = []
    for fn in (by_hand, lambda qkv: ops.causal_self_attention_qkv(qkv, nh, rope_base=50.0, qk_norm=True)):
        qkv = Tensor(qkv_np.copy(), requires_grad=True)
        y = fn(qkv)
        (y * Tensor(dy)).sum().backward()
        results.append((y.numpy(), qkv.grad))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-10, atol=1e-12)


def test_attention_odd_sizes_several_heads(rng):
    q, k, v = _inputs(rng, [(1, 4, 9, 3)] * 3, "normal")
    result = gradcheck(lambda q, k, v: ops.causal_self_attention(q, k, v), [q, k, v], tol=TOL)
    assert result.ok, str(result)


# ---- controls: gradcheck must catch wrong gradients -------------------------------------------
class WrongSquare(Function):
    """forward x^2, backward deliberately 2x too small (x instead of 2x)."""

    @staticmethod
    def forward(ctx, a):
        ctx.a = a
        return a * a

    @staticmethod
    def backward(ctx, dout):
        return dout * ctx.a


class SlightlyWrongExp(Function):
    """forward exp(x), backward off by 1e-4 relative: must still be caught at tol 1e-6."""

    @staticmethod
    def forward(ctx, a):
        ctx.out = np.exp(a)
        return ctx.out

    @staticmethod
    def backward(ctx, dout):
        return dout * ctx.out * (1 + 1e-4)


@pytest.mark.parametrize("wrong", [WrongSquare, SlightlyWrongExp])
def test_control_wrong_gradient_is_caught(wrong, rng):
    a = Tensor(rng.standard_normal((3, 4)), requires_grad=True, dtype=np.float64)
    result = gradcheck(lambda a: wrong.apply(a), [a], tol=TOL)
    assert not result.ok, f"gradcheck missed a wrong gradient: {result}"
    assert result.max_rel_error > TOL


class LeakyIgnoreCrossEntropy(Function):
    """cross_entropy's forward (ignored targets add nothing), but a backward that forgets them:
    ignored rows get softmax - onehot(0) and the mean is taken over every row. Must be caught."""

    @staticmethod
    def forward(ctx, logits, targets=None):
        from tinygrad_gpt.ops.functional import CrossEntropy
        return CrossEntropy.forward(ctx, logits, targets)    # keeps logits (N, V), targets (N,), in_shape

    @staticmethod
    def backward(ctx, dout):
        z = ctx.logits - ctx.logits.max(axis=-1, keepdims=True)
        p = np.exp(z) / np.exp(z).sum(axis=-1, keepdims=True)             # (..., V)
        onehot = np.eye(p.shape[-1])[np.where(ctx.targets == -100, 0, ctx.targets)]
        return (dout * (p - onehot) / ctx.targets.size).reshape(ctx.in_shape)


def test_control_a_backward_that_leaks_into_ignored_targets_is_caught(rng):
    logits = Tensor(rng.standard_normal((3, 9, 13)), requires_grad=True, dtype=np.float64)
    targets = _chat_targets(rng, (3, 9), 13)
    result = gradcheck(lambda a: LeakyIgnoreCrossEntropy.apply(a, targets=targets), [logits], tol=TOL)
    assert not result.ok, f"gradcheck missed gradients leaking into ignored targets: {result}"


class ForwardTurningRotary(Function):
    """rotary's forward, but a backward that applies the same rotation again (R dout instead of
    R^T dout): the mistake of forgetting that the transpose of a rotation turns the other way."""

    @staticmethod
    def forward(ctx, x):
        from tinygrad_gpt.ops.attention import Rotary
        return Rotary.forward(ctx, x, t0=3)                # keeps cos, sin

    @staticmethod
    def backward(ctx, dout):
        from tinygrad_gpt.kernels import reference
        return reference.rotary_forward(dout, ctx.cos, ctx.sin)


class ConstantRstdRMSNorm(Function):
    """rms_norm's forward (no gain), but a backward that treats rstd as a constant, dx = dout * rstd,
    dropping the term through mean(x^2)."""

    @staticmethod
    def forward(ctx, x):
        from tinygrad_gpt.ops.functional import RMSNormOp
        return RMSNormOp.forward(ctx, x)                   # keeps x (N, C), rstd, in_shape

    @staticmethod
    def backward(ctx, dout):
        return (dout.reshape(ctx.x.shape) * ctx.rstd[:, None]).reshape(ctx.in_shape)


@pytest.mark.parametrize("wrong", [ForwardTurningRotary, ConstantRstdRMSNorm])
def test_control_wrong_rotary_and_rms_norm_backward_are_caught(wrong, rng):
    x = Tensor(rng.standard_normal((2, 3, 5, 8)), requires_grad=True, dtype=np.float64)
    result = gradcheck(lambda a: wrong.apply(a), [x], tol=TOL)
    assert not result.ok, f"gradcheck missed {wrong.__name__}: {result}"


class SlightlyWrongReciprocal(Function):
    """forward 1/x, backward -1/x^2 off by 1e-4 relative: a control for the fourth-order recheck."""

    @staticmethod
    def forward(ctx, a):
        ctx.a = a
        return 1.0 / a

    @staticmethod
    def backward(ctx, dout):
        return -dout / ctx.a ** 2 * (1 + 1e-4)


def test_gradcheck_rechecks_a_large_third_derivative_with_the_fourth_order_difference():
    """1/x at x = 0.005: f''' = -6/x^4, so the O(eps^2) difference is off by eps^2/6 * f''' = 0.16
    against f' = -40000, 4e-6 relative, above the tolerance for a correct backward. The recheck with
    the O(eps^4) stencil passes it; a backward 1e-4 wrong still fails."""
    x = 0.005 * (1 + np.random.default_rng().uniform(0, 0.05))
    eps = 1e-5
    second_order = (1 / (x + eps) - 1 / (x - eps)) / (2 * eps)
    assert abs(second_order - (-1 / x ** 2)) > TOL / x ** 2      # the premise: the plain estimate misses
    result = gradcheck(lambda a: 1.0 / a, [Tensor(np.array([x]), requires_grad=True)], eps=eps, tol=TOL)
    assert result.ok and abs(result.numeric - (-1 / x ** 2)) < 1e-9 / x ** 2, str(result)
    wrong = gradcheck(lambda a: SlightlyWrongReciprocal.apply(a), [Tensor(np.array([x]), requires_grad=True)],
                      eps=eps, tol=TOL)
    assert not wrong.ok and 5e-5 < wrong.max_rel_error < 2e-4, str(wrong)


def test_gradcheck_refuses_float32():
    a = Tensor(np.ones((2, 2), np.float32), requires_grad=True)
    with pytest.raises(TypeError, match="float64"):
        gradcheck(lambda a: a * a, [a])


class PoisonedGradient(Function):
    """forward 2x, backward 2 everywhere except `value` (NaN or inf) at flat element `at`."""
    value, at = np.nan, 2

    @staticmethod
    def forward(ctx, a):
        return a * 2.0

    @staticmethod
    def backward(ctx, dout):
        g = (dout * 2.0).copy()
        g.reshape(-1)[PoisonedGradient.at] = PoisonedGradient.value
        return g


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("max_checks", [None, 1])
def test_control_non_finite_analytic_gradient_is_caught(value, max_checks, monkeypatch):
    """NaN loses every `>` comparison, so a NaN at an element after the first once passed: every
    non-finite analytic value fails, named, also where max_checks samples another element."""
    monkeypatch.setattr(PoisonedGradient, "value", value)
    a = Tensor(np.arange(1.0, 7.0).reshape(2, 3), requires_grad=True)
    result = gradcheck(lambda a: PoisonedGradient.apply(a).sum(), [a], tol=TOL, max_checks=max_checks)
    assert not result.ok, f"gradcheck passed a {value} gradient: {result}"
    assert result.where == (0, (0, 2)) and result.max_rel_error == np.inf
    assert f"analytic gradient is {value}" in str(result) and "FAILED" in str(result)


def test_control_non_finite_numeric_gradient_is_caught():
    """sqrt(x) at x = 0 (element 1): the finite difference meets sqrt(-eps) = NaN."""
    a = Tensor(np.array([1.0, 0.0, 4.0]), requires_grad=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        result = gradcheck(lambda a: a.sqrt().sum(), [a], tol=TOL)
    assert not result.ok and result.where == (0, (1,))
    assert "gradient is" in result.problem


def test_gradcheck_on_0d_and_non_contiguous_inputs(rng):
    """A 0-d input and a transposed (non-contiguous) one are perturbed in place: both pass."""
    x0 = Tensor(np.float64(1.3), requires_grad=True)
    result = gradcheck(lambda a: a * a * a, [x0], tol=TOL)
    assert result.ok and result.where == (0, ()) and abs(result.analytic - 3 * 1.3 ** 2) < 1e-12, str(result)
    xt = Tensor(rng.standard_normal((4, 3)).T, requires_grad=True)
    assert not xt.data.flags.c_contiguous
    result = gradcheck(lambda a: (a * a).sum(axis=0), [xt], tol=TOL)
    assert result.ok and result.checked == 12, str(result)
    # control: the same transposed input with a wrong gradient still fails
    assert not gradcheck(lambda a: WrongSquare.apply(a), [xt], tol=TOL).ok
