"""Run the CUDA C of tinygrad_gpt/kernels/cuda on the CPU: a stand-in `cupy` whose RawModule compiles the
kernels' own source with g++ against `emulator.h`, for the tests on machines without a GPU.

`load()` returns (cupy, cuda): this stand-in module and a private import of `kernels.cuda` made
against it (sys.modules is left as it was: nothing else in the pytest process sees a cupy). Then
`cuda.attention_forward(cupy.asarray(q), ...)` runs the same Python wrapper and the same CUDA C
text as on a GPU; only the hardware is replaced:

- a launch first runs its threads one after another on one stack (fast: elementwise kernels
  need nothing more); the first `__syncthreads` or shuffle reached aborts that run, the arguments
  are restored, and the kernel runs from then on with every thread of a block as a fiber with its
  own stack (remembered per kernel); `__syncthreads`, the warp shuffles,
  `__shared__` and `atomicAdd` follow CUDA's rules, and breaking them (a barrier in divergent
  code, a shuffle after some lanes returned, over 48 KiB of shared memory) raises EmulatorError;
- each launch runs twice from the same inputs: blocks, and the threads of each block, in order,
  then both in reverse order; if any output differs, the kernel has a race (between barriers, or
  between blocks) and EmulatorError says which argument differed (kernels that use atomicAdd are
  compared with a float tolerance, since the order of their additions is free);
- "device" arrays are NumPy arrays with 256 guard bytes on each side; memory from `empty` and
  shared memory start as 0xFF bytes (NaN), so output nobody wrote shows up as NaN. The guards are
  0xFF in the first run and 0x01 in the second, so a read past an array gives NaN in one and a
  different result in the other, and a write past it (a store, or an atomicAdd into a NaN) raises
  EmulatorError after the launch;
- the launch is checked as CUDA's driver would (block <= 1024 threads, grid y and z <= 65535), and
  more strictly than CuPy does: each argument against the kernel's C signature (a pointer takes a
  C-contiguous array of the same element type, a scalar a NumPy scalar of the same kind and size;
  a Python int or a float64 for a `float` parameter is a TypeError, not a silent conversion).

What it cannot check: speed, coalescing, bank conflicts, register or local-memory limits, the
GPU's float rounding (g++ on the CPU computes expf / tanhf, within a few ulp of CUDA's), and races
that give the same answer in both orders. A GPU run (tests/cuda/test_cuda_kernels.py) is still the
real check.

Follows: the idea of HIP-CPU / the Numba CUDA simulator (run GPU code as CPU threads), for CUDA C
strings. Needs: g++ (or $CXX) with C++17; fibers switch with a few lines of assembly on x86-64
Linux and with ucontext elsewhere.
"""
import collections
import ctypes
import functools
import hashlib
import importlib
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time
import types
import weakref

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
HEADER = HERE / "emulator.h"
GUARD = 256           # bytes of 0xFF before and after every device array
CXXFLAGS = ("-std=c++17", "-O2", "-shared", "-fPIC", "-w")
# fibers through ucontext instead of the x86-64 assembly switch (the path other CPUs take)
USE_UCONTEXT = os.environ.get("TINYGRAD_GPT_CUDA_EMULATOR_UCONTEXT", "0") == "1"


class EmulatorError(RuntimeError):
    """A kernel broke a CUDA rule, raced, or wrote outside an array."""


def compiler():
    """The C++ compiler the emulator uses, or None (the tests skip then)."""
    return shutil.which(os.environ.get("CXX", "g++"))


def cache_dir():
    path = pathlib.Path(os.environ.get("TINYGRAD_GPT_CUDA_EMULATOR_CACHE",
                                       pathlib.Path.home() / ".cache" / "tinygrad_gpt" / "cuda_emulator"))
    path.mkdir(parents=True, exist_ok=True)
    return path


# ------------------------------------------------------------------------------------------------
# CUDA C -> C++
# ------------------------------------------------------------------------------------------------
_SHARED = re.compile(r"__shared__\s+([A-Za-z_][\w:<>]*)\s+([A-Za-z_]\w*)\s*((?:\[[^\];]+\])+)\s*;")


