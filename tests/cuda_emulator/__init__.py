"""Run the CUDA C of kernels/cuda on the CPU: a stand-in `cupy` whose RawModule compiles the
kernels' own source with g++ against `emulator.h`, for the tests on machines without a GPU.

`load()` returns (cupy, cuda): this stand-in module and a private import of `kernels.cuda` made
against it (sys.modules is left as it was: nothing else in the test session sees a cupy). Then
`cuda.attention_forward(cupy.asarray(q), ...)` runs the same Python wrapper and the same CUDA C
text as on a GPU; only the hardware is replaced:

- every thread of a block is a fiber with its own stack; `__syncthreads`, the warp shuffles,
  `__shared__` and `atomicAdd` follow CUDA's rules, and breaking them (a barrier in divergent
  code, a shuffle after some lanes returned, over 48 KiB of shared memory) raises EmulatorError;
- each launch runs twice, with the threads of every block resumed in thread order and then in
  reverse order, from the same inputs; if any output differs, the kernel has a race between
  barriers and EmulatorError says which argument differed (kernels that use atomicAdd are
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
that give the same answer in both orders. A GPU run (tests/test_cuda_kernels.py) is still the
real check.

Follows: the idea of HIP-CPU / the Numba CUDA simulator (run GPU code as CPU threads), for CUDA C
strings. Needs: g++ (or $CXX) with C++17, Linux (ucontext).
"""
import ctypes
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
CXXFLAGS = ("-std=c++17", "-O1", "-shared", "-fPIC", "-w")


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
                     f'extern "C" int emu_launch_{i}(const unsigned int* dims, void** args, int reverse,'
                     f' char* err, int errlen) {{\n'
                     f'    return emu::launch_kernel(&{name}, dims, args, reverse, err, errlen);\n}}\n')
    return "\n".join(lines)


def _plan(code, names):
    """(C++ text, library path) of `code` with the launchers of `names`."""
    cxx = compiler()
    if cxx is None:
        raise EmulatorError("the CUDA emulator needs a C++17 compiler: install g++ or set CXX")
    text = f'#include "{HEADER}"\n{translate(code)}\n{_launchers(names)}'
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


class ndarray(np.ndarray):
    """A 'device' array: NumPy memory between guard bytes. `.get()` copies it to the host."""

    def get(self):
        return np.array(self, copy=True).view(np.ndarray)


def _alloc(shape, dtype):
    dtype = np.dtype(dtype)
    shape = tuple(int(s) for s in (shape if isinstance(shape, (tuple, list)) else (shape,)))
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.full(nbytes + 2 * GUARD, 0xFF, dtype=np.uint8)
    _live[id(raw)] = raw
    return raw[GUARD:GUARD + nbytes].view(dtype).reshape(shape).view(ndarray)


def empty(shape, dtype=np.float64):
    return _alloc(shape, dtype)                                    # 0xFF bytes: NaN until written


def zeros(shape, dtype=np.float64):
    out = _alloc(shape, dtype)
    out[...] = 0
    return out


def ones(shape, dtype=np.float64):
    out = _alloc(shape, dtype)
    out[...] = 1
    return out


def asarray(a, dtype=None):
    if isinstance(a, ndarray) and (dtype is None or np.dtype(dtype) == a.dtype):
        return a
    host = np.asarray(a, dtype=dtype)
    out = _alloc(host.shape, host.dtype)
    out[...] = host
    return out


def ascontiguousarray(a, dtype=None):
    if isinstance(a, ndarray) and a.flags.c_contiguous and (dtype is None or np.dtype(dtype) == a.dtype):
        return a
    host = np.asarray(a, dtype=dtype)
    out = _alloc(host.shape, host.dtype)
    out[...] = host
    return out


def broadcast_to(a, shape):
    return np.broadcast_to(a, shape, subok=True)


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


