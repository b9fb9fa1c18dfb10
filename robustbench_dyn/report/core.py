"""The report engine: a registry of section builders, the context they read, and the writer.

A report is a list of sections, each built by a function ``build(ctx) -> SectionResult | None``
registered with :func:`section`. The builders read the results store (and the zoo manifest) through
:class:`ReportContext`, write their figures and CSV tables through it, and return markdown. A
builder whose data is absent returns ``None`` or raises :class:`SectionSkipped` with the reason; the
report then names the section as missing, with that reason, instead of failing.

Extending the report (another module, imported before :func:`build_report` runs)::

    from robustbench_dyn.report import ReportContext, SectionResult, SectionSkipped, section

    @section("transfer", "Transfer matrix", order=75, needs="runs of attack 'transfer'")
    def transfer(ctx: ReportContext) -> SectionResult:
        runs = ctx.runs[ctx.runs.attack == "transfer"]
        if runs.empty:
            raise SectionSkipped("no transfer-attack runs in the store")
        table = ...                                     # a DataFrame
        csv = ctx.save_table(table, "transfer_matrix")  # tables/transfer_matrix.csv
        fig, ax = ctx.figure()                          # styled matplotlib figure
        ...
        png = ctx.save_figure(fig, "transfer_matrix")   # figures/transfer_matrix.png
        md = ctx.md_table(table) + "\\n\\n" + ctx.md_figure(png, "Transfer matrix")
        return SectionResult(md, findings=["..."])      # findings go into the Findings section

Sections run in ``order``; the built-in ones use 10..90 and the findings summary 900.
"""

from __future__ import annotations

import json
import math
import os
import re
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import StoreError
from ..stats import wilson  # noqa: F401  (re-exported)
from ..store import STANDARD_EPS  # noqa: F401  (standard eps per norm; re-exported for the sections)

DEFAULT_OUT = Path("reports")
JPEG_NOTE = ("Accuracies measured on the JPEG copy of CIFAR-10 sit below published CIFAR-10 figures "
             "(the copy is lossy: 4:2:0 chroma, PSNR 27-33 dB); compare them with each other, not with papers.")


class ReportError(StoreError):
    """The report cannot be built from this store (missing or empty store, bad output folder)."""


class EmptyStoreError(ReportError):
    """The results store is missing or holds no runs."""


class SectionSkipped(Exception):  # noqa: N818  (control flow, not an error)
    """Raised by a section builder whose data is absent; the message says what is missing and why."""


# ------------------------------------------------------------------------------------------- registry

@dataclass
class SectionResult:
    """What a section builder returns: markdown (without its ``##`` heading), the files it wrote
    (relative to the output folder), findings for the summary, and notes about partial data."""

    markdown: str
    files: list[str] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Section:
    """A registered section: id (used in file names and --sections), title, order, builder."""

    id: str
    title: str
    order: float
    build: Callable[[ReportContext], SectionResult | None]
    needs: str = ""  # what data it needs, shown when it is missing


#: id -> Section; :func:`section` (or :func:`register_section`) adds to it, :func:`build_report` reads it.
SECTIONS: dict[str, Section] = {}


def register_section(id: str, title: str, build: Callable[[ReportContext], SectionResult | None], *,
                     order: float = 500, needs: str = "", replace: bool = False) -> Section:
    """Add a section builder to :data:`SECTIONS` (``replace=True`` to override one with the same id)."""
    if not re.fullmatch(r"[a-z0-9_]+", id):
        raise ValueError(f"section id {id!r} must be lower-case letters, digits and underscores")
    if id in SECTIONS and not replace and SECTIONS[id].build is not build:
        raise ValueError(f"section {id!r} is already registered (pass replace=True to override it)")
    s = Section(id, title, float(order), build, needs)
    SECTIONS[id] = s
    return s


def section(id: str, title: str, *, order: float = 500, needs: str = "", replace: bool = False):
    """Decorator form of :func:`register_section`."""

    def deco(fn):
        register_section(id, title, fn, order=order, needs=needs, replace=replace)
        return fn

    return deco


def ordered_sections(only: Iterable[str] | None = None) -> list[Section]:
    secs = sorted(SECTIONS.values(), key=lambda s: (s.order, s.id))
    if only is None:
        return secs
    wanted = list(only)
    unknown = [w for w in wanted if w not in SECTIONS]
    if unknown:
        import difflib

        close = [m for u in unknown for m in difflib.get_close_matches(u, list(SECTIONS), n=1)]
        raise ReportError(f"unknown report section(s) {', '.join(unknown)}",
                          f"did you mean {', '.join(close)}?" if close else f"known: {', '.join(SECTIONS)}")
    return [s for s in secs if s.id in wanted]


