"""A web page for a run: chat with it, compare two of its answers and judge them; OpenAI's chat API.

    pip install -e ".[serve]"
    python -m tinygrad_gpt.serve out/sft --port 8000     # http://127.0.0.1:8000/ and /compare
    python -m tinygrad_gpt.serve out/shakespeare-cpu --prompts prompts.jsonl --judgments judged.jsonl

Pages (tinygrad_gpt/serve_page/): `/` is a chat whose replies stream in token by token; `/compare`
shows one prompt and two completions side by side, and keys 1-4 (or the buttons) judge them: A,
B, tie or skip, with a running count. A base (not chat-tuned) run is served too, as plain
continuation (tinygrad_gpt/chat.py's ChatModel decides which).

API, as OpenAI's (so the clients people already use work against it):
    POST /v1/chat/completions   {"messages": [...], "stream": bool, "max_tokens", "temperature",
                                "top_p", "top_k" (an extension), "seed"}; with stream true the reply
                                comes as server-sent events of chat.completion.chunk objects, then
                                "data: [DONE]". Errors: {"error": {"message", "type", "param"}}.
    GET  /v1/models
and for the compare page: POST /api/compare {"prompt": text or null} (two completions; null takes
the next prompt of --prompts), POST /api/judgments {"id", "choice": "a"|"b"|"tie"|"skip"}, GET
/api/info, GET /api/status.

Judgments: each is one JSON line appended to --judgments (prompt and both completions as text and
token ids, the choice, the checkpoint, the sampling settings, the time), written with a single
write() on an O_APPEND descriptor and fsync'ed before the page hears "saved", so a killed server
loses no judgment it acknowledged; a line that a crash cut short (power loss, a full disk) is cut
off when the file is opened again, and said so, so the file never holds a partial line.

Limits and safety (`Limits`, each a flag): messages per request, characters per message, tokens
per reply, temperature, top-k, the request body's size, and how many requests may wait. A request
outside them gets a 400 whose `param` names the field; a body that is not JSON 400, too large 413,
not sent as application/json 415 (a page of another site cannot post to this one without the
browser asking first). One model generates for one request at a time: requests wait in a queue
(first come, first served; 503 when --max-queue are already waiting) and a worker thread runs
them; a client that disconnects, streaming or not, stops its generation at the next token (or
before it starts). Nothing in a request reaches the filesystem: the model, the pages, the prompts
and the judgments file are fixed at start-up; the request's "model" is not read. The server
listens on 127.0.0.1 unless --host says otherwise, and there answers only requests addressed to
127.0.0.1 or localhost (a page of another site whose name is made to resolve to 127.0.0.1 gets a
400).

The ASGI server is uvicorn, the framework FastAPI (the `serve` extra): both are what nanochat's web
chat used, FastAPI's StreamingResponse is the plain way to stream server-sent events, and its
TestClient (httpx) lets the tests run the app in-process.
Follows: OpenAI's chat-completions API (the chunk format, usage), nanochat's chat_web (one worker
per model, limits). Deliberately does not: authenticate, batch requests, keep a conversation on
the server (the page sends it whole each turn), or serve several models.
"""
import argparse
import asyncio
import contextlib
import itertools
import json
import os
import queue
import signal
import sys
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path

from tinygrad_gpt.jsonl import read_json_lines
from tinygrad_gpt import chat_format, cli
from tinygrad_gpt.chat import ChatModel, Sampling
from tinygrad_gpt.chat_format import ConversationError
from tinygrad_gpt.settings import check_fields, setting

PAGE_DIR = Path(__file__).resolve().parent / "serve_page"
PAGES = {"/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
         "/static/style.css": ("style.css", "text/css; charset=utf-8")}
CHOICES = ("a", "b", "tie", "skip")
PENDING_PAIRS = 256  # comparisons shown and not judged yet, kept in memory (the oldest are forgotten)


