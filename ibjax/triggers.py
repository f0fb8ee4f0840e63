"""Backdoor triggers as pure ``jax.numpy`` functions, and the attack registry.

Conventions
-----------
* Images are floating-point arrays of shape ``[..., H, W, C]`` with values in
  ``[0, 1]`` (no normalisation). Any number of leading batch axes is allowed,
  including none (a single ``[H, W, C]`` image). ``C`` is 1 (greyscale, e.g.
  MNIST 28x28x1) or 3 (RGB, e.g. CIFAR-10 / SVHN 32x32x3); ``H`` and ``W`` are
  arbitrary.
* Every trigger returns an array of the same shape and dtype as its input,
  clipped to ``[0, 1]``. Computation is done in float32 and cast back.
* Intensities (patch colours, amplitudes, magnitudes) are in the same ``[0, 1]``
  units as the pixels, so "64/255" means a change of 64 grey levels of an 8-bit
  image.
* Parameters are frozen (hashable) dataclasses whose defaults are the reference
  values of SPEC.md ("Data and poisoning"). They are static configuration:
  the trigger functions are wrapped in ``jax.jit`` with ``params`` static (so
  eager calls compile once per shape), and sequence-valued fields must be
  tuples.
* Randomness comes only from an explicit ``jax.random`` key (raw ``PRNGKey``
  or typed ``jax.random.key``). Fixed trigger patterns (Blend noise, WaNet
  field) come from an integer ``seed`` in the params. When a trigger with
  per-image randomness gets a batch and one key, the random draw has the batch
  shape, so every image gets different randomness; the same key always gives
  the same output.
* All triggers are jit- and vmap-able (shapes are static, no Python control
  flow on values).

Triggers: :func:`badnets`, :func:`blend`, :func:`wanet`, :func:`pgd_l2`,
:func:`label_consistent`, :func:`adaptive_blend`, :func:`sig`,
:func:`ftrojan`, :func:`bpp`, :func:`trojannn` (pattern from :func:`trojannn_pattern`),
:func:`low_frequency` (optionally the UAP of :func:`low_frequency_uap`).

Registry: :class:`Attack`, :data:`ATTACKS`, :func:`get_attack`. Every
``Attack`` has ``train_trigger(images, key)`` and ``test_trigger(images, key)``
callables (the key is ignored by deterministic triggers).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = [
    "BadNetsParams",
    "BlendParams",
    "WaNetParams",
    "PGDParams",
    "LabelConsistentParams",
    "AdaptiveBlendParams",
    "SIGParams",
    "FTrojanParams",
    "BPPParams",
    "TrojanNNParams",
    "LowFrequencyParams",
    "StaticArray",
    "badnets",
    "blend",
    "blend_pattern",
    "wanet",
    "wanet_field",
    "bilinear_sample",
    "pgd_l2",
    "label_consistent",
    "adaptive_blend",
    "adaptive_blend_mask",
    "sig",
    "ftrojan",
    "bpp",
    "trojannn",
    "trojannn_pattern",
    "low_frequency",
    "low_frequency_pattern",
    "low_frequency_uap",
    "Attack",
    "ATTACKS",
    "get_attack",
]


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def _prepare(images: jax.Array) -> tuple[jax.Array, Any]:
    """Validate ``[..., H, W, C]`` floating images; return float32 copy and dtype."""
    images = jnp.asarray(images)
    if images.ndim < 3:
        raise ValueError(
            f"images must have shape [..., H, W, C]; got shape {images.shape}"
        )
    if not jnp.issubdtype(images.dtype, jnp.floating):
        raise TypeError(
            f"images must be floating point in [0, 1]; got dtype {images.dtype}"
        )
    return images.astype(jnp.float32), images.dtype


def _finish(x: jax.Array, dtype: Any) -> jax.Array:
    return jnp.clip(x, 0.0, 1.0).astype(dtype)


# Triggers are jitted with their params dataclass static (params must be
# hashable: frozen dataclasses with tuple fields). They still compose with an
# outer jit / vmap.
_jit_static_params = functools.partial(jax.jit, static_argnames=("params",))


# --------------------------------------------------------------------------
# BadNets
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BadNetsParams:
    """BadNets patch.

    Attributes:
      size: side of the square patch, pixels (5).
      colour: patch colour per channel, in [0, 1]; default pure red (1, 0, 0).
      grey: patch value used for single-channel images. ``None`` (default)
        means the brightest channel of ``colour`` (1.0 for pure red: a white
        patch, as BadNets uses on greyscale digits).
      row, col: top-left pixel of the patch (0, 0 = top-left corner).
    """

    size: int = 5
    colour: tuple[float, ...] = (1.0, 0.0, 0.0)
    grey: Optional[float] = None
    row: int = 0
    col: int = 0


@_jit_static_params
def badnets(images: jax.Array, params: BadNetsParams = BadNetsParams()) -> jax.Array:
    """Stamp a solid square patch (BadNets, Gu et al. 2017).

    Args:
      images: ``[..., H, W, C]`` in [0, 1].
      params: :class:`BadNetsParams`. For ``C == 1`` the patch value is
        ``params.grey`` or, if that is ``None``, ``max(params.colour)``. For
        ``C == len(params.colour)`` the colour is used per channel.

    Returns:
      ``[..., H, W, C]``, same dtype: pixels in rows ``[row, row+size)`` x
      columns ``[col, col+size)`` (cut at the image border) are set to the
      colour, every other pixel is unchanged.
    """
    x, dtype = _prepare(images)
    h, w, c = x.shape[-3:]
    if c == 1:
        value = params.grey if params.grey is not None else float(np.max(params.colour))
        colour = jnp.asarray([value], jnp.float32)
    elif c == len(params.colour):
        colour = jnp.asarray(params.colour, jnp.float32)
    else:
        raise ValueError(
            f"BadNets colour has {len(params.colour)} channels; images have {c}"
        )
    out = jnp.where(_square_mask(h, w, params.row, params.col, params.size), colour, x)
    return _finish(out, dtype)


def _square_mask(height: int, width: int, row: int, col: int, size: int) -> np.ndarray:
    """bool[H, W, 1]: rows [row, row+size) x columns [col, col+size), cut at the border."""
    rows, cols = np.arange(height), np.arange(width)
    in_rows = (rows >= row) & (rows < row + size)
    in_cols = (cols >= col) & (cols < col + size)
    return (in_rows[:, None] & in_cols[None, :])[:, :, None]


# --------------------------------------------------------------------------
# Blend
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BlendParams:
    """Blend (Chen et al. 2017) with a fixed noise pattern.

    Attributes:
      alpha: blend ratio a in x' = (1 - a) x + a P (0.3).
      seed: integer seed of the greyscale uniform-[0, 1] noise pattern P.
    """

    alpha: float = 0.3
    seed: int = 0


def blend_pattern(height: int, width: int, seed: int = 0) -> jax.Array:
    """The Blend noise pattern: ``[height, width, 1]`` float32 uniform in [0, 1].

    Drawn with NumPy's ``default_rng(seed)`` (PCG64, stable across NumPy and JAX versions), so it is
    fixed given (seed, H, W) and broadcasts over channels.
    """
    return jnp.asarray(_uniform_pattern_np(int(height), int(width), 1, int(seed)))


@functools.lru_cache(maxsize=64)
def _uniform_pattern_np(height: int, width: int, channels: int, seed: int) -> np.ndarray:
    """Uniform [0, 1] pattern (H, W, C) from NumPy's PCG64: the Blend noise and TrojanNN's start."""
    return np.random.default_rng(seed).uniform(0.0, 1.0, (height, width, channels)).astype(np.float32)


@_jit_static_params
def blend(images: jax.Array, params: BlendParams = BlendParams()) -> jax.Array:
    """Blend a fixed greyscale noise image into the images.

    Args:
      images: ``[..., H, W, C]`` in [0, 1].
      params: :class:`BlendParams`.

    Returns:
      ``(1 - alpha) * images + alpha * P`` with ``P = blend_pattern(H, W,
      seed)`` broadcast over channels and batch; ``alpha = 0`` is exactly the
      identity.
    """
    x, dtype = _prepare(images)
    h, w = x.shape[-3:-1]
    pattern = blend_pattern(h, w, params.seed)
    out = (1.0 - params.alpha) * x + params.alpha * pattern
    return _finish(out, dtype)


# --------------------------------------------------------------------------
# WaNet
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class WaNetParams:
    """WaNet warping (Nguyen & Tran 2021).

    Attributes:
      k: side of the random control grid (4).
      s: warping strength (0.5); the field is scaled by ``s / H`` in [-1, 1]
        grid coordinates.
      seed: integer seed of the fixed control grid.
      grid_rescale: multiplies the warped grid before clamping (1.0, WaNet's
        ``grid_rescale``).
      noise_scale: amplitude of the per-image noise-mode warp, in units of
        ``1 / H`` in grid coordinates (1.0 = uniform [-1, 1] / H as WaNet).
    """

    k: int = 4
    s: float = 0.5
    seed: int = 0
    grid_rescale: float = 1.0
    noise_scale: float = 1.0


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


@functools.lru_cache(maxsize=64)
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


@_jit_static_params
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
      key: optional PRNG key. If given ("noise mode", for poisoned training
        data), an extra per-pixel, per-coordinate warp uniform in
        ``[-1, 1] * noise_scale / H`` (grid coordinates) is added and the grid
        re-clamped. The noise has the images' leading (batch) shape, so each
        image of a batch gets its own noise.

    Returns:
      ``[..., H, W, C]``, same dtype. With ``s = 0`` and ``key=None`` this is
      the identity up to float rounding (~1e-6).
    """
    x, dtype = _prepare(images)
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
        noise = jax.random.uniform(
            key, x.shape[:-3] + (h, w, 2), minval=-1.0, maxval=1.0, dtype=jnp.float32
        )
        pos = jnp.clip(pos + noise * (params.noise_scale / h) * half, 0.0, upper)
    out = _sample_pixels(x, pos[..., 0], pos[..., 1])
    return _finish(out, dtype)


