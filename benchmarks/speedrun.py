"""The CPU speedrun: our time to the loss PyTorch eager reaches in a fixed budget, over seeds.

    python benchmarks/speedrun.py                          # 3 seeds x (300 s baseline + ours to its loss)
    python benchmarks/speedrun.py --ablate                 # also the recipe minus one idea at a time
    python benchmarks/speedrun.py --quick --seeds 1        # seconds: the same pipeline at the tiny shape

For each seed, in turn (interleaved, so that machine noise hits every variant alike):
  baseline  PyTorch eager, nanoGPT's documented CPU recipe: GPT-2 architecture, 4 layers, 4 heads,
            128 wide, context 64, batch 12 (random windows), AdamW lr 1e-3, betas (0.9, 0.99),
            weight decay 0.1 on 2-D weights, warm-up 100 steps, then cosine to 1e-4 over the rest
            of the budget (by wall time: the step count is not known in advance), clip 1.0,
            trained for --budget seconds of wall time on --threads threads. Its loss over the whole
            validation split at the end (every block_size window once, train.split_loss's
            definition) is the target L of this seed; its tokens are its tokens to L.
  ours      examples/shakespeare.py --preset speedrun --target-val-loss L --seed SEED, a subprocess
            on the same threads; its metrics.jsonl gives the training seconds (evaluation excluded)
            and tokens at the first evaluation whose whole-split loss is <= L (exit 4: not reached
            within the preset's --max-iters).
  --ablate  ours again with one idea of the recipe taken out by a flag (--optimizer adamw,
            --schedule wsd, --position learned, ...); an idea the recipe does not use, or a flag
            this build does not have, is listed as skipped.
Prints one line per run as it ends, then medians over seeds: our time to L / budget (the
target is <= 0.40), tokens to L for both, the loss reached, and the ablation table as Markdown;
every row also goes to --out/results.json. Both sides tokenise the text the same way (characters,
the first 90% for training): the parent encodes it once and hands the worker raw int64 files.

--quick runs the same pipeline at the tiny preset's model shape and batch (both sides), with a
3 s budget and ours capped at 300 steps, so a test runs it in seconds.

Does not: make PyTorch a dependency (the baseline runs in a worker subprocess that imports torch;
--torch-python picks an interpreter that has it), pin processes to cores, or count our evaluation
time (it is reported apart, in the runs' metrics.jsonl).
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "examples" / "shakespeare.py"
# nanoGPT's CPU recipe (README of nanoGPT, "I only have a macbook"), the baseline of this benchmark
BASELINE = dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12, lr=1e-3, min_lr=1e-4,
                betas=(0.9, 0.99), weight_decay=0.1, warmup=100, clip=1.0)
QUICK_BUDGET_S = 3.0
QUICK_OURS = dict(max_iters=300, eval_every=20, eval_batches=2, sample_tokens=10)
# (the idea taken out, the setting that takes it out, its value without the idea)
ABLATIONS = [
    ("muon", "optimizer", "adamw"),
    ("cosine", "schedule", "wsd"),
    ("rotary", "position", "learned"),
    ("rmsnorm", "norm", "layernorm"),
    ("qk-norm", "qk_norm", False),
    ("relu2", "activation", "gelu"),
    ("softcap", "logit_softcap", 0.0),
    ("zero-init", "zero_init", False),
]


# ---- the baseline: PyTorch eager, in a worker process -------------------------------------------------
def read_tokens(path):
    """A raw little-endian int64 file as a 1-D torch tensor (what write_tokens wrote)."""
    import torch
    return torch.frombuffer(bytearray(Path(path).read_bytes()), dtype=torch.int64)


def whole_split_loss_torch(model, tokens, block_size, batch=64):
    """The mean loss over every non-overlapping block_size window of `tokens` (data.split_windows)."""
    import torch
    n = (len(tokens) - 1) // block_size
    x_all = tokens[:n * block_size].view(n, block_size)                # (n, T)
    y_all = tokens[1:n * block_size + 1].view(n, block_size)           # (n, T)
    total = 0.0
    model.eval()
    with torch.no_grad():
        for i in range(0, n, batch):
            total += model(x_all[i:i + batch], y_all[i:i + batch]).item() * len(x_all[i:i + batch])
    return total / n


def worker_baseline(job):
    """Train nanoGPT's CPU recipe for job["budget"] seconds of wall time; returns its result."""
    import math

    import torch

    from torch_gpt import make_torch_adamw, make_torch_gpt

    cfg = job["baseline"]
    torch.set_num_threads(job["threads"])
    torch.manual_seed(job["seed"])
    train, val = read_tokens(job["train"]), read_tokens(job["val"])
    B, T = cfg["batch_size"], cfg["block_size"]
    model = make_torch_gpt(cfg["n_layer"], cfg["n_head"], cfg["n_embd"], T, job["vocab_size"])
    opt = make_torch_adamw(model, lr=cfg["lr"], betas=tuple(cfg["betas"]), weight_decay=cfg["weight_decay"])
    g = torch.Generator().manual_seed(job["seed"])
    offsets = torch.arange(T)
    budget, warmup = job["budget"], cfg["warmup"]
    step, warm_end, loss = 0, None, None
    t0 = time.perf_counter()
    while True:
        elapsed = time.perf_counter() - t0
        if elapsed >= budget:
            break
        if step < warmup:
            lr = cfg["lr"] * (step + 1) / warmup
        else:  # cosine over the rest of the budget, by wall time
            warm_end = elapsed if warm_end is None else warm_end
            progress = min(1.0, (elapsed - warm_end) / max(budget - warm_end, 1e-9))
            lr = cfg["min_lr"] + 0.5 * (1 + math.cos(math.pi * progress)) * (cfg["lr"] - cfg["min_lr"])
        for group in opt.param_groups:
            group["lr"] = lr
        starts = torch.randint(0, len(train) - T, (B,), generator=g)
        idx = starts[:, None] + offsets                                # (B, T)
        loss = model(train[idx], train[idx + 1])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["clip"])
        opt.step()
        step += 1
    train_s = time.perf_counter() - t0
    return {"loss": whole_split_loss_torch(model, val, T), "steps": step, "tokens": step * B * T,
            "train_s": train_s, "last_train_loss": None if loss is None else loss.item()}


