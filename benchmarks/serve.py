"""People in the loop, measured: the chat page's speed, how fast the compare view can be judged, and
what 500 judgments do to a policy. Every page is driven in headless Chromium (Playwright, the
system's /usr/bin/chromium) against python -m tinygrad_gpt.serve's app on 127.0.0.1.

    OPENBLAS_NUM_THREADS=1 python benchmarks/serve.py speed out/sft --rounds 3
    OPENBLAS_NUM_THREADS=1 python benchmarks/serve.py judgments out/shakespeare-cpu --labels 100
    OPENBLAS_NUM_THREADS=1 python benchmarks/serve.py loop out/shakespeare-cpu --labels 500 --steps 150
    OPENBLAS_NUM_THREADS=1 python benchmarks/serve.py screenshots out/sft --out docs/images

speed: the same question typed into 1 and then 4 chat pages at once (4 clients), --rounds times; the
page's own figures for each reply (its status line: tokens, time to the first token since the
request left, tokens/s while streaming), medians over replies, and the server's tokens/s (its tokens
over the time from a round's first generation to its last); against the terminal chat's generation of the same
question (ChatModel.reply writing each piece to a stream, as python -m tinygrad_gpt.chat does).
judgments: the scripted labeller (preferences.label_page: reads A and B, scores them by VADER, presses
1, 2 or 3) on the compare page of a base run, prompts and replies of the RLHF length (64 + 64);
judgments per minute over --labels after 3 warm-up ones. The page generates the next pair while the
current one is read, so a person's rate is bounded by reading; this one reads instantly.
loop: --labels scripted judgments, then a reward model trained on them (its held-out pairwise
accuracy) and PPO against it for --steps, and DPO on the judged pairs for --steps; the gold VADER
score of each policy on 64 held-out prompts x 2 samples (rlhf.evaluate) before and after.
screenshots: the chat page after two questions and the compare view with one pair, as PNGs.

Does not: time the model's first call (a warm-up request runs first), or set thread counts (set
OPENBLAS_NUM_THREADS in the environment; on a shared 2-core machine, 1).
"""
import argparse
import io
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path


from tinygrad_gpt import cli, preferences, serve
from tinygrad_gpt.rlhf.reward_model import MODELS
from tinygrad_gpt.chat import ChatModel, Sampling

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
QUESTION = "What news from the court, my lord?"
STATUS = re.compile(r"(\d+) tokens, first after ([0-9.]+) s, (\d+) tokens/s")


def browser(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)


def ask_pages(pages, question):
    """Type the question into every page at once; wait for every reply; [(tokens, ttft_s, tokens_per_s)]."""
    for page in pages:
        page.fill("#input", question)
    t0 = time.perf_counter()
    for page in pages:
        page.press("#input", "Enter")
    figures = []
    for page in pages:
        page.wait_for_selector(".message.assistant:last-child[data-finish]", timeout=600_000)
        m = STATUS.search(page.text_content("#chat-status"))
        if m:
            figures.append((int(m.group(1)), float(m.group(2)), float(m.group(3))))
    return figures, time.perf_counter() - t0


def speed(args):
    from playwright.sync_api import sync_playwright
    chat = ChatModel.load(args.run)
    sampling = Sampling(max_tokens=args.max_tokens, temperature=0.8)
    messages = [{"role": "user", "content": QUESTION}]
    # the terminal: the same generation loop, each piece written to a stream as it comes
    term = []
    for r in range(args.rounds * 2 + 1):
        first, sink = [], io.StringIO()
        t0 = time.perf_counter()
        reply = chat.reply(messages, Sampling(**{**sampling.as_dict(), "seed": r}),
                           on_text=lambda piece: (first or first.append(time.perf_counter()), sink.write(piece)))
        t1 = time.perf_counter()
        if r and first and len(reply.ids) > 1:  # round 0 warms up
            term.append((len(reply.ids), first[0] - t0, (len(reply.ids) - 1) / max(t1 - first[0], 1e-9)))
    report = {"terminal": summarize(term, None)}
    server = serve.Server(chat, serve.Limits(max_tokens=max(args.max_tokens, 512), default_max_tokens=args.max_tokens))
    with serve.background(serve.create_app(server)) as url, sync_playwright() as p:
        b = browser(p)
        for clients in (1, 4):
            pages = [b.new_page() for _ in range(clients)]
            for page in pages:
                page.goto(url + "/")
                page.wait_for_selector("#model:not(:empty)")
            ask_pages(pages[:1], QUESTION)  # warm-up
            figures, busy, tokens = [], 0.0, 0
            for _ in range(args.rounds):
                for page in pages:
                    page.click("#reset")
                spans, before = len(server.generator.spans), server.generator.tokens
                got, _ = ask_pages(pages, QUESTION)
                figures += got
                # the server's side: its tokens over the time from the round's first generation to its last
                done = server.generator.spans[spans:]
                busy += max(end for _, end in done) - min(start for start, _ in done)
                tokens += server.generator.tokens - before
            report[f"page_{clients}"] = summarize(figures, tokens / busy)
            for page in pages:
                page.close()
        b.close()
    print(json.dumps(report, indent=2))
    return report


