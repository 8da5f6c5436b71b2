"""The training example end to end on a small synthetic corpus: resume equality, Ctrl-C, NaN stop,
and the errors (with non-zero exits) a user sees for bad input."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tinygrad_gpt import checkpoint
from tinygrad_gpt.train import NonFiniteLoss

from conftest import REPO, load_script  # noqa: E402

shakespeare = load_script("shakespeare")


@pytest.fixture
def corpus(tmp_path):
    rng = np.random.default_rng(0)
    words = ["the", "king", "shall", "not", "love", "thee", "my", "lord", "good", "night", "sweet", "prince"]
    lines = [" ".join(rng.choice(words, 8)).capitalize() + "." for _ in range(400)]
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _args(corpus, out, *extra):
    return ["--preset", "tiny", "--data", str(corpus), "--out", str(out), "--no-progress",
            "--epochs", "2", "--iters-per-epoch", "6", "--log-every", "1", "--eval-batches", "2",
            "--sample-tokens", "20", "--dropout", "0.1", *extra]


def _losses(out):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def test_resumed_run_equals_uninterrupted_run(corpus, tmp_path, capsys, ctrl_c_after_step):
    """12 steps straight, versus 4 steps + stop + resume for 8 more: the same loss at every step
    (dropout on, so the dropout generator's state must survive the checkpoint too)."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert shakespeare.main(_args(corpus, straight)) == 0
    ctrl_c_after_step(4)
    assert shakespeare.main(_args(corpus, resumed)) == 130
    assert "continue with --resume" in capsys.readouterr().out
    assert max(_losses(resumed)) == 4
    assert shakespeare.main(_args(corpus, resumed, "--resume")) == 0
    a, b = _losses(straight), _losses(resumed)
    assert sorted(a) == sorted(b) == list(range(1, 13))
    assert [a[s] for s in sorted(a)] == [b[s] for s in sorted(b)]


def test_nan_loss_stops_and_keeps_last_good_checkpoint(corpus, tmp_path, ctrl_c_after_step):
    out = tmp_path / "run"
    ctrl_c_after_step(3)
    assert shakespeare.main(_args(corpus, out)) == 130
    good_step = checkpoint.load_checkpoint(out)[2]["state"]["step"]
    # resume with a poisoned parameter: the first step's loss is NaN
    from tinygrad_gpt import train as train_mod
    original = train_mod.Trainer.restore

    def poisoned_restore(self, meta, optimizer_state):
        original(self, meta, optimizer_state)
        self.model.wte.weight.data[:] = np.nan

    train_mod.Trainer.restore = poisoned_restore
    try:
        assert shakespeare.main(_args(corpus, out, "--resume")) == 3
    finally:
        train_mod.Trainer.restore = original
    assert checkpoint.load_checkpoint(out)[2]["state"]["step"] == good_step == 3


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the overflow and NaN it provokes on purpose
def test_nonfinite_loss_message_names_the_step(corpus, tmp_path):
    from tinygrad_gpt.model import GPT, GPTConfig
    from tinygrad_gpt.tokenizers.char import CharTokenizer
    from tinygrad_gpt.train import Trainer, TrainConfig
    text = corpus.read_text()
    tok = CharTokenizer.from_text(text)
    ids = tok.encode_array(text)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=8, n_layer=1, n_head=1, n_embd=8))
    model.ln_f.weight.data[:] = np.inf
    trainer = Trainer(model, tok, ids[:5000], ids[5000:], TrainConfig(batch_size=2, out_dir=str(tmp_path / "o"),
                                                                       iters_per_epoch=3), progress=False)
    with pytest.raises(NonFiniteLoss, match=r"loss is nan at step 1 \(epoch 1, batch 1\)"):
        trainer.train()
    assert not (tmp_path / "o" / "checkpoint.json").exists()


def test_sample_mode_from_checkpoint(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert shakespeare.main(_args(corpus, out, "--epochs", "1")) == 0
    capsys.readouterr()
    shakespeare.main(["--sample", "--out", str(out), "--prompt", "The king", "--num-tokens", "30", "--seed", "1"])
    text = capsys.readouterr().out
    assert text.startswith("The king") and len(text.rstrip("\n")) >= 38


def _run_cli(*args, env=None):
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, str(REPO / "examples" / "shakespeare.py"), *args],
                          capture_output=True, text=True, env=full_env, timeout=300)


