"""Every differentiable op: one Function subclass each, forward and backward side by side.

elementwise.py  add, sub, mul, div, neg, pow, exp, log, sqrt, tanh, relu, relu2, gelu, softcap,
                sigmoid, maximum, minimum, clip, where, masked_fill (+ the shared unbroadcast)
reduce.py       sum, mean, max, var
movement.py     reshape, permute, getitem (slices and integer arrays), gather, concat, stack
matmul.py       matmul (batched, broadcasting), linear (matmul + bias fused)
functional.py   softmax, log_softmax, cross_entropy, layer_norm, rms_norm, dropout, embedding
                (the list of torch.nn.functional; tinygrad_gpt/nn.py holds the Modules)
attention.py    causal self-attention as one op, and rotary position embedding of q and k

Functional forms (`ops.cross_entropy(logits, targets)`) live beside the Functions. A Function whose
name would also name an nn Module or a model class carries the suffix `Op` (`LinearOp`, `LayerNormOp`,
`RMSNormOp`, `EmbeddingOp`, `DropoutOp`, `CausalSelfAttentionOp`, `CausalSelfAttentionQKVOp`), so a grep
for `class Linear` finds one thing.
"""
from tinygrad_gpt.ops.elementwise import (Add, Clip, Div, Exp, Gelu, Log, Maximum, MaskedFill, Minimum, Mul, Neg,
                                          Pow, PowScalar, Relu, Relu2, Sigmoid, Softcap, Sqrt, Sub, Tanh, Where,
                                          unbroadcast, where)
from tinygrad_gpt.ops.reduce import Max, Mean, Sum, Var
from tinygrad_gpt.ops.movement import Concat, Gather, GetItem, Permute, Reshape, Stack, concat, stack
from tinygrad_gpt.ops.matmul import LinearOp, MatMul, linear
from tinygrad_gpt.ops.functional import (CrossEntropy, DropoutOp, EmbeddingOp, LayerNormOp, LogSoftmax, RMSNormOp,
                                         Softmax, cross_entropy, dropout, embedding, layer_norm, rms_norm)
from tinygrad_gpt.ops.attention import (CausalSelfAttentionOp, CausalSelfAttentionQKVOp, Rotary,
                                        causal_self_attention, attention_probs, causal_self_attention_qkv, rotary,
                                        rotary_tables)
