"""Cross-attack comparison: ``python -m experiments.compare RUN_DIR... [--out DIR]``.

Writes compare.md and compare.csv (clean accuracy, ASR, stealthiness total and its four components,
rank; lower stealthiness = more stealthy = rank 1) and a bar chart.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys

from ibjax import plots


def load_rows(run_dirs, read: str = "heldout") -> list[dict]:
    rows = []
    for d in run_dirs:
        path = os.path.join(d, "summary.json")
        if not os.path.exists(path):
            sys.exit(f"error: {d!r} has no summary.json (is it a finished run directory?)")
        with open(path) as f:
            s = json.load(f)
        st = s["stealth"].get(read) or {}
        rows.append({"run": d, "attack": s["attack"], "dataset": s["dataset"], "test_accuracy": s["test_accuracy"],
                     "asr": s["asr"], **st.get("components", {}), "total": st.get("total", float("nan"))})
    order = sorted(range(len(rows)), key=lambda i: rows[i]["total"])
    for rank, i in enumerate(order, 1):
        rows[i]["rank"] = rank
    return sorted(rows, key=lambda r: r["rank"])


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("runs", nargs="+")
    p.add_argument("--out", default="runs/compare")
    p.add_argument("--read", default="heldout", choices=["heldout", "train"])
    a = p.parse_args(argv)
    rows = load_rows(a.runs, a.read)
    os.makedirs(a.out, exist_ok=True)
    keys = list(rows[0].keys())
    with open(os.path.join(a.out, "compare.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    md = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)] + ["| " + " | ".join(fmt(r[k]) for k in keys) + " |" for r in rows]
    with open(os.path.join(a.out, "compare.md"), "w") as f:
        f.write(f"Stealthiness ({a.read} read; lower = more stealthy)\n\n" + "\n".join(md) + "\n")
    plots.plot_stealth_comparison(rows, os.path.join(a.out, "stealth.png"))
    print("\n".join(md))
    return rows


if __name__ == "__main__":
    main()
