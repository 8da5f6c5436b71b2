"""The page in a real browser: headless Chromium (the system's package, /usr/bin/chromium, as .ci/run
installs it) driven by Playwright, against python -m tinygrad_gpt.serve's app on 127.0.0.1.

Chat: type a message, press Enter, see the reply arrive token by token (the reply's text changes
once per token: Y, e, s, .) and end. Compare: label five comparisons with keys 1-4 and find five
lines in the judgments file, with the choices pressed. Without Chromium or Playwright the tests
skip, saying which is missing; TINYGRAD_GPT_REQUIRE_BROWSER=1 (set by .ci/run) makes that a failure.
"""
import json
import os
import shutil

import pytest

pytest.importorskip("fastapi", reason="the serve extra (pip install -e .[serve]) is not installed")

from tinygrad_gpt import serve  # noqa: E402
from tinygrad_gpt.chat import ChatModel  # noqa: E402

import chat_runs  # noqa: E402

REQUIRE = os.environ.get("TINYGRAD_GPT_REQUIRE_BROWSER", "0") == "1"
CHROMIUM = os.environ.get("TINYGRAD_GPT_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
# flags known to work in containers and on CI machines without a display or a network
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage"]


def _need(ok, what):
    if not ok:
        if REQUIRE:
            pytest.fail(f"{what} (TINYGRAD_GPT_REQUIRE_BROWSER=1)")
        pytest.skip(what)


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    _need(sync_playwright is not None, "needs Playwright: pip install playwright (no browser download: the system's "
                                       "Chromium is used)")
    _need(os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK), f"needs Chromium at {CHROMIUM} "
                                                                      f"(apt-get install chromium)")
    # Playwright gives each launch a fresh, temporary profile (--user-data-dir) of its own
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The yes-model served with three compare prompts; yields (url, server)."""
    root = tmp_path_factory.mktemp("site")
    chat_dir = chat_runs.tiny_chat_run(root / "run")
    server = serve.Server(ChatModel.load(chat_dir), serve.Limits(), judgments=root / "judgments.jsonl",
                          prompts=["Hark!", "Who goes there?", "What news, my lord?"],
                          identity=serve.checkpoint_identity(chat_dir), seed=0)
    with serve.background(serve.create_app(server)) as url:
        yield url, server


def test_chat_page_streams_the_reply_token_by_token(browser, site):
    url, _ = site
    page = browser.new_page()
    page.goto(url + "/")
    page.wait_for_selector("#model:text('run')")
    page.fill("#temperature", "0")
    # count every change of the reply's text as it happens, from the browser's side
    page.evaluate("""() => { window.changes = [];
        new MutationObserver(() => { const r = document.querySelector('.message.assistant');
            if (r && r.textContent) window.changes.push(r.textContent); })
        .observe(document.getElementById('messages'), {subtree: true, childList: true, characterData: true}); }""")
    page.fill("#input", "Who goes there?")
    page.press("#input", "Enter")
    page.wait_for_selector(".message.assistant[data-finish='stop']", timeout=20_000)
    assert page.text_content(".message.user") == "Who goes there?"
    assert page.text_content(".message.assistant") == "Yes."
    assert page.get_attribute(".message.assistant", "data-tokens") == "4"
    assert page.evaluate("window.changes") == ["Y", "Ye", "Yes", "Yes."]       # each token as it arrived
    assert "4 tokens" in page.text_content("#chat-status")
    page.fill("#input", "Speak 2 me")                                    # a character the model lacks
    page.press("#input", "Enter")
    page.wait_for_selector(".message.error")
    assert "lack '2'" in page.text_content(".message.error")
    page.close()


def test_five_comparisons_labelled_with_the_keyboard_are_five_lines(browser, site):
    url, server = site
    path = server.judgments.path
    before = path.read_text().splitlines() if path.exists() else []
    page = browser.new_page()
    page.goto(url + "/compare")
    keys = ["1", "2", "3", "4", "1"]
    for k, key in enumerate(keys):
        page.wait_for_function("() => document.getElementById('a').textContent.length > 0 && "
                               "document.getElementById('compare-status').textContent.startsWith('1:')",
                               timeout=20_000)
        shown = page.text_content("#compare-prompt")
        page.keyboard.press(key)
        page.wait_for_selector(f"#count[data-total='{len(before) + k + 1}']", timeout=20_000)
        assert shown in ("Hark!", "Who goes there?", "What news, my lord?")
    assert page.text_content("#count") == f"judged {len(before) + 5}: A 2, B 1, tie 1, skip 1"
    lines = path.read_text().splitlines()[len(before):]
    records = [json.loads(line) for line in lines]
    assert [r["choice"] for r in records] == ["a", "b", "tie", "skip", "a"]
    assert all(r["a"] == "Yes." and r["prompt"] for r in records)
    page.close()
