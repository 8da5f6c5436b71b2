// The page of python -m tinygrad_gpt.serve.
// Chat (/): the whole conversation goes to POST /v1/chat/completions with stream: true each turn and
// the reply is read as server-sent events, a piece of text per token; Esc (or a new message) aborts
// the request, which stops the generation on the server.
// Compare (/compare): POST /api/compare gives one prompt and two completions; keys 1-4 (or the
// buttons) send A, B, tie or skip to POST /api/judgments, which answers once the line is on disk.
// While a person reads one pair the next is already being generated (when the server has prompts).
"use strict";

const $ = (id) => document.getElementById(id);
const compareView = location.pathname.replace(/\/+$/, "") === "/compare";

function show(el, text) { el.textContent = text; }

async function errorText(response) {
  try {
    const body = await response.json();
    if (body && body.error) return body.error.message;
  } catch (e) { /* not JSON */ }
  return `HTTP ${response.status}`;
}

async function postJSON(url, body, signal) {
  const response = await fetch(url, {method: "POST", headers: {"Content-Type": "application/json"},
                                     body: JSON.stringify(body), signal});
  if (!response.ok) throw new Error(await errorText(response));
  return response.json();
}

let info = null;
async function loadInfo() {
  info = await (await fetch("/api/info")).json();
  show($("model"), info.model);
  show($("mode"), info.mode === "chat" ? "chat-tuned" : "continuation (not chat-tuned)");
  document.title = `${info.model} - tinygrad_gpt`;
  if (info.judgments) showCounts(info.judgments);
  $("max-tokens").value = Math.min(info.limits.default_max_tokens, info.limits.max_tokens);
  $("max-tokens").max = info.limits.max_tokens;
}

// ---- chat ---------------------------------------------------------------------------------------
let history = [];
let running = null;  // the AbortController of the reply being streamed

function bubble(role, text) {
  const el = document.createElement("div");
  el.className = `message ${role}`;
  el.textContent = text;
  $("messages").appendChild(el);
  el.scrollIntoView({block: "end"});
  return el;
}

async function* serverEvents(response) {
  // server-sent events: "data: <json>\n\n" blocks, the last one "data: [DONE]"
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, {stream: true});
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of block.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return;
        yield JSON.parse(data);
      }
    }
  }
}

async function send(text) {
  if (running) running.abort();
  const notice = $("chat-notice");
  notice.hidden = true;
  history.push({role: "user", content: text});
  const mine = bubble("user", text);
  const reply = bubble("assistant streaming", "");
  reply.dataset.tokens = "0";
  const controller = new AbortController();
  running = controller;
  const started = performance.now();
  let first = null;
  show($("chat-status"), "waiting for the model...");
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST", headers: {"Content-Type": "application/json"}, signal: controller.signal,
      body: JSON.stringify({messages: history, stream: true, temperature: Number($("temperature").value),
                            max_tokens: Number($("max-tokens").value)})});
    if (!response.ok) throw new Error(await errorText(response));
    let finish = null;
    for await (const chunk of serverEvents(response)) {
      if (chunk.error) throw new Error(chunk.error.message);
      const choice = chunk.choices[0];
      if (choice.delta.content) {
        if (first === null) first = performance.now();
        reply.textContent += choice.delta.content;
        reply.dataset.tokens = String(Number(reply.dataset.tokens) + 1);
        reply.scrollIntoView({block: "end"});
      }
      if (choice.finish_reason) finish = choice.finish_reason;
      const notes = chunk.tinygrad_gpt && chunk.tinygrad_gpt.notes;
      if (notes && notes.length) { show(notice, notes.join("; ")); notice.hidden = false; }
    }
    history.push({role: "assistant", content: reply.textContent});
    const n = Number(reply.dataset.tokens);
    const seconds = (performance.now() - (first || started)) / 1000;
    show($("chat-status"), `${n} tokens` + (first ? `, first after ${((first - started) / 1000).toFixed(2)} s, ` +
         `${(n / Math.max(seconds, 1e-3)).toFixed(0)} tokens/s` : "") + (finish === "length" ? " (max tokens)" : ""));
    reply.dataset.finish = finish || "";
  } catch (err) {
    if (err.name === "AbortError") {
      history.push({role: "assistant", content: reply.textContent});
      show($("chat-status"), "stopped");
    } else {
      history.pop();  // not answered: the message may be sent again
      mine.remove();
      reply.className = "message error";
      reply.textContent = err.message;
      show($("chat-status"), "");
    }
  } finally {
    reply.classList.remove("streaming");
    if (running === controller) running = null;
  }
}

