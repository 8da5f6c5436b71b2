"""Supervised chat tuning (SFT): a base GPT learns to answer as the assistant of conversations.

The base is a run directory (examples/shakespeare.py's --out) or a Hugging Face GPT-2 folder. Its
tokenizer gains the chat tokens (chat_format.add_chat_tokens) and its embedding table the rows for
them (`grow_vocab`: each new row the mean of the old ones, so the tied head gives the new tokens an
average token's logit rather than a random one). Conversations are rendered, split by
conversation into train and held out (TrainConfig.val_fraction of them), and packed into rows of
block_size + 1 tokens (chat_format.pack); the loss is the mean cross-entropy over the assistant's
tokens alone (targets elsewhere are the ignore index, -100, which ops.cross_entropy skips).

`SFTTrainer` is train.Trainer with rows in place of a token stream: an epoch is one shuffled pass
over the packed training rows (`PackedBatches`, resumable at any batch like data.ShuffledBatches),
the val loss is over the held-out conversations' assistant tokens (every held-out row when they
fit in eval_batches batches, else the same seeded eval_batches batches each time; token-weighted),
and the sample after each epoch is the reply to the first held-out conversation. Everything else is
the Trainer's: warmup + cosine, clipping, checkpoints after each epoch and on Ctrl-C or SIGTERM,
the non-finite stop, metrics.jsonl, resume. Its checkpoints are meta.kind "sft", with meta.sft
naming the base and the data (its SHA-256, so --resume refuses other data).

Dimension legend: N rows, L = block_size + 1 tokens a row, T = block_size, C n_embd, V vocab_size.
Follows: nanochat's chat_sft (mask of the assistant's tokens, ignore index), Hewitt 2021 on
initialising new embeddings to the mean. Deliberately does not: run data parallel (one process), use
LoRA, or weight the gradient accumulation by tokens (micro-batches weigh by rows, as the Trainer's).
"""
from dataclasses import asdict
from pathlib import Path

import numpy as np

from tinygrad_gpt import chat_format, checkpoint, data, runs
from tinygrad_gpt.backend import to_device, to_numpy
from tinygrad_gpt.chat_format import IGNORE_INDEX
from tinygrad_gpt.model import GPTConfig
from tinygrad_gpt.tensor import no_grad
from tinygrad_gpt.train import Trainer

KIND = runs.SFT  # meta["kind"] of the checkpoints SFTTrainer.save writes
# the TrainConfig values an SFT run starts from (a flag overrides each): a gentler lr than
# pretraining, a short warmup, a few passes over a few thousand conversations
DEFAULTS = dict(lr=3e-4, min_lr=3e-5, warmup_iters=20, epochs=3, batch_size=8, eval_batches=8, sample_tokens=160,
                log_every=10)
GPT2_BLOCK = 256  # a GPT-2 base is cropped to this many positions unless --block-size says otherwise


def load_base(path, device="cpu", dtype=None):
    """(model, tokenizer, kind) of a base: a run directory (checkpoint.json; kind its meta.kind) or a
    Hugging Face GPT-2 folder (config.json; kind "gpt2"). dtype: a GPT-2 folder's load dtype."""
    from tinygrad_gpt import pretrained
    from tinygrad_gpt.model import GPT
    path = Path(path)
    if (path / checkpoint.JSON_NAME).is_file():
        model, meta, _ = runs.load_model(path, device=device)
        return model, runs.tokenizer_of(meta, path), meta.get("kind", runs.TRAIN)
    if (path / pretrained.CONFIG_NAME).is_file():
        model = GPT.from_pretrained(path, dtype=np.dtype(dtype or "float32"), device=device)
        return model, pretrained.load_tokenizer(path, model.config.vocab_size), "gpt2"
    raise FileNotFoundError(f"--init-from {path}: neither a run directory ({checkpoint.JSON_NAME}) nor a GPT-2 "
                            f"folder ({pretrained.CONFIG_NAME})")


def grow_vocab(model, vocab_size):
    """Give the model's embedding (and tied head) vocab_size rows; each new row is the mean of the old.

    wte (V, C) -> (vocab_size, C); the rows kept are unchanged, so the model computes the same
    logits for the old ids (and for the new ids, the logit of an average token).
    """
    old = model.wte.weight.data                                           # (V, C)
    V = old.shape[0]
    if vocab_size < V:
        raise ValueError(f"grow_vocab: vocab_size {vocab_size} is below the model's {V} rows")
    if vocab_size > V:
        host = to_numpy(old)
        mean = host.mean(axis=0, keepdims=True, dtype=np.float64).astype(host.dtype)  # (1, C)
        grown = np.concatenate([host, np.repeat(mean, vocab_size - V, axis=0)])       # (vocab_size, C)
        model.wte.weight.data = to_device(grown, model.wte.weight.device)
        model.wte.weight.grad = None
        model.config = GPTConfig(**{**asdict(model.config), "vocab_size": vocab_size})
    return model


class PackedRows:
    """One split's packed rows: ids (N, L) and targets (N, L - 1), IGNORE_INDEX where not learned.

    # subtle: len() is the split's token count N * L, which is what the Trainer's check of a split
    # ("fewer than block_size + 1 tokens") reads: one row passes it, as one row is a batch.
    """

    def __init__(self, packed):
        self.ids, self.targets = packed.ids, packed.targets               # (N, L), (N, L - 1)
        self.packed = packed

    @property
    def rows(self):
        return self.ids.shape[0]

    def __len__(self):
        return self.ids.size

    def batch(self, rows):
        """x (B, T) inputs and y (B, T) targets of the given row indices."""
        return self.ids[rows, :-1], self.targets[rows]                    # (B, T), (B, T)