# --------------------------------------------------------------------------
# L2 PGD (for the label-consistent attack)
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PGDParams:
    """Untargeted L2 PGD.

    Attributes:
      eps: L2 radius per image, pixel units in [0, 1] (300/255).
      step_size: L2 length of each step (1.5/255).
      steps: number of iterations (100).
    """

    eps: float = 300.0 / 255.0
    step_size: float = 1.5 / 255.0
    steps: int = 100


def _l2_norm(x: jax.Array) -> jax.Array:
    """Per-image L2 norm over the last three axes, keepdims."""
    return jnp.sqrt(jnp.sum(jnp.square(x), axis=(-3, -2, -1), keepdims=True))


def pgd_l2(
    logits_fn: Callable[[jax.Array], jax.Array],
    images: jax.Array,
    labels: jax.Array,
    params: PGDParams = PGDParams(),
) -> jax.Array:
    """Untargeted L2 projected gradient ascent on the cross-entropy.

    Starting from the clean images (no random start), each of ``steps``
    iterations takes a step of L2 length ``step_size`` along the per-image
    normalised gradient of the summed cross-entropy of ``logits_fn(x)`` with
    the true ``labels``, projects the perturbation onto the per-image L2 ball
    of radius ``eps`` around the clean image and clips to [0, 1] (clipping
    only shrinks the perturbation, so the result stays in the ball). The loop
    is a ``lax.fori_loop``, so it compiles once.

    Args:
      logits_fn: ``x [B, H, W, C] -> logits [B, num_classes]``; a pure
        function (e.g. a model's apply closed over its variables). Close over
        it or mark it static when jitting.
      images: ``[B, H, W, C]`` in [0, 1].
      labels: ``[B]`` integer true labels.
      params: :class:`PGDParams`.

    Returns:
      The perturbed images, ``[B, H, W, C]``, same dtype, in [0, 1], with
      ``||x' - x||_2 <= eps`` per image. Subtract ``images`` to get the
      perturbation.
    """
    x0, dtype = _prepare(images)
    labels = jnp.asarray(labels)

    def loss(x):
        logits = logits_fn(x)
        logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        picked = jnp.take_along_axis(logp, labels[..., None].astype(jnp.int32), axis=-1)
        return -jnp.sum(picked)

    grad_fn = jax.grad(loss)

    def body(_, x):
        g = grad_fn(x)
        g = g / jnp.maximum(_l2_norm(g), 1e-12)
        x = x + params.step_size * g
        delta = x - x0
        delta = delta * jnp.minimum(1.0, params.eps / jnp.maximum(_l2_norm(delta), 1e-12))
        return jnp.clip(x0 + delta, 0.0, 1.0)

    out = lax.fori_loop(0, params.steps, body, x0)
    return out.astype(dtype)


