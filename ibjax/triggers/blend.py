"""Blend triggers: Blend's whole-image blend and Adaptive-Blend's piecewise blend."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ibjax import rng
from ibjax.triggers.common import (
    StaticArray,
    TriggerParams,
    check_range,
    finish_images,
    image_hwc,
    jit_static_params,
    pattern_value,
    prepare_images,
    uniform_pattern,
)

__all__ = ["BlendParams", "AdaptiveBlendParams", "blend", "blend_pattern", "adaptive_blend", "adaptive_blend_mask"]


def blend_pattern(height: int, width: int, seed: int = 0) -> jax.Array:
    """Blend's default noise pattern: ``[height, width, 1]`` float32 uniform in [0, 1].

    Drawn with NumPy's ``default_rng(seed)`` (PCG64, stable across NumPy and JAX versions), so it is
    fixed given (seed, H, W) and broadcasts over channels. The authors' generator loads its noise
    from a file instead (``trigger/Blendnoise.npy``, uint8 [32, 32]); pass such a file as
    ``pattern=``.
    """
    return jnp.asarray(uniform_pattern(int(height), int(width), 1, int(seed)))


def _pattern(params: Any, h: int, w: int, c: int, name: str) -> np.ndarray:
    """The blend pattern [H, W, 1 or C]: the user's, or the seeded noise."""
    p = pattern_value(params.pattern, (h, w, c), name, any_channels=True)
    return uniform_pattern(h, w, 1, params.seed) if p is None else p


# --------------------------------------------------------------------------------------------------
# Blend (Chen et al. 2017)
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BlendParams(TriggerParams):
    """Blend: x' = (1 - alpha) x + alpha P.

    Attributes:
      alpha: blend ratio (0.3, as the authors for training poisons and test images alike).
      seed: seed of the default greyscale noise pattern (:func:`blend_pattern`).
      pattern: the user's pattern, [H, W] / [H, W, 1] (greyscale, broadcast over channels) or
        [H, W, C], in [0, 1]: an array, a :class:`StaticArray` or a path (``.npy``; an integer array
        such as the authors' uint8 ``Blendnoise.npy`` is divided by 255; or an image file read with
        Pillow). ``None``: the seeded noise.
    """

    alpha: float = 0.3
    seed: int = 0
    pattern: Optional[StaticArray] = None

    def check(self) -> None:
        check_range(self, "alpha", 0.0, 1.0)
        check_range(self, "seed", 0, integer=True)

    def validate_shape(self, image_shape: Any) -> None:
        pattern_value(self.pattern, image_hwc(image_shape), "Blend", any_channels=True)


@jit_static_params
def blend(images: jax.Array, params: BlendParams = BlendParams()) -> jax.Array:
    """Blend a fixed pattern into the images.

    Args:
      images: ``[..., H, W, C]`` in [0, 1].
      params: :class:`BlendParams`.

    Returns:
      ``(1 - alpha) * images + alpha * P``, same shape and dtype, with ``P`` the user's pattern or
      ``blend_pattern(H, W, seed)``, broadcast over channels and batch; ``alpha = 0`` is exactly
      the identity.
    """
    x, dtype = prepare_images(images)
    h, w, c = x.shape[-3:]
    out = (1.0 - params.alpha) * x + params.alpha * _pattern(params, h, w, c, "Blend")
    return finish_images(out, dtype)


# --------------------------------------------------------------------------------------------------
# Adaptive-Blend (Qi et al. 2023)
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class AdaptiveBlendParams(TriggerParams):
    """Adaptive-Blend.

    Attributes:
      alpha: blend ratio (0.15 for training poisons; 0.2 at test time).
      seed: seed of the default noise pattern (as :class:`BlendParams`).
      grid: the pattern is split into ``grid x grid`` pieces (4 -> 16).
      mask_fraction: ``int(grid**2 * mask_fraction)`` pieces are masked out per image when a key is
        given (0.5 -> exactly 8 of 16).
      pattern: the user's pattern (as :class:`BlendParams`); ``None``: the seeded noise.
      darken_masked: True (the authors' generator, ``(1 - a) x + a (P * mask)``): the masked-out
        pieces are blended with black, ``x -> (1 - alpha) x`` (0.85 x at alpha 0.15). False: they
        keep the clean pixels.
    """

    alpha: float = 0.15
    seed: int = 0
    grid: int = 4
    mask_fraction: float = 0.5
    pattern: Optional[StaticArray] = None
    darken_masked: bool = True

    def check(self) -> None:
        check_range(self, "alpha", 0.0, 1.0)
        check_range(self, "seed", 0, integer=True)
        check_range(self, "grid", 1, integer=True)
        check_range(self, "mask_fraction", 0.0, 1.0)

    def validate_shape(self, image_shape: Any) -> None:
        h, w, c = image_hwc(image_shape)
        if self.grid > min(h, w):
            raise ValueError(f"Adaptive-Blend grid={self.grid} has more pieces per side than {h}x{w} images have "
                             f"pixels: use grid <= {min(h, w)}")
        pattern_value(self.pattern, (h, w, c), "Adaptive-Blend", any_channels=True)