# ---- the parent ---------------------------------------------------------------------------------------
def thread_env(threads):
    """The environment of a run: every BLAS / OpenMP / Numba pool at `threads`, this checkout first."""
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        env[var] = str(threads)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def find_torch_python(explicit):
    candidates = [explicit] if explicit else [sys.executable, str(REPO.parent / "torchvenv" / "bin" / "python")]
    for py in candidates:
        if py and Path(py).exists() and subprocess.run([py, "-c", "import torch"], capture_output=True).returncode == 0:
            return py
    return None


def write_tokens(data_path, out):
    """Encode the text as examples/shakespeare.py does (characters), split 90/10, write raw int64
    files; returns (train path, val path, vocab size)."""
    import numpy as np

    from tinygrad_gpt import data
    from tinygrad_gpt.tokenizers.char import CharTokenizer

    text = data.load_text(data.find_data(data_path))
    tokenizer = CharTokenizer.from_text(text)
    train, val = data.split_train_val(tokenizer.encode_array(text), 0.1)
    paths = (out / "train.int64", out / "val.int64")
    for path, tokens in zip(paths, (train, val)):
        path.write_bytes(np.ascontiguousarray(tokens, dtype="<i8").tobytes())
    return paths[0], paths[1], tokenizer.vocab_size


def run_baseline(args, torch_python, seed, tokens, baseline):
    train, val, vocab = tokens
    job = {"seed": seed, "threads": args.threads, "budget": args.budget, "train": str(train), "val": str(val),
           "vocab_size": vocab, "baseline": baseline}
    proc = subprocess.run([torch_python, __file__, "--worker", json.dumps(job)], capture_output=True, text=True,
                          env=thread_env(args.threads), timeout=args.budget * 3 + 300)
    if proc.returncode != 0:
        raise RuntimeError(f"the PyTorch baseline (seed {seed}) failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def flag_args(settings):
    """{field: value} as command-line flags: --n-layer 2 --qk-norm false."""
    from tinygrad_gpt.cli import flag_name, show_value
    out = []
    for name, value in settings.items():
        out += [flag_name(name), show_value(value)]
    return out


def run_ours(args, seed, target, overrides, label, ablated=None):
    """examples/shakespeare.py to the target with `overrides` (the quick settings and the ablated
    idea's); returns its row (time, tokens, loss from metrics.jsonl)."""
    out = Path(args.out) / f"{label}-seed{seed}"
    cmd = [sys.executable, str(SCRIPT), "--preset", args.preset, "--target-val-loss", repr(target),
           "--seed", str(seed), "--out", str(out), "--overwrite", "--no-progress",
           *(["--data", args.data] if args.data else []), *flag_args(overrides)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=thread_env(args.threads),
                          timeout=args.budget * 20 + 600)
    wall = time.perf_counter() - t0
    if proc.returncode not in (0, 4):
        raise RuntimeError(f"{label} (seed {seed}) failed with exit status {proc.returncode}:\n"
                           f"{' '.join(cmd)}\n{proc.stderr[-3000:]}")
    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    evals = [r for r in evals if "whole_val_loss" in r]
    last = evals[-1]
    reached = proc.returncode == 0
    return {"variant": label, "seed": seed, "target": target, "reached": reached, "train_s": last["train_s"],
            "tokens": last["tokens"], "steps": last["step"],
            "loss": last["whole_val_loss"] if reached else min(r["whole_val_loss"] for r in evals),
            "ratio": last["train_s"] / args.budget if reached else None, "wall_s": round(wall, 1),
            "flags": " ".join(flag_args(ablated or {}))}


def recipe_settings(args, quick_overrides):
    """Every GPTConfig / TrainConfig setting the recipe runs with: the dataclass defaults, the preset,
    then the quick overrides."""
    from tinygrad_gpt.model import GPTConfig
    from tinygrad_gpt.train import TrainConfig, preset_settings
    values = {f.name: f.default for cls in (GPTConfig, TrainConfig) for f in fields(cls)}
    values.update(preset_settings()[args.preset])
    values.update(quick_overrides)
    return values


def ablations(args, recipe):
    """[(label, overrides)] to run and [(label, why skipped)] of --ablate (or --ablations)."""
    chosen = args.ablations.split(",") if args.ablations else [name for name, _, _ in ABLATIONS]
    known = {name for name, _, _ in ABLATIONS}
    unknown = [name for name in chosen if name not in known]
    if unknown:
        raise ValueError(f"--ablations: unknown idea(s) {', '.join(unknown)}; choose from {', '.join(sorted(known))}")
    runs, skipped = [], []
    for name, setting, without in ABLATIONS:
        if name not in chosen:
            continue
        flag = " ".join(flag_args({setting: without}))
        if setting not in recipe:
            skipped.append((f"no {name}", f"{flag}: this build has no such setting"))
        elif recipe[setting] == without:
            skipped.append((f"no {name}", f"the recipe does not use it ({flag} is its setting)"))
        else:
            runs.append((f"no {name}", {setting: without}))
    return runs, skipped


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(value, spec, none="not reached"):
    return none if value is None else format(value, spec)


def machine():
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} logical CPUs"


