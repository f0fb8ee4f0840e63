"""Run several attacks / poison ratios / seeds in sequence, then compare them.

``python -m experiments.sweep --attacks badnets,blend,wanet --ratios 0.1 --seeds 0 [study flags...]``
Any flag of experiments.study (except --out/--resume/--attack/--poison-ratio/--seed) applies to every
run. Finished runs are skipped, interrupted ones resumed.
"""

from __future__ import annotations

import argparse
import os

from experiments import compare, study


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--attacks", default="badnets,blend,wanet")
    p.add_argument("--ratios", default="0.1")
    p.add_argument("--seeds", default="0")
    p.add_argument("--root", default="runs/sweep")
    a, rest = p.parse_known_args(argv)
    run_dirs = []
    for attack in a.attacks.split(","):
        for ratio in a.ratios.split(","):
            for seed in a.seeds.split(","):
                d = os.path.join(a.root, f"{attack}_{ratio}_s{seed}")
                run_dirs.append(d)
                if os.path.exists(os.path.join(d, "summary.json")):
                    continue
                args = [*rest, "--attack", attack, "--poison-ratio", ratio, "--seed", seed]
                if os.path.exists(os.path.join(d, "config.json")):
                    study.main(["--resume", d])
                else:
                    study.main([*args, "--out", d])
    return compare.main([*run_dirs, "--out", os.path.join(a.root, "compare")])


if __name__ == "__main__":
    main()
