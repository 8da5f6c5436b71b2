"""The "human feedback" stage: preference pairs labelled by the scorer, and a learned reward model.

Data (as Stiennon et al. 2020 / Ouyang et al. 2022 collect it, with VADER standing in for people):
k responses are sampled from the reference for each prompt and every pair of them is compared
(InstructGPT ranks K = 4..9 and trains on all K(K-1)/2 pairs); the one the scorer prefers is
`chosen`, the other `rejected`; pairs whose scores differ by less than `min_margin` are dropped (a
person would call them a tie, and most unlabelled gibberish scores exactly 0). Pairs are split into
train and held out by prompt, so that no response is in both.

Models, both reading the response tokens only (B, R), both trained with the Bradley-Terry loss
L = mean -log sigmoid(r_chosen - r_rejected) (losses.BradleyTerryLoss):

    words (default)  r = sum over the complete words w of the response of v[w]      (WordSum)
    gpt              h = GPT hidden states (B, R, C);  r = pool_t (h_t @ w + b)      (PooledScore)

`words` has the structure of a lexicon scorer (VADER is close to a sum of per-word valences) and
learns every valence from the pairs; `gpt` is a copy of the policy's weights with a scalar head, as
reward models are initialised from the SFT model, pooled by a sum over positions (the same
structure for a character model, which must find the words itself), a mean or a max; its trunk
trains too, or stays frozen. On the cpu-preset checkpoint `words` learns the preference in seconds,
and better than `gpt` does in minutes (benchmarks/RESULTS.md, RLHF). Held-out pairwise accuracy is
the fraction of pairs with r_chosen > r_rejected.

Dimension legend: N pairs, k responses per prompt, R response tokens, C n_embd, W words.
Follows: Christiano et al. 2017, Stiennon et al. 2020 (reward model from pairwise comparisons),
Ouyang et al. 2022 eq. 1 (all pairs of K ranked responses). Deliberately does not: see the prompt
(the gold score ignores it too), model ties, or give a word the training responses never used a
valence other than 0.
"""
import re
from collections import Counter
from dataclasses import dataclass

import numpy as np

from tinygrad_gpt import nn
from tinygrad_gpt.settings import check_fields, setting
from tinygrad_gpt.backend import array_module, get_xp
from tinygrad_gpt.optim import AdamW, clip_grad_norm, decay_groups
from tinygrad_gpt.rlhf.losses import bradley_terry_loss
from tinygrad_gpt.rlhf.policy import frozen_copy
from tinygrad_gpt.rlhf.rollout import sample_responses
from tinygrad_gpt.rlhf.scorers import drop_partial_word
from tinygrad_gpt.tensor import Function, Tensor, no_grad

POOLS = ("sum", "mean", "max")
MODELS = ("words", "gpt")
REPORT_MARGIN = 0.05  # held-out accuracy is over pairs this far apart, whatever min_margin trains on
_WORD = re.compile(r"[a-z']+")


@dataclass
class RewardModelConfig:
    """Defaults chosen by held-out pairwise accuracy against VADER with benchmarks/reward_model.py on the
    cpu-preset checkpoint (the search: benchmarks/LOG.md, 2026-12-02; the result: RESULTS.md, RLHF)."""
    prompts: int = setting(8192, ge=1)             # prompts sampled; more pairs kept raising the accuracy up to here
    samples_per_prompt: int = setting(4, ge=2)     # responses per prompt, all k(k-1)/2 pairs compared: the largest gain
    min_margin: float = setting(0.05, ge=0)        # drop pairs whose gold scores differ by less (ties); wider: no gain
    heldout_fraction: float = setting(0.2, gt=0, lt=1)  # prompts whose pairs are kept out of training
    model: str = setting("words", choices=MODELS)  # per-word valences (VADER's structure); "gpt" (backbone + pooled
                                                   # head) must find the words itself and learns far more slowly
    pool: str = setting("sum", choices=POOLS)      # model gpt: a response's words add up, so sum (mean did worse)
    train_trunk: bool = True                       # model gpt: the trunk trains with the head (the head alone: worse)
    steps: int = setting(1200, ge=1)               # words at lr 3e-3: on its plateau by then
    batch_size: int = setting(64, ge=1)            # pairs per step
    lr: float = setting(3e-3, gt=0)                # AdamW; higher peaks sooner, then overfits, so this one needs no
                                                   # early stop; model gpt wants ~3e-4 (--rm-lr)
    weight_decay: float = setting(0.01, ge=0)      # matrices only (decay_groups): the valences are not decayed
    seed: int = setting(0, ge=0)

    def __post_init__(self):
        check_fields(self)


