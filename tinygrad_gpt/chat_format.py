"""Conversations as tokens: the chat format, its special tokens, packing rows and tiny Shakespeare's dialogue.

A conversation is what people already keep in JSONL, one per line:

    {"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}, ...]}

and it becomes token ids with three special tokens, one for each turn's start and one for the end
of the assistant's turn (the token a chat model emits to stop):

    <|user|>Hail, good sir!<|assistant|>Good morrow.<|end|><|user|>...
    mask:  0 0 .. 0 0 0 .. 0 0          0            1 1 ..1  1

Only the assistant's words and its <|end|> are learned (mask 1): a training target whose mask is 0
is the cross-entropy's ignore index (-100), so the loss is the mean over assistant tokens alone. A
"system" message may come first; it is put before the first user message's text (as nanochat
does: the model has no token for it). Roles alternate user, assistant, user, ... A message's
`content` is a string, or OpenAI's list of {"type": "text", "text": ...} parts (joined).

Text never becomes a special token: the BPE tokenizer encodes a typed "<|user|>" as ordinary
bytes, and the character tokenizer as its characters (or refuses those it lacks), so nothing a
person writes can open a turn. `add_chat_tokens` gives a tokenizer the three tokens: the character
tokenizer reserves the ids after its alphabet, a BPE tokenizer registers them as special tokens
after its vocabulary; either way the model gains three rows (tinygrad_gpt/sft.py grows them).

Packing (`pack`): rows of block_size + 1 tokens, each holding whole conversations, best fit by
length (the longest first, each into the row it fills most); the rest of a row is <|end|> padding
with ignored targets. A conversation longer than a row keeps its first block_size + 1 tokens (the
reply's tail is lost; one with no assistant token left is dropped), and both are counted. Rows do
not mask attention between the conversations they hold: each opens with <|user|>, which the model
learns to start afresh from.

`shakespeare_dialogue(text)`: every speech of tiny Shakespeare followed by another speaker's
speech becomes a conversation: the speech as the user's message (its last lines, up to
max_user_chars) and the next speaker's as the reply (its first lines, up to max_reply_chars).

Dimension legend: n tokens of one conversation, N rows, L = block_size + 1 tokens per row.
Follows: nanochat's render_conversation (mask of the assistant's tokens, system merged into the
first user turn) and its SFT's ignore index; ChatML's turn markers. Deliberately does not: mask
attention between packed conversations, train on the user's turns, or support tool calls.
"""
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tinygrad_gpt.jsonl import read_json_lines

USER, ASSISTANT, END = "<|user|>", "<|assistant|>", "<|end|>"
CHAT_TOKENS = (USER, ASSISTANT, END)
ROLES = ("system", "user", "assistant")
IGNORE_INDEX = -100  # ops.cross_entropy's default: a target equal to it adds nothing to the loss


class ConversationError(ValueError):
    """A conversation that cannot be rendered; `field` names the part at fault ("messages[2].content")."""

    def __init__(self, field, message):
        self.field = field
        super().__init__(f"{field}: {message}")


# ---- the tokens ----------------------------------------------------------------------------------

def has_chat_tokens(tokenizer):
    """True when the tokenizer knows all three chat tokens (a chat-tuned run's tokenizer does)."""
    special = getattr(tokenizer, "special_tokens", {})
    return all(name in special for name in CHAT_TOKENS)


def add_chat_tokens(tokenizer):
    """The tokenizer with the chat tokens it lacks, their ids after every id it has (a new object).

    Character tokenizer: the ids after its alphabet (and any special tokens it has). BPE, any tier:
    the special-token tier (BPETokenizer) with the same merges, the tokens registered after
    vocab_size (GPT-2: <|user|> 50257, <|assistant|> 50258, <|end|> 50259).
    """
    from tinygrad_gpt.tokenizers import CharTokenizer, tokenizer_from_dict
    if isinstance(tokenizer, CharTokenizer):
        return tokenizer.with_special_tokens(CHAT_TOKENS)
    d = tokenizer.to_dict()
    special = dict(d["special_tokens"])
    for name in CHAT_TOKENS:
        if name not in special:
            special[name] = max([tokenizer.vocab_size - 1, *special.values()]) + 1
    return tokenizer_from_dict(dict(d, tier="special", special_tokens=special))


