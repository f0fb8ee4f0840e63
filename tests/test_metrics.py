"""Stealthiness metric, silhouette scores and the 2-D embedding against hand and brute-force values."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ibjax import metrics

EPOCHS = (1, 5, 10, 20, 40, 60, 80, 100, 120)


def history(traj: dict, read_noise: float = 0.0) -> dict:
    """An MI history from {quantity: {group: f32[len(EPOCHS)]}}; the train read is heldout + noise."""
    out = {}
    for q, groups in traj.items():
        out[q] = {}
        for g, values in groups.items():
            out[q][g] = {
                str(e): {"train": float(v) + read_noise, "heldout": float(v), "trajectory": [float(v)] * 3}
                for e, v in zip(EPOCHS, values)
            }
    return out


def clean_trajs(rng, num_clean=9):
    base = np.log1p(np.arange(len(EPOCHS), dtype=np.float64))
    return {f"class_{k}": base + 0.05 * rng.normal(size=len(EPOCHS)) for k in range(1, num_clean + 1)}


# ---------------------------------------------------------------------------------------------- helpers


def test_minmax_normalise_range_and_constant():
    x = jnp.array([[1.0, 3.0], [2.0, 5.0]])
    np.testing.assert_allclose(metrics.minmax_normalise(x), [[0.0, 0.5], [0.25, 1.0]])
    np.testing.assert_allclose(metrics.minmax_normalise(x, axis=1), [[0.0, 1.0], [0.0, 1.0]])
    c = metrics.minmax_normalise(jnp.full((3, 4), 7.0))
    assert not np.isnan(np.asarray(c)).any()
    np.testing.assert_array_equal(c, 0.0)


def test_select_epochs_nearest_with_ties_to_earlier():
    assert metrics.select_epochs([1, 5, 10, 20], (5, 40, 100)) == [5, 20]  # distinct: 20 is not counted twice
    assert metrics.select_epochs(["0", "4", "8"], (2, 6, 7)) == [0, 4, 8]
    with pytest.raises(ValueError):
        metrics.select_epochs([], (5,))


# ---------------------------------------------------------------------------------------------- stealth


def test_stealth_distance_hand_computed():
    # values 0..4 over target [0, 4] and clean [[2, 2], [1, 3]]: min 0, max 4 -> divide by 4.
    target = jnp.array([0.0, 4.0])
    clean = jnp.array([[2.0, 2.0], [1.0, 3.0]])
    # e0: target 0, clean 0.5 / 0.25 -> mean diff -0.375; e1: target 1, clean 0.5 / 0.75 -> 0.375.
    assert float(metrics.stealth_distance(target, clean)) == pytest.approx(0.375)
    # Differences of opposite sign across classes cancel inside the mean, not after the abs.
    assert float(metrics.stealth_distance(jnp.array([1.0]), jnp.array([[0.0], [2.0]]))) == pytest.approx(0.0)


def test_stealth_distance_identical_is_zero_and_separation_increases():
    rng = np.random.default_rng(0)
    clean = np.stack(list(clean_trajs(rng).values()))
    mean_clean = clean.mean(0)
    assert float(metrics.stealth_distance(mean_clean, clean)) == pytest.approx(0.0, abs=1e-6)
    same = np.tile(mean_clean, (4, 1))
    assert float(metrics.stealth_distance(mean_clean, same)) == pytest.approx(0.0, abs=1e-7)
    prev = 0.0
    for shift in (0.2, 0.5, 1.0, 2.0):
        d = float(metrics.stealth_distance(mean_clean + shift * np.linspace(0, 1, len(EPOCHS)), clean))
        assert d > prev
        prev = d


def test_stealth_distance_affine_invariant_and_jittable():
    rng = np.random.default_rng(1)
    target = rng.normal(size=5)
    clean = rng.normal(size=(4, 5))
    d = float(metrics.stealth_distance(target, clean))
    for a, b in ((3.0, -2.0), (0.01, 10.0)):
        assert float(metrics.stealth_distance(a * target + b, a * clean + b)) == pytest.approx(d, rel=1e-5)
    with pytest.raises(ValueError):
        metrics.stealth_distance(target, clean[:, :4])


def make_run(rng, separate_xt=0.0, separate_ty=0.0):
    cleans = clean_trajs(rng)
    mean_clean = np.mean(list(cleans.values()), axis=0)
    ramp = np.linspace(0, 1, len(EPOCHS))
    traj = {}
    for q, sep in (("xt", separate_xt), ("ty", separate_ty)):
        traj[q] = {
            **cleans,
            "target_clean": mean_clean + 0.5 * sep * ramp,
            "target": mean_clean + sep * ramp,
            "target_backdoor": mean_clean + 3 * sep * ramp,
            "target_sample": mean_clean,
        }
    return traj


def test_stealthiness_total_components_and_ordering():
    rng = np.random.default_rng(2)
    blend_in = metrics.stealthiness(history(make_run(rng)))
    stand_out = metrics.stealthiness(history(make_run(rng, 1.0, 2.0)))
    keys = {"xt/target_clean", "xt/target", "ty/target_clean", "ty/target"}
    for res in (blend_in, stand_out):
        assert set(res["components"]) == keys
        assert res["total"] == pytest.approx(sum(res["components"].values()))
        assert res["epochs"] == [5, 40, 100] and res["read"] == "heldout"
    assert blend_in["total"] == pytest.approx(0.0, abs=1e-5)
    assert stand_out["total"] > 0.2
    assert stand_out["components"]["xt/target"] > stand_out["components"]["xt/target_clean"]


def test_stealthiness_matches_stealth_distance_and_read():
    rng = np.random.default_rng(3)
    traj = make_run(rng, 0.7, 0.3)
    mi = history(traj, read_noise=0.0)
    res = metrics.stealthiness(mi, epochs=(5, 40, 100))
    idx = [EPOCHS.index(e) for e in (5, 40, 100)]
    cleans = [f"class_{k}" for k in range(1, 10)]
    for q in ("xt", "ty"):
        clean = np.stack([traj[q][c][idx] for c in cleans])
        for g in ("target_clean", "target"):
            want = float(metrics.stealth_distance(traj[q][g][idx], clean))
            assert res["components"][f"{q}/{g}"] == pytest.approx(want, rel=1e-6)
    sub = metrics.stealthiness(mi, clean=["class_1", "class_2", "class_3"])
    clean3 = np.stack([traj["xt"][c][idx] for c in ("class_1", "class_2", "class_3")])
    assert sub["components"]["xt/target"] == pytest.approx(
        float(metrics.stealth_distance(traj["xt"]["target"][idx], clean3)), rel=1e-6)
    # The train read here is heldout + a constant: every quantity shifted, the metric unchanged.
    res_train = metrics.stealthiness(history(traj, read_noise=0.3), read="train")
    assert res_train["read"] == "train"
    assert res_train["total"] == pytest.approx(res["total"], rel=1e-5)


def test_stealthiness_affine_rescale_of_one_quantity():
    rng = np.random.default_rng(4)
    traj = make_run(rng, 0.4, 0.9)
    base = metrics.stealthiness(history(traj))
    scaled = {"xt": {g: 2.5 * v + 1.0 for g, v in traj["xt"].items()}, "ty": traj["ty"]}
    res = metrics.stealthiness(history(scaled))
    for k, v in base["components"].items():
        assert res["components"][k] == pytest.approx(v, rel=1e-5, abs=1e-7)


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
    with pytest.raises(ValueError):
        metrics.stealthiness(mi, read="test")


# ---------------------------------------------------------------------------------------------- silhouette


def brute_silhouette(x, labels):
    x = np.asarray(x, np.float64)
    d = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
    out = np.zeros(len(x))
    present = np.unique(labels)
    for i in range(len(x)):
        own = labels == labels[i]
        if own.sum() == 1 or len(present) < 2:
            continue
        a = d[i, own].sum() / (own.sum() - 1)
        b = min(d[i, labels == l].mean() for l in present if l != labels[i])
        out[i] = (b - a) / max(a, b)
    return out


def test_silhouette_matches_brute_force_with_blocks_and_singletons():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(97, 5)).astype(np.float32) + 10.0  # offset: checks the cancellation guard
    labels = rng.integers(0, 4, size=97)
    labels[13] = 5  # singleton cluster; id 4 unused (empty)
    want = brute_silhouette(x, labels)
    for block in (16, 1024):
        got = np.asarray(metrics.silhouette_samples(x, labels, 6, block_size=block))
        np.testing.assert_allclose(got, want, atol=2e-5)
    assert got[13] == 0.0
    assert float(metrics.silhouette_score(x, labels, 6)) == pytest.approx(want.mean(), abs=2e-5)


def test_silhouette_valid_mask_equals_unpadded():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 3)).astype(np.float32)
    labels = rng.integers(0, 3, size=40)
    xp = np.concatenate([x, rng.normal(size=(24, 3)).astype(np.float32)])
    lp = np.concatenate([labels, rng.integers(0, 3, size=24)])
    valid = np.arange(64) < 40
    got = np.asarray(metrics.silhouette_samples(xp, lp, 3, valid, block_size=16))
    np.testing.assert_allclose(got[:40], brute_silhouette(x, labels), atol=2e-5)
    np.testing.assert_array_equal(got[40:], 0.0)
    assert float(metrics.silhouette_score(xp, lp, 3, valid, block_size=16)) == pytest.approx(
        brute_silhouette(x, labels).mean(), abs=2e-5)


def test_silhouette_blobs_high_random_labels_near_zero():
    key = jax.random.PRNGKey(0)
    k1, k2 = jax.random.split(key)
    centres = 20.0 * jax.random.normal(k1, (5, 16))
    labels = jnp.repeat(jnp.arange(5), 200)
    x = centres[labels] + jax.random.normal(k2, (1000, 16))
    assert float(metrics.silhouette_score(x, labels, 5, block_size=256)) > 0.8
    random_labels = jax.random.randint(jax.random.PRNGKey(3), (1000,), 0, 5)
    assert abs(float(metrics.silhouette_score(x, random_labels, 5, block_size=256))) < 0.05


def test_silhouette_single_cluster_is_zero():
    x = np.random.default_rng(2).normal(size=(10, 2))
    np.testing.assert_array_equal(metrics.silhouette_samples(x, np.zeros(10, int), 3), 0.0)


def test_group_silhouettes_splits_target_class():
    rng = np.random.default_rng(3)
    k, per = 4, 30
    centres = 10.0 * rng.normal(size=(k + 1, 8))
    labels = np.repeat(np.arange(k), per)
    poisoned = np.zeros(k * per, bool)
    # Target 0 gets 15 backdoor samples relabelled from the other classes, clustered far away.
    bd = rng.choice(np.arange(2 * per, k * per), 15, replace=False)
    labels[bd] = 0
    poisoned[bd] = True
    poisoned[per + 1] = True  # poisoned but kept its label (regularisation sample): stays in class 1
    ids = np.asarray(metrics.cluster_ids(labels, poisoned, 0, k))
    assert ids[per + 1] == 1 and (ids[bd] == k).all()
    x = centres[ids] + rng.normal(size=(k * per, 8))
    res = metrics.group_silhouettes(x, labels, poisoned, target=0, num_classes=k)
    assert set(res) == {"target_clean", "target_backdoor", "target", "class_1", "class_2", "class_3", "overall"}
    s = brute_silhouette(x, ids)
    assert res["target_backdoor"] == pytest.approx(s[ids == k].mean(), abs=1e-4)
    assert res["target_clean"] == pytest.approx(s[ids == 0].mean(), abs=1e-4)
    assert res["target"] == pytest.approx(s[labels == 0].mean(), abs=1e-4)
    assert res["class_2"] == pytest.approx(s[ids == 2].mean(), abs=1e-4)
    assert res["overall"] == pytest.approx(s.mean(), abs=1e-4)
    assert res["target_backdoor"] > 0.7
    # No backdoor samples: that group is NaN, the others are still defined.
    res = metrics.group_silhouettes(x, np.repeat(np.arange(k), per), np.zeros(k * per, bool), target=0)
    assert math.isnan(res["target_backdoor"]) and math.isfinite(res["overall"])
    with pytest.raises(ValueError):
        metrics.group_silhouettes(x, labels, poisoned, target=0, num_classes=3)


# ---------------------------------------------------------------------------------------------- PCA


def test_pca_2d_matches_numpy_up_to_sign_and_is_deterministic():
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(200, 6)) * np.array([5.0, 3.0, 1.0, 0.5, 0.2, 0.1])) @ np.linalg.qr(rng.normal(size=(6, 6)))[0]
    x = x.astype(np.float32) + 3.0
    got = np.asarray(metrics.pca_2d(x))
    assert got.shape == (200, 2)
    xc = x - x.mean(0)
    _, _, vt = np.linalg.svd(xc.astype(np.float64), full_matrices=False)
    want = xc @ vt[:2].T
    for j in range(2):
        sign = np.sign(np.dot(got[:, j], want[:, j]))
        np.testing.assert_allclose(got[:, j], sign * want[:, j], atol=1e-3)
    assert got[:, 0].var() > got[:, 1].var()
    # Sign convention is deterministic: flipping the data's sign flips nothing in the direction choice
    # (directions fixed by their largest entry), so the projection of -x is -projection of x.
    np.testing.assert_allclose(np.asarray(metrics.pca_2d(-x)), -got, atol=1e-3)
    # Wide data (D > N) goes through the SVD branch; D = 1 pads a zero column.
    wide = rng.normal(size=(10, 50)).astype(np.float32)
    w = np.asarray(metrics.pca_2d(wide))
    _, sv, _ = np.linalg.svd(wide - wide.mean(0), full_matrices=False)
    np.testing.assert_allclose(np.linalg.norm(w, axis=0), sv[:2], rtol=1e-3)
    one = np.asarray(metrics.pca_2d(x[:, :1]))
    np.testing.assert_array_equal(one[:, 1], 0.0)
