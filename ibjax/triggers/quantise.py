"""Quantisation trigger: BPP's colour-depth squeeze (Wang et al. 2022)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ibjax.triggers.common import TriggerParams, check_range, finish_images, jit_static_params, prepare_images

__all__ = ["BPPParams", "bpp"]


@dataclasses.dataclass(frozen=True)
class BPPParams(TriggerParams):
    """BPP colour-depth squeeze.

    Attributes:
      levels: number of intensity levels per channel (8, BPP's squeeze_num).
    """

    levels: int = 8

    def check(self) -> None:
        check_range(self, "levels", 2, integer=True)


@jit_static_params
def bpp(images: jax.Array, params: BPPParams = BPPParams()) -> jax.Array:
    """Quantise every channel to ``levels`` values: ``round(x (L-1)) / (L-1)``.

    BPP's Floyd-Steinberg dithering is omitted (plain rounding, half to even). Returns
    ``[..., H, W, C]``, same dtype, with at most ``levels`` distinct values per channel.
    """
    x, dtype = prepare_images(images)
    n = params.levels - 1
    return finish_images(jnp.round(jnp.clip(x, 0.0, 1.0) * n) / n, dtype)
