"""Safe checkpoints: safetensors files + a JSON manifest with each file's sha256.

Loading never executes code: safetensors holds raw tensors, the manifest is JSON. The sha256 of the
file is checked against the manifest before the tensors are read. ``models/manifest.json``::

    {"format": 1, "models": {NAME: {"file", "sha256", "arch", "arch_kwargs", "recipe", "seed",
                                    "dataset": {"id", "label", "digest"}, "metrics", "params",
                                    "macs", "device", "wall_time_s", "versions", ...}}}

Storage precision: ResNet-20 checkpoints are float32. The ResNet-50 family (~90 M parameters for DyConv/ODConv,
~360 MB in float32) is stored with its parameters in bfloat16 (``save_checkpoint(dtype="auto")``, half the
size); buffers (BatchNorm statistics, attention temperatures, the input normalisation) stay float32. The entry
then records ``"storage_dtype": "bfloat16"``, and loading casts every tensor back to float32, so a loaded model
computes in float32 with weights rounded to bfloat16 (8 significant bits). The sha256 is of the file as stored.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .errors import CheckpointError

MANIFEST = "manifest.json"
FORMAT = 1


def default_models_dir() -> Path:
    """``$ROBUSTDYN_MODELS``, else the repository's ``models/`` (checkout or editable install), else ./models."""
    env = os.environ.get("ROBUSTDYN_MODELS")
    if env:
        return Path(env)
    repo_models = Path(__file__).resolve().parent.parent / "models"
    if repo_models.is_dir():
        return repo_models
    return Path.cwd() / "models"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_manifest(models_dir=None) -> dict:
    """The manifest's ``models`` mapping (empty if there is no manifest yet)."""
    path = Path(models_dir or default_models_dir()) / MANIFEST
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"zoo manifest {path} is unreadable ({e})",
                              f"restore it with `git checkout {path}`") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("models"), dict):
        raise CheckpointError(f"zoo manifest {path} is not a format-{FORMAT} robustdyn manifest",
                              f"restore it with `git checkout {path}`")
    return data["models"]


@contextlib.contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def update_manifest(name: str, entry: dict, models_dir=None) -> None:
    """Insert or replace one model's entry (file-locked: parallel trainers may share a folder)."""
    mdir = Path(models_dir or default_models_dir())
    path = mdir / MANIFEST
    with _locked(path):
        models = read_manifest(mdir)
        models[name] = entry
        ordered = dict(sorted(models.items()))
        _atomic_write_text(path, json.dumps({"format": FORMAT, "models": ordered}, indent=1, sort_keys=False) + "\n")


def state_dict_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}


#: storage precisions a checkpoint's parameters can be written in (``save_checkpoint(dtype=...)``)
STORAGE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def default_storage_dtype(name: str) -> str:
    """``"bfloat16"`` for the ResNet-50 family (checkpoint size), ``"float32"`` for everything else."""
    from .registry import get_spec

    try:
        return "bfloat16" if get_spec(name).arch == "cifar_resnet50" else "float32"
    except Exception:  # names outside the registry (time-series models, users' own)
        return "float32"


def _storage_dtype(name: str, dtype) -> str:
    if dtype is None or dtype == "auto":
        return default_storage_dtype(name)
    key = str(dtype).removeprefix("torch.")
    if key not in STORAGE_DTYPES:
        raise CheckpointError(f"unknown checkpoint storage dtype {dtype!r}",
                              f"use one of {', '.join(STORAGE_DTYPES)} or 'auto'")
    return key


def save_checkpoint(model: nn.Module, name: str, info: dict, models_dir=None, dtype="auto") -> dict:
    """Write ``NAME.safetensors`` atomically and record it (with its sha256) in the manifest.

    ``dtype``: storage precision of the floating-point *parameters* ("float32", "bfloat16", "float16", or
    "auto" = :func:`default_storage_dtype`); buffers are always written as they are. A non-float32 storage is
    recorded in the entry as ``storage_dtype`` and undone at load (:func:`read_state_dict` returns float32).
    """
    storage = _storage_dtype(name, dtype)
    tensors = state_dict_tensors(model)
    if storage != "float32":
        target = STORAGE_DTYPES[storage]
        named = getattr(model, "named_parameters", None)
        params = {k for k, _ in named()} if callable(named) else set(tensors)
        tensors = {k: v.to(target) if k in params and v.dtype == torch.float32 else v for k, v in tensors.items()}
    mdir = Path(models_dir or default_models_dir())
    mdir.mkdir(parents=True, exist_ok=True)
    path = mdir / f"{name}.safetensors"
    fd, tmp = tempfile.mkstemp(dir=mdir, prefix=f".{name}.", suffix=".safetensors")
    os.close(fd)
    save_file(tensors, tmp, metadata={"name": name, "format": "robustdyn-1", "storage_dtype": storage})
    os.chmod(tmp, 0o644)  # mkstemp creates 0600
    os.replace(tmp, path)
    entry = {k: v for k, v in info.items() if k != "storage_dtype"}
    if storage != "float32":
        entry["storage_dtype"] = storage
    entry.update({"file": path.name, "sha256": sha256_file(path), "bytes": path.stat().st_size})
    update_manifest(name, entry, mdir)
    return entry


