"""The kernel cases of tests/cuda/cuda_kernel_cases.py with the CUDA C run on the CPU.

tinygrad_gpt/cuda_emulator/ compiles each kernel file's CUDA C with g++ and runs every GPU thread as a
fiber, behind a stand-in cupy; kernels.cuda's own wrappers launch it. So on a machine without a
GPU these check the kernels' indexing, tiling, masks, barriers and warp shuffles against the NumPy
reference, and the emulator adds what a GPU run would not report: a race between barriers (each
launch runs in two thread orders), a write past an array, an argument whose C type does not match.
They do not check speed or the GPU's own float rounding: tests/cuda/test_cuda_kernels.py, on a GPU, does.
Skipped where no C++17 compiler is found.
"""
import pytest

from tinygrad_gpt import cuda_emulator
import cuda_kernel_cases

if cuda_emulator.compiler() is None:
    pytest.skip("the CUDA emulator needs g++ (or $CXX) with C++17", allow_module_level=True)

cupy, cuda = cuda_emulator.load()
globals().update(cuda_kernel_cases.bind(cupy, cuda, emulated=True))
