"""Frequency-domain triggers: FTrojan's DCT-coefficient trigger in the chroma channels (Wang et al.
2022) and the low-frequency additive trigger (Zeng et al. 2021), with its universal adversarial
perturbation."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ibjax.triggers.common import (
    StaticArray,
    TriggerParams,
    check_class_indices,
    check_range,
    fail_field,
    finish_images,
    image_hwc,
    jit_static_params,
    pattern_value,
    prepare_images,
)

__all__ = ["FTrojanParams", "LowFrequencyParams", "ftrojan", "low_frequency", "low_frequency_pattern",
           "low_frequency_uap"]


# --------------------------------------------------------------------------------------------------
# FTrojan
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FTrojanParams(TriggerParams):
    """FTrojan frequency-domain trigger.

    Attributes:
      magnitude: value added to each selected DCT coefficient, [0, 1] units (30/255).
      positions: (row, col) frequency indices within each block, each in ``[0, block side)``.
        ``None`` (default): FTrojan's mid and high frequency of a block of side ``b``,
        ``(b/2 - 1, b/2 - 1)`` and ``(b - 1, b - 1)`` ((15, 15) and (31, 31) for 32-pixel blocks;
        (13, 13) and (27, 27) for 28x28 images).
      block: DCT block side (32). If a side is smaller than ``block`` or not a multiple of it, the
        whole side is one block.
      channels: YCrCb channel indices that receive the trigger (Cr, Cb = 1, 2). For
        single-channel images the trigger goes to channel 0 instead.
    """

    magnitude: float = 30.0 / 255.0
    positions: Optional[tuple[tuple[int, int], ...]] = None
    block: int = 32
    channels: tuple[int, ...] = (1, 2)

    def check(self) -> None:
        check_range(self, "magnitude", 0.0)
        check_range(self, "block", 1, integer=True)
        if self.positions is not None and (not self.positions or any(min(p) < 0 for p in self.positions)):
            fail_field(self, "positions", self.positions, "a non-empty list of (row, col) pairs >= 0, or None")
        if not self.channels or any(ch not in (0, 1, 2) for ch in self.channels):
            fail_field(self, "channels", self.channels, "YCrCb channel indices in {0, 1, 2}")

    def block_positions(self, bh: int, bw: int) -> tuple[tuple[int, int], ...]:
        """The (row, col) positions in a ``bh x bw`` block (the defaults resolved)."""
        if self.positions is None:
            return ((bh // 2 - 1, bw // 2 - 1), (bh - 1, bw - 1)) if min(bh, bw) >= 2 else ((bh - 1, bw - 1),)
        return self.positions

    def validate_shape(self, image_shape: Any) -> None:
        h, w, c = image_hwc(image_shape)
        if c not in (1, 3):
            raise ValueError(f"FTrojan works on 1- or 3-channel images, got {c} channels")
        bh, bw = _block_side(h, self.block), _block_side(w, self.block)
        bad = [p for p in self.block_positions(bh, bw) if not (0 <= p[0] < bh and 0 <= p[1] < bw)]
        if bad:
            raise ValueError(f"FTrojan positions {bad} lie outside the {bh}x{bw} DCT blocks of {h}x{w} images: "
                             f"use rows < {bh} and columns < {bw}")


# Full-range YCrCb as JPEG (and OpenCV's COLOR_RGB2YCrCb, which FTrojan uses): rows Y, Cr, Cb. The
# 0.5 chroma offset is left out: the trigger is additive, so the offset cancels in the inverse.
_RGB2YCRCB = np.array(
    [
        [0.299, 0.587, 0.114],
        [0.713 * (1 - 0.299), 0.713 * -0.587, 0.713 * -0.114],
        [0.564 * -0.299, 0.564 * -0.587, 0.564 * (1 - 0.114)],
    ],
    dtype=np.float64,
)
_YCRCB2RGB = np.linalg.inv(_RGB2YCRCB)


def _dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II matrix ``D`` (``n x n``): coefficients = ``D @ x``, inverse ``D.T``."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    d = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    d[0, :] = np.sqrt(1.0 / n)
    return d


def _block_side(size: int, block: int) -> int:
    return block if (size >= block and size % block == 0) else size


@jit_static_params
def ftrojan(images: jax.Array, params: FTrojanParams = FTrojanParams()) -> jax.Array:
    """FTrojan: add fixed DCT coefficients in the chroma channels.

    RGB -> YCrCb (full range, as FTrojan), blockwise orthonormal 2-D DCT-II (``D X D^T`` per
    block, by matrix multiplication), ``+magnitude`` at each of the positions
    (:meth:`FTrojanParams.block_positions`) in every block of the channels ``params.channels``,
    inverse DCT, YCrCb -> RGB, clip. For ``C == 1`` the single channel is used
    directly (no colour conversion).

    Args:
      images: ``[..., H, W, C]`` in [0, 1], ``C`` in {1, 3}.
      params: :class:`FTrojanParams`.

    Returns:
      ``[..., H, W, C]``, same dtype. ``magnitude = 0`` is the identity up to
      float rounding (~1e-6).
    """
    x, dtype = prepare_images(images)
    h, w, c = x.shape[-3:]
    params.validate_shape((h, w, c))
    hp = lax.Precision.HIGHEST
    if c == 3:
        x = jnp.einsum("...c,dc->...d", x, jnp.asarray(_RGB2YCRCB, jnp.float32), precision=hp)
        channels = params.channels
    else:
        channels = (0,)
    bh = _block_side(h, params.block)
    bw = _block_side(w, params.block)
    dh = jnp.asarray(_dct_matrix(bh), jnp.float32)
    dw = jnp.asarray(_dct_matrix(bw), jnp.float32)

    lead = x.shape[:-3]
    blocks = x.reshape(lead + (h // bh, bh, w // bw, bw, c))
    coeffs = jnp.einsum("ki,...aibjc,lj->...akblc", dh, blocks, dw, precision=hp)

    delta = np.zeros((bh, bw, c), np.float32)
    for (pr, pc) in params.block_positions(bh, bw):
        for ch in channels:
            delta[pr, pc, ch] += params.magnitude
    coeffs = coeffs + jnp.asarray(delta)[:, None, :, :]  # broadcast over block grid

    blocks = jnp.einsum("ki,...akblc,lj->...aibjc", dh, coeffs, dw, precision=hp)
    x = blocks.reshape(lead + (h, w, c))
    if c == 3:
        x = jnp.einsum("...c,dc->...d", x, jnp.asarray(_YCRCB2RGB, jnp.float32), precision=hp)
    return finish_images(x, dtype)


# --------------------------------------------------------------------------------------------------
# Low-frequency trigger (Zeng et al. 2021)
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LowFrequencyParams(TriggerParams):
    """An additive trigger with only low spatial frequencies (smooth, hard to see, survives low-pass filters).

    Attributes:
      eps: largest absolute change of a pixel, [0, 1] units (10/255; a choice of ours, SPEC.md gives
        no value).
      cutoff: the trigger lives in the lowest ``cutoff x cutoff`` 2-D DCT frequencies of the whole
        image, per channel (4 of 32).
      seed: seed of the default pattern (random coefficients in that window).
      pattern: the additive perturbation [H, W, C] (signed, used as given), e.g. the universal
        adversarial perturbation of :func:`low_frequency_uap` (the original attack's trigger): an
        array, a :class:`StaticArray` or a ``.npy`` path. ``None`` = the seeded pattern.
    """

    eps: float = 10.0 / 255.0
    cutoff: int = 4
    seed: int = 0
    pattern: Optional[StaticArray] = dataclasses.field(default=None, metadata={"signed": True})

    def check(self) -> None:
        check_range(self, "eps", 0.0, 1.0)
        check_range(self, "cutoff", 1, integer=True)
        check_range(self, "seed", 0, integer=True)

    def validate_shape(self, image_shape: Any) -> None:
        pattern_value(self.pattern, image_hwc(image_shape), "low-frequency")


def _low_pass_basis(height: int, width: int, cutoff: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``cutoff`` rows of the orthonormal DCT-II matrices: delta = Dh.T @ coeffs @ Dw."""
    return _dct_matrix(height)[: min(cutoff, height)], _dct_matrix(width)[: min(cutoff, width)]


def _from_low_frequencies(coeffs: jax.Array, dh: np.ndarray, dw: np.ndarray, eps: float) -> jax.Array:
    """[h, w, C] coefficients -> [H, W, C] image, scaled down (never up) to max |.| <= eps."""
    delta = jnp.einsum("kh,klc,lw->hwc", jnp.asarray(dh, jnp.float32), coeffs, jnp.asarray(dw, jnp.float32),
                       precision=lax.Precision.HIGHEST)
    return delta * jnp.minimum(1.0, eps / jnp.maximum(jnp.max(jnp.abs(delta)), 1e-12))


def _low_frequency_pattern_np(height: int, width: int, channels: int, cutoff: int, eps: float, seed: int) -> np.ndarray:
    dh, dw = _low_pass_basis(height, width, cutoff)
    coeffs = np.random.default_rng(seed).normal(size=(dh.shape[0], dw.shape[0], channels))
    delta = np.einsum("kh,klc,lw->hwc", dh, coeffs, dw)
    return (delta * (eps / np.max(np.abs(delta)))).astype(np.float32)


def low_frequency_pattern(height: int, width: int, channels: int,
                          params: LowFrequencyParams = LowFrequencyParams()) -> jax.Array:
    """The default low-frequency trigger, f32[H, W, C], max |value| = eps, only low frequencies."""
    return jnp.asarray(_low_frequency_pattern_np(int(height), int(width), int(channels), int(params.cutoff),
                                                 float(params.eps), int(params.seed)))


@jit_static_params
def low_frequency(images: jax.Array, params: LowFrequencyParams = LowFrequencyParams()) -> jax.Array:
    """Add the low-frequency pattern: ``clip(x + delta)``. Returns ``[..., H, W, C]``, same dtype."""
    x, dtype = prepare_images(images)
    h, w, c = x.shape[-3:]
    delta = pattern_value(params.pattern, (h, w, c), "low-frequency")
    if delta is None:
        delta = _low_frequency_pattern_np(h, w, c, params.cutoff, params.eps, params.seed)
    return finish_images(x + delta, dtype)


def low_frequency_uap(
    logits_fn: Callable[[jax.Array], jax.Array],
    images: jax.Array,
    target: int,
    params: LowFrequencyParams = LowFrequencyParams(),
    *,
    steps: int = 200,
    step_size: float = 0.1,
) -> jax.Array:
    """A targeted universal adversarial perturbation restricted to low frequencies (the LF trigger).

    Minimises the mean cross-entropy towards ``target`` of ``logits_fn(clip(x + delta))`` over the
    batch by normalised gradient descent on the DCT coefficients of the ``cutoff x cutoff`` window
    (so delta never leaves the low-frequency subspace), scaling delta back to ``max |delta| <= eps``
    after every step. Starts from the seeded default pattern.

    Args:
      logits_fn: ``x f32[B, H, W, C] -> logits f32[B, K]`` of a clean model (deterministic).
      images: ``f32[B, H, W, C]`` clean images in [0, 1].
      target: the target class, in [0, K) (checked when it is concrete, not under tracing: an
        out-of-range target would make the loss constant and return the start unchanged).
      params: ``eps``, ``cutoff`` and ``seed`` (the start).
      steps, step_size: descent steps and the L2 length of each step in coefficient space.

    Returns:
      ``delta f32[H, W, C]``; use it as ``get_attack("low_frequency", pattern=delta)``.
    """
    x, _ = prepare_images(images)
    if x.ndim != 4:
        raise ValueError(f"low_frequency_uap: images must be a batch f32[B, H, W, C], got shape {x.shape}")
    check_class_indices(logits_fn, x, target, "low_frequency_uap: target")
    h, w, c = x.shape[-3:]
    dh, dw = _low_pass_basis(h, w, params.cutoff)
    start = jnp.asarray(_low_frequency_pattern_np(h, w, c, params.cutoff, params.eps, params.seed))
    coeffs0 = jnp.einsum("kh,hwc,lw->klc", jnp.asarray(dh, jnp.float32), start, jnp.asarray(dw, jnp.float32),
                         precision=lax.Precision.HIGHEST)
    labels = jnp.full((x.shape[0],), target, jnp.int32)

    def loss(coeffs):
        delta = _from_low_frequencies(coeffs, dh, dw, params.eps)
        logits = logits_fn(jnp.clip(x + delta, 0.0, 1.0)).astype(jnp.float32)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=-1))

    def body(_, coeffs):
        g = jax.grad(loss)(coeffs)
        return coeffs - step_size * g / jnp.maximum(jnp.linalg.norm(g), 1e-12)

    coeffs = jax.lax.fori_loop(0, steps, body, coeffs0)
    return _from_low_frequencies(coeffs, dh, dw, params.eps)
