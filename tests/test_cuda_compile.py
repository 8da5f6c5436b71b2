"""Every CUDA C source in kernels/cuda compiles with NVRTC, for several GPU generations, without a GPU.

The sources are read from the kernel files with `ast` (PREAMBLE from `_common.py`, SOURCE and
NAME_EXPRESSIONS from each kernel file), so neither cupy nor a GPU is needed: only NVRTC. Every
NVRTC version found runs the checks (ids nvrtc12.9, nvrtc13.5, ...): cupy's bindings, the
`nvidia-cuda-nvrtc-cu12` (CUDA 12) and `nvidia-cuda-nvrtc` (CUDA 13) wheels through ctypes, a
system toolkit; an architecture a version no longer compiles for (CUDA 13 dropped compute_70) is
skipped for that version. Without NVRTC the tests skip and say how to get it. What this catches:
syntax and type errors, template instantiations that do not exist (every name expression the
wrappers launch is resolved to its lowered name), and shared memory above the 48 KiB static limit
(checked on the PTX). What it does not: anything about results (tests/test_cuda_kernels_emulated.py
runs the kernels on the CPU; tests/test_cuda_kernels.py on a GPU).

Follows: llm.c's habit of building every dev/cuda kernel in CI. Does not: run a kernel.
"""
import ast
import ctypes
import ctypes.util
import glob
import os
import pathlib
import re

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
CUDA_DIR = REPO / "kernels" / "cuda"
KERNEL_FILES = ("layernorm", "gelu", "cross_entropy", "attention", "embedding", "adamw", "dropout")
ARCHS = ("compute_70", "compute_75", "compute_80", "compute_90")  # V100, T4, A100, H100/H200
OPTIONS = ["--std=c++14"]
STATIC_SHARED_LIMIT = 48 * 1024
NVRTC_HINT = ("pip install nvidia-cuda-nvrtc-cu12 nvidia-cuda-nvrtc (CUDA 12 and 13; or cupy) to run the "
              "NVRTC compile checks")


