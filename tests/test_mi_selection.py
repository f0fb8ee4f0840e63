"""ibjax.mi.selection: per group, the candidate critic with the best validation read."""

import copy
import dataclasses
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ibjax import mi
from ibjax.mi import groundtruth


def _result(validation, best_epoch, heldout, cap=4.0):
    validation = jnp.asarray(validation, jnp.float32)
    g = validation.shape[0]
    z = jnp.zeros(g, jnp.float32)
    return mi.MIResult(trajectory=validation + 0.5, validation=validation, train=z + 1.0,
                       heldout=jnp.asarray(heldout, jnp.float32), heldout_se=z + 0.1,
                       best_epoch=jnp.asarray(best_epoch, jnp.int32), trend=z, trend_se=z,
                       converged=jnp.ones(g, bool), final_lr=z, heldout_cap=z + 5.0,
                       candidate=jnp.zeros(g, jnp.int32), cap=cap)


def test_validation_score_is_the_read_at_the_kept_epoch():
    r = _result([[0.1, 0.9, 0.3], [0.5, 0.2, 0.7]], [1, 2], [0.8, 0.6])
    np.testing.assert_allclose(mi.validation_score(r), [0.9, 0.7])


def test_selection_keeps_each_groups_best_candidate_whole_and_ties_go_first():
    a = _result([[0.2, 0.4], [0.9, 0.1], [0.3, 0.3]], [1, 0, 0], [0.35, 0.85, 0.30])
    b = _result([[0.6, 0.1], [0.2, 0.5], [0.1, 0.3]], [0, 1, 1], [0.55, 0.45, 0.25])
    sel, choice = mi.select_by_validation([a, b])
    # group 0: 0.4 vs 0.6 -> b; group 1: 0.9 vs 0.5 -> a; group 2: 0.3 vs 0.3 -> a (tie)
    np.testing.assert_array_equal(choice, [1, 0, 0])
    np.testing.assert_allclose(sel.heldout, [0.55, 0.85, 0.30])
    np.testing.assert_array_equal(sel.best_epoch, [0, 0, 0])
    np.testing.assert_allclose(sel.validation, [[0.6, 0.1], [0.9, 0.1], [0.3, 0.3]])
    assert sel.cap == a.cap
    jitted, jchoice = jax.jit(mi.select_by_validation)([a, b])  # pure: the same under jit
    np.testing.assert_array_equal(jchoice, choice)
    np.testing.assert_allclose(jitted.heldout, sel.heldout)


def test_a_candidate_without_a_read_in_one_group_loses_it_and_bad_input_is_refused():
    a = _result([[np.nan, np.nan], [0.3, 0.2]], [0, 0], [0.1, 0.2])
    b = _result([[0.1, 0.2], [0.1, 0.1]], [1, 0], [0.4, 0.5])
    _, choice = mi.select_by_validation([a, b])
    np.testing.assert_array_equal(choice, [1, 0])
    with pytest.raises(ValueError, match="at least one"):
        mi.select_by_validation([])
    with pytest.raises(ValueError, match="validation_fraction > 0"):
        mi.select_by_validation([a, dataclasses.replace(b, validation=jnp.full((2, 2), jnp.nan))])
    with pytest.raises(ValueError, match="same groups"):
        mi.select_by_validation([a, _result([[0.1, 0.2, 0.3], [0.1, 0.1, 0.1]], [0, 0], [0.1, 0.1])])
    with pytest.raises(ValueError, match="cap"):
        mi.select_by_validation([a, _result([[0.1, 0.2], [0.1, 0.1]], [0, 0], [0.1, 0.1], cap=3.0)])


def test_on_real_estimates_it_picks_the_critic_that_learnt_and_keeps_its_held_out_read():
    # Two Gaussian groups (MI 1 nat); one candidate's learning rate is too small to learn anything.
    tasks = tuple(groundtruth.Task.make(name, "gaussian", 3, 3, mi=1.0) for name in ("g1", "g2"))
    (_, _, x, y), = groundtruth.sample_tasks(jax.random.PRNGKey(0), 600, tasks, (0, 1))
    base = mi.resolve_config(mi.XT_CONFIG, epochs=12, batch_size=64, negatives=32, hidden=(16, 16), lr=3e-3,
                             read_epochs=2, candidates=())
    keys = jax.random.split(jax.random.PRNGKey(1), 2)
    good = mi.estimate_mi_groups(keys, x, y, config=base)
    stuck = mi.estimate_mi_groups(keys, x, y, config=mi.resolve_config(base, lr=1e-7))
    sel, choice = mi.select_by_validation([stuck, good])
    np.testing.assert_array_equal(choice, [1, 1])
    np.testing.assert_array_equal(sel.candidate, [1, 1])
    np.testing.assert_allclose(sel.heldout, good.heldout)
    assert np.all(np.asarray(good.heldout) > np.asarray(stuck.heldout) + 0.2)

    # The same selection from the config: candidates run one after another with the same key.
    calls = []
    auto = mi.estimate_mi_groups(keys, x, y, config=mi.resolve_config(base, lr=1e-7, candidates=("lr=3e-3",)),
                                 progress=lambda done, total: calls.append((done, total)))
    np.testing.assert_array_equal(auto.candidate, [1, 1])
    np.testing.assert_allclose(auto.heldout, good.heldout, rtol=1e-5)
    np.testing.assert_allclose(auto.validation, good.validation, rtol=1e-5)
    assert [c[1] for c in calls] == [24] * len(calls) and calls[-1][0] == 24
    assert [c[0] for c in calls] == sorted(c[0] for c in calls) and any(c[0] == 12 for c in calls)
    assert auto.to_dict()[0]["candidate"] == 1