@dataclass
class PreferencePairs:
    chosen: np.ndarray     # (N, R) response tokens the scorer prefers
    rejected: np.ndarray   # (N, R)
    margin: np.ndarray     # (N,) gold score difference, > 0
    group: np.ndarray = None  # (N,) index of the prompt both responses answer (pairs of one prompt split together)

    def __post_init__(self):
        if self.group is None:
            self.group = np.arange(len(self.chosen))

    def __len__(self):
        return len(self.chosen)

    def take(self, idx):
        return PreferencePairs(self.chosen[idx], self.rejected[idx], self.margin[idx], self.group[idx])

    def split(self, heldout_fraction, rng):
        """(train, held out) by prompt: every pair of a held-out prompt is held out, so no response is in both."""
        groups = rng.permutation(np.unique(self.group))                   # (G,)
        n_held = int(round(len(groups) * heldout_fraction))
        held = np.isin(self.group, groups[:n_held])                       # (N,)
        return self.take(np.flatnonzero(~held)), self.take(np.flatnonzero(held))

    def with_margin(self, min_margin):
        """The pairs whose gold scores differ by at least min_margin."""
        return self.take(np.flatnonzero(self.margin >= min_margin))


def pairs_from_responses(a, b, scores_a, scores_b, min_margin):
    """PreferencePairs from two responses (N, R) per prompt and their gold scores (N,)."""
    diff = np.asarray(scores_a) - np.asarray(scores_b)                    # (N,)
    keep = np.abs(diff) >= min_margin                                     # (N,)
    a_wins = (diff > 0)[:, None]                                          # (N, 1)
    chosen = np.where(a_wins, a, b)[keep]                                 # (n, R)
    rejected = np.where(a_wins, b, a)[keep]                               # (n, R)
    return PreferencePairs(chosen, rejected, np.abs(diff)[keep], np.flatnonzero(keep))


def pairs_from_groups(responses, scores, min_margin):
    """Every pair (i < j) of the k responses of each prompt, responses (N, k, R) and scores (N, k).

    k = 4 gives 6 comparisons per prompt where k = 2 gives 1, for twice the samples (InstructGPT
    ranks K = 4..9 responses and trains on all K(K-1)/2 pairs of each prompt).
    """
    responses, scores = np.asarray(responses), np.asarray(scores, dtype=np.float64)
    N, k, _ = responses.shape
    i, j = np.triu_indices(k, 1)                                          # (k(k-1)/2,) each
    a = responses[:, i].reshape(N * len(i), -1)                           # (N k(k-1)/2, R)
    b = responses[:, j].reshape(N * len(i), -1)
    pairs = pairs_from_responses(a, b, scores[:, i].ravel(), scores[:, j].ravel(), min_margin)
    pairs.group = pairs.group // len(i)                                   # pair index -> prompt index
    return pairs