def translate(source):
    """`__shared__ T name[A][B];` -> one buffer per block (EMU_SHARED); the rest is C++ as it is."""
    out = _SHARED.sub(lambda m: f"EMU_SHARED({m[1]}, {m[2]}, {m[3]});", source)
    left = [line.strip() for line in out.splitlines() if "__shared__" in line]
    if left:
        raise EmulatorError(f"cannot rewrite this __shared__ declaration: {left[0]!r} "
                            f"(the emulator takes `__shared__ T name[N]...;` only)")
    return out


def _launchers(names):
    lines = []
    for i, name in enumerate(names):
        lines.append(f'extern "C" const char* emu_signature_{i}() {{\n'
                     f'    static const std::string s = emu::signature(&{name});\n'
                     f'    return s.c_str();\n}}\n'
                     f'extern "C" int emu_launch_{i}(const unsigned int* dims, void** args, int mode,'
                     f' char* err, int errlen) {{\n'
                     f'    return emu::launch_kernel(&{name}, dims, args, mode, err, errlen);\n}}\n')
    return "\n".join(lines)


def _plan(code, names):
    """(C++ text, library path) of `code` with the launchers of `names`."""
    cxx = compiler()
    if cxx is None:
        raise EmulatorError("the CUDA emulator needs a C++17 compiler: install g++ or set CXX")
    define = "#define EMU_UCONTEXT 1\n" if USE_UCONTEXT else ""
    text = f'{define}#include "{HEADER}"\n{translate(code)}\n{_launchers(names)}'
    key = hashlib.sha256("\0".join([HEADER.read_text(), text, cxx, *CXXFLAGS]).encode()).hexdigest()[:24]
    return cxx, text, cache_dir() / f"{key}.so"


def build_all(jobs):
    """Compile [(code, names), ...] with g++, as many at once as there are cores; their libraries.

    Libraries are cached on disk by a hash of the source, the header and the flags."""
    plans = [_plan(code, names) for code, names in jobs]
    pending = [(cxx, text, lib) for cxx, text, lib in plans if not lib.exists()]
    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
        running = []
        for n, (cxx, text, lib) in enumerate(pending):
            while sum(proc.poll() is None for proc, _, _ in running) >= (os.cpu_count() or 1):
                time.sleep(0.05)
            src = pathlib.Path(tmp) / f"kernels{n}.cpp"
            src.write_text(text)
            with open(src.with_suffix(".log"), "w") as log:
                proc = subprocess.Popen([cxx, *CXXFLAGS, "-o", str(src.with_suffix(".so")), str(src)],
                                        stdout=log, stderr=subprocess.STDOUT)
            running.append((proc, src, lib))
        for proc, src, lib in running:
            if proc.wait() != 0:
                raise EmulatorError(f"g++ could not compile the kernels in {src.name}:\n"
                                    f"{src.with_suffix('.log').read_text()[-4000:]}")
            os.replace(src.with_suffix(".so"), lib)                # atomic: no half-written library
    return [ctypes.CDLL(str(lib)) for _, _, lib in plans]


def build(code, names):
    """Compile `code` (CUDA C) with the launchers of `names`; the ctypes library."""
    return build_all([(code, names)])[0]


# the instantiations load() compiled ahead, a file at a time: (code, name) -> (library, index)
_prebuilt = {}


# ------------------------------------------------------------------------------------------------
# device arrays
# ------------------------------------------------------------------------------------------------
_live = weakref.WeakValueDictionary()   # id -> the raw uint8 buffer (guards included) of each array
syncs = []                              # (what, shape) of every device-to-host copy, in order
uploads = []                            # shape of every host-to-device copy, in order
launches = collections.Counter()        # kernel instantiation -> launches


def _record_sync(what, a):
    syncs.append((what, tuple(a.shape)))


