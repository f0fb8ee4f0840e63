"""ibjax.metrics.clustering: silhouette scores against a brute-force re-derivation, per-group
silhouettes with the target class split, and the 2-D PCA embedding."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ibjax import metrics


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


def test_silhouette_score_leaves_out_labels_outside_the_range():
    """Out-of-range labels are in no cluster (as in silhouette_samples): the score is the mean over
    the in-range samples only, not diluted by zeros for the others."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(30, 3)).astype(np.float32) + np.repeat(np.eye(3, dtype=np.float32) * 6, 10, axis=0)
    labels = np.repeat(np.arange(3), 10)
    bad = labels.copy()
    bad[[2, 17]] = [3, -1]  # outside [0, 3)
    keep = np.ones(30, bool)
    keep[[2, 17]] = False
    want = brute_silhouette(x[keep], labels[keep]).mean()
    assert want > 0.5
    assert float(metrics.silhouette_score(x, bad, 3)) == pytest.approx(want, abs=2e-5)
    valid = np.arange(30) != 5  # with a padding mask too: both exclusions together
    keep2 = keep & valid
    assert float(metrics.silhouette_score(x, bad, 3, valid)) == pytest.approx(
        brute_silhouette(x[keep2], labels[keep2]).mean(), abs=2e-5)


def test_tsne_keeps_two_separated_clusters_apart_and_checks_its_method(monkeypatch):
    import sys

    from ibjax.metrics import clustering

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, (60, 8)), rng.normal(8, 1, (60, 8))]).astype(np.float32)
    emb = clustering.embed_2d(x, "tsne", seed=3)
    assert emb.shape == (120, 2) and emb.dtype == np.float32
    np.testing.assert_allclose(clustering.embed_2d(x, "tsne", seed=3), emb)  # one seed, one embedding
    a, b = emb[:60], emb[60:]
    gap = np.linalg.norm(a.mean(0) - b.mean(0))
    assert gap > 3 * max(a.std(0).max(), b.std(0).max())
    assert clustering.embed_2d(x, "pca").shape == (120, 2)
    with pytest.raises(ValueError, match="unknown embedding method 'umap'"):
        clustering.check_embedding("umap")
    monkeypatch.setitem(sys.modules, "sklearn.manifold", None)  # as without scikit-learn
    with pytest.raises(ImportError, match="needs scikit-learn: pip install scikit-learn"):
        clustering.check_embedding("tsne")
    from ibjax.fields import override
    from ibjax.study import StudyConfig, check_config

    with pytest.raises(ValueError, match="analysis.embedding.*needs scikit-learn"):
        check_config(override(StudyConfig(), {"analysis.embedding.method": "tsne"}))
