"""Populations of runs: which runs may share one, traced noise levels, and a population of 4 seeds
(one of them with another poison ratio and noise level) on 2 devices against the same runs made alone
(8 forced CPU devices in a subprocess shared with tests/test_parallel.py)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _scale_worker import EXACT_TOL, MI_TOL, ONE, multidevice_results, run_differences, run_records
from tiny_config import TINY, TINY_MI, short

from ibjax.fields import override
from ibjax.mi import resolve_config
from ibjax.models import SmallCNN, with_noise_levels
from ibjax.poison import PoisonConfig
from ibjax.study import run_study
from ibjax.study.population import (
    group_populations,
    member_incompatibility,
    population_incompatibility,
    population_signature,
)
from ibjax.study.runner import run_population

# --------------------------------------------------------------------------------------------------
# which runs can share a population (no data, no training)


def _with(config, **changes):
    return override(config, changes)


def test_members_may_differ_in_seed_ratio_and_noise_only():
    configs = [ONE, _with(ONE, seed=1), _with(ONE, **{"poison.ratio": 0.2}), _with(ONE, **{"model.gamma_xt": 0.3})]
    assert population_incompatibility(configs) is None
    assert len({population_signature(c) for c in configs}) == 1
    why = population_incompatibility([ONE, _with(ONE, **{"attack.name": "blend"})])
    assert "differs from run 0 in attack" in why
    why = population_incompatibility([ONE, _with(ONE, **{"train.lr": 0.1})])
    assert "train.lr" in why
    assert "same run" in population_incompatibility([ONE, ONE])


def test_a_zero_noise_level_cannot_mix_with_traced_ones():
    zero = _with(ONE, **{"model.gamma_ty": 0.0})
    assert population_incompatibility([zero, _with(zero, seed=1)]) is None  # all 0: stays static
    why = population_incompatibility([ONE, _with(zero, seed=1)])
    assert "gamma_ty is 0 for some members" in why


def test_online_critics_and_clean_model_perturbations_join_populations_and_trojannn_runs_alone():
    assert member_incompatibility(_with(ONE, **{"attack.name": "label_consistent"})) is None
    assert member_incompatibility(_with(ONE, **{"mi.mode": "both"})) is None
    assert "pattern per run" in member_incompatibility(_with(ONE, **{"attack.name": "trojannn"}))
    trojan = _with(ONE, **{"attack.name": "trojannn"})
    assert population_incompatibility([trojan]) is None  # alone, it is a population of one
    assert "pattern per run" in population_incompatibility([trojan, _with(trojan, seed=1)])
    with pytest.raises(ValueError, match="attack"):
        member_incompatibility(_with(ONE, **{"attack.options": (("size", "abc"),)}))


def test_grouping_keeps_order_splits_by_state_and_size():
    a = [_with(ONE, seed=s) for s in range(5)]
    blend = _with(ONE, **{"attack.name": "blend"})
    lc = _with(ONE, **{"attack.name": "label_consistent"})
    configs = [a[0], blend, a[1], lc, a[2], a[3], a[4]]
    assert group_populations(configs) == [[0, 2, 4, 5, 6], [1], [3]]
    assert group_populations(configs, max_size=2) == [[0, 2], [1], [3], [4, 5], [6]]
    # Runs already checkpointed after another epoch do not join the new ones.
    assert group_populations(configs, keys=[0, 0, 0, 0, 3, 0, 0]) == [[0, 2, 5, 6], [1], [3], [4]]


def test_run_population_refuses_bad_input_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="cannot share one population.*attack"):
        run_population([ONE, _with(ONE, **{"attack.name": "blend"})], [str(tmp_path / "a"), str(tmp_path / "b")])
    with pytest.raises(ValueError, match="share a run directory"):
        run_population([ONE, _with(ONE, seed=1)], [str(tmp_path / "a"), str(tmp_path / "a")])
    assert not any(tmp_path.iterdir())


# --------------------------------------------------------------------------------------------------
# traced noise levels


def test_traced_noise_levels_equal_static_ones():
    # A population member's noise levels are traced values; it must draw what the same network with
    # static levels draws (the same noise draws, scaled by its levels).
    def net(gx, gy):
        return SmallCNN(num_classes=3, widths=(4, 8), gamma_xt=gx, gamma_ty=gy)

    levels = ((0.3, 0.2), (0.1, 0.05))

    @jax.jit  # one program (compiling is most of this test's time)
    def both(x, key):
        variables = net(*levels[0]).init({"params": jax.random.PRNGKey(1), "noise": jax.random.PRNGKey(2)}, x)
        traced = jax.vmap(lambda lv: with_noise_levels(net(*levels[0]), gamma_xt=lv[0], gamma_ty=lv[1]).apply(
            variables, x, rngs={"noise": key}))(jnp.asarray(levels))
        static = [net(*lv).apply(variables, x, rngs={"noise": key}) for lv in levels]
        return traced, static

    traced, static = both(jax.random.uniform(jax.random.PRNGKey(0), (4, 8, 8, 1)), jax.random.PRNGKey(5))
    for i in range(len(levels)):
        for a, b in zip(static[i], traced):
            np.testing.assert_allclose(np.asarray(b[i]), np.asarray(a), rtol=1e-5, atol=1e-6)
    assert not np.allclose(traced[0][0], traced[0][1])  # the levels matter
    with pytest.raises(ValueError, match="unknown noise level"):
        with_noise_levels(net(0.3, 0.2), gamma=0.1)


# --------------------------------------------------------------------------------------------------
# a population on 2 devices (subprocess)


@pytest.fixture(scope="module")
def md():
    return multidevice_results()


def test_population_of_4_equals_the_runs_made_alone(md):
    for r in (0, 1):  # members 2 and 3: identical-input checks below
        assert run_differences(os.path.join(md, f"alone_{r}"), os.path.join(md, f"member_{r}"), epochs=(1,)) == [], r
    # Member 3 (poison ratio 0.2, gamma_xt 0.3, traced) shared the programs and the estimator call
    # with the others, yet they equal their runs alone; its own run directory is complete.
    config = json.load(open(os.path.join(md, "member_3", "config.json")))
    assert config["poison"]["ratio"] == 0.2 and config["model"]["gamma_xt"] == 0.3 and config["seed"] == 3
    records, mi = run_records(os.path.join(md, "member_3"))
    assert np.isfinite(records[0]["train_loss"]) and len(mi["xt"]) == len(mi["ty"]) == 13
    assert run_differences(os.path.join(md, "member_0"), os.path.join(md, "member_3"), epochs=(1,)) != []


def test_population_banks_and_joint_estimator_call_equal_each_members_own(md):
    # From the same network variables: each member's rows of the joint bank are its bank built
    # alone, and members 1 and 2's groups in the joint call (after other members' rows and groups)
    # equal each member estimated alone on its rows of that bank.
    exact = json.load(open(os.path.join(md, "done.json")))["exact"]
    assert exact["population"] <= EXACT_TOL and exact["joint_call"]["first_epoch"] <= EXACT_TOL, exact
    assert exact["joint_call"]["all"] <= MI_TOL, exact


def test_a_member_directory_resumes_alone_and_compare_reads_members(md):
    # member_0 was trained for epoch 1 in the population, then resumed alone on one device for
    # epoch 2: the result is the two-epoch run made alone from the start.
    assert run_differences(os.path.join(md, "alone_0"), os.path.join(md, "member_0"), epochs=(1, 2)) == []
    manifest = json.load(open(os.path.join(md, "member_0", "run.json")))
    assert manifest["finished"] and manifest["epoch"] == 2
    assert os.path.getsize(os.path.join(md, "compare", "compare.md")) > 0
    runs = open(os.path.join(md, "compare", "compare_runs.csv")).read()
    assert all(f"member_{r}" in runs for r in range(3))


# --------------------------------------------------------------------------------------------------
# online critics and clean-model perturbations in a population (one device, in process)


def test_a_population_holds_online_critics_and_label_consistent_perturbations(tmp_path):
    # Two label-consistent runs with online critics beside offline MI, as one population: each
    # member computes its PGD perturbations against its own clean model, stacks them on the member
    # axis (members 0 and 1 poison different target samples), and trains its own critics in the
    # vmapped step. Member 1 equals the run of seed 1 made alone.
    small_mi = resolve_config(TINY_MI, batch_size=8, negatives=16)
    lc = short(TINY, 1, **{"attack.name": "label_consistent", "poison": PoisonConfig(ratio=0.25), "mi.xt": small_mi,
                       "mi.ty": small_mi, "attack.options": (("pgd_steps", "3"),), "mi.mode": "both"})
    members = [lc, _with(lc, seed=1, **{"poison.ratio": 0.2})]
    quiet = dict(progress=False, plots=False)
    run_population(members, [str(tmp_path / "m0"), str(tmp_path / "m1")], **quiet)
    run_study(members[1], str(tmp_path / "alone"), **quiet)
    assert run_differences(str(tmp_path / "alone"), str(tmp_path / "m1"), epochs=(1,)) == []
    pert = [np.load(tmp_path / d / "attack_precomputed.npy") for d in ("m0", "m1", "alone")]
    assert pert[0].shape == (15, 28, 28, 1) and pert[1].shape == (12, 28, 28, 1)  # 25% and 20% of 60
    np.testing.assert_allclose(pert[1], pert[2], atol=1e-5)
    (_, mi_alone), (_, mi_member) = run_records(str(tmp_path / "alone")), run_records(str(tmp_path / "m1"))
    for q in ("xt_online", "ty_online"):
        assert set(mi_member[q]) == set(mi_alone[q]) and len(mi_member[q]) == 13
        for g, per_epoch in mi_alone[q].items():
            assert abs(per_epoch["1"]["heldout"] - mi_member[q][g]["1"]["heldout"]) <= MI_TOL, (q, g)
    _, mi0 = run_records(str(tmp_path / "m0"))
    assert any(abs(mi0[q][g]["1"]["heldout"] - mi_member[q][g]["1"]["heldout"]) > MI_TOL
               for q in ("xt_online", "ty_online") for g in mi0[q])  # the members are different runs
