"""Figures of a run: MI curves, information plane, training curves, per-class loss, T embedding, stealthiness.

Each figure has a builder, ``*_figure(...)``, that returns a :class:`matplotlib.figure.Figure` (for
notebooks and tests), and a ``plot_*(..., path)`` that builds it, writes one PNG to ``path`` (parent
folders created) and returns ``str(path)``. Figures are built on :class:`~matplotlib.figure.Figure`
and rendered by the Agg canvas directly: pyplot's global state and the interactive backends are never
touched (nothing is shown), so this is safe in scripts, tests and threads.

MI histories are ``{quantity: MIHistory}`` (:class:`ibjax.records.MIHistory`, a run's records
stacked over groups x epochs) with quantity ``"xt"`` (I(X;T)) or ``"ty"`` (I(T;Y_pred)), in nats;
the layout of ``mi.json``, ``mi[quantity][group][str(epoch)] = {"train": float, "heldout":
float|None, "train_se": ..., "heldout_se": ..., "converged": bool|None, "cap": float, ...}``, is read
too (keys missing from older files count as None). How the figures show it:

- the clean classes as one grey band (their range at each epoch) around their mean (dashed);
- the target groups in the study's colours (target black and thick, target_clean blue,
  target_backdoor red, target_sample green) with error bars of +-1 standard error where the
  history has one;
- estimates whose critic did not converge (``"converged": false``) as hollow markers;
- where the requested read is missing (None or NaN), the ``"train"`` read instead, ringed by an open
  square (noted in the title);
- each quantity's ceiling (``"cap"``, the most the bound can read, log(K + 1) for InfoNCE) as a
  dotted line when the values reach at least half of it (otherwise it is named in the legend);
- in the information plane, one colour per epoch with a legend entry per epoch.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from ibjax import quantities as ibq
from ibjax.metrics.names import QUANTITIES, STEALTH_COMPONENTS, clean_group_key
from ibjax.metrics.names import is_clean_group as _is_clean
from ibjax.metrics.names import is_finite_number as _finite
from ibjax.records import EpochRecord, MIHistory, as_mi_histories

__all__ = [
    "QUANTITY_LABELS",
    "STEALTH_COMPONENTS",
    "GROUP_LABELS",
    "group_style",
    "mi_series",
    "mi_points",
    "history_points",
    "mi_curves_figure",
    "plot_mi_curves",
    "information_plane_figure",
    "plot_information_plane",
    "training_curves_figure",
    "plot_training_curves",
    "class_loss_figure",
    "plot_class_loss",
    "embedding_figure",
    "plot_embedding",
    "stealth_comparison_figure",
    "plot_stealth_comparison",
]

QUANTITY_LABELS = {name: f"{q.label} [nats]" for name, q in ibq.QUANTITIES.items()}
GROUP_LABELS = {
    "target": "target class, all samples",
    "target_clean": "target class, clean samples",
    "target_backdoor": "target class, backdoor samples",
    "target_sample": "target class, size-matched sample",
}
"""Legend labels of the target groups."""

_TARGET_STYLES = {
    "target_backdoor": dict(color="tab:red", lw=1.8, zorder=4, alpha=1.0),
    "target_clean": dict(color="tab:blue", lw=1.8, zorder=4, alpha=1.0),
    "target_sample": dict(color="tab:green", lw=1.8, zorder=4, alpha=1.0),
    "target": dict(color="black", lw=3.0, zorder=5, alpha=1.0),
}
_CLEAN_STYLE = dict(color="0.45", lw=1.4, zorder=2, alpha=1.0)
_CLEAN_FILL = "0.8"
_CAP_STYLE = dict(color="tab:purple", ls=":", lw=1.5)
_CAP_DRAW_FRACTION = 0.5  # draw the ceiling when the values reach this fraction of it
_DPI = 120
_READ_WORDS = {"heldout": "held-out read", "train": "train read"}


def group_style(name: str, index: int = 0) -> dict:
    """Line style of a group: ``color``, ``lw``, ``zorder``, ``alpha`` (matplotlib keywords).

    The study's colours for the target groups, grey for clean classes (``class_*``, drawn as one band),
    and the ``tab10`` colour ``index`` for any other group.
    """
    if name in _TARGET_STYLES:
        return dict(_TARGET_STYLES[name])
    if _is_clean(name):
        return dict(_CLEAN_STYLE)
    return dict(color=colormaps["tab10"](index % 10), lw=1.5, zorder=3, alpha=1.0)


def mi_points(group_history: Mapping[str, Any], read: str = "heldout") -> dict[str, np.ndarray]:
    """One group's MI over epochs with everything a figure marks (see :func:`history_points`).

    Args:
      group_history: ``{str(epoch): {"train": float, "heldout": float, "train_se": ..., "heldout_se":
        ..., "converged": ..., "cap": ...}}`` (mi.json's layout of one group); missing keys count as
        None, a bare number as that epoch's ``read``.
      read: "heldout" or "train".
    """
    entries = {e: v if isinstance(v, Mapping) else {read: v} for e, v in group_history.items()}
    return history_points(MIHistory.from_json({"group": entries}), "group", read)


def history_points(history: MIHistory, group: str, read: str = "heldout") -> dict[str, np.ndarray]:
    """``group``'s MI over the epochs it was measured, with everything a figure marks.

    Returns:
      dict of arrays over those epochs: ``"epochs"`` int[E]; ``"values"`` f64[E] (nats, NaN where
      neither read exists); ``"se"`` f64[E] (the standard error of the value shown, NaN where
      absent); ``"fell_back"`` bool[E] (``read`` was None/NaN and the train read is shown);
      ``"unconverged"`` bool[E] (``"converged"`` is False; None or absent count as converged);
      ``"cap"`` f64[E] (the bound's ceiling, NaN where absent).
    """
    epochs = list(history.epochs_of(group))

    def field(name: str) -> np.ndarray:
        return history.values(name, [group], epochs)[0]

    value, train = field(read), field("train")
    fell_back = ~np.isfinite(value) & np.isfinite(train) & (read != "train")
    values = np.where(fell_back, train, value)
    se = np.where(fell_back, field("train_se"), field(f"{read}_se"))
    return {"epochs": np.asarray(epochs, int), "values": values,
            "se": np.where(np.isfinite(values) & np.isfinite(se), se, math.nan), "fell_back": fell_back,
            "unconverged": field("converged") == 0.0, "cap": field("cap")}


def mi_series(group_history: Mapping[str, Any], read: str = "heldout") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(epochs int[E], values f64[E] nats, fell_back bool[E]) of :func:`mi_points`."""
    p = mi_points(group_history, read)
    return p["epochs"], p["values"], p["fell_back"]


def _ordered_groups(groups: Sequence[str]) -> list[str]:
    """Clean classes first (drawn behind), then the other groups, the target groups last."""
    order = ["target_sample", "target_clean", "target_backdoor", "target"]
    cleans = sorted((g for g in groups if _is_clean(g)), key=clean_group_key)
    others = sorted(g for g in groups if g not in order and not _is_clean(g))
    return cleans + others + [g for g in order if g in groups]


def _save(fig: Figure, path: str | os.PathLike) -> str:
    """Write ``fig`` as a PNG at ``path`` (parent folders created); returns str(path)."""
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=_DPI, format="png")
    return str(path)


def _no_data(ax) -> None:
    ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)