class PackedBatches(data.ShuffledBatches):
    """One shuffled pass over the rows of a PackedRows, in batches; resumable (data.ShuffledBatches)."""

    def __init__(self, rows, batch_size, rng, start_batch=0):
        super().__init__(rows, np.arange(rows.rows), batch_size, rows.ids.shape[1] - 1, rng, start_batch)

    def batch(self, i):
        if not 0 <= i < self.num_batches:
            raise IndexError(f"batch index must be in [0, {self.num_batches}), got {i}")
        return self.data.batch(self.order[i * self.batch_size:(i + 1) * self.batch_size])


def prepare(conversations, tokenizer, block_size, val_fraction, seed=0):
    """(train PackedRows, held-out PackedRows, held-out conversations) of conversations (lists of messages)."""
    train_convs, held = chat_format.split_conversations(conversations, val_fraction, seed)
    pad = tokenizer.special_tokens[chat_format.END]
    splits = []
    for name, convs in (("train", train_convs), ("held-out", held)):
        rendered = []
        for k, messages in enumerate(convs):
            try:
                rendered.append(chat_format.render(tokenizer, messages))
            except chat_format.ConversationError as exc:
                raise ValueError(f"{name} conversation {k}: {exc}") from None
        try:
            splits.append(PackedRows(chat_format.pack(rendered, block_size + 1, pad)))
        except ValueError as exc:
            raise ValueError(f"the {name} conversations: {exc} (raise --block-size or shorten them)") from None
    return splits[0], splits[1], held


class SFTTrainer(Trainer):
    """train.Trainer over packed conversation rows; `sample_messages` is the conversation sampled after
    each epoch (held-out, its last assistant message left for the model), `sft_meta` goes to meta.sft."""

    def __init__(self, model, tokenizer, train_rows, val_rows, config, sample_messages=None, sft_meta=None,
                 **kwargs):
        self.sample_messages = sample_messages
        self.sft_meta = dict(sft_meta or {})
        if kwargs.get("world") is not None:
            raise ValueError("SFT runs in one process (no data parallel)")
        super().__init__(model, tokenizer, train_rows, val_rows, config, **kwargs)

    def epoch_batches(self, epoch_rng_state, start_batch=0):
        return PackedBatches(self.train_tokens, self.cfg.batch_size, checkpoint.restore_rng(epoch_rng_state),
                             start_batch)

    def estimate_loss(self, rows, seed):
        """Mean cross-entropy per learned token of `rows`: all of them if they fit in eval_batches
        batches, else the same eval_batches seeded batches every call."""
        B, n = self.cfg.batch_size, rows.rows
        pick = np.arange(n)
        if n > self.cfg.eval_batches * B:
            pick = np.sort(np.random.default_rng(seed).choice(n, self.cfg.eval_batches * B, replace=False))
        was_training = self.model.training
        self.model.eval()
        total, count = 0.0, 0
        with no_grad():
            for lo in range(0, len(pick), B):
                x, y = rows.batch(pick[lo:lo + B])                         # (B, T), (B, T)
                learned = int((y != IGNORE_INDEX).sum())
                _, loss = self.model(x, self.xp.asarray(y))
                total += float(loss.data) * learned
                count += learned
        self.model.train(was_training)
        return total / count

    def sample(self, seed, prompt=None, tokens=None):
        """The reply to the sample conversation: "user: ...\\nmodel: ..." (a plain sample without one)."""
        from tinygrad_gpt.chat import ChatModel, Sampling
        if not self.sample_messages:
            return super().sample(seed, tokens=tokens)
        chat = ChatModel(self.model, self.tokenizer)
        reply = chat.reply(self.sample_messages, Sampling(max_tokens=tokens or self.cfg.sample_tokens,
                                                          temperature=0.8, seed=seed))
        ending = "" if reply.finish_reason == "stop" else " [max tokens]"
        return f"user: {self.sample_messages[-1]['content']}\nmodel: {reply.text}{ending}"

    def save(self):
        """Write the run as kind "sft": the Trainer's meta, and meta.sft (the base and the data)."""
        runs.save_run(self.out_dir, KIND, self.model, self.tokenizer, optimizer_state=self.opt.state_dict(),
                      train_config=asdict(self.cfg), state=asdict(self.state),
                      dropout_rng=checkpoint.rng_state(self.model.drop_rng), sft=self.sft_meta)
        self._saved_at = (self.state.step, self.state.epoch, self.state.batch)


def check_resumable(meta, directory):
    """Raise ValueError unless `meta` (checked by load_model) is an SFT run that --resume can continue."""
    kind = meta.get("kind")
    if kind != KIND:
        raise ValueError(f"--resume: {directory} holds a {kind!r} checkpoint, not an SFT run (examples/sft.py "
                         f"continues only those); choose another --out")
    for key in ("state", "dropout_rng", "train_config", "sft"):
        if key not in meta:
            raise checkpoint.CheckpointError(f"{Path(directory) / checkpoint.JSON_NAME}: meta.{key} is missing, "
                                             f"which --resume needs")

