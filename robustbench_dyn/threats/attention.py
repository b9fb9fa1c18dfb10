"""Attention attacks on dynamic convolutions (DyConv, ODConv).

A dynamic conv picks its kernel mixture per input; an attacker may aim at that choice instead of
(or before) the label:

* :class:`AttentionShiftAttack` (``attn-shift``): maximise ``sum_l KL(a_l(x) || a_l(x + delta))``, the
  divergence between the clean and the current kernel attention, summed over the dynamic layers
  (for ODConv with K = 1, whose kernel attention is constant, the spatial attention normalised to a
  distribution over the k x k positions: the same convention as :mod:`robustbench_dyn.dynamics`);
* :class:`AttentionTargetAttack` (``attn-target``): push the attention onto kernel ``target``:
  maximise ``sum_l log a_l(x + delta)[target]`` over the layers with more than ``target`` kernels and at
  least two (a K = 1 layer's kernel attention is the constant 1: there is nothing to push).

Neither looks at the label. :func:`attention_study` runs both next to label PGD (cross-entropy,
PGD-20, the registry's ``pgd``) at the same eps and reports the accuracy each one costs and the
attention shift each one achieves (measured by :class:`~robustbench_dyn.dynamics.DynamicsProbe`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from ..layers import DyConv2d, ODConv2d
from ._common import Progress, accuracy, record, run_attack
from .pgd import ObjectivePGD

_EPS = 1e-12


def targetable(K: int, target: int) -> bool:
    """Whether a layer with ``K`` kernels has a kernel attention the targeted attack can move onto
    kernel ``target`` (K = 1: the kernel attention is the constant 1, independent of the input)."""
    return K > max(target, 1)


def attention_layers(model: nn.Module) -> list[nn.Module]:
    """The DyConv2d / ODConv2d layers of ``model`` in module order."""
    return [m for m in model.modules() if isinstance(m, (DyConv2d, ODConv2d))]


def has_attention(model: nn.Module) -> bool:
    return bool(attention_layers(model))


class AttentionTap:
    """Forward hooks that keep, with their autograd graph, each dynamic layer's kernel attention
    (B, K) and its shift distribution (kernel attention, or normalised spatial attention for ODConv
    with K = 1). One forward pass per ``with`` block; forward stays logits-only."""

    def __init__(self, model: nn.Module) -> None:
        self.layers = attention_layers(model)
        self.kernel: list[torch.Tensor | None] = [None] * len(self.layers)
        self.shift: list[torch.Tensor | None] = [None] * len(self.layers)
        self._handles: list = []

    def __enter__(self) -> AttentionTap:
        for i, layer in enumerate(self.layers):
            self._handles.append(layer.attention.register_forward_hook(self._hook(i, layer)))
        return self

    def _hook(self, i: int, layer: nn.Module):
        spatial_shift = isinstance(layer, ODConv2d) and layer.K == 1

        def hook(module, inputs, out):
            if self.kernel[i] is not None:
                return
            kernel = out.kernel if hasattr(out, "kernel") else out
            self.kernel[i] = kernel.float()
            if spatial_shift:
                s = out.spatial.float()
                self.shift[i] = s / s.sum(1, keepdim=True).clamp_min(_EPS)
            else:
                self.shift[i] = kernel.float()
        return hook

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


def tap(model: nn.Module, x: torch.Tensor) -> AttentionTap:
    """Run ``model(x)`` and return the tapped attention."""
    with AttentionTap(model) as t:
        model(x)
    return t


def kl_sum(p: list[torch.Tensor], q: list[torch.Tensor]) -> torch.Tensor:
    """(B,) sum over layers of KL(p_l || q_l) (p treated as fixed)."""
    total = 0.0
    for pl, ql in zip(p, q, strict=True):
        pl = pl.detach()
        total = total + (pl * (torch.log(pl.clamp_min(_EPS)) - torch.log(ql.clamp_min(_EPS)))).sum(1)
    return total


class AttentionShiftAttack(ObjectivePGD):
    """Maximise the KL between the clean and the current attention, summed over the dynamic layers."""

    description = "attention-shift attack: PGD maximising sum_l KL(clean attention || attacked attention)"

    def prepare(self, model, x, y, state):
        if not has_attention(model):
            raise ConfigError("the attention attacks need DyConv/ODConv layers", "use a dyconv_* or odconv_* model")
        with torch.no_grad():
            state["clean"] = [p.detach() for p in tap(model, x).shift]

    def objective(self, model, x_adv, y, ctx):
        t = tap(model, x_adv)
        kl = kl_sum([p[ctx.index] for p in ctx.state["clean"]], t.shift)
        return kl, kl.detach()


class AttentionTargetAttack(ObjectivePGD):
    """Push the kernel attention of every layer with more than ``target`` kernels onto kernel ``target``:
    maximise sum_l log a_l[target]."""

    defaults = {**ObjectivePGD.defaults, "target": 0}
    description = "targeted attention attack: PGD maximising sum_l log attention of kernel `target`"

    def prepare(self, model, x, y, state):
        j = self.settings["target"]
        layers = attention_layers(model)
        state["use"] = [i for i, m in enumerate(layers) if targetable(m.K, j)]
        if not state["use"]:
            kmax = max((m.K for m in layers), default=0)
            raise ConfigError(f"no dynamic layer of this model has a kernel attention over a kernel {j} "
                              f"(largest K = {kmax}; a K = 1 layer's kernel attention is constant)",
                              "pick a target kernel below K, or a model with K >= 2")

    def objective(self, model, x_adv, y, ctx):
        j = self.settings["target"]
        t = tap(model, x_adv)
        value = sum(torch.log(t.kernel[i][:, j].clamp_min(_EPS)) for i in ctx.state["use"])
        return value, value.detach()


def _avg(a: np.ndarray) -> float:
    """nanmean, NaN (without numpy's empty-slice warning) where nothing applies (e.g. K = 1 everywhere)."""
    return float(np.nanmean(a)) if np.isfinite(a).any() else float("nan")


def target_hit(rec, target: int) -> np.ndarray:
    """(N,) fraction of the targetable layers (K > target, K >= 2) whose dominant kernel is ``target``."""
    cols = [k.argmax(1) == target for k in rec.kernel if targetable(k.shape[1], target)]
    return np.mean(np.stack(cols, 1), 1) if cols else np.full(len(rec), np.nan)


def target_mass(rec, target: int) -> np.ndarray:
    """(N,) attention on kernel ``target``, averaged over the targetable layers (K > target, K >= 2)."""
    cols = [k[:, target] for k in rec.kernel if targetable(k.shape[1], target)]
    return np.mean(np.stack(cols, 1), 1) if cols else np.full(len(rec), np.nan)


def attention_study(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps_grid, *, target: int = 0,
                    attacks: tuple[str, ...] = ("pgd", "attn-shift", "attn-target"),
                    settings: dict[str, dict] | None = None, batch_size: int = 100, seed_key: str = "threats",
                    adversarial: dict | None = None, progress: Progress | None = None) -> list[dict]:
    """Accuracy drop and attention shift of each attack in ``attacks`` at each eps; one dict per (attack, eps).

    Each dict: attack, eps, n, target (attn-target only), acc_clean, acc_adv (robust accuracy: correct on
    the clean and on the attacked input), acc_drop (acc_clean - acc_adv, in [0, 1]), kl (mean over
    layers of KL(clean || adv), per example, then averaged), kl_sum (summed over layers: what
    attn-shift maximises), tv (total variation, mean over layers), dominant_changed
    (fraction of layers whose dominant kernel changed), target_hit_clean / target_hit_adv (fraction of
    layers whose dominant kernel is ``target``), target_attn_clean / target_attn_adv (attention on kernel
    ``target``, mean over layers), label_changed.

    ``adversarial`` (optional) maps (attack, eps) to precomputed adversarial examples (reused, e.g. the
    label PGD run shared with the other studies); newly computed ones are added to it.
    """
    from ..dynamics import DynamicsProbe

    settings = settings or {}
    adversarial = adversarial if adversarial is not None else {}
    clean = record(model, x, batch_size)
    acc_clean = accuracy(clean, y)
    out = []
    for name in attacks:
        kw = dict(settings.get(name, {}))
        if name == "attn-target":
            kw.setdefault("target", target)
        for eps in sorted(float(e) for e in eps_grid):
            key = (name, eps)
            if key not in adversarial:
                adversarial[key] = run_attack(model, name, x, y, eps, settings=kw, batch_size=batch_size,
                                              seed_key=seed_key, progress=progress)
            adv = record(model, adversarial[key], batch_size)
            shift = DynamicsProbe.compare(clean, adv)
            j = kw.get("target", target)
            out.append({
                "attack": name, "eps": eps, "n": len(x), "target": j if name == "attn-target" else None,
                "acc_clean": acc_clean, "acc_adv": accuracy(adv, y, clean),
                "acc_drop": acc_clean - accuracy(adv, y, clean),
                "kl": float(np.nanmean(shift.kl_mean())), "kl_sum": float(shift.kl.sum(1).mean()),
                "tv": float(np.nanmean(shift.tv_mean())),
                "dominant_changed": float(np.nanmean(shift.dominant_changed_frac())),
                "target_hit_clean": _avg(target_hit(clean, j)),
                "target_hit_adv": _avg(target_hit(adv, j)),
                "target_attn_clean": _avg(target_mass(clean, j)),
                "target_attn_adv": _avg(target_mass(adv, j)),
                "label_changed": float((clean.pred != adv.pred).mean()),
            })
    return out
