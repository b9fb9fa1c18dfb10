"""The bad-input matrix (issue 8): one table of bad inputs across the CLI and the library.

The contract, for every CLI case: exit code 2; stderr is exactly one line, ``error: <problem>. Fix:
<fix>`` (or a 'did you mean' hint); no traceback; and nothing written: the results store that
``ROBUSTDYN_STORE`` (and ``--store`` where a case passes it) points at does not exist afterwards, and no
file under the case's folder was created or changed (where the bad input *is* a pre-existing store
file, its bytes are unchanged). Each case fails before any model is attacked. Library cases raise a
:class:`RobustDynError` subclass with the same one-line message and write nothing either.

``python tests/test_bad_inputs.py`` runs every case and prints the markdown table of README.md's
"Errors" section: the messages there are the real ones.
"""

from __future__ import annotations

import io
import os
import sqlite3
import sys
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from robustbench_dyn.errors import CheckpointError, ConfigError, DataError, RobustDynError, StoreError

N_DATA = 80  # images in the tiny test split every case reads (ROBUSTDYN_DATA): fast, and no 'sample' warning
NO_GPU = "this machine has a CUDA GPU" if torch.cuda.is_available() else ""
ROOT_READS = "running as root: chmod 000 does not stop reads" if hasattr(os, "geteuid") and os.geteuid() == 0 \
    else ""


# ------------------------------------------------------------------------------------ the inputs

