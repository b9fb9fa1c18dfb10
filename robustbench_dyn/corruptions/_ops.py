"""The 15 CIFAR-10-C corruptions, batched (torch/numpy), with the CIFAR parameter tables of the original
generator (Hendrycks & Dietterich, ICLR 2019; hendrycks/robustness, ImageNet-C/create_c/make_cifar_c.py).

Written here, not copied: the parameters are the original's CIFAR tables; the operations re-implement
what the original's calls compute (scikit-image, OpenCV, ImageMagick/Wand, scipy, PIL), batched over
images, without OpenCV, scikit-image or ImageMagick. Every function takes ``u``: a float64 tensor
(N, 3, 32, 32) of 8-bit values in [0, 255], the parameter tuple of one severity and one numpy
Generator per image, and returns float64 values on the 0..255 scale (clipped and truncated to 8 bits
by the caller, as the original's ``np.uint8(...)`` does). See the package docstring for what differs.
"""

from __future__ import annotations

import io
import math
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

SIZE = 32

# ------------------------------------------------------------------------ the CIFAR parameter tables

PARAMS: dict[str, list] = {
    "gaussian_noise": [0.04, 0.06, 0.08, 0.09, 0.10],
    "shot_noise": [500, 250, 100, 75, 50],
    "impulse_noise": [0.01, 0.02, 0.03, 0.05, 0.07],
    "defocus_blur": [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)],
    "glass_blur": [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)],
    "motion_blur": [(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)],
    "zoom_blur": [(1, 1.06), (1, 1.11), (1, 1.16), (1, 1.21), (1, 1.26)],  # np.arange(a, b, 0.01)
    "snow": [(0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9), (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
             (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85), (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)],
    "frost": [(1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)],
    "fog": [(0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)],
    "brightness": [0.05, 0.1, 0.15, 0.2, 0.3],
    "contrast": [0.75, 0.5, 0.4, 0.3, 0.15],
    "elastic_transform": [(SIZE * 0, SIZE * 0, SIZE * 0.08), (SIZE * 0.05, SIZE * 0.2, SIZE * 0.07),
                          (SIZE * 0.08, SIZE * 0.06, SIZE * 0.06), (SIZE * 0.1, SIZE * 0.04, SIZE * 0.05),
                          (SIZE * 0.1, SIZE * 0.03, SIZE * 0.03)],
    "pixelate": [0.95, 0.9, 0.85, 0.75, 0.65],
    "jpeg_compression": [80, 65, 58, 50, 40],
}

# --------------------------------------------------------------------------------------- helpers


def _stack(rngs, draw) -> np.ndarray:
    """One draw per image (each image has its own Generator), stacked along a new first axis."""
    return np.stack([draw(r) for r in rngs])


def _fold(idx: torch.Tensor, n: int, mode: str) -> torch.Tensor:
    """Map out-of-range indices into [0, n): 'edge' (scipy 'nearest'), 'reflect101' (OpenCV's default
    border, scipy 'mirror': d c b | a b c d | c b a) or 'symmetric' (scipy 'reflect': c b a | a b c d | d c b)."""
    if mode == "edge":
        return idx.clamp(0, n - 1)
    if mode == "reflect101":
        p = 2 * n - 2
        i = torch.remainder(idx, p)
        return torch.where(i >= n, p - i, i)
    if mode == "symmetric":
        p = 2 * n
        i = torch.remainder(idx, p)
        return torch.where(i >= n, p - 1 - i, i)
    raise ValueError(mode)


def _gauss_kernel(sigma: float, truncate: float) -> np.ndarray:
    """scipy.ndimage.gaussian_filter1d's kernel (radius int(truncate * sigma + 0.5)); [1] for sigma 0."""
    if sigma <= 1e-15:
        return np.ones(1)
    r = int(truncate * sigma + 0.5)
    x = np.arange(-r, r + 1, dtype=np.float64)
    k = np.exp(-0.5 * x * x / (sigma * sigma))
    return k / k.sum()


