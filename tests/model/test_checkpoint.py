"""Tests for tinygrad_gpt/checkpoint.py: round trips, crash safety, corruption reports, RNG state.

Crash safety is shown by making the save fail at each step (the weight writer, the replace of the
weight file, the replace of checkpoint.json) and checking that the checkpoint saved before it
still loads with its old values.
"""
import json
import os
import pathlib
import stat
import sys

import numpy as np
import pytest

pytest.importorskip("safetensors")

from conftest import snapshot
from tinygrad_gpt import checkpoint as C
from tinygrad_gpt.tokenizers.char import CharTokenizer


def weights(value):
    return {
        "wte.weight": np.full((5, 3), value, dtype=np.float32),
        "h.0.attn.c_attn.weight": np.arange(6, dtype=np.float64).reshape(2, 3) * value,
        "positions": np.arange(4, dtype=np.int64) + int(value),
    }


def assert_same_arrays(a, b):
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_round_trip_arrays_optimizer_and_meta(tmp_path):
    state = weights(1.5)
    state["transposed"] = np.arange(12, dtype=np.float32).reshape(3, 4).T  # not C-contiguous
    optimizer = {"step": 3, "lr": 3e-4, "betas": (0.9, 0.95),
                 "m": {"wte.weight": np.ones((5, 3), np.float32), "a/b~c": np.zeros(2)},
                 "v": [np.full(2, 7, np.int64), None]}
    rng = np.random.default_rng(123)
    meta = {"config": {"n_layer": 2, "block_size": 32}, "step": 3, "epoch": 1, "batch": 17,
            "tokenizer": CharTokenizer.from_text("hello").to_dict(),
            "loss": np.float32(2.5), "rng": C.rng_state(rng)}
    C.save_checkpoint(tmp_path / "ck", state, meta, optimizer)

    loaded, opt, loaded_meta = C.load_checkpoint(tmp_path / "ck")
    assert_same_arrays(loaded, state)
    assert loaded["transposed"].tolist() == state["transposed"].tolist()
    assert opt["step"] == 3 and opt["lr"] == 3e-4 and opt["betas"] == [0.9, 0.95]
    np.testing.assert_array_equal(opt["m"]["wte.weight"], np.ones((5, 3), np.float32))
    assert opt["m"]["a/b~c"].dtype == np.float64   # "/" and "~" in keys are escaped, not split
    assert opt["v"][0].tolist() == [7, 7] and opt["v"][1] is None
    assert loaded_meta["loss"] == 2.5 and loaded_meta["batch"] == 17
    assert CharTokenizer.from_dict(loaded_meta["tokenizer"]).encode("hello") == [1, 0, 2, 2, 3]
    assert sorted(os.listdir(tmp_path / "ck")) == [
        "checkpoint.json", "model-00000001.safetensors", "optimizer-00000001.safetensors"]


def test_no_optimizer_state(tmp_path):
    C.save_checkpoint(tmp_path, weights(1.0), {"step": 0})
    _, opt, meta = C.load_checkpoint(tmp_path)
    assert opt is None and meta == {"step": 0}


def test_rng_state_survives_json_and_reproduces_the_stream(tmp_path):
    rng = np.random.default_rng(2**63 + 12345)
    rng.normal(size=10)                       # advance past the seed
    state = C.rng_state(rng)
    assert state["state"]["state"] > 2**53    # 128-bit ints: must not pass through a float
    C.save_checkpoint(tmp_path, {}, {"rng": state})
    expected = rng.normal(size=5)
    restored = C.restore_rng(C.load_checkpoint(tmp_path)[2]["rng"])
    np.testing.assert_array_equal(restored.normal(size=5), expected)


def test_second_save_replaces_the_first_and_removes_its_files(tmp_path):
    C.save_checkpoint(tmp_path, weights(1.0), {"step": 1})
    C.save_checkpoint(tmp_path, weights(2.0), {"step": 2}, {"m": {"x": np.zeros(1)}})
    state, _, meta = C.load_checkpoint(tmp_path)
    assert meta["step"] == 2
    assert_same_arrays(state, weights(2.0))
    assert sorted(os.listdir(tmp_path)) == [
        "checkpoint.json", "model-00000002.safetensors", "optimizer-00000002.safetensors"]


