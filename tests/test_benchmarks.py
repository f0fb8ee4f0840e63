"""The benchmark scripts run end to end at their smallest sizes and report sensible rows.

Numbers are not checked against any target (this is a CPU); only that every expected row is there,
positive and finite, in both the Markdown table and the JSON. Most of the time here is XLA compilation;
the torch variants reuse the compiled functions of the --no-torch runs (same static arguments).
"""

import json
import math
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # the repo root, for plain `pytest` too

from benchmarks import _common, defense_cost, estimate_cost, estimator_throughput, ground_truth, train_throughput  # noqa: E402

TRAIN_ARGS = ["--quick", "--model", "small_cnn", "--dtypes", "float32"]
EST_ARGS = ["--quick", "--groups", "2", "--batch-div", "16", "--size-div", "64", "--steps", "2", "--repeats", "2",
            "--cnn", "small_cnn"]


def _positive(x):
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def _run(module, args, tmp_path, capsys):
    path = tmp_path / "out.json"
    doc = module.main([*args, "--json", str(path)])
    out = capsys.readouterr().out
    on_disk = json.loads(path.read_text())
    assert on_disk["rows"] == json.loads(json.dumps(doc["rows"]))
    assert on_disk["command"].startswith(f"python -m {module.MODULE} ")
    for key in ("date", "hardware", "config", "notes"):
        assert on_disk[key]
    assert on_disk["hardware"]["jax_device"] and on_disk["hardware"]["cpu"]
    assert "| implementation |" in out or "| quantity |" in out
    assert on_disk["command"] in out
    return on_disk, out


def _check_train(doc, out, with_torch):
    rows = doc["rows"]
    impls = [(r["implementation"], r["dtype"]) for r in rows]
    expected = [("ibjax train_step", "float32"), ("ibjax epoch_loop", "float32")]
    if with_torch:
        expected.append(("PyTorch eager", "float32"))
    assert impls == expected
    for r in rows:
        assert _positive(r["img_per_s"]) and _positive(r["ms_per_step"])
        assert f"| {r['implementation']} | {r['dtype']} |" in out
        if with_torch:
            assert _positive(r["ratio_vs_torch_fp32"])
        else:
            assert "ratio_vs_torch_fp32" not in r
    if with_torch:
        assert rows[-1]["ratio_vs_torch_fp32"] == pytest.approx(1.0)
        assert "torch_device" in doc["hardware"]
    assert "60,000" in out  # the H100 target is printed next to the results


def test_train_throughput_quick_no_torch(tmp_path, capsys):
    doc, out = _run(train_throughput, [*TRAIN_ARGS, "--no-torch"], tmp_path, capsys)
    _check_train(doc, out, with_torch=False)
    assert doc["config"]["batch"] == 16 and not doc["config"]["torch"]


def test_train_throughput_quick_with_torch(tmp_path, capsys):
    pytest.importorskip("torch")
    doc, out = _run(train_throughput, TRAIN_ARGS, tmp_path, capsys)
    _check_train(doc, out, with_torch=True)


def _check_estimator(doc, out, with_torch):
    rows = doc["rows"]
    got = [(r["quantity"], r["implementation"].split(" (")[0], r["groups"]) for r in rows]
    expected = []
    for q in ("I(X;T)", "I(T;Y)"):
        expected += [(q, "ibjax mi.update", 2), (q, "ibjax estimate_mi_groups", 2)]
        if with_torch:
            expected.append((q, "PyTorch reference-style", 1))
    assert got == expected
    for r in rows:
        assert _positive(r["group_steps_per_s"]) and _positive(r["computed_group_steps_per_s"])
        assert r["computed_group_steps_per_s"] >= r["group_steps_per_s"] * (1 - 1e-9)
        assert r.get("finite", True)
        assert ("ratio_vs_reference_style" in r) == with_torch
    full = doc["full_estimate"]
    assert full["kind"] == "extrapolated" and _positive(full["seconds"])
    assert full["computed_group_steps"] == 13 * full["scan_steps"] and full["scan_steps"] >= 7000
    assert "Whole 13-group I(X;T) estimate" in out and "extrapolated" in out
    assert "9,200" in out and "reported, not measured here" in out


