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


# ---- the loop: a scripted labeller's judgments train the policy -------------------------------------

def test_scripted_labels_train_a_reward_model_and_dpo_that_raise_the_gold_score(browser, tmp_path):
    """The whole loop, small: a 1-layer model that writes words of a 22-word corpus (some of them
    VADER-positive, some negative) is served; a scripted labeller on the compare page presses 1, 2
    or 3 by the gold VADER score of A and B (60 comparisons); the judgments train a reward model
    (PPO then optimises it) and, apart, DPO. Each raises the mean gold score of fresh completions to
    64 held-out prompts (2 samples each, the same seeds before and after) by more than 0.05, about 2
    standard errors of one evaluation."""
    import numpy as np

    from tinygrad_gpt import data, preferences
    from tinygrad_gpt.model import GPT, GPTConfig
    from tinygrad_gpt.rlhf import DPOConfig, PPOConfig, RewardModelConfig, VaderScorer, frozen_copy
    from tinygrad_gpt.rlhf.evaluate import evaluate
    from tinygrad_gpt.rlhf.run import build_reward_model, make_trainer
    from tinygrad_gpt.tokenizers import CharTokenizer
    from tinygrad_gpt.train import Trainer, TrainConfig
    pytest.importorskip("vaderSentiment")

    rng = np.random.default_rng(0)
    words = ["good", "love", "sweet", "happy", "fair", "kind", "bad", "hate", "foul", "sad", "vile", "cruel"] + \
        ["the", "king", "my", "lord", "is", "and", "a", "man", "of", "day"] * 2
    text = " ".join(rng.choice(words, 30000)) + "\n"
    tok = CharTokenizer.from_text(text)
    train_tokens, val_tokens = data.split_train_val(tok.encode_array(text), 0.1)
    base = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=32), seed=0)
    config = TrainConfig(batch_size=16, max_iters=300, lr=3e-3, min_lr=3e-4, warmup_iters=10, eval_batches=2,
                         sample_tokens=20, log_every=100, out_dir=str(tmp_path / "base"))
    assert Trainer(base, tok, train_tokens, val_tokens, config, log=lambda *a, **k: None, progress=False).train() \
        == "done"

    P, R = 8, 16
    preferences.write_prompts(tmp_path / "prompts.jsonl", val_tokens, 200, P, tok.decode, seed=0)
    server = serve.Server(ChatModel.load(tmp_path / "base"), serve.Limits(default_max_tokens=R, default_temperature=1),
                          judgments=tmp_path / "judged.jsonl", prompts=serve.read_prompts(tmp_path / "prompts.jsonl"),
                          seed=0)
    vader = VaderScorer()
    with serve.background(serve.create_app(server)) as url:
        page = browser.new_page()
        page.goto(url + "/compare")
        labels = preferences.label_page(page, vader, 60)
        page.close()
    assert len(labels) == 60 and len((tmp_path / "judged.jsonl").read_text().splitlines()) == 60

    judged = preferences.load_preferences(tmp_path / "judged.jsonl", P, R, tok.vocab_size)
    assert judged.counts["a"] + judged.counts["b"] == len(judged) > 20
    reference = frozen_copy(base)
    held = np.stack([val_tokens[s:s + P] for s in np.random.default_rng(5).choice(len(val_tokens) - P, 64,
                                                                                   replace=False)])
    gold = (lambda gpt: evaluate(gpt, reference, held, R, 1.0, vader, tok.decode, samples=2).score_mean)
    before = gold(base)

    dpo = make_trainer("dpo", DPOConfig(batch_size=16, prompt_len=P, response_len=R, group_size=2, beta=0.1,
                                        lr=1e-4, minibatch_size=8), frozen_copy(base).train(), reference, tok,
                       train_tokens, vader, preferences=judged)
    for _ in range(30):
        dpo.step()
    rm, info = build_reward_model(base, tok, train_tokens, dpo.cfg, vader, RewardModelConfig(model="words", steps=300),
                                  log=lambda *a: None, preferences=judged)
    ppo = make_trainer("ppo", PPOConfig(batch_size=32, prompt_len=P, response_len=R, lr=1e-3, minibatch_size=16,
                                        ppo_epochs=2), frozen_copy(base).train(), reference, tok, train_tokens,
                       vader, reward_model=rm)
    for _ in range(20):
        ppo.step()
    after_dpo, after_ppo = gold(dpo.policy.gpt), gold(ppo.policy.gpt)
    print(f"gold {before:+.3f}; after DPO {after_dpo:+.3f}; after PPO on the reward model {after_ppo:+.3f} "
          f"(held-out accuracy {info['heldout_accuracy']:.2f})")
    assert info["heldout_accuracy"] > 0.5
    assert after_dpo > before + 0.05 and after_ppo > before + 0.05
