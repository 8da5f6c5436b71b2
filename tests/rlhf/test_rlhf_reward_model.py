"""The reward model: its pooled head's gradient, the pairs it trains on, and accuracy above chance.

Hand-computed head (PooledScore, B = 1, R = 3, C = 1, w = 2, b = 0.5, x = [1, -1, 3]):
    per-position scores s = 2x + 0.5 = [2.5, -1.5, 6.5]
    sum 7.5:  dr/dx = [2, 2, 2], dr/dw = 1 - 1 + 3 = 3, dr/db = 3
    mean 2.5: everything of sum divided by R = 3
    max 6.5 (position 2): dr/dx = [0, 0, 2], dr/dw = 3, dr/db = 1
    last 6.5 (position 2): the same as max here
    words, mask [1, 0, 1]: 2.5 + 6.5 = 9, dr/dx = [2, 0, 2], dr/dw = 1 + 3 = 4, dr/db = 2

Hand-computed pairs of k = 3 responses with scores [0.5, 0.0, 0.52], min margin 0.05:
    (0, 1) margin 0.5, 0 chosen;  (0, 2) margin 0.02, a tie, dropped;  (1, 2) margin 0.52, 2 chosen.

The gold scorer of the training test is the fraction of vowels (learnable by a 1-layer 32-wide
model in seconds); benchmarks/reward_model.py reports the held-out accuracy against VADER with the
cpu-preset backbone.
"""
import numpy as np
import pytest

from tinygrad_gpt.gradcheck import gradcheck
from tinygrad_gpt.model import GPT, GPTConfig
from tinygrad_gpt.rlhf import (PooledScore, RewardModel, RewardModelConfig, WordRewardModel, WordSum,
                               make_preference_pairs, pairs_from_groups, pairs_from_responses, pairwise_accuracy,
                               prompt_batches, train_reward_model, vocabulary_of, words_of)
from tinygrad_gpt.rlhf.pairs import PreferencePairs
from tinygrad_gpt.rlhf.reward_model import load_reward_model, save_reward_model, word_end_table, word_ends
from tinygrad_gpt.tensor import Tensor
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


def t64(x):
    return Tensor(np.asarray(x, dtype=np.float64), requires_grad=True)


@pytest.mark.parametrize("pool, value, dx, dw, db", [
    ("sum", 7.5, [2, 2, 2], 3.0, 3.0),
    ("mean", 2.5, [2 / 3, 2 / 3, 2 / 3], 1.0, 1.0),
    ("max", 6.5, [0, 0, 2], 3.0, 1.0),
    ("last", 6.5, [0, 0, 2], 3.0, 1.0),
    ("words", 9.0, [2, 0, 2], 4.0, 2.0),
])
def test_pooled_score_hand_example(pool, value, dx, dw, db):
    x, w, b = t64([[[1.0], [-1.0], [3.0]]]), t64([[2.0]]), t64([0.5])
    r = PooledScore.apply(x, w, b, pool=pool, mask=np.array([[1.0, 0.0, 1.0]]))
    assert r.numpy().tolist() == pytest.approx([value], abs=1e-12)
    r.sum().backward()
    np.testing.assert_allclose(x.grad[0, :, 0], dx, atol=1e-12)
    np.testing.assert_allclose(w.grad, [[dw]], atol=1e-12)
    np.testing.assert_allclose(b.grad, [db], atol=1e-12)


def _head_inputs(rng):
    """Hidden states (B, R, C) = (3, 7, 5) with distinct per-position scores (the max is not at a kink)."""
    return t64(rng.normal(size=(3, 7, 5))), t64(rng.normal(size=(5, 1))), t64(rng.normal(size=(1,)))


@pytest.mark.parametrize("pool", ["sum", "mean", "max", "last", "words"])
def test_pooled_score_gradcheck(pool):
    rng = np.random.default_rng()
    x, w, b = _head_inputs(rng)
    weights = rng.normal(size=3)                                          # (B,) a loss that weighs rows apart
    mask = (rng.random((3, 7)) < 0.4).astype(np.float64)                  # (B, R) word ends

    res = gradcheck(lambda x, w, b: (PooledScore.apply(x, w, b, pool=pool, mask=mask) * Tensor(weights)).sum(),
                    [x, w, b])
    assert res.ok, res


class SumRuleBackward(PooledScore):
    """A wrong backward for the controls: every pool's dr sent to every position (the sum's rule)."""

    @staticmethod
    def backward(ctx, dr):
        ctx.pool = "sum"
        return PooledScore.backward(ctx, dr)