def make_preference_pairs(gpt, prompt_iter, n_prompts, response_len, temperature, scorer, decode, rng,
                          min_margin=0.05, stride=None, log=None, samples_per_prompt=2):
    """Sample k = samples_per_prompt responses per prompt with `gpt`, label every pair of them with `scorer`."""
    k = samples_per_prompt
    if k < 2:
        raise ValueError(f"make_preference_pairs: samples_per_prompt must be >= 2, got {k}")
    resp_all, score_all, done = [], [], 0
    while done < n_prompts:
        prompts = next(prompt_iter)                                       # (B, P)
        B = len(prompts)
        each = np.repeat(prompts, k, axis=0)                              # (B k, P) each prompt k times
        responses = sample_responses(gpt, each, response_len, temperature, rng, stride)  # (B k, R)
        scores = scorer([decode(r.tolist()) for r in responses])          # (B k,)
        resp_all.append(responses.reshape(B, k, -1)), score_all.append(np.asarray(scores).reshape(B, k))
        done += B
        if log:
            log(f"preference data: {done}/{n_prompts} prompts x {k} samples")
    return pairs_from_groups(np.concatenate(resp_all)[:n_prompts], np.concatenate(score_all)[:n_prompts],
                             min_margin)


class PooledScore(Function):
    """r_b = pool_t (x_bt . w + b): a scalar per position of hidden states x (B, R, C), pooled over R.

    w (C, 1) and b (1,) are the head's Linear weight and bias; pool is "sum", "mean" or "max".
    Hand example (B = 1, R = 3, C = 1, w = 2, b = 0.5, x = [1, -1, 3]): per-position scores
    s = [2.5, -1.5, 6.5]; sum 7.5, mean 2.5, max 6.5; dr/dw = sum_t x_t = 3 (sum), 1 (mean),
    x at the argmax = 3 (max); dr/db = 3, 1, 1.
    """

    @staticmethod
    def forward(ctx, x, w, b, pool="sum"):
        xp = array_module(x)
        if x.ndim != 3 or w.shape != (x.shape[2], 1) or b.shape != (1,):
            raise ValueError(f"PooledScore: hidden states (B, R, C) {x.shape}, weight {w.shape} and bias {b.shape} "
                             f"do not fit (weight must be (C, 1), bias (1,))")
        B, R, C = x.shape
        s = (x.reshape(B * R, C) @ w).reshape(B, R) + b[0]                # F1 (B, R) per-position scores
        if pool == "sum":
            r = s.sum(axis=1)                                             # F2 (B,)
        elif pool == "mean":
            r = s.mean(axis=1)                                            # F2 (B,)
        elif pool == "max":
            ctx.argmax = s.argmax(axis=1)                                 # (B,)
            r = s[xp.arange(B), ctx.argmax]                               # F2 (B,)
        else:
            raise ValueError(f"PooledScore: pool must be sum, mean or max, got {pool!r}")
        ctx.x, ctx.w, ctx.pool = x, w, pool
        return r

    @staticmethod
    def backward(ctx, dr):
        xp = array_module(dr)
        x, w = ctx.x, ctx.w
        B, R, C = x.shape
        # F2: sum -> ds_t = dr; mean -> dr / R; max -> dr at the argmax, 0 elsewhere
        if ctx.pool == "max":
            ds = xp.zeros((B, R), dtype=dr.dtype)                         # (B, R)
            ds[xp.arange(B), ctx.argmax] = dr
        else:
            ds = xp.broadcast_to(dr[:, None] / (R if ctx.pool == "mean" else 1), (B, R))  # (B, R)
        # F1: s = x @ w + b, so dx = ds w^T, dw = x^T ds, db = sum ds
        dx = (ds.reshape(B * R, 1) @ w.T).reshape(B, R, C)                 # (B, R, C)
        dw = x.reshape(B * R, C).T @ ds.reshape(B * R, 1)                 # (C, 1)
        db = ds.sum().reshape(1)                                          # (1,)
        return dx, dw.astype(w.dtype, copy=False), db.astype(w.dtype, copy=False)


