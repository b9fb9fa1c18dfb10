"""The model contract (issue 18): every mistake a researcher's model can make ends in one clear
ModelContractError (or a warning where the model is legitimate but suspicious); good models pass, the
caller's model keeps its dtype and train/eval mode; the dynamics protocol exposes custom layers to the probes."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustbench_dyn.contract import LogitsOnly, ModelContractWarning, check_model_contract
from robustbench_dyn.dynamics import DynamicsProbe, attention_modules, gate_modules
from robustbench_dyn.errors import ConfigError, ModelContractError, RobustDynError


class Lin(nn.Module):
    def __init__(self, out: int = 10) -> None:
        super().__init__()
        self.fc = nn.Linear(3 * 32 * 32, out)

    def forward(self, x):
        return self.fc(x.flatten(1))


def _sub(forward, init=None):
    """A Lin subclass with another forward (and optional extra init)."""
    def __init__(self):
        Lin.__init__(self)
        if init:
            init(self)
    return type("UserModel", (Lin,), {"forward": forward, "__init__": __init__})()


class _BNTrainMode(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 10, 3)
        self.register_buffer("m", torch.zeros(10))
        self.register_buffer("v", torch.ones(10))

    def forward(self, x):
        return F.batch_norm(self.conv(x), self.m, self.v, training=True).mean((2, 3))


class _StuckTrain(Lin):
    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm1d(10)

    def train(self, mode=True):
        super().train(mode)
        self.bn.training = True
        return self

    def forward(self, x):
        return self.bn(super().forward(x))


def _meta(self):
    self.w = torch.zeros(10, device="meta")


BAD = {
    "wrong-classes": (lambda: Lin(100), ("100 logits per image", "10 classes")),
    "one-score-N1": (lambda: Lin(1), ("one score per image", "(8, 1)")),
    "one-score-N": (lambda: _sub(lambda s, x: Lin.forward(s, x)[:, 0]), ("one score per image",)),
    "4d-output": (lambda: _sub(lambda s, x: Lin.forward(s, x)[:, :, None, None]), ("(8, 10, 1, 1)", "flatten")),
    "batch-reduced": (lambda: _sub(lambda s, x: Lin.forward(s, x).mean(0, keepdim=True)), ("first dimension",)),
    "tuple": (lambda: _sub(lambda s, x: (Lin.forward(s, x), x)), ("returns a tuple of 2", "LogitsOnly(model, 0)")),
    "dict": (lambda: _sub(lambda s, x: {"logits": Lin.forward(s, x)}), ("dict (keys 'logits')", "'logits'")),
    "none": (lambda: _sub(lambda s, x: None), ("returns NoneType",)),
    "argmax": (lambda: _sub(lambda s, x: Lin.forward(s, x).argmax(1)), ("int64", "class labels")),
    "nan": (lambda: _sub(lambda s, x: Lin.forward(s, x) * float("nan")), ("non-finite logits (NaN)", "8 of 8")),
    "inf-at-black": (lambda: _sub(lambda s, x: Lin.forward(s, torch.log(x))), ("non-finite", "black and white")),
    "raises": (lambda: _sub(lambda s, x: 1 / 0), ("forward raised ZeroDivisionError",)),
    "float16-output": (lambda: _sub(lambda s, x: Lin.forward(s, x).half()), ("float16 logits", "logits.float()")),
    "bn-train-mode": (_BNTrainMode, ("depend on the other images in its batch", "running statistics")),
    "stuck-in-train": (_StuckTrain, ("'bn' is still in train mode after model.eval()",)),
    "no-graph": (lambda: _sub(lambda s, x: Lin.forward(s, x).detach()), ("not differentiable", "--attack square")),
    "quantised-input": (lambda: _sub(lambda s, x: Lin.forward(s, (x * 8).round() / 8)),
                        ("input gradient", "exactly zero", "false 100% robust")),
    "tensor-on-meta": (lambda: _sub(lambda s, x: Lin.forward(s, x) + s.w, _meta),
                       ("meta", "register_buffer")),
    "not-a-module": (lambda: (lambda x: x), ("not a torch.nn.Module",)),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_model_is_one_clear_error(case):
    make, needles = BAD[case]
    with pytest.raises(ModelContractError) as e:
        check_model_contract(make(), device="cpu")
    text = str(e.value)
    assert isinstance(e.value, ConfigError) and isinstance(e.value, RobustDynError)
    assert "\n" not in text and "Fix: " in text, text
    for needle in needles:
        assert needle in text, (needle, text)


def _contract(model, **kw):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        net, report = check_model_contract(model, device="cpu", **kw)
    return net, report, [str(w.message) for w in caught if issubclass(w.category, ModelContractWarning)]


def tiny() -> nn.Module:
    """An untrained ResNet-8 (seeded): a real CNN with BatchNorm, fast."""
    from robustbench_dyn import create_model

    with torch.random.fork_rng():
        torch.manual_seed(0)
        return create_model("static", depth=8)


def test_good_model_passes_silently_and_keeps_its_mode():
    model = tiny().train()
    net, report, warned = _contract(model)
    assert net is model and warned == [] and report.differentiable and report.deterministic
    assert report.was_training and all(m.training for m in model.modules())  # mode restored


def test_model_without_parameters_works():
    class Means(nn.Module):
        def forward(self, x):
            return torch.cat([x.mean((2, 3)), x.amax((2, 3)), x.amin((2, 3)), x[:, :1, 0, 0]], 1)

    net, report, warned = _contract(Means())
    assert report.params == 0 and warned == []


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_low_or_double_precision_weights_are_cast_on_a_copy(dtype):
    model = Lin().to(dtype)
    net, report, warned = _contract(model)
    assert net is not model and next(net.parameters()).dtype == torch.float32
    assert next(model.parameters()).dtype == dtype  # the caller's model is untouched
    assert report.cast_from == str(dtype).removeprefix("torch.") and "float32 copy" in warned[0]


def test_probabilities_and_randomness_warn():
    _, report, warned = _contract(_sub(lambda s, x: Lin.forward(s, x).softmax(1)))
    assert report.probabilities and any("softmax probabilities" in w for w in warned)
    _, report, warned = _contract(_sub(lambda s, x: F.dropout(Lin.forward(s, x), 0.5, training=True)))
    assert not report.deterministic and any("two identical passes" in w for w in warned)


def test_gradient_check_waived_for_gradient_free_attacks():
    from robustbench_dyn.evaluation import needs_gradients

    quantised = BAD["quantised-input"][0]()
    _, report, _ = _contract(quantised, need_gradients=False)
    assert report.differentiable is None
    assert needs_gradients(["square"]) is False and needs_gradients(["square", "pgd"]) and needs_gradients(None)


def test_logits_only_wrapper_fixes_tuple_and_dict_models():
    for key, case in ((0, "tuple"), ("logits", "dict")):
        _, report, _ = _contract(LogitsOnly(BAD[case][0](), key))
        assert report.differentiable


def test_global_rng_untouched():
    model = Lin()  # (its initialisation draws from the RNG)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    _contract(model)
    assert torch.equal(torch.rand(3), expected)


# ------------------------------------------------------------------------------- dynamics protocol

class ProtoAttention(nn.Module):
    robustdyn_dynamics = "kernel_attention"

    def __init__(self, k=3):
        super().__init__()
        self.num_kernels = k
        self.fc = nn.Linear(3, k)

    def forward(self, x):
        return self.fc(x.mean((2, 3))).softmax(1)


class ProtoGate(nn.Module):
    robustdyn_dynamics = "gate"

    def __init__(self, c=5):
        super().__init__()
        self.num_channels = c
        self.fc = nn.Linear(3, c)

    def forward(self, x):
        soft = torch.sigmoid(self.fc(x.mean((2, 3))))
        return (soft > 0.5).float() + soft - soft.detach()


class ProtoNet(nn.Module):
    def __init__(self, attn=None, gate=None):
        super().__init__()
        self.attn = attn or ProtoAttention()
        self.gate = gate or ProtoGate()
        self.fc = nn.Linear(3 * 3 + 5, 10)

    def forward(self, x):
        a, g = self.attn(x), self.gate(x)
        return self.fc(torch.cat([(x.mean((2, 3))[:, :, None] * a[:, None]).flatten(1), g], 1))


def test_protocol_layers_are_seen_by_the_probes():
    model = ProtoNet().eval()
    _, report, warned = _contract(model)
    assert report.dynamic_modules == 2
    assert [(n, layer.K) for n, _, layer in attention_modules(model)] == [("attn", 3)]
    assert [n for n, _ in gate_modules(model)] == ["gate"]
    probe = DynamicsProbe(model)
    assert probe.layout()["gates"] == [{"name": "gate", "channels": 5}]
    rec = probe.record(torch.rand(4, 3, 32, 32))
    assert rec.kernel[0].shape == (4, 3) and rec.gates[0].shape == (4, 5)
    assert set(rec.gates[0].ravel().tolist()) <= {0, 1}
    assert rec.macs().shape == (4,)  # protocol gates: static MACs, no crash


def test_protocol_mistakes_are_clear():
    typo = ProtoAttention()
    typo.robustdyn_dynamics = "kernel_attn"
    with pytest.raises(ModelContractError, match="did you mean 'kernel_attention'"):
        check_model_contract(ProtoNet(attn=typo))
    no_size = ProtoGate()
    del no_size.num_channels
    with pytest.raises(ModelContractError, match="num_channels is None"):
        check_model_contract(ProtoNet(gate=no_size))
    wrong = ProtoGate()
    wrong.num_channels = 7
    with pytest.raises(ModelContractError, match=r"not \(8, 7\)"):
        check_model_contract(ProtoNet(gate=wrong))
    not_probs = ProtoAttention()
    not_probs.forward = lambda x: not_probs.fc(x.mean((2, 3)))
    with pytest.raises(ModelContractError, match="kernel-attention probabilities"):
        check_model_contract(ProtoNet(attn=not_probs))

    class Unused(ProtoNet):
        def forward(self, x):
            return self.fc(torch.cat([x.mean((2, 3)).repeat(1, 3), self.gate(x)], 1))
    with pytest.raises(ModelContractError, match="never called by forward"):
        check_model_contract(Unused())


def test_evaluate_accepts_a_module_checks_it_and_restores_its_mode():
    from robustbench_dyn import evaluate
    from tests._tiny import sample

    model = tiny().train()
    r = evaluate(model, "fgsm", "8/255", n=8, data=sample(), device="cpu")
    assert r.n == 8 and 0 <= r.robust_acc[8 / 255] <= r.clean_acc
    assert all(m.training for m in model.modules())
    with pytest.raises(ModelContractError, match="returns a tuple"):
        evaluate(BAD["tuple"][0](), "fgsm", n=4, data=sample(), device="cpu")
