"""Tensor, Function and reverse-mode backward: the whole autograd engine in one file.

A `Tensor` holds an array (`numpy` on "cpu", `cupy` on "cuda"), its gradient, and - when it was
made by an op while gradients are enabled - a `Context` that remembers the op (`Function`
subclass) and its inputs. `Tensor.backward()` walks that graph from the output back to the leaves
in reverse topological order, calling each op's hand-written `backward(ctx, dout)`.

Dtypes of a binary op (`+ - * / **`, reflected forms, comparisons, maximum, minimum, where,
clip, masked_fill, matmul). No silent upcasts: a float tensor never changes its dtype. In full:
- Tensor with Tensor: the dtypes must be equal, else a TypeError naming the op and both dtypes.
- Tensor with a Python number (bool, int, float; also a NumPy scalar, a 0-d array, a list):
  NumPy 2's rules for Python numbers (NEP 50). The number takes the tensor's dtype when its kind
  fits (bool < int < float): float32 * 0.5 is float32, int64 * 2 is int64. Otherwise the tensor is
  promoted, as NumPy does: int64 * 0.5 and bool * 0.5 are float64 ([1, 2, 3] * 0.5 is
  [0.5, 1, 1.5], never [0, 0, 0]), bool + 1 is int64. Only integer and bool tensors are promoted,
  and they cannot require grad. (NumPy scalars and 0-d arrays count as numbers, as PyTorch counts
  dimensionless operands, so `x / np.sqrt(d)` keeps x's float32.)
- Tensor with an array of 1 or more dimensions: a float tensor casts an integer or bool array to
  its own dtype; a float array of another float dtype is refused with a TypeError naming the op
  and both dtypes (a float32 tensor times a float64 array would otherwise be upcast, or lose
  precision in silence); an integer or bool tensor follows NumPy (int64 with float32 is float64).
Ops defined on real numbers (exp, log, sqrt, tanh, sigmoid, gelu, softmax, cross-entropy, layer
norm, dropout, attention) need floating-point tensors of one dtype and refuse others, naming the
op (ops/elementwise.py:check_float). A leaf's `.grad` always has the leaf's dtype and shape:
backward checks both for every op.

Truth value: `bool(t)` is NumPy's, for a tensor of exactly one element (any shape, 0-d included);
any other size raises a ValueError naming the shape (so `if t < 1:` cannot take a branch by
accident).

Follows: the first tinygrad release (`Function` with forward/backward side by side, `ctx`),
micrograd (the scalar version of the same idea; its PR #64 on reused nodes), autodidact
(iterative toposort), NumPy's NEP 50 (promotion with Python numbers). Deliberately does not:
support higher-order gradients (backward does not build a graph), in-place ops on tensors that
require grad, or lazy evaluation.

Dimension legend for the whole package: B batch, T time (sequence), C channels (n_embd),
nh heads, hs head size (C // nh), V vocabulary size, N rows (B * T).
"""
import contextlib
import threading

import numpy as np

from tinygrad_gpt import backend


class _GradMode(threading.local):
    """Whether ops record a graph, per thread (as PyTorch's grad mode): a no_grad block in one
    thread does not stop another thread's training (replicas.py runs backward on several)."""
    enabled = True


_grad_mode = _GradMode()


@contextlib.contextmanager
def no_grad():
    """Inside this block ops record nothing: no graph, no memory kept for backward."""
    previous, _grad_mode.enabled = _grad_mode.enabled, False
    try:
        yield
    finally:
        _grad_mode.enabled = previous


def is_grad_enabled():
    return _grad_mode.enabled


class Context:
    """What one op application remembers for its backward: its inputs and saved arrays.

    `fn` is the Function subclass, `parents` the input Tensors (positional arguments of apply),
    `needs_input_grad` which of them require a gradient. Ops store what they need as attributes
    named for what they hold (`ctx.mean`, `ctx.rstd`, ...).
    """

    def __init__(self, fn, parents):
        self.fn = fn
        self.parents = parents
        self.needs_input_grad = tuple(p.requires_grad for p in parents)