@dataclass
class Limits:
    """What one request may ask; outside these a request gets a 400 naming the field."""
    max_messages: int = setting(64, ge=1)          # messages in one request (user and assistant turns)
    max_message_chars: int = setting(4000, ge=1)   # characters in one message (and a compare prompt)
    max_tokens: int = setting(512, ge=1)           # the longest reply a request may ask for
    default_max_tokens: int = setting(200, ge=1)   # a request that does not say; at most max_tokens
    max_temperature: float = setting(2.0, gt=0)
    default_temperature: float = setting(0.8, ge=0)  # a request that does not say; at most max_temperature
    max_top_k: int = setting(1000, ge=1)
    max_body_bytes: int = setting(262144, ge=1024)  # a request body larger than this gets 413
    max_queue: int = setting(16, ge=0)             # requests that may wait behind the one generating

    def __post_init__(self):
        check_fields(self)
        if self.default_max_tokens > self.max_tokens:
            raise ValueError(f"Limits: default_max_tokens {self.default_max_tokens} is above max_tokens "
                             f"{self.max_tokens}")
        if self.default_temperature > self.max_temperature:
            raise ValueError(f"Limits: default_temperature {self.default_temperature:g} is above max_temperature "
                             f"{self.max_temperature:g}")


class RequestError(ValueError):
    """A request the server refuses: HTTP status, the field at fault (OpenAI's `param`), a message."""

    def __init__(self, status, param, message, kind="invalid_request_error"):
        self.status, self.param, self.kind = status, param, kind
        super().__init__(f"{param}: {message}" if param else message)


def error_body(exc):
    return {"error": {"message": str(exc), "type": exc.kind, "param": exc.param, "code": None}}


# ---- checking a request ------------------------------------------------------------------------------

def _number(body, name, lo, hi, integer, default, lo_open=False):
    value = body.get(name, default)
    if value is None:
        return default
    kind = "an integer" if integer else "a number"
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if not ok or isinstance(value, bool) or (not integer and value != value):
        raise RequestError(400, name, f"expected {kind}, got {json.dumps(value)}")
    if (value <= lo if lo_open else value < lo) or value > hi:
        raise RequestError(400, name, f"must be {'>' if lo_open else '>='} {lo:g} and <= {hi:g}, got {value:g}")
    return value


def sampling_of(body, limits, vocab_size):
    """Sampling from a request's max_tokens (or max_completion_tokens), temperature, top_p, top_k, seed."""
    tokens_field = "max_completion_tokens" if body.get("max_tokens") is None and "max_completion_tokens" in body \
        else "max_tokens"
    max_tokens = _number(body, tokens_field, 1, limits.max_tokens, True, limits.default_max_tokens)
    temperature = _number(body, "temperature", 0, limits.max_temperature, False, limits.default_temperature)
    top_p = _number(body, "top_p", 0, 1, False, None, lo_open=True)
    top_k = _number(body, "top_k", 1, min(limits.max_top_k, vocab_size), True, None)
    seed = _number(body, "seed", 0, 2 ** 63 - 1, True, None)
    return Sampling(max_tokens=max_tokens, temperature=float(temperature), top_k=top_k,
                    top_p=None if top_p is None else float(top_p), seed=seed)


