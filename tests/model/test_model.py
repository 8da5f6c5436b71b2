"""The GPT: whole-model gradient, initial loss, Hugging Face names, KV cache, sampling, bad input."""
import math

import numpy as np
import pytest

from tinygrad_gpt import Tensor, backend, gradcheck, ops
from tinygrad_gpt.model import GPT, GPTConfig, context_windows, sample_from_logits

TINY = GPTConfig(vocab_size=11, block_size=9, n_layer=2, n_head=2, n_embd=8, dropout=0.0)


def test_whole_model_gradient_float64(rng, kernel_backend, device):
    """Sampled entries of EVERY parameter against central differences (float64, odd T = 7)."""
    model = GPT(TINY, seed=int(rng.integers(1 << 30)), dtype=np.float64, device=device)
    # perturb LayerNorm/bias parameters away from their 1/0 init so their gradients are generic
    for name, p in model.named_parameters():
        if p.ndim == 1:
            p.data += backend.get_xp(device).asarray(rng.normal(0, 0.1, p.shape))  # (cupy: no host operand)
    idx = rng.integers(0, TINY.vocab_size, (3, 7))
    targets = rng.integers(0, TINY.vocab_size, (3, 7))
    params = model.parameters()
    result = gradcheck(lambda *ps: model(idx, targets)[1], params, max_checks=6, tol=1e-6,
                       seed=int(rng.integers(1 << 30)))
    assert result.checked == sum(min(6, p.size) for p in params)
    assert result.ok, f"{kernel_backend}: {result} (parameter {list(dict(model.named_parameters()))[result.where[0]]})"


def test_initial_loss_near_log_vocab(rng):
    config = GPTConfig(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128)
    model = GPT(config, seed=int(rng.integers(1 << 30)))
    idx = rng.integers(0, 65, (4, 64))
    _, loss = model(idx, rng.integers(0, 65, (4, 64)))
    assert abs(loss.item() - math.log(65)) < 0.1


def test_hugging_face_names_and_layouts():
    model = GPT(GPTConfig(vocab_size=13, block_size=5, n_layer=2, n_head=2, n_embd=8))
    shapes = {n: p.shape for n, p in model.named_parameters()}
    assert shapes["wte.weight"] == (13, 8) and shapes["wpe.weight"] == (5, 8)
    assert shapes["h.1.attn.c_attn.weight"] == (8, 24)   # (in, out), as GPT-2's Conv1D
    assert shapes["h.0.attn.c_proj.weight"] == (8, 8)
    assert shapes["h.0.mlp.c_fc.weight"] == (8, 32) and shapes["h.0.mlp.c_proj.weight"] == (32, 8)
    assert {"h.0.ln_1.weight", "h.0.ln_2.bias", "ln_f.weight", "ln_f.bias"} <= set(shapes)
    assert not any("lm_head" in n for n in shapes)  # tied to wte


def test_gpt2_init_scales_residual_projections(rng):
    config = GPTConfig(vocab_size=50, block_size=16, n_layer=8, n_head=4, n_embd=64)
    model = GPT(config, seed=3)
    std_fc = model.h[0].mlp.c_fc.weight.data.std()
    std_proj = model.h[0].mlp.c_proj.weight.data.std()
    assert abs(std_fc - 0.02) < 0.002
    assert abs(std_proj - 0.02 / math.sqrt(16)) < 0.0005


def test_kv_cache_logits_equal_full_forward_at_every_position(rng, device):
    model = GPT(TINY, seed=int(rng.integers(1 << 30)), dtype=np.float64, device=device).eval()
    idx = rng.integers(0, TINY.vocab_size, (2, TINY.block_size))
    full, _ = model(idx)
    caches = model.new_caches(2)
    pieces = [model(idx[:, :3], caches=caches)[0].data]              # a prefill of 3 tokens
    for t in range(3, TINY.block_size):
        pieces.append(model(idx[:, t:t + 1], caches=caches)[0].data)  # then one token at a time
    from tinygrad_gpt.backend import to_numpy
    np.testing.assert_allclose(np.concatenate([to_numpy(p) for p in pieces], axis=1), full.numpy(),
                               rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-10), (np.float32, 1e-5)])
