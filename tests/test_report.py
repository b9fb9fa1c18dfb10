"""`robustdyn report`: every section from a small synthetic store, partial stores (clean runs only, no
gated model), the empty/missing store error, the section registry, and the markdown -> HTML converter."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

from robustbench_dyn.report import (
    SECTIONS,
    EmptyStoreError,
    SectionResult,
    SectionSkipped,
    attack_label,
    build_report,
    markdown_to_html,
    section,
    wilson,
)
from robustbench_dyn.report.sections import BUILTIN
from robustbench_dyn.store import ResultsStore, RunKey, encode_detail

LABEL = "CIFAR-10 (JPEG copy)"
N = 60
LAYERS, K = 3, 4  # dyconv_k4 with 3 attention layers (a toy layout)
BLOCKS = (8, 8, 16)  # gated: channels per gated block
ATTACKS = {  # name -> (settings, norm, grid)
    "fgsm": ({"amp": False, "bpda": False}, "Linf", [0.0, 2 / 255, 8 / 255]),
    "pgd": ({"amp": False, "bpda": False, "norm": "Linf", "random_start": True, "rel_step": 0.25, "restarts": 1,
             "step": None, "steps": 20}, "Linf", [0.0, 1 / 255, 2 / 255, 8 / 255]),
    "pgd-l2": ({"amp": False, "bpda": False, "norm": "L2", "random_start": True, "rel_step": 0.25, "restarts": 1,
                "step": None, "steps": 20}, "L2", [0.5]),
    "autoattack": ({"amp": False, "attacks": [], "bpda": False, "norm": "Linf", "seed": 0, "version": "standard"},
                   "Linf", [8 / 255]),
}


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _entropy(p: np.ndarray) -> np.ndarray:
    return -(p * np.log(np.clip(p, 1e-12, None))).sum(-1)


def _rows(model: str, rng: np.random.Generator, grid: list[float], strength: float) -> dict[float, list[dict]]:
    """Example rows per eps of one ascending sweep of a synthetic model."""
    labels = np.arange(N) % 10
    base = np.random.default_rng(sum(map(ord, model)))  # per model: the same clean predictions for every attack
    correct = base.random(N) < 0.85
    clean_pred = np.where(correct, labels, (labels + 1) % 10)
    # the eps at which each clean-correct example breaks (inf: never within the grid)
    threshold = rng.exponential(strength, N)
    att_c = _softmax(base.normal(0, 1.5, (N, LAYERS, K))) if model.startswith("dyconv") else None
    gates_c = (base.random((N, sum(BLOCKS))) < 0.4 + 0.04 * labels[:, None]).astype(np.uint8) \
        if model == "gated" else None
    out: dict[float, list[dict]] = {}
    for eps in grid:
        rows = []
        for i in range(N):
            if not correct[i]:
                broken = 0.0
            else:
                hits = [e for e in grid if e <= eps and e > 0 and threshold[i] <= e]
                broken = min(hits) if hits else None
            adv_pred = int(clean_pred[i]) if broken is None or eps == 0 else int((labels[i] + 3) % 10)
            row = {"idx": i, "label": int(labels[i]), "clean_pred": int(clean_pred[i]), "adv_pred": adv_pred,
                   "broken_at": broken, "perturbation": eps, "macs_clean": 40.5e6, "macs_adv": 40.5e6}
            kw = {}
            if att_c is not None:
                pc = att_c[i]
                pa = _softmax(np.log(pc) + rng.normal(0, 0.3 + 20 * eps, pc.shape))
                kl = (pc * (np.log(pc) - np.log(pa))).sum(-1)
                tv = 0.5 * np.abs(pc - pa).sum(-1)
                row.update(attn_entropy_clean=float(_entropy(pc).mean()), attn_entropy_adv=float(_entropy(pa).mean()),
                           attn_kl=float(kl.mean()), attn_tv=float(tv.mean()),
                           dominant_kernel_clean=int(pc.mean(0).argmax()), dominant_kernel_adv=int(pa.mean(0).argmax()),
                           dominant_changed=float((pc.argmax(1) != pa.argmax(1)).mean()))
                kw.update(entropy=(_entropy(pc), _entropy(pa)), kl=kl, tv=tv, dominant=(pc.argmax(1), pa.argmax(1)),
                          attn=(pc.ravel(), pa.ravel()))
            if gates_c is not None:
                gc = gates_c[i]
                ga = np.where(rng.random(gc.shape) < 20 * eps, 1, gc).astype(np.uint8)
                splits = np.cumsum(BLOCKS)[:-1]
                bc, ba = np.split(gc, splits), np.split(ga, splits)
                row.update(gate_density_clean=float(gc.mean()), gate_density_adv=float(ga.mean()),
                           macs_clean=10e6 + 30e6 * float(gc.mean()), macs_adv=10e6 + 30e6 * float(ga.mean()))
                kw.update(density=([b.mean() for b in bc], [b.mean() for b in ba]), gates=(bc, ba))
            row["detail"] = encode_detail(**kw) if kw else None
            rows.append(row)
        out[eps] = rows
    return out


def make_store(path, models=("static", "dyconv_k4", "gated"), attacks=tuple(ATTACKS), clean_only=False,
               checks=True, sha: str = "sha") -> str:
    st = ResultsStore(path)
    rng = np.random.default_rng(0)
    for model in models:
        sha_m = f"{model}-{sha}"
        layout = {"attention": [{"name": f"layers.{j // 2}.{j % 2}.conv1", "kind": "dyconv", "K": K, "spatial": 0}
                                for j in range(LAYERS)] if model.startswith("dyconv") else [],
                  "gates": [{"name": f"layers.{j}.0.gate", "channels": c} for j, c in enumerate(BLOCKS)]
                  if model == "gated" else []}
        st.upsert_model(model=model, checkpoint_sha256=sha_m, family=model.split("_")[0], params=270000,
                        macs=40.5e6, mean_executed_macs=22e6 if model == "gated" else 40.5e6, layout=layout,
                        latency_ms=1.5 if model == "static" else None,
                        latency_device="cpu" if model == "static" else None)
        strength = {"static": 2 / 255, "dyconv_k4": 3 / 255, "gated": 1.5 / 255}[model]
        for attack in attacks:
            settings, norm, grid = ATTACKS[attack]
            grid = [0.0] if clean_only else grid
            rows = _rows(model, rng, grid, strength if norm == "Linf" else strength * 40)
            for eps in grid:
                key = RunKey(model, sha_m, attack, json.dumps(settings, sort_keys=True, separators=(",", ":")), norm,
                             eps, json.dumps(grid), "cifar10-jpeg", "digest", 0, N)
                rid = st.run_id(key, eps_label=str(eps), dataset_label=LABEL, device="cpu")
                st.add_examples({rid: rows[eps]}, {rid: 1.0})
        if checks:
            st.add_check(model=model, checkpoint_sha256=sha_m, check_name="zero_gradient", dataset_digest="digest", n=N,
                         seed=0, value=0.9 if model == "gated" else 0.0, passed=model != "gated", threshold="<= 0.01",
                         meaning="hard gates: gradient masking", dataset_label=LABEL, device="cpu")
            st.add_check(model=model, checkpoint_sha256=sha_m, check_name="large_eps", dataset_digest="digest", n=N,
                         seed=0, value=0.0, passed=True, threshold="<= 0.01", meaning="masked gradients",
                         dataset_label=LABEL, device="cpu")
    st.close()
    return str(path)


def make_manifest(folder) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    models = {}
    for name, k in (("static", 1), ("dyconv_k2", 2), ("dyconv_k4", 4)):
        hist = [{"epoch": e, "train_acc": 0.5 + 0.04 * e + 0.005 * k, "holdout_acc": 0.45 + 0.035 * e,
                 "kept": True} for e in range(1, 8)]
        models[name] = {"name": name, "history": hist, "metrics": {"clean_acc": 0.7 + 0.01 * k, "clean_n": 10000,
                                                                   "clean_data": LABEL, "holdout_acc": 0.7},
                        "recipe": {"holdout": 1000}, "device": "cuda (test)", "sha256": f"{name}-sha",
                        "params": 270000 * k, "macs": 40.5e6}
    # dynamism audits (robustbench_dyn.audit): dyconv_k4 passes, gated behaves statically
    attention = {"entropy_ratio_mean": 0.7, "mean_replacement_loss": 5.0, "shuffle_loss": 9.0,
                 "layers_entropy_low_frac": 0.6, "kernel_info_ratio_mean": 0.2}
    models["dyconv_k4"]["audit"] = {"verdict": "dynamic", "n": 1000, "clean_acc": 0.74, "rule": "the rule",
                                    "data": LABEL, "attention": attention}
    models["gated"] = {"name": "gated", "sha256": "gated-sha", "metrics": {"clean_acc": 0.7}, "audit": {
        "verdict": "static", "n": 1000, "clean_acc": 0.7, "rule": "the rule", "data": LABEL,
        "gates": {"conditional_frac": 0.02, "majority_mask_loss": -0.3, "gate_class_mi_bits": 0.01,
                  "executed_macs_ratio": 0.26}}}
    (folder / "manifest.json").write_text(json.dumps({"format": 1, "models": models}))
    return str(folder)


@pytest.fixture(scope="module")
def full_report(tmp_path_factory):
    d = tmp_path_factory.mktemp("report")
    store = make_store(d / "store.sqlite")
    # the built-in sections only: extension modules (*_sections.py) test their own
    rep = build_report(store, d / "out", models_dir=make_manifest(d / "models"), strict=True,
                       sections=(*BUILTIN, "audit"))
    return rep


def test_full_report_has_every_section(full_report):
    rep = full_report
    assert rep.failed == {} and rep.missing == {}, (rep.missing, rep.failed)
    assert rep.built == sorted((*BUILTIN, "audit"), key=lambda sid: (SECTIONS[sid].order, sid))
    md = rep.index_md.read_text()
    for sid in rep.built:
        assert re.search(rf"^## \d+\. {re.escape(SECTIONS[sid].title)}$", md, re.M), sid
    # header: store, data label, JPEG caveat, devices, n per model
    assert "store.sqlite" in md and LABEL in md and "below published CIFAR-10" in md
    assert "**Devices:** cpu" in md and f"static {N}" in md and f"gated [STATIC by audit] {N}" in md
    # main table: the standard-eps columns, latency, an n and data column
    for col in ("FGSM @ 8/255 (%)", "PGD-20 @ 8/255 (%)", "AutoAttack @ 8/255 (%)", "PGD-20 L2 @ 0.5 (%)",
                "latency (ms)", "| n | data |"):
        assert col in md, col
    # single-eps attacks are not drawn as curves, and the report says so
    assert "Run at a single ε only" in md and "AutoAttack" in md.split("Run at a single ε only")[1].split("\n")[0]
    # findings carry numbers
    find = md.split("Findings", 2)[-1]
    assert "pt" in find and "%" in find and "FAILS zero_gradient" in find


def test_full_report_files(full_report):
    rep = full_report
    pngs = [f for f in rep.files if f.endswith(".png")]
    csvs = [f for f in rep.files if f.endswith(".csv")]
    expected = {"figures/robust_acc_vs_eps.png", "figures/accuracy_vs_K.png", "figures/train_val_acc_vs_K.png",
                "figures/training_curves_vs_K.png", "figures/robustness_vs_entropy.png",
                "figures/attention_shift_dyconv_k4.png", "figures/attention_tsne_dyconv_k4.png",
                "figures/gates_gated.png", "figures/gate_usage_per_class_gated.png"}
    assert expected <= set(pngs)
    assert {"tables/main_table.csv", "tables/sanity_checks.csv", "tables/robust_acc_vs_eps.csv",
            "tables/gates_executed_macs.csv", "tables/attention_shift_summary.csv"} <= set(csvs)
    for f in rep.files:
        p = rep.out / f
        assert p.is_file() and p.stat().st_size > 0, f
        if f.endswith(".png"):
            assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = rep.index_md.read_text()
    for f in pngs:
        assert f"]({f})" in md, f  # every figure is in the markdown
    html = rep.index_html.read_text()
    # figures are linked relatively (index.html sits beside figures/), every link resolves, nothing embedded
    srcs = re.findall(r'<img alt="[^"]*" src="([^"]+)">', html)
    assert sorted(srcs) == sorted(pngs) and all((rep.out / s).is_file() for s in srcs)
    assert "data:image" not in html and "<table>" in html
    meta = json.loads((rep.out / "report.json").read_text())
    assert meta["sections"] == rep.built and meta["files"] == rep.files


def test_main_table_numbers_match_store(full_report):
    import pandas as pd

    t = pd.read_csv(full_report.out / "tables" / "main_table.csv")
    st = ResultsStore(full_report.out.parent / "store.sqlite")
    runs = st.runs_df()
    st.close()
    r = runs[(runs.model == "dyconv_k4") & (runs.attack == "pgd") & ((runs.eps - 8 / 255).abs() < 1e-9)].iloc[0]
    row = t[t.model == "dyconv_k4"].iloc[0]
    assert math.isclose(row["PGD-20 @ 8/255"], r.robust_acc)
    assert row["PGD-20 @ 8/255 ci_lo"] <= r.robust_acc <= row["PGD-20 @ 8/255 ci_hi"]
    assert math.isclose(row["clean_acc"], r.clean_acc) and str(row["n"]) == str(N)
    g = t[t.model == "gated [STATIC by audit]"].iloc[0]  # the audit's verdict marks the model in every table
    assert math.isclose(g["macs_M"], 22.0) and math.isclose(g["macs_full_density_M"], 40.5)


def test_rebuild_removes_stale_files(tmp_path):
    store = make_store(tmp_path / "s.sqlite", models=("static", "gated"), attacks=("fgsm",), checks=False)
    out = tmp_path / "out"
    rep = build_report(store, out, models_dir=tmp_path / "nomodels", strict=True, sections=BUILTIN)
    assert (out / "figures" / "gates_gated.png").exists()
    rep = build_report(store, out, models_dir=tmp_path / "nomodels", sections=["main_table", "findings"],
                       strict=True)
    assert rep.built == ["main_table", "findings"]
    assert not (out / "figures" / "gates_gated.png").exists()
    assert (out / "tables" / "main_table.csv").exists()


def test_clean_only_store_builds_and_names_missing(tmp_path):
    store = make_store(tmp_path / "s.sqlite", clean_only=True, checks=False)
    rep = build_report(store, tmp_path / "out", models_dir=tmp_path / "nomodels", strict=True, sections=BUILTIN)
    assert rep.failed == {}
    assert "main_table" in rep.built and "findings" in rep.built
    for sid in ("eps_curves", "entropy", "attention_shift", "tsne", "checks"):
        assert sid in rep.missing, sid
    assert "only clean runs" in rep.missing["eps_curves"]
    md = rep.index_md.read_text()
    assert "Not in this report:" in md and SECTIONS["tsne"].title in md
    assert "No attack ran at the standard eps" in md


def test_store_without_gated_or_dynamic_models(tmp_path):
    store = make_store(tmp_path / "s.sqlite", models=("static", "dyconv_k4"), attacks=("pgd",))
    rep = build_report(store, tmp_path / "out", models_dir=tmp_path / "nomodels", strict=True, sections=BUILTIN)
    assert rep.failed == {}
    assert rep.missing == {"gates": "no channel-gated model in the store"}
    md = rep.index_md.read_text()
    assert "no channel-gated model in the store" in md
    # no manifest: the K section still builds from the store and says why the training curves are absent
    assert "No training curves" in md

    store2 = make_store(tmp_path / "s2.sqlite", models=("static",), attacks=("fgsm",), checks=False)
    rep2 = build_report(store2, tmp_path / "out2", models_dir=tmp_path / "nomodels", strict=True, sections=BUILTIN)
    assert rep2.failed == {}
    assert {"entropy", "attention_shift", "tsne", "gates", "kernels", "checks"} <= set(rep2.missing)
    assert {"main_table", "eps_curves", "findings"} <= set(rep2.built)


def test_empty_and_missing_store(tmp_path, capsys):
    with pytest.raises(EmptyStoreError, match="no results store at"):
        build_report(tmp_path / "absent.sqlite", tmp_path / "out")
    assert not (tmp_path / "absent.sqlite").exists()  # the report never creates a store
    ResultsStore(tmp_path / "empty.sqlite").close()
    with pytest.raises(EmptyStoreError, match="holds no runs"):
        build_report(tmp_path / "empty.sqlite", tmp_path / "out")

    from robustbench_dyn.cli import main

    for store in (tmp_path / "absent.sqlite", tmp_path / "empty.sqlite"):
        with pytest.raises(SystemExit) as e:
            main(["report", "--store", str(store), "--out", str(tmp_path / "out")])
        out, err = capsys.readouterr()
        assert e.value.code == 2
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:") and "Fix:" in lines[0], err
        assert "Traceback" not in out + err


def test_older_checkpoints_are_left_out(tmp_path):
    path = tmp_path / "s.sqlite"
    make_store(path, models=("static",), attacks=("fgsm",), checks=False, sha="old")
    make_store(path, models=("static", "gated"), attacks=("fgsm",), checks=False, sha="new")
    rep = build_report(path, tmp_path / "out", models_dir=tmp_path / "m", strict=True, sections=["main_table"])
    md = rep.index_md.read_text()
    assert "3 run(s) of older checkpoints of static are left out" in md
    assert f"static {N}" in md  # not 2N: the old checkpoint's examples are not mixed in


def test_store_with_checks_only(tmp_path):
    st = ResultsStore(tmp_path / "s.sqlite")
    st.add_check(model="gated", checkpoint_sha256="sha", check_name="zero_gradient", dataset_digest="d", n=8, seed=0,
                 value=1.0, passed=False, threshold="<= 0.01", meaning="hard gates", dataset_label=LABEL, device="cpu")
    st.close()
    rep = build_report(tmp_path / "s.sqlite", tmp_path / "out", models_dir=tmp_path / "m", strict=True,
                       sections=BUILTIN)
    assert rep.built == ["checks", "findings"] and rep.failed == {}
    assert rep.missing["main_table"] == "no evaluated examples in the store"
    md = rep.index_md.read_text()
    assert "FAIL 1" in md and "no evaluated examples yet (only sanity checks)" in md and LABEL in md


def test_store_with_only_an_extension_table(tmp_path):
    """A store holding only another module's table (e.g. threats) is not 'empty': extension sections may use it."""
    import sqlite3

    path = tmp_path / "s.sqlite"
    ResultsStore(path).close()
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE zz_extra (x INTEGER)")
    con.execute("INSERT INTO zz_extra VALUES (1)")
    con.commit()
    con.close()

    @section("zz_extra", "Extra table", order=50)
    def extra(ctx):
        return SectionResult(f"rows: {ctx.extra_tables['zz_extra']}")

    try:
        rep = build_report(path, tmp_path / "out", models_dir=tmp_path / "m", sections=[*BUILTIN, "zz_extra"],
                           strict=True)
    finally:
        SECTIONS.pop("zz_extra", None)
    assert rep.built == ["zz_extra"] and "rows: 1" in rep.index_md.read_text()


