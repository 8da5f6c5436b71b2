"""Shared fixtures: fresh random generators (seed printed on failure), data paths, kernel backends.

Every test that uses `rng` gets a new seed each run (fresh random inputs, as the house rules ask);
set TINYGRAD_GPT_TEST_SEED to replay a failing run. Data files are found through the
TINYSHAKESPEARE and GPT2_DIR environment variables, defaulting to ../shared/data beside the repo.
"""
import os
import pathlib

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
    where there is none); and "cuda" with the CUDA kernels run on the CPU by tests/cuda_emulator
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


def shakespeare_path():
    return pathlib.Path(os.environ.get("TINYSHAKESPEARE", SHARED_DATA / "tinyshakespeare.txt"))


def gpt2_dir():
    return pathlib.Path(os.environ.get("GPT2_DIR", SHARED_DATA / "gpt2"))