@functools.partial(jax.jit, static_argnames=("batch_shape", "height", "width", "params"))
def adaptive_blend_mask(
    key: jax.Array,
    batch_shape: tuple[int, ...],
    height: int,
    width: int,
    params: AdaptiveBlendParams = AdaptiveBlendParams(),
) -> jax.Array:
    """Per-image piece masks of Adaptive-Blend, laid out as the authors' ``get_trigger_mask``.

    Pieces are ``step_h x step_w`` squares with ``step = side // grid``; piece ``(r, c)`` covers
    rows ``[r step_h, (r + 1) step_h)`` and columns ``[c step_w, (c + 1) step_w)``. Rows or columns
    past ``grid * step`` (when the side is not a multiple of ``grid``) belong to no piece and are
    never masked. In every image exactly ``int(grid**2 * mask_fraction)`` pieces, a uniformly random
    subset drawn independently per image, are masked.

    Returns:
      bool ``[*batch_shape, H, W, 1]``, True where the pattern is applied.
    """
    n = params.grid * params.grid
    n_masked = int(n * params.mask_fraction)
    scores = rng.uniform(key, tuple(batch_shape) + (n,))
    ranks = jnp.argsort(jnp.argsort(scores, axis=-1), axis=-1)
    keep = jnp.concatenate([ranks >= n_masked, jnp.ones(tuple(batch_shape) + (1,), bool)], axis=-1)
    step_h, step_w = height // params.grid, width // params.grid
    piece_r = np.arange(height) // max(step_h, 1)
    piece_c = np.arange(width) // max(step_w, 1)
    piece = piece_r[:, None] * params.grid + piece_c[None, :]
    outside = (piece_r[:, None] >= params.grid) | (piece_c[None, :] >= params.grid)
    piece = np.where(outside, n, piece).reshape(-1)  # index n: the always-kept slot
    mask = jnp.take(keep, jnp.asarray(piece), axis=-1)
    return mask.reshape(tuple(batch_shape) + (height, width, 1))


@jit_static_params
def adaptive_blend(
    images: jax.Array,
    params: AdaptiveBlendParams = AdaptiveBlendParams(),
    key: Optional[jax.Array] = None,
) -> jax.Array:
    """Adaptive-Blend trigger.

    Args:
      images: ``[..., H, W, C]`` in [0, 1].
      params: :class:`AdaptiveBlendParams`.
      key: optional PRNG key. If given (training poisons), each image gets its own random piece
        mask ``m`` (:func:`adaptive_blend_mask`): ``(1 - alpha) x + alpha (P * m)`` if
        ``darken_masked`` (the authors'), else the blend on the kept pieces and ``x`` on the masked
        ones. If ``None``, the full pattern: ``(1 - alpha) x + alpha P`` (test time, alpha 0.2).

    Returns:
      ``[..., H, W, C]``, same dtype.
    """
    x, dtype = prepare_images(images)
    h, w, c = x.shape[-3:]
    pattern = _pattern(params, h, w, c, "Adaptive-Blend")
    if key is None:
        out = (1.0 - params.alpha) * x + params.alpha * pattern
    else:
        mask = adaptive_blend_mask(key, x.shape[:-3], h, w, params)
        if params.darken_masked:
            out = (1.0 - params.alpha) * x + params.alpha * jnp.where(mask, pattern, 0.0)
        else:
            out = jnp.where(mask, (1.0 - params.alpha) * x + params.alpha * pattern, x)
    return finish_images(out, dtype)
