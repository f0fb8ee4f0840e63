"""Grond's trigger (Xu et al., 2025): a targeted universal adversarial perturbation (TUAP) of a clean
network, added to part of the target class (clean-label).

The perturbation is what a clean network already reads as the target class, so the poisoned
network needs few new features for it; Grond's other half, Adversarial Backdoor Injection, keeps
those features from standing out in parameter space (``train.abi_u``,
:func:`ibjax.defenses.abi_reset`). Rules as the Grond code (xiaoyunxxy/grond ``generate_tuap.py``):
delta starts at 0; each of 500 steps draws a batch of 256 training images of every class and takes
a signed-gradient step of eps / 5 down the cross-entropy of ``clean_net(clip(x + delta))`` towards
the target, then clips delta to [-eps, eps] (L-inf 8/255). The test trigger adds the same delta at
the same amplitude (clipped to [0, 1], as the images are).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ibjax.triggers.common import (
    StaticArray,
    TriggerParams,
    check_class_indices,
    check_range,
    finish_images,
    image_hwc,
    jit_static_params,
    pattern_value,
    prepare_images,
)

__all__ = ["GrondParams", "grond", "grond_tuap"]


@dataclasses.dataclass(frozen=True)
class GrondParams(TriggerParams):
    """Grond's additive trigger and how it is optimised.

    Attributes:
      eps: L-inf bound of the perturbation, [0, 1] pixel units (8/255).
      steps: signed-gradient steps of :func:`grond_tuap` (500).
      batch_size: training images per step, drawn with replacement (256).
      pattern: the perturbation f32[H, W, C] (an array, a :class:`StaticArray` or a ``.npy`` path),
        as :func:`grond_tuap` computes it against a clean network (the study does this at set-up
        and keeps it in the run directory). None: a seeded random sign pattern of amplitude eps
        (a stand-in with the trigger's size and shape, not the attack; ``seed``).
      seed: seed of that stand-in.
    """

    eps: float = 8.0 / 255.0
    steps: int = 500
    batch_size: int = 256
    seed: int = 0
    pattern: Optional[StaticArray] = dataclasses.field(default=None, metadata={"signed": True})

    def check(self) -> None:
        check_range(self, "eps", 0.0, 1.0)
        check_range(self, "steps", 1, integer=True)
        check_range(self, "batch_size", 1, integer=True)
        check_range(self, "seed", 0, integer=True)

    def validate_shape(self, image_shape: Any) -> None:
        pattern_value(self.pattern, image_hwc(image_shape), "Grond")


@jit_static_params
def grond(images: jax.Array, params: GrondParams = GrondParams()) -> jax.Array:
    """``clip(x + delta)`` with Grond's perturbation. Returns ``[..., H, W, C]``, same dtype."""
    x, dtype = prepare_images(images)
    delta = pattern_value(params.pattern, x.shape[-3:], "Grond")
    if delta is None:
        signs = np.random.default_rng(params.seed).integers(0, 2, x.shape[-3:]) * 2 - 1
        delta = (params.eps * signs).astype(np.float32)
    return finish_images(x + delta, dtype)


def grond_tuap(logits_fn: Callable[[jax.Array, jax.Array], jax.Array], key: jax.Array, images: jax.Array, target: int,
               params: GrondParams = GrondParams()) -> jax.Array:
    """Grond's targeted universal adversarial perturbation of a clean network, f32[H, W, C].

    Args:
      logits_fn: ``(x f32[B, H, W, C], key) -> logits f32[B, K]`` of a clean network (``key`` for a
        noisy one; a deterministic network ignores it).
      key: PRNG key (the batches drawn from ``images``, the network's noise).
      images: f[N, H, W, C] clean training images of every class, in [0, 1].
      target: the target class (checked against the logits when concrete).
      params: ``eps``, ``steps`` and ``batch_size``.

    Jittable (``logits_fn`` closed over); use the result as ``get_attack("grond", pattern=delta)``.
    """
    x, _ = prepare_images(images)
    if x.ndim != 4:
        raise ValueError(f"grond_tuap: images must be a batch f32[N, H, W, C], got shape {x.shape}")
    check_class_indices(lambda z: logits_fn(z, key), x[:1], target, "grond_tuap: target")
    alpha = params.eps / 5.0
    labels = jnp.full((params.batch_size,), target, jnp.int32)

    def loss(delta, xb, k):
        logits = logits_fn(jnp.clip(xb + delta, 0.0, 1.0), k).astype(jnp.float32)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=-1))

    def step(delta, k):
        k_idx, k_net = jax.random.split(k)
        xb = x[jax.random.randint(k_idx, (params.batch_size,), 0, x.shape[0])]
        g = jax.grad(loss)(delta, xb, k_net)
        return jnp.clip(delta - alpha * jnp.sign(g), -params.eps, params.eps), None

    delta, _ = jax.lax.scan(step, jnp.zeros(x.shape[1:], jnp.float32), jax.random.split(key, params.steps))
    return delta