def _filter1d(x: torch.Tensor, k: np.ndarray, dim: int, mode: str) -> torch.Tensor:
    """Correlate ``x`` with the 1-D kernel ``k`` (odd length) along ``dim``, borders by ``mode``."""
    if len(k) == 1:
        return x * float(k[0])
    r = len(k) // 2
    n = x.shape[dim]
    idx = _fold(torch.arange(-r, n + r, device=x.device), n, mode)
    xp = x.index_select(dim, idx)
    out = torch.zeros_like(x)
    for j, w in enumerate(k):
        out += float(w) * xp.narrow(dim, j, n)
    return out


def _gaussian(x: torch.Tensor, sigma: float, mode: str, truncate: float = 4.0) -> torch.Tensor:
    """skimage.filters.gaussian on the two image axes of (N, C, H, W) (scipy gaussian_filter per channel)."""
    k = _gauss_kernel(sigma, truncate)
    return _filter1d(_filter1d(x, k, 2, mode), k, 3, mode)


def _filter2d(x: torch.Tensor, kernel: np.ndarray, mode: str = "reflect101") -> torch.Tensor:
    """cv2.filter2D (correlation, BORDER_REFLECT_101) of every channel of (N, C, H, W) with a 2-D kernel."""
    kh, kw = kernel.shape
    ry, rx = kh // 2, kw // 2
    n, c, h, w = x.shape
    iy = _fold(torch.arange(-ry, h + ry), h, mode)
    ix = _fold(torch.arange(-rx, w + rx), w, mode)
    xp = x.index_select(2, iy).index_select(3, ix).reshape(n * c, 1, h + 2 * ry, w + 2 * rx)
    k = torch.as_tensor(kernel, dtype=x.dtype).reshape(1, 1, kh, kw)
    return F.conv2d(xp, k).reshape(n, c, h, w)


