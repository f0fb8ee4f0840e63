import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

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


def test_philox_normal_is_standard_normal_and_a_pure_function_of_the_key():
    key = jax.random.PRNGKey(4)
    z = np.asarray(rng.normal(key, (200, 500), generator="philox"), np.float64)
    assert z.shape == (200, 500) and z.dtype == np.float64
    flat = z.ravel()
    assert abs(flat.mean()) < 0.01 and abs(flat.std() - 1) < 0.01  # 5 and 3.5 standard errors
    assert stats.kstest(flat[:20000], "norm").pvalue > 1e-3
    assert abs(np.corrcoef(flat[:-1], flat[1:])[0, 1]) < 0.01  # neighbouring values independent
    np.testing.assert_allclose(jax.jit(lambda k: rng.normal(k, (200, 500), generator="philox"))(key), z, atol=1e-6)
    other = np.asarray(rng.normal(jax.random.PRNGKey(5), (200, 500), generator="philox"))
    assert abs(np.corrcoef(flat, other.ravel())[0, 1]) < 0.01  # another key, another stream
    assert not np.allclose(flat, np.asarray(rng.normal(key, (200, 500))).ravel())  # not Threefry's numbers
    half = rng.normal(key, (4,), jnp.bfloat16, generator="philox")
    assert half.dtype == jnp.bfloat16
    with pytest.raises(ValueError, match="generator"):
        rng.normal(key, (3,), generator="mt19937")


def test_philox_under_vmap_draws_what_each_key_draws_alone():
    # lax.rng_bit_generator alone would draw every row of a vmapped key from the first key.
    keys = jax.random.split(jax.random.key(3), (2, 3))
    draw = lambda k: rng.normal(k, (5, 2), generator="philox")  # noqa: E731
    alone = np.stack([[np.asarray(draw(k)) for k in row] for row in keys])
    np.testing.assert_allclose(jax.jit(jax.vmap(jax.vmap(draw)))(keys), alone, atol=1e-6)
    np.testing.assert_allclose(jax.vmap(draw)(keys[0]), alone[0], atol=1e-6)
    # An unbatched key under a vmap over something else draws once, shared.
    scaled = jax.vmap(lambda s: s * draw(keys[0, 0]))(jnp.arange(3.0))
    np.testing.assert_allclose(scaled[2], 2 * alone[0, 0], rtol=1e-6)
