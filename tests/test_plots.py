"""Figures: real PNGs from a realistic fake history (13 groups) and degenerate ones; the elements a
reader relies on are present (clean band, ceilings, error bars, hollow unconverged markers, one legend
entry per epoch, the target class named and marked) and legends sit outside the data."""

import math

import numpy as np
import pytest
from matplotlib.collections import LineCollection, PolyCollection
from matplotlib.backends.backend_agg import FigureCanvasAgg

from ibjax import plots

PNG = b"\x89PNG\r\n\x1a\n"
NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
TARGET_GROUPS = ("target", "target_backdoor", "target_clean", "target_sample")
GROUPS = TARGET_GROUPS + tuple(f"class_{k}" for k in range(1, 10))
CAPS = {"xt": math.log(513), "ty": math.log(257)}


def check_png(path):
    with open(path, "rb") as f:
        data = f.read()
    assert data[:8] == PNG
    assert len(data) > 5000


def make_mi(epochs=(1, 4, 8), heldout=True, se=True, unconverged=(("xt", "target", 8),), seed=0):
    """A realistic history: I(X;T) near its ceiling log(513), I(T;Y_pred) far below log(257)."""
    rng = np.random.default_rng(seed)
    offset = {"target": 0.3, "target_backdoor": -0.5, "target_clean": 0.1, "target_sample": 0.2}
    mi = {}
    for q in ("xt", "ty"):
        mi[q] = {}
        for g in GROUPS:
            o = offset.get(g, 0.1 * rng.normal())
            mi[q][g] = {}
            for e in epochs:
                base = (5.4 + 0.05 * e + o) if q == "xt" else (0.5 + 0.15 * e + 0.3 * o)
                entry = {"trajectory": [base] * 5, "train": float(min(base, CAPS[q])), "cap": CAPS[q],
                         "heldout": float(base - 0.3) if heldout else None}
                if se:
                    entry.update(heldout_se=0.04, train_se=0.01, converged=(q, g, e) not in unconverged)
                mi[q][g][str(e)] = entry
    return mi


