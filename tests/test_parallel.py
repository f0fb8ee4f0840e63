"""ibjax.parallel and sharded studies: meshes, padding, placement, the distributed environment, and a
tiny study on 1, 2 and 8 devices (8 forced CPU devices in a subprocess, tests/_scale_worker.py)."""

import glob
import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _scale_worker import EXACT_TOL, ESTIMATOR_MODULES, MI_TOL, multidevice_results, run_differences, run_records

from ibjax import parallel as par

# --------------------------------------------------------------------------------------------------
# in this process (one CPU device)


def test_mesh_shape_errors_name_the_setting():
    mesh = par.make_mesh()
    assert mesh.axis_names == (par.RUNS, par.DATA) and mesh.size == jax.device_count()
    assert par.mesh_shape(mesh) == {"runs": 1, "data": jax.device_count()}
    with pytest.raises(ValueError, match=r"devices=99 but only \d+ device"):
        par.make_mesh(99)
    with pytest.raises(ValueError, match="must be >= 1"):
        par.make_mesh(0)
    with pytest.raises(ValueError, match=r"runs axis \(3\) must divide the population size \(4\)"):
        par.population_mesh(4, runs=3)


def test_batch_divisibility_is_one_clear_error():
    class FakeMesh:  # only the axis sizes matter to the check
        shape = {"runs": 1, "data": 8}

    par.check_batch_divisible(256, FakeMesh())
    with pytest.raises(ValueError, match=r"batch_size \(250\) is not divisible by the 8 devices.*256.*--devices 5"):
        par.check_batch_divisible(250, FakeMesh())


def test_padding_helpers_keep_the_real_rows():
    assert [par.padded_size(n, 8) for n in (1, 8, 13, 16)] == [8, 8, 16, 16]
    x = np.arange(6).reshape(3, 2)
    padded = par.pad_rows(x, 5, source=1)
    assert padded.shape == (5, 2) and (padded[:3] == x).all() and (padded[3:] == x[1]).all()
    with pytest.raises(ValueError):
        par.pad_rows(x, 2)
    index = np.arange(6).reshape(2, 3)
    valid = np.ones((2, 3), bool)

    class FakeMesh:
        shape = {"runs": 1, "data": 4}

    idx, val = par.pad_batch_columns(index, valid, FakeMesh())
    assert idx.shape == (2, 4) and (idx[:, :3] == index).all() and not val[:, 3].any() and val[:, :3].all()


def test_noise_of_a_row_does_not_depend_on_padding_after_it():
    # What makes padded evaluation batches and padded groups exact: partitionable Threefry draws a
    # value from the key and its position, not from the array's length.
    assert jax.config.jax_threefry_partitionable
    key = jax.random.PRNGKey(3)
    np.testing.assert_array_equal(jax.random.normal(key, (8, 5, 3))[:5], jax.random.normal(key, (5, 5, 3)))


def test_placement_and_host_views():
    mesh = par.make_mesh()
    x = par.put_replicated({"a": np.arange(4.0), "k": jax.random.PRNGKey(0)}, mesh)
    assert x["a"].sharding.is_fully_replicated and x["k"].dtype == jnp.uint32
    typed = par.put_replicated(jax.random.key(0), mesh)
    assert jnp.issubdtype(typed.dtype, jax.dtypes.prng_key)
    b = par.put_batch(np.arange(4), mesh)
    assert b.sharding.spec == jax.sharding.PartitionSpec(par.DATA)
    np.testing.assert_array_equal(par.to_host(b), np.arange(4))
    assert par.put_batch(np.arange(4), None).shape == (4,)


