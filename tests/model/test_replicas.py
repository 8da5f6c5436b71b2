"""Data parallel over threads (replicas.py): the summed gradients of n threads' row pieces are those
of one forward and backward over the whole batch.

Derivation (as for gradient accumulation, test_grad_accum.py): piece i has b_i of the B rows and
mean loss L_i; L = sum_i (b_i / B) L_i, so dL/dW = sum_i (b_i / B) dL_i/dW. Each thread
back-propagates its L_i with weight b_i / B into its copy's leaves, and the copies' gradients are
added into the model's. float64, so only the order of the sums differs (1e-10 stated). Controls:
unweighted pieces (each L_i with weight 1) must differ, and so must a copy that is not pointed at
the weights the optimizer changed.
"""
import threading

import numpy as np
import pytest

from tinygrad_gpt import Tensor, is_grad_enabled, no_grad
from tinygrad_gpt.model import GPT, GPTConfig
from tinygrad_gpt.optim import AdamW
from tinygrad_gpt.replicas import Replicas
from tinygrad_gpt.train import train_step

TOL = 1e-10


def _model(seed, **kw):
    return GPT(GPTConfig(vocab_size=17, block_size=8, n_layer=2, n_head=2, n_embd=16, **kw), seed=seed,
               dtype=np.float64)


def _grads(model):
    return {name: p.grad.copy() for name, p in model.named_parameters()}


def _whole_batch_grads(model, x, y, weight=1.0):
    model.zero_grad()
    _, loss = model(x, y)
    loss.backward(np.full((), weight))
    return loss.item() * weight, _grads(model)


@pytest.mark.parametrize("threads,rows", [(2, 6), (3, 7), (2, 1)])
def test_replicas_give_the_whole_batch_gradient(threads, rows):
    """Any split, uneven (7 rows over 3) or with fewer rows than threads (1 row over 2), gives the
    whole batch's loss and every parameter's gradient, tied wte included."""
    rng = np.random.default_rng(threads * 10 + rows)
    x, y = rng.integers(0, 17, (rows, 8)), rng.integers(0, 17, (rows, 8))
    model = _model(int(rng.integers(100)))
    loss, want = _whole_batch_grads(model, x, y, weight=0.5)
    model.zero_grad()
    replicas = Replicas(model, threads)
    try:
        got_loss = replicas.forward_backward(x, y, weight=0.5)
    finally:
        replicas.close()
    assert abs(float(got_loss) - loss) < TOL
    got = _grads(model)
    assert got.keys() == want.keys()
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=0, atol=TOL, err_msg=name)


def test_unweighted_pieces_control_differs():
    """The classic mistake (each piece's mean loss back-propagated with weight 1) is caught: its
    gradient is the whole batch's times the number of pieces, not the whole batch's."""
    rng = np.random.default_rng(5)
    x, y = rng.integers(0, 17, (6, 8)), rng.integers(0, 17, (6, 8))
    model = _model(1)
    _, want = _whole_batch_grads(model, x, y)
    model.zero_grad()
    for r in (slice(0, 3), slice(3, 6)):
        _, loss = model(x[r], y[r])
        loss.backward()
    assert max(np.abs(p.grad - want[n]).max() for n, p in model.named_parameters()) > 1e-3


def test_gradients_accumulate_onto_existing_ones():
    """Like backward, forward_backward adds to .grad that is already there (micro-batches)."""
    rng = np.random.default_rng(6)
    x, y = rng.integers(0, 17, (4, 8)), rng.integers(0, 17, (4, 8))
    model = _model(2)
    _, once = _whole_batch_grads(model, x, y)
    model.zero_grad()
    with Replicas(model, 2) as replicas:
        replicas.forward_backward(x, y)
        replicas.forward_backward(x, y)
    for name, p in model.named_parameters():
        np.testing.assert_allclose(p.grad, 2 * once[name], rtol=0, atol=TOL, err_msg=name)