@pytest.mark.parametrize("pool", ["max", "words"])
def test_gradcheck_control_catches_a_pool_that_spreads_its_gradient(pool):
    """Control: a max pool (one position) or a words pool (the masked ones) whose backward sends dr to
    every position must fail."""
    rng = np.random.default_rng()
    x, w, b = _head_inputs(rng)
    mask = np.zeros((3, 7))
    mask[:, ::3] = 1.0
    assert not gradcheck(lambda x, w, b: SumRuleBackward.apply(x, w, b, pool=pool, mask=mask).sum(), [x, w, b]).ok


def test_pooled_score_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"weight \(4, 1\)"):
        PooledScore.apply(t64(np.zeros((2, 3, 5))), t64(np.zeros((4, 1))), t64(np.zeros(1)))
    with pytest.raises(ValueError, match="pool must be"):
        PooledScore.apply(t64(np.zeros((2, 3, 5))), t64(np.zeros((5, 1))), t64(np.zeros(1)), pool="median")
    with pytest.raises(ValueError, match=r"needs a mask of shape \(B, R\) = \(2, 3\), got \(3, 2\)"):
        PooledScore.apply(t64(np.zeros((2, 3, 5))), t64(np.zeros((5, 1))), t64(np.zeros(1)), pool="words",
                          mask=np.zeros((3, 2)))


def test_word_ends_marks_complete_words_only():
    ids = np.array([TOK.encode("i love thee, sw")])
    mask = word_ends(ids, word_end_table(TOK.decode, TOK.vocab_size))[0]
    # "i" ends at 0, "love" at 5, "thee" at 10; "sw" is cut by the length limit: no end
    assert np.flatnonzero(mask).tolist() == [0, 5, 10]


def test_reward_model_gradcheck_through_head_and_trunk():
    """The whole model in float64: the MLP head, the word-end pool and the trunk's last block."""
    cfg = GPTConfig(vocab_size=TOK.vocab_size, block_size=8, n_layer=1, n_head=2, n_embd=8)
    model = RewardModel(GPT(cfg, seed=0, dtype=np.float64), TOK.decode, head_hidden=6,
                        seed=int(np.random.default_rng().integers(1 << 30)))
    rng = np.random.default_rng()
    model.head.weight.data[...] = rng.normal(size=model.head.weight.shape)  # the head starts at 0: give it values
    responses = np.array([TOK.encode("my love,"), TOK.encode("i hate i")])  # (2, 8)
    params = [model.fc.weight, model.head.weight, model.head.bias, model.gpt.h[0].mlp.c_fc.weight, model.gpt.ln_f.weight]
    res = gradcheck(lambda *ps: model(responses), params, max_checks=40)
    assert res.ok, res


def test_pairs_from_groups_hand_example():
    responses = np.array([[[1, 1], [2, 2], [3, 3]],
                          [[4, 4], [5, 5], [6, 6]]])                      # (N, k, R) = (2, 3, 2)
    scores = np.array([[0.5, 0.0, 0.52],
                       [0.0, 0.0, 0.0]])                                  # the second prompt: all ties
    pairs = pairs_from_groups(responses, scores, min_margin=0.05)
    np.testing.assert_array_equal(pairs.chosen, [[1, 1], [3, 3]])
    np.testing.assert_array_equal(pairs.rejected, [[2, 2], [2, 2]])
    np.testing.assert_allclose(pairs.margin, [0.5, 0.52])
    np.testing.assert_array_equal(pairs.group, [0, 0])


def test_by_prompt_lists_each_prompts_pairs():
    """groups [2, 0, 2, 1, 0] -> prompt 0: pairs 1, 4; prompt 1: pair 3; prompt 2: pairs 0, 2."""
    pairs = PreferencePairs(np.zeros((5, 2)), np.ones((5, 2)), np.ones(5), np.array([2, 0, 2, 1, 0]))
    assert [p.tolist() for p in pairs.by_prompt()] == [[1, 4], [3], [0, 2]]


def test_split_keeps_each_prompts_pairs_together():
    rng = np.random.default_rng(0)
    responses = rng.integers(0, 9, size=(50, 4, 3))
    pairs = pairs_from_groups(responses, rng.normal(size=(50, 4)), min_margin=0.0)
    train, held = pairs.split(0.2, rng)
    assert len(train) + len(held) == len(pairs) == 50 * 6
    assert len(np.unique(held.group)) == 10
    assert not set(train.group) & set(held.group)


