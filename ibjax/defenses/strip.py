"""STRIP (Gao et al., ACSAC 2019): a triggered input keeps its prediction when other images are
superimposed on it, so the entropy of its predictions under superimposition is low.

For every inspected image x: superimpose ``overlays`` images drawn from a pool of clean images,
predict each mix, and average the prediction entropies (nats). Low entropy is suspicious, so the
detection score is minus the entropy. The threshold is set on clean held-out images at a false
rejection rate (:func:`ibjax.defenses.roc.threshold_at_fpr` on their scores).

ibjax's default mixes convexly in pixel space, ``(1 - alpha) x + alpha y`` with alpha 0.5 and 64
overlays, and flags at 5% false rejections (the STRIP paper's superimposition of two images at equal
weight, kept in the images' range). ``blend="sum"`` with alpha 1, 100 overlays and 10% is
BackdoorBench's detection code (``x + alpha y``, unclipped; BackdoorBench adds in normalised space,
ibjax's networks read [0, 1] pixels, so the sum is of pixels here).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Literal

import jax
import jax.numpy as jnp

__all__ = ["strip_entropy", "superimpose", "NetworkLogits"]


def superimpose(x: jax.Array, overlay: jax.Array, alpha: float, blend: Literal["mean", "sum"] = "mean") -> jax.Array:
    """``(1 - alpha) x + alpha overlay`` (``"mean"``) or ``x + alpha overlay`` (``"sum"``), images f[..., H, W, C]."""
    if blend == "mean":
        return (1.0 - alpha) * x + alpha * overlay
    if blend == "sum":
        return x + alpha * overlay
    raise ValueError(f"blend must be 'mean' or 'sum', got {blend!r}")


@dataclasses.dataclass(frozen=True)
class NetworkLogits:
    """An ibjax network's logits as a ``logits_fn`` for :func:`strip_entropy`:
    ``NetworkLogits(model)(variables, x, key)`` (noise from ``key``).

    A frozen dataclass rather than a ``functools.partial`` because it is a static argument: it
    hashes and compares by the (Flax, value-hashed) module, so every call with the same network
    reuses one compiled program; two partials of the same function never compare equal.
    """

    model: Any

    def __call__(self, variables, x: jax.Array, key: jax.Array) -> jax.Array:
        return self.model.apply(variables, x, train=False, rngs={"noise": key})[0]


def _entropy(logits: jax.Array) -> jax.Array:
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


@functools.partial(jax.jit, static_argnames=("logits_fn", "overlays", "blend", "chunk"))
def strip_entropy(key: jax.Array, logits_fn: Callable[[Any, jax.Array, jax.Array], jax.Array], params: Any,
                  images: jax.Array, pool: jax.Array, *, overlays: int = 64, alpha: float = 0.5,
                  blend: Literal["mean", "sum"] = "mean", chunk: int = 32) -> jax.Array:
    """Mean prediction entropy (nats) of every image under superimposition: f32[N].

    Args:
      key: PRNG key (which pool images overlay which image, and the network's noise).
      logits_fn: ``(params, x f32[B, H, W, C], key) -> logits f32[B, K]``, hashable (a static
        argument that compares by value, such as :class:`NetworkLogits`); ``key`` is for a noisy
        network.
      params: what ``logits_fn`` reads (a network's variables).
      images: f[N, H, W, C] inspected images in [0, 1].
      pool: f[P, H, W, C] clean images in [0, 1] to superimpose (each image draws its own
        ``overlays`` of them, with replacement).
      overlays: superimposed images per inspected image.
      alpha, blend: how the two images mix (:func:`superimpose`).
      chunk: inspected images per network call (``chunk * overlays`` mixes at once).

    Returns:
      The entropies; the detection score is their negative (low entropy: likely triggered).
    """
    x = jnp.asarray(images, jnp.float32)
    pool = jnp.asarray(pool, jnp.float32)
    n = x.shape[0]
    pad = -n % chunk
    xs = jnp.concatenate([x, jnp.zeros((pad, *x.shape[1:]), x.dtype)]).reshape(-1, chunk, *x.shape[1:])
    keys = jax.random.split(key, xs.shape[0])

    def one(args):
        xb, k = args
        k_pick, k_net = jax.random.split(k)
        pick = jax.random.randint(k_pick, (chunk, overlays), 0, pool.shape[0])
        mixed = superimpose(xb[:, None], pool[pick], alpha, blend)  # [chunk, overlays, H, W, C]
        logits = logits_fn(params, mixed.reshape(chunk * overlays, *x.shape[1:]), k_net)
        return jnp.mean(_entropy(logits).reshape(chunk, overlays), axis=1)

    return jax.lax.map(one, (xs, keys)).reshape(-1)[:n]
