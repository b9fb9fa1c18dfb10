#!/usr/bin/env python3
"""Train one zoo model (standard, FGSM-RS or PGD adversarial training) and add it to models/.

    python scripts/train.py --model dyconv_k4 --epochs 30
    python scripts/train.py --model static_at --adv fgsm-rs --time-budget 400 --device cuda
    python scripts/train.py --model static --epochs 1 --train-subset 2048 --device cpu   # CPU smoke run

Needs the CIFAR-10 training set (--data-dir or ROBUSTDYN_DATA; see README). Interrupted runs resume
from runs/NAME/ (pass --no-resume to start over). The recipe, seed, data id and digest, wall time,
device and final metrics are written into models/manifest.json next to NAME.safetensors.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from robustbench_dyn.errors import RobustDynError  # noqa: E402
from robustbench_dyn.training import ADV_MODES, file_epoch_sync, make_recipe, train  # noqa: E402


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="zoo name, e.g. static, dyconv_k4, odconv_k4, gated, static_at")
    p.add_argument("--adv", choices=ADV_MODES, default=None,
                   help="adversarial training: none, fgsm-rs (eps 8/255, step 10/255) or pgd (10 x 2/255); "
                        "default: fgsm-rs for *_at names, else none")
    p.add_argument("--epochs", type=int, default=None, help="number of epochs (or use --time-budget)")
    p.add_argument("--time-budget", type=float, default=None,
                   help="seconds: the epoch count is chosen after epoch 1 to fit this budget")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default 0.1 at batch 128)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--train-subset", type=int, default=None, help="train on a seeded subset of N images")
    p.add_argument("--max-steps", type=int, default=None, help="stop after N optimizer steps (smoke tests)")
    p.add_argument("--final-test-n", type=int, default=None, help="test images for the final accuracy (default all)")
    p.add_argument("--final-pgd-n", type=int, default=None, help="test images for the final PGD-20 of _at models")
    p.add_argument("--holdout", type=int, default=None, help="held-out training images for the per-epoch check")
    p.add_argument("--recipe", default="v2",
                   help="named recipe: v2 (the fixed recipe, default), v3 (v2 with the pilot g12's gate knobs: no "
                        "batch shaping; gated models only), v4 (v3 with a 0.68x MAC budget, pilot g16: the gated "
                        "recipe that meets #12's target) or v1 (the first zoo's, for comparisons)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads on the CPU (two single-thread runs side by side beat one two-thread run)")
    p.add_argument("--init-from", default=None,
                   help="start from this zoo checkpoint (adversarial fine-tuning, e.g. --init-from static)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override any recipe field (repeatable), e.g. --set mac_budget=0.5 --set bs_weight=3; "
                        "the fields are those of robustbench_dyn.training.Recipe")
    p.add_argument("--note", default=None, help="free text stored with the recipe (e.g. 'short CPU recipe')")
    p.add_argument("--data-dir", default=None, help="CIFAR-10 folder (default: ROBUSTDYN_DATA, cache, download)")
    p.add_argument("--models-dir", default=None, help="where the checkpoint and manifest go (default models/)")
    p.add_argument("--run-dir", default=None, help="resumable state (default runs/NAME)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument("--epoch-sync", default=None,
                   help="folder through which concurrent runs agree on one epoch count (used by train_zoo.py)")
    p.add_argument("--deadline", type=float, default=None,
                   help="unix time: stop training early (best state so far) when reached; recorded")
    p.add_argument("--no-resume", action="store_true", help="ignore the state in --run-dir and start over")
    p.add_argument("--no-save", action="store_true", help="do not write the checkpoint (smoke tests)")
    return p.parse_args(argv)


def parse_sets(items: list[str]) -> dict:
    """``FIELD=VALUE`` pairs -> recipe overrides, each value parsed as the field's type."""
    import dataclasses

    from robustbench_dyn.errors import ConfigError
    from robustbench_dyn.training import Recipe

    fields = {f.name: f for f in dataclasses.fields(Recipe)}
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in fields:
            close = [k for k in fields if key and key.split("_")[0] in k][:4]
            hint = f" (e.g. {', '.join(close)})" if close else ""
            raise ConfigError(f"--set {item!r}: no recipe field {key!r}",
                              f"use FIELD=VALUE with a field of Recipe{hint}")
        default = fields[key].default
        try:
            if value.lower() in ("none", "null"):
                out[key] = None
            elif isinstance(default, bool):
                out[key] = value.lower() in ("1", "true", "yes", "on")
            elif isinstance(default, int):
                out[key] = int(value)
            elif isinstance(default, float) or default is None and value.replace(".", "", 1).isdigit():
                out[key] = float(value)
            else:
                out[key] = value
        except ValueError:
            raise ConfigError(f"--set {item!r}: {value!r} is not a valid {type(default).__name__}",
                              f"pass e.g. --set {key}={default}") from None
    return out


def main(argv=None) -> int:
    a = parse(argv)
    import torch

    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        if a.threads is not None and a.threads < 1:
            from robustbench_dyn.errors import ConfigError

            raise ConfigError(f"--threads must be >= 1, got {a.threads}", "pass e.g. --threads 1")
        recipe = make_recipe(a.model, a.recipe, adv=a.adv, epochs=a.epochs, time_budget_s=a.time_budget,
                             batch_size=a.batch_size, lr=a.lr, seed=a.seed, train_subset=a.train_subset,
                             max_steps=a.max_steps, final_test_n=a.final_test_n, final_pgd_n=a.final_pgd_n,
                             holdout=a.holdout, note=a.note, threads=a.threads, init_from=a.init_from,
                             **parse_sets(a.set))
        if device == "cpu" and "CPU" not in recipe.note:
            recipe.note = (recipe.note + "; trained on the CPU").strip("; ")
        entry = train(a.model, recipe, data_dir=a.data_dir, models_dir=a.models_dir, run_dir=a.run_dir,
                      device=device, resume=not a.no_resume, save=not a.no_save,
                      epoch_sync=file_epoch_sync(a.epoch_sync) if a.epoch_sync else None,
                      deadline=a.deadline)
    except RobustDynError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume from the last finished epoch", file=sys.stderr)
        return 130
    m = entry["metrics"]
    extra = "".join(f", {k}={v:.4f}" for k, v in m.items() if k in ("pgd20_acc", "mean_gate_density",
                                                                        "executed_macs_ratio_vs_full"))
    print(f"{entry['name']}: clean_acc={m['clean_acc']:.4f} (n={m['clean_n']}, {m['clean_data']}){extra}, "
          f"epochs={entry['epochs']}, {entry['wall_time_s']}s on {entry['device']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
