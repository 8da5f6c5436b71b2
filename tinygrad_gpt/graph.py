"""A picture of the autograd graph behind a tensor: ops with their shapes and dtypes, and after a
backward pass the norm of the gradient that reached each node.

    from tinygrad_gpt.graph import Graph, draw
    g = Graph(loss, params=model)    # a snapshot of the graph behind `loss` (names from the model)
    g                                # in Jupyter: drawn inline as SVG
    g.backward()                     # loss.backward(), keeping every node's gradient norm
    g.save("graph.svg")              # or .png / .pdf; g.dot is the Graphviz text itself
    draw(loss, params=model, path="graph.svg")   # the same in one call

A model's graph folds: parameters named `<list>.<i>.` (a GPT's `h.0.attn.c_attn.weight`) put the
ops that follow them into block i, and each block is drawn as one box (its op count, the shapes
that enter and leave it, and its gradient norm), so a 12-layer GPT fits a screen; `expand=("h.0",)`
draws a block op by op, `fold=False` draws every op. Ops before the first block (the embeddings)
and after the last (ln_f, the head) are drawn one by one.

How an op is put in a block: blocks are ranked in the order of `named_parameters` (parameters
before the first block rank lowest, those after the last highest); an op's rank is the highest
rank among the parameters it consumes and the ops it consumes. In a residual network every op of
block i consumes block i's first parameters or their descendants, and nothing of block i + 1.

Follows: micrograd's `draw_dot` (Graphviz records of data and grad per node) and PyTorch's
torchviz (ops as nodes, tensors as edges). Needs Graphviz to render (`pip install -e ".[graph]"`
and the `dot` program, e.g. `apt-get install graphviz`); `Graph.dot` needs neither. Deliberately
does not: draw the graph of a tensor made under no_grad (there is none), or keep the arrays: the
snapshot holds shapes, dtypes and norms (nodes are keyed by id() while the graph holds the tensors).
"""
import math
import re

import numpy as np

from tinygrad_gpt import backend

_BLOCK = re.compile(r"^(.*?\b[A-Za-z_]\w*\.\d+)\.")  # "h.3.attn.c_attn.weight" -> "h.3"


class GraphvizMissing(ImportError):
    """Rendering needs the graphviz package and the `dot` program; the message says how to get them."""


def _fmt_shape(shape):
    return "(" + ", ".join(str(n) for n in shape) + ")"


def _fmt_norm(x):
    return "-" if x is None else (f"{x:.3g}" if math.isfinite(x) else str(x))


def _norm(array):
    """The L2 norm of an array (numpy or cupy) as a Python float, in float64."""
    a = backend.to_numpy(array)
    return float(np.sqrt(np.sum(np.square(a, dtype=np.float64))))


class _Node:
    __slots__ = ("key", "index", "label", "op", "shape", "dtype", "inputs", "rank", "cluster", "grad_norm",
                 "is_param")

    def __init__(self, key, index, label, op, shape, dtype):
        self.key, self.index, self.label, self.op, self.shape, self.dtype = key, index, label, op, shape, dtype
        self.inputs, self.rank, self.cluster, self.grad_norm, self.is_param = [], -1, None, None, False