def messages_of(body, limits, chat):
    """The request's messages, checked against the limits and the conversation rules (fields named)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "messages", "expected a non-empty list of {\"role\", \"content\"} messages")
    if len(messages) > limits.max_messages:
        raise RequestError(400, "messages", f"at most {limits.max_messages} messages, got {len(messages)}")
    try:
        checked = chat_format.check_messages(messages, "messages", last="user" if chat.mode == "chat" else None)
    except ConversationError as exc:
        raise RequestError(400, exc.field, str(exc).split(": ", 1)[1]) from None
    for role, text, where in checked:
        if len(text) > limits.max_message_chars:
            raise RequestError(400, f"{where}.content", f"at most {limits.max_message_chars} characters, "
                                                       f"got {len(text)}")
    return messages


def chat_request(body, limits, chat):
    """(messages, sampling, stream) of a POST /v1/chat/completions body, or RequestError."""
    if not isinstance(body, dict):
        raise RequestError(400, None, f"the body must be a JSON object, got {type(body).__name__}")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestError(400, "stream", f"expected true or false, got {json.dumps(stream)}")
    n = body.get("n", 1)
    if n != 1 or isinstance(n, bool):
        raise RequestError(400, "n", f"only one choice per request (n = 1), got {json.dumps(n)}")
    if body.get("stop") not in (None, [], ""):
        raise RequestError(400, "stop", "stop sequences are not supported (a reply ends at the model's end of turn)")
    messages = messages_of(body, limits, chat)
    return messages, sampling_of(body, limits, chat.model.config.vocab_size), stream


# ---- one generation at a time ----------------------------------------------------------------------

class QueueFull(RuntimeError):
    pass


class Job:
    """Work for the model, run on the worker thread; what it emits reaches the request's event loop."""

    def __init__(self, work, loop):
        self.work, self.loop = work, loop
        self.cancelled = threading.Event()
        self.events = asyncio.Queue()

    def emit(self, kind, value=None):
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))
        except RuntimeError:  # the loop has closed: the client is long gone
            pass


class Generator:
    """One worker thread runs the model for one job at a time, in the order they came; at most
    `max_waiting` jobs wait behind the one running (QueueFull beyond)."""

    def __init__(self, max_waiting):
        self.max_waiting = max_waiting
        self.jobs = queue.Queue()
        self.lock = threading.Lock()
        self.waiting = 0
        self.running = None
        self.tokens = 0          # tokens generated since start-up (the status page, the tests)
        self.spans = []          # (start, end) perf_counter of each job run, the last 1000
        self.thread = threading.Thread(target=self._work, name="generator", daemon=True)
        self.thread.start()

    def submit(self, work, loop):
        with self.lock:
            if self.waiting >= self.max_waiting and self.running is not None:
                raise QueueFull(f"the server is busy: {self.waiting} request(s) already wait for the model; "
                                f"try again shortly")
            self.waiting += 1
        job = Job(work, loop)
        self.jobs.put(job)
        return job

    def _work(self):
        while True:
            job = self.jobs.get()
            if job is None:
                return
            with self.lock:
                self.waiting -= 1
                self.running = job
            start = time.perf_counter()
            try:
                if job.cancelled.is_set():
                    job.emit("done", None)
                else:
                    job.emit("done", job.work(job))
            except Exception as exc:  # reported to that request; the worker goes on
                job.emit("error", exc)
            finally:
                with self.lock:
                    self.running = None
                    self.spans = (self.spans + [(start, time.perf_counter())])[-1000:]

    def status(self):
        with self.lock:
            return {"generating": self.running is not None, "waiting": self.waiting, "tokens": self.tokens}

    def close(self):
        with self.lock:
            if self.running is not None:
                self.running.cancelled.set()
        self.jobs.put(None)


# ---- judgments on disk ---------------------------------------------------------------------------------

class JudgmentLog:
    """Judgments appended to a JSONL file, one line each, whole or not at all, fsync'ed.

    Opening repairs the file: a last line without its newline (cut by a crash during a write) is
    removed, and `repaired` says how many bytes that was. `counts` holds the choices in the file.
    """

    def __init__(self, path):
        self.path = Path(path)
        self.lock = threading.Lock()
        self.repaired = 0
        self.counts = dict.fromkeys(CHOICES, 0)
        existed = self.path.exists()
        if existed:
            self._repair()
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        if not existed:  # the new file's name is durable too
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    def _repair(self):
        raw = self.path.read_bytes()
        end = raw.rfind(b"\n") + 1
        if end < len(raw):
            with open(self.path, "r+b") as f:
                f.truncate(end)
                f.flush()
                os.fsync(f.fileno())
            self.repaired = len(raw) - end
        for lineno, line in enumerate(raw[:end].splitlines(), 1):
            try:
                choice = json.loads(line).get("choice")
            except (ValueError, AttributeError):
                raise ValueError(f"--judgments {self.path}:{lineno} is not a judgment (a JSON object per line); "
                                 f"give another file") from None
            if choice in self.counts:
                self.counts[choice] += 1

    def append(self, record):
        """Write one judgment as one line and fsync it; returns the counts after it."""
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        with self.lock:
            size = os.fstat(self.fd).st_size
            try:
                view = memoryview(line)
                while view:  # one write() unless the disk is full or a signal cuts it short
                    written = os.write(self.fd, view)
                    view = view[written:]
                os.fsync(self.fd)
            except OSError:
                os.ftruncate(self.fd, size)  # no partial line is left behind
                raise
            self.counts[record["choice"]] += 1
            return dict(self.counts)

    def close(self):
        os.close(self.fd)