def test_kv_cache_logits_equal_full_forward_in_uneven_chunks(rng, kernel_backend, dtype, rtol):
    """Prefill 2, then chunks of 3, 1, 2, 1 (queries at offsets 2, 5, 6, 8): every position's logits
    equal the uncached forward's, with the reference kernels and the fused ones."""
    model = GPT(TINY, seed=int(rng.integers(1 << 30)), dtype=dtype).eval()
    idx = rng.integers(0, TINY.vocab_size, (3, TINY.block_size))
    full, _ = model(idx)
    caches = model.new_caches(3)
    pieces, t = [], 0
    for n in (2, 3, 1, 2, 1):
        pieces.append(model(idx[:, t:t + n], caches=caches)[0].numpy())
        t += n
    assert caches[0].length == TINY.block_size
    np.testing.assert_allclose(np.concatenate(pieces, axis=1), full.numpy(), rtol=rtol, atol=rtol * 1e-2)


def test_cached_path_runs_the_fused_attention_kernel_at_the_cache_offset(monkeypatch):
    """Each layer's cached step calls the same kernel as training, with t0 = the cache length and
    the cache's (B, nh, block_size, hs) buffers as keys."""
    from tinygrad_gpt import kernels
    from tinygrad_gpt.kernels import cpu
    calls = []
    real = cpu.attention_forward

    def spy(q, k, v, scale, t0=0):
        calls.append((q.shape, k.shape, t0))
        return real(q, k, v, scale, t0)

    monkeypatch.setattr(cpu, "attention_forward", spy)
    kernels.set_backend("fused")
    try:
        model = GPT(TINY, seed=0).eval()
        caches = model.new_caches(2)
        model(np.zeros((2, 4), np.int64), caches=caches)
        model(np.zeros((2, 1), np.int64), caches=caches)
    finally:
        kernels.set_backend(None)
    hs = TINY.n_embd // TINY.n_head
    cache_shape = (2, TINY.n_head, TINY.block_size, hs)
    assert calls == [((2, TINY.n_head, 4, hs), cache_shape, 0)] * TINY.n_layer + \
        [((2, TINY.n_head, 1, hs), cache_shape, 4)] * TINY.n_layer