class Ctx:
    """One case's private folder and the bad files it builds there (only what its argv asks for)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.store = root / "store" / "results.sqlite"  # ROBUSTDYN_STORE: must still not exist afterwards

    def _fresh(self, name: str) -> Path:
        p = self.root / name
        assert not p.exists(), f"{name} built twice"
        return p

    def out(self) -> Path:
        return self.root / "report"

    def data(self, kind: str) -> Path:
        """A --data-dir: ok | empty | garbage | truncated | wrong-shape | no-permission | a-file."""
        d = self._fresh(f"data-{kind}")
        if kind == "a-file":
            d.write_text("not a folder")
            return d
        d.mkdir()
        npz = d / "test.npz"
        if kind in ("ok", "truncated", "no-permission"):
            write_tiny_npz(npz)
        if kind == "garbage":
            npz.write_bytes(b"this is not an npz file\n" * 40)
        elif kind == "truncated":
            npz.write_bytes(npz.read_bytes()[:2000])
        elif kind == "wrong-shape":
            np.savez(npz, x=np.zeros((4, 28, 28), np.uint8), y=np.zeros(4, np.int64))
        elif kind == "no-permission":
            npz.chmod(0)
        return d

    def zoo(self, kind: str) -> Path:
        """A --models-dir holding 'static' broken in one way (or nothing at all: 'empty')."""
        from robustbench_dyn import create_model
        from robustbench_dyn.checkpoints import save_checkpoint, sha256_file, update_manifest

        d = self._fresh(f"zoo-{kind}")
        d.mkdir()
        if kind == "empty":
            return d
        if kind == "manifest-not-json":
            (d / "manifest.json").write_text("{broken")
            return d
        model = {"other-arch": lambda: create_model("dyconv_k2"),
                 "wrong-shape": lambda: create_model("static", num_classes=100)}.get(kind, lambda: create_model(
                     "static"))()
        entry = save_checkpoint(model, "static", {"arch": "cifar_resnet"}, models_dir=d)
        f = d / "static.safetensors"
        if kind == "file-missing":
            f.unlink()
        elif kind == "garbage":
            f.write_bytes(os.urandom(f.stat().st_size))
        elif kind == "truncated":
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
        elif kind == "tampered-sha256":
            update_manifest("static", {**entry, "sha256": "0" * 64}, d)
        elif kind == "unreadable":  # garbage whose sha256 the manifest agrees with: the safetensors parser refuses it
            f.write_bytes(b"\xff" * 64)
            update_manifest("static", {**entry, "sha256": sha256_file(f)}, d)
        (d / "manifest.lock").unlink(missing_ok=True)
        return d

    def bad_store(self, kind: str) -> Path:
        """A pre-existing --store that is not a usable results store (becomes ROBUSTDYN_STORE too)."""
        from robustbench_dyn.store import ResultsStore

        if kind == "parent-is-a-file":
            parent = self._fresh("not-a-folder")
            parent.write_text("a file")
            self.store = parent / "results.sqlite"
            return self.store
        p = self.store = self._fresh(f"store-{kind}.sqlite")
        if kind == "text":
            p.write_text("run,model,acc\n1,static,0.9\n")
        elif kind == "foreign":
            con = sqlite3.connect(p)
            con.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, amount REAL)")
            con.commit()
            con.close()
        elif kind in ("future-schema", "valid"):
            ResultsStore(p).close()
            if kind == "future-schema":
                con = sqlite3.connect(p)
                con.execute("UPDATE meta SET value = '99' WHERE key = 'version'")
                con.commit()
                con.close()
        elif kind == "corrupt":
            p.write_bytes(b"SQLite format 3\x00" + b"\x13" * 4000)
        elif kind == "empty":
            p.write_bytes(b"")
        elif kind == "folder":
            p.mkdir()
        return p

    def suite(self, text: str) -> Path:
        p = self._fresh("suite.toml")
        p.write_text(text)
        return p

    def user_model(self, text: str) -> str:
        p = self._fresh("mymodel.py")
        p.write_text(text)
        return f"{p}:make"

    def file(self, name: str = "a-file") -> Path:
        p = self._fresh(name)
        p.write_text("a file, not a folder")
        return p


def write_tiny_npz(path: Path) -> None:
    r = np.random.default_rng(0)
    np.savez(path, x=r.integers(0, 256, (N_DATA, 32, 32, 3), dtype=np.uint8), y=r.integers(0, 10, N_DATA))


# Arguments are strings or callables of the case's Ctx (which build the bad file when the case runs).
Arg = str | Callable[[Ctx], object]


def data(kind: str) -> Arg:
    return lambda c: c.data(kind)


def zoo(kind: str) -> Arg:
    return lambda c: c.zoo(kind)


def store(kind: str) -> Arg:
    return lambda c: c.bad_store(kind)


def suite(text: str) -> Arg:
    return lambda c: c.suite(text)


def user(text: str) -> Arg:
    return lambda c: c.user_model(text)


def out(c: Ctx) -> Path:
    return c.out()


@dataclass(frozen=True)
class Case:
    """A CLI case: ``robustdyn ARGV`` must fail with an error line containing every needle."""

    id: str
    what: str  # the bad input, as README.md lists it
    argv: tuple[Arg, ...]
    needles: tuple[str, ...]
    skip: str = ""  # why this case cannot run on this machine ("" = it can)


@dataclass(frozen=True)
class LibCase:
    """A library case: ``call(ctx, setup(ctx))`` must raise ``error`` (a RobustDynError) containing every
    needle; ``setup`` builds the bad input first (so that the check sees it unchanged afterwards)."""

    id: str
    what: str
    call: Callable[[Ctx, object], object]
    error: type[RobustDynError]
    needles: tuple[str, ...]
    setup: Callable[[Ctx], object] = lambda c: None


EV = ("evaluate", "--device", "cpu", "--attack", "fgsm")  # + a model, n and the bad input
OK = ("--model", "static", "--untrained")
SW = ("sweep", "--device", "cpu", "--suite", "quick")
TH = ("threats", "--device", "cpu", "--studies", "adaptive", "--steps", "2")
TM = ("--models", "static", "--untrained")  # threats takes --models
CK = ("check", "--device", "cpu", "--checks", "logits")
RP = ("report", "--out", out)
SUITE_OK = '[[attacks]]\nname = "fgsm"\neps = ["8/255"]\n'
PLAIN_MODEL = "from torch import nn\n\ndef make():\n    return nn.Flatten()\n"


def user_net(forward: str, init: str = "") -> Arg:
    """A user model file: a linear classifier whose forward returns ``forward`` (h: its (N, 10) logits)."""
    return user("import torch\nimport torch.nn.functional as F\nfrom torch import nn\n\n\nclass Net(nn.Module):\n"
                "    def __init__(self):\n        super().__init__()\n        self.fc = nn.Linear(3 * 32 * 32, 10)\n"
                f"{init}\n    def forward(self, x):\n        h = self.fc(x.flatten(1))\n        return {forward}\n\n\n"
                "def make():\n    return Net()\n")

CASES: list[Case] = [
    # --------------------------------------------------------------------------- names
    Case("model-misspelled", "misspelled model name", (*EV, "--model", "dyconf_k4", "--untrained"),
         ("unknown model 'dyconf_k4'", "did you mean dyconv_k4")),
    Case("model-unknown", "unknown model name", (*EV, "--model", "mobilenet_v2", "--untrained"),
         ("unknown model 'mobilenet_v2'", "robustdyn list")),
    Case("attack-misspelled", "misspelled attack name", (*EV, *OK, "--attack", "pgdd"),
         ("unknown attack 'pgdd'", "did you mean pgd")),
    Case("sweep-model-in-list", "unknown name in a model list", (*SW, "--models", "static,dyconf_k4", "--untrained"),
         ("unknown model 'dyconf_k4'", "did you mean dyconv_k4")),
    Case("sweep-pattern-no-match", "model pattern matching nothing", (*SW, "--models", "dyconf_*", "--untrained"),
         ("no registered model matches 'dyconf_*'",)),
    Case("threats-model-misspelled", "misspelled model name (threats)", (*TH, "--models", "statc", "--untrained"),
         ("unknown model 'statc'", "did you mean static")),
    Case("threats-pattern-no-match", "model pattern matching nothing (threats)",
         (*TH, "--models", "resnet99_*", "--untrained"), ("no registered model matches 'resnet99_*'",)),
    Case("list-pattern-no-match", "model pattern matching nothing (list)", ("list", "dyconf_*"),
         ("no registered model matches 'dyconf_*'",)),
    Case("user-model-missing", "user model file missing", (*EV, "--model", "nofile.py:make"),
         ("file nofile.py does not exist", "path/file.py:factory")),
    Case("user-model-broken", "user model file that fails to import",
         (*EV, "--model", user("import nosuchpackage_xyz\n")), ("importing", "failed", "ModuleNotFoundError")),
    Case("user-model-no-factory", "user model file without the factory",
         (*EV, "--model", user("x = 1\n")), ("has no function 'make'",)),
    Case("user-model-not-module", "user factory returning no nn.Module",
         (*EV, "--model", user("def make():\n    return 42\n")), ("returned int, not an nn.Module",)),
    # the model contract (issue 18): checked before any attack runs
    Case("user-model-tuple", "user model returning a tuple", (*EV, "--model", user_net("h, x")),
         ("returns a tuple of 2", "LogitsOnly(model, 0)")),
    Case("user-model-dict", "user model returning a dict", (*EV, "--model", user_net("{'logits': h}")),
         ("returns a dict (keys 'logits')",)),
    Case("user-model-classes", "user model with 100 classes", (*EV, "--model", user_net("h.repeat(1, 10)")),
         ("100 logits per image, but CIFAR-10 has 10 classes",)),
    Case("user-model-one-score", "user model returning (N,) scores", (*EV, "--model", user_net("h[:, 0]")),
         ("one score per image",)),
    Case("user-model-labels", "user model returning argmax labels", (*EV, "--model", user_net("h.argmax(1)")),
         ("int64 values", "class labels")),
    Case("user-model-nan", "user model with NaN logits", (*EV, "--model", user_net("h * float('nan')")),
         ("non-finite logits (NaN)",)),
    Case("user-model-log0", "user model with inf logits on a black image",
         (*EV, "--model", user_net("h + torch.log(x).amin((1, 2, 3))[:, None]")), ("non-finite logits (inf)",)),
    Case("user-model-raises", "user model whose forward raises", (*EV, "--model", user_net("h @ h")),
         ("forward raised RuntimeError",)),
    Case("user-model-fp16-logits", "user model returning float16 logits", (*EV, "--model", user_net("h.half()")),
         ("float16 logits", "logits.float()")),
    Case("user-model-batch-stats", "user model normalising with batch statistics (BatchNorm in train mode)",
         (*EV, "--model", user_net("h - h.mean(0)")),
         ("depend on the other images in its batch",)),
    Case("user-model-no-grad", "user model computing logits under torch.no_grad", (*EV, "--model", user_net(
        "h.detach()")), ("not differentiable", "--attack square")),
    Case("user-model-quantised", "user model quantising its input (zero gradient)",
         (*EV, "--model", user_net("self.fc((x * 8).round().flatten(1) / 8)")), ("exactly zero", "100% robust")),
    Case("user-model-fixed-device", "user model with a tensor outside its buffers on another device",
         (*EV, "--model", user_net("h + self.w", "        self.w = torch.zeros(10, device='meta')")),
         ("meta", "register_buffer")),
    Case("user-model-dynamics-typo", "custom layer with an unknown robustdyn_dynamics kind",
         (*EV, "--model", user_net("h", "        self.fc.robustdyn_dynamics = 'gates'")), ("did you mean 'gate'",)),
    Case("check-name-misspelled", "misspelled check name", ("check", "--device", "cpu", *OK, "--checks", "logitz"),
         ("unknown check 'logitz'", "did you mean logits")),
    Case("report-section-misspelled", "misspelled report section", (*RP, "--sections", "main_tabel"),
         ("unknown report section(s) main_tabel", "did you mean main_table")),
    Case("threats-study-misspelled", "misspelled threat study", (*TH, *TM, "--studies", "energyy"),
         ("unknown threat study 'energyy'", "did you mean energy")),
    # --------------------------------------------------------------------------- eps
    Case("eps-negative", "negative eps", (*EV, *OK, "--n", "2", "--eps=-1/255"), ("eps '-1/255' is negative",)),
    Case("eps-above-1", "eps larger than 1", (*EV, *OK, "--n", "2", "--eps", "2"), ("larger than 1",)),
    Case("eps-unparseable", "unparseable eps", (*EV, *OK, "--n", "2", "--eps", "8/2x5"),
         ("cannot parse eps '8/2x5'", "8/255")),
    Case("eps-nan", "eps nan", (*EV, *OK, "--n", "2", "--eps", "nan"), ("not a finite number",)),
    Case("eps-inf", "eps inf", (*EV, *OK, "--n", "2", "--eps", "inf"), ("not a finite number",)),
    Case("eps-divide-by-zero", "eps 8/0", (*EV, *OK, "--n", "2", "--eps", "8/0"), ("cannot parse eps '8/0'",)),
    Case("eps-grid-empty", "empty eps grid", (*EV, *OK, "--n", "2", "--eps-grid", ","), ("eps grid is empty",)),
    Case("eps-grid-bad-item", "bad value in the eps grid", (*EV, *OK, "--n", "2", "--eps-grid", "0,abc"),
         ("cannot parse eps 'abc'",)),
    Case("eps-and-grid", "--eps together with --eps-grid", (*EV, *OK, "--n", "2", "--eps", "8/255", "--eps-grid",
                                                            "0,8/255"), ("both given", "pass one of them")),
    Case("check-eps-unparseable", "unparseable eps (check)", (*CK, *OK, "--n", "2", "--eps", "-"),
         ("cannot parse eps '-'",)),
    Case("threats-transfer-eps", "eps larger than 1 (threats)", (*TH, *TM, "--transfer-eps", "2"),
         ("larger than 1",)),
    # --------------------------------------------------------------------------- n, seed, batch size
    Case("n-zero", "--n 0", (*EV, *OK, "--n", "0"), ("--n must be a positive number of examples, got 0",)),
    Case("n-negative", "negative --n", (*EV, *OK, "--n", "-5"), ("got -5",)),
    Case("n-above-data", "--n larger than the data", (*EV, *OK, "--n", str(N_DATA + 1)),
         (f"n={N_DATA + 1} is larger than the {N_DATA} images", f"--n {N_DATA}")),
    Case("n-not-integer", "non-integer --n", (*EV, *OK, "--n", "abc"), ("Invalid value for '--n'", "--help")),
    Case("n-fraction", "fractional --n", (*EV, *OK, "--n", "1.5"), ("Invalid value for '--n'",)),
    Case("sweep-n-zero", "--n 0 (sweep)", (*SW, "--models", "static", "--untrained", "--n", "0"),
         ("--n must be a positive",)),
    Case("check-n-negative", "negative --n (check)", (*CK, *OK, "--n", "-1"), ("--n must be a positive",)),
    Case("threats-n-zero", "--n 0 (threats)", (*TH, *TM, "--n", "0"), ("--n must be a positive",)),
    Case("seed-negative", "negative --seed", (*EV, *OK, "--n", "2", "--seed", "-1"),
         ("--seed must be a non-negative integer, got -1", "--seed 0")),
    Case("sweep-seed-negative", "negative --seed (sweep)", (*SW, "--models", "static", "--untrained", "--seed", "-3"),
         ("--seed must be a non-negative",)),
    Case("check-seed-negative", "negative --seed (check)", (*CK, *OK, "--seed", "-1"), ("--seed must be",)),
    Case("threats-seed-negative", "negative --seed (threats)", (*TH, *TM, "--seed", "-1"),
         ("--seed must be",)),
    Case("batch-size-zero", "--batch-size 0", (*EV, *OK, "--n", "2", "--batch-size", "0"),
         ("--batch-size must be a positive integer, got 0",)),
    Case("sweep-batch-size-negative", "negative --batch-size (sweep)",
         (*SW, "--models", "static", "--untrained", "--batch-size", "-4"), ("--batch-size must be a positive",)),
    Case("check-batch-size-zero", "--batch-size 0 (check)", (*CK, *OK, "--batch-size", "0"), ("--batch-size must",)),
    Case("threats-batch-size-zero", "--batch-size 0 (threats)",
         (*TH, *TM, "--batch-size", "0"), ("--batch-size must",)),
    Case("check-square-queries-zero", "--square-queries 0", (*CK, *OK, "--square-queries", "0"),
         ("--square-queries must be positive",)),
    Case("threats-steps-negative", "negative --steps (threats)", (*TH[:-1], "-1", *TM),
         ("setting 'steps' must be a non-negative integer",)),
    Case("report-tsne-max", "--tsne-max below 10", (*RP, "--tsne-max", "3"), ("--tsne-max must be at least 10",)),
    # --------------------------------------------------------------------------- attack settings
    Case("set-unknown-key", "unknown --set key", (*EV[:-1], "pgd", *OK, "--n", "2", "--set", "stepz=3"),
         ("unknown setting 'stepz'", "did you mean", "steps")),
    Case("set-bad-value", "bad --set value", (*EV[:-1], "pgd", *OK, "--n", "2", "--set", "steps=-3"),
         ("setting 'steps' must be a non-negative integer, got -3",)),
    Case("set-not-key-value", "--set without KEY=VALUE", (*EV, *OK, "--n", "2", "--set", "steps"),
         ("--set 'steps' is not KEY=VALUE", "--set steps=50")),
    Case("set-bad-choice", "--set value outside its choices", (*EV[:-1], "pgd", *OK, "--n", "2", "--set", "norm=L3"),
         ("setting 'norm' must be one of",)),
    # --------------------------------------------------------------------------- device
    Case("device-unknown", "unknown device", (*EV[:1], "--device", "tpu", *EV[3:], *OK, "--n", "2"),
         ("unknown device 'tpu'", "--device cpu")),
    Case("device-cuda-no-gpu", "CUDA asked for on a CPU-only machine", (*EV[:1], "--device", "cuda", *EV[3:], *OK),
         ("no usable CUDA GPU", "--device cpu"), skip=NO_GPU),
    Case("distributed-no-torchrun", "--distributed outside torchrun", (*EV, *OK, "--n", "2", "--distributed"),
         ("--distributed needs the environment torchrun sets", "torchrun --nproc-per-node")),
    # --------------------------------------------------------------------------- data
    Case("data-dir-missing", "--data-dir that does not exist", (*EV, *OK, "--n", "2", "--data-dir",
                                                                 lambda c: c.root / "nodata"), ("does not exist",)),
    Case("data-dir-a-file", "--data-dir that is a file", (*EV, *OK, "--n", "2", "--data-dir", data("a-file")),
         ("is a file, not a folder",)),
    Case("data-dir-empty", "--data-dir without CIFAR-10", (*EV, *OK, "--n", "2", "--data-dir", data("empty")),
         ("no CIFAR-10 test data in", "unpack")),
    Case("data-npz-garbage", "corrupt test.npz", (*EV, *OK, "--n", "2", "--data-dir", data("garbage")),
         ("is unreadable",)),
    Case("data-npz-truncated", "truncated test.npz", (*EV, *OK, "--n", "2", "--data-dir", data("truncated")),
         ("is unreadable",)),
    Case("data-npz-wrong-shape", "test.npz with 28x28 grey images", (*EV, *OK, "--n", "2", "--data-dir",
                                                                     data("wrong-shape")), ("uint8 (N, 32, 32, 3)",)),
    Case("data-no-permission", "test.npz without read permission",
         (*EV, *OK, "--n", "2", "--data-dir", data("no-permission")), ("is unreadable", "Permission"),
         skip=ROOT_READS),
    # --------------------------------------------------------------------------- checkpoints
    Case("checkpoint-none", "model without a checkpoint", (*EV, "--model", "static", "--models-dir", zoo("empty")),
         ("no checkpoint for 'static'", "scripts/train.py --model static")),
    Case("checkpoint-file-missing", "checkpoint file deleted", (*EV, "--model", "static", "--models-dir",
                                                                zoo("file-missing")), ("is missing",)),
    Case("checkpoint-garbage", "corrupt checkpoint (garbage bytes)",
         (*EV, "--model", "static", "--models-dir", zoo("garbage")), ("is corrupt or was modified",)),
    Case("checkpoint-truncated", "truncated checkpoint", (*EV, "--model", "static", "--models-dir",
                                                          zoo("truncated")), ("is corrupt or was modified",)),
    Case("checkpoint-sha256-tampered", "manifest sha256 tampered with",
         (*EV, "--model", "static", "--models-dir", zoo("tampered-sha256")), ("does not match the manifest's",)),
    Case("checkpoint-not-safetensors", "checkpoint that is not safetensors (sha256 matching)",
         (*EV, "--model", "static", "--models-dir", zoo("unreadable")), ("not a readable safetensors file",)),
    Case("checkpoint-other-arch", "state dict of another architecture",
         (*EV, "--model", "static", "--models-dir", zoo("other-arch")),
         ("does not match the architecture of 'static'", "unexpected")),
    Case("checkpoint-wrong-shape", "state dict with a wrong-shape tensor",
         (*EV, "--model", "static", "--models-dir", zoo("wrong-shape")), ("of wrong shape (e.g. fc.weight",)),
    Case("sweep-checkpoint-corrupt", "corrupt checkpoint (sweep: checked before the store is opened)",
         (*SW, "--models", "static", "--models-dir", zoo("garbage")), ("is corrupt or was modified",)),
    Case("manifest-not-json", "corrupt manifest.json", (*EV, "--model", "static", "--models-dir",
                                                        zoo("manifest-not-json")), ("manifest", "unreadable")),
    Case("sweep-no-checkpoints", "sweep over models without checkpoints",
         (*SW, "--models", "dyconv_*", "--models-dir", zoo("empty")),
         ("no checkpoint for dyconv_k2", "--skip-missing")),
    # --------------------------------------------------------------------------- results store
    Case("store-not-sqlite", "--store that is a text file", (*EV, *OK, "--n", "2", "--store", store("text")),
         ("not an SQLite file",)),
    Case("store-foreign-sqlite", "--store that is another program's SQLite",
         (*EV, *OK, "--n", "2", "--store", store("foreign")), ("an SQLite file but not a robustdyn results store",)),
    Case("store-future-schema", "--store from a newer robustbench_dyn",
         (*EV, *OK, "--n", "2", "--store", store("future-schema")), ("schema version 99",)),
    Case("store-corrupt", "corrupt SQLite --store", (*EV, *OK, "--n", "2", "--store", store("corrupt")),
         ("corrupt or unreadable",)),
    Case("store-folder", "--store that is a folder", (*EV, *OK, "--n", "2", "--store", store("folder")),
         ("is a folder, not a file",)),
    Case("store-under-a-file", "--store inside a file", (*EV, *OK, "--n", "2", "--store", store("parent-is-a-file")),
         ("cannot create the folder",)),
    Case("sweep-store-foreign", "foreign SQLite store (sweep)",
         (*SW, "--models", "static", "--untrained", "--n", "2", "--store", store("foreign")), ("not a robustdyn",)),
    Case("threats-store-foreign", "foreign SQLite store (threats)",
         (*TH, *TM, "--n", "2", "--store", store("foreign")), ("not a robustdyn",)),
    Case("report-store-missing", "report without a results store", RP, ("no results store at",)),
    Case("report-store-empty", "report on an empty (0 byte) store", (*RP, "--store", store("empty")),
         ("is empty (0 bytes)",)),
    Case("report-store-foreign", "report on a foreign SQLite", (*RP, "--store", store("foreign")),
         ("not a robustdyn results store",)),
    Case("report-out-a-file", "report --out that is a file",
         ("report", "--store", store("valid"), "--out", lambda c: c.file()), ("cannot create the report folder",)),
    # --------------------------------------------------------------------------- suites
    Case("suite-missing", "suite file missing", ("sweep", "--suite", "nosuchsuite", "--models", "static",
                                                 "--untrained"), ("suite file nosuchsuite does not exist", "quick")),
    Case("suite-unknown-key", "suite with an unknown key", (*SW[:3], "--suite", suite("sed = 1\n" + SUITE_OK),
                                                            "--models", "static", "--untrained"),
         ("unknown key 'sed'", "did you mean seed")),
    Case("suite-unknown-setting", "suite attack with an unknown setting",
         (*SW[:3], "--suite", suite(SUITE_OK + "stepz = 3\n"), "--models", "static", "--untrained"),
         ("suite.toml", "unknown setting 'stepz'")),
    Case("suite-bad-eps", "suite with a bad eps", (*SW[:3], "--suite", suite(SUITE_OK.replace("8/255", "8/0")),
                                                   "--models", "static", "--untrained"), ("key 'eps'", "8/0")),
    Case("suite-bad-n", "suite with n = 0", (*SW[:3], "--suite", suite("n = 0\n" + SUITE_OK), "--models", "static",
                                             "--untrained"), ("'n' must be an integer >= 1, got 0",)),
    Case("suite-bad-toml", "suite with invalid TOML", (*SW[:3], "--suite", suite("[[attacks]\nname = pgd\n"),
                                                       "--models", "static", "--untrained"), ("not valid TOML",)),
    Case("suite-unknown-attack", "suite naming an unknown attack",
         (*SW[:3], "--suite", suite(SUITE_OK.replace("fgsm", "fgms")), "--models", "static", "--untrained"),
         ("unknown attack 'fgms'", "did you mean fgsm")),
    Case("suite-unknown-check", "suite naming an unknown check",
         (*SW[:3], "--suite", suite('checks = ["logitz"]\n' + SUITE_OK), "--models", "static", "--untrained"),
         ("unknown check 'logitz'",)),
    Case("suite-no-attacks", "suite without attacks", (*SW[:3], "--suite", suite('name = "x"\n'), "--models",
                                                       "static", "--untrained"), ("no [[attacks]] tables",)),
    # --------------------------------------------------------------------------- command line
    Case("option-unknown", "unknown option", (*EV, *OK, "--nosuchflag"),
         ("No such option: --nosuchflag", "robustdyn evaluate --help")),
    Case("option-missing", "required option missing", EV, ("Missing option '--model'",)),
    Case("command-unknown", "unknown command", ("evalute", "--model", "static"),
         ("No such command 'evalute'", "robustdyn --help")),
    Case("argument-extra", "unexpected extra argument", (*EV, *OK, "static"), ("unexpected extra argument",)),
    Case("report-option-value", "non-integer option value (report)", (*RP, "--tsne-max", "many"),
         ("Invalid value for '--tsne-max'",)),
]

LIB_CASES: list[LibCase] = [
    LibCase("lib-load-model-unknown", "load_model('nosuch')", lambda c, _: _rd().load_model("nosuch"),
            RobustDynError, ("unknown model 'nosuch'",)),
    LibCase("lib-parse-eps-nan", "parse_eps('nan')", lambda c, _: _rd("evaluation").parse_eps("nan"), ConfigError,
            ("not a finite number",)),
    LibCase("lib-parse-eps-grid-empty", "parse_eps_grid([])", lambda c, _: _rd("evaluation").parse_eps_grid([]),
            ConfigError, ("eps grid is empty",)),
    LibCase("lib-resolve-device", "resolve_device('tpu')", lambda c, _: _rd("evaluation").resolve_device("tpu"),
            ConfigError, ("unknown device",)),
    LibCase("lib-attack-setting", "get_attack('pgd').settings(steps=-3)",
            lambda c, _: _rd("attacks").get_attack("pgd").settings(steps=-3), ConfigError,
            ("'steps' must be a non-negative integer",)),
    LibCase("lib-store-foreign", "ResultsStore(foreign SQLite)", lambda c, p: _rd("store").ResultsStore(p),
            StoreError, ("not a robustdyn results store",), setup=store("foreign")),
    LibCase("lib-store-future", "ResultsStore(store of a newer schema)", lambda c, p: _rd("store").ResultsStore(p),
            StoreError, ("schema version 99",), setup=store("future-schema")),
    LibCase("lib-store-folder", "ResultsStore(a folder)", lambda c, p: _rd("store").ResultsStore(p), StoreError,
            ("is a folder",), setup=store("folder")),
    LibCase("lib-suite-unknown-key", "load_suite(suite with an unknown setting)",
            lambda c, p: _rd("suites").load_suite(p), ConfigError, ("unknown setting 'stepz'",),
            setup=suite(SUITE_OK + "stepz = 3\n")),
    LibCase("lib-suite-bad-value", "parse_suite('seed = -1 ...')",
            lambda c, _: _rd("suites").parse_suite("seed = -1\n" + SUITE_OK), ConfigError,
            ("'seed' must be an integer >= 0",)),
    LibCase("lib-data-missing", "load_cifar10('test', missing folder)",
            lambda c, _: _rd("data").load_cifar10("test", c.root / "nodata"), DataError, ("does not exist",)),
    LibCase("lib-data-corrupt", "load_cifar10('test', folder with a corrupt test.npz)",
            lambda c, p: _rd("data").load_cifar10("test", p), DataError, ("unreadable",), setup=data("garbage")),
    LibCase("lib-data-split", "load_cifar10('valid')", lambda c, _: _rd("data").load_cifar10("valid"), DataError,
            ("unknown split 'valid'",)),
    LibCase("lib-subset-seed", "subset_indices(16, None, seed=-1)",
            lambda c, _: _rd("data").subset_indices(16, None, -1), DataError, ("seed must be a non-negative",)),
    LibCase("lib-checkpoint-wrong-shape", "load_model('static', models_dir=wrong-shape state dict)",
            lambda c, p: _rd().load_model("static", models_dir=p), CheckpointError, ("wrong shape",),
            setup=zoo("wrong-shape")),
    LibCase("lib-checkpoint-tampered", "load_model('static', models_dir=tampered sha256)",
            lambda c, p: _rd().load_model("static", models_dir=p), CheckpointError, ("corrupt or was modified",),
            setup=zoo("tampered-sha256")),
    LibCase("lib-evaluate-seed", "evaluate(..., seed=-1, store=PATH)",
            lambda c, _: _rd("evaluation").evaluate("static", "fgsm", untrained=True, n=2, seed=-1, device="cpu",
                                                    store=c.store), RobustDynError, ("seed",)),
    LibCase("lib-evaluate-batch-size", "evaluate(..., batch_size=0, store=PATH)",
            lambda c, _: _rd("evaluation").evaluate("static", "fgsm", untrained=True, n=2, batch_size=0,
                                                    device="cpu", store=c.store), ConfigError, ("batch size",)),
    LibCase("lib-threats-study", "run_threats(['static'], studies=['energyy'])",
            lambda c, _: _rd("threats").run_threats(["static"], studies=["energyy"], store=c.store), ConfigError,
            ("unknown threat study",)),
    LibCase("lib-benchmark-tuple-model", "benchmark(model returning a tuple, store=PATH)",
            lambda c, _: _rd().benchmark(_TupleModel(), attacks="fgsm", n=2, device="cpu", store=c.store),
            RobustDynError, ("returns a tuple of 2",)),
    LibCase("lib-contract-not-module", "check_model_contract(a function, not an nn.Module)",
            lambda c, _: _rd().check_model_contract(lambda x: x), RobustDynError, ("not a torch.nn.Module",)),
    LibCase("lib-report-no-store", "build_report(missing store)",
            lambda c, _: _rd("report").build_report(c.store, c.out()), StoreError, ("no results store",)),
]


class _TupleModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3 * 32 * 32, 10)

    def forward(self, x):
        return self.fc(x.flatten(1)), x


def _rd(module: str = ""):
    """robustbench_dyn or one of its modules (imported when a case runs)."""
    import importlib

    return importlib.import_module("robustbench_dyn" + (f".{module}" if module else ""))


# ------------------------------------------------------------------------------------ running

def build_argv(case: Case, ctx: Ctx) -> list[str]:
    return [str(a(ctx)) if callable(a) else a for a in case.argv]


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """``robustdyn ARGV`` in-process: (exit code, stdout, stderr)."""
    from robustbench_dyn.cli import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            main(argv)
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else int(e.code is not None)
    return code, out.getvalue(), err.getvalue()


def tree(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` (folders as None, files with their bytes), bytecode caches aside."""
    snap: dict[str, bytes | None] = {}
    for p in sorted(root.rglob("*")):
        if "__pycache__" in p.parts:
            continue
        rel = str(p.relative_to(root))
        if p.is_dir():
            snap[rel] = None
        else:
            try:
                snap[rel] = p.read_bytes()
            except PermissionError:
                snap[rel] = b"<unreadable>"
    return snap


