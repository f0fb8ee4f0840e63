"""Compare finished runs: ``python -m experiments.compare RUN_DIR... [--out DIR] [--read heldout|train]``.

Runs are grouped by (attack, poison ratio); each group is summarised over its seeds (mean, t-based
confidence interval, min-max) for the stealthiness total and its four components, clean accuracy and
ASR; attacks are ranked by mean total within each poison ratio (lower = more stealthy = rank 1), and
neighbours in a ranking are called "within noise" when the test's p > alpha: Welch's t-test over the
seeds; one seed against several: the single total against the other's seed prediction interval;
one seed each: a z-test on the runs' bootstrap standard errors (said so), or nothing.

Runs must share a protocol: every config.json field must be equal except the run-identity ones
(ibjax.metrics.RUN_IDENTITY_FIELDS: attack, attack options, poison ratio, seeds, output paths) and
the analysis settings (ibjax.metrics.ANALYSIS_FIELDS: stealth epochs / read / normalisation /
classes, embeddings, data.dir), or the comparison is refused; ``--allow-mixed`` labels the protocols
P1, P2, ... instead, ranks them apart and lists the fields that differ. The stealthiness itself must
have been computed on the same epochs, normalisation and clean classes in every run (checked on the
results), or the comparison is always refused; ``--recompute`` recomputes it from each run's mi.json
with each run's own clean classes (config field analysis.stealth.classes; empty = all) unless
``--stealth-classes`` names common ones.

Writes, under ``--out``: compare.md (the tables and the ranking verdicts; also printed), compare.csv
(one row per attack and poison ratio), compare_runs.csv (one row per run) and stealth.png (stacked
components, error bars, single seeds). Bad input: a one-line error naming the path, exit code 2.

From a checkout: ``python -m experiments.compare``; installed: ``python -m ibjax compare`` (the same
flags).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
from typing import Any, Optional, Sequence

from ibjax import metrics
from ibjax.records import SchemaError
from ibjax.study.config import migrate_config_dict
from ibjax.study.rundir import RunDirectory

_STATS = ("mean", "ci_low", "ci_high", "min", "max", "sd")


class CompareError(SystemExit):
    """A one-line error for the user: exits with code 2; ``str()`` is the message."""

    def __init__(self, message: str):
        super().__init__(2)
        self.message = message

    def __str__(self) -> str:
        return self.message


def _load_json(path: str, what: str) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise CompareError(f"{path} is not valid JSON ({err.msg} at line {err.lineno}): is {what} corrupt?") from None
    except OSError as err:
        raise CompareError(f"cannot read {path}: {err.strerror}") from None


def _clean_of(run: str, config: Any) -> Optional[list[str]]:
    """The clean-class groups a run's stealthiness compares with: config field
    ``analysis.stealth.classes`` (empty or absent: every clean class, None)."""
    stealth = ((config.get("analysis") or {}).get("stealth") or {}) if isinstance(config, dict) else {}
    classes = stealth.get("classes") if isinstance(stealth, dict) else None
    if classes and not (isinstance(classes, list) and all(isinstance(c, int) for c in classes)):
        raise CompareError(f"{run}: config.json's analysis.stealth.classes is not a list of class indices: {classes!r}")
    return [f"class_{c}" for c in classes] if classes else None


def _stealth_of(run: str, summary: dict, config: Any, read: str, recompute: Optional[dict]) -> dict:
    if recompute is not None:
        mi_path = os.path.join(run, "mi.json")
        if not os.path.isfile(mi_path):
            raise CompareError(f"{run} has no mi.json: --recompute needs each run's MI history")
        try:
            mi = RunDirectory(run).history().mi  # typed; SchemaError for records this ibjax cannot read
        except ValueError as err:
            raise CompareError(f"{run}: cannot read its records ({err})") from None
        epochs = recompute["epochs"] or ((summary.get("stealth") or {}).get(read) or {}).get("epochs")
        if not epochs:
            raise CompareError(f"{run}: no stealth epochs recorded for the {read} read; pass --stealth-epochs")
        clean = recompute["clean"] if recompute.get("clean", "own") != "own" else _clean_of(run, config)
        try:
            return metrics.stealthiness(mi, epochs, read, normalise=recompute["normalise"], clean=clean)
        except ValueError as err:
            raise CompareError(f"{run}: {err}") from None
    st = (summary.get("stealth") or {}).get(read)
    if not st:
        raise CompareError(f"{run}: summary.json has no stealthiness for the {read} read (try --read "
                           f"{'train' if read == 'heldout' else 'heldout'}, or --recompute)")
    if "error" in st:
        raise CompareError(f"{run}: stealthiness ({read} read) was not computed: {st['error']}")
    return st


def _ratio(config: dict) -> Optional[float]:
    flat = metrics.flatten_config(config)
    for key in ("poison.ratio", "poison_ratio"):
        if isinstance(flat.get(key), (int, float)):
            return float(flat[key])
    return None


def load_runs(run_dirs: Sequence[str], read: str = "heldout",
              recompute: Optional[dict] = None) -> tuple[list[dict], list[dict]]:
    """Read each run directory: (rows for :func:`ibjax.metrics.compare_runs`, configs). Raises CompareError."""
    rows, configs, seen = [], [], {}
    for d in run_dirs:
        if not os.path.isdir(d):
            raise CompareError(f"{d} is not a directory (expected a finished run directory)")
        real = os.path.realpath(d)
        if real in seen:
            raise CompareError(f"{d} is listed twice (also as {seen[real]}): pass each run once")
        seen[real] = d
        s_path, c_path = os.path.join(d, "summary.json"), os.path.join(d, "config.json")
        if not os.path.isfile(s_path):
            raise CompareError(f"{d} has no summary.json (is it a finished run directory?)")
        if not os.path.isfile(c_path):
            raise CompareError(f"{d} has no config.json: its protocol cannot be checked")
        try:
            RunDirectory(d).schema()
        except SchemaError as err:
            raise CompareError(str(err)) from None
        summary, config = _load_json(s_path, "the run summary"), _load_json(c_path, "the run config")
        try:
            config = migrate_config_dict(config)  # a run of the flat layout compares with today's
        except ValueError as err:
            raise CompareError(f"{c_path}: {err}") from None
        if not isinstance(summary, dict) or "attack" not in summary:
            raise CompareError(f"{s_path} has no 'attack': not a run summary")
        st = _stealth_of(d, summary, config, read, recompute)
        seed = summary.get("seed", config.get("seed") if isinstance(config, dict) else None)
        rows.append({
            "run": d, "attack": summary["attack"], "dataset": summary.get("dataset"),
            "poison_ratio": _ratio(config), "seed": seed, "test_accuracy": summary.get("test_accuracy"),
            "asr": summary.get("asr"), "components": dict(st.get("components") or {}), "total": st.get("total"),
            "components_se": st.get("components_se"), "total_se": st.get("total_se"),
            "stealth_epochs": [int(e) for e in st.get("epochs") or ()],
            "normalise": st.get("normalise", "joint"),  # files before the per-epoch default were joint
            "read": st.get("read", read),
            "clean": list(st["clean"]) if st.get("clean") is not None else None,  # None: not recorded
        })
        configs.append(config)
    if not rows:
        raise CompareError("no run directories given")
    return rows, configs


def check_protocols(rows: list[dict], configs: list[dict], allow_mixed: bool,
                    ignore: Sequence[str] = metrics.RUN_IDENTITY_FIELDS,
                    analysis: Sequence[str] = metrics.ANALYSIS_FIELDS) -> dict[str, list]:
    """Label each row's protocol; refuse mixed protocols (unless allowed) and mixed stealth settings.

    The stealth settings (epochs, normalisation, read, clean classes) are compared on the results the
    rows carry, never on the configs: the config fields that chose them are analysis settings
    (``analysis``), not protocol."""
    for key, what in (("stealth_epochs", "stealth epochs"), ("normalise", "normalisation"), ("read", "read"),
                      ("clean", "clean classes")):
        values = {tuple(r[key]) if isinstance(r[key], list) else r[key] for r in rows}
        if len(values) > 1:
            by = "; ".join(f"{r['run']}: {'not recorded' if r[key] is None else r[key]}" for r in rows)
            raise CompareError(f"the runs' stealthiness differs in {what} ({by}); recompute it on common "
                               "settings with --recompute [--stealth-epochs E,E,E] [--stealth-classes C,C,C]")
    labels, differing = metrics.protocol_labels(configs, ignore, analysis)
    if differing and not allow_mixed:
        fields = ", ".join(f"{k} ({' / '.join(sorted({str(v) for v in vals}))})" for k, vals in list(differing.items())[:4])
        more = f" and {len(differing) - 4} more" if len(differing) > 4 else ""
        raise CompareError(f"the runs' protocols differ in {fields}{more}; pass --allow-mixed to compare them "
                           "as separate protocols")
    for r, lab in zip(rows, labels):
        r["protocol"] = lab
    return differing


def _f(v: Any, digits: int = 3) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _cell(st: dict, se: Optional[float] = None) -> str:
    """"mean [lo, hi]" over seeds, or "value +- SE" for one seed with a bootstrap SE."""
    if st["n"] >= 2:
        return f"{_f(st['mean'])} [{_f(st['ci_low'])}, {_f(st['ci_high'])}]"
    return _f(st["mean"]) + (f" +- {_f(se)} (SE)" if se is not None else "")


def render_markdown(cmp: dict, rows: list[dict], differing: dict, read: str) -> str:
    """compare.md: how to read it, the groups table, the ranking verdicts, the runs, protocol notes."""
    r0 = rows[0]
    level = int(round(100 * cmp["level"]))
    mixed = bool(differing)
    multi_ratio = len({g["poison_ratio"] for g in cmp["groups"]}) > 1
    comps = list(metrics.STEALTH_COMPONENTS)
    lines = [
        f"# Stealthiness by attack ({metrics.stealth_description(read, r0['normalise'])}; epochs {r0['stealth_epochs']})",
        "",
        f"Clean classes compared with: {', '.join(r0['clean']) if r0['clean'] else 'not recorded'}.",
        "",
        f"Lower = more stealthy. Cells: mean over seeds [{level}% t-interval]; with one seed the run's value "
        "(+- its bootstrap standard error where recorded). Ranks are within a poison ratio"
        + (" and protocol" if mixed else "") + ".",
        "",
    ]
    if all(g["n"] == 1 for g in cmp["groups"]):
        if all(g["total_se_mean"] is not None for g in cmp["groups"]):
            check = ("and a ranking can only be checked against the estimator's standard errors (training-seed noise "
                     "not included)")
        else:
            check = "and without recorded standard errors a ranking cannot be checked against any noise"
        lines += [f"Every attack has one seed: there are no seed intervals, {check}.", ""]
    head = ["rank", "attack", "poison ratio"] + (["protocol"] if mixed else []) + \
        ["seeds", "total", "total min-max"] + comps + ["clean acc", "ASR"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for g in cmp["groups"]:
        se = g["components_se_mean"] if g["n"] == 1 else None
        cells = [str(g["rank"]), g["attack"], _f(g["poison_ratio"], 3)] + ([g["protocol"]] if mixed else []) + [
            ", ".join(str(s) for s in g["seeds"]), _cell(g["total"], g["total_se_mean"] if g["n"] == 1 else None),
            f"{_f(g['total']['min'])}-{_f(g['total']['max'])}",
        ] + [_cell(g["components"][k], se.get(k) if se else None) if k in g["components"] else "n/a" for k in comps] + [
            _f(g["test_accuracy"]["mean"]), _f(g["asr"]["mean"])]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"## Ranking ({cmp['test']})", ""]
    for rk in cmp["rankings"]:
        where = []
        if multi_ratio or rk["poison_ratio"] is not None:
            where.append(f"poison ratio {_f(rk['poison_ratio'], 3)}")
        if mixed:
            where.append(f"protocol {rk['protocol']}")
        lines.append(f"- {', '.join(where) or 'all runs'}: " + " < ".join(rk["order"]))
        for nb in rk["neighbours"]:
            if nb["within_noise"] is None:
                verdict = nb["basis"]
            else:
                verdict = (f"{'within noise' if nb['within_noise'] else 'distinct'} "
                           f"(p = {nb['p_value']:.3g}; {nb['basis']})")
            lines.append(f"  - {nb['better']} vs {nb['worse']} (difference {_f(nb['difference'])}): {verdict}")
    lines += ["", "## Runs", "", "| run | attack | poison ratio | seed | " + ("protocol | " if mixed else "")
              + "total | total SE | clean acc | ASR |", "|" + "---|" * (8 + mixed)]
    for r in rows:
        lines.append(f"| {r['run']} | {r['attack']} | {_f(r['poison_ratio'], 3)} | {r['seed']} | "
                     + (f"{r['protocol']} | " if mixed else "")
                     + f"{_f(r['total'])} | {_f(r['total_se'])} | {_f(r['test_accuracy'])} | {_f(r['asr'])} |")
    if mixed:
        labels = sorted({r["protocol"] for r in rows}, key=lambda p: int(p[1:]))
        lines += ["", "## Protocols (config fields that differ)", "", "| field | " + " | ".join(labels) + " |",
                  "|" + "---|" * (len(labels) + 1)]
        first = {lab: next(i for i, r in enumerate(rows) if r["protocol"] == lab) for lab in labels}
        for k, vals in differing.items():
            lines.append(f"| {k} | " + " | ".join(str(vals[first[lab]]) for lab in labels) + " |")
    return "\n".join(lines) + "\n"


def write_comparison(out: str, cmp: dict, rows: list[dict], differing: dict, read: str, title: str = "") -> str:
    """Write compare.md, compare.csv, compare_runs.csv and stealth.png of a comparison under ``out``
    (which exists); returns compare.md's text."""
    md = render_markdown(cmp, rows, differing, read)
    with open(os.path.join(out, "compare.md"), "w") as f:
        f.write(md)
    write_csv(os.path.join(out, "compare.csv"), _group_csv_rows(cmp))
    run_rows = [{k: r[k] for k in ("run", "attack", "dataset", "poison_ratio", "seed", "protocol", "test_accuracy", "asr")}
                | {c: r["components"].get(c) for c in metrics.STEALTH_COMPONENTS}
                | {"total": r["total"], "total_se": r["total_se"], "read": r["read"], "normalise": r["normalise"],
                   "stealth_epochs": " ".join(str(e) for e in r["stealth_epochs"])} for r in rows]
    write_csv(os.path.join(out, "compare_runs.csv"), run_rows)
    from ibjax import plots  # matplotlib only once the inputs are known to be good

    plots.plot_stealth_comparison(_chart_rows(cmp, bool(differing)), os.path.join(out, "stealth.png"),
                                  title=(title or "stealthiness per attack") + "\n"
                                  + metrics.stealth_description(read, rows[0]["normalise"]))
    return md


