"""The authors' estimator rules, each against a re-derivation: batches per epoch, the plateau rule,
and the reference configurations (SPEC.md, "MI estimation"; ffcv_observeMI.py, util/cal.py)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ibjax import mi
from ibjax.mi import estimator

# The light configuration shared with test_mi_estimator.py (equal configs share compiled programs).
LIGHT = mi.resolve_config(epochs=12, batch_size=32, negatives=48, hidden=(16, 16), lr=3e-3, read_epochs=2,
                    heldout_fraction=0.25, validation_fraction=0.25, select="best", preprocess="rank",
                    plateau_patience=1)


def authors_loader(perm, batch_size, fraction=0.5):
    """The batches the authors' epoch loop uses: a loader over a shuffled list with drop_last=False,
    skipping ``batch > len(loader) * fraction`` (their code: ``batch > len(sample_loader) / 2``)."""
    loader = [perm[i:i + batch_size] for i in range(0, len(perm), batch_size)]
    return [b for i, b in enumerate(loader) if not i > len(loader) * fraction]


def test_batches_per_epoch_is_the_authors_count():
    assert len(authors_loader(list(range(4500)), 128)) == 19  # the 19 of 36 of SPEC.md
    assert int(mi.batches_per_epoch(4500, 128, 0.5)) == 19
    for fraction in (0.5, 0.25, 0.3, 0.7, 1.0, 0.01):
        for n in list(range(1, 300)) + [4500, 5000, 9500]:
            for bsz in (1, 7, 32, 128, 512):
                assert mi.batches_per_epoch(n, bsz, fraction) == len(authors_loader(range(n), bsz, fraction)), (n, bsz)


def test_loader_batches_index_the_shuffled_group_as_the_authors_loader():
    rng = np.random.default_rng(0)
    bsz, width = 16, 120
    for n in (1, 15, 16, 17, 31, 33, 64, 100, 120):
        perm = rng.permutation(width)  # positions; a group of n uses the first n
        used = int(mi.batches_per_epoch(n, bsz, 0.5))
        pos, n_valid, active = estimator.loader_batches(jnp.asarray(perm, jnp.int32), jnp.asarray(n), bsz,
                                                        jnp.asarray(used), 9)
        expected = authors_loader(list(perm[:n]), bsz)
        assert int(active.sum()) == len(expected)
        for s, batch in enumerate(expected):  # the used batches, in order, each with its own size
            assert bool(active[s]) and int(n_valid[s]) == len(batch)
            assert np.asarray(pos[s, : len(batch)]).tolist() == list(batch)
        assert not np.asarray(active[len(expected):]).any()


def _torch_lrs(torch, losses, lr, **kw):
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", **kw)
    out = []
    for loss in losses:
        sched.step(float(loss))
        out.append(opt.param_groups[0]["lr"])
    return out


def test_plateau_rule_matches_torch_reduce_lr_on_plateau_on_the_loss():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    epochs, groups = 300, []
    for g in range(48):
        kind = g % 6
        walk = np.cumsum(rng.normal(0, 0.05, epochs))
        if kind == 0:  # positive, rising then flat with gains below the relative threshold
            est = np.minimum(np.linspace(0.1, 3.0, epochs), 2.0) + 1e-5 * np.arange(epochs) + 0.01 * rng.normal(size=epochs)
        elif kind == 1:  # negative (an overfit critic's read)
            est = -np.abs(walk) - 0.2
        elif kind == 2:  # crossing zero
            est = walk + np.linspace(-1, 1, epochs)
        elif kind == 3:  # steadily worse: the rate is halved until PyTorch's eps stops it
            est = 1.0 - 0.001 * np.arange(epochs)
        elif kind == 4:  # near zero, tiny noise (relative thresholds of tiny numbers)
            est = 1e-3 * rng.normal(size=epochs)
        else:  # quantised plateaus (exact ties)
            est = np.round(walk, 1)
        groups.append(est)
    est = np.asarray(groups, np.float32).T  # [epochs, G]
    cfg = mi.XT_REFERENCE
    state = mi.init(jax.random.PRNGKey(0), est.shape[1], 2, 2, mi.resolve_config(cfg, hidden=(2,)))
    step = jax.jit(lambda s, e: mi.end_epoch(s, e, mi.resolve_config(cfg, hidden=(2,))))
    got = []
    for e in est:
        state = step(state, jnp.asarray(e))
        got.append(np.asarray(state.lr))
    got = np.asarray(got).T
    for g in range(est.shape[1]):
        expected = _torch_lrs(torch, -est[:, g], cfg.optimiser.lr, factor=0.5, patience=8)  # stepped on the loss
        np.testing.assert_allclose(got[g], expected, rtol=1e-6, err_msg=f"trajectory {g}")
    assert got[3].min() < cfg.optimiser.lr * 2**-10  # the steadily-worse trajectory does reach the eps floor
    assert got[3].min() > 1e-8  # ... and stops there (eps)


# The authors' protocol at light sizes: no held-out split, no levers, patience 1 (many halvings).
REFERENCE_LIGHT = mi.resolve_config(LIGHT, heldout_fraction=0.0, validation_fraction=0.0, candidates=(), select="last",
                                      preprocess="none")


def _reference_run():
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 300, 2))
    y = x * jnp.asarray([0.0, 0.5, 1.0])[:, None, None] + jax.random.normal(jax.random.PRNGKey(1), (3, 300, 2))
    return mi.estimate_mi_groups(jax.random.PRNGKey(2), x, y, config=REFERENCE_LIGHT)


def test_estimator_applies_the_plateau_rule_to_its_own_trajectory():
    # The estimator's final learning rate is what PyTorch's scheduler gives on that run's epoch losses.
    torch = pytest.importorskip("torch")
    cfg, res = REFERENCE_LIGHT, _reference_run()
    for g in range(3):
        expected = _torch_lrs(torch, -np.asarray(res.trajectory[g]), cfg.optimiser.lr, factor=0.5, patience=1)[-1]
        assert float(res.final_lr[g]) == pytest.approx(expected, rel=1e-6)
    assert float(np.min(res.final_lr)) < cfg.optimiser.lr  # patience 1: some group was halved


def test_reference_configs_are_the_authors_settings_and_ibjax_keeps_their_sizes():
    xt, ty = mi.XT_REFERENCE, mi.TY_REFERENCE
    p, o = xt.protocol, xt.optimiser
    assert (p.batch_size, p.negatives, o.lr, p.epochs) == (128, 512, 3e-4, 350)
    p, o = ty.protocol, ty.optimiser
    assert (p.batch_size, p.negatives, o.lr, p.epochs) == (512, 256, 5e-4, 250)
    for c in (xt, ty):
        o, p, k = c.optimiser, c.protocol, c.critic
        assert (o.weight_decay, o.grad_clip, o.plateau_patience, o.plateau_factor, o.plateau_threshold) == (
            1e-4, 5.0, 8, 0.5, 1e-4)
        assert (k.family, k.hidden, p.bound, p.negative_sampling) == ("concat", (128, 128), "infonce", "sampled")
        assert (p.heldout_fraction, p.validation_fraction, o.select, k.preprocess) == (0.0, 0.0, "last", "none")
        assert (o.batch_fraction, o.plateau_on, p.read_epochs, k.dtype) == (0.5, "train", 5, "float32")
    # ibjax keeps the reference's sizes; its critic (family, widths, rate, decay) is its own (docs/estimator.md).
    sizes = ("protocol.epochs", "protocol.batch_size", "protocol.negatives", "optimiser.grad_clip", "protocol.bound")
    for ref, ours in ((xt, mi.XT_CONFIG), (ty, mi.TY_CONFIG)):
        for path in sizes:
            section, name = path.split(".")
            assert getattr(getattr(ref, section), name) == getattr(getattr(ours, section), name), path
        assert ours.protocol.heldout_fraction > 0
        assert ours.candidates == mi.DEFAULT_CANDIDATES
    assert mi.XT_CONFIG.critic.family == "separable"
    # I(T;Y_pred): the authors' critic and rate, ibjax's levers (the separable critic read lower there).
    assert (mi.TY_CONFIG.critic.family, mi.TY_CONFIG.critic.hidden, mi.TY_CONFIG.optimiser.lr,
            mi.TY_CONFIG.optimiser.weight_decay) == ("concat", (128, 128), 5e-4, 1e-4)
    assert math.isclose(xt.cap, math.log(513))


def test_reference_mode_reads_the_training_trajectory_and_has_no_heldout():
    cfg, res = REFERENCE_LIGHT, _reference_run()
    np.testing.assert_allclose(res.train, np.mean(np.asarray(res.trajectory)[:, -cfg.protocol.read_epochs:], axis=1), rtol=1e-6)
    assert np.isnan(np.asarray(res.heldout)).all() and np.isnan(np.asarray(res.heldout_se)).all()
    assert np.isnan(np.asarray(res.validation)).all()
