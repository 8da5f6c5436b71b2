"""Tiny Shakespeare: find (or download) the text, split it 90/10, and cut it into (x, y) batches.

Dimensions: B = batch size (rows), T = block size (tokens per row). Every batch is a pair of int64
arrays `x, y` of shape (B, T) with `y[b, t] == data[start_b + t + 1]`: y is x shifted left by one.

Follows nanoGPT (`data/shakespeare_char/prepare.py`: the char-rnn text, first 90% train, last 10%
val; `train.py`'s `get_batch`: random starts) and Karpathy's char-rnn for the file itself. Two
epoch definitions are offered on top of nanoGPT's "sample with replacement":
  - `epoch_batches`: one pass in non-overlapping windows of T tokens, shuffled;
  - `all_start_batches`: every start position once, shuffled (the "original" preset's epoch:
    1,003,822 starts in the train split = 15,685 batches of 64 at T = 32, last one partial).
Both are resumable bit-for-bit: the shuffle is drawn once from the generator when the object is
made, and `start_batch=k` skips the first k batches of that same order.

Resolution order of `find_data`, the one way every script and test finds the text: the `path`
argument (the `--data PATH` flag), then the environment variable TINYSHAKESPEARE, then the cache
file (`~/.cache/tinygrad_gpt/tinyshakespeare.txt`; the directory can be moved with
TINYGRAD_GPT_CACHE or `cache_dir=`), then a download into that cache (never in the tests).

Deliberately does not: tokenize (see tinygrad_gpt/tokenizers), move batches to a device, memory-map
token files, retry downloads, or accept a downloaded file whose size or SHA-256 differs from the
known char-rnn file (a proxy's HTML error page must not be cached as "Shakespeare").
"""
import hashlib
import math
import operator
import os
import pathlib
import sys
import urllib.error
import urllib.request

import numpy as np

from tinygrad_gpt.checkpoint import write_atomic

DATA_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
DATA_FILENAME = "tinyshakespeare.txt"
# the char-rnn input.txt: 1,115,394 bytes (all ASCII, so also 1,115,394 characters), 65 distinct
EXPECTED_BYTES = 1_115_394
EXPECTED_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
DOWNLOAD_TIMEOUT_S = 30.0

ENV_DATA = "TINYSHAKESPEARE"       # a path to the text file
ENV_CACHE = "TINYGRAD_GPT_CACHE"   # a directory holding tinyshakespeare.txt

OFFLINE_HINT = (f"point at a local copy instead: pass --data PATH (path= in Python) or set "
                f"{ENV_DATA}=PATH; the file is {DATA_URL}")


# ---------------------------------------------------------------------------------------------
# finding and reading the text
# ---------------------------------------------------------------------------------------------

def default_cache_dir():
    """The cache directory: $TINYGRAD_GPT_CACHE if set, else ~/.cache/tinygrad_gpt."""
    env = os.environ.get(ENV_CACHE)
    if env:
        return pathlib.Path(env).expanduser()
    return pathlib.Path.home() / ".cache" / "tinygrad_gpt"


class DataNotFound(FileNotFoundError):
    """The text is nowhere to be found: a path that does not exist, or no cache and no download.
    A usage error (the scripts exit 2): the message says how to point at a local copy."""


def _existing_file(path, source):
    """Return `path` as a Path if it is a regular file; else raise DataNotFound naming `source`."""
    path = pathlib.Path(path).expanduser()
    if not path.is_file():
        if path.is_dir():
            what = "is a directory, not a file"
        elif path.exists():
            what = "is not a regular file (a device or a pipe)"
        else:
            what = "does not exist"
        raise DataNotFound(f"tiny Shakespeare file from {source}: {str(path)!r} {what}; {OFFLINE_HINT}")
    return path


def find_data(path=None, cache_dir=None, download_missing=True):
    """Return the path of the tiny Shakespeare text, downloading it into the cache if need be.

    The one order every script and test follows: `path` (the `--data PATH` flag), then
    $TINYSHAKESPEARE, then the cache file, then (with `download_missing`) a download into the cache.
    cache_dir: where the cached copy lives (default: see `default_cache_dir`).
    Raises DataNotFound (a FileNotFoundError) for a given path (flag or env var) that is not a file,
    and when the cache is empty and no download was allowed or it failed (no network, wrong content).
    """
    if path is not None:
        return _existing_file(path, "--data (the path argument)")
    env = os.environ.get(ENV_DATA)
    if env:
        return _existing_file(env, f"the environment variable {ENV_DATA}")
    cache_dir = pathlib.Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    cached = cache_dir / DATA_FILENAME
    if cached.is_file():
        return cached
    if not download_missing:
        raise DataNotFound(f"tiny Shakespeare: no --data, no ${ENV_DATA} and no cached copy at {cached}; "
                           f"{OFFLINE_HINT}")
    try:
        download(cached)
    except RuntimeError as exc:
        raise DataNotFound(str(exc)) from exc
    return cached