def _target_phrase(target: Optional[int], class_names: Optional[Sequence[str]]) -> str:
    if target is None:
        return ""
    if class_names is not None and 0 <= target < len(class_names):
        return f"target class {target} ({class_names[target]})"
    return f"target class {target}"


def _clean_summary(points: Sequence[dict]) -> Optional[dict]:
    """Mean, min and max over the clean classes at the epochs all of them share."""
    if not points:
        return None
    common = sorted(set.intersection(*(set(p["epochs"].tolist()) for p in points)))
    if not common:
        return None
    vals = np.stack([p["values"][np.searchsorted(p["epochs"], common)] for p in points])  # [C, E]
    with np.errstate(all="ignore"):
        return {"epochs": np.asarray(common), "mean": np.nanmean(vals, 0), "min": np.nanmin(vals, 0),
                "max": np.nanmax(vals, 0), "n": len(points)}


def _caps(points: Sequence[dict]) -> list[float]:
    caps = np.concatenate([p["cap"] for p in points]) if points else np.zeros(0)
    caps = caps[np.isfinite(caps)]
    return sorted({round(float(c), 6) for c in caps})


def _draw_points(ax, x, y, p, color, size, zorder, xerr=None, yerr=None):
    """Markers filled (converged) or hollow (not converged), with error bars where given."""
    if (xerr is not None and np.isfinite(xerr).any()) or (yerr is not None and np.isfinite(yerr).any()):
        ax.errorbar(x, y, xerr=None if xerr is None else np.nan_to_num(xerr),
                    yerr=None if yerr is None else np.nan_to_num(yerr),
                    fmt="none", ecolor=color, elinewidth=1.0, capsize=2.5, alpha=0.8, zorder=zorder, gid="errorbar")
    unc = p["unconverged"]
    if (~unc).any():
        ax.plot(x[~unc], y[~unc], ls="none", marker="o", ms=size, color=color, zorder=zorder + 0.1)
    if unc.any():
        ax.plot(x[unc], y[unc], ls="none", marker="o", ms=size + 1, mfc="white", mec=color, mew=1.6,
                zorder=zorder + 0.2, gid="unconverged")


def _notes_handles(any_unconverged: bool, any_fallback: bool, any_se: bool, read: str) -> list:
    h = []
    if any_se:
        h.append(Line2D([], [], color="0.3", marker="|", ms=10, ls="none", label="bars: +-1 standard error"))
    if any_unconverged:
        h.append(Line2D([], [], color="0.3", marker="o", mfc="white", mew=1.6, ls="none",
                        label="hollow: critic not converged"))
    if any_fallback:
        h.append(Line2D([], [], color="0.3", marker="s", mfc="none", ms=8, ls="none",
                        label=f"open square: {_READ_WORDS.get(read, read)} missing, train read shown"))
    return h


def _empty_info(quantity: str) -> dict:
    return {"quantity": quantity, "groups": [], "clean_n": 0, "unconverged": False, "fallback": False, "se": False,
            "caps": []}


