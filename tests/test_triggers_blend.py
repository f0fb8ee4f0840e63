"""Tests for ibjax.triggers.blend: Blend and Adaptive-Blend, against the authors' rules re-derived in NumPy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ibjax import triggers as T

KEY = jax.random.PRNGKey(3)


def _images(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).random(shape, dtype=np.float32))


@pytest.fixture
def noise_file(tmp_path):
    """A pattern file shaped like the authors' ``trigger/Blendnoise.npy``: uint8 [32, 32] in 0..255."""
    noise = np.random.default_rng(11).integers(0, 256, (32, 32), dtype=np.uint8)
    path = tmp_path / "Blendnoise.npy"
    np.save(path, noise)
    return str(path), noise


# ---------------------------------------------------------------- the authors' rules, in NumPy


def _authors_mask(img_size, total_pieces, masked):
    """The authors' ``get_trigger_mask`` with the masked piece indices given (they draw them with
    ``random.sample``): piece i is column i % div, row i // div, of side img_size // div."""
    div = int(np.sqrt(total_pieces))
    step = img_size // div
    mask = np.ones((img_size, img_size, 1))
    for i in masked:
        x, y = i % div, i // div
        mask[y * step:(y + 1) * step, x * step:(x + 1) * step] = 0
    return mask


def _authors_blend(image, pattern, alpha):
    """``blend_trigger``: (1 - alpha) image + alpha mask, pattern = np.load(...) / 255 with a channel axis."""
    return (1 - alpha) * image + alpha * pattern


def _authors_adaptive(image, pattern, trigger_mask, alpha):
    """``adaptive_blend_trigger``: the pattern multiplied by the piece mask, then blended."""
    return (1 - alpha) * image + alpha * (pattern * trigger_mask)


# ---------------------------------------------------------------- Blend


def test_blend_with_the_authors_pattern_file_is_their_blend(noise_file):
    path, noise = noise_file
    a = T.get_attack("blend", pattern=path)
    x = np.asarray(_images((3, 32, 32, 3)))
    pattern = np.expand_dims(noise / 255.0, axis=-1)
    expected = _authors_blend(x.astype(np.float64), pattern, 0.3)
    for trigger in (a.train_trigger, a.test_trigger):  # alpha 0.3 for training poisons and test images
        np.testing.assert_allclose(np.asarray(trigger(jnp.asarray(x))), expected, atol=1e-6)
    assert a == T.get_attack("blend", pattern=noise)  # a path and the array give one attack


def test_blend_identity_formula_and_default_noise():
    x = _images((3, 32, 32, 3))
    np.testing.assert_array_equal(np.asarray(T.blend(x, T.BlendParams(alpha=0.0))), np.asarray(x))
    p = T.blend_pattern(32, 32, 0)
    assert p.shape == (32, 32, 1)
    np.testing.assert_allclose(np.asarray(T.blend(x)), np.asarray(0.7 * x + 0.3 * p), atol=1e-6)
    assert not np.allclose(np.asarray(T.blend_pattern(32, 32, 1)), np.asarray(p))
    rgb = np.random.default_rng(5).random((32, 32, 3), dtype=np.float32)  # a colour pattern is used per channel
    np.testing.assert_allclose(np.asarray(T.blend(x, T.BlendParams(pattern=rgb))), np.asarray(0.7 * x + 0.3 * rgb),
                               atol=1e-6)


def test_blend_pattern_shape_is_checked_before_training():
    a = T.get_attack("blend", pattern=np.zeros((32, 32), np.uint8))
    a.validate((32, 32, 3))
    with pytest.raises(ValueError, match=r"\(32, 32, 1\).*28, 28"):
        a.validate((28, 28, 1))
    with pytest.raises(ValueError, match="shape"):
        T.get_attack("blend", pattern=np.zeros((32, 32, 2))).validate((32, 32, 3))


# ---------------------------------------------------------------- Adaptive-Blend


def _masked_pieces(mask, grid=4):
    """Indices of the masked pieces of a bool [H, W, 1] mask, read at each piece's top-left pixel."""
    step = mask.shape[0] // grid
    return [i for i in range(grid * grid) if not mask[(i // grid) * step, (i % grid) * step, 0]]


@pytest.mark.parametrize("size", [32, 30])
def test_adaptive_blend_masks_are_the_authors_piece_masks(size):
    masks = np.asarray(T.adaptive_blend_mask(KEY, (64,), size, size))
    assert masks.shape == (64, size, size, 1)
    seen = np.zeros(16)
    for m in masks:
        masked = _masked_pieces(m)
        assert len(masked) == 8  # int(0.5 * 16) pieces, every image
        np.testing.assert_array_equal(m, _authors_mask(size, 16, masked).astype(bool))
        seen[masked] += 1
    assert len({tuple(_masked_pieces(m)) for m in masks}) > 32  # drawn independently per image
    assert 16 < seen.min() and seen.max() < 48  # every piece is masked about half the time (32 of 64)


def test_adaptive_blend_training_poison_is_the_authors(noise_file):
    path, noise = noise_file
    a = T.get_attack("adaptive_blend", pattern=path)
    x = np.asarray(_images((6, 32, 32, 3), seed=1))
    y = np.asarray(a.train_trigger(jnp.asarray(x), KEY))
    masks = np.asarray(T.adaptive_blend_mask(KEY, (6,), 32, 32))
    pattern = np.expand_dims(noise / 255.0, axis=-1)
    for i in range(6):
        expected = _authors_adaptive(x[i].astype(np.float64), pattern, _authors_mask(32, 16, _masked_pieces(masks[i])),
                                     0.15)
        np.testing.assert_allclose(y[i], expected, atol=1e-6)
        # The masked-out pieces are darkened to 0.85 x.
        out = ~masks[i, :, :, 0]
        np.testing.assert_allclose(y[i][out], 0.85 * x[i][out], atol=1e-6)
    # Test images: the full pattern at alpha 0.2.
    np.testing.assert_allclose(np.asarray(a.test_trigger(jnp.asarray(x))), _authors_blend(x, pattern, 0.2), atol=1e-6)


def test_adaptive_blend_can_leave_masked_pieces_clean():
    x = _images((4, 32, 32, 3))
    a = T.get_attack("adaptive_blend", darken_masked=False)
    y = np.asarray(a.train_trigger(x, KEY))
    m = np.broadcast_to(np.asarray(T.adaptive_blend_mask(KEY, (4,), 32, 32)), y.shape)
    full = np.asarray(0.85 * x + 0.15 * T.blend_pattern(32, 32, 0))
    np.testing.assert_allclose(y[m], full[m], atol=1e-6)
    np.testing.assert_array_equal(y[~m], np.asarray(x)[~m])


def test_adaptive_blend_attack_settings():
    a = T.get_attack("adaptive_blend")
    assert a.keep_label_fraction == 0.5 and a.train_trigger.uses_key and not a.test_trigger.uses_key
    assert a.train_params.alpha == 0.15 and a.test_params.alpha == 0.2 and a.train_params.darken_masked
    with pytest.raises(ValueError, match="PRNG key"):
        a.train_trigger(_images((2, 32, 32, 3)))
    with pytest.raises(ValueError, match="grid"):
        T.get_attack("adaptive_blend", grid=40).validate((32, 32, 3))
