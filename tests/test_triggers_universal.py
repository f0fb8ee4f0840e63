"""ibjax.triggers.universal: Grond's trigger and its targeted universal perturbation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ibjax.triggers import GrondParams, get_attack, grond, grond_tuap


def _linear_logits(w):
    def fn(x, key):  # a deterministic 'network': flattened pixels times a matrix
        return x.reshape(x.shape[0], -1) @ w
    return fn


def test_the_perturbation_moves_a_clean_network_towards_the_target_within_its_bound():
    r = np.random.default_rng(0)
    x = r.uniform(0.2, 0.8, (64, 6, 6, 1)).astype(np.float32)
    w = jnp.asarray(r.normal(size=(36, 4)).astype(np.float32))
    fn = _linear_logits(w)
    params = GrondParams(eps=16 / 255, steps=50, batch_size=32)
    delta = np.asarray(grond_tuap(fn, jax.random.PRNGKey(0), x, 2, params))
    assert delta.shape == (6, 6, 1) and np.max(np.abs(delta)) <= params.eps + 1e-7
    # signed steps of eps / 5 from zero, clipped: every value a multiple of the step within the bound
    steps = delta / (params.eps / 5)
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-4)
    # on a linear network the best perturbation is eps * sign(w[:, target] - w[:, others] mix): the
    # target's mean logit rises
    before = np.asarray(fn(jnp.asarray(x), None))[:, 2].mean()
    after = np.asarray(fn(jnp.clip(jnp.asarray(x) + delta, 0, 1), None))[:, 2].mean()
    assert after > before


def test_the_trigger_adds_the_pattern_or_a_seeded_stand_in():
    x = np.full((2, 4, 4, 3), 0.5, np.float32)
    pattern = np.full((4, 4, 3), 8 / 255, np.float32)
    attack = get_attack("grond", pattern=pattern)
    assert attack.clean_label and not attack.optimised_pattern
    np.testing.assert_allclose(np.asarray(attack.train_trigger(x)), 0.5 + 8 / 255, atol=1e-6)
    np.testing.assert_allclose(np.asarray(attack.test_trigger(np.ones_like(x))), 1.0)  # clipped to [0, 1]
    assert get_attack("grond").optimised_pattern  # the study computes it
    stand_in = np.asarray(grond(x, GrondParams())) - 0.5
    np.testing.assert_allclose(np.abs(stand_in), 8 / 255, atol=1e-6)
    np.testing.assert_array_equal(stand_in, np.asarray(grond(x, GrondParams())) - 0.5)


def test_a_target_outside_the_networks_classes_is_refused():
    fn = _linear_logits(jnp.ones((16, 3)))
    with pytest.raises(ValueError, match="target"):
        grond_tuap(fn, jax.random.PRNGKey(0), np.zeros((4, 4, 4, 1), np.float32), 5, GrondParams(steps=1))