# --------------------------------------------------------------------------
# Label-consistent (Turner et al. 2019)
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LabelConsistentParams:
    """Four-corner checkerboard of the label-consistent attack.

    Attributes:
      amplitude: added/subtracted intensity (64/255 for training poisons;
        use 1.0 at test time, which makes the corners exact 0/1 patterns).
      size: side of the checkerboard in each corner (3).
    """

    amplitude: float = 64.0 / 255.0
    size: int = 3


def _corner_checkerboard(height: int, width: int, size: int) -> jax.Array:
    """``[H, W, 1]`` pattern: +-1 checkerboards of side ``size`` in each corner, 0 elsewhere.

    The parity is counted from the nearest image edge, so each corner's
    outermost pixel is +1 (the four corners are mirror images; for odd
    ``size`` they are identical).
    """
    r = np.arange(height)
    c = np.arange(width)
    dr = np.minimum(r, height - 1 - r)
    dc = np.minimum(c, width - 1 - c)
    inside = (dr[:, None] < size) & (dc[None, :] < size)
    sign = np.where((dr[:, None] + dc[None, :]) % 2 == 0, 1.0, -1.0)
    return jnp.asarray(np.where(inside, sign, 0.0)[:, :, None], jnp.float32)


@_jit_static_params
def label_consistent(
    images: jax.Array,
    params: LabelConsistentParams = LabelConsistentParams(),
    perturbation: Optional[jax.Array] = None,
) -> jax.Array:
    """Label-consistent trigger: optional adversarial perturbation, then corner checkerboards.

    Args:
      images: ``[..., H, W, C]`` in [0, 1].
      params: :class:`LabelConsistentParams`.
      perturbation: optional array broadcastable to ``images`` (e.g. from
        :func:`pgd_l2`: ``pgd_l2(...) - images``). Added first, then clipped
        to [0, 1].

    Returns:
      ``[..., H, W, C]``, same dtype: ``clip(x + amplitude * pattern)`` where
      the pattern is +1/-1 on a ``size x size`` checkerboard in each of the
      four corners (same on every channel) and 0 elsewhere. With amplitude 1
      the corners become exactly 0/1.
    """
    x, dtype = _prepare(images)
    if perturbation is not None:
        x = jnp.clip(x + jnp.asarray(perturbation, jnp.float32), 0.0, 1.0)
    h, w = x.shape[-3:-1]
    pattern = _corner_checkerboard(h, w, params.size)
    out = x + params.amplitude * pattern
    return _finish(out, dtype)


