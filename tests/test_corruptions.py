"""Common corruptions (CIFAR-10-C protocol): the generator, its fidelity to the original's semantics,
the store/CLI path (resumable) and the report section. Fast: a few 32 x 32 images on the CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _cli import run_cli as _run

from robustbench_dyn.corruptions import CORRUPTIONS, SEVERITIES, corrupt
from robustbench_dyn.corruptions import _ops as O
from robustbench_dyn.data import load_sample
from robustbench_dyn.errors import ConfigError
from robustbench_dyn.store import ResultsStore

RANDOM = {"gaussian_noise", "shot_noise", "impulse_noise", "glass_blur", "motion_blur", "snow", "frost", "fog",
          "elastic_transform"}
#: Corruptions whose mean L2 distance from the clean image grows with severity in the original too
#: (glass blur, elastic transform and frost are not monotone in distance by construction of the CIFAR tables).
MONOTONE = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "motion_blur", "zoom_blur", "snow", "fog",
            "brightness", "contrast", "pixelate", "jpeg_compression")


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    torch.set_num_threads(1)
    x, _ = load_sample().tensors(np.arange(6))
    return x


def test_names():
    assert len(CORRUPTIONS) == 15 and len(set(CORRUPTIONS)) == 15
    assert set(CORRUPTIONS) == set(O.FUNCTIONS) == set(O.PARAMS)
    assert all(len(v) == 5 for v in O.PARAMS.values())


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_every_severity_shape_range_dtype_determinism(images, name):
    x = images[:3]
    for s in SEVERITIES:
        a = corrupt(x, name, s, seed=1)
        assert a.shape == x.shape and a.dtype == x.dtype and a.device == x.device
        assert torch.isfinite(a).all() and a.min() >= 0 and a.max() <= 1
        assert torch.equal(a, corrupt(x, name, s, seed=1)), "not deterministic for a seed"
        assert torch.equal(a * 255, torch.round(a * 255)), "outputs are 8-bit values, like CIFAR-10-C"
        if name in RANDOM and s == 5:
            assert not torch.equal(a, corrupt(x, name, s, seed=2)), "the seed does not matter"
    assert not torch.equal(corrupt(x, name, 5), x)
    x64 = x.double()
    assert corrupt(x64, name, 2).dtype == torch.float64


def test_per_image_streams_do_not_depend_on_the_batch(images):
    for name in ("gaussian_noise", "glass_blur", "fog", "frost", "elastic_transform"):
        full = corrupt(images, name, 3, seed=0, ids=[10, 11, 12, 13, 14, 15])
        part = corrupt(images[2:4], name, 3, seed=0, ids=[12, 13])
        assert torch.equal(full[2:4], part)


@pytest.mark.parametrize("bad", [0, 6, 2.5, True, "3", None])
def test_bad_severity(images, bad):
    with pytest.raises(ConfigError, match="severity"):
        corrupt(images, "fog", bad)


def test_bad_inputs(images):
    with pytest.raises(ConfigError, match="unknown corruption 'fgo'.*fog"):
        corrupt(images, "fgo", 1)
    with pytest.raises(ConfigError, match=r"\(N, 3, 32, 32\)"):
        corrupt(images[:, :, :16], "fog", 1)
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        corrupt(images * 2, "fog", 1)
    with pytest.raises(ConfigError, match="float"):
        corrupt((images * 255).to(torch.uint8), "fog", 1)
    with pytest.raises(ConfigError, match="ids"):
        corrupt(images, "fog", 1, ids=[1, 2])
    with pytest.raises(ConfigError, match="seed"):
        corrupt(images, "fog", 1, seed=-1)


def test_distance_grows_with_severity(images):
    """Mean L2 distance from the clean image, severity 1..5 (same per-image draws across severities)."""
    for name in MONOTONE:
        d = [float((corrupt(images, name, s) - images).flatten(1).norm(dim=1).mean()) for s in SEVERITIES]
        # non-decreasing (motion blur s3 and s4 differ only in kernel taps of weight ~1e-8, in the original too)
        assert all(b >= a - 1e-6 for a, b in zip(d, d[1:], strict=False)) and d[-1] > 1.5 * d[0], (name, d)


# --------------------------------------------------------------------- fidelity to the original's operations

def test_glass_blur_matches_the_original_loop(images):
    """The original's sequential 'swap' (numpy row views: a copy, not a swap) and our one-gather version."""
    from scipy.ndimage import gaussian_filter

    from robustbench_dyn.corruptions import _generators

    u = torch.round(images[:1].double() * 255)
    img = u[0].permute(1, 2, 0).numpy() / 255
    for sev in (2, 5):
        sigma, _, it = O.PARAMS["glass_blur"][sev - 1]
        ours = O.glass_blur(u, O.PARAMS["glass_blur"][sev - 1], _generators(0, "glass_blur", [0]))[0]
        draws = _generators(0, "glass_blur", [0])[0].integers(-1, 1, size=(it, 30, 30, 2))
        x = np.uint8(gaussian_filter(img, (sigma, sigma, 0), mode="nearest") * 255)
        for i in range(it):
            for a, h in enumerate(range(31, 1, -1)):
                for b, w in enumerate(range(31, 1, -1)):
                    dx, dy = draws[i, a, b]
                    x[h, w], x[h + dy, w + dx] = x[h + dy, w + dx], x[h, w]
        ref = np.clip(gaussian_filter(x / 255.0, (sigma, sigma, 0), mode="nearest"), 0, 1) * 255
        assert np.abs(ours.permute(1, 2, 0).numpy() - ref).max() < 1e-9


