"""GPT: the GPT-2 architecture on the tinygrad_gpt engine (and a modern variant), with a KV-cache sampler.

    idx (B, T) -> wte[idx] + wpe[0..T) -> n_layer x Block -> ln_f -> x @ wte^T -> logits (B, T, V)
    Block: x = x + attn(ln_1(x));  x = x + mlp(ln_2(x))          (pre-LayerNorm, as GPT-2)
    attn:  qkv = c_attn(x); causal attention per head; c_proj     (one fused op, ops/attention.py)
    mlp:   c_proj(gelu(c_fc(x)))                                   (4x wide, tanh-GELU)

GPTConfig's defaults are GPT-2, bit for bit. Its architecture fields each swap in one idea of the
recent small-model recipes (modded-nanogpt, nanochat), each off by default:
    position="rotary"   no wpe table; q and k rotated by their positions inside the attention op
    norm="rmsnorm"      ln_1, ln_2, ln_f are RMSNorms (a gain, no mean, no bias), names kept
    qk_norm=True        a gain-free RMSNorm of each head's q and k before attention (and rotary)
    activation="relu2"  mlp: c_proj(relu(c_fc(x))^2)
    logit_softcap=c     logits = c * tanh(logits / c) before the loss and the sampler
    zero_init=True      attn.c_proj and mlp.c_proj start at zero: each block starts as the identity
A model that uses any of them is not GPT-2: pretrained.py refuses to export it, naming the fields.

Parameter names and layouts are Hugging Face GPT-2's (`wte`, `wpe`, `h.{i}.ln_1`,
`h.{i}.attn.c_attn`, ..., `ln_f`; Linear weights (in, out)), so a state dict saved here is readable
by other tools and GPT-2 weights load without renaming. The lm_head is tied to `wte` (`GPT.logits`).
Cached sampling runs the same fused attention op as training: each step's queries attend at an
offset t0 (the cache length) over the keys and values the KVCache holds.

Dimension legend: B batch, T time, C n_embd, nh n_head, hs head size C // nh, V vocab_size.
Follows: nanoGPT model.py (GPTConfig, init, generate), HF GPT-2 (names), Radford et al. 2019.
Deliberately does not: apply dropout to the attention probabilities (the fused attention never
materialises them; residual, embedding and MLP dropout are applied), or support padding masks.
"""
import math
from dataclasses import dataclass

import numpy as np

from tinygrad_gpt import nn, ops, pretrained
from tinygrad_gpt.settings import check_fields, setting
from tinygrad_gpt.backend import get_xp, to_numpy
from tinygrad_gpt.tensor import no_grad, unwrap


