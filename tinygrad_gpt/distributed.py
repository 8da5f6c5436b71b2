"""Data-parallel training over MPI (mpi4py), with NCCL (cupy.cuda.nccl) for gradients on GPUs.

This is the only module that knows about MPI or NCCL. The invariant it keeps: the number of
processes changes the speed, never the training. Every rank draws the same global batch of
`batch_size` rows; rank r trains on its slice (`shard`), each slice's mean loss weighted by
rows_r / rows, so the all-reduced SUM of the weighted gradients is the whole batch's mean gradient
(the average over ranks when slices are equal), and every rank applies the same update.

    World            rank, world size, local rank (ranks on this host), the communicator; checks
                     that every rank holds the same configs and data, broadcasts from rank 0, a
                     per-step host all-reduce (loss, stop flags), abort on an exception (with
                     the exit status cli.run_main gives one process), a dropout seed per rank
                     and step
    bucket_layout    flat gradient buckets of ~bucket_bytes, in parameter order
    GradAllreduce    preallocated buckets, all-reduced in place (MPI, or NCCL on cuda); with
                     `overlap`, each bucket's non-blocking all-reduce starts during backward as
                     soon as its last gradient is final (tensor.py calls a parameter's _grad_hook)
    gpu_for_rank     one GPU per rank on each host, from the local rank

A single process never imports mpi4py: `from_environment()` returns None unless an MPI launcher
(Open MPI's or MPICH's mpirun) started more than one process.

Dimension legend: n elements of a flat bucket.
Follows: PyTorch DistributedDataParallel (buckets in parameter order, all-reduce started from
backward hooks; Li et al., VLDB 2020), llm.c's MPI + NCCL multi-GPU training (one GPU per local
rank, NCCL id broadcast over MPI). Deliberately does not: shard optimizer state (ZeRO), compress
gradients, or recover from a lost rank (a failed rank aborts the job).
"""
import hashlib
import json
import os
import sys
import traceback

import numpy as np

from tinygrad_gpt.backend import get_xp

# Launchers set these in every process they start: Open MPI (OMPI_*), MPICH / Intel MPI (PMI_*)
_SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE")
_RANK_VARIABLES = ("OMPI_COMM_WORLD_RANK", "PMI_RANK")
DEFAULT_BUCKET_MB = 4.0


def launched_size():
    """The world size an MPI launcher announced in the environment (1 when there is none)."""
    for name in _SIZE_VARIABLES:
        value = os.environ.get(name)
        if value and value.isdigit():
            return int(value)
    return 1


def launched_rank():
    """This process's rank as an MPI launcher announced it in the environment (0 when there is none)."""
    for name in _RANK_VARIABLES:
        value = os.environ.get(name)
        if value and value.isdigit():
            return int(value)
    return 0


def from_environment(device="cpu"):
    """A World when an MPI launcher started more than one process, else None (nothing imported)."""
    if launched_size() <= 1:
        return None
    return World(device=device)


def gpu_for_rank(local_rank, local_size, gpu_count):
    """The GPU index of a rank: its rank among the ranks of its host (one GPU each)."""
    if gpu_count < 1:
        raise RuntimeError("distributed: --device cuda but no GPU is visible on this host")
    if local_size > gpu_count:
        raise RuntimeError(f"distributed: {local_size} ranks on this host but {gpu_count} GPU(s) visible; "
                           f"start at most {gpu_count} ranks per host (mpirun -npernode {gpu_count})")
    if not 0 <= local_rank < local_size:
        raise ValueError(f"distributed: local rank {local_rank} is outside [0, {local_size})")
    return local_rank


def shard(rows, rank, size):
    """The row indices of a batch of `rows` that rank `rank` of `size` trains on (np.array_split)."""
    return np.array_split(np.arange(rows), size)[rank]


def bucket_layout(sizes, dtypes, bucket_bytes):
    """Group parameters (in order) into flat buckets of at most bucket_bytes each.

    sizes[i], dtypes[i]: element count and dtype of parameter i. Returns a list of buckets, each
    {"dtype", "numel", "params": [(i, offset, size), ...]}. A bucket closes when the next parameter
    would take it past bucket_bytes or has another dtype; a parameter larger than bucket_bytes
    gets a bucket of its own. Every element of every parameter is in exactly one bucket.
    """
    if bucket_bytes <= 0:
        raise ValueError(f"bucket_layout: bucket_bytes must be > 0, got {bucket_bytes}")
    buckets, current = [], None
    for i, (n, dt) in enumerate(zip(sizes, dtypes)):
        dt = np.dtype(dt)
        if current is None or current["dtype"] != dt or (current["numel"] + n) * dt.itemsize > bucket_bytes:
            if current is not None:
                buckets.append(current)
            current = {"dtype": dt, "numel": 0, "params": []}
        current["params"].append((i, current["numel"], int(n)))
        current["numel"] += int(n)
    if current is not None:
        buckets.append(current)
    return buckets


