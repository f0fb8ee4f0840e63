"""Critics trained alongside a network: per-group ring buffers of the most recent pairs.

:func:`update_buffered` is one jittable step for all groups, called once per training batch of the
network: it reads each group's critic on the batch's new member pairs (pairs it never trained on),
pushes them into the group's buffer, and takes one critic step on the buffer. No input
preprocessing or held-out machinery here: those belong to the offline estimator.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
from flax import struct

from ibjax import rng
from ibjax.mi.bounds import get_bound
from ibjax.mi.config import MIConfig, resolve_config
from ibjax.mi.critics import critic_scores
from ibjax.mi.training import CriticState, step_one

__all__ = ["PairBuffer", "buffer_init", "update_buffered"]


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
    """Empty buffers of ``config.protocol.batch_size`` pairs for ``num_groups`` groups."""
    bsz = resolve_config(config, **overrides).protocol.batch_size
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
    u = rng.uniform(key, (all_a.shape[0], config.num_negatives))
    neg = rows + jnp.minimum(jnp.floor(u * count), count - 1).astype(jnp.int32)
    pos, neg_scores = critic_scores(config.critic.family, params, all_a, all_b, neg, jnp.dtype(config.critic.dtype))
    real = jnp.arange(all_a.shape[0]) < n_new
    return get_bound(config.protocol.bound)(pos, neg_scores, real.astype(jnp.float32)), n_new


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
    training batch, so all groups read against the same ceiling (a critic trained on only its m
    member rows of each batch would saturate near log m, so a large group would read higher for its
    size alone). The price: a pair stays in the buffer for about B / m training steps, so it can be a few
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
        new, _ = step_one(s, buf_a, buf_b, k_step, count >= 2, config, count)
        return new, (buf_a, buf_b, count, head), jnp.where(readable, est, 0.0), jnp.where(readable, n_new, 0)

    keys = jax.random.split(key, member.shape[0])
    state, (ba, bb, count, head), est, rows = jax.vmap(one)(
        state, buffer.a, buffer.b, buffer.count, buffer.head, member, keys
    )
    return state, PairBuffer(a=ba, b=bb, count=count, head=head), est, rows