def test_candidates_with_the_same_input_maps_share_one_preparation(monkeypatch):
    # The splits, the fitted maps and the rows mapped once are prepared once for the candidates that
    # agree on the maps (the trained and the Gaussian critic), again for one that changes them; each
    # candidate reads what it reads alone.
    from ibjax.mi import estimator

    tasks = (groundtruth.Task.make("g", "gaussian", 3, 3, mi=1.0),)
    (_, _, x, y), = groundtruth.sample_tasks(jax.random.PRNGKey(0), 400, tasks, (0,))
    base = mi.resolve_config(mi.XT_CONFIG, epochs=3, batch_size=32, negatives=16, hidden=(8, 8), read_epochs=1,
                             candidates=())
    calls = []
    real = estimator._prepare
    monkeypatch.setattr(estimator, "_prepare",
                        lambda *a, **k: calls.append(k["config"].critic.preprocess) or real(*a, **k))
    config = mi.resolve_config(
        base, candidates=("critic.family=gaussian", "critic.preprocess=standardize"))
    both = mi.estimate_mi_groups(jax.random.PRNGKey(1), x, y, config=config)
    assert calls == ["rank", "standardize"]
    alone = [mi.estimate_mi_groups(jax.random.PRNGKey(1), x, y, config=c) for c in mi.candidate_configs(config)]
    sel, _ = mi.select_by_validation(alone)
    np.testing.assert_array_equal(both.candidate, sel.candidate)
    np.testing.assert_allclose(both.heldout, sel.heldout, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(both.validation, sel.validation, rtol=1e-5, atol=1e-6)


def test_candidates_parse_to_typed_configs_and_may_change_only_the_critic():
    base = mi.resolve_config(mi.XT_CONFIG, critic="concat",
                             candidates=["critic=separable lr=1e-3 hidden=64,64", "critic_rank=4"])
    assert [str(c) for c in base.candidates] == ["critic.family=separable optimiser.lr=0.001 critic.hidden=64,64",
                                                 "critic.rank=4"]
    assert base.total_epochs == 3 * base.protocol.epochs
    first, sep, rank = mi.candidate_configs(base)
    assert first == dataclasses.replace(base, candidates=())
    assert (sep.critic.family, sep.optimiser.lr, sep.critic.hidden, sep.protocol.epochs) == (
        "separable", 1e-3, (64, 64), base.protocol.epochs)
    assert rank.critic.rank == 4 and rank.candidates == ()
    assert mi.candidate_configs(mi.XT_REFERENCE) == (mi.XT_REFERENCE,)
    # The default's Gaussian candidate; a config that is itself Gaussian does not repeat it.
    plain, gauss = mi.candidate_configs(mi.XT_CONFIG)
    assert (plain.critic.family, gauss.critic.family, gauss.candidates) == ("separable", "gaussian", ())
    assert len(mi.candidate_configs(mi.resolve_config(family="gaussian"))) == 1
    assert mi.Candidate("weight_decay=1 plateau_on=validation").changes == (
        ("optimiser.weight_decay", 1.0), ("optimiser.plateau_on", "validation"))
    assert mi.Candidate(str(base.candidates[0])) == base.candidates[0]  # its text reads back
    for bad, match in [("epochs=10", r"changes \['protocol.epochs'\]"), ("heldout_fraction=0.3", "may change only"),
                       ("lr", "FIELD=VALUE"), ("critc=separable", "unknown field 'critc'"),
                       ("critic=mlp", "expected one of 'concat', 'separable'"), ("critic_rank=four", "expected an integer"),
                       ("critic=separable critic_rank=4", "concat/gaussian-critic option"), ("", "empty candidate"),
                       ("plateau_on=maybe", "expected one of"), ("critic.dtype=float16", "expected one of")]:
        with pytest.raises(ValueError, match=match):
            mi.resolve_config(mi.XT_CONFIG, candidates=(bad,))
    assert mi.resolve_config(mi.XT_CONFIG, critic="concat", candidates="critic_rank=4").candidates == (
        mi.Candidate("critic.rank=4"),)
    with pytest.raises(ValueError, match="expected a candidate"):
        dataclasses.replace(mi.XT_CONFIG, candidates=[4])
    with pytest.raises(ValueError, match="'optimiser' is a section"):
        mi.Candidate("optimiser=3")
    cand = base.candidates[0]
    assert copy.deepcopy(cand) == cand and pickle.loads(pickle.dumps(base)) == base
    with pytest.raises(ValueError, match="candidates need a validation split"):
        mi.resolve_config(mi.XT_REFERENCE, candidates=("lr=1e-3",))
