"""All four threat studies over a set of models, resumable through the results store.

:func:`run_threats` loads the models and a seeded data subset, plans which rows of the ``threats``
table are missing, runs only the attacks those rows need (each attack run once and shared: the PGD-20
cross-entropy run at eps is the label baseline of the attention study, the direct attack of the
adaptive study and, at ``transfer_eps``, the transfer source) and writes each row as soon as it is
computed. Which study applies to which model:

* energy: models with ChannelGates, at every eps of ``eps_grid``;
* attention: models with DyConv/ODConv layers, at every eps (``attn-target`` only where some layer has
  more than ``target`` kernels and at least two: not on odconv_k1, whose kernel attention is constant);
* adaptive: every model, at every eps of ``adaptive_eps`` (default: ``eps_grid``); BPDA runs on gated
  models, EOT on models that are stochastic in eval mode; the others get one "not applicable" row (with
  their direct robust accuracy) at the largest eps;
* transfer: every (source, target) pair of the models, at ``transfer_eps``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..attacks import eval_mode, get_attack
from ._common import reference_macs, run_attack
from .adaptive import adaptive_study, predict
from .attention import attention_layers, attention_study, has_attention, targetable
from .energy import energy_study, has_gates
from .pgd import is_stochastic
from .store import ThreatKey, ThreatStore, settings_json
from .transfer import TransferResult, transfer_row

STUDIES = ("energy", "attention", "adaptive", "transfer")
DEFAULT_GRID = (2 / 255, 4 / 255, 8 / 255)
#: Examples per model on a CPU: all four studies on static, dyconv_k4, odconv_k4 and gated take a few
#: minutes on 2 cores at this n (the attention study dominates: 3 attacks x 3 eps x 2 models of PGD-20).
DEFAULT_CPU_N = 32
DEFAULT_BATCH = {"cpu": 100, "cuda": 500}
ATTENTION_ATTACKS = ("pgd", "attn-shift", "attn-target")


@dataclass
class ThreatsResult:
    """Tables of the four studies (one row per model and eps; transfer as a matrix)."""

    energy: pd.DataFrame
    attention: pd.DataFrame
    adaptive: pd.DataFrame
    transfer: TransferResult | None
    dataset: dict
    n: int
    seed: int
    device: str
    seconds: float
    computed: int = 0  # rows computed in this call
    reused: int = 0  # rows read from the store
    store: str | None = None
    models: list[str] = field(default_factory=list)

    def masked(self) -> pd.DataFrame:
        """Adaptive rows whose verdict is 'masked' or 'possibly masked'."""
        if self.adaptive.empty:
            return self.adaptive
        return self.adaptive[self.adaptive["verdict"].isin(["masked", "possibly masked"])]


@dataclass
class _Unit:
    model: str
    study: str
    eps: float
    key: ThreatKey | None
    attack: str = ""  # attention rows: which attack; transfer rows: the target
    needs: tuple = ()  # attack runs (label, eps) on ``model`` this row needs
    result: dict | None = None


def _default_n(device: torch.device, total: int) -> int:
    return total if device.type == "cuda" else min(DEFAULT_CPU_N, total)


def _reference(name: str, net: nn.Module) -> tuple[str, float]:
    """The static network the energy attack's MACs are a fraction of."""
    from ..registry import get_spec

    try:
        spec = get_spec(name)
        arch, depth = spec.arch, spec.depth
    except Exception:  # a user module: assume the CIFAR ResNet-20
        arch, depth = "cifar_resnet", 20
    if arch == "cifar_resnet50":
        return "static ResNet-50", reference_macs(arch, 50)
    return f"static ResNet-{depth}", reference_macs(arch, depth)