def _gather(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """x[n, :, rows[n, i, j], cols[n, i, j]] for (N, C, H, W) x and (N, H, W) integer index maps."""
    n, c, h, w = x.shape
    flat = (rows * w + cols).reshape(n, 1, -1).expand(n, c, -1)
    return x.reshape(n, c, h * w).gather(2, flat).reshape(n, c, *rows.shape[1:])


def _bilinear(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, mode: str) -> torch.Tensor:
    """Bilinear samples of x at float coordinates (N, H, W): mode 'reflect101' (cv2 remap borders) or
    'symmetric' (scipy map_coordinates(order=1, mode='reflect'): the coordinate is folded first)."""
    h, w = x.shape[2:]
    if mode == "symmetric":
        def fold_coord(c, n):
            c = torch.remainder(c + 0.5, 2 * n)
            c = torch.where(c >= n, 2 * n - c, c)
            return c - 0.5
        rows, cols = fold_coord(rows, h), fold_coord(cols, w)
        edge = "edge"
    else:
        edge = mode
    r0, c0 = torch.floor(rows), torch.floor(cols)
    fr, fc = (rows - r0).unsqueeze(1), (cols - c0).unsqueeze(1)
    r0, c0 = r0.long(), c0.long()
    r1, c1 = _fold(r0 + 1, h, edge), _fold(c0 + 1, w, edge)
    r0, c0 = _fold(r0, h, edge), _fold(c0, w, edge)
    top = _gather(x, r0, c0) * (1 - fc) + _gather(x, r0, c1) * fc
    bottom = _gather(x, r1, c0) * (1 - fc) + _gather(x, r1, c1) * fc
    return top * (1 - fr) + bottom * fr


@lru_cache(maxsize=64)
def _zoom_matrix(z: float, n: int = SIZE) -> np.ndarray:
    """The original's clipped_zoom along one axis as an (n, n) matrix: crop the centre ceil(n / z), scipy
    ndimage.zoom(order=1) it to round(ceil(n / z) * z), keep the centre n. Exact for order-1 zoom."""
    ch = int(np.ceil(n / z))
    top = (n - ch) // 2
    out = int(round(ch * z))
    trim = (out - n) // 2
    m = np.zeros((n, n))
    ratio = (ch - 1) / (out - 1) if out > 1 else 0.0
    for j in range(n):
        c = (j + trim) * ratio
        i0 = int(np.floor(c))
        f = c - i0
        if i0 >= ch - 1:
            i0, f = ch - 1, 0.0
        m[j, top + i0] += 1 - f
        if f > 0:
            m[j, top + i0 + 1] += f
    return m


def _zoom(x: torch.Tensor, z: float) -> torch.Tensor:
    m = torch.as_tensor(_zoom_matrix(float(z)), dtype=x.dtype)
    return m @ x @ m.T


def _motion_kernel(radius: float, sigma: float) -> np.ndarray:
    """ImageMagick MotionBlurImage's 1-D kernel: width 2 ceil(radius) + 1, Gaussian weights from 0."""
    width = int(2 * math.ceil(radius) + 1)
    i = np.arange(width, dtype=np.float64)
    k = np.exp(-(i * i) / (2 * sigma * sigma)) / (math.sqrt(2 * math.pi) * sigma)
    return k / k.sum()


def _motion_blur(x: torch.Tensor, radius: float, sigma: float, angles: np.ndarray) -> torch.Tensor:
    """ImageMagick's motion blur (the original calls it through Wand) with one angle per image: tap i
    samples the pixel at offset (ceil(i cos a - 0.5), ceil(i sin a - 0.5)), edge pixels beyond the border."""
    k = _motion_kernel(radius, sigma)
    n, _, h, w = x.shape
    rad = np.deg2rad(angles)
    yy = torch.arange(h).view(1, h, 1)
    xx = torch.arange(w).view(1, 1, w)
    out = torch.zeros_like(x)
    for i, wt in enumerate(k):
        ox = torch.as_tensor(np.ceil(i * np.cos(rad) - 0.5).astype(np.int64)).view(n, 1, 1)
        oy = torch.as_tensor(np.ceil(i * np.sin(rad) - 0.5).astype(np.int64)).view(n, 1, 1)
        rows = (yy + oy).clamp(0, h - 1).expand(n, h, w)
        cols = (xx + ox).clamp(0, w - 1).expand(n, h, w)
        out += float(wt) * _gather(x, rows, cols)
    return out


def _to_pil(u: torch.Tensor) -> list[Image.Image]:
    arr = u.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a, mode="RGB") for a in arr]