def test_cli_errors_are_readable_and_exit_nonzero(corpus, tmp_path):
    missing = _run_cli("--data", str(tmp_path / "nope.txt"), "--preset", "tiny", "--out", str(tmp_path / "o"))
    assert missing.returncode != 0 and "nope.txt" in missing.stderr
    out = tmp_path / "run"
    assert shakespeare.main(_args(corpus, out, "--epochs", "1")) == 0
    unknown = _run_cli("--sample", "--out", str(out), "--prompt", "The king§")
    assert unknown.returncode != 0 and "'§'" in unknown.stderr
    from tinygrad_gpt import backend
    if not backend.cuda_available():
        cuda = _run_cli("--device", "cuda", "--preset", "tiny", "--data", str(corpus), "--out", str(tmp_path / "c"))
        assert cuda.returncode != 0 and "cupy" in cuda.stderr and "[cuda]" in cuda.stderr


def test_bpe_tokenizer_trains_the_gpt_and_samples(corpus, tmp_path, capsys):
    """--tokenizer bpe: the GPT trains on BPE ids and --sample decodes them back to text."""
    out = tmp_path / "bpe"
    assert shakespeare.main(_args(corpus, out, "--epochs", "1", "--tokenizer", "bpe", "--vocab-size", "300")) == 0
    meta = checkpoint.load_checkpoint(out)[2]
    assert meta["tokenizer"]["type"] == "bpe" and meta["model_config"]["vocab_size"] == 300
    capsys.readouterr()
    shakespeare.main(["--sample", "--out", str(out), "--prompt", "The king", "--num-tokens", "10"])
    assert capsys.readouterr().out.startswith("The king")


def test_real_ctrl_c_saves_a_checkpoint_and_exits_130(corpus, tmp_path):
    """SIGINT mid-epoch: the step in progress finishes, a checkpoint is written, exit code 130."""
    import signal
    import time
    # subtle: 20x the usual corpus (~1,200 steps in the epoch, several seconds). With the 400-line
    # corpus the whole 59-step epoch once finished before the signal arrived, and the checkpoint
    # then held the next epoch's batch 0.
    text = corpus.read_text(encoding="utf-8")
    corpus.write_text(text * 20, encoding="utf-8")
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, str(REPO / "examples" / "shakespeare.py"),
                             *_args(corpus, out, "--iters-per-epoch", "100000", "--epochs", "1")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not ((out / "metrics.jsonl").exists() and _losses(out)):
        time.sleep(0.2)
    assert _losses(out), "the run never logged a step"
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "checkpoint saved" in stdout
    state = checkpoint.load_checkpoint(out)[2]["state"]
    assert state["step"] >= 1 and state["batch"] == state["step"]


def test_import_changes_no_allocator_and_the_trainer_tunes_it(tmp_path):
    """`import tinygrad_gpt` leaves glibc's malloc thresholds alone (a process-wide setting); the
    Trainer raises them, explicitly (backend.tune_host_allocator)."""
    import platform
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("tune_host_allocator acts on glibc only")
    code = "\n".join([
        "import numpy as np",
        "import tinygrad_gpt, tinygrad_gpt.model as model, tinygrad_gpt.train as train",
        "from tinygrad_gpt import backend",
        "print(backend._allocator_tuned)",
        "gpt = model.GPT(model.GPTConfig(vocab_size=5, block_size=4, n_layer=1, n_head=1, n_embd=4))",
        "tokens = np.arange(64) % 5",
        f"cfg = train.TrainConfig(batch_size=2, out_dir={str(tmp_path / 'run')!r})",
        "train.Trainer(gpt, None, tokens, tokens, cfg, log=lambda *a: None, progress=False)",
        "print(backend._allocator_tuned)",
    ])
    env = {k: v for k, v in os.environ.items() if k != "TINYGRAD_GPT_MALLOC"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "True"]


