"""Bring your own model: a small dynamic CNN of your own through ``robustbench_dyn.benchmark()`` and the report.

    python scripts/example_own_model.py [--out example_own_model] [--n 64] [--steps 150] [--device cpu]

What it shows:

1. a user-defined dynamic CNN (``MyDynamicCNN``) with a dynamic convolution and a channel gate of its own,
   exposing their attention and gates to the suite's probes through the ``robustdyn_dynamics`` protocol
   (no robustbench_dyn layers needed; models built on robustbench_dyn.layers are seen automatically);
2. the model contract: forward maps (N, 3, 32, 32) images in [0, 1] to (N, 10) logits, the normalisation
   lives inside the model as buffers;
3. the dynamism audit (``robustbench_dyn.audit.audit_model``) on the held-out images;
4. ``benchmark(model, attacks=..., eps=..., n=..., store=...)``: one row per attack and eps (clean and
   robust accuracy with Wilson 95% intervals), written to a results store;
5. ``robustdyn report --store OUT/results.sqlite --out OUT/report``: the report of that store.

For a quick run the model trains for a few seconds on 400 images of the bundled CIFAR-10 sample and is
evaluated on the 100 held-out ones (its accuracy is far from a real model's; train properly for real numbers).
Runs on a CPU in well under a minute.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from robustbench_dyn import benchmark  # noqa: E402
from robustbench_dyn.data import CIFAR10Data, load_sample  # noqa: E402
from robustbench_dyn.dynamics import DynamicsProbe  # noqa: E402

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


# ------------------------------------------------------------------------------- your own dynamic layers

class MyKernelAttention(nn.Module):
    """Softmax attention over K kernels from the pooled input. Declares itself to the probes:
    forward returns (B, K) probabilities and ``num_kernels`` says K."""

    robustdyn_dynamics = "kernel_attention"

    def __init__(self, in_channels: int, num_kernels: int) -> None:
        super().__init__()
        self.num_kernels = num_kernels
        self.fc = nn.Linear(in_channels, num_kernels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean((2, 3))).softmax(1)


class MyDynamicConv(nn.Module):
    """K 3x3 kernels mixed per example by the attention (computed as K convs and a weighted sum)."""

    def __init__(self, cin: int, cout: int, num_kernels: int = 4) -> None:
        super().__init__()
        self.attention = MyKernelAttention(cin, num_kernels)
        self.convs = nn.ModuleList(nn.Conv2d(cin, cout, 3, padding=1, bias=False) for _ in range(num_kernels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.attention(x)  # (B, K)
        return sum(a[:, k, None, None, None] * conv(x) for k, conv in enumerate(self.convs))


class MyChannelGate(nn.Module):
    """Per-example on/off gates for C channels. Declares itself to the probes: forward returns (B, C) in
    {0, 1} and ``num_channels`` says C. The straight-through estimator keeps it differentiable, so
    gradient attacks see a gradient (a hard threshold alone would have none: the contract would say so)."""

    robustdyn_dynamics = "gate"

    def __init__(self, in_channels: int, channels: int) -> None:
        super().__init__()
        self.num_channels = channels
        self.fc = nn.Linear(in_channels, channels)
        nn.init.constant_(self.fc.bias, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        soft = torch.sigmoid(self.fc(x.mean((2, 3))))
        hard = (soft > 0.5).to(soft.dtype)
        return hard + (soft - soft.detach())


class MyDynamicCNN(nn.Module):
    """stem conv -> dynamic conv (gated channels) -> conv -> pool -> linear; 10 logits."""

    def __init__(self, width: int = 8, num_kernels: int = 4) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(CIFAR_STD).view(1, 3, 1, 1))
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.dyn = MyDynamicConv(width, 2 * width, num_kernels)
        self.bn = nn.BatchNorm2d(2 * width)
        self.gate = MyChannelGate(width, 2 * width)
        self.conv = nn.Sequential(nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1, bias=False),
                                  nn.BatchNorm2d(2 * width), nn.ReLU())
        self.fc = nn.Linear(2 * width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem((x - self.mean) / self.std)  # inputs in [0, 1]; normalisation inside the model
        g = self.gate(h)  # (B, C)
        h = F.max_pool2d(F.relu(self.bn(self.dyn(h))) * g[:, :, None, None], 2)
        return self.fc(self.conv(h).mean((2, 3)))


# ------------------------------------------------------------------------------------------------ run

def train_quickly(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    model.train()
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (64,), generator=g)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("example_own_model"), help="folder for the store and report")
    ap.add_argument("--n", type=int, default=32, help="held-out images to evaluate (at most 100)")
    ap.add_argument("--steps", type=int, default=60, help="SGD steps of the quick training")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-report", action="store_true", help="skip `robustdyn report`")
    args = ap.parse_args(argv)
    torch.manual_seed(0)

    sample = load_sample()  # 500 CIFAR-10 test images bundled with the package: no download
    held_out = CIFAR10Data(sample.x[:100], sample.y[:100], "test", "cifar10-jpeg-sample-heldout",
                           "CIFAR-10 sample (JPEG copy), first 100", "bundled sample, images 0..99")
    xt, yt = sample.tensors(np.arange(100, 500))
    model = MyDynamicCNN()
    train_quickly(model, xt, yt, args.steps)

    probe = DynamicsProbe(model)  # what the suite sees of the model's dynamics
    print(f"probes: {len(probe.layers)} attention layer(s) {[(a.name, a.K) for a in probe.layers]}, "
          f"{len(probe.blocks)} gate module(s) {probe.layout()['gates']}")

    # the dynamism audit sees the protocol layers too: is the model really dynamic?
    from robustbench_dyn.audit import audit_model, summary_row

    xa, ya = held_out.tensors()
    audit = audit_model(model, xa, ya)
    print(f"audit: {audit['verdict']} ({audit.get('why', '')})", {k: v for k, v in summary_row(audit).items()
                                                                  if v is not None and k != "verdict"})

    args.out.mkdir(parents=True, exist_ok=True)
    store = args.out / "results.sqlite"
    df = benchmark(model, attacks=["fgsm", ("pgd", {"steps": 5})], eps=["2/255", "8/255"], n=args.n,
                   data=held_out, device=args.device, store=store, name="my_dynamic_cnn")
    with np.printoptions(precision=3):
        print(df[["model", "attack", "eps_label", "clean_acc", "robust_acc", "robust_ci_low", "robust_ci_high", "n",
                  "data"]].to_string(index=False))

    if not args.no_report:
        cmd = [sys.executable, "-m", "robustbench_dyn", "report", "--store", str(store), "--out", str(args.out /
                                                                                                   "report")]
        print("$", " ".join(cmd[2:]).replace("robustbench_dyn", "robustdyn", 1))
        subprocess.run(cmd, check=True)


if __name__ == "__main__":
    main()