def read_prompts(path):
    """Compare prompts: one per line, a JSON string, {"prompt": text}, or {"messages": [...]} (its first user
    message); blank lines skipped. Errors name the line."""
    prompts = []
    for lineno, item in read_json_lines(path, where=lambda lineno: f"--prompts {path}:{lineno}"):
        if isinstance(item, dict) and isinstance(item.get("prompt"), str):
            item = item["prompt"]
        elif isinstance(item, dict) and isinstance(item.get("messages"), list):
            item = next((m.get("content") for m in item["messages"] if isinstance(m, dict)
                         and m.get("role") == "user"), None)
        if not isinstance(item, str) or not item:
            raise ValueError(f"--prompts {path}:{lineno}: expected a string, {{\"prompt\": ...}} or "
                             f"{{\"messages\": [...]}} with a user message")
        prompts.append(item)
    if not prompts:
        raise ValueError(f"--prompts {path}: holds no prompt")
    return prompts


def checkpoint_identity(source):
    """{"path", "sha256"} of the served run: the SHA-256 of its checkpoint.json (which records every
    weight file's), or of a GPT-2 folder's config.json."""
    from tinygrad_gpt import checkpoint, pretrained
    path = Path(source)
    for name in (checkpoint.JSON_NAME, pretrained.CONFIG_NAME):
        if (path / name).is_file():
            return {"path": str(source), "file": name, "sha256": checkpoint.file_sha256(path / name)}
    return {"path": str(source)}


# ---- the app -----------------------------------------------------------------------------------------------

def _now():
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class Server:
    """What the app serves: the model, the generator, the judgments, the comparisons pending."""

    def __init__(self, chat, limits, judgments=None, prompts=None, identity=None, seed=None):
        self.chat, self.limits = chat, limits
        self.generator = Generator(limits.max_queue)
        self.judgments = JudgmentLog(judgments) if judgments is not None else None
        self.prompts = list(prompts or [])
        self.prompt_order = itertools.count()
        self.identity = identity or {"path": chat.source}
        self.pending = OrderedDict()
        self.seeds = itertools.count(seed if seed is not None else int.from_bytes(os.urandom(4), "little"))

    def info(self):
        counts = dict(self.judgments.counts) if self.judgments else None
        return {"model": self.chat.name, "mode": self.chat.mode, "block_size": self.chat.block_size,
                "limits": asdict(self.limits), "judgments": counts,
                "judgments_file": str(self.judgments.path) if self.judgments else None,
                "prompts": len(self.prompts)}

    # -- replies -------------------------------------------------------------------------------------
    def reply_work(self, messages, sampling, on_text):
        def work(job):
            reply = self.chat.reply(messages, sampling, on_text=on_text(job), cancelled=job.cancelled.is_set)
            self.generator.tokens += len(reply.ids)
            return reply
        return work

    def compare_work(self, prompt, sampling):
        seeds = (next(self.seeds), next(self.seeds))
        messages = [{"role": "user", "content": prompt}]

        def work(job):
            replies = []
            for seed in seeds:
                s = Sampling(**{**sampling.as_dict(), "seed": seed})
                replies.append(self.chat.reply(messages, s, cancelled=job.cancelled.is_set))
                self.generator.tokens += len(replies[-1].ids)
            return replies
        return work, seeds, messages

    def next_prompt(self):
        if not self.prompts:
            raise RequestError(400, "prompt", "this server has no --prompts: type a prompt")
        return self.prompts[next(self.prompt_order) % len(self.prompts)]


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")