def chat_ids(tokenizer):
    """(user, assistant, end) ids; ValueError when the tokenizer has no chat tokens."""
    if not has_chat_tokens(tokenizer):
        raise ValueError(f"the tokenizer has no chat tokens ({', '.join(CHAT_TOKENS)}): the model is not "
                         f"chat-tuned (examples/sft.py makes one)")
    special = tokenizer.special_tokens
    return special[USER], special[ASSISTANT], special[END]


def encode_text(tokenizer, text, field="text"):
    """Ids of `text` as ordinary text (special-token names in it are not special); a character the
    character tokenizer lacks raises ConversationError naming `field`, the character and where."""
    from tinygrad_gpt.tokenizers import BPETokenizer, CharTokenizer
    from tinygrad_gpt.tokenizers.char import UnknownCharacterError
    if isinstance(tokenizer, CharTokenizer):
        try:
            return tokenizer.encode(text)
        except UnknownCharacterError as exc:
            missing = sorted(set(text) - set(tokenizer.chars))
            raise ConversationError(field, f"the model's {len(tokenizer.chars)} characters lack "
                                           f"{''.join(missing[:20])!r} (the first, {exc.char!r}, at position "
                                           f"{exc.position})") from None
    if isinstance(tokenizer, BPETokenizer):
        return tokenizer.encode(text, disallowed_special=())
    return tokenizer.encode(text)


# ---- checking and rendering ------------------------------------------------------------------------

