"""The PPO policy (a GPT plus a scalar value head), its frozen reference, and windowed scoring.

    hidden = ln_f(blocks(wte[idx] + wpe[pos]))             (B, L, C)  the GPT's last hidden state
    logits = hidden @ wte^T / temperature                  (B, L, V)  the policy pi(. | s_t)
    value  = hidden @ w_v + b_v                            (B, L)     V(s_t); w_v, b_v start at 0

`PolicyWithValue` composes a `GPT` and runs its modules (`wte`, `wpe`, `h`, `ln_f`) itself, because
GPT.forward returns logits only; the value head reads the same hidden state the logits come from.
The value head shares the trunk (its loss, times vf_coef, flows into the GPT), as in Ziegler et al.
2019 and TRL, unless `value_trunk_grad=False`: then it reads a detached hidden state and the value
loss trains the head alone (the GPT then moves only for the policy loss and the KL penalty).
Dropout is off: the GPT is put in eval mode, in which its Dropout modules pass activations through.

Windows. A prompt of P tokens and a response of R tokens can be longer than the model's block_size
W (the benchmark: 64 + 64 tokens, W = 64). Then the response is scored in the chunks of
model.context_windows: chunk [a, b) of the sequence is predicted from the window seq[start : b-1]
(start = b-1-W, or 0), one forward per chunk. Sampling (GPT.generate, which rollout.py calls) walks
the same windows with a fresh KV cache per chunk, so the log-probs recomputed here for PPO are those
of the distribution the tokens were drawn from. When P + R - 1 <= W there is one window holding the
whole sequence.

Dimension legend: B batch, L window length, C n_embd, V vocab, P prompt, R response.
Follows: Ziegler et al. 2019 (policy + value head on one trunk, frozen reference), TRL's
AutoModelForCausalLMWithValueHead, HF's strided perplexity evaluation (the windows).
Deliberately does not: share the reference's weights with the policy (it is a full copy), or
support padded prompts (prompts have a fixed length).
"""
from tinygrad_gpt import nn, ops
from tinygrad_gpt.model import GPT
from tinygrad_gpt.tensor import no_grad


class PolicyWithValue(nn.Module):
    """A GPT (the language model, trained by PPO) and a zero-initialised scalar value head."""

    def __init__(self, gpt, value_trunk_grad=True):
        self.gpt = gpt
        self.value_trunk_grad = value_trunk_grad  # False: the value loss trains the head only
        gpt.eval()  # dropout off during PPO
        C = gpt.config.n_embd
        dtype, device = gpt.wte.weight.dtype, gpt.device
        self.v_head = nn.Linear(C, 1, bias=True, std=0.0, dtype=dtype, device=device)  # (C, 1), zeros (std 0)

    @property
    def config(self):
        return self.gpt.config

    def hidden(self, idx):
        """The GPT's last hidden state (after ln_f) for token ids idx (B, L): (B, L, C)."""
        return self.gpt.hidden(idx)

    def forward(self, idx, last=None, temperature=1.0):
        """Logits / temperature (B, n, V) and values (B, n) at the last `n = last` positions (all if None)."""
        x = self.hidden(idx)                                              # (B, L, C)
        if last is not None:
            x = x[:, x.shape[1] - last:, :]                               # (B, n, C)
        logits = self.gpt.logits(x, temperature)                          # (B, n, V) tied lm_head / tau
        B, n, C = x.shape
        xv = x if self.value_trunk_grad else x.detach()                   # (B, n, C)
        values = (xv.reshape(B * n, C) @ self.v_head.weight + self.v_head.bias).reshape(B, n)  # (B, n)
        return logits, values


def frozen_copy(gpt):
    """A GPT with the same config and weights, in eval mode; use it under no_grad() only."""
    ref = GPT(gpt.config, seed=0, dtype=gpt.wte.weight.dtype, device=gpt.device)
    ref.load_state_dict(gpt.state_dict())
    return ref.eval()


def score_windows(model, seq, windows, temperature=1.0):
    """Scaled logits (B, R, V) and values (B, R) (None for a plain GPT) of the response tokens.

    model: a PolicyWithValue or a GPT; seq (B, P + R) token ids; windows from model.context_windows.
    Records a graph unless called under no_grad().
    """
    logits_parts, value_parts = [], []
    for start, a, b in windows:
        window = seq[:, start:b - 1]                                      # (B, b-1-start)
        if isinstance(model, PolicyWithValue):
            logits, values = model(window, last=b - a, temperature=temperature)  # (B, b-a, V), (B, b-a)
            value_parts.append(values)
        else:
            x = model.hidden(window)                                       # (B, L, C)
            x = x[:, x.shape[1] - (b - a):, :]                            # (B, b-a, C)
            logits = model.logits(x, temperature)                         # (B, b-a, V)
        logits_parts.append(logits)
    cat = (lambda parts: parts[0] if len(parts) == 1 else ops.concat(parts, axis=1))
    return cat(logits_parts), (cat(value_parts) if value_parts else None)  # (B, R, V), (B, R)


def token_logprobs(logits, tokens):
    """log softmax(logits) at tokens: logits (B, R, V) Tensor, tokens (B, R) ints -> (B, R) Tensor."""
    B, R, V = logits.shape
    picked = logits.log_softmax(axis=-1).gather(tokens.reshape(B, R, 1))  # (B, R, 1)
    return picked.reshape(B, R)                                           # (B, R)


def response_logprobs(model, seq, windows, temperature=1.0):
    """No-graph helper: full log-softmax (B, R, V) and values (B, R) or None, as numpy arrays."""
    with no_grad():
        logits, values = score_windows(model, seq, windows, temperature)
        logp = logits.log_softmax(axis=-1).numpy()                        # (B, R, V)
    return logp, (None if values is None else values.numpy())