@pytest.mark.parametrize("fail_at", ["weight writer", "weight replace", "json replace"])
def test_crash_mid_save_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch, fail_at):
    C.save_checkpoint(tmp_path, weights(1.0), {"step": 1}, {"m": {"x": np.ones(2)}})
    real_replace = os.replace
    import safetensors.numpy as stn
    real_save_file = stn.save_file

    def replace(src, dst):
        name = os.path.basename(dst)
        if (fail_at == "json replace" and name == "checkpoint.json") or \
           (fail_at == "weight replace" and name.startswith("optimizer-")):
            raise OSError("simulated crash")
        return real_replace(src, dst)

    def save_file(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a file")            # then the process dies
        raise OSError("simulated crash")

    monkeypatch.setattr(os, "replace", replace)
    if fail_at == "weight writer":
        monkeypatch.setattr(stn, "save_file", save_file)
    with pytest.raises(OSError, match="simulated crash"):
        C.save_checkpoint(tmp_path, weights(2.0), {"step": 2}, {"m": {"x": np.zeros(2)}})
    monkeypatch.setattr(os, "replace", real_replace)
    monkeypatch.setattr(stn, "save_file", real_save_file)

    state, opt, meta = C.load_checkpoint(tmp_path)
    assert meta == {"step": 1}
    assert_same_arrays(state, weights(1.0))
    assert opt["m"]["x"].tolist() == [1.0, 1.0]
    # and the next save works and sweeps up whatever the crash left
    C.save_checkpoint(tmp_path, weights(3.0), {"step": 3})
    assert C.load_checkpoint(tmp_path)[2] == {"step": 3}
    record = json.loads((tmp_path / "checkpoint.json").read_text())
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.json", record["files"]["model"]["file"]]


def test_corrupt_json_names_the_file(tmp_path):
    C.save_checkpoint(tmp_path, weights(1.0), {"step": 1})
    (tmp_path / "checkpoint.json").write_text('{"format": "tinygrad_gpt.checkp')
    with pytest.raises(C.CheckpointError, match=r"checkpoint\.json.*not valid JSON"):
        C.load_checkpoint(tmp_path)


def test_missing_checkpoint_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"checkpoint\.json.*does not exist"):
        C.load_checkpoint(tmp_path / "nothing here")


def test_missing_or_damaged_weight_file_names_it(tmp_path):
    C.save_checkpoint(tmp_path, weights(1.0), {"step": 1})
    model = tmp_path / "model-00000001.safetensors"
    raw = bytearray(model.read_bytes())
    raw[-1] ^= 0xFF                                       # flip bits in the last weight byte
    model.write_bytes(bytes(raw))
    with pytest.raises(C.CheckpointError, match=r"model-00000001\.safetensors.*SHA-256.*corrupt"):
        C.load_checkpoint(tmp_path)
    model.write_bytes(bytes(raw[:40]))                    # truncated
    with pytest.raises(C.CheckpointError, match=r"model-00000001\.safetensors.*40 bytes"):
        C.load_checkpoint(tmp_path)
    with pytest.raises(C.CheckpointError, match=r"model-00000001\.safetensors.*not a readable"):
        C.load_checkpoint(tmp_path, verify=False)
    model.unlink()
    with pytest.raises(FileNotFoundError, match=r"model-00000001\.safetensors.*checkpoint\.json"):
        C.load_checkpoint(tmp_path)


def test_bad_inputs_name_the_key(tmp_path):
    with pytest.raises(TypeError, match=r"state_dict\['w'\] must be a numpy array, got list"):
        C.save_checkpoint(tmp_path, {"w": [1.0, 2.0]}, {})
    with pytest.raises(TypeError, match=r"meta\['extra'\]\['arr'\] is a numpy array"):
        C.save_checkpoint(tmp_path, {}, {"extra": {"arr": np.zeros(3)}})
    with pytest.raises(TypeError, match=r"state_dict\['s'\] has dtype <U1"):
        C.save_checkpoint(tmp_path, {"s": np.array(["a"])}, {})
    assert not (tmp_path / "checkpoint.json").exists()


