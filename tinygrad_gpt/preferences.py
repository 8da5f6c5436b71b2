"""Preferences that people give: the compare page's judgments as the pairs the RLHF methods train on.

python -m tinygrad_gpt.serve appends one JSON line per judgment (serve.JudgmentLog): the prompt and
both completions as text and as token ids, the choice ("a", "b", "tie" or "skip"), the checkpoint,
the sampling settings and the time. Here a choice of A or B becomes a pair (chosen, rejected) of
that prompt; ties and skips carry no order and are counted, not used. The reward model and DPO of
tinygrad_gpt/rlhf read them through `--preferences FILE` (rlhf/run.py): the reward model trains on
them in place of pairs the scorer labels, DPO takes its pairs from them in place of pairs it samples
and scores; VADER still gives the gold score the run reports.

The RLHF methods here work on prompts of prompt_len tokens and responses of response_len tokens, no
padding, so only judgments of that shape are used (the others are counted): serve a base run with
prompts of that length and replies of that length, e.g.

    python -m tinygrad_gpt.preferences prompts out/shakespeare-cpu prompts.jsonl --n 600 --prompt-len 64
    python -m tinygrad_gpt.serve out/shakespeare-cpu --prompts prompts.jsonl --default-max-tokens 64 \\
        --default-temperature 1 --judgments judged.jsonl
    python examples/rlhf_sentiment.py --checkpoint out/shakespeare-cpu --reward model --preferences judged.jsonl

`prompts` writes windows of the run's validation split (the part RLHF draws its prompts from, not
the part it evaluates on), as text: a character run encodes each back to exactly prompt_len tokens.
A pair's `group` is its prompt, so splitting by group keeps every pair of a prompt on one side.

Dimension legend: N pairs, P prompt tokens, R response tokens.
Follows: Stiennon et al. 2020 (a person picks the better of two summaries; those pairs train the
reward model), Rafailov et al. 2023 (DPO on the same pairs). Deliberately does not: use ties
(Bradley-Terry has no tie), weigh labellers, or merge files (concatenate them: they are JSONL).
"""
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tinygrad_gpt.jsonl import read_json_lines
from tinygrad_gpt.rlhf.pairs import PreferencePairs

CHOICES = ("a", "b", "tie", "skip")


def read_judgments(path, source="--preferences"):
    """The judgments of a JSONL file, each checked: a choice of CHOICES and token id lists
    prompt_ids, a_ids and b_ids. A last line a crash cut short (no newline, not JSON) is left out;
    any other bad line is a ValueError naming the file and the line."""
    path = Path(path)
    records = []
    for lineno, record in read_json_lines(path, where=lambda lineno: f"{source} {path}:{lineno}",
                                          cut_last_line_ok=True):
        if not isinstance(record, dict) or record.get("choice") not in CHOICES:
            raise ValueError(f"{source} {path}:{lineno}: expected a judgment with a choice of "
                             f"{', '.join(CHOICES)}, got {str(record)[:80]}")
        for key in ("prompt_ids", "a_ids", "b_ids"):
            ids = record.get(key)
            if not (isinstance(ids, list) and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0
                                                  for i in ids)):
                raise ValueError(f"{source} {path}:{lineno}: {key} must be a list of token ids (ints >= 0)")
        records.append(record)
    return records


@dataclass
class Judged:
    """The usable judgments: prompts (N, P), chosen and rejected responses (N, R), group (N,) (the
    prompt's index), and counts of what the file held."""
    prompts: np.ndarray
    chosen: np.ndarray
    rejected: np.ndarray
    group: np.ndarray
    counts: dict

    def __len__(self):
        return len(self.chosen)

    def response_pairs(self):
        """rlhf.PreferencePairs of the responses (the reward model's data); margin 1 (a person's choice)."""
        return PreferencePairs(self.chosen, self.rejected, np.ones(len(self)), self.group)

    def sequence_pairs(self):
        """rlhf.PreferencePairs of prompt + response (N, P + R) (DPO's data)."""
        return PreferencePairs(np.concatenate([self.prompts, self.chosen], axis=1),
                               np.concatenate([self.prompts, self.rejected], axis=1), np.ones(len(self)), self.group)

    def summary(self):
        c = self.counts
        return (f"{c['judgments']} judgments (A {c['a']}, B {c['b']}, tie {c['tie']}, skip {c['skip']}): "
                f"{len(self)} pairs of {len(np.unique(self.group))} prompts used"
                + (f", {c['other_shape']} of another prompt or reply length left out" if c["other_shape"] else ""))


def judged_pairs(records, prompt_len, response_len, vocab_size, source="--preferences"):
    """Judged from judgment records: the A / B choices whose prompt has prompt_len tokens and whose
    replies have response_len each. ValueError (naming the shape wanted) when none is left, or when
    an id is outside the model's vocabulary (the judgments were of another model)."""
    counts = dict.fromkeys(CHOICES, 0)
    counts.update(judgments=len(records), other_shape=0)
    prompts, chosen, rejected, groups, seen = [], [], [], [], {}
    for k, r in enumerate(records):
        counts[r["choice"]] += 1
        if r["choice"] not in ("a", "b"):
            continue
        if len(r["prompt_ids"]) != prompt_len or len(r["a_ids"]) != response_len or len(r["b_ids"]) != response_len:
            counts["other_shape"] += 1
            continue
        top = max(r["prompt_ids"] + r["a_ids"] + r["b_ids"])
        if top >= vocab_size:
            raise ValueError(f"{source}: judgment {k + 1} holds token id {top}, outside the model's {vocab_size}: "
                             f"it judged another model's text")
        win, lose = (r["a_ids"], r["b_ids"]) if r["choice"] == "a" else (r["b_ids"], r["a_ids"])
        prompts.append(r["prompt_ids"])
        chosen.append(win)
        rejected.append(lose)
        groups.append(seen.setdefault(tuple(r["prompt_ids"]), len(seen)))
    if not chosen:
        raise ValueError(f"{source}: none of the {len(records)} judgments is a choice of A or B between replies of "
                         f"{response_len} tokens to a prompt of {prompt_len} ({counts['tie']} ties, {counts['skip']} "
                         f"skips, {counts['other_shape']} of another length): serve the run with prompts of "
                         f"{prompt_len} tokens and --default-max-tokens {response_len} (module docstring)")
    counts["used"] = len(chosen)
    as_array = (lambda rows: np.asarray(rows, dtype=np.int64))
    return Judged(as_array(prompts), as_array(chosen), as_array(rejected), np.asarray(groups, dtype=np.int64), counts)


