"""UCR/UEA classification sets through aeon, offline, as [0, 1] model inputs.

Only the sets bundled inside aeon's wheel are used (:data:`BUNDLED`): ``load_classification`` reads them
from ``aeon/datasets/data/<Name>/`` without the network; every other name would be downloaded from
Zenodo, which this module never asks for.

Preprocessing, in this order:

1. **z-normalisation per series and per channel** (population std; a constant channel becomes 0);
2. **the input map** ``u = 0.5 + z / INPUT_SPAN``: the benchmark's models, attacks and checks all work on
   inputs in [0, 1] (DESIGN: "inputs in [0, 1], normalisation inside the model"), so the series are fed
   as u and the model's first operation is ``z = (u - 0.5) * INPUT_SPAN``.

``INPUT_SPAN = 25.5`` makes the units simple: an Linf ball of radius ``eps`` in u is a ball of radius
``25.5 * eps`` in z, i.e. **eps = k/255 in the store means k/10 of each series' own standard deviation**
(:func:`eps_std`). The box [0, 1] is |z| <= 12.75: every z-normalised series of length <= 163 lies in it
(|z| <= sqrt(L - 1)), and the longer sets used here are checked (:func:`load_timeseries` raises if a clean
series would be clipped). Class order: sorted label strings as aeon returns them; it is recorded in the
manifest.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..data import dataset_digest, subset_indices
from ..errors import DataError

INPUT_SPAN = 25.5  # u -> z scale: eps k/255 in u is k/10 std in z

#: registry key -> aeon name, for the sets of the zoo
DATASETS = {
    "gunpoint": "GunPoint",
    "arrowhead": "ArrowHead",
    "italypowerdemand": "ItalyPowerDemand",
    "basicmotions": "BasicMotions",
}
#: aeon name -> (channels, length, classes, train series, test series): the architecture is known without aeon
SHAPES = {
    "GunPoint": (1, 150, 2, 50, 150),
    "ArrowHead": (1, 251, 3, 36, 175),
    "ItalyPowerDemand": (1, 24, 2, 67, 1029),
    "BasicMotions": (6, 100, 4, 40, 40),
}
#: equal-length sets shipped inside aeon's wheel (no download)
BUNDLED = ("ACSF1", "ArrowHead", "BasicMotions", "GunPoint", "ItalyPowerDemand", "OSULeaf")


def eps_std(eps_u: float) -> float:
    """An eps in model-input units (u) as a fraction of the per-series std (z units)."""
    return float(eps_u) * INPUT_SPAN


def eps_input(eps_z: float) -> float:
    """A fraction of the per-series std as an eps in model-input units."""
    return float(eps_z) / INPUT_SPAN


def aeon_available() -> bool:
    try:
        import aeon  # noqa: F401
    except Exception:  # ImportError, or numba refusing this numpy
        return False
    return True


def bundled_path(name: str) -> Path | None:
    """The folder of a set inside the installed aeon, or None (aeon missing or set not bundled)."""
    if not aeon_available():
        return None
    import aeon

    p = Path(aeon.__file__).parent / "datasets" / "data" / name
    return p if (p / f"{name}_TRAIN.ts").exists() and (p / f"{name}_TEST.ts").exists() else None


def resolve_dataset(key: str) -> str:
    """Registry key ('gunpoint') or aeon name ('GunPoint') -> the aeon name; only bundled sets."""
    name = DATASETS.get(key.lower(), key)
    if name not in BUNDLED:
        raise DataError(f"time-series set {key!r} is not one of the sets bundled with aeon",
                        f"use one of {', '.join(BUNDLED)} (others would need a download)")
    return name


def znormalise(x: np.ndarray) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    sd = x.std(-1, keepdims=True)
    return ((x - mu) / np.where(sd > 1e-8, sd, 1.0)).astype(np.float32)


@dataclass
class TSData:
    """One split in memory: ``x`` float32 (N, C, L) in [0, 1] (the input map of z), ``y`` int64.
    Same interface as :class:`~robustbench_dyn.data.CIFAR10Data` for the evaluation engine."""

    x: np.ndarray
    y: np.ndarray
    split: str
    name: str  # aeon name
    classes: tuple[str, ...]
    id: str
    label: str
    source: str
    digest: str = field(default="")
    is_sample: bool = False

    def __post_init__(self) -> None:
        if not self.digest:
            self.digest = dataset_digest(self.x, self.y)

    def __len__(self) -> int:
        return len(self.y)

    @property
    def eps_note(self) -> str:
        return (f"series: inputs are u = 0.5 + z/{INPUT_SPAN:g} of z-normalised series, so Linf eps k/255 "
                f"is k/10 of each series' standard deviation")

    @property
    def n_channels(self) -> int:
        return int(self.x.shape[1])

    @property
    def length(self) -> int:
        return int(self.x.shape[2])

    def tensors(self, indices=None, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
        idx = np.arange(len(self)) if indices is None else np.asarray(indices)
        return (torch.from_numpy(np.ascontiguousarray(self.x[idx])).to(device),
                torch.from_numpy(self.y[idx]).to(device))

    def subset(self, n: int | None, seed: int = 0) -> np.ndarray:
        return subset_indices(len(self), n, seed, what=self.label)

    def describe(self) -> dict:
        return {"id": self.id, "label": self.label, "digest": self.digest, "split": self.split,
                "n_total": len(self), "source": self.source, "classes": list(self.classes)}


def _raw(name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    if not aeon_available():
        raise DataError("the time-series sets need aeon, which is not installed (or does not import)",
                        "pip install 'robustbench_dyn[timeseries]' (or pip install aeon)")
    if bundled_path(name) is None:
        raise DataError(f"aeon's installed copy does not bundle {name}",
                        f"install an aeon release that ships {name} (aeon 1.x does)")
    from aeon.datasets import load_classification

    # the bundled folder as extract_path: aeon reads the local files and never downloads
    x, y = load_classification(name, split=split, extract_path=str(bundled_path(name).parent))
    if not isinstance(x, np.ndarray) or x.ndim != 3:
        raise DataError(f"{name} has series of unequal length", "use an equal-length set")
    return x.astype(np.float64), np.asarray(y).astype(str)


def load_timeseries(key: str, split: str = "test") -> TSData:
    """A bundled UCR/UEA set (``key``: 'gunpoint' or 'GunPoint'), z-normalised and mapped to [0, 1]."""
    if split not in ("train", "test"):
        raise DataError(f"unknown split {split!r}", "use 'train' or 'test'")
    name = resolve_dataset(key)
    x, y_str = _raw(name, split)
    _, y_train = _raw(name, "train") if split == "test" else (None, y_str)
    classes = tuple(sorted(set(y_train.tolist()) | set(y_str.tolist())))
    z = znormalise(x)
    if np.abs(z).max() > INPUT_SPAN / 2:
        raise DataError(f"{name}: a z-normalised series reaches |z| = {np.abs(z).max():.2f} > {INPUT_SPAN / 2}",
                        "raise timeseries.data.INPUT_SPAN for this set")
    u = (0.5 + z / INPUT_SPAN).astype(np.float32)
    lookup = {c: i for i, c in enumerate(classes)}
    y = np.array([lookup[c] for c in y_str], dtype=np.int64)
    import aeon

    ver = getattr(aeon, "__version__", "?")
    return TSData(u, y, split, name, classes, id=f"ucr-{name.lower()}",
                  label=f"{name} {split} ({len(y)} series, UCR/UEA via aeon {ver}, z-normalised)",
                  source=os.fspath(bundled_path(name)))


def test_provider(key: str):
    """A ``(split, data_dir) -> TSData`` provider for the evaluation engine (data_dir is ignored)."""
    def provide(split: str = "test", data_dir=None) -> TSData:
        return load_timeseries(key, split)
    return provide