def test_frozen_trunk_trains_the_head_alone():
    cfg = GPTConfig(vocab_size=TOK.vocab_size, block_size=8, n_layer=1, n_head=1, n_embd=8)
    rng = np.random.default_rng(0)
    chosen, rejected = rng.integers(0, TOK.vocab_size, (2, 16, 8))
    pairs = pairs_from_responses(chosen, rejected, np.ones(16), np.zeros(16), 0.05)
    model = RewardModel(GPT(cfg, seed=0), TOK.decode, pool="sum", train_trunk=False)
    before = {n: p.numpy().copy() for n, p in model.named_parameters()}
    train_reward_model(model, pairs, RewardModelConfig(steps=3, batch_size=8, lr=1e-2, warmup=0))
    moved = {n for n, p in model.named_parameters() if not np.array_equal(p.numpy(), before[n])}
    # (the bias gets no gradient from a Bradley-Terry loss, up to rounding: it shifts both rewards alike)
    assert {"head.weight", "fc.weight"} <= moved and not any(n.startswith("gpt.") for n in moved)


@pytest.mark.parametrize("pool, head, train_trunk", [("sum", "mlp", True), ("max", "linear", True),
                                                     ("sum", "linear", False), ("last", "mlp", True)])
def test_reward_model_beats_chance_on_heldout_pairs(pool, head, train_trunk):
    cfg = GPTConfig(vocab_size=TOK.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=32)
    sampler = GPT(cfg, seed=0)
    rng = np.random.default_rng(0)
    prompts = prompt_batches(rng.integers(0, TOK.vocab_size, 3000), 64, 4, rng)
    pairs = make_preference_pairs(sampler, prompts, 320, 16, 1.0, vowel_fraction, TOK.decode, rng, min_margin=0.05,
                                  samples_per_prompt=3)
    train, heldout = pairs.split(0.25, rng)
    assert len(heldout) > 100
    model = RewardModel(GPT(cfg, seed=1), TOK.decode, pool=pool, head=head, head_hidden=32, train_trunk=train_trunk)
    before = pairwise_accuracy(model, heldout)
    assert before == 0.0  # a zero head scores every response the same: never strictly prefers
    losses = train_reward_model(model, train, RewardModelConfig(steps=150, batch_size=32, lr=3e-3, trunk_lr=1e-3,
                                                                warmup=10, pool=pool, train_trunk=train_trunk))
    assert np.mean(losses[-20:]) < np.mean(losses[:20])
    acc = pairwise_accuracy(model, heldout)
    assert acc > 0.75, f"held-out pairwise accuracy {acc:.3f} is not clearly above chance (0.5)"


def test_train_reward_model_needs_pairs():
    cfg = GPTConfig(vocab_size=TOK.vocab_size, block_size=8, n_layer=1, n_head=1, n_embd=8)
    empty = pairs_from_responses(np.zeros((1, 4), int), np.zeros((1, 4), int), [0.0], [0.0], 0.05)
    with pytest.raises(ValueError, match="need >= 2 pairs"):
        train_reward_model(RewardModel(GPT(cfg), TOK.decode), empty, RewardModelConfig(steps=1))


def test_a_step_scores_each_response_once_and_compares_every_pair_of_its_prompts():
    """InstructGPT's batching: a step of batch_size prompts scores each distinct response of their
    pairs once (one forward of U rows) and its loss is the Bradley-Terry mean over all their pairs,
    the same as scoring every pair's two responses apart."""
    cfg = GPTConfig(vocab_size=TOK.vocab_size, block_size=8, n_layer=1, n_head=1, n_embd=8)
    rng = np.random.default_rng()
    N, k = 6, 4
    pairs = pairs_from_groups(rng.integers(0, TOK.vocab_size, (N, k, 8)), rng.uniform(-1, 1, (N, k)), 0.05)
    model = RewardModel(GPT(cfg, seed=0), TOK.decode, pool="sum", head="linear")
    model.head.weight.data[...] = rng.standard_normal(model.head.weight.shape)  # not the zero head: r differs
    rc, rr = model.score(pairs.chosen), model.score(pairs.rejected)
    expected = np.mean(np.logaddexp(0.0, -(rc - rr)))                    # -log sigmoid(rc - rr), all pairs
    rows, forward = [], model.forward
    model.forward = lambda responses: rows.append(len(responses)) or forward(responses)
    losses = train_reward_model(model, pairs, RewardModelConfig(steps=1, batch_size=N, lr=1e-3, warmup=0))
    assert losses[0] == pytest.approx(expected, rel=1e-5)
    assert rows == [len(np.unique(np.concatenate([pairs.chosen, pairs.rejected]), axis=0))]
    rows.clear()
    seen = []
    train_reward_model(model, pairs, RewardModelConfig(steps=3, batch_size=2, lr=1e-3, warmup=0),
                       every=1, callback=lambda step, pairs_seen: seen.append(pairs_seen))
    assert all(u <= 2 * k for u in rows) and len(rows) == 3              # two prompts' responses per step
    per_prompt = np.bincount(pairs.group, minlength=N)
    assert seen[-1] <= 3 * 2 * per_prompt.max() and np.all(np.diff([0] + seen) > 0)


