"""MI engine against ground truth, and the equivalences the batched engine promises."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ibjax import mi, poison, triggers

# A light configuration for CPU: separable critic, all-pairs InfoNCE over batches of 512 (cap log 512).
FAST = dict(critic="separable", negative_sampling="all", batch_size=512, lr=1e-3, batch_fraction=1.0)


def correlated_gaussians(key, mi_nats, n, d):
    """x, y in R^d with per-dimension correlation set so that I(X;Y) = mi_nats."""
    rho = np.sqrt(1.0 - np.exp(-2.0 * np.asarray(mi_nats) / d))
    kx, kz = jax.random.split(key)
    shape = (*np.shape(mi_nats), n, d)
    x = jax.random.normal(kx, shape)
    z = jax.random.normal(kz, shape)
    r = jnp.asarray(rho)[..., None, None]
    return x, r * x + jnp.sqrt(1.0 - r**2) * z


def test_spec_gaussian_anchor():
    # SPEC: Y ~ N(0, 3 I_5), X = Y[:, :3] + N(0, 0.5 I_3); I(X;Y) = 1.5 ln 7 = 2.919 nats.
    ky, kn = jax.random.split(jax.random.PRNGKey(0))
    y = jnp.sqrt(3.0) * jax.random.normal(ky, (16000, 5))
    x = y[:, :3] + jnp.sqrt(0.5) * jax.random.normal(kn, (16000, 3))
    res = mi.estimate_mi(jax.random.PRNGKey(1), x, y, epochs=25, **FAST)
    truth = 1.5 * np.log(7)
    assert abs(float(res.heldout) - truth) < 0.15
    assert abs(float(res.train) - truth) < 0.15


def test_spec_backdoor_flag_anchors():
    # SPEC: with the backdoor flag B of a 10% poison plan, I(X;B) -> H(B) = 0.3251 nats (the trigger
    # makes B a function of X) and I(B;Y) = 0.1936 nats, Y = "labelled as the target" (B = 1 implies
    # Y = 1; a clean sample is in the target class with probability 0.1).
    labels = np.tile(np.arange(10), 1000).astype(np.int32)
    plan = poison.make_poison_plan(labels, 10, poison.PoisonConfig(), jax.random.PRNGKey(0))
    images = jax.random.uniform(jax.random.PRNGKey(1), (10000, 8, 8, 3))
    flag = jnp.asarray(plan.poisoned)
    x = jnp.where(flag[:, None, None, None], triggers.badnets(images, triggers.BadNetsParams(size=3)), images)
    b = jax.nn.one_hot(plan.poisoned.astype(int), 2)
    y = jax.nn.one_hot((plan.labels == plan.target).astype(int), 2)
    xb = mi.estimate_mi(jax.random.PRNGKey(2), b, x.reshape(10000, -1), epochs=20, **FAST)
    by = mi.estimate_mi(jax.random.PRNGKey(2), b, y, epochs=20, **FAST)
    assert float(xb.heldout) == pytest.approx(0.3251, abs=0.03)
    assert float(by.heldout) == pytest.approx(0.1936, abs=0.03)


def test_correlated_gaussians_within_ten_percent_heldout_in_one_batched_call():
    truth = np.array([0.5, 1.0, 2.0, 4.0])
    x, y = correlated_gaussians(jax.random.PRNGKey(0), truth, 16000, 2)
    res = mi.estimate_mi_groups(jax.random.PRNGKey(1), x, y, epochs=25, **FAST)
    assert res.trajectory.shape == (4, 25)
    np.testing.assert_array_less(np.abs(np.asarray(res.heldout) - truth) / truth, 0.10)


def test_independent_inputs_read_zero_heldout_even_where_the_critic_memorises():
    # Few samples, wide inputs and a concat critic: the training read drifts above zero by
    # memorising pairs; the held-out read stays at ~0.
    kx, ky = jax.random.split(jax.random.PRNGKey(3))
    x, y = jax.random.normal(kx, (1000, 64)), jax.random.normal(ky, (1000, 64))
    res = mi.estimate_mi(jax.random.PRNGKey(4), x, y, epochs=60, batch_size=100, negatives=256,
                         lr=3e-3, batch_fraction=1.0, hidden=(128, 128), heldout_fraction=0.5)
    assert float(res.heldout) < 0.05
    assert float(res.train) > float(res.heldout) + 0.05


def test_no_estimate_exceeds_the_cap():
    x, y = correlated_gaussians(jax.random.PRNGKey(5), 4.0, 2048, 2)
    res = mi.estimate_mi(jax.random.PRNGKey(6), x, y, epochs=6, batch_size=64, negatives=7, lr=3e-3,
                         batch_fraction=1.0, hidden=(32, 32))
    assert res.cap == pytest.approx(np.log(8))
    assert float(jnp.max(res.trajectory)) <= res.cap + 1e-5
    assert float(res.heldout) <= res.cap + 1e-5
    assert float(jnp.max(res.trajectory)) > 0.8 * res.cap  # it does press against the cap


LIGHT = dict(epochs=3, read_epochs=2, batch_size=32, negatives=48, hidden=(16, 16), heldout_fraction=0.25)


def test_group_g_equals_the_group_estimated_alone():
    x, y = correlated_gaussians(jax.random.PRNGKey(7), np.array([0.3, 1.0, 2.0]), 300, 3)
    keys = jax.random.split(jax.random.PRNGKey(8), 3)
    batched = mi.estimate_mi_groups(keys, x, y, **LIGHT)
    for g in range(3):
        alone = mi.estimate_mi(keys[g], x[g], y[g], **LIGHT)
        np.testing.assert_allclose(batched.trajectory[g], alone.trajectory, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(batched.heldout[g], alone.heldout, rtol=1e-4, atol=1e-5)
    # One key for all groups means split(key, G).
    one_key = mi.estimate_mi_groups(jax.random.PRNGKey(8), x, y, **LIGHT)
    np.testing.assert_allclose(one_key.train, batched.train, rtol=1e-6)


def test_a_masked_group_equals_the_same_group_unpadded():
    x, y = correlated_gaussians(jax.random.PRNGKey(9), np.array([1.0, 2.0]), 400, 3)
    n_small = 250
    mask = np.ones((2, 400), bool)
    mask[0, n_small:] = False
    xp = x.at[0, n_small:].set(1e6)  # padding must never be read
    keys = jax.random.split(jax.random.PRNGKey(10), 2)
    padded = mi.estimate_mi_groups(keys, xp, y, mask, **LIGHT)
    alone = mi.estimate_mi(keys[0], x[0, :n_small], y[0, :n_small], **LIGHT)
    np.testing.assert_allclose(padded.trajectory[0], alone.trajectory, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(padded.heldout[0], alone.heldout, rtol=1e-4, atol=1e-5)
    # A mask whose real rows are scattered gives the same as the same rows packed at the front.
    perm = np.random.default_rng(0).permutation(400)
    scattered = mi.estimate_mi_groups(keys, xp[:, perm], y[:, perm], mask[:, perm], **LIGHT)
    assert np.isfinite(np.asarray(scattered.heldout)).all()


def test_a_group_smaller_than_one_batch_trains_on_one_partial_batch():
    # The reference's label-consistent 10% group (500 samples) is smaller than the I(T;Y) batch (512).
    # Such a group takes one partial batch per epoch; as a member of a batched call it reads what it
    # reads alone, and padding rows are never read (NaN padding would poison the estimate).
    x, y = correlated_gaussians(jax.random.PRNGKey(20), 1.0, 500, 2)
    cfg = dict(epochs=40, batch_size=512, negatives=64, lr=3e-3, hidden=(32, 32), batch_fraction=1.0)
    alone = mi.estimate_mi(jax.random.PRNGKey(21), x, y, **cfg)
    big_x, big_y = correlated_gaussians(jax.random.PRNGKey(22), 1.0, 2000, 2)
    a = jnp.stack([big_x, jnp.concatenate([x, jnp.full((1500, 2), jnp.nan)])])
    b = jnp.stack([big_y, jnp.concatenate([y, jnp.full((1500, 2), jnp.nan)])])
    mask = np.zeros((2, 2000), bool)
    mask[0], mask[1, :500] = True, True
    keys = jnp.stack([jax.random.PRNGKey(23), jax.random.PRNGKey(21)])
    both = mi.estimate_mi_groups(keys, a, b, mask, **cfg)
    np.testing.assert_allclose(float(both.heldout[1]), float(alone.heldout), atol=1e-4)
    np.testing.assert_allclose(np.asarray(both.trajectory[1]), np.asarray(alone.trajectory), atol=1e-4)
    assert np.all(np.isfinite(np.asarray(both.trajectory)))
    assert 0.6 < float(alone.heldout) < 1.2  # truth 1 nat


def test_all_pairs_negatives_in_a_partial_batch_never_include_the_row_itself():
    cfg = mi._config(None, dict(negative_sampling="all", batch_size=8))
    neg = np.asarray(mi._negative_index(None, 8, jnp.asarray(5), cfg))
    for i in range(5):
        assert i not in neg[i] and set(neg[i]) == set(range(5)) - {i}
    full = np.asarray(mi._negative_index(None, 8, jnp.asarray(8), cfg))
    assert all(set(full[i]) == set(range(8)) - {i} for i in range(8))


def test_bfloat16_critic_runs_and_tracks_float32():
    x, y = correlated_gaussians(jax.random.PRNGKey(11), 1.0, 4096, 2)
    r32 = mi.estimate_mi(jax.random.PRNGKey(12), x, y, epochs=8, **FAST)
    r16 = mi.estimate_mi(jax.random.PRNGKey(12), x, y, epochs=8, dtype="bfloat16", **FAST)
    assert abs(float(r16.heldout) - float(r32.heldout)) < 0.1


def test_init_and_update_train_critics_side_by_side():
    x, y = correlated_gaussians(jax.random.PRNGKey(13), np.array([0.0, 2.0]), 4096, 2)
    cfg = mi.MIConfig(batch_size=128, negatives=128, hidden=(32, 32), lr=3e-3)
    state = mi.init(jax.random.PRNGKey(14), 2, 2, 2, cfg)
    assert state.lr.shape == (2,)
    step = jax.jit(lambda s, a, b, k: mi.update(s, a, b, k, cfg))
    ests = []
    for t in range(150):
        idx = jax.random.randint(jax.random.fold_in(jax.random.PRNGKey(15), t), (128,), 0, 4096)
        state, est = step(state, x[:, idx], y[:, idx], jax.random.PRNGKey(t))
        ests.append(est)
    late = np.mean(ests[-30:], axis=0)
    assert late[1] > 1.4 and abs(late[0]) < 0.15
    # The plateau rule halves a group's lr once it stops improving for more than `patience` epochs.
    state = mi.end_epoch(state, jnp.array([1.0, 1.0]), cfg)
    for _ in range(cfg.plateau_patience + 1):
        state = mi.end_epoch(state, jnp.array([0.5, 2.0]), cfg)
    np.testing.assert_allclose(state.lr, [cfg.lr * 0.5, cfg.lr])


def test_plateau_rule_matches_torch_reduce_lr_on_plateau_in_max_mode():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    # Rising, then flat with tiny gains below the relative threshold, then falling; two groups.
    ests = np.concatenate([np.linspace(0.1, 2.0, 10), 2.0 + 1e-5 * np.arange(15), 2.0 - 0.01 * np.arange(20)])
    ests = np.stack([ests, ests[::-1] + 0.01 * rng.normal(size=ests.size)], 1).astype(np.float32)
    cfg = mi._config(None, {})
    state = mi.init(jax.random.PRNGKey(0), 2, 2, 2, cfg)
    expected = []
    for g in range(2):
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.lr)
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.5, patience=8)
        lrs = []
        for e in ests[:, g]:
            sched.step(float(e))
            lrs.append(opt.param_groups[0]["lr"])
        expected.append(lrs)
    got = []
    for e in ests:
        state = mi.end_epoch(state, jnp.asarray(e), cfg)
        got.append(np.asarray(state.lr))
    np.testing.assert_allclose(np.asarray(got).T, np.asarray(expected), rtol=1e-6)
    assert min(expected[0]) < cfg.lr  # the sequence does trigger halvings


def test_pair_buffer_keeps_the_last_b_member_rows_of_each_group():
    buf = mi.buffer_init(2, 1, 1, batch_size=4)
    rows = jnp.arange(6.0)[:, None]
    member = jnp.asarray([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]], bool)
    pushed = [mi._push(buf.a[g], buf.b[g], buf.count[g], buf.head[g], rows, -rows, member[g]) for g in range(2)]
    (a0, b0, c0, h0), (a1, _, c1, h1) = pushed
    assert int(c0) == 3 and int(h0) == 3 and np.asarray(a0[:3, 0]).tolist() == [0, 1, 2]
    np.testing.assert_array_equal(np.asarray(b0[:3, 0]), [0, -1, -2])  # pairs stay pairs
    assert int(c1) == 4 and int(h1) == 0 and sorted(np.asarray(a1[:, 0]).tolist()) == [2, 3, 4, 5]
    # Two more rows into the group-0 buffer wrap around over the oldest.
    a0, _, c0, h0 = mi._push(a0, b0, c0, h0, rows[4:], -rows[4:], jnp.ones(2, bool))
    assert int(c0) == 4 and int(h0) == 1 and sorted(np.asarray(a0[:, 0]).tolist()) == [0, 1, 2, 4, 5][1:]


def test_buffered_online_critics_read_against_the_same_ceiling_whatever_the_group_share():
    # Nearly deterministic pairs (b = a + small noise): each read goes to its ceiling. Per-batch member
    # rows (update_masked) give a group of 4 rows per batch a lower ceiling than one of 32; with
    # buffers of B = 32 pairs both train on full batches and read alike (on pairs not trained on yet).
    cfg = mi._config(None, dict(batch_size=32, negatives=64, lr=3e-3, hidden=(32, 32)))
    member = np.zeros((2, 64), bool)
    member[0, :4] = True
    member[1, 4:36] = True
    member = jnp.asarray(member)
    masked_state = mi.init(jax.random.PRNGKey(30), 2, 4, 4, cfg)
    buffered_state = mi.init(jax.random.PRNGKey(30), 2, 4, 4, cfg)
    buf = mi.buffer_init(2, 4, 4, cfg)
    masked_step = jax.jit(lambda s, a, b, k: mi.update_masked(s, a, b, member, k, cfg))
    buffered_step = jax.jit(lambda s, bf, a, b, k: mi.update_buffered(s, bf, a, b, member, k, cfg))
    masked, buffered = [], []
    for t in range(400):
        ka, kn, kk = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(31), t), 3)
        a = jax.random.normal(ka, (64, 4))
        b = a + 0.01 * jax.random.normal(kn, (64, 4))
        masked_state, est_m, _ = masked_step(masked_state, a, b, kk)
        buffered_state, buf, est_b, rows = buffered_step(buffered_state, buf, a, b, kk)
        if t >= 300:
            masked.append(np.asarray(est_m))
            buffered.append(np.asarray(est_b))
    assert np.asarray(rows).tolist() == [4, 32] and np.asarray(buf.count).tolist() == [32, 32]
    m, b = np.mean(masked, 0), np.mean(buffered, 0)
    assert m[1] - m[0] > 1.0  # log 32 vs log 4 ceilings
    assert abs(b[1] - b[0]) < 0.3 and b[0] > m[0] + 1.0


def test_buffered_online_read_is_not_inflated_by_memorised_pairs():
    # A stream of independent a and b (truth 0), 2 new pairs per step into a buffer of 64: each pair
    # is trained on for 32 steps, and a read on the buffer the critic trains on climbs above 0 by
    # memorising them; the read on each step's new pairs does not (a lower bound, it may go below).
    cfg = mi._config(None, dict(batch_size=64, negatives=64, lr=3e-3, hidden=(64, 64)))
    member = jnp.ones((1, 2), bool)
    state, buf = mi.init(jax.random.PRNGKey(42), 1, 16, 16, cfg), mi.buffer_init(1, 16, 16, cfg)
    step = jax.jit(lambda s, bf, a, b, k: mi.update_buffered(s, bf, a, b, member, k, cfg))
    fresh, trained_on = [], []
    for t in range(600):
        ka, kb, k_new = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(43), t), 3)
        state, buf, est, _ = step(state, buf, jax.random.normal(ka, (2, 16)), jax.random.normal(kb, (2, 16)), k_new)
        if t >= 400:
            fresh.append(float(est[0]))
            params = jax.tree.map(lambda x: x[0], state.params)
            trained_on.append(float(mi._estimate_batch(params, buf.a[0], buf.b[0], k_new, 64, cfg)))
    assert np.mean(trained_on) > 0.5  # memorised: above the truth
    assert np.mean(fresh) < 0.05


def test_bank_of_noise_draws_is_sampled_per_pair():
    # a is a noisy function of b; a bank of R draws per sample must read about the same as fresh draws.
    kb, kn, kf = jax.random.split(jax.random.PRNGKey(16), 3)
    b = jax.random.normal(kb, (8000, 2))
    bank = b[:, None, :] + 0.5 * jax.random.normal(kn, (8000, 16, 2))
    index = jnp.arange(8000)[None]
    res_bank = mi.estimate_mi_sampled(jax.random.PRNGKey(17), mi.bank_pairs, (bank, b), index, np.ones((1, 8000), bool),
                                      2, 2, epochs=10, **FAST)

    def fresh(shared, idx_table, positions, key):
        bb = shared[idx_table[positions]]
        return bb + 0.5 * jax.random.normal(key, bb.shape), bb

    res_fresh = mi.estimate_mi_sampled(jax.random.PRNGKey(17), fresh, b, index, np.ones((1, 8000), bool), 2, 2,
                                       epochs=10, **FAST)
    truth = np.log(1 + 1 / 0.25)  # per dim: 0.5 ln(1 + var_b / var_noise), 2 dims
    assert abs(float(res_bank.heldout[0]) - truth) < 0.2
    assert abs(float(res_fresh.heldout[0]) - truth) < 0.2


def test_clear_errors_for_bad_input():
    x = jnp.zeros((2, 100, 3))
    with pytest.raises(TypeError, match="unknown MI option"):
        mi.estimate_mi_groups(jax.random.PRNGKey(0), x, x, epoch=3)
    with pytest.raises(ValueError, match="at least 2"):
        mi.estimate_mi_groups(jax.random.PRNGKey(0), x, x, heldout_fraction=0.99)
    with pytest.raises(ValueError, match=r"\(G, N, da\)"):
        mi.estimate_mi_groups(jax.random.PRNGKey(0), x[0], x[0])
    with pytest.raises(ValueError, match="bound"):
        mi.estimate_mi_groups(jax.random.PRNGKey(0), x, x, bound="jsd", batch_size=8)