def summarize(figures, aggregate):
    out = {"replies": len(figures), "tokens_median": statistics.median(f[0] for f in figures),
           "ttft_s_median": round(statistics.median(f[1] for f in figures), 3),
           "ttft_s_max": round(max(f[1] for f in figures), 3),
           "tokens_per_s_median": round(statistics.median(f[2] for f in figures), 1)}
    if aggregate is not None:
        out["server_tokens_per_s"] = round(aggregate, 1)
    return out


def label(args, run, n, prompts_path, judgments_path, vader):
    """n scripted judgments (3 warm-up ones first, not timed) on the compare page; returns judgments/minute."""
    from playwright.sync_api import sync_playwright
    chat = ChatModel.load(run)
    server = serve.Server(chat, serve.Limits(default_max_tokens=args.response_len, default_temperature=1.0),
                          judgments=judgments_path, prompts=serve.read_prompts(prompts_path), seed=args.seed)
    with serve.background(serve.create_app(server)) as url, sync_playwright() as p:
        b = browser(p)
        page = b.new_page()
        page.goto(url + "/compare")
        preferences.label_page(page, vader, 3)
        t0 = time.perf_counter()
        preferences.label_page(page, vader, n)
        wall = time.perf_counter() - t0
        b.close()
    return n / wall * 60, wall


def prompts_for(args, workdir):
    from tinygrad_gpt.rlhf.run import load_setup
    gpt, tokenizer, prompt_tokens, heldout_tokens = load_setup(args.run, args.data)
    path = Path(workdir) / "prompts.jsonl"
    preferences.write_prompts(path, prompt_tokens, args.labels + 20, args.prompt_len, tokenizer.decode, args.seed)
    return gpt, tokenizer, prompt_tokens, heldout_tokens, path


def judgments(args):
    from tinygrad_gpt.rlhf import VaderScorer
    with tempfile.TemporaryDirectory() as work:
        _, _, _, _, prompts_path = prompts_for(args, work)
        rate, wall = label(args, args.run, args.labels, prompts_path, Path(work) / "judged.jsonl", VaderScorer())
    report = {"labels": args.labels, "seconds": round(wall, 1), "judgments_per_minute": round(rate, 1)}
    print(json.dumps(report))
    return report


def loop(args):
    from tinygrad_gpt.rlhf import DPOConfig, PPOConfig, RewardModelConfig, VaderScorer, frozen_copy
    from tinygrad_gpt.rlhf.evaluate import evaluate
    from tinygrad_gpt.rlhf.run import build_reward_model, fixed_prompts, make_trainer
    vader = VaderScorer()
    work = Path(args.work or tempfile.mkdtemp(prefix="serve-loop-"))
    work.mkdir(parents=True, exist_ok=True)
    gpt, tokenizer, prompt_tokens, heldout_tokens, prompts_path = prompts_for(args, work)
    judged_path = work / "judged.jsonl"
    if judged_path.exists() and args.reuse:
        rate = None
    else:
        judged_path.unlink(missing_ok=True)
        rate, _ = label(args, args.run, args.labels, prompts_path, judged_path, vader)
        # the 3 warm-up judgments are in the file too: keep the first --labels of the timed ones
        lines = judged_path.read_text().splitlines()[3:3 + args.labels]
        judged_path.write_text("".join(line + "\n" for line in lines))
    judged = preferences.load_preferences(judged_path, args.prompt_len, args.response_len, gpt.config.vocab_size)
    print(judged.summary(), flush=True)
    reference = frozen_copy(gpt)
    held = fixed_prompts(heldout_tokens, 64, args.prompt_len, seed=1234)

    def gold(model):
        return evaluate(model, reference, held, args.response_len, 1.0, vader, tokenizer.decode, samples=2).summary()
    report = {"labels": args.labels, "judgments_per_minute": None if rate is None else round(rate, 1),
              "judged": judged.counts, "before": gold(gpt)}
    print("before", report["before"], flush=True)
    shape = dict(prompt_len=args.prompt_len, response_len=args.response_len, seed=args.seed)
    rm, info = build_reward_model(gpt, tokenizer, prompt_tokens, PPOConfig(**shape), vader,
                                  RewardModelConfig(model=args.rm_model, seed=args.seed), preferences=judged)
    report["reward_model"] = {k: info[k] for k in ("train_pairs", "heldout_pairs", "heldout_accuracy",
                                                   "train_accuracy")}
    ppo = make_trainer("ppo", PPOConfig(steps=args.steps, **shape), frozen_copy(gpt).train(), reference, tokenizer,
                       prompt_tokens, vader, reward_model=rm)
    t0 = time.perf_counter()
    for step in range(args.steps):
        m = ppo.step()
        if (step + 1) % 10 == 0:
            print(f"PPO step {step + 1}: rm {m['reward_raw']:+.3f} gold {m['score']:+.3f} kl {m['kl']:.3f}", flush=True)
    report["ppo"] = {"steps": args.steps, "seconds": round(time.perf_counter() - t0), "after": gold(ppo.policy.gpt)}
    print("after PPO", report["ppo"], flush=True)
    dpo = make_trainer("dpo", DPOConfig(steps=args.steps, **shape), frozen_copy(gpt).train(), reference, tokenizer,
                       prompt_tokens, vader, preferences=judged)
    t0 = time.perf_counter()
    for step in range(args.steps):
        m = dpo.step()
        if (step + 1) % 10 == 0:
            print(f"DPO step {step + 1}: gold {m['score']:+.3f} kl {m['kl']:.3f} margin {m['reward_margin']:+.3f}",
                  flush=True)
    report["dpo"] = {"steps": args.steps, "seconds": round(time.perf_counter() - t0), "after": gold(dpo.policy.gpt)}
    print("after DPO", report["dpo"], flush=True)
    print(json.dumps(report, indent=2))
    (work / "report.json").write_text(json.dumps(report, indent=2))
    return report


