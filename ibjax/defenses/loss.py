"""Detectors on the training losses of every sample: poisoned samples are learned faster and to a
lower loss than clean ones (ABL, Li et al., NeurIPS 2021), which the study's training loop records
for every sample in every epoch (``sample_losses.npy``).

ABL trains a fresh network with a loss that ascends below a threshold (LGA, or flooding) for its
isolation warm-up, then isolates the lowest-loss 1% of the training set. ibjax reads the run's own
losses instead, at the end of a warm-up of a fifth of its epochs (the registry's rule): no second
network is trained, and the losses are those of the run whose backdoor is measured.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["loss_isolation", "loss_trajectory_scores"]


@jax.jit
def loss_isolation(losses: jax.Array, fraction: float = 0.01) -> tuple[jax.Array, jax.Array]:
    """ABL-style isolation from one epoch's per-sample losses f[N] (nats; NaN: not measured).

    Returns ``(scores f32[N], flags bool[N])``: score = minus the loss (NaN rows score -inf), flags
    the ``floor(fraction * n)`` lowest-loss measured samples.
    """
    x = jnp.asarray(losses, jnp.float32)
    ok = jnp.isfinite(x)
    scores = jnp.where(ok, -x, -jnp.inf)
    k = jnp.floor(fraction * jnp.sum(ok)).astype(jnp.int32)
    order = jnp.argsort(-scores, stable=True)
    rank = jnp.zeros(x.shape, jnp.int32).at[order].set(jnp.arange(x.shape[0], dtype=jnp.int32))
    return scores, ok & (rank < k)


@jax.jit
def loss_trajectory_scores(losses: jax.Array) -> jax.Array:
    """How consistently a sample's loss ranks low, epoch after epoch: f32[N] in [0, 1].

    ``losses`` f[E, N] (NaN: not measured that epoch). Each epoch's losses are turned into
    fractional ranks among that epoch's measured samples (0 the lowest loss, 1 the highest); the
    score is 1 minus a sample's mean rank over the epochs it was measured in (0.5 for a sample
    that is average throughout, near 1 for one learned first and kept lowest). Ranks, not losses:
    the loss scale shrinks as training goes on, and each epoch should count alike.
    """
    x = jnp.asarray(losses, jnp.float32)
    ok = jnp.isfinite(x)
    n = jnp.maximum(jnp.sum(ok, axis=1, keepdims=True), 2)
    filled = jnp.where(ok, x, jnp.inf)  # unmeasured rows rank last and are masked out below
    rank = jnp.argsort(jnp.argsort(filled, axis=1, stable=True), axis=1).astype(jnp.float32) / (n - 1)
    count = jnp.maximum(jnp.sum(ok, axis=0), 1)
    return 1.0 - jnp.sum(jnp.where(ok, rank, 0.0), axis=0) / count
