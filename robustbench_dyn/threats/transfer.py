"""Transfer attacks: adversarial examples crafted on one model, evaluated on the others.

Rows are source models, columns target models; entry (s, t) is the robust accuracy of ``t`` on the
examples crafted against ``s`` (correct on the clean image and on the adversarial one). The examples
are PGD-20 cross-entropy (the registry's ``pgd``: its final iterate), at 8/255 by default. The
diagonal is therefore the white-box robust accuracy of each model on exactly these examples. An
off-diagonal entry *below* the diagonal of its column means a black-box (transfer) attack beats the
white-box one on that target: a classic sign of gradient masking.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import nn

from ._common import Progress, run_attack
from .adaptive import predict


@dataclass
class TransferResult:
    """The matrix (rows source, columns target) of target accuracy on source-crafted examples."""

    names: list[str]
    acc: np.ndarray  # (sources, targets)
    clean: np.ndarray  # (targets,) clean accuracy on the same examples
    eps: float
    n: int
    attack: str = "pgd"
    settings: dict = field(default_factory=dict)

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.acc, index=pd.Index(self.names, name="source"),
                            columns=pd.Index(self.names, name="target"))

    @property
    def white_box(self) -> np.ndarray:
        return np.diag(self.acc)

    def masking_hints(self) -> list[str]:
        """Targets on which some transfer attack beats the white-box attack (accuracy strictly lower)."""
        hints = []
        for j, t in enumerate(self.names):
            others = [(self.acc[i, j], s) for i, s in enumerate(self.names) if i != j]
            if others:
                best, src = min(others)
                if best < self.acc[j, j]:
                    hints.append(f"{t}: transfer from {src} ({100 * best:.1f}%) beats white-box "
                                 f"({100 * self.acc[j, j]:.1f}%): a sign of gradient masking")
        return hints


def transfer_row(targets: dict[str, nn.Module], x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor,
                 batch_size: int = 500, ok_clean: dict[str, np.ndarray] | None = None) -> dict[str, dict]:
    """For examples ``x_adv`` crafted on one source: per target, ``acc`` (robust accuracy: correct on the
    clean and on the adversarial image) and ``clean_acc``."""
    y_np = y.cpu().numpy()
    out = {}
    for t, model in targets.items():
        ok0 = ok_clean[t] if ok_clean is not None and t in ok_clean else predict(model, x, batch_size) == y_np
        ok = (predict(model, x_adv.to(x.device), batch_size) == y_np) & ok0
        out[t] = {"acc": float(ok.mean()), "clean_acc": float(ok0.mean())}
    return out


def transfer_matrix(models: dict[str, nn.Module], x: torch.Tensor, y: torch.Tensor, eps: float = 8 / 255, *,
                    attack: str = "pgd", settings: dict | None = None, batch_size: int = 100,
                    seed_key: str = "threats", adversarial: dict | None = None,
                    progress: Progress | None = None) -> TransferResult:
    """Craft ``attack`` at ``eps`` on every model and evaluate every model on every set of examples.

    ``adversarial`` maps source name -> precomputed examples (e.g. the white-box run shared with the
    other studies); missing ones are crafted and added to it.
    """
    adversarial = adversarial if adversarial is not None else {}
    names = list(models)
    y_np = y.cpu().numpy()
    ok_clean = {t: predict(models[t], x, batch_size) == y_np for t in names}
    acc = np.zeros((len(names), len(names)))
    for i, s in enumerate(names):
        if s not in adversarial:
            adversarial[s] = run_attack(models[s], attack, x, y, eps, settings=settings, batch_size=batch_size,
                                        seed_key=seed_key, progress=progress)
        row = transfer_row(models, x, y, adversarial[s], batch_size, ok_clean)
        acc[i] = [row[t]["acc"] for t in names]
    clean = np.array([float(ok_clean[t].mean()) for t in names])
    return TransferResult(names, acc, clean, float(eps), len(x), attack, dict(settings or {}))
