"""python -m tinygrad_gpt.serve over HTTP, on the loopback only: OpenAI's chat-completions protocol
(a reply and its stream of chunks), the limits (each refusal names its field), the compare view's
judgments on disk (whole lines, fsync'ed, a cut line repaired, a failed write undone, a killed
server losing nothing it acknowledged), one generation at a time under concurrent requests, a
full queue, a client that disconnects, and nothing of a request reaching the filesystem.

The chat run answers "Yes." (tests/chat/chat_runs.py): greedy, its reply streams as Y, e, s, . and stops.
"""
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serve extra (pip install -e .[serve]) is not installed")
httpx = pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from tinygrad_gpt import serve  # noqa: E402
from tinygrad_gpt.chat import ChatModel, Reply  # noqa: E402

import chat_runs  # noqa: E402
from conftest import default_sigint  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
ASK = {"messages": [{"role": "user", "content": "Who goes there?"}], "temperature": 0}


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory):
    return chat_runs.tiny_chat_run(tmp_path_factory.mktemp("chat") / "run")


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return chat_runs.tiny_base_run(tmp_path_factory.mktemp("base") / "run")


def make_server(run_dir, tmp_path, prompts=None, **limits):
    chat = ChatModel.load(run_dir)
    return serve.Server(chat, serve.Limits(**limits), judgments=tmp_path / "judgments.jsonl", prompts=prompts,
                        identity=serve.checkpoint_identity(run_dir), seed=0)


@pytest.fixture
def client(chat_dir, tmp_path):
    server = make_server(chat_dir, tmp_path, prompts=["Hark!", "Who goes there?"])
    with TestClient(serve.create_app(server)) as c:
        c.server = server
        yield c


def sse(text):
    """The data of each server-sent event: JSON objects, and "[DONE]" as a string."""
    out = []
    for block in text.split("\n\n"):
        if block.startswith("data: "):
            data = block[len("data: "):]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


# ---- the protocol ----------------------------------------------------------------------------------

