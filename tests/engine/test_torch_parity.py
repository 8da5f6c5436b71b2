"""Optional: per-op values and gradients against PyTorch (skipped when torch is not importable).

Each op runs on the same float64 inputs in both engines; values and every input gradient must
agree to 1e-10 relative. PyTorch is never a dependency of the package: this file only runs where
a developer installed torch beside it.
"""
import numpy as np
import pytest

from conftest import peer  # noqa: E402

torch = peer("torch")
F = torch.nn.functional

from tinygrad_gpt import Tensor, ops  # noqa: E402

IDX = np.array([[1, 4, 0], [2, 2, 3]])
TGT = np.array([[1, 4, -100], [2, 0, 3]])

CASES = [
    ("add", [(3, 1, 5), (4, 1)], lambda a, b: a + b, lambda a, b: a + b),
    ("mul_div", [(3, 5), (5,)], lambda a, b: a * b / (b * b + 1.0), lambda a, b: a * b / (b * b + 1.0)),
    ("pow", [(3, 5)], lambda a: (a * a + 0.5) ** 1.3, lambda a: (a * a + 0.5) ** 1.3),
    ("exp_log_sqrt", [(3, 5)], lambda a: (a.exp() + 1.0).log().sqrt(), lambda a: (a.exp() + 1.0).log().sqrt()),
    ("tanh_sigmoid_relu", [(4, 6)], lambda a: a.tanh() + a.sigmoid() + a.relu(),
     lambda a: a.tanh() + a.sigmoid() + a.relu()),
    ("gelu", [(4, 6)], lambda a: a.gelu(), lambda a: F.gelu(a, approximate="tanh")),
    ("max_var_mean", [(3, 4, 5)], lambda a: a.max(axis=1) + a.var(axis=1) + a.mean(axis=1),
     lambda a: a.amax(dim=1) + a.var(dim=1, unbiased=False) + a.mean(dim=1)),
    ("linear", [(2, 3, 5), (5, 4), (4,)], lambda x, w, b: ops.linear(x, w, b), lambda x, w, b: x @ w + b),
    ("matmul_batched", [(2, 3, 7, 5), (3, 5, 4)], lambda a, b: a @ b, lambda a, b: a @ b),
    ("softmax_logsoftmax", [(3, 7)], lambda a: a.softmax() * a.log_softmax(),
     lambda a: a.softmax(-1) * a.log_softmax(-1)),
    ("cross_entropy", [(2, 3, 6)], lambda a: ops.cross_entropy(a, TGT),
     lambda a: F.cross_entropy(a.reshape(-1, 6), torch.tensor(TGT.reshape(-1)), ignore_index=-100)),
    ("layer_norm", [(2, 3, 8), (8,), (8,)], lambda x, w, b: ops.layer_norm(x, w, b),
     lambda x, w, b: F.layer_norm(x, (8,), w, b, eps=1e-5)),
    ("embedding", [(5, 4)], lambda w: ops.embedding(w, IDX), lambda w: F.embedding(torch.tensor(IDX), w)),
    ("attention", [(2, 3, 7, 4)] * 3, lambda q, k, v: ops.causal_self_attention(q, k, v),
     lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)),
    ("gather_index_permute", [(3, 4, 5)], lambda a: a.permute(2, 0, 1)[1:, [0, 2, 2]].gather(np.zeros((4, 3, 2), int)),
     lambda a: a.permute(2, 0, 1)[1:, [0, 2, 2]].gather(-1, torch.zeros((4, 3, 2), dtype=torch.long))),
]


@pytest.mark.parametrize("name,shapes,ours,theirs", CASES, ids=[c[0] for c in CASES])
def test_values_and_gradients_match_torch(name, shapes, ours, theirs, rng):
    arrays = [rng.standard_normal(s) for s in shapes]
    mine = [Tensor(a, requires_grad=True) for a in arrays]
    ref = [torch.tensor(a, requires_grad=True) for a in arrays]
    out_m, out_t = ours(*mine), theirs(*ref)
    np.testing.assert_allclose(out_m.data, out_t.detach().numpy(), rtol=1e-10, atol=1e-12, err_msg=name)
    dout = rng.standard_normal(out_m.shape)
    out_m.backward(dout)
    out_t.backward(torch.tensor(dout))
    for i, (m, t) in enumerate(zip(mine, ref)):
        np.testing.assert_allclose(m.grad, t.grad.numpy(), rtol=1e-9, atol=1e-11, err_msg=f"{name} input {i}")