def _mi_panel(ax, mi_q: MIHistory, read: str, show_train: bool, quantity: str) -> dict:
    """Draw one quantity's groups into ``ax``; returns flags and legend material."""
    groups = _ordered_groups(list(mi_q.groups))
    info = _empty_info(quantity)
    points = {g: history_points(mi_q, g, read) for g in groups}
    cleans = [g for g in groups if _is_clean(g)]
    summary = _clean_summary([points[g] for g in cleans])
    if summary is not None:
        ax.fill_between(summary["epochs"], summary["min"], summary["max"], color=_CLEAN_FILL, alpha=0.7, lw=0,
                        zorder=1, gid="clean-band")
        ax.plot(summary["epochs"], summary["mean"], ls="--", gid="clean-mean", **_CLEAN_STYLE)
        info["clean_n"] = summary["n"]
    for g in cleans:  # individual clean classes appear only where they need a mark
        p = points[g]
        for mask, kw in ((p["unconverged"], dict(marker="o", mfc="white", mec=_CLEAN_STYLE["color"], mew=1.2, ms=5,
                                                 gid="unconverged")),
                         (p["fell_back"], dict(marker="s", mfc="none", mec=_CLEAN_STYLE["color"], ms=7))):
            if mask.any():
                ax.plot(p["epochs"][mask], p["values"][mask], ls="none", zorder=3, **kw)
        info["unconverged"] |= bool(p["unconverged"].any())
        info["fallback"] |= bool(p["fell_back"].any())
    for i, g in enumerate(g for g in groups if not _is_clean(g)):
        st = group_style(g, i)
        p = points[g]
        ax.plot(p["epochs"], p["values"], color=st["color"], lw=st["lw"], zorder=st["zorder"], gid=f"group-{g}")
        _draw_points(ax, p["epochs"], p["values"], p, st["color"], 4 if g != "target" else 5, st["zorder"], yerr=p["se"])
        if p["fell_back"].any():
            ax.plot(p["epochs"][p["fell_back"]], p["values"][p["fell_back"]], ls="none", marker="s", ms=9, mfc="none",
                    mec=st["color"], zorder=6)
        if show_train and read != "train":
            t = history_points(mi_q, g, "train")
            ax.plot(t["epochs"], t["values"], ls="--", lw=max(st["lw"] * 0.6, 0.8), color=st["color"], alpha=0.7,
                    zorder=st["zorder"])
        info["groups"].append(g)
        info["unconverged"] |= bool(p["unconverged"].any())
        info["fallback"] |= bool(p["fell_back"].any())
        info["se"] |= bool(np.isfinite(p["se"]).any())
    epochs = sorted({int(e) for p in points.values() for e in p["epochs"]})
    if 0 < len(epochs) <= 6:  # few MI epochs: tick exactly those
        ax.set_xticks(epochs)
    caps = _caps(list(points.values()))
    vmax = max((np.nanmax(p["values"]) for p in points.values() if np.isfinite(p["values"]).any()), default=math.nan)
    for c in caps:
        drawn = np.isfinite(vmax) and vmax >= _CAP_DRAW_FRACTION * c
        if drawn:
            ax.axhline(c, gid=f"cap-{quantity}", zorder=1.5, **_CAP_STYLE)
        info["caps"].append((c, drawn))
    return info


def _legend_for_mi(infos: Sequence[dict], read: str, show_train: bool) -> list:
    handles = []
    clean_n = max((i["clean_n"] for i in infos), default=0)
    if clean_n:
        handles.append(Patch(color=_CLEAN_FILL, label=f"clean classes ({clean_n}): range"))
        handles.append(Line2D([], [], ls="--", color=_CLEAN_STYLE["color"], lw=_CLEAN_STYLE["lw"],
                              label="clean classes: mean"))
    seen = []
    for info in infos:
        seen += [g for g in info["groups"] if g not in seen]
    for i, g in enumerate(_ordered_groups(seen)):
        st = group_style(g, i)
        handles.append(Line2D([], [], color=st["color"], lw=st["lw"], marker="o", ms=4, label=GROUP_LABELS.get(g, g)))
    caps = {}
    for q_info in infos:
        for c, drawn in q_info["caps"]:
            caps.setdefault((c, drawn), []).append(q_info["quantity"])
    for (c, drawn), qs in caps.items():
        where = "" if drawn else " (above the plotted values)"
        names = " and ".join(ibq.quantity_label(q) for q in qs)
        handles.append(Line2D([], [], label=f"{names} ceiling {c:.2f} nats{where}", **_CAP_STYLE))
    if show_train and read != "train":
        handles.append(Line2D([], [], color="0.3", ls="--", label="train read (dashed)"))
    handles += _notes_handles(any(i["unconverged"] for i in infos), any(i["fallback"] for i in infos),
                              any(i["se"] for i in infos), read)
    return handles


def mi_curves_figure(mi: Mapping[str, Any], read: str = "heldout", show_train: bool = False,
                     title: Optional[str] = None, class_names: Optional[Sequence[str]] = None,
                     target: Optional[int] = None, quantities: Sequence[str] = QUANTITIES) -> Figure:
    """Figure of :func:`plot_mi_curves`."""
    mi = as_mi_histories(mi)
    fig = Figure(figsize=(12, 5.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(quantities)))
    infos = []
    for ax, q in zip(axes, quantities):
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"{ibq.quantity_label(q)} [nats]")
        ax.grid(alpha=0.3)
        ax.set_title(ibq.quantity_label(q))
        if q not in mi or not mi[q].groups:
            _no_data(ax)
            infos.append(_empty_info(q))
            continue
        infos.append(_mi_panel(ax, mi[q], read, show_train, q))
    handles = _legend_for_mi(infos, read, show_train)
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncol=min(4, len(handles)), fontsize=8, frameon=False)
    head = f"{title}: " if title else ""
    tgt = _target_phrase(target, class_names)
    fig.suptitle(f"{head}MI per group, {_READ_WORDS.get(read, read)}" + (f"; {tgt}" if tgt else ""), fontsize=10)
    return fig