def summary(args, baselines, ours, ablation_rows, skipped):
    lines = [f"\n## Speedrun: time to PyTorch eager's {args.budget:g}-s loss ({args.threads} threads; {machine()})",
             "", "| seed | baseline loss L | baseline tokens | ours: time to L | / budget | tokens to L | loss |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for b, o in zip(baselines, ours):
        took = f"{o['train_s']:.1f} s" if o["reached"] else f"not reached ({o['train_s']:.1f} s)"
        lines.append(f"| {o['seed']} | {b['loss']:.4f} | {b['tokens']:,} | {took} | {fmt(o['ratio'], '.3f')} | "
                     f"{o['tokens']:,} | {o['loss']:.4f} |")
    ratio = median([o["ratio"] for o in ours])
    reached = sum(o["reached"] for o in ours)
    lines += ["", f"median over {len(ours)} seeds: our time to L / budget **{fmt(ratio, '.3f')}** (target <= 0.40; "
              f"reached in {reached} of {len(ours)}), tokens to L: ours {fmt(median([o['tokens'] for o in ours if o['reached']]), ',.0f')}, "
              f"baseline {median([b['tokens'] for b in baselines]):,.0f}; loss: baseline L "
              f"{median([b['loss'] for b in baselines]):.4f}, ours {median([o['loss'] for o in ours]):.4f}"]
    if ablation_rows or skipped:
        lines += ["", "## Ablation: the recipe minus one idea (medians over seeds)", "",
                  "| variant | flags | time to L (s) | / budget | tokens to L | reached | loss |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        groups = [("recipe", ours)] + [(label, [r for r in ablation_rows if r["variant"] == label])
                                       for label in dict.fromkeys(r["variant"] for r in ablation_rows)]
        for label, rows in groups:
            hit = [r for r in rows if r["reached"]]
            lines.append(f"| {label} | {rows[0]['flags'] if label != 'recipe' else f'--preset {args.preset}'} | "
                         f"{fmt(median([r['train_s'] for r in hit]), '.1f')} | {fmt(median([r['ratio'] for r in hit]), '.3f')} | "
                         f"{fmt(median([r['tokens'] for r in hit]), ',.0f')} | {len(hit)}/{len(rows)} | "
                         f"{median([r['loss'] for r in rows]):.4f} |")
        for label, why in skipped:
            lines.append(f"| {label} | skipped: {why} | | | | | |")
    return "\n".join(lines)


def parse_args(argv=None):
    from tinygrad_gpt import cli
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=cli.HelpFormatter)
    p.add_argument("--budget", type=cli.bounded(float, gt=0), default=None,
                   help="the baseline's wall-clock seconds (default: 300, or 3 with --quick)")
    p.add_argument("--seeds", type=cli.bounded(int, ge=1), default=3, help="seeds 0 .. N-1, interleaved")
    p.add_argument("--threads", type=cli.bounded(int, ge=1), default=2, help="threads of every run")
    p.add_argument("--preset", default="speedrun", help="our recipe: a preset of examples/shakespeare.py")
    p.add_argument("--ablate", action="store_true", help="also run the recipe minus each idea")
    p.add_argument("--ablations", default=None, metavar="A,B",
                   help="only these ideas (implies --ablate): " + ", ".join(name for name, _, _ in ABLATIONS))
    p.add_argument("--quick", action="store_true", help="seconds: the tiny preset's shape, a 3 s budget, 300 steps")
    p.add_argument("--data", default=None, help="tinyshakespeare.txt (default: as the training script finds it)")
    p.add_argument("--out", default="out/speedrun", help="where the runs and results.json go")
    p.add_argument("--torch-python", default=None,
                   help="an interpreter with torch (default: this one, then ../torchvenv/bin/python)")
    args = p.parse_args(argv)
    if args.budget is None:
        args.budget = QUICK_BUDGET_S if args.quick else 300.0
    args.ablate = args.ablate or args.ablations is not None
    return args