def assert_nothing_written(ctx: Ctx, before: dict) -> None:
    after = tree(ctx.root)
    created = sorted(set(after) - set(before))
    changed = sorted(k for k in before if k in after and after[k] != before[k])
    removed = sorted(set(before) - set(after))
    assert not (created or changed or removed), {"created": created, "changed": changed, "removed": removed}
    assert not (ctx.root / "store").exists(), "the results store (or its folder) was created"


def check_cli_contract(code: int, out: str, err: str, needles) -> str:
    assert code == 2, (code, out, err)
    assert "Traceback" not in out + err, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    line = lines[0]
    assert "Fix: " in line or "did you mean" in line.lower(), line
    for needle in needles:
        assert needle in line, (needle, line)
    return line


@pytest.fixture
def case_env(monkeypatch, tmp_path_factory, tmp_path):
    """Tiny data as ROBUSTDYN_DATA, an empty checkpoint folder, and a private case folder."""
    d = tmp_path_factory.mktemp("tiny-data")
    write_tiny_npz(d / "test.npz")
    monkeypatch.setenv("ROBUSTDYN_DATA", str(d))
    monkeypatch.setenv("ROBUSTDYN_MODELS", str(tmp_path_factory.mktemp("no-models")))
    root = tmp_path / "case"
    root.mkdir()
    return Ctx(root)


