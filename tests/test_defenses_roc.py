"""ibjax.defenses.roc: AUROC (against scikit-learn and known cases), its interval, rates at a threshold."""

import jax
import numpy as np
import pytest

from ibjax.defenses import roc


def test_auroc_equals_scikit_learn_with_ties_and_masks():
    sk = pytest.importorskip("sklearn.metrics")
    r = np.random.default_rng(0)
    for _ in range(5):
        s = r.normal(size=200).round(1)  # many ties
        y = r.random(200) < 0.3
        assert float(roc.auroc(s, y)) == pytest.approx(sk.roc_auc_score(y, s), abs=1e-6)
        valid = r.random(200) < 0.7
        assert float(roc.auroc(s, y, valid)) == pytest.approx(sk.roc_auc_score(y[valid], s[valid]), abs=1e-6)


def test_auroc_known_cases():
    y = np.array([0, 0, 1, 1], bool)
    assert float(roc.auroc(np.array([0.1, 0.2, 0.8, 0.9]), y)) == 1.0
    assert float(roc.auroc(np.array([0.9, 0.8, 0.2, 0.1]), y)) == 0.0
    assert float(roc.auroc(np.ones(4), y)) == 0.5
    assert np.isnan(float(roc.auroc(np.ones(4), np.ones(4, bool))))


def test_auroc_vmaps_over_members():
    r = np.random.default_rng(1)
    s, y = r.normal(size=(3, 50)), r.random((3, 50)) < 0.5
    batched = jax.vmap(roc.auroc)(s, y)
    for i in range(3):
        assert float(batched[i]) == pytest.approx(float(roc.auroc(s[i], y[i])), abs=1e-6)


def test_bootstrap_interval_covers_the_estimate_and_narrows_with_size():
    r = np.random.default_rng(2)
    widths = []
    for n in (40, 400):
        y = np.arange(n) < n // 2
        s = r.normal(size=n) + y
        a, lo, hi = roc.auroc_interval(jax.random.PRNGKey(0), s, y, resamples=400)
        assert float(lo) <= float(a) <= float(hi)
        widths.append(float(hi - lo))
    assert widths[1] < widths[0] / 2
    # perfectly separated classes: every stratified resample is too
    y = np.arange(10) < 5
    a, lo, hi = roc.auroc_interval(jax.random.PRNGKey(1), y.astype(float), y, resamples=100)
    assert (float(a), float(lo), float(hi)) == (1.0, 1.0, 1.0)


def test_threshold_set_on_negatives_bounds_their_false_positive_rate():
    neg = np.arange(100, dtype=float)
    t = roc.threshold_at_fpr(neg, 0.05)
    assert float(np.mean(neg > float(t))) == pytest.approx(0.05)
    scores = np.r_[neg, np.full(10, 200.0)]
    labels = np.r_[np.zeros(100, bool), np.ones(10, bool)]
    tpr, fpr = roc.detection_rates(scores, labels, t)
    assert (float(tpr), float(fpr)) == (1.0, pytest.approx(0.05))


def test_roc_curve_matches_scikit_learn():
    sk = pytest.importorskip("sklearn.metrics")
    r = np.random.default_rng(3)
    s, y = r.normal(size=100).round(1), r.random(100) < 0.4
    fpr, tpr = roc.roc_curve(s, y)
    f2, t2, _ = sk.roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, f2, atol=1e-12)
    np.testing.assert_allclose(tpr, t2, atol=1e-12)
    assert np.trapezoid(tpr, fpr) == pytest.approx(float(roc.auroc(s, y)), abs=1e-6)