class Function:
    """One kernel instantiation: call it as CuPy's RawKernel, (grid, block, args)."""

    def __init__(self, lib, index, name, atomic):
        self.name = name
        self.atomic = atomic
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
                if not isinstance(arg, np.ndarray):
                    raise TypeError(f"{self.name}: argument {i} is a {type(arg).__name__}, the "
                                    f"parameter is a pointer: pass a device array")
                if arg.dtype.kind not in ("iu" if kind in "iu" else "f") or arg.dtype.itemsize != size:
                    raise TypeError(f"{self.name}: argument {i} is a {arg.dtype} array but the parameter "
                                    f"points to {size}-byte {'floats' if kind == 'f' else 'integers'}")
                if not arg.flags.c_contiguous:
                    raise EmulatorError(f"{self.name}: argument {i} (shape {arg.shape}) is not "
                                        f"C-contiguous: the kernel would read it as if it were")
                cell = ctypes.c_void_p(arg.ctypes.data)
                arrays.append((i, arg))
            else:
                cell = ctypes.create_string_buffer(_as_bytes(kind, size, arg, i, self.name), size)
            keep.append(cell)
            ptrs[i] = ctypes.cast(ctypes.pointer(cell), ctypes.c_void_p) if what == "p" \
                else ctypes.cast(cell, ctypes.c_void_p)
        return ptrs, keep, arrays

    def _run(self, dims, ptrs, reverse):
        err = ctypes.create_string_buffer(1024)
        if self._launch(dims, ptrs, int(reverse), err, len(err)) != 0:
            raise EmulatorError(f"{self.name}: {err.value.decode()}")

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
        before = [a.copy() for _, a in arrays]
        # run 1: thread order, guards 0xFF (a float read past an array is NaN, a store is seen);
        # run 2: reverse order from the same inputs, guards 0x01 (an atomicAdd or += past an array
        # changes them, where it leaves a NaN a NaN)
        self._run(dims, ptrs, reverse=False)
        check_guards(self.name, 0xFF)
        forward = [a.copy() for _, a in arrays]
        for (_, a), b in zip(arrays, before):                      # (read-only views too)
            ctypes.memmove(a.ctypes.data, b.ctypes.data, a.nbytes)
        set_guards(0x01)
        try:
            self._run(dims, ptrs, reverse=True)
            check_guards(self.name, 0x01)
        finally:
            set_guards(0xFF)
        for (i, a), f in zip(arrays, forward):
            same = a.tobytes() == f.tobytes()
            if not same and self.atomic and a.dtype.kind == "f":
                tol = 1e-5 if a.dtype.itemsize == 4 else 1e-12
                same = np.allclose(a, f, rtol=tol, atol=tol * float(np.abs(f).max() or 1.0), equal_nan=True)
            if not same:
                raise EmulatorError(
                    f"{self.name}: argument {i} differs between a run in thread order and one in "
                    f"reverse order: a race between barriers (a __syncthreads missing?), or a read "
                    f"past an array (the two runs have different guard bytes)")
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


def _to_device(result):
    if isinstance(result, np.ndarray) and not isinstance(result, ndarray):
        return asarray(result)
    if isinstance(result, tuple):
        return tuple(_to_device(r) for r in result)
    return result


def _numpy_attribute(name):
    """cupy.<anything else>: NumPy's, with array results as device arrays (as cupy's would be)."""
    obj = getattr(np, name)
    if not callable(obj) or isinstance(obj, type):
        return obj

    def device_result(*args, **kwargs):
        return _to_device(obj(*args, **kwargs))
    return device_result


def make_cupy():
    """A module named cupy with what kernels/cuda, kernels/reference and the kernel tests use."""
    cp = types.ModuleType("cupy", "CPU stand-in for cupy (tests/cuda_emulator)")
    cp.__getattr__ = _numpy_attribute
    for name in ("ndarray", "empty", "zeros", "ones", "asarray", "ascontiguousarray", "broadcast_to",
                 "RawModule"):
        setattr(cp, name, globals()[name])
    for name in ("float16", "float32", "float64", "int32", "int64", "bool_", "argmax", "isnan",
                 "isfinite", "allclose"):
        setattr(cp, name, getattr(np, name))
    cp.cuda = types.SimpleNamespace(Device=_Device)
    cp.EMULATED = True
    return cp


def load():
    """(cupy, cuda): the stand-in cupy and a private import of kernels.cuda that uses it."""
    import kernels
    ours = [k for k in sys.modules if k in ("cupy", "kernels.cuda") or k.startswith(("cupy.", "kernels.cuda."))]
    saved = {k: sys.modules.pop(k) for k in ours}
    had = "cuda" in vars(kernels)
    old = vars(kernels).get("cuda")
    cp = make_cupy()
    sys.modules["cupy"] = cp
    try:
        cuda = importlib.import_module("kernels.cuda")
        files = [sys.modules[f"kernels.cuda.{name}"] for name in cuda.KERNEL_FILES]
        preamble = sys.modules["kernels.cuda._common"].PREAMBLE
        # the fallbacks to the reference (float16, hs > 64) run it with cupy as the array module,
        # as on a GPU: a private copy of kernels/reference.py whose get_array_module knows our arrays
        ref = types.ModuleType("kernels_reference_emulated")
        path = pathlib.Path(kernels.reference.__file__)
        exec(compile(path.read_text(encoding="utf-8"), str(path), "exec"), ref.__dict__)
        ref.get_array_module = lambda x: cp if isinstance(x, ndarray) else np
        for module in [cuda, *files]:
            if hasattr(module, "reference"):
                module.reference = ref
        cuda.get_array_module = ref.get_array_module
    finally:
        for k in [k for k in sys.modules if k in ("cupy", "kernels.cuda") or k.startswith(("cupy.", "kernels.cuda."))]:
            del sys.modules[k]
        sys.modules.update(saved)
        if had:
            kernels.cuda = old
        elif "cuda" in vars(kernels):
            del kernels.cuda
    # every instantiation of a file in one g++ run (a file at a time, in parallel), not one run
    # per instantiation at its first launch as NVRTC does: 6 compilations instead of 40
    jobs = [(preamble + f.SOURCE, tuple(f.NAME_EXPRESSIONS)) for f in files]
    for (code, names), lib in zip(jobs, build_all(jobs)):
        for i, name in enumerate(names):
            _prebuilt[(code, name)] = (lib, i)
    return cp, cuda
