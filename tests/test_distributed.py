"""Many processes: two local CPU processes form one JAX distributed runtime (gloo collectives) and run
a tiny study over both processes' devices through the real command line; its results equal the same
study run by this (single) process. And a sweep divided over two independent processes."""

import json
import os
import socket
import subprocess
import sys

import jax
import pytest
from _scale_worker import ONE, ROOT, run_differences, subprocess_env

from ibjax.commands import sweep
from ibjax.parallel import initialize_distributed
from ibjax.study import config_to_dict, run_study


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_form_one_runtime_and_match_the_single_process_study(tmp_path):
    port = _free_port()
    worker = os.path.join(ROOT, "tests", "_scale_worker.py")
    procs = [subprocess.Popen([sys.executable, worker, "distributed", str(tmp_path)], cwd=ROOT,
                              env=subprocess_env(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
                                                 JAX_PROCESS_ID=str(i)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    try:
        outs = [p.communicate(timeout=900) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-4000:]
    for i in range(2):
        done = json.load(open(tmp_path / f"done_{i}.json"))
        assert done == {**done, "process_count": 2, "global_devices": 2, "local_devices": 1, "initialized": True}
    printed = [out[out.find("{"):out.rfind("}") + 1] for out, _ in outs]
    assert json.loads(printed[0])["run_dir"] == str(tmp_path / "global")  # the summary printed once, by process 0
    assert printed[1] == ""
    # The single-process reference: the same study on this process's one device.
    reference = str(tmp_path / "single")
    run_study(ONE, reference, devices=1, progress=False, plots=False)
    assert run_differences(reference, str(tmp_path / "global"), epochs=(1,)) == []
    manifest = json.load(open(tmp_path / "global" / "run.json"))
    assert manifest["finished"] and manifest["epoch"] == 1


def test_the_environment_decides_whether_to_join_a_runtime():
    info = initialize_distributed("auto", env={})
    assert (info.process_count, info.initialized) == (jax.process_count(), False)
    with pytest.raises(ValueError, match="JAX_NUM_PROCESSES, JAX_PROCESS_ID missing"):
        initialize_distributed("auto", env={"JAX_COORDINATOR_ADDRESS": "127.0.0.1:1"})
    with pytest.raises(ValueError, match="must be integers"):
        initialize_distributed("auto", env={"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "two",
                                            "JAX_PROCESS_ID": "0"})
    with pytest.raises(ValueError, match=r"JAX_PROCESS_ID \(2\) must lie in 0..JAX_NUM_PROCESSES-1 \(1\)"):
        initialize_distributed("auto", env={"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2",
                                            "JAX_PROCESS_ID": "2"})
    # One process named by the environment: nothing to join.
    one = initialize_distributed("auto", env={"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "1",
                                              "JAX_PROCESS_ID": "0"})
    assert not one.initialized


def test_a_sweep_divides_its_runs_over_processes_and_the_last_one_compares(tmp_path, capsys):
    # Two processes' shares, run one after the other here: each writes only its own runs, and only
    # the process that finds every run finished writes the comparison.
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps(config_to_dict(ONE)))
    root = tmp_path / "sweep"
    args = ["--attacks", "badnets", "--seeds", "0,1", "--root", str(root), "--config", str(cfg), "--quiet",
            "--process-count", "2"]
    assert sweep.main(args + ["--process-index", "1"]) is None  # seed 1 only, no comparison yet
    assert sorted(os.listdir(root)) == ["badnets_0.1_s1"]
    assert sweep.main(args + ["--process-index", "0"]) is not None  # seed 0, then the comparison
    assert sorted(os.listdir(root)) == ["badnets_0.1_s0", "badnets_0.1_s1", "compare"]
    with pytest.raises(SystemExit) as e:
        sweep.main(args + ["--process-index", "2"])
    assert e.value.code == 2 and "--process-index must lie in 0..1" in capsys.readouterr().err
