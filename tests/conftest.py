"""Shared fixtures: fresh random generators (seed printed on failure), data paths, kernel backends,
devices, and a Ctrl-C delivered after a chosen training step.

Every test that uses `rng` gets a new seed each run (so each run checks fresh random inputs, not
inputs the code was tuned to); set TINYGRAD_GPT_TEST_SEED to replay a failing run. Tiny Shakespeare
is found as every script finds it (`data.find_data`: $TINYSHAKESPEARE, then the cache; the tests never
download); GPT-2's tokenizer files through GPT2_DIR, defaulting to ../shared/data/gpt2 beside the repo.
"""
import importlib
import importlib.util
import os
import pathlib
import signal
import sys

import numpy as np
import pytest

from tinygrad_gpt import data, kernels

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def rng(request):
    seed = int(os.environ.get("TINYGRAD_GPT_TEST_SEED", int.from_bytes(os.urandom(4), "little")))
    request.node.user_properties.append(("seed", seed))
    print(f"random seed {seed} (replay with TINYGRAD_GPT_TEST_SEED={seed})")
    return np.random.default_rng(seed)


@pytest.fixture(params=["reference", "fused"])
def kernel_backend(request):
    """Run a test once with the NumPy reference kernels and once with the fused (Numba) ones."""
    kernels.set_backend(request.param)
    yield request.param
    kernels.set_backend(None)


@pytest.fixture(params=["cpu", "cuda", "cuda-emulated"])
def device(request, monkeypatch):
    """Run a test on each device: "cpu"; "cuda" on a GPU (skips, with the reason the backend gives,
    where there is none); and "cuda" with the CUDA kernels run on the CPU by tinygrad_gpt/cuda_emulator/
    (skips without g++). The test sees "cpu" or "cuda"."""
    from tinygrad_gpt import backend
    if request.param == "cuda":
        try:
            backend.get_xp("cuda")
        except RuntimeError as exc:
            pytest.skip(str(exc))
    if request.param == "cuda-emulated":
        from tinygrad_gpt import cuda_emulator
        cuda_emulator.activate(monkeypatch)
        return "cuda"
    return request.param


@pytest.fixture
def ctrl_c_after_step(monkeypatch):
    """`ctrl_c_after_step(n)`: a real SIGINT reaches the process as its n-th optimizer step ends, so
    the Trainer's Ctrl-C handler stops the run after that step, as a user's Ctrl-C would."""
    from tinygrad_gpt import optim

    def arm(n):
        original = optim.AdamW.step
        calls = [0]

        def step(self, *args, **kwargs):
            result = original(self, *args, **kwargs)
            calls[0] += 1
            if calls[0] == n:
                signal.raise_signal(signal.SIGINT)
            return result

        monkeypatch.setattr(optim.AdamW, "step", step)
    return arm


def default_sigint():
    """preexec_fn for a child that a test sends SIGINT: a shell that starts pytest in the background
    ignores SIGINT and a child inherits that (Python then installs no KeyboardInterrupt handler, and a
    program that restores the handler it found restores "ignore"); the program's own Ctrl-C is what
    the test is about, so the child starts with the default."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def load_script(name):
    """examples/<name>.py as a module, to call its main() in-process (and patch what it calls):
    loaded by its path, once per process, with nothing added to sys.path."""
    key = f"examples.{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, REPO / "examples" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key]


# CI installs the peers (torch, transformers, tiktoken) and sets this, so that a parity test that
# cannot import its peer fails there instead of skipping unseen.
REQUIRE_PEERS = os.environ.get("TINYGRAD_GPT_REQUIRE_PEERS", "0") == "1"


def peer(name):
    """Import a parity peer: skip where it is absent, fail where TINYGRAD_GPT_REQUIRE_PEERS=1."""
    if REQUIRE_PEERS:
        return importlib.import_module(name)
    return pytest.importorskip(name)


def shakespeare_path():
    """The tiny Shakespeare file as the scripts find it (no download), or None."""
    try:
        return data.find_data(download_missing=False)
    except data.DataNotFound:
        return None


NO_DATA_REASON = (f"needs tiny Shakespeare: set {data.ENV_DATA}=PATH, or run examples/shakespeare.py once to "
                  f"cache it")
needs_data = pytest.mark.skipif(shakespeare_path() is None, reason=NO_DATA_REASON)


def require_shakespeare():
    """The tiny Shakespeare path, or skip the calling test with the reason."""
    path = shakespeare_path()
    if path is None:
        pytest.skip(NO_DATA_REASON)
    return path


def gpt2_dir():
    return pathlib.Path(os.environ.get("GPT2_DIR", SHARED_DATA / "gpt2"))


def pytest_terminal_summary(terminalreporter):
    """Skips summarised by reason, one line each with a count, instead of one line per test: a
    machine without a GPU skips dozens of `[gpu]` cases for the same reason."""
    reasons = {}
    for report in terminalreporter.stats.get("skipped", []):
        if isinstance(report.longrepr, tuple):
            reason = report.longrepr[2]
        else:
            reason = str(report.longrepr)
        reason = reason.removeprefix("Skipped: ")
        reasons[reason] = reasons.get(reason, 0) + 1
    if reasons:
        terminalreporter.section("skips by reason")
        for reason, count in sorted(reasons.items(), key=lambda item: -item[1]):
            terminalreporter.write_line(f"{count:4d}  {reason}")


def snapshot(directory):
    """{file name: bytes} of a directory: what must survive a refused command unchanged."""
    return {p.name: p.read_bytes() for p in sorted(pathlib.Path(directory).iterdir())}


def temp_files(directory):
    """Names of the temporary files (an atomic write's leftovers) anywhere under `directory`."""
    return [p.name for p in pathlib.Path(directory).rglob("*") if "tmp" in p.name]
