"""The PyTorch peer of tinygrad_gpt.model.GPT, for the side-by-side benchmarks only.

Same architecture (pre-LayerNorm blocks, tanh-GELU MLP, tied lm_head), GPT-2 initialisation (normal
0.02, residual projections scaled by 1/sqrt(2 n_layer), zero biases), the same AdamW parameter
groups, and `F.scaled_dot_product_attention` for attention, as a PyTorch user would write it.
torch is imported inside the functions: this file is never imported by the package.
"""
import math


def make_torch_gpt(n_layer, n_head, n_embd, block_size, vocab_size, dropout=0.0, device="cpu"):
    """A PyTorch GPT module on `device`; forward(idx, targets) returns the mean cross-entropy."""
    import torch
    import torch.nn as tnn
    import torch.nn.functional as F

    C, nh = n_embd, n_head

    class Block(tnn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1, self.ln_2 = tnn.LayerNorm(C), tnn.LayerNorm(C)
            self.c_attn, self.attn_proj = tnn.Linear(C, 3 * C), tnn.Linear(C, C)
            self.c_fc, self.mlp_proj = tnn.Linear(C, 4 * C), tnn.Linear(4 * C, C)
            self.drop = tnn.Dropout(dropout)

        def forward(self, x):
            B, T, _ = x.shape
            q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
            q, k, v = (t.view(B, T, nh, C // nh).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.drop(self.attn_proj(y.transpose(1, 2).reshape(B, T, C)))
            return x + self.drop(self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh")))

    class GPT(tnn.Module):
        def __init__(self):
            super().__init__()
            self.wte, self.wpe = tnn.Embedding(vocab_size, C), tnn.Embedding(block_size, C)
            self.h = tnn.ModuleList(Block() for _ in range(n_layer))
            self.ln_f, self.drop = tnn.LayerNorm(C), tnn.Dropout(dropout)
            for name, p in self.named_parameters():  # GPT-2 init, as tinygrad_gpt.model.GPT
                if name.endswith("bias"):
                    tnn.init.zeros_(p)
                elif p.dim() >= 2:
                    std = 0.02 / math.sqrt(2 * n_layer) if name.endswith("proj.weight") else 0.02
                    tnn.init.normal_(p, 0.0, std)

        def forward(self, idx, targets):
            x = self.drop(self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device)))
            for block in self.h:
                x = block(x)
            logits = self.ln_f(x) @ self.wte.weight.T
            return F.cross_entropy(logits.view(-1, vocab_size), targets.view(-1))

    return GPT().to(device)


def make_torch_adamw(model, lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1):
    """AdamW with the same groups as tinygrad_gpt.optim.decay_groups (only >= 2-dim tensors decay)."""
    import torch
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=betas)