# ------------------------------------------------------------------------------------------------
# reading the sources without importing kernels.cuda (which needs cupy)
# ------------------------------------------------------------------------------------------------
def _module_constants(path, names):
    """{name: value} of top-level assignments in a file, evaluated with a few known helpers."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = {}
    namespace = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 \
                and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            # plain constants (tile sizes, head sizes) that a NAME_EXPRESSIONS expression may use
            try:
                namespace[name] = ast.literal_eval(node.value)
            except ValueError:
                pass
            if name in names:
                found[name] = node
        elif isinstance(node, ast.FunctionDef) and node.name.startswith("_name"):
            # helper that builds template names (attention.py); plain Python over the constants
            exec(compile(ast.Module(body=[node], type_ignores=[]), str(path), "exec"), namespace)
    values = {}
    for name, node in found.items():
        if name in ("SOURCE", "PREAMBLE"):
            assert isinstance(node.value, ast.Constant) and isinstance(node.value.value, str), \
                f"{path.name}: {name} must be a plain string literal (the compile test reads it with ast)"
            values[name] = node.value.value
        else:
            values[name] = eval(compile(ast.Expression(node.value), str(path), "eval"), dict(namespace))
    return values


def kernel_sources():
    """[(file name, PREAMBLE + SOURCE, NAME_EXPRESSIONS)] for every kernel file."""
    preamble = _module_constants(CUDA_DIR / "_common.py", {"PREAMBLE"})["PREAMBLE"]
    out = []
    for name in KERNEL_FILES:
        values = _module_constants(CUDA_DIR / f"{name}.py", {"SOURCE", "NAME_EXPRESSIONS"})
        assert set(values) == {"SOURCE", "NAME_EXPRESSIONS"}, f"{name}.py lacks SOURCE or NAME_EXPRESSIONS"
        out.append((name, preamble + values["SOURCE"], list(values["NAME_EXPRESSIONS"])))
    return out


# ------------------------------------------------------------------------------------------------
# NVRTC: cupy's bindings, or the C API through ctypes
# ------------------------------------------------------------------------------------------------
class _CtypesNVRTC:
    """The NVRTC calls this test needs, through ctypes."""

    def __init__(self, lib):
        self.lib = lib
        lib.nvrtcGetErrorString.restype = ctypes.c_char_p

    def version(self):
        major, minor = ctypes.c_int(), ctypes.c_int()
        self.lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor))
        return major.value, minor.value

    def _check(self, status, what, prog=None):
        if status != 0:
            log = self.log(prog) if prog is not None else ""
            raise RuntimeError(f"{what}: {self.lib.nvrtcGetErrorString(status).decode()}\n{log}")

    def log(self, prog):
        size = ctypes.c_size_t()
        self.lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        buf = ctypes.create_string_buffer(size.value)
        self.lib.nvrtcGetProgramLog(prog, buf)
        return buf.value.decode(errors="replace")

    def compile(self, source, name_expressions, options):
        """(ptx, {name expression: lowered name}); raises RuntimeError with the compiler log."""
        prog = ctypes.c_void_p()
        self._check(self.lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), b"kernel.cu", 0,
                                                None, None), "nvrtcCreateProgram")
        try:
            for expr in name_expressions:
                self._check(self.lib.nvrtcAddNameExpression(prog, expr.encode()), "nvrtcAddNameExpression")
            opts = (ctypes.c_char_p * len(options))(*[o.encode() for o in options])
            self._check(self.lib.nvrtcCompileProgram(prog, len(options), opts), "nvrtcCompileProgram", prog)
            lowered = {}
            for expr in name_expressions:
                out = ctypes.c_char_p()
                self._check(self.lib.nvrtcGetLoweredName(prog, expr.encode(), ctypes.byref(out)),
                            f"nvrtcGetLoweredName({expr})")
                lowered[expr] = out.value.decode()
            size = ctypes.c_size_t()
            self._check(self.lib.nvrtcGetPTXSize(prog, ctypes.byref(size)), "nvrtcGetPTXSize")
            buf = ctypes.create_string_buffer(size.value)
            self._check(self.lib.nvrtcGetPTX(prog, buf), "nvrtcGetPTX")
            return buf.value.decode(), lowered
        finally:
            self.lib.nvrtcDestroyProgram(ctypes.byref(prog))


class _CupyNVRTC:
    def __init__(self, nvrtc):
        self.nvrtc = nvrtc

    def version(self):
        return tuple(self.nvrtc.getVersion())

    def compile(self, source, name_expressions, options):
        nvrtc = self.nvrtc
        prog = nvrtc.createProgram(source, "kernel.cu", [], [])
        try:
            for expr in name_expressions:
                nvrtc.addNameExpression(prog, expr)
            try:
                nvrtc.compileProgram(prog, options)
            except nvrtc.NVRTCError as exc:
                raise RuntimeError(f"nvrtcCompileProgram: {exc}\n{nvrtc.getProgramLog(prog)}") from None
            lowered = {expr: nvrtc.getLoweredName(prog, expr) for expr in name_expressions}
            ptx = nvrtc.getPTX(prog)
            return (ptx.decode() if isinstance(ptx, bytes) else ptx), lowered
        finally:
            nvrtc.destroyProgram(prog)


def _find_all_nvrtc():
    """[(label, wrapper)] for every NVRTC found, one per version: cupy's, the pip wheels' (CUDA 12:
    nvidia-cuda-nvrtc-cu12, CUDA 13: nvidia-cuda-nvrtc), a system toolkit's."""
    found = []
    try:
        from cupy_backends.cuda.libs import nvrtc
        nvrtc.getVersion()
        found.append(_CupyNVRTC(nvrtc))
    except Exception:  # cupy missing, or its NVRTC cannot be loaded
        pass
    candidates = []
    for package in ("nvidia.cuda_nvrtc", "nvidia.cu13"):
        try:
            module = __import__(package, fromlist=["_"])
        except ImportError:
            continue
        for base in module.__path__:
            candidates += sorted(glob.glob(os.path.join(base, "lib", "libnvrtc.so*")))
    system = ctypes.util.find_library("nvrtc")
    if system:
        candidates.append(system)
    candidates += sorted(glob.glob("/usr/local/cuda*/lib64/libnvrtc.so*"))
    for path in candidates:
        if "builtins" in os.path.basename(path):
            continue
        try:
            found.append(_CtypesNVRTC(ctypes.CDLL(path)))
        except OSError:
            continue
    by_version = {}
    for wrapper in found:
        try:
            version = wrapper.version()
        except Exception:
            continue
        by_version.setdefault(version, wrapper)
    return [(f"nvrtc{major}.{minor}", wrapper) for (major, minor), wrapper in sorted(by_version.items())]


