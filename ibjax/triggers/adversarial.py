"""Adversarial triggers: L2 PGD and the label-consistent attack (Turner et al. 2019) built on it."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ibjax import rng
from ibjax.triggers.common import (
    TriggerParams,
    check_class_indices,
    check_range,
    finish_images,
    image_hwc,
    jit_static_params,
    prepare_images,
)

__all__ = ["PGDParams", "LabelConsistentParams", "pgd_l2", "label_consistent"]


# --------------------------------------------------------------------------------------------------
# L2 PGD
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PGDParams(TriggerParams):
    """Untargeted L2 PGD (the authors' label-consistent settings: eps 300/255, step 1.5/255, 100 steps).

    Attributes:
      eps: L2 radius per image, pixel units in [0, 1] (300/255).
      step_size: L2 length of each step (1.5/255).
      steps: number of iterations (100).
      random_start: start from a uniform random image projected into the eps-ball around the
        clean image (the authors' generator: advertorch-style ``rand_init=True``). ibjax's default
        is False, a deterministic start at the clean image: a uniform random image lies at least 16
        (L2, [0, 1] units, on 32x32x3) from any image, so the random start puts the perturbation on
        the eps-sphere (eps = 1.18) in a random direction and 100 steps of 1.5/255 (150/255 in all) cannot
        replace that noise; from the clean image the whole perturbation is adversarial.
    """

    eps: float = 300.0 / 255.0
    step_size: float = 1.5 / 255.0
    steps: int = 100
    random_start: bool = False

    def check(self) -> None:
        check_range(self, "eps", 0.0)
        check_range(self, "step_size", 0.0)
        check_range(self, "steps", 0, integer=True)


def _l2_norm(x: jax.Array) -> jax.Array:
    """Per-image L2 norm over the last three axes, keepdims."""
    return jnp.sqrt(jnp.sum(jnp.square(x), axis=(-3, -2, -1), keepdims=True))


def _into_ball(delta: jax.Array, eps: float) -> jax.Array:
    """Scale each image's delta down (never up) to L2 norm <= eps."""
    return delta * jnp.minimum(1.0, eps / jnp.maximum(_l2_norm(delta), 1e-30))


def pgd_l2(
    logits_fn: Callable[[jax.Array], jax.Array],
    images: jax.Array,
    labels: jax.Array,
    params: PGDParams = PGDParams(),
    key: Optional[jax.Array] = None,
) -> jax.Array:
    """Untargeted L2 projected gradient ascent on the summed cross-entropy, as the authors' PGD.

    With ``delta`` the perturbation (0 at the start, or with ``random_start`` a uniform random image
    minus the clean one, scaled into the eps-ball and clipped to the box), each of ``steps``
    iterations does: ``g`` = gradient of the summed cross-entropy of ``logits_fn(x + delta)`` with
    the true ``labels``; ``delta += step_size * g / max(||g||, 1e-6)`` (per image);
    ``delta = clip(x + delta, 0, 1) - x``; ``delta`` scaled into the L2 ball of radius ``eps``
    (in this order, as the authors' ``perturb_iterative``; scaling towards the clean image keeps
    the box). Returns ``clip(x + delta, 0, 1)``. The loop is a ``lax.fori_loop``: it compiles once.

    Args:
      logits_fn: ``x [B, H, W, C] -> logits [B, num_classes]``; a pure function (e.g. a model's
        apply closed over its variables). Close over it or mark it static when jitting.
      images: ``[B, H, W, C]`` in [0, 1].
      labels: ``[B]`` integer true labels in [0, num_classes) (checked when they are concrete, not
        under tracing: an out-of-range label would make the loss constant, PGD a no-op).
      params: :class:`PGDParams`.
      key: PRNG key of the random start (needed iff ``params.random_start``).

    Returns:
      The perturbed images, ``[B, H, W, C]``, same dtype, in [0, 1], with ``||x' - x||_2 <= eps``
      per image. Subtract ``images`` to get the perturbation.
    """
    x0, dtype = prepare_images(images)
    labels = jnp.asarray(labels)
    if labels.shape != x0.shape[:-3]:
        raise ValueError(f"pgd_l2: labels have shape {labels.shape}, the images {x0.shape}: give one label per image "
                         f"(shape {x0.shape[:-3]})")
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(f"pgd_l2: labels must be integer class indices, got dtype {labels.dtype}")
    check_class_indices(logits_fn, x0, labels, "pgd_l2: labels")
    if params.random_start:
        if key is None:
            raise ValueError("PGD with random_start=True needs a PRNG key: pgd_l2(..., key=key)")
        start = rng.uniform(key, x0.shape)
        delta0 = jnp.clip(x0 + _into_ball(start - x0, params.eps), 0.0, 1.0) - x0
    else:
        delta0 = jnp.zeros_like(x0)

    def loss(delta):
        logp = jax.nn.log_softmax(logits_fn(x0 + delta).astype(jnp.float32), axis=-1)
        return -jnp.sum(jnp.take_along_axis(logp, labels[..., None].astype(jnp.int32), axis=-1))

    grad_fn = jax.grad(loss)

    def body(_, delta):
        g = grad_fn(delta)
        delta = delta + params.step_size * g / jnp.maximum(_l2_norm(g), 1e-6)
        delta = jnp.clip(x0 + delta, 0.0, 1.0) - x0
        return _into_ball(delta, params.eps)

    delta = lax.fori_loop(0, params.steps, body, delta0)
    return jnp.clip(x0 + delta, 0.0, 1.0).astype(dtype)


# --------------------------------------------------------------------------------------------------
# Label-consistent (Turner et al. 2019)
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LabelConsistentParams(TriggerParams):
    """The label-consistent attack: PGD settings and the four-corner checkerboard.

    Attributes:
      amplitude: added/subtracted intensity (64/255 for training poisons; 1.0 at test time, which
        makes the corners exact 0/1 patterns).
      size: side of the checkerboard in each corner (3).
      pgd_eps, pgd_step_size, pgd_steps, pgd_random_start: the PGD that perturbs the training
        poisons before the checkerboard (:class:`PGDParams`, read as :attr:`pgd`).
    """

    amplitude: float = 64.0 / 255.0
    size: int = 3
    pgd_eps: float = 300.0 / 255.0
    pgd_step_size: float = 1.5 / 255.0
    pgd_steps: int = 100
    pgd_random_start: bool = False

    def check(self) -> None:
        check_range(self, "amplitude", 0.0)
        check_range(self, "size", 1, integer=True)
        # The PGD fields by their own names (as PGDParams checks eps, step_size and steps), so that
        # an error names the field the user set, never PGDParams'.
        check_range(self, "pgd_eps", 0.0)
        check_range(self, "pgd_step_size", 0.0)
        check_range(self, "pgd_steps", 0, integer=True)

    @property
    def pgd(self) -> PGDParams:
        """The PGD settings of the training poisons."""
        return PGDParams(eps=self.pgd_eps, step_size=self.pgd_step_size, steps=self.pgd_steps,
                         random_start=self.pgd_random_start)

    def validate_shape(self, image_shape: Any) -> None:
        h, w, _ = image_hwc(image_shape)
        if 2 * self.size > min(h, w):
            raise ValueError(f"label-consistent corner checkerboards of size {self.size} overlap in {h}x{w} images: "
                             f"use size <= {min(h, w) // 2}")


def _corner_checkerboard(height: int, width: int, size: int) -> np.ndarray:
    """``[H, W, 1]`` pattern: +-1 checkerboards of side ``size`` in each corner, 0 elsewhere.

    The authors' polarity: each corner's outermost pixel is -1 (their 3x3 pattern is
    ``[[-, +, -], [+, -, +], [-, +, -]]``). The parity counts from the nearest image edge, so the
    four corners are mirror images (identical for odd ``size``, as the authors' single pattern).
    """
    r, c = np.arange(height), np.arange(width)
    dr = np.minimum(r, height - 1 - r)
    dc = np.minimum(c, width - 1 - c)
    inside = (dr[:, None] < size) & (dc[None, :] < size)
    sign = np.where((dr[:, None] + dc[None, :]) % 2 == 0, -1.0, 1.0)
    return np.where(inside, sign, 0.0)[:, :, None].astype(np.float32)


@jit_static_params
def label_consistent(
    images: jax.Array,
    params: LabelConsistentParams = LabelConsistentParams(),
    perturbation: Optional[jax.Array] = None,
) -> jax.Array:
    """Label-consistent trigger: optional adversarial perturbation, then corner checkerboards.

    Args:
      images: ``[..., H, W, C]`` in [0, 1].
      params: :class:`LabelConsistentParams`.
      perturbation: optional array broadcastable to ``images`` (e.g. ``pgd_l2(...) - images``).
        Added first, then clipped to [0, 1].

    Returns:
      ``[..., H, W, C]``, same dtype: ``clip(x + amplitude * pattern)`` where the pattern is -1/+1
      on a ``size x size`` checkerboard in each of the four corners (corner pixel -1; the same on
      every channel) and 0 elsewhere. With amplitude 1 the corners become exactly 0/1.
    """
    x, dtype = prepare_images(images)
    if perturbation is not None:
        x = jnp.clip(x + jnp.asarray(perturbation, jnp.float32), 0.0, 1.0)
    h, w = x.shape[-3:-1]
    out = x + params.amplitude * _corner_checkerboard(h, w, params.size)
    return finish_images(out, dtype)