class Graph:
    """A snapshot of the graph behind `tensor` (see the file docstring).

    params: a Module (its `named_parameters` name the leaves and define the blocks) or a
    {name: Tensor} dict; leaves not named are called "input" (requires_grad) or "const".
    fold / expand: how blocks are drawn.
    """

    def __init__(self, tensor, params=None, fold=True, expand=()):
        from tinygrad_gpt.tensor import Tensor
        if not isinstance(tensor, Tensor):
            raise TypeError(f"Graph: expected a Tensor, got {type(tensor).__name__}")
        if hasattr(params, "named_parameters"):
            params = dict(params.named_parameters())
        params = dict(params or {})
        for name, p in params.items():
            if not isinstance(p, Tensor):
                raise TypeError(f"Graph: params[{name!r}] is a {type(p).__name__}, expected a Tensor")
        self.root = tensor
        self.fold, self.expand = fold, tuple(expand)
        names = {id(p): name for name, p in params.items()}
        self.blocks = _block_order(list(params))
        self.nodes = {}  # id(tensor) -> _Node, each after its inputs
        self._walk(tensor, names)
        self._assign_blocks(names)
        unknown = [b for b in self.expand if b not in self.blocks]
        if unknown:
            raise ValueError(f"Graph: expand names {unknown}, not a block of this graph (blocks: {self.blocks})")

    # ---- building ------------------------------------------------------------------------------
    def _walk(self, root, names):
        """Every tensor reachable from root through op contexts, each after all of its inputs."""
        from tinygrad_gpt.tensor import toposort
        order = toposort(root, every_input=True)
        for t in order:
            if t._ctx is not None:
                op = t._ctx.fn.__name__
                label = op
            elif id(t) in names:
                op, label = None, names[id(t)]
            else:
                op, label = None, ("input" if t.requires_grad else "const")
            node = _Node(id(t), len(self.nodes), label, op, tuple(t.shape), str(t.dtype))
            node.is_param = id(t) in names
            if t._ctx is not None:
                node.inputs = [id(p) for p in t._ctx.parents]
            self.nodes[id(t)] = node
        if root._ctx is None and getattr(root, "_released", None) is not None:
            raise ValueError(f"Graph: the graph behind this tensor was released by backward() (it was the output "
                             f"of {root._released}); make the Graph before calling backward, or call g.backward()")

    def _assign_blocks(self, names):
        rank_of_block = {b: i for i, b in enumerate(self.blocks)}
        n = len(self.blocks)
        seen_block = False
        param_rank = {}
        for key, name in names.items():
            m = _BLOCK.match(name)
            if m and m.group(1) in rank_of_block:
                param_rank[key] = rank_of_block[m.group(1)]
                seen_block = True
            else:  # before the first block: -1; after the last: n
                param_rank[key] = n if seen_block else -1
        for node in self.nodes.values():
            if node.op is None:
                node.rank = param_rank.get(node.key, -1)
                continue
            ranks = [self.nodes[k].rank for k in node.inputs]
            node.rank = max(ranks) if ranks else -1
        for node in self.nodes.values():
            if node.op is not None and 0 <= node.rank < n:
                node.cluster = self.blocks[node.rank]
            elif node.is_param and 0 <= node.rank < n:
                node.cluster = self.blocks[node.rank]

    # ---- backward --------------------------------------------------------------------------------
    def backward(self, grad=None):
        """Run backward from the root, recording the norm of the gradient each node receives."""
        def record(tensor, dout):
            node = self.nodes.get(id(tensor))
            if node is not None:
                node.grad_norm = _norm(dout)
        self.root.backward(grad, on_grad=record)
        return self

    # ---- drawing ----------------------------------------------------------------------------------
    def _folded(self, node):
        return self.fold and node.cluster is not None and node.cluster not in self.expand

    def _block_summary(self):
        """{block: {ops, params, elements (the parameters' values), out (the block's last op node)}}."""
        summary = {}
        for node in self.nodes.values():
            if not self._folded(node):
                continue
            s = summary.setdefault(node.cluster, {"ops": 0, "params": 0, "elements": 0, "out": None})
            if node.is_param:
                s["params"] += 1
                s["elements"] += int(np.prod(node.shape))
            else:
                s["ops"] += 1
                s["out"] = node  # the last op in topological order: what leaves the block
        return summary

    @property
    def dot(self):
        """The Graphviz DOT text of the picture (no Graphviz needed to make it)."""
        lines = ["digraph autograd {", '  rankdir=TB; node [fontname="Helvetica", fontsize=10];',
                 '  edge [fontname="Helvetica", fontsize=9, color="#555555"];']
        summary = self._block_summary()
        drawn = set()

        def ident(node):
            return f'"{node.cluster}"' if self._folded(node) else f"n{node.index}"

        for block in (b for b in self.blocks if b in summary):  # in the model's order
            s = summary[block]
            out = s["out"]
            shape = _fmt_shape(out.shape) if out is not None else "-"
            grad = f"\\n|grad out| {_fmt_norm(out.grad_norm)}" if out is not None and out.grad_norm is not None else ""
            text = f"{block} (folded)\\n{s['ops']} ops, {s['params']} params ({s['elements']:,} values)\\nout {shape}{grad}"
            lines.append(f'  "{block}" [shape=box3d, style=filled, fillcolor="#dde8f5", label="{text}"];')
        for node in self.nodes.values():
            if self._folded(node):
                continue
            grad = f"\\n|grad| {_fmt_norm(node.grad_norm)}" if node.grad_norm is not None else ""
            detail = f"{_fmt_shape(node.shape)} {node.dtype}{grad}"
            if node.op is None:
                color = "#f5e6c8" if node.is_param else "#eeeeee"
                lines.append(f'  n{node.index} [shape=box, style="rounded,filled", fillcolor="{color}", '
                             f'label="{_escape(node.label)}\\n{detail}"];')
            else:
                lines.append(f'  n{node.index} [shape=ellipse, style=filled, fillcolor="#e3f2e1", '
                             f'label="{_escape(node.label)}\\n{detail}"];')
        for node in self.nodes.values():
            for k in node.inputs:
                src, dst = ident(self.nodes[k]), ident(node)
                if src == dst or (src, dst) in drawn:
                    continue
                drawn.add((src, dst))
                lines.append(f"  {src} -> {dst};")
        root = self.nodes[id(self.root)]
        lines.append(f"  {ident(root)} [penwidth=2];")
        lines.append("}")
        return "\n".join(lines) + "\n"

    def _source(self):
        try:
            import graphviz
        except ImportError:
            raise GraphvizMissing("drawing the graph needs Graphviz: pip install -e \".[graph]\" (the graphviz "
                                  "package) and the dot program (e.g. apt-get install graphviz); Graph.dot gives "
                                  "the DOT text without either") from None
        return graphviz, graphviz.Source(self.dot)

    def svg(self):
        """The picture as SVG text."""
        graphviz, source = self._source()
        try:
            return source.pipe(format="svg").decode("utf-8")
        except graphviz.ExecutableNotFound:
            raise GraphvizMissing("drawing the graph needs Graphviz's dot program on the PATH (e.g. apt-get install "
                                  "graphviz); Graph.dot gives the DOT text without it") from None

    def save(self, path):
        """Write the picture to `path`; the format is the suffix (.svg, .png, .pdf, or .dot for the text)."""
        import pathlib
        path = pathlib.Path(path)
        fmt = path.suffix.lstrip(".").lower()
        if fmt not in ("svg", "png", "pdf", "dot"):
            raise ValueError(f"Graph.save: {path} has suffix {path.suffix!r}; expected .svg, .png, .pdf or .dot")
        if fmt == "dot":
            path.write_text(self.dot, encoding="utf-8")
            return path
        graphviz, source = self._source()
        try:
            path.write_bytes(source.pipe(format=fmt))
        except graphviz.ExecutableNotFound:
            raise GraphvizMissing("drawing the graph needs Graphviz's dot program on the PATH (e.g. apt-get install "
                                  "graphviz)") from None
        return path

    def _repr_svg_(self):  # Jupyter draws the object inline
        return self.svg()

    def __repr__(self):
        ops = sum(1 for n in self.nodes.values() if n.op is not None)
        return (f"Graph({ops} ops, {len(self.nodes) - ops} leaves, blocks {self.blocks or 'none'}, "
                f"root {self.nodes[id(self.root)].label} {_fmt_shape(self.root.shape)})")


def _escape(text):
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _block_order(names):
    """The block prefixes ("h.0", "h.1", ...) in the order their parameters come."""
    blocks = []
    for name in names:
        m = _BLOCK.match(name)
        if m and m.group(1) not in blocks:
            blocks.append(m.group(1))
    return blocks


def draw(tensor, params=None, path=None, fold=True, expand=()):
    """The Graph of `tensor` (see Graph); written to `path` when given. In a notebook the returned
    Graph draws itself inline."""
    graph = Graph(tensor, params=params, fold=fold, expand=expand)
    if path is not None:
        graph.save(path)
    return graph