def _from_pil(images: list[Image.Image]) -> torch.Tensor:
    arr = np.stack([np.asarray(im.convert("RGB"), dtype=np.float64) for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


# ------------------------------------------------------------------------------------------ noise

def gaussian_noise(u, c, rngs):
    z = torch.from_numpy(_stack(rngs, lambda r: r.standard_normal((3, SIZE, SIZE))))
    return (u / 255 + c * z).clamp(0, 1) * 255


def shot_noise(u, c, rngs):
    lam = (u / 255 * c).numpy()
    k = np.stack([r.poisson(lam[i]) for i, r in enumerate(rngs)]).astype(np.float64)
    return (torch.from_numpy(k) / c).clamp(0, 1) * 255


def impulse_noise(u, c, rngs):
    # skimage.util.random_noise(mode='s&p', amount=c): each value independently flipped with probability c,
    # to 1 (salt) or 0 (pepper) with equal odds
    draws = torch.from_numpy(_stack(rngs, lambda r: r.random((2, 3, SIZE, SIZE))))
    flip, salt = draws[:, 0] < c, draws[:, 1] < 0.5
    x = u / 255
    x = torch.where(flip & salt, torch.ones_like(x), x)
    x = torch.where(flip & ~salt, torch.zeros_like(x), x)
    return x.clamp(0, 1) * 255


# ------------------------------------------------------------------------------------------- blur

@lru_cache(maxsize=8)
def _disk(radius: float, alias_blur: float) -> np.ndarray:
    """The original's disk(): an aliased disk on a 17 x 17 grid (radius <= 8), normalised, then
    cv2.GaussianBlur(ksize 3, sigma alias_blur, BORDER_REFLECT_101); cropped to its non-zero support."""
    L = np.arange(-8, 8 + 1)
    X, Y = np.meshgrid(L, L)
    d = ((X ** 2 + Y ** 2) <= radius ** 2).astype(np.float64)
    d /= d.sum()
    g = np.exp(-(np.arange(-1, 2) ** 2) / (2 * alias_blur ** 2))
    g /= g.sum()
    t = torch.from_numpy(d).view(1, 1, 17, 17)
    b = _filter1d(_filter1d(t, g, 2, "reflect101"), g, 3, "reflect101")[0, 0].numpy()
    nz = np.argwhere(b > 0)
    r = int(np.abs(nz - 8).max())
    return b[8 - r:8 + r + 1, 8 - r:8 + r + 1].copy()


def defocus_blur(u, c, rngs):
    return (_filter2d(u / 255, _disk(*c))).clamp(0, 1) * 255


def glass_blur(u, c, rngs):
    sigma, delta, iterations = c
    assert delta == 1  # every CIFAR severity; the gather below relies on it (see the package docstring)
    n = len(u)
    x = torch.floor(_gaussian(u / 255, sigma, "edge") * 255)  # np.uint8(gaussian(...) * 255)
    lo, hi = delta + 1, SIZE - delta  # the original's h, w loop: range(32 - 1, 1, -1) = 31 .. 2
    span = hi - lo + 1
    # randint(-1, 1) -> {-1, 0}; per position (h descending, w descending) a pair (dx, dy)
    d = torch.from_numpy(_stack(rngs, lambda r: r.integers(-delta, delta, size=(iterations, span, span, 2))))
    d = d.flip(2).flip(3)  # draw order is descending h, w: index [h - lo, w - lo] after the flips
    base_r = torch.arange(SIZE).view(1, SIZE, 1).expand(n, SIZE, SIZE)
    base_c = torch.arange(SIZE).view(1, 1, SIZE).expand(n, SIZE, SIZE)
    for it in range(iterations):
        rows, cols = base_r.clone(), base_c.clone()
        rows[:, lo:hi + 1, lo:hi + 1] += d[:, it, :, :, 1]
        cols[:, lo:hi + 1, lo:hi + 1] += d[:, it, :, :, 0]
        x = _gather(x, rows, cols)
    return _gaussian(x / 255, sigma, "edge").clamp(0, 1) * 255


def motion_blur(u, c, rngs):
    angles = _stack(rngs, lambda r: r.uniform(-45, 45))
    return _motion_blur(u, c[0], c[1], angles).round().clamp(0, 255)  # Wand writes an 8-bit PNG


@lru_cache(maxsize=8)
def _zoom_blur_operator(start: float, stop: float) -> torch.Tensor:
    """sum_z kron(M_z, M_z) over the original's zoom factors np.arange(start, stop, 0.01): (1024, 1024)."""
    op = np.zeros((SIZE * SIZE, SIZE * SIZE))
    for z in np.arange(start, stop, 0.01):
        m = _zoom_matrix(float(z))
        op += np.kron(m, m)
    return torch.from_numpy(op.astype(np.float32)), len(np.arange(start, stop, 0.01))


def zoom_blur(u, c, rngs):
    op, k = _zoom_blur_operator(*c)
    x = (u / 255).float()
    n = len(x)
    out = (x.reshape(n * 3, SIZE * SIZE) @ op.T).reshape(n, 3, SIZE, SIZE)
    return ((x + out) / (k + 1)).clamp(0, 1).double() * 255


# ---------------------------------------------------------------------------------------- weather

def snow(u, c, rngs):
    loc, scale, zoom, thr, radius, sigma, blend = c
    n = len(u)
    layer = torch.from_numpy(_stack(rngs, lambda r: r.normal(loc, scale, size=(SIZE, SIZE))))
    angles = _stack(rngs, lambda r: r.uniform(-135, -45))
    layer = _zoom(layer, zoom)
    layer = torch.where(layer < thr, torch.zeros_like(layer), layer)
    layer = torch.floor(layer.clamp(0, 1) * 255).view(n, 1, SIZE, SIZE)  # uint8 grey PNG
    layer = _motion_blur(layer, radius, sigma, angles).round().clamp(0, 255) / 255
    x = (u / 255).float().double()  # the original works in float32 here
    grey = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]  # cv2 RGB2GRAY
    x = blend * x + (1 - blend) * torch.maximum(x, grey * 1.5 + 0.5)
    return (x + layer + layer.flip(2).flip(3)).clamp(0, 1) * 255


def frost(u, c, rngs):
    from .frost import frost_textures

    textures = frost_textures()
    crops = []
    for r in rngs:
        t = textures[int(r.integers(len(textures)))]
        y0 = int(r.integers(0, t.shape[0] - SIZE))
        x0 = int(r.integers(0, t.shape[1] - SIZE))
        crops.append(t[y0:y0 + SIZE, x0:x0 + SIZE])
    fr = torch.from_numpy(np.stack(crops).astype(np.float64)).permute(0, 3, 1, 2)
    return (c[0] * u + c[1] * fr).clamp(0, 255)


def _plasma(rngs, decay: float, mapsize: int = SIZE) -> np.ndarray:
    """The original's plasma_fractal (diamond-square, values in [0, 1]) for a batch, one Generator per map."""
    n = len(rngs)
    a = np.zeros((n, mapsize, mapsize))
    step = mapsize
    wibble = 100.0

    def wibbled(arr):
        return arr / 4 + wibble * _stack(rngs, lambda r: r.uniform(-wibble, wibble, arr.shape[1:]))

    while step >= 2:
        h = step // 2
        corner = a[:, 0:mapsize:step, 0:mapsize:step]
        sq = corner + np.roll(corner, -1, axis=1)
        sq = sq + np.roll(sq, -1, axis=2)
        a[:, h:mapsize:step, h:mapsize:step] = wibbled(sq)
        dr = a[:, h:mapsize:step, h:mapsize:step]
        ul = a[:, 0:mapsize:step, 0:mapsize:step]
        lt = dr + np.roll(dr, 1, axis=1) + ul + np.roll(ul, -1, axis=2)
        a[:, 0:mapsize:step, h:mapsize:step] = wibbled(lt)
        tt = dr + np.roll(dr, 1, axis=2) + ul + np.roll(ul, -1, axis=1)
        a[:, h:mapsize:step, 0:mapsize:step] = wibbled(tt)
        step //= 2
        wibble /= decay
    a -= a.min(axis=(1, 2), keepdims=True)
    return a / a.max(axis=(1, 2), keepdims=True)


def fog(u, c, rngs):
    x = u / 255
    max_val = x.amax(dim=(1, 2, 3), keepdim=True)
    x = x + c[0] * torch.from_numpy(_plasma(rngs, c[1])).unsqueeze(1)
    return (x * max_val / (max_val + c[0])).clamp(0, 1) * 255


# ---------------------------------------------------------------------------------------- digital

def brightness(u, c, rngs):
    # rgb -> hsv, v = clip(v + c), hsv -> rgb: with hue and saturation fixed, rgb scales with v; a black
    # pixel (v = 0, saturation 0) becomes grey v'
    x = u / 255
    v = x.amax(dim=1, keepdim=True)
    v2 = (v + c).clamp(0, 1)
    out = torch.where(v > 0, x * v2 / v.clamp_min(1e-12), v2.expand_as(x))
    return out.clamp(0, 1) * 255


def contrast(u, c, rngs):
    x = u / 255
    means = x.mean(dim=(2, 3), keepdim=True)  # CIFAR version: per-channel means (axis=(0, 1) of HWC)
    return ((x - means) * c + means).clamp(0, 1) * 255


def elastic_transform(u, c, rngs):
    alpha, sigma, jitter = c
    n = len(u)
    x = (u / 255).float().double()
    centre, half = SIZE // 2, SIZE // 3
    pts1 = np.array([[centre + half, centre + half], [centre + half, centre - half], [centre - half, centre - half]],
                    dtype=np.float64)  # (x, y) as in OpenCV
    pts2 = pts1 + _stack(rngs, lambda r: r.uniform(-jitter, jitter, size=(3, 2)).astype(np.float32))
    dxy = _stack(rngs, lambda r: r.uniform(-1, 1, size=(2, SIZE, SIZE)))
    # cv2.getAffineTransform(pts1, pts2) then warpAffine: dst(p) = src(M^-1 p), bilinear (OpenCV quantises
    # the source coordinates to 1/32 pixel), BORDER_REFLECT_101
    A = np.concatenate([pts1, np.ones((3, 1))], axis=1)  # (3, 3)
    M = np.linalg.solve(A[None].repeat(n, 0), pts2).transpose(0, 2, 1)  # (n, 2, 3): M @ [x, y, 1] = p2
    M3 = np.concatenate([M, np.tile([[[0.0, 0.0, 1.0]]], (n, 1, 1))], axis=1)
    inv = np.linalg.inv(M3)
    yy, xx = np.meshgrid(np.arange(SIZE), np.arange(SIZE), indexing="ij")
    P = np.stack([xx.ravel(), yy.ravel(), np.ones(SIZE * SIZE)])  # (3, HW)
    src = inv[:, :2] @ P  # (n, 2, HW): source x, y
    sx = torch.from_numpy(np.round(src[:, 0] * 32) / 32).view(n, SIZE, SIZE)
    sy = torch.from_numpy(np.round(src[:, 1] * 32) / 32).view(n, SIZE, SIZE)
    x = _bilinear(x, sy, sx, "reflect101").float().double()
    # displacement fields: gaussian(uniform(-1, 1), sigma, mode='reflect', truncate=3) * alpha
    dfield = _gaussian(torch.from_numpy(dxy), sigma, "symmetric", truncate=3.0) * alpha
    dfield = dfield.float().double()
    rows = torch.arange(SIZE, dtype=torch.float64).view(1, SIZE, 1) + dfield[:, 1]
    cols = torch.arange(SIZE, dtype=torch.float64).view(1, 1, SIZE) + dfield[:, 0]
    return _bilinear(x, rows, cols, "symmetric").clamp(0, 1) * 255


def pixelate(u, c, rngs):
    s = int(SIZE * c)
    return _from_pil([im.resize((s, s), Image.BOX).resize((SIZE, SIZE), Image.BOX) for im in _to_pil(u)])


def jpeg_compression(u, c, rngs):
    out = []
    for im in _to_pil(u):
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=int(c))
        buf.seek(0)
        out.append(Image.open(buf).convert("RGB"))
    return _from_pil(out)


FUNCTIONS = {
    "gaussian_noise": gaussian_noise, "shot_noise": shot_noise, "impulse_noise": impulse_noise,
    "defocus_blur": defocus_blur, "glass_blur": glass_blur, "motion_blur": motion_blur, "zoom_blur": zoom_blur,
    "snow": snow, "frost": frost, "fog": fog, "brightness": brightness, "contrast": contrast,
    "elastic_transform": elastic_transform, "pixelate": pixelate, "jpeg_compression": jpeg_compression,
}