def test_kv_cache_overflow_names_the_sizes():
    model = GPT(TINY, seed=0)
    caches = model.new_caches(1)
    k = np.zeros((1, TINY.n_head, TINY.block_size + 1, TINY.n_embd // TINY.n_head), np.float32)
    with pytest.raises(ValueError, match=r"0 cached \+ 10 new positions exceed block_size 9"):
        caches[0].append(k, k)
    with pytest.raises(ValueError, match=r"keys \(1, 2, 10, 4\).*\(1, 3, 10, 4\)"):
        caches[0].append(k, np.zeros((1, 3, 10, 4), np.float32))


def test_generate_cached_equals_uncached_within_block(rng):
    model = GPT(TINY, seed=5, dtype=np.float64)
    prompt = rng.integers(0, TINY.vocab_size, (2, 2))
    new = TINY.block_size - 2
    a = model.generate(prompt, new, seed=11, use_cache=True)
    b = model.generate(prompt, new, seed=11, use_cache=False)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (2, TINY.block_size)
    longer = model.generate(prompt, 3 * TINY.block_size, seed=1)  # runs past block_size with the cache
    assert longer.shape == (2, 2 + 3 * TINY.block_size) and longer.max() < TINY.vocab_size


@pytest.mark.parametrize("prompt_len", [1, 3, 8])
@pytest.mark.parametrize("mode", [dict(top_k=1), dict(seed=7), dict(seed=8, top_p=0.8, temperature=0.7)])
def test_generate_cached_equals_uncached_for_prompt_lengths(rng, prompt_len, mode):
    """Greedy, seeded and nucleus sampling: the cached path (prefill of the whole prompt, then one
    token a step, the lm head on the last position) gives the uncached path's tokens, for prompts
    of 1, 3 and 8 tokens filled up to block_size 9."""
    model = GPT(TINY, seed=int(rng.integers(1 << 30)), dtype=np.float64)
    prompt = rng.integers(0, TINY.vocab_size, (3, prompt_len))
    new = TINY.block_size - prompt_len
    a = model.generate(prompt, new, use_cache=True, **mode)
    b = model.generate(prompt, new, use_cache=False, **mode)
    assert a.shape == (3, TINY.block_size)
    np.testing.assert_array_equal(a[:, :prompt_len], prompt)
    np.testing.assert_array_equal(a, b)


def test_generate_logits_are_forwards_last_row(rng, monkeypatch):
    """The token generate samples comes from forward's logits at the last position: the logits
    sample_from_logits receives, for a 5-token prompt, are forward's last row, with the temperature."""
    import tinygrad_gpt.model as model_module
    model = GPT(TINY, seed=int(rng.integers(1 << 30)), dtype=np.float64)
    prompt = rng.integers(0, TINY.vocab_size, (2, 5))
    seen = []
    real = model_module.sample_from_logits

    def spy(logits, rng, top_k=None, top_p=None, temperature=1.0):
        seen.append((logits.copy(), temperature))
        return real(logits, rng, top_k=top_k, top_p=top_p, temperature=temperature)

    monkeypatch.setattr(model_module, "sample_from_logits", spy)
    for use_cache in (True, False):
        seen.clear()
        model.generate(prompt, 1, temperature=0.5, seed=0, use_cache=use_cache)
        full, _ = model.eval()(prompt)
        np.testing.assert_allclose(seen[0][0], full.numpy()[:, -1, :], rtol=1e-12, atol=1e-12)
        assert seen[0][1] == 0.5


def test_context_windows_fill_the_block_then_step_by_stride():
    """Block 8, stride 4 (8 // 2). Prompt 2 + 20 new tokens: the first window fills the block (tokens
    2..8 from seq[0:t]); then 4 tokens a window, each ending on a full block (start = b - 1 - 8):
    (4, 9, 13), (8, 13, 17), (12, 17, 21) and the last token (13, 21, 22). A prompt that leaves less
    than a stride of room (7 of 8) gets a first window of one stride: (2, 7, 11)."""
    assert context_windows(2, 20, 8) == [(0, 2, 9), (4, 9, 13), (8, 13, 17), (12, 17, 21), (13, 21, 22)]
    assert context_windows(7, 6, 8) == [(2, 7, 11), (4, 11, 13)]
    assert context_windows(2, 7, 8) == [(0, 2, 9)]                        # fits: 2 + 7 - 1 <= 8
    with pytest.raises(ValueError, match=r"stride must be in \[1, block_size=8\], got 9"):
        context_windows(2, 20, 8, stride=9)
    with pytest.raises(ValueError, match="new tokens need >= 1"):
        context_windows(2, 0, 8)


@pytest.mark.parametrize("prompt_len, stride", [(1, None), (4, 3), (12, None)])
def test_generate_past_block_size_draws_each_token_from_its_window(rng, monkeypatch, prompt_len, stride):
    """Past block_size 9, with and without the cache: the logits of token t of window (start, a, b)
    are forward's last row over seq[start:t], so the cached and the uncached loop draw the same
    tokens (a prompt of 1 and of 4, and one longer than the block)."""
    import tinygrad_gpt.model as model_module
    model = GPT(TINY, seed=int(rng.integers(1 << 30)), dtype=np.float64)
    prompt = rng.integers(0, TINY.vocab_size, (2, prompt_len))
    seen, real = [], model_module.sample_from_logits

    def spy(logits, rng, top_k=None, top_p=None, temperature=1.0):
        seen.append(logits.copy())
        return real(logits, rng, top_k=top_k, top_p=top_p, temperature=temperature)

    monkeypatch.setattr(model_module, "sample_from_logits", spy)
    new = 3 * TINY.block_size
    outs = {}
    for use_cache in (True, False):
        seen.clear()
        outs[use_cache] = model.generate(prompt, new, seed=4, use_cache=use_cache, stride=stride)
        seq = outs[use_cache]
        t_seen = iter(seen)
        for start, a, b in context_windows(prompt_len, new, TINY.block_size, stride):
            for t in range(a, b):
                full, _ = model.eval()(seq[:, start:t])
                np.testing.assert_allclose(next(t_seen), full.numpy()[:, -1, :], rtol=1e-10, atol=1e-10)
    np.testing.assert_array_equal(outs[True], outs[False])


def test_generate_is_seeded_and_builds_no_graph():
    model = GPT(TINY, seed=1)
    a = model.generate(np.array([[1, 2]]), 10, seed=3)
    b = model.generate(np.array([[1, 2]]), 10, seed=3)
    np.testing.assert_array_equal(a, b)
    assert all(p.grad is None for p in model.parameters())


def test_top_k_and_top_p_filtering():
    """logits log([0.5, 0.3, 0.15, 0.05]): top_k=2 only ever picks 0 or 1; top_p=0.6 keeps {0, 1}
    (mass before token 1 is 0.5 < 0.6, before token 2 is 0.8 >= 0.6); top_p=0.4 keeps only 0."""
    rng = np.random.default_rng(0)
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]] * 4000))
    assert set(sample_from_logits(logits, rng, top_k=2).tolist()) == {0, 1}
    assert set(sample_from_logits(logits, rng, top_p=0.6).tolist()) == {0, 1}
    assert set(sample_from_logits(logits, rng, top_p=0.4).tolist()) == {0}
    counts = np.bincount(sample_from_logits(logits, rng), minlength=4) / 4000
    np.testing.assert_allclose(counts, [0.5, 0.3, 0.15, 0.05], atol=0.03)


