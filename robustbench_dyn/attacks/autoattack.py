"""AutoAttack (Croce and Hein 2020) and Square (Andriushchenko et al. 2020) through ``pyautoattack``.

* ``autoattack``: ``version = "standard"`` (APGD-CE, APGD-T, FAB-T, Square; the RobustBench
  evaluation), ``"rand"`` (APGD-CE/DLR with EOT, for randomised defences) or ``"custom"`` with
  ``attacks = [...]`` (names from apgd-ce, apgd-dlr, apgd-t, fab, fab-t, square). ``norm`` Linf or L2.
* ``square``: the black-box Square attack alone (``n_queries`` default 5000, ``p_init`` 0.8,
  margin loss). A black-box attack that beats white-box PGD signals gradient masking.

``seed`` is passed to pyautoattack (which otherwise seeds from the clock); the device is passed
explicitly (pyautoattack defaults to the CPU).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from ..errors import ConfigError
from .base import Attack

AA_ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")


def _quiet_logger() -> None:
    # pyautoattack logs its progress at DEBUG/INFO; keep its warnings (randomised defence, output range).
    logging.getLogger("auto-attack").setLevel(logging.WARNING)


class AutoAttackAdapter(Attack):
    """pyautoattack.AutoAttack. Settings: version, attacks (custom only), norm, seed."""

    defaults = {"version": "standard", "attacks": [], "norm": "Linf", "seed": 0}
    choices = {"version": ("standard", "rand", "custom"), "norm": ("Linf", "L2"), "attacks": AA_ATTACKS}
    description = "AutoAttack (pyautoattack): APGD-CE, APGD-T, FAB-T, Square"

    @classmethod
    def validate(cls, settings: dict, where: str) -> None:
        if settings["version"] == "custom" and not settings["attacks"]:
            raise ConfigError(f"{where}: version 'custom' needs a list of attacks",
                              f"set attacks = [...] from {', '.join(AA_ATTACKS)}")
        if settings["version"] != "custom" and settings["attacks"]:
            raise ConfigError(f"{where}: attacks = [...] is only used with version = 'custom'",
                              "set version = 'custom' or drop attacks")

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        from pyautoattack import AutoAttack

        _quiet_logger()
        s = self.settings
        kw = {"attacks": list(s["attacks"])} if s["version"] == "custom" else {}
        aa = AutoAttack(model, norm=s["norm"], eps=self.eps, version=s["version"], seed=s["seed"],
                        device=str(self.device), **kw)
        x_adv, _ = aa.run_standard_evaluation(x, y, batch_size=len(x))
        return x_adv


class SquareAdapter(Attack):
    """pyautoattack's SquareAttack alone. Settings: n_queries, p_init, restarts, norm, seed."""

    defaults = {"n_queries": 5000, "p_init": 0.8, "restarts": 1, "norm": "Linf", "seed": 0}
    choices = {"norm": ("Linf", "L2")}
    description = "Square, black-box random search (pyautoattack)"
    gradient_free = True  # the model contract waives its gradient check when only such attacks run

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        from pyautoattack.square import SquareAttack

        s = self.settings
        sq = SquareAttack(model, norm=s["norm"], n_queries=s["n_queries"], eps=self.eps, p_init=s["p_init"],
                          n_restarts=s["restarts"], seed=s["seed"], verbose=False, loss="margin",
                          resc_schedule=s["n_queries"] != 5000, device=str(self.device))
        with torch.no_grad():
            return sq.perturb(x, y)
