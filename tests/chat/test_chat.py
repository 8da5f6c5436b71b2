"""The terminal chat (python -m tinygrad_gpt.chat) and ChatModel: trimming the conversation to the
block, stopping at the end of the turn, streaming, cancelling; the terminal through its stdin, and
its signals (Ctrl-C stops a reply, Ctrl-C at the prompt 130, SIGTERM 143).

The chat run answers "Yes." to anything (tests/chat/chat_runs.py); lengths below are in its characters:
a user turn "Hark" is <|user|> H a r k = 5 tokens, a reply "Yes." is <|assistant|> Y e s . <|end|> = 6.
"""
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tinygrad_gpt.chat import ChatModel, Sampling

import chat_runs
from conftest import default_sigint

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory):
    return chat_runs.tiny_chat_run(tmp_path_factory.mktemp("chat") / "run")


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return chat_runs.tiny_base_run(tmp_path_factory.mktemp("base") / "run")


def exchange(n, last="Hark"):
    return [{"role": r, "content": t} for _ in range(n) for r, t in (("user", "Hark"), ("assistant", "Yes."))] + \
        [{"role": "user", "content": last}]


def test_the_oldest_turns_are_left_out_to_fit_the_block(chat_dir):
    """Block 48, max_tokens 20: the prompt may hold 48 - min(20, 24) = 28 tokens. Three exchanges of
    11 and a last "Hark" + <|assistant|> (6) are 39; the turns start at 0, 11, 22, 33, and from 11
    on 28 remain: the first exchange (2 messages) is left out."""
    chat = ChatModel.load(chat_dir)
    ids, left_out, notes = chat.prompt(exchange(3), max_tokens=20)
    assert (len(ids), left_out) == (28, 2)
    assert notes == ["context trimmed: the 2 oldest messages no longer fit the model's 48-token block and were "
                     "left out"]
    assert chat.tokenizer.decode(ids.tolist()) == "<|user|>Hark<|assistant|>Yes.<|end|>" * 2 + \
        "<|user|>Hark<|assistant|>"
    assert chat.prompt(exchange(1), max_tokens=20)[1:] == (0, [])          # 17 tokens fit as they are


def test_a_last_message_longer_than_the_block_keeps_its_end(chat_dir):
    chat = ChatModel.load(chat_dir)
    long = "who goes there " * 4                                          # 60 characters
    ids, left_out, notes = chat.prompt(exchange(2, last=long), max_tokens=20)
    assert len(ids) == 28 and left_out == 4
    assert chat.tokenizer.decode(ids.tolist()) == "<|user|>" + long[-26:] + "<|assistant|>"
    assert notes[0] == "the last message was cut to its last 26 tokens"


def test_replies_stop_at_the_end_of_the_turn_stream_and_can_be_cancelled(chat_dir, base_dir):
    chat = ChatModel.load(chat_dir)
    pieces = []
    reply = chat.reply(exchange(0), Sampling(max_tokens=30, temperature=0), on_text=pieces.append)
    assert (reply.text, reply.finish_reason, pieces) == ("Yes.", "stop", ["Y", "e", "s", "."])
    assert reply.prompt_tokens == 6
    asked = []
    reply = chat.reply(exchange(0), Sampling(max_tokens=30, temperature=0),
                       cancelled=lambda: asked.append(1) or len(asked) > 2)  # asked before, then after each token
    assert (reply.text, reply.finish_reason) == ("Ye", "cancelled")
    base = ChatModel.load(base_dir)
    assert base.mode == "continuation"
    reply = base.reply(exchange(0), Sampling(max_tokens=7, seed=3))
    assert reply.finish_reason == "length" and len(reply.ids) == 7
    again = base.reply(exchange(0), Sampling(max_tokens=7, seed=3))
    assert again.ids == reply.ids                                         # a seed gives the same reply


def test_temperature_zero_is_greedy(chat_dir):
    chat = ChatModel.load(chat_dir)
    ids = chat.prompt(exchange(0), 5)[0]
    logits = chat.model(ids[None, :])[0].numpy()[0, -1]
    reply = chat.generate(ids, Sampling(max_tokens=1, temperature=0))
    assert reply.ids == [int(np.argmax(logits))]


# ---- the terminal ------------------------------------------------------------------------------------

