"""Shared pieces of the Numba kernels: the jit settings, and exp / tanh that vectorise in float32.

Why this file exists: without Intel's SVML, Numba lowers `math.exp` and `math.tanh` on float32 to
scalar libm calls (about 4 ns and 20 ns each here), which stop LLVM from vectorising the loop they
sit in; that alone made a Numba GELU slower than NumPy. `fast_exp` and `fast_tanh` below are
branch-free polynomials that LLVM does vectorise (AVX2/AVX-512), used for float32 only. float64
keeps libm (`math.exp`; tanh as expm1(2x) / (expm1(2x) + 2), `tanh_f64`, a few ulp): the float64
path is for gradient checks, where accuracy to 1e-10 matters more than speed.

Follows: Cephes `expf` (Cody-Waite range reduction, degree-5 polynomial, 2^n from the exponent
bits); Eigen's `generic_fast_tanh_float` (a [13/6] rational approximation, clamped to [-9, 9]).
Accuracy (float32, measured by tests/kernels/test_kernels.py::test_fast_exp_tanh_accuracy): relative error
of exp < 3e-7 on [-87, 88], absolute error of tanh < 5e-7 everywhere.

Does not: handle float16 or complex (the wrappers send those to the NumPy reference), or use
`fastmath` in these helpers (reassociation would undo the Cody-Waite split).

Threads: only attention has a parallel version (the B * nh heads split over a few Python threads
running a nogil kernel), and `ThreadPicker` below decides per call shape whether to use it. Every
other kernel is serial: at the `cpu` preset each takes 10-300 us on one thread, waking a thread
pool costs ~10 us on a quiet machine, and on this shared 2-core VM under load a Numba `prange`
launch was measured waiting a whole scheduler tick (~10 ms) per call for its second thread.
NUMBA_NUM_THREADS=1 (or numba.set_num_threads(1)) makes attention serial too.

subtle: every kernel uses error_model="numpy". With Numba's default ("python") each division gets
a zero check that raises ZeroDivisionError, a branch that stops vectorisation; that one setting
made the float32 GELU loop 30x faster.
"""
import math
import time

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

# Settings shared by every kernel. fastmath is limited to reassociation (so that row sums and dot
# products vectorise) and contraction (fused multiply-add); no "nnan"/"ninf", so inf and nan still
# behave as IEEE says.
KERNEL_OPTIONS = dict(cache=True, error_model="numpy", fastmath={"reassoc", "contract"})
HELPER_OPTIONS = dict(cache=True, error_model="numpy")  # exact IEEE order (no fastmath)

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def kernel():
    """The decorator for a kernel: njit with KERNEL_OPTIONS, releasing the GIL while it runs, so
    that threads training replicas of one model (replicas.py) and attention's pool run at once."""
    return njit(nogil=True, **KERNEL_OPTIONS)


# ------------------------------------------------------------------------------------------------
# bit casts (LLVM bitcast, no memory round trip), used to build 2^n from its exponent bits
# ------------------------------------------------------------------------------------------------
@intrinsic
def _int32_bits_as_float32(typingctx, bits):
    sig = types.float32(types.int32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


# ------------------------------------------------------------------------------------------------
# atomic fetch-and-add on an int64 array element, for threads sharing a work counter
# ------------------------------------------------------------------------------------------------
@intrinsic
def atomic_add(typingctx, counters, index, value):
    """old = counters[index]; counters[index] += value, as one sequentially consistent atomic
    operation (LLVM atomicrmw); returns old. counters: a C-contiguous int64 1-d array. No bounds
    check. value 0 makes it an atomic load."""
    if not (isinstance(counters, types.Array) and counters.dtype == types.int64 and counters.ndim == 1
            and counters.layout == "C"):
        return None
    sig = types.int64(counters, types.intp, types.int64)

    def codegen(context, builder, signature, args):
        ary_t, _, _ = signature.args
        ary = context.make_array(ary_t)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, ary_t, ary, [args[1]])
        return builder.atomic_rmw("add", ptr, args[2], "seq_cst")

    return sig, codegen


