"""One run of the study: ``python -m experiments.study [--preset NAME] [--config FILE] [flags]``.

Every field of :class:`ibjax.study.StudyConfig` is a flag with its default (``--help``); presets:
default (SPEC.md's protocol with ibjax's estimator), reference (the authors' code exactly), fast (a
GPU), cpu (a small mnist5k run for 2 CPU cores: the quickstart; its measured time is in
docs/measurements.md). ``--resume RUN_DIR`` continues an interrupted run.

The run is data-parallel over every device (``--devices N`` for fewer); in a distributed runtime
(``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``, or ``--distributed on`` on a
TPU pod / SLURM) every process runs this same command and the study spans all hosts' devices;
process 0 writes the run directory.

From a checkout: ``python -m experiments.study``; installed: ``python -m ibjax study`` (the same
flags).
"""

from __future__ import annotations

import json

import jax

from ibjax.cli import cli_errors, default_run_dir, parse_study_command, setup_logging, start_runtime
from ibjax.runtime import prepare_cpu_process
from ibjax.study import run_study


def main(argv=None) -> dict:
    cmd = parse_study_command(argv)
    setup_logging(cmd.quiet)
    prepare_cpu_process()  # before JAX starts its backend
    start_runtime(cmd)
    run_dir = cmd.resume or cmd.out or default_run_dir(cmd.study)
    with cli_errors():
        summary = run_study(cmd.study, run_dir, resume=bool(cmd.resume), fresh=cmd.fresh, progress=not cmd.quiet,
                            devices=cmd.devices, writers=cmd.writers)
    if jax.process_index() != 0:
        return summary
    st = summary["stealth"].get(cmd.study.analysis.stealth.read, {})
    print(json.dumps({"run_dir": summary["run_dir"], "test_accuracy": summary["test_accuracy"], "asr": summary["asr"],
                      f"stealth_total_{cmd.study.analysis.stealth.read}": st.get("total"), "wall_s": round(summary["wall_s"], 1)},
                     indent=1))
    return summary


if __name__ == "__main__":
    main()