# ---- the per-word valence model ---------------------------------------------------------------

def test_word_sum_hand_example():
    """v = [1, -2, 0.5], occurrences (row, word) (0, 0), (0, 2), (1, 1): r = [1.5, -2]; dr = [2, 3] -> dv = [2, 3, 2]."""
    v = t64([1.0, -2.0, 0.5])
    r = WordSum.apply(v, rows=np.array([0, 0, 1]), cols=np.array([0, 2, 1]), n_rows=2)
    np.testing.assert_allclose(r.numpy(), [1.5, -2.0], atol=1e-12)
    (r * Tensor(np.array([2.0, 3.0]))).sum().backward()
    np.testing.assert_allclose(v.grad, [2.0, 3.0, 2.0], atol=1e-12)


def _occurrences(rng, B=5, W=7, n=30):
    """Random (row, word) occurrences with repeats (a word twice in one response), and an empty row."""
    rows = rng.integers(0, B - 1, n)                                      # row B - 1 holds no word
    cols = rng.integers(0, W, n)
    return rows, cols, B


def test_word_sum_gradcheck():
    rng = np.random.default_rng()
    rows, cols, B = _occurrences(rng)
    weights = Tensor(rng.normal(size=B))
    res = gradcheck(lambda v: (WordSum.apply(v, rows=rows, cols=cols, n_rows=B) * weights).sum(),
                    [t64(rng.normal(size=7))])
    assert res.ok, res


def test_gradcheck_control_catches_a_word_sum_that_drops_repeated_words():
    """Control: dv[cols] = dr[rows] (fancy assignment keeps one of a repeated index) must fail."""

    class AssignBackward(WordSum):
        @staticmethod
        def backward(ctx, dr):
            dv = np.zeros(ctx.n_words)
            dv[ctx.cols] = dr[ctx.rows]
            return dv

    rng = np.random.default_rng()
    rows, cols, B = _occurrences(rng)
    cols[:2], rows[:2] = 3, 0                                             # word 3 twice in response 0
    weights = Tensor(rng.normal(size=B))
    assert not gradcheck(lambda v: (AssignBackward.apply(v, rows=rows, cols=cols, n_rows=B) * weights).sum(),
                         [t64(rng.normal(size=7))]).ok


def test_words_of_drops_the_cut_word_and_lowercases():
    assert words_of("My LOVE, sweet swe") == ["my", "love", "sweet"]
    assert words_of("o'er the hill!") == ["o'er", "the", "hill"]
    assert words_of("unfinishe") == []


def test_word_reward_model_learns_a_separable_preference():
    """Gold = (#good - #bad) over responses of random words: the valences come out signed right, held out > 0.9."""
    rng = np.random.default_rng(0)
    lexicon = ["good", "bad", "the", "cat", "sat", "on", "mat"]

    def response():
        text = " ".join(rng.choice(lexicon, size=4)) + "."                 # 4 words, the last one complete
        return TOK.encode(text.ljust(20, "."))                            # (20,) fixed length

    responses = np.array([[response() for _ in range(3)] for _ in range(300)])  # (N, k, R)
    texts = [[TOK.decode(r.tolist()) for r in group] for group in responses]
    gold = np.array([[t.count("good") - t.count("bad") for t in group] for group in texts], dtype=float)
    pairs = pairs_from_groups(responses, gold, min_margin=0.5)
    train, heldout = pairs.split(0.25, rng)
    model = WordRewardModel(TOK.decode, vocabulary_of(train, TOK.decode))
    assert pairwise_accuracy(model, heldout) == 0.0                       # all valences 0: no preference yet
    train_reward_model(model, train, RewardModelConfig(steps=200, batch_size=32, lr=3e-2))
    v = dict(zip(model.vocabulary, model.valence.numpy()))
    assert v["good"] > 0.5 and v["bad"] < -0.5 and abs(v["cat"]) < 0.5 * v["good"]
    assert pairwise_accuracy(model, heldout) > 0.9


