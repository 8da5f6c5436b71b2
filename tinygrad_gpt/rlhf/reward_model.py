"""The "human feedback" stage's model: a reward model learned from preference pairs (pairs.py).

Models, both reading the response tokens only (B, R), both trained with the Bradley-Terry loss
L = mean -log sigmoid(r_chosen - r_rejected) (losses.BradleyTerryLoss):

    gpt (default)  h = the policy's hidden states (B, R, C); s_t = w2 . relu(W1 h_t + b1) + b2;
                   r = sum of s_t over the positions t that end a complete word     (PooledScore)
    words          r = sum over the complete words w of the response of v[w]       (WordSum)

`gpt` is the language model itself with a scalar head, as InstructGPT, TRL's RewardTrainer and
OpenRLHF build reward models: a copy of the policy's weights (it already reads this text: which
characters make which word, in what context) and a fresh head whose last layer starts at 0. The
score is read where each word ends (where the trunk has seen the whole word and its context) and
added up, because a response's sentiment is carried by its words; reading every position, the mean,
the max or the last position alone learn more slowly (benchmarks/LOG.md). The head learns fast
(lr) and the trained trunk moves gently (trunk_lr). `words` learns a valence per word, the structure
of a lexicon scorer such as VADER, from the pairs alone: the transparent baseline beside it. Held-out
pairwise accuracy is the fraction of pairs with r_chosen > r_rejected; both models save and load as a
run of kind "reward-model" (save_reward_model, load_reward_model), which any RL method can optimise
without training it again (--reward-model DIR).

Dimension legend: N pairs, G prompts, M pairs and U distinct responses in a step, k responses per
prompt, R response tokens, C n_embd, H head_hidden, F a head layer's input (C or H), W words,
V vocabulary.
Follows: Christiano et al. 2017, Stiennon et al. 2020 (reward model from pairwise comparisons),
Ouyang et al. 2022 eq. 1 (all pairs of K ranked responses). Deliberately does not: see the prompt
(the gold score ignores it too), model ties, or give a word the training responses never used a
valence other than 0.
"""
import math
import re
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from tinygrad_gpt import checkpoint, nn, runs
from tinygrad_gpt.backend import array_module, get_xp, to_numpy
from tinygrad_gpt.model import GPT
from tinygrad_gpt.optim import AdamW, clip_grad_norm
from tinygrad_gpt.rlhf.losses import bradley_terry_loss
from tinygrad_gpt.rlhf.policy import frozen_copy
from tinygrad_gpt.rlhf.scorers import drop_partial_word
from tinygrad_gpt.settings import check_fields, setting
from tinygrad_gpt.tensor import Function, Tensor, no_grad, unwrap

POOLS = ("words", "sum", "mean", "max", "last")
HEADS = ("mlp", "linear")
MODELS = ("gpt", "words")
REPORT_MARGIN = 0.05  # held-out accuracy is over pairs this far apart, whatever min_margin trains on
_WORD = re.compile(r"[a-z']+")