def _param(case):
    return pytest.param(case, id=case.id, marks=[pytest.mark.skip(reason=case.skip)] if getattr(case, "skip", "")
                        else [])


def test_the_matrix_is_big_enough():
    assert len(CASES) >= 30 and len(LIB_CASES) >= 5
    assert len({c.id for c in CASES + LIB_CASES}) == len(CASES) + len(LIB_CASES)


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_cli_bad_input(case: Case, case_env: Ctx, monkeypatch):
    ctx = case_env
    argv = build_argv(case, ctx)
    monkeypatch.setenv("ROBUSTDYN_STORE", str(ctx.store))
    before = tree(ctx.root)
    check_cli_contract(*run_cli(argv), case.needles)
    assert_nothing_written(ctx, before)


@pytest.mark.parametrize("case", [_param(c) for c in LIB_CASES])
def test_library_bad_input(case: LibCase, case_env: Ctx, monkeypatch):
    ctx = case_env
    bad = case.setup(ctx)
    monkeypatch.setenv("ROBUSTDYN_STORE", str(ctx.store))
    before = tree(ctx.root)
    with pytest.raises(RobustDynError) as e:
        case.call(ctx, bad)
    assert isinstance(e.value, case.error), type(e.value)
    text = str(e.value)
    assert "\n" not in text and ("Fix: " in text or "did you mean" in text), text
    for needle in case.needles:
        assert needle in text, (needle, text)
    assert_nothing_written(ctx, before)


