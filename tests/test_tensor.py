"""The engine itself: forward values against plain NumPy, gradient accumulation, the long chain,
no_grad, detach, graph release, devices, and the errors a user sees."""
import contextlib
import gc
import weakref

import numpy as np
import pytest

from tinygrad_gpt import Tensor, backend, no_grad, ops


def T(x, grad=True):
    return Tensor(np.asarray(x, dtype=np.float64), requires_grad=grad)


# ---- forward values against NumPy formulas ----------------------------------------------------
def test_forward_values_match_numpy(rng):
    a_np, b_np = rng.standard_normal((3, 4)), rng.uniform(0.5, 2, (4,))
    a, b = T(a_np), T(b_np)
    checks = {
        "add": ((a + b).data, a_np + b_np),
        "div": ((a / b).data, a_np / b_np),
        "pow": ((b ** 1.5).data, b_np ** 1.5),
        "exp": (a.exp().data, np.exp(a_np)),
        "log": (b.log().data, np.log(b_np)),
        "tanh": (a.tanh().data, np.tanh(a_np)),
        "sigmoid": (a.sigmoid().data, 1 / (1 + np.exp(-a_np))),
        "relu": (a.relu().data, np.maximum(a_np, 0)),
        "gelu": (a.gelu().data, 0.5 * a_np * (1 + np.tanh(np.sqrt(2 / np.pi) * (a_np + 0.044715 * a_np ** 3)))),
        "var": (a.var(axis=0).data, a_np.var(axis=0)),
        "max": (a.max(axis=1).data, a_np.max(axis=1)),
        "softmax": (a.softmax().data, np.exp(a_np) / np.exp(a_np).sum(-1, keepdims=True)),
        "log_softmax": (a.log_softmax().data, a_np - np.log(np.exp(a_np).sum(-1, keepdims=True))),
        "matmul": ((a @ b).data, a_np @ b_np),
        "clip": (a.clip(-0.3, 0.4).data, np.clip(a_np, -0.3, 0.4)),
    }
    for name, (got, want) in checks.items():
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12, err_msg=name)


def test_layer_norm_and_cross_entropy_values(rng):
    x = rng.standard_normal((5, 8))
    w, b = rng.standard_normal(8), rng.standard_normal(8)
    got = ops.layer_norm(T(x), T(w), T(b)).data
    want = (x - x.mean(1, keepdims=True)) / np.sqrt(x.var(1, keepdims=True) + 1e-5) * w + b
    np.testing.assert_allclose(got, want, rtol=1e-10)
    targets = np.array([1, 0, 7, 3, -100])
    logp = x - np.log(np.exp(x).sum(1, keepdims=True))
    want_ce = -np.mean([logp[i, t] for i, t in enumerate(targets) if t != -100])
    assert abs(ops.cross_entropy(T(x), targets).item() - want_ce) < 1e-12