def _digest(value):
    h = hashlib.sha256()
    if isinstance(value, np.ndarray):
        h.update(str(value.dtype).encode() + str(value.shape).encode())
        h.update(np.ascontiguousarray(value).tobytes())
    else:
        h.update(json.dumps(value, sort_keys=True, default=str).encode())
    return h.hexdigest()


class World:
    """This process's place among the MPI ranks, and the collectives the trainer needs."""

    def __init__(self, comm=None, device="cpu"):
        from mpi4py import MPI
        self.MPI = MPI
        self.comm = comm if comm is not None else MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        node = self.comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)  # the ranks of this host
        self.local_rank, self.local_size = node.Get_rank(), node.Get_size()
        node.Free()
        self.is_root = self.rank == 0
        self.device = device
        # an uncaught exception on any rank ends the whole job with that rank's message; without
        # this the other ranks would wait in their next collective for ever
        sys.excepthook = self._excepthook
        if device == "cuda":
            import cupy
            cupy.cuda.Device(gpu_for_rank(self.local_rank, self.local_size,
                                          cupy.cuda.runtime.getDeviceCount())).use()

    def __repr__(self):
        return f"World(rank {self.rank} of {self.size}, local {self.local_rank} of {self.local_size})"

    # ---- failure ----------------------------------------------------------------------------
    def abort(self, code=1):
        """End every rank of the job now (MPI_Abort); the caller prints its message first."""
        sys.stdout.flush()
        sys.stderr.flush()
        self.comm.Abort(code)

    def abort_for(self, exc):
        """End every rank of the job for `exc`, raised on this rank: its one-line message and the
        exit status that cli.run_main gives one process for it (cli.status_of); a bug (no status)
        prints its traceback and exits 1."""
        from tinygrad_gpt.cli import EXIT_RUNTIME, status_of
        status = status_of(exc)
        if status is None:
            code, text = EXIT_RUNTIME, "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        else:
            code, text = status[0], status[1] + "\n"
        sys.stderr.write(f"rank {self.rank} of {self.size}: {text}")
        self.abort(code)

    def _excepthook(self, kind, value, tb):
        self.abort_for(value)

    # ---- agreement and broadcast --------------------------------------------------------------
    def check_same(self, **parts):
        """Raise ValueError on every rank unless all ranks hold equal `parts` (configs, data, tokenizer).

        Each part is hashed (arrays by dtype, shape and bytes); the message names the first rank
        and the parts that differ from rank 0.
        """
        mine = {name: _digest(value) for name, value in parts.items()}
        every = self.comm.allgather(mine)
        for rank, theirs in enumerate(every):
            differ = [name for name in mine if theirs.get(name) != every[0].get(name)]
            if differ:
                raise ValueError(f"distributed: rank {rank} of {self.size} differs from rank 0 in "
                                 f"{', '.join(differ)}; every rank must start with the same flags and data")

    def bcast(self, obj):
        """A picklable object from rank 0 to every rank."""
        return self.comm.bcast(obj, root=0)

    def broadcast_arrays(self, arrays):
        """Overwrite each array (numpy or cupy) in place with rank 0's copy."""
        for a in arrays:
            if isinstance(a, np.ndarray):
                self.comm.Bcast(a, root=0)
            else:  # a device array: through the host (at start and resume only, never per step)
                host = a.get()
                self.comm.Bcast(host, root=0)
                a.set(host)

    def sum_host(self, values):
        """Element-wise sum over ranks of a few host floats (float64)."""
        buf = np.asarray(values, dtype=np.float64)
        self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)
        return buf

    def barrier(self):
        self.comm.Barrier()

    def seed_dropout(self, generator, seed, step):
        """Reseed `generator` (a model's dropout stream) for optimizer step `step` of this rank.

        The seed is (seed, step, rank): ranks draw different masks for their slices of the batch,
        as one process draws different masks for different rows, and a run resumed at any step
        draws the masks the uninterrupted run drew, without saving N generator states.
        """
        generator.bit_generator.state = type(generator.bit_generator)(
            np.random.SeedSequence((seed, step, self.rank))).state

    def gradient_reducer(self, params, bucket_bytes, overlap=False):
        return GradAllreduce(params, self, bucket_bytes, overlap)


class _MpiAllreduce:
    """In-place SUM all-reduce of host buckets: blocking, or started (Iallreduce) and waited on."""

    def __init__(self, world):
        self.comm, self.MPI = world.comm, world.MPI

    def run(self, buf):
        self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)

    def start(self, buf):
        return self.comm.Iallreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)

    def progress(self, handles):
        # subtle: most MPI libraries advance a non-blocking collective only inside MPI calls; a
        # Testall from each backward hook keeps the started buckets moving
        if handles:
            self.MPI.Request.Testall(handles)

    def wait(self, handles):
        self.MPI.Request.Waitall(handles)