def test_nonfinite_loss_on_a_fresh_run_says_no_checkpoint_exists(corpus, tmp_path, capsys):
    """Step 1 of a fresh run is NaN: nothing was saved, and the message says so (no "last good" one)."""
    from tinygrad_gpt import train as train_mod
    original = train_mod.Trainer.train

    def poisoned_train(self, *args, **kwargs):
        # after the untrained sample (the sampler refuses NaN logits), before step 1
        self.model.ln_f.weight.data[:] = np.nan
        return original(self, *args, **kwargs)

    train_mod.Trainer.train = poisoned_train
    try:
        assert shakespeare.main(_args(corpus, tmp_path / "o5")) == 3
    finally:
        train_mod.Trainer.train = original
    err = capsys.readouterr().err
    assert "no checkpoint exists in" in err and "o5" in err and "last good" not in err, err
    assert not (tmp_path / "o5" / "checkpoint.json").exists()


def test_a_resumed_run_keeps_no_second_copy_of_the_loaded_state(corpus, tmp_path, ctrl_c_after_step, monkeypatch):
    """--resume trains the loaded model itself, and once restore has copied the loaded AdamW moments
    nothing holds them: when training starts, every array load_model returned is the model's or gone."""
    import gc
    import weakref
    from tinygrad_gpt import runs
    from tinygrad_gpt import train as train_mod
    out = tmp_path / "run"
    ctrl_c_after_step(2)
    assert shakespeare.main(_args(corpus, out)) == 130
    loaded = {}
    real_load, real_train = runs.load_model, train_mod.Trainer.train

    def load_model(*args, **kwargs):
        model, meta, optimizer_state = real_load(*args, **kwargs)
        loaded["model"] = weakref.ref(model)
        loaded["moments"] = [weakref.ref(a) for a in optimizer_state["arrays"].values()]
        return model, meta, optimizer_state

    def train(self):
        gc.collect()
        loaded["same model"] = loaded["model"]() is self.model
        loaded["alive"] = sum(ref() is not None for ref in loaded["moments"])
        return real_train(self)
    monkeypatch.setattr(shakespeare, "load_model", load_model)
    monkeypatch.setattr(train_mod.Trainer, "train", train)
    assert shakespeare.main(_args(corpus, out, "--resume")) == 0
    assert loaded["same model"] and loaded["alive"] == 0, loaded


def test_check_memory_refuses_what_cannot_fit(monkeypatch):
    """cpu preset, batch 12 x 64, 4 layers of 128, V 65, float32: training rows 12 (one micro-batch),
    12 * 64 * (4 * 16 * 128 + 2 * 65) * 4 = 25,565,184 bytes; evaluation 12 * 64 * ((8 * 128 + 130) * 4 + 16)
    = 3,557,376; plus 4 * P * 4 for the parameters, gradients and moments."""
    from tinygrad_gpt import train as train_mod
    from tinygrad_gpt.model import GPTConfig
    from tinygrad_gpt.train import TrainConfig, check_memory, step_memory
    cfg = GPTConfig(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128)
    need, part = step_memory(cfg, 12, 12, 4, 1000)
    assert (need, part) == (16_000 + 25_565_184, "training")
    assert step_memory(cfg, 12, 3, 4, 1000) == (16_000 + 25_565_184 // 4, "training")
    assert step_memory(cfg, 12, 1, 4, 0) == (3_557_376, "evaluation")
    monkeypatch.setattr(train_mod, "memory_of", lambda device: need)
    check_memory(cfg, TrainConfig(batch_size=12), 1000, 4)           # exactly fits
    with pytest.raises(ValueError, match=r"--batch-size 12: one training step needs about 0\.0 GiB .*grad-accum"):
        monkeypatch.setattr(train_mod, "memory_of", lambda device: need - 1)
        check_memory(cfg, TrainConfig(batch_size=12), 1000, 4)
    check_memory(cfg, TrainConfig(batch_size=12, grad_accum=4), 1000, 4)  # 3 rows a micro-batch fit
    monkeypatch.setattr(train_mod, "memory_of", lambda device: None)  # unknown: nothing is refused
    check_memory(cfg, TrainConfig(batch_size=10 ** 9), 1000, 4)


def test_train_step_is_forward_backward_clip_and_adamw_in_that_order(rng):
    """train_step on one model equals the same calls written out on an identical model, to the bit."""
    from tinygrad_gpt.model import GPT, GPTConfig
    from tinygrad_gpt.optim import AdamW, clip_grad_norm
    from tinygrad_gpt.train import train_step
    cfg = GPTConfig(vocab_size=13, block_size=8, n_layer=1, n_head=2, n_embd=8)
    a, b = GPT(cfg, seed=3), GPT(cfg, seed=3)
    opt_a, opt_b = AdamW(a.parameters(), lr=1e-2), AdamW(b.parameters(), lr=1e-2)
    x, y = rng.integers(0, 13, (2, 8)), rng.integers(0, 13, (2, 8))
    for _ in range(2):
        loss_a = train_step(a, opt_a, x, y, grad_clip=0.5)
        _, loss_b = b(x, y)
        b.zero_grad()
        loss_b.backward()
        clip_grad_norm(b.parameters(), 0.5)
        opt_b.step()
        assert loss_a.item() == loss_b.item()
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        np.testing.assert_array_equal(p.data, q.data, err_msg=name)


# ---- time to a target loss: train_s and tokens, --target-val-loss, Muon and WSD through a resume ------
def _evaluations(out):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "val_loss" in r]


