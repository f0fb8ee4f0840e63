"""Warping trigger: WaNet (Nguyen & Tran 2021), and the bilinear sampler it uses."""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ibjax import rng
from ibjax.triggers.common import TriggerParams, check_range, finish_images, image_hwc, jit_static_params, prepare_images

__all__ = ["WaNetParams", "wanet", "wanet_field", "bilinear_sample"]


@dataclasses.dataclass(frozen=True)
class WaNetParams(TriggerParams):
    """WaNet warping (the authors' generator: k = 4, s = 0.5, no rescale, noise mode on).

    Attributes:
      k: side of the random control grid (4).
      s: warping strength (0.5); the field is scaled by ``s / H`` in [-1, 1] grid coordinates.
      seed: integer seed of the fixed control grid.
      grid_rescale: multiplies the warped grid before clamping (1.0, WaNet's ``grid_rescale``).
      noise_scale: amplitude of the per-image noise-mode warp, in units of ``1 / H`` in grid
        coordinates (1.0 = uniform [-1, 1] / H as WaNet).
      noise: whether the attack's trigger adds the per-image noise warp (it then passes its
        per-sample key to :func:`wanet`). The attack's default: on for training poisons, off for
        test images (standard WaNet evaluates the fixed warp); the authors' generator adds the noise
        to the triggered test images too (``get_attack("wanet", test_noise=True)``; it changes ASR
        only). :func:`wanet` itself adds noise iff it is given a key.
    """

    k: int = 4
    s: float = 0.5
    seed: int = 0
    grid_rescale: float = 1.0
    noise_scale: float = 1.0
    noise: bool = True

    def check(self) -> None:
        check_range(self, "k", 1, integer=True)
        check_range(self, "s", 0.0)
        check_range(self, "seed", 0, integer=True)
        check_range(self, "grid_rescale", 0.0)
        check_range(self, "noise_scale", 0.0)

    def validate_shape(self, image_shape: Any) -> None:
        h, w, _ = image_hwc(image_shape)
        if min(h, w) < 2:
            raise ValueError(f"WaNet warps images of at least 2x2 pixels, got {h}x{w}")


def wanet_field(height: int, width: int, k: int = 4, seed: int = 0) -> jax.Array:
    """The fixed WaNet displacement field, ``[height, width, 2]`` float32.

    A ``k x k x 2`` control grid uniform in [-1, 1] (NumPy ``default_rng(seed)``, stable across
    versions), divided by its mean absolute value and upsampled bicubically to ``H x W`` as WaNet
    does (PyTorch ``interpolate(mode="bicubic", align_corners=True)``: Keys kernel a = -0.75, corner
    samples on the control points, edge taps clamped). Last axis: (x = width displacement,
    y = height displacement), unscaled (multiply by ``s / H`` to get grid-coordinate offsets).
    """
    return jnp.asarray(_wanet_field_np(int(height), int(width), int(k), int(seed)))


def _cubic_weights(t: np.ndarray, a: float = -0.75) -> np.ndarray:
    """Keys cubic-convolution weights of the taps at offsets -1, 0, 1, 2 from a fractional position t."""
    d = np.abs(t[:, None] - np.arange(-1, 3)[None, :])
    near = ((a + 2) * d - (a + 3)) * d * d + 1
    far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    return np.where(d <= 1, near, np.where(d < 2, far, 0.0))


