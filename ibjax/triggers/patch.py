"""Patch triggers: BadNets' solid square and TrojanNN's optimised square."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ibjax.triggers.common import (
    StaticArray,
    TriggerParams,
    check_patch_fits,
    check_range,
    fail_field,
    finish_images,
    image_hwc,
    jit_static_params,
    pattern_value,
    prepare_images,
    square_mask,
    uniform_pattern,
)

__all__ = ["BadNetsParams", "TrojanNNParams", "badnets", "trojannn", "trojannn_pattern"]


# --------------------------------------------------------------------------------------------------
# BadNets (Gu et al. 2017)
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BadNetsParams(TriggerParams):
    """BadNets patch (the authors' generator: ``x[:5, :5] = (1, 0, 0)``).

    Attributes:
      size: side of the square patch, pixels (5).
      colour: patch colour per channel, in [0, 1]; default pure red (1, 0, 0).
      grey: patch value used for single-channel images. ``None`` (default) means the brightest
        channel of ``colour`` (1.0 for pure red: a white patch, as BadNets uses on greyscale digits).
      row, col: top-left pixel of the patch (0, 0 = top-left corner).
    """

    size: int = 5
    colour: tuple[float, ...] = (1.0, 0.0, 0.0)
    grey: Optional[float] = None
    row: int = 0
    col: int = 0

    def check(self) -> None:
        check_range(self, "size", 1, integer=True)
        check_range(self, "row", 0, integer=True)
        check_range(self, "col", 0, integer=True)
        if not self.colour or any(not 0.0 <= v <= 1.0 for v in self.colour):
            fail_field(self, "colour", self.colour, "one value in [0, 1] per channel")
        if self.grey is not None:
            check_range(self, "grey", 0.0, 1.0)

    def validate_shape(self, image_shape: Any) -> None:
        h, w, c = image_hwc(image_shape)
        check_patch_fits(self, (h, w, c), "BadNets")
        if c != 1 and len(self.colour) != c:
            raise ValueError(f"the BadNets colour {self.colour} has {len(self.colour)} values but the images have "
                             f"{c} channels: give one value per channel")


@jit_static_params
def badnets(images: jax.Array, params: BadNetsParams = BadNetsParams()) -> jax.Array:
    """Stamp a solid square patch.

    Args:
      images: ``[..., H, W, C]`` in [0, 1].
      params: :class:`BadNetsParams`. For ``C == 1`` the patch value is ``params.grey`` or, if that
        is ``None``, ``max(params.colour)``; otherwise ``params.colour`` per channel.

    Returns:
      ``[..., H, W, C]``, same dtype: pixels in rows ``[row, row+size)`` x columns
      ``[col, col+size)`` (cut at the image border) take the colour, all others are unchanged.
    """
    x, dtype = prepare_images(images)
    h, w, c = x.shape[-3:]
    if c == 1:
        value = params.grey if params.grey is not None else float(np.max(params.colour))
        colour = jnp.asarray([value], jnp.float32)
    elif c == len(params.colour):
        colour = jnp.asarray(params.colour, jnp.float32)
    else:
        raise ValueError(f"BadNets colour has {len(params.colour)} channels; images have {c}")
    out = jnp.where(square_mask(h, w, params.row, params.col, params.size), colour, x)
    return finish_images(out, dtype)


# --------------------------------------------------------------------------------------------------
# TrojanNN (Liu et al. 2018)
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TrojanNNParams(TriggerParams):
    """TrojanNN: a square patch whose content is optimised to excite chosen neurons of a clean model.

    Attributes:
      size, row, col: the patch (default BadNets' 5x5 top-left footprint, so that the two attacks
        differ only in what the patch holds: a solid colour vs an optimised pattern).
      pattern: [H, W, C] in [0, 1] (only the patch region is read): an array, a
        :class:`StaticArray` or a path (``.npy`` or an image file, see
        :func:`~ibjax.triggers.common.load_pattern`), e.g. from :func:`trojannn_pattern`.
        ``None``: the optimisation's starting point, a uniform random pattern from ``seed`` (an
        un-optimised patch). The study optimises it against a clean model first.
      seed: seed of the starting pattern.
      neurons, steps, step_size: how :func:`trojannn_pattern` optimises the pattern (neurons to
        excite, ascent steps, per-step change of a patch pixel).
    """

    size: int = 5
    row: int = 0
    col: int = 0
    pattern: Optional[StaticArray] = None
    seed: int = 0
    neurons: int = 2
    steps: int = 200
    step_size: float = 0.02

    def check(self) -> None:
        for name, lo in (("size", 1), ("row", 0), ("col", 0), ("seed", 0), ("neurons", 1), ("steps", 0)):
            check_range(self, name, lo, integer=True)
        check_range(self, "step_size", 0.0)

    def validate_shape(self, image_shape: Any) -> None:
        h, w, c = image_hwc(image_shape)
        check_patch_fits(self, (h, w, c), "TrojanNN")
        pattern_value(self.pattern, (h, w, c), "TrojanNN")


@jit_static_params
def trojannn(images: jax.Array, params: TrojanNNParams = TrojanNNParams()) -> jax.Array:
    """Stamp the TrojanNN patch: pixels inside the square take the pattern's values, the rest are unchanged.

    Args:
      images: ``[..., H, W, C]`` in [0, 1].
      params: :class:`TrojanNNParams`.

    Returns:
      ``[..., H, W, C]``, same dtype.
    """
    x, dtype = prepare_images(images)
    h, w, c = x.shape[-3:]
    pattern = pattern_value(params.pattern, (h, w, c), "TrojanNN")
    if pattern is None:
        pattern = uniform_pattern(h, w, c, params.seed)
    out = jnp.where(square_mask(h, w, params.row, params.col, params.size), pattern, x)
    return finish_images(out, dtype)


def trojannn_pattern(
    features_fn: Callable[[jax.Array], jax.Array],
    images: jax.Array,
    params: TrojanNNParams = TrojanNNParams(),
) -> tuple[jax.Array, jax.Array]:
    """Optimise the TrojanNN patch against a clean model.

    As TrojanNN: pick the representation neurons the patch region drives most strongly (largest
    summed absolute sensitivity of the batch-mean activation to the patch pixels, from a forward-mode
    Jacobian over the patch pixels, which are few), then raise those neurons' mean activation by
    projected signed gradient ascent on the patch pixels, kept in [0, 1].

    Args:
      features_fn: ``x f32[B, H, W, C] -> T f32[B, D]``, a clean model's representation (close over
        its variables and a fixed noise key, so it is deterministic).
      images: ``f32[B, H, W, C]`` clean images in [0, 1] to optimise over.
      params: the patch geometry, the starting pattern (``params.pattern`` or ``seed``) and the
        optimisation settings (``neurons``, ``steps``, ``step_size``).

    Returns:
      ``(pattern f32[H, W, C], selected int32[neurons])``; pass the pattern as
      ``get_attack("trojannn", pattern=...)`` or ``TrojanNNParams(pattern=...)``.
    """
    x, _ = prepare_images(images)
    h, w, c = x.shape[-3:]
    start = pattern_value(params.pattern, (h, w, c), "TrojanNN")
    start = uniform_pattern(h, w, c, params.seed) if start is None else start
    mask = np.broadcast_to(square_mask(h, w, params.row, params.col, params.size), (h, w, c))
    where = np.flatnonzero(mask)
    if where.size == 0:
        raise ValueError("the TrojanNN patch lies outside the image: check size, row and col")
    base = jnp.asarray(start).reshape(-1)

    def stamp(v):
        p = base.at[where].set(v).reshape(h, w, c)
        return jnp.where(mask, p, x)

    mean_t = lambda v: jnp.mean(features_fn(stamp(v)).astype(jnp.float32), axis=0)  # noqa: E731
    v0 = base[where]
    jvp_col = lambda e: jax.jvp(mean_t, (v0,), (e,))[1]  # noqa: E731
    jac = jax.lax.map(jvp_col, jnp.eye(where.size, dtype=jnp.float32), batch_size=16)  # [P, D]
    selected = jnp.argsort(-jnp.sum(jnp.abs(jac), axis=0))[: params.neurons].astype(jnp.int32)

    objective = lambda v: jnp.sum(mean_t(v)[selected])  # noqa: E731
    grad = jax.grad(objective)

    def body(_, v):
        return jnp.clip(v + params.step_size * jnp.sign(grad(v)), 0.0, 1.0)

    v = jax.lax.fori_loop(0, params.steps, body, v0)
    return base.at[where].set(v).reshape(h, w, c), selected
