import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ibjax.mi import bounds


def test_infonce_never_exceeds_log_k_plus_one():
    for seed in range(5):
        kp, kn = jax.random.split(jax.random.PRNGKey(seed))
        pos = 10 * jax.random.normal(kp, (64,)) + 20
        neg = 10 * jax.random.normal(kn, (64, 31))
        assert bounds.infonce(pos, neg) <= np.log(32) + 1e-5


def test_infonce_reaches_its_cap_for_a_perfect_critic_and_zero_for_a_constant_one():
    pos, neg = jnp.full((8,), 50.0), jnp.zeros((8, 15))
    np.testing.assert_allclose(bounds.infonce(pos, neg), np.log(16), atol=1e-5)
    np.testing.assert_allclose(bounds.infonce(jnp.ones(8), jnp.ones((8, 15))), 0.0, atol=1e-6)


def test_nwj_and_dv_are_zero_for_the_optimal_constant_critic_on_independent_pairs():
    # For independent a, b the optimal NWJ critic is f = 1 and any constant is optimal for DV.
    np.testing.assert_allclose(bounds.nwj(jnp.ones(10), jnp.ones((10, 4))), 0.0, atol=1e-6)
    np.testing.assert_allclose(bounds.dv(jnp.full(10, 3.0), jnp.full((10, 4), 3.0)), 0.0, atol=1e-6)


def test_dv_is_at_least_nwj_for_the_same_critic():
    for seed in range(5):
        kp, kn = jax.random.split(jax.random.PRNGKey(seed))
        pos, neg = jax.random.normal(kp, (32,)), jax.random.normal(kn, (32, 8))
        assert bounds.dv(pos, neg) >= bounds.nwj(pos, neg) - 1e-6


@pytest.mark.parametrize("name", sorted(bounds.BOUNDS))
def test_weights_drop_padding_rows(name):
    kp, kn = jax.random.split(jax.random.PRNGKey(0))
    pos, neg = jax.random.normal(kp, (12,)), jax.random.normal(kn, (12, 6))
    w = jnp.arange(12) < 7
    fn = bounds.get_bound(name)
    np.testing.assert_allclose(fn(pos, neg, w), fn(pos[:7], neg[:7]), rtol=1e-5, atol=1e-6)


def test_unknown_bound_and_caps():
    with pytest.raises(ValueError, match="infonce"):
        bounds.get_bound("jsd")
    assert bounds.bound_cap("infonce", 511) == pytest.approx(np.log(512))
    assert bounds.bound_cap("nwj", 511) == float("inf")


def test_all_pairs_infonce_equals_infonce_with_the_other_rows_as_negatives():
    scores = jax.random.normal(jax.random.PRNGKey(7), (9, 9)) * 3
    off = jnp.stack([jnp.delete(scores[i], i) for i in range(9)])
    np.testing.assert_allclose(bounds.infonce_all_pairs(scores), bounds.infonce(jnp.diagonal(scores), off), rtol=1e-5)
    assert bounds.infonce_all_pairs(100 * jnp.eye(9)) == pytest.approx(np.log(9), abs=1e-5)


@pytest.mark.parametrize("name", sorted(bounds.BOUNDS))
def test_per_row_terms_average_to_the_bound(name):
    kp, kn = jax.random.split(jax.random.PRNGKey(11))
    pos, neg = 2 * jax.random.normal(kp, (10,)), jax.random.normal(kn, (10, 7))
    w = (jnp.arange(10) < 6).astype(jnp.float32)
    terms = bounds.bound_terms(name)(pos, neg, w)
    assert terms.shape == (10,)
    np.testing.assert_allclose(jnp.sum(terms * w) / 6, bounds.get_bound(name)(pos, neg, w), rtol=1e-5, atol=1e-6)


def test_infonce_equals_the_authors_batch_mean_form():
    # The authors' compute_infoNCE (util/cal.py): diffs = t_pos - mean_i(logsumexp_i) + log(K + 1),
    # estimate = mean(diffs). Re-derived here in float64 NumPy from the same scores.
    rng = np.random.default_rng(0)
    for k in (1, 16, 255):
        pos, neg = rng.normal(size=32) * 3, rng.normal(size=(32, k)) * 3
        logits = np.concatenate([pos[:, None], neg], axis=1)
        lse = np.log(np.sum(np.exp(logits - logits.max(1, keepdims=True)), axis=1)) + logits.max(1)
        authors = np.mean(pos - lse.mean() + np.log(k + 1))
        np.testing.assert_allclose(bounds.infonce(jnp.asarray(pos), jnp.asarray(neg)), authors, rtol=1e-5, atol=1e-5)