def test_estimator_on_a_mesh_takes_typed_and_raw_keys_alike():
    # Embedding code may hold new-style typed keys (jax.random.key); they name the same stream as
    # their raw uint32 data, so the sharded estimator must give the same result for both.
    from ibjax import mi as ibmi
    from ibjax.study.steps import estimate_mi_on_mesh

    rng = np.random.default_rng(0)
    n, r = 64, 2
    t = rng.normal(size=(n, r, 3)).astype(np.float32)
    x = (t[:, 0, :2] + 0.1 * rng.normal(size=(n, 2))).astype(np.float32)
    index = np.stack([np.arange(n), rng.permutation(n)]).astype(np.int32)
    valid = np.ones_like(index, bool)
    cfg = ibmi.resolve_config(epochs=2, batch_size=16, negatives=8, hidden=(8,), heldout_fraction=0.25, read_epochs=1,
                              validation_fraction=0.0, candidates=(), select="last", preprocess="none")
    mesh = par.make_mesh(1)
    shared = par.put_replicated((t, x), mesh)
    run = lambda key: estimate_mi_on_mesh(key, ibmi.bank_pairs, shared, index, valid, 3, 2,  # noqa: E731
                                          config=cfg, mesh=mesh)
    raw, typed = run(jax.random.PRNGKey(5)), run(jax.random.key(5))
    assert np.asarray(raw.trajectory).shape == (2, 2)
    np.testing.assert_allclose(np.asarray(typed.trajectory), np.asarray(raw.trajectory), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(typed.heldout), np.asarray(raw.heldout), rtol=1e-5, atol=1e-6)


def test_an_empty_group_reads_nan_and_leaves_the_others_as_they_are():
    # A clean run's target_backdoor has no sample: it is estimated on a stand-in and blanked, so a
    # population's batched call keeps one shape; the other groups keep their own keys and reads.
    from ibjax import mi as ibmi
    from ibjax.study.steps import estimate_mi_on_mesh

    rng = np.random.default_rng(1)
    n = 64
    t = rng.normal(size=(n, 1, 3)).astype(np.float32)
    x = (t[:, 0, :2] + 0.1 * rng.normal(size=(n, 2))).astype(np.float32)
    index = np.stack([np.arange(n), np.zeros(n), rng.permutation(n)]).astype(np.int32)
    valid = np.ones_like(index, bool)
    valid[1] = False
    cfg = ibmi.resolve_config(epochs=2, batch_size=16, negatives=8, hidden=(8,), heldout_fraction=0.25, read_epochs=1,
                              validation_fraction=0.0, candidates=(), select="last", preprocess="none")
    keys = np.asarray(jax.random.split(jax.random.PRNGKey(3), 3))
    res = estimate_mi_on_mesh(keys, ibmi.bank_pairs, (t, x), index, valid, 3, 2, config=cfg)
    assert np.all(np.isnan(res.heldout[1])) and np.all(np.isnan(res.trajectory[1]))
    assert not bool(res.converged[1]) and int(res.best_epoch[1]) == -1 and int(res.candidate[1]) == -1
    alone = estimate_mi_on_mesh(keys[[0, 2]], ibmi.bank_pairs, (t, x), index[[0, 2]], valid[[0, 2]], 3, 2, config=cfg)
    np.testing.assert_allclose(res.heldout[[0, 2]], alone.heldout, rtol=1e-4, atol=1e-5)
    assert np.all(np.isfinite(res.heldout[[0, 2]]))


def test_collectives_are_counted_in_hlo_text():
    text = ("%all-reduce.1 = f32[] all-reduce(f32[] %x), replica_groups={}\n"
            "%ag = f32[8] all-gather-start(f32[1] %y)\n %z = f32[] add(%a, %b)")
    assert par.collectives_in_hlo(text) == {"all-gather": 1, "all-reduce": 1}
    assert par.collectives_in_hlo("%z = f32[] add(%a, %b)") == {}


def test_process_share_is_round_robin():
    items = list(range(7))
    shares = [par.process_share(items, i, 3) for i in range(3)]
    assert shares == [[0, 3, 6], [1, 4], [2, 5]]
    assert sorted(sum(shares, [])) == items
    assert par.process_share(items) == items  # one process


# --------------------------------------------------------------------------------------------------
# 8 forced CPU devices (one subprocess for this file and tests/test_study_population.py)


@pytest.fixture(scope="module")
def md():
    return multidevice_results()


