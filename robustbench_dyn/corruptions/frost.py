"""Frost textures for the ``frost`` corruption.

The original generator blends crops of six frost photographs (``frost1.png`` .. ``frost6.jpg``, of which
its CIFAR script draws the first five) that ship as files with hendrycks/robustness. They are not
available offline here, so by default this module generates five **procedural** frost textures
(a documented deviation from the CIFAR-10-C protocol): ice-crystal needles that branch at about 60
degrees, drawn over a multi-octave cloudy base, tinted pale blue. They are deterministic (fixed seeds)
but not calibrated against the photographs, so ``frost`` accuracies are not comparable with published
CIFAR-10-C frost numbers.

To use the original photographs, point ``ROBUSTDYN_FROST_DIR`` at a folder holding ``frost1.png``,
``frost2.png``, ``frost3.png``, ``frost4.jpg`` and ``frost5.jpg`` (e.g. from hendrycks/robustness or
the ``imagecorruptions`` package). They are then resized as the original does (OpenCV ``resize(fx=0.2,
fy=0.2)`` with linear interpolation, which at an integer factor 5 picks pixel ``5 i + 2``). The store
keys frost runs by :func:`frost_source`, so results of the two sources are never mixed.
"""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..errors import DataError

PROCEDURAL_VERSION = "procedural-v1"
ORIGINAL_FILES = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg")
_TEXTURE_SIZE = 176  # about the size of the original photographs after their 0.2 resize


def _frost_dir() -> Path | None:
    d = os.environ.get("ROBUSTDYN_FROST_DIR")
    return Path(d).expanduser() if d else None


def frost_source() -> str:
    """'procedural-v1', or 'files:<sha256 prefix>' when ROBUSTDYN_FROST_DIR holds the original photographs."""
    d = _frost_dir()
    if d is None:
        return PROCEDURAL_VERSION
    return "files:" + _files_digest(str(d))


@lru_cache(maxsize=4)
def _files_digest(d: str) -> str:
    h = hashlib.sha256()
    for name in ORIGINAL_FILES:
        p = Path(d) / name
        if not p.is_file():
            raise DataError(f"ROBUSTDYN_FROST_DIR={d} has no {name}",
                            f"put {', '.join(ORIGINAL_FILES)} there, or unset ROBUSTDYN_FROST_DIR to use the "
                            "procedural frost textures")
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def frost_textures() -> list[np.ndarray]:
    """Five (H, W, 3) uint8 RGB frost textures, from :func:`frost_source`."""
    d = _frost_dir()
    if d is None:
        return _procedural()
    return _from_files(str(d), _files_digest(str(d)))


@lru_cache(maxsize=2)
def _from_files(d: str, digest: str) -> list[np.ndarray]:
    from PIL import Image

    out = []
    for name in ORIGINAL_FILES:
        a = np.asarray(Image.open(Path(d) / name).convert("RGB"))
        h, w = int(round(a.shape[0] * 0.2)), int(round(a.shape[1] * 0.2))
        out.append(np.ascontiguousarray(a[2::5, 2::5][:h, :w]))
    return out


@lru_cache(maxsize=1)
def _procedural() -> list[np.ndarray]:
    return [procedural_frost(k) for k in range(len(ORIGINAL_FILES))]


def procedural_frost(k: int, size: int = _TEXTURE_SIZE) -> np.ndarray:
    """Procedural frost texture number ``k`` (seeded by k): (size, size, 3) uint8."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(7919 + 104729 * k)
    # cloudy base: octaves of smoothed noise
    base = np.zeros((size, size))
    for octave in range(5):
        sigma = 1.5 * 2 ** octave
        base += (0.6 ** octave) * gaussian_filter(rng.standard_normal((size, size)), sigma, mode="wrap") * sigma
    base = (base - base.min()) / (np.ptp(base) + 1e-12)
    # crystals: needles that branch at about +-60 degrees, splatted onto a canvas
    canvas = np.zeros((size, size))
    n_seeds = 26 + 6 * k
    stack = [(rng.uniform(0, size), rng.uniform(0, size), rng.uniform(0, 2 * np.pi), rng.uniform(18, 48), 0)
             for _ in range(n_seeds)]
    while stack:
        y, x, theta, length, depth = stack.pop()
        t = np.arange(0, length, 0.5)
        ys = (y + t * np.sin(theta)).astype(int) % size
        xs = (x + t * np.cos(theta)).astype(int) % size
        bright = rng.uniform(0.5, 1.0) * (0.8 ** depth)
        np.maximum.at(canvas, (ys, xs), bright * (1 - 0.5 * t / max(length, 1)))
        if depth < 3:
            for _ in range(int(rng.integers(2, 6))):
                s = rng.uniform(0.2, 0.9) * length
                side = rng.choice([-1.0, 1.0])
                stack.append((y + s * np.sin(theta), x + s * np.cos(theta),
                              theta + side * np.deg2rad(60 + rng.normal(0, 8)), length * rng.uniform(0.3, 0.6),
                              depth + 1))
    crystals = gaussian_filter(canvas, 0.6, mode="wrap")
    crystals = crystals / (crystals.max() + 1e-12)
    glow = gaussian_filter(canvas, 3.0, mode="wrap")
    glow = glow / (glow.max() + 1e-12)
    t = np.clip(0.35 * base + 0.9 * crystals + 0.35 * glow, 0, None)
    t = (t - t.min()) / (np.ptp(t) + 1e-12)
    t = t ** 0.8
    tint = np.array([0.82, 0.91, 1.0])
    rgb = np.clip(255 * (0.06 + 0.94 * t[..., None] * tint), 0, 255)
    return rgb.astype(np.uint8)