@dataclass
class GPTConfig:
    vocab_size: int = setting(65, ge=1, flag=False)  # 65 characters in tiny Shakespeare; 50257 for GPT-2's BPE
    block_size: int = setting(64, ge=1)   # the longest context the position table covers
    n_layer: int = setting(4, ge=1)
    n_head: int = setting(4, ge=1)
    n_embd: int = setting(128, ge=1)      # C; must be divisible by n_head
    dropout: float = setting(0.0, ge=0, lt=1)  # on embeddings, residual branches and the MLP; 0 for small data
    bias: bool = True                     # biases in Linear and LayerNorm, as GPT-2
    layer_norm_epsilon: float = setting(1e-5, gt=0)  # added to the variance (mean square) in every norm (config.json's name)
    # the modern architecture, field by field (module docstring); the defaults are GPT-2's
    position: str = setting("learned", choices=("learned", "rotary"))  # learned: a wpe table; rotary: q, k rotated
    rope_base: float = setting(10000.0, gt=1)  # rotary: the angle of channel pair i at position p is p * base^(-2i/hs)
    norm: str = setting("layernorm", choices=("layernorm", "rmsnorm"))  # rmsnorm: no mean, a gain and no bias
    qk_norm: bool = False                 # a gain-free RMSNorm of each head's q and k before attention (and rotary)
    activation: str = setting("gelu", choices=("gelu", "relu2"))  # the MLP's: GPT-2's tanh GELU, or relu(x)^2
    logit_softcap: float = setting(0.0, ge=0)  # 0 = off; else logits = cap * tanh(logits / cap)
    zero_init: bool = False               # attn.c_proj and mlp.c_proj weights start at zero

    def __post_init__(self):
        check_fields(self)
        if self.n_embd % self.n_head:
            raise ValueError(f"GPTConfig: n_embd {self.n_embd} is not divisible by n_head {self.n_head}")
        if self.position == "rotary" and (self.n_embd // self.n_head) % 2:
            raise ValueError(f"GPTConfig: position='rotary' rotates pairs of channels, so the head size "
                             f"n_embd / n_head must be even, got {self.n_embd} / {self.n_head} = "
                             f"{self.n_embd // self.n_head}")


def make_norm(config, dtype, device):
    """ln_1, ln_2 or ln_f: GPT-2's LayerNorm (a bias if config.bias), or an RMSNorm (gain only)."""
    if config.norm == "rmsnorm":
        return nn.RMSNorm(config.n_embd, eps=config.layer_norm_epsilon, dtype=dtype, device=device)
    return nn.LayerNorm(config.n_embd, bias=config.bias, eps=config.layer_norm_epsilon, dtype=dtype, device=device)


def zero_init_(linear, config):
    """Zero `linear`'s weight if config.zero_init (after its draw, so the other weights stay as
    without it): a residual branch that starts at zero leaves each block the identity at step 0."""
    if config.zero_init:
        linear.weight.data[...] = 0


class CausalSelfAttention(nn.Module):
    def __init__(self, config, rng, drop_rng, dtype, device):
        C = config.n_embd
        proj_std = 0.02 / math.sqrt(2 * config.n_layer)  # GPT-2: residual projections scaled down
        self.c_attn = nn.Linear(C, 3 * C, bias=config.bias, rng=rng, std=0.02, dtype=dtype, device=device)
        self.c_proj = nn.Linear(C, C, bias=config.bias, rng=rng, std=proj_std, dtype=dtype, device=device)
        zero_init_(self.c_proj, config)
        self.resid_dropout = nn.Dropout(config.dropout, rng=drop_rng)
        self.n_head = config.n_head
        # q, k transforms inside the attention op (none for GPT-2): rotary at the cache offset, QK-norm
        self.rope_base = config.rope_base if config.position == "rotary" else None
        self.qk_norm = config.qk_norm
        self.eps = config.layer_norm_epsilon

    def attention_args(self):
        """The q, k transform arguments of ops.causal_self_attention_qkv / ops.attention_probs."""
        return dict(rope_base=self.rope_base, qk_norm=self.qk_norm, eps=self.eps)

    def forward(self, x, cache=None):
        qkv = self.c_attn(x)                                      # (B, T, 3C)
        y = ops.causal_self_attention_qkv(qkv, self.n_head, cache, **self.attention_args())  # (B, T, C)
        return self.resid_dropout(self.c_proj(y))                 # (B, T, C)


class MLP(nn.Module):
    def __init__(self, config, rng, drop_rng, dtype, device):
        C = config.n_embd
        proj_std = 0.02 / math.sqrt(2 * config.n_layer)
        self.c_fc = nn.Linear(C, 4 * C, bias=config.bias, rng=rng, std=0.02, dtype=dtype, device=device)
        self.c_proj = nn.Linear(4 * C, C, bias=config.bias, rng=rng, std=proj_std, dtype=dtype, device=device)
        zero_init_(self.c_proj, config)
        self.dropout = nn.Dropout(config.dropout, rng=drop_rng)
        self.activation = config.activation

    def forward(self, x):
        h = self.c_fc(x)                                          # (B, T, 4C)
        h = h.relu2() if self.activation == "relu2" else h.gelu()  # (B, T, 4C)
        return self.dropout(self.c_proj(h))                       # (B, T, C)


class Block(nn.Module):
    def __init__(self, config, rng, drop_rng, dtype, device):
        self.ln_1 = make_norm(config, dtype, device)
        self.attn = CausalSelfAttention(config, rng, drop_rng, dtype, device)
        self.ln_2 = make_norm(config, dtype, device)
        self.mlp = MLP(config, rng, drop_rng, dtype, device)

    def forward(self, x, cache=None):
        x = x + self.attn(self.ln_1(x), cache)                    # (B, T, C)
        return x + self.mlp(self.ln_2(x))                         # (B, T, C)


class KVCache:
    """Keys and values of the positions seen so far, for one layer: (B, nh, block_size, hs) each.

    The attention op appends each call's keys and values and attends over the first `length`
    slots (ops/attention.py; the same fused kernel as training, with a query offset).
    """

    def __init__(self, batch, config, dtype, xp):
        hs = config.n_embd // config.n_head
        self.k = xp.zeros((batch, config.n_head, config.block_size, hs), dtype=dtype)  # (B, nh, Tmax, hs)
        self.v = xp.zeros_like(self.k)                                                # (B, nh, Tmax, hs)
        self.length = 0

    def append(self, k, v):
        """Store k, v (B, nh, T, hs) at slots length..length+T-1; return the buffers (B, nh, Tmax, hs)."""
        t0, T = self.length, k.shape[2]
        if k.shape != v.shape or k.shape[:2] + k.shape[3:] != self.k.shape[:2] + self.k.shape[3:]:
            raise ValueError(f"KVCache: keys {k.shape} and values {v.shape} do not fit a cache of "
                             f"{self.k.shape} (B, nh, block_size, hs)")
        if t0 + T > self.k.shape[2]:
            raise ValueError(f"KVCache: {t0} cached + {T} new positions exceed block_size {self.k.shape[2]}")
        self.k[:, :, t0:t0 + T] = k
        self.v[:, :, t0:t0 + T] = v
        self.length = t0 + T
        return self.k, self.v


class _NoInit:
    """Stands in for the init generator of a GPT whose every weight is loaded next: zeros, no draws."""

    @staticmethod
    def normal(loc, scale, size):
        return np.zeros(size, dtype=np.float32)


class GPT(nn.Module):
    def __init__(self, config, seed=0, dtype=np.float32, device="cpu", init=True):
        """GPT-2's initialisation from `seed`; init=False leaves the weights zero (no random draws,
        for a loader that replaces every one of them next: from_pretrained, runs.load_model)."""
        self.config = config
        rng = np.random.default_rng(seed) if init else _NoInit()
        drop_rng = np.random.default_rng(seed + 1)  # one stream shared by every Dropout (resumable)
        self.drop_rng = drop_rng
        C = config.n_embd
        self.wte = nn.Embedding(config.vocab_size, C, rng=rng, std=0.02, dtype=dtype, device=device)  # (V, C)
        if config.position == "learned":
            self.wpe = nn.Embedding(config.block_size, C, rng=rng, std=0.02, dtype=dtype, device=device)  # (Tmax, C)
        else:
            # subtle: the table is drawn and dropped, so that every other weight is the one the
            # learned-position model of this seed has (an ablation changes only what it names)
            rng.normal(0.0, 0.02, (config.block_size, C))
        self.drop = nn.Dropout(config.dropout, rng=drop_rng)
        self.h = [Block(config, rng, drop_rng, dtype, device) for _ in range(config.n_layer)]
        self.ln_f = make_norm(config, dtype, device)
        # self.device is Module.device: read from the parameters, so model.to(device) keeps it right

    @staticmethod
    def parameter_shapes(config):
        """{name: shape} of every parameter a GPT of `config` has, in named_parameters' order, without
        allocating one (from_pretrained checks a file's headers against it before building)."""
        C, V, T = config.n_embd, config.vocab_size, config.block_size
        vector = {"weight": (C,)} | ({"bias": (C,)} if config.bias and config.norm == "layernorm" else {})

        def linear(prefix, n_in, n_out):
            return {f"{prefix}.weight": (n_in, n_out)} | ({f"{prefix}.bias": (n_out,)} if config.bias else {})

        shapes = {"wte.weight": (V, C)} | ({"wpe.weight": (T, C)} if config.position == "learned" else {})
        for i in range(config.n_layer):
            h = f"h.{i}"
            shapes |= {f"{h}.ln_1.{k}": v for k, v in vector.items()}
            shapes |= linear(f"{h}.attn.c_attn", C, 3 * C) | linear(f"{h}.attn.c_proj", C, C)
            shapes |= {f"{h}.ln_2.{k}": v for k, v in vector.items()}
            shapes |= linear(f"{h}.mlp.c_fc", C, 4 * C) | linear(f"{h}.mlp.c_proj", 4 * C, C)
        shapes |= {f"ln_f.{k}": v for k, v in vector.items()}
        return shapes

    @classmethod
    def from_pretrained(cls, directory, dtype=np.float32, device="cpu", dropout=0.0):
        """A GPT with the weights of a Hugging Face GPT-2 folder (config.json + model.safetensors).

        config.json gives the config; every tensor header is checked against its shapes before the
        model is built, without a random initialisation, and filled tensor by tensor (pretrained.py
        reads the files). The tokenizer of the same folder: `pretrained.load_tokenizer(directory)`.
        """
        import pathlib
        directory = pathlib.Path(directory).expanduser()
        if not directory.is_dir():
            raise FileNotFoundError(f"from_pretrained: {directory} is not a directory")
        source = directory / pretrained.CONFIG_NAME
        try:
            config = GPTConfig(**pretrained.config_from_hf(pretrained.read_config(directory), source, dropout=dropout))
        except pretrained.PretrainedError:
            raise
        except ValueError as exc:
            raise pretrained.PretrainedError(f"{source}: {exc}") from None
        plan = pretrained.plan_weights(directory, cls.parameter_shapes(config))
        model = cls(config, seed=0, dtype=np.dtype(dtype), device=device, init=False)
        return pretrained.load_weights(model, plan, dtype=np.dtype(dtype))

    def save_pretrained(self, directory, tokenizer=None):
        """Write a folder that transformers' GPT2LMHeadModel.from_pretrained loads (see pretrained.py)."""
        return pretrained.save_pretrained(self, directory, tokenizer=tokenizer)

    def crop_block_size(self, block_size):
        """Keep the first block_size rows of the position table (train a 1024-context model on 256);
        a rotary model has no table, only its block_size changes."""
        if not 1 <= block_size <= self.config.block_size:
            raise ValueError(f"crop_block_size: block_size must be in [1, {self.config.block_size}], got {block_size}")
        if self.config.position == "learned":
            self.wpe.weight.data = self.wpe.weight.data[:block_size].copy()   # (block_size, C)
            self.wpe.weight.grad = None
        self.config = GPTConfig(**{**self.config.__dict__, "block_size": block_size})
        return self

    def hidden(self, idx, caches=None):
        """The last hidden states ln_f(x) (B, T, C) for token ids idx (B, T): forward without the head.

        The RLHF value head and reward model read these; forward() turns them into logits.
        """
        xp = get_xp(self.wte.weight.device)  # = self.device, without walking every parameter
        idx = unwrap(idx)
        if not hasattr(idx, "ndim"):
            idx = np.asarray(idx)
        if idx.ndim != 2:
            raise ValueError(f"GPT: idx must be (B, T) token ids, got shape {idx.shape}")
        B, T = idx.shape
        if B == 0 or T == 0:
            raise ValueError(f"GPT: idx must hold at least one sequence of at least one token, got shape {idx.shape}")
        if idx.dtype.kind not in "iu":
            raise TypeError(f"GPT: idx must be integer token ids, got dtype {idx.dtype}")
        t0 = caches[0].length if caches else 0
        if t0 + T > self.config.block_size:
            cached = f" after {t0} cached" if t0 else ""
            raise ValueError(f"GPT: sequence of {t0 + T} tokens (idx of shape {idx.shape}{cached}) is longer "
                             f"than block_size {self.config.block_size}")
        # ids are range-checked where they are: free on the host; ids already on the GPU are not
        # (a sync per step) - the Trainer passes host batches, checked here and then uploaded
        if isinstance(idx, np.ndarray) and idx.size and (int(idx.min()) < 0 or int(idx.max()) >= self.config.vocab_size):
            bad = int(idx.max()) if int(idx.max()) >= self.config.vocab_size else int(idx.min())
            raise IndexError(f"GPT: token id {bad} is out of range for vocab_size {self.config.vocab_size}")
        idx = xp.asarray(idx)                                     # (B, T) uploaded if on the host
        if self.config.position == "rotary":
            # no position table: each attention rotates q and k by their positions t0..t0+T-1
            x = self.drop(self.wte(idx))                          # (B, T, C)
        else:
            pos = xp.arange(t0, t0 + T)                           # (T,)
            x = self.drop(self.wte(idx) + self.wpe(pos))              # (B, T, C)
        for i, block in enumerate(self.h):
            x = block(x, caches[i] if caches else None)           # (B, T, C)
        return self.ln_f(x)                                       # (B, T, C)

    def attention_probs(self, idx):
        """The attention probabilities of every layer and head for token ids idx (B, T): a list of
        n_layer arrays (B, nh, T, T), row t of each a distribution over the keys 0..t (see
        ops.attention_probs). Eval mode, no graph; each block's c_attn is applied once more to the
        block's input to read its qkv, then the block runs as in hidden()."""
        was_training = self.training
        self.eval()
        try:
            with no_grad():
                xp = get_xp(self.wte.weight.device)
                idx = xp.asarray(unwrap(idx))                     # (B, T)
                x = self.wte(idx)                                 # (B, T, C)
                if self.config.position == "learned":
                    x = x + self.wpe(xp.arange(idx.shape[1]))     # (B, T, C)
                maps = []
                for block in self.h:
                    qkv = block.attn.c_attn(block.ln_1(x))        # (B, T, 3C)
                    maps.append(ops.attention_probs(qkv.data, self.config.n_head,
                                                    **block.attn.attention_args()))  # (B, nh, T, T)
                    x = block(x)                                  # (B, T, C)
        finally:
            self.train(was_training)
        return maps

    def logits(self, hidden, temperature=1.0):
        """The tied lm_head: hidden states (B, T, C) -> logits (B, T, V) = hidden @ wte^T / temperature,
        soft-capped first if config.logit_softcap (cap * tanh(logits / cap): the model's logits, which
        the loss, the sampler and the RLHF policy all see; the temperature is the sampler's choice).

        Every path that turns hidden states into logits (forward, the RLHF policy and scoring)
        calls this, so they round alike. temperature must be > 0 with 1 / temperature finite in
        the weights' dtype (1e-310 would make every logit inf or NaN).
        """
        logits = hidden @ self.wte.weight.T                       # (B, T, V)
        if self.config.logit_softcap:
            logits = logits.softcap(self.config.logit_softcap)    # (B, T, V) in (-cap, cap)
        if temperature != 1.0:
            scale = 1.0 / temperature if temperature > 0 else math.nan
            if not (math.isfinite(scale) and scale <= np.finfo(logits.dtype).max):
                raise ValueError(f"GPT.logits: temperature must be > 0 with a finite reciprocal in "
                                 f"{logits.dtype}, got {temperature}")
            logits = logits * scale                               # (B, T, V)
        return logits

    def forward(self, idx, targets=None, caches=None):
        """Logits (B, T, V) for token ids idx (B, T), and the mean cross-entropy if targets are given."""
        logits = self.logits(self.hidden(idx, caches))            # (B, T, V) tied lm_head
        if targets is None:
            return logits, None
        targets = get_xp(self.device).asarray(unwrap(targets))
        return logits, ops.cross_entropy(logits, targets)

    def new_caches(self, batch):
        xp = get_xp(self.device)
        return [KVCache(batch, self.config, self.wte.weight.dtype, xp) for _ in self.h]

    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, seed=None,
                 use_cache=True, rng=None, on_token=None, stride=None):
        """Sample max_new_tokens after the prompt idx (B, T); returns (B, T + max_new_tokens) numpy ids.

        temperature divides the logits; top_k keeps the k most likely tokens; top_p keeps the
        smallest set whose probability reaches p (nucleus). Past block_size the tokens are drawn
        window by window (`context_windows`, `stride` new tokens per window after the first): a
        token of window (start, a, b) sees seq[start:t]. With use_cache, each window's keys and
        values are kept (KVCache): its context seq[start:a] is fed once (the prefill), then one new
        token a step; without, the model reruns the whole context for each token. Either way only
        the last position goes through the lm head, and both see the same context, so they draw
        the same tokens. The RLHF rollouts (rlhf/rollout.sample_responses) sample through this loop.
        on_token(ids) is called with each step's new ids (B,) as soon as they are sampled (streaming,
        e.g. tokenizers.stream.TextStream for B == 1); an exception it raises, or Ctrl-C, ends the
        loop, and what it was given has already been handed over.
        """
        if not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"generate: temperature must be a finite number > 0, got {temperature}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"generate: top_k must be >= 1, got {top_k}")
        if top_p is not None and not 0.0 < top_p <= 1.0:
            raise ValueError(f"generate: top_p must be in (0, 1], got {top_p}")
        rng = rng if rng is not None else np.random.default_rng(seed)
        prompt = np.array(to_numpy(unwrap(idx)), dtype=np.int64)
        if prompt.ndim == 1:
            prompt = prompt[None, :]
        B, T = prompt.shape
        if T == 0:
            raise ValueError("generate: the prompt must hold at least one token")
        new = max(max_new_tokens, 0)
        out = np.concatenate([prompt, np.zeros((B, new), dtype=np.int64)], axis=1)  # (B, T + new)
        windows = context_windows(T, new, self.config.block_size, stride) if new else []
        was_training = self.training
        self.eval()
        try:
            with no_grad():
                for start, a, b in windows:
                    caches, fed = (self.new_caches(B), start) if use_cache else (None, None)  # fed: cached up to
                    for t in range(a, b):
                        if use_cache:
                            hidden = self.hidden(out[:, fed:t], caches=caches)  # (B, t - fed, C) host ids: checked
                            fed = t
                        else:
                            hidden = self.hidden(out[:, start:t])             # (B, t - start, C)
                        if hidden.shape[1] > 1:
                            hidden = hidden[:, -1:]                            # (B, 1, C) only the next token's
                        logits = to_numpy(self.logits(hidden).data[:, -1, :]).astype(np.float64)  # (B, V)
                        nxt = sample_from_logits(logits, rng, top_k=top_k, top_p=top_p, temperature=temperature)
                        out[:, t] = nxt                                        # (B,)
                        if on_token is not None:
                            on_token(nxt)
        finally:
            self.train(was_training)
        return out