def load_preferences(path, prompt_len, response_len, vocab_size, source="--preferences"):
    """judged_pairs of the file at `path`."""
    return judged_pairs(read_judgments(path, source), prompt_len, response_len, vocab_size, source)


def write_prompts(path, tokens, n, prompt_len, decode, seed=0):
    """Write n prompts, windows of prompt_len tokens of `tokens` at seeded distinct starts, as
    {"prompt": text} JSONL (the compare page's --prompts); returns the windows (n, P)."""
    from tinygrad_gpt.checkpoint import write_atomic
    tokens = np.asarray(tokens)
    if len(tokens) - prompt_len < n:
        raise ValueError(f"--n {n}: the split has room for {max(len(tokens) - prompt_len, 0)} windows of "
                         f"{prompt_len} tokens")
    starts = np.random.default_rng(seed).choice(len(tokens) - prompt_len, size=n, replace=False)  # (n,)
    windows = tokens[starts[:, None] + np.arange(prompt_len)[None, :]]                          # (n, P)
    text = "".join(json.dumps({"prompt": decode(w.tolist())}, ensure_ascii=False) + "\n" for w in windows)
    write_atomic(Path(path), lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return windows


def label_page(page, score, n, tie_margin=0.05, timeout_ms=60_000):
    """A scripted labeller on the compare page (a Playwright page at /compare): n times, wait for a
    pair, score A and B with `score` (texts -> scores), press 1 when A scores higher by more than
    tie_margin, 2 for B, 3 (tie) otherwise, and wait for the running count to take it. Returns the
    [(prompt, a, b, key)] it judged. As a person would, it reads the page and uses the keyboard."""
    judged = []
    start = int(page.get_attribute("#count", "data-total") or 0)
    for k in range(n):
        page.wait_for_function("() => document.getElementById('a').textContent.length > 0 && "
                               "document.getElementById('compare-status').textContent.includes('1: A is better')",
                               timeout=timeout_ms)
        prompt, a, b = (page.text_content(sel) for sel in ("#compare-prompt", "#a", "#b"))
        sa, sb = score([a, b])
        key = "1" if sa > sb + tie_margin else "2" if sb > sa + tie_margin else "3"
        page.keyboard.press(key)
        page.wait_for_selector(f"#count[data-total='{start + k + 1}']", timeout=timeout_ms)
        judged.append((prompt, a, b, key))
    return judged


def main(argv=None):
    import argparse

    from tinygrad_gpt import cli
    p = argparse.ArgumentParser(prog="python -m tinygrad_gpt.preferences", description=__doc__.split("\n\n")[0],
                                formatter_class=cli.HelpFormatter, epilog=__doc__.split("\n\n", 1)[1].split(
                                    "\nDimension legend")[0])
    sub = p.add_subparsers(dest="command", required=True)
    w = sub.add_parser("prompts", help="write compare prompts from a run's validation split")
    w.add_argument("run", help="a run directory (its tokenizer and validation split)")
    w.add_argument("out", help="the JSONL file to write (serve's --prompts)")
    w.add_argument("--n", type=cli.bounded(int, ge=1), default=600, help="how many prompts")
    w.add_argument("--prompt-len", type=cli.bounded(int, ge=1), default=64, help="tokens per prompt (the RLHF "
                                                                                  "run's --prompt-len)")
    w.add_argument("--data", default=None, help="tinyshakespeare.txt (default: $TINYSHAKESPEARE, then the cache)")
    w.add_argument("--seed", type=cli.bounded(int, ge=0), default=0, help="which windows")
    s = sub.add_parser("summary", help="count the judgments of a file and what an RLHF run of a shape would use")
    s.add_argument("file")
    s.add_argument("--prompt-len", type=cli.bounded(int, ge=1), default=64)
    s.add_argument("--response-len", type=cli.bounded(int, ge=1), default=64)
    args = p.parse_args(argv)
    if args.command == "prompts":
        from tinygrad_gpt.rlhf.run import load_setup
        _, tokenizer, prompt_tokens, _ = load_setup(args.run, args.data)
        write_prompts(args.out, prompt_tokens, args.n, args.prompt_len, tokenizer.decode, args.seed)
        print(f"wrote {args.n} prompts of {args.prompt_len} tokens to {args.out}")
        return 0
    judged = load_preferences(args.file, args.prompt_len, args.response_len, vocab_size=2 ** 62, source=args.file)
    print(judged.summary())
    return 0


if __name__ == "__main__":
    import sys

    from tinygrad_gpt import cli as _cli
    sys.exit(_cli.run_main(main))