@dataclass
class RewardModelConfig:
    """Defaults chosen by held-out pairwise accuracy against VADER with benchmarks/reward_model.py on the
    cpu-preset checkpoint (the searches: benchmarks/LOG.md; the result: RESULTS.md, RLHF)."""
    prompts: int = setting(32768, ge=1)            # prompts sampled (~9 min on 2 cores): more pairs kept raising the
                                                   # accuracy up to here, and kept the trunk from overfitting
    samples_per_prompt: int = setting(4, ge=2)     # responses per prompt, all k(k-1)/2 pairs compared: the largest gain
    min_margin: float = setting(0.05, ge=0)        # drop pairs whose gold scores differ by less (ties); wider: no gain
    heldout_fraction: float = setting(0.2, gt=0, lt=1)  # prompts whose pairs are kept out of training
    model: str = setting("gpt", choices=MODELS)    # the policy's trunk + a scalar head; "words": per-word valences
                                                   # (VADER's own structure), the transparent baseline
    pool: str = setting("words", choices=POOLS)    # model gpt: sum the head's scores at the ends of complete words;
                                                   # every position (sum), mean, max or the last one learn slower
    head: str = setting("mlp", choices=HEADS)      # model gpt: a per-position MLP (C -> head_hidden -> 1) or a linear
    head_hidden: int = setting(512, ge=1)          # the MLP head's width
    train_trunk: bool = True                       # model gpt: the trunk trains with the head (frozen: the head alone)
    steps: int = setting(4000, ge=1)               # model gpt: ~15 min on 2 cores
    batch_size: int = setting(16, ge=1)            # prompts per step: every kept pair among their responses is
                                                   # compared, each response scored once (~3.9 pairs per prompt
                                                   # at k = 4 for the cost of 4 responses; pairs drawn one by one
                                                   # cost 2 responses each)
    lr: float = setting(3e-3, gt=0)                # AdamW for the head (and for words' valences)
    trunk_lr: float = setting(1e-4, gt=0)          # AdamW for the trunk, which starts trained: moved gently
    warmup: int = setting(100, ge=0)               # steps of linear warm-up of both rates, then a cosine to a tenth
    weight_decay: float = setting(0.01, ge=0)      # matrices only: the valences, gains and biases are not decayed
    seed: int = setting(0, ge=0)

    def __post_init__(self):
        check_fields(self)


class PooledScore(Function):
    """r_b = pool_t (x_bt . w + b): a scalar per position of features x (B, R, F), pooled over R.

    w (F, 1) and b (1,) are the head's last Linear weight and bias; pool is "sum", "mean", "max",
    "last" (position R - 1 alone) or "words" (the positions where mask (B, R) is 1: the ends of
    complete words, see word_ends; r = sum_t mask_t s_t).
    Hand example (B = 1, R = 3, F = 1, w = 2, b = 0.5, x = [1, -1, 3], mask = [1, 0, 1]): per-position
    scores s = [2.5, -1.5, 6.5]; sum 7.5, mean 2.5, max 6.5, last 6.5, words 9; dr/dw = sum_t x_t = 3
    (sum), 1 (mean), x at the argmax = 3 (max), 3 (last), 1 + 3 = 4 (words); dr/db = 3, 1, 1, 1, 2.
    """

    @staticmethod
    def forward(ctx, x, w, b, pool="sum", mask=None):
        xp = array_module(x)
        if x.ndim != 3 or w.shape != (x.shape[2], 1) or b.shape != (1,):
            raise ValueError(f"PooledScore: features (B, R, F) {x.shape}, weight {w.shape} and bias {b.shape} "
                             f"do not fit (weight must be (F, 1), bias (1,))")
        B, R, F = x.shape
        if pool == "words" and (mask is None or mask.shape != (B, R)):
            raise ValueError(f"PooledScore: pool 'words' needs a mask of shape (B, R) = {(B, R)}, got "
                             f"{None if mask is None else mask.shape}")
        s = (x.reshape(B * R, F) @ w).reshape(B, R) + b[0]                # F1 (B, R) per-position scores
        if pool == "sum":
            r = s.sum(axis=1)                                             # F2 (B,)
        elif pool == "mean":
            r = s.mean(axis=1)                                            # F2 (B,)
        elif pool == "max":
            ctx.argmax = s.argmax(axis=1)                                 # (B,)
            r = s[xp.arange(B), ctx.argmax]                               # F2 (B,)
        elif pool == "last":
            r = s[:, R - 1]                                               # F2 (B,)
        elif pool == "words":
            ctx.mask = mask.astype(s.dtype, copy=False)                   # (B, R)
            r = (s * ctx.mask).sum(axis=1)                                # F2 (B,)
        else:
            raise ValueError(f"PooledScore: pool must be one of {', '.join(POOLS)}, got {pool!r}")
        ctx.x, ctx.w, ctx.pool = x, w, pool
        return r

    @staticmethod
    def backward(ctx, dr):
        xp = array_module(dr)
        x, w = ctx.x, ctx.w
        B, R, F = x.shape
        # F2: sum -> ds_t = dr; mean -> dr / R; max -> dr at the argmax, 0 elsewhere; last -> dr at
        # R - 1; words -> dr mask_t
        if ctx.pool in ("max", "last"):
            ds = xp.zeros((B, R), dtype=dr.dtype)                         # (B, R)
            ds[xp.arange(B), ctx.argmax if ctx.pool == "max" else R - 1] = dr
        elif ctx.pool == "words":
            ds = dr[:, None] * ctx.mask                                   # (B, R)
        else:
            ds = xp.broadcast_to(dr[:, None] / (R if ctx.pool == "mean" else 1), (B, R))  # (B, R)
        # F1: s = x @ w + b, so dx = ds w^T, dw = x^T ds, db = sum ds
        dx = (ds.reshape(B * R, 1) @ w.T).reshape(B, R, F)                 # (B, R, F)
        dw = x.reshape(B * R, F).T @ ds.reshape(B * R, 1)                 # (F, 1)
        db = ds.sum().reshape(1)                                          # (1,)
        return dx.astype(x.dtype, copy=False), dw.astype(w.dtype, copy=False), db.astype(w.dtype, copy=False)


