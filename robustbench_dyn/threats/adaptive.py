"""Adaptive attacks for hard gates and stochastic components: BPDA and EOT, and the masking verdict.

* **BPDA** (Athalye, Carlini and Wagner 2018): a ChannelGate in eval mode is a hard threshold
  ``z > 0`` whose input gradient is zero, so a gradient attack never sees that opening or closing a
  gate would change the output. The BPDA attack keeps the exact hard-gate forward pass and uses the
  sigmoid's gradient backward (``ChannelGate.surrogate = "bpda"``, set on every gate only for the
  duration of the attack and restored after: the shared ``bpda`` attack setting, see
  :func:`robustbench_dyn.attacks.gate_surrogate`). Here: PGD-20 cross-entropy (the registry's ``pgd``)
  with ``bpda = true``, next to the same attack without it (the *direct* attack), from the same
  random starts.
* **EOT** (:func:`~robustbench_dyn.threats.pgd.eot_gradient`, attack ``pgd-eot``): gradients averaged
  over ``eot`` forward passes, for models with a stochastic component in eval mode. Every model of the
  zoo is deterministic in eval mode (gates threshold, no dropout), so EOT equals the direct attack
  there; :func:`adaptive_study` checks this (:func:`~robustbench_dyn.threats.pgd.is_stochastic`) and
  runs EOT only where the model is stochastic.

**Masking verdict.** Per eps, the paired outcomes of the direct and the strongest adaptive attack give
``b`` = examples the direct attack left robust but the adaptive one broke, ``c`` = the converse. The
direct number was *masked* when the adaptive attack's robust accuracy is lower by more than
:data:`MASK_PT` percentage points **and** the exact one-sided McNemar (binomial) test ``P(X >= b | b +
c, 1/2)`` is below :data:`ALPHA`; lower by more than MASK_PT but not significant at this n is reported
as "possibly masked".
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..attacks import eval_mode
from ._common import Progress, binomial_sf, run_attack
from .energy import has_gates
from .pgd import is_stochastic

MASK_PT = 0.5  # percentage points of robust accuracy
ALPHA = 0.05  # one-sided exact McNemar test


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 500) -> np.ndarray:
    """Predicted labels in eval mode (fp32)."""
    with eval_mode(model):
        return torch.cat([model(x[i:i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)]).cpu().numpy()


def masking_verdict(direct_ok: np.ndarray, adaptive_ok: np.ndarray, adaptive: str = "BPDA") -> dict:
    """Compare per-example robustness (True = still correct) under the direct and an adaptive attack."""
    direct_ok, adaptive_ok = np.asarray(direct_ok, bool), np.asarray(adaptive_ok, bool)
    n = len(direct_ok)
    b = int((direct_ok & ~adaptive_ok).sum())
    c = int((~direct_ok & adaptive_ok).sum())
    diff = 100.0 * (direct_ok.mean() - adaptive_ok.mean()) if n else 0.0
    p = binomial_sf(b, b + c) if b + c else 1.0
    if diff > MASK_PT and p < ALPHA:
        verdict = "masked"
        text = (f"MASKED: {adaptive} lowers robust accuracy by {diff:.1f} pt (b={b}, c={c}, McNemar p={p:.2g}); "
                "the direct number overstates robustness")
    elif diff > MASK_PT:
        verdict = "possibly masked"
        text = (f"possibly masked: {adaptive} lowers robust accuracy by {diff:.1f} pt, not significant at n={n} "
                f"(b={b}, c={c}, p={p:.2g})")
    else:
        verdict = "not masked"
        text = f"not masked: {adaptive} is no stronger than the direct attack ({-diff:+.1f} pt, b={b}, c={c})"
    return {"b": b, "c": c, "diff_pt": diff, "p_value": p, "verdict": verdict, "verdict_text": text}


def adaptive_study(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps_grid, *, direct: str = "pgd",
                   settings: dict | None = None, eot_samples: int = 8, batch_size: int = 100,
                   seed_key: str = "threats", adversarial: dict | None = None,
                   progress: Progress | None = None) -> list[dict]:
    """Direct attack vs BPDA (models with gates) and EOT (stochastic models), one dict per eps.

    ``direct`` is a registered label attack (default ``pgd``: PGD-20 CE) with ``settings``; BPDA is the
    same attack with ``bpda = true`` from the same random starts; EOT is ``pgd-eot`` with the same
    steps and step size and ``eot_samples`` gradient samples per step (BPDA included on gated models).

    Each dict: eps, n, gated, stochastic, acc_clean, acc_direct, acc_bpda (None without gates), acc_eot
    (None for deterministic models), acc_adaptive (the lower of the adaptive ones), acc_worst (per
    example: broken by any attack), adaptive (which one is the strongest), the verdict fields of
    :func:`masking_verdict` and a note. ``adversarial`` caches examples by (attack label, eps): the
    direct run ``(direct, eps)`` is shared with the attention and transfer studies.
    """
    adversarial = adversarial if adversarial is not None else {}
    y_np = y.cpu().numpy()
    gated = has_gates(model)
    with eval_mode(model):
        stochastic = is_stochastic(model, x[: min(len(x), 8)])
    ok_clean = predict(model, x, batch_size) == y_np
    out = []
    for eps in sorted(float(e) for e in eps_grid):
        kw = dict(settings or {})
        runs = {"direct": ((direct, eps), direct, kw)}
        if gated:
            runs["bpda"] = ((f"{direct}+bpda", eps), direct, {**kw, "bpda": True})
        if stochastic:
            runs["eot"] = (("pgd-eot", eps), "pgd-eot", {**kw, "eot": eot_samples, "bpda": gated})
        ok = {}
        for label, (key, attack, kw) in runs.items():
            if key not in adversarial:
                adversarial[key] = run_attack(model, attack, x, y, eps, settings=kw, batch_size=batch_size,
                                              seed_key=seed_key, progress=progress)
            ok[label] = (predict(model, adversarial[key], batch_size) == y_np) & ok_clean
        row = {"eps": eps, "n": len(x), "gated": gated, "stochastic": stochastic,
               "acc_clean": float(ok_clean.mean()), "acc_direct": float(ok["direct"].mean()),
               "acc_bpda": float(ok["bpda"].mean()) if "bpda" in ok else None,
               "acc_eot": float(ok["eot"].mean()) if "eot" in ok else None}
        adaptive = [k for k in ("bpda", "eot") if k in ok]
        worst = np.logical_and.reduce([ok[k] for k in ok])
        row["acc_worst"] = float(worst.mean())
        if adaptive:
            strongest = min(adaptive, key=lambda k: ok[k].mean())
            row["adaptive"] = strongest
            row["acc_adaptive"] = float(ok[strongest].mean())
            row.update(masking_verdict(ok["direct"], ok[strongest], strongest.upper()))
        else:
            row.update({"adaptive": None, "acc_adaptive": None, "b": 0, "c": 0, "diff_pt": 0.0, "p_value": 1.0,
                        "verdict": "not applicable",
                        "verdict_text": "not applicable: no hard gates and deterministic in eval mode "
                                        "(BPDA and EOT reduce to the direct attack)"})
        notes = []
        if not stochastic:
            notes.append("deterministic in eval mode: EOT = direct attack (not run)")
        if not gated:
            notes.append("no hard gates: BPDA = direct attack (not run)")
        row["note"] = "; ".join(notes)
        out.append(row)
    return out