def content_of(message, field):
    """A message's text: its `content` string, or OpenAI's [{"type": "text", "text": ...}] parts joined."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for k, part in enumerate(content):
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                raise ConversationError(f"{field}.content[{k}]", "expected a {\"type\": \"text\", \"text\": ...} part")
            parts.append(part["text"])
        return "".join(parts)
    raise ConversationError(f"{field}.content", f"expected a string, got {type(content).__name__}")


def check_messages(messages, field="messages", last="assistant"):
    """[(role, text)] of a conversation, checked: ConversationError names the message at fault.

    An optional system message first, then user and assistant alternating from user; `last` is
    the role the conversation must end with ("assistant" to train on it, "user" to answer it, or
    None for either). The system message is merged into the first user message's text.
    """
    if not isinstance(messages, list) or not messages:
        raise ConversationError(field, f"expected a non-empty list of messages, got "
                                       f"{type(messages).__name__ if not isinstance(messages, list) else 'an empty list'}")
    turns, system = [], None
    for i, message in enumerate(messages):
        where = f"{field}[{i}]"
        if not isinstance(message, dict):
            raise ConversationError(where, f"expected an object with role and content, got {type(message).__name__}")
        role = message.get("role")
        if role not in ROLES:
            raise ConversationError(f"{where}.role", f"must be one of {', '.join(ROLES)}, got {role!r}")
        text = content_of(message, where)
        if role == "system":
            if i != 0:
                raise ConversationError(f"{where}.role", "a system message may only come first")
            system = text
            continue
        expected = "user" if len(turns) % 2 == 0 else "assistant"
        if role != expected:
            raise ConversationError(f"{where}.role", f"expected {expected} (user and assistant alternate, from "
                                                     f"user), got {role}")
        turns.append((role, text, where))
    if not turns:
        raise ConversationError(field, "holds no user message")
    if last is not None and turns[-1][0] != last:
        raise ConversationError(f"{turns[-1][2]}.role", f"the conversation must end with an {last} message, "
                                                        f"got {turns[-1][0]}")
    if system:
        role, text, where = turns[0]
        turns[0] = (role, f"{system}\n\n{text}", where)
    return [(role, text, where) for role, text, where in turns]


def render(tokenizer, messages, field="messages"):
    """(ids (n,), mask (n,)) of a conversation that ends with the assistant: mask True on the tokens
    to learn (the assistant's words and its <|end|>).

    Hand example, character tokenizer of "Hiyo" (H 0, i 1, o 2, y 3; <|user|> 4, <|assistant|> 5,
    <|end|> 6), [user "Hi", assistant "yo"]: ids [4, 0, 1, 5, 3, 2, 6], mask [0, 0, 0, 0, 1, 1, 1].
    """
    user, assistant, end = chat_ids(tokenizer)
    ids, mask = [], []
    for role, text, where in check_messages(messages, field, last="assistant"):
        body = encode_text(tokenizer, text, f"{where}.content")
        if role == "user":
            ids += [user] + body
            mask += [False] * (1 + len(body))
        else:
            ids += [assistant] + body + [end]
            mask += [False] + [True] * (len(body) + 1)
    return np.asarray(ids, dtype=np.int64), np.asarray(mask, dtype=bool)    # (n,), (n,)


def render_prompt(tokenizer, messages, field="messages"):
    """Ids (n,) of a conversation that ends with the user, then <|assistant|>: what the model answers."""
    user, assistant, end = chat_ids(tokenizer)
    ids = []
    for role, text, where in check_messages(messages, field, last="user"):
        body = encode_text(tokenizer, text, f"{where}.content")
        ids += ([user] + body) if role == "user" else ([assistant] + body + [end])
    return np.asarray(ids + [assistant], dtype=np.int64)                    # (n,)


def render_plain(tokenizer, messages, field="messages"):
    """Ids (n,) of a base (not chat-tuned) model's prompt: every message's text, joined, continued."""
    turns = check_messages(messages, field, last=None)
    ids = []
    for role, text, where in turns:
        ids += encode_text(tokenizer, text, f"{where}.content")
    if not ids:
        raise ConversationError(field, "holds no text to continue")
    return np.asarray(ids, dtype=np.int64)                                  # (n,)


def turn_starts(tokenizer, ids):
    """Positions in a rendered prompt (n,) where a user turn starts: where a trim may cut."""
    user = tokenizer.special_tokens[USER]
    return np.flatnonzero(np.asarray(ids) == user)                          # (turns,)


# ---- data --------------------------------------------------------------------------------------------

def read_conversations(path):
    """The conversations of a JSONL file, as lists of messages; blank lines are skipped.

    Every line must be {"messages": [...]} whose messages check_messages accepts (ending with the
    assistant); an error names the file, the line and the field.
    """
    path = Path(path)
    conversations = []
    for lineno, record in read_json_lines(path):
        if not isinstance(record, dict) or "messages" not in record:
            raise ValueError(f"{path}:{lineno}: expected an object with \"messages\", got "
                             f"{type(record).__name__ if not isinstance(record, dict) else sorted(record)}")
        try:
            check_messages(record["messages"], "messages", last="assistant")
        except ConversationError as exc:
            raise ValueError(f"{path}:{lineno}: {exc}") from None
        conversations.append(record["messages"])
    if not conversations:
        raise ValueError(f"{path}: holds no conversation")
    return conversations


def write_conversations(path, conversations):
    """Write conversations (lists of messages) as JSONL, one {"messages": [...]} per line, atomically."""
    from tinygrad_gpt.checkpoint import write_atomic
    text = "".join(json.dumps({"messages": m}, ensure_ascii=False) + "\n" for m in conversations)
    write_atomic(Path(path), lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def speeches(text):
    """[(speaker, speech)] of tiny Shakespeare: blocks between blank lines that open with "NAME:"."""
    out = []
    for block in text.split("\n\n"):
        lines = block.strip("\n").split("\n")
        if len(lines) >= 2 and lines[0].endswith(":") and lines[0][:-1].strip():
            out.append((lines[0][:-1], "\n".join(lines[1:])))
    return out


def _last_lines(text, limit):
    """The last lines of `text` within `limit` characters (the tail of the last line if none fits)."""
    lines = text.split("\n")
    kept = []
    while lines and len("\n".join([lines[-1]] + kept)) <= limit:
        kept.insert(0, lines.pop())
    return "\n".join(kept) if kept else text[-limit:].lstrip()


def _first_lines(text, limit):
    """The first lines of `text` within `limit` characters (the head of the first line if none fits)."""
    lines = text.split("\n")
    kept = []
    while lines and len("\n".join(kept + [lines[0]])) <= limit:
        kept.append(lines.pop(0))
    return "\n".join(kept) if kept else text[:limit].rstrip()


def shakespeare_dialogue(text, max_user_chars=120, max_reply_chars=120):
    """Conversations from tiny Shakespeare: each speech, then the next speaker's reply.

    The limits' defaults, 120 + 120 characters and three turn tokens, fit a row of a 256-token block.

    Hand example: "A:\\nHello there.\\n\\nB:\\nGood day.\\n\\nB:\\nAgain." gives one conversation,
    [user "Hello there.", assistant "Good day."] (B answering B is not a reply).
    """
    said = speeches(text)
    conversations = []
    for (who, speech), (next_who, reply) in zip(said, said[1:]):
        if who == next_who:
            continue
        conversations.append([{"role": "user", "content": _last_lines(speech, max_user_chars)},
                              {"role": "assistant", "content": _first_lines(reply, max_reply_chars)}])
    return conversations


# ---- packing -----------------------------------------------------------------------------------------

@dataclass
class Packed:
    """Rows of whole conversations: ids (N, L), targets (N, L - 1) (IGNORE_INDEX where not learned)."""
    ids: np.ndarray
    targets: np.ndarray
    conversations: int   # conversations packed
    truncated: int       # longer than a row: their first L tokens kept
    dropped: int         # no assistant token within a row's length: left out

    @property
    def trained_tokens(self):
        return int((self.targets != IGNORE_INDEX).sum())


def pack(rendered, row_len, pad_id):
    """Best-fit packing of rendered conversations [(ids (n,), mask (n,))] into rows of row_len tokens.

    Longest first, each into the open row whose free space it fits most tightly (a new row if none
    has room). Row inputs are ids[:, :-1], targets ids[:, 1:] where the mask is set, IGNORE_INDEX
    elsewhere (padding, user turns, <|assistant|>). Hand example, row_len 6, conversations of 4, 3
    and 2 tokens: [4] opens row 0 (2 free), [3] does not fit there and opens row 1 (3 free), [2] fits
    both and goes where it fits tightest, row 0: rows [4 + 2], [3 + 3 padding].
    """
    if row_len < 2:
        raise ValueError(f"pack: row_len must be >= 2 (an input and a target), got {row_len}")
    truncated = dropped = 0
    items = []
    for ids, mask in rendered:
        if len(ids) > row_len:
            ids, mask = ids[:row_len], mask[:row_len]
            truncated += 1
        if not mask[1:].any():  # the first token is never a target
            dropped += 1
            continue
        items.append((ids, mask))
    if not items:
        raise ValueError(f"pack: no conversation has an assistant token within a row of {row_len} tokens")
    order = sorted(range(len(items)), key=lambda k: -len(items[k][0]))    # stable: ties keep their order
    rows, free, by_free = [], [], {}  # by_free: free space -> open rows with that much
    for k in order:
        n = len(items[k][0])
        row = next((by_free[c].pop() for c in range(n, row_len + 1) if by_free.get(c)), None)
        if row is None:
            row = len(rows)
            rows.append([])
            free.append(row_len)
        rows[row].append(k)
        free[row] -= n
        by_free.setdefault(free[row], []).append(row)
    ids = np.full((len(rows), row_len), pad_id, dtype=np.int64)            # (N, L)
    learn = np.zeros((len(rows), row_len), dtype=bool)                      # (N, L)
    for r, members in enumerate(rows):
        at = 0
        for k in members:
            conv_ids, conv_mask = items[k]
            ids[r, at:at + len(conv_ids)] = conv_ids
            learn[r, at:at + len(conv_ids)] = conv_mask
            at += len(conv_ids)
    targets = np.where(learn[:, 1:], ids[:, 1:], IGNORE_INDEX)              # (N, L - 1)
    return Packed(ids, targets, len(items), truncated, dropped)


def split_conversations(conversations, val_fraction, seed=0):
    """(train, held out) lists of conversations: a seeded shuffle, then val_fraction of them held out
    (at least one each); held-out turns are never trained on."""
    n = len(conversations)
    if n < 2:
        raise ValueError(f"need at least 2 conversations to hold some out for the val loss, got {n}")
    order = np.random.default_rng(seed).permutation(n)                      # (n,)
    n_val = min(max(1, int(round(n * val_fraction))), n - 1)
    held = set(order[:n_val].tolist())
    return ([c for i, c in enumerate(conversations) if i not in held],
            [c for i, c in enumerate(conversations) if i in held])


if __name__ == "__main__":
    import argparse
    import sys

    from tinygrad_gpt import cli, data

    def main():
        p = argparse.ArgumentParser(description="Write tiny Shakespeare's dialogue as chat conversations (JSONL)",
                                    formatter_class=cli.HelpFormatter)
        p.add_argument("out", help="the JSONL file to write")
        p.add_argument("--data", default=None, help="tinyshakespeare.txt (default: $TINYSHAKESPEARE, the cache)")
        p.add_argument("--max-user-chars", type=cli.bounded(int, ge=1), default=120)
        p.add_argument("--max-reply-chars", type=cli.bounded(int, ge=1), default=120)
        args = p.parse_args()
        conversations = shakespeare_dialogue(data.load_text(data.find_data(args.data)), args.max_user_chars,
                                             args.max_reply_chars)
        write_conversations(args.out, conversations)
        print(f"wrote {len(conversations)} conversations to {args.out}")
        return 0

    sys.exit(cli.run_main(main))