def test_zoom_matches_scipy(images):
    from scipy.ndimage import zoom

    img = images[0].permute(1, 2, 0).double().numpy()
    for z in (1.0, 1.06, 1.25, 1.75, 2.25):
        ch = int(np.ceil(32 / z))
        top = (32 - ch) // 2
        ref = zoom(img[top:top + ch, top:top + ch], (z, z, 1), order=1)
        t = (ref.shape[0] - 32) // 2
        ref = ref[t:t + 32, t:t + 32]
        m = O._zoom_matrix(z)
        assert np.abs(np.einsum("ij,jkc,lk->ilc", m, img, m) - ref).max() < 1e-9


def test_brightness_is_the_hsv_round_trip(images):
    import matplotlib.colors as mc

    u = torch.round(images[:2].double() * 255)
    for c in O.PARAMS["brightness"]:
        hsv = mc.rgb_to_hsv(u.permute(0, 2, 3, 1).numpy() / 255)
        hsv[..., 2] = np.clip(hsv[..., 2] + c, 0, 1)
        ref = mc.hsv_to_rgb(hsv) * 255
        assert np.abs(O.brightness(u, c, None).permute(0, 2, 3, 1).numpy() - ref).max() < 1e-6


# ----------------------------------------------------------------------------------- a trained model

@pytest.mark.zoo
def test_accuracy_falls_with_severity_static_checkpoint():
    """The shipped `static` checkpoint on 48 images of the bundled sample: mean accuracy over the 15
    corruptions at severity 5 is below severity 1, which is at most the clean accuracy (+ noise)."""
    from robustbench_dyn.checkpoints import checkpoint_present
    from robustbench_dyn.registry import load_model

    if not checkpoint_present("static"):
        pytest.skip("no static checkpoint under models/")
    torch.set_num_threads(1)
    model = load_model("static").eval()
    x, y = load_sample().tensors(np.arange(48))
    with torch.no_grad():
        clean = float((model(x).argmax(1) == y).float().mean())
        acc = {s: float(np.mean([(model(corrupt(x, c, s)).argmax(1) == y).float().mean() for c in CORRUPTIONS]))
               for s in (1, 5)}
    assert acc[5] < acc[1] <= clean + 0.05, (clean, acc)


# ----------------------------------------------------------------------------------------- CLI and store



