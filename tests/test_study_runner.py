"""run_study end to end on a tiny configuration: files, history, resume after kill -9, extending a
run, failures, the attacks that need a clean model first, and life without TFDS or mlxtend."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from tiny_config import TINY, TINY_MI, short

from ibjax import metrics
from ibjax.fields import override
from ibjax.mi import resolve_config
from ibjax.poison import PoisonConfig
from ibjax.study import check_config, config_to_dict, run_study

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BOTH = override(TINY, {"mi.mode": "both"})


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run = str(tmp_path_factory.mktemp("tiny") / "run")
    return run, run_study(BOTH, run, progress=False)


def test_tiny_run_writes_every_file(tiny_run):
    run, summary = tiny_run
    for name in ("run.json", "config.json", "metrics.jsonl", "mi.json", "stealth.json", "clustering.json", "summary.md",
                 "summary.json", "embedding_3.npz"):
        assert os.path.getsize(os.path.join(run, name)) > 0, name
    for name in ("accuracy_asr", "class_loss", "mi_curves", "information_plane", "embedding_3", "mi_curves_online"):
        assert os.path.getsize(os.path.join(run, "plots", f"{name}.png")) > 5000, name
    manifest = json.load(open(os.path.join(run, "run.json")))
    assert manifest["finished"] and manifest["epoch"] == 3
    assert set(os.listdir(run)) <= set(manifest["files"]) | {"run.json"}  # everything there is ibjax's
    records = [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl"))]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert {"train_accuracy", "test_accuracy", "asr", "class_loss", "lr", "lr_last", "wall_s"} <= set(records[0])
    mi = json.load(open(os.path.join(run, "mi.json")))
    assert set(mi) == {"xt", "ty", "xt_online", "ty_online"}
    assert len(mi["xt"]) == 13 and set(mi["xt"]["target"]) == {"1", "3"}
    assert set(mi["xt_online"]["target"]) == {"1", "2", "3"}  # online: every epoch
    assert all(math.isfinite(r["heldout"]) for r in mi["ty_online"]["target"].values())
    entry = mi["xt"]["class_1"]["3"]
    assert len(entry["trajectory"]) == 6 and entry["train"] <= entry["cap"] + 1e-5
    assert {"heldout", "heldout_se", "converged"} <= set(entry)
    stealth = json.load(open(os.path.join(run, "stealth.json")))
    assert set(stealth["heldout"]["components"]) == {"xt/target_clean", "xt/target", "ty/target_clean", "ty/target"}
    assert stealth["heldout"]["epochs"] == [1, 3] and stealth["heldout"]["normalise"] == "per_epoch"
    assert summary["stealth"]["heldout"]["total"] == pytest.approx(sum(stealth["heldout"]["components"].values()))
    assert "target_backdoor" in json.load(open(os.path.join(run, "clustering.json")))["3"]
    text = open(os.path.join(run, "summary.md")).read()
    assert "Online critics vs offline reads" in text and "peak host memory" in text
    assert summary["memory"]["peak_host_rss_mib"] > 0


def test_a_finished_run_is_read_again_not_recomputed(tiny_run):
    run, summary = tiny_run
    t = time.perf_counter()
    again = run_study(BOTH, run, resume="auto", progress=False)
    assert again["stealth"]["heldout"]["total"] == pytest.approx(summary["stealth"]["heldout"]["total"])
    assert again["test_accuracy"] == summary["test_accuracy"]
    assert time.perf_counter() - t < 60  # no training: data, set-up, finalize


def _study(args, **kw):
    env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}  # inherits conftest's compilation cache
    return subprocess.Popen([sys.executable, "-m", "experiments.study", *args], cwd=ROOT, env=env, **kw)


def test_kill_minus_nine_then_resume_matches_an_uninterrupted_run(tiny_run, tmp_path):
    ref, _ = tiny_run
    cut = str(tmp_path / "cut")
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(config_to_dict(BOTH)))
    p = _study(["--config", str(config), "--out", cut, "--quiet"])
    metrics = os.path.join(cut, "metrics.jsonl")
    deadline = time.time() + 300
    while time.time() < deadline and p.poll() is None:  # kill during epoch 2 or 3, after a checkpoint
        if os.path.exists(metrics) and len(open(metrics).read().splitlines()) >= 1:
            break
        time.sleep(0.05)
    assert p.poll() is None, "the run finished before it could be killed"
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert _study(["--resume", cut, "--quiet"]).wait() == 0
    r_ref = [json.loads(x) for x in open(os.path.join(ref, "metrics.jsonl"))]
    r_cut = [json.loads(x) for x in open(metrics)]
    assert [r["epoch"] for r in r_cut] == [1, 2, 3]  # nothing lost, nothing duplicated
    for a, b in zip(r_ref, r_cut):
        for k in ("train_accuracy", "test_accuracy", "asr", "train_loss", "lr"):
            assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-5), (a["epoch"], k)
    m_ref, m_cut = json.load(open(os.path.join(ref, "mi.json"))), json.load(open(os.path.join(cut, "mi.json")))
    for q in ("xt", "ty"):
        for g in m_ref[q]:
            for e in ("1", "3"):
                assert m_ref[q][g][e]["heldout"] == pytest.approx(m_cut[q][g][e]["heldout"], rel=1e-3, abs=1e-3)
    for g in m_ref["xt_online"]:
        for e in ("1", "2", "3"):
            assert m_ref["xt_online"][g][e]["heldout"] == pytest.approx(m_cut["xt_online"][g][e]["heldout"],
                                                                        rel=1e-3, abs=1e-3)


def test_resume_extends_a_run_explicitly_and_refuses_other_changes(tmp_path):
    run = str(tmp_path / "run")
    one = short(TINY, 1)
    run_study(one, run, progress=False)
    with pytest.raises(ValueError, match=r"seed: 0 -> 1.*start a new run"):
        run_study(override(one, {"seed": 1}), run, resume=True, progress=False)
    with pytest.raises(ValueError, match=r"mi\W+epochs"):  # an MI epoch already passed cannot be dropped
        run_study(override(one, {"mi.epochs": ()}), run, resume=True, progress=False)
    two = override(one, {"train.epochs": 2, "mi.epochs": (1, 2), "analysis.stealth.epochs": (1, 2)})
    summary = run_study(two, run, resume=True, progress=False)
    assert summary["epochs"] == 2 and json.load(open(os.path.join(run, "config.json")))["train"]["epochs"] == 2
    assert set(json.load(open(os.path.join(run, "mi.json")))["xt"]["target"]) == {"1", "2"}
    with pytest.raises(ValueError, match="already holds a finished run"):
        run_study(two, run, progress=False)


def test_nan_loss_fails_and_a_start_without_checkpoint_leaves_nothing(tmp_path):
    run = tmp_path / "run"
    cfg = short(TINY, 2, **{"train.lr": 1e12, "train.schedule": "constant"})
    with pytest.raises(FloatingPointError, match="epoch 1: the training loss is not finite"):
        run_study(cfg, str(run), progress=False)
    assert not run.exists()


def test_a_run_without_heldout_split_keeps_the_train_read(tmp_path):
    no_split = resolve_config(TINY_MI, heldout_fraction=0.0)
    summary = run_study(short(TINY, 1, **{"mi.xt": no_split, "mi.ty": no_split}), str(tmp_path / "run"), progress=False)
    assert "error" in summary["stealth"]["heldout"] and np.isfinite(summary["stealth"]["train"]["total"])


def test_label_consistent_run_precomputes_pgd_perturbations_of_target_samples_only(tmp_path):
    run = str(tmp_path / "lc")
    small_mi = resolve_config(TINY_MI, batch_size=8, negatives=16)
    cfg = short(TINY, 1, **{"attack.name": "label_consistent", "poison": PoisonConfig(ratio=0.25), "mi.xt": small_mi,
                        "mi.ty": small_mi, "attack.options": (("pgd_steps", "3"),)})
    summary = run_study(cfg, run, progress=False)
    pert = np.load(os.path.join(run, "attack_precomputed.npy")).astype(np.float32)
    assert pert.shape == (15, 28, 28, 1)  # 25% of the 60 target-class samples
    norms = np.sqrt((pert.reshape(15, -1) ** 2).sum(1))
    assert (norms > 0).all() and (norms <= 300 / 255 + 1e-2).all()  # inside the L2 ball
    assert 0.0 <= summary["asr"] <= 1.0


def test_trojannn_run_optimises_its_patch_against_a_clean_model(tmp_path):
    from ibjax.triggers import StaticArray, TrojanNNParams, get_attack, trojannn

    run = str(tmp_path / "trojannn")
    run_study(short(TINY, 1, **{"attack.name": "trojannn", "attack.options": (("steps", "20"),)}), run, progress=False)
    pattern = np.load(os.path.join(run, "attack_precomputed.npy"))
    assert pattern.shape == (28, 28, 1) and pattern.min() >= 0 and pattern.max() <= 1
    start = np.asarray(trojannn(np.zeros((28, 28, 1), np.float32), TrojanNNParams()))
    assert not np.allclose(pattern[:5, :5], start[:5, :5])
    # The run's poisoned samples carry the optimised patch.
    attack = get_attack("trojannn", steps=20, pattern=pattern)
    x = np.full((1, 28, 28, 1), 0.5, np.float32)
    np.testing.assert_allclose(np.asarray(attack.train_trigger(x, None))[0, :5, :5], pattern[:5, :5])
    assert attack.train_params.pattern == StaticArray.of(pattern)


# The GPU machines have jax, flax, optax, orbax, matplotlib and PIL but neither TFDS nor mlxtend, and
# no internet: the study on an image archive and both benchmarks must run there without them.
_BLOCKER = '''
import importlib.abc, sys
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow_datasets", "mlxtend"):
            raise ModuleNotFoundError(f"{name} is not installed on this machine (blocked by the test)")
sys.meta_path.insert(0, _Block())
'''


def test_study_and_benchmarks_run_without_tfds_or_mlxtend(tmp_path):
    import tarfile

    from PIL import Image

    rng = np.random.default_rng(0)
    root = tmp_path / "toy"
    for split, n in (("train", 80), ("test", 10)):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            for k in range(n):
                Image.fromarray(rng.integers(0, 256, (8, 8, 3), np.uint8)).save(root / split / cls / f"{k}.png")
    archive = tmp_path / "toy.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root, arcname="toy")
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(_BLOCKER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), ROOT]), "JAX_PLATFORMS": "cpu",
           "IBJAX_CACHE": str(tmp_path / "cache")}
    code = (
        "import sys, benchmarks.train_throughput, benchmarks.estimator_throughput\n"
        "from experiments.study import main\n"
        "assert 'tensorflow_datasets' not in sys.modules and 'mlxtend' not in sys.modules\n"
        "main(sys.argv[1:])\n"
    )
    small_mi = resolve_config(TINY_MI, epochs=2, batch_size=8, negatives=16, read_epochs=1)
    config = override(short(TINY, 1), {"data.name": str(archive), "data.per_class_limit": None,
                                       "train.batch_size": 16, "mi.xt": small_mi, "mi.ty": small_mi})
    cfg_path = tmp_path / "c.json"
    cfg_path.write_text(json.dumps(config_to_dict(config)))
    args = ["--config", str(cfg_path), "--quiet", "--out", str(tmp_path / "run")]
    out = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.load(open(tmp_path / "run" / "summary.json"))
    assert summary["epochs"] == 1 and summary["test_accuracy"] is not None


def test_a_third_quantity_is_one_registry_entry_and_moves_no_other_estimate(tmp_path):
    base = short(TINY, 1)
    with_xy = override(base, {"mi.quantities": ("xt", "ty", "xy")})
    quiet = dict(progress=False, plots=False)
    run_study(base, str(tmp_path / "two"), **quiet)
    run_study(with_xy, str(tmp_path / "three"), **quiet)
    two, three = (json.load(open(tmp_path / d / "mi.json")) for d in ("two", "three"))
    assert set(two) == {"xt", "ty"} and set(three) == {"xt", "ty", "xy"}
    for q in ("xt", "ty"):  # the same keys whatever else is estimated
        for g, per in two[q].items():
            assert three[q][g]["1"]["train"] == pytest.approx(per["1"]["train"], rel=1e-6, abs=1e-7), (q, g)
    assert set(three["xy"]) == set(three["xt"]) and math.isfinite(three["xy"]["target"]["1"]["train"])
    assert "I(X;Y_pred)" in open(tmp_path / "three" / "summary.md").read()
    dpi = metrics.data_processing_check(three)  # every group at the MI epoch is checked
    assert dpi["checked"] == len(three["xt"]) and set(dpi["groups"]) == set(three["xt"])
    with pytest.raises(ValueError, match="distinct quantities"):
        check_config(override(base, {"mi.quantities": ("xt", "xt")}))
