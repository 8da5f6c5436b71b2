"""The kernel cases of tests/cuda/cuda_kernel_cases.py on a GPU: real cupy, real kernels.cuda.

Skipped, with the reason, where cupy is not installed or no GPU is usable (CI on CPU machines);
tests/cuda/test_cuda_kernels_emulated.py runs the same cases on the CPU there.
"""
import pytest

from tinygrad_gpt import backend

try:
    backend.get_xp("cuda")
except RuntimeError as exc:  # the backend's message says what is missing and how to install it
    pytest.skip(f"CUDA kernel tests need cupy and a GPU: {exc}", allow_module_level=True)

import cupy  # noqa: E402

import cuda_kernel_cases  # noqa: E402
from tinygrad_gpt.kernels import cuda  # noqa: E402

globals().update(cuda_kernel_cases.bind(cupy, cuda, emulated=False))