@pytest.mark.parametrize("argv,needle", [
    ([], "Commands"), (["--help"], "Commands"), (["evaluate", "--help"], "--eps-grid"), (["--version"], "robustdyn "),
])
def test_help_and_version_still_exit_0(argv, needle):
    """Usage errors are one line now; help (also a bare `robustdyn`) and --version are untouched."""
    code, out, err = run_cli(argv)
    assert code == 0 and needle in out and err == "", (code, out, err)


def test_console_script_usage_error_is_one_line(tmp_path):
    """Through the installed script (a real process, no terminal): click's usage panel is one line too."""
    import subprocess

    exe = Path(sys.executable).with_name("robustdyn")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "robustbench_dyn"]
    env = {**os.environ, "ROBUSTDYN_OFFLINE": "1", "ROBUSTDYN_STORE": str(tmp_path / "s" / "r.sqlite")}
    p = subprocess.run([*cmd, "evaluate", "--model", "static", "--n", "abc"], capture_output=True, text=True, env=env,
                       timeout=120)
    assert p.returncode == 2 and p.stdout == "", (p.returncode, p.stdout, p.stderr)
    assert p.stderr.count("\n") == 1 and p.stderr.startswith("error: Invalid value for '--n'"), p.stderr
    assert "Fix: see `robustdyn evaluate --help`" in p.stderr and not (tmp_path / "s").exists()