def test_estimator_throughput_quick_no_torch(tmp_path, capsys):
    doc, out = _run(estimator_throughput, [*EST_ARGS, "--no-torch"], tmp_path, capsys)
    _check_estimator(doc, out, with_torch=False)


def test_estimator_throughput_quick_with_torch(tmp_path, capsys):
    pytest.importorskip("torch")
    doc, out = _run(estimator_throughput, EST_ARGS, tmp_path, capsys)
    _check_estimator(doc, out, with_torch=True)
    base = [r for r in doc["rows"] if r["implementation"].startswith("PyTorch")]
    assert all(r["ratio_vs_reference_style"] == pytest.approx(1.0) for r in base)


def test_ground_truth_quick_reports_every_task_and_variant(tmp_path, capsys):
    path = tmp_path / "gt.json"
    doc = ground_truth.main(["--quick", "--variants", "plain", "--tasks", "0,1,5", "--json", str(path)])
    out = capsys.readouterr().out
    assert json.loads(path.read_text())["summary"] == json.loads(json.dumps(doc["summary"]))
    assert [(r["variant"], r["task"]) for r in doc["rows"]] == [
        ("plain", "independent"), ("plain", "gaussian dense"), ("plain", "cube")]
    for r in doc["rows"]:
        assert math.isfinite(r["heldout"]) and r["heldout_se"] > 0
        assert r["error"] == pytest.approx(r["heldout"] - r["truth"])
    assert [s["variant"] for s in doc["summary"]] == ["plain"]
    assert all(math.isfinite(s["mae"]) for s in doc["summary"])
    assert doc["command"] in out and "| variant | task |" in out and "MAE (nats)" in out


def test_missing_torch_fails_with_a_clear_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    with pytest.raises(SystemExit, match="--no-torch"):
        _common.require_torch()
    with pytest.raises(SystemExit, match="PyTorch is needed"):
        train_throughput.main(["--quick", "--model", "small_cnn"])


def test_ground_truth_selection_variant_reports_the_chosen_candidate(tmp_path):
    doc = ground_truth.main(["--quick", "--variants", "select", "--tasks", "1,5"])
    n = 1 + len(ground_truth.VARIANTS["select"]["candidates"])
    assert [r["task"] for r in doc["rows"]] == ["gaussian dense", "cube"]
    assert all(0 <= r["candidate"] < n and math.isfinite(r["heldout"]) for r in doc["rows"])
    assert doc["summary"][0]["overrides"].startswith("best on validation of: ")
    assert doc["summary"][0]["overrides"].count(" | ") == n - 1


def test_estimate_cost_splits_each_variant_into_fixed_and_per_epoch_parts(tmp_path, capsys):
    out = tmp_path / "cost.json"
    doc = estimate_cost.main(["--variants", "reference,levers-each-batch,levers", "--groups", "2", "--size-div", "64",
                              "--batch-div", "16", "--epochs", "1,2", "--repeats", "1", "--json", str(out)])
    rows = {r["variant"]: r for r in json.loads(out.read_text())["rows"]}
    assert list(rows) == ["reference", "levers-each-batch", "levers"]
    # One repeat at these sizes is timing noise: a part may come out negative, and then has no ratio.
    base = doc["rows"][0]
    assert base["fixed_ratio"] == (1.0 if base["fixed_s"] > 0 else None)
    assert rows["levers-each-batch"]["mapped"] == "each batch" and rows["levers"]["mapped"] == "once"
    for r in rows.values():
        assert r["finite"] and r["short_s"] > 0 and r["long_s"] > 0
        assert math.isclose(r["fixed_s"] + r["per_epoch_s"], r["short_s"], rel_tol=1e-9)
    assert "fixed s" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        estimate_cost.main(["--epochs", "8,1"])


def test_defense_cost_refuses_bad_flags_before_training():
    # its training and its defences run in tests/test_defenses_trained.py (train_pair, pair_config)
    for argv in (["--epochs", "1"], ["--defenses", "spectral,nope"], ["--rules", "mine"]):
        with pytest.raises(SystemExit):
            defense_cost.parse_args(argv)
    assert defense_cost.parse_args(["--defenses", "uclc,ban"]).defenses == ["uclc", "ban"]