class ndarray(np.lib.mixins.NDArrayOperatorsMixin):
    """A 'device' array: NumPy memory (between guard bytes when allocated here) that behaves like
    a cupy array where it matters for the engine:
    - it is not a numpy.ndarray, and NumPy will not convert it implicitly (TypeError, as cupy);
    - an operation that mixes it with a NumPy array of ndim >= 1 is a TypeError, as in cupy;
    - reductions and element reads give 0-d device arrays, not NumPy scalars;
    - every copy to the host (.get(), .item(), float(), int(), bool(), .tolist()) is appended to
      `syncs`, every copy from the host (cupy.asarray of host data) to `uploads`, so a test can
      assert that a training step makes none.
    """

    # what kernels.for_array, backend.device_of_array and reference.get_array_module look at: a
    # cupy-like package name, under which load() registers the stand-in (not "cupy" itself)
    __module__ = "cupy_emulated"
    __array_priority__ = 100

    def __init__(self, array):
        self._a = array

    # host copies (syncs on a GPU)
    def get(self):
        _record_sync("get", self._a)
        return np.array(self._a, copy=True)

    def item(self):
        _record_sync("item", self._a)
        return self._a.item()

    def tolist(self):
        _record_sync("tolist", self._a)
        return self._a.tolist()

    def __float__(self):
        _record_sync("float", self._a)
        return float(self._a)

    def __int__(self):
        _record_sync("int", self._a)
        return int(self._a)

    def __index__(self):
        _record_sync("index", self._a)
        return self._a.__index__()

    def __bool__(self):
        _record_sync("bool", self._a)
        return bool(self._a)

    def __array__(self, dtype=None, copy=None):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. Please use `.get()` to "
                        "construct a NumPy array explicitly. (cupy stand-in, tinygrad_gpt/cuda_emulator/)")

    # numpy protocol: ufuncs and functions run on the wrapped arrays
    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        out = kwargs.get("out")
        result = getattr(ufunc, method)(*_unwrap(inputs, ufunc.__name__), **_unwrap(kwargs, ufunc.__name__))
        if out is not None:
            return out[0] if len(out) == 1 else out
        return _wrap(result)

    def __array_function__(self, func, types_, args, kwargs):
        return _wrap(func(*_unwrap(args, func.__name__), **_unwrap(kwargs, func.__name__)))

    # everything else: numpy's attribute, with arrays in and out translated
    def __getattr__(self, name):
        if name == "_a":
            raise AttributeError(name)
        value = getattr(self._a, name)
        if callable(value):
            if name in SIZE_FROM_DATA:
                _record_sync(name, self._a)

            def method(*args, **kwargs):
                return _wrap(value(*_unwrap(args, name), **_unwrap(kwargs, name)))
            return method
        return _wrap(value)

    def __getitem__(self, key):
        key = _unwrap(key, "indexing", host_ok=True)
        if _has_mask(key):                                         # the result size is data
            _record_sync("boolean index", self._a)
        return _wrap(self._a[key])

    def __setitem__(self, key, value):
        key = _unwrap(key, "indexing", host_ok=True)
        if _has_mask(key):
            _record_sync("boolean index", self._a)
        self._a[key] = _unwrap(value, "setitem", host_ok=True)

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        return (_wrap(row) for row in self._a)

    def __repr__(self):
        return f"emulated_device_{self._a!r}"

    def __copy__(self):
        return self.copy()

    def __deepcopy__(self, memo):
        return self.copy()

    def __reduce__(self):
        raise TypeError("a device array does not pickle here; call .get() first")

    @property
    def T(self):
        return ndarray(self._a.T)


def _has_mask(key):
    parts = key if isinstance(key, tuple) else (key,)
    return any(isinstance(p, np.ndarray) and p.dtype == np.bool_ and p.ndim > 0 for p in parts)


# functions whose output size depends on the data: cupy copies a count to the host for them
SIZE_FROM_DATA = {"nonzero", "argwhere", "flatnonzero", "unique", "compress", "extract"}


def _unwrap(x, what, host_ok=False):
    """Device arrays -> their NumPy arrays (recursively); a host array of ndim >= 1 is a TypeError."""
    if isinstance(x, ndarray):
        return x._a
    if isinstance(x, np.ndarray) and x.ndim > 0 and not host_ok:
        raise TypeError(f"{what}: a NumPy array of shape {x.shape} mixed with device arrays "
                        f"(cupy raises here: copy it with cupy.asarray first)")
    if isinstance(x, tuple):
        return tuple(_unwrap(v, what, host_ok) for v in x)
    if isinstance(x, list):
        return [_unwrap(v, what, host_ok) for v in x]
    if isinstance(x, dict):
        return {k: _unwrap(v, what, host_ok) for k, v in x.items()}
    return x


