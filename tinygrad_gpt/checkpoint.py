"""Checkpoints: weights in safetensors, everything else in JSON, written so a crash cannot corrupt them.

A checkpoint is a directory holding
    checkpoint.json                 the commit record: names the files below, holds `meta`
    model-00000007.safetensors      the state dict (GPT-2 names: wte.weight, h.0.ln_1.weight, ...)
    optimizer-00000007.safetensors  the optimizer's arrays, if it has any
    <role>-00000007.safetensors     other weights saved beside the model, one file per role
                                    (e.g. value_head, an RLHF policy's value head), if any
where 7 is the save's generation number (one more than the highest in the directory).

Crash safety (the choice, and why): every file is written to a temp file in the same directory,
flushed, fsync'ed and `os.replace`d into place, then the directory is fsync'ed. Weight files get
*new* names each save, and checkpoint.json is replaced *last*; it is the single atomic commit point.
  - crash before the JSON is replaced: the old JSON still names the old weight files, which are
    untouched; the new files are orphans, deleted by the next successful save;
  - crash after: the new JSON names the new files, which are already complete on disk.
Overwriting a fixed `model.safetensors` instead would leave a window where new weights sit beside
an old JSON (a torn checkpoint); renaming a whole directory over another is not atomic on POSIX
when the target exists. The JSON records each file's size and SHA-256, checked on load, so a
truncated or bit-flipped weight file is reported instead of silently loaded; it records the
SHA-256 of `meta` as well, since an edited model_config (say n_head) would load the weights wrongly.
A file name in checkpoint.json is a plain name inside the directory (`file_in_directory`, which
the Hugging Face loader uses for its shard index too): a JSON that names `../other/x.safetensors`
or `/etc/passwd` is refused before anything is opened. Weights are finite: a NaN or inf in a
saved or loaded array is refused, naming the tensor.

One run writes into a directory at a time: `lock_directory` takes an exclusive lock (fcntl.flock
on DIR/.lock, released by the kernel when the process dies) and a second writer is refused,
naming the process that holds it. The scripts take it before their first write; save_checkpoint
itself does not, so a library caller may save wherever it likes.

`meta` is free-form JSON (config, tokenizer.to_dict(), step, epoch, batch index, RNG state...):
Python's json keeps ints of any size exactly, so a numpy Generator's 128-bit state survives (see
`rng_state` / `restore_rng`). NumPy scalars in meta are stored as Python numbers; arrays belong in
the state dict or the optimizer state. The optimizer state is any nest of dicts/lists whose array
leaves go to optimizer-*.safetensors (under their JSON-Pointer path, e.g. "arrays/m.0" for AdamW's
first moment of parameter 0) while the rest (step counts, hyper-parameters) stays in the JSON.

Follows the safetensors format (https://github.com/huggingface/safetensors) so the weights open in
other tools, and the write-temp-fsync-rename pattern for atomic files.

Deliberately does not: lock on systems without fcntl (Windows), keep more than the latest
checkpoint (use one directory per checkpoint to keep several), rename parameters (real GPT-2
weights already use our names), or handle cupy arrays (call .get() first).
safetensors is imported lazily, so only code that saves or loads needs it.
"""
import hashlib
import json
import os
import pathlib
import re
import tempfile

import numpy as np

try:
    import fcntl
except ImportError:  # Windows: lock_directory locks nothing
    fcntl = None

FORMAT = "tinygrad_gpt.checkpoint"
VERSION = 1
JSON_NAME = "checkpoint.json"
_VERSIONED = re.compile(r"^([a-z][a-z_]*)-(\d{8,})\.safetensors$")
_ROLE = re.compile(r"^[a-z][a-z_]*$")
_TMP_PREFIX = ".ckpt-tmp-"
_ARRAY_KEY = "__safetensors__"  # placeholder in the optimizer JSON: {"__safetensors__": "arrays/m.0"}


class CheckpointError(ValueError):
    """A checkpoint file exists but its content is not what it should be (corrupt, torn, wrong format)."""


