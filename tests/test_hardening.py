"""Bad input, faulty files and signals, run the way a user meets them: the engine, the real CLIs.

Each case asserts what the user sees (the exit code, the flag or file named in the message) and
what is on disk afterwards (nothing lost, no stray temp files). The CLI cases run the scripts in a
subprocess on the tiny preset with a few steps; one trained checkpoint is shared by the module.

Exit codes of the scripts (README.md): 0 done, 1 runtime error, 2 usage error (bad flag, bad or
missing input file), 3 non-finite loss, 130 SIGINT, 143 SIGTERM.
"""
import numpy as np
import pytest

from tinygrad_gpt import Tensor


# ---- engine: backward through a released graph ---------------------------------------------------

def _x():
    return Tensor(np.ones(3), requires_grad=True)


def test_second_backward_through_released_graph_raises():
    """y = sum(x*x); the first backward gives 2x = [2,2,2]; the second must refuse, not do nothing."""
    x = _x()
    y = (x * x).sum()
    y.backward()
    np.testing.assert_array_equal(x.grad, [2.0, 2.0, 2.0])
    with pytest.raises(RuntimeError, match="backward through the graph a second time.*retain_graph=True"):
        y.backward()
    np.testing.assert_array_equal(x.grad, [2.0, 2.0, 2.0])  # untouched by the refused pass


def test_backward_into_released_subgraph_raises_before_touching_grads():
    """h = x*x is shared: after sum(h).backward() released it, sum(2h).backward() must refuse."""
    x = _x()
    h = x * x
    h.sum().backward()
    with pytest.raises(RuntimeError, match="Mul"):
        (h * 2.0).sum().backward()
    np.testing.assert_array_equal(x.grad, [2.0, 2.0, 2.0])


def test_retain_graph_keeps_the_graph_and_gradients_add_up():
    """d/dx sum(x*x) = 2x, d/dx sum(2 x*x) = 4x: with retain_graph the two passes give 6x = [6,6,6]."""
    x = _x()
    h = x * x
    h.sum().backward(retain_graph=True)
    (h * 2.0).sum().backward()
    np.testing.assert_array_equal(x.grad, [6.0, 6.0, 6.0])
    x2 = Tensor(np.array([1.0, -2.0, 3.0]), requires_grad=True)
    y = (x2 * x2).sum()
    y.backward(retain_graph=True)
    y.backward()
    np.testing.assert_array_equal(x2.grad, 4.0 * x2.data)  # two passes of 2x each