def test_load_safetensors_state_dict_reads_plain_files(tmp_path):
    import safetensors.numpy as stn
    path = tmp_path / "model.safetensors"
    stn.save_file({"wte.weight": np.eye(3, dtype=np.float32)}, str(path))
    assert C.load_safetensors_state_dict(path)["wte.weight"].tolist() == np.eye(3).tolist()
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 3)
    with pytest.raises(C.CheckpointError, match=r"junk\.safetensors"):
        C.load_safetensors_state_dict(tmp_path / "junk.safetensors")
    with pytest.raises(FileNotFoundError, match=r"absent\.safetensors"):
        C.load_safetensors_state_dict(tmp_path / "absent.safetensors")


def test_missing_safetensors_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "safetensors", None)   # makes `import safetensors` fail
    monkeypatch.setitem(sys.modules, "safetensors.numpy", None)
    with pytest.raises(ImportError, match=r"pip install safetensors"):
        C.save_checkpoint(tmp_path, {}, {})


def _edit_record(directory, edit):
    path = directory / C.JSON_NAME
    record = json.loads(path.read_text())
    edit(record)
    path.write_text(json.dumps(record))


@pytest.mark.parametrize("name", ["../o1/FILE", "/etc/passwd", "sub/FILE", "..", ""])
def test_a_file_name_in_the_json_may_not_lead_out_of_the_directory(tmp_path, name):
    """checkpoint.json names its weight files; a name with a separator or '..' (here: another run's real
    weights, or /etc/passwd) is refused before anything is opened, and the error reveals nothing of it."""
    C.save_checkpoint(tmp_path / "o1", weights(1.0), {"run": "o1"})
    C.save_checkpoint(tmp_path / "a", weights(2.0), {"run": "a"})
    other = json.loads((tmp_path / "o1" / C.JSON_NAME).read_text())["files"]["model"]["file"]
    (tmp_path / "a" / "sub").mkdir()
    bad = name.replace("FILE", other)

    def point_elsewhere(record):
        record["files"]["model"] = {"file": bad}  # no size or hash: only the name can stop it
    _edit_record(tmp_path / "a", point_elsewhere)
    with pytest.raises(C.CheckpointError, match="plain file name") as info:
        C.load_checkpoint(tmp_path / "a")
    assert "bytes" not in str(info.value)


def test_a_symlink_leading_out_of_the_directory_is_refused(tmp_path):
    C.save_checkpoint(tmp_path / "o1", weights(1.0), {"run": "o1"})
    C.save_checkpoint(tmp_path / "a", weights(2.0), {"run": "a"})
    other = json.loads((tmp_path / "o1" / C.JSON_NAME).read_text())["files"]["model"]["file"]
    (tmp_path / "a" / "link.safetensors").symlink_to(tmp_path / "o1" / other)
    _edit_record(tmp_path / "a", lambda r: r["files"].__setitem__("model", {"file": "link.safetensors"}))
    with pytest.raises(C.CheckpointError, match="symlink that leads out"):
        C.load_checkpoint(tmp_path / "a")
    inside = tmp_path / "a" / "inside.safetensors"  # a link within the directory is a file of it
    inside.symlink_to(sorted(p.name for p in (tmp_path / "a").glob("model-*"))[0])
    _edit_record(tmp_path / "a", lambda r: r["files"].__setitem__("model", {"file": "inside.safetensors"}))
    assert C.load_checkpoint(tmp_path / "a")[2] == {"run": "a"}