def test_attention_matches_composition_from_primitive_ops(rng):
    """The fused attention op equals the same attention built from matmul, masked_fill, softmax."""
    B, nh, Tn, hs = 2, 3, 7, 4
    q, k, v = (T(rng.standard_normal((B, nh, Tn, hs))) for _ in range(3))
    fused = ops.causal_self_attention(q, k, v)
    mask = np.triu(np.ones((Tn, Tn), bool), k=1)
    composed = ((q @ k.transpose(-1, -2)) * (1.0 / np.sqrt(hs))).masked_fill(mask, -np.inf).softmax() @ v
    np.testing.assert_allclose(fused.data, composed.data, rtol=1e-12, atol=1e-12)
    dout = rng.standard_normal(fused.shape)
    fused.backward(dout)
    g_fused = [t.grad.copy() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    composed.backward(dout)
    for gf, t in zip(g_fused, (q, k, v)):
        np.testing.assert_allclose(gf, t.grad, rtol=1e-10, atol=1e-12)


# ---- the engine -------------------------------------------------------------------------------
def test_reused_tensor_accumulates():
    """b = a + a; c = b + b: dc/da = 4 (micrograd's classic bug was 2)."""
    a = T([3.0])
    b = a + a
    c = b + b
    c.backward()
    assert a.grad.tolist() == [4.0]


def test_diamond_graph_accumulates():
    """y = a * a + a at a = 2: dy/da = 2a + 1 = 5."""
    a = T(2.0)
    y = a * a + a
    y.backward()
    assert a.grad.item() == 5.0


def test_ten_thousand_op_chain_does_not_recurse():
    """x -> x + 1 ten thousand times: dy/dx = 1, value x + 10000."""
    x = T([0.5])
    y = x
    for _ in range(10_000):
        y = y + 1.0
    y.backward(np.ones(1))
    assert y.item() == 10_000.5
    assert x.grad.tolist() == [1.0]


def test_grad_accumulates_over_backward_calls_and_zero_grad():
    a = T([1.0, 2.0])
    (a * 3.0).sum().backward()
    (a * 3.0).sum().backward()
    assert a.grad.tolist() == [6.0, 6.0]
    a.zero_grad()
    assert a.grad is None


def test_backward_on_non_scalar_without_grad_raises():
    a = T(np.ones((2, 3)))
    with pytest.raises(RuntimeError, match=r"shape \(2, 3\) without a gradient"):
        (a * 2.0).backward()


def test_backward_without_requires_grad_raises():
    with pytest.raises(RuntimeError, match="does not require grad"):
        Tensor(np.ones(2)).sum().backward()


def test_no_grad_builds_no_graph_and_detach_cuts():
    a = T([1.0, 2.0])
    with no_grad():
        b = a * 2.0
    assert not b.requires_grad and b._ctx is None
    c = (a * 2.0).detach()
    assert not c.requires_grad and c._ctx is None
    d = a * 2.0
    assert d.requires_grad and d._ctx is not None



@pytest.mark.parametrize("grad_on", [False, True])
def test_no_graph_path_keeps_no_inputs_and_no_saved_arrays(grad_on):
    """h * h saves both factors for its backward. Under no_grad (or when no input requires grad)
    the op keeps nothing: once h is gone, its array is freed, and the output has no ctx. Control:
    with the graph on, the same product keeps h's array alive through its ctx."""
    a = T(np.arange(6.0).reshape(2, 3))
    with (contextlib.nullcontext() if grad_on else no_grad()):
        h = a * 2.0                                               # (2, 3)
        ref = weakref.ref(h.data)
        y = h * h                                                 # (2, 3)
    del h
    gc.collect()
    np.testing.assert_array_equal(y.numpy(), (2.0 * np.arange(6.0).reshape(2, 3)) ** 2)
    if grad_on:
        assert y.requires_grad and y._ctx is not None and ref() is not None
    else:
        assert not y.requires_grad and y._ctx is None and ref() is None
    const = Tensor(np.ones(3)) * 3.0                              # grad on, no input needs it
    assert not const.requires_grad and const._ctx is None

def test_graph_released_after_backward():
    """After backward no op context is alive: memory stays flat over training steps."""
    a = T(np.ones((4, 4)))
    y = (a * 2.0).exp()
    ctx_ref = weakref.ref(y._ctx)
    y.sum().backward()
    gc.collect()
    assert y._ctx is None and ctx_ref() is None


def test_backward_shape_mismatch_names_the_op():
    from tinygrad_gpt import Function

    class BadShape(Function):
        @staticmethod
        def forward(ctx, a):
            return a * 2

        @staticmethod
        def backward(ctx, dout):
            return dout.sum(axis=0)

    a = T(np.ones((3, 2)))
    with pytest.raises(RuntimeError, match=r"BadShape.backward: gradient for input 0 has shape \(2,\)"):
        BadShape.apply(a).sum().backward()


def test_dtype_default_float32_and_float64_kept():
    assert Tensor([1.0, 2.0]).dtype == np.float32
    assert Tensor(np.ones(2)).dtype == np.float64
    x = Tensor(np.ones((2, 2), np.float32), requires_grad=True)
    y = (x * 2.0 + 1.0) / 3.0
    assert y.dtype == np.float32  # Python scalars do not upcast
    assert ops.layer_norm(x, Tensor.ones(2), Tensor.zeros(2)).dtype == np.float32


def test_numpy_item_and_errors():
    t = Tensor([[1.5]])
    assert t.item() == 1.5 and isinstance(t.numpy(), np.ndarray)
    with pytest.raises(ValueError, match="2 elements"):
        Tensor([1.0, 2.0]).item()


def test_readable_errors():
    with pytest.raises(ValueError, match=r"matmul: shapes \(4, 3\) and \(5, 2\) do not align on 3 != 5"):
        Tensor(np.ones((4, 3))) @ Tensor(np.ones((5, 2)))
    with pytest.raises(TypeError, match="dtypes differ"):
        Tensor(np.ones(3, np.float32)) + Tensor(np.ones(3, np.float64))
    with pytest.raises(ValueError, match=r"add: shapes \(3,\) and \(4,\) do not broadcast"):
        Tensor(np.ones(3)) + Tensor(np.ones(4))
    with pytest.raises(IndexError, match="token id 9 is out of range for a table of 5 rows"):
        ops.embedding(Tensor(np.ones((5, 2)), requires_grad=True), np.array([1, 9]))
    with pytest.raises(IndexError, match="target 7 is out of range for 3 classes"):
        ops.cross_entropy(Tensor(np.ones((2, 3))), np.array([0, 7]))
    with pytest.raises(ValueError, match="cannot reshape"):
        Tensor(np.ones(6)).reshape(4, 2)


def test_comparisons_have_no_grad():
    a = T([1.0, -2.0])
    m = a > 0
    assert m.data.tolist() == [True, False] and not m.requires_grad
    assert a.eq(1.0).data.tolist() == [True, False]


def test_dropout_is_seedable_and_scales(rng):
    x = Tensor(np.ones((200, 50), np.float32))
    y1 = ops.dropout(x, 0.25, np.random.default_rng(3)).data
    y2 = ops.dropout(x, 0.25, np.random.default_rng(3)).data
    np.testing.assert_array_equal(y1, y2)
    assert set(np.unique(y1).tolist()) <= {0.0, np.float32(1 / 0.75)}
    assert abs((y1 == 0).mean() - 0.25) < 0.02
    assert ops.dropout(x, 0.25, rng, training=False) is x


# ---- devices ----------------------------------------------------------------------------------
def test_unknown_device_and_cuda_without_cupy():
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        backend.get_xp("tpu")
    if backend.cuda_available():
        pytest.skip("a GPU is present: the no-cupy error cannot be shown here")
    with pytest.raises(RuntimeError, match=r"pip install -e \"\.\[cuda\]\""):
        backend.get_xp("cuda")
    with pytest.raises(RuntimeError, match="cuda"):
        Tensor([1.0], device="cuda")


def test_mixed_devices_raise():
    a = Tensor([1.0])
    b = Tensor([2.0])
    b.device = "cuda"  # pretend: the check is on the device tag, before any array maths
    with pytest.raises(RuntimeError, match="different devices, cpu and cuda"):
        a + b


def test_an_array_names_its_module_and_device(device):
    """backend.array_module / device_of_array, the engine's one way to ask an array where it lives,
    agree with the device a tensor was made on (numpy scalars count as cpu)."""
    t = Tensor.zeros(2, 3, device=device)
    assert backend.array_module(t.data) is backend.get_xp(device)
    assert backend.device_of_array(t.data) == device == t.device
    assert backend.array_module(np.float32(1)) is np and backend.device_of_array(np.float32(1)) == "cpu"


# ---- dtypes of mixed operands (rules: tinygrad_gpt/tensor.py docstring) ---------------------------
@pytest.mark.parametrize("make,want", [
    (lambda t: t * 0.5, [0.5, 1.0, 1.5]),
    (lambda t: 0.5 * t, [0.5, 1.0, 1.5]),
    (lambda t: t + 0.5, [1.5, 2.5, 3.5]),
    (lambda t: 0.5 + t, [1.5, 2.5, 3.5]),
    (lambda t: t - 0.5, [0.5, 1.5, 2.5]),
    (lambda t: 3.5 - t, [2.5, 1.5, 0.5]),
    (lambda t: t / 2, [0.5, 1.0, 1.5]),
    (lambda t: 3 / t, [3.0, 1.5, 1.0]),
    (lambda t: t ** 0.5, [1.0, 2 ** 0.5, 3 ** 0.5]),
    (lambda t: 4.0 ** t, [4.0, 16.0, 64.0]),
    (lambda t: t.maximum(1.5), [1.5, 2.0, 3.0]),
    (lambda t: t.minimum(1.5), [1.0, 1.5, 1.5]),
    (lambda t: t.clip(1.5, 2.5), [1.5, 2.0, 2.5]),
    (lambda t: t.clip(high=2.5), [1.0, 2.0, 2.5]),
    (lambda t: t.masked_fill(np.array([False, True, False]), 0.25), [1.0, 0.25, 3.0]),
    (lambda t: t.masked_fill(np.array([True, False, False]), -np.inf), [-np.inf, 2.0, 3.0]),
    (lambda t: ops.where(np.array([True, False, True]), t, 0.5), [1.0, 0.5, 3.0]),
    (lambda t: ops.where(np.array([True, False, True]), 0.5, t), [0.5, 2.0, 0.5]),
    (lambda t: t * np.float32(0.5), [0.5, 1.0, 1.5]),
    (lambda t: t * np.array([0.5, 0.5, 0.5]), [0.5, 1.0, 1.5]),
    (lambda t: np.array([0.5, 0.5, 0.5]) * t, [0.5, 1.0, 1.5]),
    (lambda t: t @ np.array([0.5, 0.25, 0.0]), 1.0),
])
def test_integer_tensor_with_a_float_is_promoted_as_numpy_does(make, want):
    """[1, 2, 3] * 0.5 is [0.5, 1, 1.5] as in NumPy, never the scalar cast to int ([0, 0, 0])."""
    t = Tensor([1, 2, 3])
    assert t.dtype == np.int64
    got = make(t)
    assert got.dtype.kind == "f"
    np.testing.assert_allclose(got.numpy(), want)


def test_python_numbers_follow_nep50():
    """NEP 50: a Python number takes the tensor's dtype when its kind fits, else NumPy's default."""
    i, b, f32 = Tensor([1, 2, 3]), Tensor([True, False]), Tensor([1.0, 2.0])
    assert (i * 2).dtype == np.int64 and (i * 2).numpy().tolist() == [2, 4, 6]
    assert (i * 0.5).dtype == np.float64
    assert (b * 0.5).dtype == np.float64 and (b * 0.5).numpy().tolist() == [0.5, 0.0]
    assert (b + 1).dtype == np.int64 and (b + 1).numpy().tolist() == [2, 1]
    assert (1 + b).numpy().tolist() == [2, 1]
    assert (f32 * 0.5).dtype == np.float32 and (f32 + 10 ** 6).dtype == np.float32
    assert (f32 * np.float64(0.5)).dtype == np.float32  # a NumPy scalar counts as a number: no upcast
    assert (f32 / np.sqrt(np.float64(4.0))).numpy().tolist() == [0.5, 1.0]
    assert (Tensor(np.array([1, 2], np.int32)) + np.int64(1)).dtype == np.int32
    assert (f32 * [2, 3]).dtype == np.float32 and (f32 * [0.5, 0.5]).numpy().tolist() == [0.5, 1.0]
    with pytest.raises(OverflowError, match="add: 1000 does not fit the dtype int8"):
        Tensor(np.array([1], np.int8)) + 1000


def test_comparisons_with_a_float_do_not_truncate_it():
    """[0, 1] < 0.5 is [True, False]: the 0.5 must not become 0 first."""
    t = Tensor([0, 1])
    assert (t < 0.5).numpy().tolist() == [True, False]
    assert (t >= 0.5).numpy().tolist() == [False, True]
    assert t.eq(0.5).numpy().tolist() == [False, False]
    assert (Tensor([True, False]) > 0.5).numpy().tolist() == [True, False]


def test_mixed_float_arrays_and_tensors_are_refused_naming_the_op_and_dtypes():
    """No silent upcasts: a float32 tensor with a float64 array is an error, either side, any op."""
    x = Tensor(np.ones(3, np.float32), requires_grad=True)
    d = np.ones(3, np.float64)
    for make, op in [(lambda: x * d, "mul"), (lambda: d * x, "mul"), (lambda: x + d, "add"), (lambda: d - x, "sub"),
                     (lambda: x / d, "div"), (lambda: x.maximum(d), "maximum"), (lambda: x ** d, "pow"),
                     (lambda: ops.where(np.ones(3, bool), x, d), "where")]:
        with pytest.raises(TypeError, match=f"{op}: a float32 tensor and a float64 array"):
            make()
    with pytest.raises(TypeError, match="matmul: a float32 tensor and a float64 array"):
        x @ d
    assert (x * np.array([1, 2, 3])).dtype == np.float32  # integer arrays take the tensor's dtype
    y = Tensor(np.ones(2, np.float64), requires_grad=True)
    for join in (ops.concat, ops.stack):
        with pytest.raises(TypeError, match=f"{join.__name__}: dtypes differ, float32, float64"):
            join([Tensor(np.ones(2, np.float32), requires_grad=True), y])


def test_leaf_grad_has_the_leaf_dtype():
    """float32 leaves get float32 gradients, also through a float64 seed; an op whose backward
    returns another dtype is named, as for a wrong shape."""
    from tinygrad_gpt import Function
    x = Tensor(np.ones(3, np.float32), requires_grad=True)
    (x * 2.0).backward(np.ones(3, np.float64))
    assert x.grad.dtype == np.float32

    class Upcast(Function):
        @staticmethod
        def forward(ctx, a):
            return a * 2

        @staticmethod
        def backward(ctx, dout):
            return dout.astype(np.float64) * 2

    x.grad = None
    with pytest.raises(RuntimeError, match="Upcast.backward: gradient for input 0 has dtype float64, "
                                           "the input has dtype float32"):
        Upcast.apply(x).sum().backward()


def test_truth_value_is_numpys_for_one_element_and_an_error_otherwise():
    assert bool(Tensor([0.0])) is False and bool(Tensor([2.0])) is True
    assert bool(Tensor(0.0)) is False and bool(Tensor([[1]])) is True  # 0-d and (1, 1)
    assert bool(Tensor([0.5]) < 1) is True
    with pytest.raises(ValueError, match=r"shape \(2,\).*ambiguous"):
        bool(Tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match=r"shape \(0,\)"):
        bool(Tensor(np.zeros(0)))
    with pytest.raises(TypeError, match="0-d tensor"):
        len(Tensor(1.0))


# ---- 0-d tensors --------------------------------------------------------------------------------
def test_zero_d_tensors_stay_zero_d_through_every_op_and_backward():
    """A 0-d loss L at x = 3: mean(L), sum(0.5 L), L[()] and friends all give dL/dx of shape ()."""
    cases = {
        "mean": (lambda x: (x * x).mean(), 6.0),
        "mul_sum": (lambda x: ((x * x) * 0.5).sum(), 3.0),
        "max": (lambda x: x.max(), 1.0),
        "var_plus": (lambda x: x.var() + x, 1.0),
        "index": (lambda x: x[()] * 2.0, 2.0),
        "reshape": (lambda x: x.reshape(1, 1).sum(), 1.0),
        "sigmoid_exp": (lambda x: x.exp().sum(axis=()), float(np.exp(3.0))),
        "reused": (lambda x: x * x + x, 7.0),
    }
    for name, (f, want) in cases.items():
        x = T(3.0)
        y = f(x)
        assert y.shape == () and isinstance(y.data, np.ndarray), name
        y.backward()
        assert isinstance(x.grad, np.ndarray) and x.grad.shape == (), name
        assert abs(x.grad.item() - want) < 1e-12, name


def test_indexing_one_element_gives_a_0d_tensor_and_its_gradient():
    """x[1] of [1, 2, 3] is 0-d (not (1,)); its gradient is [0, 1, 0]."""
    x = T([1.0, 2.0, 3.0])
    y = x[1]
    assert y.shape == () and y.item() == 2.0
    (y * 3.0).backward()
    assert x.grad.tolist() == [0.0, 3.0, 0.0]


# ---- constructors and shapes --------------------------------------------------------------------
def test_tensor_of_a_tensor_takes_its_data_as_a_new_leaf():
    a = T([1.0, 2.0])
    b = a * 2.0
    c = Tensor(b)
    assert c.numpy().tolist() == [2.0, 4.0] and c.dtype == np.float64 and c._ctx is None
    assert not c.requires_grad
    assert Tensor(b, dtype=np.float32).dtype == np.float32


def test_iterating_and_transposing_check_the_dimensions():
    """list() of a 0-d tensor was [] (indexing raised IndexError at once); transpose of a 1-d
    tensor a bare 'list index out of range'."""
    assert [row.numpy().tolist() for row in Tensor(np.arange(4.0).reshape(2, 2))] == [[0.0, 1.0], [2.0, 3.0]]
    with pytest.raises(TypeError, match="0-d tensor"):
        list(Tensor(1.0))
    with pytest.raises(ValueError, match=r"transpose: axis -2 is out of range for a tensor of shape \(2,\)"):
        Tensor([1.0, 2.0]).transpose()
    with pytest.raises(ValueError, match="axis 5 is out of range"):
        Tensor(np.ones((2, 3))).transpose(0, 5)


def test_split_refuses_sizes_that_do_not_fit():
    """split([4, -1]) on length 3 sums to 3 but is nonsense: refused, as are sizes that do not add up."""
    t = Tensor(np.arange(3.0))
    with pytest.raises(ValueError, match=r"non-negative integers, got \[4, -1\]"):
        t.split([4, -1])
    with pytest.raises(ValueError, match=r"sum to 2, axis -1 has length 3"):
        t.split([1, 1])
    with pytest.raises(ValueError, match="axis 1 is out of range"):
        t.split([3], axis=1)
    assert [p.shape for p in t.split([0, 3])] == [(0,), (3,)]


@pytest.mark.parametrize("name,make", [
    ("exp", lambda t: t.exp()), ("log", lambda t: t.log()), ("sqrt", lambda t: t.sqrt()),
    ("tanh", lambda t: t.tanh()), ("sigmoid", lambda t: t.sigmoid()), ("gelu", lambda t: t.gelu()),
    ("softmax", lambda t: t.softmax()), ("log_softmax", lambda t: t.log_softmax()),
    ("cross_entropy", lambda t: ops.cross_entropy(t, np.array([0, 2]))),
    ("dropout", lambda t: ops.dropout(t, 0.3, np.random.default_rng(0))),
    ("layer_norm", lambda t: ops.layer_norm(t, Tensor(np.ones(3)), Tensor(np.zeros(3)))),
    ("causal_self_attention", lambda t: ops.causal_self_attention(*[t.reshape(1, 1, 2, 3)] * 3)),
])
@pytest.mark.parametrize("dtype", [np.int64, np.bool_])
def test_real_valued_ops_refuse_integer_and_bool_tensors(name, make, dtype):
    """sigmoid and gelu of an int64 tensor gave zeros (computed, then cast back to int), the
    cross-entropy of int logits a truncated integer: these ops need a float tensor, and say so."""
    t = Tensor(np.array([[1, 2, 3], [0, 5, 1]]).astype(dtype))
    with pytest.raises(TypeError, match=f"{name}: needs floating-point tensors, got dtype {np.dtype(dtype)}"):
        make(t)


def test_layer_norm_and_attention_refuse_mixed_float_dtypes():
    x = Tensor(np.ones((2, 3), np.float32), requires_grad=True)
    with pytest.raises(TypeError, match="layer_norm: dtypes differ, float32, float64, float64"):
        ops.layer_norm(x, Tensor(np.ones(3)), Tensor(np.zeros(3)))
    q = Tensor(np.ones((1, 1, 2, 3), np.float32))
    with pytest.raises(TypeError, match="causal_self_attention: dtypes differ, float32, float64, float32"):
        ops.causal_self_attention(q, Tensor(np.ones((1, 1, 2, 3))), q)


def test_repr_shows_the_values_of_a_small_tensor_and_the_shape_of_a_large_one():
    a = Tensor(np.array([1.0, 2.0, 3.0]), requires_grad=True)
    assert repr(a) == "Tensor([1., 2., 3.], dtype=float64, requires_grad=True)"
    assert repr(a * a) == "Tensor([1., 4., 9.], dtype=float64, requires_grad=True, op=Mul)"
    assert repr(Tensor(np.float32(2.5))) == "Tensor(2.5, dtype=float32)"
    big = Tensor(np.zeros((100, 100), dtype=np.float32))
    assert repr(big) == "Tensor(shape=(100, 100), dtype=float32, device=cpu)"


def test_malloc_setting_refuses_a_typo(monkeypatch):
    from tinygrad_gpt import backend
    monkeypatch.setattr(backend, "_allocator_tuned", False)
    monkeypatch.setenv("TINYGRAD_GPT_MALLOC", "defualt")
    with pytest.raises(ValueError, match=r"TINYGRAD_GPT_MALLOC='defualt': expected 'default'"):
        backend.tune_host_allocator()
    monkeypatch.setenv("TINYGRAD_GPT_MALLOC", "default")
    assert backend.tune_host_allocator() is False  # glibc's own behaviour kept, nothing changed


def test_flatten_is_a_reshape_to_one_axis_and_its_gradient_comes_back_in_shape():
    """x (2, 3) -> (6,) in C order; d sum(w * flatten(x)) / dx = w reshaped to (2, 3)."""
    x = Tensor(np.arange(6.0).reshape(2, 3), requires_grad=True)
    w = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    y = x.flatten()
    assert y.shape == (6,) and list(y.data) == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    (y * Tensor(w)).sum().backward()
    np.testing.assert_array_equal(x.grad, w.reshape(2, 3))
