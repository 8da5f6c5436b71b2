"""The reward model learns a preference from labelled pairs and beats chance on held-out pairs.

The gold scorer here is the fraction of vowels (learnable by a 1-layer 32-wide model in seconds);
the benchmark reports the held-out accuracy against VADER with the cpu-preset backbone.
"""
import numpy as np
import pytest

from tinygrad_gpt.model import GPT, GPTConfig
from tinygrad_gpt.rlhf import (RewardModel, RewardModelConfig, make_preference_pairs, pairs_from_responses,
                               pairwise_accuracy, prompt_batches, train_reward_model)
from tinygrad_gpt.tokenizers.char import CharTokenizer

TOK = CharTokenizer("\n !',.?abcdefghijklmnopqrstuvwxyz")


def vowel_fraction(texts):
    return np.array([sum(c in "aeiou" for c in t) / len(t) for t in texts])


def test_pairs_from_responses_labels_and_drops_ties():
    a = np.array([[1, 1], [2, 2], [3, 3]])
    b = np.array([[4, 4], [5, 5], [6, 6]])
    pairs = pairs_from_responses(a, b, np.array([0.9, 0.1, 0.5]), np.array([0.1, 0.8, 0.52]), min_margin=0.05)
    np.testing.assert_array_equal(pairs.chosen, [[1, 1], [5, 5]])        # the third pair is a tie: dropped
    np.testing.assert_array_equal(pairs.rejected, [[4, 4], [2, 2]])
    np.testing.assert_allclose(pairs.margin, [0.8, 0.7])


def test_reward_model_beats_chance_on_heldout_pairs():
    cfg = GPTConfig(vocab_size=TOK.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=32)
    sampler = GPT(cfg, seed=0)
    rng = np.random.default_rng(0)
    prompts = prompt_batches(rng.integers(0, TOK.vocab_size, 3000), 64, 4, rng)
    pairs = make_preference_pairs(sampler, prompts, 640, 16, 1.0, vowel_fraction, TOK.decode, rng, min_margin=0.05)
    train, heldout = pairs.split(0.25, rng)
    assert len(heldout) > 100
    model = RewardModel(GPT(cfg, seed=1))
    before = pairwise_accuracy(model, heldout)
    assert before == 0.0  # a zero head scores every response the same: never strictly prefers
    losses = train_reward_model(model, train, RewardModelConfig(steps=150, batch_size=32, lr=3e-3))
    assert np.mean(losses[-20:]) < np.mean(losses[:20])
    acc = pairwise_accuracy(model, heldout)
    assert acc > 0.75, f"held-out pairwise accuracy {acc:.3f} is not clearly above chance (0.5)"


def test_train_reward_model_needs_pairs():
    cfg = GPTConfig(vocab_size=TOK.vocab_size, block_size=8, n_layer=1, n_head=1, n_embd=8)
    empty = pairs_from_responses(np.zeros((1, 4), int), np.zeros((1, 4), int), [0.0], [0.0], 0.05)
    with pytest.raises(ValueError, match="need >= 2 pairs"):
        train_reward_model(RewardModel(GPT(cfg)), empty, RewardModelConfig(steps=1))
