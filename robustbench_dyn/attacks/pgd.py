"""Projected gradient descent (Madry et al. 2018), Linf and L2.

Two implementations:

* :class:`TorchattacksPGD` (names ``pgd``, ``pgd-l2``): torchattacks.PGD / PGDL2, cross-entropy,
  random start, the final iterate; with ``restarts > 1`` each restart attacks only the examples
  still classified correctly and the first adversarial example found is kept.
* :class:`LossPGD` (names ``pgd-ce``, ``pgd-dlr``): our own PGD with a pluggable loss, random
  restarts, per-example worst case, optional early stop (pruning of broken examples) and no
  host-device synchronisation inside the step loop.

Defaults (the usual evaluation settings, e.g. Madry et al., RobustBench): 20 steps, step size
``rel_step * eps`` with ``rel_step = 0.25`` (2/255 at eps = 8/255 for Linf; 0.125 at eps = 0.5 for
L2), uniform random start in the ball, 1 restart. ``step`` (absolute) overrides ``rel_step``. The
step is relative by default so that one setting serves a whole eps grid.

Pluggable loss (:class:`LossPGD`)
---------------------------------
A loss is a callable ``loss(model, x_adv, y, ctx) -> (per_example_loss, logits)``:

* ``model``: the model in eval mode (possibly autocast-wrapped); the loss runs the forward pass
  itself, so it may wrap it in probes (forward hooks on attention or gate modules) to build losses
  on attention or gates;
* ``x_adv`` (B, C, H, W), requires grad; ``y`` (B,) labels;
* ``ctx``: a :class:`LossContext` with the clean inputs of the same examples (``x_clean``), ``eps``,
  ``norm``, ``step``/``steps``, ``index`` (positions of these examples in the attacked batch, which
  shrinks when early stop prunes broken examples) and ``state`` (a dict kept for the whole batch,
  e.g. to cache clean attention computed once; index it with ``ctx.index``);
* returns the per-example loss to *maximise*, shape (B,), and the logits (B, num_classes) of that
  same forward pass (used to detect misclassified iterates without a second forward).

Register one with :func:`register_loss` and an attack using it with
``register_attack("pgd-mine", LossPGD, loss="mine")`` (see :mod:`robustbench_dyn.attacks`).

What :class:`LossPGD` returns per example: the first iterate (over restarts and steps) that the
model misclassifies; if there is none, the final iterate of the restart with the highest loss.
Restart r > 0 attacks only examples not yet broken. Random starts are drawn for the whole batch
whatever was pruned, so ``early_stop`` changes the amount of work, never the examples returned
(up to floating-point differences of batch composition).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
import torchattacks
from torch import nn

from ..errors import ConfigError
from .base import Attack, AutocastLogits


def step_size(settings: dict, eps: float) -> float:
    return settings["step"] if settings.get("step") is not None else settings["rel_step"] * eps


class TorchattacksPGD(Attack):
    """torchattacks.PGD (Linf) or PGDL2 (L2). Settings: steps, rel_step | step, random_start, restarts."""

    defaults = {"norm": "Linf", "steps": 20, "rel_step": 0.25, "step": None, "random_start": True, "restarts": 1}
    choices = {"norm": ("Linf", "L2")}
    description = "PGD with cross-entropy (torchattacks), random start"

    def _one(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        s, alpha = self.settings, step_size(self.settings, self.eps)
        if s["norm"] == "Linf":
            atk = torchattacks.PGD(model, eps=self.eps, alpha=alpha, steps=s["steps"], random_start=s["random_start"])
        else:
            atk = torchattacks.PGDL2(model, eps=self.eps, alpha=alpha, steps=s["steps"],
                                     random_start=s["random_start"])
        atk.set_device(self.device)
        return atk(x, y)

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x_adv = self._one(model, x, y)
        for _ in range(self.settings["restarts"] - 1):
            with torch.no_grad():
                robust = (model(x_adv).argmax(1) == y).nonzero().flatten()
            if robust.numel() == 0:
                break
            x_adv[robust] = self._one(model, x[robust], y[robust])
        return x_adv


# ------------------------------------------------------------------------------------------ losses

@dataclass
class LossContext:
    """What a loss sees besides the model, the current iterate and the labels (see module docstring)."""

    x_clean: torch.Tensor
    eps: float
    norm: str
    step: int
    steps: int
    index: torch.Tensor
    state: dict[str, Any] = field(default_factory=dict)


LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, LossContext], tuple[torch.Tensor, torch.Tensor]]
LOSSES: dict[str, LossFn] = {}


def register_loss(name: str, fn: LossFn, replace: bool = False) -> LossFn:
    """Make ``fn`` available as ``loss = name`` for :class:`LossPGD` attacks."""
    if name in LOSSES and not replace:
        raise ValueError(f"loss {name!r} is already registered")
    LOSSES[name] = fn
    return fn


def ce_loss(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor, ctx: LossContext):
    """Cross-entropy of the true class (per example)."""
    logits = model(x_adv)
    return F.cross_entropy(logits.float(), y, reduction="none"), logits


def dlr_margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """DLR loss (Croce and Hein 2020): -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3), scale-invariant.
    Needs at least 3 classes."""
    z = logits.float()
    zs, _ = z.sort(dim=1, descending=True)
    z_y = z.gather(1, y[:, None]).squeeze(1)
    other = z.scatter(1, y[:, None], float("-inf")).amax(dim=1)
    return -(z_y - other) / (zs[:, 0] - zs[:, 2] + 1e-12)


def dlr_loss(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor, ctx: LossContext):
    """DLR margin loss: robust to the logit scaling that makes cross-entropy gradients vanish."""
    logits = model(x_adv)
    return dlr_margin(logits, y), logits


register_loss("ce", ce_loss)
register_loss("dlr", dlr_loss)


# ------------------------------------------------------------------------------------------ LossPGD

def _random_start(x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    if norm == "Linf":
        delta = torch.empty_like(x).uniform_(-eps, eps)
    else:
        delta = torch.randn_like(x)
        n = delta.reshape(len(x), -1).norm(dim=1).clamp_min(1e-12).reshape(-1, 1, 1, 1)
        r = torch.rand(len(x), 1, 1, 1, device=x.device, dtype=x.dtype)
        delta = delta / n * r * eps
    return (x + delta).clamp(0, 1)


def _project(x_new: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    if norm == "Linf":
        return torch.minimum(torch.maximum(x_new, x - eps), x + eps).clamp(0, 1)
    delta = x_new - x
    n = delta.reshape(len(x), -1).norm(dim=1).reshape(-1, 1, 1, 1)
    delta = delta * torch.clamp(eps / n.clamp_min(1e-12), max=1.0)
    return (x + delta).clamp(0, 1)


def _ascent(x_adv: torch.Tensor, grad: torch.Tensor, alpha: float, norm: str) -> torch.Tensor:
    if norm == "Linf":
        return x_adv + alpha * grad.sign()
    g = grad.reshape(len(grad), -1).norm(dim=1).clamp_min(1e-12).reshape(-1, 1, 1, 1)
    return x_adv + alpha * grad / g


class LossPGD(Attack):
    """Our PGD with a pluggable loss (see the module docstring).

    Settings: norm (Linf | L2), steps, rel_step | step, restarts, random_start, loss (a name in
    :data:`LOSSES`), early_stop (prune broken examples from the batch every ``prune_every`` steps:
    less work, same result), plus the shared amp / bpda.
    """

    defaults = {"norm": "Linf", "steps": 20, "rel_step": 0.25, "step": None, "restarts": 1, "random_start": True,
                "loss": "ce", "early_stop": False, "prune_every": 4}
    choices = {"norm": ("Linf", "L2")}
    description = "PGD with a pluggable loss, restarts keeping the worst case per example"

    @classmethod
    def validate(cls, settings: dict, where: str) -> None:
        if settings["loss"] not in LOSSES:
            import difflib

            close = difflib.get_close_matches(settings["loss"], list(LOSSES), n=3, cutoff=0.4)
            raise ConfigError(f"{where}: unknown loss {settings['loss']!r}",
                              f"did you mean {', '.join(close)}?" if close else f"known losses: {', '.join(LOSSES)}")
        if settings["restarts"] < 1 or settings["prune_every"] < 1:
            raise ConfigError(f"{where}: restarts and prune_every must be at least 1", "set them to 1 or more")

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        s = self.settings
        eps, norm, steps = self.eps, s["norm"], s["steps"]
        alpha = step_size(s, eps)
        loss_fn = LOSSES[s["loss"]]
        B = len(x)
        # with amp, "misclassified" is first seen on bf16 logits; an fp32 forward confirms it (every
        # prune_every steps and at the end of each restart) and unconfirmed examples go on being attacked
        fp32 = model.model if isinstance(model, AutocastLogits) else None
        confirmed = torch.zeros(B, dtype=torch.bool, device=x.device)
        best = x.clone()
        found = torch.zeros(B, dtype=torch.bool, device=x.device)
        best_loss = torch.full((B,), float("-inf"), device=x.device)
        state: dict[str, Any] = {}
        for r in range(s["restarts"]):
            start = _random_start(x, eps, norm) if s["random_start"] else x.clone()  # whole batch: same RNG use
            sel = torch.arange(B, device=x.device) if r == 0 else (~found).nonzero().flatten()
            if sel.numel() == 0:
                break
            xa, x0, y0 = start[sel], x[sel], y[sel]
            for t in range(steps):
                if fp32 is not None and t > 0 and t % s["prune_every"] == 0:
                    self._confirm(fp32, x, y, best, found, confirmed, best_loss)
                if s["early_stop"] and t > 0 and t % s["prune_every"] == 0:
                    keep = (~found[sel]).nonzero().flatten()  # one sync every prune_every steps
                    if keep.numel() == 0:
                        break
                    if keep.numel() < sel.numel():
                        sel, xa, x0, y0 = sel[keep], xa[keep], x0[keep], y0[keep]
                xa = xa.detach().requires_grad_(True)
                ctx = LossContext(x0, eps, norm, t, steps, sel, state)
                loss, logits = loss_fn(model, xa, y0, ctx)
                (grad,) = torch.autograd.grad(loss.sum(), xa)
                xa = xa.detach()
                self._record(best, found, sel, xa, logits.detach().argmax(1) != y0)
                xa = _project(_ascent(xa, grad, alpha, norm), x0, eps, norm)
            with torch.no_grad():  # the final iterate of this restart
                ctx = LossContext(x0, eps, norm, steps, steps, sel, state)
                loss, logits = loss_fn(model, xa, y0, ctx)
            self._record(best, found, sel, xa, logits.argmax(1) != y0)
            if fp32 is not None:
                self._confirm(fp32, x, y, best, found, confirmed, best_loss)
            better = ~found[sel] & (loss.float() > best_loss[sel])
            best[sel] = torch.where(better[:, None, None, None], xa, best[sel])
            best_loss[sel] = torch.where(better, loss.float(), best_loss[sel])
        return best

    @staticmethod
    @torch.no_grad()
    def _confirm(fp32: nn.Module, x: torch.Tensor, y: torch.Tensor, best: torch.Tensor, found: torch.Tensor,
                 confirmed: torch.Tensor, best_loss: torch.Tensor) -> None:
        """fp32 check of the examples found (on bf16 logits) since the last check: confirmed ones stay
        found; the others are attacked on from their current iterate and, unless a later iterate
        breaks them, end with this restart's final iterate (they are all still in the restart's batch:
        pruning happens only after a check)."""
        cand = (found & ~confirmed).nonzero().flatten()
        if cand.numel() == 0:
            return
        ok = fp32(best[cand]).argmax(1) != y[cand]
        confirmed[cand[ok]] = True
        found[cand[~ok]] = False
        best[cand[~ok]] = x[cand[~ok]]
        best_loss[cand[~ok]] = float("-inf")

    @staticmethod
    def _record(best: torch.Tensor, found: torch.Tensor, sel: torch.Tensor, xa: torch.Tensor,
                mis: torch.Tensor) -> None:
        """Keep ``xa`` for the examples it breaks first (no host sync: masked index writes)."""
        new = mis & ~found[sel]
        best[sel] = torch.where(new[:, None, None, None], xa, best[sel])
        found[sel] = found[sel] | mis
