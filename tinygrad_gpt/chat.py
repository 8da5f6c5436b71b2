"""Talk to a model: replies generated with the KV cache, streamed, stopped at the end of the turn.

    python -m tinygrad_gpt.chat out/sft                 # a chat-tuned run (examples/sft.py)
    python -m tinygrad_gpt.chat out/shakespeare-cpu     # a base run: each message is continued
    python -m tinygrad_gpt.chat gpt2 --max-tokens 60    # a Hugging Face GPT-2 folder, also continued

A run whose tokenizer has the chat tokens (tinygrad_gpt/chat_format.py) answers each message as the
assistant, its reply ending at <|end|>; any other model continues the text of the conversation so
far (plain continuation: every message and every reply, joined). Tokens print as they are sampled.
A chat is kept to the model's block: when the prompt and the reply's room
(min(max_tokens, block_size // 2) tokens) no longer fit in block_size, the oldest turns are left
out, whole (a note says how many), and a last message longer than the block keeps its end. A
continuation reads the end of the text, window by window, as GPT.generate and the RLHF rollouts do.

Terminal: `/reset` starts a new conversation, `/quit` or Ctrl-D ends it (exit 0); Ctrl-C during a
reply stops that reply (what was printed stays in the conversation), Ctrl-C at the prompt ends the
chat (exit 130), SIGTERM exits 143. A character the model does not know is refused, named, and the
message may be typed again.

`ChatModel` is what tinygrad_gpt/serve.py serves and examples/sft.py samples with: load a run,
turn messages into a prompt that fits (`prompt`), and `generate` a reply with a callback per piece
of text and a cancel check per token.

Follows: nanochat's chat_cli (the conversation re-rendered each turn, the reply streamed).
Deliberately does not: keep the KV cache between turns (each reply prefills the whole kept
conversation: at these sizes that is milliseconds), batch several conversations, or edit history.
"""
import argparse
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tinygrad_gpt import chat_format, cli
from tinygrad_gpt.chat_format import CHAT_TOKENS, ConversationError

MODES = ("chat", "continuation")


@dataclass
class Sampling:
    """How one reply is sampled; temperature 0 is greedy (the most likely token each step)."""
    max_tokens: int = 200
    temperature: float = 0.8
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None

    def as_dict(self):
        return {"max_tokens": self.max_tokens, "temperature": self.temperature, "top_k": self.top_k,
                "top_p": self.top_p, "seed": self.seed}


@dataclass
class Reply:
    ids: list                  # the reply's token ids (the stop token excluded)
    text: str
    finish_reason: str         # "stop" (the model ended its turn), "length" (max_tokens), "cancelled"
    prompt_tokens: int
    left_out: int = 0          # messages of the conversation the prompt left out to fit the block
    notes: list = field(default_factory=list)


class _Stop(Exception):
    """Raised from the per-token callback to end model.generate early, with the finish reason."""


class _Pieces:
    """A TextStream's `out`: keeps each piece of text and hands it to a callback."""

    def __init__(self, callback):
        self.parts, self.callback = [], callback

    def write(self, text):
        self.parts.append(text)
        if self.callback is not None:
            self.callback(text)

    def flush(self):
        pass