def _wrap(r):
    """NumPy results -> device arrays (NumPy scalars as 0-d arrays, as cupy gives)."""
    if isinstance(r, np.ndarray):
        return ndarray(r)
    if isinstance(r, np.generic):
        return ndarray(np.asarray(r))
    if isinstance(r, tuple):
        return tuple(_wrap(v) for v in r)
    if isinstance(r, list):
        return [_wrap(v) for v in r]
    if r is None or isinstance(r, (bool, int, float, complex, str, bytes, np.dtype, type)) \
            or type(r).__name__ == "flagsobj":
        return r
    return _Host(r)


class _Host:
    """A NumPy object (module, ufunc, Generator) seen from the device side: calls translate arrays."""

    def __init__(self, obj):
        self._obj = obj

    def __call__(self, *args, **kwargs):
        name = getattr(self._obj, "__name__", type(self._obj).__name__)
        if name in SIZE_FROM_DATA and args and isinstance(args[0], ndarray):
            _record_sync(name, args[0]._a)
        return _wrap(self._obj(*_unwrap(args, name), **_unwrap(kwargs, name)))

    def __getattr__(self, name):
        value = getattr(self._obj, name)
        if isinstance(value, (type, np.dtype)) or not (callable(value) or isinstance(value, types.ModuleType)):
            return value
        return _Host(value)


def _alloc(shape, dtype):
    dtype = np.dtype(dtype)
    shape = tuple(int(s) for s in (shape if isinstance(shape, (tuple, list)) else (shape,)))
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.full(nbytes + 2 * GUARD, 0xFF, dtype=np.uint8)
    _live[id(raw)] = raw
    return ndarray(raw[GUARD:GUARD + nbytes].view(dtype).reshape(shape))


def empty(shape, dtype=np.float64):
    return _alloc(shape, dtype)                                    # 0xFF bytes: NaN until written


def zeros(shape, dtype=np.float64):
    out = _alloc(shape, dtype)
    out._a[...] = 0
    return out


def ones(shape, dtype=np.float64):
    out = _alloc(shape, dtype)
    out._a[...] = 1
    return out


def _upload(a, dtype=None):
    host = _unwrap(a, "asarray", host_ok=True)
    host = np.asarray(host, dtype=dtype)
    if not isinstance(a, ndarray):
        uploads.append(host.shape)                                 # host -> device
    out = _alloc(host.shape, host.dtype)
    out._a[...] = host
    return out


def asarray(a, dtype=None):
    if isinstance(a, ndarray):
        return a if dtype is None or np.dtype(dtype) == a.dtype else a.astype(dtype)
    return _upload(a, dtype)                                       # host -> device copy


def ascontiguousarray(a, dtype=None):
    if isinstance(a, ndarray) and a._a.flags.c_contiguous and (dtype is None or np.dtype(dtype) == a.dtype):
        return a
    return _upload(a, dtype)


def asnumpy(a):
    return a.get() if isinstance(a, ndarray) else np.asarray(a)


def set_guards(value):
    for raw in list(_live.values()):
        raw[:GUARD] = value
        raw[raw.size - GUARD:] = value


def check_guards(what, value):
    """EmulatorError if a guard byte of a live array is not `value` (guards are reset to 0xFF)."""
    for raw in list(_live.values()):
        before = int((raw[:GUARD] != value).sum())
        after = int((raw[raw.size - GUARD:] != value).sum())
        if before or after:
            set_guards(0xFF)
            raise EmulatorError(f"{what} wrote outside an array of {raw.size - 2 * GUARD} bytes "
                                f"({before} guard bytes changed before it, {after} after it)")