def _fix(name: str) -> str:
    return (f"train it with `python scripts/train.py --model {name}`, or point --models-dir / "
            f"ROBUSTDYN_MODELS at a folder that holds it")


def read_state_dict(name: str, models_dir=None, verify: bool = True) -> tuple[dict[str, torch.Tensor], dict]:
    """The checkpoint's tensors and its manifest entry, after the sha256 check."""
    mdir = Path(models_dir or default_models_dir())
    entry = read_manifest(mdir).get(name)
    path = mdir / (entry["file"] if entry else f"{name}.safetensors")
    if entry is None:
        raise CheckpointError(f"no checkpoint for {name!r} in the zoo manifest {mdir / MANIFEST}", _fix(name))
    if not path.exists():
        raise CheckpointError(f"checkpoint file {path} is missing", _fix(name) + " (or `git checkout` it)")
    if verify:
        digest = sha256_file(path)
        if digest != entry.get("sha256"):
            raise CheckpointError(
                f"checkpoint {path} is corrupt or was modified: sha256 {digest[:12]}... does not match the "
                f"manifest's {str(entry.get('sha256'))[:12]}...", f"restore it (`git checkout {path}`) or retrain it")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} is not a readable safetensors file ({e})",
                              f"restore it (`git checkout {path}`) or retrain it") from None
    # reduced-precision storage (entry["storage_dtype"], e.g. the ResNet-50 family's bfloat16): compute in float32
    tensors = {k: v.float() if v.dtype in (torch.bfloat16, torch.float16) else v for k, v in tensors.items()}
    return tensors, entry


def load_into(model: nn.Module, tensors: dict[str, torch.Tensor], path_label: str, name: str) -> nn.Module:
    """load_state_dict(strict) with an error that names the file and the mismatch."""
    own = model.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    shapes = [k for k in own if k in tensors and tuple(own[k].shape) != tuple(tensors[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if shapes:
            k = shapes[0]
            parts.append(f"{len(shapes)} of wrong shape (e.g. {k}: file {tuple(tensors[k].shape)} vs "
                         f"model {tuple(own[k].shape)})")
        raise CheckpointError(f"checkpoint {path_label} does not match the architecture of {name!r}: "
                              + ", ".join(parts), f"the file belongs to another model; {_fix(name)}")
    model.load_state_dict(tensors, strict=True)
    return model


def checkpoint_arch_kwargs(entry: dict, tensors: dict[str, torch.Tensor]) -> dict:
    """The layer version a checkpoint was trained with: the manifest's ``arch_kwargs`` when they record
    ``attn_norm``, else read off the tensors (the first zoo's attention and gate hidden layers have an
    ``fc1.bias`` and no BatchNorm). So every checkpoint, old or new, loads into the layers it was trained with."""
    recorded = dict(entry.get("arch_kwargs") or {})
    if "attn_norm" in recorded:
        kw = {"attn_norm": bool(recorded["attn_norm"])}
    else:
        legacy = any(k.endswith((".attention.fc1.bias", ".gate.fc1.bias")) for k in tensors)
        kw = {"attn_norm": not legacy}
    kw.update(entry.get("arch_overrides", {}))
    return kw


def load_checkpoint(name: str, models_dir=None, device="cpu", verify: bool = True) -> nn.Module:
    from .registry import create_model

    mdir = Path(models_dir or default_models_dir())
    tensors, entry = read_state_dict(name, mdir, verify=verify)
    model = create_model(name, **checkpoint_arch_kwargs(entry, tensors))
    load_into(model, tensors, str(mdir / entry["file"]), name)
    model.checkpoint_sha256 = entry["sha256"]
    model.checkpoint_name = name
    return model.to(device).eval()


def checkpoint_present(name: str, models_dir=None) -> bool:
    mdir = Path(models_dir or default_models_dir())
    try:
        entry = read_manifest(mdir).get(name)
    except CheckpointError:
        return False
    return bool(entry) and (mdir / entry["file"]).exists()
