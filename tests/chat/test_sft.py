"""Supervised chat tuning: the chat format (tinygrad_gpt/chat_format.py), packing, the loss on the
assistant's tokens only, and examples/sft.py end to end (learning to answer and end the turn,
resume equality, signals, usage errors, a GPT-2 folder as the base).

Hand derivations are in each test's docstring; the models are tiny (tests/chat/chat_runs.py).
"""
import json
import signal
from pathlib import Path

import numpy as np
import pytest

from tinygrad_gpt import chat_format as cf
from tinygrad_gpt import checkpoint, cli, sft
from tinygrad_gpt.chat import ChatModel, Sampling
from tinygrad_gpt.model import GPT, GPTConfig
from tinygrad_gpt.tokenizers import BPETokenizer, CharTokenizer, load_gpt2

import chat_runs
from conftest import gpt2_dir, load_script, needs_data, require_shakespeare

REPO = Path(__file__).resolve().parents[2]
sft_script = load_script("sft")  # examples/sft.py

HIYO = cf.add_chat_tokens(CharTokenizer.from_text("Hiyo"))  # H 0, i 1, o 2, y 3; <|user|> 4, <|assistant|> 5, <|end|> 6


def conversation(*turns):
    return [{"role": role, "content": text} for role, text in zip(("user", "assistant") * len(turns), turns)]


# ---- the format ----------------------------------------------------------------------------------

def test_render_hand_example():
    """[user "Hi", assistant "yo"] -> <|user|> H i <|assistant|> y o <|end|>; learned: y, o, <|end|>."""
    ids, mask = cf.render(HIYO, conversation("Hi", "yo"))
    assert ids.tolist() == [4, 0, 1, 5, 3, 2, 6]
    assert mask.astype(int).tolist() == [0, 0, 0, 0, 1, 1, 1]
    prompt = cf.render_prompt(HIYO, conversation("Hi", "yo", "oH"))
    assert prompt.tolist() == [4, 0, 1, 5, 3, 2, 6, 4, 2, 0, 5]          # ... <|user|> o H <|assistant|>
    assert HIYO.decode(prompt.tolist()) == "<|user|>Hi<|assistant|>yo<|end|><|user|>oH<|assistant|>"


def test_system_message_joins_the_first_user_message_and_parts_are_joined():
    messages = [{"role": "system", "content": "H"},
                {"role": "user", "content": [{"type": "text", "text": "i"}, {"type": "text", "text": "o"}]}]
    tok = cf.add_chat_tokens(CharTokenizer.from_text("Hio\n"))
    assert tok.decode(cf.render_prompt(tok, messages).tolist()) == "<|user|>H\n\nio<|assistant|>"


@pytest.mark.parametrize("messages,last,field,what", [
    ([], "assistant", "messages", "non-empty list"),
    ([{"role": "user", "content": "Hi"}], "assistant", "messages[0].role", "must end with an assistant"),
    (conversation("Hi", "yo"), "user", "messages[1].role", "must end with an user"),
    ([{"role": "assistant", "content": "Hi"}], None, "messages[0].role", "expected user"),
    ([{"role": "user", "content": "Hi"}, {"role": "user", "content": "Hi"}], None, "messages[1].role",
     "expected assistant"),
    ([{"role": "robot", "content": "Hi"}], None, "messages[0].role", "one of system, user, assistant"),
    ([{"role": "user", "content": 3}], None, "messages[0].content", "expected a string"),
    ([{"role": "user", "content": [{"type": "image"}]}], None, "messages[0].content[0]", "part"),
    ([{"role": "user", "content": "Hi"}, {"role": "system", "content": "x"}], None, "messages[1].role",
     "only come first"),
    (["Hi"], None, "messages[0]", "expected an object"),
])
def test_bad_conversations_name_the_field(messages, last, field, what):
    with pytest.raises(cf.ConversationError, match=what) as info:
        cf.check_messages(messages, last=last)
    assert info.value.field == field and str(info.value).startswith(field + ":")


def test_a_character_the_model_lacks_is_named_with_its_field():
    with pytest.raises(cf.ConversationError, match=r"lack '!' \(the first, '!', at position 2\)") as info:
        cf.render(HIYO, conversation("Hi!", "yo"))
    assert info.value.field == "messages[0].content"