def word_end_table(decode, vocab_size):
    """(ends, starts): bool (V,) each, whether token v's text ends / starts with a letter or apostrophe."""
    texts = [decode([v]) for v in range(vocab_size)]
    letter = (lambda c: c.isalpha() or c == "'")
    return (np.array([bool(t) and letter(t[-1]) for t in texts]),
            np.array([bool(t) and letter(t[0]) for t in texts]))


def word_ends(tokens, table):
    """mask (B, R) float32: 1 where position t ends a complete word, i.e. token t's text ends in a letter
    and token t + 1's does not start with one. The last position is never an end: the length limit may
    have cut its word (as words_of drops it). "I love thee sw" (characters): 1 under "I", "love", "thee"."""
    ends, starts = table
    tokens = np.asarray(tokens)
    mask = np.zeros(tokens.shape, dtype=np.float32)                       # (B, R)
    mask[:, :-1] = ends[tokens[:, :-1]] & ~starts[tokens[:, 1:]]
    return mask


class RewardModel(nn.Module):
    """r(response) = pool_t head(h_t) over a GPT's hidden states h (B, R, C), the head a per-position MLP
    (C -> H -> 1, ReLU) or a Linear (C -> 1); its last layer starts at 0, so r starts at 0.

    decode: the tokenizer's, for pool "words" (which positions end words). train_trunk False trains the
    head alone on the hidden states of the frozen trunk.
    """

    def __init__(self, gpt, decode=None, copy=True, pool="words", head="mlp", head_hidden=512, train_trunk=True,
                 seed=0):
        if pool not in POOLS:
            raise ValueError(f"RewardModel: pool must be one of {', '.join(POOLS)}, got {pool!r}")
        if head not in HEADS:
            raise ValueError(f"RewardModel: head must be one of {', '.join(HEADS)}, got {head!r}")
        if pool == "words" and decode is None:
            raise ValueError("RewardModel: pool 'words' needs the tokenizer's decode (which tokens end words)")
        self.gpt = frozen_copy(gpt) if copy else gpt  # a copy: training it must not touch the policy
        self.gpt.eval()
        self.pool, self.head_kind, self.train_trunk = pool, head, train_trunk
        C, dtype, device = self.gpt.config.n_embd, self.gpt.wte.weight.dtype, self.gpt.device
        self.word_table = word_end_table(decode, self.gpt.config.vocab_size) if pool == "words" else None
        rng = np.random.default_rng(seed)
        self.fc = (nn.Linear(C, head_hidden, rng=rng, std=C ** -0.5, dtype=dtype, device=device)
                   if head == "mlp" else None)
        self.head = nn.Linear(head_hidden if head == "mlp" else C, 1, bias=True, std=0.0, dtype=dtype, device=device)

    @property
    def config(self):
        """The trunk's GPTConfig (what runs.save_run records)."""
        return self.gpt.config

    def trainable(self):
        """(name, parameter) pairs the optimiser updates: everything, or the head alone."""
        named = list(self.named_parameters())
        return named if self.train_trunk else [(n, p) for n, p in named if not n.startswith("gpt.")]

    def forward(self, responses):
        """Rewards (B,) for response token ids (B, R), R <= block_size."""
        if self.train_trunk:
            x = self.gpt.hidden(responses)                                # (B, R, C)
        else:
            with no_grad():
                x = self.gpt.hidden(responses).detach()                   # (B, R, C) no graph into the trunk
        if self.fc is not None:
            x = self.fc(x).relu()                                         # (B, R, H)
        mask = None
        if self.pool == "words":
            xp = get_xp(self.gpt.device)
            mask = xp.asarray(word_ends(to_numpy(unwrap(responses)), self.word_table))  # (B, R)
        return PooledScore.apply(x, self.head.weight, self.head.bias, pool=self.pool, mask=mask)  # (B,)

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
    """The config's reward model, untrained: a copy of gpt + a head, or words (vocabulary from train_pairs)."""
    if config.model == "words":
        return WordRewardModel(decode, vocabulary_of(train_pairs, decode))
    return RewardModel(gpt, decode, pool=config.pool, head=config.head, head_hidden=config.head_hidden,
                       train_trunk=config.train_trunk, seed=config.seed)


