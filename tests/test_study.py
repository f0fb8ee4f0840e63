"""The study runner end to end on a tiny configuration: files, resume after kill -9, errors."""

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from ibjax.mi import MIConfig
from ibjax.models import ModelConfig
from ibjax.poison import PoisonConfig
from ibjax.study import StudyConfig, config_from_dict, config_to_dict, run_study, validate
from ibjax.train import TrainConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_MI = MIConfig(epochs=6, batch_size=16, negatives=32, hidden=(16, 16), lr=1e-3, read_epochs=2, heldout_passes=1)
TINY = StudyConfig(
    dataset="mnist5k",
    per_class_limit=60,
    attack="badnets",
    poison=PoisonConfig(ratio=0.1),
    model=ModelConfig(name="small_cnn", gamma_xt=0.2, gamma_ty=0.2),
    train=TrainConfig(epochs=3, batch_size=32, lr=0.05, schedule="plateau", eval_batch_size=500),
    mi_epochs=(1, 3),
    xt=TINY_MI,
    ty=TINY_MI,
    feature_mode="bank",
    bank_draws=2,
    stealth_epochs=(1, 3),
    embed_epochs=(3,),
    embed_points=200,
)
TINY_ARGS = [
    "--dataset", "mnist5k", "--per-class-limit", "60", "--model", "small_cnn", "--gamma-xt", "0.2",
    "--gamma-ty", "0.2", "--epochs", "4", "--batch-size", "32", "--lr", "0.05", "--mi-epochs", "2,4",
    "--xt-epochs", "4", "--ty-epochs", "4", "--feature-mode", "bank", "--bank-draws", "2",
    "--stealth-epochs", "2,4", "--embed-epochs", "4", "--quiet", "--xt-batch-size", "16", "--xt-negatives", "32",
    "--ty-batch-size", "16", "--ty-negatives", "32", "--critic-hidden", "16,16",
]


def test_config_round_trips_through_json():
    d = json.loads(json.dumps(config_to_dict(TINY)))
    assert config_from_dict(d) == TINY


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run = str(tmp_path_factory.mktemp("tiny") / "run")
    return run, run_study(dataclasses.replace(TINY, mi_mode="both"), run, progress=False)


def test_tiny_run_writes_every_file(tiny_run):
    run, summary = tiny_run
    for name in ("config.json", "metrics.jsonl", "mi.json", "stealth.json", "clustering.json", "summary.md",
                 "summary.json", "embedding_3.npz"):
        assert os.path.getsize(os.path.join(run, name)) > 0, name
    for name in ("accuracy_asr", "class_loss", "mi_curves", "information_plane", "embedding_3", "mi_curves_online"):
        assert os.path.getsize(os.path.join(run, "plots", f"{name}.png")) > 5000, name
    records = [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl"))]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert {"train_accuracy", "test_accuracy", "asr", "class_loss", "lr", "wall_s"} <= set(records[0])
    mi = json.load(open(os.path.join(run, "mi.json")))
    assert set(mi) == {"xt", "ty", "xt_online", "ty_online"}
    assert len(mi["xt"]) == 13 and set(mi["xt"]["target"]) == {"1", "3"}
    assert set(mi["xt_online"]["target"]) == {"1", "2", "3"}  # online: every epoch
    assert all(math.isfinite(r["heldout"]) and r["train"] is None for r in mi["ty_online"]["target"].values())
    entry = mi["xt"]["class_1"]["3"]
    assert len(entry["trajectory"]) == 6 and entry["train"] <= entry["cap"] + 1e-5
    stealth = json.load(open(os.path.join(run, "stealth.json")))
    assert set(stealth["heldout"]["components"]) == {"xt/target_clean", "xt/target", "ty/target_clean", "ty/target"}
    assert summary["stealth"]["heldout"]["total"] == pytest.approx(sum(stealth["heldout"]["components"].values()))
    assert "target_backdoor" in json.load(open(os.path.join(run, "clustering.json")))["3"]
    assert "Online critics vs offline reads" in open(os.path.join(run, "summary.md")).read()


def test_compare_ranks_runs_and_writes_table_csv_and_chart(tiny_run, tmp_path):
    from experiments import compare

    run, summary = tiny_run
    out = str(tmp_path / "cmp")
    rows = compare.main([run, run, "--out", out])
    assert [r["rank"] for r in rows] == [1, 2]
    assert rows[0]["total"] == pytest.approx(summary["stealth"]["heldout"]["total"])
    csv_lines = open(os.path.join(out, "compare.csv")).read().splitlines()
    assert csv_lines[0].startswith("run,attack,dataset,test_accuracy,asr") and len(csv_lines) == 3
    assert "xt/target_clean" in open(os.path.join(out, "compare.md")).read()
    assert os.path.getsize(os.path.join(out, "stealth.png")) > 5000
    with pytest.raises(SystemExit, match="no summary.json"):
        compare.main([str(tmp_path), "--out", out])


def _study(args, **kw):
    env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}  # inherits conftest's compilation cache
    return subprocess.Popen([sys.executable, "-m", "experiments.study", *args], cwd=ROOT, env=env, **kw)