def test_bpe_registers_the_chat_tokens_after_its_vocabulary_and_typed_names_stay_text():
    """A trained BPETokenizer (<|endoftext|> last) gains the three tokens after it; a message that
    types "<|user|>" encodes to ordinary bytes, never to the special id."""
    tok = BPETokenizer()
    tok.train("hello there, hello world " * 20, 270)
    chat = cf.add_chat_tokens(tok)
    V = tok.vocab_size
    assert [chat.special_tokens[n] for n in cf.CHAT_TOKENS] == [V, V + 1, V + 2] and chat.vocab_size == V + 3
    assert chat.encode("hello there") == tok.encode("hello there")       # the merges are unchanged
    ids, mask = cf.render(chat, conversation("<|user|>hello", "<|end|>"))
    assert ids.tolist().count(V) == 1 and ids.tolist().count(V + 2) == 1  # only the real turn markers
    assert chat.decode(ids.tolist()) == "<|user|><|user|>hello<|assistant|><|end|><|end|>"
    from tinygrad_gpt.tokenizers import tokenizer_from_dict
    assert tokenizer_from_dict(json.loads(json.dumps(chat.to_dict()))).special_tokens == chat.special_tokens
    assert cf.add_chat_tokens(chat).special_tokens == chat.special_tokens  # idempotent


def test_gpt2_tokenizer_gets_ids_50257_to_50259():
    path = gpt2_dir()
    if not (path / "vocab.json").is_file():
        pytest.skip(f"no GPT-2 tokenizer files in {path} (set GPT2_DIR)")
    chat = cf.add_chat_tokens(load_gpt2(path))
    assert [chat.special_tokens[n] for n in ("<|endoftext|>", *cf.CHAT_TOKENS)] == [50256, 50257, 50258, 50259]
    assert chat.vocab_size == 50260


def test_pack_hand_example():
    """row_len 6, conversations of 4, 3, 2 tokens (all learned): [4] opens row 0 (2 free), [3] opens
    row 1, [2] fits row 0 tightest: rows [a a a a c c], [b b b pad pad pad]; a target is learned
    where its own token's mask is set, so the first token of each conversation is never a target of
    its own row position 0, and padding targets are ignored."""
    def conv(token, n):
        return np.full(n, token), np.ones(n, dtype=bool)
    packed = cf.pack([conv(1, 4), conv(2, 3), conv(3, 2)], row_len=6, pad_id=9)
    assert packed.ids.tolist() == [[1, 1, 1, 1, 3, 3], [2, 2, 2, 9, 9, 9]]
    assert packed.targets.tolist() == [[1, 1, 1, 3, 3], [2, 2, -100, -100, -100]]
    assert (packed.conversations, packed.truncated, packed.dropped) == (3, 0, 0)


def test_pack_cuts_long_conversations_and_drops_those_left_with_nothing_to_learn():
    """Row 4: a conversation of 6 keeps its first 4 (learned 3..5 -> keeps learned 3); one whose
    learned tokens all lie past the row is dropped."""
    long_ok = (np.arange(6), np.array([0, 0, 0, 1, 1, 1], dtype=bool))
    long_empty = (np.arange(6), np.array([0, 0, 0, 0, 1, 1], dtype=bool))
    packed = cf.pack([long_ok, long_empty], row_len=4, pad_id=0)
    assert packed.ids.tolist() == [[0, 1, 2, 3]] and packed.targets.tolist() == [[-100, -100, 3]]
    assert (packed.conversations, packed.truncated, packed.dropped) == (1, 2, 1)


def test_shakespeare_dialogue_hand_example():
    text = "A:\nHello there.\nHow now?\n\nB:\nGood day.\nFarewell.\n\nB:\nAgain.\n\nA:\nAdieu."
    assert cf.shakespeare_dialogue(text) == [conversation("Hello there.\nHow now?", "Good day.\nFarewell."),
                                             conversation("Again.", "Adieu.")]
    # the user's speech keeps its last lines, the reply its first, within the limits
    assert cf.shakespeare_dialogue(text, max_user_chars=9, max_reply_chars=9)[0] == conversation("How now?",
                                                                                               "Good day.")