def _bicubic_matrix(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) matrix resampling n_in samples to n_out, corners aligned, border taps clamped."""
    pos = np.arange(n_out) * ((n_in - 1) / (n_out - 1) if n_out > 1 else 0.0)
    base = np.floor(pos).astype(int)
    weights = _cubic_weights(pos - base)
    m = np.zeros((n_out, n_in))
    for j, off in enumerate(range(-1, 3)):
        np.add.at(m, (np.arange(n_out), np.clip(base + off, 0, n_in - 1)), weights[:, j])
    return m


def _wanet_field_np(height: int, width: int, k: int, seed: int) -> np.ndarray:
    ins = np.random.default_rng(seed).uniform(-1.0, 1.0, (k, k, 2))
    ins = ins / np.mean(np.abs(ins))
    field = np.einsum("hi,ijc,wj->hwc", _bicubic_matrix(height, k), ins, _bicubic_matrix(width, k))
    return field.astype(np.float32)


def _identity_grid(height: int, width: int) -> jax.Array:
    """``[H, W, 2]`` identity sampling grid in [-1, 1] (x, y), corners at +-1."""
    ys = jnp.linspace(-1.0, 1.0, height, dtype=jnp.float32)
    xs = jnp.linspace(-1.0, 1.0, width, dtype=jnp.float32)
    gx = jnp.broadcast_to(xs[None, :], (height, width))
    gy = jnp.broadcast_to(ys[:, None], (height, width))
    return jnp.stack([gx, gy], axis=-1)


def _sample_pixels(images: jax.Array, px: jax.Array, py: jax.Array) -> jax.Array:
    """Bilinear sampling at pixel coordinates.

    ``images``: ``[..., H, W, C]``; ``px``, ``py``: ``[..., H', W']`` column /
    row positions in pixel units (0 = first pixel centre), leading axes
    broadcastable against the images'. Positions are clamped to
    ``[0, W-1] x [0, H-1]`` (border padding). Returns ``[..., H', W', C]``.
    """
    h, w, c = images.shape[-3:]
    px, py = jnp.broadcast_arrays(px, py)
    lead = jnp.broadcast_shapes(images.shape[:-3], px.shape[:-2])
    ho, wo = px.shape[-2:]
    images = jnp.broadcast_to(images, lead + (h, w, c))
    px = jnp.broadcast_to(jnp.clip(px, 0.0, w - 1), lead + (ho, wo))
    py = jnp.broadcast_to(jnp.clip(py, 0.0, h - 1), lead + (ho, wo))
    x0 = jnp.clip(jnp.floor(px), 0, max(w - 2, 0)).astype(jnp.int32)
    y0 = jnp.clip(jnp.floor(py), 0, max(h - 2, 0)).astype(jnp.int32)
    x1 = jnp.minimum(x0 + 1, w - 1)
    y1 = jnp.minimum(y0 + 1, h - 1)
    fx = (px - x0)[..., None]
    fy = (py - y0)[..., None]

    flat = images.reshape(lead + (h * w, c))

    def gather(yi, xi):
        idx = (yi * w + xi).reshape(lead + (ho * wo, 1))
        vals = jnp.take_along_axis(flat, idx, axis=-2)
        return vals.reshape(lead + (ho, wo, c))

    top = gather(y0, x0) * (1.0 - fx) + gather(y0, x1) * fx
    bottom = gather(y1, x0) * (1.0 - fx) + gather(y1, x1) * fx
    return top * (1.0 - fy) + bottom * fy


@jax.jit
def bilinear_sample(images: jax.Array, grid: jax.Array) -> jax.Array:
    """Sample images bilinearly at grid positions.

    Args:
      images: ``[..., H, W, C]`` float.
      grid: ``[..., H', W', 2]`` (leading axes broadcastable against the
        images' leading axes) of (x, y) positions in [-1, 1] coordinates with
        corners aligned: -1 is the centre of the first pixel, +1 the centre of
        the last (PyTorch ``grid_sample(align_corners=True)``).

    Returns:
      ``[..., H', W', C]`` sampled values.

    Border handling: positions are clamped to the image ("border" padding), so
    a position outside [-1, 1] reads the nearest edge pixel. WaNet clamps its
    grid to [-1, 1] anyway.
    """
    images = jnp.asarray(images)
    h, w = images.shape[-3:-1]
    px = (grid[..., 0] + 1.0) * (0.5 * (w - 1))
    py = (grid[..., 1] + 1.0) * (0.5 * (h - 1))
    return _sample_pixels(images, px, py)


@jit_static_params
def wanet(
    images: jax.Array,
    params: WaNetParams = WaNetParams(),
    key: Optional[jax.Array] = None,
) -> jax.Array:
    """WaNet warping trigger.

    grid = clamp((identity + s * field / H) * grid_rescale, -1, 1), with
    ``field = wanet_field(H, W, k, seed)`` and ``identity`` the [-1, 1]
    sampling grid (corners aligned); the image is then sampled bilinearly at
    the grid (as :func:`bilinear_sample`, border clamping). The same ``s / H``
    scale is used for both coordinates (WaNet's convention; exact for square
    images). Internally the grid is converted to pixel coordinates
    analytically (clamping to [-1, 1] == clamping to the pixel range), so the
    identity warp reproduces the image to float rounding.

    Args:
      images: ``[..., H, W, C]`` in [0, 1].
      params: :class:`WaNetParams`.
      key: optional PRNG key. If given ("noise mode"), an extra per-pixel,
        per-coordinate warp uniform in ``[-1, 1] * noise_scale / H`` (grid
        coordinates) is added and the grid re-clamped, as the authors'
        ``clamp(grid + (rand * 2 - 1) / h, -1, 1)``. The noise has the images'
        leading (batch) shape, so each image of a batch gets its own noise.

    Returns:
      ``[..., H, W, C]``, same dtype. With ``s = 0`` and ``key=None`` this is
      the identity up to float rounding (~1e-6).
    """
    x, dtype = prepare_images(images)
    h, w = x.shape[-3:-1]
    r = params.grid_rescale
    field = wanet_field(h, w, params.k, params.seed)  # [H, W, 2]
    # Pixel position p of normalised position g: p = (g + 1) (n - 1) / 2. With
    # g = (i * 2 / (n - 1) - 1 + d) * r this is r i + (r (d - 1) + 1) (n - 1) / 2,
    # exactly i when d = 0 and r = 1.
    half = jnp.asarray([0.5 * (w - 1), 0.5 * (h - 1)], jnp.float32)
    index = jnp.stack(
        jnp.meshgrid(jnp.arange(w, dtype=jnp.float32), jnp.arange(h, dtype=jnp.float32)),
        axis=-1,
    )  # [H, W, 2] (x, y)
    disp = params.s * field / h
    pos = r * index + (r * (disp - 1.0) + 1.0) * half
    upper = 2.0 * half  # (W - 1, H - 1)
    pos = jnp.clip(pos, 0.0, upper)
    if key is not None:
        noise = rng.uniform(
            key, x.shape[:-3] + (h, w, 2), minval=-1.0, maxval=1.0, dtype=jnp.float32
        )
        pos = jnp.clip(pos + noise * (params.noise_scale / h) * half, 0.0, upper)
    out = _sample_pixels(x, pos[..., 0], pos[..., 1])
    return finish_images(out, dtype)
