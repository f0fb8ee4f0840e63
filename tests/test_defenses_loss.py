"""ibjax.defenses.loss and the per-sample losses the study records: isolation, trajectories, the record."""

import numpy as np
import pytest
from tiny_config import TINY, short

from ibjax.defenses import auroc, loss_isolation, loss_trajectory_scores
from ibjax.parallel import make_mesh
from ibjax.study import build_population, init_run_state, run_epoch, stack_states


def test_isolation_flags_the_lowest_losses_and_skips_unmeasured_samples():
    r = np.random.default_rng(0)
    losses = r.uniform(1.0, 2.0, 1000).astype(np.float32)
    planted = np.arange(1000) < 10
    losses[planted] = 0.01
    losses[-5:] = np.nan
    scores, flags = loss_isolation(losses, 0.01)
    assert int(flags.sum()) == int(0.01 * 995) and bool(np.all(flags[:9]))
    assert not bool(np.any(flags[-5:])) and np.all(np.asarray(scores)[-5:] == -np.inf)


def test_trajectory_scores_rank_consistent_low_loss_samples_first():
    r = np.random.default_rng(1)
    e, n = 6, 400
    losses = r.uniform(0.5, 2.0, (e, n)).astype(np.float32) * np.linspace(1.0, 0.2, e)[:, None]  # the scale shrinks
    poisoned = np.arange(n) < 40
    losses[:, poisoned] *= 0.3
    losses[2, 5] = np.nan  # one unmeasured epoch: the others still count
    s = np.asarray(loss_trajectory_scores(losses))
    assert float(auroc(s, poisoned)) > 0.99 and s[5] > 0.8
    assert 0.4 < float(np.mean(s[~poisoned])) < 0.5  # clean samples sit near the middle, below the poisons
    assert np.all((s >= 0) & (s <= 1))


def test_the_study_records_every_samples_loss_of_the_epoch():
    config = short(TINY, 1)
    pop = build_population([config], mesh=make_mesh(), progress=False)
    state = stack_states([init_run_state(m) for m in pop.members], pop.mesh)
    _, (record,) = run_epoch(state, pop)
    losses = record["sample_loss"]
    n, b = 600, config.train.batch_size
    assert losses.shape == (n,) and int(np.sum(np.isnan(losses))) == n % b  # the dropped partial batch
    assert float(np.nanmean(losses)) == pytest.approx(record["train_loss"], rel=1e-5)


def test_a_resumed_run_keeps_the_losses_of_its_earlier_epochs(tmp_path):
    from ibjax.fields import override
    from ibjax.study import run_study

    two = short(TINY, 2)
    run_study(two, str(tmp_path / "run"), progress=False)
    first = np.load(tmp_path / "run" / "sample_losses.npy")
    three = override(two, {"train.epochs": 3})  # train.epochs may grow on a resume
    run_study(three, str(tmp_path / "run"), resume=True, progress=False)
    both = np.load(tmp_path / "run" / "sample_losses.npy")
    assert first.shape == (2, 600) and both.shape == (3, 600)
    np.testing.assert_array_equal(both[:2], first)
