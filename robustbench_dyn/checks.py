"""Sanity checks against gradient masking and evaluation bugs (after Carlini et al. 2019 and
AutoAttack's ``checks.py``). Each returns a :class:`CheckResult`: name, value, PASS/FAIL, the
threshold, and what a FAIL means.

==================  ==========================================================================
``eval_mode``       the model as given is in eval mode (value: modules in train mode)
``deterministic``   5 forward passes on the same inputs give identical logits (value: max |diff|)
``logits``          outputs are logits, not probabilities (value: mean |row sum - 1|)
``zero_gradient``   fraction of examples whose input gradient (cross-entropy) is exactly zero
``large_eps``       PGD-50 at eps 64/255 drives robust accuracy to ~0 (value: robust accuracy)
``more_steps``      PGD-50 is never weaker than PGD-10 (value: acc(PGD-50) - acc(PGD-10))
``black_box``       Square (black box) never beats white-box PGD-50 by more than 0.5 point
                    (value: acc(PGD-50) - acc(Square))
==================  ==========================================================================

:func:`run_checks` runs them on tensors; :func:`check_model` on a seeded data subset and records the
results in the results store.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .attacks import eval_mode, get_attack

DEFAULT_CHECK_N = {"cpu": 64, "cuda": 1000}
DEFAULT_SQUARE_QUERIES = {"cpu": 300, "cuda": 5000}


@dataclass(frozen=True)
class CheckResult:
    name: str
    value: float
    passed: bool
    threshold: str  # the PASS condition, e.g. "<= 0.01"
    meaning: str  # what a FAIL means
    detail: str = ""

    @property
    def status(self) -> str:
        return "PASS" if self.passed else "FAIL"

    def line(self) -> str:
        text = f"{self.status}  {self.name:<14} {self.value:>8.4g}  (pass if {self.threshold})"
        if self.detail:
            text += f"  {self.detail}"
        if not self.passed:
            text += f"  -> {self.meaning}"
        return text


@dataclass
class CheckContext:
    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    device: torch.device
    eps: float = 8 / 255
    large_eps: float = 64 / 255
    seed: int = 0
    batch_size: int = 100
    square_queries: int = 5000
    cache: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.y)

    def batches(self):
        for s in range(0, self.n, self.batch_size):
            yield self.x[s:s + self.batch_size].to(self.device), self.y[s:s + self.batch_size].to(self.device)


@torch.no_grad()
def _logits(ctx: CheckContext) -> torch.Tensor:
    with eval_mode(ctx.model):
        return torch.cat([ctx.model(xb).float() for xb, _ in ctx.batches()])


def _attack_broken(ctx: CheckContext, attack: str, eps: float, **settings) -> np.ndarray:
    """Per example: misclassified clean or by the verified adversarial example (seeded per batch)."""
    from .evaluation import seeded

    key = (attack, eps, tuple(sorted(settings.items())))
    if key in ctx.cache:
        return ctx.cache[key]
    entry = get_attack(attack)
    broken = []
    for b, (xb, yb) in enumerate(ctx.batches()):
        with torch.no_grad(), eval_mode(ctx.model):
            wrong = ctx.model(xb).argmax(1) != yb
        alive = (~wrong).nonzero().flatten()
        if alive.numel():
            atk = entry.create(ctx.model, eps, device=ctx.device, **settings)
            with seeded(f"check:{ctx.seed}:{b}:{attack}:{eps!r}", ctx.device):
                xa = atk(xb[alive], yb[alive])
            with torch.no_grad(), eval_mode(ctx.model):
                wrong[alive] = ctx.model(xa).float().argmax(1) != yb[alive]
        broken.append(wrong.cpu().numpy())
    out = np.concatenate(broken)
    ctx.cache[key] = out
    return out


def _acc(broken: np.ndarray) -> float:
    return float(1.0 - broken.mean()) if len(broken) else float("nan")


# --------------------------------------------------------------------------------------- the checks

def check_eval_mode(ctx: CheckContext) -> CheckResult:
    training = [n for n, m in ctx.model.named_modules() if m.training]
    return CheckResult("eval_mode", float(len(training)), not training, "== 0",
                       "the model is in train mode (BatchNorm uses batch statistics, gates sample): call model.eval() "
                       "before evaluating (robustdyn's attacks force eval mode, your own code must too)",
                       f"e.g. {training[0] or '<root>'}" if training else "")


def check_deterministic(ctx: CheckContext, passes: int = 5) -> CheckResult:
    outs = [_logits(ctx) for _ in range(passes)]
    diff = max(float((o - outs[0]).abs().max()) for o in outs[1:]) if ctx.n else 0.0
    scale = max(1.0, float(outs[0].abs().max())) if ctx.n else 1.0
    tol = 1e-5 * scale
    return CheckResult("deterministic", diff, diff <= tol, f"<= {tol:.2g}",
                       "outputs change between identical passes: a randomised model in eval mode; gradient attacks "
                       "then need expectation over transformations (autoattack version = 'rand')",
                       f"{passes} passes")


def check_logits(ctx: CheckContext) -> CheckResult:
    out = _logits(ctx)
    row_dev = (out.sum(1) - 1).abs()
    probs = bool((out.min() >= -1e-5) & (out.max() <= 1 + 1e-5) & (row_dev.max() < 1e-4)) if ctx.n else False
    return CheckResult("logits", float(row_dev.mean()) if ctx.n else 0.0, not probs, "outputs are not probabilities",
                       "the model returns probabilities (softmax inside): cross-entropy on probabilities has vanishing "
                       "gradients and attacks underestimate; return logits")


def check_zero_gradient(ctx: CheckContext, threshold: float = 0.01) -> CheckResult:
    zero = []
    with eval_mode(ctx.model):
        for xb, yb in ctx.batches():
            xb = xb.clone().requires_grad_(True)
            loss = F.cross_entropy(ctx.model(xb).float(), yb, reduction="sum")
            (g,) = torch.autograd.grad(loss, xb)
            zero.append((g.reshape(len(g), -1).abs().sum(1) == 0).cpu().numpy())
    frac = float(np.concatenate(zero).mean()) if zero else 0.0
    return CheckResult("zero_gradient", frac, frac <= threshold, f"<= {threshold:g}",
                       "many examples have an exactly zero input gradient (saturated softmax or hard gates): "
                       "gradient attacks cannot move them; use the DLR loss (pgd-dlr), BPDA (bpda = true) or Square")


def check_large_eps(ctx: CheckContext, threshold: float = 0.01, steps: int = 50) -> CheckResult:
    acc = _acc(_attack_broken(ctx, "pgd", ctx.large_eps, steps=steps))
    return CheckResult("large_eps", acc, acc <= threshold, f"<= {threshold:g}",
                       f"PGD-{steps} at eps {ctx.large_eps * 255:.0f}/255 does not break (nearly) everything: "
                       "the gradients are masked or the attack is broken",
                       f"PGD-{steps}, eps {ctx.large_eps * 255:.0f}/255")


def check_more_steps(ctx: CheckContext, few: int = 10, many: int = 50, tol: float = 0.005) -> CheckResult:
    a_few = _acc(_attack_broken(ctx, "pgd", ctx.eps, steps=few))
    a_many = _acc(_attack_broken(ctx, "pgd", ctx.eps, steps=many))
    slack = max(tol, 1.0 / max(ctx.n, 1))  # random starts may flip one example
    return CheckResult("more_steps", a_many - a_few, a_many - a_few <= slack, f"<= {slack:.3g}",
                       f"PGD-{many} is weaker than PGD-{few}: the loss landscape is masked (noisy or shattered "
                       "gradients); look for gradient masking", f"PGD-{few} {a_few:.3f}, PGD-{many} {a_many:.3f}")


def check_black_box(ctx: CheckContext, tol: float = 0.005, steps: int = 50) -> CheckResult:
    pgd = _attack_broken(ctx, "pgd", ctx.eps, steps=steps)
    sq = _attack_broken(ctx, "square", ctx.eps, n_queries=ctx.square_queries)
    gap = _acc(pgd) - _acc(sq)
    only_sq = int((sq & ~pgd).sum())
    return CheckResult("black_box", gap, gap <= tol, f"<= {tol:g}",
                       "the black-box Square attack beats white-box PGD: the gradients are masked, so the white-box "
                       "robust accuracy overestimates robustness",
                       f"PGD-{steps} {_acc(pgd):.3f}, Square({ctx.square_queries}) {_acc(sq):.3f}, "
                       f"{only_sq} broken by Square only")


CHECKS: dict[str, Callable[[CheckContext], CheckResult]] = {
    "eval_mode": check_eval_mode,
    "deterministic": check_deterministic,
    "logits": check_logits,
    "zero_gradient": check_zero_gradient,
    "large_eps": check_large_eps,
    "more_steps": check_more_steps,
    "black_box": check_black_box,
}


def run_checks(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, names: Sequence[str] | None = None,
               device: str | torch.device = "cpu", eps: float = 8 / 255, large_eps: float = 64 / 255,
               seed: int = 0, batch_size: int = 100, square_queries: int | None = None,
               on_result: Callable[[CheckResult], None] | None = None) -> list[CheckResult]:
    """Run the named checks (all by default, in table order) on images ``x`` in [0, 1] and labels ``y``.
    ``eval_mode`` inspects the model as given; the other checks run in eval mode and restore the mode."""
    from .errors import ConfigError
    from .evaluation import resolve_device

    dev = resolve_device(device)
    names = list(CHECKS) if names is None else list(names)
    for nm in names:
        if nm not in CHECKS:
            raise ConfigError(f"unknown check {nm!r}", f"known checks: {', '.join(CHECKS)}")
    ctx = CheckContext(model, x, y, dev, eps, large_eps, seed, batch_size,
                       square_queries or DEFAULT_SQUARE_QUERIES.get(dev.type, 5000))
    results = []
    for nm in names:
        r = CHECKS[nm](ctx)
        results.append(r)
        if on_result:
            on_result(r)
    return results


def check_model(model: nn.Module, info, data, *, n: int | None = None, seed: int = 0,
                device: str | torch.device = "cpu", store=None, names: Sequence[str] | None = None,
                eps: float = 8 / 255, batch_size: int = 100, square_queries: int | None = None,
                on_result: Callable[[CheckResult], None] | None = None) -> list[CheckResult]:
    """:func:`run_checks` on a seeded subset of ``data`` (``info``: evaluation.ModelInfo); results go to
    ``store`` (a ResultsStore) when given."""
    from .evaluation import resolve_device

    dev = resolve_device(device)
    n = n if n is not None else min(DEFAULT_CHECK_N.get(dev.type, 64), len(data))
    idx = data.subset(n, seed)
    x, y = data.tensors(idx)
    sq = square_queries or DEFAULT_SQUARE_QUERIES.get(dev.type, 5000)
    model = model.to(dev)
    results = run_checks(model, x, y, names=names, device=dev, eps=eps, seed=seed, batch_size=batch_size,
                         square_queries=sq, on_result=on_result)
    if store is not None:
        for r in results:
            store.add_check(model=info.name, checkpoint_sha256=info.checkpoint_sha256, check_name=r.name,
                            dataset_digest=data.digest, n=len(idx), seed=seed, value=r.value, passed=r.passed,
                            threshold=r.threshold, meaning=r.meaning, detail=r.detail,
                            settings={"eps": eps, "square_queries": sq}, dataset_label=data.label, device=str(dev),
                            untrained=info.untrained)
    return results