def main(argv=None):
    args = parse_args(argv)
    from tinygrad_gpt.train import PRESETS
    if args.preset not in PRESETS:
        raise ValueError(f"--preset {args.preset!r}: choose one of {', '.join(sorted(PRESETS))}")
    torch_python = find_torch_python(args.torch_python)
    if torch_python is None:
        raise RuntimeError("no interpreter with torch found: the baseline needs one (pass --torch-python)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    baseline, quick = dict(BASELINE), {}
    if args.quick:  # the tiny preset's shape and batch on both sides, a short warm-up, a step cap
        tiny_model, tiny_train = PRESETS["tiny"]
        shape = {k: tiny_model[k] for k in ("n_layer", "n_head", "n_embd", "block_size")}
        baseline.update(shape, batch_size=tiny_train["batch_size"], warmup=tiny_train["warmup_iters"])
        quick = dict(shape, batch_size=tiny_train["batch_size"], warmup_iters=tiny_train["warmup_iters"], **QUICK_OURS)
    tokens = write_tokens(args.data, out)
    to_ablate, skipped = ablations(args, recipe_settings(args, quick)) if args.ablate else ([], [])
    print(f"speedrun: {args.seeds} seed(s), baseline {args.budget:g} s of PyTorch eager ({torch_python}), ours "
          f"--preset {args.preset}{' (quick)' if args.quick else ''}, {args.threads} threads", flush=True)
    baselines, ours, ablation_rows = [], [], []
    for seed in range(args.seeds):
        b = run_baseline(args, torch_python, seed, tokens, baseline)
        baselines.append(dict(b, variant="baseline", seed=seed))
        print(f"seed {seed}: baseline  {b['steps']:,} steps, {b['tokens']:,} tokens in {b['train_s']:.1f} s, "
              f"whole-split val loss L = {b['loss']:.4f}", flush=True)
        for label, ablated in [("recipe", {})] + to_ablate:
            row = run_ours(args, seed, b["loss"], dict(quick, **ablated), label, ablated)
            (ours if label == "recipe" else ablation_rows).append(row)
            print(f"seed {seed}: {label:14s} " + (f"reached L in {row['train_s']:.1f} s ({row['ratio']:.3f} of the "
                  f"budget), {row['tokens']:,} tokens" if row["reached"] else
                  f"did NOT reach L: best {row['loss']:.4f} after {row['train_s']:.1f} s, {row['tokens']:,} tokens"),
                  flush=True)
    (out / "results.json").write_text(json.dumps({"budget_s": args.budget, "threads": args.threads,
                                                  "preset": args.preset, "quick": args.quick, "machine": machine(),
                                                  "rows": baselines + ours + ablation_rows,
                                                  "skipped": [list(s) for s in skipped]}, indent=1) + "\n")
    print(summary(args, baselines, ours, ablation_rows, skipped))
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:  # the baseline's process: torch and this file only (a side venv may
        print(json.dumps(worker_baseline(json.loads(sys.argv[2]))))  # lack the package's dependencies)
        sys.exit(0)
    from tinygrad_gpt import cli
    sys.exit(cli.run_main(main))