class RewardModel(nn.Module):
    """r(response) = pool_t (h_t @ w + b) over a GPT's hidden states h (B, R, C); w, b start at 0.

    pool: "sum" (default, the structure of a lexicon score), "mean" or "max" (PooledScore).
    train_trunk: False trains the head alone on hidden states of the frozen backbone.
    """

    def __init__(self, gpt, copy=True, pool="sum", train_trunk=True):
        if pool not in POOLS:
            raise ValueError(f"RewardModel: pool must be one of {', '.join(POOLS)}, got {pool!r}")
        self.gpt = frozen_copy(gpt) if copy else gpt  # a copy: training it must not touch the policy
        self.gpt.eval()
        self.pool, self.train_trunk = pool, train_trunk
        C = self.gpt.config.n_embd
        self.head = nn.Linear(C, 1, bias=True, std=0.0, dtype=self.gpt.wte.weight.dtype, device=self.gpt.device)

    def trainable(self):
        """(name, parameter) pairs the optimiser updates: everything, or the head alone."""
        named = list(self.named_parameters())
        return named if self.train_trunk else [(n, p) for n, p in named if n.startswith("head.")]

    def forward(self, responses):
        """Rewards (B,) for response token ids (B, R), R <= block_size."""
        if self.train_trunk:
            x = self.gpt.hidden(responses)                                # (B, R, C)
        else:
            with no_grad():
                x = self.gpt.hidden(responses).detach()                   # (B, R, C) no graph into the trunk
        return PooledScore.apply(x, self.head.weight, self.head.bias, pool=self.pool)  # (B,)

    def score(self, responses, batch_size=128):
        """No-graph rewards (N,) float64 numpy for responses (N, R)."""
        xp = get_xp(self.gpt.device)
        out = []
        with no_grad():
            for lo in range(0, len(responses), batch_size):
                out.append(self(xp.asarray(responses[lo:lo + batch_size])).numpy())
        return np.concatenate(out).astype(np.float64)                     # (N,)


def words_of(text):
    """Lower-cased complete words of a response: runs of letters / apostrophes, without the trailing
    run the length limit may have cut (scorers.drop_partial_word: a word is complete once a non-letter
    follows it). "My LOVE, sweet swe" -> ["my", "love", "sweet"]."""
    return _WORD.findall(drop_partial_word(text).lower())


def vocabulary_of(pairs, decode, min_count=1):
    """{word: index} of the words of the training responses seen at least min_count times."""
    counts = Counter(w for rows in (pairs.chosen, pairs.rejected) for r in rows for w in words_of(decode(r.tolist())))
    return {w: i for i, w in enumerate(sorted(w for w, c in counts.items() if c >= min_count))}


class WordSum(Function):
    """r_b = sum_j v[col_j] over the entries j of row b: a sum of per-word valences v (W,).

    rows, cols (n,) index the (response, word) occurrences of a batch of B responses (a word twice in
    a response is two entries). Hand example: v = [1, -2, 0.5], rows = [0, 0, 1], cols = [0, 2, 1]:
    r = [1.5, -2]; dr = [1, 1] gives dv = [1, 1, 1], dr = [2, 3] gives dv = [2, 3, 2].
    """

    @staticmethod
    def forward(ctx, v, rows=None, cols=None, n_rows=None):
        xp = array_module(v)
        ctx.rows, ctx.cols, ctx.n_words = rows, cols, v.shape[0]
        return xp.bincount(rows, weights=v[cols], minlength=n_rows).astype(v.dtype, copy=False)  # (B,)

    @staticmethod
    def backward(ctx, dr):
        xp = array_module(dr)
        # forward: r_b = sum_{j: rows_j = b} v[cols_j], so dv_w = sum_{j: cols_j = w} dr[rows_j]
        dv = xp.bincount(ctx.cols, weights=dr[ctx.rows], minlength=ctx.n_words)  # (W,)
        return dv.astype(dr.dtype, copy=False)