def _env():
    return dict(os.environ, PYTHONPATH=str(REPO), OPENBLAS_NUM_THREADS="1")


def _chat(run_dir, lines, *flags):
    return subprocess.run([sys.executable, "-m", "tinygrad_gpt.chat", str(run_dir), *flags], input=lines,
                          capture_output=True, text=True, env=_env(), timeout=120)


def test_terminal_chat_multi_turn_with_reset_trim_note_and_a_refused_character(chat_dir):
    lines = "Who goes there?\nHark!\nWhat news, my lord?\nSpeak 2 me\n/reset\nPeace\n"
    done = _chat(chat_dir, lines, "--temperature", "0", "--max-tokens", "20")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "chat-tuned: it answers as the assistant; block 48 tokens" in out
    assert out.count("model> Yes.\n") == 4
    # "Who goes there?" and its reply (22 tokens) + "Hark!" (7) no longer fit 28: the first exchange goes
    assert "(note: context trimmed: the 2 oldest messages" in out
    assert "(not sent: the model's" in out and "lack '2'" in out
    assert "(a new conversation)" in out and out.rstrip().endswith("you>")


def test_terminal_chat_continues_a_base_run(base_dir):
    done = _chat(base_dir, "Good morrow\n", "--max-tokens", "5", "--seed", "0")
    assert done.returncode == 0, done.stderr
    assert "not chat-tuned: it continues your text" in done.stdout and "[max tokens]" in done.stdout


def test_terminal_chat_names_a_directory_that_is_no_run(tmp_path):
    done = _chat(tmp_path, "")
    assert done.returncode == 2 and "neither a run directory" in done.stderr


class _Reader:
    """The child's stdout, read on a thread, to wait for a piece of text."""

    def __init__(self, proc):
        self.text, self.proc = "", proc
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for chunk in iter(lambda: os.read(self.proc.stdout.fileno(), 4096), b""):
            self.text += chunk.decode(errors="replace")

    def wait_for(self, piece, count=1, timeout=60):
        deadline = time.monotonic() + timeout
        while self.text.count(piece) < count:
            assert time.monotonic() < deadline, f"no {piece!r} in {self.text!r}"
            time.sleep(0.02)


def test_ctrl_c_stops_a_reply_then_at_the_prompt_ends_the_chat_130(base_dir):
    proc = subprocess.Popen([sys.executable, "-m", "tinygrad_gpt.chat", str(base_dir), "--max-tokens", "1000000"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(),
                            preexec_fn=default_sigint)
    out = _Reader(proc)
    try:
        out.wait_for("you> ")
        proc.stdin.write(b"Good morrow\n")
        proc.stdin.flush()
        out.wait_for("model> ")
        time.sleep(0.3)                                                   # some tokens stream out
        proc.send_signal(signal.SIGINT)
        out.wait_for("you> ", count=2)
        assert " [stopped]\n" in out.text
        proc.send_signal(signal.SIGINT)                                   # at the prompt: the chat ends
        assert proc.wait(timeout=30) == 130, (proc.stderr.read().decode()[-2000:], out.text[-500:])
    finally:
        proc.kill()


def test_sigterm_ends_the_chat_143(chat_dir):
    proc = subprocess.Popen([sys.executable, "-m", "tinygrad_gpt.chat", str(chat_dir)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
    out = _Reader(proc)
    try:
        out.wait_for("you> ")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 143
    finally:
        proc.kill()


def test_a_continuation_keeps_the_whole_text_as_the_rlhf_rollouts_sample_it(base_dir):
    """Block 32: a 40-character prompt is not cut (GPT.generate's windows read its end), and with the
    same seed the reply is the tokens rlhf.rollout.sample_responses draws for that prompt."""
    from tinygrad_gpt.rlhf.rollout import sample_responses
    base = ChatModel.load(base_dir)
    text = "good morrow my lord what news speak sir "
    ids, left_out, notes = base.prompt([{"role": "user", "content": text}], max_tokens=10)
    assert ids.tolist() == base.tokenizer.encode(text) and left_out == 0
    assert notes == ["the model reads at most the last 32 tokens of the text and its continuation (its block)"]
    reply = base.generate(ids, Sampling(max_tokens=10, temperature=1.0, seed=4))
    rollout = sample_responses(base.model, ids[None, :], 10, 1.0, np.random.default_rng(4))
    assert reply.ids == rollout[0].tolist()