# --------------------------------------------------------------------------
# Adaptive-Blend (Qi et al. 2023)
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class AdaptiveBlendParams:
    """Adaptive-Blend.

    Attributes:
      alpha: blend ratio (0.15 for training poisons; 0.2 at test time).
      seed: seed of the Blend noise pattern (same convention as
        :class:`BlendParams`).
      grid: the pattern is split into ``grid x grid`` pieces (4 -> 16).
      mask_fraction: fraction of pieces masked out per image when a key is
        given (0.5 -> exactly 8 of 16).
    """

    alpha: float = 0.15
    seed: int = 0
    grid: int = 4
    mask_fraction: float = 0.5


def adaptive_blend_mask(
    key: jax.Array,
    batch_shape: tuple[int, ...],
    height: int,
    width: int,
    params: AdaptiveBlendParams = AdaptiveBlendParams(),
) -> jax.Array:
    """Per-image piece masks of Adaptive-Blend.

    Returns a boolean ``[*batch_shape, H, W, 1]`` array that is True where the
    pattern is applied. Pixel row ``i`` belongs to piece row
    ``i * grid // H`` (likewise for columns). In every image exactly
    ``round(grid**2 * mask_fraction)`` pieces, chosen uniformly at random and
    independently per image, are False.
    """
    n = params.grid * params.grid
    n_masked = int(round(n * params.mask_fraction))
    scores = jax.random.uniform(key, tuple(batch_shape) + (n,))
    ranks = jnp.argsort(jnp.argsort(scores, axis=-1), axis=-1)
    keep = ranks >= n_masked  # [..., n]
    piece_r = (np.arange(height) * params.grid) // height
    piece_c = (np.arange(width) * params.grid) // width
    piece = (piece_r[:, None] * params.grid + piece_c[None, :]).reshape(-1)
    mask = jnp.take(keep, jnp.asarray(piece), axis=-1)
    return mask.reshape(tuple(batch_shape) + (height, width, 1))


@_jit_static_params
def adaptive_blend(
    images: jax.Array,
    params: AdaptiveBlendParams = AdaptiveBlendParams(),
    key: Optional[jax.Array] = None,
) -> jax.Array:
    """Adaptive-Blend trigger.

    Args:
      images: ``[..., H, W, C]`` in [0, 1].
      params: :class:`AdaptiveBlendParams`.
      key: optional PRNG key. If given (training poisons), each image gets its
        own random mask (:func:`adaptive_blend_mask`) and the blend is applied
        only on the unmasked pieces; pixels of masked pieces are unchanged.
        If ``None`` the full pattern is applied (test time; use
        ``AdaptiveBlendParams(alpha=0.2)``).

    Returns:
      ``[..., H, W, C]``, same dtype.
    """
    x, dtype = _prepare(images)
    h, w = x.shape[-3:-1]
    pattern = blend_pattern(h, w, params.seed)
    blended = (1.0 - params.alpha) * x + params.alpha * pattern
    if key is None:
        out = blended
    else:
        mask = adaptive_blend_mask(key, x.shape[:-3], h, w, params)
        out = jnp.where(mask, blended, x)
    return _finish(out, dtype)


# --------------------------------------------------------------------------
# SIG (Barni et al. 2019)
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SIGParams:
    """SIG sinusoidal signal.

    Attributes:
      delta: amplitude in [0, 1] units (40/255).
      f: number of periods across the image width (6).
    """

    delta: float = 40.0 / 255.0
    f: float = 6.0


@_jit_static_params
def sig(images: jax.Array, params: SIGParams = SIGParams()) -> jax.Array:
    """Add a horizontal sinusoid: ``x + delta * sin(2 pi j f / W)``.

    ``j = 0..W-1`` is the column index; the signal is the same on every row
    and channel. Returns ``[..., H, W, C]``, same dtype, clipped to [0, 1].
    """
    x, dtype = _prepare(images)
    w = x.shape[-2]
    j = jnp.arange(w, dtype=jnp.float32)
    signal = params.delta * jnp.sin(2.0 * math.pi * j * params.f / w)
    out = x + signal[None, :, None]
    return _finish(out, dtype)