def file_in_directory(directory, name, source, error=CheckpointError, links_may_leave=False):
    """The path of the file `name` inside `directory`, where `name` was read from the file `source`.

    `name` must be a plain file name: a non-empty string with no path separator and no NUL, not
    "." or "..", so absolute paths and `../` cannot lead out of the directory. A symlink of that
    name must resolve inside the directory too, unless links_may_leave (a Hugging Face cache
    snapshot stores every file as a link to ../../blobs/). Raises `error` naming `source`;
    nothing is opened or stat'ed first, so a refused name reveals nothing about its target.
    """
    directory = pathlib.Path(directory)
    if (not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\\" in name
            or "\0" in name):
        raise error(f"{str(source)!r} names the file {name!r}; a name there must be a plain file name "
                    f"inside {str(directory)!r} (no '/', no '..', not an absolute path)")
    path = directory / name
    if not links_may_leave and path.is_symlink():
        target, home = path.resolve(), directory.resolve()
        if home not in target.parents:
            raise error(f"{str(source)!r} names {name!r}, a symlink that leads out of {str(directory)!r}")
    return path


def check_finite(name, array, source, error=CheckpointError):
    """Raise `error` unless the float array `array` holds only finite values (ints pass).

    `name` is the tensor's name, `source` the file it came from (or goes to), both in the message.
    """
    if array.dtype.kind == "f" and array.size and not np.isfinite(array).all():
        flat = array.reshape(-1)
        bad = int(np.flatnonzero(~np.isfinite(flat))[0])
        count = int(np.count_nonzero(~np.isfinite(flat)))
        raise error(f"{source}: tensor {name!r} holds {count} non-finite value(s) (the first, "
                              f"{flat[bad]!r}, at flat index {bad}): weights must be finite numbers")


def safetensors_numpy():
    try:
        import safetensors.numpy
    except ImportError as exc:
        raise ImportError("checkpoints need the safetensors package, which is not installed: "
                          "pip install safetensors (or pip install -e \".[checkpoint]\")") from exc
    return safetensors.numpy


# ---------------------------------------------------------------------------------------------
# RNG state helpers
# ---------------------------------------------------------------------------------------------

def rng_state(rng):
    """The JSON-able state of a numpy Generator (a dict; its ints may exceed 2**64)."""
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng_state: rng must be a numpy Generator, got {type(rng).__name__}")
    return rng.bit_generator.state


def restore_rng(state):
    """A new numpy Generator in `state` (as returned by `rng_state`, possibly via JSON)."""
    if not isinstance(state, dict) or "bit_generator" not in state:
        raise ValueError(f"restore_rng: expected a dict with a 'bit_generator' key, got {state!r:.200}")
    name = state["bit_generator"]
    bit_generator_class = getattr(np.random, str(name), None)
    if not (isinstance(bit_generator_class, type)
            and issubclass(bit_generator_class, np.random.BitGenerator)):
        raise ValueError(f"restore_rng: unknown bit_generator {name!r} (expected e.g. 'PCG64')")
    bit_generator = bit_generator_class()
    bit_generator.state = state
    return np.random.Generator(bit_generator)


# ---------------------------------------------------------------------------------------------
# atomic file writing
# ---------------------------------------------------------------------------------------------