def test_cli_report_builds(tmp_path, capsys):
    from robustbench_dyn.cli import main

    store = make_store(tmp_path / "s.sqlite", models=("static", "gated"), attacks=("fgsm",))
    out = tmp_path / "rep"
    with pytest.raises(SystemExit) as e:
        main(["report", "--store", str(store), "--out", str(out), "--models-dir", str(tmp_path / "m"),
              "--sections", "main_table,gates,checks,findings"])
    text = capsys.readouterr().out
    assert (e.value.code or 0) == 0, text
    assert (out / "index.md").exists() and (out / "index.html").exists()
    assert "report: 4 sections" in text
    linked = (out / "index.html").read_text()
    assert 'src="figures/gates_gated.png"' in linked and "data:image" not in linked
    with pytest.raises(SystemExit) as e:  # --self-contained: the same page with the figures embedded
        main(["report", "--store", str(store), "--out", str(out), "--models-dir", str(tmp_path / "m"),
              "--sections", "main_table,gates,checks,findings", "--self-contained"])
    assert (e.value.code or 0) == 0, capsys.readouterr().out
    embedded = (out / "index.html").read_text()
    assert "figures/gates_gated.png" not in embedded and embedded.count("data:image/png;base64,") == \
        linked.count('<img alt=')


def test_extension_sections(tmp_path):
    store = make_store(tmp_path / "s.sqlite", models=("static",), attacks=("fgsm",), checks=False)

    @section("zz_custom", "Custom threat model", order=85, needs="nothing")
    def custom(ctx):
        csv = ctx.save_table(ctx.runs[["model", "attack_label", "eps", "robust_acc"]], "custom")
        fig, axes = ctx.figure()
        axes[0][0].plot([0, 1], [0, 1])
        png = ctx.save_figure(fig, "custom")
        return SectionResult(ctx.md_figure(png, "custom") + "\n\n" + ctx.md_table(ctx.runs[["model", "eps"]]),
                             files=[csv, png], findings=["custom finding 42%"])

    @section("zz_absent", "Transfer matrix", order=86)
    def absent(ctx):
        raise SectionSkipped("no transfer runs in the store")

    @section("zz_none", "Returns none", order=87, needs="energy-attack runs")
    def none(ctx):
        return None

    @section("zz_broken", "Broken builder", order=88)
    def broken(ctx):
        raise ZeroDivisionError("bug")

    try:
        with pytest.raises(ValueError, match="already registered"):
            section("zz_custom", "again")(lambda ctx: None)
        rep = build_report(store, tmp_path / "out", models_dir=tmp_path / "m",
                           sections=[*BUILTIN, "zz_custom", "zz_absent", "zz_none", "zz_broken"])
        assert "zz_custom" in rep.built and rep.built.index("zz_custom") < rep.built.index("findings")
        assert rep.missing["zz_absent"] == "no transfer runs in the store"
        assert "energy-attack runs" in rep.missing["zz_none"]
        assert "ZeroDivisionError" in rep.failed["zz_broken"]
        md = rep.index_md.read_text()
        assert "## " in md and "Custom threat model" in md and "custom finding 42%" in md
        assert "Transfer matrix: no transfer runs in the store" in md and "Broken builder" in md
        assert (tmp_path / "out" / "figures" / "custom.png").stat().st_size > 0
        with pytest.raises(ZeroDivisionError):
            build_report(store, tmp_path / "out2", sections=["zz_broken"], strict=True)
    finally:
        for sid in ("zz_custom", "zz_absent", "zz_none", "zz_broken"):
            SECTIONS.pop(sid, None)