def _group_csv_rows(cmp: dict) -> list[dict]:
    out = []
    for g in cmp["groups"]:
        row = {"rank": g["rank"], "attack": g["attack"], "poison_ratio": g["poison_ratio"], "protocol": g["protocol"],
               "n_seeds": g["n"], "seeds": " ".join(str(s) for s in g["seeds"])}
        for name, st in [("total", g["total"]), *g["components"].items(),
                         ("test_accuracy", g["test_accuracy"]), ("asr", g["asr"])]:
            row.update({f"{name}_{k}": st[k] for k in _STATS})
        row["total_se_mean"] = g["total_se_mean"]
        out.append(row)
    return out


def _chart_rows(cmp: dict, mixed: bool) -> list[dict]:
    multi_ratio = len({g["poison_ratio"] for g in cmp["groups"]}) > 1
    level = int(round(100 * cmp["level"]))
    rows = []
    for g in cmp["groups"]:
        label = g["attack"] + (f" @{g['poison_ratio']:g}" if multi_ratio and g["poison_ratio"] is not None else "")
        label += (f" [{g['protocol']}]" if mixed else "") + f"\n(n={g['n']})"
        row = {"label": label, "total": g["total"]["mean"],
               "components": {k: st["mean"] for k, st in g["components"].items()}}
        if g["n"] >= 2:
            row.update(total_low=g["total"]["ci_low"], total_high=g["total"]["ci_high"],
                       interval=f"{level}% t-interval over seeds", points=g["total"]["values"])
        elif g["total_se_mean"] is not None:
            half = 1.96 * g["total_se_mean"]
            row.update(total_low=g["total"]["mean"] - half, total_high=g["total"]["mean"] + half,
                       interval="+-1.96 SE (estimator only, one seed)")
        rows.append(row)
    return rows


