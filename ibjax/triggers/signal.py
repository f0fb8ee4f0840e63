"""Signal trigger: SIG's horizontal sinusoid (Barni et al. 2019), a clean-label attack."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from ibjax.triggers.common import TriggerParams, check_range, finish_images, jit_static_params, prepare_images

__all__ = ["SIGParams", "sig"]


@dataclasses.dataclass(frozen=True)
class SIGParams(TriggerParams):
    """SIG sinusoidal signal.

    Attributes:
      delta: amplitude in [0, 1] units (40/255).
      f: number of periods across the image width (6).
    """

    delta: float = 40.0 / 255.0
    f: float = 6.0

    def check(self) -> None:
        check_range(self, "delta", 0.0, 1.0)
        check_range(self, "f", 0.0)


@jit_static_params
def sig(images: jax.Array, params: SIGParams = SIGParams()) -> jax.Array:
    """Add a horizontal sinusoid: ``x + delta * sin(2 pi j f / W)``.

    ``j = 0..W-1`` is the column index; the signal is the same on every row and channel. Returns
    ``[..., H, W, C]``, same dtype, clipped to [0, 1].
    """
    x, dtype = prepare_images(images)
    w = x.shape[-2]
    j = jnp.arange(w, dtype=jnp.float32)
    signal = params.delta * jnp.sin(2.0 * math.pi * j * params.f / w)
    return finish_images(x + signal[None, :, None], dtype)