def test_unknown_section_is_a_clear_error(tmp_path):
    from robustbench_dyn.report import ReportError

    store = make_store(tmp_path / "s.sqlite", models=("static",), attacks=("fgsm",), checks=False)
    with pytest.raises(ReportError, match="did you mean gates"):
        build_report(store, tmp_path / "out", sections=["gatez"])


def test_attack_labels_and_wilson():
    assert attack_label("pgd", ATTACKS["pgd"][0], "Linf") == "PGD-20"
    assert attack_label("pgd-l2", ATTACKS["pgd-l2"][0], "L2") == "PGD-20 L2"
    assert attack_label("pgd", {**ATTACKS["pgd"][0], "steps": 50, "restarts": 5, "bpda": True}, "Linf") == \
        "PGD-50x5 +BPDA"
    assert attack_label("autoattack", ATTACKS["autoattack"][0], "Linf") == "AutoAttack"
    assert attack_label("energy", "{}", "Linf") == "energy"
    lo, hi = wilson(0, 50)
    assert lo == 0 and 0.05 < hi < 0.1
    lo, hi = wilson(25, 50)
    assert lo < 0.5 < hi and math.isclose(0.5 - lo, hi - 0.5, rel_tol=1e-9)
    assert all(math.isnan(v) for v in wilson(0, 0))


