"""The run directory's rules: ibjax never deletes what it did not write, and a start that never
reached its first checkpoint leaves nothing that changes a later run."""

import json
import os

import numpy as np
import pytest

from ibjax.study.rundir import MANIFEST, RunDirectory


def _checkpointed(path):
    rd = RunDirectory(path)
    rd.prepare_new()
    rd.write_json("config.json", {"seed": 0})
    rd.save_array("attack_precomputed.npy", np.zeros(3))
    os.makedirs(rd.file("checkpoints/1"))
    rd.claim("checkpoints")
    rd.update_manifest(checkpointed=True, epoch=1)
    return rd


def test_new_run_into_missing_or_empty_directory(tmp_path):
    rd = RunDirectory(tmp_path / "a")
    rd.prepare_new()
    assert os.listdir(rd.path) == [MANIFEST] and not rd.checkpointed()
    (tmp_path / "b").mkdir()
    RunDirectory(tmp_path / "b").prepare_new()


def test_foreign_files_are_never_touched(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"holds files ibjax did not write \(notes.txt\)"):
        RunDirectory(tmp_path).prepare_new(fresh=True)
    rd = _checkpointed(tmp_path / "run")
    (tmp_path / "run" / "mine.csv").write_text("1")
    with pytest.raises(ValueError, match="mine.csv"):
        RunDirectory(rd.path).prepare_new(fresh=True)
    assert (tmp_path / "run" / "mine.csv").read_text() == "1" and rd.checkpointed()
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_checkpointed_run_needs_resume_or_fresh_and_fresh_removes_only_its_files(tmp_path):
    rd = _checkpointed(tmp_path / "run")
    with pytest.raises(ValueError, match="--resume to continue it, --fresh to discard it"):
        RunDirectory(rd.path).prepare_new()
    RunDirectory(rd.path).check_resumable()
    RunDirectory(rd.path).prepare_new(fresh=True)
    assert os.listdir(rd.path) == [MANIFEST]


def test_a_start_without_checkpoint_is_not_resumable_and_is_cleaned_by_the_next_run(tmp_path):
    rd = RunDirectory(tmp_path / "run")
    rd.prepare_new()
    rd.write_json("config.json", {"seed": 1})  # a stale config of a start that died (kill -9) before its checkpoint
    with pytest.raises(ValueError, match="never reached a first checkpoint"):
        RunDirectory(rd.path).check_resumable()
    RunDirectory(rd.path).prepare_new()
    assert not os.path.exists(rd.file("config.json"))


def test_failed_start_is_discarded_with_the_directory_it_created(tmp_path):
    rd = RunDirectory(tmp_path / "new")
    rd.prepare_new()
    rd.write_json("config.json", {})
    rd.discard_failed_start()
    assert not os.path.exists(tmp_path / "new")
    keep = _checkpointed(tmp_path / "old")
    keep.discard_failed_start()  # a checkpointed run is never discarded
    assert keep.checkpointed()


def test_resume_of_a_missing_or_foreign_directory(tmp_path):
    with pytest.raises(ValueError, match="no such directory"):
        RunDirectory(tmp_path / "nope").check_resumable()
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(ValueError, match="holds no ibjax run"):
        RunDirectory(tmp_path).check_resumable()


def test_writes_are_atomic_and_claimed(tmp_path):
    rd = RunDirectory(tmp_path / "r")
    rd.prepare_new()
    rd.write_jsonl("metrics.jsonl", [{"a": 1}, {"a": 2}])
    rd.save_arrays("embedding_1.npz", x=np.arange(3))
    m = json.load(open(rd.file(MANIFEST)))
    assert {"metrics.jsonl", "embedding_1.npz"} <= set(m["files"])
    assert [json.loads(x)["a"] for x in open(rd.file("metrics.jsonl"))] == [1, 2]
    assert not [n for n in os.listdir(rd.path) if n.startswith(".tmp-")]
