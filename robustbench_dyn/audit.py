"""The dynamism audit: does a dynamic network actually behave dynamically?

A DyConv layer can train into a static one (uniform attention, so every input gets the same mixed
kernel), and a gated net into a pruned static net (gates always on or always off). Then every figure
that relates robustness to "dynamics" measures static behaviour. The audit measures it, per model:

Attention (every :class:`~robustbench_dyn.layers.KernelAttention` / :class:`OmniAttention`), per layer:

* ``entropy_ratio``: per-example kernel-attention entropy / log K (mean and std over inputs);
* ``mean_entropy_ratio``: entropy of the audit-set mean attention / log K (low: collapse onto one kernel);
* ``kernel_info_ratio``: H(mean attention) - mean H(attention), the information the kernel choice
  carries about the input (mutual information between input and kernel, in units of log K);
* ``logit_spread``: std over inputs of the centred attention logits (log-probabilities), mean over K;
* ``mean_replacement_loss`` / ``shuffle_loss``: accuracy points lost when each example's attention
  (all four attentions for ODConv) is replaced by the audit-set mean, or shuffled across examples, in
  this layer alone; and the same in all layers at once (the model-level figures).

Gates (every :class:`~robustbench_dyn.layers.ChannelGate`), per stage and overall:

* ``conditional_frac``: fraction of gates open on 5-95 % of the inputs (the others are always on or
  always off: a fixed mask would do);
* ``distinct_patterns``: distinct whole-network gate patterns / examples, and per block;
* ``majority_mask_loss``: accuracy points lost when the learned gates are replaced by a fixed
  per-channel majority mask (open where the gate is open on >= half the inputs);
* ``majority_mask_loss_se``: its standard error over the audited images (paired per example; reported
  next to the loss, not part of the verdict: on 1000 images it is about 1 pt for a CIFAR-10 gated ResNet-20,
  so a verdict near the 2 pt threshold wants the full test set);
* ``matched_mask_loss``: the same with a fixed mask at the gates' own mean density (per gate module, the
  channels most often open, as many as the gates open on average): routing vs a pruned net of equal
  compute, reported next to the majority mask (whose density can differ); not part of the verdict;
* ``gate_class_mi_bits``: mutual information between each gate and the class (plug-in, bits; mean over gates);
* ``executed_macs_ratio``: mean executed MACs / MACs at full density (= a static ResNet-20 + 0.03 %).

Verdict (:data:`RULE`): a model is ``dynamic`` when its dynamic part changes the function:

* attention: replacing every example's attention by the audit-set mean, in all layers at once, costs
  at least ``min_loss_pt`` (2) accuracy points;
* gates: at least ``min_conditional`` (10 %) of the gates are conditional, and the fixed majority mask
  costs at least ``min_loss_pt`` points.

A model with neither attention nor gates is ``static`` by construction. All figures are measured in
eval mode, fp32, on the given images; the result records n and the data.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .dynamics import attention_modules, forward_hooks, gate_modules
from .stats import paired_se

RULE = ("dynamic iff the dynamic part changes the function: replacing each example's attention by the "
        "audit-set mean in all layers costs >= {min_loss_pt:g} accuracy points (attention models), or "
        ">= {min_conditional_pct:g} % of gates are conditional (open on 5-95 % of inputs) and a fixed "
        "per-channel majority mask costs >= {min_loss_pt:g} points (gated models)")


@dataclass(frozen=True)
class AuditThresholds:
    min_loss_pt: float = 2.0
    min_conditional: float = 0.10
    conditional_lo: float = 0.05
    conditional_hi: float = 0.95
    entropy_ratio_low: float = 0.85  # reported: layers at or below it

    def rule(self) -> str:
        return RULE.format(min_loss_pt=self.min_loss_pt, min_conditional_pct=100 * self.min_conditional)


def _as_tuple(out) -> tuple[torch.Tensor, ...]:
    return tuple(out) if isinstance(out, tuple) else (out,)


def _rebuild(like, parts):
    if isinstance(like, tuple):
        return type(like)(*parts) if hasattr(like, "_fields") else tuple(parts)
    return parts[0]


@contextlib.contextmanager
def intervene(modules: list[nn.Module], fn: Callable[[int, tuple[torch.Tensor, ...]], tuple]) -> Iterator[None]:
    """Replace the output of each module i by ``fn(i, parts)`` (parts: its output as a tuple of tensors)."""
    def hook(i):
        return lambda module, inputs, out: _rebuild(out, fn(i, _as_tuple(out)))

    with forward_hooks((m, hook(i)) for i, m in enumerate(modules)):
        yield


@torch.no_grad()
def _forward_all(model: nn.Module, x: torch.Tensor, batch_size: int, record: list[nn.Module] | None = None):
    """Predictions on x (and, with ``record``, each module's outputs concatenated over batches)."""
    preds, outs = [], [[] for _ in (record or [])]

    def keep(i):
        return lambda mod, inp, out: outs[i].append(tuple(t.detach().float().cpu() for t in _as_tuple(out)))

    with forward_hooks((m, keep(i)) for i, m in enumerate(record or [])):
        for s in range(0, len(x), batch_size):
            preds.append(model(x[s:s + batch_size]).float().argmax(1).cpu())
    cat = [tuple(torch.cat([o[j] for o in per], 0) for j in range(len(per[0]))) for per in outs]
    return torch.cat(preds), cat


def _acc(pred: torch.Tensor, y: torch.Tensor) -> float:
    """Exact fraction correct (count / n in float64: a float32 mean made a 20-in-1000 loss 1.9999981 pt)."""
    return int((pred == y).sum()) / len(y)


def _loses(acc_from: float, acc_to: float, min_loss_pt: float) -> bool:
    """``100 * (acc_from - acc_to) >= min_loss_pt``, robust to the float rounding of exact count ratios."""
    return 100 * (acc_from - acc_to) >= min_loss_pt - 1e-9


def _entropy(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-12, 1.0)
    return -(p * np.log(p)).sum(-1)


def _mi_bits(g: np.ndarray, y: np.ndarray, classes: int) -> np.ndarray:
    """Plug-in mutual information (bits) between each binary gate (N, C) and the class label (N,)."""
    n = len(y)
    out = np.zeros(g.shape[1])
    py = np.bincount(y, minlength=classes) / n
    for v in (0, 1):
        mask = g == v  # (N, C)
        pg = mask.mean(0)  # (C,)
        for c in range(classes):
            pj = (mask & (y[:, None] == c)).mean(0)
            with np.errstate(divide="ignore", invalid="ignore"):
                term = np.where(pj > 0, pj * np.log2(pj / (pg * py[c])), 0.0)
            out += term
    return out


def _stage(name: str) -> str:
    parts = name.split(".")
    return f"stage {int(parts[1]) + 1}" if len(parts) > 2 and parts[0] == "layers" and parts[1].isdigit() else "all"


@torch.no_grad()
def audit_model(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 500, seed: int = 0,
                per_layer: bool = True, thresholds: AuditThresholds | None = None,
                progress: Callable[[str], None] | None = None) -> dict:
    """Audit ``model`` on images ``x`` (N, ...) with labels ``y``; returns a JSON-serialisable dict with
    ``verdict`` ('dynamic' | 'static'), ``rule`` and the figures of the module docstring."""
    from .attacks.base import eval_mode

    th = thresholds or AuditThresholds()
    say = progress or (lambda s: None)
    y = y.cpu()
    attn = attention_modules(model)
    gates = gate_modules(model)
    attn_mods = [m for _, m, _ in attn]
    gate_mods = [m for _, m in gates]
    gen = torch.Generator().manual_seed(seed)
    with eval_mode(model):
        say("clean pass")
        pred, outs = _forward_all(model, x, batch_size, attn_mods + gate_mods)
        clean = _acc(pred, y)
        res: dict = {"n": len(y), "seed": seed, "clean_acc": clean, "thresholds": th.__dict__, "rule": th.rule()}
        a_outs, g_outs = outs[:len(attn_mods)], outs[len(attn_mods):]
        parts_verdict = []

        if attn_mods:
            means = [tuple(t.mean(0, keepdim=True) for t in o) for o in a_outs]
            dev = x.device

            def replace_mean(layers):
                def fn(i, parts):
                    if i not in layers:
                        return parts
                    return tuple(m.to(dev, p.dtype).expand_as(p) for m, p in zip(means[i], parts, strict=True))
                return fn

            def shuffle(layers):
                def fn(i, parts):
                    if i not in layers:
                        return parts
                    perm = torch.randperm(parts[0].shape[0], generator=gen).to(parts[0].device)
                    return tuple(p[perm] for p in parts)
                return fn

            everything = set(range(len(attn_mods)))
            say("attention: batch-mean replacement, all layers")
            with intervene(attn_mods, replace_mean(everything)):
                acc_mean = _acc(_forward_all(model, x, batch_size)[0], y)
            say("attention: shuffle across examples, all layers")
            with intervene(attn_mods, shuffle(everything)):
                acc_shuf = _acc(_forward_all(model, x, batch_size)[0], y)
            layers = []
            for i, (_name, _, layer) in enumerate(attn):
                kern = a_outs[i][-1].numpy() if layer.kind == "odconv" else a_outs[i][0].numpy()
                K = kern.shape[1]
                row: dict = {"layer": layer.name, "kind": layer.kind, "K": K}
                if K > 1:
                    logk = math.log(K)
                    h = _entropy(kern) / logk
                    hbar = float(_entropy(kern.mean(0)) / logk)
                    logp = np.log(np.clip(kern, 1e-12, 1))
                    centred = logp - logp.mean(1, keepdims=True)
                    row.update({"entropy_ratio": float(h.mean()), "entropy_ratio_std": float(h.std()),
                                "mean_entropy_ratio": hbar, "kernel_info_ratio": float(hbar - h.mean()),
                                "logit_spread": float(centred.std(0).mean())})
                else:  # ODConv K = 1: no kernel choice; its spatial/channel/filter attentions still vary
                    sig = torch.cat([t for t in a_outs[i][:3]], 1).clamp(1e-6, 1 - 1e-6)
                    z = torch.log(sig / (1 - sig)).numpy()
                    row.update({"entropy_ratio": None, "entropy_ratio_std": None, "mean_entropy_ratio": None,
                                "kernel_info_ratio": None, "logit_spread": float(z.std(0).mean())})
                if per_layer:
                    say(f"attention: layer {i + 1}/{len(attn_mods)}")
                    with intervene(attn_mods, replace_mean({i})):
                        row["mean_replacement_loss"] = 100 * (clean - _acc(_forward_all(model, x, batch_size)[0], y))
                    with intervene(attn_mods, shuffle({i})):
                        row["shuffle_loss"] = 100 * (clean - _acc(_forward_all(model, x, batch_size)[0], y))
                layers.append(row)
            ratios = [r["entropy_ratio"] for r in layers if r["entropy_ratio"] is not None]
            a_dyn = _loses(clean, acc_mean, th.min_loss_pt)
            res["attention"] = {
                "layers": layers,
                "mean_replacement_loss": 100 * (clean - acc_mean),
                "shuffle_loss": 100 * (clean - acc_shuf),
                "entropy_ratio_mean": float(np.mean(ratios)) if ratios else None,
                "layers_entropy_low_frac": (float(np.mean([r <= th.entropy_ratio_low for r in ratios]))
                                            if ratios else None),
                "kernel_info_ratio_mean": (float(np.mean([r["kernel_info_ratio"] for r in layers
                                                          if r["kernel_info_ratio"] is not None]))
                                           if ratios else None),
                "verdict": "dynamic" if a_dyn else "static",
            }
            parts_verdict.append(a_dyn)

        if gate_mods:
            g = [o[0].numpy().astype(np.uint8) for o in g_outs]  # (N, C_b) each
            rates = [gi.mean(0) for gi in g]
            cond = [(r >= th.conditional_lo) & (r <= th.conditional_hi) for r in rates]
            majority = [torch.from_numpy((r >= 0.5).astype(np.float32))[None] for r in rates]
            say("gates: fixed majority mask")

            def fixed(i, parts):
                return (majority[i].to(parts[0].device, parts[0].dtype).expand_as(parts[0]),)

            with intervene(gate_mods, fixed):
                pred_major = _forward_all(model, x, batch_size)[0]
                acc_major = _acc(pred_major, y)
            # the same question at equal compute: per gate module, a fixed mask opening as many channels as the
            # gates open on average, the most often open ones (the majority mask may open more or fewer)
            matched = []
            for r in rates:
                k = int(round(float(r.sum())))
                m = np.zeros(len(r), np.float32)
                m[np.argsort(-r, kind="stable")[:k]] = 1.0
                matched.append(torch.from_numpy(m)[None])
            say("gates: fixed mask at matched density")

            def fixed_matched(i, parts):
                return (matched[i].to(parts[0].device, parts[0].dtype).expand_as(parts[0]),)

            with intervene(gate_mods, fixed_matched):
                acc_matched = _acc(_forward_all(model, x, batch_size)[0], y)
            allg = np.concatenate(g, 1)
            yn = y.numpy()
            classes = int(max(yn.max() + 1, 2))
            mi = [_mi_bits(gi, yn, classes) for gi in g]
            stages: dict[str, dict] = {}
            for (name, _), c, r, m in zip(gates, cond, rates, mi, strict=True):
                st = stages.setdefault(_stage(name), {"gates": 0, "conditional": 0, "always_on": 0, "always_off": 0,
                                                      "mi_sum": 0.0})
                st["gates"] += len(r)
                st["conditional"] += int(c.sum())
                st["always_on"] += int((r > th.conditional_hi).sum())
                st["always_off"] += int((r < th.conditional_lo).sum())
                st["mi_sum"] += float(m.sum())
            per_stage = {k: {"gates": v["gates"], "conditional_frac": v["conditional"] / v["gates"],
                             "always_on_frac": v["always_on"] / v["gates"],
                             "always_off_frac": v["always_off"] / v["gates"],
                             "gate_class_mi_bits": v["mi_sum"] / v["gates"]} for k, v in stages.items()}
            cond_frac = float(np.concatenate(cond).mean())
            dens = np.stack([gi.mean(1) for gi in g], 1)  # (N, blocks)
            from .dynamics import DynamicsProbe

            probe = DynamicsProbe(model)
            cost = probe.gated_cost()
            exec_ratio = (float(cost.macs(torch.from_numpy(dens)).mean()) / cost.full) if cost is not None else None
            g_dyn = cond_frac >= th.min_conditional and _loses(clean, acc_major, th.min_loss_pt)
            res["gates"] = {
                "conditional_frac": cond_frac,
                "always_on_frac": float(np.concatenate([r > th.conditional_hi for r in rates]).mean()),
                "always_off_frac": float(np.concatenate([r < th.conditional_lo for r in rates]).mean()),
                "per_stage": per_stage,
                "distinct_patterns": len({row.tobytes() for row in allg}) / len(allg),
                "distinct_patterns_per_block": float(np.mean([len({row.tobytes() for row in gi}) / len(gi)
                                                              for gi in g])),
                "density": float(allg.mean()),
                "majority_mask_acc": acc_major,
                "majority_mask_loss": 100 * (clean - acc_major),
                "majority_mask_loss_se": 100 * paired_se(((pred == y).double() - (pred_major == y).double()).numpy()),
                "majority_mask_density": float(np.mean(np.concatenate([(r >= 0.5) for r in rates]))),
                "matched_mask_acc": acc_matched,
                "matched_mask_loss": 100 * (clean - acc_matched),
                "gate_class_mi_bits": float(np.concatenate(mi).mean()),
                "gate_class_mi_bits_max": float(np.concatenate(mi).max()),
                "executed_macs_ratio": exec_ratio,
                "verdict": "dynamic" if g_dyn else "static",
            }
            parts_verdict.append(g_dyn)

    if not parts_verdict:
        res["verdict"], res["why"] = "static", "no attention or gate modules: static by construction"
    else:
        res["verdict"] = "dynamic" if any(parts_verdict) else "static"
        res["why"] = _why(res, th)
    return res


def _why(res: dict, th: AuditThresholds) -> str:
    bits = []
    if "attention" in res:
        a = res["attention"]
        bits.append(f"attention mean-replacement costs {a['mean_replacement_loss']:.1f} pt "
                    f"({'>=' if a['verdict'] == 'dynamic' else '<'} {th.min_loss_pt:g})")
    if "gates" in res:
        g = res["gates"]
        se = g.get("majority_mask_loss_se")  # absent in audits written before it existed
        se_txt = f" (SE {se:.1f})" if se is not None and math.isfinite(se) else ""
        bits.append(f"{100 * g['conditional_frac']:.0f} % conditional gates, majority mask costs "
                    f"{g['majority_mask_loss']:.1f} pt{se_txt}")
    return "; ".join(bits)


def summary_row(res: dict) -> dict:
    """The few figures a table shows next to a model: verdict and the evidence."""
    a, g = res.get("attention") or {}, res.get("gates") or {}
    return {"verdict": res.get("verdict"), "audit_n": res.get("n"),
            "entropy_ratio": a.get("entropy_ratio_mean"), "kernel_info_ratio": a.get("kernel_info_ratio_mean"),
            "mean_replacement_loss_pt": a.get("mean_replacement_loss"), "shuffle_loss_pt": a.get("shuffle_loss"),
            "conditional_gates": g.get("conditional_frac"), "majority_mask_loss_pt": g.get("majority_mask_loss"),
            "matched_mask_loss_pt": g.get("matched_mask_loss"),
            "gate_class_mi_bits": g.get("gate_class_mi_bits"), "executed_macs_ratio": g.get("executed_macs_ratio")}


def audit_checkpoint(name: str, *, n: int = 1000, seed: int = 0, data_dir=None, device: str = "cpu",
                     models_dir=None, batch_size: int = 500, per_layer: bool = True,
                     progress: Callable[[str], None] | None = None) -> dict:
    """Audit a zoo checkpoint on ``n`` seeded test examples of its own data (CIFAR-10 images, or the test
    series of a ``ts_*`` model's set); the result names the checkpoint and the data."""
    from .checkpoints import read_manifest
    from .evaluation import load_data
    from .registry import get_spec, load_model, resolve_name

    name = resolve_name(name)
    model = load_model(name, models_dir=models_dir, device=device)
    dataset = getattr(get_spec(name), "dataset", None)
    if dataset:  # a time-series model: its bundled UCR/UEA test split
        from .timeseries.data import load_timeseries

        data, warns = load_timeseries(dataset, "test"), []
    else:
        data, warns = load_data(data_dir)
    idx = data.subset(min(n, len(data)), seed=seed)
    x, y = data.tensors(idx, device=device)
    res = audit_model(model, x, y, batch_size=batch_size, seed=seed, per_layer=per_layer, progress=progress)
    entry = read_manifest(models_dir).get(name, {})
    res.update({"model": name, "checkpoint_sha256": entry.get("sha256"), "data": data.label,
                "data_digest": data.describe().get("digest"), "subset_seed": seed, "device": str(device),
                "warnings": warns})
    return res


__all__ = ["RULE", "AuditThresholds", "audit_checkpoint", "audit_model", "intervene", "summary_row"]
