"""`robustdyn audit`: is a dynamic model really dynamic? (robustbench_dyn.audit)"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from ._app import app, check_counts, console, err_console
from ._options import data_dir_option, models_dir_option


def _f(v, fmt="{:.3f}") -> str:
    return "" if v is None else fmt.format(v)


@app.command("audit")
def audit_cmd(
    model: str = typer.Option(..., "--model", "-m", help="A zoo name with a checkpoint (`robustdyn list`)."),
    n: int = typer.Option(1000, "--n", "--n-examples", help="Seeded test images the audit runs on."),
    seed: int = typer.Option(0, "--seed", help="Subset seed (also seeds the attention shuffle)."),
    per_layer: bool = typer.Option(True, "--per-layer/--no-per-layer",
                                   help="Also replace/shuffle each attention layer alone (2 passes per layer)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (verdict, rule and every figure)."),
    write_manifest: bool = typer.Option(False, "--write-manifest",
                                        help="Store the result as the model's `audit` in the zoo manifest."),
    batch_size: int = typer.Option(500, "--batch-size", help="Images per forward pass."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    data_dir: Path = data_dir_option("CIFAR-10 folder (default: ROBUSTDYN_DATA, cache)."),
    models_dir: Path = models_dir_option(),
) -> None:
    """Measure whether a model's attention and gates act dynamically, and give a verdict.

    Attention (per layer): entropy / log K, entropy of the mean attention, kernel-choice information,
    logit spread, and the accuracy lost when each example's attention is replaced by the mean or shuffled
    across examples. Gates: conditional gates per stage, distinct patterns, a fixed majority mask vs the
    learned gates, gate-class mutual information, executed MACs. The rule is printed with the verdict.

    Example: `robustdyn audit --model dyconv_k4 --n 1000`, or `--json` for scripts.
    """
    from ..audit import audit_checkpoint, summary_row
    from ..errors import ConfigError
    from ..evaluation import resolve_device

    check_counts(n=n, seed=seed, batch_size=batch_size)
    dev = resolve_device(device)
    if write_manifest and models_dir is not None and not Path(models_dir).is_dir():
        raise ConfigError(f"--models-dir {models_dir} is not a folder", "point it at the folder holding manifest.json")
    with console.status("auditing...") as status:
        res = audit_checkpoint(model, n=n, seed=seed, data_dir=data_dir, device=str(dev), models_dir=models_dir,
                               batch_size=batch_size, per_layer=per_layer,
                               progress=lambda s: status.update(f"auditing {model}: {s}"))
    for w in res.get("warnings", []):
        err_console.print(f"warning: {w}", markup=False, highlight=False)
    if write_manifest:
        from ..checkpoints import read_manifest, update_manifest

        entry = read_manifest(models_dir).get(res["model"])
        update_manifest(res["model"], {**entry, "audit": res}, models_dir)
    if as_json:
        console.print(json.dumps(res), markup=False, highlight=False, soft_wrap=True)
        return
    console.print(f"[bold]{res['model']}[/bold]: [bold]{res['verdict']}[/bold] ({res.get('why', '')})")
    console.print(f"rule: {res['rule']}", markup=False, highlight=False)
    console.print(f"n={res['n']} test examples of {res['data']} (subset seed {seed}), clean accuracy "
                  f"{100 * res['clean_acc']:.2f} %, eval mode, fp32, {dev}", markup=False, highlight=False)
    a = res.get("attention")
    if a:
        t = Table(title="attention per layer (loss: accuracy points lost when this layer's attention is replaced)")
        for c in ("layer", "K", "H/logK", "sd", "H(mean)/logK", "I(x;k)/logK", "logit sd", "mean-repl. loss",
                  "shuffle loss"):
            t.add_column(c, justify="left" if c == "layer" else "right")
        for r in a["layers"]:
            t.add_row(r["layer"], str(r["K"]), _f(r["entropy_ratio"]), _f(r["entropy_ratio_std"]),
                      _f(r["mean_entropy_ratio"]), _f(r["kernel_info_ratio"]), _f(r["logit_spread"]),
                      _f(r.get("mean_replacement_loss"), "{:.1f}"), _f(r.get("shuffle_loss"), "{:.1f}"))
        console.print(t)
        console.print(f"all layers at once: mean replacement costs {a['mean_replacement_loss']:.1f} pt, shuffling "
                      f"{a['shuffle_loss']:.1f} pt; layers with H/logK <= 0.85: "
                      f"{_f(a['layers_entropy_low_frac'], '{:.0%}')}", markup=False, highlight=False)
    g = res.get("gates")
    if g:
        t = Table(title="gates per stage")
        for c in ("stage", "gates", "conditional", "always on", "always off", "gate-class MI (bits)"):
            t.add_column(c, justify="right")
        for st, v in g["per_stage"].items():
            t.add_row(st, str(v["gates"]), f"{v['conditional_frac']:.0%}", f"{v['always_on_frac']:.0%}",
                      f"{v['always_off_frac']:.0%}", f"{v['gate_class_mi_bits']:.4f}")
        console.print(t)
        matched = (f"fixed mask at matched density {g['matched_mask_loss']:+.1f} pt, "
                   if g.get("matched_mask_loss") is not None else "")
        console.print(f"conditional gates {g['conditional_frac']:.0%}, density {g['density']:.3f}, distinct patterns "
                      f"per example {g['distinct_patterns']:.3f}, majority mask accuracy "
                      f"{100 * g['majority_mask_acc']:.2f} % ({g['majority_mask_loss']:+.1f} pt lost vs learned), "
                      f"{matched}executed MACs {_f(g['executed_macs_ratio'], '{:.3f}')} of full",
                      markup=False, highlight=False)
    del summary_row