def download(dest, url=DATA_URL, timeout=DOWNLOAD_TIMEOUT_S):
    """Download `url` to `dest` atomically (temp file in the same directory, fsync, os.replace).

    The content is checked against EXPECTED_BYTES / EXPECTED_SHA256 before it is moved into place,
    so `dest` is either absent or the right file. Raises RuntimeError saying how to work offline.
    """
    dest = pathlib.Path(dest)
    print(f"downloading tiny Shakespeare from {url} to {dest}", file=sys.stderr)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            payload = response.read()
    except (urllib.error.URLError, OSError, ValueError) as exc:  # URLError, timeouts, bad URL
        raise RuntimeError(f"could not download tiny Shakespeare from {url} ({exc}); "
                           f"{OFFLINE_HINT}") from exc
    digest = hashlib.sha256(payload).hexdigest()
    if len(payload) != EXPECTED_BYTES or digest != EXPECTED_SHA256:
        raise RuntimeError(f"downloaded {url} but got {len(payload)} bytes with SHA-256 {digest}, "
                           f"expected {EXPECTED_BYTES} bytes with SHA-256 {EXPECTED_SHA256}; "
                           f"nothing was cached; {OFFLINE_HINT}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(dest, lambda tmp: pathlib.Path(tmp).write_bytes(payload))
    return dest


def load_text(path):
    """Read `path` as UTF-8 and return the text; a decode error names the file, byte offset and line."""
    path = pathlib.Path(path)
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ValueError(f"{str(path)!r} is not valid UTF-8: {exc.reason} at byte offset {exc.start} "
                         f"(line {line}, byte {raw[exc.start:exc.start + 1]!r})") from exc


# ---------------------------------------------------------------------------------------------
# argument checks shared by the batchers
# ---------------------------------------------------------------------------------------------

def _positive_int(value, name):
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a positive integer, got the bool {value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be a positive integer, got {value!r} "
                        f"of type {type(value).__name__}") from None
    if value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value}")
    return value


def _token_array(data, name="data"):
    if not isinstance(data, np.ndarray):
        raise TypeError(f"{name} must be a 1-D numpy array of token ids, got {type(data).__name__}")
    if data.ndim != 1 or data.dtype.kind not in "iu":
        raise ValueError(f"{name} must be a 1-D integer array of token ids, "
                         f"got shape {data.shape} and dtype {data.dtype}")
    return data


def _check_block(data, block_size):
    # a row needs T + 1 tokens: T for x and one more for the last target of y
    if len(data) < block_size + 1:
        raise ValueError(f"block_size={block_size} needs at least {block_size + 1} tokens "
                         f"(block_size + 1 for the shifted targets), but data has {len(data)}")


def _generator(rng):
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(rng)
    raise TypeError(f"rng must be a numpy Generator (np.random.default_rng(seed)) or an int seed, "
                    f"got {type(rng).__name__}")


def _rows(data, starts, block_size):
    """Gather x = data[s : s+T] and y = data[s+1 : s+T+1] for each start s, as int64."""
    offsets = np.arange(block_size)                                   # (T,)
    index = starts[:, None] + offsets[None, :]                        # (B, T)
    x = data[index].astype(np.int64, copy=False)                      # (B, T)
    y = data[index + 1].astype(np.int64, copy=False)                  # (B, T)
    return x, y


# ---------------------------------------------------------------------------------------------
# splitting and batching
# ---------------------------------------------------------------------------------------------