class _NcclAllreduce:
    """In-place SUM all-reduce of device buckets with NCCL, on a side stream of this rank's GPU.

    The NCCL id is made on rank 0 and broadcast over MPI. A bucket's all-reduce waits (an event)
    for the compute stream's work so far; `wait` makes the compute stream wait for the side stream,
    so nothing is synchronised with the host.
    """

    def __init__(self, world):
        import cupy
        from cupy.cuda import nccl
        self.cupy, self.nccl = cupy, nccl
        uid = nccl.get_unique_id() if world.is_root else None
        uid = world.bcast(uid)
        self.comm = nccl.NcclCommunicator(world.size, uid, world.rank)
        self.stream = cupy.cuda.Stream(non_blocking=True)
        self.types = {np.dtype(np.float32): nccl.NCCL_FLOAT32, np.dtype(np.float64): nccl.NCCL_FLOAT64,
                      np.dtype(np.float16): nccl.NCCL_FLOAT16}

    def start(self, buf):
        ready = self.cupy.cuda.Event(disable_timing=True)
        ready.record(self.cupy.cuda.get_current_stream())
        self.stream.wait_event(ready)
        self.comm.allReduce(buf.data.ptr, buf.data.ptr, buf.size, self.types[np.dtype(buf.dtype)],
                            self.nccl.NCCL_SUM, self.stream.ptr)
        return self.stream

    def run(self, buf):
        self.wait([self.start(buf)])

    def progress(self, handles):
        pass  # the GPU runs NCCL's kernels by itself

    def wait(self, handles):
        if handles:
            done = self.cupy.cuda.Event(disable_timing=True)
            done.record(self.stream)
            self.cupy.cuda.get_current_stream().wait_event(done)


class GradAllreduce:
    """Flat, preallocated gradient buckets in parameter order, all-reduced in place.

    After backward, `reduce()` copies each gradient into its bucket slice (zeros where a parameter
    got none), all-reduces every bucket (SUM: the trainer has already weighted each rank's loss by
    its share of the rows) and points each `p.grad` at its slice, so clipping and the optimizer read
    the reduced gradients. With `overlap`, call `arm()` before the last backward of a step: each
    parameter's hook copies its gradient as soon as it is final, and a bucket's non-blocking
    all-reduce starts when its last parameter arrives; `reduce()` then starts any remaining
    buckets and waits. Every rank runs the same backward, so buckets complete in the same order
    everywhere, as MPI requires of collectives.
    """

    def __init__(self, params, world, bucket_bytes, overlap=False):
        self.params = list(params)
        self.world, self.overlap = world, bool(overlap)
        xp = get_xp(world.device)
        self.layout = bucket_layout([p.data.size for p in self.params], [p.data.dtype for p in self.params],
                                    bucket_bytes)
        self.buffers = [xp.zeros(b["numel"], dtype=b["dtype"]) for b in self.layout]  # (n,) each
        self.where = {}  # parameter index -> (bucket index, offset, size)
        for k, b in enumerate(self.layout):
            for i, off, n in b["params"]:
                self.where[i] = (k, off, n)
        self.engine = _MpiAllreduce(world) if world.device == "cpu" else _NcclAllreduce(world)
        self._armed = False
        self._pending = [0] * len(self.layout)   # parameters still to arrive, per bucket
        self._handles = {}                       # bucket index -> request of its started all-reduce
        self.skip = False                        # True: reduce() leaves gradients local (test control)
        if self.overlap:
            for i, p in enumerate(self.params):
                p._grad_hook = self._make_hook(i)

    def _make_hook(self, i):
        def hook(tensor):
            if self._armed:
                self._arrive(i)
        return hook

    def _copy_in(self, i):
        k, off, n = self.where[i]
        g = self.params[i].grad
        if g is None:
            self.buffers[k][off:off + n] = 0
        else:
            self.buffers[k][off:off + n] = g.reshape(-1)

    def _arrive(self, i):
        self._copy_in(i)
        k = self.where[i][0]
        self._pending[k] -= 1
        if self._pending[k] == 0:
            self._handles[k] = self.engine.start(self.buffers[k])
        self.engine.progress(list(self._handles.values()))

    def arm(self):
        """Before the last backward of a step: let the hooks start buckets as gradients finish."""
        self._pending = [len(b["params"]) for b in self.layout]
        self._handles = {}
        self._armed = self.overlap

    def reduce(self):
        """All-reduce every gradient bucket in place and point each p.grad at its reduced slice."""
        if self.skip:
            self._armed = False
            return
        if not self._armed:  # no overlap: copy everything in, then one blocking all-reduce per bucket
            for i in range(len(self.params)):
                self._copy_in(i)
            for buf in self.buffers:
                self.engine.run(buf)
        else:
            for k, b in enumerate(self.layout):
                if k not in self._handles:   # a bucket whose parameters never reached a hook
                    for i, _, _ in b["params"]:
                        self._copy_in(i)
                    self._handles[k] = self.engine.start(self.buffers[k])
            self.engine.wait([self._handles[k] for k in sorted(self._handles)])
            self._armed = False
        for i, p in enumerate(self.params):
            k, off, n = self.where[i]
            p.grad = self.buffers[k][off:off + n].reshape(p.data.shape)