# ------------------------------------------------------------------------------------------------
# kernels
# ------------------------------------------------------------------------------------------------
def _dims(d, what):
    d = tuple(int(x) for x in (d if isinstance(d, (tuple, list)) else (d,)))
    if not 1 <= len(d) <= 3 or min(d) < 1:
        raise EmulatorError(f"{what} {d}: expected 1 to 3 positive sizes")
    return d + (1,) * (3 - len(d))


def _as_bytes(kind, size, arg, i, name):
    """The bytes of scalar argument i, checked against the parameter's kind and size."""
    if not isinstance(arg, np.generic):
        raise TypeError(f"{name}: argument {i} is a Python {type(arg).__name__}; the parameter is a "
                        f"{size}-byte {'float' if kind == 'f' else 'integer'}: pass a NumPy scalar "
                        f"of that type (cupy.int32(...), dtype.type(...))")
    if arg.dtype.kind not in ("iu" if kind in "iu" else "f") or arg.dtype.itemsize != size:
        raise TypeError(f"{name}: argument {i} is {arg.dtype} but the parameter is a "
                        f"{size}-byte {'float' if kind == 'f' else 'integer'}")
    return arg.tobytes()


# (library, index) of the kernels seen to reach a barrier or a shuffle: fibers from then on
_FIBER_KERNELS = set()


def _restore(arrays, snapshot):
    """Copy the snapshot back into the launch's arrays (read-only views included)."""
    for (_, a), b in zip(arrays, snapshot):
        ctypes.memmove(a.ctypes.data, b.ctypes.data, a.nbytes)


class Function:
    """One kernel instantiation: call it as CuPy's RawKernel, (grid, block, args)."""

    def __init__(self, lib, index, name, atomic):
        self.name = name
        self.atomic = atomic
        self._key = (lib._name, index)                            # in _FIBER_KERNELS?
        self._launch = getattr(lib, f"emu_launch_{index}")
        self._launch.restype = ctypes.c_int
        signature = getattr(lib, f"emu_signature_{index}")
        signature.restype = ctypes.c_char_p
        self.params = [(w[0], w[1], int(w[2:])) for w in signature().decode().split()]

    def _pack(self, args):
        if len(args) != len(self.params):
            raise TypeError(f"{self.name}: {len(args)} arguments for {len(self.params)} parameters")
        keep, arrays = [], []
        ptrs = (ctypes.c_void_p * max(1, len(args)))()
        for i, (arg, (what, kind, size)) in enumerate(zip(args, self.params)):
            if what == "p":
                if not isinstance(arg, ndarray):
                    raise TypeError(f"{self.name}: argument {i} is a {type(arg).__name__}, the "
                                    f"parameter is a pointer: pass a device array")
                arg = arg._a
                if arg.dtype.kind not in ("iu" if kind in "iu" else "f") or arg.dtype.itemsize != size:
                    raise TypeError(f"{self.name}: argument {i} is a {arg.dtype} array but the parameter "
                                    f"points to {size}-byte {'floats' if kind == 'f' else 'integers'}")
                if not arg.flags.c_contiguous:
                    raise EmulatorError(f"{self.name}: argument {i} (shape {arg.shape}) is not "
                                        f"C-contiguous: the kernel would read it as if it were")
                cell = ctypes.c_void_p(arg.ctypes.data)
                arrays.append((i, arg))                            # (its NumPy array)
            else:
                cell = ctypes.create_string_buffer(_as_bytes(kind, size, arg, i, self.name), size)
            keep.append(cell)
            ptrs[i] = ctypes.cast(ctypes.pointer(cell), ctypes.c_void_p) if what == "p" \
                else ctypes.cast(cell, ctypes.c_void_p)
        return ptrs, keep, arrays

    def _run(self, dims, ptrs, reverse, arrays, inputs):
        """One launch; direct mode (no fibers) until the kernel is seen to need them."""
        err = ctypes.create_string_buffer(1024)
        while True:
            mode = int(reverse) | (0 if self._key in _FIBER_KERNELS else 2)
            rc = self._launch(dims, ptrs, mode, err, len(err))
            if rc == 2:                                            # reached a barrier or a shuffle
                _FIBER_KERNELS.add(self._key)
                _restore(arrays, inputs)                           # undo what the aborted run wrote
                set_guards(0xFF if not reverse else 0x01)
                continue
            if rc != 0:
                raise EmulatorError(f"{self.name}: {err.value.decode()}")
            return

    def __call__(self, grid, block, args, shared_mem=0, stream=None):
        grid, block = _dims(grid, "grid"), _dims(block, "block")
        if block[0] * block[1] * block[2] > 1024 or block[2] > 64:
            raise EmulatorError(f"{self.name}: block {block} has more than 1024 threads (or z > 64)")
        if grid[0] > 2 ** 31 - 1 or grid[1] > 65535 or grid[2] > 65535:
            raise EmulatorError(f"{self.name}: grid {grid} is over CUDA's limits (x < 2^31, y, z <= 65535)")
        if shared_mem:
            raise EmulatorError(f"{self.name}: dynamic shared memory is not emulated")
        dims = (ctypes.c_uint * 6)(*grid, *block)
        ptrs, keep, arrays = self._pack(args)
        launches[self.name] += 1
        before = [a.copy() for _, a in arrays]
        # run 1: thread order, guards 0xFF (a float read past an array is NaN, a store is seen);
        # run 2: reverse order from the same inputs, guards 0x01 (an atomicAdd or += past an array
        # changes them, where it leaves a NaN a NaN)
        self._run(dims, ptrs, False, arrays, before)
        check_guards(self.name, 0xFF)
        forward = [a.copy() for _, a in arrays]
        _restore(arrays, before)
        set_guards(0x01)
        try:
            self._run(dims, ptrs, True, arrays, before)
            check_guards(self.name, 0x01)
        finally:
            set_guards(0xFF)
        for (i, a), f in zip(arrays, forward):
            same = np.array_equal(a.reshape(-1).view(np.uint8), f.reshape(-1).view(np.uint8))
            if not same and self.atomic and a.dtype.kind == "f":
                tol = 1e-5 if a.dtype.itemsize == 4 else 1e-12
                same = np.allclose(a, f, rtol=tol, atol=tol * float(np.abs(f).max() or 1.0), equal_nan=True)
            if not same:
                raise EmulatorError(
                    f"{self.name}: argument {i} differs between a run in thread order and one in "
                    f"reverse order: a race between barriers (a __syncthreads missing?) or between "
                    f"blocks, or a read past an array (the two runs have different guard bytes)")
        del keep


