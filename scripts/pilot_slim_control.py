#!/usr/bin/env python3
"""Recipe-pilot control: the gated ResNet-20 with its gates replaced by a FIXED channel mask.

Every gate module returns the same mask for every input: the first ``round(density * C)`` of the C channels
of each gated block's first convolution are open, the rest closed. The net is then a static ResNet-20 slimmed
to the executed MACs of a gated model at that density, trained with the same recipe, budget and seed as the
gated pilots (batch shaping and the MAC hinge off: a constant mask has nothing to shape). It answers: how much
of the gated pilots' gap to the full static net would any net at this compute have at this budget?

    python scripts/pilot_slim_control.py --density 0.6875 -- --epochs 10 --threads 1 --device cpu \\
        --models-dir /work/pilot/slim --run-dir /work/pilot/runs/slim

    python scripts/pilot_slim_control.py compare --slim /work/pilot/slim /work/pilot/g10 /work/pilot/g8

``compare`` runs the slim control and each gated pilot (a models folder holding ``gated``) on the full test set
and prints each gated pilot's paired accuracy difference to the slim control (percentile bootstrap over
examples, exact McNemar p).

Arguments after ``--`` go to ``scripts/train.py`` (``--model gated`` and the two ``--set`` are added). The
checkpoint it writes is a pilot artefact, not a zoo model: loaded without this script, its (untrained) gates
would run instead of the mask. Its manifest's final clean accuracy and executed MACs are measured with the mask.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from robustbench_dyn.layers import ChannelGate  # noqa: E402


def install_fixed_mask(density: float) -> None:
    """Make every ChannelGate return the fixed mask (first round(density * C) channels open)."""
    if not 0.0 < density <= 1.0:
        raise SystemExit(f"--density must be in (0, 1], got {density}")
    logits = ChannelGate.logits

    def forward(self: ChannelGate, x: torch.Tensor) -> torch.Tensor:
        z = logits(self, x)
        if self.recorders:
            self.last_logits = z
        mask = torch.zeros_like(z)
        mask[:, : max(1, round(density * z.shape[1]))] = 1
        return mask

    ChannelGate.forward = forward


def _correct(models_dir: str, data, batch: int = 500) -> np.ndarray:
    from robustbench_dyn import load_model

    model = load_model("gated", models_dir=models_dir).eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(data.y), batch):
            x = torch.from_numpy(data.x[i:i + batch]).permute(0, 3, 1, 2).float() / 255
            out.append(model(x).argmax(1).numpy() == data.y[i:i + batch])
    return np.concatenate(out)


def compare(slim: str, gated: list[str], density: float, data_dir: str | None) -> int:
    from robustbench_dyn.data import load_cifar10
    from robustbench_dyn.stats import mcnemar_exact, paired_bootstrap

    torch.manual_seed(0)
    data = load_cifar10("test", data_dir=data_dir, download=False, allow_sample=False)
    runs = {g: _correct(g, data) for g in gated}  # the learned gates first, then the mask replaces them
    install_fixed_mask(density)
    ref = _correct(slim, data)
    print(f"{data.label}, n={len(ref)}; slim control {slim} (density {density}): {100 * ref.mean():.2f} %")
    for g, c in runs.items():
        mean, lo, hi = paired_bootstrap(c.astype(float) - ref)
        b, d = int((c & ~ref).sum()), int((~c & ref).sum())
        print(f"  {g}: {100 * c.mean():.2f} %, minus slim {100 * mean:+.2f} pt [{100 * lo:+.2f}, {100 * hi:+.2f}], "
              f"McNemar p={mcnemar_exact(b, d):.1g}")
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["compare"]:
        p = argparse.ArgumentParser(prog="pilot_slim_control.py compare")
        p.add_argument("gated", nargs="+", help="models folders of gated pilots")
        p.add_argument("--slim", required=True, help="models folder of the slim control")
        p.add_argument("--density", type=float, default=0.6875)
        p.add_argument("--data-dir", default=None)
        a = p.parse_args(argv[1:])
        return compare(a.slim, a.gated, a.density, a.data_dir)
    rest = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--density", type=float, default=0.6875, help="open fraction of each gated block's channels")
    a = p.parse_args(own)
    install_fixed_mask(a.density)
    import train  # scripts/train.py

    return train.main(["--model", "gated", "--set", "bs_weight=0", "--set", "budget_weight=0",
                       "--note", f"pilot control: fixed channel mask, density {a.density} (not a zoo model)"] + rest)


if __name__ == "__main__":
    sys.exit(main())
