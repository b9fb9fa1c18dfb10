"""FGSM (Goodfellow et al. 2015) through torchattacks: one signed-gradient step of size eps (Linf).

Deterministic (no random start), so it needs no seed. ``x_adv = clip(x + eps * sign(grad CE), 0, 1)``.
"""

from __future__ import annotations

import torch
import torchattacks
from torch import nn

from .base import Attack


class FGSM(Attack):
    """torchattacks.FGSM. Settings: only the shared ``amp`` and ``bpda``."""

    fixed_norm = "Linf"
    description = "FGSM, one signed-gradient step of size eps (torchattacks)"

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        atk = torchattacks.FGSM(model, eps=self.eps)
        atk.set_device(self.device)
        return atk(x, y)