def test_bad_input_errors():
    model = GPT(TINY)
    with pytest.raises(ValueError, match="longer than block_size 9"):
        model(np.zeros((1, 10), np.int64))
    with pytest.raises(IndexError, match="token id 11 is out of range for vocab_size 11"):
        model(np.array([[1, 11]]))
    with pytest.raises(ValueError, match=r"idx must be \(B, T\)"):
        model(np.zeros(3, np.int64))
    with pytest.raises(ValueError, match="n_embd 10 is not divisible by n_head 4"):
        GPTConfig(n_embd=10, n_head=4)
    with pytest.raises(ValueError, match="temperature"):
        model.generate(np.array([[1]]), 2, temperature=0)
    with pytest.raises(ValueError, match="temperature"):
        model.generate(np.array([[1]]), 2, temperature=float("nan"))


@pytest.mark.parametrize("shape", [(1, 0), (0, 3), (0, 0)])
def test_empty_idx_is_refused_naming_its_shape(shape):
    with pytest.raises(ValueError, match=rf"at least one token, got shape \({shape[0]}, {shape[1]}\)"):
        GPT(TINY)(np.zeros(shape, np.int64))


def test_idx_errors_name_the_shape_and_dtype():
    model = GPT(TINY)
    with pytest.raises(ValueError, match=r"sequence of 12 tokens \(idx of shape \(2, 12\)\) is longer than block_size 9"):
        model(np.zeros((2, 12), np.int64))
    with pytest.raises(TypeError, match="integer token ids, got dtype float64"):
        model(np.zeros((1, 3)))


def test_zero_d_loss_backward_through_mean_and_scaling(rng):
    """The GPT's loss is 0-d: loss.mean() and (loss * 0.5).sum() backward like loss itself (the
    gradients equal loss's, and half of them)."""
    idx = rng.integers(0, TINY.vocab_size, (2, 5))
    model = GPT(TINY, seed=3, dtype=np.float64)
    grads = {}
    for name, reduce in [("plain", lambda l: l), ("mean", lambda l: l.mean()), ("half", lambda l: (l * 0.5).sum())]:
        model.zero_grad()
        _, loss = model(idx, idx)
        assert loss.shape == ()
        reduce(loss).backward()
        grads[name] = model.wte.weight.grad.copy()
    np.testing.assert_array_equal(grads["mean"], grads["plain"])
    np.testing.assert_allclose(grads["half"], 0.5 * grads["plain"], rtol=1e-12)


@pytest.mark.parametrize("temperature", [1e-6, 1e-310, 5e-324])
def test_tiny_temperature_is_greedy(temperature):
    """(logits - max) / T: the max becomes 0, the rest -huge or -inf, so the argmax is taken; at
    1e-310 logits / T once overflowed to inf and NaN, and token 0 came forever."""
    logits = np.array([[0.1, 2.0, -1.0, 1.9999], [5.0, -3.0, 4.0, 0.0]])
    got = sample_from_logits(logits, np.random.default_rng(0), temperature=temperature)
    assert got.tolist() == [1, 0]
    tied = np.array([[1.0, 3.0, 3.0, 0.0]] * 400)  # ties at the max share the probability
    assert set(sample_from_logits(tied, np.random.default_rng(1), temperature=temperature).tolist()) == {1, 2}


