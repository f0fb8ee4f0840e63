"""Bad input through the real command line: one line ``error: ...`` naming the culprit, the exit
code, nothing left behind, nothing overwritten; and the run lifecycle of quickstart and sweep."""

import json
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from PIL import Image
from tiny_config import TINY, short

from ibjax.commands import quickstart, study, sweep
from ibjax.study import config_to_dict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _folder(root, splits=(("train", 8), ("test", 2)), classes=("a", "b")):
    rng = np.random.default_rng(0)
    for split, n in splits:
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for k in range(n):
                Image.fromarray(rng.integers(0, 256, (8, 8, 3), np.uint8)).save(root / split / c / f"{k}.png")
    return root


def _config_file(tmp_path, config, name="c.json"):
    path = tmp_path / name
    path.write_text(json.dumps(config_to_dict(config)))
    return str(path)


def _snapshot(path):
    out = {}
    for d, _, files in os.walk(path):
        for f in files:
            p = os.path.join(d, f)
            out[p] = open(p, "rb").read()
    return out


def _cases(tmp_path):
    """(argv, expected exit code, text the one error line must contain) for every bad input."""
    one = _config_file(tmp_path, short(TINY, 1), "one.json")
    nan = _config_file(tmp_path, short(TINY, 1, **{"train.lr": 1e12, "train.schedule": "constant"}), "nan.json")
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("mine")
    (tmp_path / "empty").mkdir()
    corrupt = tmp_path / "corrupt.tar.gz"
    corrupt.write_bytes(b"\x1f\x8b\x08\x00this is not a tar archive at all" * 10)
    stray = _folder(tmp_path / "stray")
    (stray / "train" / "a" / "labels.csv").write_text("0,1")
    broken = _folder(tmp_path / "broken")
    (broken / "train" / "b" / "9.png").write_bytes(b"not a png")
    no_test = _folder(tmp_path / "no_test", splits=(("train", 8),))
    (no_test / "test" / "a").mkdir(parents=True)
    (no_test / "test" / "b").mkdir(parents=True)
    archive = tmp_path / "stray.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(stray, arcname="stray")
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{not json")
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps({"train": {"epochz": 2}}))
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    data = ["--config", one, "--data.name", "toy", "--data.per-class-limit", "None"]
    return [
        (["--resume", str(tmp_path / "missing")], 2, "no such directory"),
        (["--resume", str(tmp_path / "plain")], 2, "holds no ibjax run"),
        ([*data, "--data.dir", str(corrupt)], 2, "corrupt.tar.gz"),
        ([*data, "--data.dir", str(tmp_path / "nowhere")], 2, "does not exist"),
        ([*data, "--data.dir", str(tmp_path / "empty")], 2, "empty directory"),
        ([*data, "--data.dir", str(stray)], 2, "labels.csv is not an image file"),
        ([*data, "--data.dir", str(archive)], 2, "labels.csv is not an image file"),
        ([*data, "--data.dir", str(broken)], 2, "cannot decode image"),
        ([*data, "--data.dir", str(no_test)], 2, "split 'test'"),
        (["--config", one, "--attack.options", "size", "abc"], 2, "size"),
        (["--config", one, "--attack.options", "size", "100"], 2, "size"),
        (["--config", one, "--attack.options", "sizes", "3"], 2, "sizes"),
        (["--config", one, "--poison.target", "12"], 2, "target class 12 out of range"),
        (["--config", one, "--mi.epochs", "5"], 2, "mi: epochs must lie in 1..1"),
        (["--config", one, "--train.epochs", "abc"], 2, "--train.epochs"),
        (["--config", one, "--attack.name", "trojan_horse"], 2, "trojan_horse"),
        (["--preset", "gpu"], 2, "unknown preset 'gpu'"),
        (["--config", one, "--writers", "wandb"], 2, "wandb"),
        (["--config", str(tmp_path / "missing.json")], 2, "cannot read config file"),
        (["--config", str(bad_json)], 2, "is not valid JSON"),
        (["--config", str(unknown)], 2, "train.epochz"),
        (["--config", one, "--out", str(a_file)], 2, "is a file, not a directory"),
        (["--config", one, "--out", str(tmp_path / "plain")], 2, "holds files ibjax did not write (notes.txt)"),
        (["--config", nan], 1, "training loss is not finite"),
    ]


