"""The offline estimator: every group's critic trained and read in one batched, jitted computation.

The reference (SPEC.md, "MI estimation") trains one critic per sample group, in separate processes.
Here all G groups' critics and optimiser states are stacked along a leading group axis and trained
by one ``vmap``-ed step inside ``lax.scan`` (steps) inside ``lax.scan`` (epochs). The epochs run in
chunks from Python (one compiled chunk of epochs, called ``epochs / chunk`` times), so a plain
``progress(done, total)`` callback can report between chunks; chunking does not change the result.

Per group, with its own key:

1. Split: ``heldout_fraction`` of the group is held out from everything; ``validation_fraction`` of
   the rest is read every epoch (for selecting the critic, the plateau rule if asked, and the
   convergence verdict); the critic trains on the remainder.
2. ``preprocess``: a per-coordinate map of a and b fitted on training pairs (:mod:`ibjax.mi.transform`),
   applied once to every row of the group when its pairs are rows of arrays (:func:`gather_pairs`,
   :func:`bank_pairs`: only the tie-breaking draw is left per batch), else to every batch.
3. Epochs: the training split is shuffled into a loader of ceil(n / B) batches (the last partial),
   of which the first ``batches_per_epoch`` are used (the authors' rule); the epoch's estimate is
   the plain mean of its batches' estimates; the learning rate follows the authors' plateau rule.
4. Reads: ``train`` (the authors' number: mean of the last ``read_epochs`` epochs' estimates, on pairs
   the critic trained on), ``heldout`` with its standard error (per-row bound terms of the selected
   critic on the held-out split, all other rows of a read batch as negatives, averaged over
   ``heldout_passes`` shuffles) and a convergence verdict (:mod:`ibjax.mi.reliability`).

Every random choice of group g derives from that group's own key (``jax.random.split(key, G)[g]``) and,
per sample, from ``fold_in(key_g, position)``, so group g of a batched call equals the same group
estimated alone with that key, and padding a group does not change its result.

Not reproduced from the authors: their critic runs under CUDA fp16 autocast with a GradScaler
(ibjax computes in float32 unless ``dtype="bfloat16"``), and they skip a batch whose loss is NaN or
inf (ibjax has no such branch).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from ibjax import rng
from ibjax.mi.bounds import infonce_all_pairs_terms
from ibjax.mi.config import MIConfig, batches_per_epoch, candidate_configs, resolve_config, split_sizes
from ibjax.mi.critics import critic_matrix, get_critic
from ibjax.mi.reliability import convergence_verdict, mean_and_se, trend
from ibjax.mi.result import MIResult
from ibjax.mi.selection import select_by_validation
from ibjax.mi.training import CriticState, batch_terms, init_one, negative_index, plateau_state, step_indexed
from ibjax.mi.transform import Marginals, apply_marginals, finish_premapped, fit_marginals, premap_marginals

__all__ = [
    "check_groups",
    "estimate_mi",
    "estimate_mi_groups",
    "estimate_mi_sampled",
    "gather_pairs",
    "bank_pairs",
    "default_chunk",
    "default_group_batch",
    "loader_batches",
]


@struct.dataclass
class _Sizes:
    """Per-group sample and batch counts, int32[G] each (int32 scalars inside the group vmap)."""

    n_ho: jax.Array
    n_val: jax.Array
    n_tr: jax.Array
    steps: jax.Array
    ho_batches: jax.Array
    ho_rows: jax.Array  # rows per held-out read batch
    val_batches: jax.Array
    tr_batches: jax.Array  # batches of B covering the training split (a closed-form fit's pass)


@dataclasses.dataclass(frozen=True)
class _Static:
    """Scan lengths shared by all groups (the largest over the groups); hashable, a static argument."""

    width: int  # M, positions per group
    steps: int
    ho_batches: int
    read_rows: int  # rows of a held-out read batch
    val_batches: int
    fit_rows: int
    train_batches: int
    da: int
    db: int
    group_batch: int = 0  # groups computed side by side: 0 = all (vmap), k = a loop over chunks of k
    premapped: bool = False  # the input maps applied once to every row in _prepare (see _ROW_SOURCES)


@struct.dataclass
class _Setup:
    """What each group fixes once (leading group axis): keys, its split and fitted input maps, and the
    validation pass (the same batches and negatives every epoch)."""

    key_epochs: jax.Array
    key_ho: jax.Array
    heldout: jax.Array  # bool[M]
    train: jax.Array  # bool[M]
    val_order: jax.Array  # int32[M], validation positions first
    val_keys: jax.Array  # one key per validation batch
    ma: Marginals
    mb: Marginals


@struct.dataclass
class _Carry:
    """What the epochs update (leading group axis): critic, and the best critic by validation."""

    state: CriticState
    best_params: Any  # None unless select == "best"
    best_val: jax.Array
    best_epoch: jax.Array


# Every separate PRNG call is one more threefry kernel for XLA to compile, and on a CPU compilation
# dominates short runs; so each batch's randomness comes from two calls (a split and one uniform
# draw) and keys are split in bulk.


def _ranks(key: jax.Array, include: jax.Array) -> jax.Array:
    """A random order of the positions where ``include`` holds, as int32[M] positions (rest last).

    Position j's sort key is element j of one uniform draw; with JAX's default partitionable
    threefry that element does not depend on the draw's length, so the order of the included
    positions does not depend on how much padding follows them.
    """
    u = jax.random.uniform(key, include.shape)
    return jnp.argsort(jnp.where(include, u, jnp.inf)).astype(jnp.int32)


def _window(order: jax.Array, start, length: int) -> jax.Array:
    """order[start : start + length], zero-padded past the end (dynamic_slice would clamp the start)."""
    padded = jnp.concatenate([order, jnp.zeros((length,), order.dtype)])
    return jax.lax.dynamic_slice(padded, (start,), (length,))


def _batch(sample_fn, shared, group_data, positions, n_valid, key, setup: _Setup, config: MIConfig, static,
           negatives: bool = True):
    """One batch of one group: its pairs at ``positions`` (int32[R]) through the group's input maps,
    and (if ``negatives``) the negatives int32[R, K] among the first ``n_valid`` rows."""
    rows = positions.shape[0]
    k_pairs, k_u = jax.random.split(key)
    kind = config.critic.preprocess
    widths = [config.protocol.negatives if negatives and config.protocol.negative_sampling == "sampled" else 0]
    widths += [static.da, static.db] if kind == "rank" else [0, 0]
    u = rng.uniform(k_u, (rows, sum(widths))) if sum(widths) else jnp.zeros((rows, 0))
    u_neg, u_a, u_b = jnp.split(u, np.cumsum(widths[:2]), axis=1)
    a, b = sample_fn(shared, group_data, positions, k_pairs)
    if static.premapped:  # rows mapped in _prepare_one: only the tie-breaking is left per batch
        a, b = finish_premapped(a, kind, u_a), finish_premapped(b, kind, u_b)
    else:
        a, b = apply_marginals(setup.ma, a, kind, u_a), apply_marginals(setup.mb, b, kind, u_b)
    return a, b, (negative_index(u_neg, rows, n_valid, config) if negatives else None)


def _streams(key: jax.Array) -> tuple:
    """A group's six key streams: (init, split, epochs, held-out, validation, map fit)."""
    return tuple(jax.random.split(key, 6))


