"""Metric writers: TensorBoard event files of a tiny run hold its records, a resume purges what it
recomputes, and a bad writer fails before any work."""

import glob
import json
import os
import struct

import pytest
from tiny_config import TINY, short

from ibjax.fields import override
from ibjax.study import run_study
from ibjax.study.writers import check_writers, epoch_scalars

pytest.importorskip("tensorboardX")


def _events(folder: str) -> list:
    """Every event of the TFRecord event files in ``folder`` (length, CRC, payload, CRC records)."""
    from tensorboardX.proto import event_pb2

    out = []
    for path in sorted(glob.glob(os.path.join(folder, "events.out.tfevents.*"))):
        data = open(path, "rb").read()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            event = event_pb2.Event()
            event.ParseFromString(data[pos + 12 : pos + 12 + length])
            out.append(event)
            pos += 12 + length + 4
    return out


def _scalars(folder: str) -> dict:
    """{(tag, step): value} of the scalar events, the later file winning (as TensorBoard shows them)."""
    return {(v.tag, e.step): v.simple_value for e in _events(folder) if e.HasField("summary") for v in e.summary.value}


def test_tensorboard_events_hold_the_records_and_a_resume_adds_the_rest(tmp_path):
    run = str(tmp_path / "run")
    one = short(TINY, 1)
    run_study(one, run, progress=False, plots=False, writers=("tensorboard",))
    two = override(one, {"train.epochs": 2})
    run_study(two, run, resume=True, progress=False, plots=False, writers=("tensorboard",))
    scalars = _scalars(os.path.join(run, "tensorboard"))
    records = [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl"))]
    for r in records:
        assert scalars[("test/accuracy", r["epoch"])] == pytest.approx(r["test_accuracy"], rel=1e-6)
        assert scalars[("attack/asr", r["epoch"])] == pytest.approx(r["asr"], rel=1e-6)
        assert scalars[("train/loss", r["epoch"])] == pytest.approx(r["train_loss"], rel=1e-6)
    mi = json.load(open(os.path.join(run, "mi.json")))
    assert scalars[("mi/xt/target/heldout", 1)] == pytest.approx(mi["xt"]["target"]["1"]["heldout"], rel=1e-5, abs=1e-7)
    assert {step for tag, step in scalars if tag == "test/accuracy"} == {1, 2}
    assert not any(tag.startswith("mi/") and step == 2 for tag, step in scalars)  # MI at epoch 1 only
    manifest = json.load(open(os.path.join(run, "run.json")))
    assert "tensorboard" in manifest["files"]  # ibjax's: --fresh removes it with the rest


def test_bad_writers_fail_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="unknown writer 'wandb'"):
        run_study(short(TINY, 1), str(tmp_path / "run"), writers=("wandb",))
    with pytest.raises(ValueError, match="sequence of names"):
        check_writers("tensorboard")
    assert not os.path.exists(tmp_path / "run")


def test_epoch_scalars_names_and_skips_non_finite_values():
    mi = {"xt": {"target": {"3": {"heldout": 0.5, "train": float("nan")}}}}
    out = epoch_scalars({"test_accuracy": 0.9, "asr": 1.0, "class_loss": [1.0], "lr": 0.1}, mi, 3)
    assert out == {"test/accuracy": 0.9, "attack/asr": 1.0, "lr": 0.1, "mi/xt/target/heldout": 0.5}
    assert "mi/xt/target/heldout" not in epoch_scalars({}, mi, 4)
