"""Figures of a run: MI curves, information plane, training curves, per-class loss, T embedding, stealthiness.

Every function takes plain Python / numpy structures as loaded from a run's files, writes one PNG to
``path`` (parent folders created) and returns ``str(path)``. Figures are built on
:class:`matplotlib.figure.Figure` and rendered by the Agg canvas directly: pyplot's global state and
the interactive backends are never touched (nothing is shown), so this is safe in scripts, tests and
threads.

MI histories have the layout ``mi[quantity][group][str(epoch)] = {"train": float, "heldout": float,
"trajectory": [...]}`` with quantity ``"xt"`` (I(X;T)) or ``"ty"`` (I(T;Y_pred)), in nats. Where the
requested read is missing (None or NaN, e.g. a run without a held-out split), the ``"train"`` read is
used for that point, drawn with an open square marker, and the figure's title says so.

Group colours follow the study: target_backdoor red, target_clean blue, target_sample green, target
black and thick, clean classes thin grey.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

__all__ = [
    "QUANTITY_LABELS",
    "STEALTH_COMPONENTS",
    "group_style",
    "mi_series",
    "plot_mi_curves",
    "plot_information_plane",
    "plot_training_curves",
    "plot_class_loss",
    "plot_embedding",
    "plot_stealth_comparison",
]

QUANTITY_LABELS = {"xt": "I(X;T) [nats]", "ty": "I(T;Y_pred) [nats]"}
STEALTH_COMPONENTS = ("xt/target_clean", "xt/target", "ty/target_clean", "ty/target")

_TARGET_STYLES = {
    "target_backdoor": dict(color="tab:red", lw=1.8, zorder=4, alpha=1.0),
    "target_clean": dict(color="tab:blue", lw=1.8, zorder=4, alpha=1.0),
    "target_sample": dict(color="tab:green", lw=1.8, zorder=4, alpha=1.0),
    "target": dict(color="black", lw=3.0, zorder=5, alpha=1.0),
}
_CLEAN_STYLE = dict(color="0.6", lw=0.9, zorder=2, alpha=0.8)
_DPI = 120


def group_style(name: str, index: int = 0) -> dict:
    """Line style of a group: ``color``, ``lw``, ``zorder``, ``alpha`` (matplotlib keywords).

    The study's colours for the target groups, thin grey for clean classes (``class_*``), and the
    ``tab10`` colour ``index`` for any other group.
    """
    if name in _TARGET_STYLES:
        return dict(_TARGET_STYLES[name])
    if name.startswith("class_"):
        return dict(_CLEAN_STYLE)
    return dict(color=colormaps["tab10"](index % 10), lw=1.5, zorder=3, alpha=1.0)


def _finite(v: Any) -> bool:
    try:
        return v is not None and math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def mi_series(group_history: Mapping[str, Any], read: str = "heldout") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One group's MI over epochs, with the fallback to the train read.

    Args:
      group_history: ``{str(epoch): {"train": float, "heldout": float, ...}}``.
      read: "heldout" or "train".

    Returns:
      (epochs int[E] sorted, values f64[E] in nats, fell_back bool[E]): ``fell_back`` marks points
      whose ``read`` value was None/NaN and the "train" value was used; a point with neither is NaN.
    """
    epochs = sorted(int(e) for e in group_history)
    values, fell_back = [], []
    for e in epochs:
        entry = group_history[str(e)] if str(e) in group_history else group_history[e]
        v = entry.get(read) if isinstance(entry, Mapping) else entry
        fb = False
        if not _finite(v) and read != "train" and isinstance(entry, Mapping):
            v, fb = entry.get("train"), True
        values.append(float(v) if _finite(v) else math.nan)
        fell_back.append(fb and _finite(v))
    return np.asarray(epochs, int), np.asarray(values, float), np.asarray(fell_back, bool)


def _ordered_groups(groups: Sequence[str]) -> list[str]:
    """Clean classes first (drawn behind), then the other groups, the target groups last."""
    order = ["target_sample", "target_clean", "target_backdoor", "target"]
    cleans = sorted((g for g in groups if g.startswith("class_")),
                    key=lambda g: (0, int(g[6:])) if g[6:].isdigit() else (1, g))
    others = sorted(g for g in groups if g not in order and not g.startswith("class_"))
    return cleans + others + [g for g in order if g in groups]