def test_training_steps_follow_the_model_weights():
    """Three AdamW steps with replicas equal three plain steps (float64, 1e-10): the copies read the
    weights the optimizer changed in place, and the weights a reassignment put there. The control,
    a copy left on arrays that are no longer the model's, gives another loss."""
    rng = np.random.default_rng(7)
    batches = [(rng.integers(0, 17, (4, 8)), rng.integers(0, 17, (4, 8))) for _ in range(4)]
    a, b = _model(4), _model(4)
    opt_a, opt_b = AdamW(a.parameters(), lr=1e-2), AdamW(b.parameters(), lr=1e-2)
    replicas = Replicas(b, 2)
    try:
        for x, y in batches[:3]:
            want = train_step(a, opt_a, x, y, grad_clip=0.5).item()
            got = train_step(b, opt_b, x, y, grad_clip=0.5, replicas=replicas).item()
            assert abs(got - want) < TOL
        for p, q in zip(a.parameters(), b.parameters()):
            np.testing.assert_allclose(q.data, p.data, rtol=0, atol=TOL)
        # a reassigned array (as a checkpoint load may do) is followed too
        for p, q in zip(a.parameters(), b.parameters()):
            p.data = p.data * 0.5
            q.data = q.data * 0.5
        x, y = batches[3]
        want = train_step(a, opt_a, x, y).item()
        got = train_step(b, opt_b, x, y, replicas=replicas).item()
        assert abs(got - want) < TOL
        # control: without the re-pointing, the copy still trains on the weights before the reassignment
        for p in b.parameters():
            p.data = p.data * 0.5
        replicas._sync = lambda params: None
        b.zero_grad()
        stale = float(replicas.forward_backward(x, y))
        b.zero_grad()
        _, fresh = b(x, y)
        assert abs(stale - fresh.item()) > 1e-3
    finally:
        replicas.close()


def test_dropout_masks_differ_between_pieces_and_repeat_from_the_seed():
    """With dropout, two copies of one row in the two pieces get different masks (each copy's
    generator is reseeded from the model's), and a model built from the same seed draws the same
    masks again (resumable)."""
    rng = np.random.default_rng(8)
    row_x, row_y = rng.integers(0, 17, (1, 8)), rng.integers(0, 17, (1, 8))
    x, y = np.repeat(row_x, 2, axis=0), np.repeat(row_y, 2, axis=0)

    def piece_losses(seed):
        model = _model(seed, dropout=0.3)
        losses = []
        with Replicas(model, 2) as replicas:
            original = replicas._run
            replicas._run = lambda m, xp, yp, w: losses.append(original(m, xp, yp, w) / w) or losses[-1] * w
            replicas.forward_backward(x, y)
        return sorted(float(v) for v in losses)

    first = piece_losses(11)
    assert abs(first[0] - first[1]) > 1e-6           # different masks for the same row
    assert piece_losses(11) == first                  # the same seed, the same masks


def test_an_error_in_a_thread_reaches_the_caller_after_every_thread_stopped():
    """A piece that fails (an out-of-range token in the pool's rows) raises in the caller."""
    model = _model(3)
    x = np.zeros((4, 8), dtype=np.int64)
    x[3, 0] = 99                                     # rows 2-3 go to the pool thread
    with Replicas(model, 2) as replicas:
        with pytest.raises(Exception, match="99|range|vocab"):
            replicas.forward_backward(x, np.zeros((4, 8), dtype=np.int64))


def test_bad_arguments_are_refused_by_name():
    model = _model(3)
    with pytest.raises(ValueError, match="threads must be an integer >= 2, got 1"):
        Replicas(model, 1)
    with Replicas(model, 2) as replicas:
        with pytest.raises(ValueError, match="x has 4 rows, y has 3"):
            replicas.forward_backward(np.zeros((4, 8), dtype=np.int64), np.zeros((3, 8), dtype=np.int64))


def test_grad_mode_is_per_thread():
    """no_grad in one thread does not switch off another thread's graph (the replicas' backward)."""
    seen = {}
    inside, release = threading.Event(), threading.Event()

    def other():
        inside.wait()
        t = Tensor(np.ones(3), requires_grad=True)
        seen["enabled"] = is_grad_enabled()
        seen["requires_grad"] = (t * 2).requires_grad
        release.set()

    thread = threading.Thread(target=other)
    thread.start()
    with no_grad():
        inside.set()
        release.wait(10)
        assert not is_grad_enabled()
    thread.join()
    assert seen == {"enabled": True, "requires_grad": True}