def write_csv(path: str, rows: list[dict]) -> None:
    """Rows of dicts as a CSV file (the union of their keys as columns)."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def _parse_classes(text: Optional[str]) -> Any:
    """``--stealth-classes``: "own" (not given: each run's config), None ("all": every clean class), or
    the named clean-class groups."""
    if text is None:
        return "own"
    if text.strip().lower() == "all":
        return None
    try:
        classes = [int(c) for c in text.split(",")]
    except ValueError:
        raise CompareError(f"--stealth-classes must be comma-separated class indices or 'all', got {text!r}") from None
    if len(set(classes)) < len(classes) or min(classes) < 0:
        raise CompareError(f"--stealth-classes must name distinct classes >= 0, got {text!r}")
    return [f"class_{c}" for c in classes]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="finished run directories (each with summary.json and config.json)")
    p.add_argument("--out", default="runs/compare", help="output directory (default: %(default)s)")
    p.add_argument("--read", default="heldout", choices=metrics.READS,
                   help="which MI read's stealthiness: ibjax's held-out or the authors' train read (default: %(default)s)")
    p.add_argument("--allow-mixed", action="store_true",
                   help="compare runs whose protocols differ, labelled P1, P2, ... and ranked apart (default: refuse)")
    p.add_argument("--ignore-field", action="append", default=[], metavar="PATTERN",
                   help="also treat this config field (dotted path, fnmatch pattern) as run identity, not protocol")
    p.add_argument("--recompute", action="store_true",
                   help="recompute stealthiness from each run's mi.json (with --normalise, --stealth-epochs)")
    p.add_argument("--normalise", default="per_epoch", choices=metrics.NORMALISATIONS,
                   help="with --recompute: min-max per epoch (the authors') or jointly (default: %(default)s)")
    p.add_argument("--stealth-epochs", default=None,
                   help="with --recompute: comma-separated epochs (default: each run's recorded ones)")
    p.add_argument("--stealth-classes", default=None,
                   help="with --recompute: comma-separated clean classes to compare with, or 'all' (default: each "
                        "run's config field analysis.stealth.classes; empty there = all)")
    p.add_argument("--level", type=float, default=0.95, help="confidence level of the seed intervals (default: %(default)s)")
    p.add_argument("--alpha", type=float, default=0.05,
                   help="neighbours are within noise when the test's p > alpha (default: %(default)s)")
    a = p.parse_args(argv)
    try:
        if not 0 < a.level < 1 or not 0 < a.alpha < 1:
            raise CompareError(f"--level and --alpha must lie in (0, 1), got {a.level} and {a.alpha}")
        recompute = None
        if a.recompute:
            try:
                epochs = [int(e) for e in a.stealth_epochs.split(",")] if a.stealth_epochs else None
            except ValueError:
                raise CompareError(f"--stealth-epochs must be comma-separated integers, got {a.stealth_epochs!r}") from None
            recompute = {"epochs": epochs, "normalise": a.normalise, "clean": _parse_classes(a.stealth_classes)}
        elif a.stealth_epochs or a.stealth_classes or a.normalise != "per_epoch":
            raise CompareError("--stealth-epochs, --stealth-classes and --normalise need --recompute")
        rows, configs = load_runs(a.runs, a.read, recompute)
        differing = check_protocols(rows, configs, a.allow_mixed, (*metrics.RUN_IDENTITY_FIELDS, *a.ignore_field),
                                    metrics.ANALYSIS_FIELDS)
        try:
            cmp = metrics.compare_runs(rows, level=a.level, alpha=a.alpha)
        except ValueError as err:
            raise CompareError(str(err)) from None
        try:
            os.makedirs(a.out, exist_ok=True)
        except OSError as err:
            raise CompareError(f"cannot create output directory {a.out}: {err.strerror}") from None
    except CompareError as err:
        print(f"compare: error: {err}", file=sys.stderr)
        raise
    md = write_comparison(a.out, cmp, rows, differing, a.read)
    print(md)
    return {"runs": rows, "comparison": cmp, "differing": differing, "out": a.out}


if __name__ == "__main__":
    main()