class ChatModel:
    """A model and its tokenizer, ready to answer: mode "chat" (chat-tuned) or "continuation"."""

    def __init__(self, model, tokenizer, name="model", source=None):
        self.model, self.tokenizer, self.name = model, tokenizer, name
        self.source = source or name
        self.mode = "chat" if chat_format.has_chat_tokens(tokenizer) else "continuation"
        special = getattr(tokenizer, "special_tokens", {})
        # chat: any chat token ends the reply (a model that opens the next user turn is done too);
        # continuation: a document end, where the tokenizer has one
        names = CHAT_TOKENS if self.mode == "chat" else tuple(n for n in special if n == "<|endoftext|>")
        self.stop_ids = {special[n] for n in names}
        self.block_size = model.config.block_size

    @classmethod
    def load(cls, directory, device="cpu"):
        """A run directory (checkpoint.json: examples/shakespeare.py, sft.py, rlhf_sentiment.py) or a
        Hugging Face GPT-2 folder (config.json + model.safetensors)."""
        from tinygrad_gpt import checkpoint, pretrained, runs
        directory = Path(directory)
        if (directory / checkpoint.JSON_NAME).is_file():
            model, meta, _ = runs.load_model(directory, device=device)
            tokenizer = runs.tokenizer_of(meta, directory)
        elif (directory / pretrained.CONFIG_NAME).is_file():
            from tinygrad_gpt.model import GPT
            model = GPT.from_pretrained(directory, device=device)
            tokenizer = pretrained.load_tokenizer(directory, model.config.vocab_size)
        else:
            raise FileNotFoundError(f"{directory}: neither a run directory ({checkpoint.JSON_NAME}) nor a GPT-2 "
                                    f"folder ({pretrained.CONFIG_NAME}): give the --out of a training run")
        return cls(model, tokenizer, name=directory.resolve().name, source=str(directory))

    # ---- the prompt ------------------------------------------------------------------------------
    def budget(self, max_tokens):
        """Prompt tokens that fit with room for the reply: block_size - min(max_tokens, block_size // 2)."""
        return self.block_size - min(max_tokens, self.block_size // 2)

    def prompt(self, messages, max_tokens, field="messages"):
        """(ids (n,), messages left out, notes): the conversation rendered for this model, trimmed to fit.

        Chat: whole turns are left out from the oldest until the rest fits `budget(max_tokens)`; if
        the last message alone does not fit, its end is kept (after <|user|>). Continuation: the
        whole text, as the RLHF rollouts sample (GPT.generate's context windows read its last
        tokens), so a compare pair of prompt_len + response_len tokens is what an RLHF run samples.
        """
        budget = self.budget(max_tokens)
        notes, left_out = [], 0
        if self.mode == "continuation":
            ids = chat_format.render_plain(self.tokenizer, messages, field)
            if len(ids) + max_tokens - 1 > self.block_size:
                notes.append(f"the model reads at most the last {self.block_size} tokens of the text and its "
                             f"continuation (its block)")
            return ids, 0, notes
        ids = chat_format.render_prompt(self.tokenizer, messages, field)
        if len(ids) <= budget:
            return ids, 0, notes
        starts = chat_format.turn_starts(self.tokenizer, ids)              # (turns,)
        fits = starts[len(ids) - starts <= budget]
        user_turns = len(starts)
        if len(fits):
            cut = int(fits[0])
            left_out = 2 * int(np.searchsorted(starts, cut))               # user + assistant per turn dropped
            ids = ids[cut:]
        else:
            left_out = 2 * (user_turns - 1)
            ids = np.concatenate([ids[starts[-1]:starts[-1] + 1], ids[len(ids) - budget + 1:]])
            notes.append(f"the last message was cut to its last {budget - 2} tokens")
        if left_out:
            notes.append(f"context trimmed: the {left_out} oldest messages no longer fit the model's "
                         f"{self.block_size}-token block and were left out")
        return ids, left_out, notes

    # ---- generating ------------------------------------------------------------------------------
    def generate(self, prompt_ids, sampling, on_text=None, cancelled=None):
        """A Reply to prompt ids (n,): sampled token by token; on_text(piece) gets the text as it comes,
        cancelled() is asked after every token (True ends the reply, finish_reason "cancelled")."""
        from tinygrad_gpt.tokenizers.stream import TextStream
        pieces = _Pieces(on_text)
        stream = TextStream(self.tokenizer, out=pieces)
        ids = []
        temperature, top_k = sampling.temperature, sampling.top_k
        if temperature == 0:  # greedy: the most likely token (ties share the draw)
            temperature, top_k = 1.0, 1

        def on_token(new):
            token = int(new[0])
            if token in self.stop_ids:
                raise _Stop("stop")
            ids.append(token)
            stream(token)
            if cancelled is not None and cancelled():
                raise _Stop("cancelled")

        reason = "length"
        if cancelled is not None and cancelled():
            reason = "cancelled"
        elif sampling.max_tokens > 0:
            try:
                self.model.generate(np.asarray(prompt_ids, dtype=np.int64)[None, :], sampling.max_tokens,
                                    temperature=temperature, top_k=top_k, top_p=sampling.top_p,
                                    rng=np.random.default_rng(sampling.seed), on_token=on_token)
            except _Stop as stop:
                reason = stop.args[0]
        stream.flush()
        return Reply(ids, "".join(pieces.parts), reason, len(prompt_ids))

    def reply(self, messages, sampling, on_text=None, cancelled=None):
        """The Reply to a conversation (messages ending with the user's), its prompt trimmed to fit."""
        ids, left_out, notes = self.prompt(messages, sampling.max_tokens)
        reply = self.generate(ids, sampling, on_text, cancelled)
        reply.left_out, reply.notes = left_out, notes
        return reply


# ---- the terminal ------------------------------------------------------------------------------------

def build_parser():
    p = argparse.ArgumentParser(prog="python -m tinygrad_gpt.chat", description=__doc__.split("\n\n")[0],
                                formatter_class=cli.HelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1].split("\nFollows:")[0])
    p.add_argument("run", help="a run directory (--out of examples/sft.py, shakespeare.py, ...) or a GPT-2 folder")
    p.add_argument("--max-tokens", type=cli.bounded(int, ge=1), default=200, help="the longest reply, in tokens")
    p.add_argument("--temperature", type=cli.bounded(float, ge=0), default=0.8, help="0 is greedy")
    p.add_argument("--top-k", type=cli.bounded(int, ge=1), default=None, help="sample among the k most likely tokens")
    p.add_argument("--top-p", type=cli.bounded(float, gt=0, le=1), default=None, help="nucleus sampling mass")
    p.add_argument("--seed", type=cli.bounded(int, ge=0), default=None, help="the first reply's seed (then +1 each)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the model runs (cuda: cupy)")
    return p


