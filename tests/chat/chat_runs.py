"""Tiny runs for the chat, serve and SFT tests: a chat model that has learned to answer "Yes." and
end its turn, and an untrained base model (plain continuation). Seconds to make, on any machine.

The chat run is trained by the library (sft.SFTTrainer) on conversations whose every reply is
"Yes.": after 150 steps its greedy reply to any message is "Yes." followed by <|end|>, which the
tests read as "the model answers, and stops when its turn ends".
"""
from pathlib import Path

import numpy as np

from tinygrad_gpt import checkpoint, sft
from tinygrad_gpt.chat_format import CHAT_TOKENS
from tinygrad_gpt.model import GPT, GPTConfig
from tinygrad_gpt.tokenizers import CharTokenizer
from tinygrad_gpt.train import TrainConfig

WORDS = ["good", "morrow", "my", "lord", "what", "news", "speak", "sir", "hark", "who", "goes", "there", "peace"]
ANSWER = "Yes."
ALPHABET = "".join(sorted(set(" ".join(WORDS) + ANSWER + "?!,.'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")))


def yes_conversations(n=240, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        words = rng.choice(WORDS, rng.integers(1, 5))
        out.append([{"role": "user", "content": " ".join(words).capitalize() + "?"},
                    {"role": "assistant", "content": ANSWER}])
    return out


def tiny_chat_run(out_dir, steps=150, block_size=48, seed=0):
    """Train and save (kind "sft") a 1-layer model that answers "Yes."; returns out_dir."""
    tokenizer = CharTokenizer(ALPHABET, special_tokens=CHAT_TOKENS)
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=block_size, n_layer=1, n_head=2, n_embd=32),
                seed=seed)
    train_rows, val_rows, held = sft.prepare(yes_conversations(), tokenizer, block_size, 0.1, seed=seed)
    config = TrainConfig(batch_size=16, max_iters=steps, lr=3e-3, min_lr=3e-4, warmup_iters=5, eval_batches=2,
                         sample_tokens=8, log_every=50, out_dir=str(out_dir), seed=seed)
    trainer = sft.SFTTrainer(model, tokenizer, train_rows, val_rows, config, sample_messages=held[0][:-1],
                             sft_meta={"conversations": "yes", "data_sha256": "0"}, log=lambda *a, **k: None,
                             progress=False)
    assert trainer.train() == "done"
    return Path(out_dir)


def tiny_base_run(out_dir, block_size=32, seed=0):
    """Save an untrained character model without chat tokens (kind "train"); returns out_dir."""
    tokenizer = CharTokenizer(ALPHABET + "\n")
    config = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=block_size, n_layer=1, n_head=2, n_embd=16)
    model = GPT(config, seed=seed)
    meta = {"kind": "train", "model_config": config.__dict__, "tokenizer": tokenizer.to_dict()}
    checkpoint.save_checkpoint(out_dir, model.state_dict(), meta)
    return Path(out_dir)
