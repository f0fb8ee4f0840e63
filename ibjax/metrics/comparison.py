"""Size-matched comparisons of a run's target groups with its clean classes, and their Markdown table.

The target class holds about twice a clean class's samples, and InfoNCE reads depend on group size;
:func:`size_matched_comparisons` says which target-vs-clean differences exceed their standard errors
and whether the whole target class's difference survives in ``target_sample``, a subsample of the
target class as large as a clean class. Values are in nats.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from ibjax.metrics.history import available_epochs, check_read, clean_groups, read_matrix
from ibjax.metrics.names import QUANTITIES
from ibjax.records import as_mi_histories

__all__ = ["SIZE_MATCHED_GROUPS", "size_matched_comparisons", "size_matched_markdown"]

SIZE_MATCHED_GROUPS = ("target", "target_clean", "target_backdoor", "target_sample")
"""Target groups compared with the clean classes by default."""


def size_matched_comparisons(mi: Mapping[str, Any], read: str = "heldout", *, epochs: Optional[Sequence[int]] = None,
                             z: float = 2.0, quantities: Sequence[str] = QUANTITIES,
                             groups: Sequence[str] = SIZE_MATCHED_GROUPS,
                             clean: Optional[Sequence[str]] = None) -> dict:
    """Which target-group-vs-clean-classes differences exceed their standard errors, and whether the
    whole target class's difference survives in the size-matched ``target_sample`` group.

    For each quantity q and epoch e: the clean classes' mean m_clean, its standard error
    sqrt(sum_c se_c^2) / C (estimator noise only: the classes are a fixed set, so their spread is
    reported separately as the clean range); for each target group g: diff = m_g - m_clean,
    diff_se = sqrt(se_g^2 + se_clean^2), and ``beyond`` = |diff| > z * diff_se. The target class holds
    about twice a clean class's samples and InfoNCE reads depend on group size, so a difference of
    the whole ``target`` group is said to *survive* when ``target_sample`` (a subsample of the target
    class the size of a clean class) is also beyond z standard errors with the same sign.
    z = 2 (about 95% two-sided); z = 1 would flag about a third of differences that are pure noise.

    Args:
      mi: the run's MI history (see :func:`stealthiness`).
      read: "heldout" or "train"; its standard errors are ``"<read>_se"``.
      epochs: epochs to report (default: every epoch that all used groups share, per quantity).
      z: how many standard errors a difference must exceed.
      quantities: quantities to report, those absent from ``mi`` are skipped (e.g. add "xt_online").
      groups: target groups to compare with the clean classes; absent ones are skipped.
      clean: clean-class groups (default every "class_*").

    Returns:
      ``{"read", "z", "quantities": {q: {str(e): {"clean": {"mean", "se", "min", "max", "n"},
      "groups": {g: {"value", "se", "diff", "diff_se", "z_score", "beyond", "outside_clean_range"}},
      "size_matched": verdict}}}, "flagged": [...]}``, values in nats. ``se``, ``diff_se``,
      ``z_score`` and ``beyond`` are None where a standard error is missing (``z_score`` also where
      the combined standard error is 0). ``verdict`` is one of
      "survives" (target and target_sample beyond z SE, same sign), "does not survive" (target beyond,
      target_sample not: probably a group-size effect), "not beyond noise" (target within z SE),
      "unknown" (a standard error or target_sample missing). ``flagged`` lists every (quantity, epoch,
      group) whose difference is beyond z SE, each with diff, diff_se and, for "target", the verdict.
    """
    check_read(read)
    mi = as_mi_histories(mi)
    if not z > 0:
        raise ValueError(f"z must be positive, got {z}")
    out: dict[str, Any] = {"read": read, "z": float(z), "quantities": {}, "flagged": []}
    for q in quantities:
        if q not in mi:
            continue
        cleans = list(clean) if clean is not None else clean_groups(mi, q)
        if not cleans:
            raise ValueError(f"MI history {q!r} has no clean classes (keys starting with 'class_')")
        present = [g for g in groups if g in mi[q].groups]
        avail = available_epochs(mi, (q,), [*present, *cleans])
        use = [int(e) for e in epochs] if epochs is not None else avail
        missing = sorted(set(use) - set(avail))
        if missing:
            raise ValueError(f"epochs {missing} missing from the {q!r} MI history; available: {avail}")
        per_epoch = {}
        for e in use:
            cv, cse = read_matrix(mi, q, cleans, [e], read)
            cv, n = cv[:, 0].astype(np.float64), len(cleans)
            c_mean = float(cv.mean())
            c_se = float(np.sqrt(np.sum(cse[:, 0].astype(np.float64) ** 2)) / n) if cse is not None else None
            entry = {"clean": {"mean": c_mean, "se": c_se, "min": float(cv.min()), "max": float(cv.max()), "n": n},
                     "groups": {}}
            for g in present:
                gv, gse = read_matrix(mi, q, [g], [e], read)
                v, se = float(gv[0, 0]), (float(gse[0, 0]) if gse is not None else None)
                diff = v - c_mean
                d_se = math.sqrt(se ** 2 + c_se ** 2) if se is not None and c_se is not None else None
                zs = diff / d_se if d_se is not None and d_se > 0 else None
                beyond = bool(abs(diff) > z * d_se) if d_se is not None else None
                entry["groups"][g] = {"value": v, "se": se, "diff": diff, "diff_se": d_se, "z_score": zs,
                                      "beyond": beyond, "outside_clean_range": bool(v < cv.min() or v > cv.max())}
            gs = entry["groups"]
            if "target" not in gs or gs["target"]["beyond"] is None:
                verdict = "unknown"
            elif not gs["target"]["beyond"]:
                verdict = "not beyond noise"
            elif "target_sample" not in gs or gs["target_sample"]["beyond"] is None:
                verdict = "unknown"
            elif gs["target_sample"]["beyond"] and np.sign(gs["target_sample"]["diff"]) == np.sign(gs["target"]["diff"]):
                verdict = "survives"
            else:
                verdict = "does not survive"
            entry["size_matched"] = verdict
            for g, r in gs.items():
                if r["beyond"]:
                    out["flagged"].append({"quantity": q, "epoch": e, "group": g, "diff": r["diff"], "diff_se": r["diff_se"],
                                           **({"size_matched": verdict} if g == "target" else {})})
            per_epoch[str(e)] = entry
        out["quantities"][q] = per_epoch
    return out


def size_matched_markdown(result: Mapping[str, Any], digits: int = 3, only_flagged: bool = False) -> str:
    """A Markdown table of :func:`size_matched_comparisons`: one row per (quantity, epoch, group);
    with ``only_flagged``, only the differences beyond noise and the whole target group's rows."""
    f = lambda v: "n/a" if v is None else f"{v:+.{digits}f}"  # noqa: E731
    lines = [f"Target groups vs the clean classes' mean ({result['read']} read, nats); 'beyond' = |diff| > "
             f"{result['z']:g} x its standard error; size-matched: does the whole target class's difference "
             "persist in target_sample (a clean-class-sized subsample)?", "",
             "| quantity | epoch | group | diff | SE | beyond | outside clean range | size-matched |",
             "|---|---|---|---|---|---|---|---|"]
    for q, per in result["quantities"].items():
        for e, entry in per.items():
            for g, r in entry["groups"].items():
                if only_flagged and not r["beyond"] and g != "target":
                    continue
                se = "n/a" if r["diff_se"] is None else f"{r['diff_se']:.{digits}f}"
                beyond = "n/a" if r["beyond"] is None else ("yes" if r["beyond"] else "no")
                sm = entry["size_matched"] if g == "target" else ""
                lines.append(f"| {q} | {e} | {g} | {f(r['diff'])} | {se} | {beyond} | "
                             f"{'yes' if r['outside_clean_range'] else 'no'} | {sm} |")
    return "\n".join(lines) + "\n"