def screenshots(args):
    """docs/images/chat.png (two questions answered) and compare.png (a pair, one judged before)."""
    from playwright.sync_api import sync_playwright
    chat = ChatModel.load(args.run)
    prompts = ["Good morrow, sir. What news?", "Wilt thou be gone? It is not yet near day.",
               "O, speak again, bright angel!"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        server = serve.Server(chat, serve.Limits(default_max_tokens=120), judgments=Path(work) / "j.jsonl",
                              prompts=prompts, seed=args.seed)
        with serve.background(serve.create_app(server)) as url, sync_playwright() as p:
            b = browser(p)
            page = b.new_page(viewport={"width": 960, "height": 620})
            page.goto(url + "/")
            page.wait_for_selector("#model:not(:empty)")
            for question in ("Good morrow, my lord. What news from the court?", "And what of the king?"):
                page.fill("#input", question)
                page.press("#input", "Enter")
                page.wait_for_selector(".message.assistant:last-child[data-finish]", timeout=120_000)
            page.screenshot(path=str(out / "chat.png"))
            page.goto(url + "/compare")
            page.wait_for_function("() => document.getElementById('a').textContent.length > 0", timeout=120_000)
            page.keyboard.press("1")
            page.wait_for_selector("#count[data-total='1']")
            page.wait_for_function("() => document.getElementById('a').textContent.length > 0", timeout=120_000)
            page.screenshot(path=str(out / "compare.png"))
            b.close()
    for name in ("chat.png", "compare.png"):
        print(f"{out / name}: {(out / name).stat().st_size / 1024:.0f} KB")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=cli.HelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("what", choices=("speed", "judgments", "loop", "screenshots"))
    p.add_argument("run", help="the run to serve (speed, screenshots: chat-tuned; judgments, loop: a base run)")
    p.add_argument("--rounds", type=cli.bounded(int, ge=1), default=3, help="speed: questions per client")
    p.add_argument("--max-tokens", type=cli.bounded(int, ge=1), default=200, help="speed: the longest reply")
    p.add_argument("--labels", type=cli.bounded(int, ge=1), default=100, help="scripted judgments")
    p.add_argument("--steps", type=cli.bounded(int, ge=1), default=150, help="loop: PPO and DPO steps")
    p.add_argument("--prompt-len", type=cli.bounded(int, ge=1), default=64)
    p.add_argument("--response-len", type=cli.bounded(int, ge=1), default=64)
    p.add_argument("--data", default=None, help="tinyshakespeare.txt (default: $TINYSHAKESPEARE, then the cache)")
    p.add_argument("--work", default=None, help="loop: keep the prompts, judgments and report here")
    p.add_argument("--reuse", action="store_true", help="loop: use the judgments already in --work")
    p.add_argument("--out", default="docs/images", help="screenshots: where the PNGs go")
    p.add_argument("--seed", type=cli.bounded(int, ge=0), default=0)
    p.add_argument("--rm-model", choices=MODELS, default="words",
                   help="loop: the reward model trained on the judgments (words: the figure in RESULTS.md)")
    args = p.parse_args()
    {"speed": speed, "judgments": judgments, "loop": loop, "screenshots": screenshots}[args.what](args)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
