"""Attacks: a name -> factory registry over torchattacks, pyautoattack and our own PGD.

=============  =====  ==============================================================================
name           norm   what
=============  =====  ==============================================================================
``fgsm``       Linf   FGSM (torchattacks), one step of size eps
``pgd``        Linf   PGD-20, step eps/4, random start, cross-entropy (torchattacks)
``pgd-l2``     L2     PGD-20, step eps/4, random start, cross-entropy (torchattacks)
``pgd-ce``     any    our PGD-20 (cross-entropy): restarts keep the worst case, early stop, bf16
``pgd-dlr``    any    our PGD-20 with the DLR margin loss
``autoattack`` any    AutoAttack standard | rand | custom (pyautoattack)
``square``     any    Square, black box, 5000 queries (pyautoattack)
=============  =====  ==============================================================================

>>> from robustbench_dyn.attacks import make_attack
>>> atk = make_attack("pgd", model, eps=8/255, steps=50)   # settings override the defaults
>>> x_adv = atk(x, y)   # eval mode forced and restored; verified in [0, 1] and in the eps ball

``get_attack(name).settings(**overrides)`` gives the canonical settings without a model (what the
results store keys runs by). New attacks: ``register_attack(name, AttackClass, **preset)``; new
losses for our PGD: ``register_loss(name, fn)`` (see :mod:`robustbench_dyn.attacks.pgd`).
"""

from __future__ import annotations

from .autoattack import AutoAttackAdapter, SquareAdapter
from .base import (
    ATTACKS,
    NORMS,
    Attack,
    AttackEntry,
    AttackError,
    AutocastLogits,
    attack_names,
    eval_mode,
    gate_surrogate,
    get_attack,
    make_attack,
    perturbation_norm,
    register_attack,
    verify_adversarial,
)
from .fgsm import FGSM
from .pgd import LOSSES, LossContext, LossPGD, TorchattacksPGD, ce_loss, dlr_loss, dlr_margin, register_loss

register_attack("fgsm", FGSM)
register_attack("pgd", TorchattacksPGD, "PGD-20 Linf, step eps/4, random start, cross-entropy (torchattacks)",
                norm="Linf")
register_attack("pgd-l2", TorchattacksPGD, "PGD-20 L2, step eps/4, random start, cross-entropy (torchattacks)",
                norm="L2")
register_attack("pgd-ce", LossPGD, "our PGD-20, cross-entropy, restarts keep the worst case", loss="ce")
register_attack("pgd-dlr", LossPGD, "our PGD-20, DLR margin loss, restarts keep the worst case", loss="dlr")
register_attack("autoattack", AutoAttackAdapter)
register_attack("square", SquareAdapter)

__all__ = [
    "ATTACKS", "LOSSES", "NORMS", "Attack", "AttackEntry", "AttackError", "AutoAttackAdapter", "AutocastLogits",
    "FGSM", "LossContext", "LossPGD", "SquareAdapter", "TorchattacksPGD", "attack_names", "ce_loss", "dlr_loss",
    "dlr_margin", "eval_mode", "gate_surrogate", "get_attack", "make_attack", "perturbation_norm",
    "register_attack", "register_loss", "verify_adversarial",
]

from .. import threats as _threats  # noqa: E402,F401  (registers energy, attn-shift, attn-target, pgd-bpda, pgd-eot)