def test_kill_minus_nine_then_resume_matches_an_uninterrupted_run(tmp_path):
    ref, cut = str(tmp_path / "ref"), str(tmp_path / "cut")
    assert _study([*TINY_ARGS, "--out", ref]).wait() == 0
    p = _study([*TINY_ARGS, "--out", cut])
    metrics = os.path.join(cut, "metrics.jsonl")
    deadline = time.time() + 300
    while time.time() < deadline and p.poll() is None:  # kill during epoch 3, after two checkpoints
        if os.path.exists(metrics) and len(open(metrics).read().splitlines()) >= 2:
            break
        time.sleep(0.05)
    assert p.poll() is None, "the run finished before it could be killed"
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert _study(["--resume", cut, "--quiet"]).wait() == 0
    r_ref = [json.loads(x) for x in open(os.path.join(ref, "metrics.jsonl"))]
    r_cut = [json.loads(x) for x in open(metrics)]
    assert [r["epoch"] for r in r_cut] == [1, 2, 3, 4]  # nothing lost, nothing duplicated
    for a, b in zip(r_ref, r_cut):
        for k in ("train_accuracy", "test_accuracy", "asr", "train_loss", "lr"):
            assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-6), (a["epoch"], k)
    m_ref, m_cut = json.load(open(os.path.join(ref, "mi.json"))), json.load(open(os.path.join(cut, "mi.json")))
    for q in ("xt", "ty"):
        for g in m_ref[q]:
            for e in ("2", "4"):
                assert m_ref[q][g][e]["heldout"] == pytest.approx(m_cut[q][g][e]["heldout"], rel=1e-4, abs=1e-5)


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(attack="trojan_horse"), "unknown attack|known"),
        (dict(poison=PoisonConfig(ratio=1.2)), r"ratio must lie in \(0, 1\)"),
        (dict(mi_epochs=(3, 1)), "strictly increasing"),
        (dict(mi_epochs=(1, 9)), "must lie in 1..3"),
        (dict(mi_mode="sometimes"), "mi_mode"),
    ],
)
def test_bad_options_fail_before_any_work(tmp_path, change, match):
    with pytest.raises(ValueError, match=match):
        validate(dataclasses.replace(TINY, **change), str(tmp_path / "run"))


def test_target_out_of_range_unknown_dataset_and_small_groups_fail_early(tmp_path):
    t = time.time()
    with pytest.raises(ValueError, match="target_backdoor has 1 training samples .* at least 2"):
        run_study(dataclasses.replace(TINY, xt=dataclasses.replace(TINY_MI, heldout_fraction=0.99)), str(tmp_path / "c"),
                  progress=False)
    with pytest.raises(ValueError, match="target class 12 out of range"):
        run_study(dataclasses.replace(TINY, poison=PoisonConfig(target=12)), str(tmp_path / "a"), progress=False)
    with pytest.raises(ValueError):
        run_study(dataclasses.replace(TINY, dataset="no_such_dataset_xyz"), str(tmp_path / "b"), progress=False)
    assert time.time() - t < 30


