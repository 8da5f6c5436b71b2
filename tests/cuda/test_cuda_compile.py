"""Every CUDA C source in tinygrad_gpt/kernels/cuda compiles with NVRTC, for several GPU generations, without a GPU.

The sources are read from the kernel files with `ast` (PREAMBLE from `_common.py`, SOURCE and
NAME_EXPRESSIONS from each kernel file), so neither cupy nor a GPU is needed: only NVRTC. Every
NVRTC version found runs the checks (ids nvrtc12.9, nvrtc13.5, ...): cupy's bindings, the
`nvidia-cuda-nvrtc-cu12` (CUDA 12) and `nvidia-cuda-nvrtc` (CUDA 13) wheels through ctypes, a
system toolkit; an architecture a version no longer compiles for (CUDA 13 dropped compute_70) is
skipped for that version. Without NVRTC the tests skip and say how to get it. What this catches:
syntax and type errors, template instantiations that do not exist (every name expression the
wrappers launch is resolved to its lowered name), and shared memory above the 48 KiB static limit
(checked on the PTX). What it does not: anything about results (tests/cuda/test_cuda_kernels_emulated.py
runs the kernels on the CPU; tests/cuda/test_cuda_kernels.py on a GPU).

Follows: llm.c's habit of building every dev/cuda kernel in CI. Does not: run a kernel.
"""
import ast
import re

import pytest

from tinygrad_gpt.cuda_emulator.nvrtc import (ARCHS, CUDA_DIR, KERNEL_FILES, NVRTC_HINT, OPTIONS, STATIC_SHARED_LIMIT,
                                 find_all_nvrtc, kernel_sources)

NVRTCS = find_all_nvrtc()


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
    """tinygrad_gpt/kernels/cuda/__init__.py's KERNEL_FILES and this test's list agree (read without cupy)."""
    tree = ast.parse((CUDA_DIR / "__init__.py").read_text(encoding="utf-8"))
    listed = [ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
              and getattr(n.targets[0], "id", None) == "KERNEL_FILES"]
    assert listed == [KERNEL_FILES]


def test_sources_seen_by_the_compile_test_are_the_ones_compiled():
    """Where cupy imports, the module attributes equal what ast reads (no hidden string building)."""
    pytest.importorskip("cupy", reason="cupy is not installed (pip install cupy-cuda12x)")
    import importlib
    common = importlib.import_module("tinygrad_gpt.kernels.cuda._common")
    for name, source, exprs in kernel_sources():
        module = importlib.import_module(f"tinygrad_gpt.kernels.cuda.{name}")
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
        pytest.fail(f"tinygrad_gpt/kernels/cuda/{name}.py does not compile for {arch}:\n{exc}")
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
