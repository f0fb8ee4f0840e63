import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ibjax import pipeline, poison, triggers

# One jitted program per (trigger, shape): eager gathers would compile every primitive on its own.
gather = jax.jit(pipeline.gather_batch, static_argnums=2)


@functools.partial(jax.jit, static_argnums=2)
def _orders_and_reference(data, index, trigger):
    """Gathers of ``index`` in two orders, and the trigger applied to each sample with its own key."""
    x1, _, _ = pipeline.gather_batch(data, index, trigger)
    x2, _, _ = pipeline.gather_batch(data, index[::-1], trigger)
    keys = jax.vmap(jax.random.fold_in, (None, 0))(data.trigger_key, index)
    ref = jax.vmap(trigger)(data.images[index].astype(jnp.float32) / 255, keys)
    return x1, x2[::-1], ref


def _data(n=40, perturb=False):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 12, 12, 3), dtype=np.uint8)
    labels = np.tile(np.arange(4), n // 4).astype(np.int32)
    plan = poison.make_poison_plan(labels, 4, poison.PoisonConfig(ratio=0.2), jax.random.PRNGKey(0))
    pert = None
    if perturb:
        pert = np.full((plan.num_poisoned, 12, 12, 3), 0.1, np.float32)
    return images, plan, pipeline.put_train_data(images, plan, jax.random.PRNGKey(1), pert)


def test_trigger_applied_to_flagged_samples_only_and_labels_follow_the_plan():
    images, plan, data = _data()
    attack = triggers.get_attack("badnets")
    idx = jnp.arange(40)
    x, y, flag = gather(data, idx, attack.train_trigger)
    np.testing.assert_array_equal(flag, plan.poisoned)
    np.testing.assert_array_equal(y, plan.labels)
    clean = images.astype(np.float32) / 255
    np.testing.assert_allclose(x[~plan.poisoned], clean[~plan.poisoned], atol=1e-6)
    np.testing.assert_allclose(x[plan.poisoned], triggers.badnets(jnp.asarray(clean[plan.poisoned])), atol=1e-6)


def test_random_triggers_are_fixed_per_sample_across_batches():
    _, plan, data = _data()
    attack = triggers.get_attack("adaptive_blend")
    p = jnp.asarray(np.flatnonzero(plan.poisoned))
    x1, x2, ref = _orders_and_reference(data, p, attack.train_trigger)
    np.testing.assert_allclose(x1, x2, atol=1e-6)  # whatever the batch order
    np.testing.assert_allclose(x1, ref, atol=1e-6)  # each sample's key is fold_in(trigger_key, index)
    assert not np.allclose(x1[0], x1[1])


def test_a_keyed_test_trigger_gets_each_test_samples_key():
    # WaNet as the authors evaluate it: the noise warp on the triggered test images too.
    images = np.random.default_rng(0).integers(0, 256, (6, 12, 12, 3), dtype=np.uint8)
    test = pipeline.put_test_data(images, np.zeros(6, np.int32), jax.random.PRNGKey(3), triggered=True)
    noisy = triggers.get_attack("wanet", test_noise=True).test_trigger
    x1, x2, ref = _orders_and_reference(test, jnp.arange(6), noisy)
    np.testing.assert_allclose(x1, x2, atol=1e-6)
    np.testing.assert_allclose(x1, ref, atol=1e-6)
    fixed, _, flag = gather(test, jnp.arange(6), triggers.get_attack("wanet").test_trigger)  # ibjax's default
    assert flag.all() and not np.allclose(x1, fixed)


def test_perturbations_are_added_to_the_poisoned_samples_before_the_trigger():
    images, plan, data = _data(perturb=True)
    identity = lambda img, key: img  # noqa: E731
    x, _, _ = gather(data, jnp.arange(40), identity)
    clean = images.astype(np.float32) / 255
    expected = np.where(plan.poisoned[:, None, None, None], np.clip(clean + 0.1, 0, 1), clean)
    np.testing.assert_allclose(x, expected, atol=1e-3)  # perturbations are stored as float16


def test_epoch_and_test_batches():
    b = pipeline.epoch_batches(jax.random.PRNGKey(0), 103, 10)
    assert b.shape == (10, 10) and len(np.unique(b)) == 100
    idx, valid = pipeline.test_batches(np.arange(23), 10)
    assert idx.shape == (3, 10) and valid.sum() == 23
    assert sorted(idx[valid].tolist()) == list(range(23))
    with pytest.raises(ValueError, match=r"batch size must lie in \[1, "):
        pipeline.epoch_batches(jax.random.PRNGKey(0), 5, 10)
    with pytest.raises(ValueError, match=r"got 0"):
        pipeline.epoch_batches(jax.random.PRNGKey(0), 5, 0)


def test_bad_inputs_are_rejected():
    images, plan, _ = _data()
    with pytest.raises(ValueError, match="uint8"):
        pipeline.put_train_data(images.astype(np.float32), plan, jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="perturbations"):
        pipeline.put_train_data(images, plan, jax.random.PRNGKey(0), np.zeros((3, 12, 12, 3)))
    data = pipeline.put_train_data(images, plan, jax.random.PRNGKey(0))
    with pytest.raises(TypeError, match="train_trigger"):
        pipeline.gather_batch(data, np.arange(4), "badnets")  # a name, not the trigger
