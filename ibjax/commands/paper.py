"""The paper, reproduced: its grid of runs, its figures, the stealthiness table and the claims table.

``python -m experiments.paper [--scale cpu|gpu] [--root DIR] [--seeds 0,1,2] [--variants a,b]
[--datasets d] [--epochs N] [--report-only] [study flags: --preset reference, any StudyConfig field]``

The grid (:mod:`ibjax.study.paper`): BadNets, Blend, WaNet, Adaptive-Blend (10%), label-consistent
(10% and 25% of the target class) at noise 0.4, Blend also at 0.1, on the scale's data sets, for
each seed. ``--scale cpu`` (default) is mnist5k with the small CNN, about an hour on 2 CPU cores;
``--scale gpu`` is CIFAR-10 and SVHN with ResNet-18 for 120 epochs (``--variants blend --seeds 0
--epochs 10`` fits one 10-minute device call). Study flags change every run (e.g. ``--model.name
vgg16``); the grid's own fields (data set, attack, ratio, noise, seed) are its own.

Each run lives in ``ROOT/<dataset>/<variant>_noise<level>_s<seed>``: a finished run is read, an
interrupted one resumed; compatible runs train as populations. Then, under ``ROOT/report``:
``paper.md`` (everything below, with the runs' wall times), and per data set ``claims.md`` /
``claims.json`` / ``claims.csv`` (each claim's verdict and the numbers behind it),
``stealth_heldout/`` and ``stealth_train/`` (the stealthiness table of each read: four components,
seed intervals, the ranking with its within-noise marks; CSV and a chart) and ``figures/<variant>/``
(the seed mean's MI curves of every group and its information plane; the first seed's embeddings of
T at the training phases). ``--report-only`` writes the report from the finished runs alone.

From a checkout: ``python -m experiments.paper``; installed: ``python -m ibjax paper`` (the same flags).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from typing import Any, Sequence

import numpy as np

from ibjax import metrics
from ibjax.cli import cli_errors, comma_list, fail, grid_changes, parse_study_command, setup_logging
from ibjax.commands import compare
from ibjax.metrics.claims import VERDICTS, claims_markdown, evaluate_claims
from ibjax.progress import LOGGER
from ibjax.runtime import prepare_cpu_process
from ibjax.study import check_config
from ibjax.study.config import config_from_dict
from ibjax.study.paper import MAIN_NOISE, LOW_NOISE, PAPER_VARIANTS, SCALES, GridRun, claim_run, paper_grid
from ibjax.study.rundir import RunDirectory
from ibjax.study.runner import run_many


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", default="cpu", choices=list(SCALES), help="the grid's scale (default: %(default)s)")
    p.add_argument("--root", default=None, help="directory of the runs and the report (default: runs/paper-SCALE)")
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default: the scale's, 0,1,2)")
    p.add_argument("--variants", default=None,
                   help=f"comma-separated variants (default: all: {','.join(PAPER_VARIANTS)})")
    p.add_argument("--datasets", default=None, help="comma-separated data sets (default: the scale's)")
    p.add_argument("--epochs", type=int, default=None,
                   help="train this many epochs, MI and metric epochs scaled along (default: the scale's)")
    p.add_argument("--max-population", type=int, default=8, help="most runs in one population (default: %(default)s)")
    p.add_argument("--no-populations", action="store_true", help="run every study alone (same results)")
    p.add_argument("--report-only", action="store_true", help="write the report from the finished runs; train nothing")
    a, rest = p.parse_known_args(argv)
    if any(flag in rest for flag in ("--out", "--resume", "--fresh")):
        fail("the paper names its run directories itself (ROOT/<dataset>/<variant>_noise<level>_s<seed>): "
             "drop --out/--resume/--fresh")
    if a.max_population < 1:
        fail(f"--max-population must be >= 1, got {a.max_population}")
    cmd = parse_study_command(rest)
    setup_logging(cmd.quiet)
    prepare_cpu_process()  # before JAX starts its backend
    root = a.root or os.path.join("runs", f"paper-{a.scale}")
    changes = grid_changes(cmd, rest)
    with cli_errors():
        grid = paper_grid(a.scale, cmd.preset, seeds=comma_list(a.seeds, int, "seeds") if a.seeds else None,
                          variants=comma_list(a.variants, str, "variants") if a.variants else None,
                          datasets=comma_list(a.datasets, str, "datasets") if a.datasets else None,
                          epochs=a.epochs, changes=changes)
        for run in grid:  # every run's options are checked before the first one starts
            check_config(run.config)
        t0 = time.perf_counter()
        if not a.report_only:
            run_many([r.config for r in grid], [r.run_dir(root) for r in grid], max_population=a.max_population,
                     populations=not a.no_populations, progress=not cmd.quiet, devices=cmd.devices, writers=cmd.writers)
        wall = time.perf_counter() - t0
    report = write_report(root, grid, {"scale": a.scale, "preset": cmd.preset, "wall_s": None if a.report_only else wall,
                                       "command": " ".join(["python -m experiments.paper",
                                                                       *(sys.argv[1:] if argv is None else argv)])})
    print(f"report: {report['path']}")
    return report


# --------------------------------------------------------------------------------------------------
# The report


def _finished(run: GridRun, root: str) -> bool:
    return bool((RunDirectory(run.run_dir(root)).manifest() or {}).get("finished"))


def _fmt(x: Any, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.{digits}f}"


def _label(run: GridRun) -> str:
    return run.variant if run.noise == MAIN_NOISE else f"{run.variant} (noise {run.noise:g})"


def _stealth_tables(root: str, runs: Sequence[GridRun], out: str) -> dict[str, str]:
    """The stealthiness table of both reads (compare's tables, every variant in one ranking)."""
    tables = {}
    for read in metrics.READS:
        try:  # a read a run did not make (the reference estimators' held-out read) is a line, not a failure
            rows, _ = compare.load_runs([r.run_dir(root) for r in runs], read)
        except compare.CompareError as e:
            tables[read] = f"(no {read} stealthiness: {e})\n"
            continue
        rows = [dict(row, attack=_label(run), poison_ratio=None, protocol="P1") for row, run in zip(rows, runs)]
        if not all(metrics.is_finite_number(r["total"]) for r in rows):
            tables[read] = f"(no {read} stealthiness in every run)\n"
            continue
        cmp = metrics.compare_runs(rows)
        d = os.path.join(out, f"stealth_{read}")
        os.makedirs(d, exist_ok=True)
        tables[read] = compare.write_comparison(d, cmp, rows, {}, read, title="stealthiness per attack variant")
    return tables


def _figures(root: str, runs: Sequence[GridRun], histories: dict, out: str) -> list[str]:
    """Per variant at the main noise: the seed mean's MI curves and information plane, and the first
    seed's embeddings of T."""
    from ibjax import plots  # matplotlib once the runs are read

    made = []
    for v in dict.fromkeys(r.variant for r in runs):
        mine = [r for r in runs if r.variant == v and r.noise == MAIN_NOISE]
        if not mine:
            continue
        config = mine[0].config
        d = os.path.join(out, "figures", v)
        os.makedirs(d, exist_ok=True)
        mean = metrics.seed_mean_history([{q: h for q, h in histories[r.name].mi.items() if q in ("xt", "ty", "xy")}
                                          for r in mine])
        read = config.analysis.stealth.read
        title = f"{v}, mean of {len(mine)} seed(s)"
        made.append(plots.plot_mi_curves(mean, os.path.join(d, "mi_curves.png"), read=read, title=title,
                                         target=config.poison.target, quantities=tuple(q for q in ("xt", "ty", "xy")
                                                                                       if q in mean)))
        made.append(plots.plot_information_plane(mean, os.path.join(d, "information_plane.png"), read=read, title=title,
                                                 target=config.poison.target))
        first = min(mine, key=lambda r: r.seed)
        rd = RunDirectory(first.run_dir(root))
        for e in sorted(histories[first.name].clustering):
            path = rd.file(f"embedding_{e}.npz")
            if os.path.exists(path):
                z = np.load(path)
                method = metrics.EMBEDDINGS.get(str(z.get("method", "pca")), "PCA")
                made.append(plots.plot_embedding(z["embedding"], z["labels"], z["poisoned"],
                                                 os.path.join(d, f"embedding_{e}.png"),
                                                 f"{v}, seed {first.seed}: T at epoch {e} ({method})",
                                                 target=config.poison.target))
    return made


def _bounds_table(runs: Sequence[GridRun], summaries: dict) -> list[str]:
    lines = ["| variant | runs | H(B) | I(B;Y) | I(B;Y_pred) | I(X;B) (mean, SE over runs) |", "|---|---|---|---|---|---|"]
    for v in dict.fromkeys(_label(r) for r in runs):
        b = [summaries[r.name].get("bound_checks") for r in runs if _label(r) == v]
        b = [x for x in b if x]
        if not b:
            continue
        has = [x for x in b if x.get("I_X_B") is not None]
        xb = [x["I_X_B"] for x in has]
        se = metrics.pooled_mean(xb, [x.get("I_X_B_se") for x in has])[1] if xb else None
        lines.append(f"| {v} | {len(b)} | {_fmt(np.mean([x['H_B'] for x in b]), 4)} | "
                     f"{_fmt(np.mean([x['I_B_Y'] for x in b]), 4)} | {_fmt(np.mean([x['I_B_Ypred'] for x in b]), 4)} | "
                     f"{_fmt(float(np.mean(xb)) if xb else None, 4)} ± {_fmt(se, 4)} |")
    return lines


def write_report(root: str, grid: Sequence[GridRun], about: dict) -> dict:
    """Write ``ROOT/report`` from the grid's finished runs (see the module docstring). Returns
    ``{"path", "claims": {dataset: [ClaimResult.to_json()]}, "missing": [unfinished run directories]}``."""
    out = os.path.join(root, "report")
    os.makedirs(out, exist_ok=True)
    finished = [_finished(r, root) for r in grid]
    missing = [r.run_dir(root) for r, f in zip(grid, finished) if not f]
    # Each finished run as it ran (its config.json), not as this command line would run it: a report
    # written with other flags (--report-only without --preset reference) still reads each run's own read.
    done = [dataclasses.replace(r, config=config_from_dict(RunDirectory(r.run_dir(root)).read_json("config.json")))
            for r, f in zip(grid, finished) if f]
    wall = (f"{about['wall_s']:.0f} s (runs found finished are read, not retrained)" if about.get("wall_s") is not None
            else "not measured (--report-only)")
    lines = [f"# The paper, reproduced: {about['scale']} scale, preset {about['preset']}", "",
             f"Command: `{about['command']}`. Machine: {platform.machine()} {platform.system()}, {os.cpu_count()} CPU "
             f"threads, JAX backend {_backend()}. Grid wall time: {wall}.", "",
             f"Runs: {len(done)} finished of {len(grid)}" + (f"; not finished: {', '.join(missing)}" if missing else "")
             + ". Verdicts: " + ", ".join(VERDICTS) + "; a difference counts beyond 2 standard errors (for 2+ "
             "seeds the larger of their spread and their own SEs combined; the estimator's own for one); how each "
             "claim is read: docs/paper.md.", ""]
    result: dict = {"path": os.path.join(out, "paper.md"), "claims": {}, "missing": missing}
    for dataset in dict.fromkeys(r.dataset for r in done):
        runs = [r for r in done if r.dataset == dataset]
        d = os.path.join(out, dataset)
        os.makedirs(d, exist_ok=True)
        histories = {r.name: RunDirectory(r.run_dir(root)).history() for r in runs}
        summaries = {r.name: RunDirectory(r.run_dir(root)).read_json("summary.json") for r in runs}
        read = runs[0].config.analysis.stealth.read
        results = evaluate_claims([claim_run(r, histories[r.name], summaries[r.name]) for r in runs],
                                  noise=MAIN_NOISE, low_noise=LOW_NOISE, read=read)
        claims_md = claims_markdown(results)
        with open(os.path.join(d, "claims.md"), "w") as f:
            f.write(claims_md)
        with open(os.path.join(d, "claims.json"), "w") as f:
            json.dump([c.to_json() for c in results], f, indent=1)
        compare.write_csv(os.path.join(d, "claims.csv"),
                          [{"claim": c.claim, "verdict": c.verdict, **{k: v for k, v in p.items()}}
                           for c in results for p in c.parts] or [{"claim": c.claim, "verdict": c.verdict}
                                                                   for c in results])
        result["claims"][dataset] = [c.to_json() for c in results]
        tables = _stealth_tables(root, runs, d)
        figures = _figures(root, runs, histories, d)
        lines += [f"## {dataset}", "", f"### Claims ({read} read)", "", claims_md,
                  "### Bound checks on the training data and the trained networks, nats", "", *_bounds_table(runs, summaries),
                  ""]
        for r_name, table in tables.items():
            lines += [f"### Stealthiness, {r_name} read", "", _demote(table), ""]
        lines += ["### Figures", ""] + [f"![{os.path.relpath(f, out)}]({os.path.relpath(f, out)})" for f in figures]
        lines += ["", "### Runs", "", "| run | clean acc | ASR | wall (s) |", "|---|---|---|---|"]
        lines += [f"| {r.name} | {_fmt(summaries[r.name].get('test_accuracy'))} | {_fmt(summaries[r.name].get('asr'))} | "
                  f"{_fmt((summaries[r.name].get('timings') or {}).get('run_s'), 0)} |" for r in runs]
        lines.append("")
    with open(result["path"], "w") as f:
        f.write("\n".join(lines) + "\n")
    if missing:
        LOGGER.warning("the report covers %d of %d runs; unfinished: %s", len(done), len(grid), ", ".join(missing))
    return result


def _demote(markdown: str) -> str:
    """compare.md's headings as paper.md's fourth level."""
    return "\n".join("#### " + line.lstrip("#").lstrip() if line.startswith("#") else line
                     for line in markdown.splitlines())


def _backend() -> str:
    import jax

    return f"{jax.default_backend()} ({jax.device_count()} device(s))"


if __name__ == "__main__":
    main()
