"""The batched offline estimator: equivalences it promises (batching, padding, chunking), ground-truth
anchors from SPEC.md, its result's shape, and its errors."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ibjax import mi, poison, triggers
from ibjax.mi import groundtruth
from ibjax.mi import estimator

# Shared with test_mi_reference.py / test_mi_reliability.py (equal configs share compiled programs).
# The concat critic without candidates: the estimator's machinery on one trained critic (the Gaussian
# candidate has its own tests, tests/test_mi_gaussian.py).
LIGHT = mi.resolve_config(critic="concat", candidates=(), epochs=12, batch_size=32, negatives=48, hidden=(16, 16),
                          lr=3e-3, read_epochs=2,
                    heldout_fraction=0.25, validation_fraction=0.25, select="best", preprocess="rank",
                    plateau_patience=1)
# ibjax's default levers with a critic a CPU test can afford (separable, all-pairs InfoNCE: one B x B
# matmul per batch) for the accuracy anchors.
ANCHOR = mi.resolve_config(epochs=20, batch_size=256, critic="separable", negative_sampling="all", hidden=(64, 64),
                     embed_dim=32, lr=1e-3, batch_fraction=1.0, heldout_fraction=0.2, validation_fraction=0.2,
                     select="best", preprocess="rank", candidates=())


def _three_groups():
    """G = 3 groups of M = 300 positions (d = 2): group 0 full, group 1 of 40 samples (its training
    split is smaller than one batch), group 2 of 250 samples; padding is NaN (must never be read)."""
    truth = np.array([0.3, 1.0, 2.0])
    x = jnp.stack([groundtruth.gaussian(jax.random.PRNGKey(g), 300, dx=2, dy=2, mi=m)[0] for g, m in enumerate(truth)])
    y = jnp.stack([groundtruth.gaussian(jax.random.PRNGKey(g), 300, dx=2, dy=2, mi=m)[1] for g, m in enumerate(truth)])
    mask = np.ones((3, 300), bool)
    mask[1, 40:] = False
    mask[2, 250:] = False
    x = jnp.where(jnp.asarray(mask)[..., None], x, jnp.nan)
    return x, y, mask


def test_group_of_a_batched_padded_call_equals_the_group_estimated_alone():
    x, y, mask = _three_groups()
    keys = jax.random.split(jax.random.PRNGKey(8), 3)
    batched = mi.estimate_mi_groups(keys, x, y, mask, config=LIGHT)
    alone = mi.estimate_mi(keys[2], x[2, :250], y[2, :250], config=LIGHT)
    # Two programs (G = 3 vs no group axis): float32 sums differ in order, and Adam amplifies those
    # roundings epoch by epoch (1.4e-4 relative after 12 epochs seen under fast-compile flags). A wrong
    # key, split or padding would change every epoch entirely (the first epoch is held tighter).
    np.testing.assert_allclose(batched.trajectory[2, 0], alone.trajectory[0], rtol=1e-4, atol=1e-5)
    for field in ("trajectory", "validation", "train", "heldout", "heldout_se"):
        np.testing.assert_allclose(getattr(batched, field)[2], getattr(alone, field), rtol=2e-3, atol=1e-4, err_msg=field)
    assert int(batched.best_epoch[2]) == int(alone.best_epoch)
    for field in ("trajectory", "validation", "heldout", "heldout_se", "train"):
        assert np.isfinite(np.asarray(getattr(batched, field))).all(), field  # NaN padding never read
    # One key for all groups means split(key, G).
    one_key = mi.estimate_mi_groups(jax.random.PRNGKey(8), x, y, mask, config=LIGHT)
    np.testing.assert_allclose(one_key.heldout, batched.heldout, rtol=1e-6)
    # Real rows scattered through the padded array (in the same order) read as when packed at the front.
    rng = np.random.default_rng(0)
    xs, ys, ms = np.full(x.shape, np.nan, np.float32), np.zeros(y.shape, np.float32), np.zeros(mask.shape, bool)
    for g in range(3):
        n = int(mask[g].sum())
        where = np.sort(rng.choice(300, n, replace=False))
        xs[g, where], ys[g, where], ms[g, where] = x[g, :n], y[g, :n], True
    scattered = mi.estimate_mi_groups(keys, xs, ys, ms, config=LIGHT)
    np.testing.assert_allclose(scattered.heldout, batched.heldout, rtol=1e-4, atol=1e-5)


def test_groups_looped_or_vmapped_give_the_same_result():
    # The groups' sizes differ (300, 40, 250 samples): in a loop the smaller groups skip the steps
    # they have no batch for (lax.cond), under vmap they compute them masked.
    x, y, mask = _three_groups()
    keys = jax.random.split(jax.random.PRNGKey(8), 3)
    vmapped = mi.estimate_mi_groups(keys, x, y, mask, config=LIGHT, group_batch="all")
    for group_batch in (1, 2):
        looped = mi.estimate_mi_groups(keys, x, y, mask, config=LIGHT, group_batch=group_batch)
        np.testing.assert_allclose(looped.trajectory[:, 0], vmapped.trajectory[:, 0], rtol=1e-4, atol=1e-5)
        for field in ("trajectory", "validation", "train", "heldout", "heldout_se", "final_lr"):
            np.testing.assert_allclose(getattr(looped, field), getattr(vmapped, field), rtol=2e-3, atol=1e-4,
                                       err_msg=f"{field}, group_batch={group_batch}")
        np.testing.assert_array_equal(looped.best_epoch, vmapped.best_epoch)
    assert mi.default_group_batch() == 1  # the tests run on a CPU backend
    for bad in (0, -1, "some", 1.5, True):
        with pytest.raises(ValueError, match="group_batch"):
            mi.estimate_mi_groups(keys, x, y, mask, config=LIGHT, group_batch=bad)


def test_chunked_epochs_give_the_same_result_and_report_progress_between_chunks():
    x, y, mask = _three_groups()
    whole = mi.estimate_mi_groups(jax.random.PRNGKey(9), x, y, mask, config=LIGHT)
    calls = []
    chunked = mi.estimate_mi_groups(jax.random.PRNGKey(9), x, y, mask, config=LIGHT, chunk_epochs=4,
                                    progress=lambda done, total: calls.append((done, total)))
    assert calls == [(4, 12), (8, 12), (12, 12)]
    for field in ("trajectory", "validation", "train", "heldout", "heldout_se", "final_lr"):
        np.testing.assert_allclose(getattr(chunked, field), getattr(whole, field), rtol=1e-4, atol=1e-5, err_msg=field)
    assert mi.default_chunk(350) == 14 and mi.default_chunk(250) == 10 and mi.default_chunk(37) == 1


def test_a_second_call_with_the_same_config_does_not_recompile():
    x, y, mask = _three_groups()
    mi.estimate_mi_groups(jax.random.PRNGKey(1), x, y, mask, config=LIGHT)
    fns = (estimator._prepare, estimator._init_carry, estimator._run_epochs, estimator._finish)
    sizes = [f._cache_size() for f in fns]
    res = mi.estimate_mi_groups(jax.random.PRNGKey(2), x + 1.0, y, mask, config=dataclasses.replace(LIGHT))
    jax.block_until_ready(res)
    assert [f._cache_size() for f in fns] == sizes


def test_ground_truth_and_spec_gaussian_anchor_in_one_batched_call():
    # SPEC: Y ~ N(0, 3 I_5), X = Y[:, :3] + N(0, 0.5 I_3): I(X;Y) = 1.5 ln 7 = 2.919 nats; with it, Gaussian
    # tasks of the same dimensions and known MI, and X of the anchor cubed (same MI).
    n = 4000
    ky, kn = jax.random.split(jax.random.PRNGKey(0))
    yy = jnp.sqrt(3.0) * jax.random.normal(ky, (n, 5))
    xx = yy[:, :3] + jnp.sqrt(0.5) * jax.random.normal(kn, (n, 3))
    tasks = [groundtruth.gaussian(jax.random.PRNGKey(i), n, dx=3, dy=5, mi=m) for i, m in enumerate((0.0, 0.5, 1.5))]
    x = jnp.stack([xx, xx**3] + [t[0] for t in tasks])
    y = jnp.stack([yy, yy] + [t[1] for t in tasks])
    truth = np.array([1.5 * np.log(7)] * 2 + [0.0, 0.5, 1.5])
    res = mi.estimate_mi_groups(jax.random.PRNGKey(1), x, y, config=ANCHOR)
    err = np.asarray(res.heldout) - truth
    assert np.all(np.abs(err) < np.maximum(0.1 * truth, 0.05)), err
    assert np.all(np.asarray(res.heldout) <= ANCHOR.cap + 1e-5)
    assert np.all(np.asarray(res.heldout_se) > 0) and np.all(np.asarray(res.heldout_se) < 0.1)


def test_spec_backdoor_flag_anchors():
    # SPEC: with the backdoor flag B of a 10% poison plan, I(X;B) -> H(B) = 0.3251 nats (the trigger
    # makes B a function of X) and I(B;Y) = 0.1936 nats, Y = "labelled as the target" (B = 1 implies
    # Y = 1; a clean sample is in the target class with probability 0.1). One call: Y is padded with
    # constant coordinates to X's width (they carry no information).
    labels = np.tile(np.arange(10), 600).astype(np.int32)
    plan = poison.make_poison_plan(labels, 10, poison.PoisonConfig(), jax.random.PRNGKey(0))
    images = jax.random.uniform(jax.random.PRNGKey(1), (6000, 6, 6, 3))
    flag = jnp.asarray(plan.poisoned)
    x = jnp.where(flag[:, None, None, None], triggers.badnets(images, triggers.BadNetsParams(size=3)), images)
    b = jax.nn.one_hot(plan.poisoned.astype(int), 2)
    y = jax.nn.one_hot((plan.labels == plan.target).astype(int), 2)
    y = jnp.concatenate([y, jnp.zeros((6000, x[0].size - 2))], axis=1)
    res = mi.estimate_mi_groups(jax.random.PRNGKey(2), jnp.stack([b, b]), jnp.stack([x.reshape(6000, -1), y]),
                                config=ANCHOR)
    assert float(res.heldout[0]) == pytest.approx(0.3251, abs=0.03)
    assert float(res.heldout[1]) == pytest.approx(0.1936, abs=0.03)


def test_to_dict_gives_every_group_its_reads_and_reliability():
    x, y, mask = _three_groups()
    res = mi.estimate_mi_groups(jax.random.PRNGKey(3), x, y, mask, config=LIGHT)
    d = res.to_dict(("a", "b", "c"))
    assert list(d) == ["a", "b", "c"]
    for g in d.values():
        assert {"trajectory", "validation", "train", "heldout", "heldout_se", "converged", "cap", "best_epoch", "trend",
                "trend_se", "final_lr", "candidate"} <= set(g)
        assert g["candidate"] == 0  # no candidates: the config itself
        assert len(g["trajectory"]) == LIGHT.protocol.epochs and isinstance(g["converged"], bool)
        assert g["cap"] == pytest.approx(math.log(LIGHT.protocol.negatives + 1))
        assert 0 <= g["best_epoch"] < LIGHT.protocol.epochs
    assert res.to_dict()[1] == d["b"]
    single = mi.estimate_mi(jax.random.PRNGKey(3), x[0], y[0], config=LIGHT).to_dict()
    assert isinstance(single["heldout"], float)
    with pytest.raises(ValueError, match="group names"):
        res.to_dict(("a",))


def test_clear_errors_for_bad_input():
    x = jnp.zeros((2, 100, 3))
    with pytest.raises(TypeError, match="unknown MI option"):
        mi.estimate_mi_groups(jax.random.PRNGKey(0), x, x, epoch=3)
    with pytest.raises(ValueError, match="at least 2"):
        mi.estimate_mi_groups(jax.random.PRNGKey(0), x, x, heldout_fraction=0.99)
    with pytest.raises(ValueError, match="validation samples"):
        mi.check_groups(np.ones((1, 20), bool), validation_fraction=0.05, select="best")
    with pytest.raises(ValueError, match=r"\(G, N, da\)"):
        mi.estimate_mi_groups(jax.random.PRNGKey(0), x[0], x[0])
    with pytest.raises(ValueError, match="bound"):
        mi.estimate_mi_groups(jax.random.PRNGKey(0), x, x, bound="jsd", batch_size=8)
    with pytest.raises(ValueError, match="validation_fraction > 0"):
        mi.resolve_config(validation_fraction=0.0).validate()  # the default's best critic needs the split
    with pytest.raises(ValueError, match="unknown MI preset 'authors'"):
        mi.resolve_config("authors")
    with pytest.raises(ValueError, match="preprocess"):
        mi.resolve_config(preprocess="whiten").validate()
    with pytest.raises(ValueError, match="critic: rank must be >= 0"):
        mi.resolve_config(critic_rank=-2).validate()
    with pytest.raises(ValueError, match="concat/gaussian-critic option"):
        mi.resolve_config(critic="separable", critic_rank=4).validate()
    with pytest.raises(ValueError, match="one per group"):
        mi.estimate_mi_groups(jax.random.split(jax.random.PRNGKey(0), 3), x, x)
    with pytest.raises(ValueError, match="chunk_epochs"):
        mi.estimate_mi_groups(jax.random.PRNGKey(0), x, x, chunk_epochs=0)


@dataclasses.dataclass(frozen=True)
class _BatchMapped:
    """A sample function the estimator cannot premap (not in its row sources): maps every batch."""

    inner: object

    def __call__(self, shared, group_data, positions, key):
        return self.inner(shared, group_data, positions, key)


@pytest.mark.parametrize("bank", [False, True])
def test_rows_mapped_once_give_the_estimate_of_batches_mapped_each_step(bank):
    # The estimator maps a group's rows (or a bank's draws) once and breaks ties per batch; a sample
    # function it cannot premap maps every batch. Same keys, same draws: the same estimate.
    rng = np.random.default_rng(0)
    n, r = 200, 3
    cfg = mi.resolve_config(LIGHT, preprocess="rank", rank_knots=16, heldout_fraction=0.2, validation_fraction=0.2,
                            select="best")
    x = np.round(rng.normal(size=(n, 4)), 1).astype(np.float32)  # ties
    t = (x[:, None, :2] + 0.5 * rng.normal(size=(n, r, 2))).astype(np.float32)
    if bank:
        fn, shared, data, da, db = mi.bank_pairs, (jnp.asarray(t), jnp.asarray(x)), jnp.arange(n)[None], 2, 4
    else:
        fn, shared, data, da, db = mi.gather_pairs, None, (jnp.asarray(t[None, :, 0]), jnp.asarray(x[None])), 2, 4
    valid = np.ones((1, n), bool)
    once = mi.estimate_mi_sampled(jax.random.PRNGKey(4), fn, shared, data, valid, da, db, config=cfg)
    each = mi.estimate_mi_sampled(jax.random.PRNGKey(4), _BatchMapped(fn), shared, data, valid, da, db, config=cfg)
    np.testing.assert_allclose(np.asarray(once.trajectory[:, 0]), np.asarray(each.trajectory[:, 0]), atol=1e-5)
    np.testing.assert_allclose(np.asarray(once.heldout), np.asarray(each.heldout), atol=0.02)


def test_the_defaults_are_ibjax_estimator_and_the_authors_one_is_a_preset():
    # MIConfig() is what embedding code gets from estimate_mi(key, a, b): ibjax's levers at the
    # reference's sizes; "reference" names the authors' estimator, which differs in the levers only.
    default, ref = mi.MIConfig(), mi.resolve_config("reference")
    assert default == mi.XT_CONFIG == mi.resolve_config("default") and ref == mi.XT_REFERENCE
    assert (default.critic.preprocess, default.optimiser.select) == ("rank", "best")
    assert (default.protocol.heldout_fraction, default.protocol.validation_fraction) == (0.2, 0.2)
    assert (ref.critic.preprocess, ref.optimiser.select, ref.protocol.heldout_fraction,
            ref.protocol.validation_fraction, ref.candidates) == ("none", "last", 0.0, 0.0, ())
    same = ("batch_size", "negatives", "epochs", "read_epochs", "bound", "negative_sampling")
    assert all(getattr(default.protocol, f) == getattr(ref.protocol, f) for f in same)
    assert (ref.protocol.batch_size, ref.protocol.negatives, ref.protocol.epochs, ref.optimiser.lr) == (128, 512, 350, 3e-4)
    ty = mi.resolve_config("reference_ty")
    assert (ty.protocol.batch_size, ty.protocol.negatives, ty.protocol.epochs, ty.optimiser.lr) == (512, 256, 250, 5e-4)
    assert mi.resolve_config("default_ty") == mi.TY_CONFIG
