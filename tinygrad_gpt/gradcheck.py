"""gradcheck: compare every analytic gradient of a function with central finite differences.

    result = gradcheck(lambda a, b: (a * b).sum(), [a, b])   # a, b float64 Tensors
    assert result.ok, result                                   # prints the worst error and where

For each input that requires grad, and each of its elements (or a random sample of them, see
`max_checks`), the numerical derivative is (f(x + eps) - f(x - eps)) / (2 eps), an O(eps^2)
estimate. A function with a non-scalar output is reduced to a scalar with fixed random weights,
sum(w * f(x)), so that every output element is tested with a different weight.

Error measure, per element: |analytic - numeric| / max(|analytic|, |numeric|, floor). The floor
(default 1e-3) keeps the measure meaningful where the true gradient is ~0: there it is an absolute
error scaled by 1/floor. With float64 and eps = 1e-5 (truncation error ~eps^2, rounding error
~1e-16 / eps) a correct gradient gives ~1e-7 or less; eps = 1e-6 is rounding-limited.

Follows: tinygrad extra/gradcheck.py, torch.autograd.gradcheck. Deliberately does not: work in
float32 (finite differences are too coarse; it raises), or check second derivatives.
"""
from dataclasses import dataclass

import numpy as np

from tinygrad_gpt.tensor import Tensor


@dataclass
class GradcheckResult:
    ok: bool                 # max_rel_error <= tol
    max_rel_error: float     # the worst per-element error (measure in the module docstring)
    where: tuple             # (input position, element index) of the worst error
    analytic: float          # the analytic and numeric derivative at that element
    numeric: float
    checked: int             # how many elements were compared
    tol: float

    def __str__(self):
        verdict = "ok" if self.ok else "FAILED"
        return (f"gradcheck {verdict}: worst relative error {self.max_rel_error:.3e} (tol {self.tol:.0e}) at "
                f"input {self.where[0]} index {self.where[1]}: analytic {self.analytic:.10g} vs numeric "
                f"{self.numeric:.10g}; {self.checked} elements checked")


def _scalar(fn, inputs, weights):
    out = fn(*inputs)
    if weights is None:
        return out
    return (out * Tensor(weights, device=out.device)).sum()


def gradcheck(fn, inputs, eps=1e-5, tol=1e-6, floor=1e-3, max_checks=None, seed=0):
    """Check the gradients of `fn(*inputs)` w.r.t. every input with requires_grad=True.

    `inputs` are float64 Tensors. `max_checks` limits the elements checked per input (a random
    sample, seeded by `seed`); None checks all of them. Returns a GradcheckResult.
    """
    inputs = list(inputs)
    for i, t in enumerate(inputs):
        if isinstance(t, Tensor) and t.requires_grad and t.dtype != np.float64:
            raise TypeError(f"gradcheck: input {i} is {t.dtype}; finite differences need float64 (use .astype)")
    rng = np.random.default_rng(seed)
    out = fn(*inputs)
    weights = None
    if out.size != 1:
        weights = rng.uniform(0.5, 1.5, size=out.shape) * rng.choice([-1.0, 1.0], size=out.shape)

    for t in inputs:
        if isinstance(t, Tensor):
            t.grad = None
    _scalar(fn, inputs, weights).backward()

    worst = GradcheckResult(True, 0.0, (None, None), 0.0, 0.0, 0, tol)
    checked = 0
    for pos, t in enumerate(inputs):
        if not (isinstance(t, Tensor) and t.requires_grad):
            continue
        analytic = np.zeros(t.shape) if t.grad is None else np.asarray(t.numpy() * 0 + _np(t.grad))
        flat = t.data.reshape(-1)  # a view: perturbing it perturbs the input
        if flat.base is None and t.data.size and flat is not t.data:
            raise RuntimeError("gradcheck: input data is not contiguous")
        elements = np.arange(t.size)
        if max_checks is not None and t.size > max_checks:
            elements = rng.choice(t.size, size=max_checks, replace=False)
        for e in elements:
            original = flat[e].item()
            flat[e] = original + eps
            f_plus = _scalar(fn, inputs, weights).item()
            flat[e] = original - eps
            f_minus = _scalar(fn, inputs, weights).item()
            flat[e] = original
            numeric = (f_plus - f_minus) / (2 * eps)
            a = float(analytic.reshape(-1)[e])
            err = abs(a - numeric) / max(abs(a), abs(numeric), floor)
            checked += 1
            if err > worst.max_rel_error or worst.where[0] is None:
                idx = tuple(int(i) for i in np.unravel_index(e, t.shape)) if t.shape else ()
                worst = GradcheckResult(True, err, (pos, idx), a, numeric, 0, tol)
    worst.checked = checked
    worst.ok = checked > 0 and worst.max_rel_error <= tol
    return worst


def _np(arr):
    return arr if isinstance(arr, np.ndarray) else arr.get()