def run_threats(models: Sequence[str | nn.Module], *, data=None, data_dir=None, n: int | None = None, seed: int = 0,
                eps_grid: Sequence[float] = DEFAULT_GRID, transfer_eps: float = 8 / 255,
                adaptive_eps: Sequence[float] | None = None, studies: Sequence[str] = STUDIES, target: int = 0,
                steps: int = 20, eot_samples: int = 8, energy_settings: dict | None = None,
                device: str | torch.device | None = None, batch_size: int | None = None,
                store: str | Path | ThreatStore | None = None, models_dir=None, untrained: bool = False,
                log: Callable[[str], None] | None = None, progress: Callable[[int], None] | None = None,
                on_plan: Callable[[int], None] | None = None) -> ThreatsResult:
    """Run the threat studies (see the module docstring) and return their tables.

    ``models``: registry names (or modules); ``store``: a results-store path or :class:`ThreatStore`
    (None: nothing stored, nothing resumed). ``progress(k)`` is called as k more examples have been
    attacked; ``on_plan(total)`` once with the total number of example-attacks planned; ``log(line)``
    after each row.
    """
    from ..errors import ConfigError
    from ..evaluation import eps_label, load_data, resolve_device, resolve_model  # lazy: see _common.run_attack

    t_start = time.perf_counter()
    log = log or (lambda s: None)
    bad = [s for s in studies if s not in STUDIES]
    if bad:
        import difflib

        close = difflib.get_close_matches(str(bad[0]), STUDIES, n=1, cutoff=0.5)
        raise ConfigError(f"unknown threat study {bad[0]!r}",
                          (f"did you mean {close[0]}? " if close else "") + f"choose from {', '.join(STUDIES)}")
    if not models:
        raise ConfigError("no models given", "pass e.g. --models static,dyconv_k4,odconv_k4,gated")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ConfigError(f"batch size must be a positive integer, got {batch_size!r}", "pass e.g. --batch-size 100")
    dev = resolve_device(device)
    if data is None:
        data, msgs = load_data(data_dir)
        for m in msgs:
            log(f"warning: {m}")
    n = _default_n(dev, len(data)) if n is None else int(n)
    indices = data.subset(n, seed)
    n = len(indices)
    x, y = data.tensors(indices, dev)
    bs = batch_size or DEFAULT_BATCH.get(dev.type, 100)
    grid = sorted({float(e) for e in eps_grid})
    a_grid = grid if adaptive_eps is None else sorted({float(e) for e in adaptive_eps})
    teps = float(transfer_eps)
    seed_key = f"threats:{seed}"

    nets: dict[str, nn.Module] = {}
    infos = {}
    for spec in models:
        net, info = resolve_model(spec, untrained=untrained, models_dir=models_dir, device=dev)
        if info.name in nets:
            continue
        nets[info.name], infos[info.name] = net, info
    names = list(nets)

    S = {
        "pgd": get_attack("pgd").settings(steps=steps),
        "energy": get_attack("energy").settings(**{"steps": steps, **(energy_settings or {})}),
        "attn-shift": get_attack("attn-shift").settings(steps=steps),
        "attn-target": get_attack("attn-target").settings(steps=steps, target=target),
    }
    own_store = store is not None and not isinstance(store, ThreatStore)
    st = ThreatStore(store) if own_store else store

    def key(model: str, threat: str, settings: dict, eps: float) -> ThreatKey:
        return ThreatKey(model, infos[model].checkpoint_sha256, threat, settings_json(settings), float(eps),
                         data.digest, int(seed), int(n))

    # ---------------------------------------------------------------- plan
    units: list[_Unit] = []
    stochastic: dict[str, bool] = {}
    for m in names:
        net = nets[m]
        with eval_mode(net):
            stochastic[m] = is_stochastic(net, x[: min(n, 8)])
        gated, attn = has_gates(net), has_attention(net)
        if "energy" in studies and gated:
            ref_name, _ = _reference(m, net)
            for e in grid:
                units.append(_Unit(m, "energy", e, key(m, "energy", {**S["energy"], "reference": ref_name}, e),
                                   "energy", (("energy", e),)))
        if "attention" in studies and attn:
            max_k = max(layer.K for layer in attention_layers(net))
            for a in ATTENTION_ATTACKS:
                if a == "attn-target" and not targetable(max_k, target):
                    continue
                for e in grid:
                    units.append(_Unit(m, "attention", e, key(m, a, S[a], e), a, ((a, e),)))
        if "adaptive" in studies:
            cfg = {"direct": "pgd", **S["pgd"], "bpda": gated, "eot": eot_samples if stochastic[m] else 0}
            # without gates or randomness there is nothing adaptive to run: one row (the direct attack, shared
            # with the transfer study) at the largest eps says so
            applicable = gated or stochastic[m]
            for e in (a_grid if applicable else a_grid[-1:]):
                needs = [("pgd", e)] + ([("pgd+bpda", e)] if gated else []) + ([("pgd-eot", e)] if stochastic[m]
                                                                                 else [])
                units.append(_Unit(m, "adaptive", e, key(m, "adaptive", cfg, e), "adaptive", tuple(needs)))
    if "transfer" in studies:
        for s in names:
            for t in names:
                cfg = {"attack": "pgd", **S["pgd"], "target": t, "target_sha256": infos[t].checkpoint_sha256}
                units.append(_Unit(s, "transfer", teps, key(s, "transfer", cfg, teps), t, (("pgd", teps),)))
    reused = 0
    if st is not None:
        for u in units:
            u.result = st.get(u.key)
            reused += u.result is not None
    needed = {(u.model, *need) for u in units if u.result is None for need in u.needs}
    if on_plan is not None:
        on_plan(len(needed) * n)

    # ---------------------------------------------------------------- run
    caches: dict[str, dict] = {m: {} for m in names}

    def put(u: _Unit, result: dict, seconds: float) -> None:
        u.result = result
        if st is not None:
            st.put(u.key, result, eps_label=eps_label(u.eps), dataset_id=data.id, dataset_label=data.label,
                   device=str(dev), untrained=infos[u.model].untrained, duration_s=seconds)

    common = {"batch_size": bs, "seed_key": seed_key, "progress": progress}
    for m in names:
        net, cache = nets[m], caches[m]
        for u in [u for u in units if u.model == m and u.study != "transfer" and u.result is None]:
            t0 = time.perf_counter()
            if u.study == "energy":
                _, ref = _reference(m, net)
                (res,) = energy_study(net, x, y, [u.eps], settings=S["energy"], reference=ref, **common)
                put(u, res, time.perf_counter() - t0)
                log(f"{m:<14} energy      @ {eps_label(u.eps):>6}: MACs {100 * res['frac_clean']:.1f}% -> "
                    f"{100 * res['frac_adv']:.1f}% of static, label changed {100 * res['label_changed']:.1f}% "
                    f"({time.perf_counter() - t0:.0f} s)")
            elif u.study == "attention":
                (res,) = attention_study(net, x, y, [u.eps], target=target, attacks=(u.attack,),
                                         settings={u.attack: S[u.attack]}, adversarial=cache, **common)
                put(u, res, time.perf_counter() - t0)
                log(f"{m:<14} {u.attack:<11} @ {eps_label(u.eps):>6}: acc {100 * res['acc_clean']:.1f}% -> "
                    f"{100 * res['acc_adv']:.1f}%, KL {res['kl']:.3f} ({time.perf_counter() - t0:.0f} s)")
            elif u.study == "adaptive":
                (res,) = adaptive_study(net, x, y, [u.eps], settings=S["pgd"], eot_samples=eot_samples,
                                        adversarial=cache, **common)
                put(u, res, time.perf_counter() - t0)
                log(f"{m:<14} adaptive    @ {eps_label(u.eps):>6}: {res['verdict_text']} "
                    f"({time.perf_counter() - t0:.0f} s)")
        for k in [k for k in cache if k != ("pgd", teps)]:  # free memory: keep only the transfer source
            del cache[k]

    transfer = None
    if "transfer" in studies:
        y_np = y.cpu().numpy()
        ok_clean = None
        for s in names:
            todo = [u for u in units if u.study == "transfer" and u.model == s and u.result is None]
            if not todo:
                continue
            t0 = time.perf_counter()
            if ok_clean is None:
                ok_clean = {t: predict(nets[t], x, bs) == y_np for t in names}
            xa = caches[s].get(("pgd", teps))
            if xa is None:
                xa = run_attack(nets[s], "pgd", x, y, teps, settings=S["pgd"], **common)
                caches[s][("pgd", teps)] = xa
            row = transfer_row({u.attack: nets[u.attack] for u in todo}, x, y, xa, bs, ok_clean)
            for u in todo:
                put(u, row[u.attack], time.perf_counter() - t0)
            log(f"{s:<14} transfer    @ {eps_label(teps):>6}: " +
                ", ".join(f"{t} {100 * r['acc']:.1f}%" for t, r in row.items()))
        acc = np.full((len(names), len(names)), np.nan)
        clean = np.full(len(names), np.nan)
        for u in units:
            if u.study == "transfer" and u.result is not None:
                i, j = names.index(u.model), names.index(u.attack)
                acc[i, j] = u.result["acc"]
                clean[j] = u.result["clean_acc"]
        transfer = TransferResult(names, acc, clean, teps, n, "pgd", S["pgd"])
    if own_store:
        st.close()

    def frame(study: str) -> pd.DataFrame:
        rows = []
        for u in units:
            if u.study == study and u.result is not None:
                info = infos[u.model]
                rows.append({"model": u.model, "family": info.family, "checkpoint_sha256": info.checkpoint_sha256,
                             "untrained": info.untrained, **u.result})
        return pd.DataFrame(rows)

    return ThreatsResult(frame("energy"), frame("attention"), frame("adaptive"), transfer, data.describe(), n,
                         int(seed), str(dev), time.perf_counter() - t_start,
                         computed=sum(u.result is not None for u in units) - reused, reused=reused,
                         store=str(st.path) if st is not None else None, models=names)
