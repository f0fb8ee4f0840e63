"""Tests for ibjax.triggers.frequency: FTrojan and the low-frequency trigger."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ibjax import triggers as T
from ibjax.triggers import frequency as F


def _images(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).random(shape, dtype=np.float32))


# ---------------------------------------------------------------- FTrojan


@pytest.mark.parametrize("shape", [(2, 32, 32, 3), (28, 28, 1), (2, 64, 64, 3), (2, 40, 24, 3)])
def test_ftrojan_identity_and_small_change(shape):
    x = _images(shape)
    np.testing.assert_allclose(np.asarray(T.ftrojan(x, T.FTrojanParams(magnitude=0.0))), np.asarray(x), atol=1e-5)
    d = np.abs(np.asarray(T.ftrojan(x)) - np.asarray(x))
    assert 1e-3 < d.max() < 0.1
    T.get_attack("ftrojan").validate(shape)  # the default positions fit every block size


def test_ftrojan_adds_coefficients():
    # Mid-grey image: no clipping, so the DCT of the chroma change is exactly the trigger.
    x = jnp.full((32, 32, 3), 0.5)
    y = T.ftrojan(x)
    d = F._dct_matrix(32)
    yuv_diff = np.einsum("hwc,dc->hwd", np.asarray(y - x), F._RGB2YCRCB)
    coeffs = np.einsum("ki,ijc,lj->klc", d, yuv_diff, d)
    expected = np.zeros((32, 32, 3))
    expected[15, 15, 1:] = expected[31, 31, 1:] = 30 / 255
    np.testing.assert_allclose(coeffs, expected, atol=1e-5)


def test_ftrojan_default_positions_follow_the_block_and_explicit_ones_must_fit():
    assert T.FTrojanParams().block_positions(32, 32) == ((15, 15), (31, 31))
    assert T.FTrojanParams().block_positions(28, 28) == ((13, 13), (27, 27))
    with pytest.raises(ValueError, match="outside"):
        T.get_attack("ftrojan", positions=[[31, 31]]).validate((28, 28, 1))
    with pytest.raises(ValueError, match="outside"):
        T.ftrojan(_images((28, 28, 1)), T.FTrojanParams(positions=((31, 31),)))
    with pytest.raises(ValueError, match="channels"):
        T.get_attack("ftrojan").validate((32, 32, 4))


def test_ftrojan_uses_full_range_ycrcb_like_opencv():
    # OpenCV's RGB2YCrCb for floats: Cr = (R - Y) 0.713 + 0.5, Cb = (B - Y) 0.564 + 0.5. Adding m to
    # Cr and Cb moves R, G, B by about (1.403, -1.058, 1.773) m.
    rgb = np.random.default_rng(0).uniform(size=(50, 3))
    y = rgb @ np.array([0.299, 0.587, 0.114])
    ycrcb = np.stack([y, (rgb[:, 0] - y) * 0.713, (rgb[:, 2] - y) * 0.564], -1)
    np.testing.assert_allclose(rgb @ F._RGB2YCRCB.T, ycrcb, atol=1e-12)
    np.testing.assert_allclose(F._YCRCB2RGB @ np.array([0.0, 1.0, 1.0]), [1.403, -1.058, 1.773], atol=2e-3)


# ---------------------------------------------------------------- low frequency


def _dct2(delta):
    return np.einsum("kh,hwc,lw->klc", F._dct_matrix(delta.shape[0]), delta, F._dct_matrix(delta.shape[1]))


def test_low_frequency_is_small_smooth_and_additive():
    delta = np.asarray(T.low_frequency_pattern(32, 32, 3, T.LowFrequencyParams()))
    assert np.abs(delta).max() == pytest.approx(10 / 255, rel=1e-5)
    coeffs = _dct2(delta)
    assert np.abs(coeffs[4:]).max() < 1e-6 and np.abs(coeffs[:, 4:]).max() < 1e-6  # nothing above the cutoff
    x = jnp.full((2, 32, 32, 3), 0.5)  # mid-grey: no clipping
    np.testing.assert_allclose(np.asarray(T.low_frequency(x)) - 0.5, np.broadcast_to(delta, (2, 32, 32, 3)), atol=1e-6)
    np.testing.assert_allclose(np.asarray(T.low_frequency(x, T.LowFrequencyParams(eps=0.0))), 0.5)


def test_low_frequency_uap_moves_a_model_towards_the_target_within_budget(tmp_path):
    w = jnp.asarray(np.random.default_rng(5).normal(size=(12 * 12 * 3, 4)), jnp.float32) / 20
    logits_fn = lambda z: z.reshape(z.shape[0], -1) @ w  # noqa: E731
    x = _images((16, 12, 12, 3), seed=4)
    params = T.LowFrequencyParams(eps=0.1, cutoff=3)
    delta = np.asarray(jax.jit(lambda z: T.low_frequency_uap(logits_fn, z, 2, params, steps=30))(x))
    assert np.abs(delta).max() <= 0.1 + 1e-6
    coeffs = _dct2(delta)
    assert np.abs(coeffs[3:]).max() < 1e-5 and np.abs(coeffs[:, 3:]).max() < 1e-5

    def target_prob(d):
        return jnp.mean(jax.nn.softmax(logits_fn(jnp.clip(x + d, 0, 1)))[:, 2])

    # Better than any of 20 random low-frequency patterns of the same budget.
    randoms = np.stack([np.asarray(T.low_frequency_pattern(12, 12, 3, T.LowFrequencyParams(eps=0.1, cutoff=3, seed=s)))
                        for s in range(20)])
    scores = np.asarray(jax.jit(jax.vmap(target_prob))(jnp.asarray(np.concatenate([delta[None], randoms]))))
    assert scores[0] > 1.1 * scores[1:].max()
    # The UAP is the attack's pattern, as an array or a .npy file (a signed pattern, used as given).
    np.save(tmp_path / "uap.npy", delta)
    a = T.get_attack("low_frequency", pattern=str(tmp_path / "uap.npy"))
    assert a == T.get_attack("low_frequency", pattern=delta)
    np.testing.assert_allclose(np.asarray(a.train_trigger(x)), np.clip(np.asarray(x) + delta, 0, 1), atol=1e-6)
    from PIL import Image

    Image.fromarray(np.zeros((12, 12, 3), np.uint8)).save(tmp_path / "uap.png")
    with pytest.raises(ValueError, match="float .npy"):  # an image has no sign
        T.get_attack("low_frequency", pattern=str(tmp_path / "uap.png"))


def test_low_frequency_uap_refuses_a_target_outside_the_models_classes():
    w = jnp.asarray(np.random.default_rng(6).normal(size=(8 * 8 * 3, 4)), jnp.float32)
    logits_fn = lambda z: z.reshape(z.shape[0], -1) @ w  # noqa: E731
    x = _images((2, 8, 8, 3))
    params = T.LowFrequencyParams(cutoff=2)
    for target in (4, -1):
        with pytest.raises(ValueError, match=r"target must lie in \[0, 4\)"):
            T.low_frequency_uap(logits_fn, x, target, params, steps=1)
        # Also when only the images are traced (the target is still a known number).
        with pytest.raises(ValueError, match=r"target must lie in \[0, 4\)"):
            jax.jit(lambda z: T.low_frequency_uap(logits_fn, z, target, params, steps=1))(x)
    with pytest.raises(ValueError, match="batch"):
        T.low_frequency_uap(logits_fn, x[0], 1, params, steps=1)