def plot_mi_curves(mi: Mapping[str, Any], path: str | os.PathLike, read: str = "heldout",
                   show_train: bool = False, title: Optional[str] = None,
                   class_names: Optional[Sequence[str]] = None, target: Optional[int] = None,
                   quantities: Sequence[str] = QUANTITIES) -> str:
    """One panel per quantity (default I(X;T) and I(T;Y_pred)), nats against epoch.

    The clean classes are one band (range) with their mean dashed; the target groups are lines with
    +-1 SE error bars where available; hollow markers = critic not converged; the bound's ceiling
    dotted (see the module docstring). The legend sits below the panels, never over the data.

    Args:
      mi: the run's MI history (see the module docstring).
      path: output PNG.
      read: "heldout" or "train"; missing points fall back to the train read (open squares).
      show_train: also draw the "train" read as dashed lines (when ``read`` is "heldout").
      title: figure title prefix.
      class_names: the data set's class names, for naming the target class in the title.
      target: the target class index.
      quantities: which quantities of ``mi`` to draw (e.g. ("xt_online", "ty_online")).

    Returns:
      str(path).
    """
    return _save(mi_curves_figure(mi, read, show_train, title, class_names, target, quantities), path)


def _epoch_colours(epochs: Sequence[int]) -> dict[int, Any]:
    """One colour per distinct epoch: ordered (viridis), sampled at as many points as there are epochs."""
    epochs = sorted(set(int(e) for e in epochs))
    cmap = colormaps["viridis"]
    n = len(epochs)
    return {e: cmap(0.05 + 0.85 * (i / max(n - 1, 1))) for i, e in enumerate(epochs)}


def information_plane_figure(mi: Mapping[str, Any], read: str = "heldout", title: Optional[str] = None,
                             class_names: Optional[Sequence[str]] = None, target: Optional[int] = None) -> Figure:
    """Figure of :func:`plot_information_plane`."""
    fig = Figure(figsize=(9.5, 6.5), layout="constrained")
    ax = fig.subplots()
    mi = as_mi_histories(mi)
    xt, ty = mi.get("xt", MIHistory.empty()), mi.get("ty", MIHistory.empty())
    groups = _ordered_groups([g for g in xt.groups if g in ty.groups])
    pts = {}
    for g in groups:
        px, py = history_points(xt, g, read), history_points(ty, g, read)
        common = np.intersect1d(px["epochs"], py["epochs"])
        ix, iy = np.searchsorted(px["epochs"], common), np.searchsorted(py["epochs"], common)
        pts[g] = {"epochs": common, "x": px["values"][ix], "y": py["values"][iy], "xerr": px["se"][ix],
                  "yerr": py["se"][iy], "unconverged": px["unconverged"][ix] | py["unconverged"][iy],
                  "fell_back": px["fell_back"][ix] | py["fell_back"][iy], "xcap": px["cap"][ix], "ycap": py["cap"][iy]}
    all_epochs = sorted({int(e) for p in pts.values() for e in p["epochs"]})
    colours = _epoch_colours(all_epochs)
    any_unc = any_fb = any_se = False
    cleans = [g for g in groups if _is_clean(g)]
    if cleans:
        common = sorted(set.intersection(*(set(pts[g]["epochs"].tolist()) for g in cleans)))
        if common:
            xs = np.stack([pts[g]["x"][np.searchsorted(pts[g]["epochs"], common)] for g in cleans])
            ys = np.stack([pts[g]["y"][np.searchsorted(pts[g]["epochs"], common)] for g in cleans])
            with np.errstate(all="ignore"):
                mx, my = np.nanmean(xs, 0), np.nanmean(ys, 0)
                lo_x, hi_x, lo_y, hi_y = np.nanmin(xs, 0), np.nanmax(xs, 0), np.nanmin(ys, 0), np.nanmax(ys, 0)
            ax.errorbar(mx, my, xerr=[mx - lo_x, hi_x - mx], yerr=[my - lo_y, hi_y - my], fmt="none",
                        ecolor=_CLEAN_FILL, elinewidth=6, alpha=0.9, zorder=1, gid="clean-range")
            ax.plot(mx, my, ls="--", gid="clean-mean", **_CLEAN_STYLE)
            ax.scatter(mx, my, c=[colours[e] for e in common], s=40, marker="D", edgecolors=_CLEAN_STYLE["color"],
                       linewidths=1.0, zorder=3)
        any_unc |= any(pts[g]["unconverged"].any() for g in cleans)
    for i, g in enumerate(g for g in groups if not _is_clean(g)):
        p = pts[g]
        st = group_style(g, i)
        ax.plot(p["x"], p["y"], color=st["color"], lw=st["lw"] * 0.8, zorder=st["zorder"], gid=f"group-{g}")
        if np.isfinite(p["xerr"]).any() or np.isfinite(p["yerr"]).any():
            any_se = True
            ax.errorbar(p["x"], p["y"], xerr=np.nan_to_num(p["xerr"]), yerr=np.nan_to_num(p["yerr"]), fmt="none",
                        ecolor=st["color"], elinewidth=0.9, capsize=2, alpha=0.7, zorder=st["zorder"], gid="errorbar")
        unc = p["unconverged"]
        for mask, hollow in ((~unc, False), (unc, True)):
            if not mask.any():
                continue
            cols = [colours[int(e)] for e in p["epochs"][mask]]
            if hollow:
                ax.scatter(p["x"][mask], p["y"][mask], s=70, facecolors="white", edgecolors=cols, linewidths=2.2,
                           zorder=st["zorder"] + 1, gid="unconverged")
            else:
                ax.scatter(p["x"][mask], p["y"][mask], s=60, c=cols, edgecolors=st["color"], linewidths=1.4,
                           zorder=st["zorder"] + 1)
        if p["fell_back"].any():
            any_fb = True
            ax.scatter(p["x"][p["fell_back"]], p["y"][p["fell_back"]], marker="s", s=110, facecolors="none",
                       edgecolors=st["color"], zorder=8)
        any_unc |= bool(unc.any())
    cap_handles = []
    for axis, key in (("x", "xcap"), ("y", "ycap")):
        caps = sorted({round(float(c), 6) for p in pts.values() for c in p[key] if np.isfinite(c)})
        vals = np.concatenate([p[axis] for p in pts.values()]) if pts else np.zeros(0)
        vmax = np.nanmax(vals) if np.isfinite(vals).any() else math.nan
        for c in caps:
            drawn = np.isfinite(vmax) and vmax >= _CAP_DRAW_FRACTION * c
            if drawn:
                (ax.axvline if axis == "x" else ax.axhline)(c, gid=f"cap-{'xt' if axis == 'x' else 'ty'}", **_CAP_STYLE)
            name = "I(X;T)" if axis == "x" else "I(T;Y_pred)"
            cap_handles.append(Line2D([], [], label=f"{name} ceiling {c:.2f} nats" + ("" if drawn else " (off scale)"),
                                      **_CAP_STYLE))
    if pts:
        g_handles = []
        if cleans:
            g_handles.append(Line2D([], [], ls="--", color=_CLEAN_STYLE["color"], marker="D", ms=5,
                                    label=f"clean classes ({len(cleans)}): mean"))
            g_handles.append(Line2D([], [], color=_CLEAN_FILL, lw=6, label="clean classes: range"))
        for i, g in enumerate(g for g in groups if not _is_clean(g)):
            st = group_style(g, i)
            g_handles.append(Line2D([], [], color=st["color"], lw=st["lw"] * 0.8, marker="o", ms=6, mfc="white",
                                    label=GROUP_LABELS.get(g, g)))
        g_handles += cap_handles + _notes_handles(any_unc, any_fb, any_se, read)
        fig.legend(handles=g_handles, fontsize=8, loc="outside right upper", title="groups", title_fontsize=8)
        e_handles = [Line2D([], [], ls="none", marker="o", ms=7, color=colours[e], label=f"epoch {e}") for e in all_epochs]
        fig.legend(handles=e_handles, fontsize=8, loc="outside right lower", title="marker colour = epoch",
                   title_fontsize=8)
    else:
        _no_data(ax)
    ax.set_xlabel(QUANTITY_LABELS["xt"])
    ax.set_ylabel(QUANTITY_LABELS["ty"])
    ax.grid(alpha=0.3)
    tgt = _target_phrase(target, class_names)
    ax.set_title(f"{title + ': ' if title else ''}information plane, {_READ_WORDS.get(read, read)}"
                 + (f"; {tgt}" if tgt else ""), fontsize=9)
    return fig