class RawModule:
    """CuPy's RawModule(code=, options=, name_expressions=), compiled for the CPU by g++."""

    def __init__(self, code, options=(), name_expressions=()):
        self.names = tuple(name_expressions)
        self._atomic = "atomicAdd(" in code
        if all((code, name) in _prebuilt for name in self.names):
            self._found = {name: _prebuilt[(code, name)] for name in self.names}
        else:
            lib = build(code, self.names)
            self._found = {name: (lib, i) for i, name in enumerate(self.names)}

    def get_function(self, name):
        if name not in self.names:
            raise KeyError(f"{name} is not one of the name_expressions {list(self.names)}")
        lib, index = self._found[name]
        return Function(lib, index, name, self._atomic)


# ------------------------------------------------------------------------------------------------
# the stand-in cupy module, and kernels.cuda imported against it
# ------------------------------------------------------------------------------------------------
class _Device:
    def synchronize(self):
        return None


class _Event:
    """cupy.cuda.Event: a host timestamp (the emulator runs everything before it returns)."""

    def __init__(self, *args, **kwargs):
        self.time = None

    def record(self, stream=None):
        self.time = time.perf_counter()

    def synchronize(self):
        return None


def _elapsed_ms(start, stop):
    return (stop.time - start.time) * 1e3


class _RandomState:
    """cupy.random.RandomState: its methods take a dtype (NumPy's RandomState's do not)."""

    def __init__(self, seed=None):
        self._rng = np.random.default_rng(seed)

    def standard_normal(self, size=None, dtype=np.float64):
        return _upload(self._rng.standard_normal(size).astype(dtype))

    def randint(self, low, high=None, size=None, dtype=np.int64):
        return _upload(self._rng.integers(low, high, size=size).astype(dtype))


