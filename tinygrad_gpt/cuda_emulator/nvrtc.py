"""The CUDA C of tinygrad_gpt/kernels/cuda, read and compiled without cupy or a GPU: only NVRTC.

`kernel_sources()` reads each kernel file's PREAMBLE / SOURCE / NAME_EXPRESSIONS with `ast` (so
kernels.cuda, which imports cupy, is never imported); `find_all_nvrtc()` finds every NVRTC version
on the machine (cupy's bindings, the `nvidia-cuda-nvrtc-cu12` and `nvidia-cuda-nvrtc` wheels, a
system toolkit) and wraps each with one `compile(source, name_expressions, options) -> (ptx,
lowered names)`. Used by tests/cuda/test_cuda_compile.py (every kernel compiles for several GPU
generations) and benchmarks/cuda_resources.py (ptxas registers and spills). It lives beside the
emulator because both are how the CUDA side is checked on a machine without a GPU.

Does not: run a kernel (the emulator in this package does, on the CPU), or need a GPU.
"""
import ast
import ctypes
import ctypes.util
import glob
import os
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1]  # tinygrad_gpt/
CUDA_DIR = PACKAGE / "kernels" / "cuda"
KERNEL_FILES = ("layernorm", "rmsnorm", "rotary", "gelu", "relu2", "cross_entropy", "attention", "embedding", "adamw", "dropout", "muon")
ARCHS = ("compute_70", "compute_75", "compute_80", "compute_90")  # V100, T4, A100, H100/H200
OPTIONS = ["--std=c++14"]
STATIC_SHARED_LIMIT = 48 * 1024
NVRTC_HINT = ("pip install nvidia-cuda-nvrtc-cu12 nvidia-cuda-nvrtc (CUDA 12 and 13; or cupy) to run the "
              "NVRTC compile checks")


# ------------------------------------------------------------------------------------------------
# reading the sources without importing kernels.cuda (which needs cupy)
# ------------------------------------------------------------------------------------------------
def module_constants(path, names):
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
    preamble = module_constants(CUDA_DIR / "_common.py", {"PREAMBLE"})["PREAMBLE"]
    out = []
    for name in KERNEL_FILES:
        values = module_constants(CUDA_DIR / f"{name}.py", {"SOURCE", "NAME_EXPRESSIONS"})
        assert set(values) == {"SOURCE", "NAME_EXPRESSIONS"}, f"{name}.py lacks SOURCE or NAME_EXPRESSIONS"
        out.append((name, preamble + values["SOURCE"], list(values["NAME_EXPRESSIONS"])))
    return out


# ------------------------------------------------------------------------------------------------
# NVRTC: cupy's bindings, or the C API through ctypes
# ------------------------------------------------------------------------------------------------
class _CtypesNVRTC:
    """The NVRTC calls the compile checks need, through ctypes."""

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


def find_all_nvrtc():
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