def test_markdown_to_html(tmp_path):
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\nxx")
    md = ("# Title\n\nSome **bold** and `code` text with a [link](tables/x.csv).\n\n"
          "| model | acc (%) |\n|:---|---:|\n| a \\| b | 1.0 |\n\n"
          "- one\n- two\n\n1. first\n2. second\n\n> a note\n\n![fig](figures/a.png)\n\n## 2. Next: part\n")
    html = markdown_to_html(md, base_dir=tmp_path)
    assert '<img alt="fig" src="figures/a.png">' in html and "base64" not in html  # linked, not embedded
    embedded = markdown_to_html(md, base_dir=tmp_path, embed_images=True)
    assert '<img alt="fig" src="data:image/png;base64,iVBORw0KGgp4eA==">' in embedded
    assert embedded.replace('data:image/png;base64,iVBORw0KGgp4eA==', "figures/a.png") == html
    with pytest.raises(ValueError, match="needs base_dir"):
        markdown_to_html(md, embed_images=True) and '<h2 id="2-next-part">' in html
    assert "<strong>bold</strong>" in html and "<code>code</code>" in html and 'href="tables/x.csv"' in html
    assert '<td style="text-align:left">a | b</td>' in html and '<th style="text-align:right">acc (%)</th>' in html
    assert "<ul><li>one</li><li>two</li></ul>" in html and "<ol><li>first</li>" in html
    assert "<blockquote>" in html


def test_audit_section_and_marks(full_report):
    import pandas as pd

    md = full_report.index_md.read_text()
    audit = md.split("Dynamism audit", 2)[-1].split("\n## ")[0]
    assert "Rule: the rule." in audit and "**gated**" in audit and "| dyconv_k4 |" in audit
    assert "calls 1 of 2 audited dynamic model(s) static (gated)" in md
    t = pd.read_csv(full_report.out / "tables" / "audit.csv")
    assert list(t.model) == ["dyconv_k4", "gated"] and list(t.verdict) == ["dynamic", "static"]
    assert "gated [STATIC by audit]" in md and "dyconv_k4 [" not in md