def test_generate_at_a_tiny_temperature_is_greedy(rng):
    model = GPT(TINY, seed=int(rng.integers(1 << 30)))
    prompt = rng.integers(0, TINY.vocab_size, (2, 3))
    np.testing.assert_array_equal(model.generate(prompt, 6, temperature=1e-310, seed=0),
                                  model.generate(prompt, 6, top_k=1, seed=1))
    with pytest.raises(ValueError, match="finite reciprocal"):
        model.logits(Tensor(np.ones((1, 1, TINY.n_embd), np.float32)), temperature=1e-310)


@pytest.mark.parametrize("bad,says", [(np.nan, "row 1 hold NaN"), (np.inf, r"row 1 hold \+inf")])
def test_non_finite_logits_are_refused_by_the_sampler(bad, says):
    logits = np.zeros((3, 4))
    logits[1, 2] = bad
    with pytest.raises(ValueError, match=says):
        sample_from_logits(logits, np.random.default_rng(0))
    masked = np.array([[-np.inf, 0.0, -np.inf, -np.inf]] * 5)  # -inf is a masked token: never drawn
    assert sample_from_logits(masked, np.random.default_rng(0)).tolist() == [1] * 5
    with pytest.raises(ValueError, match="every logit of row 0 is -inf"):
        sample_from_logits(np.full((1, 4), -np.inf), np.random.default_rng(0))


def test_nan_weights_do_not_sample_silently():
    """A model with NaN weights (e.g. loaded from a corrupt file) stops with an error at the first
    token, instead of emitting token 0 forever."""
    model = GPT(TINY)
    model.wte.weight.data[:] = np.nan
    with pytest.raises(ValueError, match="not finite"):
        model.generate(np.array([[1, 2]]), 3)


def test_training_reduces_loss_with_kernels_on_and_off_identically():
    """20 AdamW steps: the fused kernels and the NumPy references give the same loss curve."""
    from tinygrad_gpt import kernels
    from tinygrad_gpt.optim import AdamW, decay_groups
    curves = {}
    for backend in ("reference", "fused"):
        kernels.set_backend(backend)
        try:
            model = GPT(GPTConfig(vocab_size=17, block_size=16, n_layer=2, n_head=2, n_embd=16), seed=0)
            opt = AdamW(decay_groups(model.named_parameters(), 0.1), lr=3e-3)
            data_rng = np.random.default_rng(0)
            losses = []
            for _ in range(20):
                x = data_rng.integers(0, 8, (4, 16))
                y = (x + 1) % 17  # a learnable rule: next token = this token + 1
                _, loss = model(x, y)
                model.zero_grad()
                loss.backward()
                opt.step()
                losses.append(loss.item())
            curves[backend] = np.array(losses)
        finally:
            kernels.set_backend(None)
    np.testing.assert_allclose(curves["fused"], curves["reference"], rtol=2e-4)
    assert curves["fused"][-1] < curves["fused"][0] - 0.5


def test_to_device_moves_the_model_and_its_device(rng, device):
    """A GPT built on the CPU and moved with .to(device) reports `device` and runs there, with the
    same logits as one built there (bias=False too: its LayerNorms hold a constant zero bias that is
    not a parameter and must move as well)."""
    config = GPTConfig(vocab_size=11, block_size=9, n_layer=2, n_head=2, n_embd=8, dropout=0.0, bias=False)
    seed = int(rng.integers(1 << 30))
    moved = GPT(config, seed=seed, dtype=np.float64).to(device).eval()
    built = GPT(config, seed=seed, dtype=np.float64, device=device).eval()
    assert moved.device == device and moved.h[0].ln_1.device == device
    idx = rng.integers(0, config.vocab_size, (2, 5))
    got, _ = moved(idx)
    want, _ = built(idx)
    assert backend.device_of_array(got.data) == device
    np.testing.assert_allclose(backend.to_numpy(got.data), backend.to_numpy(want.data), rtol=1e-12, atol=1e-12)
    back = moved.to("cpu")
    assert back.device == "cpu" and backend.device_of_array(back(idx)[0].data) == "cpu"


# ---- the modern architecture: rotary, RMSNorm, QK-norm, ReLU^2, soft-capped logits, zero init -------
MODERN = dict(position="rotary", norm="rmsnorm", qk_norm=True, activation="relu2", logit_softcap=3.0,
              zero_init=True, bias=False)
