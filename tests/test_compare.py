"""experiments.compare on tiny fake run directories (no study is run): seeds as error bars, protocol
and stealth-setting checks, one-line errors with exit code 2."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from ibjax.commands import compare
from ibjax import metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPOCHS = (1, 4, 8)
GROUPS = ("target", "target_backdoor", "target_clean", "target_sample") + tuple(f"class_{k}" for k in range(1, 10))
SEPARATION = {"badnets": 0.05, "blend": 0.6, "wanet": 0.65}  # how far the target strays from the clean classes


def fake_mi(separation, seed):
    rng = np.random.default_rng(seed)
    mi = {}
    for q in ("xt", "ty"):
        mi[q] = {}
        for g in GROUPS:
            stray = separation * (1.0 if g.startswith("target") else 0.0) + 0.08 * rng.normal()
            mi[q][g] = {str(e): {"train": 1.0 + 0.2 * e + stray + 0.05, "heldout": 1.0 + 0.2 * e + stray,
                                 "heldout_se": 0.03, "train_se": 0.01, "converged": True, "cap": 6.24,
                                 "trajectory": [1.0] * 5} for e in EPOCHS}
    return mi


def config(attack, seed, ratio, out, stealth_epochs=EPOCHS, stealth_classes=(), **changes):
    c = {"dataset": "mnist5k", "data_dir": None, "attack": attack, "attack_options": [], "seed": seed,
         "poison": {"ratio": ratio, "target": 0, "clean_label": False},
         "train": {"epochs": 8, "lr": 0.05}, "xt": {"epochs": 20, "batch_size": 16}, "ty": {"epochs": 20},
         "stealth_epochs": list(stealth_epochs), "stealth_read": "heldout", "stealth_normalise": "per_epoch",
         "stealth_classes": list(stealth_classes), "embed_epochs": [], "embed_points": 2000, "out": out}
    for path, v in changes.items():
        *head, leaf = path.split(".")
        d = c
        for h in head:
            d = d[h]
        d[leaf] = v
    return c


def write_run(root, attack, seed, ratio=0.1, epochs=EPOCHS, summary_stealth=None, stealth_classes=(), **changes):
    """A finished run as the study writes it: its stealthiness on ``epochs`` and ``stealth_classes``
    (empty: all clean classes), which its config records."""
    d = os.path.join(str(root), f"{attack}_{ratio}_s{seed}" + "".join(f"_{k}" for k in changes)
                     + ("_c" + "".join(map(str, stealth_classes)) if stealth_classes else "")
                     + ("_e" + "".join(map(str, epochs)) if tuple(epochs) != EPOCHS else ""))
    os.makedirs(d)
    mi = fake_mi(SEPARATION[attack], seed + 100 * len(attack))
    clean = [f"class_{c}" for c in stealth_classes] or None
    stealth = summary_stealth or {read: metrics.stealthiness(mi, epochs, read, clean=clean) for read in metrics.READS}
    summary = {"run_dir": d, "attack": attack, "dataset": "mnist5k", "model": "small_cnn", "epochs": 8,
               "test_accuracy": 0.9, "asr": 0.99, "seed": seed, "stealth": stealth}
    for name, obj in (("mi.json", mi), ("summary.json", summary), ("stealth.json", stealth),
                      ("config.json", config(attack, seed, ratio, d, epochs, stealth_classes, **changes))):
        with open(os.path.join(d, name), "w") as f:
            json.dump(obj, f)
    return d


def expect_error(args, match, capsys):
    with pytest.raises(SystemExit) as info:
        compare.main(args)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("compare: error:")
    assert match in err and match in str(info.value)
    return err


def test_seeds_give_intervals_ranking_verdicts_and_every_output(tmp_path, capsys):
    runs = [write_run(tmp_path, a, s) for a in ("blend", "badnets", "wanet") for s in range(3)]
    out = str(tmp_path / "cmp")
    res = compare.main([*runs, "--out", out])
    cmp = res["comparison"]
    (rk,) = cmp["rankings"]
    assert rk["order"][0] == "badnets" and set(rk["order"]) == {"badnets", "blend", "wanet"}
    # The table's numbers are the seed statistics of the runs' own summary values.
    badnets = next(g for g in cmp["groups"] if g["attack"] == "badnets")
    totals = [json.load(open(os.path.join(r, "summary.json")))["stealth"]["heldout"]["total"] for r in runs[3:6]]
    assert badnets["n"] == 3 and badnets["total"]["mean"] == pytest.approx(np.mean(totals))
    assert badnets["total"]["ci_low"] < badnets["total"]["mean"] < badnets["total"]["ci_high"]
    nb = {(n["better"], n["worse"]): n for n in rk["neighbours"]}
    assert nb[("badnets", rk["order"][1])]["within_noise"] is False  # badnets clearly apart
    assert all("Welch" in n["basis"] for n in rk["neighbours"])
    md = open(os.path.join(out, "compare.md")).read()
    assert md == capsys.readouterr().out.rstrip("\n") + "\n"  # printed as written
    assert "held-out read (ibjax's), per-epoch min-max (the authors')" in md and "95% t-interval" in md
    assert "badnets vs" in md and ("within noise" in md or "distinct" in md)
    groups = list(csv.DictReader(open(os.path.join(out, "compare.csv"))))
    assert len(groups) == 3 and groups[0]["attack"] == "badnets" and groups[0]["rank"] == "1"
    assert float(groups[0]["total_ci_low"]) < float(groups[0]["total_mean"]) < float(groups[0]["total_ci_high"])
    assert {"xt/target_mean", "ty/target_clean_ci_high", "asr_mean"} <= set(groups[0])
    assert len(list(csv.DictReader(open(os.path.join(out, "compare_runs.csv"))))) == 9
    assert os.path.getsize(os.path.join(out, "stealth.png")) > 5000
    # The train read is available too and named.
    res = compare.main([*runs, "--out", out, "--read", "train"])
    assert "train read (the authors')" in open(os.path.join(out, "compare.md")).read()


def test_one_seed_per_attack_works_and_says_so(tmp_path, capsys):
    runs = [write_run(tmp_path, a, 0) for a in ("blend", "badnets")]
    res = compare.main([*runs, "--out", str(tmp_path / "cmp")])
    md = capsys.readouterr().out
    assert "one seed" in md and "+-" in md  # the bootstrap SE stands in for the interval
    nb = res["comparison"]["rankings"][0]["neighbours"][0]
    assert "estimator" in nb["basis"] and nb["within_noise"] is not None


def test_mixed_protocols_are_refused_or_marked(tmp_path, capsys):
    a = write_run(tmp_path, "badnets", 0)
    b = write_run(tmp_path, "blend", 0, **{"train.epochs": 4})
    err = expect_error([a, b, "--out", str(tmp_path / "cmp")], "train.epochs", capsys)
    assert "--allow-mixed" in err
    res = compare.main([a, b, "--out", str(tmp_path / "cmp"), "--allow-mixed"])
    assert [r["protocol"] for r in res["runs"]] == ["P1", "P2"] and len(res["comparison"]["rankings"]) == 2
    md = open(tmp_path / "cmp" / "compare.md").read()
    assert "| protocol |" in md and "## Protocols" in md and "| train.epochs | 8 | 4 |" in md
    # Treating the field as run identity makes them one protocol again.
    res = compare.main([a, b, "--out", str(tmp_path / "cmp"), "--ignore-field", "train.epochs"])
    assert {r["protocol"] for r in res["runs"]} == {"P1"}
    # Attack, seed, poison ratio and output paths differ between these two and are not protocol.
    c = write_run(tmp_path, "wanet", 3, ratio=0.05)
    assert compare.main([a, c, "--out", str(tmp_path / "cmp2")])["differing"] == {}


def test_different_stealth_settings_are_refused_even_when_mixed_is_allowed(tmp_path, capsys):
    a = write_run(tmp_path, "badnets", 0)
    b = write_run(tmp_path, "blend", 0, epochs=(4, 8))
    expect_error([a, b, "--out", str(tmp_path / "cmp"), "--allow-mixed"], "stealth epochs", capsys)
    res = compare.main([a, b, "--out", str(tmp_path / "cmp"), "--recompute", "--stealth-epochs", "1,8"])
    assert all(r["stealth_epochs"] == [1, 8] for r in res["runs"])
    # An old summary (joint normalisation, no "normalise" key) next to a new one.
    old = {read: {k: v for k, v in metrics.stealthiness(fake_mi(0.6, 5), EPOCHS, read, normalise="joint").items()
                  if k in ("components", "total", "epochs", "read")} for read in metrics.READS}
    c = write_run(tmp_path, "wanet", 0, summary_stealth=old)
    expect_error([a, c, "--out", str(tmp_path / "cmp")], "normalisation", capsys)
    res = compare.main([a, c, "--out", str(tmp_path / "cmp"), "--recompute"])
    assert {r["normalise"] for r in res["runs"]} == {"per_epoch"}


def test_recompute_uses_each_runs_stealth_classes(tmp_path, capsys):
    """The reference preset compares with classes 1-3 only (stealth_classes); --recompute must too."""
    runs = [write_run(tmp_path, a, s, stealth_classes=(1, 2, 3)) for a in ("badnets", "blend") for s in range(2)]
    recorded = compare.main([*runs, "--out", str(tmp_path / "cmp")])
    res = compare.main([*runs, "--out", str(tmp_path / "cmp2"), "--recompute"])
    for old, new in zip(recorded["runs"], res["runs"]):
        assert new["clean"] == ["class_1", "class_2", "class_3"] == old["clean"]
        assert new["total"] == pytest.approx(old["total"], abs=1e-6)
    mi = json.load(open(os.path.join(runs[0], "mi.json")))
    want = metrics.stealthiness(mi, EPOCHS, "heldout", clean=["class_1", "class_2", "class_3"])["total"]
    assert res["runs"][0]["total"] == pytest.approx(want, abs=1e-6)
    assert want != pytest.approx(metrics.stealthiness(mi, EPOCHS, "heldout")["total"], abs=1e-3)  # all 9 differ
    assert "Clean classes compared with: class_1, class_2, class_3." in open(tmp_path / "cmp2" / "compare.md").read()


def test_different_clean_classes_are_refused_until_recomputed_on_common_ones(tmp_path, capsys):
    a = write_run(tmp_path, "badnets", 0, stealth_classes=(1, 2, 3))
    b = write_run(tmp_path, "blend", 0)  # all nine clean classes
    err = expect_error([a, b, "--out", str(tmp_path / "cmp"), "--allow-mixed"], "clean classes", capsys)
    assert "--stealth-classes" in err
    # Recomputed with each run's own classes they still differ ...
    expect_error([a, b, "--out", str(tmp_path / "cmp"), "--recompute"], "clean classes", capsys)
    # ... on common ones they compare, as one protocol (stealth_classes is an analysis setting).
    for classes, want in (("all", [f"class_{k}" for k in range(1, 10)]), ("1,2", ["class_1", "class_2"])):
        res = compare.main([a, b, "--out", str(tmp_path / "cmp"), "--recompute", "--stealth-classes", classes])
        assert all(r["clean"] == want for r in res["runs"]) and res["differing"] == {}
    expect_error([a, b, "--out", str(tmp_path / "cmp"), "--stealth-classes", "1,2"], "need --recompute", capsys)
    expect_error([a, b, "--out", str(tmp_path / "cmp"), "--recompute", "--stealth-classes", "1,x"],
                 "--stealth-classes must be", capsys)
    expect_error([a, b, "--out", str(tmp_path / "cmp"), "--recompute", "--stealth-classes", "12"],
                 "no group 'class_12'", capsys)


def test_analysis_settings_in_the_config_are_not_protocol(tmp_path, capsys):
    """Runs made with other --stealth-epochs, embeddings or data location compare once their
    stealthiness is recomputed on common epochs (the epochs used are checked on the results)."""
    a = write_run(tmp_path, "badnets", 0, **{"data_dir": "/data/here", "embed_points": 100})
    b = write_run(tmp_path, "blend", 0, epochs=(4, 8), **{"stealth_normalise": "joint", "stealth_read": "train"})
    res = compare.main([a, b, "--out", str(tmp_path / "cmp"), "--recompute", "--stealth-epochs", "1,8"])
    assert res["differing"] == {} and {r["protocol"] for r in res["runs"]} == {"P1"}
    assert all(r["stealth_epochs"] == [1, 8] for r in res["runs"])
    # Without recomputing, the epochs actually used differ and are refused as before.
    expect_error([a, b, "--out", str(tmp_path / "cmp")], "stealth epochs", capsys)


def test_bad_inputs_give_one_line_errors_naming_the_path(tmp_path, capsys):
    good = write_run(tmp_path, "badnets", 0)
    out = ["--out", str(tmp_path / "cmp")]
    empty = tmp_path / "empty"
    empty.mkdir()
    expect_error([good, str(empty), *out], f"{empty} has no summary.json", capsys)
    afile = tmp_path / "notes.txt"
    afile.write_text("x")
    expect_error([good, str(afile), *out], f"{afile} is not a directory", capsys)
    expect_error([good, str(tmp_path / "missing"), *out], "missing is not a directory", capsys)
    expect_error([good, good, *out], "listed twice", capsys)
    broken = write_run(tmp_path, "blend", 1)
    open(os.path.join(broken, "summary.json"), "w").write("{not json")
    expect_error([good, broken, *out], os.path.join(broken, "summary.json"), capsys)
    no_heldout = write_run(tmp_path, "wanet", 1, summary_stealth={"heldout": {"error": "no held-out split"},
                                                                   "train": {"total": 1.0}})
    expect_error([good, no_heldout, *out], "no held-out split", capsys)
    same_seed = write_run(tmp_path, "badnets", 0, **{"train.lr": 0.05})  # another directory, same run identity
    expect_error([good, same_seed, *out], "seed 0", capsys)
    assert not (tmp_path / "cmp").exists()  # nothing written on refusal


def test_cli_exit_code_and_single_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-m", "experiments.compare", str(tmp_path / "nope"), "--out",
                           str(tmp_path / "cmp")], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"compare: error: {tmp_path / 'nope'} is not a directory "
                                                "(expected a finished run directory)"]