function setUpChat() {
  $("chat-view").hidden = false;
  $("nav-chat").classList.add("here");
  $("chat-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const text = $("input").value;
    if (!text.trim()) return;
    $("input").value = "";
    send(text);
  });
  $("input").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("chat-form").requestSubmit(); }
  });
  document.addEventListener("keydown", (e) => { if (e.key === "Escape" && running) running.abort(); });
  $("reset").addEventListener("click", () => {
    if (running) running.abort();
    history = [];
    $("messages").replaceChildren();
    show($("chat-status"), "a new conversation");
  });
  $("input").focus();
}

// ---- compare ------------------------------------------------------------------------------------
let pair = null;       // the comparison on screen
let next = null;       // a promise of the next one (the server's next prompt), or null
let judging = false;

function showCounts(counts) {
  const total = counts.a + counts.b + counts.tie + counts.skip;
  const el = $("count");
  el.dataset.total = String(total);
  show(el, `judged ${total}: A ${counts.a}, B ${counts.b}, tie ${counts.tie}, skip ${counts.skip}`);
}

function fetchPair(prompt) {
  return postJSON("/api/compare", {prompt: prompt || null});
}

function display(p) {
  pair = p;
  show($("compare-prompt"), p.prompt);
  show($("a"), p.a);
  show($("b"), p.b);
  document.querySelectorAll(".pair section").forEach((s) => s.classList.remove("chosen"));
  document.querySelector(".pair").dataset.id = p.id;
  show($("compare-status"), (p.notes && p.notes.length ? p.notes.join("; ") + ". " : "") +
       "1: A is better, 2: B is better, 3: tie, 4: skip");
  // the next pair is generated while this one is read
  next = info && info.prompts > 0 ? fetchPair(null) : null;
  if (next) next.catch(() => { next = null; });
}

async function loadNext(prompt) {
  pair = null;
  show($("compare-status"), "generating two completions...");
  show($("a"), ""); show($("b"), "");
  try {
    const p = prompt ? await fetchPair(prompt) : await (next || fetchPair(null));
    display(p);
  } catch (err) {
    show($("compare-status"), err.message);
  }
}

async function judge(choice) {
  if (!pair || judging) return;
  judging = true;
  const current = pair;
  try {
    const saved = await postJSON("/api/judgments", {id: current.id, choice});
    showCounts(saved.counts);
    if (choice === "a" || choice === "b") {
      document.querySelectorAll(".pair section")[choice === "a" ? 0 : 1].classList.add("chosen");
    }
    await loadNext(null);
  } catch (err) {
    show($("compare-status"), err.message);
  } finally {
    judging = false;
  }
}

function setUpCompare() {
  $("compare-view").hidden = false;
  $("nav-compare").classList.add("here");
  $("prompt-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const text = $("prompt").value;
    $("prompt").blur();
    loadNext(text.trim() ? text : null);
  });
  document.querySelectorAll(".choices button").forEach((b) =>
    b.addEventListener("click", () => judge(b.dataset.choice)));
  document.addEventListener("keydown", (e) => {
    if (e.target && (e.target.tagName === "INPUT" || e.target.tagName === "TEXTAREA")) return;
    const choice = {"1": "a", "2": "b", "3": "tie", "4": "skip"}[e.key];
    if (choice) { e.preventDefault(); judge(choice); }
  });
  if (info && info.prompts > 0) loadNext(null);
  else show($("compare-status"), "type a prompt to compare two completions");
}

loadInfo().then(() => (compareView ? setUpCompare() : setUpChat()),
                (err) => show(document.body, `cannot reach the server: ${err.message}`));