def pairwise_accuracy(model, pairs):
    """Fraction of pairs with r(chosen) > r(rejected)."""
    if len(pairs) == 0:
        raise ValueError("pairwise_accuracy: no pairs")
    return float((model.score(pairs.chosen) > model.score(pairs.rejected)).mean())


def parameter_groups(model, config):
    """AdamW groups: the trunk's matrices (decayed) and the rest of the trunk at config.trunk_lr; the
    head's matrices (decayed) and biases, or the word valences (not decayed), at config.lr."""
    groups = []
    for lr, named in ((config.trunk_lr, [(n, p) for n, p in model.trainable() if n.startswith("gpt.")]),
                      (config.lr, [(n, p) for n, p in model.trainable() if not n.startswith("gpt.")])):
        matrices = [p for n, p in named if p.ndim >= 2]
        rest = [p for n, p in named if p.ndim < 2]
        groups += [{"params": ps, "weight_decay": wd, "lr": lr, "peak_lr": lr}
                   for ps, wd in ((matrices, config.weight_decay), (rest, 0.0)) if ps]
    return groups


def lr_factor(step, steps, warmup, floor=0.1):
    """The learning rate's fraction of its peak at `step` (0-based) of `steps`: linear from 1/warmup to 1
    over `warmup` steps, then a cosine down to `floor` at the last step. steps 10, warmup 2: 0.5, 1, then
    falling to 0.1 at step 9."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - 1 - warmup)              # 0 .. 1
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def train_reward_model(model, pairs, config, log=None, every=None, callback=None):
    """Bradley-Terry training on `pairs`; returns the list of per-step losses.

    A step takes config.batch_size prompts (pairs.group) and compares every pair of their responses,
    scoring each distinct response once: InstructGPT's batching (Ouyang et al. 2022, sec. 3.5), which
    gives k - 1 comparisons per response scored instead of 1/2 and keeps the pairs of one prompt, which
    share their responses, from being seen at different times as if they were independent. Both
    learning rates follow lr_factor (warm-up, then a cosine to a tenth). callback(step, pairs_seen), if
    given, runs after every `every` steps (e.g. to measure a held-out accuracy).
    """
    if len(pairs) < 2:
        raise ValueError(f"train_reward_model: need >= 2 pairs, got {len(pairs)} (lower min_margin or sample more)")
    rng = np.random.default_rng(config.seed)
    xp = get_xp(model.gpt.device) if hasattr(model, "gpt") else np
    opt = AdamW(parameter_groups(model, config), betas=(0.9, 0.95))
    params = [p for _, p in model.trainable()]
    prompts = pairs.by_prompt()                                           # G index arrays
    bs = min(config.batch_size, len(prompts))
    losses, order, pos, pairs_seen = [], rng.permutation(len(prompts)), 0, 0
    for step in range(config.steps):
        for group in opt.param_groups:
            group["lr"] = group["peak_lr"] * lr_factor(step, config.steps, config.warmup)
        if pos + bs > len(prompts):
            order, pos = rng.permutation(len(prompts)), 0
        idx = np.concatenate([prompts[g] for g in order[pos:pos + bs]])   # (M,) the pairs of bs prompts
        pos += bs
        both = np.concatenate([pairs.chosen[idx], pairs.rejected[idx]])   # (2M, R)
        distinct, which = np.unique(both, axis=0, return_inverse=True)    # (U, R), (2M,) both = distinct[which]
        which = which.reshape(-1)
        r = model(xp.asarray(distinct))                                   # (U,) one forward per response
        loss = bradley_terry_loss(r[which[:len(idx)]], r[which[len(idx):]])
        model.zero_grad()
        loss.backward()
        clip_grad_norm(params, 1.0)
        opt.step()
        losses.append(loss.item())
        pairs_seen += len(idx)
        if log and (step + 1) % 100 == 0:
            log(f"reward model step {step + 1}/{config.steps}: loss {np.mean(losses[-100:]):.4f}")
        if callback and every and (step + 1) % every == 0:
            callback(step + 1, pairs_seen)
    return losses


# ---- saving and loading: the "reward-model" run kind ---------------------------------------------
def save_reward_model(directory, model, config, tokenizer, info=None):
    """Write a trained reward model into `directory` as a run of kind "reward-model" (runs.save_run:
    atomic): its weights (the trunk and head, or the valences), its RewardModelConfig, the tokenizer
    it reads responses with, and `info` (its figures: pairs, accuracies). load_reward_model reads it."""
    meta = {"reward_model": {"config": asdict(config), "info": dict(info or {})}}
    if isinstance(model, WordRewardModel):
        meta["reward_model"]["vocabulary"] = sorted(model.vocabulary, key=model.vocabulary.get)  # index order
    return runs.save_run(directory, runs.REWARD_MODEL, model, tokenizer, **meta)


def load_reward_model(directory, device="cpu"):
    """(reward model, its tokenizer, meta["reward_model"]) from a directory save_reward_model wrote.

    Errors name the file and the field (checkpoint.CheckpointError) or, for another kind of run, say
    what the directory holds instead."""
    state, _, meta = checkpoint.load_checkpoint(directory)
    where = f"{Path(directory) / checkpoint.JSON_NAME}"
    kind = meta.get("kind", runs.TRAIN)
    if kind != runs.REWARD_MODEL:
        what = runs.KINDS.get(kind, f"an unknown kind {kind!r}")
        raise checkpoint.CheckpointError(f"{where}: meta.kind {kind!r}: it holds {what}, not a reward model "
                                         f"(train one with --reward model; it is saved in --out/reward_model)")
    saved = meta.get("reward_model")
    if not isinstance(saved, dict) or not isinstance(saved.get("config"), dict):
        raise checkpoint.CheckpointError(f"{where}: meta.reward_model.config is missing or not an object")
    try:
        config = RewardModelConfig(**saved["config"])
    except (TypeError, ValueError) as exc:
        raise checkpoint.CheckpointError(f"{where}: meta.reward_model.config: {exc}") from None
    tokenizer = runs.tokenizer_of(meta, directory)
    if config.model == "words":
        vocabulary = saved.get("vocabulary")
        if not isinstance(vocabulary, list) or not all(isinstance(w, str) for w in vocabulary):
            raise checkpoint.CheckpointError(f"{where}: meta.reward_model.vocabulary must be a list of words")
        model = WordRewardModel(tokenizer.decode, {w: i for i, w in enumerate(vocabulary)})
    else:
        gpt_config = runs.check_meta(meta, directory)
        dtype = next(iter(state.values())).dtype
        gpt = GPT(gpt_config, seed=0, dtype=dtype, device=device, init=False)  # every weight is loaded next
        model = RewardModel(gpt, tokenizer.decode, copy=False, pool=config.pool, head=config.head,
                            head_hidden=config.head_hidden, train_trunk=config.train_trunk)
    try:
        model.load_state_dict(state)
    except (KeyError, ValueError) as exc:
        raise checkpoint.CheckpointError(f"{where}: the weights do not fit meta.reward_model.config: {exc}") from None
    return model, tokenizer, saved
