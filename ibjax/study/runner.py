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

import json
import math
import resource
import time
from typing import Literal, Optional, Union

import jax

from ibjax import metrics as ibmetrics
from ibjax.checkpoint import Checkpointer
from ibjax.parallel import barrier, check_batch_divisible, describe_mesh, make_mesh
from ibjax.progress import LOGGER, Progress, phase
from ibjax.study import report
from ibjax.study.config import StudyConfig, check_config, config_diff, config_from_dict, config_to_dict
from ibjax.study.rundir import RunDirectory
from ibjax.study.setup import PRECOMPUTED_FILE, build_setup
from ibjax.study.state import RunState, StudySetup, init_run_state
from ibjax.study.steps import estimate_network_mi, representation_clustering, run_epoch

__all__ = ["run_study", "study_mesh", "open_run", "check_mesh_processes", "RunRecorder", "finalize", "resume_changes", "RESUMABLE_CHANGES",
           "memory_usage", "clustering_key"]

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


def study_mesh(devices: Optional[int] = None, mesh=None):
    """The mesh a study runs on: ``mesh`` if given, else :func:`ibjax.parallel.make_mesh` over
    ``devices`` (None: every device of the runtime, all hosts' after
    :func:`ibjax.parallel.initialize_distributed`)."""
    return mesh if mesh is not None else make_mesh(devices)


def _mesh_processes(mesh) -> set[int]:
    return {int(d.process_index) for d in mesh.devices.flat}


def check_mesh_processes(mesh) -> None:
    """ValueError unless ``mesh`` covers every process of the runtime (Orbax checkpoints only state
    that every process of an initialised distributed runtime holds part of)."""
    procs = _mesh_processes(mesh)
    if len(procs) < jax.process_count():
        raise ValueError(f"the run's devices lie on {len(procs)} of the {jax.process_count()} processes of the "
                         "distributed runtime, and Orbax checkpoints only state that all of them hold: run "
                         "process-local studies in processes that do not join a runtime (as experiments.sweep "
                         "does), or give the run every process's devices")


def open_run(config: StudyConfig, run_dir: str, *, resume: Union[bool, Literal["auto"]] = False, fresh: bool = False,
             write: bool = True) -> tuple[RunDirectory, bool]:
    """Check ``config`` and the run directory for a new run or a resume: ``(run directory, resuming)``.

    A new run's directory is prepared (:meth:`RunDirectory.prepare_new`) by the writing process only.
    Raises ValueError naming the culprit (a bad option, a directory that cannot be used, a resume
    with changed settings).
    """
    check_config(config)
    rd = RunDirectory(run_dir, write=write)
    if resume == "auto":
        resume = rd.checkpointed() and not fresh
    if resume:
        rd.check_resumable()
        saved = config_from_dict(rd.read_json("config.json"))
        completed = int((rd.manifest() or {}).get("epoch", 0))
        changes = resume_changes(saved, config, completed)
        for name, (a, b) in changes.items():
            LOGGER.warning("resuming %s with %s changed from %r to %r", rd.path, name, a, b)
    elif write:
        rd.prepare_new(fresh)
    return rd, bool(resume)