def test_study_on_1_2_and_8_devices_is_the_same_run_and_resumes_on_another_count(md):
    # alone_0: both epochs on one device; sharded: epoch 1 (with MI) on 2 devices, then resumed from
    # its checkpoint on 8 devices for epoch 2 (state restored onto the new device count); sharded_1:
    # sharded's epoch-1 directory resumed on one device; two_devices: both epochs on 2 devices in one go.
    # Each epoch is compared with a run that starts it from the same state, so a difference is that
    # epoch's rounding, which METRIC_TOL bounds. alone_0's epoch 2 starts from epoch 1's rounding
    # (1 vs 2 devices) and training amplifies it: on a 2-core Xeon with AVX-512 (2026-12-02) alone_0
    # and sharded_1, both on one device in epoch 2, ended it 3.1e-3 nats apart in test loss, and
    # alone_0 and sharded 4.0e-3 (both identical with and without other load on the machine); from the
    # same checkpoint, 1 vs 8 devices: 9.6e-4, 2 vs 8 devices: 0.
    one, sharded = os.path.join(md, "alone_0"), os.path.join(md, "sharded")
    assert run_differences(one, sharded, epochs=(1,)) == []  # 1 vs 2 devices, from the same initial state
    assert run_differences(os.path.join(md, "sharded_1"), sharded, epochs=(2,)) == []  # epoch 2: 1 vs 8 devices
    assert run_differences(os.path.join(md, "two_devices"), sharded, epochs=(1, 2)) == []  # uninterrupted vs resumed
    records, mi = run_records(sharded)
    assert [r["epoch"] for r in records] == [1, 2] and set(mi["xt"]["target"]) == {"1"}
    assert json.load(open(os.path.join(sharded, "run.json")))["finished"]
    # The training tolerances discriminate: another seed is a different run.
    other = run_differences(one, os.path.join(md, "alone_1"), epochs=(1,))
    assert any("train_loss" in d for d in other) and any("test_loss" in d for d in other), other


def test_estimator_on_identical_inputs_gives_every_group_its_one_device_result(md):
    # The study's 13 groups split over 8 devices (padded to 16 with copies of group 0), on the same
    # bank: every group's first estimator epoch equals the one-device call's (a wrong key, group or
    # padding would change it entirely), and the rest stays within the float-rounding drift.
    exact = json.load(open(os.path.join(md, "done.json")))["exact"]
    assert exact["estimator_8"]["first_epoch"] <= EXACT_TOL, exact
    assert exact["estimator_8"]["all"] <= MI_TOL, exact
    assert exact["first_epoch_spread"] > 100 * EXACT_TOL  # groups differ: the comparison can fail


def test_feature_banks_are_built_data_parallel(md):
    exact = json.load(open(os.path.join(md, "done.json")))["exact"]
    assert exact["data_parallel"] <= EXACT_TOL, exact


def test_data_parallel_epoch_keeps_the_state_replicated(md):
    done = json.load(open(os.path.join(md, "done.json")))
    assert done["replicated_state"] and done["state_devices"] == [8]


def test_indivisible_batch_fails_before_any_work(md):
    done = json.load(open(os.path.join(md, "done.json")))
    assert re.search(r"batch_size \(30\) is not divisible by the 8 devices", done["indivisible_error"])
    assert not done["bad_dir_left"]


def test_estimator_group_axis_stays_partitioned_without_communication(md):
    # Every estimator program compiled for several devices (2 and 8 for the study, 2 for the
    # population's members x groups) is split over the group axis with no collective at all.
    modules = [f for f in glob.glob(os.path.join(md, "hlo", "*after_optimizations.txt"))
               if any(name in os.path.basename(f) for name in ESTIMATOR_MODULES)]
    partitions = {}
    for f in modules:
        text = open(f).read()
        n = int(re.search(r"num_partitions=(\d+)", text).group(1)) if "num_partitions=" in text else 1
        partitions[os.path.basename(f)] = n
        if n > 1:
            assert par.collectives_in_hlo(text) == {}, (f, par.collectives_in_hlo(text))
    assert {2, 8} <= set(partitions.values()), partitions
