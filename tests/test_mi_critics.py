import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ibjax.mi import critics


@pytest.mark.parametrize("batch,k", [(16, 40), (16, 5)])  # K >= B (all-pairs path) and K < B (direct)
def test_split_layer_equals_concatenation_critic(batch, k):
    ka, kb, kp, ki = jax.random.split(jax.random.PRNGKey(0), 4)
    a = jax.random.normal(ka, (batch, 7))
    b = jax.random.normal(kb, (batch, 11))
    params = critics.init_concat_critic(kp, 7, 11, (32, 16))
    neg_index = jax.random.randint(ki, (batch, k), 0, batch)
    pos, neg = critics.concat_critic_scores(params, a, b, neg_index)
    np.testing.assert_allclose(pos, critics.concat_critic(params, a, b), rtol=1e-5, atol=1e-5)
    plain_neg = critics.concat_critic(params, jnp.repeat(a[:, None], k, 1), b[neg_index])
    np.testing.assert_allclose(neg, plain_neg, rtol=1e-5, atol=1e-5)


def test_split_layer_gradients_equal_concatenation_critic():
    ka, kb, kp, ki = jax.random.split(jax.random.PRNGKey(1), 4)
    a, b = jax.random.normal(ka, (8, 3)), jax.random.normal(kb, (8, 4))
    params = critics.init_concat_critic(kp, 3, 4, (16, 16))
    idx = jax.random.randint(ki, (8, 20), 0, 8)

    def split_loss(p):
        pos, neg = critics.concat_critic_scores(p, a, b, idx)
        return pos.sum() - jax.nn.logsumexp(neg, axis=1).sum()

    def plain_loss(p):
        neg = critics.concat_critic(p, jnp.repeat(a[:, None], 20, 1), b[idx])
        return critics.concat_critic(p, a, b).sum() - jax.nn.logsumexp(neg, axis=1).sum()

    g1, g2 = jax.grad(split_loss)(params), jax.grad(plain_loss)(params)
    for x, y in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)


def test_separable_scores_are_embedding_dot_products():
    ka, kb, kp = jax.random.split(jax.random.PRNGKey(2), 3)
    a, b = jax.random.normal(ka, (6, 3)), jax.random.normal(kb, (6, 5))
    params = critics.init_separable_critic(kp, 3, 5, (8,), embed_dim=4)
    idx = jnp.array([[1, 2], [0, 0], [5, 4], [3, 3], [2, 1], [0, 5]])
    pos, neg = critics.separable_critic_scores(params, a, b, idx)
    ga, hb = critics._embed(params["g"], a, jnp.float32), critics._embed(params["h"], b, jnp.float32)
    np.testing.assert_allclose(pos, jnp.sum(ga * hb, -1), rtol=1e-5)
    np.testing.assert_allclose(neg[2, 0], ga[2] @ hb[5], rtol=1e-5)


def test_critics_work_under_jit_and_vmap():
    params = jax.vmap(lambda k: critics.init_concat_critic(k, 3, 4, (8, 8)))(jax.random.split(jax.random.PRNGKey(3), 5))
    a, b = jnp.ones((5, 6, 3)), jnp.ones((5, 6, 4))
    idx = jnp.zeros((5, 6, 9), jnp.int32)
    pos, neg = jax.jit(jax.vmap(critics.concat_critic_scores))(params, a, b, idx)
    assert pos.shape == (5, 6) and neg.shape == (5, 6, 9)


def test_unknown_critic_is_an_error():
    with pytest.raises(ValueError, match="concat"):
        critics.init_critic(jax.random.PRNGKey(0), "bilinear", 2, 2, (4,))


@pytest.mark.parametrize("rank", [2, 40])  # a real bottleneck, and one wider than a (capped at da = 7)
def test_bottleneck_critic_sees_only_its_projections(rank):
    ka, kb, kp, ki, kn = jax.random.split(jax.random.PRNGKey(4), 5)
    a, b = jax.random.normal(ka, (12, 7)), jax.random.normal(kb, (12, 5))
    params = critics.init_concat_critic(kp, 7, 5, (16, 8), rank=rank)
    assert params["proj"]["a"].shape == (7, min(rank, 7)) and params["proj"]["b"].shape == (5, min(rank, 5))
    idx = jax.random.randint(ki, (12, 20), 0, 12)
    pos, neg = critics.concat_critic_scores(params, a, b, idx)
    # Re-derivation: the plain concatenation MLP on the projected inputs.
    inner = {"first": params["first"], "rest": params["rest"]}
    pa, pb = a @ params["proj"]["a"], b @ params["proj"]["b"]
    np.testing.assert_allclose(pos, critics.concat_critic(inner, pa, pb), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(neg, critics.concat_critic(inner, jnp.repeat(pa[:, None], 20, 1), pb[idx]),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(critics.critic_matrix("concat", params, a, b, block_rows=5),
                               critics.concat_critic(params, jnp.repeat(a[:, None], 12, 1), jnp.repeat(b[None], 12, 0)),
                               rtol=1e-5, atol=1e-5)
    if rank < 7:  # a move of a inside the null space of proj.a^T changes no score
        null = jnp.linalg.svd(params["proj"]["a"].T)[2][rank:]  # rows spanning the null space
        moved = a + jax.random.normal(kn, (12, null.shape[0])) @ null
        np.testing.assert_allclose(critics.concat_critic_scores(params, moved, b, idx)[0], pos, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="rank must be >= 0"):
        critics.init_concat_critic(kp, 7, 5, (16,), rank=-1)
