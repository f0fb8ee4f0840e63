"""A run's plots and its summary.md, from the run's history (pure rendering; no computation of results)."""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from ibjax import metrics as ibmetrics
from ibjax import plots
from ibjax.metrics.clustering import EMBEDDINGS
from ibjax.quantities import QUANTITIES
from ibjax.records import RunHistory
from ibjax.study.config import StudyConfig
from ibjax.study.rundir import RunDirectory

__all__ = ["make_plots", "summary_markdown"]


def make_plots(rd: RunDirectory, config: StudyConfig, history: RunHistory, class_names=None) -> list[str]:
    """Write every figure of the run under ``plots/``; returns their paths relative to the run."""
    rd.claim("plots")
    pdir = rd.file("plots")
    os.makedirs(pdir, exist_ok=True)
    made = []
    records = history.records
    mi_hist = history.mi
    names = dict(class_names=class_names, target=config.poison.target)
    made.append(plots.plot_training_curves(records, os.path.join(pdir, "accuracy_asr.png")))
    made.append(plots.plot_class_loss(records, os.path.join(pdir, "class_loss.png"), **names))
    offline = tuple(q for q in QUANTITIES if q in mi_hist)
    if "xt" in mi_hist:
        made.append(plots.plot_mi_curves(mi_hist, os.path.join(pdir, "mi_curves.png"), read=config.analysis.stealth.read,
                                         quantities=offline, **names))
        made.append(plots.plot_information_plane(mi_hist, os.path.join(pdir, "information_plane.png"),
                                                 read=config.analysis.stealth.read, **names))
    online = tuple(q.online_name for q in QUANTITIES.values() if q.online_name in mi_hist)
    if online:
        made.append(plots.plot_mi_curves(mi_hist, os.path.join(pdir, "mi_curves_online.png"), read="heldout",
                                         quantities=online, **names))
    for e in sorted(history.clustering):
        path = rd.file(f"embedding_{e}.npz")
        if not os.path.exists(path):
            continue
        z = np.load(path)
        made.append(plots.plot_embedding(z["embedding"], z["labels"], z["poisoned"],
                                         os.path.join(pdir, f"embedding_{e}.png"),
                                         f"T at epoch {e} ({EMBEDDINGS.get(str(z.get('method', 'pca')), 'PCA')})",
                                         **names))
    return [os.path.relpath(p, rd.path) for p in made]


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.{digits}f}"


def _mi_cell(entry: dict) -> str:
    """'held-out ± se / train' with a '*' where the critic had not converged."""
    ho = _fmt(entry.get("heldout"), 2)
    se = entry.get("heldout_se")
    if se is not None and not (isinstance(se, float) and math.isnan(se)):
        ho += f" ± {se:.2f}"
    flag = "*" if entry.get("converged") is False else ""
    return f"{ho} / {_fmt(entry.get('train'), 2)}{flag}"


def defenses_markdown(records) -> list[str]:
    """The summary's defences section (empty without records): one table per level."""
    if not records:
        return []
    lines = ["## Defences on the trained network", ""]
    sample = {k: v for k, v in records.items() if v["level"] == "sample"}
    if sample:
        lines += ["| sample-level detector | AUROC | TPR | FPR | flagged | wall s |", "|---|---|---|---|---|---|"]
        lines += [f"| {k} | {_fmt(v['auroc'])} | {_fmt(v['tpr'])} | {_fmt(v['fpr'])} | {v['flagged']} | {v['wall_s']:.1f} |"
                  for k, v in sample.items()]
        lines.append("")
    model = {k: v for k, v in records.items() if v["level"] == "model"}
    if model:
        lines += ["| model-level detector | score | suspected target | wall s |", "|---|---|---|---|"]
        lines += [f"| {k} | {_fmt(v['score'])} | {v.get('suspected_target', '')} | {v['wall_s']:.1f} |" for k, v in model.items()]
        lines.append("")
    for k, v in records.items():
        if v["level"] in ("defence", "representation"):
            lines.append(f"- {k}: " + ", ".join(f"{f} {_fmt(x) if isinstance(x, float) else x}" for f, x in v.items()
                                             if f not in ("level",)))
    return lines + [""]


