"""Checkpointer: exact round trip, asynchronous saves safe against donation, retention, resume point."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ibjax.checkpoint import Checkpointer


def _state(seed):
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    return {
        "params": {"w": jax.random.normal(k1, (64, 32)), "b": jnp.arange(32, dtype=jnp.float32)},
        "step": jnp.asarray(seed, jnp.int32),
        "key": k2,
        "half": jax.random.normal(k2, (8,)).astype(jnp.bfloat16),
    }


def _equal(a, b):
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(leaves_a) == len(leaves_b) and all(
        x.dtype == y.dtype and np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(leaves_a, leaves_b)
    )


@pytest.mark.parametrize("asynchronous", [True, False])
def test_round_trip_is_exact_with_dtypes_and_metadata(tmp_path, asynchronous):
    state, meta = _state(3), {"epoch": 3, "metrics": [{"acc": 0.5}], "plateau": [float("inf"), 0]}
    with Checkpointer(str(tmp_path), asynchronous=asynchronous) as ckpt:
        ckpt.save(3, state, meta)
    ckpt = Checkpointer(str(tmp_path))
    assert ckpt.latest_step() == 3
    restored, meta_back = ckpt.restore(3, _state(0))
    ckpt.close()
    assert _equal(restored, state)
    assert meta_back["epoch"] == 3 and meta_back["metrics"] == [{"acc": 0.5}]


def test_async_save_snapshots_arrays_and_metadata_before_returning(tmp_path):
    # The study donates the train state to the next step and appends to its metadata right after
    # saving; neither may reach the checkpoint being written.
    state = _state(1)
    expected = jax.tree.map(np.asarray, state)
    copy = jax.tree.map(lambda x: x + 0, state)
    meta = {"epoch": 1, "metrics": [1]}
    with Checkpointer(str(tmp_path)) as ckpt:
        ckpt.save(1, copy, meta)
        for leaf in jax.tree.leaves(copy):
            leaf.delete()
        meta["metrics"].append(2)
        meta["epoch"] = 2
    with Checkpointer(str(tmp_path)) as ckpt:
        restored, meta_back = ckpt.restore(1, _state(0))
    assert _equal(restored, expected)
    assert meta_back == {"epoch": 1, "metrics": [1]}


def test_keeps_the_newest_steps_and_resumes_from_the_latest(tmp_path):
    with Checkpointer(str(tmp_path), max_to_keep=2) as ckpt:
        for step in range(1, 5):
            ckpt.save(step, _state(step), {"epoch": step})
    ckpt = Checkpointer(str(tmp_path), max_to_keep=2)
    assert ckpt.latest_step() == 4
    assert sorted(ckpt._manager.all_steps()) == [3, 4]
    restored, meta = ckpt.restore(ckpt.latest_step(), _state(0))
    ckpt.close()
    assert meta["epoch"] == 4 and _equal(restored, _state(4))


def test_empty_directory_has_no_latest_step(tmp_path):
    with Checkpointer(str(tmp_path / "new")) as ckpt:
        assert ckpt.latest_step() is None