# ------------------------------------------------------------------------------------ README table

def markdown_table() -> str:
    """Run every case (in a temporary folder) and return README.md's table of errors."""
    import tempfile

    rows = ["| bad input | command | message | fix |", "|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        d = base / "tiny-data"
        d.mkdir()
        write_tiny_npz(d / "test.npz")
        os.environ.update(ROBUSTDYN_DATA=str(d), ROBUSTDYN_MODELS=str(base / "no-models"), ROBUSTDYN_OFFLINE="1",
                          ROBUSTDYN_CACHE=str(base / "cache"))
        for i, case in enumerate(CASES):
            if case.skip:
                continue
            root = base / f"case{i}"
            root.mkdir()
            ctx = Ctx(root)
            argv = build_argv(case, ctx)
            os.environ["ROBUSTDYN_STORE"] = str(ctx.store)
            code, _, err = run_cli(argv)
            line = err.strip().splitlines()[-1] if err.strip() else f"(exit {code}, no error)"
            line = _short(line.removeprefix("error: "), root, base)
            problem, _, fix = line.partition(". Fix: ")
            shown = " ".join(_quoted(a) for a in _without_noise([_short(a, root, base) for a in argv]))
            rows.append(f"| {case.what} | `robustdyn {_cell(shown, 60)}` | {_cell(problem, 110)} | {_cell(fix, 90)} |")
    return "\n".join(rows)


#: Arguments every case of a command shares, left out of the README's command column.
_NOISE = {("--device", "cpu"), ("--attack", "fgsm"), ("--n", "2"), ("--studies", "adaptive"), ("--steps", "2"),
          ("--checks", "logits"), ("--out", "report")}


def _without_noise(argv: list[str]) -> list[str]:
    shown, i = [], 0
    while i < len(argv):
        if tuple(argv[i:i + 2]) in _NOISE:
            i += 2
            continue
        if argv[i] != "--untrained":
            shown.append(argv[i])
        i += 1
    return shown


def _short(arg: str, root: Path, base: Path) -> str:
    repo = str(Path(__file__).resolve().parents[1]) + "/"
    return arg.replace(str(root) + "/", "").replace(str(base) + "/", "").replace(repo, "")


def _quoted(arg: str) -> str:
    return f"'{arg}'" if any(ch in arg for ch in "*,") else arg


def _cell(text: str, width: int) -> str:
    text = text if len(text) <= width else text[: width - 1].rstrip() + "…"
    return text.replace("|", "\\|")


if __name__ == "__main__":  # python tests/test_bad_inputs.py > table.md
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    print(markdown_table())