def split_train_val(data, val_fraction=0.1):
    """Split `data` into (train, val): the first (1 - val_fraction) of it, then the rest.

    Returns views, not copies. Train length is floor(len * (1 - val_fraction)) as in nanoGPT:
    1,115,394 characters give 1,003,854 train and 111,540 val.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    n = len(data)
    # subtle: round away float noise first, so e.g. 10 * (1 - 0.3) = 6.999999999999999 gives 7
    n_train = math.floor(round(n * (1.0 - val_fraction), 9))
    if n_train < 1:
        raise ValueError(f"split_train_val: {n} tokens with val_fraction={val_fraction} "
                         f"leave an empty train split")
    return data[:n_train], data[n_train:]


def get_batch(data, batch_size, block_size, rng):
    """Sample `batch_size` rows at uniformly random starts (with replacement), nanoGPT style.

    data: 1-D integer array of token ids, length N >= block_size + 1.
    Returns int64 arrays x, y of shape (B, T); starts are drawn from [0, N - T], all N - T of them.
    """
    data = _token_array(data)
    batch_size = _positive_int(batch_size, "batch_size")
    block_size = _positive_int(block_size, "block_size")
    _check_block(data, block_size)
    rng = _generator(rng)
    starts = rng.integers(0, len(data) - block_size, size=batch_size)  # (B,)
    return _rows(data, starts, block_size)


def split_windows(data, block_size):
    """Every non-overlapping window of a split, in order: (x, y), each (n, T) int64, n = (N - 1) // T.

    Row i is x = data[iT : iT + T], y = data[iT + 1 : iT + T + 1]: each token but the first is a
    target once, with up to T - 1 tokens of context (as in training). The whole-split loss is the
    mean loss over these rows (train.split_loss; the PyTorch peer of benchmarks/speedrun.py).
    """
    data = _token_array(data)
    block_size = _positive_int(block_size, "block_size")
    _check_block(data, block_size)
    n = (len(data) - 1) // block_size
    return _rows(data, np.arange(n) * block_size, block_size)       # (n, T), (n, T)


class ShuffledBatches:
    """One shuffled pass over a fixed set of row starts, in batches; resumable at any batch.

    The shuffle is `rng.permutation(len(starts))`, drawn once in __init__, so two objects built
    from generators in the same state give the same batches. `rng_state` holds the generator's
    state from just before that draw: restore it (checkpoint.restore_rng) and pass
    `start_batch=k` to continue an interrupted epoch bit-for-bit.

    len() is the number of batches in the whole epoch (k skipped ones included), so
    `tqdm(batches, total=len(batches), initial=batches.start_batch)` is right on resume;
    `remaining` is what iteration will yield.

    The last batch holds the leftover rows when the count is not a multiple of batch_size; with
    drop_last=True it is dropped instead (every batch then has exactly batch_size rows).
    """

    def __init__(self, data, starts, batch_size, block_size, rng, start_batch=0, drop_last=False):
        self.data = data
        self.batch_size = batch_size
        self.block_size = block_size
        rng = _generator(rng)
        self.rng_state = rng.bit_generator.state                      # a fresh dict, JSON-able
        self.order = starts[rng.permutation(len(starts))]              # (num_rows,)
        rows = len(starts)
        self.drop_last = bool(drop_last)
        self.num_batches = rows // batch_size if drop_last else -(-rows // batch_size)
        if self.num_batches == 0:
            raise ValueError(f"batch_size={batch_size} is larger than the {rows} rows of this epoch "
                             f"(block_size={block_size}, {len(data)} tokens) and drop_last=True "
                             f"leaves no batch")
        if isinstance(start_batch, bool) or not isinstance(start_batch, (int, np.integer)):
            raise TypeError(f"start_batch must be an int, got {start_batch!r}")
        start_batch = int(start_batch)
        if not 0 <= start_batch <= self.num_batches:
            raise ValueError(f"start_batch must be in [0, {self.num_batches}] (batches in this "
                             f"epoch), got {start_batch}")
        self.start_batch = start_batch

    def __len__(self):
        return self.num_batches

    @property
    def remaining(self):
        """How many batches iteration yields: len(self) - start_batch."""
        return self.num_batches - self.start_batch

    def batch(self, i):
        """Batch number i of the epoch (0-based), as int64 arrays x, y of shape (B, T)."""
        if not 0 <= i < self.num_batches:
            raise IndexError(f"batch index must be in [0, {self.num_batches}), got {i}")
        starts = self.order[i * self.batch_size:(i + 1) * self.batch_size]  # (B,)
        return _rows(self.data, starts, self.block_size)

    def __iter__(self):
        for i in range(self.start_batch, self.num_batches):
            yield self.batch(i)


def _epoch_args(data, batch_size, block_size):
    data = _token_array(data)
    batch_size = _positive_int(batch_size, "batch_size")
    block_size = _positive_int(block_size, "block_size")
    _check_block(data, block_size)
    return data, batch_size, block_size


def epoch_batches(data, batch_size, block_size, rng, start_batch=0, drop_last=False):
    """One epoch = every non-overlapping window once, shuffled, in batches of batch_size.

    Windows start at 0, T, 2T, ...: there are (N - 1) // T of them (each needs T + 1 tokens), so
    the last (N - 1) % T tokens are never the start of an x row; windows do not move between epochs.
    Example: N = 11, T = 2 gives windows at 0, 2, 4, 6, 8; batch_size 2 gives 3 batches (2, 2, 1).
    """
    data, batch_size, block_size = _epoch_args(data, batch_size, block_size)
    starts = np.arange((len(data) - 1) // block_size) * block_size    # (num_windows,)
    return ShuffledBatches(data, starts, batch_size, block_size, rng, start_batch, drop_last)


def all_start_batches(data, batch_size, block_size, rng, start_batch=0, drop_last=False):
    """One epoch = every start position 0 .. N - T - 1 exactly once, shuffled, in batches.

    N - T rows, so ceil((N - T) / B) batches (the last one partial) or floor with drop_last.
    Tiny Shakespeare's train split: N = 1,003,854, T = 32 gives 1,003,822 rows; at B = 64 that is
    15,684.7, so ceil = 15,685 batches (the default) and floor = 15,684 (drop_last=True).
    """
    data, batch_size, block_size = _epoch_args(data, batch_size, block_size)
    starts = np.arange(len(data) - block_size)                        # (N - T,)
    return ShuffledBatches(data, starts, batch_size, block_size, rng, start_batch, drop_last)
