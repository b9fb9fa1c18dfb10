"""Common corruptions: the CIFAR-10-C protocol (Hendrycks & Dietterich, ICLR 2019), generated on the fly.

CIFAR-10-C cannot be downloaded here, so the 15 corruptions are generated from the test images with the
CIFAR-specific severity tables of the original generator (hendrycks/robustness,
``ImageNet-C/create_c/make_cifar_c.py``; its CIFAR tables differ from ImageNet's):

>>> from robustbench_dyn.corruptions import CORRUPTIONS, corrupt
>>> xc = corrupt(x, "fog", severity=3, seed=0)      # x: (N, 3, 32, 32) floats in [0, 1]

Reused and written: the parameter tables are the original's; the operations are re-implemented here,
batched in torch/numpy (no OpenCV, scikit-image or ImageMagick needed; PIL for JPEG and pixelate as in
the original, scipy only to draw the procedural frost). What each one computes:

==================  ===========================================================================================
gaussian_noise      x + N(0, c), clipped
shot_noise          Poisson(x c) / c
impulse_noise       each value flipped with probability c to 0 or 1 (skimage 's&p')
defocus_blur        the original's aliased disk, antialiased by a 3 x 3 Gaussian, correlated with reflect-101
glass_blur          Gaussian blur, the original's local pixel shuffle, Gaussian blur (see below)
motion_blur         ImageMagick's motion blur (1-D Gaussian kernel along a random angle in [-45, 45] degrees)
zoom_blur           mean of the image and its centre zooms by np.arange(1, 1.06 .. 1.26, 0.01) (order-1 zoom)
snow                zoomed, thresholded Gaussian snow layer, motion-blurred at [-135, -45] degrees, plus its
                    180-degree rotation, over a whitened image
frost               c0 x + c1 frost-crop (procedural frost textures by default: a DEVIATION, see frost.py)
fog                 diamond-square plasma fractal added, rescaled by the image maximum
brightness          HSV value + c (computed as a rescaling of RGB by v'/v, which is what the round trip does)
contrast            (x - mean) c + mean, per-channel means (the CIFAR version)
elastic_transform   random affine (3 jittered points, bilinear, reflect-101) then a smoothed random
                    displacement field (bilinear, symmetric borders)
pixelate            PIL BOX resize to int(32 c) and back
jpeg_compression    PIL JPEG at quality c
==================  ===========================================================================================

Conventions: inputs are quantised to 8 bits (as the original's uint8 images), outputs are truncated
to 8 bits (the original's ``np.uint8(...)``) and returned as floats in [0, 1] with the input's shape,
dtype and device.

**Randomness.** Each image draws from its own numpy Generator seeded by (seed, corruption, image id),
where ids default to 0..N-1 and the evaluation passes the dataset indices: an image is corrupted the
same way whatever batch it is in (resumable, chunking-independent), and the same draws are reused
across severities (common random numbers: severity s + 1 perturbs the same draw more strongly; each
severity's distribution is the original's).

**Differences from the original**, all deliberate and small except frost:

* frost: procedural textures unless ``ROBUSTDYN_FROST_DIR`` holds the original photographs (frost.py);
* glass_blur: the original's swap ``x[h, w], x[h', w'] = x[h', w'], x[h, w]`` on numpy row views does
  not swap, it copies ``x[h', w']`` into ``x[h, w]``; with displacements in {-1, 0} (every CIFAR
  severity) each position reads a not-yet-visited neighbour, so one pass equals a single gather with
  the precomputed random displacements. Implemented that way: the original's semantics, exactly,
  without its 900-step Python loop per image;
* motion_blur / snow: ImageMagick's kernel and offsets re-implemented (as the ``imagecorruptions``
  package also does); ImageMagick's internal quantum precision is not reproduced;
* elastic_transform: OpenCV's fixed-point bilinear weights are replaced by exact ones (the 1/32-pixel
  coordinate quantisation is kept);
* random draws come from per-image numpy Generators, not the original's single global stream, so the
  images are not the published CIFAR-10-C files (which are not available here anyway).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np
import torch

from ..errors import ConfigError
from ._ops import FUNCTIONS, PARAMS, SIZE
from .frost import frost_source

#: The 15 corruptions of CIFAR-10-C, in the original's order.
CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)
#: The four groups of the paper.
CATEGORIES: dict[str, tuple[str, ...]] = {
    "noise": ("gaussian_noise", "shot_noise", "impulse_noise"),
    "blur": ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur"),
    "weather": ("snow", "frost", "fog", "brightness"),
    "digital": ("contrast", "elastic_transform", "pixelate", "jpeg_compression"),
}
#: Bumped whenever a corruption's output changes: part of the results store's run key.
GENERATOR_VERSION = "robustdyn-c1"

__all__ = ["CATEGORIES", "CORRUPTIONS", "GENERATOR_VERSION", "SEVERITIES", "category", "check_corruption",
           "check_severity", "corrupt", "corruption_settings", "frost_source"]


def check_corruption(name: str) -> str:
    """``name`` if it is one of :data:`CORRUPTIONS`, else a ConfigError naming the closest ones."""
    if isinstance(name, str) and name in FUNCTIONS:
        return name
    import difflib

    close = difflib.get_close_matches(str(name), CORRUPTIONS, n=2, cutoff=0.5)
    raise ConfigError(f"unknown corruption {name!r}",
                      f"did you mean {' or '.join(close)}?" if close else f"use one of {', '.join(CORRUPTIONS)}")


def check_severity(severity) -> int:
    """The severity as an int in 1..5, else a ConfigError."""
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or not 1 <= int(severity) <= 5:
        if isinstance(severity, float) and severity.is_integer() and 1 <= severity <= 5:
            return int(severity)
        raise ConfigError(f"severity must be an integer from 1 to 5, got {severity!r}", "pass e.g. --severity 3")
    return int(severity)


def category(name: str) -> str:
    return next(c for c, names in CATEGORIES.items() if name in names)


def corruption_settings(name: str) -> dict:
    """What the results store keys a corruption run by (besides the severity): the corruption, the
    generator version and, for frost, the texture source."""
    s = {"corruption": check_corruption(name), "generator": GENERATOR_VERSION}
    if name == "frost":
        s["frost"] = frost_source()
    return s


def _generators(seed: int, name: str, ids: np.ndarray) -> list[np.random.Generator]:
    code = zlib.crc32(name.encode())
    return [np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), code, int(i)]))) for i in ids]


def corrupt(x: torch.Tensor, name: str, severity: int, seed: int = 0, *,
            ids: Sequence[int] | np.ndarray | torch.Tensor | None = None) -> torch.Tensor:
    """``x`` (N, 3, 32, 32) in [0, 1] corrupted by ``name`` at ``severity`` (1-5); same shape, dtype and device.

    Deterministic for (seed, ids): image i draws from a Generator seeded by (seed, name, ids[i])
    (ids default to 0..N-1), so an image is corrupted identically in any batch.
    """
    name = check_corruption(name)
    severity = check_severity(severity)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"corruption seed must be a non-negative integer, got {seed!r}", "pass e.g. seed=0")
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or tuple(x.shape[1:]) != (3, SIZE, SIZE):
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ConfigError(f"corrupt() takes a (N, 3, 32, 32) tensor of CIFAR images, got {shape}",
                          "pass a batch of 32 x 32 RGB images with values in [0, 1]")
    if not x.is_floating_point():
        raise ConfigError(f"corrupt() takes float images in [0, 1], got dtype {x.dtype}",
                          "convert with x.float() / 255")
    n = len(x)
    if ids is None:
        ids = np.arange(n)
    ids = np.asarray(ids.cpu() if isinstance(ids, torch.Tensor) else ids, dtype=np.int64).reshape(-1)
    if len(ids) != n or (n and ids.min() < 0):
        raise ConfigError(f"ids must be {n} non-negative integers (one per image), got {len(ids)}",
                          "pass the dataset indices of the images, or leave ids out")
    if n == 0:
        return x.clone()
    if not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1:
        raise ConfigError("corrupt() takes images with values in [0, 1]", "scale the images to [0, 1] first")
    u = torch.round(x.detach().to("cpu", torch.float64) * 255)
    with torch.no_grad():
        out = FUNCTIONS[name](u, PARAMS[name][severity - 1], _generators(seed, name, ids))
    out = torch.floor(out.clamp(0, 255) + 1e-9) / 255  # np.uint8(...) truncates
    return out.to(device=x.device, dtype=x.dtype).contiguous()
