"""The MI monitor's options compared on a finished detection population.

``python -m experiments.monitor_variants --root ROOT [--attacks a,b] [--clean-runs N] [--runs-per-attack N]
[--first-seed S]``

Reads the runs of ``python -m experiments.detection`` (the same grid flags) and prints, for every
statistic x accumulation x variant of :func:`ibjax.metrics.detection.monitor_epoch_table`, each
attack's AUROC at every MI epoch: the measurement behind the monitor's defaults (docs/detection.md).
Trains nothing.
"""

from __future__ import annotations

import argparse

from ibjax.commands.detection import load_model
from ibjax.defenses.monitor import ACCUMULATIONS, STATISTICS
from ibjax.metrics.detection import MONITOR_VARIANTS, monitor_epoch_table
from ibjax.study.detection import detection_grid


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", required=True)
    p.add_argument("--attacks", default=None)
    p.add_argument("--clean-runs", type=int, default=None)
    p.add_argument("--runs-per-attack", type=int, default=None)
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--source", default="offline", choices=["offline", "online"])
    a = p.parse_args(argv)
    grid = detection_grid("cpu", attacks=a.attacks.split(",") if a.attacks else None, clean_runs=a.clean_runs,
                          runs_per_attack=a.runs_per_attack, first_seed=a.first_seed)
    models = [load_model(r, a.root) for r in grid]
    rows = []
    for variant in ("blind", "baseline"):  # the statistic varies below: "calibrated" is baseline + "clean"
        for statistic in STATISTICS:
            for accumulate in ACCUMULATIONS:
                if not MONITOR_VARIANTS[variant].against_clean and statistic == "clean":
                    continue  # "clean" reads against clean networks
                t = monitor_epoch_table(models, source=a.source, variant=variant, statistic=statistic,
                                        accumulate=accumulate)
                cells = " | ".join(f"{name} " + " ".join(f"{x:.2f}" for x in r["auroc"])
                                   for name, r in t["attacks"].items())
                print(f"{variant:8s} {statistic:6s} {accumulate:4s} | {cells}")
                rows.append(t)
    print("epochs:", rows[0]["epochs"])
    return rows


if __name__ == "__main__":
    main()
