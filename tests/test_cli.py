"""Bad input through the real command line: one line ``error: ...`` naming the culprit, the exit
code, nothing left behind, nothing overwritten; and the run lifecycle of quickstart and sweep."""

import dataclasses
import json
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from PIL import Image
from tiny_config import TINY, short

from experiments import quickstart, study, sweep
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
    nan = _config_file(tmp_path, short(TINY, 1, train=dataclasses.replace(TINY.train, epochs=1, lr=1e12,
                                                                           schedule="constant")), "nan.json")
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
    data = ["--config", one, "--dataset", "toy", "--per-class-limit", "None"]
    return [
        (["--resume", str(tmp_path / "missing")], 2, "no such directory"),
        (["--resume", str(tmp_path / "plain")], 2, "holds no ibjax run"),
        ([*data, "--data-dir", str(corrupt)], 2, "corrupt.tar.gz"),
        ([*data, "--data-dir", str(tmp_path / "nowhere")], 2, "does not exist"),
        ([*data, "--data-dir", str(tmp_path / "empty")], 2, "empty directory"),
        ([*data, "--data-dir", str(stray)], 2, "labels.csv is not an image file"),
        ([*data, "--data-dir", str(archive)], 2, "labels.csv is not an image file"),
        ([*data, "--data-dir", str(broken)], 2, "cannot decode image"),
        ([*data, "--data-dir", str(no_test)], 2, "split 'test'"),
        (["--config", one, "--attack-options", "size", "abc"], 2, "size"),
        (["--config", one, "--attack-options", "size", "100"], 2, "size"),
        (["--config", one, "--attack-options", "sizes", "3"], 2, "sizes"),
        (["--config", one, "--poison.target", "12"], 2, "target class 12 out of range"),
        (["--config", one, "--mi-epochs", "5"], 2, "mi_epochs must lie in 1..1"),
        (["--config", one, "--train.epochs", "abc"], 2, "--train.epochs"),
        (["--config", one, "--attack", "trojan_horse"], 2, "trojan_horse"),
        (["--preset", "gpu"], 2, "unknown preset 'gpu'"),
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
    assert p.returncode == 2 and p.stderr.strip().splitlines() == ["error: train.epochs must be >= 1, got 0"]


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


def test_fast_cpu_compile_flags_only_for_cpu_runs_and_never_over_the_users_own(monkeypatch):
    from ibjax import cli

    monkeypatch.setattr(cli, "_jaxlib_version", lambda: cli._FAST_COMPILE_JAXLIB[0])
    monkeypatch.setattr(cli, "_accelerator_plugin_installed", lambda: False)
    env = {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_backend_optimization_level=3"}
    added = cli.fast_cpu_compile(env)
    assert "--xla_backend_optimization_level=1" not in added and "--xla_cpu_use_fusion_emitters=false" in added
    assert env["XLA_FLAGS"].split() == ["--xla_backend_optimization_level=3", *added]  # the user's setting kept
    assert cli.fast_cpu_compile(env) == () and env["XLA_FLAGS"].split()[0] == "--xla_backend_optimization_level=3"
    assert cli.fast_cpu_compile_flags({}) == cli.FAST_CPU_COMPILE_FLAGS  # no accelerator installed: CPU
    assert cli.fast_cpu_compile_flags({"JAX_PLATFORMS": "cuda"}) == ()
    assert cli.fast_cpu_compile_flags({"JAX_PLATFORMS": "cpu", "IBJAX_FAST_CPU_COMPILE": "0"}) == ()
    monkeypatch.setattr(cli, "_accelerator_plugin_installed", lambda: True)
    assert cli.fast_cpu_compile_flags({}) == ()  # JAX would pick the GPU: XLA's defaults
    assert cli.fast_cpu_compile_flags({"JAX_PLATFORMS": "cpu"}) == cli.FAST_CPU_COMPILE_FLAGS
    monkeypatch.setattr(cli, "_jaxlib_version", lambda: (99, 0))  # XLA would abort on an unknown flag
    assert cli.fast_cpu_compile_flags({"JAX_PLATFORMS": "cpu"}) == ()


def test_the_suite_runs_under_the_fast_compile_flags():
    # conftest.py applies them, so the comparisons in the suite and its subprocesses share one setting.
    from ibjax import cli

    for flag in cli.FAST_CPU_COMPILE_FLAGS:
        assert flag in os.environ["XLA_FLAGS"].split()


def test_cpu_malloc_settings_only_for_cpu_runs_on_glibc_and_never_over_the_users_own(monkeypatch):
    from ibjax import cli

    monkeypatch.setattr(cli, "_accelerator_plugin_installed", lambda: False)
    monkeypatch.setattr(cli.platform, "libc_ver", lambda: ("glibc", "2.36"))
    monkeypatch.setattr(cli.sys, "platform", "linux")
    assert cli.cpu_malloc_settings({}) == cli.CPU_MALLOC_SETTINGS
    assert cli.cpu_malloc_settings({"JAX_PLATFORMS": "cpu"}) == cli.CPU_MALLOC_SETTINGS
    assert cli.cpu_malloc_settings({"JAX_PLATFORMS": "cuda"}) == {}
    assert cli.cpu_malloc_settings({"IBJAX_CPU_MALLOC": "0"}) == {}
    assert cli.cpu_malloc_settings({"GLIBC_TUNABLES": "glibc.malloc.arena_max=4"}) == {}  # the user's own
    assert cli.cpu_malloc_settings({"MALLOC_ARENA_MAX": "4"}) == {}
    assert cli.cpu_malloc_settings({"GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX512F"}) == cli.CPU_MALLOC_SETTINGS
    monkeypatch.setattr(cli, "_accelerator_plugin_installed", lambda: True)
    assert cli.cpu_malloc_settings({}) == {}  # JAX would pick the GPU
    monkeypatch.setattr(cli, "_accelerator_plugin_installed", lambda: False)
    monkeypatch.setattr(cli.platform, "libc_ver", lambda: ("", ""))  # musl, or not Linux: no mallopt
    assert cli.cpu_malloc_settings({}) == {}


_REUSE_PROBE = """
import ctypes, json, resource, sys
from ibjax.cli import tune_cpu_malloc
applied = tune_cpu_malloc()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
size = 40 << 20  # above glibc's largest dynamic mmap threshold (32 MiB), as XLA's temporary buffers are
faults = []
for _ in range(3):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    p = libc.malloc(size)
    ctypes.memset(p, 1, size)
    libc.free(p)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"applied": applied, "faults": faults}))
"""


@pytest.mark.skipif(sys.platform != "linux" or __import__("platform").libc_ver()[0] != "glibc", reason="glibc only")
def test_tuned_malloc_reuses_a_freed_large_buffer_instead_of_faulting_it_in_again():
    def probe(switch):
        env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
        env.update(JAX_PLATFORMS="cpu", IBJAX_CPU_MALLOC=switch)
        out = subprocess.run([sys.executable, "-c", _REUSE_PROBE], env=env, capture_output=True, text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    tuned, plain = probe("1"), probe("0")
    pages = (40 << 20) // 4096
    assert plain["applied"] == {} and tuned["applied"] == {"M_MMAP_MAX": 0, "M_ARENA_MAX": 1,
                                                           "M_TRIM_THRESHOLD": 1 << 30}
    assert min(plain["faults"][1:]) > pages // 2  # glibc's default: mmap per allocation, every page new
    assert max(tuned["faults"][1:]) < pages // 10  # the freed block is reused from the heap
