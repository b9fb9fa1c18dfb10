"""Energy attack on channel-gated networks (in the spirit of ILFO, Haque et al., CVPR 2020).

A gated network saves computation by closing gates; an attacker who opens them raises the MACs
executed per input (a denial-of-service on the efficiency the gates were trained for). The attack
is PGD (:class:`~robustbench_dyn.threats.pgd.ObjectivePGD`) on the gates' *activation*:

* ``form = "prob"`` (default): ``mean_c sigmoid(z_c)`` per block, the soft gate probabilities: the
  gradient concentrates on the gates near their threshold, the ones a small perturbation can flip;
* ``form = "hinge"``: ``-mean_c relu(margin - z_c)`` on the gate logits ``z``: every gate below
  ``margin`` pulls equally, however far it is from opening (no saturation for very closed gates).
  On the shipped ``gated`` model it opens fewer gates than ``prob`` (most closed gates sit 3-4 logits
  below threshold, out of reach at eps <= 8/255, and dominate the hinge's direction).

Blocks are weighted by their share of the executable MACs (``weight = "macs"``, from
:func:`costs.gated_cost`) so the objective is the soft version of the executed-MACs fraction, or
equally per gated channel (``weight = "channels"``). The example returned per input is the iterate
with the most executed MACs (hard gates, eval mode). The registered ``energy`` attack uses BPDA
(``bpda = true``): gradients also flow through the hard gates of earlier blocks via their sigmoid
surrogate; the forward pass (and so the measured MACs) is the exact hard-gate network.

:func:`energy_study` measures executed MACs clean vs attacked, as a fraction of the static
network's MACs, with the hard-gate densities measured in eval mode, and whether the label changed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..costs import gated_cost
from ..layers import ChannelGate, GateRecorder
from ._common import Progress, accuracy, record, reference_macs, run_attack, to_list
from .pgd import ObjectivePGD


def has_gates(model: nn.Module) -> bool:
    return any(isinstance(m, ChannelGate) for m in model.modules())


class GateEnergyAttack(ObjectivePGD):
    """Maximise the gates' activation (see the module docstring). Settings: form (prob | hinge), margin,
    weight (macs | channels), plus the ObjectivePGD settings (steps, rel_step, eot, ...) and bpda."""

    defaults = {**ObjectivePGD.defaults, "form": "prob", "margin": 1.0, "weight": "macs"}
    choices = {**ObjectivePGD.choices, "form": ("prob", "hinge"), "weight": ("macs", "channels")}
    description = "energy attack: PGD maximising the gate activation of a gated network (executed MACs)"

    def prepare(self, model, x, y, state):
        if not has_gates(model):
            from ..errors import ConfigError

            raise ConfigError("the energy attack needs a model with ChannelGates", "use a gated model (e.g. gated)")
        if self.settings["weight"] == "macs":
            w = torch.tensor(gated_cost(model).gated, dtype=torch.float32, device=x.device)
        else:
            w = torch.tensor([m.fc2.out_features for m in model.modules() if isinstance(m, ChannelGate)],
                             dtype=torch.float32, device=x.device)
        state["weights"] = w / w.sum()

    def objective(self, model, x_adv, y, ctx):
        s, w = self.settings, ctx.state["weights"]
        with GateRecorder(model) as rec:
            model(x_adv)
        if s["form"] == "hinge":
            act = [-F.relu(s["margin"] - z.float()).mean(1) for z in rec.logits]
        else:
            act = [torch.sigmoid(z.float()).mean(1) for z in rec.logits]
        value = (torch.stack(act, 1) * w).sum(1)
        hard = (torch.stack([g.detach().float().mean(1) for g in rec.gates], 1) * w).sum(1)
        soft = (torch.stack([torch.sigmoid(z.detach().float()).mean(1) for z in rec.logits], 1) * w).sum(1)
        return value, hard + 1e-3 * soft  # executed-MACs share of the gated convs; soft breaks ties


def energy_study(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps_grid, *, settings: dict | None = None,
                 attack: str = "energy", reference: float | None = None, batch_size: int = 100,
                 seed_key: str = "threats", progress: Progress | None = None) -> list[dict]:
    """Executed MACs clean vs under the energy attack, one dict per eps of ``eps_grid``.

    Each dict: eps, n, macs_static (the reference: static ResNet-20 unless ``reference`` is given),
    macs_full (this model at gate density 1), macs_clean / macs_adv (mean executed MACs per example),
    frac_clean / frac_adv (those as a fraction of macs_static), increase (macs_adv / macs_clean),
    density_clean / density_adv (mean fraction of open gates), density_blocks_clean / _adv, acc_clean /
    acc_adv (robust accuracy: correct clean and attacked), label_changed (fraction of examples whose
    prediction changed), frac_examples_up (fraction whose MACs rose), macs_clean_examples /
    macs_adv_examples (per example, for distributions).
    """
    reference = reference_macs() if reference is None else float(reference)
    full = gated_cost(model).full
    clean = record(model, x, batch_size)
    out = []
    for eps in sorted(float(e) for e in eps_grid):
        xa = run_attack(model, attack, x, y, eps, settings=settings, batch_size=batch_size, seed_key=seed_key,
                        progress=progress)
        adv = record(model, xa, batch_size)
        mc, ma = clean.macs(), adv.macs()
        out.append({
            "eps": eps, "n": len(x), "macs_static": reference, "macs_full": full,
            "macs_clean": float(mc.mean()), "macs_adv": float(ma.mean()),
            "frac_clean": float(mc.mean() / reference), "frac_adv": float(ma.mean() / reference),
            "increase": float(ma.mean() / mc.mean()),
            "density_clean": float(clean.density_mean().mean()), "density_adv": float(adv.density_mean().mean()),
            "density_blocks_clean": to_list(clean.density().mean(0)),
            "density_blocks_adv": to_list(adv.density().mean(0)),
            "acc_clean": accuracy(clean, y), "acc_adv": accuracy(adv, y, clean),
            "label_changed": float((clean.pred != adv.pred).mean()),
            "frac_examples_up": float((ma > mc).mean()),
            "macs_clean_examples": to_list(mc, 1), "macs_adv_examples": to_list(ma, 1),
        })
    return out