def create_app(server, allowed_hosts=("*",)):
    """The FastAPI app of a Server. allowed_hosts: the Host headers it answers (a name another site
    resolves to 127.0.0.1, DNS rebinding, gets a 400); main() gives LOOPBACK_HOSTS on the loopback."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response, StreamingResponse
    from starlette.middleware.trustedhost import TrustedHostMiddleware

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        server.generator.close()  # the generation in progress stops at its next token

    app = FastAPI(title="tinygrad_gpt", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))
    app.state.server = server
    page = (PAGE_DIR / "index.html").read_text(encoding="utf-8")
    assets = {route: ((PAGE_DIR / name).read_bytes(), kind) for route, (name, kind) in PAGES.items()}
    headers = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data:", "X-Content-Type-Options": "nosniff",
               "Referrer-Policy": "no-referrer", "Cache-Control": "no-store"}

    def fail(exc):
        extra = {"Retry-After": "1"} if exc.status == 503 else {}
        return JSONResponse(error_body(exc), status_code=exc.status, headers=extra)

    async def read_json(request):
        if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
            raise RequestError(415, None, "send the body as JSON with Content-Type: application/json")
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > server.limits.max_body_bytes:
            raise RequestError(413, None, f"the body is larger than {server.limits.max_body_bytes} bytes")
        raw = bytearray()
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > server.limits.max_body_bytes:
                raise RequestError(413, None, f"the body is larger than {server.limits.max_body_bytes} bytes")
        try:
            return json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RequestError(400, None, f"the body is not JSON: {exc}") from None

    def submit(work):
        try:
            return server.generator.submit(work, asyncio.get_running_loop())
        except QueueFull as exc:
            raise RequestError(503, None, str(exc), kind="server_busy") from None

    async def wait(job, request):
        """The job's result; a client that disconnects meanwhile cancels it."""
        while True:
            try:
                kind, value = await asyncio.wait_for(job.events.get(), timeout=0.25)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    job.cancelled.set()
                continue
            if kind == "done":
                return value
            if kind == "error":
                raise value

    @app.get("/")
    @app.get("/compare")
    async def index():
        return Response(page, media_type="text/html; charset=utf-8", headers=headers)

    @app.get("/static/{name}")
    async def asset(name: str):
        found = assets.get(f"/static/{name}")  # a fixed table: the name never reaches the filesystem
        if found is None:
            return JSONResponse({"error": {"message": "not found", "type": "not_found", "param": None}}, 404)
        return Response(found[0], media_type=found[1], headers=headers)

    @app.get("/api/info")
    async def info():
        return server.info()

    @app.get("/api/status")
    async def status():
        return server.generator.status()

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": server.chat.name, "object": "model", "created": 0,
                                            "owned_by": "tinygrad_gpt"}]}

    @app.post("/v1/chat/completions")
    async def completions(request: Request):
        try:
            messages, sampling, stream = chat_request(await read_json(request), server.limits, server.chat)
            server.chat.prompt(messages, sampling.max_tokens)  # refuse what cannot be rendered before queueing
        except ConversationError as exc:
            return fail(RequestError(400, exc.field, str(exc).split(": ", 1)[1]))
        except RequestError as exc:
            return fail(exc)
        rid, created, name = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time()), server.chat.name
        if not stream:
            try:
                job = submit(server.reply_work(messages, sampling, lambda job: None))
                reply = await wait(job, request)
            except RequestError as exc:
                return fail(exc)
            if reply is None or reply.finish_reason == "cancelled":
                return Response(status_code=499)
            return {"id": rid, "object": "chat.completion", "created": created, "model": name,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": reply.text},
                                 "finish_reason": reply.finish_reason}],
                    "usage": {"prompt_tokens": reply.prompt_tokens, "completion_tokens": len(reply.ids),
                              "total_tokens": reply.prompt_tokens + len(reply.ids)},
                    "tinygrad_gpt": {"notes": reply.notes, "left_out": reply.left_out}}
        try:
            job = submit(server.reply_work(messages, sampling, lambda job: lambda piece: job.emit("text", piece)))
        except RequestError as exc:
            return fail(exc)

        def chunk(delta, finish=None, extra=None):
            body = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": name,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            if extra:
                body.update(extra)
            return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

        async def events():
            try:
                yield chunk({"role": "assistant", "content": ""})
                while True:
                    kind, value = await job.events.get()
                    if kind == "text":
                        yield chunk({"content": value})
                    elif kind == "error":
                        yield f"data: {json.dumps({'error': {'message': str(value), 'type': 'server_error'}})}\n\n"
                        return
                    else:
                        if value is None:
                            return
                        usage = {"prompt_tokens": value.prompt_tokens, "completion_tokens": len(value.ids),
                                 "total_tokens": value.prompt_tokens + len(value.ids)}
                        yield chunk({}, value.finish_reason, {"usage": usage, "tinygrad_gpt": {
                            "notes": value.notes, "left_out": value.left_out}})
                        yield "data: [DONE]\n\n"
                        return
            finally:  # the client went away (or the reply is over): stop generating for it
                job.cancelled.set()

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.post("/api/compare")
    async def compare(request: Request):
        try:
            body = await read_json(request)
            if not isinstance(body, dict):
                raise RequestError(400, None, f"the body must be a JSON object, got {type(body).__name__}")
            prompt = body.get("prompt")
            if prompt is None or prompt == "":
                prompt = server.next_prompt()
            if not isinstance(prompt, str):
                raise RequestError(400, "prompt", f"expected a string, got {json.dumps(prompt)}")
            if len(prompt) > server.limits.max_message_chars:
                raise RequestError(400, "prompt", f"at most {server.limits.max_message_chars} characters, "
                                                  f"got {len(prompt)}")
            sampling = sampling_of(body, server.limits, server.chat.model.config.vocab_size)
            work, seeds, messages = server.compare_work(prompt, sampling)
            try:
                prompt_ids, _, notes = server.chat.prompt(messages, sampling.max_tokens, field="prompt")
            except ConversationError as exc:
                raise RequestError(400, "prompt", str(exc).split(": ", 1)[1]) from None
            job = submit(work)
            replies = await wait(job, request)
        except RequestError as exc:
            return fail(exc)
        if replies is None:
            return Response(status_code=499)
        pair_id = uuid.uuid4().hex
        settings = {**sampling.as_dict(), "seed": None, "seed_a": seeds[0], "seed_b": seeds[1]}
        server.pending[pair_id] = {"prompt": prompt, "prompt_ids": prompt_ids.tolist(),
                                   "a": replies[0].text, "a_ids": replies[0].ids,
                                   "b": replies[1].text, "b_ids": replies[1].ids,
                                   "finish": [replies[0].finish_reason, replies[1].finish_reason],
                                   "mode": server.chat.mode, "sampling": settings}
        while len(server.pending) > PENDING_PAIRS:
            server.pending.popitem(last=False)
        return {"id": pair_id, "prompt": prompt, "a": replies[0].text, "b": replies[1].text,
                "mode": server.chat.mode, "sampling": settings, "notes": notes}

    @app.post("/api/judgments")
    async def judge(request: Request):
        try:
            body = await read_json(request)
            if not isinstance(body, dict):
                raise RequestError(400, None, f"the body must be a JSON object, got {type(body).__name__}")
            if server.judgments is None:
                raise RequestError(409, None, "this server keeps no judgments (start it with --judgments FILE)")
            choice = body.get("choice")
            if choice not in CHOICES:
                raise RequestError(400, "choice", f"must be one of {', '.join(CHOICES)}, got {json.dumps(choice)}")
            pair = server.pending.pop(body.get("id"), None) if isinstance(body.get("id"), str) else None
            if pair is None:
                raise RequestError(404, "id", "no comparison with this id is waiting for a judgment (judged "
                                              "already, or forgotten)")
        except RequestError as exc:
            return fail(exc)
        record = {"time": _now(), "id": body["id"], **pair, "choice": choice, "checkpoint": server.identity}
        try:
            counts = await asyncio.get_running_loop().run_in_executor(None, server.judgments.append, record)
        except OSError as exc:
            server.pending[body["id"]] = pair  # not saved: it may be judged again
            return fail(RequestError(507, None, f"the judgment was not saved: {exc}", kind="server_error"))
        return {"saved": True, "counts": counts, "total": sum(counts.values())}

    return app


