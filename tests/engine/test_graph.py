"""Tests for tinygrad_gpt/graph.py: the picture of the autograd graph.

Hand derivation used below: a = [1, 2, 3], b = [4, 5, 6], c = sum(a * b + a). Backward gives
dc/d(Add) = dc/d(Mul) = [1, 1, 1] (norm sqrt 3), dc/db = a (norm sqrt 14), dc/da = b + 1 = [5, 6, 7]
(norm sqrt 110): a is used twice and gets the sum.
"""
import math
import re
import shutil
import sys

import numpy as np
import pytest

from tinygrad_gpt import Tensor
from tinygrad_gpt.graph import Graph, GraphvizMissing, draw
from tinygrad_gpt.model import GPT, GPTConfig


def _small():
    a = Tensor(np.array([1.0, 2.0, 3.0]), requires_grad=True)
    b = Tensor(np.array([4.0, 5.0, 6.0]), requires_grad=True)
    return a, b, (a * b + a).sum()


def _labels(dot):
    return re.findall(r'label="([^"]*)"', dot)


def test_small_graph_names_ops_shapes_dtypes_and_leaves():
    a, b, c = _small()
    g = Graph(c, params={"a": a, "b": b})
    labels = _labels(g.dot)
    assert labels == ["a\\n(3) float64", "b\\n(3) float64", "Mul\\n(3) float64", "Add\\n(3) float64",
                      "Sum\\n() float64"]
    edges = re.findall(r"(n\d+) -> (n\d+)", g.dot)
    assert edges == [("n0", "n2"), ("n1", "n2"), ("n2", "n3"), ("n0", "n3"), ("n3", "n4")]


def test_backward_records_each_nodes_gradient_norm():
    a, b, c = _small()
    g = Graph(c, params={"a": a, "b": b}).backward()
    norms = {n.label: n.grad_norm for n in g.nodes.values()}
    assert norms["Sum"] == 1.0
    assert math.isclose(norms["Add"], math.sqrt(3)) and math.isclose(norms["Mul"], math.sqrt(3))
    assert math.isclose(norms["b"], math.sqrt(14)) and math.isclose(norms["a"], math.sqrt(110))
    np.testing.assert_array_equal(a.grad, [5.0, 6.0, 7.0])  # the real backward ran
    assert "|grad| 10.5" in g.dot and "|grad| 3.74" in g.dot


def test_a_released_graph_is_refused_naming_the_op():
    _, _, c = _small()
    c.backward()
    y = c * 2.0  # a new op on a released output: the picture would have nothing behind c
    with pytest.raises(ValueError, match="released by backward"):
        Graph(c)
    assert Graph(y).nodes  # the new op itself is still drawable


def test_gpt_folds_into_one_box_per_block_and_expands_on_request():
    cfg = GPTConfig(block_size=8, vocab_size=11, n_layer=3, n_head=2, n_embd=8)
    model = GPT(cfg, seed=0)
    idx = np.arange(8).reshape(1, 8) % 11
    _, loss = model(idx, idx)
    g = Graph(loss, params=model)
    assert g.blocks == ["h.0", "h.1", "h.2"]
    dot = g.dot
    boxes = re.findall(r'"(h\.\d)" \[shape=box3d[^\]]*label="([^"]*)"', dot)
    assert [name for name, _ in boxes] == ["h.0", "h.1", "h.2"]
    # each block: 12 parameters (2 LayerNorms, 4 Linears, weight and bias each), the same op count
    counts = {re.search(r"(\d+) ops, (\d+) params", text).groups() for _, text in boxes}
    assert len(counts) == 1 and counts.pop()[1] == "12"
    assert "h.1.attn.c_attn.weight" not in dot and "ln_f.weight" in dot and "wte.weight" in dot
    assert re.search(r'"h\.0" -> "h\.1"', dot) and re.search(r'"h\.1" -> "h\.2"', dot)
    expanded = Graph(loss, params=model, expand=("h.1",)).dot
    assert "h.1.attn.c_attn.weight" in expanded and '"h.1" [shape=box3d' not in expanded
    assert "h.0.attn.c_attn.weight" not in expanded
    full = Graph(loss, params=model, fold=False).dot
    assert "box3d" not in full and all(f"h.{i}.mlp.c_fc.weight" in full for i in range(3))
    with pytest.raises(ValueError, match="expand names \\['h.7'\\]"):
        Graph(loss, params=model, expand=("h.7",))


def test_folded_block_shows_its_output_gradient_after_backward():
    cfg = GPTConfig(block_size=8, vocab_size=11, n_layer=2, n_head=2, n_embd=8)
    model = GPT(cfg, seed=1)
    idx = np.arange(8).reshape(1, 8) % 11
    g = Graph(model(idx, idx)[1], params=model)
    assert "|grad out|" not in g.dot
    g.backward()
    assert len(re.findall(r"\|grad out\| [0-9.e+-]+", g.dot)) == 2
    assert model.h[0].attn.c_attn.weight.grad is not None


def test_missing_graphviz_says_how_to_get_it(monkeypatch):
    _, _, c = _small()
    monkeypatch.setitem(sys.modules, "graphviz", None)  # import graphviz now raises ImportError
    g = Graph(c)
    assert g.dot.startswith("digraph")  # the text needs nothing
    with pytest.raises(GraphvizMissing, match=r'pip install -e "\.\[graph\]".*apt-get install graphviz'):
        g.svg()


def test_save_checks_the_suffix_and_writes_dot_without_graphviz(tmp_path):
    _, _, c = _small()
    with pytest.raises(ValueError, match="expected .svg, .png, .pdf or .dot"):
        draw(c, path=tmp_path / "g.jpeg")
    assert (draw(c, path=tmp_path / "g.dot").save(tmp_path / "g.dot")).read_text().startswith("digraph")


def test_svg_and_png_render_with_graphviz(tmp_path):
    pytest.importorskip("graphviz")
    if shutil.which("dot") is None:
        pytest.skip("Graphviz's dot program is not installed (apt-get install graphviz)")
    a, b, c = _small()
    g = draw(c, params={"a": a, "b": b}, path=tmp_path / "g.svg")
    svg = (tmp_path / "g.svg").read_text(encoding="utf-8")
    assert "<svg" in svg and "Mul" in svg and g._repr_svg_().count("<svg") == 1
    assert g.save(tmp_path / "g.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