class Function:
    """One differentiable op: `forward(ctx, *arrays, **params)` and `backward(ctx, dout)`.

    Positional arguments of `apply` are Tensors (the differentiable inputs); keyword arguments are
    plain parameters (axes, shapes, integer index arrays). `backward` returns one gradient per
    positional input, with that input's shape, or None where no gradient flows.
    """

    @staticmethod
    def forward(ctx, *args, **kwargs):
        raise NotImplementedError

    @staticmethod
    def backward(ctx, dout):
        raise NotImplementedError

    @classmethod
    def apply(cls, *inputs, **params):
        device = inputs[0].device
        requires_grad = False
        for t in inputs:
            if not isinstance(t, Tensor):
                raise TypeError(f"{cls.__name__}: expected Tensor inputs, got {type(t).__name__}")
            if t.device != device:
                raise RuntimeError(f"{cls.__name__}: tensors on different devices, {device} and {t.device}; "
                                   f"move them with .to(device) first")
            requires_grad = requires_grad or t.requires_grad
        if not (requires_grad and _grad_mode.enabled):
            # no graph (no_grad, or no input needs a gradient): forward's saved arrays go into a
            # scratch context that is dropped with it; no Context, no parents, no needs_input_grad
            out = cls.forward(_Discard(), *[t.data for t in inputs], **params)
            return Tensor._wrap(_array(out, device), device, False)
        ctx = Context(cls, inputs)
        out = Tensor._wrap(_array(cls.forward(ctx, *[t.data for t in inputs], **params), device), device, True)
        out._ctx = ctx
        return out


def _array(value, device):
    """`value` as an array of `device`.

    subtle: NumPy's operations on 0-d arrays return NumPy scalars (np.float64(2.0)): no in-place
    `+=`, no `.get()`, and `np.ascontiguousarray` turns them into shape (1,). Every tensor's data
    and every gradient is an array, 0-d included, so op results pass through here.
    """
    if isinstance(value, np.generic):
        return backend.get_xp(device).asarray(value)
    return value


class _Discard:
    """The ctx an op's forward gets when no graph is built: it takes what forward saves for
    backward (ctx.x = ...), and nothing keeps it after the op returns."""


def toposort(root, every_input=False):
    """Tensors reachable from `root` that require grad (every input with `every_input`, as graph.py
    draws them), each after all of its inputs.

    Iterative depth-first search, so a 10,000-op chain does not hit Python's recursion limit.
    """
    order, visited = [], set()
    stack = [(root, False)]
    while stack:
        node, inputs_done = stack.pop()
        if inputs_done:
            order.append(node)
            continue
        if id(node) in visited:
            continue
        visited.add(id(node))
        stack.append((node, True))
        if node._ctx is not None:
            for parent in node._ctx.parents:
                if (every_input or parent.requires_grad) and id(parent) not in visited:
                    stack.append((parent, False))
    return order


def _as_array(data, dtype, xp):
    """Arrays keep their dtype; Python floats and lists of floats become float32 (the default)."""
    from_python = not hasattr(data, "dtype")
    arr = xp.asarray(data)
    if dtype is not None:
        return arr.astype(dtype, copy=False)
    if from_python and arr.dtype.kind == "f":
        return arr.astype(np.float32)
    return arr


