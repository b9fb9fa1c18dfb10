"""Helpers shared by the threat studies: batched, seeded attacks and probe records."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from ..attacks import Attack, get_attack
from ..dynamics import DynamicsProbe, ProbeRecord

Progress = Callable[[int], None]  # called with the number of examples just finished


def build_attack(attack: str | type[Attack], model: nn.Module, eps: float, device, settings: dict | None) -> Attack:
    """A registered attack by name, or an Attack class, for ``model`` at ``eps``."""
    settings = settings or {}
    if isinstance(attack, str):
        return get_attack(attack).create(model, eps, device=device, **settings)
    return attack(model, eps, device=device, **settings)


def run_attack(model: nn.Module, attack: str | type[Attack], x: torch.Tensor, y: torch.Tensor, eps: float, *,
               settings: dict | None = None, batch_size: int = 100, seed_key: str = "threats",
               progress: Progress | None = None) -> torch.Tensor:
    """Adversarial examples for all of ``x`` (same device), attacked in chunks of ``batch_size``; each
    chunk runs under an RNG seeded by (``seed_key``, chunk start, eps), so results are reproducible and
    independent of what ran before. Examples are verified by the attack (in [0, 1], in the eps ball)."""
    from ..evaluation import seeded  # lazy: evaluation imports attacks, which import this package

    device = x.device
    out = torch.empty_like(x)
    for start in range(0, len(x), batch_size):
        sl = slice(start, start + batch_size)
        atk = build_attack(attack, model, eps, device, settings)
        with seeded(f"{seed_key}:{start}:{eps!r}", device):
            out[sl] = atk(x[sl], y[sl])
        if progress is not None:
            progress(len(x[sl]))
    return out


def record(model: nn.Module, x: torch.Tensor, batch_size: int = 500) -> ProbeRecord:
    """Clean/adversarial record (logits, attention, gates, MACs) in eval mode, fp32, no grad."""
    return DynamicsProbe(model).record(x, batch_size=batch_size)


def accuracy(rec: ProbeRecord, y: torch.Tensor, clean: ProbeRecord | None = None) -> float:
    """Accuracy of ``rec``; with ``clean``, robust accuracy: correct on the clean *and* on this input."""
    if not len(rec):
        return float("nan")
    y_np = y.cpu().numpy()
    ok = rec.pred == y_np
    if clean is not None:
        ok &= clean.pred == y_np
    return float(np.mean(ok))


@functools.cache
def reference_macs(arch: str = "cifar_resnet", depth: int = 20) -> float:
    """MACs per 32x32 image of the static network of the same architecture (the denominator of the
    energy attack's "fraction of static MACs")."""
    from ..costs import count_macs
    from ..registry import create_model

    if arch == "cifar_resnet50":
        return float(count_macs(create_model("resnet50_static")))
    return float(count_macs(create_model("static", depth=depth)))


def binomial_sf(k: int, n: int, p: float = 0.5) -> float:
    """P(X >= k) for X ~ Binomial(n, p), exact."""
    if k <= 0:
        return 1.0
    return float(sum(math.comb(n, i) * p ** i * (1 - p) ** (n - i) for i in range(k, n + 1)))


def to_list(a, digits: int = 6) -> list:
    return [None if (isinstance(v, float) and math.isnan(v)) else round(float(v), digits)
            for v in np.asarray(a, dtype=np.float64).ravel()]
