"""Critics trained alongside a network: per-group ring buffers (update_buffered)."""

import jax
import jax.numpy as jnp
import numpy as np

from ibjax import mi
from ibjax.mi import online, training


def test_pair_buffer_keeps_the_last_b_member_rows_of_each_group():
    buf = mi.buffer_init(2, 1, 1, batch_size=4)
    rows = jnp.arange(6.0)[:, None]
    member = jnp.asarray([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]], bool)
    pushed = [online._push(buf.a[g], buf.b[g], buf.count[g], buf.head[g], rows, -rows, member[g]) for g in range(2)]
    (a0, b0, c0, h0), (a1, _, c1, h1) = pushed
    assert int(c0) == 3 and int(h0) == 3 and np.asarray(a0[:3, 0]).tolist() == [0, 1, 2]
    np.testing.assert_array_equal(np.asarray(b0[:3, 0]), [0, -1, -2])  # pairs stay pairs
    assert int(c1) == 4 and int(h1) == 0 and sorted(np.asarray(a1[:, 0]).tolist()) == [2, 3, 4, 5]
    # Two more rows into the group-0 buffer wrap around over the oldest.
    a0, _, c0, h0 = online._push(a0, b0, c0, h0, rows[4:], -rows[4:], jnp.ones(2, bool))
    assert int(c0) == 4 and int(h0) == 1 and sorted(np.asarray(a0[:, 0]).tolist()) == [1, 2, 4, 5]


def test_buffered_online_critics_read_against_the_same_ceiling_whatever_the_group_share():
    # Nearly deterministic pairs (b = a + small noise): each read goes to its ceiling. A group with 4
    # member rows per batch and one with 32 both train on full buffers of B = 32 pairs and read alike,
    # far above the log 4 = 1.39 nats that 4 rows per batch alone could show.
    cfg = mi.resolve_config(batch_size=32, negatives=64, lr=3e-3, hidden=(32, 32))
    member = np.zeros((2, 64), bool)
    member[0, :4] = True
    member[1, 4:36] = True
    member = jnp.asarray(member)
    state, buf = mi.init(jax.random.PRNGKey(30), 2, 4, 4, cfg), mi.buffer_init(2, 4, 4, cfg)
    step = jax.jit(lambda s, bf, a, b, k: mi.update_buffered(s, bf, a, b, member, k, cfg))
    reads = []
    for t in range(250):
        ka, kn, kk = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(31), t), 3)
        a = jax.random.normal(ka, (64, 4))
        state, buf, est, rows = step(state, buf, a, a + 0.01 * jax.random.normal(kn, (64, 4)), kk)
        if t >= 170:
            reads.append(np.asarray(est))
    assert np.asarray(rows).tolist() == [4, 32] and np.asarray(buf.count).tolist() == [32, 32]
    r = np.mean(reads, 0)
    assert abs(r[1] - r[0]) < 0.3 and r[0] > 2.0


def test_buffered_online_read_is_not_inflated_by_memorised_pairs():
    # A stream of independent a and b (truth 0), 2 new pairs per step into a buffer of 64: each pair
    # is trained on for 32 steps, and a read on the buffer the critic trains on climbs above 0 by
    # memorising them; the read on each step's new pairs does not (a lower bound, it may go below).
    cfg = mi.resolve_config(batch_size=64, negatives=64, lr=3e-3, hidden=(64, 64))
    member = jnp.ones((1, 2), bool)
    state, buf = mi.init(jax.random.PRNGKey(42), 1, 16, 16, cfg), mi.buffer_init(1, 16, 16, cfg)
    step = jax.jit(lambda s, bf, a, b, k: mi.update_buffered(s, bf, a, b, member, k, cfg))
    read_buffer = jax.jit(lambda p, a, b, k: training.estimate_batch(p, a, b, k, 64, cfg))
    fresh, trained_on = [], []
    for t in range(450):
        ka, kb, k_new = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(43), t), 3)
        state, buf, est, _ = step(state, buf, jax.random.normal(ka, (2, 16)), jax.random.normal(kb, (2, 16)), k_new)
        if t >= 300:
            fresh.append(float(est[0]))
            trained_on.append(float(read_buffer(jax.tree.map(lambda x: x[0], state.params), buf.a[0], buf.b[0], k_new)))
    assert np.mean(trained_on) > 0.5  # memorised: above the truth
    assert np.mean(fresh) < 0.05
