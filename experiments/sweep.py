"""Several runs (attacks x poison ratios x seeds) with one shared protocol, then their comparison.

``python -m experiments.sweep --attacks badnets,blend,wanet --ratios 0.1 --seeds 0,1,2 [--root runs/sweep]
[study flags: --preset, --config and any StudyConfig field]``

Each run lives in ``ROOT/<attack>_<ratio>_s<seed>``. A finished run is read, not recomputed; an
interrupted one is resumed (with the sweep's flags, which may only extend it); one whose start
failed before its first checkpoint starts again with the current flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import os

from experiments import compare
from ibjax.cli import cli_errors, fail, parse_study_command, setup_logging
from ibjax.study import check_config, run_study


def _list(s: str, cast):
    try:
        return [cast(x) for x in s.split(",") if x.strip()]
    except ValueError:
        fail(f"expected a comma-separated list, got {s!r}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], add_help=True)
    p.add_argument("--attacks", default="badnets,blend,wanet", help="comma-separated attacks (default: %(default)s)")
    p.add_argument("--ratios", default="0.1", help="comma-separated poison ratios (default: %(default)s)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds (default: %(default)s)")
    p.add_argument("--root", default="runs/sweep", help="directory of the runs (default: %(default)s)")
    a, rest = p.parse_known_args(argv)
    if any(flag in rest for flag in ("--out", "--resume", "--fresh")):
        fail("the sweep names its run directories itself (ROOT/<attack>_<ratio>_s<seed>): drop --out/--resume/--fresh")
    cmd = parse_study_command(rest)
    setup_logging(cmd.quiet)
    base = cmd.study
    plan = [(attack, ratio, seed) for attack in _list(a.attacks, str) for ratio in _list(a.ratios, float)
            for seed in _list(a.seeds, int)]
    configs = []
    for attack, ratio, seed in plan:
        config = dataclasses.replace(base, attack=attack, seed=seed, poison=dataclasses.replace(base.poison, ratio=ratio))
        configs.append((config, os.path.join(a.root, f"{attack}_{ratio}_s{seed}")))
    run_dirs = []
    with cli_errors():
        for config, _ in configs:  # every run's options are checked before the first one starts
            check_config(config)
        for config, run_dir in configs:
            run_study(config, run_dir, resume="auto", progress=not cmd.quiet)
            run_dirs.append(run_dir)
    return compare.main([*run_dirs, "--out", os.path.join(a.root, "compare")])


if __name__ == "__main__":
    main()
