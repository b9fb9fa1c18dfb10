"""Checkpoints: safetensors + sha256 manifest; every failure is a CheckpointError naming the file and the fix."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

import robustbench_dyn as rd
from robustbench_dyn.checkpoints import (
    checkpoint_present,
    load_checkpoint,
    read_manifest,
    save_checkpoint,
    sha256_file,
    update_manifest,
)
from robustbench_dyn.errors import CheckpointError

PACKAGE = Path(rd.__file__).resolve().parent


def _save(name: str, models_dir: Path, arch_name: str | None = None) -> dict:
    torch.manual_seed(0)
    model = rd.create_model(arch_name or name)
    return save_checkpoint(model, name, {"arch": rd.get_spec(arch_name or name).arch, "recipe": "test"}, models_dir)


def test_save_writes_safetensors_and_a_manifest_with_its_sha256(tmp_models_dir):
    entry = _save("static", tmp_models_dir)
    path = tmp_models_dir / "static.safetensors"
    assert entry["file"] == "static.safetensors" and entry["sha256"] == sha256_file(path)
    assert entry["bytes"] == path.stat().st_size
    data = json.loads((tmp_models_dir / "manifest.json").read_text())
    assert data["format"] == 1 and data["models"]["static"]["sha256"] == entry["sha256"]
    assert path.read_bytes()[8:9] == b"{"  # safetensors: 8-byte header length, then a JSON header
    assert checkpoint_present("static", tmp_models_dir)
    assert not checkpoint_present("dyconv_k4", tmp_models_dir)
    assert not list(tmp_models_dir.glob(".static.*"))  # the atomic write left no temp file behind


def test_manifest_keeps_other_entries(tmp_models_dir):
    _save("static", tmp_models_dir)
    _save("gated", tmp_models_dir)
    assert set(read_manifest(tmp_models_dir)) == {"static", "gated"}


def test_missing_checkpoint_names_the_manifest_and_the_fix(tmp_models_dir):
    with pytest.raises(CheckpointError) as err:
        load_checkpoint("dyconv_k4", models_dir=tmp_models_dir)
    msg = str(err.value)
    assert "'dyconv_k4'" in msg and str(tmp_models_dir / "manifest.json") in msg
    assert "python scripts/train.py --model dyconv_k4" in msg and "ROBUSTDYN_MODELS" in msg


def test_missing_file_names_the_file_and_the_fix(tmp_models_dir):
    _save("static", tmp_models_dir)
    (tmp_models_dir / "static.safetensors").unlink()
    with pytest.raises(CheckpointError) as err:
        rd.load_model("static", models_dir=tmp_models_dir)
    msg = str(err.value)
    assert str(tmp_models_dir / "static.safetensors") in msg and "missing" in msg
    assert "scripts/train.py --model static" in msg


def test_corrupt_file_fails_the_sha256_check(tmp_models_dir):
    _save("dyconv_k2", tmp_models_dir)
    path = tmp_models_dir / "dyconv_k2.safetensors"
    raw = bytearray(path.read_bytes())
    for i in range(len(raw) // 2, len(raw) // 2 + 16):  # flip bytes inside the tensor data
        raw[i] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="sha256") as err:
        load_checkpoint("dyconv_k2", models_dir=tmp_models_dir)
    assert str(path) in str(err.value) and "retrain" in str(err.value)
    # without verification the flipped floats would load silently: the check is what catches it
    assert load_checkpoint("dyconv_k2", models_dir=tmp_models_dir, verify=False) is not None


def test_truncated_file_with_matching_sha_is_not_readable(tmp_models_dir):
    entry = _save("odconv_k1", tmp_models_dir)
    path = tmp_models_dir / "odconv_k1.safetensors"
    path.write_bytes(path.read_bytes()[: entry["bytes"] // 2])
    update_manifest("odconv_k1", {**entry, "sha256": sha256_file(path)}, tmp_models_dir)
    with pytest.raises(CheckpointError, match="not a readable safetensors file") as err:
        load_checkpoint("odconv_k1", models_dir=tmp_models_dir)
    assert str(path) in str(err.value)


def test_wrong_architecture_is_named(tmp_models_dir):
    _save("dyconv_k4", tmp_models_dir, arch_name="dyconv_k2")  # a K=2 state dict under the K=4 name
    with pytest.raises(CheckpointError, match="does not match the architecture") as err:
        load_checkpoint("dyconv_k4", models_dir=tmp_models_dir)
    msg = str(err.value)
    assert "'dyconv_k4'" in msg and "dyconv_k4.safetensors" in msg
    assert re.search(r"file \(2, 16, 16, 3, 3\) vs model \(4, 16, 16, 3, 3\)", msg), msg


def test_missing_keys_are_named(tmp_models_dir):
    _save("gated", tmp_models_dir, arch_name="static")  # no gate tensors
    with pytest.raises(CheckpointError, match="missing") as err:
        load_checkpoint("gated", models_dir=tmp_models_dir)
    assert "gate" in str(err.value)


def test_unreadable_manifest_is_a_checkpoint_error(tmp_models_dir):
    (tmp_models_dir / "manifest.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="manifest"):
        read_manifest(tmp_models_dir)
    (tmp_models_dir / "manifest.json").write_text(json.dumps({"format": 99, "models": {}}))
    with pytest.raises(CheckpointError, match="format-1"):
        read_manifest(tmp_models_dir)
    assert not checkpoint_present("static", tmp_models_dir)


_PICKLE_LOADS = re.compile(r"\btorch\.load\(|\bpickle\.loads?\(|\bcPickle\b|\bdill\b|\bjoblib\.load\(|"
                           r"allow_pickle\s*=\s*True|weights_only\s*=\s*False")


def test_no_pickle_loading_in_the_package():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if _PICKLE_LOADS.search(code):
                offenders.append(f"{path.relative_to(PACKAGE)}:{lineno}: {line.strip()}")
    assert not offenders, "pickle loading found:\n" + "\n".join(offenders)


def test_only_the_restricted_unpickler_unpickles():
    users = {p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py") if "Unpickler" in p.read_text()}
    assert users == {"data.py"}
    src = (PACKAGE / "data.py").read_text()
    assert "def find_class" in src and "raise pickle.UnpicklingError" in src