TINY_MODERN = GPTConfig(**{**TINY.__dict__, **MODERN})        # head size 4: rotary needs it even


def _perturbed(model, rng, xp_device="cpu"):
    """Every parameter moved off its init (zero projections, unit gains) so gradients are generic."""
    xp = backend.get_xp(xp_device)
    for _, p in model.named_parameters():
        p.data += xp.asarray(rng.normal(0, 0.1 if p.ndim == 1 else 0.05, p.shape))
    return model


def test_modern_model_gradient_float64(rng, kernel_backend, device):
    """Sampled entries of every parameter of the modern GPT against central differences: the
    rotary, QK-norm, RMSNorm and soft-cap backwards inside the whole model (odd T = 7).

    With GELU: ReLU^2's second derivative jumps at 0, and a finite difference whose +-eps straddles
    one of the MLP's hundreds of pre-activations is off by up to eps there, more than tol 1e-6.
    relu2 is checked as an op away from 0 (test_gradcheck_ops.py), and in the model by its
    forward (test_rmsnorm_relu2_and_qk_norm_do_what_they_say) and by training below."""
    config = GPTConfig(**{**TINY_MODERN.__dict__, "activation": "gelu"})
    model = _perturbed(GPT(config, seed=int(rng.integers(1 << 30)), dtype=np.float64, device=device), rng, device)
    idx = rng.integers(0, TINY.vocab_size, (3, 7))
    targets = rng.integers(0, TINY.vocab_size, (3, 7))
    params = model.parameters()
    result = gradcheck(lambda *ps: model(idx, targets)[1], params, max_checks=6, tol=1e-6,
                       seed=int(rng.integers(1 << 30)))
    assert result.ok, f"{kernel_backend}: {result} (parameter {list(dict(model.named_parameters()))[result.where[0]]})"


def test_modern_parameters_have_gpt2_names_without_wpe_or_norm_biases():
    model = GPT(TINY_MODERN, seed=0)
    shapes = {n: p.shape for n, p in model.named_parameters()}
    assert shapes == GPT.parameter_shapes(TINY_MODERN) and list(shapes) == list(GPT.parameter_shapes(TINY_MODERN))
    assert "wpe.weight" not in shapes and not any(n.endswith(".bias") for n in shapes)
    assert {"h.0.ln_1.weight", "h.1.ln_2.weight", "ln_f.weight", "h.0.attn.c_attn.weight"} <= set(shapes)
    # rmsnorm with bias=True: the Linears get biases, the norms none
    with_bias = GPTConfig(**{**TINY_MODERN.__dict__, "bias": True})
    names = set(GPT.parameter_shapes(with_bias))
    assert "h.0.attn.c_attn.bias" in names and "h.0.ln_1.bias" not in names
    assert names == {n for n, _ in GPT(with_bias, seed=0).named_parameters()}


@pytest.mark.parametrize("field,value,says", [
    ("position", "alibi", "position must be one of learned, rotary, got 'alibi'"),
    ("norm", "batchnorm", "norm must be one of layernorm, rmsnorm, got 'batchnorm'"),
    ("activation", "swiglu", "activation must be one of gelu, relu2, got 'swiglu'"),
    ("logit_softcap", -1.0, "logit_softcap must be >= 0, got -1.0"),
    ("rope_base", 1.0, "rope_base must be > 1, got 1.0"),
])
def test_modern_fields_are_validated(field, value, says):
    with pytest.raises(ValueError, match=f"GPTConfig: {says}"):
        GPTConfig(**{**TINY.__dict__, field: value})


def test_rotary_needs_an_even_head_size():
    with pytest.raises(ValueError, match=r"head size n_embd / n_head must be even, got 12 / 4 = 3"):
        GPTConfig(n_embd=12, n_head=4, position="rotary")
    GPTConfig(n_embd=12, n_head=4)                              # learned positions: any head size


