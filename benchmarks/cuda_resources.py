"""Registers, spills and shared memory of every CUDA kernel, from ptxas, without a GPU.

    python benchmarks/cuda_resources.py                 # sm_90 (H100 / H200)
    python benchmarks/cuda_resources.py --arch sm_80    # A100

Each kernel file's CUDA C (read by cuda_emulator.nvrtc, as the compile checks read it: without cupy) goes through
NVRTC to PTX for the architecture, then through `ptxas -v`, which reports per kernel: registers
per thread, stack frame, spill stores / loads (registers that did not fit, moved to local memory:
slow, L1-cached memory traffic), and static shared memory. From the registers and the launch's
block size (the wrappers' constants) it prints the blocks per multiprocessor the register file
allows (65536 registers, at most 32 blocks and 2048 threads, as on sm_80 / sm_90); a GPU run
measures whether that matters.

Needs NVRTC (`pip install nvidia-cuda-nvrtc-cu12`, the `nvrtc` extra) and ptxas (`pip install
nvidia-cuda-nvcc-cu12`, or a CUDA toolkit on the PATH).

Follows: `nvcc -Xptxas -v`, the compiler's resource report. Does not: time anything.
"""
import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


from tinygrad_gpt.cuda_emulator.nvrtc import CUDA_DIR, OPTIONS, find_all_nvrtc, kernel_sources, module_constants


def launch_blocks():
    """{kernel name prefix: (threads a block for float, for double)}, read from the wrappers'
    constants in tinygrad_gpt/kernels/cuda (with ast, as the compile test reads them: no cupy needed)."""
    threads = module_constants(CUDA_DIR / "_common.py", {"THREADS"})["THREADS"]
    cols = module_constants(CUDA_DIR / "layernorm.py", {"COLS_PER_BLOCK"})["COLS_PER_BLOCK"]
    row = module_constants(CUDA_DIR / "cross_entropy.py", {"BLOCK_ROW_THREADS"})["BLOCK_ROW_THREADS"]
    tiles = module_constants(CUDA_DIR / "attention.py", {"FORWARD_TILES", "DKDV_TILES"})
    fwd, dkdv = tiles["FORWARD_TILES"], tiles["DKDV_TILES"]
    # the forward and dq kernels launch BR threads a block (a query row each), dk/dv BC (a key each)
    return {"layernorm_backward_params": (cols, cols), "ce_forward_block": (row, row),
            "attention_forward": (fwd["float"][0], fwd["double"][0]),
            "attention_backward_dq": (fwd["float"][0], fwd["double"][0]),
            "attention_backward_dkdv": (dkdv["float"][1], dkdv["double"][1]),
            "": (threads, threads)}                                # every other kernel: THREADS


BLOCK = launch_blocks()


def find_ptxas():
    found = shutil.which("ptxas")
    if found:
        return found
    try:
        import nvidia.cuda_nvcc
        for base in nvidia.cuda_nvcc.__path__:
            for path in glob.glob(os.path.join(base, "bin", "ptxas")):
                if not os.access(path, os.X_OK):
                    os.chmod(path, 0o755)                       # the wheel unpacks it without +x
                return path
    except ImportError:
        pass
    return None


def block_size(expr):
    double = "<double" in expr
    prefix = next(p for p in sorted(BLOCK, key=len, reverse=True) if expr.startswith(p))  # "" matches all
    return BLOCK[prefix][double]


def report(ptxas, nvrtc, arch):
    rows = []
    for name, source, exprs in kernel_sources():
        ptx, lowered = nvrtc.compile(source, exprs, OPTIONS + [f"--gpu-architecture=compute_{arch[3:]}"])
        expr_of = {low: expr for expr, low in lowered.items()}
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"{name}.ptx"
            path.write_text(ptx)
            proc = subprocess.run([ptxas, f"-arch={arch}", "-v", "-o", os.devnull, str(path)],
                                  capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"ptxas failed on {name}:\n{proc.stderr}")
        current, frame = None, None
        for line in proc.stderr.splitlines():
            m = re.search(r"Compiling entry function '(\w+)'", line)
            if m:
                current = expr_of.get(m.group(1), m.group(1))
            m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
            if m:
                frame = tuple(int(g) for g in m.groups())
            m = re.search(r"Used (\d+) registers(?:.*?(\d+) bytes smem)?", line)
            if m and current:
                rows.append((current, int(m.group(1)), int(m.group(2) or 0), *frame))
                current = None
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="sm_90")
    args = p.parse_args(argv)
    ptxas = find_ptxas()
    if ptxas is None:
        print("error: needs ptxas (pip install nvidia-cuda-nvcc-cu12, or a CUDA toolkit)", file=sys.stderr)
        return 2
    release = re.search(r"release (\d+)\.(\d+)", subprocess.run([ptxas, "--version"], capture_output=True,
                                                                text=True).stdout)
    have = (int(release.group(1)), int(release.group(2))) if release else (99, 99)
    # ptxas reads the PTX of its own CUDA version or older (13.0's rejects 13.5's PTX ISA 9.5):
    # take the newest NVRTC that is not newer than ptxas
    matching = [(label, w) for label, w in find_all_nvrtc() if tuple(w.version()) <= have]
    if not matching:
        print(f"error: no NVRTC as old as ptxas {have} (pip install nvidia-cuda-nvrtc-cu12)", file=sys.stderr)
        return 2
    label, nvrtc = matching[-1]
    print(f"ptxas: {ptxas} (CUDA {release.group(0) if release else '?'}), {label}; arch {args.arch}")
    print(f"{'kernel':52s} {'regs':>5s} {'smem B':>7s} {'stack':>6s} {'spill st':>9s} {'spill ld':>9s} "
          f"{'threads':>8s} {'blocks/SM':>10s}")
    spilled = 0
    for expr, regs, smem, stack, st, ld in report(ptxas, nvrtc, args.arch):
        threads = block_size(expr)
        # registers are allocated per warp in units of 256 (8 per thread, rounded up)
        per_block = ((regs + 7) // 8 * 8) * 32 * -(-threads // 32) if threads else 0
        blocks = min(65536 // per_block, 32, 2048 // threads) if per_block else 0
        if smem and threads:
            blocks = min(blocks, (228 * 1024) // (smem + 1024))      # sm_90: 228 KiB, 1 KiB reserved a block
        spilled += st > 0
        print(f"{expr:52s} {regs:5d} {smem:7d} {stack:6d} {st:9d} {ld:9d} {threads or 0:8d} {blocks:10d}")
    print(f"{spilled} kernel(s) spill registers to local memory")
    return 0


if __name__ == "__main__":
    sys.exit(main())
