"""Attack suites: which attacks, at which eps, with which settings, as TOML (``attacks/*.toml``).

::

    name = "standard"                      # optional, defaults to the file's stem
    description = "..."                    # optional
    n = 1000                               # optional: examples per model (default: see evaluate)
    seed = 0                               # optional: subset seed
    batch_size = 250                       # optional
    checks = true                          # optional: run the sanity checks per model (or a list of names)

    [[attacks]]
    name = "pgd"                           # a registered attack (robustbench_dyn.attacks)
    eps = ["8/255"]                        # one value or a list (the grid, attacked in ascending order)
    steps = 20                             # any other key is a setting of that attack

Eps are '8/255' strings or numbers in [0, 1]. Unknown keys and bad values raise
:class:`ConfigError` naming the key and the file. ``load_suite("standard")`` also finds the suites
shipped in the repository's ``attacks/`` folder by name.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from .errors import ConfigError

TOP_KEYS = ("name", "description", "n", "seed", "batch_size", "checks", "attacks")
ATTACK_KEYS = ("name", "eps", "label")


@dataclass(frozen=True)
class SuiteAttack:
    """One attack of a suite: registered name, ascending eps grid (values and labels), settings."""

    name: str
    eps: tuple[float, ...]
    eps_text: tuple[str, ...]
    settings: dict[str, Any] = field(default_factory=dict)
    label: str = ""

    @property
    def norm(self) -> str:
        from .attacks import get_attack

        return get_attack(self.name).norm(**self.settings)


@dataclass(frozen=True)
class Suite:
    name: str
    path: Path | None
    attacks: tuple[SuiteAttack, ...]
    description: str = ""
    n: int | None = None
    seed: int = 0
    batch_size: int | None = None
    checks: tuple[str, ...] = ()

    def total_runs(self) -> int:
        return sum(len(a.eps) for a in self.attacks)


def suites_dir() -> Path:
    """``$ROBUSTDYN_SUITES``, else the repository's ``attacks/`` folder."""
    env = os.environ.get("ROBUSTDYN_SUITES")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "attacks"


def builtin_suites() -> list[str]:
    d = suites_dir()
    return sorted(p.stem for p in d.glob("*.toml")) if d.is_dir() else []


def load_suite(path_or_name: str | os.PathLike) -> Suite:
    """Parse a suite file (or the name of a shipped suite: 'quick', 'standard', 'full')."""
    p = Path(path_or_name)
    if not p.exists() and p.suffix != ".toml" and (suites_dir() / f"{p.name}.toml").exists():
        p = suites_dir() / f"{p.name}.toml"
    if not p.is_file():
        known = builtin_suites()
        hint = f"shipped suites: {', '.join(known)} (in {suites_dir()})" if known else "pass a .toml file"
        raise ConfigError(f"suite file {p} does not exist", hint)
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"suite file {p} is unreadable ({e})", "pass a UTF-8 TOML file") from None
    return parse_suite(text, p)


def _unknown(key: str, known, where: str) -> ConfigError:
    close = difflib.get_close_matches(key, list(known), n=2, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}?" if close else f"known keys: {', '.join(known)}"
    return ConfigError(f"{where}: unknown key {key!r}", hint)


def _int(value: Any, key: str, where: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{where}: {key!r} must be an integer >= {minimum}, got {value!r}",
                          f"set {key} = {max(minimum, 1)}")
    return value


def parse_suite(text: str, path: str | os.PathLike | None = None) -> Suite:
    """Parse suite TOML text (``path`` only names the file in messages)."""
    from .attacks import get_attack
    from .checks import CHECKS
    from .evaluation import eps_label, parse_eps

    where = str(path) if path is not None else "<suite>"
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"suite file {where} is not valid TOML ({e})", "fix the syntax (see attacks/quick.toml)") \
            from None
    for key in doc:
        if key not in TOP_KEYS:
            raise _unknown(key, TOP_KEYS, where)
    name = doc.get("name", Path(where).stem if path is not None else "suite")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}: 'name' must be a non-empty string", 'set name = "my-suite"')
    description = doc.get("description", "")
    if not isinstance(description, str):
        raise ConfigError(f"{where}: 'description' must be a string", 'set description = "..."')
    n = _int(doc["n"], "n", where, 1) if "n" in doc else None
    seed = _int(doc.get("seed", 0), "seed", where, 0)
    batch_size = _int(doc["batch_size"], "batch_size", where, 1) if "batch_size" in doc else None
    checks_val = doc.get("checks", False)
    if checks_val is True:
        checks = tuple(CHECKS)
    elif checks_val is False:
        checks = ()
    elif isinstance(checks_val, list) and all(isinstance(c, str) for c in checks_val):
        for c in checks_val:
            if c not in CHECKS:
                raise ConfigError(f"{where}: 'checks' names unknown check {c!r}", f"known checks: {', '.join(CHECKS)}")
        checks = tuple(checks_val)
    else:
        raise ConfigError(f"{where}: 'checks' must be true, false or a list of check names, got {checks_val!r}",
                          "set checks = true")
    raw = doc.get("attacks")
    if not isinstance(raw, list) or not raw or not all(isinstance(a, dict) for a in raw):
        raise ConfigError(f"{where}: no [[attacks]] tables", 'add [[attacks]] with name = "pgd" and eps = ["8/255"]')
    attacks = []
    for i, a in enumerate(raw):
        here = f"{where}: [[attacks]] #{i + 1}"
        if "name" not in a:
            raise ConfigError(f"{here}: missing key 'name'", 'add name = "pgd" (see robustbench_dyn.attacks)')
        aname = a["name"]
        if not isinstance(aname, str):
            raise ConfigError(f"{here}: 'name' must be a string", 'set name = "pgd"')
        try:
            entry = get_attack(aname)
        except ConfigError as e:
            raise ConfigError(f"{here}: {e.problem}", e.fix) from None
        here = f"{where}: attack {aname!r}"
        if "eps" not in a:
            raise ConfigError(f"{here}: missing key 'eps'", 'add eps = ["8/255"]')
        eps_raw = a["eps"] if isinstance(a["eps"], list) else [a["eps"]]
        if not eps_raw:
            raise ConfigError(f"{here}: 'eps' is empty", 'set eps = ["8/255"]')
        try:
            values = [parse_eps(e) for e in eps_raw]
        except ConfigError as e:
            raise ConfigError(f"{here}: key 'eps': {e.problem}", e.fix) from None
        settings = {k: v for k, v in a.items() if k not in ATTACK_KEYS}
        try:
            canonical = entry.settings(**settings)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e.problem}", e.fix) from None
        norm = entry.cls.norm_of(canonical)
        grid = sorted(set(values))
        texts = {}
        for v, raw_v in zip(values, eps_raw, strict=True):
            texts.setdefault(v, raw_v if isinstance(raw_v, str) else eps_label(v, norm))
        label = a.get("label", "")
        if not isinstance(label, str):
            raise ConfigError(f"{here}: 'label' must be a string", 'set label = "PGD-20"')
        attacks.append(SuiteAttack(aname, tuple(grid), tuple(texts[v] for v in grid), settings, label))
    return Suite(name, Path(path) if path is not None else None, tuple(attacks), description, n, seed, batch_size,
                 checks)
