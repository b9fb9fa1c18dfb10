"""Exceptions with a one-line message that names the problem and the fix.

Library code raises these; only the CLI prints them (one line, exit code 2, no traceback).
"""

from __future__ import annotations


class RobustDynError(Exception):
    """Base class: ``str(err)`` is 'problem. fix' on one line."""

    def __init__(self, problem: str, fix: str | None = None) -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(problem if not fix else f"{problem}. Fix: {fix}")


class UnknownModelError(RobustDynError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


class CheckpointError(RobustDynError):
    """Missing, corrupt, tampered or mismatched checkpoint."""


class DataError(RobustDynError):
    """Dataset not found, unreadable, or a bad subset request."""


class ConfigError(RobustDynError, ValueError):
    """Bad argument value: epsilon, n, seed, attack name, suite file, device."""


class StoreError(RobustDynError):
    """Results store unreadable, foreign or from an incompatible version."""


class ModelContractError(ConfigError):
    """A model (yours: ``file.py:factory`` or an ``nn.Module``) that breaks the model contract
    (:mod:`robustbench_dyn.contract`): wrong output type, shape or class count, non-finite logits, a forward
    that raises, batch-dependent or non-differentiable outputs."""
