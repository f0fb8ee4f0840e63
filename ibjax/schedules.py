"""Learning-rate rules shared by the network's training and the MI critics' training.

:func:`reduce_on_plateau` is PyTorch's ``ReduceLROnPlateau(mode="min", threshold_mode="rel")`` as one
pure, elementwise ``jnp`` step: :func:`ibjax.train.plateau_update` applies it to the network's rate
on the test loss, :func:`ibjax.mi.training.plateau_update` to every critic group's rate on its epoch
loss. Jittable and vmappable (over runs of a population, over groups).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["reduce_on_plateau"]


def reduce_on_plateau(lr, best, bad_epochs, metric, *, patience: int, factor: float, threshold: float,
                      eps: float = 0.0) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One epoch of the reduce-on-plateau rule on ``metric`` (lower is better), elementwise.

    An epoch improves when ``metric < best * (1 - threshold)`` (so with a negative best a slightly
    worse metric can still count, as in PyTorch), and only then moves the best. After more than
    ``patience`` epochs without one, the rate is multiplied by ``factor`` unless that changes it by at
    most ``eps``, and the count restarts either way. A NaN metric never improves.

    Args:
      lr: f32[...], the current rates.
      best: f32[...], the best metric so far (+inf before the first epoch).
      bad_epochs: int32[...], epochs since the metric last improved (or the rate was cut).
      metric: f32[...], this epoch's metric (cast to float32).

    Returns:
      ``(lr f32[...], best f32[...], bad_epochs int32[...])`` after this epoch.
    """
    metric = jnp.asarray(metric, jnp.float32)
    improved = metric < best * (1.0 - threshold)
    best = jnp.where(improved, metric, best)
    bad = jnp.where(improved, 0, bad_epochs + 1)
    cut = bad > patience
    new_lr = lr * factor
    lr = jnp.where(cut & (lr - new_lr > eps), new_lr, lr).astype(jnp.float32)
    return lr, best, jnp.where(cut, 0, bad).astype(jnp.int32)
