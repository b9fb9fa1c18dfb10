"""CIFAR-10 sources (npz folder, official python batches, JPEG packs, bundled sample) and seeded subsets."""

from __future__ import annotations

import hashlib
import pickle
import struct

import numpy as np
import pytest
import torch

from robustbench_dyn.data import (
    CIFAR10Data,
    dataset_digest,
    load_cifar10,
    load_sample,
    processing_order,
    subset_indices,
)
from robustbench_dyn.errors import DataError

FIRST_16_TEST_LABELS = [3, 8, 8, 0, 6, 6, 1, 6, 3, 1, 0, 9, 5, 7, 9, 8]


def _fake(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    r = np.random.default_rng(seed)
    return r.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), r.integers(0, 10, n).astype(np.int64)


# ------------------------------------------------------------------------------------ npz folder

def test_npz_folder(tmp_path, no_data_env):
    (xtr, ytr), (xte, yte) = _fake(12, 1), _fake(7, 2)
    np.savez(tmp_path / "train.npz", x=xtr, y=ytr)
    np.savez(tmp_path / "test.npz", x=xte, y=yte)
    test = load_cifar10("test", data_dir=tmp_path)
    train = load_cifar10("train", data_dir=str(tmp_path))
    assert np.array_equal(test.x, xte) and np.array_equal(test.y, yte) and test.y.dtype == np.int64
    assert np.array_equal(train.x, xtr) and len(train) == 12 and train.split == "train"
    # not the known JPEG copy: labelled as of unverified origin, with a digest of its content
    assert test.id == "cifar10-npz" and "unverified" in test.label
    assert test.digest == dataset_digest(xte, yte) != train.digest
    x, y = test.tensors([0, 3])
    assert x.shape == (2, 3, 32, 32) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert torch.equal(x[1], torch.from_numpy(xte[3]).permute(2, 0, 1).float() / 255)
    assert y.tolist() == [yte[0], yte[3]]


def test_env_var_is_a_source(tmp_path, monkeypatch):
    x, y = _fake(5)
    np.savez(tmp_path / "test.npz", x=x, y=y)
    monkeypatch.setenv("ROBUSTDYN_DATA", str(tmp_path))
    assert np.array_equal(load_cifar10("test").x, x)


def test_cache_folder_is_a_source(tmp_path, monkeypatch, no_data_env):
    monkeypatch.setenv("ROBUSTDYN_CACHE", str(tmp_path))
    x, y = _fake(5)
    (tmp_path / "cifar10").mkdir()
    np.savez(tmp_path / "cifar10" / "test.npz", x=x, y=y)
    assert np.array_equal(load_cifar10("test", allow_sample=False).x, x)


def test_bad_npz_contents_are_data_errors(tmp_path, no_data_env):
    np.savez(tmp_path / "test.npz", x=np.zeros((3, 28, 28), np.uint8), y=np.zeros(3))
    with pytest.raises(DataError, match=r"uint8 \(N, 32, 32, 3\)"):
        load_cifar10("test", data_dir=tmp_path)
    np.savez(tmp_path / "test.npz", x=np.zeros((3, 32, 32, 3), np.uint8), y=np.zeros(2))
    with pytest.raises(DataError, match="3 images but 2 labels"):
        load_cifar10("test", data_dir=tmp_path)
    np.savez(tmp_path / "test.npz", images=np.zeros((3, 32, 32, 3), np.uint8))
    with pytest.raises(DataError, match="unreadable"):
        load_cifar10("test", data_dir=tmp_path)


# ------------------------------------------------------------------------------------ official python batches

