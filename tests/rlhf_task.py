"""The tiny RLHF task the RLHF and plot tests share: a 33-character alphabet, a 2-layer 32-wide
policy that learns in a few steps, the fraction of vowels as its score (VADER needs a model that
already writes words), random prompts; and a tiny untrained checkpoint with a way to run a script
on it as a person does (a process of its own, from the repository root).
"""
import os
import subprocess
import sys
from dataclasses import asdict

import numpy as np

from conftest import REPO
from tinygrad_gpt.model import GPT, GPTConfig
from tinygrad_gpt.rlhf import PolicyWithValue, frozen_copy
from tinygrad_gpt.tokenizers.char import CharTokenizer

ALPHABET = "\n !',.?abcdefghijklmnopqrstuvwxyz"
TOK = CharTokenizer(ALPHABET)


def vowel_fraction(texts):
    return np.array([sum(c in "aeiou" for c in t) / len(t) for t in texts])


def tiny_policy(seed=1, block_size=32):
    cfg = GPTConfig(vocab_size=TOK.vocab_size, block_size=block_size, n_layer=2, n_head=2, n_embd=32)
    gpt = GPT(cfg, seed=seed)
    return PolicyWithValue(gpt), frozen_copy(gpt)


def prompt_tokens(n=4000, seed=0):
    return np.random.default_rng(seed).integers(0, TOK.vocab_size, size=n)


def run_script(path, *flags, timeout=600):
    """`python <path relative to the repository> flags...` from the repository root: the CompletedProcess."""
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(REPO / path), *map(str, flags)], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env=env)


def tiny_checkpoint(tmp_path, data_path):
    from tinygrad_gpt import checkpoint, data
    from tinygrad_gpt.model import GPT, GPTConfig
    from tinygrad_gpt.tokenizers.char import CharTokenizer

    tok = CharTokenizer.from_text(data.load_text(data_path))
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16)
    checkpoint.save_checkpoint(tmp_path / "ckpt", GPT(cfg, seed=0).state_dict(),
                               {"model_config": asdict(cfg), "tokenizer": tok.to_dict()})
    return cfg