def test_cli_one_corruption_through_the_store_and_resume(capsys, tmp_path):
    store = tmp_path / "c.sqlite"
    base = ["evaluate", "--model", "gated", "--untrained", "--device", "cpu", "--store", store]
    code, out, err = _run(capsys, *base, "--attack", "corruption:fog", "--severity", "3", "--n", "3")
    assert code == 0, err
    assert "fog" in out
    with ResultsStore(store) as st:
        runs = st.runs_df()
        assert len(runs) == 1
        r = runs.iloc[0]
        assert (r.attack, r.norm, r.eps, r.eps_label, r.n_done, r.status) == ("corruption", "corruption", 3.0, "s3",
                                                                               3, "complete")
        ex = st.examples_df()
        assert len(ex) == 3 and ex.gate_density_adv.notna().all() and (ex.perturbation > 0).all()
        first = ex.sort_values("idx")[["idx", "adv_pred", "gate_density_adv", "perturbation"]].reset_index(drop=True)
    # more images and a second severity: the stored rows are reused, the others added
    code, out, err = _run(capsys, *base, "--attack", "corruption:fog", "--severity", "1,3", "--n", "3")
    assert code == 0, err
    assert "resumed" in out
    with ResultsStore(store) as st:
        runs = st.runs_df()
        assert sorted(runs.eps) == [1.0, 3.0] and (runs.n_done == 3).all()
        again = st.examples_df(attack="corruption", eps=3.0).sort_values("idx")[first.columns].reset_index(drop=True)
    assert again.equals(first)
    # the report section reads them
    from robustbench_dyn.report import build_report

    rep = build_report(store, tmp_path / "rep", sections=["corruptions"], strict=True)
    assert rep.built == ["corruptions"]
    assert "Common corruptions" in (tmp_path / "rep" / "index.md").read_text()


def test_cli_bad_corruption_inputs(capsys):
    code, out, err = _run(capsys, "evaluate", "--model", "static", "--untrained", "--attack", "corruption:fgo",
                          "--n", "2", "--no-store")
    assert code == 2 and err.strip().startswith("error: unknown corruption 'fgo'") and "Fix:" in err
    code, out, err = _run(capsys, "evaluate", "--model", "static", "--untrained", "--attack", "corruption:fog",
                          "--severity", "6", "--n", "2", "--no-store")
    assert code == 2 and "severity" in err and "Fix:" in err
    code, out, err = _run(capsys, "evaluate", "--model", "static", "--untrained", "--attack", "pgd", "--severity", "2",
                          "--n", "2", "--no-store")
    assert code == 2 and "corruptions only" in err


def test_report_skips_without_corruption_rows(capsys, tmp_path):
    from robustbench_dyn.report import build_report

    store = tmp_path / "s.sqlite"
    code, out, err = _run(capsys, "evaluate", "--model", "static", "--untrained", "--attack", "fgsm", "--n", "2",
                          "--device", "cpu", "--store", store)
    assert code == 0, err
    rep = build_report(store, tmp_path / "rep", sections=["corruptions"])
    assert "corruptions" in rep.missing and "no corruption runs" in rep.missing["corruptions"]


def test_report_flags_severities_that_hurt_less_only_when_significant():
    """The report's non-monotone check: paired exact McNemar with Bonferroni, on made-up example rows."""
    import pandas as pd

    from robustbench_dyn.report.corruptions_sections import non_monotone_severities

    n = 200
    label = np.zeros(n, dtype=int)

    def rows(right: int) -> pd.DataFrame:  # the first `right` images correct
        pred = np.r_[np.zeros(right), np.ones(n - right)]
        return pd.DataFrame({"idx": np.arange(n), "label": label, "adv_pred": pred})

    ex = {1: rows(80), 2: rows(160), 3: rows(150),  # glass: s1 -> s2 jumps up 40 pt (flagged), s2 -> s3 falls
          4: rows(150), 5: rows(140), 6: rows(146)}  # jpeg: s2 -> s3 up 3 pt on 200 images (not significant)

    class Ctx:
        def examples(self, run_id):
            return ex[run_id]

    runs = pd.DataFrame({"model": ["m"] * 6, "corruption": ["glass_blur"] * 3 + ["jpeg_compression"] * 3,
                         "severity": [1, 2, 3, 1, 2, 3], "run_id": [1, 2, 3, 4, 5, 6]})
    t = non_monotone_severities(Ctx(), runs)
    assert len(t) == 1
    r = t.iloc[0]
    assert (r.corruption, r["from"], r.to, r.n, r.b, r.c) == ("glass_blur", 1, 2, n, 80, 0)
    assert r.acc_from == 0.4 and r.acc_to == 0.8 and r.p_bonferroni == min(1.0, 4 * r.p) and r.p < 1e-20
    # a gap between severities is not a consecutive pair
    assert non_monotone_severities(Ctx(), runs[runs.severity != 2]).empty