def test_gpt2_is_the_default_and_each_field_changes_only_what_it_names(rng):
    """The defaults are GPT-2's; a modern field leaves every weight it does not name as the GPT-2
    of the same seed draws it (wpe is drawn and dropped by a rotary model)."""
    assert GPTConfig() == GPTConfig(position="learned", norm="layernorm", qk_norm=False, activation="gelu",
                                    logit_softcap=0.0, zero_init=False, bias=True)
    base = GPT(TINY, seed=4).state_dict()
    for field, value in MODERN.items():
        if field == "bias":
            continue
        changed = GPT(GPTConfig(**{**TINY.__dict__, field: value}), seed=4).state_dict()
        for name, a in changed.items():
            if field == "zero_init" and name.endswith("c_proj.weight"):
                assert not a.any(), name
            else:
                np.testing.assert_array_equal(a, base[name], err_msg=f"{field}: {name}")
        assert set(base) - set(changed) == ({"wpe.weight"} if field == "position" else
                                            {n for n in base if ".ln_" in f".{n}" and n.endswith(".bias")}
                                            if field == "norm" else set())


def test_softcap_bounds_the_logits_and_the_loss_sees_the_capped_ones(rng):
    """logit_softcap = c: logits = c tanh(raw / c) of the uncapped model's raw logits (the same
    weights), |logits| <= c, and the cross-entropy is that of the capped logits. (Sampling reads
    GPT.logits too: test_generate_logits_are_forwards_last_row.)"""
    cap = 0.5
    raw_model = GPT(TINY, seed=2, dtype=np.float64)
    for p in raw_model.parameters():
        p.data *= 10.0                                      # raw logits well beyond the cap
    capped = GPT(GPTConfig(**{**TINY.__dict__, "logit_softcap": cap}), seed=2, dtype=np.float64)
    capped.load_state_dict(raw_model.state_dict())
    idx, targets = rng.integers(0, TINY.vocab_size, (2, 6)), rng.integers(0, TINY.vocab_size, (2, 6))
    raw, _ = raw_model(idx)
    logits, loss = capped(idx, targets)
    assert np.abs(raw.numpy()).max() > 4 * cap and np.abs(logits.numpy()).max() <= cap
    np.testing.assert_allclose(logits.numpy(), cap * np.tanh(raw.numpy() / cap), rtol=1e-12, atol=1e-15)
    assert loss.item() == pytest.approx(ops.cross_entropy(Tensor(logits.numpy()), targets).item(), rel=1e-12)


def test_zero_init_makes_every_block_the_identity_at_the_start(rng):
    """attn.c_proj and mlp.c_proj start at zero (and bias=False): each residual branch adds 0, so
    the hidden state is ln_f of the embedding."""
    config = GPTConfig(**{**TINY.__dict__, "zero_init": True, "bias": False})
    model = GPT(config, seed=int(rng.integers(1 << 30)), dtype=np.float64)
    idx = rng.integers(0, TINY.vocab_size, (2, 5))
    x = model.wte(idx) + model.wpe(np.arange(5))                  # (2, 5, C) the embedding
    np.testing.assert_array_equal(model.hidden(idx).numpy(), model.ln_f(x).numpy())


def test_rmsnorm_relu2_and_qk_norm_do_what_they_say(rng):
    # epsilon 1e-12: the rescaling test below is then exact to float64 rounding, not to eps / mean(q^2)
    model = GPT(GPTConfig(**{**TINY.__dict__, "norm": "rmsnorm", "activation": "relu2", "qk_norm": True,
                             "layer_norm_epsilon": 1e-12}), seed=1, dtype=np.float64)
    _perturbed(model, rng)
    x = rng.standard_normal((2, 5, TINY.n_embd))
    # ln_1: x / rms(x) * gain, no mean removed
    w = model.h[0].ln_1.weight.numpy()
    want = x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-12) * w
    np.testing.assert_allclose(model.h[0].ln_1(Tensor(x)).numpy(), want, rtol=1e-12)
    # mlp: c_proj(relu(c_fc(x))^2)
    mlp = model.h[0].mlp
    h = np.maximum(x @ mlp.c_fc.weight.numpy() + mlp.c_fc.bias.numpy(), 0) ** 2
    np.testing.assert_allclose(mlp(Tensor(x)).numpy(), h @ mlp.c_proj.weight.numpy() + mlp.c_proj.bias.numpy(),
                               rtol=1e-12, atol=1e-14)
    # qk_norm: scaling the q and k projections (weights and biases) changes nothing; without it, it does
    idx = rng.integers(0, TINY.vocab_size, (2, 6))
    before = model(idx)[0].numpy()
    for block in model.h:
        C = TINY.n_embd
        block.attn.c_attn.weight.data[:, :2 * C] *= 7.0
        block.attn.c_attn.bias.data[:2 * C] *= 7.0
    np.testing.assert_allclose(model(idx)[0].numpy(), before, rtol=1e-9, atol=1e-10)
    for block in model.h:
        block.attn.qk_norm = False
    assert not np.allclose(model(idx)[0].numpy(), before, rtol=1e-3)


