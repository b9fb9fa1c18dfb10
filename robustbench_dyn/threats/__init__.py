"""Dynamic-aware threat models: attacks on what makes a dynamic network dynamic.

=================  =============================================================================
study              what
=================  =============================================================================
energy             gated nets: PGD that opens gates (ILFO-style); executed MACs clean vs attacked
attention          DyConv/ODConv: attention-shift (KL) and targeted-kernel attacks vs label PGD
adaptive           BPDA through hard gates and EOT over stochastic parts vs the direct attack,
                   with an explicit masking verdict
transfer           PGD-20 examples crafted on each model, evaluated on every other (a matrix)
=================  =============================================================================

Importing this package registers its attacks in :mod:`robustbench_dyn.attacks` (names ``energy``,
``attn-shift``, ``attn-target``, ``pgd-bpda``, ``pgd-eot``), so ``make_attack("energy", model, 8/255)``
and ``robustdyn evaluate --attack attn-shift`` work like the built-in attacks.

>>> from robustbench_dyn.threats import run_threats
>>> res = run_threats(["static", "dyconv_k4", "odconv_k4", "gated"], n=32)   # all four studies
>>> res.energy, res.attention, res.adaptive, res.transfer.frame()          # pandas tables

Each study is also a function on an ``nn.Module`` and tensors: :func:`energy_study`,
:func:`attention_study`, :func:`adaptive_study`, :func:`transfer_matrix`. Results are stored in the
``threats`` table of the results store (:class:`ThreatStore`, :func:`read_threats`).
"""

from __future__ import annotations

from ..attacks import ATTACKS, TorchattacksPGD, register_attack
from .adaptive import ALPHA, MASK_PT, adaptive_study, masking_verdict, predict
from .attention import (
    AttentionShiftAttack,
    AttentionTap,
    AttentionTargetAttack,
    attention_layers,
    attention_study,
    has_attention,
    target_hit,
)
from .energy import GateEnergyAttack, energy_study, has_gates
from .pgd import EOTPGD, ObjectivePGD, eot_gradient, is_stochastic
from .store import ThreatKey, ThreatStore, read_threats
from .transfer import TransferResult, transfer_matrix, transfer_row


def _register(name: str, cls, description: str = "", **preset) -> None:
    if name not in ATTACKS:  # never clobber an attack someone else registered under the same name
        register_attack(name, cls, description, **preset)


_register("energy", GateEnergyAttack,
          "energy attack (gated nets): PGD-20 opening gates (soft gate probabilities), BPDA", bpda=True)
_register("attn-shift", AttentionShiftAttack)
_register("attn-target", AttentionTargetAttack)
_register("pgd-bpda", TorchattacksPGD, "PGD-20 Linf cross-entropy with BPDA through hard gates (torchattacks)",
          norm="Linf", bpda=True)
_register("pgd-eot", EOTPGD)

from .run import STUDIES, ThreatsResult, run_threats  # noqa: E402  (needs the attacks registered)

__all__ = [
    "ALPHA", "EOTPGD", "MASK_PT", "STUDIES", "AttentionShiftAttack", "AttentionTap", "AttentionTargetAttack",
    "GateEnergyAttack", "ObjectivePGD", "ThreatKey", "ThreatStore", "ThreatsResult", "TransferResult",
    "adaptive_study", "attention_layers", "attention_study", "energy_study", "eot_gradient", "has_attention",
    "has_gates", "is_stochastic", "masking_verdict", "predict", "read_threats", "run_threats", "target_hit",
    "transfer_matrix", "transfer_row",
]
