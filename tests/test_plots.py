"""Every figure writes a real PNG from small constructed inputs, including degenerate ones."""

import math

import numpy as np
import pytest

from ibjax import plots

PNG = b"\x89PNG\r\n\x1a\n"
GROUPS = ("target", "target_backdoor", "target_clean", "target_sample", "class_1", "class_2", "class_3")


def check_png(path):
    with open(path, "rb") as f:
        data = f.read()
    assert data[:8] == PNG
    assert len(data) > 5000


def make_mi(epochs=(1, 5, 10, 20, 40), heldout=lambda q, g, e: 0.1 * e):
    rng = np.random.default_rng(0)
    mi = {}
    for q in ("xt", "ty"):
        mi[q] = {}
        for i, g in enumerate(GROUPS):
            mi[q][g] = {}
            for e in epochs:
                tr = float(np.log1p(e) * (1 + 0.1 * i) + 0.05 * rng.normal())
                mi[q][g][str(e)] = {"train": tr, "heldout": heldout(q, g, e) if heldout else None, "trajectory": [tr] * 3}
    return mi


def records(n=6, k=4):
    return [
        {"epoch": e, "train_accuracy": 0.5 + 0.07 * e, "test_accuracy": 0.45 + 0.06 * e, "asr": min(1.0, 0.2 * e),
         "lr": 0.1 * 0.5 ** (e // 3), "class_loss": [2.0 / (e + c + 1) for c in range(k)]}
        for e in range(1, n + 1)
    ]


def test_mi_series_falls_back_to_train():
    hist = {"1": {"train": 1.0, "heldout": 0.5}, "5": {"train": 2.0, "heldout": None},
            "10": {"train": 3.0, "heldout": float("nan")}, "20": {"train": None, "heldout": None}}
    ep, v, fb = plots.mi_series(hist, "heldout")
    np.testing.assert_array_equal(ep, [1, 5, 10, 20])
    np.testing.assert_array_equal(v[:3], [0.5, 2.0, 3.0])
    assert math.isnan(v[3])
    np.testing.assert_array_equal(fb, [False, True, True, False])
    _, v, fb = plots.mi_series(hist, "train")
    np.testing.assert_array_equal(v[:3], [1.0, 2.0, 3.0])
    assert not fb.any()


def test_group_styles():
    assert plots.group_style("target_backdoor")["color"] == "tab:red"
    assert plots.group_style("target_clean")["color"] == "tab:blue"
    assert plots.group_style("target_sample")["color"] == "tab:green"
    assert plots.group_style("target")["lw"] > plots.group_style("class_3")["lw"]


@pytest.mark.parametrize("case", ["full", "single_epoch", "no_heldout", "some_heldout_nan"])
def test_mi_figures(tmp_path, case):
    if case == "full":
        mi = make_mi()
    elif case == "single_epoch":
        mi = make_mi(epochs=(5,))
    elif case == "no_heldout":
        mi = make_mi(heldout=None)
    else:
        mi = make_mi(heldout=lambda q, g, e: float("nan") if e == 10 and g == "target" else 0.1 * e)
    p = plots.plot_mi_curves(mi, tmp_path / case / "curves.png", show_train=(case == "full"))
    assert p == str(tmp_path / case / "curves.png")
    check_png(p)
    check_png(plots.plot_information_plane(mi, tmp_path / case / "plane.png"))
    check_png(plots.plot_mi_curves(mi, tmp_path / case / "curves_train.png", read="train"))


def test_training_curves_and_class_loss(tmp_path):
    check_png(plots.plot_training_curves(records(), tmp_path / "train.png"))
    check_png(plots.plot_class_loss(records(), tmp_path / "loss.png", target=0))
    one = records(1)
    one[0]["asr"] = None
    del one[0]["lr"]
    check_png(plots.plot_training_curves(one, tmp_path / "train1.png"))
    check_png(plots.plot_class_loss(records(1, 10), tmp_path / "loss1.png", target=3))


def test_embedding(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 300)
    poisoned = rng.random(300) < 0.1
    emb = rng.normal(size=(300, 2)) + labels[:, None]
    check_png(plots.plot_embedding(emb, labels, poisoned, tmp_path / "emb.png", "T at epoch 5"))
    check_png(plots.plot_embedding(emb[:1], labels[:1], poisoned[:1], tmp_path / "emb1.png", "one point"))
    with pytest.raises(ValueError):
        plots.plot_embedding(emb, labels[:10], poisoned, tmp_path / "bad.png", "")


def test_stealth_comparison(tmp_path):
    comps = dict(zip(plots.STEALTH_COMPONENTS, (0.1, 0.2, 0.05, 0.15)))
    rows = [
        {"attack": "badnets", "total": 0.5, **comps},
        {"attack": "blend", "total": 0.9, "components": {k: 1.5 * v for k, v in comps.items()}},
        {"attack": "wanet", "total": 0.3},
    ]
    check_png(plots.plot_stealth_comparison(rows, tmp_path / "stealth.png"))
    check_png(plots.plot_stealth_comparison(rows[:1], tmp_path / "stealth1.png"))
