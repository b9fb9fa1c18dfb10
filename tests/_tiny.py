"""Shared helpers for the evaluation-engine tests: a tiny static ResNet-8 trained for a few SGD
steps on the bundled 500-image sample (above-chance accuracy, so attacks have something to break).
Cached per process, so every test file reuses one training run."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from robustbench_dyn import create_model
from robustbench_dyn.data import load_sample


@functools.cache
def sample():
    return load_sample()


@functools.cache
def _trained_state(steps: int = 60) -> dict:
    x, y = sample().tensors()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = create_model("static", depth=8)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        model.train()
        for _ in range(steps):
            idx = torch.randint(0, len(x), (64,))
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def trained_model() -> torch.nn.Module:
    """A fresh copy of the briefly trained ResNet-8 (eval mode)."""
    model = create_model("static", depth=8)
    model.load_state_dict(_trained_state())
    return model.eval()


def accuracy(model, x, y) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())