def context_windows(prompt_len, new_tokens, block_size, stride=None):
    """[(start, a, b), ...]: the tokens seq[a:b] are drawn (or scored) from the window seq[start:b-1].

    The one rule of every sampler and scorer past block_size W (GPT.generate, the RLHF rollouts,
    rlhf.policy.score_windows): a sequence of P + N tokens that fits (P + N - 1 <= W) is one window.
    Otherwise the first window runs from the prompt until the block is full (P + N = W + 1), or for
    `stride` tokens if the prompt leaves less room than that; each later window holds `stride`
    tokens (default W // 2), and every window ends on a full block, start = b - 1 - W (0 at the
    least). Token t of a window sees seq[start:t]: at most W tokens, and past the first window at
    least W + 1 - stride. Sampling runs a fresh KV cache per window (the prefill feeds seq[start:a]);
    scoring runs one forward per window, so both see each token's context alike.

        context_windows(2, 20, 8) == [(0, 2, 9), (4, 9, 13), (8, 13, 17), (12, 17, 21), (13, 21, 22)]

    # subtle: stride trades context for work. A window costs one forward of up to W tokens (scoring)
    # or one prefill (sampling): stride 1 slides a full window every token (always W tokens of
    # context, a forward per token); W // 2 halves the context at worst for two windows per W tokens.
    # A prompt that nearly fills the block (P > W + 1 - stride) starts on W + 1 - stride tokens of it,
    # so that 64 + 64 tokens at W = 64 are two windows, not three.
    """
    if prompt_len < 1 or new_tokens < 1:
        raise ValueError(f"context_windows: the prompt and the new tokens need >= 1 token each, got {prompt_len} "
                         f"and {new_tokens}")
    end = prompt_len + new_tokens
    if end - 1 <= block_size:
        return [(0, prompt_len, end)]
    stride = block_size // 2 if stride is None else stride
    if not 1 <= stride <= block_size:
        raise ValueError(f"context_windows: stride must be in [1, block_size={block_size}], got {stride}")
    windows, a, b = [], prompt_len, min(end, max(prompt_len + stride, block_size + 1))
    while True:
        windows.append((max(0, b - 1 - block_size), a, b))
        if b == end:
            return windows
        a, b = b, min(b + stride, end)


