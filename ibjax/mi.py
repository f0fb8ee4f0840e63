"""Batched InfoNCE mutual-information estimation: every group's critic trained in one jitted call.

The reference (SPEC.md, "MI estimation") trains one critic per sample group, in separate processes.
Here all G groups' critics and optimiser states are stacked along a leading group axis and trained
by one ``vmap``-ed step inside ``lax.scan`` (epochs) inside ``lax.scan`` (steps), compiled once.

Two levels of API:

- Offline estimators: :func:`estimate_mi` (one pair of sample matrices), :func:`estimate_mi_groups`
  (G groups of different sizes at once, padded + masked) and :func:`estimate_mi_sampled` (any way of
  producing a batch of pairs, e.g. a fresh noise draw of the CNN's representation every step, or a
  cached bank of R noise draws per sample). They return an :class:`MIResult` in nats: the per-epoch
  ``trajectory``, the reference's ``train`` read (mean of the last 5 epochs, on the samples the
  critic trained on) and a ``heldout`` read on a split of each group the critic never saw.
- The step one level down, for use inside other loops (critics training side by side with a CNN):
  :func:`init` of the stacked critic state and a jittable ``update(state, a, b, key)`` for all groups,
  plus :func:`end_epoch` for the halve-on-plateau learning rate.

Every random choice of group g derives from that group's own key (``jax.random.split(key, G)[g]``) and,
per sample, from ``fold_in(key_g, position)``, so group g of a batched call equals the same group
estimated alone with that key, and padding a group does not change its result.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from ibjax.bounds import bound_cap, get_bound
from ibjax.critics import critic_scores, init_critic

__all__ = [
    "MIConfig",
    "XT_CONFIG",
    "TY_CONFIG",
    "MIResult",
    "CriticState",
    "init",
    "update",
    "end_epoch",
    "update_masked",
    "PairBuffer",
    "buffer_init",
    "update_buffered",
    "check_groups",
    "estimate_mi",
    "estimate_mi_groups",
    "estimate_mi_sampled",
    "gather_pairs",
    "bank_pairs",
]


@dataclasses.dataclass(frozen=True)
class MIConfig:
    """Estimator settings. Defaults are the reference's I(X;T) settings (:data:`TY_CONFIG` for I(T;Y)).

    Attributes:
      epochs: estimator epochs.
      batch_size: B, pairs per step.
      negatives: K, negatives per pair, drawn uniformly with replacement from the batch.
      negative_sampling: ``"sampled"`` (the reference: K draws with replacement) or ``"all"``
        (every other row of the batch, K = B - 1: the all-pairs InfoNCE).
      lr, weight_decay: AdamW.
      grad_clip: global gradient-norm clip (per group).
      plateau_patience, plateau_factor, plateau_threshold: the learning rate is multiplied by
        ``plateau_factor`` once the epoch estimate has not improved on the best so far by the
        relative ``plateau_threshold`` for more than ``plateau_patience`` epochs (PyTorch's
        ``ReduceLROnPlateau(mode="max")`` with its default threshold).
      batch_fraction: fraction of each group's batches used per epoch (the reference uses the first half).
      critic: ``"concat"`` (reference) or ``"separable"``; hidden: hidden widths; embed_dim: separable only.
      bound: ``"infonce"`` (reference), ``"nwj"`` or ``"dv"``.
      heldout_fraction: fraction of each group held out from training for the held-out read. The
        critic then trains on the rest only (fewer steps per epoch than the reference, which trains
        on the whole group): ``heldout_fraction=0`` is exactly the reference's protocol.
      heldout_passes: shuffles of the held-out split averaged in the held-out read.
      read_epochs: the ``train`` read is the mean of this many last epochs (reference: 5).
      dtype: critic compute dtype, ``"float32"`` or ``"bfloat16"`` (parameters stay float32).
    """

    epochs: int = 350
    batch_size: int = 128
    negatives: int = 512
    negative_sampling: str = "sampled"
    lr: float = 3e-4
    weight_decay: float = 1e-4
    grad_clip: float = 5.0
    plateau_patience: int = 8
    plateau_factor: float = 0.5
    plateau_threshold: float = 1e-4
    batch_fraction: float = 0.5
    critic: str = "concat"
    hidden: tuple[int, ...] = (128, 128)
    embed_dim: int = 64
    bound: str = "infonce"
    heldout_fraction: float = 0.2
    heldout_passes: int = 4
    read_epochs: int = 5
    dtype: str = "float32"

    @property
    def num_negatives(self) -> int:
        return self.batch_size - 1 if self.negative_sampling == "all" else self.negatives

    @property
    def cap(self) -> float:
        """Largest value the bound can read, nats (log(K + 1) for InfoNCE).

        With K > B negatives drawn with replacement from the batch, a row's own partner is among its
        negatives about K / B times, so in practice InfoNCE saturates near log(B) (4.85 nats for the
        reference's I(X;T), B = 128) well before this cap; a batch of n < B real rows (a small group)
        saturates near log(n).
        """
        return bound_cap(self.bound, self.num_negatives)

    def validate(self) -> None:
        get_bound(self.bound)
        if self.critic not in ("concat", "separable"):
            raise ValueError(f"critic must be 'concat' or 'separable', got {self.critic!r}")
        if self.negative_sampling not in ("sampled", "all"):
            raise ValueError(f"negative_sampling must be 'sampled' or 'all', got {self.negative_sampling!r}")
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {self.dtype!r}")
        for name in ("epochs", "batch_size", "negatives", "read_epochs", "heldout_passes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.negative_sampling == "all" and self.batch_size < 2:
            raise ValueError("all-pairs negatives need batch_size >= 2")
        if not 0.0 <= self.heldout_fraction < 1.0:
            raise ValueError(f"heldout_fraction must lie in [0, 1), got {self.heldout_fraction}")
        if not 0.0 < self.batch_fraction <= 1.0:
            raise ValueError(f"batch_fraction must lie in (0, 1], got {self.batch_fraction}")
        if self.read_epochs > self.epochs:
            raise ValueError(f"read_epochs ({self.read_epochs}) exceeds epochs ({self.epochs})")


XT_CONFIG = MIConfig()
"""The reference's I(X;T) estimator: B 128, K 512, AdamW 3e-4, 350 epochs."""
TY_CONFIG = MIConfig(epochs=250, batch_size=512, negatives=256, lr=5e-4)
"""The reference's I(T;Y_pred) estimator: B 512, K 256, AdamW 5e-4, 250 epochs."""


def _config(config: Optional[MIConfig], overrides: dict) -> MIConfig:
    config = config or MIConfig()
    fields = {f.name for f in dataclasses.fields(MIConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise TypeError(f"unknown MI option(s) {unknown}; options are {sorted(fields)}")
    if "hidden" in overrides:
        overrides = {**overrides, "hidden": tuple(overrides["hidden"])}
    config = dataclasses.replace(config, **overrides)
    config.validate()
    return config


@struct.dataclass
class MIResult:
    """Estimates in nats, with a leading group axis G (absent from :func:`estimate_mi`'s result).

    Attributes:
      trajectory: f32[G, epochs], mean training-batch estimate of every epoch.
      train: f32[G], the reference's read: mean of the last ``read_epochs`` epochs' training-batch
        estimates (on the samples the critic trained on, the whole group when heldout_fraction=0).
      heldout: f32[G], the bound on the held-out split with the final critic (nan if no held-out split).
      cap: the largest value the bound can read (log(K + 1) for InfoNCE).
    """

    trajectory: jax.Array
    train: jax.Array
    heldout: jax.Array
    cap: float = struct.field(pytree_node=False)

    def to_dict(self) -> dict:
        get = lambda x: np.asarray(x).tolist()  # noqa: E731
        return {"trajectory": get(self.trajectory), "train": get(self.train), "heldout": get(self.heldout), "cap": self.cap}


@struct.dataclass
class CriticState:
    """Critics and optimiser states of G groups, every leaf with a leading group axis.

    Attributes:
      params: critic parameters.
      opt_state: optax state (clip, Adam, decoupled weight decay).
      lr: f32[G], current learning rates.
      best: f32[G], best epoch estimate so far (nats); bad_epochs: int32[G] since it improved.
    """

    params: Any
    opt_state: Any
    lr: jax.Array
    best: jax.Array
    bad_epochs: jax.Array


def _optimizer(config: MIConfig) -> optax.GradientTransformation:
    # AdamW as PyTorch applies it (decoupled decay scaled by lr); the lr is applied in the step from
    # the state so the plateau schedule can halve it per group.
    return optax.chain(
        optax.clip_by_global_norm(config.grad_clip),
        optax.scale_by_adam(),
        optax.add_decayed_weights(config.weight_decay),
    )


def _init_one(key: jax.Array, da: int, db: int, config: MIConfig) -> CriticState:
    params = init_critic(key, config.critic, da, db, config.hidden, config.embed_dim)
    return CriticState(
        params=params,
        opt_state=_optimizer(config).init(params),
        lr=jnp.asarray(config.lr, jnp.float32),
        best=jnp.asarray(-jnp.inf, jnp.float32),
        bad_epochs=jnp.asarray(0, jnp.int32),
    )


def init(key: jax.Array, num_groups: int, da: int, db: int, config: Optional[MIConfig] = None, **overrides) -> CriticState:
    """Stacked critic state for ``num_groups`` groups (group g initialised from ``split(key, G)[g]``)."""
    return _init(key, num_groups, da, db, _config(config, overrides))


@functools.partial(jax.jit, static_argnames=("num_groups", "da", "db", "config"))
def _init(key, num_groups, da, db, config):
    return jax.vmap(lambda k: _init_one(k, da, db, config))(jax.random.split(key, num_groups))


def _negative_index(key: jax.Array, batch: int, n_valid: jax.Array, config: MIConfig) -> jax.Array:
    """int32[B, K] negatives per row among the first ``n_valid`` rows of the batch."""
    if config.negative_sampling == "all":
        # Every other real row; in a partial batch they are cycled to fill the B - 1 slots (never the
        # row itself), as sampling with replacement would repeat them.
        k = jnp.arange(batch - 1)[None, :] % jnp.maximum(n_valid - 1, 1)
        return ((jnp.arange(batch)[:, None] + 1 + k) % jnp.maximum(n_valid, 1)).astype(jnp.int32)
    u = jax.random.uniform(key, (batch, config.negatives))
    return jnp.minimum(jnp.floor(u * n_valid), n_valid - 1).astype(jnp.int32)


def _estimate_batch(params, a, b, key, n_valid, config: MIConfig):
    batch = a.shape[0]
    real = jnp.arange(batch) < n_valid
    # Rows past n_valid (padding of a partial batch) are zeroed, not just weighted out: a NaN there
    # would otherwise reach the gradient as 0 * NaN.
    a = jnp.where(real[:, None], a, 0)
    b = jnp.where(real[:, None], b, 0)
    neg_index = _negative_index(key, batch, n_valid, config)
    pos, neg = critic_scores(config.critic, params, a, b, neg_index, jnp.dtype(config.dtype))
    return get_bound(config.bound)(pos, neg, real.astype(jnp.float32))


def _step_one(state: CriticState, a, b, key, active, config: MIConfig, n_valid=None):
    """One AdamW step of one group's critic; a no-op where ``active`` is False.

    ``n_valid`` (default: the whole batch) counts the real rows, packed at the front of the batch.
    """
    n_valid = a.shape[0] if n_valid is None else n_valid
    est, grads = jax.value_and_grad(lambda p: _estimate_batch(p, a, b, key, n_valid, config))(state.params)
    grads = jax.tree.map(lambda g: -g, grads)  # maximise the bound
    updates, opt_state = _optimizer(config).update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, jax.tree.map(lambda u: -state.lr * u, updates))
    new = state.replace(params=params, opt_state=opt_state)
    new = jax.tree.map(lambda n, o: jnp.where(active, n, o), new, state)
    return new, est


def update_masked(state: CriticState, a, b, member, key, config: MIConfig):
    """One step of every group's critic on one shared batch, each group using its own members.

    The simplest online form (see :func:`update_buffered` for full batches per group): a f[B, da]
    and b f[B, db] are the features of one training batch and member bool[G, B] says which rows
    belong to which group. Group g trains on its member rows only (negatives drawn among them), so
    a group with m members per batch saturates near log m; a group with fewer than 2 members in the
    batch skips the step.
    Jittable; returns ``(state, estimates f32[G], counts int32[G])``.
    """

    def one(s, m, k):
        order = jnp.argsort(~m, stable=True)
        n = jnp.sum(m).astype(jnp.int32)
        new, est = _step_one(s, a[order], b[order], k, n >= 2, config, n)
        return new, jnp.where(n >= 2, est, 0.0), n

    keys = jax.random.split(key, member.shape[0])
    return jax.vmap(one)(state, member, keys)


@struct.dataclass
class PairBuffer:
    """Per-group ring buffers of the most recent pairs, for critics trained alongside a network.

    Attributes:
      a: f32[G, B, da]; b: f32[G, B, db]: up to B pairs per group (B = the critic's batch size).
      count: int32[G], rows filled so far (at most B; filled rows are packed at the front).
      head: int32[G], where the next pair of each group is written (the oldest is overwritten).
    """

    a: jax.Array
    b: jax.Array
    count: jax.Array
    head: jax.Array


def buffer_init(num_groups: int, da: int, db: int, config: Optional[MIConfig] = None, **overrides) -> PairBuffer:
    """Empty buffers of ``config.batch_size`` pairs for ``num_groups`` groups."""
    bsz = _config(config, overrides).batch_size
    return PairBuffer(
        a=jnp.zeros((num_groups, bsz, da), jnp.float32),
        b=jnp.zeros((num_groups, bsz, db), jnp.float32),
        count=jnp.zeros((num_groups,), jnp.int32),
        head=jnp.zeros((num_groups,), jnp.int32),
    )


def _push(buf_a, buf_b, count, head, a, b, member):
    """Write one group's member rows of a batch into its ring buffer (the last B of them if more)."""
    bsz = buf_a.shape[0]
    n = jnp.sum(member).astype(jnp.int32)
    rank = jnp.cumsum(member) - 1  # position of each member among this batch's members
    keep = member & (rank >= n - bsz)
    slot = jnp.where(keep, (head + rank - jnp.maximum(n - bsz, 0)) % bsz, bsz)  # bsz = dropped
    buf_a = buf_a.at[slot].set(a.astype(buf_a.dtype), mode="drop")
    buf_b = buf_b.at[slot].set(b.astype(buf_b.dtype), mode="drop")
    return buf_a, buf_b, jnp.minimum(count + n, bsz), (head + jnp.minimum(n, bsz)) % bsz


def _fresh_read(params, buf_a, buf_b, count, a, b, member, key, config: MIConfig):
    """The bound on this batch's member pairs, none of which the critic has trained on yet, with K
    negatives drawn from the group's buffer (independent of each pair: the textbook InfoNCE).
    Returns ``(estimate, rows read)``."""
    order = jnp.argsort(~member, stable=True)
    n_new = jnp.sum(member).astype(jnp.int32)
    rows = a.shape[0]
    all_a = jnp.concatenate([a[order].astype(buf_a.dtype), buf_a])
    all_b = jnp.concatenate([b[order].astype(buf_b.dtype), buf_b])
    u = jax.random.uniform(key, (all_a.shape[0], config.num_negatives))
    neg = rows + jnp.minimum(jnp.floor(u * count), count - 1).astype(jnp.int32)
    pos, neg_scores = critic_scores(config.critic, params, all_a, all_b, neg, jnp.dtype(config.dtype))
    real = jnp.arange(all_a.shape[0]) < n_new
    return get_bound(config.bound)(pos, neg_scores, real.astype(jnp.float32)), n_new


def update_buffered(state: CriticState, buffer: PairBuffer, a, b, member, key, config: MIConfig):
    """One step of every group's critic on its buffer of the B most recent member pairs.

    The online form with full batches: a f[N, da] and b f[N, db] are the features of one training
    batch and member bool[G, N] says which rows belong to which group. For every group:

    1. read: the bound on this batch's member pairs, with negatives drawn from the group's buffer.
       The critic has not trained on these pairs yet, so this read cannot be inflated by a critic
       that memorises the pairs it keeps seeing (the online analogue of the held-out read);
    2. the member pairs go into the group's ring buffer (:class:`PairBuffer`), oldest out;
    3. one critic step on the whole buffer, negatives drawn among its pairs.

    Once the buffers are full every group trains on B pairs per step whatever its share of the
    training batch, so all groups read against the same ceiling (with :func:`update_masked` a group
    of m rows per batch saturates near log m, so a large group would read higher for its size
    alone). The price: a pair stays in the buffer for about B / m training steps, so it can be a few
    steps older than the network.

    Jittable; returns ``(state, buffer, estimates f32[G], rows int32[G])``: each group's read and
    how many pairs it was read on (0 until the buffer holds 2 pairs, then the group's members in this
    batch); weight an epoch's reads by ``rows``.
    """

    def one(s, buf_a, buf_b, count, head, m, k):
        k_read, k_step = jax.random.split(k)
        est, n_new = _fresh_read(s.params, buf_a, buf_b, count, a, b, m, k_read, config)
        readable = (count >= 2) & (n_new >= 1)
        buf_a, buf_b, count, head = _push(buf_a, buf_b, count, head, a, b, m)
        new, _ = _step_one(s, buf_a, buf_b, k_step, count >= 2, config, count)
        return new, (buf_a, buf_b, count, head), jnp.where(readable, est, 0.0), jnp.where(readable, n_new, 0)

    keys = jax.random.split(key, member.shape[0])
    state, (ba, bb, count, head), est, rows = jax.vmap(one)(
        state, buffer.a, buffer.b, buffer.count, buffer.head, member, keys
    )
    return state, PairBuffer(a=ba, b=bb, count=count, head=head), est, rows


@functools.partial(jax.jit, static_argnames=("config",), donate_argnums=(0,))
def _update(state, a, b, key, config):
    keys = jax.random.split(key, a.shape[0])
    active = jnp.ones((a.shape[0],), bool)
    return jax.vmap(lambda s, x, y, k, act: _step_one(s, x, y, k, act, config))(state, a, b, keys, active)


def update(state: CriticState, a: jax.Array, b: jax.Array, key: jax.Array, config: Optional[MIConfig] = None, **overrides):
    """One optimiser step of every group's critic on one batch of pairs per group.

    Args:
      state: from :func:`init` (donated: use the returned state).
      a: f[G, B, da]; b: f[G, B, db] paired samples of each group.
      key: PRNG key (negative sampling).

    Returns:
      ``(new state, estimates f32[G])``, the estimates (nats) read on this batch before the step.
    """
    return _update(state, a, b, key, _config(config, overrides))


def _plateau(state: CriticState, epoch_estimate: jax.Array, config: MIConfig) -> CriticState:
    # PyTorch's relative threshold in "max" mode: better than best * (1 + threshold), and only such
    # an improvement moves the best.
    improved = epoch_estimate > state.best * (1.0 + config.plateau_threshold)
    bad = jnp.where(improved, 0, state.bad_epochs + 1)
    reduce = bad > config.plateau_patience
    return state.replace(
        best=jnp.where(improved, epoch_estimate, state.best),
        bad_epochs=jnp.where(reduce, 0, bad),
        lr=jnp.where(reduce, state.lr * config.plateau_factor, state.lr),
    )


def end_epoch(state: CriticState, epoch_estimates: jax.Array, config: Optional[MIConfig] = None, **overrides) -> CriticState:
    """Apply the halve-on-plateau rule to every group given its epoch estimates f32[G] (nats)."""
    config = _config(config, overrides)
    return jax.vmap(lambda s, e: _plateau(s, e, config))(state, epoch_estimates)


def _ranks(key: jax.Array, include: jax.Array) -> jax.Array:
    """A random order of the positions where ``include`` holds, as int32[M] positions (rest last).

    Each position's sort key is drawn from ``fold_in(key, position)``, so the order of the included
    positions does not depend on how much padding follows them.
    """
    m = include.shape[0]
    u = jax.vmap(lambda j: jax.random.uniform(jax.random.fold_in(key, j)))(jnp.arange(m))
    return jnp.argsort(jnp.where(include, u, jnp.inf)).astype(jnp.int32)


def _estimate_one(key, valid, sizes, group_data, shared, *, sample_fn, config: MIConfig, steps: int, heldout_batches: int,
                  da: int, db: int, progress=None):
    """Train one group's critic and read it (vmapped over groups by the caller).

    ``sizes`` = (held-out samples, steps per epoch, held-out batches) of this group, int32 scalars
    computed once on the host (:func:`_group_sizes`); ``steps`` and ``heldout_batches`` are the
    largest over the groups (the scan lengths).
    """
    bsz = config.batch_size
    n_ho, my_steps, my_ho_batches = sizes
    k_init, k_split, k_epochs, k_ho = jax.random.split(key, 4)
    n = jnp.sum(valid).astype(jnp.int32)
    split_order = _ranks(k_split, valid)
    rank = jnp.zeros_like(split_order).at[split_order].set(jnp.arange(split_order.shape[0], dtype=jnp.int32))
    heldout = valid & (rank < n_ho)
    train = valid & ~heldout
    # A group smaller than one batch trains on one partial batch per epoch (its real rows first).
    n_batch = jnp.minimum(bsz, n - n_ho)

    def batch_at(order, i, key):
        """Pairs of the i-th batch of ``order`` and the key for their negatives."""
        k_pairs, k_neg = jax.random.split(key)
        if order.shape[0] < bsz:  # every group smaller than one batch: pad (the rows are masked out)
            order = jnp.pad(order, (0, bsz - order.shape[0]))
        a, b = sample_fn(shared, group_data, jax.lax.dynamic_slice(order, (i * bsz,), (bsz,)), k_pairs)
        return a, b, k_neg

    def epoch(state, e):
        k_e = jax.random.fold_in(k_epochs, e)
        order = _ranks(jax.random.fold_in(k_e, 0), train)

        def step(state, s):
            a, b, k_neg = batch_at(order, s, jax.random.fold_in(jax.random.fold_in(k_e, 1), s))
            active = s < my_steps
            state, est = _step_one(state, a, b, k_neg, active, config, n_batch)
            return state, jnp.where(active, est, 0.0)

        state, ests = jax.lax.scan(step, state, jnp.arange(steps))
        est = jnp.sum(ests) / my_steps
        if progress is not None:
            jax.debug.callback(progress, e)
        return _plateau(state, est, config), est

    state = _init_one(k_init, da, db, config)
    state, trajectory = jax.lax.scan(epoch, state, jnp.arange(config.epochs))
    train_read = jnp.mean(trajectory[-config.read_epochs :])

    def heldout_pass(_, p):
        k_p = jax.random.fold_in(k_ho, p)
        order = _ranks(jax.random.fold_in(k_p, 0), heldout)

        def batch(_, h):
            a, b, k_neg = batch_at(order, h, jax.random.fold_in(jax.random.fold_in(k_p, 1), h))
            n_valid = jnp.minimum(bsz, n_ho - h * bsz)
            est = _estimate_batch(state.params, a, b, k_neg, n_valid, config)
            return None, jnp.where(h < my_ho_batches, est, 0.0)

        _, ests = jax.lax.scan(batch, None, jnp.arange(heldout_batches))
        return None, jnp.sum(ests) / my_ho_batches

    if config.heldout_fraction > 0:
        _, per_pass = jax.lax.scan(heldout_pass, None, jnp.arange(config.heldout_passes))
        heldout_read = jnp.where(n_ho > 0, jnp.mean(per_pass), jnp.nan)
    else:
        heldout_read = jnp.asarray(jnp.nan, jnp.float32)
    return trajectory, train_read, heldout_read


@functools.partial(
    jax.jit, static_argnames=("sample_fn", "config", "steps", "heldout_batches", "da", "db", "progress")
)
def _estimate_all(keys, valid, sizes, group_data, shared, *, sample_fn, config, steps, heldout_batches, da, db,
                  progress=None):
    fn = functools.partial(
        _estimate_one, sample_fn=sample_fn, config=config, steps=steps, heldout_batches=heldout_batches, da=da, db=db,
        progress=progress,
    )
    return jax.vmap(fn, in_axes=(0, 0, 0, 0, None))(keys, valid, sizes, group_data, shared)


def _group_keys(key: jax.Array, num_groups: int) -> jax.Array:
    key = jnp.asarray(key)
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key if key.shape == (num_groups,) else jax.random.split(key, num_groups)
    if key.shape == (2,):  # one raw uint32 key
        return jax.random.split(key, num_groups)
    if key.shape == (num_groups, 2):
        return key
    raise ValueError(f"key must be one PRNG key or one per group ({num_groups}), got shape {key.shape}")


def check_groups(mask: np.ndarray, config: Optional[MIConfig] = None, group_names: Optional[tuple] = None, **overrides) -> None:
    """Raise ValueError now if any group of ``mask`` bool[G, N] is too small for ``config``.

    Callers that estimate MI late in a long run (after training epochs) call this first, so that a
    bad combination of group sizes and held-out fraction fails before any work starts.
    """
    _group_sizes(np.asarray(mask, bool), _config(config, overrides), group_names)


def _group_sizes(valid: np.ndarray, config: MIConfig, names: Optional[tuple] = None) -> tuple[np.ndarray, ...]:
    """Per-group sizes, computed once on the host so the device loop and the scan lengths agree.

    Returns int32[G] arrays: held-out samples, steps per epoch (``batch_fraction`` of the full
    training batches, at least 1: a group smaller than one batch takes one partial batch), and
    held-out batches (full ones, or one partial batch).
    """
    n = valid.sum(axis=1)
    n_ho = np.floor(config.heldout_fraction * n).astype(np.int64)
    n_tr = n - n_ho
    small = np.flatnonzero(n_tr < 2)
    if small.size:
        g = int(small[0])
        label = names[g] if names else f"group {g}"
        raise ValueError(
            f"{label} has {int(n_tr[g])} training samples (of {int(n[g])}, held-out fraction "
            f"{config.heldout_fraction}); InfoNCE needs at least 2: lower heldout_fraction or leave that group out"
        )
    bsz = config.batch_size
    steps = np.maximum(1, np.floor((n_tr // bsz) * config.batch_fraction)).astype(np.int32)
    ho_batches = np.maximum(1, n_ho // bsz).astype(np.int32)
    return n_ho.astype(np.int32), steps, ho_batches


def gather_pairs(shared, group_data, positions, key):
    """``sample_fn`` for per-group arrays: group_data = (a f[M, da], b f[M, db])."""
    del shared, key
    a, b = group_data
    return a[positions], b[positions]


def bank_pairs(shared, group_data, positions, key):
    """``sample_fn`` for a cached bank of R noise draws per sample.

    shared = (a_bank f[N, R, da], b f[N, db] or b_bank f[N, R, db]); group_data = index int32[M] into
    the N samples. Each pair takes one of its sample's R draws at random (the same draw for a and b
    when both are banks, e.g. Y_pred and T of one noisy forward pass), as a fresh noise draw would.
    """
    a_bank, b_all = shared
    idx = group_data[positions]
    r = jax.random.randint(key, idx.shape, 0, a_bank.shape[1])
    b = b_all[idx, r] if b_all.ndim == 3 else b_all[idx]
    return a_bank[idx, r], b


def estimate_mi_sampled(
    key: jax.Array,
    sample_fn: Callable,
    shared: Any,
    group_data: Any,
    valid: np.ndarray,
    da: int,
    db: int,
    *,
    config: Optional[MIConfig] = None,
    group_names: Optional[tuple[str, ...]] = None,
    progress: Optional[Callable[[Any], None]] = None,
    **overrides,
) -> MIResult:
    """Estimate MI for G groups whose pairs come from ``sample_fn``; the general form.

    Args:
      key: one PRNG key (split into G) or G keys.
      sample_fn: ``(shared, group_data_g, positions int32[B], key) -> (a f[B, da], b f[B, db])``: the
        pairs at positions of group g; hashable (a module-level function or a fixed closure). It can
        run a network for a fresh noise draw per step (the reference's behaviour) or gather from
        cached features (:func:`gather_pairs`, :func:`bank_pairs`).
      shared: a pytree every group reads (network variables, a feature bank); not vmapped.
      group_data: a pytree with leading axis G (per-group arrays or index tables).
      valid: bool[G, M], real positions of every group (concrete: it sets the scan lengths).
      da, db: feature sizes of a and b.
      config / overrides: :class:`MIConfig` and keyword options.
      group_names: names for error messages.
      progress: optional hashable callable, called from the device loop with each finished
        estimator epoch index (0-based), e.g. to drive a progress bar. Order is not guaranteed.

    Returns:
      :class:`MIResult` with a leading group axis.
    """
    config = _config(config, overrides)
    valid = np.asarray(valid, bool)
    if valid.ndim != 2:
        raise ValueError(f"valid/mask must be (G, N), got shape {valid.shape}")
    sizes = _group_sizes(valid, config, group_names)
    keys = _group_keys(key, valid.shape[0])
    traj, train, heldout = _estimate_all(
        keys, jnp.asarray(valid), tuple(jnp.asarray(x) for x in sizes), group_data, shared,
        sample_fn=sample_fn, config=config, steps=int(sizes[1].max()), heldout_batches=int(sizes[2].max()), da=da,
        db=db, progress=progress,
    )
    return MIResult(trajectory=traj, train=train, heldout=heldout, cap=config.cap)


def estimate_mi_groups(
    key: jax.Array, a: jax.Array, b: jax.Array, mask: Optional[np.ndarray] = None, *, config: Optional[MIConfig] = None, **overrides
) -> MIResult:
    """Estimate I(A;B) for G groups of paired samples in one call.

    Args:
      key: one PRNG key (split into G; group g uses ``split(key, G)[g]``) or G keys.
      a: f[G, N, da]; b: f[G, N, db]: row n of group g is a pair (a, b) drawn from that group's joint.
      mask: bool[G, N] marks real samples, so groups of different sizes share one call (padding rows
        are never read). Default: all real.
      config / overrides: :class:`MIConfig` and keyword options (``epochs``, ``batch_size``,
        ``negatives``, ``lr``, ``critic``, ``hidden``, ``bound``, ``heldout_fraction``, ``dtype``, ...).

    Returns:
      :class:`MIResult`: ``trajectory f32[G, epochs]``, ``train f32[G]``, ``heldout f32[G]`` (nats).
    """
    a, b = jnp.asarray(a), jnp.asarray(b)
    if a.ndim != 3 or b.ndim != 3 or a.shape[:2] != b.shape[:2]:
        raise ValueError(f"a and b must be (G, N, da) and (G, N, db) with equal G, N; got {a.shape} and {b.shape}")
    mask = np.ones(a.shape[:2], bool) if mask is None else np.asarray(mask, bool)
    if mask.shape != a.shape[:2]:
        raise ValueError(f"mask must have shape {a.shape[:2]}, got {mask.shape}")
    # Padding rows are never read, but move real rows to the front so positions count real samples.
    if not all(np.all(np.diff(row.astype(int)) <= 0) for row in mask):
        order = np.argsort(~mask, axis=1, kind="stable")
        a = jnp.take_along_axis(a, jnp.asarray(order)[..., None], axis=1)
        b = jnp.take_along_axis(b, jnp.asarray(order)[..., None], axis=1)
        mask = np.take_along_axis(mask, order, axis=1)
    return estimate_mi_sampled(key, gather_pairs, None, (a, b), mask, a.shape[-1], b.shape[-1], config=config, **overrides)


def estimate_mi(key: jax.Array, a: jax.Array, b: jax.Array, *, config: Optional[MIConfig] = None, **overrides) -> MIResult:
    """Estimate I(A;B) from paired samples a f[N, da], b f[N, db]; the result has no group axis.

    Equals group g of :func:`estimate_mi_groups` called with G keys whose g-th is ``key``.
    """
    a, b = jnp.asarray(a), jnp.asarray(b)
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[0]:
        raise ValueError(f"a and b must be (N, da) and (N, db) with equal N; got {a.shape} and {b.shape}")
    res = estimate_mi_groups(key[None] if _is_single_key(key) else key, a[None], b[None], config=config, **overrides)
    return jax.tree.map(lambda x: x[0], res)


def _is_single_key(key) -> bool:
    key = jnp.asarray(key)
    return key.shape == () or key.shape == (2,)
