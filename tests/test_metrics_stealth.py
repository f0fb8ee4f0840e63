"""ibjax.metrics.stealth: min-max normalisation, the stealth distance (both normalisations, the
authors' arithmetic re-derived), stealthiness of a history, its epochs and its error bars."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from ibjax import metrics
from metrics_histories import (
    EPOCHS,
    NORMS,
    authors_distance,
    authors_distance_batched,
    clean_trajs,
    history,
    make_run,
    se_like,
)

# ---------------------------------------------------------------------------------------------- helpers


def test_minmax_normalise_range_and_constant():
    x = jnp.array([[1.0, 3.0], [2.0, 5.0]])
    np.testing.assert_allclose(metrics.minmax_normalise(x), [[0.0, 0.5], [0.25, 1.0]])
    np.testing.assert_allclose(metrics.minmax_normalise(x, axis=1), [[0.0, 1.0], [0.0, 1.0]])
    np.testing.assert_allclose(metrics.minmax_normalise(x, eps=1.0), [[0.0, 0.4], [0.2, 0.8]])
    for eps in (0.0, 1e-8):
        c = metrics.minmax_normalise(jnp.full((3, 4), 7.0), eps=eps)
        assert not np.isnan(np.asarray(c)).any()
        np.testing.assert_array_equal(c, 0.0)


def test_select_epochs_nearest_with_ties_to_earlier():
    assert metrics.select_epochs([1, 5, 10, 20], (5, 40, 100)) == [5, 20]  # distinct: 20 is not counted twice
    assert metrics.select_epochs(["0", "4", "8"], (2, 6, 7)) == [0, 4, 8]
    with pytest.raises(ValueError):
        metrics.select_epochs([], (5,))


# ---------------------------------------------------------------------------------------------- stealth


def test_stealth_distance_hand_computed_both_normalisations():
    target = jnp.array([0.0, 4.0])
    clean = jnp.array([[2.0, 2.0], [1.0, 3.0]])
    # joint: min 0, max 4 -> e0: target 0, clean 0.5 / 0.25 -> |-0.375|; e1: 1 vs 0.5 / 0.75 -> 0.375.
    assert float(metrics.stealth_distance(target, clean, "joint")) == pytest.approx(0.375)
    # per epoch: e0 over {0, 2, 1}: 0 vs 1 / 0.5 -> 0.75; e1 over {4, 2, 3}: 1 vs 0 / 0.5 -> 0.75.
    assert float(metrics.stealth_distance(target, clean, "per_epoch")) == pytest.approx(0.75)
    assert float(metrics.stealth_distance(target, clean)) == pytest.approx(0.75)  # the authors' form is the default
    # Differences of opposite sign across classes cancel inside the mean, not after the abs.
    for norm in NORMS:
        assert float(metrics.stealth_distance(jnp.array([1.0]), jnp.array([[0.0], [2.0]]), norm)) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="normalise"):
        metrics.stealth_distance(target, clean, "global")


def test_stealth_distance_reproduces_the_authors_arithmetic():
    rng = np.random.default_rng(7)
    for e, c in ((1, 2), (3, 9), (5, 3)):  # a few shapes: each one compiles once
        scale = 10.0 ** rng.uniform(-1, 1, size=(100, 1, 1))
        target = scale[:, 0] * rng.normal(size=(100, e))
        clean = scale * rng.normal(size=(100, c, e)) + rng.normal(size=(100, 1, 1))
        got = np.asarray(jax.vmap(metrics.stealth_distance)(target, clean))
        want = [authors_distance([[v] for v in t], [[[v] for v in row] for row in cl], range(e))
                for t, cl in zip(target, clean)]
        np.testing.assert_allclose(got, want, atol=1e-6)
        np.testing.assert_allclose(got, authors_distance_batched(target, clean), atol=1e-6)
        assert float(metrics.stealth_distance(target[0], clean[0])) == pytest.approx(want[0], abs=1e-6)


def test_stealthiness_train_read_reproduces_the_authors_total_on_random_histories():
    """The whole pipeline, from estimator trajectories to the total, against the re-derivation."""
    rng = np.random.default_rng(8)
    selected = (5, 40, 100)
    idx = [EPOCHS.index(e) for e in selected]
    worst = 0.0
    for _ in range(40):
        classes = [f"class_{k}" for k in range(1, 10)]
        trajs = {}
        for q in ("xt", "ty"):
            level = {g: rng.uniform(0.5, 3.0) + np.cumsum(rng.uniform(0, 0.3, size=len(EPOCHS)))
                     for g in ["target", "target_clean", *classes]}
            trajs[q] = {g: [lv + 0.1 * rng.normal(size=rng.integers(6, 12)) for lv in lvl] for g, lvl in level.items()}
        mi = {q: {g: {str(e): {"trajectory": tr[j].tolist(), "train": float(np.mean(tr[j][-5:])), "heldout": None}
                      for j, e in enumerate(EPOCHS)} for g, tr in groups.items()} for q, groups in trajs.items()}
        res = metrics.stealthiness(mi, selected, read="train")
        total = 0.0
        for q in ("xt", "ty"):
            for g in ("target_clean", "target"):
                d = authors_distance(trajs[q][g], [trajs[q][c] for c in classes], idx)
                assert res["components"][f"{q}/{g}"] == pytest.approx(d, abs=1e-6)
                total += d
        worst = max(worst, abs(res["total"] - total))
    assert worst < 1e-6
    assert res["read"] == "train" and res["normalise"] == "per_epoch" and "authors" in res["description"]


def test_per_epoch_and_joint_disagree_on_rankings():
    """The two normalisations are different metrics: on random histories they order some pairs differently."""
    rng = np.random.default_rng(9)
    t = rng.normal(size=(60, 3))
    cl = rng.normal(size=(60, 9, 3)) + np.linspace(0, 2, 3)
    per = np.asarray(jax.vmap(lambda a, b: metrics.stealth_distance(a, b, "per_epoch"))(t, cl))
    joint = np.asarray(jax.vmap(lambda a, b: metrics.stealth_distance(a, b, "joint"))(t, cl))
    order = np.sign(per[:, None] - per[None, :]) != np.sign(joint[:, None] - joint[None, :])
    assert order.any()
    assert not np.allclose(per, joint, atol=1e-3)


@pytest.mark.parametrize("norm", NORMS)
def test_stealth_distance_identical_is_zero_and_separation_increases(norm):
    rng = np.random.default_rng(0)
    clean = np.stack(list(clean_trajs(rng).values()))
    mean_clean = clean.mean(0)
    assert float(metrics.stealth_distance(mean_clean, clean, norm)) == pytest.approx(0.0, abs=1e-6)
    same = np.tile(mean_clean, (4, 1))
    assert float(metrics.stealth_distance(mean_clean, same, norm)) == pytest.approx(0.0, abs=1e-7)
    prev = 0.0
    for shift in (0.2, 0.5, 1.0, 2.0):
        d = float(metrics.stealth_distance(mean_clean + shift * np.linspace(0, 1, len(EPOCHS)), clean, norm))
        assert d > prev
        prev = d


@pytest.mark.parametrize("norm", NORMS)
def test_stealth_distance_affine_invariant_and_usable_under_jit_vmap_grad(norm):
    rng = np.random.default_rng(1)
    target = rng.normal(size=5)
    clean = rng.normal(size=(4, 5))
    d = float(metrics.stealth_distance(target, clean, norm))
    # rel 2e-4: at an offset of 10, float32 keeps about 5 significant digits of differences of 0.01.
    for a, b in ((3.0, -2.0), (0.01, 10.0)):
        assert float(metrics.stealth_distance(a * target + b, a * clean + b, norm)) == pytest.approx(d, rel=2e-4)
    with pytest.raises(ValueError):
        metrics.stealth_distance(target, clean[:, :4], norm)
    batch_t = rng.normal(size=(6, 5))
    batched = jax.jit(jax.vmap(lambda t: metrics.stealth_distance(t, clean, norm)))(batch_t)
    np.testing.assert_allclose(batched, [float(metrics.stealth_distance(t, clean, norm)) for t in batch_t], atol=1e-6)
    g = jax.grad(lambda t: metrics.stealth_distance(t, clean, norm))(jnp.asarray(target, jnp.float32))
    assert g.shape == (5,) and np.isfinite(np.asarray(g)).all() and np.abs(np.asarray(g)).sum() > 0


@pytest.mark.parametrize("norm", NORMS)
def test_stealthiness_total_components_and_ordering(norm):
    rng = np.random.default_rng(2)
    blend_in = metrics.stealthiness(history(make_run(rng)), normalise=norm)
    stand_out = metrics.stealthiness(history(make_run(rng, 1.0, 2.0)), normalise=norm)
    for res in (blend_in, stand_out):
        assert tuple(res["components"]) == metrics.STEALTH_COMPONENTS
        assert res["total"] == pytest.approx(sum(res["components"].values()))
        assert res["epochs"] == [5, 40, 100] and res["read"] == "heldout" and res["normalise"] == norm
        assert res["clean"] == [f"class_{k}" for k in range(1, 10)]
        assert res["total_se"] is None and res["components_se"] is None  # no SEs in this history
    assert blend_in["total"] == pytest.approx(0.0, abs=1e-5)
    assert stand_out["total"] > 0.2
    assert stand_out["components"]["xt/target"] > stand_out["components"]["xt/target_clean"]


@pytest.mark.parametrize("norm", NORMS)
def test_stealthiness_matches_stealth_distance_and_read(norm):
    rng = np.random.default_rng(3)
    traj = make_run(rng, 0.7, 0.3)
    mi = history(traj, read_noise=0.0)
    res = metrics.stealthiness(mi, epochs=(5, 40, 100), normalise=norm)
    idx = [EPOCHS.index(e) for e in (5, 40, 100)]
    cleans = [f"class_{k}" for k in range(1, 10)]
    for q in ("xt", "ty"):
        clean = np.stack([traj[q][c][idx] for c in cleans])
        for g in ("target_clean", "target"):
            want = float(metrics.stealth_distance(traj[q][g][idx], clean, norm))
            assert res["components"][f"{q}/{g}"] == pytest.approx(want, rel=1e-6)
    sub = metrics.stealthiness(mi, clean=["class_1", "class_2", "class_3"], normalise=norm)
    clean3 = np.stack([traj["xt"][c][idx] for c in ("class_1", "class_2", "class_3")])
    assert sub["components"]["xt/target"] == pytest.approx(
        float(metrics.stealth_distance(traj["xt"]["target"][idx], clean3, norm)), rel=1e-6)
    # The train read here is heldout + a constant: every quantity shifted, the metric unchanged.
    res_train = metrics.stealthiness(history(traj, read_noise=0.3), read="train", normalise=norm)
    assert res_train["read"] == "train"
    assert res_train["total"] == pytest.approx(res["total"], rel=1e-5)


@pytest.mark.parametrize("norm", NORMS)
def test_stealthiness_affine_rescale_of_one_quantity(norm):
    rng = np.random.default_rng(4)
    traj = make_run(rng, 0.4, 0.9)
    base = metrics.stealthiness(history(traj), normalise=norm)
    scaled = {"xt": {g: 2.5 * v + 1.0 for g, v in traj["xt"].items()}, "ty": traj["ty"]}
    res = metrics.stealthiness(history(scaled), normalise=norm)
    for k, v in base["components"].items():
        assert res["components"][k] == pytest.approx(v, rel=1e-5, abs=1e-6)


def test_stealthiness_missing_epochs_and_values():
    rng = np.random.default_rng(5)
    mi = history(make_run(rng, 0.5, 0.5))
    with pytest.raises(ValueError, match=r"\[7, 200\].*available.*\[1, 5, 10"):
        metrics.stealthiness(mi, epochs=(5, 7, 200))
    short = {q: {g: {e: v for e, v in h.items() if int(e) <= 20} for g, h in groups.items()} for q, groups in mi.items()}
    with pytest.raises(ValueError, match="select_epochs"):
        metrics.stealthiness(short)
    chosen = metrics.select_epochs(metrics.available_epochs(short), (5, 40, 100))
    assert chosen == [5, 20]
    assert math.isfinite(metrics.stealthiness(short, chosen)["total"])
    # One clean class lacks an epoch: that epoch is not available.
    del mi["ty"]["class_3"]["40"]
    with pytest.raises(ValueError, match=r"\[40\]"):
        metrics.stealthiness(mi)
    mi = history(make_run(rng))
    mi["xt"]["target"]["5"]["heldout"] = None
    with pytest.raises(ValueError, match="train"):
        metrics.stealthiness(mi)
    assert math.isfinite(metrics.stealthiness(mi, read="train")["total"])
    with pytest.raises(ValueError, match="read"):
        metrics.stealthiness(mi, read="test")
    with pytest.raises(ValueError, match="normalise"):
        metrics.stealthiness(mi, read="train", normalise="global")


# ---------------------------------------------------------------------------------------------- error bars


def test_stealth_bootstrap_matches_the_folded_normal():
    """Min and max pinned by exact clean classes 0 and 10, target 6 +- s at one epoch: D = |t - 5| / 10
    (eps negligible) is a folded normal, whose standard deviation is known in closed form."""
    s = 0.5
    mu, sigma = 0.1, s / 10
    draws = metrics.stealth_bootstrap(jax.random.PRNGKey(0), jnp.array([[6.0]]), jnp.array([[0.0], [10.0]]),
                                      jnp.array([[s]]), jnp.zeros((2, 1)), draws=20000)
    assert draws.shape == (20000, 1)
    fold_mean = (sigma * math.sqrt(2 / math.pi) * math.exp(-mu**2 / (2 * sigma**2))
                 + mu * (1 - 2 * stats.norm.cdf(-mu / sigma)))
    fold_sd = math.sqrt(mu**2 + sigma**2 - fold_mean**2)
    assert float(jnp.std(draws, ddof=1)) == pytest.approx(fold_sd, rel=0.03)
    assert float(jnp.mean(draws)) == pytest.approx(fold_mean, rel=0.01)


def test_stealthiness_standard_errors_zero_known_and_growing():
    rng = np.random.default_rng(11)
    traj = make_run(rng, 0.6, 0.4)
    zero = metrics.stealthiness(history(traj, se=se_like(traj, 0.0)))
    assert zero["total_se"] == pytest.approx(0.0, abs=1e-6)
    assert all(v == pytest.approx(0.0, abs=1e-6) for v in zero["components_se"].values())
    assert "bootstrap" in zero["se_method"]

    # Monte Carlo with NumPy and the re-derived rule: redraw every value, recompute, take the spread.
    se = {q: {g: rng.uniform(0.02, 0.08, size=len(EPOCHS)) for g in groups} for q, groups in traj.items()}
    res = metrics.stealthiness(history(traj, se=se))
    idx = [EPOCHS.index(e) for e in (5, 40, 100)]
    cleans = [f"class_{k}" for k in range(1, 10)]
    n = 4000
    comps = {}
    for q in ("xt", "ty"):
        c = np.stack([traj[q][k][idx] for k in cleans])
        c_se = np.stack([se[q][k][idx] for k in cleans])
        c_draw = c + c_se * rng.normal(size=(n, *c.shape))
        for g in ("target_clean", "target"):
            t_draw = traj[q][g][idx] + se[q][g][idx] * rng.normal(size=(n, len(idx)))
            comps[f"{q}/{g}"] = authors_distance_batched(t_draw, c_draw)
    for k, d in comps.items():
        assert res["components_se"][k] == pytest.approx(d.std(ddof=1), rel=0.08)
    assert res["total_se"] == pytest.approx(sum(comps.values()).std(ddof=1), rel=0.08)
    assert res["total"] == pytest.approx(metrics.stealthiness(history(traj))["total"])  # SEs leave the value alone

    again = metrics.stealthiness(history(traj, se=se))
    assert again["total_se"] == res["total_se"]  # fixed key: reproducible
    bigger = metrics.stealthiness(history(traj, se={q: {g: 2 * v for g, v in gs.items()} for q, gs in se.items()}))
    assert bigger["total_se"] > 1.3 * res["total_se"]
    assert all(bigger["components_se"][k] > res["components_se"][k] for k in res["components_se"])


def test_stealthiness_standard_errors_absent_or_incomplete_give_none():
    rng = np.random.default_rng(12)
    traj = make_run(rng, 0.3, 0.3)
    mi = history(traj, se=se_like(traj, 0.05))
    assert metrics.stealthiness(mi)["total_se"] is not None
    assert metrics.stealthiness(mi, se_draws=0)["total_se"] is None
    mi["ty"]["class_4"]["40"]["heldout_se"] = None
    partial = metrics.stealthiness(mi)
    assert partial["total_se"] is None and partial["components_se"] is None
    assert metrics.stealthiness(mi, read="train")["total_se"] is not None  # train_se still complete




# ---------------------------------------------------------------------------------------------- refusals


def test_stealth_distance_refuses_zero_clean_classes_and_zero_epochs():
    """An empty mean would be NaN: refused with a message, eagerly and under jit / vmap alike."""
    with pytest.raises(ValueError, match="no clean classes"):
        metrics.stealth_distance(jnp.zeros(3), jnp.zeros((0, 3)))
    with pytest.raises(ValueError, match="no clean classes"):
        jax.jit(lambda t, c: metrics.stealth_distance(t, c, "joint"))(jnp.zeros(3), jnp.zeros((0, 3)))
    with pytest.raises(ValueError, match="no clean classes"):
        jax.vmap(metrics.stealth_distance)(jnp.zeros((2, 3)), jnp.zeros((2, 0, 3)))
    with pytest.raises(ValueError, match="no selected epochs"):
        metrics.stealth_distance(jnp.zeros(0), jnp.zeros((4, 0)))
    with pytest.raises(ValueError, match="no clean classes"):
        metrics.stealth_bootstrap(jax.random.PRNGKey(0), jnp.zeros((2, 3)), jnp.zeros((0, 3)), 0.1, 0.1, draws=4)


def test_stealthiness_refuses_a_repeated_epoch_and_an_empty_clean_list():
    mi = history(make_run(np.random.default_rng(6), 0.5, 0.2))
    with pytest.raises(ValueError, match=r"epochs \[40\] are selected more than once"):
        metrics.stealthiness(mi, epochs=(5, 40, 40, 100))
    # The same epochs given once each are fine.
    assert math.isfinite(metrics.stealthiness(mi, epochs=(5, 40, 100))["total"])
    with pytest.raises(ValueError, match="clean is empty"):
        metrics.stealthiness(mi, clean=[])


def test_a_boolean_where_a_value_belongs_is_not_read_as_one():
    mi = history(make_run(np.random.default_rng(7)))
    mi["xt"]["target"]["40"]["heldout"] = True  # a broken file, not 1.0 nats
    with pytest.raises(ValueError, match="no finite 'heldout' value at xt/target/epoch 40"):
        metrics.stealthiness(mi)
    mi["xt"]["target"]["40"]["heldout"] = np.bool_(False)
    with pytest.raises(ValueError, match="no finite 'heldout' value"):
        metrics.stealthiness(mi)
