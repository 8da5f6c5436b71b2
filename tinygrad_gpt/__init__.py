"""tinygrad_gpt: a from-scratch reverse-mode autograd engine on NumPy, and a GPT built on it.

Start at `tensor.py` (the engine), then `ops/` (every op's forward and backward side by side),
`nn.py` (modules), `model.py` (the GPT), `optim.py`. The fused kernels live in
`tinygrad_gpt.kernels`, which never imports the engine. Does not depend on PyTorch, tiktoken or HF
tokenizers at run time.

Importing the package changes nothing process-wide. The training loops (`train.Trainer`,
`rlhf.PPOTrainer`) and the scripts call `backend.tune_host_allocator()`, which raises glibc's
malloc thresholds (a cpu-preset step ~35% faster); a program of your own may call it too.
"""
from tinygrad_gpt.tensor import Function, Tensor, is_grad_enabled, no_grad, tensor
from tinygrad_gpt.gradcheck import gradcheck, GradcheckResult

__all__ = ["Tensor", "Function", "tensor", "no_grad", "is_grad_enabled", "gradcheck", "GradcheckResult"]
__version__ = "0.1.0"