def plot_information_plane(mi: Mapping[str, Any], path: str | os.PathLike, read: str = "heldout",
                           title: Optional[str] = None, class_names: Optional[Sequence[str]] = None,
                           target: Optional[int] = None) -> str:
    """Information plane: I(X;T) on x, I(T;Y_pred) on y (nats), one trajectory per group.

    Target groups are lines in their colours; the markers along them are coloured by epoch, one
    discrete colour and one legend entry per epoch (an ordered palette, so later is lighter). The
    clean classes are their mean trajectory (dashed, diamonds) with each epoch's range in both
    quantities as a grey cross. Error bars: +-1 SE in each quantity; hollow markers: a critic not
    converged; ceilings dotted. Only epochs present in both quantities are drawn.

    Args:
      mi: the run's MI history.
      path: output PNG.
      read: "heldout" or "train" (fallback to train as in :func:`plot_mi_curves`).
      title: figure title prefix.
      class_names, target: name the target class in the title.

    Returns:
      str(path).
    """
    return _save(information_plane_figure(mi, read, title, class_names, target), path)


def _records(records: Sequence[Any]) -> list[EpochRecord]:
    """Typed epoch records (metrics.jsonl's dicts are read as such)."""
    return [r if isinstance(r, EpochRecord) else EpochRecord.from_json(r) for r in records]


def _column(records: Sequence[EpochRecord], key: str) -> np.ndarray:
    return np.asarray([float(r.get(key)) if _finite(r.get(key)) else math.nan for r in records], float)


