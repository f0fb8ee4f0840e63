"""Tests for ibjax.triggers.warp: WaNet's field, warp and noise mode, against PyTorch and the authors' rule."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ibjax import triggers as T
from ibjax.triggers import warp


def _images(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).random(shape, dtype=np.float32))


def test_zero_strength_is_identity():
    for shape in [(2, 32, 32, 3), (28, 28, 1), (2, 20, 24, 3)]:
        x = _images(shape)
        np.testing.assert_allclose(np.asarray(T.wanet(x, T.WaNetParams(s=0.0))), np.asarray(x), atol=1e-6)


def test_warp_moves_a_ramp_by_the_field_subpixel():
    # On a linear ramp bilinear sampling returns the sample position itself, so the displacement
    # shows directly: s * field / H in grid units.
    h = w = 32
    ramp = jnp.broadcast_to(jnp.linspace(0.0, 1.0, w)[None, :, None], (h, w, 1))
    y = T.wanet(ramp)
    field = T.wanet_field(h, w)
    expected = jnp.clip(jnp.linspace(-1, 1, w)[None, :] + 0.5 * field[..., 0] / h, -1, 1)
    np.testing.assert_allclose(np.asarray(y[..., 0]), np.asarray((expected + 1) / 2), atol=1e-5)
    assert np.abs(np.asarray(y) - np.asarray(ramp)).max() > 1e-3


def test_field_is_aligned_bicubic_through_the_control_grid():
    # WaNet upsamples with align_corners=True: the corner samples are the corner control values, and
    # a field upsampled to k x k is the control grid itself.
    k, seed = 4, 3
    ins = np.random.default_rng(seed).uniform(-1.0, 1.0, (k, k, 2))
    ins = ins / np.mean(np.abs(ins))
    field = np.asarray(T.wanet_field(32, 32, k, seed))
    for r, c in [(0, 0), (0, -1), (-1, 0), (-1, -1)]:
        np.testing.assert_allclose(field[r, c], ins[r, c], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(T.wanet_field(k, k, k, seed)), ins, rtol=1e-6)
    # Keys' kernel: weights sum to 1 for any a, and with a = -0.5 they reproduce a linear function.
    t = np.linspace(0.0, 1.0, 11)
    np.testing.assert_allclose(warp._cubic_weights(t).sum(1), 1.0, atol=1e-12)
    np.testing.assert_allclose(warp._cubic_weights(t, a=-0.5) @ np.arange(-1.0, 3.0), t, atol=1e-12)
    np.testing.assert_allclose(warp._bicubic_matrix(31, 7).sum(1), 1.0, atol=1e-12)


def test_field_matches_torch_bicubic_align_corners():
    torch = pytest.importorskip("torch")
    ins = np.random.default_rng(0).uniform(-1.0, 1.0, (4, 4, 2))
    ins = ins / np.mean(np.abs(ins))
    up = torch.nn.functional.interpolate(
        torch.tensor(ins.transpose(2, 0, 1)[None]), size=(32, 32), mode="bicubic", align_corners=True
    )[0].numpy().transpose(1, 2, 0)
    np.testing.assert_allclose(np.asarray(T.wanet_field(32, 32, 4, 0)), up, atol=1e-5)


@pytest.mark.parametrize("shape,rescale", [((2, 20, 24, 1), 1.0), ((2, 32, 32, 3), 0.9)])
def test_warp_matches_the_grid_formulation(shape, rescale):
    # WaNet's definition: clamp((identity + s * field / H) * rescale) then grid-sample.
    x = _images(shape)
    h, w = shape[-3:-1]
    p = T.WaNetParams(s=2.0, grid_rescale=rescale)
    gy, gx = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    identity = np.stack([gx, gy], -1)
    grid = np.clip((identity + p.s * np.asarray(T.wanet_field(h, w)) / h) * rescale, -1, 1).astype(np.float32)
    np.testing.assert_allclose(np.asarray(T.wanet(x, p)), np.asarray(T.bilinear_sample(x, grid)), atol=1e-5)


def test_bilinear_sample_identity_and_border():
    x = _images((2, 8, 10, 3))
    np.testing.assert_allclose(np.asarray(T.bilinear_sample(x, warp._identity_grid(8, 10))), np.asarray(x), atol=1e-6)
    out = T.bilinear_sample(x, jnp.full((8, 10, 2), 5.0))  # out-of-range positions read the border pixel
    np.testing.assert_allclose(np.asarray(out), np.broadcast_to(np.asarray(x)[:, -1:, -1:, :], out.shape), atol=1e-6)


def _authors_wanet(image, field, noise, s=0.5):
    """The authors' ``wanet_trigger`` in PyTorch, with the noise draw ``ins`` given ([H, W, 2] in [-1, 1])."""
    torch = pytest.importorskip("torch")
    h = image.shape[0]
    lin = torch.linspace(-1, 1, steps=h)
    gx, gy = torch.meshgrid(lin, lin, indexing="ij")
    identity = torch.stack((gy, gx), 2)[None]
    grid = torch.clamp(identity + s * torch.tensor(field)[None] / h, -1, 1)
    if noise is not None:
        grid = torch.clamp(grid + torch.tensor(noise)[None] / h, -1, 1)
    img = torch.tensor(image, dtype=torch.float32).unsqueeze(0).permute(0, 3, 1, 2)
    out = torch.nn.functional.grid_sample(img, grid, align_corners=True)
    return out.squeeze(0).permute(1, 2, 0).numpy()


def test_training_and_test_triggers_are_the_authors_warp():
    x = np.asarray(_images((32, 32, 3), seed=2))
    field = np.asarray(T.wanet_field(32, 32))
    key = jax.random.PRNGKey(7)
    # The noise our trigger draws for this image and key (jax.random's uniform, as WaNet's rand*2-1).
    noise = np.asarray(jax.random.uniform(key, (32, 32, 2), minval=-1.0, maxval=1.0))
    default = T.get_attack("wanet")
    np.testing.assert_allclose(np.asarray(default.train_trigger(jnp.asarray(x), key)), _authors_wanet(x, field, noise),
                               atol=2e-5)
    # ibjax's test images: the fixed warp only; the authors' (test_noise=True): the noise warp too.
    np.testing.assert_allclose(np.asarray(default.test_trigger(jnp.asarray(x), key)), _authors_wanet(x, field, None),
                               atol=2e-5)
    ref = T.get_attack("wanet", **T.reference_attack_overrides("wanet"))
    assert ref.test_trigger.uses_key and not default.test_trigger.uses_key
    np.testing.assert_allclose(np.asarray(ref.test_trigger(jnp.asarray(x), key)), _authors_wanet(x, field, noise),
                               atol=2e-5)
    with pytest.raises(ValueError, match="PRNG key"):
        ref.test_trigger(jnp.asarray(x))