# ------------------------------------------------------------------------------------------------
# float32 exp: Cephes expf
# ------------------------------------------------------------------------------------------------
@njit(**HELPER_OPTIONS)
def exp_f32(x):
    """exp(x) for a float32 x; 0 below -87.33 (where exp is subnormal), inf above 88.72, nan kept."""
    f = np.float32
    big = x > f(88.72283)
    small = x < f(-87.33654)
    xc = min(max(x, f(-87.33654)), f(88.72283))
    n = np.floor(xc * f(1.44269504088896341) + f(0.5))    # round(x / ln 2), a float32
    r = xc - n * f(0.693359375)                            # Cody-Waite: ln 2 = C1 - C2, C1 exact
    r = r - n * f(-2.12194440e-4)
    z = r * r
    y = f(1.9875691500e-4)
    y = y * r + f(1.3981999507e-3)
    y = y * r + f(8.3334519073e-3)
    y = y * r + f(4.1665795894e-2)
    y = y * r + f(1.6666665459e-1)
    y = y * r + f(5.0000001201e-1)
    y = y * z + r + f(1.0)
    # subtle: n reaches 128 near the top of the range, where 2^n alone is not a float32; split
    # it as 2^n1 * 2^n2 with both halves in [-63, 64]
    ni = np.int32(n)
    n1 = ni >> np.int32(1)
    n2 = ni - n1
    out = y * _int32_bits_as_float32((n1 + np.int32(127)) << np.int32(23))   # y * 2^n1
    out = out * _int32_bits_as_float32((n2 + np.int32(127)) << np.int32(23))  # * 2^n2
    if small:
        out = f(0.0)
    if big:
        out = f(np.inf)
    if x != x:
        out = x
    return out


@njit(**HELPER_OPTIONS)
def tanh_f32(x):
    """tanh(x) for a float32 x: Eigen's [13/6] rational approximation on [-9, 9], +-1 outside."""
    f = np.float32
    xc = min(max(x, f(-9.0)), f(9.0))
    x2 = xc * xc
    p = x2 * f(-2.76076847742355e-16) + f(2.00018790482477e-13)
    p = x2 * p + f(-8.60467152213735e-11)
    p = x2 * p + f(5.12229709037114e-08)
    p = x2 * p + f(1.48572235717979e-05)
    p = x2 * p + f(6.37261928875436e-04)
    p = x2 * p + f(4.89352455891786e-03)
    p = xc * p
    q = x2 * f(1.19825839466702e-06) + f(1.18534705686654e-04)
    q = x2 * q + f(2.26843463243900e-03)
    q = x2 * q + f(4.89352518554385e-03)
    t = p / q
    t = min(max(t, f(-1.0)), f(1.0))
    if x != x:
        t = x
    return t


@njit(**HELPER_OPTIONS)
def row_max(a, i, n):
    """max(a[i, :n]), n >= 1, with four independent running maxima.

    subtle: LLVM does not vectorise a float max reduction (not even with fastmath), and a single
    running max is a chain of dependent 3-cycle instructions; four chains run ~4x faster. nan
    entries are skipped (x > nan is false); the exp that follows in every caller propagates them.
    """
    m0 = a[i, 0]
    m1 = m0
    m2 = m0
    m3 = m0
    n4 = n // 4 * 4
    for j in range(0, n4, 4):
        x0 = a[i, j]
        x1 = a[i, j + 1]
        x2 = a[i, j + 2]
        x3 = a[i, j + 3]
        m0 = x0 if x0 > m0 else m0
        m1 = x1 if x1 > m1 else m1
        m2 = x2 if x2 > m2 else m2
        m3 = x3 if x3 > m3 else m3
    for j in range(n4, n):
        x0 = a[i, j]
        m0 = x0 if x0 > m0 else m0
    m0 = m1 if m1 > m0 else m0
    m2 = m3 if m3 > m2 else m2
    return m2 if m2 > m0 else m0


# ------------------------------------------------------------------------------------------------
# dtype dispatch at compile time: fast_exp / fast_tanh pick the float32 polynomial or libm
# ------------------------------------------------------------------------------------------------
def fast_exp(x):
    """exp(x): exp_f32 for float32, math.exp for float64 (resolved when Numba compiles)."""
    return math.exp(x)


def fast_tanh(x):
    """tanh(x): tanh_f32 for float32, tanh_f64 for float64 (resolved when Numba compiles)."""
    return math.tanh(x)