class _RandomModule(_Host):
    """cupy.random: NumPy's (default_rng, ...) with cupy's RandomState."""
    RandomState = _RandomState


def _device_properties(device=0):
    # no "clockRate": CUDA 13 removed it from cudaDeviceProp (and the GPU machines run CUDA 13)
    return {"name": b"CPU (cuda_emulator)", "totalGlobalMem": 0,
            "multiProcessorCount": 1}


def make_cupy():
    """A module named cupy: the functions above, and NumPy's others with arrays translated."""
    cp = types.ModuleType("cupy_emulated", "CPU stand-in for cupy (cuda_emulator)")
    numpy_side = _Host(np)
    cp.__getattr__ = lambda name: getattr(numpy_side, name)
    for name in ("ndarray", "empty", "zeros", "ones", "asarray", "ascontiguousarray", "asnumpy",
                 "RawModule"):
        setattr(cp, name, globals()[name])
    cp.cuda = types.SimpleNamespace(Device=_Device, Event=_Event, get_elapsed_time=_elapsed_ms,
                                    runtime=types.SimpleNamespace(getDeviceProperties=_device_properties))
    cp.random = _RandomModule(np.random)
    cp.__version__ = "emulated"
    cp.EMULATED = True
    return cp


def _swapped(module_name):
    """Whether `module_name` is one of the modules `load` imports against the stand-in cupy."""
    return module_name in ("cupy", "tinygrad_gpt.kernels.cuda") or \
        module_name.startswith(("cupy.", "tinygrad_gpt.kernels.cuda."))


@functools.lru_cache(maxsize=None)
def load():
    """(cupy, cuda): the stand-in cupy and a private import of kernels.cuda that uses it.

    The stand-in is registered in sys.modules as "cupy_emulated" (the package name its arrays give,
    so kernels.reference.get_array_module finds it); "cupy" and "tinygrad_gpt.kernels.cuda" are left
    as they were.
    One per process: the kernel files are compiled once (cached on disk across runs)."""
    from tinygrad_gpt import kernels
    ours = [k for k in sys.modules if _swapped(k)]
    saved = {k: sys.modules.pop(k) for k in ours}
    had = "cuda" in vars(kernels)
    old = vars(kernels).get("cuda")
    cp = make_cupy()
    sys.modules["cupy"] = cp
    try:
        cuda = importlib.import_module("tinygrad_gpt.kernels.cuda")
        files = [sys.modules[f"tinygrad_gpt.kernels.cuda.{name}"] for name in cuda.KERNEL_FILES]
        preamble = sys.modules["tinygrad_gpt.kernels.cuda._common"].PREAMBLE
    finally:
        for k in [k for k in sys.modules if _swapped(k)]:
            del sys.modules[k]
        sys.modules.update(saved)
        if had:
            kernels.cuda = old
        elif "cuda" in vars(kernels):
            del kernels.cuda
    sys.modules["cupy_emulated"] = cp
    # every instantiation of a file in one g++ run (files in parallel), not one run per
    # instantiation at its first launch as NVRTC does: one compilation per kernel file
    jobs = [(preamble + f.SOURCE, tuple(f.NAME_EXPRESSIONS)) for f in files]
    for (code, names), lib in zip(jobs, build_all(jobs)):
        for i, name in enumerate(names):
            _prebuilt[(code, name)] = (lib, i)
    return cp, cuda


def activate(monkeypatch):
    """Make device "cuda" the emulator for one test: `cupy` (sys.modules and tinygrad_gpt.backend)
    is the stand-in, and kernels.for_array gives the kernels.cuda it compiled. `monkeypatch`
    (pytest's) undoes it after the test. Returns the stand-in cupy; skips the test without g++."""
    import pytest

    from tinygrad_gpt import kernels
    if compiler() is None:
        pytest.skip("the CUDA emulator needs g++ (or $CXX) with C++17")
    from tinygrad_gpt import backend
    cp, cuda = load()
    monkeypatch.setitem(sys.modules, "cupy", cp)
    monkeypatch.setattr(backend, "_cupy", cp)
    monkeypatch.setattr(kernels, "_cuda", cuda)
    return cp