def training_curves_figure(metrics_records: Sequence[Mapping[str, Any]], title: Optional[str] = None) -> Figure:
    """Figure of :func:`plot_training_curves`."""
    recs = sorted(_records(metrics_records), key=lambda r: r.epoch)
    ep = np.asarray([r.epoch for r in recs], float)
    fig = Figure(figsize=(8, 4.8), layout="constrained")
    ax = fig.subplots()
    handles = []
    for key, label, color in (("train_accuracy", "train accuracy", "tab:blue"),
                              ("test_accuracy", "clean test accuracy", "tab:green"),
                              ("asr", "attack success rate", "tab:red")):
        v = _column(recs, key)
        if np.isfinite(v).any():
            handles += ax.plot(ep, 100.0 * v, marker="o", ms=3, color=color, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("%")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    lr = _column(recs, "lr")
    if np.isfinite(lr).any() and np.nanmin(lr) > 0:
        ax2 = ax.twinx()
        handles += ax2.plot(ep, lr, ls=":", color="0.4", label="learning rate")
        ax2.set_yscale("log")
        ax2.set_ylabel("learning rate")
    if handles:
        fig.legend(handles=handles, fontsize=8, loc="outside lower center", ncol=len(handles), frameon=False)
    ax.set_title(title or "training curves")
    return fig


def plot_training_curves(metrics_records: Sequence[Mapping[str, Any]], path: str | os.PathLike,
                         title: Optional[str] = None) -> str:
    """Clean train/test accuracy and attack success rate (percent) against epoch; learning rate on a
    second, logarithmic axis; the legend below the axes.

    Args:
      metrics_records: per-epoch dicts with "epoch" and any of "train_accuracy", "test_accuracy",
        "asr" (fractions in [0, 1]) and "lr"; missing or None values are skipped.
      path: output PNG.
      title: figure title.

    Returns:
      str(path).
    """
    return _save(training_curves_figure(metrics_records, title), path)


def _class_name(c: int, class_names: Optional[Sequence[str]]) -> str:
    return str(class_names[c]) if class_names is not None and 0 <= c < len(class_names) else f"class {c}"


def class_loss_figure(metrics_records: Sequence[Mapping[str, Any]], target: int = 0, title: Optional[str] = None,
                      class_names: Optional[Sequence[str]] = None) -> Figure:
    """Figure of :func:`plot_class_loss`."""
    recs = sorted((r for r in _records(metrics_records) if r.class_loss), key=lambda r: r.epoch)
    ep = np.asarray([r.epoch for r in recs], float)
    k = max((len(r.class_loss) for r in recs), default=0)
    loss = np.full((len(recs), k), math.nan)
    for i, r in enumerate(recs):
        loss[i, : len(r.class_loss)] = [float(v) if _finite(v) else math.nan for v in r.class_loss]
    fig = Figure(figsize=(9, 4.8), layout="constrained")
    ax = fig.subplots()
    cmap = colormaps["tab10" if k <= 10 else "tab20"]
    for c in range(k):
        if c == target:
            continue
        ax.plot(ep, loss[:, c], marker="o", ms=2, lw=1.0, color=cmap(c % cmap.N), alpha=0.8,
                label=_class_name(c, class_names))
    if 0 <= target < k:
        ax.plot(ep, loss[:, target], marker="o", ms=4, lw=3.0, color="black", zorder=5,
                label=f"{_class_name(target, class_names)} (target)")
    if k == 0:
        _no_data(ax)
    else:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    ax.set_xlabel("epoch")
    ax.set_ylabel("train loss [nats]")
    ax.grid(alpha=0.3)
    ax.set_title(title or "per-class training loss")
    return fig


def plot_class_loss(metrics_records: Sequence[Mapping[str, Any]], path: str | os.PathLike, target: int = 0,
                    title: Optional[str] = None, class_names: Optional[Sequence[str]] = None) -> str:
    """Per-class training loss against epoch, the target class highlighted (black, thick).

    Args:
      metrics_records: per-epoch dicts with "epoch" and "class_loss" (list of K floats: the mean
        training cross-entropy, nats, of the samples labelled k).
      path: output PNG.
      target: the target class.
      title: figure title.
      class_names: the data set's class names (default "class k").

    Returns:
      str(path).
    """
    return _save(class_loss_figure(metrics_records, target, title, class_names), path)


def _class_palette(n: int) -> list:
    """n class colours without the reds and black that mark the target and the backdoor."""
    if n <= 9:
        cols = [colormaps["tab10"](i) for i in range(10) if i != 3]  # 3 = tab:red
    else:
        cols = [colormaps["tab20"](i) for i in range(20) if i not in (6, 7)]  # 6, 7 = reds
    return [cols[i % len(cols)] for i in range(n)]


def embedding_figure(emb: np.ndarray, labels: np.ndarray, poisoned: np.ndarray, title: str = "",
                     class_names: Optional[Sequence[str]] = None, target: Optional[int] = None) -> Figure:
    """Figure of :func:`plot_embedding`."""
    emb = np.asarray(emb, float).reshape(-1, 2)
    labels = np.asarray(labels).astype(int).reshape(-1)
    poisoned = np.asarray(poisoned, bool).reshape(-1)
    if not (len(emb) == len(labels) == len(poisoned)):
        raise ValueError(f"emb, labels, poisoned lengths differ: {len(emb)}, {len(labels)}, {len(poisoned)}")
    fig = Figure(figsize=(9, 6.5), layout="constrained")
    ax = fig.subplots()
    classes = [int(c) for c in np.unique(labels)]
    others = [c for c in classes if c != target]
    palette = _class_palette(len(others))
    size = float(np.clip(4000.0 / max(len(emb), 1), 3.0, 25.0))
    # Legend order = drawing order: the target's marks first; zorder keeps them on top of the classes.
    if target is not None:
        m = (labels == target) & ~poisoned
        ax.scatter(emb[m, 0], emb[m, 1], s=size * 1.6, color="black", alpha=0.8, linewidths=0, zorder=4,
                   label=f"{_class_name(target, class_names)} (target), clean ({int(m.sum())})", gid="target-clean")
        backdoor = poisoned & (labels == target)
        kept = poisoned & (labels != target)
    else:
        backdoor, kept = poisoned, np.zeros_like(poisoned)
    if backdoor.any():
        into = f" labelled {_class_name(target, class_names)}" if target is not None else ""
        ax.scatter(emb[backdoor, 0], emb[backdoor, 1], s=max(size * 2, 12.0), marker="x", color="red",
                   linewidths=1.0, zorder=5, label=f"backdoor{into} ({int(backdoor.sum())})", gid="backdoor")
    if kept.any():
        ax.scatter(emb[kept, 0], emb[kept, 1], s=max(size * 2, 12.0), marker="+", color="darkorange",
                   linewidths=1.0, zorder=5, label=f"triggered, true label kept ({int(kept.sum())})", gid="kept-label")
    for i, c in enumerate(others):
        m = (labels == c) & ~poisoned
        ax.scatter(emb[m, 0], emb[m, 1], s=size, color=palette[i], alpha=0.55, linewidths=0,
                   label=_class_name(c, class_names))
    if len(emb):
        ax.legend(fontsize=7, markerscale=2, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    else:
        _no_data(ax)
    ax.set_xlabel("component 1")
    ax.set_ylabel("component 2")
    ax.grid(alpha=0.3)
    ax.set_title(title or "embedding of T")
    return fig


def plot_embedding(emb: np.ndarray, labels: np.ndarray, poisoned: np.ndarray, path: str | os.PathLike,
                   title: str = "", class_names: Optional[Sequence[str]] = None, target: Optional[int] = None) -> str:
    """Scatter of a 2-D embedding of T (e.g. :func:`ibjax.metrics.pca_2d`), coloured by class.

    The target class's clean samples are black and named "(target)"; its backdoor samples (poisoned
    and labelled ``target``) red crosses on top; poisoned samples that kept their true label (e.g.
    Adaptive-Blend's regularisation samples) orange pluses. Without ``target`` every poisoned sample
    is a red cross. Classes are named by ``class_names``; the legend sits to the right of the axes.

    Args:
      emb: f32[N, 2] coordinates.
      labels: int[N] (training) labels, for the colours.
      poisoned: bool[N] backdoor flags.
      path: output PNG.
      title: figure title.
      class_names: the data set's class names, indexed by label (default "class k").
      target: the target class.

    Returns:
      str(path).
    """
    return _save(embedding_figure(emb, labels, poisoned, title, class_names, target), path)


def stealth_comparison_figure(rows: Sequence[Mapping[str, Any]], title: Optional[str] = None) -> Figure:
    """Figure of :func:`plot_stealth_comparison`."""
    names = [str(r.get("label", r.get("attack", f"run {i}"))) for i, r in enumerate(rows)]
    comps = np.zeros((len(rows), len(STEALTH_COMPONENTS)))
    totals = np.zeros(len(rows))
    has_comps = np.zeros(len(rows), bool)
    for i, r in enumerate(rows):
        src = r.get("components") or r
        for j, key in enumerate(STEALTH_COMPONENTS):
            if _finite(src.get(key)):
                comps[i, j] = float(src[key])
                has_comps[i] = True
        totals[i] = float(r["total"]) if _finite(r.get("total")) else comps[i].sum()
    fig = Figure(figsize=(max(6.5, 1.2 * len(rows) + 3.5), 5.2), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(rows))
    colors = ("tab:blue", "navy", "tab:orange", "saddlebrown")
    bottom = np.zeros(len(rows))
    for j, key in enumerate(STEALTH_COMPONENTS):
        ax.bar(x, comps[:, j], 0.6, bottom=bottom, color=colors[j], label=key, edgecolor="white", linewidth=0.5)
        bottom += comps[:, j]
    if (~has_comps).any():  # rows with a total only: one grey bar
        ax.bar(x[~has_comps], totals[~has_comps], 0.6, color="0.6", label="total (no components)")
    top = np.maximum(bottom, totals)
    kinds: dict[str, Any] = {}
    err_colours = ("black", "tab:purple", "tab:gray")
    for i, r in enumerate(rows):
        if _finite(r.get("total_low")) and _finite(r.get("total_high")):
            kind = str(r.get("interval", "interval"))
            colour = kinds.setdefault(kind, err_colours[len(kinds) % len(err_colours)])
            lo, hi = float(r["total_low"]), float(r["total_high"])
            ax.errorbar([x[i]], [totals[i]], yerr=[[max(totals[i] - lo, 0.0)], [max(hi - totals[i], 0.0)]], fmt="none",
                        ecolor=colour, elinewidth=1.5, capsize=6, zorder=5, gid="errorbar")
            top[i] = max(top[i], hi)
        pts = [float(v) for v in r.get("points") or () if _finite(v)]
        if pts:
            jitter = np.linspace(-0.12, 0.12, len(pts)) if len(pts) > 1 else np.zeros(1)
            ax.scatter(x[i] + jitter, pts, s=16, color="white", edgecolors="black", linewidths=0.8, zorder=6,
                       gid="seed-points")
            top[i] = max(top[i], max(pts))
    scale = max(top.max(initial=0.0), 1e-6)
    for i in range(len(rows)):
        ax.text(x[i], top[i] + 0.02 * scale, f"{totals[i]:.3f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, names, rotation=20 if len(rows) > 4 else 0, ha="right" if len(rows) > 4 else "center")
    ax.set_ylabel("stealth distance (lower = more stealthy)")
    ax.set_ylim(0, max(scale * 1.15, 0.1))
    ax.grid(axis="y", alpha=0.3)
    handles, _ = ax.get_legend_handles_labels()
    handles += [Line2D([], [], color=c, marker="_", ms=12, mew=1.5, ls="-", lw=1.5, label=k) for k, c in kinds.items()]
    if any(r.get("points") for r in rows):
        handles.append(Line2D([], [], ls="none", marker="o", mfc="white", mec="black", label="single seeds"))
    ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    ax.set_title(title or "dynamics-based stealthiness per attack", fontsize=10, wrap=True)
    return fig


def plot_stealth_comparison(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike,
                            title: Optional[str] = None) -> str:
    """Stacked bars of the stealthiness metric per attack: the four components stacked, the total
    written above each bar (lower = more stealthy), error bars and single seeds where given; the
    legend to the right of the axes, never over the bars or their labels.

    Args:
      rows: dicts with "attack" (or "label", the bar's name), "total" and the components, either
        top-level keys "xt/target_clean", "xt/target", "ty/target_clean", "ty/target" or under
        "components" (the layout :func:`ibjax.metrics.stealthiness` returns); missing components are
        drawn as 0. Optional: "total_low" and "total_high" (an interval on the total, drawn as an
        error bar) with "interval" (its name in the legend, e.g. "95% CI over seeds"; one error-bar
        colour per distinct name), and "points" (the single seeds' totals, drawn as dots).
      path: output PNG.
      title: figure title.

    Returns:
      str(path).
    """
    return _save(stealth_comparison_figure(rows, title), path)


# --------------------------------------------------------------------------------------------------
# detection populations


def roc_curves_figure(curves: Mapping[str, tuple[np.ndarray, np.ndarray, float]], title: Optional[str] = None) -> Figure:
    """ROC curves, one per entry ``{label: (fpr, tpr, auroc)}`` (:func:`ibjax.defenses.roc_curve`),
    with the chance diagonal."""
    fig = Figure(figsize=(5.2, 4.6))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="0.7", lw=1, ls="--")
    for label, (fpr, tpr, a) in curves.items():
        ax.step(fpr, tpr, where="post", lw=1.6, label=f"{label} ({a:.2f})" if _finite(a) else label)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.02), title=title or "")
    if curves:
        ax.legend(fontsize=7, loc="lower right", title="AUROC", title_fontsize=7)
    else:
        _no_data(ax)
    return fig


