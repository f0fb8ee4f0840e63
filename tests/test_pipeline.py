import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ibjax import pipeline, poison, triggers


def _data(n=40, perturb=False, attack="badnets"):
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
    x, y, flag = jax.jit(lambda d, i: pipeline.gather_batch(d, i, attack.train_trigger))(data, idx)
    np.testing.assert_array_equal(flag, plan.poisoned)
    np.testing.assert_array_equal(y, plan.labels)
    clean = images.astype(np.float32) / 255
    np.testing.assert_allclose(x[~plan.poisoned], clean[~plan.poisoned], atol=1e-6)
    np.testing.assert_allclose(x[plan.poisoned], triggers.badnets(jnp.asarray(clean[plan.poisoned])), atol=1e-6)


def test_random_triggers_are_fixed_per_sample_across_batches():
    _, plan, data = _data(attack="wanet")
    attack = triggers.get_attack("wanet")
    p = np.flatnonzero(plan.poisoned)
    x1, _, _ = pipeline.gather_batch(data, jnp.asarray(p), attack.train_trigger)
    x2, _, _ = pipeline.gather_batch(data, jnp.asarray(p[::-1]), attack.train_trigger)
    np.testing.assert_allclose(x1, x2[::-1], atol=1e-6)
    assert not np.allclose(x1[0], x1[1])


def test_perturbations_are_added_to_the_poisoned_samples_before_the_trigger():
    images, plan, data = _data(perturb=True)
    identity = lambda img, key: img  # noqa: E731
    x, _, _ = pipeline.gather_batch(data, jnp.arange(40), identity)
    clean = images.astype(np.float32) / 255
    expected = np.where(plan.poisoned[:, None, None, None], np.clip(clean + 0.1, 0, 1), clean)
    np.testing.assert_allclose(x, expected, atol=1e-3)  # perturbations are stored as float16


def test_epoch_and_test_batches():
    b = pipeline.epoch_batches(jax.random.PRNGKey(0), 103, 10)
    assert b.shape == (10, 10) and len(np.unique(b)) == 100
    idx, valid = pipeline.test_batches(np.arange(23), 10)
    assert idx.shape == (3, 10) and valid.sum() == 23
    assert sorted(idx[valid].tolist()) == list(range(23))
    with pytest.raises(ValueError, match="exceeds"):
        pipeline.epoch_batches(jax.random.PRNGKey(0), 5, 10)


def test_bad_inputs_are_rejected():
    images, plan, _ = _data()
    with pytest.raises(ValueError, match="uint8"):
        pipeline.put_train_data(images.astype(np.float32), plan, jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="perturbations"):
        pipeline.put_train_data(images, plan, jax.random.PRNGKey(0), np.zeros((3, 12, 12, 3)))
