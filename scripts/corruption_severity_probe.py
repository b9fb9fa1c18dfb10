"""Why two corruptions are not monotone in severity for a model: a parameter sweep around the CIFAR-10-C table.

The CIFAR-10-C severities are fixed parameter tuples (Hendrycks & Dietterich 2019). Two of them need not hurt
more as the severity number grows:

* glass_blur (sigma, max_delta, iterations) = (0.05,1,1) (0.25,1,1) (0.4,1,1) (0.25,1,2) (0.4,1,2): within the same
  number of pixel-shuffle passes a larger sigma smooths the shuffle's high-frequency noise away. The sweep holds
  the shuffle fixed and varies sigma.
* jpeg_compression at quality 80/65/58/50/40, applied to images that are already JPEG (the JPEG copy of CIFAR-10 is
  libjpeg quality 75): quality 50's quantisation table is exactly twice quality 75's, the worst case of double
  quantisation. The sweep covers qualities 30-85 and prints the distortion (PSNR) beside the accuracy.

Forward passes only, on the seeded subset the corruption evaluation uses (seconds per point on one CPU core):

    python scripts/corruption_severity_probe.py --model static --n 2000 --data-dir DATA
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from robustbench_dyn.corruptions import _generators  # noqa: E402
from robustbench_dyn.corruptions._ops import glass_blur  # noqa: E402
from robustbench_dyn.data import load_cifar10  # noqa: E402
from robustbench_dyn.registry import load_model  # noqa: E402


def jpeg_quality_of(data_dir: Path | None) -> str:
    """The libjpeg quality of the JPEG copy's source files, read from the first file's luminance table."""
    pack = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10" / "cifar10-test-jpeg.npz"
    if not pack.exists():
        return "unknown (JPEG pack not found)"
    d = np.load(pack)
    blob = d["jpeg"][d["offsets"][0]:d["offsets"][1]].tobytes()
    table = Image.open(io.BytesIO(blob)).quantization[0]
    base = [16, 11, 10, 16, 24, 40, 51, 61]  # IJG standard luminance table, first row
    for q in range(1, 101):
        scale = 5000 / q if q < 50 else 200 - 2 * q
        if [max(1, min(255, (b * scale + 50) // 100)) for b in base] == list(table[:8]):
            return str(q)
    return "not an IJG table"


def accuracy(model, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        pred = torch.cat([model(x[i:i + 250]).argmax(1) for i in range(0, len(x), 250)])
    return float((pred == y).float().mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="static")
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    a = p.parse_args()
    torch.set_num_threads(1)
    data = load_cifar10("test", a.data_dir)
    idx = data.subset(a.n, a.seed)
    u8 = data.x[idx]
    x = torch.from_numpy(u8).permute(0, 3, 1, 2).float() / 255
    y = torch.from_numpy(data.y[idx])
    model = load_model(a.model).eval()
    out = {"model": a.model, "n": len(idx), "seed": a.seed, "data": data.label, "device": "cpu",
           "source_jpeg_quality": jpeg_quality_of(a.data_dir), "clean": accuracy(model, x, y), "jpeg": [], "glass": []}
    for q in (85, 80, 75, 70, 65, 58, 55, 50, 45, 40, 35, 30):
        dec, mse = [], []
        for img in u8:
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, "JPEG", quality=q)
            buf.seek(0)
            r = np.asarray(Image.open(buf).convert("RGB"))
            dec.append(r)
            mse.append(((r.astype(np.float64) - img) ** 2).mean())
        xq = torch.from_numpy(np.stack(dec)).permute(0, 3, 1, 2).float() / 255
        psnr = 10 * np.log10(255 ** 2 / np.mean(mse))
        out["jpeg"].append({"quality": q, "psnr_db": round(float(psnr), 2), "acc": accuracy(model, xq, y)})
    u = torch.round(x.double() * 255)
    for iterations in (1, 2):
        rngs = _generators(a.seed, "glass_blur", idx)
        for sigma in (0.05, 0.15, 0.25, 0.4, 0.6):
            xg = torch.floor(glass_blur(u, (sigma, 1, iterations), rngs).clamp(0, 255) + 1e-9) / 255
            rngs = _generators(a.seed, "glass_blur", idx)  # the same shuffle for every sigma
            out["glass"].append({"sigma": sigma, "iterations": iterations, "acc": accuracy(model, xg.float(), y)})
    if a.json:
        print(json.dumps(out))
        return
    print(f"{a.model}: n={out['n']} seed={a.seed}, {out['data']}, cpu; clean {100 * out['clean']:.2f} %; "
          f"source JPEG quality {out['source_jpeg_quality']}")
    print("jpeg quality  PSNR dB  acc %   (CIFAR-10-C severities 1-5 = quality 80, 65, 58, 50, 40)")
    for r in out["jpeg"]:
        print(f"  {r['quality']:>3}        {r['psnr_db']:6.2f}  {100 * r['acc']:6.2f}")
    print("glass blur sigma  iterations  acc %   (severities 1-3 = sigma .05/.25/.4 x1; 4-5 = .25/.4 x2)")
    for r in out["glass"]:
        print(f"  {r['sigma']:<5}           {r['iterations']}        {100 * r['acc']:6.2f}")


if __name__ == "__main__":
    main()