def _fsync_dir(directory):
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open directories; rename durability is then the OS's
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _file_mode():
    """The mode a plain open() would give a new file: 0o666 less the umask (mkstemp makes 0o600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_atomic(path, write):
    """Call write(tmp_path) on a temp file next to `path`, fsync it, os.replace it onto `path`.

    The one atomic writer of the package (checkpoints, tokenizer files, metrics rewrites): the
    destination is either the old file or the complete new one, the temp file never outlives the
    call, and the file gets the umask's mode like any other file the program writes.
    """
    path = pathlib.Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{str(path)!r} is a directory; expected a file path to write")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot write {str(path)!r}: the directory {str(path.parent)!r} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, suffix="-" + path.name, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, _file_mode())  # after write: a writer may replace the file it was given
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def check_writable(directory, what="directory"):
    """Raise ValueError naming `what` unless `directory` is, or could be made, a writable directory.

    For scripts, before any training: a path that is a file, or a read-only place, is reported
    now instead of at the first checkpoint. Creates nothing.
    """
    directory = pathlib.Path(directory).absolute()
    probe = directory
    while not probe.exists():  # the nearest existing ancestor decides whether mkdir can succeed
        probe = probe.parent
    if not probe.is_dir():
        where = "" if probe == directory else f" (its ancestor {str(probe)!r} is a file)"
        raise ValueError(f"{what} {str(directory)!r} is not a directory{where}")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {str(directory)!r} is not writable ({str(probe)!r} is read-only)")


LOCK_NAME = ".lock"


class DirectoryInUse(ValueError):
    """Another live process holds the lock of the directory a run was asked to write into."""


class DirectoryLock:
    """An exclusive lock on a run directory, for as long as the run writes there (`lock_directory`).

    fcntl.flock on DIR/.lock, held through one open file: released by `release()` (or leaving the
    `with` block) and by the kernel when the process dies however it dies, so a crashed run never
    leaves a stale lock. While held, the file holds the holder's pid, for the message a second
    writer gets; it stays in the directory afterwards, emptied (an unlocked .lock file is no lock).
    """

    def __init__(self, directory, what="--out"):
        self.directory = pathlib.Path(directory)
        path = self.directory / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT, _file_mode())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # BlockingIOError: another open file holds it
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise DirectoryInUse(f"{what} {str(self.directory)!r} is in use: another run (pid {holder}) is "
                                 f"writing there; wait for it to end or choose another {what}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        self._fd = fd

    def release(self):
        if self._fd is not None:
            os.ftruncate(self._fd, 0)  # no pid once the run is over
            os.close(self._fd)  # closing the only descriptor drops the flock
            self._fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


class _NoLock:
    """What lock_directory gives where fcntl does not exist (Windows): nothing is locked."""

    def release(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


def lock_directory(directory, what="--out"):
    """Lock `directory` (created if missing) for this process's writes: a DirectoryLock, usable in `with`.

    Raises DirectoryInUse (a ValueError: a usage error for the scripts) naming `what`, the
    directory and the pid of the process that holds it.
    """
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    return _NoLock() if fcntl is None else DirectoryLock(directory, what)


def remove_checkpoint(directory):
    """Delete the checkpoint in `directory` (checkpoint.json first, then its weight and temp files).

    For a run that starts afresh in a directory that held another (--overwrite): once the JSON is
    gone nothing names the weight files, so a crash halfway leaves no checkpoint rather than a torn one.
    """
    directory = pathlib.Path(directory)
    json_path = directory / JSON_NAME
    if json_path.exists():
        json_path.unlink()
        _fsync_dir(directory)
    _remove_stale(directory, keep=set())


def file_sha256(path):
    """The SHA-256 (hex) of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# converting what we are given into what the files can hold
# ---------------------------------------------------------------------------------------------

def _tensor(value, where):
    """A C-contiguous, native-byte-order numpy array that safetensors can store, or an error."""
    if not isinstance(value, np.ndarray):
        hint = " (cupy arrays: call .get() first)" if hasattr(value, "get") and hasattr(value, "shape") else ""
        raise TypeError(f"save_checkpoint: {where} must be a numpy array, got {type(value).__name__}{hint}")
    if value.dtype.kind not in "biuf":
        raise TypeError(f"save_checkpoint: {where} has dtype {value.dtype}; safetensors stores "
                        f"bool, int, uint and float arrays")
    if not value.dtype.isnative:
        value = value.astype(value.dtype.newbyteorder("="))
    check_finite(where, value, "save_checkpoint", error=ValueError)  # a NaN model is no checkpoint
    return np.ascontiguousarray(value)


