import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ibjax import critics


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