@needs_data
def test_tiny_shakespeare_dialogue_renders_with_its_own_alphabet():
    text = require_shakespeare().read_text(encoding="utf-8")
    convs = cf.shakespeare_dialogue(text)
    assert len(convs) > 6500
    tok = cf.add_chat_tokens(CharTokenizer.from_text(text))
    ids, mask = cf.render(tok, convs[0])
    assert tok.decode(ids[mask][:-1].tolist()) == convs[0][1]["content"]  # learned: the reply, then <|end|>


def test_read_conversations_names_the_line(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"messages": conversation("Hi", "yo")}) + "\n\n" + '{"messages": [{"role": "user"}]}\n')
    with pytest.raises(ValueError, match=r"c\.jsonl:3: messages\[0\]\.content: expected a string"):
        cf.read_conversations(path)
    path.write_text("not json\n")
    with pytest.raises(ValueError, match=r"c\.jsonl:1: not JSON"):
        cf.read_conversations(path)
    path.write_text(json.dumps({"messages": conversation("Hi", "yo")}) + "\n")
    assert cf.read_conversations(path) == [conversation("Hi", "yo")]


# ---- the loss and the model ----------------------------------------------------------------------

def test_loss_is_the_mean_over_the_assistant_tokens(rng):
    """model(x, targets) with ignored targets = the mean of -log p(target) over learned positions only,
    computed here from the logits by hand."""
    conv = conversation("Hi", "yo", "iH", "oy")
    packed = cf.pack([cf.render(HIYO, conv)], row_len=16, pad_id=6)
    model = GPT(GPTConfig(vocab_size=HIYO.vocab_size, block_size=15, n_layer=1, n_head=1, n_embd=8),
                seed=int(rng.integers(1 << 30)), dtype=np.float64)
    x, y = packed.ids[:, :-1], packed.targets                             # (1, 15), (1, 15)
    logits, loss = model(x, y)
    z = logits.numpy()[0]                                                 # (15, V)
    logp = z - z.max(axis=1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(axis=1, keepdims=True))
    kept = np.flatnonzero(y[0] != -100)
    assert len(kept) == 6                                                 # y o <|end|> and o y <|end|>
    assert np.isclose(float(loss.item()), -logp[kept, y[0, kept]].mean(), rtol=1e-12)


def test_grow_vocab_keeps_the_old_logits_and_gives_new_rows_the_mean(rng):
    model = GPT(GPTConfig(vocab_size=5, block_size=4, n_layer=1, n_head=1, n_embd=8), seed=int(rng.integers(99)),
                dtype=np.float64)
    x = np.array([[0, 3, 4, 1]])
    before = model(x)[0].numpy()
    sft.grow_vocab(model, 8)
    after = model(x)[0].numpy()
    assert model.config.vocab_size == 8 and after.shape == (1, 4, 8)
    np.testing.assert_allclose(after[..., :5], before, rtol=1e-12)
    w = model.wte.weight.numpy()
    np.testing.assert_allclose(w[5:], np.repeat(w[:5].mean(axis=0, keepdims=True), 3, axis=0))


# ---- the command -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def yes_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "yes.jsonl"
    cf.write_conversations(path, chat_runs.yes_conversations())
    return path


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return chat_runs.tiny_base_run(tmp_path_factory.mktemp("base") / "run", block_size=48)


def _args(base, data, out, *extra):
    return ["--init-from", str(base), "--conversations", str(data), "--out", str(out), "--no-progress",
            "--lr", "3e-3", "--min-lr", "3e-4", "--warmup-iters", "5", "--batch-size", "16", "--eval-batches", "2",
            "--sample-tokens", "8", "--log-every", "1", *extra]


def _losses(out):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def test_sft_learns_to_answer_and_end_its_turn(base, yes_file, tmp_path, capsys):
    """From a base without chat tokens: 65 + 3 rows, 160 steps on "Yes." replies; the greedy reply
    to a message it has not seen is "Yes." and the turn ends (finish_reason "stop")."""
    out = tmp_path / "sft"
    assert sft_script.main(_args(base, yes_file, out, "--max-iters", "160")) == 0
    printed = capsys.readouterr().out
    assert "--- before tuning ---" in printed and "val loss" in printed and "python -m tinygrad_gpt.chat" in printed
    _, _, meta = checkpoint.load_checkpoint(out)
    assert meta["kind"] == "sft" and meta["sft"]["conversations"] == str(yes_file)
    assert meta["model_config"]["vocab_size"] == len(chat_runs.ALPHABET) + 1 + 3
    chat = ChatModel.load(out)
    assert chat.mode == "chat"
    reply = chat.reply(conversation("Hark, who goes there?"), Sampling(max_tokens=20, temperature=0))
    assert (reply.text, reply.finish_reason) == ("Yes.", "stop")
    losses = _losses(out)
    assert losses[160] < 0.3 * losses[1]


