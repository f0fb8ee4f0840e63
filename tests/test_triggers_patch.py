"""Tests for ibjax.triggers.patch: BadNets and TrojanNN."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ibjax import triggers as T
from ibjax.triggers.common import uniform_pattern


def _images(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).random(shape, dtype=np.float32))


# ---------------------------------------------------------------- BadNets


def _authors_badnet(image):
    """The authors' ``badnet_trigger``: ``x[:5, :5] = (1, 0, 0)`` on an [H, W, 3] image."""
    out = image.copy()
    out[:5, :5, 0] = 1
    out[:5, :5, 1] = 0
    out[:5, :5, 2] = 0
    return out


def test_badnets_is_the_authors_red_square():
    x = np.asarray(_images((2, 32, 32, 3)))
    y = np.asarray(T.get_attack("badnets").train_trigger(jnp.asarray(x)))
    for i in range(2):
        np.testing.assert_array_equal(y[i], _authors_badnet(x[i]))


@pytest.mark.parametrize("shape", [(2, 32, 32, 3), (28, 28, 1)])
def test_badnets_patch_only(shape):
    x = _images(shape)
    y = np.asarray(T.badnets(x))
    patch = y[..., :5, :5, :]
    expected = np.array([1.0, 0.0, 0.0]) if shape[-1] == 3 else np.array([1.0])  # white on grey images
    np.testing.assert_array_equal(patch, np.broadcast_to(expected, patch.shape))
    mask = np.zeros(shape[-3:], bool)
    mask[:5, :5, :] = True
    mask = np.broadcast_to(mask, shape)
    np.testing.assert_array_equal(y[~mask], np.asarray(x)[~mask])


def test_badnets_grey_and_position():
    x = _images((28, 28, 1))
    y = np.asarray(T.badnets(x, T.BadNetsParams(grey=1.0, row=20, col=21, size=3)))
    np.testing.assert_array_equal(y[20:23, 21:24], 1.0)
    np.testing.assert_array_equal(y[:20], np.asarray(x)[:20])
    # The function cuts a patch at the border; Attack.validate refuses such a patch.
    y = np.asarray(T.badnets(x, T.BadNetsParams(grey=0.0, row=26, col=26, size=5)))
    np.testing.assert_array_equal(y[26:, 26:], 0.0)
    with pytest.raises(ValueError, match="does not fit"):
        T.get_attack("badnets", row=26, col=26).validate((28, 28, 1))


# ---------------------------------------------------------------- TrojanNN


def test_trojannn_changes_only_its_patch_and_uses_the_given_pattern():
    x = _images((3, 16, 16, 3))
    pattern = np.random.default_rng(1).random((16, 16, 3), dtype=np.float32)
    y = np.asarray(T.trojannn(x, T.TrojanNNParams(pattern=pattern, row=2, col=3, size=4)))
    np.testing.assert_array_equal(y[:, 2:6, 3:7], np.broadcast_to(pattern[2:6, 3:7], (3, 4, 4, 3)))
    outside = np.ones((16, 16), bool)
    outside[2:6, 3:7] = False
    np.testing.assert_array_equal(y[:, outside], np.asarray(x)[:, outside])
    with pytest.raises(ValueError, match="shape"):
        T.trojannn(_images((2, 8, 8, 3)), T.TrojanNNParams(pattern=pattern))
    with pytest.raises(ValueError, match="shape"):
        T.get_attack("trojannn", pattern=pattern).validate((8, 8, 3))


def test_trojannn_pattern_from_a_png_file(tmp_path):
    from PIL import Image

    rgb = np.random.default_rng(4).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "patch.png")
    a = T.get_attack("trojannn", pattern=str(tmp_path / "patch.png"))
    assert a == T.get_attack("trojannn", pattern=rgb)  # the same pattern, however it was given
    assert not a.optimised_pattern and T.get_attack("trojannn").optimised_pattern
    y = np.asarray(a.train_trigger(_images((16, 16, 3))))
    np.testing.assert_allclose(y[:5, :5], rgb[:5, :5] / 255.0, atol=1e-7)


def _toy_features(x):
    # A fixed random conv + ReLU + pooling "network": T f32[B, 6].
    w = jnp.asarray(np.random.default_rng(7).normal(size=(3, 3, x.shape[-1], 6)), jnp.float32)
    h = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jnp.mean(jax.nn.relu(h), axis=(1, 2))


def test_trojannn_pattern_excites_the_selected_neurons_inside_the_patch_only():
    x = _images((8, 12, 12, 3), seed=2)
    params = T.TrojanNNParams(size=4, steps=40)
    pattern, selected = jax.jit(lambda z: T.trojannn_pattern(_toy_features, z, params))(x)
    start = uniform_pattern(12, 12, 3, 0)
    assert selected.shape == (2,) and len(set(np.asarray(selected).tolist())) == 2
    pattern = np.asarray(pattern)
    assert pattern.min() >= 0 and pattern.max() <= 1
    np.testing.assert_array_equal(pattern[4:], start[4:])  # only the patch is optimised
    np.testing.assert_array_equal(pattern[:, 4:], start[:, 4:])

    # Excitation of the selected neurons for a batch of candidate patterns, in one call.
    inside = np.zeros((12, 12, 1), bool)
    inside[:4, :4] = True

    def excitation(patterns):
        return jax.vmap(lambda p: _toy_features(jnp.where(inside, p, x))[:, selected].mean())(patterns)

    rng = np.random.default_rng(9)
    candidates = np.concatenate([pattern[None], start[None], rng.random((20, 12, 12, 3), dtype=np.float32)])
    scores = np.asarray(jax.jit(excitation)(jnp.asarray(candidates)))
    # The optimised patch beats its starting point and every one of 20 random patches.
    assert scores[0] > scores[1:].max() + 0.02