def _terminate(signum, frame):
    raise SystemExit(cli.EXIT_SIGTERM)


def run_chat(chat, args, read=input, out=sys.stdout):
    """The read-reply loop; returns the exit status (0 at /quit or end of input)."""
    def say(text=""):
        out.write(text + "\n")
        out.flush()

    what = ("chat-tuned: it answers as the assistant" if chat.mode == "chat"
            else "not chat-tuned: it continues your text")
    say(f"{chat.source}: {what}; block {chat.block_size} tokens. /reset starts over, /quit or Ctrl-D ends; "
        f"Ctrl-C stops a reply.")
    messages, turn = [], 0
    while True:
        try:
            line = read("you> ")
        except EOFError:
            say()
            return cli.EXIT_OK
        if line.strip() == "/quit":
            return cli.EXIT_OK
        if line.strip() == "/reset":
            messages = []
            say("(a new conversation)")
            continue
        if not line.strip():
            continue
        attempt = messages + [{"role": "user", "content": line}]
        sampling = Sampling(args.max_tokens, args.temperature, args.top_k, args.top_p,
                            None if args.seed is None else args.seed + turn)
        try:
            ids, left_out, notes = chat.prompt(attempt, sampling.max_tokens)
        except ConversationError as exc:
            say(f"(not sent: {str(exc).split(': ', 1)[1]}; type it again)")
            continue
        for note in notes:
            say(f"(note: {note})")
        out.write("model> ")
        out.flush()

        def show(piece):
            out.write(piece)
            out.flush()
        # subtle: Ctrl-C during a reply sets a flag the sampler reads after each token, rather than
        # raising KeyboardInterrupt somewhere inside numpy or the model; at the prompt it raises
        # (input() is interrupted) and the chat ends with 130
        asked = []
        previous = signal.signal(signal.SIGINT, lambda signum, frame: asked.append(signum))
        try:
            reply = chat.generate(ids, sampling, on_text=show, cancelled=lambda: bool(asked))
        finally:
            signal.signal(signal.SIGINT, previous)
        say({"stop": "", "length": " [max tokens]"}.get(reply.finish_reason, " [stopped]"))
        messages = attempt + [{"role": "assistant", "content": reply.text}]  # what was printed stays
        turn += 1


def main(argv=None):
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    chat = ChatModel.load(args.run, device=args.device)
    return run_chat(chat, args)


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
