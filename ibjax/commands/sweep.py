"""Several runs (attacks x poison ratios x seeds) with one shared protocol, then their comparison.

``python -m experiments.sweep --attacks badnets,blend,wanet --ratios 0.1 --seeds 0,1,2 [--root runs/sweep]
[--no-populations] [--max-population N] [study flags: --preset, --config, --devices, any StudyConfig field]``

Each run lives in ``ROOT/<attack>_<ratio>_s<seed>``. A finished run is read, not recomputed; an
interrupted one is resumed (with the sweep's flags, which may only extend it); one whose start
failed before its first checkpoint starts again with the current flags.

Runs that differ only in seed, poison ratio or noise level train together as one population
(:mod:`ibjax.study.population`: one vmapped program over every device, each run still in its own
directory, with the results it has alone); other runs (a different attack, TrojanNN, whose pattern
is per run) run one after another.

Many hosts: start the same command on every host (or process) with ``--process-index I
--process-count N`` (default: the usual ``JAX_PROCESS_ID`` / ``JAX_NUM_PROCESSES`` variables). The
runs are divided over the processes (round robin); each process computes its share on its own
devices and writes those runs' directories, and the last process to finish writes the comparison
(the run directories must be on a file system all processes share for that last step). A sweep's
runs never communicate, so its processes do not join a JAX distributed runtime: Orbax (0.12)
coordinates every checkpoint across all processes of an initialised runtime and cannot save a run
that one process holds alone. One study across hosts is ``experiments.study`` in a runtime.

From a checkout: ``python -m experiments.sweep``; installed: ``python -m ibjax sweep`` (the same
flags).
"""

from __future__ import annotations

import argparse
import os

from ibjax.cli import cli_errors, comma_list, fail, parse_study_command, setup_logging
from ibjax.commands import compare
from ibjax.fields import override
from ibjax.parallel import process_share
from ibjax.progress import LOGGER
from ibjax.runtime import prepare_cpu_process
from ibjax.study import check_config
from ibjax.study.rundir import RunDirectory
from ibjax.study.runner import run_many


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], add_help=True)
    p.add_argument("--attacks", default="badnets,blend,wanet", help="comma-separated attacks (default: %(default)s)")
    p.add_argument("--ratios", default="0.1", help="comma-separated poison ratios (default: %(default)s)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds (default: %(default)s)")
    p.add_argument("--root", default="runs/sweep", help="directory of the runs (default: %(default)s)")
    p.add_argument("--no-populations", action="store_true",
                   help="run every study on its own, never as a population (a runtime option: same results)")
    p.add_argument("--max-population", type=int, default=8,
                   help="most runs in one population (device memory grows with it; default: %(default)s)")
    p.add_argument("--process-index", type=int, default=None,
                   help="this process's index among the sweep's processes (default: $JAX_PROCESS_ID or 0)")
    p.add_argument("--process-count", type=int, default=None,
                   help="number of processes sharing the sweep (default: $JAX_NUM_PROCESSES or 1)")
    a, rest = p.parse_known_args(argv)
    if any(flag in rest for flag in ("--out", "--resume", "--fresh")):
        fail("the sweep names its run directories itself (ROOT/<attack>_<ratio>_s<seed>): drop --out/--resume/--fresh")
    if a.max_population < 1:
        fail(f"--max-population must be >= 1, got {a.max_population}")
    index, count = _process(a)
    cmd = parse_study_command(rest)
    if cmd.distributed == "on":
        fail("a sweep divides its runs over independent processes (--process-index/--process-count) and does not "
             "join a distributed runtime: drop --distributed on (one study across hosts: experiments.study)")
    setup_logging(cmd.quiet)
    prepare_cpu_process()  # before JAX starts its backend
    base = cmd.study
    plan = [(attack, ratio, seed) for attack in comma_list(a.attacks, str, "attacks") for ratio in comma_list(a.ratios, float, "ratios")
            for seed in comma_list(a.seeds, int, "seeds")]
    run_dirs = [os.path.join(a.root, f"{attack}_{ratio}_s{seed}") for attack, ratio, seed in plan]
    with cli_errors():
        configs = [override(base, {"attack.name": attack, "seed": seed, "poison.ratio": ratio})
                   for attack, ratio, seed in plan]
        for config in configs:  # every run's options are checked before the first one starts
            check_config(config)
        mine = process_share(range(len(configs)), index, count)
        run_many([configs[i] for i in mine], [run_dirs[i] for i in mine], max_population=a.max_population,
                 populations=not a.no_populations, progress=not cmd.quiet, devices=cmd.devices,
                 writers=cmd.writers)
    if count > 1 and not all((RunDirectory(d).manifest() or {}).get("finished") for d in run_dirs):
        LOGGER.info("process %d of %d: its %d runs are done; the last process to finish writes the comparison",
                    index, count, len(mine))
        return None
    lock = os.path.join(a.root, ".compare-lock")
    try:  # with several processes, the ones finishing together write the comparison once
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return None
    os.close(fd)
    try:
        return compare.main([*run_dirs, "--out", os.path.join(a.root, "compare")])
    finally:
        os.remove(lock)


def _process(a) -> tuple[int, int]:
    try:
        count = a.process_count if a.process_count is not None else int(os.environ.get("JAX_NUM_PROCESSES", 1))
        index = a.process_index if a.process_index is not None else int(os.environ.get("JAX_PROCESS_ID", 0))
    except ValueError as e:
        fail(f"JAX_NUM_PROCESSES and JAX_PROCESS_ID must be integers ({e})")
    if count < 1 or not 0 <= index < count:
        fail(f"--process-index must lie in 0..{count - 1} (--process-count {count}), got {index}")
    return index, count


if __name__ == "__main__":
    main()
