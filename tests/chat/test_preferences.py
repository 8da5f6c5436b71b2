"""Judgments from the compare page as RLHF pairs (tinygrad_gpt/preferences.py), and --preferences
wired into the reward model, DPO and examples/rlhf_sentiment.py's checks.

Hand example used below (prompt length 2, replies of 3 tokens):
    {"choice": "a", prompt [1, 2], a [3, 4, 5], b [6, 7, 8]}  -> chosen [3, 4, 5], rejected [6, 7, 8], group 0
    {"choice": "b", prompt [1, 2], a [3, 3, 3], b [5, 5, 5]}  -> chosen [5, 5, 5], rejected [3, 3, 3], group 0
    {"choice": "a", prompt [2, 1], ...}                        -> group 1 (another prompt)
    a tie, a skip, a reply of 2 tokens                         -> counted, not used
"""
import json

import numpy as np
import pytest

from tinygrad_gpt import preferences
from tinygrad_gpt.rlhf import DPOConfig, PPOConfig, RewardModelConfig, frozen_copy
from tinygrad_gpt.rlhf.run import build_reward_model, make_trainer
from tinygrad_gpt.model import GPT, GPTConfig
from tinygrad_gpt.tokenizers import CharTokenizer


def judgment(choice, prompt, a, b):
    return {"choice": choice, "prompt_ids": prompt, "a_ids": a, "b_ids": b, "prompt": "", "a": "", "b": ""}


HAND = [judgment("a", [1, 2], [3, 4, 5], [6, 7, 8]), judgment("b", [1, 2], [3, 3, 3], [5, 5, 5]),
        judgment("a", [2, 1], [1, 1, 1], [2, 2, 2]), judgment("tie", [1, 2], [3, 4, 5], [3, 4, 5]),
        judgment("skip", [1, 2], [3, 4, 5], [6, 7, 8]), judgment("a", [1, 2], [3, 4], [6, 7])]


def write(path, records, tail=""):
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)
    return path


def test_judged_pairs_hand_example(tmp_path):
    judged = preferences.load_preferences(write(tmp_path / "j.jsonl", HAND), 2, 3, vocab_size=9)
    assert judged.chosen.tolist() == [[3, 4, 5], [5, 5, 5], [1, 1, 1]]
    assert judged.rejected.tolist() == [[6, 7, 8], [3, 3, 3], [2, 2, 2]]
    assert judged.prompts.tolist() == [[1, 2], [1, 2], [2, 1]] and judged.group.tolist() == [0, 0, 1]
    assert judged.counts == {"a": 3, "b": 1, "tie": 1, "skip": 1, "judgments": 6, "other_shape": 1, "used": 3}
    seqs = judged.sequence_pairs()
    assert seqs.chosen.tolist()[0] == [1, 2, 3, 4, 5] and seqs.rejected.tolist()[1] == [1, 2, 3, 3, 3]
    assert judged.response_pairs().margin.tolist() == [1.0, 1.0, 1.0]
    assert judged.summary() == ("6 judgments (A 3, B 1, tie 1, skip 1): 3 pairs of 2 prompts used, 1 of another "
                                "prompt or reply length left out")


def test_a_cut_last_line_is_left_out_and_a_bad_line_is_named(tmp_path):
    path = write(tmp_path / "j.jsonl", HAND[:1], tail='{"choice": "a", "prompt_ids": [1')
    assert len(preferences.read_judgments(path)) == 1
    write(path, HAND[:1] + [{"choice": "maybe"}] + HAND[:1])
    with pytest.raises(ValueError, match=r"j\.jsonl:2: expected a judgment with a choice of a, b, tie, skip"):
        preferences.read_judgments(path)
    write(path, [dict(HAND[0], a_ids=[1, -2, 3])])
    with pytest.raises(ValueError, match=r"j\.jsonl:1: a_ids must be a list of token ids"):
        preferences.read_judgments(path)


def test_nothing_usable_or_another_models_ids_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"none of the 6 judgments .* replies of 4 tokens to a prompt of 2 .* "
                                         r"--default-max-tokens 4"):
        preferences.load_preferences(write(tmp_path / "j.jsonl", HAND), 2, 4, vocab_size=9)
    with pytest.raises(ValueError, match=r"judgment 1 holds token id 8, outside the model's 8"):
        preferences.load_preferences(tmp_path / "j.jsonl", 2, 3, vocab_size=8)


