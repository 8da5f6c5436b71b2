"""Data parallel over threads in one process: copies of a model that share its weights, each running
forward and backward on its own rows of the batch, on its own core.

Why: on a few cores a training step of a small model is ~100 small ops. Shared op by op (BLAS's
threads for the products, a pool for attention), every op wakes the other cores and waits for them,
and BLAS's threads, which spin for a while after each product, take the cores the kernels' threads
need (benchmarks/LOG.md has the breakdown). Split by rows instead, each thread runs a whole forward
and backward on B/n rows with single-threaded BLAS and kernels: one hand-off per step, and no core
waits between ops. NumPy's products and the Numba kernels release the GIL, so only the engine's own
Python (a few ms a step at the cpu preset) takes turns between the threads.

    rows 0..B-1 of (x, y)  ->  n pieces (np.array_split), piece i with weight w_i = rows_i / B
    thread i:  loss_i = copy_i(x_i, y_i);  loss_i.backward(w_i)        (copy_0 is the model itself)
    then:      model.grad += copy_i.grad for i >= 1                     (the sum is d(sum_i w_i loss_i))

sum_i w_i loss_i is the mean loss of the whole batch, so the summed gradients are those of one
forward and backward over all rows, up to the order of the float sums. A copy's parameters are new
leaf Tensors over the model's own arrays (no weights copied); before each step they are pointed at
the model's arrays again, so an optimizer or a load that replaces an array is followed. Dropout:
each copy's generators are reseeded every step from the model's own (one draw per generator), so
the pieces get different masks and a resumed run draws the same ones.

Follows: PyTorch's DataParallel (replicas of one module on several devices, gradients summed into
the original); llm.c's multi-GPU training (the batch split by rows, one mean over all of them).
Does not: run on the GPU (one device, one stream: there the ops are already parallel), or overlap
the gradient sum with backward.
"""
import copy
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np

from tinygrad_gpt import nn
from tinygrad_gpt.backend import array_module, blas_single_thread
from tinygrad_gpt.tensor import Tensor


def _shared_copy(model):
    """A copy of `model` whose parameters are new leaf Tensors over the same arrays: its backward
    fills its own .grad, never the model's (tied parameters stay tied: one Tensor in two places)."""
    memo = {}
    for p in model.parameters():
        memo[id(p)] = Tensor._wrap(p.data, p.device, True)   # the same array, a leaf of the copy
    return copy.deepcopy(model, memo)


class Replicas:
    """`threads` threads training one model together, each on its own rows of every batch.

    `forward_backward(x, y, weight)` is, for the model's gradients, what
        _, loss = model(x, y); loss.backward(weight)
    is: the gradients of weight * (mean loss over the rows) accumulate into the model's .grad. The
    calling thread is one of the `threads`; the others wait in a pool between steps. CPU only.
    Use it as a context manager, or call close(), to stop the pool.

    subtle: run the process with OPENBLAS_NUM_THREADS=1 (set before numpy is imported). Each
    thread's products are single-threaded either way (blas_single_thread), but while OpenBLAS has
    worker threads, two threads calling it at once wake them, and they spin for a while on the
    cores the replicas need: measured, a `cpu`-preset step over 2 threads took ~60 ms with them
    and ~39 ms without (benchmarks/LOG.md).
    """

    def __init__(self, model, threads):
        if int(threads) != threads or threads < 2:
            raise ValueError(f"Replicas: threads must be an integer >= 2, got {threads!r}")
        if model.device != "cpu":
            raise ValueError(f"Replicas: data parallel over threads runs on the CPU; the model is on {model.device}")
        self.model = model
        self.threads = int(threads)
        self.copies = [_shared_copy(model) for _ in range(self.threads - 1)]
        self._pool = ThreadPoolExecutor(max_workers=self.threads - 1, thread_name_prefix="replica")

    def close(self):
        """Stop the pool's threads (the copies go with the object)."""
        self._pool.shutdown(wait=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _sync(self, params):
        """Point each copy at the model's arrays `params`, training mode and fresh dropout seeds."""
        modules = list(self.model.modules())
        for c in self.copies:
            for p, q in zip(params, c.parameters()):
                q.data = p.data
            reseeded = {}
            for m, mc in zip(modules, c.modules()):
                mc.training = m.training
                if isinstance(m, nn.Dropout) and m.p > 0 and m.training and id(mc.rng) not in reseeded:
                    mc.rng.bit_generator.state = np.random.default_rng(m.rng.integers(2 ** 63)).bit_generator.state
                    reseeded[id(mc.rng)] = True

    @staticmethod
    def _run(model, x, y, weight):
        """Forward and backward of one piece on this thread alone; returns weight * its mean loss."""
        threads = numba.get_num_threads()
        numba.set_num_threads(1)   # this thread only: the kernels' own pools stay out of the way
        try:
            with blas_single_thread():
                _, loss = model(x, y)
                w = loss.dtype.type(weight)
                loss.backward(array_module(loss.data).full(loss.shape, w, dtype=loss.dtype))
                return loss.data * w
        finally:
            numba.set_num_threads(threads)

    def forward_backward(self, x, y, weight=1.0):
        """Accumulate the gradients of weight * mean loss over the rows of x (B, T), y (B, T) into the
        model's .grad; returns that weighted loss (a 0-d array). B may be below `threads`: then fewer
        threads take part."""
        rows = x.shape[0]
        if y.shape[0] != rows:
            raise ValueError(f"Replicas.forward_backward: x has {rows} rows, y has {y.shape[0]}")
        pieces = [r for r in np.array_split(np.arange(rows), self.threads) if len(r)]
        params = self.model.parameters()
        self._sync(params)
        for c in self.copies:
            c.zero_grad()
        models = [self.model] + self.copies
        futures = [self._pool.submit(self._run, m, x[r], y[r], weight * len(r) / rows)
                   for m, r in zip(models[1:], pieces[1:])]
        try:
            total = self._run(self.model, x[pieces[0]], y[pieces[0]], weight * len(pieces[0]) / rows)
        finally:
            # every copy has finished (or failed) before the gradients are read or an error leaves
            losses = [f.result() for f in futures]
        for c in self.copies[:len(futures)]:
            for p, q in zip(params, c.parameters()):
                if q.grad is None:
                    continue
                if p.grad is None:
                    p.grad, q.grad = q.grad, None   # the copy's sum, owned by the engine: taken as it is
                else:
                    p.grad += q.grad
        for loss in losses:
            total = total + loss
        return total
