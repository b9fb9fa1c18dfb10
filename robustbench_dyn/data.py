"""CIFAR-10 sources, dataset identity (id, label, digest) and seeded subsets.

Where the data comes from, in order:

1. ``data_dir`` (``--data-dir``) or ``$ROBUSTDYN_DATA``: a folder holding any of
   ``train.npz``/``test.npz`` (x uint8 NHWC, y), the official ``cifar-10-batches-py/`` or
   ``cifar-10-batches-bin/``, or the JPEG packs ``cifar10-{train,test}-jpeg.npz``;
2. the cache folder ``~/.cache/robustdyn/cifar10`` (or ``$ROBUSTDYN_CACHE``), same layouts;
3. the official download through torchvision into that cache (skipped when
   ``$ROBUSTDYN_OFFLINE=1``);
4. the bundled sample: the first 500 test images of the JPEG copy (package data, test split only),
   announced as a sample.

No pickle is executed: the official python batches are read with an unpickler that only admits
numpy array reconstruction and plain containers.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .errors import DataError

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
SPLITS = ("train", "test")
# sha256 of the decoded pixels (x.tobytes()) of the JPEG copy in ../shared/data/cifar10 (SOURCE.md there).
JPEG_COPY_X_SHA256 = {
    "train": "bf3aabd52be912dae02a0435296c4dab5289524b57f55cd162dc4796935a611b",
    "test": "b5f9c787da9666757cdce414edec9da17526906c4fc4a570fd3934e09c9c0336",
}
OFFICIAL_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
OFFICIAL_MD5 = "c58f30108f718f92721af3b95e74349a"
SAMPLE_FILE = Path(__file__).parent / "_data" / "cifar10_test_sample_jpeg.npz"


@dataclass
class CIFAR10Data:
    """One split of CIFAR-10 in memory: ``x`` uint8 (N, 32, 32, 3) RGB, ``y`` int64 (N,)."""

    x: np.ndarray
    y: np.ndarray
    split: str
    id: str  # cifar10 | cifar10-jpeg | cifar10-jpeg-sample | cifar10-npz
    label: str  # what every published number says about its data
    source: str
    digest: str = field(default="")

    def __post_init__(self) -> None:
        if self.x.dtype != np.uint8 or self.x.ndim != 4 or self.x.shape[1:] != (32, 32, 3):
            raise DataError(f"{self.source}: images must be uint8 (N, 32, 32, 3), got {self.x.dtype} "
                            f"{self.x.shape}", "provide CIFAR-10 as x uint8 NHWC and y int labels")
        if len(self.x) != len(self.y):
            raise DataError(f"{self.source}: {len(self.x)} images but {len(self.y)} labels",
                            "re-create the data files")
        self.y = self.y.astype(np.int64)
        if not self.digest:
            self.digest = dataset_digest(self.x, self.y)

    @property
    def is_sample(self) -> bool:
        return self.id.endswith("sample")

    def __len__(self) -> int:
        return len(self.y)

    def tensors(self, indices=None, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """Float images in [0, 1] (N, 3, 32, 32) and long labels, optionally for some indices."""
        idx = np.arange(len(self)) if indices is None else np.asarray(indices)
        x = torch.from_numpy(np.ascontiguousarray(self.x[idx])).to(device).permute(0, 3, 1, 2).float().div_(255)
        return x.contiguous(), torch.from_numpy(self.y[idx]).to(device)

    def subset(self, n: int | None, seed: int = 0) -> np.ndarray:
        return subset_indices(len(self), n, seed, what=self.label)

    def describe(self) -> dict:
        return {"id": self.id, "label": self.label, "digest": self.digest, "split": self.split,
                "n_total": len(self), "source": self.source}


def dataset_digest(x: np.ndarray, y: np.ndarray) -> str:
    h = hashlib.sha256(np.ascontiguousarray(x).tobytes())
    h.update(np.ascontiguousarray(y.astype(np.int64)).tobytes())
    return h.hexdigest()[:16]


def subset_indices(total: int, n: int | None, seed: int = 0, what: str = "the dataset") -> np.ndarray:
    """A seeded random subset of ``range(total)``, sorted, identical on every machine and version.

    Each index gets the key sha256(f"{seed}:{i}"); the subset is the n smallest keys. Unlike an RNG
    stream this does not depend on numpy's or torch's generator implementation, and subsets of one
    seed are nested (n=100 is contained in n=1000).
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DataError(f"seed must be a non-negative integer, got {seed!r}", "pass e.g. --seed 0")
    if n is None or n == total:
        return np.arange(total)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
        raise DataError(f"n must be a positive number of examples, got {n!r}", "pass e.g. --n 1000")
    if n > total:
        raise DataError(f"n={n} is larger than the {total} images of {what}",
                        f"use --n {total} or less (or omit --n for all)")
    return np.sort(_key_order(range(total), seed)[:n])


