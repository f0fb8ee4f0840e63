"""The MI-dynamics monitor (ibjax.defenses.monitor): deviations re-derived in NumPy, a planted deviant
class found, exchangeable histories left calm, the latency rule and the defender's view of a history."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ibjax.defenses.monitor import (
    DEFENDER_TARGET_GROUP,
    CleanBaseline,
    auroc_by_epoch,
    class_deviation,
    clean_baseline,
    defender_view,
    detection_latency,
    monitor_scores,
)
from ibjax.records import MIHistory


def _loo(v, robust):
    out = np.empty_like(v)
    for k in range(len(v)):
        o = np.delete(v, k)
        if robust:
            c = np.median(o)
            s = 1.4826 * np.median(np.abs(o - c))
        else:
            c, s = o.mean(), o.std(ddof=1)
        out[k] = (v[k] - c) / s
    return out


@pytest.mark.parametrize("statistic", ["z", "robust"])
def test_class_deviation_is_the_leave_one_out_score(statistic):
    v = np.random.default_rng(0).normal(size=(3, 7)).astype(np.float32)
    got = np.asarray(class_deviation(v, statistic))
    want = np.stack([_loo(row.astype(np.float64), statistic == "robust") for row in v])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_class_deviation_leaves_nan_classes_out_of_the_others():
    v = np.array([1.0, 2.0, 3.0, np.nan, 10.0], np.float32)
    got = np.asarray(class_deviation(v))
    assert np.isnan(got[3])
    np.testing.assert_allclose(got[[0, 1, 2, 4]], _loo(v[[0, 1, 2, 4]].astype(np.float64), False), rtol=1e-4)


def _population(rng, m=24, k=10, e=6, shift=0.6, start=2, deviant=3):
    """Histories f[M, 2, K, E] with the first half's class ``deviant`` raised by ``shift`` nats from
    epoch index ``start`` on; every class has its own fixed offset (as MNIST's digits do)."""
    offsets = rng.normal(0.0, 0.05, (2, k, 1))
    h = 1.5 + offsets + rng.normal(0.0, 0.1, (m, 2, k, e))
    pos = np.arange(m) < m // 2
    h[pos, :, deviant, start:] += shift
    return h.astype(np.float32), pos


@pytest.mark.parametrize("accumulate", ["rms", "mean", "last"])
def test_the_monitor_flags_a_planted_deviant_class_and_names_it(accumulate):
    h, pos = _population(np.random.default_rng(1))
    res = jax.vmap(lambda x: monitor_scores(x, accumulate=accumulate))(h)
    a = np.asarray(auroc_by_epoch(res.score, pos))
    assert a[:2].max() < 0.85  # before the departure: no better than the noise allows
    assert a[-1] >= 0.95
    assert np.mean(np.asarray(res.target)[pos, -1] == 3) >= 0.9


def test_the_monitor_stays_calm_on_exchangeable_histories():
    rng = np.random.default_rng(2)
    h = (1.5 + rng.normal(0.0, 0.1, (200, 2, 10, 5))).astype(np.float32)
    res = jax.vmap(monitor_scores)(h)
    # two halves of one exchangeable population: nothing to separate, and no class singled out
    a = np.asarray(auroc_by_epoch(res.score, np.arange(200) < 100))
    assert np.all(np.abs(a - 0.5) < 0.15)
    counts = np.bincount(np.asarray(res.target)[:, -1], minlength=10)
    assert counts.max() <= 40  # 20 expected per class
    # and a calm score: a deviant class departs by several of these
    assert float(np.median(np.asarray(res.score)[:, -1])) < 3.0


def test_a_baseline_removes_a_class_that_differs_in_every_network():
    rng = np.random.default_rng(3)
    h, pos = _population(rng, shift=0.4)
    h[:, 1, 1, :] -= 1.0  # class 1 far below the others in every network, clean or not
    blind = jax.vmap(monitor_scores)(h)
    assert np.mean(np.asarray(blind.target)[:, -1] == 1) > 0.9  # the blind monitor sees class 1
    base = np.broadcast_to(h[~pos].mean(axis=0), h.shape)
    cal = jax.vmap(monitor_scores)(h, base)
    assert float(auroc_by_epoch(cal.score, pos)[-1]) >= 0.95
    assert np.mean(np.asarray(cal.target)[pos, -1] == 3) >= 0.9


@pytest.mark.parametrize("accumulate", ["mean", "last"])
def test_clean_baseline_is_the_clean_mean_and_the_pooled_scatter_of_the_residual(accumulate):
    c = np.random.default_rng(5).normal(1.0, 0.3, (6, 2, 5, 4))
    got = clean_baseline(c.astype(np.float32), accumulate)
    mean = c.mean(axis=0)
    r = c - mean
    if accumulate == "mean":
        r = np.cumsum(r, axis=-1) / np.arange(1, 5)
    r = r - np.median(r, axis=2, keepdims=True)
    scale = np.sqrt(r.var(axis=0, ddof=1).mean(axis=1))  # [Q, E]
    np.testing.assert_allclose(np.asarray(got.mean), mean, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(got.scale), scale, rtol=1e-4)
    h = c[0].astype(np.float32)
    z = r[0] / scale[:, None, :]
    want = np.sqrt(np.mean(z**2, axis=0)).max(axis=0)
    res = monitor_scores(h, got, statistic="clean", accumulate=accumulate)
    np.testing.assert_allclose(np.asarray(res.score), want, rtol=1e-4)


def test_the_clean_statistic_reads_through_each_network_s_own_level():
    # every network's MI moves as a whole (seed to seed) by more than the deviant departs; the clean
    # networks' scatter of a class's residual, that shift taken out, still finds it
    rng = np.random.default_rng(6)
    h, pos = _population(rng, m=40, shift=0.25, start=1)
    h += rng.normal(0.0, 0.5, (40, 2, 1, 1)).astype(np.float32)
    fits = [clean_baseline(h[np.flatnonzero(~pos & (np.arange(40) != i))]) for i in range(40)]
    base = jax.tree.map(lambda *x: jnp.stack(x), *fits)
    res = jax.vmap(lambda x, b: monitor_scores(x, b, statistic="clean"))(h, base)
    assert float(auroc_by_epoch(res.score, pos)[-1]) >= 0.95
    assert np.mean(np.asarray(res.target)[pos, -1] == 3) >= 0.9
    # the same residual with the network's shift left in: the shift, not the class, decides
    r = np.cumsum(h - np.asarray(base.mean), axis=-1) / np.arange(1, h.shape[-1] + 1)
    naive = np.sqrt(np.mean(r**2, axis=1)).max(axis=1)
    assert float(auroc_by_epoch(naive, pos)[-1]) < 0.8


def test_monitor_scores_use_only_the_epochs_read_so_far_and_differentiate():
    h, _ = _population(np.random.default_rng(4), m=2)
    full = monitor_scores(h[0])
    for e in range(1, h.shape[-1] + 1):
        part = monitor_scores(h[0, :, :, :e])
        np.testing.assert_allclose(np.asarray(part.score), np.asarray(full.score)[:e], rtol=1e-5)
    g = jax.grad(lambda x: monitor_scores(x).score[-1])(jnp.asarray(h[0]))
    assert np.all(np.isfinite(np.asarray(g))) and float(jnp.abs(g).sum()) > 0


def test_monitor_inputs_are_checked():
    with pytest.raises(ValueError, match=">= 3 classes"):
        monitor_scores(np.zeros((2, 2, 3)))
    with pytest.raises(ValueError, match="statistic"):
        monitor_scores(np.zeros((2, 5, 3)), statistic="mad")
    with pytest.raises(ValueError, match="accumulate"):
        monitor_scores(np.zeros((2, 5, 3)), accumulate="max")
    with pytest.raises(ValueError, match=r"f\[Q, K, E\]"):
        monitor_scores(np.zeros((5, 3)))
    with pytest.raises(ValueError, match="needs a CleanBaseline"):
        monitor_scores(np.zeros((2, 5, 3)), np.zeros((2, 5, 3)), statistic="clean")
    fit = clean_baseline(np.random.default_rng(0).normal(size=(3, 2, 5, 3)), "last")
    assert isinstance(fit, CleanBaseline) and fit.scale.shape == (2, 3)
    with pytest.raises(ValueError, match="accumulate='mean'"):
        monitor_scores(np.zeros((2, 5, 3)), fit, statistic="clean")
    with pytest.raises(ValueError, match="N >= 2"):
        clean_baseline(np.zeros((1, 2, 5, 3)))


def test_detection_latency_is_the_first_epoch_from_which_the_auroc_holds():
    epochs = [1, 2, 4, 6, 8]
    assert detection_latency([0.5, 0.95, 0.8, 0.92, 0.99], epochs) == 6  # a dip resets it
    assert detection_latency([0.91, 0.95, 0.9, 0.92, 0.99], epochs) == 1
    assert detection_latency([0.5, 0.6, 0.7, 0.8, 0.89], epochs) is None
    assert detection_latency([0.5, np.nan, 0.95, 0.96, 0.97], epochs) == 4
    assert detection_latency([0.5, 0.8, 0.85, 0.86, 0.87], epochs, level=0.85) == 4


def _history(values, groups, epochs):
    return MIHistory.from_json({g: {str(e): {"heldout": float(values[i, j]), "train": 0.0}
                                    for j, e in enumerate(epochs)} for i, g in enumerate(groups)})


def test_defender_view_reads_the_size_matched_target_group_and_every_clean_class():
    groups = ["target", "target_backdoor", "target_clean", DEFENDER_TARGET_GROUP, "class_0", "class_2", "class_3"]
    rng = np.random.default_rng(5)
    xt, ty = rng.normal(size=(2, len(groups), 3))
    mi = {"xt": _history(xt, groups, [1, 4, 8]), "ty": _history(ty, groups, [1, 4, 8])}
    values, epochs = defender_view(mi, target=1, num_classes=4)
    assert epochs == (1, 4, 8) and values.shape == (2, 4, 3)
    order = [groups.index(g) for g in ("class_0", DEFENDER_TARGET_GROUP, "class_2", "class_3")]
    np.testing.assert_allclose(values[0], xt[order])
    np.testing.assert_allclose(values[1], ty[order])
    with pytest.raises(ValueError, match="no group 'class_4'"):
        defender_view(mi, target=1, num_classes=5)
    with pytest.raises(ValueError, match="no quantity 'xt_online'"):
        defender_view(mi, target=1, num_classes=4, quantities=("xt_online", "ty_online"))