def test_word_reward_model_needs_words():
    with pytest.raises(ValueError, match="vocabulary is empty"):
        WordRewardModel(TOK.decode, {})


# ---- the "reward-model" run kind ---------------------------------------------------------------
def _vowel_pairs(cfg, n=160):
    rng = np.random.default_rng(0)
    prompts = prompt_batches(rng.integers(0, TOK.vocab_size, 3000), 32, 4, rng)
    return make_preference_pairs(GPT(cfg, seed=0), prompts, n, 8, 1.0, vowel_fraction, TOK.decode, rng,
                                 min_margin=0.05, samples_per_prompt=3)


@pytest.mark.parametrize("model_kind", ["gpt", "words"])
def test_saved_reward_model_scores_as_the_trained_one(tmp_path, model_kind):
    from tinygrad_gpt.rlhf import make_reward_model
    cfg = GPTConfig(vocab_size=TOK.vocab_size, block_size=8, n_layer=1, n_head=2, n_embd=16)
    pairs = _vowel_pairs(cfg)
    rm_cfg = RewardModelConfig(model=model_kind, steps=20, batch_size=16, head_hidden=8, warmup=0)
    model = make_reward_model(rm_cfg, GPT(cfg, seed=1), TOK.decode, pairs) if model_kind == "gpt" else \
        WordRewardModel(TOK.decode, {"a": 0, "i": 1, "oe": 2})
    if model_kind == "gpt":
        train_reward_model(model, pairs, rm_cfg)
    else:
        model.valence.data[...] = [0.5, -1.0, 2.0]
    save_reward_model(tmp_path / "rm", model, rm_cfg, TOK, {"heldout_accuracy": 0.75})
    loaded, tok, saved = load_reward_model(tmp_path / "rm")
    assert type(loaded) is type(model) and tok.to_dict() == TOK.to_dict()
    assert saved["config"]["model"] == model_kind and saved["info"]["heldout_accuracy"] == 0.75
    responses = np.concatenate([pairs.chosen[:6], np.array([TOK.encode("a i oe x")])[:, :8]])
    scores = model.score(responses)
    assert np.ptp(scores) > 0                      # a trained model that tells responses apart
    np.testing.assert_array_equal(loaded.score(responses), scores)


def test_load_reward_model_names_what_a_directory_holds_instead(tmp_path):
    from tinygrad_gpt import checkpoint, runs
    cfg = GPTConfig(vocab_size=TOK.vocab_size, block_size=8, n_layer=1, n_head=1, n_embd=8)
    runs.save_run(tmp_path / "train", runs.TRAIN, GPT(cfg), TOK)
    with pytest.raises(checkpoint.CheckpointError, match=r"meta.kind 'train': it holds a training run.*not a reward"):
        load_reward_model(tmp_path / "train")
    save_reward_model(tmp_path / "rm", RewardModel(GPT(cfg), TOK.decode), RewardModelConfig(), TOK)
    with pytest.raises(checkpoint.CheckpointError, match="meta.kind 'reward-model'.*load_reward_model"):
        runs.load_model(tmp_path / "rm")
    with pytest.raises(FileNotFoundError):
        load_reward_model(tmp_path / "missing")


def test_lr_factor_warms_up_then_falls_to_a_tenth():
    """steps 10, warmup 2: 1/2, 2/2, then progress (s - 2) / 7 of a cosine from 1 to 0.1: s = 2 gives 1,
    s = 9 gives 0.1, and halfway (progress 1/2) would give 0.55."""
    from tinygrad_gpt.rlhf.reward_model import lr_factor
    f = [lr_factor(s, 10, 2) for s in range(10)]
    assert f[:3] == pytest.approx([0.5, 1.0, 1.0]) and f[-1] == pytest.approx(0.1)
    assert all(a > b for a, b in zip(f[2:], f[3:]))
    assert lr_factor(0, 10, 0) == pytest.approx(1.0) and lr_factor(5, 11, 0) == pytest.approx(0.55)