def records(n=6, k=4):
    return [
        {"epoch": e, "train_accuracy": 0.5 + 0.07 * e, "test_accuracy": 0.45 + 0.06 * e, "asr": min(1.0, 0.2 * e),
         "lr": 0.1 * 0.5 ** (e // 3), "class_loss": [2.0 / (e + c + 1) for c in range(k)]}
        for e in range(1, n + 1)
    ]


def by_gid(fig, gid):
    return [a for ax in fig.axes for a in ax.get_children() if a.get_gid() == gid]


def legend_texts(fig):
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    return [t.get_text() for leg in legends for t in leg.get_texts()]


def overlaps(a, b):
    return not (a.x1 <= b.x0 or b.x1 <= a.x0 or a.y1 <= b.y0 or b.y1 <= a.y0)


def assert_legends_outside_axes(fig):
    FigureCanvasAgg(fig).draw()
    renderer = fig.canvas.get_renderer()
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    assert legends
    for leg in legends:
        box = leg.get_window_extent(renderer)
        for ax in fig.axes:
            assert not overlaps(box, ax.get_window_extent(renderer)), "legend over the axes"
            for lab in ax.get_xticklabels():
                if lab.get_text():
                    assert not overlaps(box, lab.get_window_extent(renderer)), "legend over a tick label"


# ---------------------------------------------------------------------------------------------- reading


def test_mi_points_fall_back_and_carry_se_convergence_and_cap():
    hist = {"1": {"train": 1.0, "heldout": 0.5, "heldout_se": 0.1, "train_se": 0.01, "converged": True, "cap": 6.2},
            "5": {"train": 2.0, "heldout": None, "heldout_se": None, "train_se": 0.02, "converged": False},
            "10": {"train": 3.0, "heldout": float("nan")},
            "20": {"train": None, "heldout": None}}
    p = plots.mi_points(hist, "heldout")
    np.testing.assert_array_equal(p["epochs"], [1, 5, 10, 20])
    np.testing.assert_array_equal(p["values"][:3], [0.5, 2.0, 3.0])
    assert math.isnan(p["values"][3])
    np.testing.assert_array_equal(p["fell_back"], [False, True, True, False])
    np.testing.assert_allclose(p["se"][:2], [0.1, 0.02])  # the SE of the read shown (train where it fell back)
    assert np.isnan(p["se"][2:]).all()  # old entries without SE keys
    np.testing.assert_array_equal(p["unconverged"], [False, True, False, False])  # None/absent = not flagged
    assert p["cap"][0] == 6.2 and np.isnan(p["cap"][1:]).all()
    ep, v, fb = plots.mi_series(hist, "train")
    np.testing.assert_array_equal(v[:3], [1.0, 2.0, 3.0])
    assert not fb.any()


def test_group_styles():
    assert plots.group_style("target_backdoor")["color"] == "tab:red"
    assert plots.group_style("target_clean")["color"] == "tab:blue"
    assert plots.group_style("target_sample")["color"] == "tab:green"
    assert plots.group_style("target")["lw"] > plots.group_style("class_3")["lw"]


# ---------------------------------------------------------------------------------------------- MI figures


def test_mi_curves_show_clean_band_ceiling_error_bars_and_unconverged_marks():
    mi = make_mi()
    fig = plots.mi_curves_figure(mi, class_names=NAMES, target=0)
    bands = by_gid(fig, "clean-band")
    assert len(bands) == 2 and all(isinstance(b, PolyCollection) for b in bands)
    # The band spans the clean classes' range and the dashed line is their mean.
    clean_xt = np.array([[mi["xt"][f"class_{k}"][str(e)]["heldout"] for e in (1, 4, 8)] for k in range(1, 10)])
    ys = bands[0].get_paths()[0].vertices[:, 1]
    assert ys.min() == pytest.approx(clean_xt.min()) and ys.max() == pytest.approx(clean_xt.max())
    mean_line = by_gid(fig, "clean-mean")[0]
    np.testing.assert_allclose(mean_line.get_ydata(), clean_xt.mean(0))
    # One line per target group, none per clean class.
    assert sorted(a.get_gid() for a in fig.axes[0].get_lines() if (a.get_gid() or "").startswith("group-")) == \
        sorted(f"group-{g}" for g in TARGET_GROUPS)
    # I(X;T) reaches its ceiling: a line at log(513); I(T;Y) is far below log(257): named, not drawn.
    cap = by_gid(fig, "cap-xt")
    assert len(cap) == 1 and cap[0].get_ydata()[0] == pytest.approx(CAPS["xt"])
    assert not by_gid(fig, "cap-ty")
    texts = legend_texts(fig)
    assert "I(X;T) ceiling 6.24 nats" in texts and "I(T;Y_pred) ceiling 5.55 nats (above the plotted values)" in texts
    assert by_gid(fig, "errorbar") and "bars: +-1 standard error" in texts
    assert len(by_gid(fig, "unconverged")) == 1 and "hollow: critic not converged" in texts
    assert "clean classes (9): range" in texts and "target class, backdoor samples" in texts
    assert "airplane" in fig.get_suptitle() and "held-out read" in fig.get_suptitle()
    assert_legends_outside_axes(fig)


def test_mi_curves_of_an_old_history_without_se_or_convergence():
    fig = plots.mi_curves_figure(make_mi(se=False))
    assert not by_gid(fig, "errorbar") and not by_gid(fig, "unconverged")
    texts = legend_texts(fig)
    assert not any("standard error" in t or "hollow" in t for t in texts)
    assert len(by_gid(fig, "clean-band")) == 2


def test_information_plane_has_one_legend_entry_and_colour_per_epoch():
    epochs = (1, 5, 10, 20, 40, 60, 80, 100, 120)
    fig = plots.information_plane_figure(make_mi(epochs=epochs, unconverged=(("ty", "target_clean", 40),)),
                                         class_names=NAMES, target=0)
    assert len(fig.axes) == 1  # no continuous colour bar
    texts = legend_texts(fig)
    assert [t for t in texts if t.startswith("epoch ")] == [f"epoch {e}" for e in epochs]
    colours = [tuple(h.get_color()) for leg in fig.legends for h in leg.legend_handles
               if h.get_label().startswith("epoch ")]
    assert len(set(colours)) == len(epochs)
    assert by_gid(fig, "clean-range") and by_gid(fig, "clean-mean") and by_gid(fig, "cap-xt")
    assert by_gid(fig, "unconverged") and by_gid(fig, "errorbar")
    assert "hollow: critic not converged" in texts and "clean classes (9): mean" in texts
    assert "airplane" in fig.axes[0].get_title()
    assert_legends_outside_axes(fig)


@pytest.mark.parametrize("case", ["full", "single_epoch", "no_heldout", "some_heldout_nan"])
def test_mi_figures_write_pngs(tmp_path, case):
    if case == "full":
        mi = make_mi()
    elif case == "single_epoch":
        mi = make_mi(epochs=(5,))
    elif case == "no_heldout":
        mi = make_mi(heldout=False)
    else:
        mi = make_mi()
        mi["xt"]["target"]["4"]["heldout"] = float("nan")
    p = plots.plot_mi_curves(mi, tmp_path / case / "curves.png", show_train=(case == "full"), class_names=NAMES, target=0)
    assert p == str(tmp_path / case / "curves.png")
    check_png(p)
    check_png(plots.plot_information_plane(mi, tmp_path / case / "plane.png"))
    check_png(plots.plot_mi_curves(mi, tmp_path / case / "curves_train.png", read="train"))
    if case in ("no_heldout", "some_heldout_nan"):
        texts = legend_texts(plots.mi_curves_figure(mi))
        assert any("train read shown" in t for t in texts)


def test_online_quantities(tmp_path):
    mi = make_mi()
    online = {"xt_online": mi["xt"], "ty_online": mi["ty"]}
    fig = plots.mi_curves_figure(online, quantities=("xt_online", "ty_online"))
    assert fig.axes[0].get_title() == "I(X;T) online"
    check_png(plots.plot_mi_curves(online, tmp_path / "online.png", quantities=("xt_online", "ty_online")))


# ---------------------------------------------------------------------------------------------- other figures


def test_training_curves_and_class_loss(tmp_path):
    check_png(plots.plot_training_curves(records(), tmp_path / "train.png"))
    check_png(plots.plot_class_loss(records(), tmp_path / "loss.png", target=0))
    one = records(1)
    one[0]["asr"] = None
    del one[0]["lr"]
    check_png(plots.plot_training_curves(one, tmp_path / "train1.png"))
    check_png(plots.plot_class_loss(records(1, 10), tmp_path / "loss1.png", target=3, class_names=NAMES))
    texts = legend_texts(plots.class_loss_figure(records(2, 10), target=3, class_names=NAMES))
    assert "cat (target)" in texts and "airplane" in texts and not any(t.startswith("class ") for t in texts)


def test_embedding_names_classes_and_marks_the_target(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 300)
    poisoned = rng.random(300) < 0.1
    labels[poisoned] = 0
    kept = np.flatnonzero(labels == 3)[:4]
    poisoned[kept] = True  # triggered samples that kept their label
    emb = rng.normal(size=(300, 2)) + labels[:, None]
    fig = plots.embedding_figure(emb, labels, poisoned, "T", class_names=NAMES, target=0)
    texts = legend_texts(fig)
    n_clean_target = int(((labels == 0) & ~poisoned).sum())
    assert f"airplane (target), clean ({n_clean_target})" in texts
    assert f"backdoor labelled airplane ({int((poisoned & (labels == 0)).sum())})" in texts
    assert "triggered, true label kept (4)" in texts
    assert {"automobile", "bird", "cat", "deer"} <= set(texts) and not any(t.startswith("class ") for t in texts)
    assert by_gid(fig, "target-clean") and by_gid(fig, "backdoor")
    assert_legends_outside_axes(fig)
    check_png(plots.plot_embedding(emb, labels, poisoned, tmp_path / "emb.png", "T at epoch 5", NAMES, 0))
    check_png(plots.plot_embedding(emb[:1], labels[:1], poisoned[:1], tmp_path / "emb1.png", "one point"))
    assert "class 1" in legend_texts(plots.embedding_figure(emb, labels, poisoned))  # no names: indices
    with pytest.raises(ValueError):
        plots.plot_embedding(emb, labels[:10], poisoned, tmp_path / "bad.png", "")


def test_stealth_comparison_error_bars_seed_points_and_legend_clear_of_labels(tmp_path):
    comps = dict(zip(plots.STEALTH_COMPONENTS, (0.1, 0.2, 0.05, 0.15)))
    rows = [
        {"attack": "badnets", "total": 0.5, **comps, "total_low": 0.4, "total_high": 0.6,
         "interval": "95% CI over 3 seeds", "points": [0.45, 0.5, 0.55]},
        {"attack": "blend", "total": 0.9, "components": {k: 1.5 * v for k, v in comps.items()},
         "total_low": 0.8, "total_high": 1.0, "interval": "+-1.96 SE (estimator, one seed)"},
        {"label": "wanet (P2)", "total": 0.3},
    ]
    fig = plots.stealth_comparison_figure(rows)
    bars = [a for a in by_gid(fig, "errorbar") if isinstance(a, LineCollection)]  # caps carry the gid too
    assert len(bars) == 2 and len(by_gid(fig, "seed-points")) == 1
    texts = legend_texts(fig)
    assert "95% CI over 3 seeds" in texts and "+-1.96 SE (estimator, one seed)" in texts and "single seeds" in texts
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["badnets", "blend", "wanet (P2)"]
    assert_legends_outside_axes(fig)
    check_png(plots.plot_stealth_comparison(rows, tmp_path / "stealth.png"))
    check_png(plots.plot_stealth_comparison(rows[:1], tmp_path / "stealth1.png"))