def summary_markdown(config: StudyConfig, history: RunHistory, s: dict) -> str:
    """summary.md of a run: results, stealthiness (both reads), MI tables, clustering, cost, plots."""
    lines = [
        f"# {config.attack.name} on {config.data.name} ({config.model.name})",
        "",
        f"Poison ratio {config.poison.ratio}, target class {config.poison.target}, noise "
        f"{config.model.gamma_xt}/{config.model.gamma_ty}, {s['epochs']} epochs, seed {config.seed}; "
        f"MI {config.mi.mode} ({config.mi.features} features), estimator epochs {config.mi.xt.protocol.epochs}/{config.mi.ty.protocol.epochs}.",
        "",
        *([f"**Warning:** {w}." for w in s.get("warnings", ())] + [""] if s.get("warnings") else []),
        "| clean test accuracy | ASR | training (s) | MI estimation (s) | total (s) |",
        "|---|---|---|---|---|",
        f"| {_fmt(s['test_accuracy'])} | {_fmt(s['asr'])} | {s['train_s']:.1f} | {s['mi_s']:.1f} | {s['wall_s']:.1f} |",
        "",
    ]
    for read in sorted(s["stealth"], key=lambda r: r != config.analysis.stealth.read):
        st = s["stealth"][read]
        headline = " (headline)" if read == config.analysis.stealth.read else ""
        if "error" in st:
            lines += [f"## Stealthiness, {read} read{headline}: not computed", "", st["error"], ""]
            continue
        comps = st["components"]
        ses = st.get("components_se") or {}
        cells = [_fmt(v) + (f" ± {ses[k]:.3f}" if ses.get(k) is not None else "") for k, v in comps.items()]
        total = _fmt(st["total"]) + (f" ± {st['total_se']:.3f}" if st.get("total_se") is not None else "")
        used = st.get("epochs")
        asked = st.get("requested_epochs")
        note = "" if asked is None or sorted(used) == sorted(set(asked)) else f" (requested {asked}: not all exist)"
        lines += [f"## Stealthiness{headline}: {st.get('description', read + ' read')}; epochs {used}{note}; "
                  "lower = more stealthy", "",
                  "| " + " | ".join(comps) + " | total |", "|" + "---|" * (len(comps) + 1),
                  "| " + " | ".join(cells) + f" | {total} |", ""]
        if st.get("se_method"):
            lines += [f"Standard errors: {st['se_method']}.", ""]
        if st.get("size_matched"):
            lines += [ibmetrics.size_matched_markdown(st["size_matched"], only_flagged=True), ""]
    mi_hist = history.mi
    if "xt" in mi_hist:
        epochs = list(mi_hist["xt"].epochs)
        for q, label in ((q, quantity.label) for q, quantity in QUANTITIES.items() if q in mi_hist):
            lines += [f"## {label}, nats (held-out read ± standard error / reference-style train read; "
                      "* = critic not converged)", "",
                      "| group | " + " | ".join(str(e) for e in epochs) + " |", "|---|" + "---|" * len(epochs)]
            for g in mi_hist[q].groups:
                entries = [mi_hist[q].entry(g, e) for e in epochs]
                lines.append(f"| {g} | " + " | ".join(_mi_cell(x) if x else "" for x in entries) + " |")
            lines.append("")
    online = {q: QUANTITIES[q].online_name for q in ("xt", "ty")}
    if all(name in mi_hist for name in online.values()) and "xt" in mi_hist and "ty" in mi_hist:
        lines += ["## Online critics vs offline reads at the MI epochs (target group, reads on unseen pairs, nats)", "",
                  "| epoch | I(X;T) online | I(X;T) offline | I(T;Y) online | I(T;Y) offline |", "|---|---|---|---|---|"]
        for e in mi_hist["xt"].epochs_of("target"):
            on = [(mi_hist[online[q]].entry("target", e) or {}).get("heldout") for q in ("xt", "ty")]
            off = [(mi_hist[q].entry("target", e) or {}).get("heldout") for q in ("xt", "ty")]
            lines.append(f"| {e} | {_fmt(on[0])} | {_fmt(off[0])} | {_fmt(on[1])} | {_fmt(off[1])} |")
        lines.append("")
    b = s.get("bound_checks")
    if b:
        xb = _fmt(b.get("I_X_B")) + (f" ± {b['I_X_B_se']:.3f}" if b.get("I_X_B_se") is not None else "")
        lines += ["## Bound checks on the training data and the trained network, nats", "",
                  "| H(B) | I(B;Y) | I(B;Y_pred) | I(X;B) |", "|---|---|---|---|",
                  f"| {_fmt(b['H_B'], 4)} | {_fmt(b['I_B_Y'], 4)} | {_fmt(b['I_B_Ypred'], 4)} | {xb} "
                  f"({b.get('I_X_B_read') or 'not estimated'}) |", ""]
    lines += defenses_markdown(s.get("defenses"))
    if history.clustering:
        lines += ["## Silhouette of T per group", ""]
        for e, sil in sorted(history.clustering.items()):
            lines.append(f"- epoch {e}: " + ", ".join(f"{k} {_fmt(v)}" for k, v in sil.items()))
        lines.append("")
    mem = s.get("memory", {})
    t = s.get("timings", {})
    lines += ["## Cost", "",
              f"Set-up {t.get('setup_s', 0.0):.1f} s, whole run {t.get('run_s', s['wall_s']):.1f} s; peak host memory "
              f"{_fmt(mem.get('peak_host_rss_mib'), 0)} MiB, peak device memory {_fmt(mem.get('peak_device_mib'), 0)} MiB "
              "(n/a: the backend does not report it).", ""]
    lines += ["## Plots", ""] + [f"![{p}]({p})" for p in s["plots"]]
    return "\n".join(lines) + "\n"
