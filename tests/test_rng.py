import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ibjax import rng


@pytest.mark.parametrize("partitionable", [True, False])
def test_threefry_bits_of_a_shape_are_its_flat_bits_in_row_major_order(partitionable):
    key = jax.random.PRNGKey(11)
    with jax.threefry_partitionable(partitionable):
        for shape in [(), (1, 0, 3), (2, 3, 5, 7)]:
            size = int(np.prod(shape))
            np.testing.assert_array_equal(jax.random.bits(key, (size,)).reshape(shape), jax.random.bits(key, shape))
            np.testing.assert_array_equal(rng.randint(key, shape, 3, 17), jax.random.randint(key, shape, 3, 17))


@pytest.mark.parametrize("shape", [(), (2, 3, 5, 7)])
def test_flat_draws_are_jax_random_draws(shape):
    key = jax.random.PRNGKey(11)
    pairs = [
        (rng.normal(key, shape), jax.random.normal(key, shape)),
        (rng.normal(key, shape, jnp.bfloat16), jax.random.normal(key, shape, jnp.bfloat16)),
        (rng.uniform(key, shape, minval=-2.0, maxval=3.0), jax.random.uniform(key, shape, minval=-2.0, maxval=3.0)),
    ]
    for ours, theirs in pairs:
        assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
        # The same bits through the same elementwise map, compiled for another shape: equal up to rounding.
        tol = 1e-2 if ours.dtype == jnp.bfloat16 else 1e-5  # one rounding step of the dtype
        np.testing.assert_allclose(np.asarray(ours, np.float32), np.asarray(theirs, np.float32), rtol=tol, atol=tol / 10)


def test_typed_keys_under_jit_and_vmap():
    keys = jax.random.split(jax.random.key(3), 4)
    ours = jax.jit(jax.vmap(lambda k: rng.normal(k, (2, 3))))(keys)
    np.testing.assert_allclose(ours, jax.vmap(lambda k: jax.random.normal(k, (2, 3)))(keys), rtol=1e-5, atol=1e-6)
    assert not np.allclose(ours[0], ours[1])  # each key its own draw
