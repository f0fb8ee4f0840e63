"""Tests for ibjax.triggers.adversarial: L2 PGD and the label-consistent trigger, against the
authors' rules (``pgd_attack.py``, ``label_consistent_trigger``) re-derived in NumPy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ibjax import triggers as T


def _images(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).random(shape, dtype=np.float32))


def _linear(d, k=10, seed=0):
    w = np.random.default_rng(seed).normal(size=(d, k)).astype(np.float32) * 0.05
    return w, (lambda x: x.reshape(x.shape[0], -1) @ jnp.asarray(w))


# ---------------------------------------------------------------- the authors' rules, in NumPy


def _authors_pgd_l2(x, y, w, eps, eps_iter, steps, start=None):
    """advertorch-style ``PgdAttack(ord=2).perturb`` for logits = x_flat @ w, in float64.

    ``start``: the uniform [0, 1] draw of ``rand_init_delta`` (None: ``rand_init=False``)."""
    x = x.astype(np.float64)
    b = x.shape[0]

    def norm(d):
        return np.sqrt((d.reshape(b, -1) ** 2).sum(1)).reshape(b, 1, 1, 1)

    if start is None:
        delta = np.zeros_like(x)
    else:
        delta = start.astype(np.float64) - x
        delta = delta * np.minimum(eps / norm(delta), 1.0)  # clamp_by_pnorm
        delta = np.clip(x + delta, 0, 1) - x
    onehot = np.eye(w.shape[1])[y]
    for _ in range(steps):
        z = (x + delta).reshape(b, -1) @ w
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        grad = ((p - onehot) @ w.T).reshape(x.shape)  # d/dx of the summed cross-entropy
        delta = delta + eps_iter * grad / np.maximum(norm(grad), 1e-6)
        delta = np.clip(x + delta, 0, 1) - x
        delta = delta * np.minimum(eps / np.maximum(norm(delta), 1e-300), 1.0)
    return np.clip(x + delta, 0, 1)


def _authors_label_consistent(image, amplitude):
    """``label_consistent_trigger`` on an [H, W, 3] image: [[0,1,0],[1,0,1],[0,1,0]] -> +a where 1, -a
    where 0, added to each 3x3 corner and clipped there."""
    out = image.astype(np.float32).copy()
    pattern = np.stack([np.array([[0, 1, 0], [1, 0, 1], [0, 1, 0]], np.uint8)] * 3, axis=-1)
    pert = np.where(pattern == 1, amplitude, -amplitude)
    h, w, _ = out.shape
    for ys, xs in [(slice(0, 3), slice(0, 3)), (slice(0, 3), slice(w - 3, w)),
                   (slice(h - 3, h), slice(0, 3)), (slice(h - 3, h), slice(w - 3, w))]:
        out[ys, xs] = np.clip(out[ys, xs] + pert, 0, 1)
    return out


# ---------------------------------------------------------------- PGD


@pytest.mark.parametrize("random_start", [False, True])
def test_pgd_l2_is_the_authors_pgd(random_start):
    x = _images((4, 8, 8, 3))
    w, logits_fn = _linear(8 * 8 * 3)
    y = np.array([0, 3, 5, 9])
    key = jax.random.PRNGKey(5)
    # Few steps with a small ball, so that the projection binds.
    params = T.PGDParams(eps=0.5, step_size=0.05, steps=30, random_start=random_start)
    # The random start our PGD draws (jax.random's uniform, as the authors' uniform_(0, 1)).
    run = jax.jit(lambda z, k: (T.pgd_l2(logits_fn, z, jnp.asarray(y), params, key=k),
                                jax.random.uniform(k, z.shape, jnp.float32)))
    ours, start = (np.asarray(a) for a in run(x, key))
    start = start if random_start else None
    ref = _authors_pgd_l2(np.asarray(x), y, w.astype(np.float64), 0.5, 0.05, 30, start)
    np.testing.assert_allclose(ours, ref, atol=2e-4)
    norms = np.sqrt(((ours - np.asarray(x)) ** 2).sum(axis=(1, 2, 3)))
    assert np.all(norms <= 0.5 + 1e-4) and np.all(norms > 0.25)


def test_pgd_l2_increases_the_loss_and_zero_steps_is_identity():
    x = _images((6, 8, 8, 3))
    _, logits_fn = _linear(8 * 8 * 3, seed=1)
    y = jnp.argmax(logits_fn(x), axis=1)
    adv = jax.jit(lambda z: T.pgd_l2(logits_fn, z, y))(x)  # the defaults: 300/255, 1.5/255, 100 steps
    assert adv.shape == x.shape and adv.dtype == x.dtype

    def ce(z):
        return -jnp.take_along_axis(jax.nn.log_softmax(logits_fn(z)), y[:, None], axis=1)[:, 0]

    assert np.all(np.asarray(ce(adv)) > np.asarray(ce(x)))
    np.testing.assert_array_equal(np.asarray(T.pgd_l2(logits_fn, x, y, T.PGDParams(steps=0))), np.asarray(x))
    with pytest.raises(ValueError, match="key"):
        T.pgd_l2(logits_fn, x, y, T.PGDParams(random_start=True))


# ---------------------------------------------------------------- label-consistent


def test_label_consistent_triggers_are_the_authors():
    x = np.asarray(_images((3, 32, 32, 3)))
    adv = np.clip(x + 0.05 * np.sin(30 * x), 0, 1).astype(np.float32)  # stands for PGD images
    a = T.get_attack("label_consistent")
    train = np.asarray(a.train_trigger(jnp.asarray(adv)))
    test = np.asarray(a.test_trigger(jnp.asarray(x)))
    for i in range(3):
        np.testing.assert_allclose(train[i], _authors_label_consistent(adv[i], 64 / 255), atol=1e-6)
        np.testing.assert_allclose(test[i], _authors_label_consistent(x[i], 1.0), atol=1e-7)
    # The corner pixel is -amplitude: at test time the corners are exact 0/1 boards with a 0 corner.
    board = np.array([[0, 1, 0], [1, 0, 1], [0, 1, 0]], np.float32)[:, :, None]
    for corner in (test[:, :3, :3], test[:, :3, -3:], test[:, -3:, :3], test[:, -3:, -3:]):
        np.testing.assert_array_equal(corner, np.broadcast_to(board, corner.shape))


def test_label_consistent_perturbation_grey_images_and_attack_settings():
    x = jnp.full((2, 28, 28, 1), 0.5)
    a = T.get_attack("label_consistent")
    y = np.asarray(a.train_trigger(x))
    amp = 64 / 255
    np.testing.assert_allclose(y[:, 0, 0], 0.5 - amp, atol=1e-6)
    np.testing.assert_allclose(y[:, 0, 1], 0.5 + amp, atol=1e-6)
    np.testing.assert_allclose(y[:, -1, -1], 0.5 - amp, atol=1e-6)
    np.testing.assert_allclose(y[:, 10, 10], 0.5, atol=1e-7)
    z = np.asarray(T.label_consistent(x, perturbation=jnp.full(x.shape, 0.7)))
    np.testing.assert_allclose(z[:, 10, 10], 1.0)  # the perturbation is clipped...
    np.testing.assert_allclose(z[:, 0, 0], 1.0 - amp, atol=1e-6)  # ...then the board stamped
    assert a.clean_label and a.needs_perturbation
    assert a.train_params.amplitude == pytest.approx(64 / 255) and a.test_params.amplitude == 1.0
    assert a.train_params.pgd == T.PGDParams()  # the authors' eps, step and steps
    ref = T.get_attack("label_consistent", **T.reference_attack_overrides("label_consistent"))
    assert ref.train_params.pgd == T.PGDParams(random_start=True)
    with pytest.raises(ValueError, match="overlap"):
        T.get_attack("label_consistent", size=15).validate((28, 28, 1))


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("field, value", [("pgd_steps", -1), ("pgd_eps", -0.5), ("pgd_step_size", -1e-3),
                                          ("pgd_steps", 2.5)])
def test_label_consistent_pgd_fields_are_checked_by_their_own_names(field, value):
    for make in (lambda: T.LabelConsistentParams(**{field: value}),
                 lambda: T.get_attack("label_consistent", **{field: value})):
        with pytest.raises(ValueError, match=rf"LabelConsistentParams\.{field} = ") as info:
            make()
        assert "PGDParams" not in str(info.value)


def test_pgd_l2_refuses_labels_outside_the_models_classes():
    x = _images((3, 4, 4, 3))
    _, logits_fn = _linear(4 * 4 * 3, k=5)
    for bad in ([0, 5, 1], [0, -1, 1]):
        with pytest.raises(ValueError, match=r"labels must lie in \[0, 5\)"):
            T.pgd_l2(logits_fn, x, jnp.asarray(bad), T.PGDParams(steps=2))
    with pytest.raises(ValueError, match="one label per image"):
        T.pgd_l2(logits_fn, x, jnp.asarray([0, 1]), T.PGDParams(steps=2))
    # Traced labels cannot be checked (their values are unknown while tracing): no error there.
    out = jax.jit(lambda y: T.pgd_l2(logits_fn, x, y, T.PGDParams(steps=2)))(jnp.asarray([0, 4, 1]))
    assert out.shape == x.shape