def test_resumed_sft_equals_the_uninterrupted_run(base, yes_file, tmp_path, ctrl_c_after_step):
    """12 steps straight against 5 + Ctrl-C (exit 130, checkpoint) + resume: the same loss every step."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    flags = ("--epochs", "2", "--iters-per-epoch", "6")
    assert sft_script.main(_args(base, yes_file, straight, *flags)) == 0
    ctrl_c_after_step(5)
    assert sft_script.main(_args(base, yes_file, resumed, *flags)) == 130
    assert max(_losses(resumed)) == 5
    assert sft_script.main(["--out", str(resumed), "--resume", "--no-progress"]) == 0
    a, b = _losses(straight), _losses(resumed)
    assert sorted(a) == sorted(b) == list(range(1, 13))
    assert [a[s] for s in sorted(a)] == [b[s] for s in sorted(b)]


def test_sigterm_saves_and_exits_143(base, yes_file, tmp_path, monkeypatch):
    from tinygrad_gpt import optim
    original = optim.AdamW.step
    calls = [0]

    def step(self, *args, **kwargs):
        original(self, *args, **kwargs)
        calls[0] += 1
        if calls[0] == 3:
            signal.raise_signal(signal.SIGTERM)
    monkeypatch.setattr(optim.AdamW, "step", step)
    out = tmp_path / "run"
    assert sft_script.main(_args(base, yes_file, out, "--max-iters", "50")) == 143
    assert checkpoint.load_checkpoint(out)[2]["state"]["step"] == 3


def _status(argv):
    try:
        return cli.run_main(lambda: sft_script.main(argv))
    except SystemExit as exc:  # argparse's usage errors
        return exc.code


def test_usage_errors_exit_2_and_name_the_problem(base, yes_file, tmp_path, capsys):
    other = tmp_path / "other.jsonl"
    cf.write_conversations(other, chat_runs.yes_conversations(seed=1))
    out = tmp_path / "run"
    assert _status(["--out", str(out)]) == 2
    assert "--init-from DIR is needed" in capsys.readouterr().err
    assert _status(["--init-from", str(tmp_path / "nowhere"), "--out", str(out)]) == 2
    assert "neither a run directory" in capsys.readouterr().err
    assert _status(_args(base, yes_file, out, "--block-size", "99")) == 2
    assert "--block-size 99 is longer than the 48 positions" in capsys.readouterr().err
    assert _status(["--out", str(tmp_path / "empty"), "--resume"]) == 2
    capsys.readouterr()
    assert _status(_args(base, yes_file, out, "--max-iters", "2")) == 0
    assert _status(_args(base, yes_file, out, "--max-iters", "2")) == 2        # a run is there already
    assert "already holds a run" in capsys.readouterr().err
    assert _status(["--out", str(out), "--resume", "--conversations", str(other)]) == 2
    assert "are not the ones the run" in capsys.readouterr().err
    assert _status(["--out", str(out), "--resume", "--init-from", str(base)]) == 2
    assert _status(["--out", str(base), "--resume"]) == 2                        # a base run, not an SFT run
    assert "not an SFT run" in capsys.readouterr().err


def test_gpt2_folder_as_the_base(tmp_path, yes_file):
    """A (tiny, random) GPT-2 folder with its BPE tokenizer: the chat tokens land after <|endoftext|>
    and the trained run loads for chat."""
    tok = BPETokenizer()
    tok.train(" ".join(chat_runs.WORDS) * 30 + " Yes.", 300)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=16), seed=0)
    model.save_pretrained(tmp_path / "gpt2", tokenizer=tok)
    out = tmp_path / "chat"
    assert sft_script.main(_args(tmp_path / "gpt2", yes_file, out, "--max-iters", "3", "--block-size", "32")) == 0
    chat = ChatModel.load(out)
    assert chat.mode == "chat" and chat.model.config.vocab_size == tok.vocab_size + 3
    assert chat.block_size == 32
    assert chat.tokenizer.special_tokens["<|user|>"] == tok.vocab_size