def test_every_bad_input_gets_one_error_line_and_leaves_nothing(tmp_path, capsys):
    cases = _cases(tmp_path)
    before = _snapshot(tmp_path)
    for k, (argv, code, text) in enumerate(cases):
        out = str(tmp_path / f"run{k}")
        if "--out" not in argv and "--resume" not in argv:
            argv = [*argv, "--out", out]
        with pytest.raises(SystemExit) as e:
            study.main([*argv, "--quiet"])
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == code, (argv, err)
        assert len(err) == 1 and err[0].startswith("error: ") and text in err[0], (argv, err)
        assert not os.path.exists(out), argv  # nothing left behind
    assert _snapshot(tmp_path) == before  # nothing overwritten or removed


def test_the_error_line_and_exit_code_reach_the_shell(tmp_path):
    p = subprocess.run([sys.executable, "-m", "experiments.study", "--preset", "cpu", "--train.epochs", "0", "--quiet",
                        "--out", str(tmp_path / "r")], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"})
    assert p.returncode == 2 and p.stderr.strip().splitlines() == ["error: train: epochs must be >= 1, got 0"]


def test_quickstart_never_deletes_what_it_did_not_write(tmp_path, capsys, monkeypatch):
    out = tmp_path / "qs"
    out.mkdir()
    (out / "my_notes.md").write_text("keep me")
    monkeypatch.setattr(quickstart, "QUICKSTART", short(TINY, 1))
    for extra in ([], ["--fresh"]):
        with pytest.raises(SystemExit) as e:
            quickstart.main(["--out", str(out), "--quiet", *extra])
        assert e.value.code == 2 and "my_notes.md" in capsys.readouterr().err
    assert os.listdir(out) == ["my_notes.md"] and (out / "my_notes.md").read_text() == "keep me"


def test_quickstart_rerun_reads_the_finished_run_and_refuses_another_config(tmp_path, capsys, monkeypatch):
    out = str(tmp_path / "qs")
    monkeypatch.setattr(quickstart, "QUICKSTART", short(TINY, 1))
    first = quickstart.main(["--out", out, "--quiet"])
    again = quickstart.main(["--out", out, "--quiet"])  # not wiped, not recomputed
    assert again["test_accuracy"] == first["test_accuracy"]
    monkeypatch.setattr(quickstart, "QUICKSTART", short(TINY, 1, seed=5))
    with pytest.raises(SystemExit) as e:  # another config: refused, naming the change (--fresh starts over)
        quickstart.main(["--out", out, "--quiet"])
    assert e.value.code == 2 and "seed: 0 -> 5" in capsys.readouterr().err
    assert json.load(open(os.path.join(out, "config.json")))["seed"] == 0


def test_sweep_after_a_failed_run_uses_the_corrected_flags(tmp_path, capsys):
    root = str(tmp_path / "sweep")
    cfg = _config_file(tmp_path, short(TINY, 1))
    with pytest.raises(SystemExit) as e:  # the first try fails in epoch 1: NaN loss, before any checkpoint
        sweep.main(["--attacks", "badnets", "--seeds", "0", "--root", root, "--config", cfg, "--train.lr", "1e12",
                    "--train.schedule", "constant", "--quiet"])
    assert e.value.code == 1
    assert not os.path.exists(os.path.join(root, "badnets_0.1_s0", "config.json"))
    sweep.main(["--attacks", "badnets", "--seeds", "0", "--root", root, "--config", cfg, "--quiet"])
    saved = json.load(open(os.path.join(root, "badnets_0.1_s0", "config.json")))
    assert saved["train"]["lr"] == TINY.train.lr and saved["train"]["schedule"] == "plateau"


def test_writers_flag_names_the_run_s_writers():
    from ibjax.cli import parse_study_command

    assert parse_study_command(["--writers", "tensorboard"]).writers == ("tensorboard",)
    assert parse_study_command([]).writers == ()
