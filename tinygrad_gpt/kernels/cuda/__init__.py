"""CuPy versions of every kernel in `tinygrad_gpt/kernels/reference.py`: same names, same signatures, CUDA C in
`RawModule` strings (one `SOURCE` per file, templated on float / double).

Importing this package imports cupy, so `from kernels import cuda` raises ImportError where cupy
is not installed, which is how `kernels.for_array` decides to run the reference instead; it does
not need a GPU (kernels compile with NVRTC at their first launch, not at import).
Matmuls are not here: the engine's `@` on cupy arrays goes to cuBLAS.

| kernel                          | file             | launch                                           |
|---------------------------------|------------------|--------------------------------------------------|
| layernorm_forward / backward    | layernorm.py     | warp per row; dweight/dbias: chunked column sums |
| rmsnorm_forward / backward      | rmsnorm.py       | warp per row; dweight: chunked column sums       |
| rotary_forward / backward       | rotary.py        | grid-stride, a thread per channel pair           |
| gelu_forward / backward         | gelu.py          | grid-stride elementwise                          |
| relu2_forward / backward        | relu2.py         | grid-stride elementwise                          |
| softmax_cross_entropy_*         | cross_entropy.py | warp (V <= 1024) or block per row; flat backward |
| attention_forward / backward    | attention.py     | flash-style tiles: forward, dq, dk/dv kernels    |
| embedding_backward              | embedding.py     | thread per element, atomicAdd                    |
| adamw_update                    | adamw.py         | grid-stride, in place                            |
| dropout_forward / backward      | dropout.py       | grid-stride, mask hashed from (seed, index)      |
| muon_momentum / muon_apply      | muon.py          | grid-stride, in place                            |

float32 and float64 only; other dtypes, and shapes the kernels do not take (hs > 64 in attention),
run the reference (array-module generic, so on the GPU too). See `_common.py` for the index-check
policy (TINYGRAD_GPT_CUDA_CHECKS=1).

Status: compiled with NVRTC (tests/cuda/test_cuda_compile.py) and run on the CPU by the CUDA emulator
(tinygrad_gpt/cuda_emulator/: this CUDA C compiled by g++, one fiber per GPU thread, behind a stand-in
cupy), against the references (tests/cuda/test_cuda_kernels_emulated.py) and in the whole engine
(tests/cuda/test_cuda_engine.py [emulated], the device-parametrised gradient and model tests). Not yet
run on a GPU: the [gpu] tests and the benchmarks need one, see benchmarks/RESULTS.md.
"""
from tinygrad_gpt.kernels.reference import GELU_SCALE, KERNELS, get_array_module, is_cupy_array
from tinygrad_gpt.kernels.cuda.adamw import adamw_update
from tinygrad_gpt.kernels.cuda.attention import attention_backward, attention_forward
from tinygrad_gpt.kernels.cuda.cross_entropy import (softmax_cross_entropy_backward,
                                        softmax_cross_entropy_forward)
from tinygrad_gpt.kernels.cuda.dropout import dropout_backward, dropout_forward
from tinygrad_gpt.kernels.cuda.embedding import embedding_backward
from tinygrad_gpt.kernels.cuda.gelu import gelu_backward, gelu_forward
from tinygrad_gpt.kernels.cuda.layernorm import layernorm_backward, layernorm_forward
from tinygrad_gpt.kernels.cuda.muon import muon_apply, muon_momentum
from tinygrad_gpt.kernels.cuda.relu2 import relu2_backward, relu2_forward
from tinygrad_gpt.kernels.cuda.rmsnorm import rmsnorm_backward, rmsnorm_forward
from tinygrad_gpt.kernels.cuda.rotary import rotary_backward, rotary_forward

# the same names as the reference, which lists them once (reference.KERNELS)
__all__ = ["GELU_SCALE", "get_array_module", "is_cupy_array", *KERNELS]

# the files whose SOURCE / NAME_EXPRESSIONS the compile test and the benchmark walk through
KERNEL_FILES = ("layernorm", "rmsnorm", "rotary", "gelu", "relu2", "cross_entropy", "attention", "embedding", "adamw", "dropout", "muon")