def _key(seed: int, i: int) -> bytes:
    return hashlib.sha256(f"{seed}:{int(i)}".encode()).digest()[:8]


def _key_order(indices, seed: int) -> np.ndarray:
    return np.asarray(sorted((int(i) for i in indices), key=lambda i: _key(seed, i)), dtype=np.int64)


def processing_order(indices: np.ndarray, seed: int = 0) -> np.ndarray:
    """The order in which a run works through its subset ``indices`` (of :func:`subset_indices` with ``seed``).

    It is the order of the same sha256 keys that chose the subset: a seeded random permutation, identical on every
    machine. A run cut short at any point has therefore done a uniformly random sample of its subset. Index order
    would not be one: the CIFAR-10 test split is sorted by class over most of its range, so the first few hundred
    indices of a subset are a few classes only. Its first k elements are ``subset_indices(total, k, seed)`` (the
    nesting of subsets), whatever the run's n.
    """
    return _key_order(indices, seed)


# ------------------------------------------------------------------------------------ readers

def _decode_jpeg_pack(path: Path) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    pack = np.load(path, allow_pickle=False)
    blob, offsets = pack["jpeg"], pack["offsets"]
    x = np.empty((len(offsets) - 1, 32, 32, 3), np.uint8)
    for i in range(len(x)):
        x[i] = np.asarray(Image.open(io.BytesIO(blob[offsets[i]:offsets[i + 1]].tobytes())).convert("RGB"))
    return x, pack["y"].astype(np.int64)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Admits only what the official CIFAR-10 python batches contain: numpy arrays in dicts."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")


