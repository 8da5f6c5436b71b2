"""Tests for tinygrad_gpt/data.py: finding the text, reading it, splitting it, batching it.

Most tests use `np.arange(N)` as the token stream, so a token's value is its position and every
expected batch can be worked out by hand (x row starting at s is [s, s+1, ..., s+T-1], y = x + 1).
No test touches the network: an autouse fixture makes urllib.request.urlopen fail, and the
environment variables and HOME are pointed into tmp_path.
"""
import hashlib
import io
import os
import urllib.error
import urllib.request

import numpy as np
import pytest

from tinygrad_gpt import data as D

from conftest import NO_DATA_REASON, shakespeare_path


@pytest.fixture(autouse=True)
def hermetic(monkeypatch, tmp_path):
    """No network, no env overrides, and a HOME whose ~/.cache is inside tmp_path."""
    def no_network(*args, **kwargs):
        raise AssertionError("a test tried to use the network")
    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    monkeypatch.delenv(D.ENV_DATA, raising=False)
    monkeypatch.delenv(D.ENV_CACHE, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


# read at import, before the autouse fixture clears the environment variable
REAL_PATH = shakespeare_path()


# ---------------------------------------------------------------------------------------------
# find_data
# ---------------------------------------------------------------------------------------------

def test_find_data_explicit_path_wins_over_env_and_cache(tmp_path, monkeypatch):
    flag = tmp_path / "flag.txt"
    flag.write_text("flag")
    env = tmp_path / "env.txt"
    env.write_text("env")
    monkeypatch.setenv(D.ENV_DATA, str(env))
    assert D.find_data(flag, cache_dir=tmp_path) == flag
    assert D.find_data(cache_dir=tmp_path) == env


def test_find_data_missing_flag_path_names_it_and_the_flag(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(FileNotFoundError, match=r"--data.*nope\.txt.*does not exist"):
        D.find_data(missing)


def test_find_data_directory_is_not_a_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="is a directory"):
        D.find_data(tmp_path)


def test_find_data_missing_env_path_names_the_variable(tmp_path, monkeypatch):
    monkeypatch.setenv(D.ENV_DATA, str(tmp_path / "gone.txt"))
    with pytest.raises(FileNotFoundError, match=r"TINYSHAKESPEARE.*gone\.txt"):
        D.find_data()


def test_find_data_uses_cache_dir_argument_then_env_then_home(tmp_path, monkeypatch):
    arg_dir, env_dir = tmp_path / "arg", tmp_path / "env"
    home_dir = tmp_path / "home" / ".cache" / "tinygrad_gpt"
    for d in (arg_dir, env_dir, home_dir):
        d.mkdir(parents=True)
        (d / D.DATA_FILENAME).write_text(d.name)
    monkeypatch.setenv(D.ENV_CACHE, str(env_dir))
    assert D.find_data(cache_dir=arg_dir) == arg_dir / D.DATA_FILENAME
    assert D.find_data() == env_dir / D.DATA_FILENAME
    monkeypatch.delenv(D.ENV_CACHE)
    assert D.find_data() == home_dir / D.DATA_FILENAME


def test_find_data_offline_is_data_not_found_saying_how_to_use_a_local_copy(tmp_path, monkeypatch):
    """No cache and no network: a missing file (the scripts' usage error, exit 2), not a crash."""
    def offline(url, timeout=None):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    monkeypatch.delenv(D.ENV_DATA, raising=False)
    with pytest.raises(D.DataNotFound) as info:
        D.find_data(cache_dir=tmp_path / "cache")
    message = str(info.value)
    assert "--data PATH" in message and "TINYSHAKESPEARE=PATH" in message
    assert "name resolution" in message
    assert not (tmp_path / "cache" / D.DATA_FILENAME).exists()


def test_find_data_without_download_never_fetches(tmp_path, monkeypatch):
    """download_missing=False (the tests' way) stops at the empty cache and names all three places."""
    def fetch(url, timeout=None):
        raise AssertionError("find_data downloaded although download_missing=False")
    monkeypatch.setattr(urllib.request, "urlopen", fetch)
    monkeypatch.delenv(D.ENV_DATA, raising=False)
    with pytest.raises(D.DataNotFound) as info:
        D.find_data(cache_dir=tmp_path / "cache", download_missing=False)
    message = str(info.value)
    assert "--data" in message and D.ENV_DATA in message and str(tmp_path / "cache") in message


def test_find_data_names_a_device_as_not_a_regular_file():
    with pytest.raises(D.DataNotFound, match="not a regular file"):
        D.find_data("/dev/null")


def test_download_writes_verified_content_atomically_with_a_timeout(tmp_path, monkeypatch):
    payload = b"First Citizen:\nBefore we proceed any further, hear me speak.\n"
    monkeypatch.setattr(D, "EXPECTED_BYTES", len(payload))
    monkeypatch.setattr(D, "EXPECTED_SHA256", hashlib.sha256(payload).hexdigest())
    calls = []

    def fake_urlopen(url, timeout=None):
        calls.append((url, timeout))
        return io.BytesIO(payload)
    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    path = D.find_data(cache_dir=tmp_path / "cache")
    assert path == tmp_path / "cache" / D.DATA_FILENAME
    assert path.read_bytes() == payload
    assert calls == [(D.DATA_URL, D.DOWNLOAD_TIMEOUT_S)]
    assert os.listdir(tmp_path / "cache") == [D.DATA_FILENAME]  # no temp file left behind
    D.find_data(cache_dir=tmp_path / "cache")                    # second call: cache hit
    assert len(calls) == 1


def test_download_with_wrong_content_caches_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: io.BytesIO(b"<html>proxy</html>"))
    with pytest.raises(D.DataNotFound, match=r"got 18 bytes.*nothing was cached.*--data PATH"):
        D.find_data(cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache" / D.DATA_FILENAME).exists()


# ---------------------------------------------------------------------------------------------
# load_text
# ---------------------------------------------------------------------------------------------

def test_load_text_reads_utf8(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes("to be, or not — to be\n".encode("utf-8"))
    assert D.load_text(path) == "to be, or not — to be\n"


def test_load_text_decode_error_names_file_offset_and_line(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"ab\ncd\xffef")  # \xff is byte 5, on line 2
    with pytest.raises(ValueError, match=r"bad\.txt.*byte offset 5 \(line 2"):
        D.load_text(path)


# ---------------------------------------------------------------------------------------------
# split_train_val and get_batch
# ---------------------------------------------------------------------------------------------

def test_split_train_val_first_90_percent_is_train():
    train, val = D.split_train_val(np.arange(10))
    assert train.tolist() == list(range(9)) and val.tolist() == [9]
    train, val = D.split_train_val(np.arange(10), val_fraction=0.3)  # 10 * 0.7 = 6.999... -> 7
    assert len(train) == 7 and len(val) == 3


def test_split_train_val_rejects_bad_fraction():
    with pytest.raises(ValueError, match=r"val_fraction must be in \[0, 1\), got 1.5"):
        D.split_train_val(np.arange(10), val_fraction=1.5)


def test_get_batch_y_is_x_shifted_and_every_start_is_reachable():
    # N = 6, T = 3: starts 0, 1, 2 are valid (x = [2, 3, 4], y = [3, 4, 5] is the last); 3 is not
    data = np.arange(6, dtype=np.uint16)
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(100):
        x, y = D.get_batch(data, 4, 3, rng)
        assert x.shape == y.shape == (4, 3) and x.dtype == y.dtype == np.int64
        np.testing.assert_array_equal(y, x + 1)
        np.testing.assert_array_equal(x, x[:, :1] + np.arange(3))
        seen.update(x[:, 0].tolist())
    assert seen == {0, 1, 2}


def test_get_batch_same_seed_same_batch():
    data = np.arange(100)
    a = D.get_batch(data, 8, 5, np.random.default_rng(42))
    b = D.get_batch(data, 8, 5, np.random.default_rng(42))
    np.testing.assert_array_equal(a[0], b[0])


def test_get_batch_errors_name_the_sizes():
    with pytest.raises(ValueError, match=r"block_size=8 needs at least 9 tokens.*data has 5"):
        D.get_batch(np.arange(5), 2, 8, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"batch_size must be a positive integer, got 0"):
        D.get_batch(np.arange(5), 0, 2, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"data must be a 1-D integer array.*float64"):
        D.get_batch(np.zeros(5), 1, 2, np.random.default_rng(0))
    with pytest.raises(TypeError, match=r"rng must be a numpy Generator"):
        D.get_batch(np.arange(5), 1, 2, np.random.RandomState(0))


# ---------------------------------------------------------------------------------------------
# epoch_batches and all_start_batches
# ---------------------------------------------------------------------------------------------

def test_epoch_batches_visits_every_window_once_and_keeps_the_remainder():
    # N = 11, T = 2: (11 - 1) // 2 = 5 windows at 0, 2, 4, 6, 8 (the last: x = [8, 9], y = [9, 10]);
    # batch 2 -> batches of 2, 2, 1
    batches = D.epoch_batches(np.arange(11), 2, 2, np.random.default_rng(0))
    assert len(batches) == 3
    rows = list(batches)
    assert [len(x) for x, _ in rows] == [2, 2, 1]
    xs = np.concatenate([x for x, _ in rows])
    ys = np.concatenate([y for _, y in rows])
    assert sorted(xs[:, 0].tolist()) == [0, 2, 4, 6, 8]
    np.testing.assert_array_equal(ys, xs + 1)
    assert xs[:, 0].tolist() != [0, 2, 4, 6, 8]  # shuffled (this seed does not give identity)


def test_epoch_batches_drop_last():
    batches = D.epoch_batches(np.arange(11), 2, 2, np.random.default_rng(0), drop_last=True)
    assert len(batches) == 2 and all(len(x) == 2 for x, _ in batches)
    with pytest.raises(ValueError, match=r"batch_size=6 is larger than the 5 rows"):
        D.epoch_batches(np.arange(11), 6, 2, np.random.default_rng(0), drop_last=True)


def test_all_start_batches_visits_every_start_once():
    # N = 11, T = 3: starts 0 .. 7 (8 of them); batch 3 -> ceil(8 / 3) = 3 batches (3, 3, 2)
    batches = D.all_start_batches(np.arange(11), 3, 3, np.random.default_rng(1))
    assert len(batches) == 3
    xs = np.concatenate([x for x, _ in batches])
    assert sorted(xs[:, 0].tolist()) == list(range(8))
    assert xs[:, -1].max() == 9  # the start-7 row: x = [7, 8, 9], y = [8, 9, 10]


def test_all_start_batches_count_for_the_original_preset():
    # train split of tiny Shakespeare: 1,003,854 tokens; T = 32 -> 1,003,822 starts;
    # / 64 = 15,684.7 -> 15,685 batches (last one has 46 rows), or 15,684 with drop_last
    train = np.zeros(1_003_854, dtype=np.int64)
    batches = D.all_start_batches(train, 64, 32, np.random.default_rng(0))
    assert len(batches) == 15_685
    assert len(batches.batch(15_684)[0]) == 1_003_822 - 15_684 * 64 == 46
    assert len(D.all_start_batches(train, 64, 32, 0, drop_last=True)) == 15_684


@pytest.mark.parametrize("make", [D.epoch_batches, D.all_start_batches])
def test_resume_mid_epoch_is_bit_for_bit(make):
    data = np.arange(100)  # 33 windows -> 9 batches; 97 starts -> 25 batches
    full = list(make(data, 4, 3, np.random.default_rng(7)))
    rng = np.random.default_rng(7)
    first = make(data, 4, 3, rng)
    saved = first.rng_state                          # what a checkpoint stores
    resumed_rng = np.random.default_rng()
    resumed_rng.bit_generator.state = saved
    resumed = make(data, 4, 3, resumed_rng, start_batch=5)
    assert len(resumed) == len(full) and resumed.remaining == len(full) - 5
    rest = list(resumed)
    assert len(rest) == len(full) - 5
    for (x1, y1), (x2, y2) in zip(full[5:], rest):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    # control: a different seed gives a different order, so the comparison above can fail
    other = list(make(data, 4, 3, np.random.default_rng(8)))
    assert any(not np.array_equal(a[0], b[0]) for a, b in zip(full, other))


def test_start_batch_out_of_range_names_the_bound():
    with pytest.raises(ValueError, match=r"start_batch must be in \[0, 3\].*got 4"):
        D.epoch_batches(np.arange(11), 2, 2, 0, start_batch=4)


# ---------------------------------------------------------------------------------------------
# the real file
# ---------------------------------------------------------------------------------------------

@pytest.mark.skipif(REAL_PATH is None, reason=NO_DATA_REASON)
def test_real_tiny_shakespeare():
    text = D.load_text(D.find_data(REAL_PATH))
    assert len(text) == 1_115_394
    assert len(set(text)) == 65
    assert text.startswith("First Citizen:\n")
    train, val = D.split_train_val(np.frombuffer(text.encode("ascii"), dtype=np.uint8))
    assert (len(train), len(val)) == (1_003_854, 111_540)


def test_split_windows_cover_the_split_once_in_order():
    """arange(10), T = 3: (10 - 1) // 3 = 3 windows x = 0 1 2 | 3 4 5 | 6 7 8, y one token on;
    arange(9) has only 2 (token 8 would need a target 9). Control: T larger than the split fails."""
    x, y = D.split_windows(np.arange(10), 3)
    np.testing.assert_array_equal(x, [[0, 1, 2], [3, 4, 5], [6, 7, 8]])
    np.testing.assert_array_equal(y, [[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    assert x.dtype == y.dtype == np.int64
    assert D.split_windows(np.arange(9), 3)[0].shape == (2, 3)
    with pytest.raises(ValueError, match="block_size=9 needs at least 10 tokens"):
        D.split_windows(np.arange(9), 9)
