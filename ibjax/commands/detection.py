"""The verdict: does information-flow stealthiness predict detection? Clean and backdoored models of
one protocol, every detector and the MI-dynamics monitor on every one.

``python -m experiments.detection [--scale cpu|gpu] [--root DIR] [--attacks a,b] [--clean-runs N]
[--runs-per-attack N] [--first-seed S] [--epochs N] [--report-only] [study flags: any StudyConfig
field]``

The grid (:mod:`ibjax.study.detection`): ``--clean-runs`` clean networks (poison ratio 0) and
``--runs-per-attack`` backdoored ones per attack (default BadNets, Blend, WaNet, Adaptive-Blend,
Grond), seeds 0..n-1, each run under ``ROOT/runs/<cell>_s<seed>`` (finished runs are read,
interrupted ones resumed, compatible ones train as populations). Then ``ROOT/report``:

- ``detection.md``: everything below, with the hardware and the wall time;
- ``model_level.csv``: per model-level detector and attack, AUROC (bootstrap 95% interval), TPR at
  5% FPR (threshold on the clean models), target identification rate, wall time;
- ``sample_level.csv``: per sample-level detector and attack, poisoned-sample AUROC, TPR, FPR;
- ``monitor.json`` / ``monitor.csv``: the MI monitor's AUROC at every MI epoch (blind and against a
  clean baseline; offline reads, and the online critics' where the runs have them), with latencies;
- ``correlations.csv``: per stealth read and detector, each attack's stealthiness and detectability
  with Spearman and Kendall correlations and seed-bootstrap intervals; ``correlations_per_model.csv``
  the same over every backdoored model, with intervals from a bootstrap over models;
- ``detection.json``: all of it; ``figures/``: ROC curves, the monitor's AUROC against the epoch,
  stealthiness against detectability.

From a checkout: ``python -m experiments.detection``; installed: ``python -m ibjax detection``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from typing import Any, Sequence

import jax
import numpy as np

from ibjax.cli import cli_errors, comma_list, fail, grid_changes, parse_study_command, setup_logging
from ibjax.commands.compare import write_csv
from ibjax.defenses.roc import roc_curve
from ibjax.metrics import detection as det
from ibjax.progress import LOGGER
from ibjax.runtime import prepare_cpu_process
from ibjax.study import check_config
from ibjax.study.config import config_from_dict
from ibjax.study.defenses import DEFENSES_FILE
from ibjax.study.detection import DETECTION_ATTACKS, DETECTION_SCALES, DetectionRun, detection_grid
from ibjax.study.rundir import RunDirectory
from ibjax.study.runner import run_many


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", default="cpu", choices=list(DETECTION_SCALES), help="the grid's scale (default: %(default)s)")
    p.add_argument("--root", default=None, help="directory of the runs and the report (default: runs/detection-SCALE)")
    p.add_argument("--attacks", default=None, help=f"comma-separated attacks (of {','.join(DETECTION_ATTACKS)})")
    p.add_argument("--clean-runs", type=int, default=None, help="clean models (default: the scale's)")
    p.add_argument("--runs-per-attack", type=int, default=None, help="backdoored models per attack (default: the scale's)")
    p.add_argument("--first-seed", type=int, default=0,
                   help="seeds of every cell start here (default: %(default)s): another population of networks")
    p.add_argument("--epochs", type=int, default=None,
                   help="train this many epochs, MI and metric epochs scaled along (default: the scale's)")
    p.add_argument("--max-population", type=int, default=None,
                   help="most runs in one population (default: 1 on a CPU, where a population of 10 small CNNs took "
                        "3 times as long per run as the runs alone; 10 on an accelerator)")
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (default: %(default)s)")
    p.add_argument("--report-only", action="store_true", help="write the report from the finished runs; train nothing")
    a, rest = p.parse_known_args(argv)
    if any(flag in rest for flag in ("--out", "--resume", "--fresh")):
        fail("the detection grid names its run directories itself (ROOT/runs/<cell>_s<seed>): drop --out/--resume/--fresh")
    if (a.max_population is not None and a.max_population < 1) or a.resamples < 10 or a.first_seed < 0:
        fail("--max-population must be >= 1, --resamples >= 10 and --first-seed >= 0")
    cmd = parse_study_command(rest)
    setup_logging(cmd.quiet)
    prepare_cpu_process()  # before JAX starts its backend
    root = a.root or os.path.join("runs", f"detection-{a.scale}")
    changes = grid_changes(cmd, rest)
    with cli_errors():
        grid = detection_grid(a.scale, cmd.preset, attacks=comma_list(a.attacks, str, "attacks") if a.attacks else None,
                              clean_runs=a.clean_runs, runs_per_attack=a.runs_per_attack, epochs=a.epochs,
                              first_seed=a.first_seed, changes=changes)
        for run in grid:  # every run's options are checked before the first one starts
            check_config(run.config)
        t0 = time.perf_counter()
        if not a.report_only:
            size = a.max_population or (1 if jax.default_backend() == "cpu" else 10)
            run_many([r.config for r in grid], [r.run_dir(root) for r in grid], max_population=size,
                     progress=not cmd.quiet, devices=cmd.devices, writers=cmd.writers)
        wall = None if a.report_only else time.perf_counter() - t0
        command = " ".join(["python -m experiments.detection", *(sys.argv[1:] if argv is None else argv)])
        report = write_report(root, grid, {"scale": a.scale, "wall_s": wall, "command": command},
                              resamples=a.resamples)
    print(f"report: {report['path']}")
    return report


# --------------------------------------------------------------------------------------------------
# reading the runs


def load_model(run: DetectionRun, root: str) -> det.DetectedModel:
    """The detection view of one finished run directory."""
    rd = RunDirectory(run.run_dir(root))
    config = config_from_dict(rd.read_json("config.json"))
    summary = rd.read_json("summary.json")
    defenses = rd.read_json(DEFENSES_FILE) if os.path.exists(rd.file(DEFENSES_FILE)) else {}
    history = rd.history()
    classes = 1 + sum(g.startswith("class_") for g in next(iter(history.mi.values())).groups) if history.mi else 0
    stealth = {read: (v or {}).get("total") for read, v in (summary.get("stealth") or {}).items()}
    return det.DetectedModel(cell=run.cell, seed=run.seed, poisoned=run.poisoned, target=config.poison.target,
                             num_classes=classes, defenses=defenses,
                             stealth={k: math.nan if v is None else float(v) for k, v in stealth.items()},
                             mi=history.mi)


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "n/a"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def _interval(row: dict, key: str) -> str:
    return f"{_fmt(row.get(key))} [{_fmt(row.get(key + '_low'))}, {_fmt(row.get(key + '_high'))}]"


def _seed(stat: dict) -> str:
    if stat.get("mean") is None:
        return "n/a"
    return f"{stat['mean']:.3f}" + (f" [{stat['ci_low']:.3f}, {stat['ci_high']:.3f}]" if stat.get("sd") is not None else "")


def _flat_seed_rows(rows: Sequence[dict]) -> list[dict]:
    out = []
    for r in rows:
        flat = {"detector": r["detector"], "attack": r["attack"], "wall_s": r["wall_s"]}
        for k in ("auroc", "tpr", "fpr"):
            flat.update({f"{k}_mean": r[k]["mean"], f"{k}_low": r[k]["ci_low"], f"{k}_high": r[k]["ci_high"],
                         f"{k}_n": r[k]["n"]})
        out.append(flat)
    return out


def _monitor_tables(models) -> tuple[list[dict], list[str]]:
    """Every source x variant the runs allow, each as a table of AUROC per attack and epoch."""
    tables, lines = [], []
    sources = ["offline"] + (["online"] if all(m.mi and "xt_online" in m.mi for m in models) else [])
    for source in sources:
        for variant in det.MONITOR_VARIANTS:
            try:
                t = det.monitor_epoch_table(models, source=source, variant=variant)
            except ValueError as e:
                LOGGER.warning("no %s MI monitor on %s reads: %s", variant, source, e)
                lines += [f"- {source}, {variant}: not computed ({e})", ""]
                continue
            tables.append(t)
            lines += [f"#### {source} reads, {variant}", "",
                      "| attack | " + " | ".join(f"epoch {e}" for e in t["epochs"]) + " | latency (AUROC >= 0.9) | "
                      "target found (last epoch) |",
                      "|---|" + "---|" * len(t["epochs"]) + "---|---|"]
            for attack, r in t["attacks"].items():
                lines.append(f"| {attack} | " + " | ".join(_fmt(x, 2) for x in r["auroc"]) +
                             f" | {r['latency'] if r['latency'] is not None else 'never'} | {_fmt(r['target_rate'][-1], 2)} |")
            lines.append("")
    return tables, lines


def write_report(root: str, grid: Sequence[DetectionRun], about: dict, *, resamples: int = 1000) -> dict:
    """Write ``ROOT/report`` from the grid's finished runs (see the module docstring). Returns
    ``{"path", "model_level", "sample_level", "monitor", "correlations", "missing"}``."""
    from ibjax import plots  # matplotlib once the runs are read

    out = os.path.join(root, "report")
    os.makedirs(os.path.join(out, "figures"), exist_ok=True)
    finished = [bool((RunDirectory(r.run_dir(root)).manifest() or {}).get("finished")) for r in grid]
    missing = [r.run_dir(root) for r, f in zip(grid, finished) if not f]
    runs = [r for r, f in zip(grid, finished) if f]
    if not any(r.poisoned for r in runs) or all(r.poisoned for r in runs):
        raise ValueError(f"the report needs finished clean and backdoored runs; {len(runs)} of {len(grid)} are finished "
                         f"under {root}: run the command without --report-only")
    models = [load_model(r, root) for r in runs]
    monitor, monitor_lines = _monitor_tables(models)
    for t in monitor:  # the offline monitor against the clean models, as detectors of their own
        if t["source"] == "offline" and det.MONITOR_VARIANTS[t["variant"]].against_clean:
            models = det.with_monitor(models, t)
    key = jax.random.PRNGKey(0)
    model_rows = det.model_level_table(models, jax.random.fold_in(key, 1), resamples=resamples)
    sample_rows = det.sample_level_table(models)
    corr = det.stealth_correlations(models, jax.random.fold_in(key, 2), resamples=resamples)
    per_model = det.run_level_correlations(models, jax.random.fold_in(key, 3), resamples=resamples)

    write_csv(os.path.join(out, "model_level.csv"), model_rows)
    write_csv(os.path.join(out, "sample_level.csv"), _flat_seed_rows(sample_rows))
    write_csv(os.path.join(out, "correlations.csv"), [{k: (json.dumps(v) if isinstance(v, list) else v)
                                                         for k, v in r.items()} for r in corr])
    write_csv(os.path.join(out, "correlations_per_model.csv"), per_model)
    write_csv(os.path.join(out, "monitor.csv"), [{"source": t["source"], "variant": t["variant"], "attack": a,
                                                  "epoch": e, "auroc": x, "target_rate": tr, "latency": r["latency"]}
                                                 for t in monitor for a, r in t["attacks"].items()
                                                 for e, x, tr in zip(t["epochs"], r["auroc"], r["target_rate"])])
    with open(os.path.join(out, "monitor.json"), "w") as f:
        json.dump(monitor, f, indent=1)

    figures = []
    clean = [m for m in models if not m.poisoned]
    for name in dict.fromkeys(r["detector"] for r in model_rows):
        curves = {}
        for attack in dict.fromkeys(m.cell for m in models if m.poisoned):
            group = clean + [m for m in models if m.cell == attack]
            s = np.asarray([_score(m, name) for m in group])
            y = np.asarray([m.poisoned for m in group])
            ok = np.isfinite(s)
            if y[ok].any() and (~y[ok]).any():
                fpr, tpr = roc_curve(s[ok], y[ok])
                curves[attack] = (fpr, tpr, next(r["auroc"] for r in model_rows
                                                 if r["detector"] == name and r["attack"] == attack))
        figures.append(plots.plot_roc_curves(curves, os.path.join(out, "figures", f"roc_{name}.png"),
                                             title=f"{name}: backdoored vs clean models"))
    for t in monitor:
        figures.append(plots.plot_monitor_auroc(t["epochs"], {a: r["auroc"] for a, r in t["attacks"].items()},
                                                os.path.join(out, "figures", f"monitor_{t['source']}_{t['variant']}.png"),
                                                title=f"MI monitor ({t['source']} reads, {t['variant']})"))
    for read in dict.fromkeys(r["read"] for r in corr):
        pts = {r["detector"]: list(zip(r["attacks"], r["stealth"], r["detectability"])) for r in corr if r["read"] == read}
        figures.append(plots.plot_stealth_detection(pts, os.path.join(out, "figures", f"stealth_vs_detection_{read}.png"),
                                                    xlabel=f"stealthiness ({read} read)",
                                                    title="per attack: stealthiness against detectability"))

    wall = f"{about['wall_s']:.0f} s" if about.get("wall_s") is not None else "not measured (--report-only)"
    cells = {c: sum(1 for m in models if m.cell == c) for c in dict.fromkeys(m.cell for m in models)}
    lines = [f"# Does information-flow stealthiness predict detection? ({about['scale']} scale)", "",
             f"Command: `{about['command']}`. Machine: {platform.machine()} {platform.system()}, {os.cpu_count()} CPU "
             f"threads, JAX backend {jax.default_backend()}. Wall time: {wall}.", "",
             "Models: " + ", ".join(f"{c} {n}" for c, n in cells.items())
             + (f"; not finished: {len(missing)}" if missing else "") + ".", "",
             "## Model-level detectors (backdoored vs every clean model)", "",
             "| detector | attack | AUROC [95% bootstrap] | TPR at 5% FPR | target found | s per model |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['detector']} | {r['attack']} | {_interval(r, 'auroc')} | {_fmt(r.get('tpr_at_fpr'), 2)} | "
              f"{_fmt(r['target_rate'], 2)} | {_fmt(r['wall_s'], 1)} |" for r in model_rows]
    lines += ["", "## The MI monitor epoch by epoch (AUROC at each MI epoch, using the epochs read so far)", "",
              *monitor_lines,
              "## Sample-level detectors (poisoned-sample detection; mean over the attack's models [95% t interval])", "",
              "| detector | attack | AUROC | TPR | FPR | s per model |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['detector']} | {r['attack']} | {_seed(r['auroc'])} | {_seed(r['tpr'])} | {_seed(r['fpr'])} | "
              f"{_fmt(r['wall_s'], 1)} |" for r in sample_rows]
    lines += ["", "## Stealthiness against detectability, across attacks (seed-bootstrap 95% intervals)", "",
              "| read | detector | stealth per attack | detectability per attack | Spearman | Kendall |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {r['read']} | {r['detector']} | " + ", ".join(f"{a} {_fmt(s, 2)}" for a, s in zip(r["attacks"], r["stealth"]))
              + " | " + ", ".join(_fmt(d, 2) for d in r["detectability"])
              + f" | {_interval(r, 'spearman')} | {_interval(r, 'kendall')} |" for r in corr]
    lines += ["", "## The same, model by model (every backdoored model; bootstrap over models)", "",
              "| read | detector | models | Spearman | Kendall |", "|---|---|---|---|---|"]
    lines += [f"| {r['read']} | {r['detector']} | {r['models']} | {_interval(r, 'spearman')} | {_interval(r, 'kendall')} |"
              for r in per_model]
    lines += ["", "## Figures", ""] + [f"![{os.path.relpath(f, out)}]({os.path.relpath(f, out)})" for f in figures]
    path = os.path.join(out, "detection.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    result = {"path": path, "model_level": model_rows, "sample_level": sample_rows, "monitor": monitor,
              "correlations": corr, "correlations_per_model": per_model, "missing": missing, "about": about}
    with open(os.path.join(out, "detection.json"), "w") as f:
        json.dump(result, f, indent=1, default=float)
    if missing:
        LOGGER.warning("the report covers %d of %d runs; unfinished: %s", len(runs), len(grid), ", ".join(missing))
    return result


def _score(model: det.DetectedModel, name: str) -> float:
    v = (model.defenses.get(name) or {}).get("score")
    return float(v) if v is not None else math.nan


if __name__ == "__main__":
    main()