def _find_nvrtc():
    """An NVRTC wrapper (the newest found), or None."""
    found = _find_all_nvrtc()
    return found[-1][1] if found else None


NVRTCS = _find_all_nvrtc()


@pytest.fixture(scope="module", params=NVRTCS or [("none", None)], ids=[label for label, _ in NVRTCS] or ["none"])
def nvrtc(request):
    label, found = request.param
    if found is None:
        pytest.skip(f"NVRTC is not available on this machine: {NVRTC_HINT}")
    return found


# ------------------------------------------------------------------------------------------------
# tests
# ------------------------------------------------------------------------------------------------
def test_every_kernel_file_is_read():
    sources = kernel_sources()
    assert [name for name, _, _ in sources] == list(KERNEL_FILES)
    for name, source, exprs in sources:
        assert exprs, f"{name}.py: no NAME_EXPRESSIONS"
        assert "#include" not in source, f"{name}.py: NVRTC finds no headers unless told where; no #include"
        for expr in exprs:
            assert expr.split("<")[0] in source, f"{name}.py: {expr} names no kernel of its SOURCE"


def test_kernel_files_match_the_package_list():
    """kernels/cuda/__init__.py's KERNEL_FILES and this test's list agree (read without cupy)."""
    tree = ast.parse((CUDA_DIR / "__init__.py").read_text(encoding="utf-8"))
    listed = [ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
              and getattr(n.targets[0], "id", None) == "KERNEL_FILES"]
    assert listed == [KERNEL_FILES]


def test_sources_seen_by_the_compile_test_are_the_ones_compiled():
    """Where cupy imports, the module attributes equal what ast reads (no hidden string building)."""
    pytest.importorskip("cupy", reason="cupy is not installed (pip install cupy-cuda12x)")
    import importlib
    common = importlib.import_module("kernels.cuda._common")
    for name, source, exprs in kernel_sources():
        module = importlib.import_module(f"kernels.cuda.{name}")
        assert common.PREAMBLE + module.SOURCE == source
        assert list(module.NAME_EXPRESSIONS) == exprs


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", KERNEL_FILES)
def test_nvrtc_compiles(nvrtc, name, arch):
    source, exprs = next((s, e) for n, s, e in kernel_sources() if n == name)
    try:
        ptx, lowered = nvrtc.compile(source, exprs, OPTIONS + [f"--gpu-architecture={arch}"])
    except RuntimeError as exc:
        if "invalid value for --gpu-architecture" in str(exc):     # e.g. CUDA 13 dropped compute_70
            pytest.skip(f"NVRTC {nvrtc.version()} does not compile for {arch}")
        pytest.fail(f"kernels/cuda/{name}.py does not compile for {arch}:\n{exc}")
    for expr, low in lowered.items():
        assert low and f".entry {low}" in ptx, f"{name}: {expr} has no kernel entry in the PTX"
    # static shared memory per kernel: PTX declares each __shared__ array at module scope with its
    # byte size, named _ZZ<the kernel's mangled name>E<length><array name>
    shared = re.findall(r"\.shared \.align \d+ \.b8 ([\w$]+)\[(\d+)\]", ptx)
    for expr, low in lowered.items():
        total = sum(int(size) for var, size in shared if var.startswith("_ZZ" + low[2:] + "E"))
        assert total <= STATIC_SHARED_LIMIT, f"{name}: {expr} uses {total} B of static shared memory"
    if name == "attention":
        assert shared, "the shared-memory check found no declaration to check (PTX format changed?)"
    # no local-memory arrays: register arrays indexed only by constants (spills are ptxas's, unseen here)
    assert ".local" not in ptx, f"{name}: a register array became local memory (a run-time index?)"


def test_nvrtc_rejects_a_broken_source(nvrtc):
    """Control: the check can fail (an undefined identifier is a compile error, with its log)."""
    with pytest.raises(RuntimeError, match="undefined"):
        nvrtc.compile('extern "C" __global__ void broken(float* x) { x[0] = undefined_thing; }', [],
                      OPTIONS + ["--gpu-architecture=compute_80"])
