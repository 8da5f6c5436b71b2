"""Shared fixtures: fresh random generators (seed printed on failure), data paths, kernel backends,
devices, and a Ctrl-C delivered after a chosen training step.

Every test that uses `rng` gets a new seed each run (so each run checks fresh random inputs, not
inputs the code was tuned to); set TINYGRAD_GPT_TEST_SEED to replay a failing run. Data files are found through the
TINYSHAKESPEARE and GPT2_DIR environment variables, defaulting to ../shared/data beside the repo.
"""
import os
import pathlib
import signal

import numpy as np
import pytest

import kernels

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
    where there is none); and "cuda" with the CUDA kernels run on the CPU by cuda_emulator/
    (skips without g++). The test sees "cpu" or "cuda"."""
    from tinygrad_gpt import backend
    if request.param == "cuda":
        try:
            backend.get_xp("cuda")
        except RuntimeError as exc:
            pytest.skip(str(exc))
    if request.param == "cuda-emulated":
        import cuda_emulator
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


def shakespeare_path():
    return pathlib.Path(os.environ.get("TINYSHAKESPEARE", SHARED_DATA / "tinyshakespeare.txt"))


def gpt2_dir():
    return pathlib.Path(os.environ.get("GPT2_DIR", SHARED_DATA / "gpt2"))
