"""gradcheck: compare every analytic gradient of a function with central finite differences.

    result = gradcheck(lambda a, b: (a * b).sum(), [a, b])   # a, b float64 Tensors
    assert result.ok, result                                   # prints the worst error and where

For each input that requires grad, and each of its elements (or a random sample of them, see
`max_checks`), the numerical derivative is (f(x + eps) - f(x - eps)) / (2 eps), an O(eps^2)
estimate. Where that misses the tolerance, the element is measured again with the fourth-order
central difference (8 (f(x + eps) - f(x - eps)) - (f(x + 2 eps) - f(x - 2 eps))) / (12 eps), whose
truncation error is O(eps^4), and that estimate is the one compared: a function with a large third
derivative (a normalisation of a short vector, 1 / |x|^3) can put the O(eps^2) estimate itself
off by more than the tolerance, while a wrong backward stays wrong under both. A function with a
non-scalar output is reduced to a scalar with fixed random weights, sum(w * f(x)), so that every
output element is tested with a different weight.

Error measure, per element: |analytic - numeric| / max(|analytic|, |numeric|, floor). The floor
(default 1e-3) keeps the measure meaningful where the true gradient is ~0: there it is an absolute
error scaled by 1/floor. With float64 and eps = 1e-5 (truncation error ~eps^2, rounding error
~1e-16 / eps) a correct gradient gives ~1e-7 or less; eps = 1e-6 is rounding-limited.

Non-finite values fail the check: a NaN or inf anywhere in an analytic gradient (every element,
also those `max_checks` does not sample) or in a finite difference gives ok=False, an error of
inf, and `problem` naming it. (NaN loses every comparison, so an error measure alone would pass it.)
Inputs are perturbed in place through an index of their own array, so 0-d and non-contiguous
inputs are checked like any other.

Follows: tinygrad extra/gradcheck.py, torch.autograd.gradcheck. Deliberately does not: work in
float32 (finite differences are too coarse; it raises), or check second derivatives.
"""
import math
from dataclasses import dataclass

import numpy as np

from tinygrad_gpt.backend import to_numpy
from tinygrad_gpt.tensor import Tensor


@dataclass
class GradcheckResult:
    ok: bool                 # every value finite and max_rel_error <= tol
    max_rel_error: float     # the worst per-element error (measure in the module docstring); inf if not finite
    where: tuple             # (input position, element index) of the worst error
    analytic: float          # the analytic and numeric derivative at that element
    numeric: float
    checked: int             # how many elements were compared
    tol: float
    problem: str = ""        # what was not finite ("analytic gradient is nan"), or "" if all were

    def __str__(self):
        verdict = "ok" if self.ok else "FAILED"
        problem = f"{self.problem}: " if self.problem else ""
        return (f"gradcheck {verdict}: {problem}worst relative error {self.max_rel_error:.3e} (tol {self.tol:.0e}) "
                f"at input {self.where[0]} index {self.where[1]}: analytic {self.analytic:.10g} vs numeric "
                f"{self.numeric:.10g}; {self.checked} elements checked")


def _scalar(fn, inputs, weights):
    out = fn(*inputs)
    if weights is None:
        return out
    return (out * Tensor(weights, device=out.device)).sum()


def _difference(fn, inputs, weights, t, idx, h):
    """f(x + h) - f(x - h) with element idx of input t moved, then put back."""
    original = t.data[idx].item()
    t.data[idx] = original + h
    f_plus = _scalar(fn, inputs, weights).item()
    t.data[idx] = original - h
    f_minus = _scalar(fn, inputs, weights).item()
    t.data[idx] = original
    return f_plus - f_minus


def _rel_error(analytic, numeric, floor):
    """|analytic - numeric| / max(|analytic|, |numeric|, floor): the measure of the module docstring."""
    return abs(analytic - numeric) / max(abs(analytic), abs(numeric), floor)


def _not_finite(name, value):
    """"analytic gradient is nan" / "numeric gradient is inf", or "" for a finite value."""
    return "" if math.isfinite(value) else f"{name} gradient is {value}"


def gradcheck(fn, inputs, eps=1e-5, tol=1e-6, floor=1e-3, max_checks=None, seed=0):
    """Check the gradients of `fn(*inputs)` w.r.t. every input with requires_grad=True.

    `inputs` are float64 Tensors (any shape, 0-d and non-contiguous included). `max_checks` limits
    the elements checked per input (a random sample, seeded by `seed`); None checks all of them.
    Returns a GradcheckResult. It fails (ok False, max_rel_error inf, `problem` says which) on any
    NaN or inf: in the analytic gradient (every element, sampled or not) or in a finite difference.
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
        analytic = (np.zeros(t.shape) if t.grad is None else to_numpy(t.grad)).reshape(-1)  # (t.size,)
        elements = np.arange(t.size)
        if max_checks is not None and t.size > max_checks:
            elements = rng.choice(t.size, size=max_checks, replace=False)
        for e in elements:
            # perturb through an index of t.data itself: reshape(-1) of a non-contiguous
            # array is a copy, and perturbing a copy leaves the input as it was
            idx = _index(e, t.shape)
            d1 = _difference(fn, inputs, weights, t, idx, eps)                # f(x + eps) - f(x - eps)
            numeric = d1 / (2 * eps)
            a = float(analytic[e])
            if not _rel_error(a, numeric, floor) <= tol:                      # NaN too: look again
                d2 = _difference(fn, inputs, weights, t, idx, 2 * eps)
                numeric = (8 * d1 - d2) / (12 * eps)
            checked += 1
            # subtle: NaN loses every comparison (err > worst would be False): look for it first
            problem = _not_finite("analytic", a) or _not_finite("numeric", numeric)
            if problem:
                if not worst.problem:  # the first non-finite value is the one reported
                    worst = GradcheckResult(False, math.inf, (pos, idx), a, numeric, 0, tol, problem)
                continue
            err = _rel_error(a, numeric, floor)
            if not worst.problem and (err > worst.max_rel_error or worst.where[0] is None):
                worst = GradcheckResult(True, err, (pos, idx), a, numeric, 0, tol)
        bad = np.flatnonzero(~np.isfinite(analytic))  # every element: max_checks may not have sampled it
        if bad.size and not worst.problem:
            e = int(bad[0])
            worst = GradcheckResult(False, math.inf, (pos, _index(e, t.shape)), float(analytic[e]), math.nan, 0,
                                    tol, _not_finite("analytic", float(analytic[e])) + " (an element not sampled)")
    worst.checked = checked
    worst.ok = checked > 0 and not worst.problem and worst.max_rel_error <= tol
    return worst


def _index(e, shape):
    """Flat position e as a tuple index into an array of `shape` (() for a 0-d array)."""
    return tuple(int(i) for i in np.unravel_index(e, shape)) if shape else ()