def test_every_evaluation_record_carries_train_s_and_tokens(corpus, tmp_path):
    """--eval-every 4 over 2 epochs of 6 steps: evaluations at steps 4, 6 (epoch end), 8, 12 (the
    step-8 one mid-epoch; none at 12 twice); tokens = step x 8 rows x 32 positions; train_s grows,
    and keeps growing across a stop and resume (it is saved with the loop state)."""
    out = tmp_path / "run"
    assert shakespeare.main(_args(corpus, out, "--eval-every", "4")) == 0
    evals = _evaluations(out)
    assert [r["step"] for r in evals] == [4, 6, 8, 12]
    assert [r["tokens"] for r in evals] == [s * 8 * 32 for s in (4, 6, 8, 12)]
    times = [r["train_s"] for r in evals]
    assert 0 < times[0] and all(a < b for a, b in zip(times, times[1:]))
    assert checkpoint.load_checkpoint(out)[2]["state"]["tokens"] == 12 * 8 * 32


def test_train_s_continues_across_a_resume(corpus, tmp_path, ctrl_c_after_step):
    out = tmp_path / "run"
    ctrl_c_after_step(3)
    assert shakespeare.main(_args(corpus, out)) == 130
    saved = checkpoint.load_checkpoint(out)[2]["state"]
    assert saved["tokens"] == 3 * 256 and saved["train_s"] > 0
    assert shakespeare.main(_args(corpus, out, "--resume")) == 0
    last = _evaluations(out)[-1]
    assert last["tokens"] == 12 * 256 and last["train_s"] > saved["train_s"]


def test_target_val_loss_stops_at_the_first_evaluation_at_or_below_it(corpus, tmp_path, capsys):
    """An unreachable target (0.01) runs the whole budget and exits 4, recording the whole-split
    loss at each evaluation; the same run with the third of those losses as its target stops at
    exactly that evaluation (the first one at or below it), exits 0, saves that step, and says so.
    The recorded whole-split loss is the mean over every block_size window of the validation
    split, recomputed here one window at a time."""
    from tinygrad_gpt import data
    from tinygrad_gpt.runs import load_model
    from tinygrad_gpt.tensor import no_grad

    full = tmp_path / "full"
    assert shakespeare.main(_args(corpus, full, "--eval-every", "2", "--target-val-loss", "0.01")) == 4
    said = capsys.readouterr().out
    assert "target val loss 0.01 NOT reached: the budget ended at step 12" in said
    losses = [(r["step"], r["whole_val_loss"]) for r in _evaluations(full)]
    assert [s for s, _ in losses] == [2, 4, 6, 8, 10, 12]
    target = losses[2][1]
    stop = next(s for s, loss in losses if loss <= target)

    hit = tmp_path / "hit"
    assert shakespeare.main(_args(corpus, hit, "--eval-every", "2", "--target-val-loss", str(target))) == 0
    said = capsys.readouterr().out
    evals = _evaluations(hit)
    assert evals[-1]["step"] == stop and evals[-1]["whole_val_loss"] == target
    assert f"target val loss {target:g} reached at step {stop}: {evals[-1]['train_s']:.1f} s of training" in said
    assert f"{stop * 256:,} tokens, whole-split val loss {target:.4f}" in said
    model, meta, _ = load_model(hit)
    assert meta["state"]["step"] == stop

    val = data.split_train_val(np.asarray(shakespeare.load_tokens(
        shakespeare.build_parser().parse_args(["--data", str(corpus)]))[1]), 0.1)[1]
    x_all, y_all = data.split_windows(val, 32)
    model.eval()
    with no_grad():
        by_hand = np.mean([model(x[None], y[None])[1].item() for x, y in zip(x_all, y_all)])
    assert abs(by_hand - target) < 1e-4


