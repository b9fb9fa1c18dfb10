"""Run the `robustdyn` command line in-process: exit code, stdout and stderr."""

from __future__ import annotations

import pytest

from robustbench_dyn.cli import main


def run_cli(capsys, *args) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return e.value.code or 0, out, err