def test_chat_completion_in_openai_shape(client):
    r = client.post("/v1/chat/completions", json={**ASK, "model": "anything"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-") and body["model"] == "run"
    assert body["choices"] == [{"index": 0, "message": {"role": "assistant", "content": "Yes."},
                                "finish_reason": "stop"}]
    # <|user|> + 15 characters + <|assistant|> = 17 prompt tokens; Y e s . = 4
    assert body["usage"] == {"prompt_tokens": 17, "completion_tokens": 4, "total_tokens": 21}
    assert client.get("/v1/models").json()["data"][0]["id"] == "run"


def test_stream_is_server_sent_chunks_one_per_token_then_done(client):
    r = client.post("/v1/chat/completions", json={**ASK, "stream": True})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse(r.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [c["choices"][0]["delta"].get("content") for c in chunks[1:-1]] == ["Y", "e", "s", "."]
    assert chunks[-1]["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "stop"}
    assert chunks[-1]["usage"]["completion_tokens"] == 4


def test_max_tokens_ends_a_reply_with_length(base_dir, tmp_path):
    with TestClient(serve.create_app(make_server(base_dir, tmp_path))) as c:
        body = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Good morrow"}],
                                                    "max_tokens": 6, "seed": 1}).json()
        assert body["choices"][0]["finish_reason"] == "length" and body["usage"]["completion_tokens"] == 6
        assert c.get("/api/info").json()["mode"] == "continuation"
        # a base run continues any conversation, so one that ends with the assistant is fine
        r = c.post("/v1/chat/completions", json={"max_tokens": 2, "messages": [
            {"role": "user", "content": "Good"}, {"role": "assistant", "content": " morrow"}]})
        assert r.status_code == 200


def test_the_openai_client_talks_to_it(chat_dir, tmp_path):
    """OpenAI's own Python client, pointed at the server: a reply, a stream, and an error naming the field."""
    openai = pytest.importorskip("openai")
    server = make_server(chat_dir, tmp_path)
    with serve.background(serve.create_app(server)) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        reply = client.chat.completions.create(model="run", temperature=0, messages=ASK["messages"])
        assert reply.choices[0].message.content == "Yes." and reply.choices[0].finish_reason == "stop"
        assert reply.usage.completion_tokens == 4
        stream = client.chat.completions.create(model="run", temperature=0, messages=ASK["messages"], stream=True)
        pieces = [chunk.choices[0].delta.content for chunk in stream if chunk.choices[0].delta.content]
        assert pieces == ["Y", "e", "s", "."]
        with pytest.raises(openai.BadRequestError, match="max_tokens: must be >= 1 and <= 512"):
            client.chat.completions.create(model="run", messages=ASK["messages"], max_tokens=9999)
        assert [m.id for m in client.models.list()] == ["run"]


LONG = "a" * 4001


@pytest.mark.parametrize("change,status,param,says", [
    ({"max_tokens": 0}, 400, "max_tokens", "must be >= 1 and <= 512, got 0"),
    ({"max_tokens": 513}, 400, "max_tokens", "<= 512"),
    ({"max_tokens": "5"}, 400, "max_tokens", "expected an integer"),
    ({"max_tokens": True}, 400, "max_tokens", "expected an integer"),
    ({"max_completion_tokens": 9999}, 400, "max_completion_tokens", "<= 512"),
    ({"temperature": -0.1}, 400, "temperature", ">= 0"),
    ({"temperature": 2.5}, 400, "temperature", "<= 2"),
    ({"temperature": "hot"}, 400, "temperature", "expected a number"),
    ({"top_p": 0}, 400, "top_p", "> 0"),
    ({"top_p": 1.5}, 400, "top_p", "<= 1"),
    ({"top_k": 0}, 400, "top_k", ">= 1"),
    ({"top_k": 5000}, 400, "top_k", "<= 61"),           # the model's 61 tokens bound it below max_top_k
    ({"n": 2}, 400, "n", "only one choice"),
    ({"stop": ["\n"]}, 400, "stop", "not supported"),
    ({"stream": "yes"}, 400, "stream", "true or false"),
    ({"messages": []}, 400, "messages", "non-empty list"),
    ({"messages": [{"role": "user", "content": "Hi"}] * 65}, 400, "messages", "at most 64 messages, got 65"),
    ({"messages": [{"role": "user", "content": LONG}]}, 400, "messages[0].content", "at most 4000 characters"),
    ({"messages": [{"role": "wizard", "content": "Hi"}]}, 400, "messages[0].role", "one of system"),
    ({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yes."}]}, 400,
     "messages[1].role", "must end with an user"),
    ({"messages": [{"role": "user", "content": "Hi 2 you"}]}, 400, "messages[0].content", "lack '2'"),
])
def test_a_request_outside_the_limits_gets_a_400_naming_the_field(client, change, status, param, says):
    r = client.post("/v1/chat/completions", json={**ASK, **change})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert error["message"].startswith(param + ": ") and says in error["message"]
    assert client.server.generator.tokens == 0                         # nothing was generated


def test_bodies_that_are_not_json_objects_too_large_or_not_sent_as_json(client):
    r = client.post("/v1/chat/completions", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "not JSON" in r.json()["error"]["message"]
    r = client.post("/v1/chat/completions", json=[1, 2])
    assert r.status_code == 400 and "JSON object" in r.json()["error"]["message"]
    r = client.post("/v1/chat/completions", content=json.dumps(ASK), headers={"Content-Type": "text/plain"})
    assert r.status_code == 415                                        # a form or a page of another site
    big = {**ASK, "padding": "x" * 300_000}
    assert client.post("/v1/chat/completions", json=big).status_code == 413


def test_nothing_in_a_request_reaches_the_filesystem(client):
    assert client.get("/static/app.js").status_code == 200
    for path in ("/static/..%2f..%2fserve.py", "/static/../serve.py", "/static/index.html", "/static/%2e%2e"):
        assert client.get(path).status_code == 404, path
    assert client.post("/v1/chat/completions", json={**ASK, "model": "../../etc/passwd"}).status_code == 200
    page = client.get("/compare")
    assert page.status_code == 200 and "default-src 'self'" in page.headers["content-security-policy"]


def test_the_server_binds_the_loopback_unless_told_and_answers_only_loopback_names(chat_dir, tmp_path):
    args = serve.build_parser().parse_args(["somewhere"])
    assert args.host == "127.0.0.1"
    app = serve.create_app(make_server(chat_dir, tmp_path), allowed_hosts=serve.LOOPBACK_HOSTS)
    with TestClient(app, base_url="http://127.0.0.1:8000") as c:
        assert c.get("/api/info").status_code == 200
        assert c.get("/api/info", headers={"Host": "localhost:8000"}).status_code == 200
        rebound = c.post("/v1/chat/completions", json=ASK, headers={"Host": "evil.example:8000"})
        assert rebound.status_code == 400 and c.app.state.server.generator.tokens == 0


# ---- compare and judge ----------------------------------------------------------------------------

def test_compare_then_judge_appends_one_whole_line_per_judgment(client, chat_dir, tmp_path):
    pair = client.post("/api/compare", json={"prompt": None, "temperature": 0}).json()
    assert pair["prompt"] == "Hark!" and pair["a"] == pair["b"] == "Yes." and pair["mode"] == "chat"
    r = client.post("/api/judgments", json={"id": pair["id"], "choice": "b"})
    assert r.json() == {"saved": True, "counts": {"a": 0, "b": 1, "tie": 0, "skip": 0}, "total": 1}
    again = client.post("/api/judgments", json={"id": pair["id"], "choice": "a"})
    assert again.status_code == 404 and again.json()["error"]["param"] == "id"
    second = client.post("/api/compare", json={"prompt": None}).json()
    assert second["prompt"] == "Who goes there?"                       # the next of --prompts
    bad = client.post("/api/judgments", json={"id": second["id"], "choice": "c"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "choice"
    assert client.post("/api/judgments", json={"id": second["id"], "choice": "tie"}).status_code == 200
    lines = (tmp_path / "judgments.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    first = records[0]
    assert [r["choice"] for r in records] == ["b", "tie"] and first["id"] == pair["id"]
    assert (first["prompt"], first["a"], first["b"], first["mode"]) == ("Hark!", "Yes.", "Yes.", "chat")
    assert client.server.chat.tokenizer.decode(first["a_ids"]) == "Yes."
    assert client.server.chat.tokenizer.decode(first["prompt_ids"]) == "<|user|>Hark!<|assistant|>"
    assert first["sampling"]["temperature"] == 0 and first["sampling"]["seed_a"] != first["sampling"]["seed_b"]
    assert first["checkpoint"]["path"] == str(chat_dir) and len(first["checkpoint"]["sha256"]) == 64
    assert first["time"].endswith("+00:00")
    assert client.get("/api/info").json()["judgments"] == {"a": 0, "b": 1, "tie": 1, "skip": 0}


def test_a_typed_prompt_outside_the_limits_is_named(client):
    r = client.post("/api/compare", json={"prompt": "x" * 4001})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
    r = client.post("/api/compare", json={"prompt": "4 score"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt" and "lack '4'" in r.text


def test_a_cut_last_line_is_removed_when_the_file_is_opened(tmp_path):
    path = tmp_path / "j.jsonl"
    path.write_bytes(b'{"choice": "a"}\n{"choice": "skip"}\n{"choice": "b", "pro')
    log = serve.JudgmentLog(path)
    assert log.repaired == len(b'{"choice": "b", "pro') and log.counts == {"a": 1, "b": 0, "tie": 0, "skip": 1}
    assert path.read_bytes() == b'{"choice": "a"}\n{"choice": "skip"}\n'
    log.append({"choice": "tie"})
    log.close()
    assert path.read_text().splitlines()[-1] == '{"choice": "tie"}'
    path.write_text('{"choice": "a"}\nnot a judgment\n')
    with pytest.raises(ValueError, match=r"j\.jsonl:2 is not a judgment"):
        serve.JudgmentLog(path)


def test_a_failed_write_leaves_no_partial_line_and_the_pair_may_be_judged_again(client, tmp_path, monkeypatch):
    pair = client.post("/api/compare", json={"prompt": "Hark!"}).json()
    real_write = os.write

    def full_disk(fd, data):
        real_write(fd, bytes(data[:10]))                                 # half a line, then the disk is full
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(serve.os, "write", full_disk)
    r = client.post("/api/judgments", json={"id": pair["id"], "choice": "a"})
    assert r.status_code == 507 and "not saved" in r.json()["error"]["message"]
    assert (tmp_path / "judgments.jsonl").read_bytes() == b""
    monkeypatch.setattr(serve.os, "write", real_write)
    assert client.post("/api/judgments", json={"id": pair["id"], "choice": "a"}).status_code == 200
    assert len((tmp_path / "judgments.jsonl").read_text().splitlines()) == 1


def test_judgments_are_fsynced_before_they_are_acknowledged(client, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(serve.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    pair = client.post("/api/compare", json={"prompt": "Hark!"}).json()
    assert client.post("/api/judgments", json={"id": pair["id"], "choice": "a"}).status_code == 200
    assert synced == [client.server.judgments.fd]


def test_a_killed_server_keeps_every_judgment_it_acknowledged_and_no_partial_line(chat_dir, tmp_path):
    """A real server process, two clients judging as fast as they can, SIGKILL mid-stream: every id
    the server answered "saved" for is in the file, and every line is whole JSON."""
    path = tmp_path / "judgments.jsonl"
    env = dict(os.environ, PYTHONPATH=str(REPO), OPENBLAS_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "tinygrad_gpt.serve", str(chat_dir), "--port", "0",
                             "--judgments", str(path), "--max-tokens", "8", "--default-max-tokens", "8"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert "at http://127.0.0.1:" in line, line + proc.stderr.read()   # the loopback, by default
        url = line.split("at ")[1].split("/ ")[0]
        acknowledged, stop = [], threading.Event()

        def judge_forever():
            with httpx.Client(base_url=url, timeout=10) as h:
                while not stop.is_set():
                    try:
                        pair = h.post("/api/compare", json={"prompt": "Hark!"}).json()
                        r = h.post("/api/judgments", json={"id": pair["id"], "choice": "a"})
                    except httpx.HTTPError:
                        return
                    if r.status_code == 200:
                        acknowledged.append(pair["id"])
        threads = [threading.Thread(target=judge_forever) for _ in range(2)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while len(acknowledged) < 40 and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        stop.set()
        for t in threads:
            t.join(timeout=15)
    finally:
        proc.kill()
    assert len(acknowledged) >= 40
    raw = path.read_bytes()
    ids = [json.loads(line)["id"] for line in raw.decode().splitlines()]   # every line is whole JSON
    assert set(acknowledged) <= set(ids) and raw.endswith(b"\n")
    assert serve.JudgmentLog(path).repaired == 0


@pytest.mark.parametrize("sig,status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signalled_server_stops_with_the_scripts_status(chat_dir, tmp_path, sig, status):
    env = dict(os.environ, PYTHONPATH=str(REPO), OPENBLAS_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "tinygrad_gpt.serve", str(chat_dir), "--port", "0",
                             "--judgments", str(tmp_path / "j.jsonl")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, preexec_fn=default_sigint)
    try:
        assert "serving" in proc.stdout.readline()
        proc.send_signal(sig)
        assert proc.wait(timeout=30) == status
    finally:
        proc.kill()


# ---- one generation at a time ---------------------------------------------------------------------

class Gate:
    """Stands in for ChatModel.generate: waits for `open`, then emits `pieces` pieces `every` seconds,
    asking cancelled() after each; records how many it emitted and whether it was cancelled."""

    def __init__(self, pieces=5, every=0.0):
        self.open, self.pieces, self.every = threading.Event(), pieces, every
        self.runs, self.lock = [], threading.Lock()

    def __call__(self, prompt_ids, sampling, on_text=None, cancelled=None):
        self.open.wait(timeout=30)
        ids, reason = [], "length"
        for _ in range(self.pieces):
            if cancelled is not None and cancelled():
                reason = "cancelled"
                break
            ids.append(0)
            if on_text is not None:
                on_text("x")
            time.sleep(self.every)
        with self.lock:
            self.runs.append((len(ids), reason))
        return Reply(ids, "x" * len(ids), reason, len(prompt_ids))


def test_concurrent_requests_are_generated_one_at_a_time(base_dir, tmp_path):
    server = make_server(base_dir, tmp_path)
    app = serve.create_app(server)
    results = []
    with serve.background(app) as url:
        def ask(k):
            with httpx.Client(base_url=url, timeout=60) as h:
                results.append(h.post("/v1/chat/completions", json={
                    "messages": [{"role": "user", "content": "Good morrow"}], "max_tokens": 40, "seed": k}))
        threads = [threading.Thread(target=ask, args=(k,)) for k in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert [r.status_code for r in results] == [200] * 6
    assert server.generator.tokens == 6 * 40
    spans = sorted(server.generator.spans)
    assert len(spans) == 6 and all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))  # never two at once


def test_a_full_queue_gets_503_and_the_waiting_requests_are_served(base_dir, tmp_path):
    server = make_server(base_dir, tmp_path, max_queue=2)
    gate = Gate()
    server.chat.generate = gate
    results = {}
    with serve.background(serve.create_app(server)) as url:
        def ask(k):
            with httpx.Client(base_url=url, timeout=60) as h:
                results[k] = h.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hark"}]})
        threads = []
        for k in range(3):                      # one generating (held by the gate), two waiting
            threads.append(threading.Thread(target=ask, args=(k,)))
            threads[-1].start()
            deadline = time.monotonic() + 10
            while sum(server.generator.status()[key] for key in ("generating", "waiting")) < k + 1:
                assert time.monotonic() < deadline
                time.sleep(0.01)
        with httpx.Client(base_url=url, timeout=10) as h:
            busy = h.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hark"}]})
        assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
        assert "busy" in busy.json()["error"]["message"]
        gate.open.set()
        for t in threads:
            t.join()
    assert [results[k].status_code for k in range(3)] == [200] * 3
    assert gate.runs == [(5, "length")] * 3


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_disconnects_stops_its_generation(base_dir, tmp_path, stream):
    server = make_server(base_dir, tmp_path)
    gate = Gate(pieces=100_000, every=0.002)
    gate.open.set()
    server.chat.generate = gate
    with serve.background(serve.create_app(server)) as url:
        body = {"messages": [{"role": "user", "content": "Hark"}], "stream": stream}
        if stream:
            with httpx.Client(base_url=url, timeout=30) as h:
                with h.stream("POST", "/v1/chat/completions", json=body) as r:
                    seen = 0
                    for _ in r.iter_lines():
                        seen += 1
                        if seen > 10:
                            break                      # leaving the block closes the connection
        else:
            with httpx.Client(base_url=url, timeout=0.5) as h:
                with pytest.raises(httpx.ReadTimeout):
                    h.post("/v1/chat/completions", json=body)
        deadline = time.monotonic() + 10
        while not gate.runs:
            assert time.monotonic() < deadline, "the generation went on after its client left"
            time.sleep(0.02)
    emitted, reason = gate.runs[0]
    assert reason == "cancelled" and emitted < 5_000
