"""ibjax.defenses.spectral: spectral signatures find a planted outlier direction."""

import jax
import numpy as np

from ibjax.defenses import auroc, flag_top_per_label, spectral_scores


def _planted(seed=0, n=600, d=32, share=0.1, shift=6.0):
    r = np.random.default_rng(seed)
    x = r.normal(size=(n, d)).astype(np.float32)
    labels = r.integers(0, 3, n)
    poisoned = (labels == 0) & (r.random(n) < share)  # a share of label 0
    direction = r.normal(size=d)
    x[poisoned] += shift * direction / np.linalg.norm(direction)
    return x, labels, poisoned


def test_spectral_signatures_find_a_planted_outlier_direction():
    x, labels, poisoned = _planted()
    scores = spectral_scores(x, labels, 3)
    assert float(auroc(scores, poisoned, labels == 0)) > 0.98  # within the poisoned label
    assert float(auroc(scores, poisoned)) > 0.9  # over all rows, the clean labels' own outliers included
    flags = flag_top_per_label(scores, labels, 3, 0.15)
    assert (flags & poisoned).sum() >= 0.9 * poisoned.sum()  # the top 15% of label 0 holds its 10% of poisons
    for c in range(3):
        assert flags[labels == c].sum() == int(0.15 * (labels == c).sum())


def test_scores_equal_the_textbook_per_label_svd():
    x, labels, _ = _planted(1, n=200, d=8)
    got = np.asarray(spectral_scores(x, labels, 3))
    for c in range(3):
        rows = x[labels == c]
        centred = rows - rows.mean(0)
        v = np.linalg.svd(centred, full_matrices=False)[2][0]
        np.testing.assert_allclose(got[labels == c], (centred @ v) ** 2, rtol=1e-3, atol=1e-4)


def test_invalid_rows_score_zero_and_members_vmap():
    x, labels, poisoned = _planted(2, n=300)
    valid = np.arange(300) < 250
    s = np.asarray(spectral_scores(x, labels, 3, valid))
    assert np.all(s[~valid] == 0)
    np.testing.assert_allclose(s[valid], np.asarray(spectral_scores(x[:250], labels[:250], 3)), rtol=1e-3, atol=1e-4)
    both = jax.vmap(lambda a: spectral_scores(a, labels, 3))(np.stack([x, 2 * x]))
    np.testing.assert_allclose(np.asarray(both[1]), 4 * np.asarray(both[0]), rtol=1e-3, atol=1e-3)


def test_the_reference_score_projects_the_uncentred_rows():
    x, labels, _ = _planted(3, n=200, d=8)
    x = x + 5.0  # away from the origin: centring matters
    got = np.asarray(spectral_scores(x, labels, 3, centred=False))
    for c in range(3):
        rows = x[labels == c]
        v = np.linalg.svd(rows - rows.mean(0), full_matrices=False)[2][0]
        np.testing.assert_allclose(got[labels == c], np.abs(rows @ v), rtol=1e-3, atol=1e-3)