def plot_roc_curves(curves: Mapping[str, tuple[np.ndarray, np.ndarray, float]], path: str | os.PathLike,
                    title: Optional[str] = None) -> str:
    """:func:`roc_curves_figure` as a PNG at ``path``; returns str(path)."""
    return _save(roc_curves_figure(curves, title), path)


def monitor_auroc_figure(epochs: Sequence[int], aurocs: Mapping[str, Sequence[float]], level: float = 0.9,
                         title: Optional[str] = None) -> Figure:
    """The MI monitor's AUROC against the training epoch, one line per attack ``{attack: [E]}``, the
    ``level`` a latency is read at drawn as a line."""
    fig = Figure(figsize=(5.6, 4.0))
    ax = fig.add_subplot()
    ax.axhline(level, color="0.6", lw=1, ls=":")
    ax.axhline(0.5, color="0.8", lw=1, ls="--")
    for attack, a in aurocs.items():
        ax.plot(list(epochs), list(a), marker="o", ms=3, lw=1.5, label=attack)
    ax.set(xlabel="epoch", ylabel="AUROC (clean vs backdoored models)", ylim=(0, 1.02), title=title or "")
    if aurocs:
        ax.legend(fontsize=7)
    else:
        _no_data(ax)
    return fig


def plot_monitor_auroc(epochs: Sequence[int], aurocs: Mapping[str, Sequence[float]], path: str | os.PathLike,
                       level: float = 0.9, title: Optional[str] = None) -> str:
    """:func:`monitor_auroc_figure` as a PNG at ``path``; returns str(path)."""
    return _save(monitor_auroc_figure(epochs, aurocs, level, title), path)