def _prepare_one(key, valid, sizes: _Sizes, group_data, shared, *, sample_fn, config: MIConfig, static: _Static):
    """One group's splits, input maps and validation order, and its rows mapped once (None unless
    ``static.premapped``): what every candidate critic of an estimate with the same maps shares
    (:func:`_maps_of`); reads config.protocol and the critic's map fields only."""
    _, k_split, k_epochs, k_ho, k_val, k_fit = _streams(key)
    split_order = _ranks(k_split, valid)
    rank = jnp.zeros_like(split_order).at[split_order].set(jnp.arange(split_order.shape[0], dtype=jnp.int32))
    heldout = valid & (rank < sizes.n_ho)
    validation = valid & (rank >= sizes.n_ho) & (rank < sizes.n_ho + sizes.n_val)
    train = valid & (rank >= sizes.n_ho + sizes.n_val)
    k_val_order, k_val_batches = jax.random.split(k_val)

    kind = config.critic.preprocess
    if kind == "none":
        ma = fit_marginals(jnp.zeros((1, static.da)), jnp.ones((1,), bool), "none")
        mb = fit_marginals(jnp.zeros((1, static.db)), jnp.ones((1,), bool), "none")
    else:
        bsz = config.protocol.batch_size
        chunks = -(-static.fit_rows // bsz)
        positions = _window(split_order, sizes.n_ho + sizes.n_val, chunks * bsz).reshape(chunks, bsz)
        fit_keys = jax.random.split(k_fit, chunks)

        def draw(_, c):
            return None, sample_fn(shared, group_data, positions[c], fit_keys[c])

        _, (a, b) = jax.lax.scan(draw, None, jnp.arange(chunks))
        a = a.reshape(chunks * bsz, -1)[: static.fit_rows]
        b = b.reshape(chunks * bsz, -1)[: static.fit_rows]
        rows = jnp.arange(static.fit_rows) < sizes.n_tr
        knots = config.critic.rank_knots
        ma, mb = fit_marginals(a, rows, kind, knots), fit_marginals(b, rows, kind, knots)

    setup = _Setup(key_epochs=k_epochs, key_ho=k_ho, heldout=heldout, train=train,
                   val_order=_ranks(k_val_order, validation),
                   val_keys=jax.random.split(k_val_batches, max(static.val_batches, 1)), ma=ma, mb=mb)
    if not static.premapped:
        return setup, None
    # Every row of the group (every noise draw of a bank) through its maps once: the search among
    # the knots is most of a map's cost on wide inputs (pixels), and the epochs, validation and
    # held-out passes read each row many times. What is left per batch is the tie-breaking draw, as
    # without premapping: the same estimate, up to float rounding (tested). A fixed draw per row
    # would let the critic memorise its tie noise (I(X;B) of the SPEC anchor read 0.29 of 0.325).
    rows_a, rows_b = _ROW_SOURCES[sample_fn][0](shared, group_data)
    return setup, (_premap_rows(ma, rows_a, kind), _premap_rows(mb, rows_b, kind))


def _init_carry_one(key, *, config: MIConfig, static: _Static) -> _Carry:
    """One group's fresh critic, from the init stream of :func:`_streams`."""
    state = init_one(_streams(key)[0], static.da, static.db, config)
    best = state.params if config.optimiser.select == "best" else None
    return _Carry(state=state, best_params=best, best_val=jnp.asarray(-jnp.inf, jnp.float32),
                  best_epoch=jnp.asarray(config.protocol.epochs - 1, jnp.int32))


def _maps_of(config: MIConfig, static: _Static) -> tuple:
    """What :func:`_prepare_one` depends on beyond its arrays: candidates that agree on it share one
    preparation (the input maps' fit and the pass over every row are most of a short estimate's cost)."""
    c = config.critic
    return (config.protocol, c.preprocess, c.rank_knots, static.fit_rows, static.val_batches, static.premapped,
            static.group_batch, static.da, static.db, static.width)


def _premap_rows(m: Marginals, rows: jax.Array, kind: str) -> jax.Array:
    """:func:`ibjax.mi.transform.premap_marginals` of rows f[M, ..., d]: f32[M, ..., d(, 2)]."""
    flat = premap_marginals(m, rows.reshape(-1, rows.shape[-1]), kind)
    return flat.reshape(rows.shape + flat.shape[2:])


def _split_terms(params, order, n_split, n_batches, keys, group_data, shared, setup, *, sample_fn,
                 config: MIConfig, static: _Static):
    """Per-position bound terms f32[M] of one pass over a split (0 off the split), and its read (nats).

    ``order`` int32[M] lists the split's n_split positions first, in the pass's order; batch h uses
    ``keys[h]``. The split is cut into ceil(n / B) batches; the last one is filled up with rows from
    the start of the pass (counted once: only the new rows' terms are kept), so every read sees B
    rows of negatives.
    """
    bsz = config.protocol.batch_size

    def batch(acc, h):
        j = h * bsz + jnp.arange(bsz)
        positions = order[j % jnp.maximum(n_split, 1)]
        weight = ((j < n_split) & (h < n_batches)).astype(jnp.float32)
        a, b, neg = _batch(sample_fn, shared, group_data, positions, jnp.minimum(bsz, n_split), keys[h], setup,
                           config, static)
        terms = batch_terms(params, a, b, neg, jnp.minimum(bsz, n_split), config, weight)
        return acc.at[positions].add(jnp.where(weight > 0, terms, 0.0)), None

    acc, _ = jax.lax.scan(batch, jnp.zeros(order.shape, jnp.float32), jnp.arange(keys.shape[0]))
    return acc, jnp.sum(acc) / jnp.maximum(n_split, 1)


def _allpairs_terms(params, order, n_split, n_batches, rows, keys, group_data, shared, setup, *, sample_fn,
                    config: MIConfig, static: _Static):
    """Per-position all-pairs InfoNCE terms f32[M] of one pass over a split, and its read (nats).

    The split's n positions (first in ``order``) are cut into ``n_batches`` batches of ``rows`` (the
    last one possibly shorter); each row's negatives are all other rows of its batch.
    """
    r = static.read_rows

    def batch(acc, h):
        i = jnp.arange(r)
        n_valid = jnp.where(h < n_batches, jnp.clip(n_split - h * rows, 0, rows), 0)
        real = i < n_valid
        positions = order[jnp.where(real, h * rows + i, 0)]
        a, b, _ = _batch(sample_fn, shared, group_data, positions, n_valid, keys[h], setup, config, static,
                         negatives=False)
        a, b = jnp.where(real[:, None], a, 0), jnp.where(real[:, None], b, 0)
        scores = critic_matrix(config.critic.family, params, a, b, jnp.dtype(config.critic.dtype))
        terms = infonce_all_pairs_terms(scores, jnp.maximum(n_valid, 1))
        return acc.at[positions].add(jnp.where(real, terms, 0.0)), None

    acc, _ = jax.lax.scan(batch, jnp.zeros(order.shape, jnp.float32), jnp.arange(keys.shape[0]))
    return acc, jnp.sum(acc) / jnp.maximum(n_split, 1)


def loader_batches(order: jax.Array, n: jax.Array, batch_size: int, used: jax.Array, max_steps: int):
    """The batches an epoch uses from a shuffled loader over ``n`` samples (the authors' indexing).

    ``order`` int32[M] lists the samples' positions in the epoch's shuffled order (the n real ones
    first). The loader's batch i is ``order[i*B : (i+1)*B]``, the last one partial (ceil(n / B)
    batches, ``drop_last=False``); the first ``used`` of them are taken (:func:`batches_per_epoch`).

    Returns ``(positions int32[S, B], n_valid int32[S], active bool[S])`` for S = ``max_steps`` (the
    scan length shared by all groups): step s reads the first ``n_valid[s]`` rows of
    ``positions[s]`` (positions past them are 0, never read) and is skipped where ``active`` is False.
    """
    steps = jnp.arange(max_steps)
    positions = _window(order, 0, max_steps * batch_size).reshape(max_steps, batch_size)
    n_valid = jnp.clip(n - steps * batch_size, 0, batch_size).astype(jnp.int32)
    active = (steps < used) & (n_valid > 0)
    positions = jnp.where(jnp.arange(batch_size)[None, :] < n_valid[:, None], positions, 0)
    return positions, n_valid, active


def _epochs_one(carry: _Carry, setup: _Setup, sizes: _Sizes, group_data, shared, start, *, sample_fn,
                config: MIConfig, static: _Static, length: int):
    bsz = config.protocol.batch_size
    use_val = config.protocol.validation_fraction > 0

    def epoch(carry: _Carry, e):
        keys = jax.random.split(jax.random.fold_in(setup.key_epochs, e), static.steps + 1)
        batches = loader_batches(_ranks(keys[0], setup.train), sizes.n_tr, bsz, sizes.steps, static.steps)

        def step(state, xs):
            positions, n_valid, active, key = xs

            def run(state):
                n = jnp.maximum(n_valid, 1)  # under vmap an inactive step still computes (masked): keep it finite
                a, b, neg = _batch(sample_fn, shared, group_data, positions, n, key, setup, config, static)
                return step_indexed(state, a, b, neg, active, config, n)

            # A group with fewer batches than the largest skips its extra steps when groups run one
            # after another (under vmap the cond computes both branches and selects).
            state, est = jax.lax.cond(active, run, lambda st: (st, jnp.zeros((), jnp.float32)), state)
            return state, jnp.where(active, est, 0.0)

        state, ests = jax.lax.scan(step, carry.state, (*batches, keys[1:]))
        est = jnp.sum(ests) / sizes.steps
        if use_val:
            # The same batches and negatives every epoch (common random numbers): epoch-to-epoch
            # changes of this read are the critic's, not the draw's.
            _, val = _split_terms(state.params, setup.val_order, sizes.n_val, sizes.val_batches, setup.val_keys,
                                  group_data, shared, setup, sample_fn=sample_fn, config=config, static=static)
        else:
            val = jnp.asarray(jnp.nan, jnp.float32)
        state = plateau_state(state, -(val if config.optimiser.plateau_on == "validation" else est), config)
        if config.optimiser.select == "best":
            better = val > carry.best_val
            carry = carry.replace(
                best_params=jax.tree.map(lambda n, o: jnp.where(better, n, o), state.params, carry.best_params),
                best_val=jnp.where(better, val, carry.best_val),
                best_epoch=jnp.where(better, e, carry.best_epoch).astype(jnp.int32),
            )
        return carry.replace(state=state), (est, val)

    carry, (est, val) = jax.lax.scan(epoch, carry, start + jnp.arange(length))
    return carry, est, val


def _fit_one(carry: _Carry, setup: _Setup, sizes: _Sizes, group_data, shared, *, sample_fn, config: MIConfig,
             static: _Static):
    """A closed-form family's critic (``Critic.fit``) from one pass over the training split, its size
    chosen on the validation split (``critic.rank`` 0) or given; in place of the epochs.

    Returns ``(carry with the fitted critic kept, trajectory f32[E], validation f32[E])``: every epoch
    holds the fitted critic's training and validation reads, so the result has the shape of a trained
    family's (model selection stacks them) and its convergence verdict sees no trend.
    """
    fit = get_critic(config.critic.family).fit
    bsz = config.protocol.batch_size
    keys = jax.random.split(jax.random.fold_in(setup.key_epochs, 0), static.train_batches + 1)
    order = _ranks(keys[0], setup.train)

    def accumulate(stats, h):
        j = h * bsz + jnp.arange(bsz)
        weight = j < sizes.n_tr
        a, b, _ = _batch(sample_fn, shared, group_data, order[jnp.where(weight, j, 0)], jnp.minimum(bsz, sizes.n_tr),
                         keys[h + 1], setup, config, static, negatives=False)
        return fit.add(stats, a, b, weight), None

    stats, _ = jax.lax.scan(accumulate, fit.zero(static.da, static.db, static.train_batches * bsz),
                            jnp.arange(static.train_batches))
    params = fit.solve(stats)
    read = functools.partial(_split_terms, group_data=group_data, shared=shared, setup=setup, sample_fn=sample_fn,
                             config=config, static=static)

    def validation_read(rank):
        return read(fit.keep(params, rank), setup.val_order, sizes.n_val, sizes.val_batches, setup.val_keys)[1]

    ranks = fit.ranks(static.da, static.db) if config.critic.rank == 0 else (config.critic.rank,)
    if config.protocol.validation_fraction <= 0:  # nothing to choose on: the largest model
        ranks = ranks[-1:]
    if len(ranks) > 1:
        # One pass for every rank: under vmap the pairs, their maps and the canonical variates, which
        # no rank changes, are computed once; only the coefficients and the B x B scores are per rank.
        vals = jax.vmap(validation_read)(jnp.asarray(ranks, jnp.int32))
        best = jnp.argmax(jnp.where(jnp.isnan(vals), -jnp.inf, vals))
        params, val = fit.keep(params, jnp.asarray(ranks, jnp.int32)[best]), vals[best]
    else:
        params = fit.keep(params, ranks[0])
        val = validation_read(ranks[0]) if config.protocol.validation_fraction > 0 else jnp.asarray(jnp.nan)
    # The training read: every training batch once, negatives drawn as in training.
    _, train = read(params, order, sizes.n_tr, sizes.tr_batches, keys[1:])
    epochs = config.protocol.epochs
    carry = carry.replace(state=carry.state.replace(params=params), best_val=val.astype(jnp.float32),
                          best_epoch=jnp.asarray(epochs - 1, jnp.int32),
                          best_params=params if config.optimiser.select == "best" else None)
    return carry, jnp.full((epochs,), train, jnp.float32), jnp.full((epochs,), val, jnp.float32)


def _finish_one(carry: _Carry, setup: _Setup, sizes: _Sizes, group_data, shared, trajectory, validation, *, sample_fn,
                config: MIConfig, static: _Static):
    train_read = jnp.mean(trajectory[-config.protocol.read_epochs:])
    params = carry.best_params if config.optimiser.select == "best" else carry.state.params
    if config.protocol.heldout_fraction > 0:
        def one_pass(acc, p):
            keys = jax.random.split(jax.random.fold_in(setup.key_ho, p), static.ho_batches + 1)
            order = _ranks(keys[0], setup.heldout)
            if config.reads_all_pairs:
                terms, _ = _allpairs_terms(params, order, sizes.n_ho, sizes.ho_batches, sizes.ho_rows, keys[1:],
                                           group_data, shared, setup, sample_fn=sample_fn, config=config, static=static)
            else:
                terms, _ = _split_terms(params, order, sizes.n_ho, sizes.ho_batches, keys[1:], group_data, shared,
                                        setup, sample_fn=sample_fn, config=config, static=static)
            return acc + terms, None

        acc, _ = jax.lax.scan(one_pass, jnp.zeros(setup.heldout.shape, jnp.float32), jnp.arange(config.protocol.heldout_passes))
        heldout, heldout_se = mean_and_se(acc / config.protocol.heldout_passes, setup.heldout.astype(jnp.float32))
    else:
        heldout = heldout_se = jnp.asarray(jnp.nan, jnp.float32)
    read = validation if config.protocol.validation_fraction > 0 else trajectory
    rise, rise_se = trend(read, config.convergence_window)
    converged = convergence_verdict(rise, rise_se, config.protocol.convergence_tol, two_sided=config.optimiser.select == "last")
    if config.reads_all_pairs:
        heldout_cap = jnp.log(jnp.maximum(sizes.ho_rows, 1).astype(jnp.float32))
    else:
        heldout_cap = jnp.asarray(config.cap, jnp.float32)
    return train_read, heldout, heldout_se, rise, rise_se, converged, carry.best_epoch, carry.state.lr, heldout_cap


_STATIC = ("sample_fn", "config", "static")


def _over_groups(fn, per_group: tuple, group_batch: int):
    """``fn(*per_group[g])`` for every group g (leading axis of every leaf of ``per_group``), stacked.

    ``group_batch`` 0 vmaps all groups at once (one wide computation: accelerators, and a group axis
    sharded over devices); k > 0 loops over the groups k at a time (``lax.map``). On XLA:CPU the loop
    is faster: one group's B x B pair activations (B 64, width 64: 1 MB) stay in cache where 13
    groups' do not (a looped critic step costs markedly less per group than a vmapped one;
    docs/measurements.md, "CPU tuning"), and a group skips the steps it has no batch for instead of
    computing them masked. The results are the same up to float rounding.
    """
    if group_batch == 0:
        return jax.vmap(fn)(*per_group)
    if group_batch == 1:
        return jax.lax.map(lambda args: fn(*args), per_group)
    # lax.map(batch_size=k) cannot reshape the zero-size leaves some pytrees hold (unused knots).
    g = jax.tree.leaves(per_group)[0].shape[0]
    n, k = g // group_batch, group_batch
    head = jax.tree.map(lambda x: x[: n * k].reshape((n, k) + x.shape[1:]), per_group)
    out = jax.lax.map(lambda args: jax.vmap(fn)(*args), head)
    out = jax.tree.map(lambda x: x.reshape((n * k,) + x.shape[2:]), out)
    if g == n * k:
        return out
    tail = jax.vmap(fn)(*jax.tree.map(lambda x: x[n * k :], per_group))
    return jax.tree.map(lambda a, b: jnp.concatenate([a, b]), out, tail)


@functools.partial(jax.jit, static_argnames=_STATIC)
def _prepare(keys, valid, sizes, group_data, shared, *, sample_fn, config, static):
    fn = functools.partial(_prepare_one, shared=shared, sample_fn=sample_fn, config=config, static=static)
    return _over_groups(fn, (keys, valid, sizes, group_data), static.group_batch)


@functools.partial(jax.jit, static_argnames=("config", "static"))
def _init_carry(keys, *, config, static):
    return _over_groups(functools.partial(_init_carry_one, config=config, static=static), (keys,), static.group_batch)


def _rows_of_arrays(shared, group_data):
    del shared
    return group_data


def _rows_of_bank(shared, group_data):
    a_bank, b_all = shared
    return a_bank[group_data], b_all[group_data]


@functools.partial(jax.jit, static_argnames=(*_STATIC, "length"), donate_argnums=(0,))
def _run_epochs(carry, setup, sizes, group_data, shared, start, *, sample_fn, config, static, length):
    fn = functools.partial(_epochs_one, shared=shared, start=start, sample_fn=sample_fn, config=config, static=static,
                           length=length)
    return _over_groups(fn, (carry, setup, sizes, group_data), static.group_batch)


@functools.partial(jax.jit, static_argnames=_STATIC, donate_argnums=(0,))
def _fit_closed_form(carry, setup, sizes, group_data, shared, *, sample_fn, config, static):
    fn = functools.partial(_fit_one, shared=shared, sample_fn=sample_fn, config=config, static=static)
    return _over_groups(fn, (carry, setup, sizes, group_data), static.group_batch)


@functools.partial(jax.jit, static_argnames=_STATIC)
def _finish(carry, setup, sizes, group_data, shared, trajectory, validation, *, sample_fn, config, static):
    fn = functools.partial(_finish_one, shared=shared, sample_fn=sample_fn, config=config, static=static)
    return _over_groups(lambda c, su, sz, gd, tr, va: fn(c, su, sz, gd, trajectory=tr, validation=va),
                        (carry, setup, sizes, group_data, trajectory, validation), static.group_batch)


def _typed_key(key) -> jax.Array:
    key = jnp.asarray(key)
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key
    return jax.random.wrap_key_data(key)  # raw uint32 key data of the default PRNG implementation


def group_keys(key: jax.Array, num_groups: int) -> jax.Array:
    """Typed keys ``[G]`` of the G groups: ``split(key, G)`` of one key (raw ``uint32[2]`` or typed), or
    G keys as given (raw ``[G, 2]`` or typed ``[G]``); ValueError for another count."""
    key = _typed_key(key)
    if key.shape == ():
        return jax.random.split(key, num_groups)
    if key.shape == (num_groups,):
        return key
    raise ValueError(f"key must be one PRNG key or one per group ({num_groups}), got {key.shape[0]} keys")


def _group_sizes(valid: np.ndarray, config: MIConfig, names: Optional[Sequence[str]] = None) -> dict:
    """Per-group counts (int64 arrays), computed once on the host so the device loop and the scan
    lengths agree; raises ValueError naming the first group too small for ``config``."""
    n = valid.sum(axis=1)
    n_ho, n_val, n_tr = split_sizes(n, config)
    needs = [("training", n_tr, True), ("held-out", n_ho, config.protocol.heldout_fraction > 0),
             ("validation", n_val, config.protocol.validation_fraction > 0)]
    for what, count, required in needs:
        small = np.flatnonzero(required & (count < 2))
        if small.size:
            g = int(small[0])
            label = names[g] if names else f"group {g}"
            raise ValueError(
                f"{label} has {int(count[g])} {what} samples (of {int(n[g])}; heldout_fraction "
                f"{config.protocol.heldout_fraction}, validation_fraction {config.protocol.validation_fraction}); InfoNCE needs at "
                "least 2: change those fractions or leave that group out"
            )
    bsz = config.protocol.batch_size
    if config.reads_all_pairs:  # equal batches of at most read_batch_size rows
        ho_batches = -(-n_ho // config.protocol.read_batch_size)
        ho_rows = -(-n_ho // np.maximum(ho_batches, 1))
    else:
        ho_batches, ho_rows = -(-n_ho // bsz), np.full_like(n_ho, bsz)
    return dict(n_ho=n_ho, n_val=n_val, n_tr=n_tr, steps=batches_per_epoch(n_tr, bsz, config.optimiser.batch_fraction),
                ho_batches=ho_batches, ho_rows=ho_rows, val_batches=-(-n_val // bsz), tr_batches=-(-n_tr // bsz))


def check_groups(mask: np.ndarray, config: Union[MIConfig, str, None] = None, group_names: Optional[Sequence[str]] = None,
                 **overrides) -> None:
    """Raise ValueError now if any group of ``mask`` bool[G, N] is too small for ``config``.

    Callers that estimate MI late in a long run (after training epochs) call this first, so that a
    bad combination of group sizes and split fractions fails before any work starts.
    """
    _group_sizes(np.asarray(mask, bool), resolve_config(config, **overrides), group_names)


def default_group_batch() -> Union[int, str]:
    """Groups computed side by side by default: 1 (one after another) on a CPU backend, else ``"all"``."""
    return 1 if jax.default_backend() == "cpu" else "all"


def _spans_devices(tree) -> bool:
    """Whether a concrete array of ``tree`` is placed on more than one device (tracers: unknown, False)."""
    for x in jax.tree.leaves(tree):
        if isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer) and len(x.sharding.device_set) > 1:
            return True
    return False


def resolve_group_batch(group_batch: Union[int, str], num_groups: int, per_group=()) -> int:
    """``group_batch`` as :class:`_Static` holds it: 0 for all groups at once, else k >= 1.

    ``"auto"`` is 0 when an array of ``per_group`` (keys, group data) spans several devices: a loop
    over a sharded group axis would gather it; otherwise :func:`default_group_batch`.
    """
    if group_batch == "auto":
        group_batch = "all" if _spans_devices(per_group) else default_group_batch()
    if group_batch == "all":
        return 0
    if isinstance(group_batch, bool) or not isinstance(group_batch, (int, np.integer)) or group_batch < 1:
        raise ValueError(f"group_batch must be 'auto', 'all' or an int >= 1, got {group_batch!r}")
    return 0 if group_batch >= num_groups else int(group_batch)


def default_chunk(epochs: int, updates: int = 20) -> int:
    """Epochs per compiled chunk: the largest divisor of ``epochs`` at most ceil(epochs / updates), so
    every chunk has the same length (one compilation) and progress is reported about ``updates`` times."""
    limit = max(1, math.ceil(epochs / updates))
    return max(d for d in range(1, limit + 1) if epochs % d == 0)


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
    r = rng.randint(key, idx.shape, 0, a_bank.shape[1])
    b = b_all[idx, r] if b_all.ndim == 3 else b_all[idx]
    return a_bank[idx, r], b


def _group_bank_pairs(shared, group_data, positions, key):
    """:func:`bank_pairs` on one group's own rows: group_data = (a f[M, R, ...], b f[M, ...] or
    f[M, R, ...], b a bank when it has a's rank), the same draws for the same key."""
    del shared
    a_rows, b_rows = group_data
    r = rng.randint(key, positions.shape, 0, a_rows.shape[1])
    return a_rows[positions, r], (b_rows[positions, r] if b_rows.ndim == a_rows.ndim else b_rows[positions])


_ROW_SOURCES = {gather_pairs: (_rows_of_arrays, gather_pairs), bank_pairs: (_rows_of_bank, _group_bank_pairs)}
"""Sample functions whose pairs are rows of arrays known before training (a group's arrays, a bank's
draws): ``sample_fn: (rows(shared, group_data) -> (a rows f[M, ..., da], b rows f[M, ..., db]),
the sample_fn of those rows)``. With an input map their rows are mapped once per estimate
(:func:`_prepare_one`); other sample functions (a fresh noisy forward pass per step) map every batch."""


def estimate_mi_sampled(
    key: jax.Array,
    sample_fn: Callable,
    shared: Any,
    group_data: Any,
    valid: np.ndarray,
    da: int,
    db: int,
    *,
    config: Union[MIConfig, str, None] = None,
    group_names: Optional[Sequence[str]] = None,
    progress: Optional[Callable[[int, int], None]] = None,
    chunk_epochs: Optional[int] = None,
    group_batch: Union[int, str] = "auto",
    **overrides,
) -> MIResult:
    """Estimate MI for G groups whose pairs come from ``sample_fn``; the general form.

    Args:
      key: one PRNG key (split into G) or G keys.
      sample_fn: ``(shared, group_data_g, positions int32[B], key) -> (a f[B, da], b f[B, db])``: the
        pairs at positions of group g. A static argument of the compiled estimator, so it must hash
        by value: a module-level function (:func:`gather_pairs`, :func:`bank_pairs`) or a frozen
        dataclass with ``__call__`` (e.g. one holding the model and trigger that draws a fresh noisy
        forward pass per step, the reference's behaviour); a new closure per call would recompile.
      shared: a pytree every group reads (network variables, a feature bank); not vmapped.
      group_data: a pytree with leading axis G (per-group arrays or index tables).
      valid: bool[G, M], real positions of every group (concrete: it sets the scan lengths).
      da, db: feature sizes of a and b.
      config / overrides: :class:`MIConfig` (default: its own defaults, ibjax's estimator) or a name of
        :data:`ibjax.mi.MI_PRESETS` (``"reference"``: the authors'), and keyword options.
      group_names: names for error messages.
      progress: optional ``progress(done_epochs, total_epochs)``, called from Python after each
        chunk of epochs has finished on the device.
      chunk_epochs: epochs per compiled chunk (default :func:`default_chunk`); any value gives the
        same result up to float rounding.
      group_batch: how many groups are computed side by side: ``"all"`` (one ``vmap`` over the
        groups), an int k >= 1 (a loop over the groups, k at a time), or ``"auto"``: all when the
        keys or ``group_data`` are placed on several devices (a loop over a sharded group axis would
        gather it), else :func:`default_group_batch` (1 on a CPU backend, else all). Any choice
        gives the same result up to float rounding.

    With ``config.candidates``, every config of :func:`ibjax.mi.candidate_configs` is estimated with
    the same key (so the same splits), one after another, and each group keeps the one with the best
    validation read (:func:`ibjax.mi.select_by_validation`); ``progress`` then counts the epochs of
    all of them.

    Returns:
      :class:`MIResult` with a leading group axis.
    """
    config = resolve_config(config, **overrides)
    valid = np.asarray(valid, bool)
    if valid.ndim != 2:
        raise ValueError(f"valid/mask must be (G, N), got shape {valid.shape}")
    chunk = default_chunk(config.protocol.epochs) if chunk_epochs is None else int(chunk_epochs)
    if chunk < 1:
        raise ValueError(f"chunk_epochs must be >= 1, got {chunk_epochs}")
    configs = candidate_configs(config)
    # Counts per candidate (batch_fraction, which a candidate may change, sets the steps); a group too
    # small for the shared splits fails here, before any candidate trains.
    counts = [_group_sizes(valid, c, group_names) for c in configs]
    results, prepared = [], {}
    for i, (cfg, cnt) in enumerate(zip(configs, counts)):
        report = None if progress is None else (
            lambda done, _, d=i * config.protocol.epochs: progress(d + done, config.total_epochs))
        results.append(_estimate(key, sample_fn, shared, group_data, valid, da, db, cfg, cnt, report, chunk,
                                 group_batch, prepared))
    return results[0] if len(results) == 1 else select_by_validation(results)[0]


def _estimate(key, sample_fn, shared, group_data, valid, da, db, config: MIConfig, counts: dict, progress, chunk: int,
              group_batch, prepared: dict) -> MIResult:
    """One config's estimate (:func:`estimate_mi_sampled` without candidates), its group counts given;
    ``prepared`` holds the preparations of earlier candidates of the same call, by :func:`_maps_of`."""
    static = _Static(
        group_batch=resolve_group_batch(group_batch, valid.shape[0], (key, group_data)), width=valid.shape[1],
        steps=int(counts["steps"].max()), ho_batches=int(counts["ho_batches"].max()),
        read_rows=int(counts["ho_rows"].max()) if config.reads_all_pairs else config.protocol.batch_size,
        val_batches=int(counts["val_batches"].max()), fit_rows=int(min(config.critic.fit_samples, counts["n_tr"].max())),
        train_batches=int(counts["tr_batches"].max()),
        da=int(da), db=int(db), premapped=config.critic.preprocess != "none" and sample_fn in _ROW_SOURCES,
    )
    sizes = _Sizes(**{k: jnp.asarray(v, jnp.int32) for k, v in counts.items()})
    keys = group_keys(key, valid.shape[0])
    kw = dict(sample_fn=sample_fn, config=config, static=static)
    maps = _maps_of(config, static)
    if maps not in prepared:
        prepared[maps] = _prepare(keys, jnp.asarray(valid), sizes, group_data, shared, **kw)
    setup, mapped = prepared[maps]
    carry = _init_carry(keys, config=config, static=static)
    if static.premapped:  # the epochs and reads take pairs from the mapped rows
        kw["sample_fn"], shared, group_data = _ROW_SOURCES[sample_fn][1], None, mapped
    if not get_critic(config.critic.family).trained:
        carry, trajectory, validation = _fit_closed_form(carry, setup, sizes, group_data, shared, **kw)
        if progress is not None:
            jax.block_until_ready(trajectory)
            progress(config.protocol.epochs, config.protocol.epochs)
    else:
        trajectory, validation, done = [], [], 0
        while done < config.protocol.epochs:
            length = min(chunk, config.protocol.epochs - done)
            carry, est, val = _run_epochs(carry, setup, sizes, group_data, shared, jnp.asarray(done, jnp.int32),
                                          length=length, **kw)
            trajectory.append(est)
            validation.append(val)
            done += length
            if progress is not None:
                jax.block_until_ready(est)
                progress(done, config.protocol.epochs)
        trajectory = jnp.concatenate(trajectory, axis=1)
        validation = jnp.concatenate(validation, axis=1)
    train, heldout, heldout_se, rise, rise_se, converged, best_epoch, lr, heldout_cap = _finish(
        carry, setup, sizes, group_data, shared, trajectory, validation, **kw)
    return MIResult(trajectory=trajectory, validation=validation, train=train, heldout=heldout, heldout_se=heldout_se,
                    best_epoch=best_epoch, trend=rise, trend_se=rise_se, converged=converged, final_lr=lr,
                    heldout_cap=heldout_cap, candidate=jnp.zeros(valid.shape[0], jnp.int32), cap=config.cap)


def estimate_mi_groups(
    key: jax.Array, a: jax.Array, b: jax.Array, mask: Optional[np.ndarray] = None, *, config: Union[MIConfig, str, None] = None,
    progress: Optional[Callable[[int, int], None]] = None, chunk_epochs: Optional[int] = None,
    group_batch: Union[int, str] = "auto", **overrides
) -> MIResult:
    """Estimate I(A;B) for G groups of paired samples in one call.

    Args:
      key: one PRNG key (split into G; group g uses ``split(key, G)[g]``) or G keys.
      a: f[G, N, da]; b: f[G, N, db]: row n of group g is a pair (a, b) drawn from that group's joint.
      mask: bool[G, N] marks real samples, so groups of different sizes share one call (padding rows
        are never read). Default: all real.
      config / overrides: :class:`MIConfig` (default: its own defaults, ibjax's estimator) or a name of
        :data:`ibjax.mi.MI_PRESETS` (``"reference"``: the authors'), and keyword options (``epochs``,
        ``batch_size``, ``negatives``, ``lr``, ``critic``, ``hidden``, ``bound``, ``heldout_fraction``, ...).
      progress, chunk_epochs, group_batch: as :func:`estimate_mi_sampled`.

    Returns:
      :class:`MIResult` (nats, leading group axis).
    """
    a, b = jnp.asarray(a), jnp.asarray(b)
    if a.ndim != 3 or b.ndim != 3 or a.shape[:2] != b.shape[:2]:
        raise ValueError(f"a and b must be (G, N, da) and (G, N, db) with equal G, N; got {a.shape} and {b.shape}")
    mask = np.ones(a.shape[:2], bool) if mask is None else np.asarray(mask, bool)
    if mask.shape != a.shape[:2]:
        raise ValueError(f"mask must have shape {a.shape[:2]}, got {mask.shape}")
    # Padding rows are never read, but move real rows to the front so that positions count real
    # samples: a group then reads the same whichever rows of the padded array hold it.
    if not all(np.all(np.diff(row.astype(int)) <= 0) for row in mask):
        order = np.argsort(~mask, axis=1, kind="stable")
        a = jnp.take_along_axis(a, jnp.asarray(order)[..., None], axis=1)
        b = jnp.take_along_axis(b, jnp.asarray(order)[..., None], axis=1)
        mask = np.take_along_axis(mask, order, axis=1)
    return estimate_mi_sampled(key, gather_pairs, None, (a, b), mask, a.shape[-1], b.shape[-1], config=config,
                               progress=progress, chunk_epochs=chunk_epochs, group_batch=group_batch, **overrides)


def estimate_mi(key: jax.Array, a: jax.Array, b: jax.Array, *, config: Union[MIConfig, str, None] = None,
                progress: Optional[Callable[[int, int], None]] = None, chunk_epochs: Optional[int] = None,
                **overrides) -> MIResult:
    """Estimate I(A;B) from paired samples a f[N, da], b f[N, db]; the result has no group axis.

    Equals group g of :func:`estimate_mi_groups` called with G keys whose g-th is ``key``.
    """
    a, b = jnp.asarray(a), jnp.asarray(b)
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[0]:
        raise ValueError(f"a and b must be (N, da) and (N, db) with equal N; got {a.shape} and {b.shape}")
    res = estimate_mi_groups(key[None] if _is_single_key(key) else key, a[None], b[None], config=config,
                             progress=progress, chunk_epochs=chunk_epochs, **overrides)
    return jax.tree.map(lambda x: x[0], res)


def _is_single_key(key) -> bool:
    return _typed_key(key).shape == ()