def test_rotary_model_attention_maps_are_the_kernels(rng):
    """GPT.attention_probs applies the same rotation and QK-norm as the attention op: every row
    sums to 1 only if its scores are the ones the kernel's lse was computed from."""
    model = _perturbed(GPT(TINY_MODERN, seed=3, dtype=np.float64), rng)
    maps = model.attention_probs(rng.integers(0, TINY.vocab_size, (2, TINY.block_size)))
    assert len(maps) == TINY.n_layer and maps[0].shape == (2, TINY.n_head, TINY.block_size, TINY.block_size)
    for m in maps:
        np.testing.assert_allclose(m.sum(-1), 1.0, rtol=1e-10)
        assert not np.triu(m, 1).any()


@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-10), (np.float32, 1e-5)])
def test_rotary_kv_cache_logits_equal_full_forward_in_uneven_chunks(rng, kernel_backend, dtype, rtol):
    """Prefill 2, then chunks of 3, 1, 2, 1: the cached keys were rotated at their own positions,
    and each chunk's queries at the cache offset, so every logit equals the uncached forward's."""
    model = _perturbed(GPT(TINY_MODERN, seed=int(rng.integers(1 << 30)), dtype=dtype), rng).eval()
    idx = rng.integers(0, TINY.vocab_size, (3, TINY.block_size))
    full, _ = model(idx)
    caches = model.new_caches(3)
    pieces, t = [], 0
    for n in (2, 3, 1, 2, 1):
        pieces.append(model(idx[:, t:t + n], caches=caches)[0].numpy())
        t += n
    np.testing.assert_allclose(np.concatenate(pieces, axis=1), full.numpy(), rtol=rtol, atol=rtol * 1e-2)


@pytest.mark.parametrize("prompt_len", [1, 3, 8])
@pytest.mark.parametrize("mode", [dict(top_k=1), dict(seed=7), dict(seed=8, top_p=0.8, temperature=0.7)])
def test_rotary_generate_cached_equals_uncached_for_prompt_lengths(rng, prompt_len, mode):
    """Within the block and past it (windows with a fresh cache each), the cached sampler of a
    rotary model draws the tokens the uncached one draws."""
    model = _perturbed(GPT(TINY_MODERN, seed=int(rng.integers(1 << 30)), dtype=np.float64), rng)
    prompt = rng.integers(0, TINY.vocab_size, (2, prompt_len))
    new = 2 * TINY.block_size
    a = model.generate(prompt, new, use_cache=True, **mode)
    b = model.generate(prompt, new, use_cache=False, **mode)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (2, prompt_len + new)


def test_modern_model_trains_with_kernels_on_and_off_identically():
    """20 AdamW steps of the modern GPT (every field on, zero-initialised projections): the loss
    falls, and the fused kernels and the NumPy references give the same curve."""
    from tinygrad_gpt import kernels
    from tinygrad_gpt.optim import AdamW, decay_groups
    config = GPTConfig(vocab_size=17, block_size=16, n_layer=2, n_head=2, n_embd=16, **MODERN)
    curves = {}
    for backend_name in ("reference", "fused"):
        kernels.set_backend(backend_name)
        try:
            model = GPT(config, seed=0)
            opt = AdamW(decay_groups(model.named_parameters(), 0.1), lr=3e-3)
            data_rng = np.random.default_rng(0)
            losses = []
            for _ in range(20):
                x = data_rng.integers(0, 8, (4, 16))
                _, loss = model(x, (x + 1) % 17)  # next token = this token + 1
                model.zero_grad()
                loss.backward()
                opt.step()
                losses.append(loss.item())
            curves[backend_name] = np.array(losses)
        finally:
            kernels.set_backend(None)
    np.testing.assert_allclose(curves["fused"], curves["reference"], rtol=2e-4)
    assert curves["fused"][-1] < curves["fused"][0] - 0.5