@contextlib.contextmanager
def background(app, host="127.0.0.1", port=0):
    """Run `app` on uvicorn in a thread for the duration of a with block; yields its base URL
    ("http://127.0.0.1:PORT"; port 0 picks a free one). For tests and benchmarks."""
    import socket

    import uvicorn
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    web = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=1))
    thread = threading.Thread(target=web.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not web.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("background: the server did not start")
        time.sleep(0.01)
    try:
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        web.should_exit = True
        thread.join(timeout=10)
        sock.close()


# ---- the command -------------------------------------------------------------------------------------------

def build_parser():
    p = argparse.ArgumentParser(prog="python -m tinygrad_gpt.serve", description=__doc__.split("\n\n")[0],
                                formatter_class=cli.HelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1].split("\nFollows:")[0])
    p.add_argument("run", help="a run directory (--out of examples/sft.py, shakespeare.py, ...) or a GPT-2 folder")
    p.add_argument("--host", default="127.0.0.1", help="the address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=cli.bounded(int, ge=0, le=65535), default=8000, help="0 picks a free port")
    p.add_argument("--judgments", default="judgments.jsonl", help="the JSONL file judgments are appended to")
    p.add_argument("--prompts", default=None, help="compare prompts, one per line: a JSON string, {\"prompt\": ...} "
                                                   "or {\"messages\": [...]} (default: the person types them)")
    p.add_argument("--seed", type=cli.bounded(int, ge=0), default=None, help="the compare view's first seed "
                                                                            "(default: random)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the model runs (cuda: cupy)")
    cli.add_flags(p, Limits, use_defaults=True, title="limits (Limits fields)")
    return p


def _terminate(signum, frame):
    raise SystemExit(cli.EXIT_SIGTERM)


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        import uvicorn
    except ImportError as exc:
        raise ImportError("the server needs FastAPI and uvicorn: pip install -e \".[serve]\"") from exc
    limits = Limits(**{f.name: getattr(args, f.name) for f in fields(Limits)})
    chat = ChatModel.load(args.run, device=args.device)
    prompts = read_prompts(args.prompts) if args.prompts else None
    server = Server(chat, limits, judgments=args.judgments, prompts=prompts, identity=checkpoint_identity(args.run),
                    seed=args.seed)
    loopback = args.host in ("127.0.0.1", "localhost", "::1")
    app = create_app(server, allowed_hosts=LOOPBACK_HOSTS if loopback else ("*",))
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=2)
    web = uvicorn.Server(config)
    signal.signal(signal.SIGTERM, _terminate)  # uvicorn shuts down, then raises the signal again: exit 143

    def announce():
        while not web.started:
            time.sleep(0.05)
        host, port = web.servers[0].sockets[0].getsockname()[:2]
        counts = server.judgments.counts
        print(f"serving {args.run} ({chat.mode}) at http://{host}:{port}/ (chat) and http://{host}:{port}/compare",
              flush=True)
        print(f"judgments: {Path(args.judgments).resolve()} ({sum(counts.values())} so far)"
              + (f"; a cut-off last line of {server.judgments.repaired} bytes was removed" if server.judgments.repaired
                 else ""), flush=True)
    threading.Thread(target=announce, daemon=True).start()
    web.run()
    return cli.EXIT_OK


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
