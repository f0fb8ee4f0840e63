"""One critic step for all groups at once, and the plateau rule: the building blocks of every estimator.

:func:`init` stacks G critics and their optimiser states along a leading group axis; :func:`update`
takes one AdamW step of every group's critic on one batch of pairs per group; :func:`end_epoch`
applies the authors' halve-on-plateau rule per group. All jittable, for use inside other loops.
"""

from __future__ import annotations

import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp
import optax
from flax import struct

from ibjax import rng
from ibjax.mi.bounds import bound_terms, get_bound
from ibjax.mi.config import MIConfig, resolve_config
from ibjax.mi.critics import critic_scores, get_critic, init_critic
from ibjax.schedules import reduce_on_plateau

__all__ = ["CriticState", "init", "update", "end_epoch", "plateau_update"]


@struct.dataclass
class CriticState:
    """Critics and optimiser states of G groups, every leaf with a leading group axis.

    Attributes:
      params: critic parameters.
      opt_state: optax state (clip, Adam, decoupled weight decay).
      lr: f32[G], current learning rates.
      best_loss: f32[G], the plateau rule's best epoch loss so far (+inf before the first epoch).
      bad_epochs: int32[G], epochs since the rule last counted an improvement (or halved the rate).
    """

    params: Any
    opt_state: Any
    lr: jax.Array
    best_loss: jax.Array
    bad_epochs: jax.Array


def _optimizer(config: MIConfig) -> optax.GradientTransformation:
    # AdamW as PyTorch applies it (decoupled decay scaled by lr); the lr is applied in the step from
    # the state so the plateau schedule can halve it per group.
    return optax.chain(
        optax.clip_by_global_norm(config.optimiser.grad_clip),
        optax.scale_by_adam(),
        optax.add_decayed_weights(config.optimiser.weight_decay),
    )


def init_one(key: jax.Array, da: int, db: int, config: MIConfig) -> CriticState:
    """One group's critic state (no group axis)."""
    params = init_critic(key, config.critic.family, da, db, config.critic.hidden, config.critic.embed_dim, config.critic.rank)
    return CriticState(
        params=params,
        opt_state=_optimizer(config).init(params),
        lr=jnp.asarray(config.optimiser.lr, jnp.float32),
        best_loss=jnp.asarray(jnp.inf, jnp.float32),
        bad_epochs=jnp.asarray(0, jnp.int32),
    )


def init(key: jax.Array, num_groups: int, da: int, db: int, config: Optional[MIConfig] = None, **overrides) -> CriticState:
    """Stacked critic state for ``num_groups`` groups (group g initialised from ``split(key, G)[g]``).

    Raises ValueError for a family fitted in closed form (``gaussian``): it has no steps to take."""
    config = resolve_config(config, **overrides)
    if not get_critic(config.critic.family).trained:
        raise ValueError(f"the {config.critic.family!r} critic is fitted in closed form, not trained by steps: "
                         "critics trained step by step (online critics, update) need critic.family concat or separable")
    return _init(key, num_groups, da, db, config)


@functools.partial(jax.jit, static_argnames=("num_groups", "da", "db", "config"))
def _init(key, num_groups, da, db, config):
    return jax.vmap(lambda k: init_one(k, da, db, config))(jax.random.split(key, num_groups))


def negative_index(u: Optional[jax.Array], batch: int, n_valid: jax.Array, config: MIConfig) -> jax.Array:
    """int32[B, K] negatives per row among the first ``n_valid`` rows of the batch.

    ``u`` f32[B, K] uniform in [0, 1) picks them for ``negative_sampling="sampled"`` (unused, may be
    None, for ``"all"``).
    """
    if config.protocol.negative_sampling == "all":
        # Every other real row; in a partial batch they are cycled to fill the B - 1 slots (never the
        # row itself), as sampling with replacement would repeat them.
        k = jnp.arange(batch - 1)[None, :] % jnp.maximum(n_valid - 1, 1)
        return ((jnp.arange(batch)[:, None] + 1 + k) % jnp.maximum(n_valid, 1)).astype(jnp.int32)
    return jnp.minimum(jnp.floor(u * n_valid), n_valid - 1).astype(jnp.int32)


def negative_uniforms(key: jax.Array, batch: int, config: MIConfig) -> Optional[jax.Array]:
    """The uniforms f32[B, K] :func:`negative_index` draws negatives from (None for all-pairs)."""
    if config.protocol.negative_sampling == "all":
        return None
    return rng.uniform(key, (batch, config.protocol.negatives))


def batch_scores(params, a, b, neg_index, n_valid, config: MIConfig):
    """Critic scores ``(pos f32[B], neg f32[B, K])`` of a batch whose first ``n_valid`` rows are real.

    Rows past n_valid are zeroed (not just weighted out: a NaN there would otherwise reach the
    gradient as 0 * NaN); ``neg_index`` int32[B, K] (from :func:`negative_index`) points at real rows.
    """
    real = jnp.arange(a.shape[0]) < n_valid
    a = jnp.where(real[:, None], a, 0)
    b = jnp.where(real[:, None], b, 0)
    return critic_scores(config.critic.family, params, a, b, neg_index, jnp.dtype(config.critic.dtype))