# --------------------------------------------------------------------------
# FTrojan (Wang et al. 2022)
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FTrojanParams:
    """FTrojan frequency-domain trigger.

    Attributes:
      magnitude: value added to each selected DCT coefficient, [0, 1] units
        (30/255).
      positions: (row, col) frequency indices within each block; clipped to
        the block size (a 28-pixel block turns (31, 31) into (27, 27)).
      block: DCT block side (32). If a side is smaller than ``block`` or not
        a multiple of it, the whole side is one block.
      channels: YCrCb channel indices that receive the trigger (Cr, Cb = 1, 2).
        For single-channel images the trigger goes to channel 0 instead.
    """

    magnitude: float = 30.0 / 255.0
    positions: tuple[tuple[int, int], ...] = ((15, 15), (31, 31))
    block: int = 32
    channels: tuple[int, ...] = (1, 2)


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


@_jit_static_params
def ftrojan(images: jax.Array, params: FTrojanParams = FTrojanParams()) -> jax.Array:
    """FTrojan: add fixed DCT coefficients in the chroma channels.

    RGB -> YCrCb (full range, as FTrojan), blockwise orthonormal 2-D DCT-II (``D X D^T`` per
    block, by matrix multiplication), ``+magnitude`` at each of
    ``params.positions`` in every block of the channels ``params.channels``,
    inverse DCT, YCrCb -> RGB, clip. For ``C == 1`` the single channel is used
    directly (no colour conversion).

    Args:
      images: ``[..., H, W, C]`` in [0, 1], ``C`` in {1, 3}.
      params: :class:`FTrojanParams`.

    Returns:
      ``[..., H, W, C]``, same dtype. ``magnitude = 0`` is the identity up to
      float rounding (~1e-6).
    """
    x, dtype = _prepare(images)
    h, w, c = x.shape[-3:]
    hp = lax.Precision.HIGHEST
    if c == 3:
        x = jnp.einsum("...c,dc->...d", x, jnp.asarray(_RGB2YCRCB, jnp.float32), precision=hp)
        channels = params.channels
    elif c == 1:
        channels = (0,)
    else:
        raise ValueError(f"FTrojan supports 1 or 3 channels; got {c}")
    bh = _block_side(h, params.block)
    bw = _block_side(w, params.block)
    dh = jnp.asarray(_dct_matrix(bh), jnp.float32)
    dw = jnp.asarray(_dct_matrix(bw), jnp.float32)

    lead = x.shape[:-3]
    blocks = x.reshape(lead + (h // bh, bh, w // bw, bw, c))
    coeffs = jnp.einsum("ki,...aibjc,lj->...akblc", dh, blocks, dw, precision=hp)

    delta = np.zeros((bh, bw, c), np.float32)
    for (pr, pc) in params.positions:
        pr = min(max(int(pr), 0), bh - 1)
        pc = min(max(int(pc), 0), bw - 1)
        for ch in channels:
            delta[pr, pc, ch] += params.magnitude
    coeffs = coeffs + jnp.asarray(delta)[:, None, :, :]  # broadcast over block grid

    blocks = jnp.einsum("ki,...akblc,lj->...aibjc", dh, coeffs, dw, precision=hp)
    x = blocks.reshape(lead + (h, w, c))
    if c == 3:
        x = jnp.einsum("...c,dc->...d", x, jnp.asarray(_YCRCB2RGB, jnp.float32), precision=hp)
    return _finish(x, dtype)


# --------------------------------------------------------------------------
# BPP (Wang et al. 2022)
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BPPParams:
    """BPP colour-depth squeeze.

    Attributes:
      levels: number of intensity levels per channel (8, BPP's squeeze_num).
    """

    levels: int = 8


@_jit_static_params
def bpp(images: jax.Array, params: BPPParams = BPPParams()) -> jax.Array:
    """Quantise every channel to ``levels`` values: ``round(x (L-1)) / (L-1)``.

    BPP's Floyd-Steinberg dithering is omitted (plain rounding, half to even).
    Returns ``[..., H, W, C]``, same dtype, with at most ``levels`` distinct
    values per channel.
    """
    x, dtype = _prepare(images)
    n = params.levels - 1
    out = jnp.round(jnp.clip(x, 0.0, 1.0) * n) / n
    return _finish(out, dtype)


# --------------------------------------------------------------------------
# Constant arrays as static parameters
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class StaticArray:
    """A small constant float32 array as a field of static (hashable) trigger params.

    Equal contents hash equal, so jitted steps that take the trigger as a static argument compile
    once per pattern. Build with :meth:`of`; read with :attr:`value`.
    """

    data: bytes
    shape: tuple[int, ...]

    @classmethod
    def of(cls, array: Any) -> "StaticArray":
        a = np.ascontiguousarray(np.asarray(array, np.float32))
        return cls(a.tobytes(), tuple(int(d) for d in a.shape))

    @property
    def value(self) -> np.ndarray:
        return np.frombuffer(self.data, np.float32).reshape(self.shape)


def _pattern_value(pattern: Optional[StaticArray], shape: tuple[int, ...], name: str) -> Optional[np.ndarray]:
    if pattern is None:
        return None
    if tuple(pattern.shape) != tuple(shape):
        raise ValueError(f"{name} pattern has shape {pattern.shape}, images are {tuple(shape)} (H, W, C): "
                         f"compute the pattern for this image size")
    return pattern.value


# --------------------------------------------------------------------------
# TrojanNN (Liu et al. 2018)
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TrojanNNParams:
    """TrojanNN: a square patch whose content is optimised to excite chosen neurons of a clean model.

    Attributes:
      size, row, col: the patch (default BadNets' 5x5 top-left footprint, so that the two attacks
        differ only in what the patch holds: a solid colour vs an optimised pattern).
      pattern: :class:`StaticArray` [H, W, C] in [0, 1] from :func:`trojannn_pattern` (only the patch
        region is read). ``None``: the optimisation's starting point, a uniform random pattern from
        ``seed`` (an un-optimised patch). The study optimises it against a clean model first.
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


@_jit_static_params
def trojannn(images: jax.Array, params: TrojanNNParams = TrojanNNParams()) -> jax.Array:
    """Stamp the TrojanNN patch: pixels inside the square take the pattern's values, the rest are unchanged.

    Args:
      images: ``[..., H, W, C]`` in [0, 1].
      params: :class:`TrojanNNParams`.

    Returns:
      ``[..., H, W, C]``, same dtype.
    """
    x, dtype = _prepare(images)
    h, w, c = x.shape[-3:]
    pattern = _pattern_value(params.pattern, (h, w, c), "TrojanNN")
    if pattern is None:
        pattern = _uniform_pattern_np(h, w, c, params.seed)
    out = jnp.where(_square_mask(h, w, params.row, params.col, params.size), pattern, x)
    return _finish(out, dtype)


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
      ``(pattern f32[H, W, C], selected int32[neurons])``; wrap the pattern with
      :meth:`StaticArray.of` and pass it as ``TrojanNNParams(pattern=...)`` or
      ``get_attack("trojannn", pattern=...)``.
    """
    x, _ = _prepare(images)
    h, w, c = x.shape[-3:]
    start = _pattern_value(params.pattern, (h, w, c), "TrojanNN")
    start = _uniform_pattern_np(h, w, c, params.seed) if start is None else start
    mask = np.broadcast_to(_square_mask(h, w, params.row, params.col, params.size), (h, w, c))
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


# --------------------------------------------------------------------------
# Low-frequency trigger (Zeng et al. 2021)
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LowFrequencyParams:
    """An additive trigger with only low spatial frequencies (smooth, hard to see, survives low-pass filters).

    Attributes:
      eps: largest absolute change of a pixel, [0, 1] units (10/255; a choice of ours, SPEC.md gives
        no value).
      cutoff: the trigger lives in the lowest ``cutoff x cutoff`` 2-D DCT frequencies of the whole
        image, per channel (4 of 32).
      seed: seed of the default pattern (random coefficients in that window).
      pattern: :class:`StaticArray` [H, W, C], e.g. the universal adversarial perturbation of
        :func:`low_frequency_uap` (the original attack's trigger); ``None`` = the seeded pattern.
    """

    eps: float = 10.0 / 255.0
    cutoff: int = 4
    seed: int = 0
    pattern: Optional[StaticArray] = None


def _low_pass_basis(height: int, width: int, cutoff: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``cutoff`` rows of the orthonormal DCT-II matrices: delta = Dh.T @ coeffs @ Dw."""
    return _dct_matrix(height)[: min(cutoff, height)], _dct_matrix(width)[: min(cutoff, width)]


def _from_low_frequencies(coeffs: jax.Array, dh: np.ndarray, dw: np.ndarray, eps: float) -> jax.Array:
    """[h, w, C] coefficients -> [H, W, C] image, scaled down (never up) to max |.| <= eps."""
    delta = jnp.einsum("kh,klc,lw->hwc", jnp.asarray(dh, jnp.float32), coeffs, jnp.asarray(dw, jnp.float32),
                       precision=lax.Precision.HIGHEST)
    return delta * jnp.minimum(1.0, eps / jnp.maximum(jnp.max(jnp.abs(delta)), 1e-12))


@functools.lru_cache(maxsize=64)
def _low_frequency_pattern_np(height: int, width: int, channels: int, cutoff: int, eps: float, seed: int) -> np.ndarray:
    dh, dw = _low_pass_basis(height, width, cutoff)
    coeffs = np.random.default_rng(seed).normal(size=(dh.shape[0], dw.shape[0], channels))
    delta = np.einsum("kh,klc,lw->hwc", dh, coeffs, dw)
    return (delta * (eps / np.max(np.abs(delta)))).astype(np.float32)


def low_frequency_pattern(height: int, width: int, channels: int, params: LowFrequencyParams = LowFrequencyParams()) -> jax.Array:
    """The default low-frequency trigger, f32[H, W, C], max |value| = eps, only low frequencies."""
    return jnp.asarray(_low_frequency_pattern_np(int(height), int(width), int(channels), int(params.cutoff),
                                                 float(params.eps), int(params.seed)))


@_jit_static_params
def low_frequency(images: jax.Array, params: LowFrequencyParams = LowFrequencyParams()) -> jax.Array:
    """Add the low-frequency pattern: ``clip(x + delta)``. Returns ``[..., H, W, C]``, same dtype."""
    x, dtype = _prepare(images)
    h, w, c = x.shape[-3:]
    delta = _pattern_value(params.pattern, (h, w, c), "low-frequency")
    if delta is None:
        delta = _low_frequency_pattern_np(h, w, c, params.cutoff, params.eps, params.seed)
    return _finish(x + delta, dtype)


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
      target: the target class.
      params: ``eps``, ``cutoff`` and ``seed`` (the start).
      steps, step_size: descent steps and the L2 length of each step in coefficient space.

    Returns:
      ``delta f32[H, W, C]``; use it as ``LowFrequencyParams(pattern=StaticArray.of(delta))``.
    """
    x, _ = _prepare(images)
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


# --------------------------------------------------------------------------
# Attack registry
# --------------------------------------------------------------------------


TriggerFn = Callable[[jax.Array, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class Attack:
    """A poisoning attack: how its training poisons and test inputs are triggered.

    Attributes:
      name: attack name (one of :data:`ATTACKS`).
      train_trigger: ``(images [..., H, W, C], key) -> images``, applied to
        the poisoned TRAINING samples. The key is ignored by deterministic
        attacks; WaNet and Adaptive-Blend need it (a batch with one key gets
        different randomness per image).
      test_trigger: ``(images, key) -> images``, applied to the triggered
        TEST set (deterministic for every attack here).
      clean_label: poison only target-class samples and keep their labels
        (label-consistent, SIG).
      keep_label_fraction: fraction of poisoned samples that keep their true
        label (Adaptive-Blend: 0.5).
      needs_perturbation: training poisons need a precomputed adversarial
        perturbation (label-consistent: add ``pgd_l2(...) - x`` before
        ``train_trigger``).
      optimised_pattern: the trigger pattern is still to be optimised
        against a clean model (TrojanNN without a ``pattern``: compute it
        with :func:`trojannn_pattern` and rebuild the attack with
        ``pattern=StaticArray.of(...)``; the study does this).
      train_params, test_params: the params dataclasses the triggers use
        (for inspection / logging).
    """

    name: str
    train_trigger: TriggerFn
    test_trigger: TriggerFn
    clean_label: bool = False
    keep_label_fraction: float = 0.0
    needs_perturbation: bool = False
    optimised_pattern: bool = False
    train_params: Any = None
    test_params: Any = None


ATTACKS: tuple[str, ...] = (
    "badnets",
    "blend",
    "wanet",
    "label_consistent",
    "adaptive_blend",
    "sig",
    "ftrojan",
    "bpp",
    "trojannn",
    "low_frequency",
)

# name -> (params class, train defaults, test defaults)
_ATTACK_PARAMS: dict[str, tuple[type, dict[str, Any], dict[str, Any]]] = {
    "badnets": (BadNetsParams, {}, {}),
    "blend": (BlendParams, {}, {}),
    "wanet": (WaNetParams, {}, {}),
    "label_consistent": (
        LabelConsistentParams,
        {"amplitude": 64.0 / 255.0},
        {"amplitude": 1.0},
    ),
    "adaptive_blend": (AdaptiveBlendParams, {"alpha": 0.15}, {"alpha": 0.2}),
    "sig": (SIGParams, {}, {}),
    "ftrojan": (FTrojanParams, {}, {}),
    "bpp": (BPPParams, {}, {}),
    "trojannn": (TrojanNNParams, {}, {}),
    "low_frequency": (LowFrequencyParams, {}, {}),
}


def _split_overrides(
    name: str, cls: type, overrides: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    fields = {f.name for f in dataclasses.fields(cls)}
    train: dict[str, Any] = {}
    test: dict[str, Any] = {}
    both: dict[str, Any] = {}
    for key, value in overrides.items():
        if key in fields:
            both[key] = value
        elif key.startswith("train_") and key[len("train_"):] in fields:
            train[key[len("train_"):]] = value
        elif key.startswith("test_") and key[len("test_"):] in fields:
            test[key[len("test_"):]] = value
        else:
            raise ValueError(
                f"unknown override {key!r} for attack {name!r}; "
                f"{cls.__name__} fields are {sorted(fields)} "
                "(prefix with 'train_' or 'test_' to set one side only)"
            )
    return {**both, **train}, {**both, **test}


def get_attack(name: str, **overrides: Any) -> Attack:
    """Build the :class:`Attack` for ``name`` with SPEC defaults (cached).

    Overrides are fields of that attack's params dataclass. A plain field name
    (``alpha=0.2``) sets the field for both the training and the test trigger;
    ``train_<field>`` / ``test_<field>`` set one side only (e.g.
    ``get_attack("label_consistent", train_amplitude=16/255)``). Defaults that
    differ between sides: label-consistent amplitude 64/255 train / 1.0 test;
    Adaptive-Blend alpha 0.15 train (random half of the pieces masked per
    image) / 0.2 test (full pattern).

    Raises:
      ValueError: unknown attack name (the message lists :data:`ATTACKS`), or
        an override that names no field of the attack's params.

    Equal arguments return the same (cached) object, so jitted steps that take the attack's triggers
    as static arguments compile once per attack, not once per call.
    """
    # Lists become tuples and arrays StaticArrays: trigger params are static jit arguments (hashable).
    overrides = {k: _as_tuple(v) for k, v in overrides.items()}
    try:
        return _cached_attack(name, tuple(sorted(overrides.items())))
    except TypeError:  # an unhashable override value: build without the cache
        return _build_attack(name, **overrides)


def _as_tuple(value: Any) -> Any:
    if isinstance(value, (np.ndarray, jax.Array)):
        return StaticArray.of(value)
    if isinstance(value, (list, tuple)):
        return tuple(_as_tuple(v) for v in value)
    return value


@functools.lru_cache(maxsize=None)
def _cached_attack(name: str, overrides: tuple) -> Attack:
    return _build_attack(name, **dict(overrides))


def _build_attack(name: str, **overrides: Any) -> Attack:
    """Build an :class:`Attack`; see :func:`get_attack`."""
    if name not in _ATTACK_PARAMS:
        raise ValueError(f"unknown attack {name!r}; known attacks: {', '.join(ATTACKS)}")
    cls, train_defaults, test_defaults = _ATTACK_PARAMS[name]
    train_over, test_over = _split_overrides(name, cls, overrides)
    try:
        tp = cls(**{**train_defaults, **train_over})
        sp = cls(**{**test_defaults, **test_over})
    except TypeError as e:  # pragma: no cover - fields already validated
        raise ValueError(str(e)) from e

    if name == "badnets":
        train = lambda x, key=None: badnets(x, tp)
        test = lambda x, key=None: badnets(x, sp)
        return Attack(name, train, test, train_params=tp, test_params=sp)
    if name == "blend":
        train = lambda x, key=None: blend(x, tp)
        test = lambda x, key=None: blend(x, sp)
        return Attack(name, train, test, train_params=tp, test_params=sp)
    if name == "wanet":

        def train(x, key):
            if key is None:
                raise ValueError("the WaNet training trigger needs a PRNG key (noise mode)")
            return wanet(x, tp, key=key)

        test = lambda x, key=None: wanet(x, sp)
        return Attack(name, train, test, train_params=tp, test_params=sp)
    if name == "label_consistent":
        train = lambda x, key=None: label_consistent(x, tp)
        test = lambda x, key=None: label_consistent(x, sp)
        return Attack(
            name,
            train,
            test,
            clean_label=True,
            needs_perturbation=True,
            train_params=tp,
            test_params=sp,
        )
    if name == "adaptive_blend":

        def train(x, key):
            if key is None:
                raise ValueError("the Adaptive-Blend training trigger needs a PRNG key")
            return adaptive_blend(x, tp, key=key)

        test = lambda x, key=None: adaptive_blend(x, sp)
        return Attack(
            name, train, test, keep_label_fraction=0.5, train_params=tp, test_params=sp
        )
    if name == "sig":
        train = lambda x, key=None: sig(x, tp)
        test = lambda x, key=None: sig(x, sp)
        return Attack(name, train, test, clean_label=True, train_params=tp, test_params=sp)
    if name == "ftrojan":
        train = lambda x, key=None: ftrojan(x, tp)
        test = lambda x, key=None: ftrojan(x, sp)
        return Attack(name, train, test, train_params=tp, test_params=sp)
    if name == "bpp":
        train = lambda x, key=None: bpp(x, tp)
        test = lambda x, key=None: bpp(x, sp)
        return Attack(name, train, test, train_params=tp, test_params=sp)
    if name == "trojannn":
        train = lambda x, key=None: trojannn(x, tp)
        test = lambda x, key=None: trojannn(x, sp)
        return Attack(name, train, test, optimised_pattern=tp.pattern is None, train_params=tp, test_params=sp)
    if name == "low_frequency":
        train = lambda x, key=None: low_frequency(x, tp)
        test = lambda x, key=None: low_frequency(x, sp)
        return Attack(name, train, test, train_params=tp, test_params=sp)
    raise AssertionError(name)  # pragma: no cover