def sample_from_logits(logits, rng, top_k=None, top_p=None, temperature=1.0):
    """One token id per row of logits (B, V) (float64 numpy), at `temperature`, after top-k and
    nucleus filtering.

    The temperature divides each row after its max is subtracted, (logits - max) / temperature
    (all <= 0, the max at 0), so no positive temperature overflows: as it goes to 0 this becomes
    greedy decoding (the argmax; tied maxima share the probability), for 1e-310 as for 1e-6.
    Logits that are NaN or +inf (a diverged model, NaN weights, or logits divided by a tiny
    temperature before they came here) raise a ValueError naming the row, rather than sampling
    garbage; -inf is probability 0 (a masked token), but each row needs one finite logit.
    """
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 2 or logits.shape[-1] == 0:
        raise ValueError(f"sample_from_logits: logits must be (B, V) with V >= 1, got shape {logits.shape}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"sample_from_logits: temperature must be a finite number > 0, got {temperature}")
    bad = np.isnan(logits) | (logits == np.inf)                    # (B, V)
    if bad.any():
        row = int(np.flatnonzero(bad.any(axis=-1))[0])
        what = "NaN" if np.isnan(logits[row]).any() else "+inf"
        raise ValueError(f"sample_from_logits: the logits of row {row} hold {what}; the model's output is not "
                         f"finite (NaN or inf weights, a diverged run; if the logits were divided by a tiny "
                         f"temperature, pass it as temperature= instead)")
    rowmax = logits.max(axis=-1, keepdims=True)                    # (B, 1)
    if not np.isfinite(rowmax).all():
        row = int(np.flatnonzero(~np.isfinite(rowmax[:, 0]))[0])
        raise ValueError(f"sample_from_logits: every logit of row {row} is -inf; no token can be sampled")
    with np.errstate(over="ignore"):  # subtle: a tiny temperature sends the non-max logits to -inf, as meant
        logits = (logits - rowmax) / temperature                   # (B, V) <= 0, the max at 0
    if top_k is not None and top_k < logits.shape[-1]:
        kth = np.partition(logits, -top_k, axis=-1)[:, -top_k][:, None]
        logits[logits < kth] = -np.inf
    probs = np.exp(logits)                                         # (B, V) the max gives 1: no overflow
    probs /= probs.sum(axis=-1, keepdims=True)                     # (B, V)
    if top_p is not None and top_p < 1.0:
        order = np.argsort(-probs, axis=-1)                        # (B, V) most likely first
        sorted_p = np.take_along_axis(probs, order, axis=-1)
        # keep a token if the mass before it is still below top_p (so the first is always kept)
        keep_sorted = (np.cumsum(sorted_p, axis=-1) - sorted_p) < top_p
        keep = np.zeros_like(keep_sorted)
        np.put_along_axis(keep, order, keep_sorted, axis=-1)
        probs = np.where(keep, probs, 0.0)
        probs /= probs.sum(axis=-1, keepdims=True)
    u = rng.random((probs.shape[0], 1))
    return np.minimum((np.cumsum(probs, axis=-1) < u).sum(axis=-1), probs.shape[-1] - 1).astype(np.int64)