def _weight(batch: int, n_valid) -> jax.Array:
    return (jnp.arange(batch) < n_valid).astype(jnp.float32)


def estimate_batch(params, a, b, key, n_valid, config: MIConfig, weight=None):
    """The bound (nats) on a batch whose first ``n_valid`` rows are real, negatives drawn with ``key``
    among them (``weight`` f32[B] overrides which rows count)."""
    neg_index = negative_index(negative_uniforms(key, a.shape[0], config), a.shape[0], n_valid, config)
    pos, neg = batch_scores(params, a, b, neg_index, n_valid, config)
    return get_bound(config.protocol.bound)(pos, neg, _weight(a.shape[0], n_valid) if weight is None else weight)


def batch_terms(params, a, b, neg_index, n_valid, config: MIConfig, weight):
    """Per-row terms f32[B] of the bound (see :func:`ibjax.mi.bounds.bound_terms`); their mean over
    ``weight`` is the bound."""
    pos, neg = batch_scores(params, a, b, neg_index, n_valid, config)
    return bound_terms(config.protocol.bound)(pos, neg, weight)


def step_indexed(state: CriticState, a, b, neg_index, active, config: MIConfig, n_valid):
    """One AdamW step of one group's critic with the given negatives; a no-op where ``active`` is False.

    The first ``n_valid`` rows of the batch are real. Returns ``(new state, estimate before the step)``.
    """
    weight = _weight(a.shape[0], n_valid)

    def objective(p):
        pos, neg = batch_scores(p, a, b, neg_index, n_valid, config)
        return get_bound(config.protocol.bound)(pos, neg, weight)

    est, grads = jax.value_and_grad(objective)(state.params)
    grads = jax.tree.map(lambda g: -g, grads)  # maximise the bound
    updates, opt_state = _optimizer(config).update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, jax.tree.map(lambda u: -state.lr * u, updates))
    new = state.replace(params=params, opt_state=opt_state)
    new = jax.tree.map(lambda n, o: jnp.where(active, n, o), new, state)
    return new, est


def step_one(state: CriticState, a, b, key, active, config: MIConfig, n_valid=None):
    """:func:`step_indexed` with negatives drawn with ``key`` (``n_valid`` default: the whole batch)."""
    n_valid = a.shape[0] if n_valid is None else n_valid
    neg_index = negative_index(negative_uniforms(key, a.shape[0], config), a.shape[0], n_valid, config)
    return step_indexed(state, a, b, neg_index, active, config, n_valid)


@functools.partial(jax.jit, static_argnames=("config",), donate_argnums=(0,))
def _update(state, a, b, key, config):
    keys = jax.random.split(key, a.shape[0])
    active = jnp.ones((a.shape[0],), bool)
    return jax.vmap(lambda s, x, y, k, act: step_one(s, x, y, k, act, config))(state, a, b, keys, active)


def update(state: CriticState, a: jax.Array, b: jax.Array, key: jax.Array, config: Optional[MIConfig] = None, **overrides):
    """One optimiser step of every group's critic on one batch of pairs per group.

    Args:
      state: from :func:`init` (donated: use the returned state).
      a: f[G, B, da]; b: f[G, B, db] paired samples of each group (group axis first, batch axis second).
      key: PRNG key (negative sampling).

    Returns:
      ``(new state, estimates f32[G])``, the estimates (nats) read on this batch before the step.
    """
    return _update(state, a, b, key, resolve_config(config, **overrides))


def plateau_update(lr, best_loss, bad_epochs, loss, config: MIConfig):
    """One epoch of the plateau rule, elementwise over groups: :func:`ibjax.schedules.reduce_on_plateau`
    (PyTorch's ``ReduceLROnPlateau(mode="min", threshold_mode="rel")``) with the config's
    ``plateau_patience``, ``plateau_factor``, ``plateau_threshold`` and ``plateau_eps``.

    ``loss`` is the epoch's mean loss (minus the mean estimate, nats). Returns ``(lr, best_loss,
    bad_epochs)``.
    """
    return reduce_on_plateau(lr, best_loss, bad_epochs, loss, patience=config.optimiser.plateau_patience,
                             factor=config.optimiser.plateau_factor, threshold=config.optimiser.plateau_threshold, eps=config.optimiser.plateau_eps)


def plateau_state(state: CriticState, loss: jax.Array, config: MIConfig) -> CriticState:
    lr, best, bad = plateau_update(state.lr, state.best_loss, state.bad_epochs, loss, config)
    return state.replace(lr=lr, best_loss=best, bad_epochs=bad)


def end_epoch(state: CriticState, epoch_estimates: jax.Array, config: Optional[MIConfig] = None, **overrides) -> CriticState:
    """Apply the plateau rule to every group given its epoch's mean estimate f32[G] (nats).

    The rule is stepped on the loss, minus the estimate, as the authors step theirs.
    """
    config = resolve_config(config, **overrides)
    return jax.vmap(lambda s, e: plateau_state(s, -e, config))(state, jnp.asarray(epoch_estimates, jnp.float32))