def run_study(config: StudyConfig, run_dir: str, *, resume: Union[bool, Literal["auto"]] = False, fresh: bool = False,
              progress: bool = True, devices: Optional[int] = None, mesh=None, plots: bool = True) -> dict:
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
      devices: run data-parallel over this many devices (None: all of them; see
        :func:`study_mesh`). A runtime option: results equal the one-device run's up to float
        summation order, and a run may resume on another device count.
      mesh: an explicit :mod:`ibjax.parallel` mesh instead (e.g. this process's devices only).
      plots: draw the figures at the end (``finalize`` writes every other file either way).

    In a distributed runtime whose mesh spans several processes, every process calls this with the
    same arguments; the lowest process of the mesh writes the run directory, the others only read it.

    Raises:
      ValueError (or :class:`~ibjax.data.DataUnavailableError`): a bad option or input (a batch size
        the data axis does not divide included), before any training; nothing is left behind.
      FloatingPointError: the training loss turned NaN; the last good checkpoint is kept.
    """
    mesh = study_mesh(devices, mesh)
    check_config(config)
    check_batch_divisible(config.train.batch_size, mesh)
    check_mesh_processes(mesh)
    writer = jax.process_index() == min(_mesh_processes(mesh))
    if writer:
        rd, resume = open_run(config, run_dir, resume=resume, fresh=fresh, write=True)
    barrier(f"ibjax run directory {run_dir}", mesh)  # the others read the directory once the writer prepared it
    if not writer:
        rd, resume = open_run(config, run_dir, resume=resume, fresh=fresh, write=False)
    try:
        return _run(config, rd, resume, progress, mesh, plots)
    except BaseException:
        if not resume and writer:
            rd.discard_failed_start()
        raise


class RunRecorder:
    """The recording layer of one run: history, checkpoints and the run directory's files.

    Used by :func:`run_study` for a run, and once per member by :mod:`ibjax.study.population`
    (each member keeps a normal run directory). Call :meth:`start` once the set-up is built,
    :meth:`restore` for a resume, :meth:`record` after every epoch, :meth:`finish` at the end; use it
    as a context manager so that the last checkpoint is on disk when it closes.
    """

    def __init__(self, config: StudyConfig, rd: RunDirectory, resume: bool, progress: bool, mesh=None,
                 plots: bool = True, label: str = ""):
        self.config, self.rd, self.resume, self.progress, self.plots = config, rd, resume, progress, plots
        self.label = label  # prefixes the epoch log line (a population's member)
        self.history = {"metrics": [], "mi": {}, "clustering": {}, "timings": {}}
        self.t_start = time.perf_counter()
        self.ckpt: Optional[Checkpointer] = None
        LOGGER.info("run directory %s; config:\n%s", rd.path, json.dumps(config_to_dict(config), indent=1))
        rd.write_json("config.json", config_to_dict(config))

    def precomputed(self):
        return self.rd.load_array(PRECOMPUTED_FILE)

    def keep(self, array) -> None:
        self.rd.save_array(PRECOMPUTED_FILE, array)

    def start(self, setup_seconds: float) -> None:
        self.history["timings"]["setup_s"] = setup_seconds
        self.rd.claim("checkpoints")
        self.ckpt = Checkpointer(self.rd.file("checkpoints"))

    def restore(self, state: RunState) -> RunState:
        """The checkpointed state (placed like ``state``, the fresh one) when resuming, else ``state``."""
        if not (self.resume and self.ckpt.latest_step() is not None):
            return state
        setup_s = self.history["timings"]["setup_s"]
        state, meta = self.ckpt.restore(self.ckpt.latest_step(), state)
        self.history = meta["history"]
        self.history["timings"]["setup_s"] = setup_s
        LOGGER.info("resumed %s after epoch %d", self.rd.path, int(state.epoch))
        return state

    def latest_epoch(self) -> int:
        """Epochs completed in the newest checkpoint (0 without one or when not resuming)."""
        step = self.ckpt.latest_step() if self.resume else None
        return int(step or 0)

    def add_mi(self, epoch: int, res: dict, seconds: float, record: dict) -> None:
        for q, groups in res.items():
            for name, r in groups.items():
                self.history["mi"].setdefault(q, {}).setdefault(name, {})[str(epoch)] = r
        record["mi_s"] = seconds

    def add_clustering(self, epoch: int, silhouettes: dict, embedding: dict) -> None:
        self.history["clustering"][str(epoch)] = silhouettes
        self.rd.save_arrays(f"embedding_{epoch}.npz", **embedding)

    def record(self, epoch: int, state: RunState, record: dict) -> None:
        """Append the epoch's record, checkpoint ``state`` and rewrite the history files."""
        self.history["metrics"].append(record)
        if self.progress:
            LOGGER.info("%sepoch %d/%d: train acc %.3f, test acc %.3f, ASR %.3f, lr %.3g (%.1f s)",
                        self.label, epoch, self.config.train.epochs, record["train_accuracy"],
                        record["test_accuracy"], record["asr"], record.get("lr_last", record.get("lr", math.nan)),
                        record["wall_s"])
        self.ckpt.save(epoch, state, {"history": self.history})
        if not self.rd.checkpointed():
            self.ckpt.wait()  # the first checkpoint is on disk before the run counts as resumable
            self.rd.update_manifest(checkpointed=True)
        self.rd.update_manifest(epoch=epoch)
        _write_history(self.rd, self.history)

    def close(self) -> None:
        if self.ckpt is not None:
            self.ckpt.close()

    def __enter__(self) -> "RunRecorder":
        return self

    def __exit__(self, *exc) -> None:
        # Closing waits for the last (asynchronous) save, also when an epoch raises, so the newest
        # complete checkpoint is on disk before the error reaches the caller.
        self.close()

    def finish(self, class_names=None) -> dict:
        self.history["timings"]["run_s"] = time.perf_counter() - self.t_start
        summary = finalize(self.rd, self.config, self.history, class_names=class_names, plots=self.plots)
        self.rd.update_manifest(finished=True)
        return summary


def _run(config: StudyConfig, rd: RunDirectory, resume: bool, progress: bool, mesh, plots: bool = True) -> dict:
    with RunRecorder(config, rd, resume, progress, mesh, plots) as rec:
        if progress:
            LOGGER.info("devices: %s", describe_mesh(mesh))
        with phase("setting up the run (data, attack, poisoning plan, network)", enabled=progress) as setup_phase:
            setup = build_setup(config, precomputed=rec.precomputed(), progress=progress, keep=rec.keep, mesh=mesh)
        rec.start(setup_phase.seconds)
        state = rec.restore(init_run_state(setup))
        epochs = config.train.epochs
        mi_epochs = set(config.mi_epochs) if config.offline else set()
        embed_epochs = set(config.resolved_embed_epochs)
        first = True
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
            _record_online(rec.history, record.pop("online", None), setup, epoch)
            if epoch in mi_epochs:
                t_mi = time.perf_counter()
                with phase(f"epoch {epoch}: MI of {setup.num_groups} groups ({config.feature_mode} features)",
                           enabled=progress):
                    res = estimate_network_mi(jax.random.fold_in(setup.keys.mi, epoch), state.train.variables, setup,
                                              progress=progress, label=f"epoch {epoch} ")
                rec.add_mi(epoch, res, time.perf_counter() - t_mi, record)
            if epoch in embed_epochs:
                rec.add_clustering(epoch, *representation_clustering(
                    clustering_key(setup.keys.train, epoch), state.train.variables, setup, config.embed_points))
            record["wall_s"] = time.perf_counter() - t_epoch
            rec.record(epoch, state, record)
            first = False
    return rec.finish(class_names=setup.class_names)


def clustering_key(train_key: jax.Array, epoch: int) -> jax.Array:
    """The key of an epoch's representation clustering."""
    return jax.random.fold_in(jax.random.fold_in(train_key, epoch), 2)


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


def finalize(rd: RunDirectory | str, config: StudyConfig, history: dict, class_names=None, plots: bool = True) -> dict:
    """Stealthiness, plots (unless ``plots=False``), summary.json and summary.md from the run's history
    (idempotent)."""
    rd = rd if isinstance(rd, RunDirectory) else RunDirectory(rd)
    stealth = _stealth(config, history["mi"])
    rd.write_json("stealth.json", stealth)
    plots_made = report.make_plots(rd, config, history, class_names) if rd.writable and plots else []
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
