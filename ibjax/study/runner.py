"""One run of the study: the recording layer around the pure steps.

:func:`run_study` builds the run's set-up (:mod:`ibjax.study.setup`), then for every epoch applies
:func:`~ibjax.study.steps.run_epoch` to the :class:`~ibjax.study.state.RunState`, estimates MI at
the MI epochs and clusters T at the embedding epochs, and records: the history in memory, an Orbax
checkpoint of the state (with the history as metadata), and the run directory's files
(:mod:`ibjax.study.rundir` says which, and the rules that keep them safe). At the end
:func:`finalize` computes the stealthiness metric and writes the plots and the summary.

A run killed at any point resumes from its last checkpoint and finishes with the same results as an
uninterrupted run: every key derives from (seed, epoch), and the files are rewritten from the
checkpointed history, so nothing is lost or duplicated.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import resource
import sys
import time
from typing import Literal, Optional, Union

import jax
import numpy as np

from ibjax import metrics as ibmetrics
from ibjax.checkpoint import Checkpointer
from ibjax.progress import LOGGER, Progress, phase
from ibjax.study import report
from ibjax.study.config import StudyConfig, check_config, config_diff, config_from_dict, config_to_dict
from ibjax.study.rundir import RunDirectory
from ibjax.study.setup import PRECOMPUTED_FILE, build_setup
from ibjax.study.state import RunState, StudySetup, init_run_state
from ibjax.study.steps import QUANTITY_LABELS, estimate_network_mi, representation_clustering, run_epoch

__all__ = ["run_study", "finalize", "resume_changes", "RESUMABLE_CHANGES", "memory_usage"]

RESUMABLE_CHANGES = ("train.epochs", "mi_epochs", "embed_epochs", "embed_points", "stealth_epochs", "stealth_read",
                     "stealth_normalise", "stealth_classes")
"""Fields a resumed run may change: they extend the run or only change the analysis at the end."""


def resume_changes(saved: StudyConfig, new: StudyConfig, completed: int) -> dict:
    """The changes ``new`` makes to a saved run after ``completed`` epochs, if a resume may make them.

    Raises ValueError naming every field that a resume cannot change (everything that would make
    the epochs already done differ from the ones the new config would have done).
    """
    diff = config_diff(saved, new)
    bad = {k: v for k, v in diff.items() if k not in RESUMABLE_CHANGES}
    if "train.epochs" in diff:
        if saved.train.schedule == "cosine":
            bad["train.epochs"] = diff["train.epochs"]  # the cosine schedule's length is part of every step
        elif new.train.epochs < completed:
            bad["train.epochs"] = diff["train.epochs"]
    for name in ("mi_epochs", "embed_epochs"):
        if name in diff:
            old_done = [e for e in getattr(saved, name) if e <= completed]
            new_done = [e for e in getattr(new, name) if e <= completed]
            if old_done != new_done:
                bad[name] = diff[name]
    if bad:
        fields = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in bad.items())
        raise ValueError(f"cannot resume with changed settings ({fields}); only more epochs (not with a cosine "
                         f"schedule), later MI/embedding epochs and the stealthiness settings can change on a "
                         f"resume: drop those flags or start a new run with --out")
    return diff


def memory_usage() -> dict:
    """Peak host memory (resident set, MiB) of this process and peak device memory (MiB) where the
    backend reports it (GPUs and TPUs do; the CPU backend does not)."""
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    out = {"peak_host_rss_mib": round(rss_kib / 1024, 1), "peak_device_mib": None}
    try:
        stats = jax.devices()[0].memory_stats() or {}
        if "peak_bytes_in_use" in stats:
            out["peak_device_mib"] = round(stats["peak_bytes_in_use"] / 2**20, 1)
    except Exception:  # noqa: BLE001 - memory stats are optional
        pass
    return out


def run_study(config: StudyConfig, run_dir: str, *, resume: Union[bool, Literal["auto"]] = False, fresh: bool = False,
              progress: bool = True) -> dict:
    """Run (or resume) one study and write its run directory. Returns the summary dict.

    Args:
      config: the run's config. On resume it may differ from the saved one only in
        :data:`RESUMABLE_CHANGES` (more epochs, later MI epochs, the stealthiness settings).
      run_dir: the run directory.
      resume: continue the run in ``run_dir`` from its last checkpoint; "auto": resume if
        ``run_dir`` holds a checkpointed run, else start one.
      fresh: start a new run in a directory that holds an earlier run, removing ibjax's files of it
        (never anything else).
      progress: log phases and draw progress (logger "ibjax", level INFO).

    Raises:
      ValueError (or :class:`~ibjax.data.DataUnavailableError`): a bad option or input, before any
        training; nothing is left behind.
      FloatingPointError: the training loss turned NaN; the last good checkpoint is kept.
    """
    check_config(config)
    rd = RunDirectory(run_dir)
    if resume == "auto":
        resume = rd.checkpointed() and not fresh
    if resume:
        rd.check_resumable()
        saved = config_from_dict(rd.read_json("config.json"))
        completed = int((rd.manifest() or {}).get("epoch", 0))
        changes = resume_changes(saved, config, completed)
        for name, (a, b) in changes.items():
            LOGGER.warning("resuming %s with %s changed from %r to %r", rd.path, name, a, b)
    else:
        rd.prepare_new(fresh)
    try:
        return _run(config, rd, bool(resume), progress)
    except BaseException:
        if not resume:
            rd.discard_failed_start()
        raise


def _run(config: StudyConfig, rd: RunDirectory, resume: bool, progress: bool) -> dict:
    t_start = time.perf_counter()
    LOGGER.info("run directory %s; config:\n%s", rd.path, json.dumps(config_to_dict(config), indent=1))
    rd.write_json("config.json", config_to_dict(config))
    with phase("setting up the run (data, attack, poisoning plan, network)", enabled=progress) as setup_phase:
        setup = build_setup(config, precomputed=rd.load_array(PRECOMPUTED_FILE), progress=progress,
                            keep=lambda a: rd.save_array(PRECOMPUTED_FILE, a))
    state = init_run_state(setup)
    history = {"metrics": [], "mi": {}, "clustering": {}, "timings": {"setup_s": setup_phase.seconds}}
    rd.claim("checkpoints")
    ckpt = Checkpointer(rd.file("checkpoints"))
    if resume and ckpt.latest_step() is not None:
        state, meta = ckpt.restore(ckpt.latest_step(), state)
        history = meta["history"]
        history["timings"]["setup_s"] = setup_phase.seconds
        LOGGER.info("resumed %s after epoch %d", rd.path, int(state.epoch))
    epochs = config.train.epochs
    mi_epochs = set(config.mi_epochs) if config.offline else set()
    embed_epochs = set(config.resolved_embed_epochs)
    first = True
    # Closing waits for the last (asynchronous) save, also when an epoch raises, so the newest
    # complete checkpoint is on disk before the error reaches the caller.
    with ckpt:
        for epoch in range(int(state.epoch) + 1, epochs + 1):
            t_epoch = time.perf_counter()
            bar = Progress(f"epoch {epoch}/{epochs} train", setup.steps_per_epoch, "step", enabled=progress,
                           first_is_compile=first)
            try:
                state, record = run_epoch(state, setup, progress=bar)
            except FloatingPointError as err:
                raise FloatingPointError(f"epoch {epoch}: {err}; the last good checkpoint (epoch {epoch - 1}) is "
                                         f"kept in {rd.file('checkpoints')}") from err
            finally:
                bar.close()
            record["train_s"] = time.perf_counter() - t_epoch
            _record_online(history, record.pop("online", None), setup, epoch)
            if epoch in mi_epochs:
                t_mi = time.perf_counter()
                with phase(f"epoch {epoch}: MI of {setup.num_groups} groups ({config.feature_mode} features)",
                           enabled=progress):
                    res = estimate_network_mi(jax.random.fold_in(setup.keys.mi, epoch), state.train.variables, setup,
                                              progress=progress, label=f"epoch {epoch} ")
                for q, groups in res.items():
                    for name, r in groups.items():
                        history["mi"].setdefault(q, {}).setdefault(name, {})[str(epoch)] = r
                record["mi_s"] = time.perf_counter() - t_mi
            if epoch in embed_epochs:
                sil, emb = representation_clustering(jax.random.fold_in(jax.random.fold_in(setup.keys.train, epoch), 2),
                                                      state.train.variables, setup, config.embed_points)
                history["clustering"][str(epoch)] = sil
                rd.save_arrays(f"embedding_{epoch}.npz", **emb)
            record["wall_s"] = time.perf_counter() - t_epoch
            history["metrics"].append(record)
            if progress:
                LOGGER.info("epoch %d/%d: train acc %.3f, test acc %.3f, ASR %.3f, lr %.3g (%.1f s)", epoch, epochs,
                            record["train_accuracy"], record["test_accuracy"], record["asr"],
                            record.get("lr_last", record.get("lr", math.nan)), record["wall_s"])
            ckpt.save(epoch, state, {"history": history})
            if not rd.checkpointed():
                ckpt.wait()  # the first checkpoint is on disk before the run counts as resumable
                rd.update_manifest(checkpointed=True)
            rd.update_manifest(epoch=epoch)
            _write_history(rd, history)
            first = False
    history["timings"]["run_s"] = time.perf_counter() - t_start
    summary = finalize(rd, config, history, class_names=setup.class_names)
    rd.update_manifest(finished=True)
    return summary


def _record_online(history: dict, reads: Optional[dict], setup: StudySetup, epoch: int) -> None:
    """Online reads (on each step's new pairs, which the critic had not trained on) as "heldout"."""
    if reads is None:
        return
    for q, values in reads.items():
        hist = history["mi"].setdefault(f"{q}_online", {})
        for name, v in zip(setup.plan.group_names, values):
            hist.setdefault(name, {})[str(epoch)] = {"heldout": v}


def _write_history(rd: RunDirectory, history: dict) -> None:
    rd.write_jsonl("metrics.jsonl", history["metrics"])
    rd.write_json("mi.json", history["mi"])
    rd.write_json("clustering.json", history["clustering"])


def _stealth(config: StudyConfig, mi_hist: dict) -> dict:
    """The stealthiness metric for both reads, with the epochs actually used (a warning if fewer)."""
    if "xt" not in mi_hist or "ty" not in mi_hist:
        return {}
    available = ibmetrics.available_epochs(mi_hist)
    epochs = ibmetrics.select_epochs(available, config.stealth_epochs)
    if sorted(epochs) != sorted(set(config.stealth_epochs)):
        LOGGER.warning("stealthiness: epochs %s requested, MI exists at %s: using %s", list(config.stealth_epochs),
                       available, epochs)
    clean = [f"class_{c}" for c in config.stealth_classes] or None
    out = {}
    for read in ("heldout", "train"):
        try:
            out[read] = ibmetrics.stealthiness(mi_hist, epochs=epochs, read=read, normalise=config.stealth_normalise,
                                               clean=clean)
            out[read]["size_matched"] = ibmetrics.size_matched_comparisons(mi_hist, read, clean=clean)
        except ValueError as err:  # e.g. no held-out split (heldout_fraction=0): keep the other read
            out[read] = {"error": str(err)}
        out[read]["requested_epochs"] = list(config.stealth_epochs)
    return out


def finalize(rd: RunDirectory | str, config: StudyConfig, history: dict, class_names=None) -> dict:
    """Stealthiness, plots, summary.json and summary.md from the run's history (idempotent)."""
    rd = rd if isinstance(rd, RunDirectory) else RunDirectory(rd)
    stealth = _stealth(config, history["mi"])
    rd.write_json("stealth.json", stealth)
    plots_made = report.make_plots(rd, config, history, class_names)
    records = history["metrics"]
    last = records[-1] if records else {}
    summary = {
        "run_dir": rd.path,
        "attack": config.attack,
        "dataset": config.dataset,
        "model": config.model.name,
        "poison_ratio": config.poison.ratio,
        "seed": config.seed,
        "epochs": len(records),
        "test_accuracy": last.get("test_accuracy"),
        "asr": last.get("asr"),
        "stealth_read": config.stealth_read,
        "stealth": stealth,
        "train_s": float(sum(r.get("train_s", 0.0) for r in records)),
        "mi_s": float(sum(r.get("mi_s", 0.0) for r in records)),
        "wall_s": float(sum(r.get("wall_s", 0.0) for r in records)),
        "timings": history.get("timings", {}),
        "memory": memory_usage(),
        "plots": plots_made,
    }
    rd.write_json("summary.json", summary)
    rd.write_text("summary.md", report.summary_markdown(config, history, summary))
    return summary