def test_unwritable_output_directory(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    if os.access(ro, os.W_OK):  # running as root: permissions do not bind, use a path under a file instead
        target = str(tmp_path / "file" / "run")
        (tmp_path / "file").write_text("x")
    else:
        target = str(ro / "run")
    with pytest.raises(ValueError, match="not writable"):
        validate(TINY, target)


def test_nan_loss_stops_and_keeps_the_last_checkpoint(tmp_path):
    run = str(tmp_path / "run")
    cfg = dataclasses.replace(TINY, train=dataclasses.replace(TINY.train, lr=1e12, schedule="constant"), mi_epochs=(3,),
                              stealth_epochs=(3,), embed_epochs=())
    with pytest.raises(FloatingPointError, match="epoch"):
        run_study(cfg, run, progress=False)


def test_existing_run_needs_resume_and_a_run_without_heldout_split_keeps_the_train_read(tmp_path):
    run = str(tmp_path / "run")
    no_split = dataclasses.replace(TINY_MI, heldout_fraction=0.0)
    cfg = dataclasses.replace(TINY, train=dataclasses.replace(TINY.train, epochs=1), mi_epochs=(1,), stealth_epochs=(1,),
                              embed_epochs=(), xt=no_split, ty=no_split)
    summary = run_study(cfg, run, progress=False)
    assert "error" in summary["stealth"]["heldout"] and np.isfinite(summary["stealth"]["train"]["total"])
    with pytest.raises(ValueError, match="--resume"):
        run_study(cfg, run, progress=False)
    with pytest.raises(ValueError, match="different configuration"):
        run_study(dataclasses.replace(cfg, seed=1), run, resume=True, progress=False)


def test_label_consistent_run_precomputes_pgd_perturbations_of_target_samples_only(tmp_path):
    run = str(tmp_path / "lc")
    small_mi = dataclasses.replace(TINY_MI, batch_size=8, negatives=16)
    cfg = dataclasses.replace(TINY, attack="label_consistent", poison=PoisonConfig(ratio=0.25), pgd_steps=3,
                              xt=small_mi, ty=small_mi,
                              train=dataclasses.replace(TINY.train, epochs=1), mi_epochs=(1,), stealth_epochs=(1,),
                              embed_epochs=())
    summary = run_study(cfg, run, progress=False)
    pert = np.load(os.path.join(run, "lc_perturbations.npy")).astype(np.float32)
    assert pert.shape == (15, 28, 28, 1)  # 25% of the 60 target-class samples
    norms = np.sqrt((pert.reshape(15, -1) ** 2).sum(1))
    assert (norms > 0).all() and (norms <= 300 / 255 + 1e-2).all()  # inside the L2 ball
    assert 0.0 <= summary["asr"] <= 1.0


def test_trojannn_run_optimises_its_patch_against_a_clean_model(tmp_path):
    from ibjax.triggers import StaticArray, TrojanNNParams, get_attack, trojannn

    run = str(tmp_path / "trojannn")
    cfg = dataclasses.replace(TINY, attack="trojannn", attack_options=(("steps", 20),),
                              train=dataclasses.replace(TINY.train, epochs=1), mi_epochs=(1,), stealth_epochs=(1,),
                              embed_epochs=())
    run_study(cfg, run, progress=False)
    pattern = np.load(os.path.join(run, "trigger_pattern.npy"))
    start = TrojanNNParams()
    assert pattern.shape == (28, 28, 1) and pattern.min() >= 0 and pattern.max() <= 1
    assert not np.allclose(pattern[:5, :5], np.asarray(trojannn(np.zeros((28, 28, 1), np.float32), start))[:5, :5])
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
    args = [
        "--dataset", str(archive), "--model", "small_cnn", "--epochs", "1", "--batch-size", "16", "--lr", "0.05",
        "--mi-epochs", "1", "--xt-epochs", "2", "--ty-epochs", "2", "--xt-batch-size", "8", "--xt-negatives", "16",
        "--ty-batch-size", "8", "--ty-negatives", "16", "--critic-hidden", "8,8", "--feature-mode", "bank",
        "--bank-draws", "2", "--stealth-epochs", "1", "--quiet", "--out", str(tmp_path / "run"),
    ]
    out = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.load(open(tmp_path / "run" / "summary.json"))
    assert summary["epochs"] == 1 and summary["test_accuracy"] is not None
