"""PGD on an arbitrary per-example objective, with EOT: the engine of the dynamic-aware threats.

:class:`ObjectivePGD` maximises ``objective(model, x_adv, y, ctx) -> (value, score)`` inside an
Linf or L2 ball: ``value`` (B,) is differentiated, ``score`` (B,) (detached, e.g. ``value`` itself)
picks the example returned. Unlike the label attacks of :mod:`robustbench_dyn.attacks.pgd`, nothing
here stops at the first misclassified iterate: an energy or attention attack wants the iterate that
maximises *its* objective whatever the label does.

* ``select = "best"``: per example, the point (the clean input, and every iterate over restarts and
  steps, random start included) with the highest score; ``"final"``: the last iterate of the restart
  with the highest final score.
* ``eot = S`` (Expectation over Transformation, Athalye et al. 2018): every gradient is the mean of
  S gradients, each from its own forward pass, so a stochastic model is attacked through the
  expectation of its objective; scores are averaged the same way. For a model that is deterministic
  in eval mode (every model of the zoo) the S gradients are identical and EOT equals the plain
  attack, at S times the cost (:func:`eot_gradient`, :func:`is_stochastic`).

The shared ``bpda`` setting (from :class:`~robustbench_dyn.attacks.Attack`) switches every
ChannelGate to its sigmoid surrogate gradient for the duration of the attack and restores it after.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks import Attack, LossContext
from ..errors import ConfigError

Objective = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def eot_gradient(fn: Objective, x: torch.Tensor, samples: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """EOT: the mean over ``samples`` forward passes of ``d fn(x).value.sum() / dx``, and the mean score.

    ``fn(x) -> (value (B,), score (B,))``; each call is one draw of whatever is random in the model.
    """
    if samples < 1:
        raise ValueError(f"EOT needs at least one sample, got {samples}")
    grad = torch.zeros_like(x)
    score = torch.zeros(len(x), device=x.device, dtype=torch.float32)
    for _ in range(samples):
        xs = x.detach().requires_grad_(True)
        value, sc = fn(xs)
        (g,) = torch.autograd.grad(value.sum(), xs, allow_unused=True)
        if g is not None:
            grad += g
        score += sc.detach().float()
    return grad / samples, score / samples


@torch.no_grad()
def is_stochastic(model: nn.Module, x: torch.Tensor, trials: int = 2) -> bool:
    """True when ``model`` (in its current mode) gives different logits for the same input on repeated
    forward passes: only then can EOT differ from the plain attack."""
    ref = model(x)
    return any(not torch.equal(ref, model(x)) for _ in range(trials))


def _random_start(x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    if norm == "Linf":
        return (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
    d = torch.randn_like(x)
    d = d / d.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
    return (x + d * torch.rand(len(x), 1, 1, 1, device=x.device) * eps).clamp(0, 1)


def _step(xa: torch.Tensor, grad: torch.Tensor, x: torch.Tensor, alpha: float, eps: float,
          norm: str) -> torch.Tensor:
    if norm == "Linf":
        xa = xa + alpha * grad.sign()
        return torch.minimum(torch.maximum(xa, x - eps), x + eps).clamp(0, 1)
    g = grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
    d = xa + alpha * g - x
    d = d * (eps / d.flatten(1).norm(dim=1).clamp_min(1e-12)).clamp(max=1.0).view(-1, 1, 1, 1)
    return (x + d).clamp(0, 1)


class ObjectivePGD(Attack):
    """PGD maximising :meth:`objective` (subclasses define it). Settings: norm, steps, rel_step | step,
    restarts, random_start, eot (gradient samples per step), select (best | final), plus amp / bpda."""

    defaults = {"norm": "Linf", "steps": 20, "rel_step": 0.25, "step": None, "restarts": 1, "random_start": True,
                "eot": 1, "select": "best"}
    choices = {"norm": ("Linf", "L2"), "select": ("best", "final")}
    description = "PGD on a per-example objective (EOT-capable)"

    @classmethod
    def validate(cls, settings: dict, where: str) -> None:
        if settings["eot"] < 1 or settings["restarts"] < 1:
            raise ConfigError(f"{where}: eot and restarts must be at least 1", "set them to 1 or more")

    def objective(self, model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor,
                  ctx: LossContext) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-example (value to maximise, selection score). Override."""
        raise NotImplementedError

    def prepare(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, state: dict[str, Any]) -> None:
        """Called once per batch before the steps (e.g. to cache clean attention in ``state``)."""

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        s = self.settings
        eps, norm, steps = self.eps, s["norm"], s["steps"]
        alpha = s["step"] if s["step"] is not None else s["rel_step"] * eps
        B = len(x)
        index = torch.arange(B, device=x.device)
        state: dict[str, Any] = {}
        self.prepare(model, x, y, state)
        best = x.clone()
        best_score = torch.full((B,), float("-inf"), device=x.device)
        if s["select"] == "best":  # delta = 0 is in the ball too: the attack never does worse than no attack
            ctx = LossContext(x, eps, norm, 0, steps, index, state)
            with torch.no_grad():
                best_score = torch.stack([self.objective(model, x, y, ctx)[1].float()
                                          for _ in range(s["eot"])]).mean(0)
        for _ in range(s["restarts"]):
            xa = _random_start(x, eps, norm) if s["random_start"] else x.clone()
            for t in range(steps + 1):
                ctx = LossContext(x, eps, norm, t, steps, index, state)
                fn = lambda z, ctx=ctx: self.objective(model, z, y, ctx)  # noqa: E731
                if t < steps:
                    grad, score = eot_gradient(fn, xa, s["eot"])
                else:  # the final iterate: its score only
                    with torch.no_grad():
                        score = torch.stack([fn(xa)[1].float() for _ in range(s["eot"])]).mean(0)
                if s["select"] == "best" or t == steps:
                    better = score > best_score
                    best = torch.where(better[:, None, None, None], xa, best)
                    best_score = torch.where(better, score, best_score)
                if t < steps:
                    xa = _step(xa.detach(), grad, x, alpha, eps, norm)
        return best


class EOTPGD(ObjectivePGD):
    """Label PGD (cross-entropy) with EOT gradients; returns the final iterate (as torchattacks' PGD)."""

    defaults = {**ObjectivePGD.defaults, "eot": 8, "select": "final"}
    description = "PGD-20 cross-entropy with EOT gradient averaging (for stochastic models)"

    def objective(self, model, x_adv, y, ctx):
        ce = F.cross_entropy(model(x_adv).float(), y, reduction="none")
        return ce, ce.detach()