def stealth_detection_figure(points: Mapping[str, Sequence[tuple[str, float, float]]], xlabel: str,
                             title: Optional[str] = None) -> Figure:
    """Stealthiness against detectability: one panel per detector ``{detector: [(attack, stealth,
    auroc), ...]}``, each attack a labelled point."""
    names = list(points)
    cols = min(4, max(1, len(names)))
    rows = max(1, math.ceil(len(names) / cols))
    fig = Figure(figsize=(3.2 * cols, 2.9 * rows))
    for i, name in enumerate(names or [""]):
        ax = fig.add_subplot(rows, cols, i + 1)
        pts = [(a, x, y) for a, x, y in points.get(name, ()) if _finite(x) and _finite(y)]
        if not pts:
            _no_data(ax)
        for a, x, y in pts:
            ax.scatter([x], [y], s=22)
            ax.annotate(a, (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
        ax.set_title(name, fontsize=8)
        if all(0 <= y <= 1 for _, _, y in pts):
            ax.set_ylim(0, 1.05)
        ax.tick_params(labelsize=7)
        ax.set_xlabel(xlabel, fontsize=7)
        ax.set_ylabel("AUROC" if "/" not in name else name.split("/", 1)[1], fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def plot_stealth_detection(points: Mapping[str, Sequence[tuple[str, float, float]]], path: str | os.PathLike,
                           xlabel: str = "stealthiness (lower = more stealthy)", title: Optional[str] = None) -> str:
    """:func:`stealth_detection_figure` as a PNG at ``path``; returns str(path)."""
    return _save(stealth_detection_figure(points, xlabel, title), path)
