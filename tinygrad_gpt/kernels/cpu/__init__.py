"""Numba versions of every kernel in `tinygrad_gpt/kernels/reference.py`: same names, same signatures.

Each function is a thin Python wrapper (checks dtypes, makes inputs contiguous, allocates the
outputs) around an `@njit(cache=True)` kernel; the first call of each (kernel, dtype) compiles and
caches it under `tinygrad_gpt/kernels/cpu/__pycache__` (or NUMBA_CACHE_DIR), later processes load it from there.

float32 and float64 run in their own dtype (no upcasts, accumulators included). Anything else
(float16, mixed dtypes, shapes the reference broadcasts) is handed to the NumPy reference, so a
call here never gives a different answer than the reference would, only a slower one.

Threads: only attention may split its heads over threads, as many as numba.get_num_threads()
(NUMBA_NUM_THREADS, or numba.set_num_threads); everything else is serial (see `_common.py`).

Follows: llm.c's `dev/cpu` style (one function per kernel, plain loops). Does not: import
tinygrad_gpt, or keep any state between calls.

subtle: Numba's cache is keyed on the file that holds the kernel, not on the helpers it calls;
after editing `_common.py`, delete `tinygrad_gpt/kernels/cpu/__pycache__` or the kernels keep the old helpers.
"""
from tinygrad_gpt.kernels.reference import GELU_SCALE, KERNELS, get_array_module, is_cupy_array
from tinygrad_gpt.kernels.cpu.adamw import adamw_update
from tinygrad_gpt.kernels.cpu.attention import attention_backward, attention_forward
from tinygrad_gpt.kernels.cpu.cross_entropy import (softmax_cross_entropy_backward,
                                       softmax_cross_entropy_forward)
from tinygrad_gpt.kernels.cpu.dropout import dropout_backward, dropout_forward
from tinygrad_gpt.kernels.cpu.embedding import embedding_backward
from tinygrad_gpt.kernels.cpu.gelu import gelu_backward, gelu_forward
from tinygrad_gpt.kernels.cpu.layernorm import layernorm_backward, layernorm_forward
from tinygrad_gpt.kernels.cpu.muon import muon_apply, muon_momentum
from tinygrad_gpt.kernels.cpu.relu2 import relu2_backward, relu2_forward
from tinygrad_gpt.kernels.cpu.rmsnorm import rmsnorm_backward, rmsnorm_forward
from tinygrad_gpt.kernels.cpu.rotary import rotary_backward, rotary_forward

# the same names as the reference, which lists them once (reference.KERNELS)
__all__ = ["GELU_SCALE", "get_array_module", "is_cupy_array", *KERNELS]