def _save(fig: Figure, path: str | os.PathLike) -> str:
    """Lay out ``fig`` and write it as a PNG at ``path`` (parent folders created); returns str(path)."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=_DPI, format="png")
    return str(path)


def _no_data(ax) -> None:
    ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)


def _fallback_note(read: str, any_fallback: bool) -> str:
    return f" ({read} missing at some points: train read used, open squares)" if any_fallback else ""


def _legend_handles(groups: Sequence[str], fallback_groups: set[str]) -> list[Line2D]:
    handles, clean_done = [], False
    for i, g in enumerate(groups):
        if g.startswith("class_"):
            if clean_done:
                continue
            clean_done = True
            label = "clean classes"
        else:
            label = g
        if g in fallback_groups or (g.startswith("class_") and any(f.startswith("class_") for f in fallback_groups)):
            label += " (train read)"
        st = group_style(g, i)
        handles.append(Line2D([], [], color=st["color"], lw=st["lw"], marker="o", ms=3, label=label))
    return handles


def plot_mi_curves(mi: Mapping[str, Any], path: str | os.PathLike, read: str = "heldout",
                   show_train: bool = False, title: Optional[str] = None) -> str:
    """Two panels, I(X;T) and I(T;Y_pred) in nats against epoch, one line per group.

    Args:
      mi: the run's MI history (see the module docstring).
      path: output PNG.
      read: "heldout" or "train"; missing held-out points fall back to the train read (open squares,
        noted in the title and legend).
      show_train: also draw the "train" read as dashed lines (when ``read`` is "heldout").
      title: figure title prefix.

    Returns:
      str(path).
    """
    fig = Figure(figsize=(12, 4.6))
    axes = fig.subplots(1, 2)
    any_fb = False
    fb_groups: set[str] = set()
    all_groups: list[str] = []
    for ax, q in zip(axes, ("xt", "ty")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(QUANTITY_LABELS[q])
        ax.grid(alpha=0.3)
        if q not in mi or not mi[q]:
            _no_data(ax)
            continue
        groups = _ordered_groups(list(mi[q]))
        all_groups += [g for g in groups if g not in all_groups]
        for i, g in enumerate(groups):
            st = group_style(g, i)
            ep, v, fb = mi_series(mi[q][g], read)
            ax.plot(ep, v, marker="o", ms=3, **st)
            if fb.any():
                any_fb = True
                fb_groups.add(g)
                ax.plot(ep[fb], v[fb], ls="none", marker="s", ms=7, mfc="none", mec=st["color"], zorder=6)
            if show_train and read != "train":
                ep_t, v_t, _ = mi_series(mi[q][g], "train")
                ax.plot(ep_t, v_t, ls="--", lw=max(st["lw"] * 0.7, 0.6), color=st["color"], alpha=0.7, zorder=st["zorder"])
        ax.set_title(QUANTITY_LABELS[q].split(" ")[0])
    handles = _legend_handles(_ordered_groups(all_groups), fb_groups)
    if show_train and read != "train":
        handles.append(Line2D([], [], color="0.3", ls="--", label="train read"))
    if handles:
        axes[1].legend(handles=handles, fontsize=8, loc="best")
    fig.suptitle(f"{title + ': ' if title else ''}MI per group, {read} read{_fallback_note(read, any_fb)}", fontsize=10)
    return _save(fig, path)


def plot_information_plane(mi: Mapping[str, Any], path: str | os.PathLike, read: str = "heldout",
                           title: Optional[str] = None) -> str:
    """Information plane: I(X;T) on x, I(T;Y_pred) on y (nats), one trajectory per group.

    Lines are in the group colours; the markers along each trajectory are coloured by epoch
    (viridis, with a colour bar). Only epochs present in both quantities are drawn.

    Args:
      mi: the run's MI history.
      path: output PNG.
      read: "heldout" or "train" (fallback to train as in :func:`plot_mi_curves`).
      title: figure title prefix.

    Returns:
      str(path).
    """
    fig = Figure(figsize=(7.5, 6))
    ax = fig.subplots()
    xt, ty = mi.get("xt", {}), mi.get("ty", {})
    groups = _ordered_groups([g for g in xt if g in ty])
    series = {}
    for g in groups:
        ex, vx, fx = mi_series(xt[g], read)
        ey, vy, fy = mi_series(ty[g], read)
        common = np.intersect1d(ex, ey)
        ix, iy = np.searchsorted(ex, common), np.searchsorted(ey, common)
        series[g] = (common, vx[ix], vy[iy], fx[ix] | fy[iy])
    all_epochs = np.concatenate([s[0] for s in series.values()]) if series else np.zeros(0)
    norm = Normalize(vmin=float(all_epochs.min()) if all_epochs.size else 0.0,
                     vmax=float(all_epochs.max()) if all_epochs.size else 1.0)
    any_fb, fb_groups, sc = False, set(), None
    for i, g in enumerate(groups):
        ep, x, y, fb = series[g]
        st = group_style(g, i)
        ax.plot(x, y, **st)
        sc = ax.scatter(x, y, c=ep, cmap="viridis", norm=norm, s=28 if not g.startswith("class_") else 12,
                        edgecolors=st["color"], linewidths=0.8, zorder=st["zorder"] + 1)
        if fb.any():
            any_fb = True
            fb_groups.add(g)
            ax.scatter(x[fb], y[fb], marker="s", s=70, facecolors="none", edgecolors=st["color"], zorder=8)
    if sc is not None:
        fig.colorbar(sc, ax=ax, label="epoch")
        ax.legend(handles=_legend_handles(groups, fb_groups), fontsize=8, loc="best")
    else:
        _no_data(ax)
    ax.set_xlabel(QUANTITY_LABELS["xt"])
    ax.set_ylabel(QUANTITY_LABELS["ty"])
    ax.grid(alpha=0.3)
    ax.set_title(f"{title + ': ' if title else ''}information plane, {read} read{_fallback_note(read, any_fb)}", fontsize=9)
    return _save(fig, path)


def _column(records: Sequence[Mapping[str, Any]], key: str) -> np.ndarray:
    return np.asarray([float(r[key]) if _finite(r.get(key)) else math.nan for r in records], float)


def plot_training_curves(metrics_records: Sequence[Mapping[str, Any]], path: str | os.PathLike,
                         title: Optional[str] = None) -> str:
    """Clean train/test accuracy and attack success rate (percent) against epoch; learning rate on a
    second, logarithmic axis.

    Args:
      metrics_records: per-epoch dicts with "epoch" and any of "train_accuracy", "test_accuracy",
        "asr" (fractions in [0, 1]) and "lr"; missing or None values are skipped.
      path: output PNG.
      title: figure title.

    Returns:
      str(path).
    """
    recs = sorted(metrics_records, key=lambda r: r["epoch"])
    ep = np.asarray([r["epoch"] for r in recs], float)
    fig = Figure(figsize=(8, 4.8))
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
        ax.legend(handles=handles, fontsize=8, loc="center right")
    ax.set_title(title or "training curves")
    return _save(fig, path)


def plot_class_loss(metrics_records: Sequence[Mapping[str, Any]], path: str | os.PathLike, target: int = 0,
                    title: Optional[str] = None) -> str:
    """Per-class training loss against epoch, the target class highlighted (black, thick).

    Args:
      metrics_records: per-epoch dicts with "epoch" and "class_loss" (list of K floats: the mean
        training cross-entropy, nats, of the samples labelled k).
      path: output PNG.
      target: the target class.
      title: figure title.

    Returns:
      str(path).
    """
    recs = sorted((r for r in metrics_records if r.get("class_loss") is not None), key=lambda r: r["epoch"])
    ep = np.asarray([r["epoch"] for r in recs], float)
    k = max((len(r["class_loss"]) for r in recs), default=0)
    loss = np.full((len(recs), k), math.nan)
    for i, r in enumerate(recs):
        loss[i, : len(r["class_loss"])] = [float(v) if _finite(v) else math.nan for v in r["class_loss"]]
    fig = Figure(figsize=(8, 4.8))
    ax = fig.subplots()
    cmap = colormaps["tab10" if k <= 10 else "tab20"]
    for c in range(k):
        if c == target:
            continue
        ax.plot(ep, loss[:, c], marker="o", ms=2, lw=1.0, color=cmap(c % cmap.N), alpha=0.8, label=f"class {c}")
    if 0 <= target < k:
        ax.plot(ep, loss[:, target], marker="o", ms=4, lw=3.0, color="black", zorder=5, label=f"class {target} (target)")
    if k == 0:
        _no_data(ax)
    else:
        ax.legend(fontsize=7, ncol=2, loc="best")
    ax.set_xlabel("epoch")
    ax.set_ylabel("train loss [nats]")
    ax.grid(alpha=0.3)
    ax.set_title(title or "per-class training loss")
    return _save(fig, path)


def plot_embedding(emb: np.ndarray, labels: np.ndarray, poisoned: np.ndarray, path: str | os.PathLike,
                   title: str = "", class_names: Optional[Sequence[str]] = None) -> str:
    """Scatter of a 2-D embedding of T (e.g. :func:`ibjax.metrics.pca_2d`), coloured by class, the
    backdoor samples drawn on top as red crosses.

    Args:
      emb: f32[N, 2] coordinates.
      labels: int[N] (training) labels, for the colours.
      poisoned: bool[N] backdoor flags.
      path: output PNG.
      title: figure title.
      class_names: optional names of the classes for the legend.

    Returns:
      str(path).
    """
    emb = np.asarray(emb, float).reshape(-1, 2)
    labels = np.asarray(labels).astype(int).reshape(-1)
    poisoned = np.asarray(poisoned, bool).reshape(-1)
    if not (len(emb) == len(labels) == len(poisoned)):
        raise ValueError(f"emb, labels, poisoned lengths differ: {len(emb)}, {len(labels)}, {len(poisoned)}")
    fig = Figure(figsize=(7.5, 6.5))
    ax = fig.subplots()
    classes = np.unique(labels)
    cmap = colormaps["tab10" if len(classes) <= 10 else "tab20"]
    size = float(np.clip(4000.0 / max(len(emb), 1), 3.0, 25.0))
    for i, c in enumerate(classes):
        m = (labels == c) & ~poisoned
        name = class_names[c] if class_names is not None and 0 <= c < len(class_names) else f"class {c}"
        ax.scatter(emb[m, 0], emb[m, 1], s=size, color=cmap(i % cmap.N), alpha=0.6, linewidths=0, label=name)
    if poisoned.any():
        ax.scatter(emb[poisoned, 0], emb[poisoned, 1], s=max(size * 2, 12.0), marker="x", color="red",
                   linewidths=1.0, zorder=5, label=f"backdoor ({int(poisoned.sum())})")
    if len(emb):
        ax.legend(fontsize=7, markerscale=2, loc="best")
    else:
        _no_data(ax)
    ax.set_xlabel("component 1")
    ax.set_ylabel("component 2")
    ax.grid(alpha=0.3)
    ax.set_title(title or "embedding of T")
    return _save(fig, path)


def plot_stealth_comparison(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike,
                            title: Optional[str] = None) -> str:
    """Stacked bars of the stealthiness metric per attack: the four components stacked, the total
    written above each bar (lower = more stealthy).

    Args:
      rows: dicts with "attack" (name), "total" and the components, either top-level keys
        "xt/target_clean", "xt/target", "ty/target_clean", "ty/target" or under "components" (the
        layout :func:`ibjax.metrics.stealthiness` returns). Missing components are drawn as 0.
      path: output PNG.
      title: figure title.

    Returns:
      str(path).
    """
    names = [str(r.get("attack", f"run {i}")) for i, r in enumerate(rows)]
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
    fig = Figure(figsize=(max(6.0, 1.1 * len(rows) + 3.0), 4.8))
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
    for i in range(len(rows)):
        ax.text(x[i], top[i] + 0.02 * max(top.max(initial=0.0), 1e-6), f"{totals[i]:.3f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, names, rotation=20 if len(rows) > 4 else 0)
    ax.set_ylabel("stealth distance (lower = more stealthy)")
    ax.set_ylim(0, max(top.max(initial=0.0) * 1.15, 0.1))
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(title or "dynamics-based stealthiness per attack")
    return _save(fig, path)