class WordRewardModel(nn.Module):
    """r(response) = sum over its complete words w of a learned valence v[w]; v starts at 0.

    The structure of a lexicon scorer such as VADER (close to a sum of per-word valences), learned
    from the preference pairs alone: which words exist, and what each is worth, come from the
    Bradley-Terry loss; a word the training responses never used scores 0.
    """

    def __init__(self, decode, vocabulary, dtype=np.float64):
        if not vocabulary:
            raise ValueError("WordRewardModel: the vocabulary is empty (the training responses hold no words)")
        self.decode, self.vocabulary = decode, dict(vocabulary)
        self.valence = Tensor(np.zeros(len(vocabulary), dtype=dtype), requires_grad=True)  # (W,)

    def trainable(self):
        return list(self.named_parameters())

    def occurrences(self, responses):
        """(rows, cols) of the known words of responses (B, R) token ids."""
        rows, cols = [], []
        for b, r in enumerate(np.asarray(responses).tolist()):
            ids = [self.vocabulary[w] for w in words_of(self.decode(r)) if w in self.vocabulary]
            rows += [b] * len(ids)
            cols += ids
        return np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)  # (n,), (n,)

    def forward(self, responses):
        """Rewards (B,) for response token ids (B, R)."""
        rows, cols = self.occurrences(responses)
        return WordSum.apply(self.valence, rows=rows, cols=cols, n_rows=len(responses))  # (B,)

    def score(self, responses):
        """No-graph rewards (N,) float64 numpy for responses (N, R)."""
        with no_grad():
            return self(responses).numpy().astype(np.float64)              # (N,)


def make_reward_model(config, gpt, decode, train_pairs):
    """The config's reward model, untrained: words (vocabulary from train_pairs) or a copy of gpt + head."""
    if config.model == "words":
        return WordRewardModel(decode, vocabulary_of(train_pairs, decode))
    return RewardModel(gpt, pool=config.pool, train_trunk=config.train_trunk)


def pairwise_accuracy(model, pairs):
    """Fraction of pairs with r(chosen) > r(rejected)."""
    if len(pairs) == 0:
        raise ValueError("pairwise_accuracy: no pairs")
    return float((model.score(pairs.chosen) > model.score(pairs.rejected)).mean())


def train_reward_model(model, pairs, config, log=None, every=None, callback=None):
    """Bradley-Terry training on `pairs`; returns the list of per-step losses.

    callback(step), if given, runs after every `every` steps (e.g. to measure a held-out accuracy).
    """
    if len(pairs) < 2:
        raise ValueError(f"train_reward_model: need >= 2 pairs, got {len(pairs)} (lower min_margin or sample more)")
    rng = np.random.default_rng(config.seed)
    xp = get_xp(model.gpt.device) if hasattr(model, "gpt") else np
    opt = AdamW(decay_groups(model.trainable(), config.weight_decay), lr=config.lr, betas=(0.9, 0.95),
                weight_decay=config.weight_decay)
    losses, order, pos = [], rng.permutation(len(pairs)), 0
    bs = min(config.batch_size, len(pairs))
    for step in range(config.steps):
        if pos + bs > len(pairs):
            order, pos = rng.permutation(len(pairs)), 0
        idx = order[pos:pos + bs]                                         # (M,)
        pos += bs
        both = np.concatenate([pairs.chosen[idx], pairs.rejected[idx]])   # (2M, R) one forward for both
        r = model(xp.asarray(both))                                       # (2M,)
        loss = bradley_terry_loss(r[:bs], r[bs:])
        model.zero_grad()
        loss.backward()
        clip_grad_norm([p for _, p in model.trainable()], 1.0)
        opt.step()
        losses.append(loss.item())
        if log and (step + 1) % 50 == 0:
            log(f"reward model step {step + 1}/{config.steps}: loss {np.mean(losses[-50:]):.4f}")
        if callback and every and (step + 1) % every == 0:
            callback(step + 1)
    return losses