# ------------------------------------------------------------------------------------- attack labels

def _pgd_label(s: dict, base: str = "PGD") -> str:
    text = f"{base}-{s.get('steps', '?')}"
    if int(s.get("restarts", 1) or 1) > 1:
        text += f"x{s['restarts']}"
    return text


def _label_pgd(s: dict) -> str:
    return _pgd_label(s)


def _label_pgd_ours(s: dict) -> str:
    loss = str(s.get("loss", "ce")).upper()
    return _pgd_label(s) + (" DLR" if loss == "DLR" else " CE")


def _label_aa(s: dict) -> str:
    v = s.get("version", "standard")
    if v == "custom":
        return "AutoAttack (" + "+".join(s.get("attacks") or []) + ")"
    return "AutoAttack" if v == "standard" else f"AutoAttack-{v}"


#: attack name -> settings dict -> short label ('PGD-20'). Other modules may add entries; unknown
#: attacks are labelled by their name.
ATTACK_LABELS: dict[str, Callable[[dict], str]] = {
    "fgsm": lambda s: "FGSM",
    "pgd": _label_pgd,
    "pgd-l2": _label_pgd,
    "pgd-ce": _label_pgd_ours,
    "pgd-dlr": _label_pgd_ours,
    "autoattack": _label_aa,
    "square": lambda s: f"Square-{s.get('n_queries', '?')}",
}


def attack_label(attack: str, settings: str | dict | None, norm: str) -> str:
    """'PGD-20', 'PGD-20 L2', 'AutoAttack', 'FGSM +BPDA': what a reader calls the attack."""
    s = settings if isinstance(settings, dict) else (json.loads(settings) if settings else {})
    fn = ATTACK_LABELS.get(attack)
    text = fn(s) if fn else attack
    if norm == "L2" and "L2" not in text:
        text += " L2"
    if s.get("bpda"):
        text += " +BPDA"
    return text


# -------------------------------------------------------------------------------------- statistics



def pct(v: float | None, digits: int = 1) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.{digits}f}"


def eps_text(eps: float, norm: str) -> str:
    """'8/255' for Linf multiples of 1/255, else a short decimal."""
    if eps == 0:
        return "0"
    if norm == "Linf":
        k = eps * 255
        if abs(k - round(k)) < 1e-6:
            return f"{round(k)}/255"
        if abs(2 * k - round(2 * k)) < 1e-6:
            return f"{k:g}/255"
    return f"{eps:.4g}"


# -------------------------------------------------------------------------------------- model order

_FAMILY_ORDER = {"static": 0, "dyconv": 1, "odconv": 2, "gated": 3}
_NAME = re.compile(r"^(?:(?P<arch>resnet\d+)_)?(?P<variant>[a-z]+?)(?:_k(?P<K>\d+))?(?:_(?P<training>at))?$")


@dataclass(frozen=True)
class ModelMeta:
    """What the report needs to know about a model name: family, K, training, arch prefix."""

    name: str
    family: str
    K: int
    training: str  # 'standard' | 'at' | other
    arch: str  # 'resnet20' | 'resnet50' | ...

    @property
    def dynamic(self) -> bool:
        return self.family != "static"

    @property
    def base_static(self) -> str:
        """The static counterpart: same arch prefix and training ('static', 'static_at', 'resnet50_static')."""
        prefix = "" if self.arch == "resnet20" else f"{self.arch}_"
        return f"{prefix}static" + ("_at" if self.training == "at" else "")


def model_meta(name: str, family: str | None = None) -> ModelMeta:
    try:
        from ..registry import get_spec

        spec = get_spec(name)
        fam = "gated" if spec.gated else spec.conv
        arch = "resnet20" if spec.depth == 20 else f"resnet{spec.depth}"
        return ModelMeta(name, fam, int(spec.K or 1), spec.training, arch)
    except Exception:  # user models and names unknown to the registry
        m = _NAME.match(name)
        if m:
            fam = m.group("variant")
            return ModelMeta(name, family or (fam if fam in _FAMILY_ORDER else fam), int(m.group("K") or 1),
                             "at" if m.group("training") else "standard", m.group("arch") or "resnet20")
        return ModelMeta(name, family or "other", 1, "standard", "other")


def model_sort_key(name: str) -> tuple:
    m = model_meta(name)
    return (m.arch != "resnet20", m.arch, m.training != "standard", _FAMILY_ORDER.get(m.family, 9), m.K, name)