class _Py2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 ``str`` (BINSTRING opcodes), as the official CIFAR-10 files (Python 2) do."""

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str


def _write_batch(path, x: np.ndarray, y: np.ndarray, style: str) -> None:
    d = {b"batch_label": b"testing batch 1 of 1", b"labels": [int(v) for v in y],
         b"data": x.transpose(0, 3, 1, 2).reshape(len(x), 3072).copy(), b"filenames": [b"a.png"] * len(x)}
    with open(path, "wb") as f:
        if style == "py2":
            _Py2Pickler(f, protocol=2).dump(d)
        else:
            pickle.dump(d, f, protocol=4)


@pytest.mark.parametrize("style", ["py2", "protocol4"])
def test_official_python_batches(tmp_path, style, no_data_env):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    x, y = _fake(6)
    _write_batch(folder / "test_batch", x, y, style)
    for i in range(1, 6):
        _write_batch(folder / f"data_batch_{i}", *_fake(2, seed=10 + i), style)
    test = load_cifar10("test", data_dir=tmp_path)
    assert np.array_equal(test.x, x) and np.array_equal(test.y, y)
    assert test.id == "cifar10" and test.label == "CIFAR-10"
    train = load_cifar10("train", data_dir=tmp_path)
    assert len(train) == 10 and np.array_equal(train.x[:2], _fake(2, seed=11)[0])


class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused(tmp_path, no_data_env):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    marker = tmp_path / "pwned"
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": _Evil(str(marker)), b"labels": [0]}, f, protocol=4)
    with pytest.raises(DataError, match="refusing to load") as err:
        load_cifar10("test", data_dir=tmp_path)
    assert "system" in str(err.value)
    assert not marker.exists()  # nothing was executed


def test_binary_batches(tmp_path, no_data_env):
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    x, y = _fake(4)
    rows = np.concatenate([y.astype(np.uint8)[:, None], x.transpose(0, 3, 1, 2).reshape(4, 3072)], axis=1)
    rows.tofile(folder / "test_batch.bin")
    data = load_cifar10("test", data_dir=tmp_path)
    assert np.array_equal(data.x, x) and np.array_equal(data.y, y) and data.label == "CIFAR-10"


# ------------------------------------------------------------------------------------ bundled sample, no data

def test_bundled_sample():
    s = load_sample()
    assert len(s) == 500 and s.x.shape == (500, 32, 32, 3) and s.x.dtype == np.uint8
    assert s.label == "CIFAR-10 sample (JPEG copy)" and s.is_sample and s.split == "test"
    assert s.y[:16].tolist() == FIRST_16_TEST_LABELS  # official test positions 0..15
    assert np.bincount(s.y, minlength=10).min() > 30  # all ten classes present
    assert s.describe()["digest"] == s.digest == dataset_digest(s.x, s.y)


def test_sample_is_the_announced_offline_fallback(no_data_env):
    with pytest.warns(UserWarning, match="bundled sample"):
        data = load_cifar10("test")
    assert data.is_sample and data.label == "CIFAR-10 sample (JPEG copy)"


def test_nothing_found_is_a_clear_error(no_data_env):
    with pytest.raises(DataError) as err:
        load_cifar10("test", allow_sample=False)
    assert "no CIFAR-10 test data found" in str(err.value) and "--data-dir" in str(err.value)
    with pytest.raises(DataError, match="no CIFAR-10 train data found"):
        load_cifar10("train")  # the sample is test-only


def test_bad_data_dir_and_split(tmp_path, no_data_env):
    with pytest.raises(DataError, match="does not exist"):
        load_cifar10("test", data_dir=tmp_path / "nope")
    with pytest.raises(DataError, match="no CIFAR-10 test data in") as err:
        load_cifar10("test", data_dir=tmp_path)  # exists but empty: no silent fallback to the sample
    assert "unpack.py" in str(err.value)
    with pytest.raises(DataError, match="unknown split"):
        load_cifar10("val")


def test_data_class_validates_shapes():
    with pytest.raises(DataError, match="uint8"):
        CIFAR10Data(np.zeros((2, 32, 32, 3), np.float32), np.zeros(2), "test", "x", "x", "here")


# ------------------------------------------------------------------------------------ subsets

def _scheme(total: int, n: int, seed: int) -> list[int]:
    """The documented scheme, written out: the n indices with the smallest sha256(f'{seed}:{i}') keys."""
    keys = sorted(range(total), key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).digest()[:8])
    return sorted(keys[:n])


def test_subset_is_deterministic_nested_and_seeded():
    a = subset_indices(10000, 100, seed=0)
    assert a.dtype == np.int64 and len(a) == 100 and len(set(a.tolist())) == 100
    assert np.all(np.diff(a) > 0) and a.min() >= 0 and a.max() < 10000
    assert np.array_equal(a, subset_indices(10000, 100, seed=0))
    assert not np.array_equal(a, subset_indices(10000, 100, seed=1))
    assert set(subset_indices(10000, 50, seed=0).tolist()) <= set(a.tolist())  # nested
    assert set(a.tolist()) <= set(subset_indices(10000, 1000, seed=0).tolist())
    assert a.tolist() == _scheme(10000, 100, 0)


def test_subset_regression_values():
    """Hard-coded once from the hash scheme: a change here changes every published subset."""
    assert subset_indices(10000, 10, seed=0).tolist() == [4506, 5192, 5793, 7220, 7230, 7678, 8006, 8391, 9079,
                                                          9977]
    assert subset_indices(10000, 10, seed=1).tolist() == [5209, 6205, 6264, 6727, 6771, 7159, 7502, 7553, 9572,
                                                          9597]


def test_subset_all_and_errors():
    assert np.array_equal(subset_indices(7, None), np.arange(7))
    assert np.array_equal(subset_indices(7, 7), np.arange(7))
    with pytest.raises(DataError, match="larger than the 7 images"):
        subset_indices(7, 8)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(DataError, match="positive number"):
            subset_indices(7, bad)
    with pytest.raises(DataError, match="seed"):
        subset_indices(7, 3, seed=-1)
    assert load_sample().subset(20, seed=3).tolist() == _scheme(500, 20, 3)


def test_processing_order_is_a_seeded_shuffle_whose_prefixes_are_subsets():
    sub = subset_indices(10000, 1000, seed=0)
    order = processing_order(sub, seed=0)
    assert sorted(order.tolist()) == sub.tolist() and order.dtype == np.int64
    assert not np.array_equal(order, sub)  # not index order
    assert np.array_equal(order, processing_order(sub[::-1], seed=0))  # depends on the set only
    for k in (1, 10, 250):  # a run stopped after k examples has done the seed's k-subset: an unbiased sample
        assert sorted(order[:k].tolist()) == subset_indices(10000, k, seed=0).tolist()
    full = processing_order(np.arange(10000), seed=0)  # the whole split too (class-sorted over most of it)
    assert sorted(full[:100].tolist()) == subset_indices(10000, 100, seed=0).tolist()
    assert not np.array_equal(processing_order(sub, seed=1), order)
    # a class-major label array (as the test split is): the first 100 processed cover every class
    labels = np.repeat(np.arange(10), 1000)
    assert len(set(labels[full[:100]].tolist())) == 10 and len(set(labels[np.sort(sub)[:100]].tolist())) < 10


# ------------------------------------------------------------------------------------ real data

@pytest.mark.data
def test_real_test_split_from_the_jpeg_copy(cifar10_dirs, no_data_env):
    for folder in cifar10_dirs:  # ROBUSTDYN_DATA (unpacked npz) and/or ../shared (JPEG pack)
        data = load_cifar10("test", data_dir=folder)
        assert data.label == "CIFAR-10 (JPEG copy)", f"{data.label} from {data.source}"
        assert data.id == "cifar10-jpeg" and not data.is_sample
        assert len(data) == 10000 and data.x.shape == (10000, 32, 32, 3)
        assert data.y[:16].tolist() == FIRST_16_TEST_LABELS
        assert np.array_equal(data.x[:500], load_sample().x)  # the bundled sample is its first 500 images
        assert np.bincount(data.y, minlength=10).tolist() == [1000] * 10