def test_non_finite_weights_are_refused_on_save_and_on_load(tmp_path):
    """A NaN model is not a checkpoint: saving one is refused naming the tensor, and one that reached
    the disk anyway (written by other means, the hash recomputed) is refused on load, named too."""
    poisoned = weights(1.0)
    poisoned["wte.weight"][2, 1] = np.nan
    with pytest.raises(ValueError, match=r"wte\.weight.*1 non-finite.*nan.*flat index 7"):
        C.save_checkpoint(tmp_path / "s", poisoned, {})
    with pytest.raises(ValueError, match=r"optimizer_state.*m.*non-finite"):
        C.save_checkpoint(tmp_path / "s", weights(1.0), {}, optimizer_state={"m": np.array([1.0, np.inf])})
    assert not (tmp_path / "s" / C.JSON_NAME).exists()
    C.save_checkpoint(tmp_path / "l", weights(1.0), {})
    record = json.loads((tmp_path / "l" / C.JSON_NAME).read_text())
    path = tmp_path / "l" / record["files"]["model"]["file"]
    import safetensors.numpy
    state = weights(1.0)
    state["h.0.attn.c_attn.weight"][1, 0] = -np.inf
    safetensors.numpy.save_file(state, str(path))
    record["files"]["model"].update(bytes=path.stat().st_size, sha256=C.file_sha256(path))
    (tmp_path / "l" / C.JSON_NAME).write_text(json.dumps(record))
    with pytest.raises(C.CheckpointError, match=r"h\.0\.attn\.c_attn\.weight.*-inf"):
        C.load_checkpoint(tmp_path / "l")
    positions = {"positions": np.arange(3, dtype=np.int64)}  # integers are finite by construction
    C.save_checkpoint(tmp_path / "i", positions, {})


def test_a_second_writer_is_refused_until_the_first_dies(tmp_path):
    """A process holding the directory's lock makes lock_directory refuse, naming its pid; killed with
    SIGKILL (no cleanup of its own), the kernel drops the lock and the directory can be locked again."""
    import signal
    import subprocess
    code = ("import sys, time; from tinygrad_gpt import checkpoint; "
            "lock = checkpoint.lock_directory(sys.argv[1]); print('locked', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "run")], stdout=subprocess.PIPE, text=True,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(C.DirectoryInUse, match=rf"--out .*run.* another run \(pid {proc.pid}\)"):
            C.lock_directory(tmp_path / "run")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    with C.lock_directory(tmp_path / "run") as lock:
        assert (tmp_path / "run" / C.LOCK_NAME).read_text() == f"{os.getpid()}\n"
        with pytest.raises(C.DirectoryInUse):  # a lock is one open file: a second one, even here, waits
            C.lock_directory(tmp_path / "run", what="--checkpoint")
    assert lock._fd is None and (tmp_path / "run" / C.LOCK_NAME).read_text() == ""
    C.lock_directory(tmp_path / "run").release()


def test_remove_checkpoint_deletes_the_json_first_and_the_weights(tmp_path):
    C.save_checkpoint(tmp_path, weights(1.0), {"step": 1}, optimizer_state={"m": np.ones(2)})
    (tmp_path / "notes.txt").write_text("mine")
    C.remove_checkpoint(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"]
    with pytest.raises(FileNotFoundError):
        C.load_checkpoint(tmp_path)


# disk full during a save; file modes
def test_failed_save_keeps_the_old_checkpoint_and_leaves_no_orphans(tmp_path, monkeypatch):
    from tinygrad_gpt import checkpoint
    state = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    checkpoint.save_checkpoint(tmp_path, state, {"step": 1}, optimizer_state={"m": [np.ones(3, np.float32)]})
    before = snapshot(tmp_path)
    real = checkpoint.safetensors_numpy()
    calls = []

    class FullDisk:
        @staticmethod
        def save_file(arrays, path, metadata=None):
            calls.append(path)
            if len(calls) == 2:  # the model file went through, the optimizer's hits a full disk
                pathlib.Path(path).write_bytes(b"partial")
                raise OSError(28, "No space left on device")
            real.save_file(arrays, path, metadata=metadata)

    monkeypatch.setattr(checkpoint, "safetensors_numpy", lambda: FullDisk)
    with pytest.raises(checkpoint.CheckpointWriteError, match="No space left.*is kept"):
        checkpoint.save_checkpoint(tmp_path, {"w": state["w"] * 2}, {"step": 2},
                                   optimizer_state={"m": [np.zeros(3, np.float32)]})
    monkeypatch.undo()
    assert snapshot(tmp_path) == before
    loaded, _, meta = checkpoint.load_checkpoint(tmp_path)
    assert meta == {"step": 1} and np.array_equal(loaded["w"], state["w"])


def test_checkpoint_files_get_the_umask_mode(tmp_path):
    from tinygrad_gpt import checkpoint
    old = os.umask(0o022)
    try:
        checkpoint.save_checkpoint(tmp_path, {"w": np.ones(2, np.float32)}, {}, optimizer_state={"a": np.ones(1)})
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert set(modes.values()) == {0o644}, modes