_DYCONV_COLORS = {1: "#9ecae1", 2: "#6baed6", 3: "#3182bd", 4: "#08519c", 5: "#08306b"}
_ODCONV_COLORS = {1: "#fdae6b", 4: "#d94801"}


def model_style(name: str) -> dict:
    """Colour, line style and marker per model, fixed across figures: static black, DyConv blues by K,
    ODConv oranges, gated green; adversarially trained models dashed."""
    m = model_meta(name)
    if m.family == "static":
        color, marker = "#000000", "s"
    elif m.family == "dyconv":
        color, marker = _DYCONV_COLORS.get(m.K, "#2171b5"), "o"
    elif m.family == "odconv":
        color, marker = _ODCONV_COLORS.get(m.K, "#f16913"), "^"
    elif m.family == "gated":
        color, marker = "#238b45", "D"
    else:
        palette = ["#6a3d9a", "#b15928", "#e7298a", "#666666", "#1b9e77"]
        color, marker = palette[sum(map(ord, name)) % len(palette)], "v"
    return {"color": color, "linestyle": "--" if m.training == "at" else "-", "marker": marker}


# -------------------------------------------------------------------------------------- the context

class ReportContext:
    """What section builders read (the store's tables, the zoo manifest) and how they write (figures,
    CSV tables, markdown helpers). Example rows are loaded on demand per run and cached."""

    def __init__(self, store, out: Path, *, models_dir: str | os.PathLike | None = None,
                 generated_at: datetime | None = None, dpi: int = 130, tsne_max: int = 500) -> None:
        self.store = store
        self.store_path = Path(store.path)
        self.store_label = str(getattr(store, "source", None) or store.path)
        self.out = Path(out)
        self.fig_dir = self.out / "figures"
        self.table_dir = self.out / "tables"
        self.models_dir = models_dir
        self.generated_at = generated_at or datetime.now(timezone.utc)
        self.dpi = dpi
        self.tsne_max = tsne_max
        self.notes: list[str] = []  # report-level notes shown in the header
        self.results: dict[str, SectionResult] = {}  # sections built so far (the findings section reads these)
        self._examples: dict[tuple, pd.DataFrame] = {}
        self._manifest: dict | None = None
        self._manifest_error: str | None = None
        self._load()

    # ---------------------------------------------------------------------------------- loading
    def _load(self) -> None:
        runs = self.store.runs_df()
        self.all_runs = runs
        checks = self.store.checks_df()
        self.extra_tables = _extra_tables(self.store_path)
        if runs.empty and checks.empty and not self.extra_tables:
            raise EmptyStoreError(f"results store {self.store_label} holds no runs",
                                  "run `robustdyn sweep --suite attacks/standard.toml --models '*'` "
                                  "(or `robustdyn evaluate`) first, or pass --store")
        runs = runs[runs.n_done > 0].copy()
        if runs.empty and checks.empty and not self.extra_tables:
            raise EmptyStoreError(f"results store {self.store_label} has runs but no example rows yet",
                                  "wait for the sweep to commit its first batch, or rerun it")
        if runs.empty:
            self.notes.append("The store holds no evaluated examples yet" + (" (only sanity checks)" if len(checks)
                                                                             else "") + ".")
        # the newest checkpoint per model name: results of older checkpoints are not mixed in
        latest = runs.sort_values("run_id").groupby("model")["checkpoint_sha256"].last()
        keep = runs.checkpoint_sha256 == runs.model.map(latest)
        dropped = runs[~keep]
        if len(dropped):
            names = sorted(set(dropped.model))
            self.notes.append(f"{len(dropped)} run(s) of older checkpoints of {', '.join(names)} are left out "
                              "(only each model's newest checkpoint is reported).")
        runs = runs[keep].copy()
        runs["attack_label"] = [attack_label(a, s, n) for a, s, n in zip(runs.attack, runs.settings, runs.norm,
                                                                          strict=True)]
        runs["grid_len"] = [len(json.loads(g)) for g in runs.grid]
        runs["complete"] = runs.status == "complete"
        runs["dataset_label"] = runs.dataset_label.fillna(runs.dataset_id)
        runs["device"] = runs.device.fillna("unknown device")
        runs["robust_k"] = (runs.robust_acc.fillna(0) * runs.n_done).round().astype(int)
        runs["clean_k"] = (runs.clean_acc.fillna(0) * runs.n_done).round().astype(int)
        self.runs = runs.reset_index(drop=True)
        incomplete = runs[~runs.complete]
        if len(incomplete):
            self.notes.append(f"{len(incomplete)} run(s) are incomplete (still running or interrupted); their numbers "
                              "use the examples committed so far: "
                              + ", ".join(f"{r.model} {r.attack_label} @ {eps_text(r.eps, r.norm)} "
                                          f"({r.n_done}/{r.n})" for r in incomplete.head(6).itertuples())
                              + (" ..." if len(incomplete) > 6 else "") + ".")
        untrained = sorted(set(runs[runs.untrained == 1].model))
        if untrained:
            self.notes.append(f"UNTRAINED (random weights, smoke test only): {', '.join(untrained)}.")
        models = self.store.models_df()
        if not models.empty:
            models = models[models.checkpoint_sha256 == models.model.map(latest)]
        self.models_table = models.set_index("model") if not models.empty else models
        if not checks.empty:
            checks = checks[checks.checkpoint_sha256 == checks.model.map(latest).fillna(checks.checkpoint_sha256)]
        self.checks = checks
        self.models = sorted(set(self.runs.model), key=model_sort_key)

    # --------------------------------------------------------------------------------- metadata
    def meta(self, model: str) -> ModelMeta:
        fam = None
        if not self.models_table.empty and model in self.models_table.index:
            fam = self.models_table.loc[model, "family"]
        return model_meta(model, fam if isinstance(fam, str) else None)

    def label(self, model: str) -> str:
        """The model's display name: 'gated (untrained)' for random weights, and a dynamic architecture that
        the dynamism audit calls static is marked 'dyconv_k4 [STATIC by audit]' (or '[STATIC? not audited]')."""
        r = self.runs[self.runs.model == model]
        if len(r) and bool(r.untrained.max()):
            return f"{model} (untrained)"
        mark = self.audit_mark(model)
        return f"{model} [{mark}]" if mark else model

    def audit(self, model: str) -> dict | None:
        """The manifest's dynamism audit of the checkpoint this store evaluated (None when the manifest has
        no audit, or audited another checkpoint than the one in the store)."""
        entry = self.manifest.get(model) or {}
        audit = entry.get("audit")
        if not audit:
            return None
        r = self.runs[self.runs.model == model]
        shas = set(r.checkpoint_sha256.dropna()) if len(r) and "checkpoint_sha256" in r else set()
        if shas and entry.get("sha256") not in shas:
            return None
        return audit

    def audit_mark(self, model: str) -> str:
        """'' for a static architecture or an audited dynamic one; else 'STATIC by audit' / 'STATIC? not audited'."""
        meta = self.meta(model)
        if not meta.dynamic or meta.family == "other":
            return ""
        audit = self.audit(model)
        if audit is None:
            return "STATIC? not audited"  # unaudited dynamic models are not claimed dynamic
        return "" if audit.get("verdict") == "dynamic" else "STATIC by audit"

    def style(self, model: str) -> dict:
        return model_style(model)

    def model_info(self, model: str) -> dict:
        """The models-table row of ``model`` as a dict ({} if absent)."""
        if self.models_table.empty or model not in self.models_table.index:
            return {}
        row = self.models_table.loc[model]
        d = row.to_dict()
        if isinstance(d.get("layout"), str):
            try:
                d["layout"] = json.loads(d["layout"])
            except ValueError:
                d["layout"] = None
        return d

    def layout(self, model: str) -> dict:
        return self.model_info(model).get("layout") or {}

    @property
    def manifest(self) -> dict:
        """The zoo manifest's models mapping ({} when there is none; the reason is in manifest_error)."""
        if self._manifest is None:
            try:
                from ..checkpoints import default_models_dir, read_manifest

                self._manifest = read_manifest(self.models_dir)
                if not self._manifest:
                    d = Path(self.models_dir) if self.models_dir else default_models_dir()
                    self._manifest_error = f"no zoo manifest in {d}"
            except Exception as e:  # CheckpointError and friends: the report still builds without it
                self._manifest = {}
                self._manifest_error = str(e)
        return self._manifest

    @property
    def manifest_error(self) -> str | None:
        _ = self.manifest
        return self._manifest_error

    # ---------------------------------------------------------------------------- run selection
    def attack_order(self, labels: Iterable[str]) -> list[str]:
        def key(lbl: str):
            base = lbl.split(" ")[0]
            rank = 0 if base == "FGSM" else 1 if base.startswith("PGD") else 2 if base.startswith("AutoAttack") \
                else 3 if base.startswith("Square") else 4
            return (" L2" in lbl, "BPDA" in lbl, rank, lbl)

        return sorted(set(labels), key=key)

    def attacks(self, norm: str | None = None) -> list[str]:
        r = self.runs[self.runs.eps > 0]
        if norm:
            r = r[r.norm == norm]
        return self.attack_order(r.attack_label)

    @staticmethod
    def _best(runs: pd.DataFrame) -> pd.Series | None:
        if runs.empty:
            return None
        return runs.sort_values(["n_done", "complete", "grid_len", "run_id"], ascending=False).iloc[0]

    def select_run(self, model: str, label: str, norm: str, eps: float) -> pd.Series | None:
        """The run of ``model`` under attack ``label`` at ``eps``: most examples, then complete, then the
        longest grid (its carried-over adversarial examples make the attack strongest), then newest."""
        r = self.runs
        r = r[(r.model == model) & (r.attack_label == label) & (r.norm == norm) & ((r.eps - eps).abs() < 1e-9)]
        return self._best(r)

    def curve(self, model: str, label: str, norm: str) -> pd.DataFrame:
        """The runs of one eps grid of ``model`` under ``label`` (the grid with most eps, then most examples),
        sorted by eps; empty if none."""
        r = self.runs
        r = r[(r.model == model) & (r.attack_label == label) & (r.norm == norm)]
        if r.empty:
            return r
        best = r.sort_values(["grid_len", "n_done", "run_id"], ascending=False).iloc[0]
        same = r[(r.grid == best.grid) & (r.settings == best.settings) & (r.seed == best.seed) & (r.n == best.n)
                 & (r.dataset_digest == best.dataset_digest)]
        return same.sort_values("eps")

    def balanced_split(self, model: str, ref: tuple[str, str], *, detail: bool = False
                       ) -> tuple[pd.Series, pd.DataFrame] | None:
        """The run of ``model``'s ``ref`` (label, norm) curve whose clean-correct examples split most evenly into
        broken and surviving (ties: the eps nearest the standard one), and those examples with a boolean
        ``broken`` column. Broken = ``broken_at`` set: the attack changed a correct prediction, as the store counts
        robust accuracy. None when the curve has no run at eps > 0."""
        best = None
        for r in self.curve(model, *ref).itertuples():
            if r.eps <= 0:
                continue
            ex = self.examples(int(r.run_id))
            ok = ex[ex.clean_pred == ex.label]
            nb = int(ok.broken_at.notna().sum())
            score = (min(nb, len(ok) - nb), -abs(r.eps - STANDARD_EPS.get(ref[1], 0)))
            if best is None or score > best[0]:
                best = (score, pd.Series(r._asdict()))
        if best is None:
            return None
        ex = self.examples(int(best[1].run_id), detail=detail)
        ok = ex[ex.clean_pred == ex.label]
        return best[1], ok.assign(broken=ok.broken_at.notna().to_numpy())

    def clean_run(self, model: str) -> pd.Series | None:
        """The run with most examples of ``model`` (any attack): its clean predictions give clean accuracy."""
        return self._best(self.runs[self.runs.model == model])

    def reference_attack(self, models: Sequence[str] | None = None) -> tuple[str, str] | None:
        """The (label, norm) the dynamics sections use: PGD-20 Linf if run, else the Linf PGD with the longest
        grid, else AutoAttack, else any Linf attack; None when no attack ran at eps > 0."""
        r = self.runs[(self.runs.eps > 0) & (self.runs.norm == "Linf")]
        if models is not None:
            r = r[r.model.isin(list(models))]
        if r.empty:
            return None
        labels = set(r.attack_label)
        if "PGD-20" in labels:
            return ("PGD-20", "Linf")
        pgd = r[r.attack_label.str.startswith("PGD") & ~r.attack_label.str.contains("BPDA")]
        if len(pgd):
            return (pgd.sort_values(["grid_len", "n_done"], ascending=False).iloc[0].attack_label, "Linf")
        for lbl in self.attack_order(labels):
            if lbl.startswith("AutoAttack"):
                return (lbl, "Linf")
        return (self.attack_order(labels)[0], "Linf")

    def mid_eps(self, label: str, norm: str, models: Sequence[str] | None = None) -> float | None:
        """The eps > 0 of the ``label`` curves at which robust accuracy is closest to half the clean accuracy
        (averaged over ``models``): where robust and broken examples are both plentiful. None if no such run."""
        ratios: dict[float, list[float]] = {}
        for m in models if models is not None else self.models:
            for r in self.curve(m, label, norm).itertuples():
                if r.eps > 0 and r.clean_acc and r.clean_acc > 0:
                    ratios.setdefault(round(float(r.eps), 9), []).append(float(r.robust_acc) / float(r.clean_acc))
        if not ratios:
            return None
        most = max(len(v) for v in ratios.values())
        cands = {e: float(np.mean(v)) for e, v in ratios.items() if len(v) == most}
        return min(cands, key=lambda e: (abs(cands[e] - 0.5), e))

    def examples(self, run_ids: int | Sequence[int], *, detail: bool = False) -> pd.DataFrame:
        """Example rows of the given run(s) (cached), with ``detail`` decoded into array columns."""
        ids = (int(run_ids),) if isinstance(run_ids, (int, np.integer)) else tuple(int(i) for i in run_ids)
        key = (ids, detail)
        if key not in self._examples:
            self._examples[key] = self.store.examples_df(run_ids=list(ids), detail=detail)
        return self._examples[key]

    # ------------------------------------------------------------------------------- descriptions
    def data_text(self, runs: pd.DataFrame | pd.Series | None = None, *, n: bool = True) -> str:
        """'CIFAR-10 (JPEG copy), n=500, cpu' for the given runs (all runs by default)."""
        r = self.runs if runs is None else (runs.to_frame().T if isinstance(runs, pd.Series) else runs)
        if r.empty:
            return ""
        parts = [" + ".join(sorted(set(map(str, r.dataset_label))))]
        if n:
            ns = sorted({int(v) for v in r.n_done})
            parts.append("n=" + (str(ns[0]) if len(ns) == 1 else f"{ns[0]}-{ns[-1]}"))
        parts.append(" + ".join(sorted(set(map(str, r.device)))))
        return ", ".join(parts)

    # ------------------------------------------------------------------------------------ writing
    def figure(self, nrows: int = 1, ncols: int = 1, *, size: tuple[float, float] | None = None, **kw):
        """A new matplotlib figure (Agg) in the report's style; ``size`` is per panel (inches)."""
        from .plotting import new_figure

        return new_figure(nrows, ncols, size=size, **kw)

    def save_figure(self, fig, name: str) -> str:
        """Write ``figures/NAME.png`` and close the figure; returns the path relative to the output folder."""
        import matplotlib.pyplot as plt

        self.fig_dir.mkdir(parents=True, exist_ok=True)
        path = self.fig_dir / f"{_safe(name)}.png"
        fig.savefig(path, dpi=self.dpi, bbox_inches="tight", facecolor="white")
        plt.close(fig)
        return path.relative_to(self.out).as_posix()

    def save_table(self, df: pd.DataFrame, name: str) -> str:
        """Write ``tables/NAME.csv``; returns the path relative to the output folder."""
        self.table_dir.mkdir(parents=True, exist_ok=True)
        path = self.table_dir / f"{_safe(name)}.csv"
        df.to_csv(path, index=False)
        return path.relative_to(self.out).as_posix()

    @staticmethod
    def md_table(df: pd.DataFrame, align: Sequence[str] | None = None) -> str:
        """A pipe table; numbers right-aligned unless ``align`` ('l'/'r'/'c' per column) says otherwise."""
        return md_table(df, align)

    @staticmethod
    def md_figure(path: str, alt: str) -> str:
        return f"![{alt}]({path})"

    @staticmethod
    def md_csv(path: str, what: str = "CSV") -> str:
        return f"[{what}]({path})"