class Tensor:
    """An array with a gradient. float32 by default; float64 everywhere for gradient checks."""

    __array_priority__ = 100  # so that `ndarray * Tensor` calls Tensor.__rmul__

    def __init__(self, data, requires_grad=False, dtype=None, device=None):
        if isinstance(data, Tensor):
            data = data.data  # its array only (no copy, as for an ndarray): a new leaf, no graph
        if device is None:
            device = backend.device_of_array(data)
        xp = backend.get_xp(device)
        if backend.device_of_array(data) != device and not isinstance(data, (list, tuple, int, float)):
            data = backend.to_device(data, device)
        self.data = _as_array(data, dtype, xp)
        if self.data.dtype.kind not in "biuf":
            raise TypeError(f"Tensor: data must be numbers or bools, got dtype {self.data.dtype} "
                            f"(from {type(data).__name__})")
        self.device = device
        if requires_grad and self.data.dtype.kind != "f":
            raise TypeError(f"Tensor: only floating-point tensors can require grad, got dtype {self.data.dtype}")
        self.requires_grad = bool(requires_grad)
        self.grad = None
        self._ctx = None
        self._released = None  # the op's name once backward dropped this tensor's graph (see backward)

    @classmethod
    def _wrap(cls, data, device, requires_grad):
        """Fast constructor for op outputs: no conversion, no checks."""
        t = cls.__new__(cls)
        t.data, t.device, t.requires_grad, t.grad, t._ctx = data, device, requires_grad, None, None
        t._released = None
        return t

    # ---- constructors ------------------------------------------------------------------------
    @staticmethod
    def zeros(*shape, dtype=np.float32, device="cpu", requires_grad=False):
        return Tensor(backend.get_xp(device).zeros(shape, dtype=dtype), requires_grad, device=device)

    @staticmethod
    def ones(*shape, dtype=np.float32, device="cpu", requires_grad=False):
        return Tensor(backend.get_xp(device).ones(shape, dtype=dtype), requires_grad, device=device)

    @staticmethod
    def randn(*shape, dtype=np.float32, device="cpu", requires_grad=False, rng=None):
        rng = rng if rng is not None else np.random.default_rng()
        data = rng.standard_normal(shape).astype(dtype)
        return Tensor(data, requires_grad, device="cpu").to(device)

    # ---- properties --------------------------------------------------------------------------
    @property
    def shape(self):
        return self.data.shape

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def ndim(self):
        return self.data.ndim

    @property
    def size(self):
        return self.data.size

    @property
    def xp(self):
        return backend.get_xp(self.device)

    def __len__(self):
        if self.ndim == 0:
            raise TypeError("len: a 0-d tensor (shape ()) has no length")
        return len(self.data)

    def __iter__(self):
        """The rows along the first axis, as NumPy; a 0-d tensor is not iterable (it was taken for
        an empty sequence, since indexing it raised IndexError at once)."""
        if self.ndim == 0:
            raise TypeError("iter: a 0-d tensor (shape ()) cannot be iterated")
        return (self[i] for i in range(len(self)))

    def __bool__(self):
        """NumPy's truth value of a one-element tensor (any shape); any other size is an error."""
        if self.data.size != 1:
            raise ValueError(f"bool: the truth value of a tensor of shape {self.shape} ({self.data.size} "
                             f"elements) is ambiguous; it needs exactly one element (reduce first, "
                             f"e.g. bool((t > 0).numpy().all()))")
        return bool(self.data.reshape(()).item())

    REPR_MAX_ELEMENTS = 64  # a tensor up to this size shows its values; a larger one its shape

    def __repr__(self):
        """`Tensor([1., 2., 3.], dtype=float64, requires_grad=True, op=Mul)` for a small tensor (as
        micrograd's `Value(data=...)` shows its number); shape, dtype and device for a large one."""
        grad = ", requires_grad=True" if self.requires_grad else ""
        op = f", op={self._ctx.fn.__name__}" if self._ctx is not None else ""
        device = "" if self.device == "cpu" else f", device={self.device}"
        if self.data.size <= self.REPR_MAX_ELEMENTS:
            values = np.array2string(backend.to_numpy(self.data), precision=4, separator=", ",
                                     prefix="Tensor(")
            return f"Tensor({values}, dtype={self.dtype}{device}{grad}{op})"
        return f"Tensor(shape={self.shape}, dtype={self.dtype}, device={self.device}{grad}{op})"

    # ---- leaving the graph -------------------------------------------------------------------
    def numpy(self):
        """The data as a numpy array (copied from the GPU if needed)."""
        return backend.to_numpy(self.data)

    def item(self):
        """The value of a one-element tensor as a Python number."""
        if self.data.size != 1:
            raise ValueError(f"item: tensor has {self.data.size} elements (shape {self.shape}), expected 1")
        return self.data.reshape(()).item()

    def detach(self):
        """The same data, cut from the graph (no grad, no history)."""
        return Tensor._wrap(self.data, self.device, False)

    def to(self, device):
        """A copy on `device` (the tensor itself if it is already there); a leaf keeps requires_grad."""
        backend.check_device(device)
        if device == self.device:
            return self
        return Tensor(backend.to_device(self.data, device), requires_grad=self.requires_grad, device=device)

    def astype(self, dtype):
        """A detached copy with another dtype (e.g. float64 for a gradient check)."""
        return Tensor(self.data.astype(dtype), requires_grad=self.requires_grad, device=self.device)

    def zero_grad(self):
        self.grad = None

    # ---- backward ----------------------------------------------------------------------------
    def backward(self, grad=None, retain_graph=False, on_grad=None):
        """Accumulate d(self)/d(leaf) into `.grad` of every leaf that requires grad.

        `grad` is d(loss)/d(self), cast to this tensor's dtype; it may be omitted only for a
        one-element tensor (then it is 1).
        After the pass the graph is released (each op's saved arrays are dropped) unless
        `retain_graph`, so memory stays flat over training steps. A later backward that reaches a
        released part of the graph raises RuntimeError before touching any gradient (as PyTorch
        does); pass retain_graph=True to every backward but the last through a shared graph.
        `on_grad(tensor, dout)`, if given, sees the gradient of every node (op outputs and leaves) as
        the walk reaches it, summed over all its uses (graph.py draws their norms).
        """
        if not self.requires_grad:
            raise RuntimeError("backward: this tensor does not require grad (no input had requires_grad=True, "
                               "or it was computed under no_grad())")
        if grad is None:
            if self.data.size != 1:
                raise RuntimeError(f"backward: called on a tensor of shape {self.shape} without a gradient; "
                                   f"reduce it to a scalar (e.g. .sum()) or pass grad= of the same shape")
            grad = self.xp.ones_like(self.data)
        else:
            grad = self.xp.asarray(unwrap(grad), dtype=self.dtype)
            if grad.shape != self.shape:
                raise ValueError(f"backward: grad has shape {grad.shape}, tensor has shape {self.shape}")
        order = toposort(self)
        for node in order:
            # subtle: a released op output has no ctx, like a leaf; without this check it would
            # silently take the gradient as if it were a leaf and pass nothing on to the inputs
            if node._released is not None:
                raise RuntimeError(f"backward: trying to backward through the graph a second time: the output "
                                   f"of {node._released} (shape {node.shape}) was released by an earlier "
                                   f"backward(); call that backward with retain_graph=True to keep the graph")
        # id(tensor) -> (gradient, owned): owned marks a sum made here, which no op's output and no
        # other tensor's gradient aliases, so it may be added to in place and kept without a copy
        # (the tied wte gets two (V, C) gradients: one sum, no further full-size copies)
        grads = {id(self): (grad, False)}
        for node in reversed(order):
            dout, owned = grads.pop(id(node), (None, False))
            if on_grad is not None and dout is not None:
                on_grad(node, dout)
            ctx = node._ctx
            if ctx is None:  # a leaf: accumulate across backward calls, as PyTorch does
                if dout is not None:
                    # subtle: copy an op's output, because one array may be the gradient of two leaves (a + b)
                    if node.grad is None:
                        node.grad = dout if owned else dout.copy()
                    else:  # the engine owns node.grad (see above): add in place, no full-size temporary
                        node.grad += dout
                    # a leaf is visited once, after every use: its gradient for this pass is final
                    # (distributed.py starts all-reducing a parameter's bucket from here)
                    hook = getattr(node, "_grad_hook", None)
                    if hook is not None:
                        hook(node)
                continue
            if not retain_graph:
                node._ctx, node._released = None, ctx.fn.__name__  # release the graph behind us
            if dout is None:
                continue
            dinputs = ctx.fn.backward(ctx, dout)
            if not isinstance(dinputs, tuple):
                dinputs = (dinputs,)
            if len(dinputs) != len(ctx.parents):
                raise RuntimeError(f"{ctx.fn.__name__}.backward returned {len(dinputs)} gradients "
                                   f"for {len(ctx.parents)} inputs")
            for i, (parent, dparent) in enumerate(zip(ctx.parents, dinputs)):
                if dparent is None or not parent.requires_grad:
                    continue
                dparent = _array(dparent, parent.device)
                if dparent.shape != parent.shape:
                    raise RuntimeError(f"{ctx.fn.__name__}.backward: gradient for input {i} has shape "
                                       f"{dparent.shape}, the input has shape {parent.shape}")
                if dparent.dtype != parent.dtype:  # a leaf's .grad has the leaf's dtype
                    raise RuntimeError(f"{ctx.fn.__name__}.backward: gradient for input {i} has dtype "
                                       f"{dparent.dtype}, the input has dtype {parent.dtype}")
                # subtle: a tensor used twice gets the sum; add in place only into a sum made here,
                # never into an op's output (dparent may alias dout or another input's gradient)
                previous, prev_owned = grads.get(id(parent), (None, False))
                if previous is None:
                    grads[id(parent)] = (dparent, False)
                elif prev_owned:
                    previous += dparent  # in place (a 0-d sum may come back a new scalar: stored again)
                    grads[id(parent)] = (previous, True)
                else:
                    grads[id(parent)] = (_array(previous + dparent, parent.device), True)

    # ---- operators and methods: bound by hand so that `grep "def relu"` finds them ---------
    def _coerce(self, other, op):
        """(self, other) as two Tensors of one dtype, for the binary op named `op`.

        The dtype rules are in the module docstring: Python numbers (and NumPy scalars, 0-d arrays,
        lists) follow NEP 50; arrays with dimensions never upcast a float tensor. A Tensor `other`
        is returned as it is (each op checks that its inputs share a dtype).
        """
        if isinstance(other, Tensor):
            return self, other
        if isinstance(other, (bool, int, float)):
            weak, kind, value = True, "b" if isinstance(other, bool) else "i" if isinstance(other, int) else "f", other
        else:
            value = np.asarray(other) if isinstance(other, (list, tuple)) else other
            if not hasattr(value, "dtype"):
                raise TypeError(f"{op}: cannot combine a tensor with {type(other).__name__}")
            weak, kind = isinstance(other, (list, tuple)) or value.ndim == 0, value.dtype.kind
            if kind not in "biuf":
                raise TypeError(f"{op}: the other operand must be numbers or bools, got dtype {value.dtype}")
        if weak:
            dtype = _weak_dtype(self.dtype, kind)
        elif self.dtype.kind == "f":
            if kind == "f" and value.dtype != self.dtype:
                raise TypeError(f"{op}: a {self.dtype} tensor and a {value.dtype} array; convert one with "
                                f".astype() (no silent upcasts)")
            dtype = self.dtype
        else:
            dtype = np.result_type(self.dtype, value.dtype)
        try:
            const = Tensor._wrap(self.xp.asarray(value, dtype=dtype), self.device, False)
        except OverflowError as exc:
            raise OverflowError(f"{op}: {other!r} does not fit the dtype {dtype}: {exc}") from None
        if dtype == self.dtype:
            return self, const
        # only integer and bool tensors get here (a float tensor keeps its dtype): no graph to keep
        return Tensor._wrap(self.data.astype(dtype), self.device, False), const

    def _compared(self, other):
        """The other side of a comparison as NumPy takes it: any dtypes compare exactly, no cast."""
        if isinstance(other, Tensor):
            return other.data
        if isinstance(other, (bool, int, float)):
            return other
        return self.xp.asarray(other)

    def __add__(self, other):
        a, b = self._coerce(other, "add")
        return ops.Add.apply(a, b)

    def __radd__(self, other):
        a, b = self._coerce(other, "add")
        return ops.Add.apply(b, a)

    def __sub__(self, other):
        a, b = self._coerce(other, "sub")
        return ops.Sub.apply(a, b)

    def __rsub__(self, other):
        a, b = self._coerce(other, "sub")
        return ops.Sub.apply(b, a)

    def __mul__(self, other):
        a, b = self._coerce(other, "mul")
        return ops.Mul.apply(a, b)

    def __rmul__(self, other):
        a, b = self._coerce(other, "mul")
        return ops.Mul.apply(b, a)

    def __truediv__(self, other):
        a, b = self._coerce(other, "div")
        return ops.Div.apply(a, b)

    def __rtruediv__(self, other):
        a, b = self._coerce(other, "div")
        return ops.Div.apply(b, a)

    def __neg__(self):
        return ops.Neg.apply(self)

    def __pow__(self, exponent):
        if isinstance(exponent, (bool, int, float)) or (hasattr(exponent, "dtype") and exponent.ndim == 0
                                                        and not isinstance(exponent, Tensor)):
            a, _ = self._coerce(exponent, "pow")  # an integer tensor ** 0.5 becomes float64, as in NumPy
            return ops.PowScalar.apply(a, exponent=float(exponent))
        a, b = self._coerce(exponent, "pow")
        return ops.Pow.apply(a, b)

    def __rpow__(self, base):
        a, b = self._coerce(base, "pow")
        return ops.Pow.apply(b, a)

    def __matmul__(self, other):
        return self.matmul(other)

    def __getitem__(self, index):
        return ops.GetItem.apply(self, index=_unwrap_index(index))

    # comparisons: no gradient, return a bool Tensor (== and != keep Python identity semantics;
    # use .eq() / .ne())
    def __lt__(self, other):
        return Tensor._wrap(self.data < self._compared(other), self.device, False)

    def __le__(self, other):
        return Tensor._wrap(self.data <= self._compared(other), self.device, False)

    def __gt__(self, other):
        return Tensor._wrap(self.data > self._compared(other), self.device, False)

    def __ge__(self, other):
        return Tensor._wrap(self.data >= self._compared(other), self.device, False)

    def eq(self, other):
        return Tensor._wrap(self.data == self._compared(other), self.device, False)

    def ne(self, other):
        return Tensor._wrap(self.data != self._compared(other), self.device, False)

    __hash__ = object.__hash__

    def add(self, other):
        return self + other

    def sub(self, other):
        return self - other

    def mul(self, other):
        return self * other

    def div(self, other):
        return self / other

    def neg(self):
        return -self

    def pow(self, exponent):
        return self ** exponent

    def exp(self):
        return ops.Exp.apply(self)

    def log(self):
        return ops.Log.apply(self)

    def sqrt(self):
        return ops.Sqrt.apply(self)

    def tanh(self):
        return ops.Tanh.apply(self)

    def relu(self):
        return ops.Relu.apply(self)

    def gelu(self):
        return ops.Gelu.apply(self)

    def relu2(self):
        """relu(self)^2 (ReLU squared)."""
        return ops.Relu2.apply(self)

    def softcap(self, cap):
        """cap * tanh(self / cap): values smoothly bounded to (-cap, cap)."""
        return ops.Softcap.apply(self, cap=cap)

    def sigmoid(self):
        return ops.Sigmoid.apply(self)

    def maximum(self, other):
        a, b = self._coerce(other, "maximum")
        return ops.Maximum.apply(a, b)

    def minimum(self, other):
        a, b = self._coerce(other, "minimum")
        return ops.Minimum.apply(a, b)

    def clip(self, low=None, high=None):
        x = self
        for bound in (low, high):
            if bound is not None:
                x, _ = x._coerce(bound, "clip")  # an integer tensor clipped to 0.5 becomes float64
        return ops.Clip.apply(x, low=low, high=high)

    def masked_fill(self, mask, value):
        x, _ = self._coerce(value, "masked_fill")  # an integer tensor filled with -inf becomes float64
        return ops.MaskedFill.apply(x, mask=unwrap(mask), value=value)

    def sum(self, axis=None, keepdims=False):
        return ops.Sum.apply(self, axis=axis, keepdims=keepdims)

    def mean(self, axis=None, keepdims=False):
        return ops.Mean.apply(self, axis=axis, keepdims=keepdims)

    def max(self, axis=None, keepdims=False):
        return ops.Max.apply(self, axis=axis, keepdims=keepdims)

    def var(self, axis=None, keepdims=False, correction=0):
        return ops.Var.apply(self, axis=axis, keepdims=keepdims, correction=correction)

    def matmul(self, other):
        this, other = self._coerce(other, "matmul")
        if this.ndim == 0 or other.ndim == 0:
            raise ValueError(f"matmul: scalars are not allowed, got shapes {this.shape} and {other.shape}")
        # 1-D operands are promoted to matrices and the added axis removed again, as numpy does
        a = this.reshape(1, -1) if this.ndim == 1 else this
        b = other.reshape(-1, 1) if other.ndim == 1 else other
        out = ops.MatMul.apply(a, b)
        if this.ndim == 1:
            out = out.reshape(*out.shape[:-2], out.shape[-1])
        if other.ndim == 1:
            out = out.reshape(*out.shape[:-1])
        return out

    def reshape(self, *shape):
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        return ops.Reshape.apply(self, shape=tuple(shape))

    def view(self, *shape):
        return self.reshape(*shape)

    def flatten(self):
        return self.reshape(-1)

    def permute(self, *axes):
        axes = axes[0] if len(axes) == 1 and isinstance(axes[0], (tuple, list)) else axes
        return ops.Permute.apply(self, axes=tuple(axes))

    def transpose(self, axis0=-2, axis1=-1):
        for ax in (axis0, axis1):
            if not -self.ndim <= ax < self.ndim:
                raise ValueError(f"transpose: axis {ax} is out of range for a tensor of shape {self.shape}")
        axes = list(range(self.ndim))
        axes[axis0], axes[axis1] = axes[axis1], axes[axis0]
        return ops.Permute.apply(self, axes=tuple(axes))

    @property
    def T(self):
        return self.permute(*reversed(range(self.ndim)))

    def gather(self, index):
        """out[..., j] = self[..., index[..., j]] along the last axis (e.g. log-prob of chosen tokens)."""
        return ops.Gather.apply(self, index=unwrap(index))

    def split(self, sizes, axis=-1):
        """Split along `axis` into pieces of `sizes` (an int: equal pieces of that size).

        A list of sizes must be non-negative integers that add up to the axis' length.
        """
        if not -self.ndim <= axis < self.ndim:
            raise ValueError(f"split: axis {axis} is out of range for a tensor of shape {self.shape}")
        length = self.shape[axis]
        if isinstance(sizes, (int, np.integer)):
            if sizes <= 0 or length % sizes:
                raise ValueError(f"split: axis {axis} of length {length} is not divisible by {sizes}")
            sizes = [sizes] * (length // sizes)
        sizes = list(sizes)
        if any(not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 0 for n in sizes):
            raise ValueError(f"split: sizes must be non-negative integers, got {sizes}")
        if sum(sizes) != length:
            raise ValueError(f"split: sizes {sizes} sum to {sum(sizes)}, axis {axis} has length {length}")
        axis = axis % self.ndim
        pieces, start = [], 0
        for size in sizes:
            index = (slice(None),) * axis + (slice(start, start + size),)
            pieces.append(self[index])
            start += size
        return pieces

    def softmax(self, axis=-1):
        return ops.Softmax.apply(self, axis=axis)

    def log_softmax(self, axis=-1):
        return ops.LogSoftmax.apply(self, axis=axis)


def _weak_dtype(dtype, kind):
    """NEP 50: the dtype of a tensor of `dtype` combined with a Python number of `kind` ('b', 'i',
    'u' or 'f'). The number takes the tensor's dtype when its kind fits (bool < int < float); else
    the result is NumPy's default of the number's kind (int64, float64)."""
    rank = {"b": 0, "i": 1, "u": 1, "f": 2}
    if rank[kind] <= rank[dtype.kind]:
        return dtype
    return np.dtype(np.float64 if kind == "f" else np.int64)


def unwrap(x):
    """The array of a Tensor, or x itself (an array, a number): for functions that take either."""
    return x.data if isinstance(x, Tensor) else x


def _unwrap_index(index):
    if isinstance(index, tuple):
        return tuple(unwrap(i) for i in index)
    return unwrap(index)


def tensor(data, requires_grad=False, dtype=None, device=None):
    """Shorthand for Tensor(...)."""
    return Tensor(data, requires_grad=requires_grad, dtype=dtype, device=device)


from tinygrad_gpt import ops  # noqa: E402  (ops subclass Function, defined above)