def _read_py_batches(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    xs, ys = [], []
    for name in files:
        with open(folder / name, "rb") as f:
            d = _NumpyOnlyUnpickler(f, encoding="bytes").load()
        xs.append(np.asarray(d[b"data"], np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        ys.append(np.asarray(d[b"labels"], np.int64))
    return np.concatenate(xs), np.concatenate(ys)


def _read_bin_batches(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    files = [f"data_batch_{i}.bin" for i in range(1, 6)] if split == "train" else ["test_batch.bin"]
    raw = np.concatenate([np.fromfile(folder / f, np.uint8).reshape(-1, 3073) for f in files])
    return raw[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy(), raw[:, 0].astype(np.int64)


def _identify(x: np.ndarray, split: str, official: bool) -> tuple[str, str]:
    if official:
        return "cifar10", "CIFAR-10"
    if hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest() == JPEG_COPY_X_SHA256[split]:
        return "cifar10-jpeg", "CIFAR-10 (JPEG copy)"
    return "cifar10-npz", "CIFAR-10 (npz of unverified origin)"


def _load_from_folder(folder: Path, split: str) -> CIFAR10Data | None:
    """Read a split from the first layout present in ``folder``; None if none is."""
    try:
        if (folder / f"{split}.npz").exists():
            path = folder / f"{split}.npz"
            with np.load(path, allow_pickle=False) as d:
                x, y = d["x"], d["y"]
            data_id, label = _identify(x, split, official=False)
            return CIFAR10Data(x, y, split, data_id, label, str(path))
        for sub, reader in (("cifar-10-batches-py", _read_py_batches), ("cifar-10-batches-bin", _read_bin_batches)):
            if (folder / sub).is_dir():
                x, y = reader(folder / sub, split)
                return CIFAR10Data(x, y, split, "cifar10", "CIFAR-10", str(folder / sub))
        pack = folder / f"cifar10-{split}-jpeg.npz"
        if pack.exists():
            x, y = _decode_jpeg_pack(pack)
            data_id, label = _identify(x, split, official=False)
            if data_id == "cifar10-npz":  # another JPEG decoder: still the JPEG copy, not bit-identical
                data_id, label = "cifar10-jpeg", "CIFAR-10 (JPEG copy, other decoder)"
            return CIFAR10Data(x, y, split, data_id, label, str(pack))
    except DataError:
        raise
    except (OSError, KeyError, ValueError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as e:
        raise DataError(f"CIFAR-10 {split} data in {folder} is unreadable ({type(e).__name__}: {e})",
                        "re-create or re-download it, or point --data-dir elsewhere") from None
    return None


def load_sample() -> CIFAR10Data:
    """The bundled sample: the first 500 test images of the JPEG copy (official test positions 0..499)."""
    x, y = _decode_jpeg_pack(SAMPLE_FILE)
    return CIFAR10Data(x, y, "test", "cifar10-jpeg-sample", "CIFAR-10 sample (JPEG copy)", "bundled sample")


def cache_dir() -> Path:
    return Path(os.environ.get("ROBUSTDYN_CACHE", Path.home() / ".cache" / "robustdyn")) / "cifar10"


def _download(root: Path, timeout_s: float = 30.0) -> None:
    """The official python-version archive through torchvision (md5-checked), into ``root``.
    A socket timeout keeps a silently dropping network from hanging the first run."""
    import socket

    from torchvision.datasets.utils import download_and_extract_archive

    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout_s)
    try:
        download_and_extract_archive(OFFICIAL_URL, str(root), md5=OFFICIAL_MD5)
    finally:
        socket.setdefaulttimeout(old)


def load_cifar10(split: str = "test", data_dir=None, download: bool | None = None,
                 allow_sample: bool = True) -> CIFAR10Data:
    """Load a CIFAR-10 split from the first source available (see the module docstring)."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}", "use 'train' or 'test'")
    explicit = data_dir if data_dir is not None else os.environ.get("ROBUSTDYN_DATA")
    if explicit:
        folder = Path(explicit).expanduser()
        if folder.exists() and not folder.is_dir():
            raise DataError(f"data folder {folder} is a file, not a folder",
                            "pass --data-dir (or ROBUSTDYN_DATA) the folder that holds it")
        if not folder.is_dir():
            raise DataError(f"data folder {folder} does not exist",
                            "pass --data-dir (or ROBUSTDYN_DATA) a folder with train.npz/test.npz, "
                            "cifar-10-batches-py/ or the JPEG packs")
        data = _load_from_folder(folder, split)
        if data is None:
            raise DataError(f"no CIFAR-10 {split} data in {folder} (looked for {split}.npz, cifar-10-batches-py/, "
                            f"cifar-10-batches-bin/, cifar10-{split}-jpeg.npz)",
                            "unpack it there (e.g. `python ../shared/data/cifar10/unpack.py DIR`) or point "
                            "--data-dir elsewhere")
        return data
    cache = cache_dir()
    if cache.is_dir():
        data = _load_from_folder(cache, split)
        if data is not None:
            return data
    if download is None:
        download = os.environ.get("ROBUSTDYN_OFFLINE", "") not in ("1", "true", "yes")
    if download:
        try:
            _download(cache)
            data = _load_from_folder(cache, split)
            if data is not None:
                return data
        except Exception as e:  # network errors come in many types; the fallback is announced below
            warnings.warn(f"CIFAR-10 download failed ({type(e).__name__}: {e})", stacklevel=2)
    if allow_sample and split == "test":
        warnings.warn("no CIFAR-10 found: using the bundled sample of 500 test images (JPEG copy). "
                      "Pass --data-dir or set ROBUSTDYN_DATA for the full test set.", stacklevel=2)
        return load_sample()
    raise DataError(f"no CIFAR-10 {split} data found (no --data-dir/ROBUSTDYN_DATA, nothing in {cache}, "
                    "download unavailable)", "pass --data-dir DIR holding train.npz/test.npz or "
                    "cifar-10-batches-py/, or allow the download")
