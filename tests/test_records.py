"""ibjax.records: typed epoch records, MI histories over groups x epochs, the run history and its schema."""

import json
import math

import numpy as np
import pytest
from metrics_histories import history, make_run

from ibjax import metrics
from ibjax.records import SCHEMA_VERSION, EpochRecord, MIHistory, RunHistory, SchemaError, as_mi_histories
from ibjax.study.rundir import RunDirectory


def _text(obj) -> str:
    return json.dumps(obj, sort_keys=True)  # NaN-aware equality of JSON values


def test_mi_history_stacks_groups_by_epochs_and_round_trips_mi_json():
    mi = history(make_run(np.random.default_rng(0)))
    typed = as_mi_histories(mi)
    for q, per_group in mi.items():
        h = typed[q]
        assert h.groups == tuple(per_group) and h.epochs == tuple(sorted(int(e) for e in per_group["target"]))
        assert h.values("heldout").shape == (len(h.groups), len(h.epochs))
        g, e = h.groups[3], h.epochs[2]
        assert h.values("heldout", [g], [e])[0, 0] == pytest.approx(per_group[g][str(e)]["heldout"])
        assert _text(h.to_json()) == _text(per_group)
    assert as_mi_histories(typed) == typed  # typed histories pass through


def test_entries_added_epoch_by_epoch_keep_what_each_group_holds():
    h = MIHistory.empty()
    h = h.with_epoch(5, {"target": {"heldout": 1.0, "heldout_se": 0.1, "converged": True, "best_epoch": 3,
                                    "trajectory": [0.5, 1.0]}})
    h = h.with_epoch(1, {"target": {"heldout": 0.2}, "class_1": {"heldout": 0.4, "train": 0.5}})
    assert h.groups == ("target", "class_1") and h.epochs == (1, 5)
    np.testing.assert_allclose(h.values("heldout"), [[0.2, 1.0], [0.4, np.nan]])
    assert h.entry("target", 5) == {"heldout": 1.0, "heldout_se": 0.1, "converged": True, "best_epoch": 3,
                                    "trajectory": [0.5, 1.0]}
    assert h.entry("target", 1) == {"heldout": 0.2} and h.entry("class_1", 5) is None
    assert h.epochs_of("class_1") == (1,) and h.epochs_of("target", "converged") == (5,)
    # a re-recorded entry replaces the old one, field by field
    h = h.with_epoch(1, {"target": {"train": 0.3}})
    assert h.entry("target", 1) == {"train": 0.3}


def test_a_non_number_where_a_value_belongs_reads_as_missing():
    h = MIHistory.from_json({"target": {"1": {"heldout": True, "train": "x", "converged": 1}}})
    assert np.isnan(h.values("heldout")).all() and np.isnan(h.values("train")).all()
    assert _text(h.entry("target", 1)) == _text({"heldout": math.nan, "train": math.nan, "converged": None})


def test_epoch_records_are_typed_and_keep_other_measurements():
    d = {"epoch": 3, "train_accuracy": 0.5, "class_loss": [1.0, 2.0], "asr": 0.9, "wall_s": 2.0, "lr": 0.1,
         "lr_last": 0.05, "note": "kept"}
    r = EpochRecord.from_json(d)
    assert r.epoch == 3 and r.class_loss == (1.0, 2.0) and r.extra == {"note": "kept"} and r.get("note") == "kept"
    assert r.mi_s is None and "mi_s" not in r.to_json()  # not measured: not written
    assert math.isnan(EpochRecord.from_json({"epoch": 1, "test_loss": math.nan}).to_json()["test_loss"])
    assert r.to_json() == d
    with pytest.raises(SchemaError, match="without 'epoch'"):
        EpochRecord.from_json({"asr": 1.0})


def test_run_history_round_trips_with_its_schema_and_refuses_a_newer_one():
    h = RunHistory()
    h.records.append(EpochRecord(epoch=1, test_accuracy=0.8, asr=0.5, train_s=1.0, wall_s=1.5))
    h.add_mi("xt", 1, {"target": {"heldout": 0.3, "train": 0.4}})
    h.clustering[1] = {"target": 0.1}
    h.timings["setup_s"] = 2.0
    d = h.to_json()
    assert d["schema"] == SCHEMA_VERSION and d["clustering"] == {"1": {"target": 0.1}}
    back = RunHistory.from_json(json.loads(json.dumps(d)))
    assert back.records == h.records and back.mi == h.mi and back.clustering == h.clustering
    assert back.timings == h.timings
    assert RunHistory.from_json({k: v for k, v in d.items() if k != "schema"}).mi == h.mi  # schema 1: no mark
    with pytest.raises(SchemaError, match=r"schema version 99; this ibjax reads versions 1\.\.2: upgrade ibjax"):
        RunHistory.from_json({**d, "schema": 99})


def test_a_run_directory_reads_its_records_typed_and_names_an_unknown_version(tmp_path):
    rd = RunDirectory(tmp_path / "run")
    rd.prepare_new()
    mi = history(make_run(np.random.default_rng(1)))
    rd.write_json("mi.json", mi)
    rd.write_jsonl("metrics.jsonl", [{"epoch": 1, "asr": 0.5}])
    got = rd.history()
    assert rd.schema() == SCHEMA_VERSION and got.records == [EpochRecord(epoch=1, asr=0.5)]
    assert metrics.stealthiness(got.mi, (5, 40), "heldout")["total"] == pytest.approx(
        metrics.stealthiness(mi, (5, 40), "heldout")["total"])  # typed and mi.json-shaped read alike
    m = rd.manifest()
    for old in ({**m, "format": 1}, {k: v for k, v in m.items() if k != "format"}):  # older run directories
        with open(rd.file("run.json"), "w") as f:
            json.dump(old, f)
        assert RunDirectory(tmp_path / "run").schema() == 1 and RunDirectory(tmp_path / "run").history().mi == got.mi
    rd.update_manifest(epoch=1)  # what a resume rewrites is marked as today's
    assert RunDirectory(tmp_path / "run").schema() == SCHEMA_VERSION
    with open(rd.file("run.json"), "w") as f:
        json.dump({**m, "format": 7}, f)
    with pytest.raises(SchemaError, match="schema version 7"):
        RunDirectory(tmp_path / "run").history()