def _json_value(value, where):
    """Make meta JSON-able: numpy scalars -> Python numbers, tuples -> lists; reject the rest."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"save_checkpoint: {where} has a key {k!r} of type {type(k).__name__}; "
                                f"JSON keys must be str")
            out[k] = _json_value(v, f"{where}[{k!r}]")
        return out
    if isinstance(value, (list, tuple)):
        return [_json_value(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.ndarray):
        raise TypeError(f"save_checkpoint: {where} is a numpy array of shape {value.shape}; meta must "
                        f"be plain JSON (put arrays in state_dict or optimizer_state)")
    raise TypeError(f"save_checkpoint: {where} has type {type(value).__name__}, which JSON cannot store")


def _pointer_token(key):
    return key.replace("~", "~0").replace("/", "~1")  # RFC 6901, so distinct paths never collide


def _split_arrays(value, path, arrays, where):
    """Replace each array leaf of a dict/list nest by a placeholder; collect the arrays by path."""
    if isinstance(value, np.ndarray):
        name = path or "/"
        arrays[name] = _tensor(value, f"{where} at {name!r}")
        return {_ARRAY_KEY: name}
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"save_checkpoint: optimizer_state key {k!r} at {path or '/'!r} "
                                f"must be a str, got {type(k).__name__}")
            if k == _ARRAY_KEY:
                raise ValueError(f"save_checkpoint: optimizer_state may not use the reserved key {k!r}")
            out[k] = _split_arrays(v, f"{path}/{_pointer_token(k)}" if path else _pointer_token(k),
                                   arrays, where)
        return out
    if isinstance(value, (list, tuple)):
        return [_split_arrays(v, f"{path}/{i}" if path else str(i), arrays, where)
                for i, v in enumerate(value)]
    return _json_value(value, f"{where} at {path or '/'!r}")


def _join_arrays(value, arrays, source):
    """Inverse of _split_arrays: put the arrays back where the placeholders are."""
    if isinstance(value, dict):
        if set(value) == {_ARRAY_KEY}:
            name = value[_ARRAY_KEY]
            if name not in arrays:
                raise CheckpointError(f"{source}: the optimizer state names array {name!r}, which is "
                                      f"not in its safetensors file")
            return arrays[name]
        return {k: _join_arrays(v, arrays, source) for k, v in value.items()}
    if isinstance(value, list):
        return [_join_arrays(v, arrays, source) for v in value]
    return value


# ---------------------------------------------------------------------------------------------
# save / load
# ---------------------------------------------------------------------------------------------

def _next_generation(directory):
    highest = 0
    for entry in os.listdir(directory):
        match = _VERSIONED.match(entry)
        if match:
            highest = max(highest, int(match.group(2)))
    return highest + 1


def _remove_stale(directory, keep):
    """Delete versioned weight files not in `keep` and our leftover temp files; best effort."""
    for entry in os.listdir(directory):
        if (_VERSIONED.match(entry) and entry not in keep) or entry.startswith(_TMP_PREFIX):
            try:
                os.unlink(os.path.join(directory, entry))
            except OSError:
                pass


class CheckpointWriteError(OSError):
    """Saving failed (disk full, I/O error); the checkpoint previously in the directory is intact."""


def _meta_sha256(meta_json):
    return hashlib.sha256(json.dumps(meta_json, sort_keys=True).encode("utf-8")).hexdigest()


def save_checkpoint(directory, state_dict, meta, optimizer_state=None, tensors=None):
    """Save a checkpoint into `directory` (created if missing), replacing the one there atomically.

    state_dict: {name: numpy array}, e.g. the model's parameters.
    meta: JSON-able dict (config, tokenizer, step, epoch, batch index, rng state, ...); its SHA-256
        is recorded too, so a hand-edited meta is reported on load.
    optimizer_state: optional nest of dicts/lists; its numpy arrays go to a safetensors file.
    tensors: optional {role: {name: numpy array}} for other weights saved beside the model (e.g.
        an RLHF value head), each role in its own file; read back with `load_tensors`.
    Returns the path of checkpoint.json. Raises CheckpointWriteError if the disk fails; the files of
    this save are then removed and the previous checkpoint is kept.
    """
    st = safetensors_numpy()
    if not isinstance(state_dict, dict):
        raise TypeError(f"save_checkpoint: state_dict must be a dict of name -> numpy array, "
                        f"got {type(state_dict).__name__}")
    if not isinstance(meta, dict):
        raise TypeError(f"save_checkpoint: meta must be a dict, got {type(meta).__name__}")
    model_tensors = {}
    for name, value in state_dict.items():
        if not isinstance(name, str):
            raise TypeError(f"save_checkpoint: state_dict key {name!r} must be a str")
        model_tensors[name] = _tensor(value, f"state_dict[{name!r}]")
    extra = {}
    for role, arrays in (tensors or {}).items():
        if not isinstance(role, str) or not _ROLE.match(role) or role in ("model", "optimizer"):
            raise ValueError(f"save_checkpoint: tensors role {role!r} must be lowercase letters and '_', "
                             f"and not 'model' or 'optimizer'")
        if not isinstance(arrays, dict):
            raise TypeError(f"save_checkpoint: tensors[{role!r}] must be a dict of name -> numpy array")
        extra[role] = {name: _tensor(value, f"tensors[{role!r}][{name!r}]") for name, value in arrays.items()}
    meta_json = _json_value(meta, "meta")
    optimizer_arrays = {}
    optimizer_json = None
    if optimizer_state is not None:
        optimizer_json = _split_arrays(optimizer_state, "", optimizer_arrays, "optimizer_state")

    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    generation = _next_generation(directory)
    to_write = {"model": model_tensors}
    if optimizer_arrays:
        to_write["optimizer"] = optimizer_arrays
    to_write.update(extra)
    files = {role: f"{role}-{generation:08d}.safetensors" for role in to_write}

    # 1. the weight files, under names no committed JSON refers to
    records = {}
    try:
        for role, arrays in to_write.items():
            path = directory / files[role]
            write_atomic(path, lambda tmp, arrays=arrays: st.save_file(arrays, tmp, metadata={"format": "np"}))
            records[role] = {"file": files[role], "bytes": path.stat().st_size, "sha256": file_sha256(path)}
        _fsync_dir(directory)

        # 2. the commit: checkpoint.json, replaced last
        record = {"format": FORMAT, "version": VERSION, "generation": generation, "files": records,
                  "optimizer": optimizer_json, "meta": meta_json, "meta_sha256": _meta_sha256(meta_json)}
        text = json.dumps(record, indent=1)
        write_atomic(directory / JSON_NAME, lambda tmp: pathlib.Path(tmp).write_text(text, encoding="utf-8"))
        _fsync_dir(directory)
    except Exception as exc:  # safetensors reports a full disk as its own SafetensorError, not OSError
        for name in files.values():  # this save's files: no committed JSON names them
            try:
                os.unlink(directory / name)
            except OSError:
                pass
        raise CheckpointWriteError(f"saving the checkpoint in {str(directory)!r} failed ({exc}); the "
                                   f"checkpoint that was there is kept") from exc

    # 3. now nothing refers to older weight files
    _remove_stale(directory, keep={r["file"] for r in records.values()})
    return directory / JSON_NAME


def _read_record(directory):
    path = pathlib.Path(directory) / JSON_NAME
    if not path.is_file():
        raise FileNotFoundError(f"load_checkpoint: no checkpoint at {str(directory)!r}: "
                                f"{str(path)!r} does not exist")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{str(path)!r} is corrupt, not valid JSON: {exc}") from exc
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} is not a tinygrad_gpt checkpoint "
                              f"(expected \"format\": {FORMAT!r})")
    if record.get("version") != VERSION:
        raise CheckpointError(f"{str(path)!r} has checkpoint version {record.get('version')!r}; "
                              f"this code reads version {VERSION}")
    for key in ("files", "meta"):
        if key not in record:
            raise CheckpointError(f"{str(path)!r} lacks the key {key!r}")
    if not isinstance(record["files"], dict) or "model" not in record["files"]:
        raise CheckpointError(f"{str(path)!r}: 'files' must name the 'model' weights")
    if not isinstance(record["meta"], dict):
        raise CheckpointError(f"{str(path)!r}: 'meta' must be an object")
    if "meta_sha256" in record and record["meta_sha256"] != _meta_sha256(record["meta"]):
        raise CheckpointError(f"{str(path)!r}: 'meta' does not match its recorded SHA-256 'meta_sha256': it was "
                              f"edited or is corrupt (a changed model_config would load the weights wrongly)")
    return path, record


def _load_tensors(directory, json_path, entry, verify):
    st = safetensors_numpy()
    try:
        name = entry["file"]
    except (TypeError, KeyError):
        raise CheckpointError(f"{str(json_path)!r}: a 'files' entry lacks 'file': {entry!r}") from None
    path = file_in_directory(directory, name, json_path)
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} does not exist, but {str(json_path)!r} refers to it")
    if verify:
        size = path.stat().st_size
        if "bytes" in entry and size != entry["bytes"]:
            raise CheckpointError(f"{str(path)!r} has {size} bytes, but {str(json_path)!r} "
                                  f"recorded {entry['bytes']}: the file is truncated or was replaced")
        if "sha256" in entry and file_sha256(path) != entry["sha256"]:
            raise CheckpointError(f"{str(path)!r} does not match the SHA-256 recorded in "
                                  f"{str(json_path)!r}: the file is corrupt")
    try:
        arrays = st.load_file(str(path))
    except Exception as exc:  # safetensors raises its own SafetensorError, not an OSError
        raise CheckpointError(f"{str(path)!r} is not a readable safetensors file: {exc}") from exc
    for tensor_name, array in arrays.items():
        check_finite(tensor_name, array, repr(str(path)))
    return arrays


def load_checkpoint(directory, verify=True):
    """Load what `save_checkpoint` wrote: returns (state_dict, optimizer_state, meta).

    optimizer_state is None when none was saved. verify=False skips the SHA-256 check of the
    weight files (it reads every byte twice, about 1 s for GPT-2 small's 500 MB).
    Raises FileNotFoundError or CheckpointError naming the file at fault.
    """
    json_path, record = _read_record(directory)
    files = record["files"]
    state_dict = _load_tensors(directory, json_path, files["model"], verify)
    optimizer_state = record.get("optimizer")
    if optimizer_state is not None:
        arrays = _load_tensors(directory, json_path, files["optimizer"], verify) if "optimizer" in files else {}
        optimizer_state = _join_arrays(optimizer_state, arrays, json_path)
    return state_dict, optimizer_state, record["meta"]


def load_tensors(directory, role, verify=True):
    """The {name: array} saved under `role` by save_checkpoint(tensors={role: ...})."""
    json_path, record = _read_record(directory)
    if role not in record["files"] or role in ("model", "optimizer"):
        extra = sorted(set(record["files"]) - {"model", "optimizer"})
        raise CheckpointError(f"{str(json_path)!r} holds no {role!r} tensors (it has: {extra or 'none'})")
    return _load_tensors(directory, json_path, record["files"][role], verify)


def load_safetensors_state_dict(path):
    """Read any .safetensors file (e.g. Hugging Face's GPT-2 model.safetensors) as {name: array}.

    Names are returned as stored; nothing is renamed or transposed.
    """
    st = safetensors_numpy()
    path = pathlib.Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"load_safetensors_state_dict: {str(path)!r} does not exist")
    try:
        return st.load_file(str(path))
    except Exception as exc:
        raise CheckpointError(f"{str(path)!r} is not a readable safetensors file "
                              f"(numpy cannot hold bfloat16, for one): {exc}") from exc