def test_muon_and_wsd_resume_equals_an_uninterrupted_run(corpus, tmp_path, ctrl_c_after_step):
    """As test_resumed_run_equals_uninterrupted_run, with --optimizer muon --schedule wsd: the Muon
    momentum buffers and AdamW moments survive the checkpoint, so every step's loss is the same."""
    extra = ("--optimizer", "muon", "--schedule", "wsd", "--cooldown-frac", "0.5", "--warmup-iters", "2")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert shakespeare.main(_args(corpus, straight, *extra)) == 0
    ctrl_c_after_step(5)
    assert shakespeare.main(_args(corpus, resumed, *extra)) == 130
    assert shakespeare.main(_args(corpus, resumed, "--resume")) == 0
    a, b = _losses(straight), _losses(resumed)
    assert sorted(a) == sorted(b) == list(range(1, 13))
    assert [a[s] for s in sorted(a)] == [b[s] for s in sorted(b)]
    meta = checkpoint.load_checkpoint(resumed)[2]
    assert meta["train_config"]["optimizer"] == "muon"


MODERN_FLAGS = ["--position", "rotary", "--norm", "rmsnorm", "--qk-norm", "true", "--activation", "relu2",
                "--logit-softcap", "15", "--zero-init", "true", "--bias", "false"]


def test_a_modern_model_is_recorded_resumes_equal_and_samples(corpus, tmp_path, capsys, ctrl_c_after_step):
    """The architecture fields travel in the checkpoint: 12 steps straight equal 4 + resume for 8
    (with no architecture flag on --resume: the checkpoint's), the run loads as the same model, and
    --sample draws from it; --resume with a contradicting architecture flag is refused."""
    from tinygrad_gpt.runs import load_model
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert shakespeare.main(_args(corpus, straight, *MODERN_FLAGS)) == 0
    ctrl_c_after_step(4)
    assert shakespeare.main(_args(corpus, resumed, *MODERN_FLAGS)) == 130
    assert shakespeare.main(_args(corpus, resumed, "--resume")) == 0
    a, b = _losses(straight), _losses(resumed)
    assert sorted(a) == sorted(b) == list(range(1, 13))
    assert [a[s] for s in sorted(a)] == [b[s] for s in sorted(b)]
    model, meta, _ = load_model(resumed)
    assert {k: meta["model_config"][k] for k in ("position", "norm", "qk_norm", "activation", "logit_softcap",
                                                  "zero_init", "bias")} == \
        dict(position="rotary", norm="rmsnorm", qk_norm=True, activation="relu2", logit_softcap=15.0,
             zero_init=True, bias=False)
    assert not hasattr(model, "wpe") and type(model.ln_f).__name__ == "RMSNorm"
    with pytest.raises(ValueError, match=r"--position 'rotary' \(this command gives 'learned'\)"):
        shakespeare.main(_args(corpus, resumed, "--resume", "--position", "learned", "--max-iters", "13"))
    capsys.readouterr()
    assert shakespeare.main(["--sample", "--out", str(resumed), "--prompt", "The king", "--num-tokens", "30",
                             "--seed", "1"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("The king") and len(text.rstrip("\n")) >= 38


def test_a_checkpoint_from_before_the_architecture_fields_loads_as_gpt2(corpus, tmp_path):
    """A checkpoint written before position, norm, ... existed has no such keys: it loads with
    their defaults, which are the GPT-2 architecture it was trained with."""
    from tinygrad_gpt.model import GPTConfig
    from tinygrad_gpt.runs import NEWER_MODEL_FIELDS, check_meta
    out = tmp_path / "run"
    assert shakespeare.main(_args(corpus, out, "--epochs", "1")) == 0
    meta = checkpoint.load_checkpoint(out)[2]
    old = {k: v for k, v in meta["model_config"].items() if k not in NEWER_MODEL_FIELDS}
    assert check_meta({**meta, "model_config": old}, out) == GPTConfig(**meta["model_config"])