_CORE_TABLES = {"meta", "runs", "examples", "checks", "models"}


def _extra_tables(path: Path) -> dict[str, int]:
    """Tables other modules added to the store (e.g. ``threats``) -> row count, read-only; {} if none."""
    import sqlite3

    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        try:
            names = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            out = {}
            for n in names:
                if n not in _CORE_TABLES and not n.startswith("sqlite_"):
                    out[n] = int(con.execute(f'SELECT COUNT(*) FROM "{n}"').fetchone()[0])
            return {k: v for k, v in out.items() if v}
        finally:
            con.close()
    except sqlite3.DatabaseError:
        return {}


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "x"


def md_escape(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def md_table(df: pd.DataFrame, align: Sequence[str] | None = None) -> str:
    cols = list(df.columns)
    if align is None:
        align = ["r" if pd.api.types.is_numeric_dtype(df[c]) else "l" for c in cols]
    sep = {"l": ":---", "r": "---:", "c": ":---:"}
    lines = ["| " + " | ".join(md_escape(c) for c in cols) + " |",
             "|" + "|".join(sep[a] for a in align) + "|"]
    for row in df.itertuples(index=False):
        cells = []
        for v in row:
            if v is None or (isinstance(v, float) and math.isnan(v)):
                cells.append("")
            elif isinstance(v, float):
                cells.append(f"{v:g}")
            else:
                cells.append(md_escape(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def slug(text: str) -> str:
    """GitHub-style heading anchor."""
    s = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return s.replace(" ", "-")


# ------------------------------------------------------------------------------------------ building

@dataclass
class Report:
    """What :func:`build_report` wrote: the output folder, index files, built and missing sections."""

    out: Path
    index_md: Path
    index_html: Path
    built: list[str]
    missing: dict[str, str]  # section id -> reason
    failed: dict[str, str]  # section id -> error (a bug in a builder; the rest of the report is still built)
    files: list[str]


def open_store_for_report(store_path: str | os.PathLike | None):
    """Open an existing store read-only in spirit (never creates one): a missing path is an EmptyStoreError."""
    from ..store import ResultsStore, default_store_path
    from ..store_pack import materialize

    p = Path(store_path) if store_path is not None else default_store_path()
    if p.is_dir():
        p, source = materialize(p)
        st = ResultsStore(p)
        st.source = source  # what the report names: the pack the user passed, not the unpacked copy
        return st
    if not p.exists():
        raise EmptyStoreError(f"no results store at {p}",
                              "run `robustdyn sweep --suite attacks/standard.toml --models '*'` first, or pass "
                              "--store PATH (or set ROBUSTDYN_STORE)")
    if p.is_file() and p.stat().st_size == 0:
        raise EmptyStoreError(f"results store {p} is empty (0 bytes)", "run a sweep into it first, or pass --store")
    return ResultsStore(p)


def build_report(store: str | os.PathLike | Any | None = None, out: str | os.PathLike = DEFAULT_OUT, *,
                 models_dir: str | os.PathLike | None = None, sections: Iterable[str] | None = None,
                 strict: bool = False, progress: Callable[[str, str], None] | None = None,
                 generated_at: datetime | None = None, tsne_max: int = 500,
                 self_contained: bool = False) -> Report:
    """Build the report from the results ``store`` (a path or an open ResultsStore) into ``out``:
    index.md, index.html, figures/*.png and tables/*.csv. index.html links its figures relatively
    (``self_contained=True``: embeds them as data URIs, one file to mail, several MB).

    Sections whose data is absent are listed as missing with the reason. A builder that raises another
    exception is reported as failed (``strict=True`` re-raises it instead, for tests).
    ``progress(section_id, status)`` is called with 'start', then 'done' | 'missing' | 'failed'.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    from . import html as html_mod

    own = not hasattr(store, "runs_df")
    st = open_store_for_report(store) if own else store
    try:
        out = Path(out)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ReportError(f"cannot create the report folder {out} ({e})", "pass another --out") from None
        old_files = _previous_files(out)
        ctx = ReportContext(st, out, models_dir=models_dir, generated_at=generated_at, tsne_max=tsne_max)
        from . import EXTENSION_ERRORS

        for mod, err in EXTENSION_ERRORS.items():
            ctx.notes.append(f"report extension {mod} failed to import ({err}); its sections are absent.")
        import matplotlib.pyplot as plt

        from .plotting import RC

        with plt.rc_context(RC):
            built, missing, failed = _build_sections(ctx, ordered_sections(sections), strict, progress)
        md = _index_markdown(ctx, built, missing, failed)
        index_md = out / "index.md"
        index_md.write_text(md, encoding="utf-8")
        index_html = out / "index.html"
        index_html.write_text(html_mod.markdown_to_html(md, base_dir=out, title="Adversarial robustness of dynamic "
                                                        "CNNs: report", embed_images=self_contained),
                              encoding="utf-8")
        files = sorted({f for _, r in built for f in r.files})
        _cleanup(out, old_files, set(files))
        (out / "report.json").write_text(json.dumps({
            "generated_at": ctx.generated_at.isoformat(timespec="seconds"), "store": ctx.store_label,
            "sections": [s.id for s, _ in built], "missing": missing, "failed": failed, "files": files},
            indent=1), encoding="utf-8")
        return Report(out, index_md, index_html, [s.id for s, _ in built], missing, failed, files)
    finally:
        if own:
            st.close()


def _build_sections(ctx: ReportContext, secs: list[Section], strict: bool,
                    progress: Callable[[str, str], None] | None):
    built: list[tuple[Section, SectionResult]] = []
    missing: dict[str, str] = {}
    failed: dict[str, str] = {}
    for sec in secs:
        if progress:
            progress(sec.id, "start")
        try:
            res = sec.build(ctx)
            if res is None:
                raise SectionSkipped(f"no data for it in the store ({sec.needs})" if sec.needs else
                                     "no data for it in the store")
        except SectionSkipped as e:
            missing[sec.id] = str(e)
            if progress:
                progress(sec.id, "missing")
            continue
        except Exception as e:
            if strict:
                raise
            failed[sec.id] = f"{type(e).__name__}: {e}"
            where = traceback.extract_tb(e.__traceback__)[-1]
            ctx.notes.append(f"section '{sec.title}' failed to build ({type(e).__name__}: {e}, at "
                             f"{Path(where.filename).name}:{where.lineno}); the other sections are complete.")
            if progress:
                progress(sec.id, "failed")
            continue
        ctx.results[sec.id] = res
        built.append((sec, res))
        if progress:
            progress(sec.id, "done")
    return built, missing, failed


def _previous_files(out: Path) -> list[str]:
    try:
        return list(json.loads((out / "report.json").read_text()).get("files", []))
    except (OSError, ValueError, AttributeError):
        return []


def _cleanup(out: Path, old: list[str], new: set[str]) -> None:
    """Remove figures/tables a previous build wrote that this build did not (stale sections)."""
    for f in old:
        if f in new or ".." in Path(f).parts:
            continue
        p = out / f
        if p.parent.name in ("figures", "tables") and p.is_file():
            p.unlink()


def _index_markdown(ctx: ReportContext, built: list[tuple[Section, SectionResult]], missing: dict[str, str],
                    failed: dict[str, str]) -> str:
    from .. import __version__

    runs = ctx.runs
    ch = ctx.checks if ctx.checks is not None else pd.DataFrame()
    labels = sorted(set(map(str, runs.dataset_label)) or set(map(str, ch.get("dataset_label", pd.Series())
                                                                  .dropna())) or {"unknown data"})
    devices = sorted(set(map(str, runs.device)) or set(map(str, ch.get("device", pd.Series()).dropna()))
                     or {"unknown device"})
    lines = ["# Adversarial robustness of dynamic CNNs: report", ""]
    lines.append(f"Generated {ctx.generated_at.strftime('%Y-%m-%d %H:%M UTC')} by robustbench_dyn {__version__} "
                 f"from the results store `{ctx.store_label}` ({len(runs)} runs, {len(ctx.models)} models).")
    lines.append("")
    lines.append(f"- **Data:** {', '.join(labels)}.")
    if any("JPEG" in lbl for lbl in labels):
        lines.append(f"- **Note:** {JPEG_NOTE}")
    lines.append(f"- **Devices:** {', '.join(devices)}.")
    ns = []
    for m in ctx.models:
        r = runs[runs.model == m]
        vals = sorted({int(v) for v in r.n_done})
        ns.append(f"{ctx.label(m)} {vals[-1] if len(vals) == 1 else f'{vals[0]}-{vals[-1]}'}")
    lines.append(f"- **Examples per model (n):** {'; '.join(ns) or 'none'}. Robust accuracies come with Wilson 95% "
                 "intervals in the CSV tables; at small n, differences of a few points are within noise.")
    unevaluated = [m for m in ctx.manifest if m not in set(ctx.models) and not m.startswith("ts_")]
    if unevaluated and len(runs):
        lines.append(f"- **Not evaluated in this store:** {', '.join(unevaluated)} (checkpoints in the zoo manifest "
                     "with no runs here; sections built from the manifest or the bench table may still show them).")
    for note in ctx.notes:
        lines.append(f"- **Note:** {note}")
    lines.append("")
    lines.append("## Contents")
    lines.append("")
    for i, (sec, _) in enumerate(built, 1):
        lines.append(f"{i}. [{sec.title}](#{slug(f'{i}. {sec.title}')})")
    if missing or failed:
        lines.append("")
        lines.append("Not in this report:")
        lines.append("")
        for sid, why in missing.items():
            lines.append(f"- {SECTIONS[sid].title}: {why}.".replace("..", "."))
        for sid, why in failed.items():
            lines.append(f"- {SECTIONS[sid].title}: failed to build ({why}).")
    lines.append("")
    for i, (sec, res) in enumerate(built, 1):
        lines.append(f"## {i}. {sec.title}")
        lines.append("")
        for note in res.notes:
            lines.append(f"> {note}")
            lines.append("")
        lines.append(res.markdown.strip())
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