def test_write_prompts_are_windows_that_encode_back_to_their_length(tmp_path):
    tok = CharTokenizer.from_text("good morrow, my lord\n")
    tokens = tok.encode_array("good morrow, my lord\n" * 5)
    windows = preferences.write_prompts(tmp_path / "p.jsonl", tokens, 6, 7, tok.decode, seed=1)
    lines = [json.loads(line)["prompt"] for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert len(lines) == 6 and [tok.encode(t) for t in lines] == windows.tolist()
    assert all(len(t) == 7 for t in lines)


# ---- wired into the RLHF methods -------------------------------------------------------------------

WORDS = "good love sweet bad hate foul the king my lord".split()


@pytest.fixture(scope="module")
def setup():
    """A tiny untrained character model and judged pairs whose chosen replies hold "love" and whose
    rejected ones hold "hate" (prompt 4, replies 8)."""
    tok = CharTokenizer.from_text(" ".join(WORDS) + "\n")
    gpt = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16), seed=0)
    rng = np.random.default_rng(0)
    records = []
    for k in range(40):
        prompt = tok.encode(" ".join(rng.choice(WORDS, 3))[:4].ljust(4))
        good, bad = tok.encode(f"{rng.choice(['my', 'the'])} love "[:8].ljust(8)), tok.encode("my hate "[:8])
        a_wins = bool(k % 2)
        records.append(judgment("a" if a_wins else "b", prompt, good if a_wins else bad, bad if a_wins else good))
    tokens = tok.encode_array(" ".join(rng.choice(WORDS, 400)))
    return tok, gpt, preferences.judged_pairs(records, 4, 8, tok.vocab_size), tokens


class NoScorer:
    """A scorer the judged pairs must not need (DPO with preferences pairs by the file)."""

    def __call__(self, texts):
        return np.zeros(len(texts))


def test_the_reward_model_learns_the_judged_words(setup):
    tok, gpt, judged, tokens = setup
    cfg = PPOConfig(prompt_len=4, response_len=8, batch_size=8, minibatch_size=8)
    rm, info = build_reward_model(gpt, tok, tokens, cfg, NoScorer(), RewardModelConfig(model="words", steps=200, batch_size=8),
                                  log=lambda *a: None, preferences=judged)
    assert info["heldout_accuracy"] == 1.0 and info["train_pairs"] + info["heldout_pairs"] == 40
    v = dict(zip(rm.vocabulary, rm.valence.numpy()))
    assert v["love"] > 0 > v["hate"]


def test_dpo_takes_its_pairs_from_the_judgments(setup):
    """Each step trains on batch_size / group_size judged pairs (4 of the 40 here), whatever the scorer says."""
    tok, gpt, judged, tokens = setup
    cfg = DPOConfig(steps=3, batch_size=8, prompt_len=4, response_len=8, group_size=2, minibatch_size=4, lr=1e-3)
    trainer = make_trainer("dpo", cfg, frozen_copy(gpt).train(), frozen_copy(gpt), tok, tokens, NoScorer(),
                           preferences=judged)
    seen = []
    for _ in range(12):
        m = trainer.step()
        assert m["pairs"] == 4
        seen.extend(trainer.judged_order[trainer.judged_at - 4:trainer.judged_at].tolist())
    assert sorted(seen[:40]) == list(range(40))        # one pass over every pair before any repeats
    assert m["reward_margin"] > 0                       # the policy now prefers the chosen replies


def test_preferences_need_a_reward_model_or_dpo(setup):
    tok, gpt, judged, tokens = setup
    with pytest.raises(ValueError, match="--preferences: ppo trains on rewards, not pairs"):
        make_trainer("ppo", PPOConfig(prompt_len=4, response_len=8), gpt, frozen_copy(gpt), tok, tokens,
                     NoScorer(), preferences=judged)


def test_the_example_refuses_preferences_without_a_reward_model_or_dpo(tmp_path, capsys):
    from conftest import load_script
    from tinygrad_gpt import cli
    rlhf_sentiment = load_script("rlhf_sentiment")
    status = cli.run_main(lambda: rlhf_sentiment.main(["--preferences", str(tmp_path / "j.jsonl"), "--out",
                                                       str(tmp_path / "out")]))
    assert status == 2
    assert "--preferences: the judgments train a reward model (--reward model) or DPO" in capsys.readouterr().err