@overload(fast_exp, jit_options=HELPER_OPTIONS)
def _fast_exp_overload(x):
    if x == types.float32:
        return lambda x: exp_f32(x)
    return lambda x: math.exp(x)


@njit(**HELPER_OPTIONS)
def tanh_f64(x):
    """tanh(x) for a float64 x as e / (e + 2), e = expm1(2x): a few ulp, and ~4x faster than
    libm's tanh here (one expm1 call instead of tanh's branches); |x| >= 20 gives +-1 exactly."""
    xc = min(max(x, -20.0), 20.0)
    e = math.expm1(2.0 * xc)
    t = e / (e + 2.0)
    if x != x:
        t = x
    return t


@overload(fast_tanh, jit_options=HELPER_OPTIONS)
def _fast_tanh_overload(x):
    if x == types.float32:
        return lambda x: tanh_f32(x)
    return lambda x: tanh_f64(x)


# ------------------------------------------------------------------------------------------------
# serial or parallel, measured
# ------------------------------------------------------------------------------------------------
class ThreadPicker:
    """Chooses, per call shape, between a kernel's serial and parallel versions by timing both.

    subtle: on a quiet 2-core machine the parallel attention is faster than the serial one; on the
    same machine shared with other busy processes it was no faster (thread pool) or much slower (a
    Numba prange driver: each launch waited a scheduler tick for its second thread; benchmarks/LOG.md).
    No fixed rule is right in both, so the
    first calls of each shape run each version once, later calls run the one whose latest time
    was lower, and every `recheck`-th call re-times the other (conditions change while training).
    Costs one perf_counter pair per call. The choice only affects speed: both versions give the
    same result bit for bit (the heads are independent).
    """

    def __init__(self, recheck=50):
        self.recheck = recheck
        self.seconds = {}  # shape key -> [latest serial seconds, latest parallel seconds, calls]

    def run(self, key, serial, parallel, *args):
        st = self.seconds.get(key)
        if st is None:
            st = self.seconds[key] = [None, None, 0]
        st[2] += 1
        if st[0] is None:
            choice = 0
        elif st[1] is None:
            choice = 1
        else:
            faster = 0 if st[0] <= st[1] else 1
            choice = 1 - faster if st[2] % self.recheck == 0 else faster
        t0 = time.perf_counter()
        (serial, parallel)[choice](*args)
        st[choice] = time.perf_counter() - t0
        return choice


# ------------------------------------------------------------------------------------------------
# wrapper helpers (plain Python)
# ------------------------------------------------------------------------------------------------
def common_float_dtype(*arrays):
    """The dtype shared by all `arrays` if it is float32 or float64 and all are numpy arrays, else
    None (the wrapper then runs the NumPy reference, which handles mixed or other dtypes)."""
    dtype = None
    for a in arrays:
        if not isinstance(a, np.ndarray):
            return None
        if dtype is None:
            dtype = a.dtype
        elif a.dtype != dtype:
            return None
    return dtype if dtype in FLOAT_DTYPES else None


def elementwise(kernel, reference_fn, *arrays):
    """out = kernel(*flat inputs, flat out) over same-shape float32 / float64 arrays of any shape (each
    flattened, copied to contiguous first where it is not); reference_fn(*arrays) for anything else
    (other or mixed dtypes, shapes that differ). The wrapper of every one-pass elementwise kernel."""
    dtype = common_float_dtype(*arrays)
    if dtype is None or any(a.shape != arrays[0].shape for a in arrays):
        return reference_fn(*arrays)
    flat = [np.ascontiguousarray(a).reshape(-1) for a in arrays]   # (n,) each
    out = np.empty(flat[0].shape, dtype=dtype)                     # (n,)
    kernel(*flat, out)
    return out.reshape(arrays[0].shape)                            # the inputs' shape


def as_index_array(idx, name, fn):
    """idx as a contiguous int64 array (no copy if it already is one); integers only."""
    idx = np.asarray(idx)
    if idx.dtype.kind not in "iu":
        raise TypeError(f"{fn}: {name} must hold integers, got dtype {idx.dtype}")
    return np.ascontiguousarray(idx, dtype=np.int64)
