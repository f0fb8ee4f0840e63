"""Running studies: the recording layer around the pure steps, for one run or a population.

:func:`run_population` builds the members' set-ups (:func:`ibjax.study.population.build_population`),
then for every epoch applies :func:`~ibjax.study.steps.run_epoch` to the stacked
:class:`~ibjax.study.state.RunState`, estimates MI at the MI epochs and clusters T at the embedding
epochs, and records per member: the history in memory, an Orbax checkpoint of the member's state
(with the history as metadata), and the member's run directory's files (:mod:`ibjax.study.rundir`
says which, and the rules that keep them safe). At the end :func:`finalize` computes the
stealthiness metric and writes the plots and the summary. :func:`run_study` is the same runner with
one member; :func:`run_many` runs many studies, in populations where they are compatible. In a
member's records, ``train_s`` / ``mi_s`` / ``wall_s`` are the population's times (shared by its
members).

A run killed at any point resumes from its last checkpoint and finishes with the same results as an
uninterrupted run: every key derives from (seed, epoch), and the files are rewritten from the
checkpointed history, so nothing is lost or duplicated.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import resource
import time
from typing import Literal, Mapping, Optional, Sequence, Union

import jax
from jax.sharding import Mesh

from ibjax import metrics as ibmetrics
from ibjax.checkpoint import Checkpointer
from ibjax.defenses.registry import resolve_defenses
from ibjax.parallel import barrier, check_batch_divisible, describe_mesh, make_mesh, population_mesh, to_host
from ibjax.progress import LOGGER, Progress, phase
from ibjax.quantities import QUANTITIES
from ibjax.records import EpochRecord, MIHistory, RunHistory
from ibjax.study import report
from ibjax.study.checks import backdoor_checks
from ibjax.study.defenses import DEFENSES_FILE, population_defenses
from ibjax.study.config import StudyConfig, check_config, config_diff, config_from_dict, config_to_dict
from ibjax.study.population import (
    build_population,
    group_populations,
    member_of,
    population_incompatibility,
    stack_states,
)
from ibjax.study.rundir import RunDirectory
from ibjax.study.setup import PRECOMPUTED_FILE, reference_departures
from ibjax.study.state import RunState, init_run_state
from ibjax.study.steps import estimate_network_mi, representation_clustering, run_epoch
from ibjax.study.writers import check_writers, epoch_scalars, open_writers, writer_folders

__all__ = ["run_study", "run_population", "run_many", "study_mesh", "open_run", "check_mesh_processes", "RunRecorder",
           "finalize", "resume_changes", "RESUMABLE_CHANGES", "memory_usage", "clustering_key"]

RESUMABLE_CHANGES = ("train.epochs", "mi.epochs", "analysis.embedding.epochs", "analysis.embedding.points",
                     "analysis.stealth.epochs", "analysis.stealth.read", "analysis.stealth.normalise",
                     "analysis.stealth.classes", "analysis.embedding.method", "analysis.bound_checks",
                     "analysis.defenses", "analysis.defense_rules")
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
    for name, epochs_of in (("mi.epochs", lambda c: c.mi.epochs),
                            ("analysis.embedding.epochs", lambda c: c.analysis.embedding.epochs)):
        if name in diff:
            old_done = [e for e in epochs_of(saved) if e <= completed]
            new_done = [e for e in epochs_of(new) if e <= completed]
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
              progress: bool = True, devices: Optional[int] = None, mesh=None, plots: bool = True,
              writers: Sequence[str] = ()) -> dict:
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
      writers: live views of the records beside the run directory's files, by name from
        :data:`ibjax.study.writers.WRITERS` (``"tensorboard"``: event files in RUN_DIR/tensorboard).

    In a distributed runtime whose mesh spans several processes, every process calls this with the
    same arguments; the lowest process of the mesh writes the run directory, the others only read it.

    Raises:
      ValueError (or :class:`~ibjax.data.DataUnavailableError`): a bad option or input (a batch size
        the data axis does not divide included), before any training; nothing is left behind.
      FloatingPointError: the training loss turned NaN; the last good checkpoint is kept.
    """
    return run_population([config], [run_dir], resume=resume, fresh=fresh, progress=progress,
                          mesh=study_mesh(devices, mesh), plots=plots, writers=writers)[0]


def run_population(configs: Sequence[StudyConfig], run_dirs: Sequence[str], *,
                   resume: Union[bool, Literal["auto"]] = False, fresh: bool = False, progress: bool = True,
                   devices: Optional[int] = None, mesh: Optional[Mesh] = None,
                   runs: Optional[int] = None, plots: bool = True, writers: Sequence[str] = ()) -> list[dict]:
    """Run (or resume) a population of studies in one program; each member writes its own run directory.

    Args:
      configs: the members' configs (:func:`~ibjax.study.population.population_incompatibility`
        must find nothing; one config is always a population).
      run_dirs: one run directory per member.
      resume, fresh, progress, plots, writers: as :func:`run_study`, for every member. Resuming needs
        every member checkpointed after the same epoch (else resume them one by one with run_study).
      devices, runs: the mesh (:func:`ibjax.parallel.population_mesh`), or ``mesh`` itself.

    Returns:
      Each member's summary (as ``run_study``'s).

    Raises:
      ValueError: incompatible members, a bad option or directory, members checkpointed at different
        epochs; before any training, leaving nothing behind.
    """
    configs = list(configs)
    if len(run_dirs) != len(configs):
        raise ValueError(f"{len(configs)} configs but {len(run_dirs)} run directories")
    if len({os.path.abspath(d) for d in run_dirs}) != len(run_dirs):
        raise ValueError("two members share a run directory: give each its own")
    why = population_incompatibility(configs)
    if why:
        raise ValueError(f"these runs cannot share one population: {why}")
    check_writers(writers)
    mesh = mesh if mesh is not None else population_mesh(len(configs), devices, runs=runs)
    check_batch_divisible(configs[0].train.batch_size, mesh)
    check_mesh_processes(mesh)
    writer = jax.process_index() == min(_mesh_processes(mesh))
    opened = []
    try:
        if writer:
            opened = [open_run(c, d, resume=resume, fresh=fresh, write=True) for c, d in zip(configs, run_dirs)]
        # The others read the directories once the writer prepared them.
        barrier(f"ibjax run directory {run_dirs[0]}", mesh)
        if not writer:
            opened = [open_run(c, d, resume=resume, fresh=fresh, write=False) for c, d in zip(configs, run_dirs)]
        done = {int((rd.manifest() or {}).get("epoch", 0)) if resumed else 0 for rd, resumed in opened}
        if len(done) > 1:
            raise ValueError(f"the members are checkpointed after different epochs ({sorted(done)}): resume them one "
                             "by one with run_study (or experiments.sweep, which does)")
        return _run(configs, opened, progress, mesh, plots, tuple(writers))
    except BaseException:
        if writer:
            for rd, resumed in opened:
                if not resumed:
                    rd.discard_failed_start()
        raise


class RunRecorder:
    """The recording layer of one run: history, checkpoints, the run directory's files and the
    optional writers (:mod:`ibjax.study.writers`: live views such as TensorBoard event files).

    One per member of a population (each member keeps a normal run directory). Call :meth:`start`
    once the set-up is built, :meth:`restore` for a resume, :meth:`record` after every epoch,
    :meth:`finish` at the end; use it as a context manager so that the last checkpoint is on disk
    when it closes.
    """

    def __init__(self, config: StudyConfig, rd: RunDirectory, resume: bool, progress: bool, mesh=None,
                 plots: bool = True, label: str = "", writers: Sequence[str] = ()):
        self.config, self.rd, self.resume, self.progress, self.plots = config, rd, resume, progress, plots
        self.label = label  # prefixes the epoch log line (a population's member)
        self.writer_names = tuple(writers)
        self.writers: Optional[list] = None  # opened at the first recorded epoch (a resume purges later ones)
        self.history = RunHistory()
        self.t_start = time.perf_counter()
        self.ckpt: Optional[Checkpointer] = None
        self.sample_losses = None  # float16 [epochs, N]: every training sample's loss per epoch
        LOGGER.info("run directory %s; config:\n%s", rd.path, json.dumps(config_to_dict(config), indent=1))
        rd.write_json("config.json", config_to_dict(config))

    def precomputed(self):
        return self.rd.load_array(PRECOMPUTED_FILE)

    def keep(self, array) -> None:
        self.rd.save_array(PRECOMPUTED_FILE, array)

    def start(self, setup_seconds: float) -> None:
        self.history.timings["setup_s"] = setup_seconds
        self.rd.claim("checkpoints")
        self.ckpt = Checkpointer(self.rd.file("checkpoints"))

    def restore(self, state: RunState) -> RunState:
        """The checkpointed state (placed like ``state``, the fresh one) when resuming, else ``state``."""
        if not (self.resume and self.ckpt.latest_step() is not None):
            return state
        setup_s = self.history.timings["setup_s"]
        state, meta = self.ckpt.restore(self.ckpt.latest_step(), state)
        self.history = RunHistory.from_json(meta["history"], f"the checkpoint of {self.rd.path}")
        self.history.timings["setup_s"] = setup_s
        kept = self.rd.load_array(SAMPLE_LOSSES_FILE)  # None for runs from before the file existed
        if kept is not None and len(kept) >= int(state.epoch):
            self.sample_losses = kept[: int(state.epoch)]
        LOGGER.info("resumed %s after epoch %d", self.rd.path, int(state.epoch))
        return state

    def latest_epoch(self) -> int:
        """Epochs completed in the newest checkpoint (0 without one or when not resuming)."""
        step = self.ckpt.latest_step() if self.resume else None
        return int(step or 0)

    def add_mi(self, epoch: int, res: dict, seconds: float, record: dict) -> None:
        for q, groups in res.items():
            self.history.add_mi(q, epoch, groups)
        record["mi_s"] = seconds

    def add_sample_losses(self, epoch: int, losses) -> None:
        """Keep the epoch's per-sample training losses (f32[N]) in ``sample_losses.npy`` (float16
        [epochs, N]), written before the epoch's checkpoint; rows past a resumed checkpoint are
        dropped first (:meth:`restore`)."""
        import numpy as np

        rows = np.asarray(losses, np.float16)[None]
        # earlier epochs: kept, or NaN where a run from before this file resumed
        prev = np.full((epoch - 1, rows.shape[1]), np.nan, np.float16) if self.sample_losses is None \
            else self.sample_losses[: epoch - 1]
        self.sample_losses = np.concatenate([prev, rows])
        self.rd.save_array(SAMPLE_LOSSES_FILE, self.sample_losses)

    def add_clustering(self, epoch: int, silhouettes: dict, embedding: dict) -> None:
        self.history.clustering[epoch] = silhouettes
        self.rd.save_arrays(f"embedding_{epoch}.npz", **embedding)

    def record(self, epoch: int, state: RunState, record: dict) -> None:
        """Append the epoch's record (the step's measurements), checkpoint ``state`` and rewrite the
        history files."""
        rec = EpochRecord.from_json(record)
        self.history.records.append(rec)
        if self.progress:
            LOGGER.info("%sepoch %d/%d: train acc %.3f, test acc %.3f, ASR %.3f, lr %.3g (%.1f s)",
                        self.label, epoch, self.config.train.epochs, rec.train_accuracy, rec.test_accuracy, rec.asr,
                        rec.lr_last, rec.wall_s)
        self.ckpt.save(epoch, state, {"history": self.history.to_json()})
        if not self.rd.checkpointed():
            self.ckpt.wait()  # the first checkpoint is on disk before the run counts as resumable
            self.rd.update_manifest(checkpointed=True)
        self.rd.update_manifest(epoch=epoch)
        _write_history(self.rd, self.history)
        if self.writer_names and self.rd.writable:
            if self.writers is None:
                self.rd.claim(*writer_folders(self.writer_names))
                self.writers = open_writers(self.writer_names, self.rd.path, epoch)
            scalars = epoch_scalars(rec, self.history.mi, epoch)
            for w in self.writers:
                w.write(epoch, scalars)

    def close(self) -> None:
        for w in self.writers or ():
            w.close()
        self.writers = None
        if self.ckpt is not None:
            self.ckpt.close()

    def __enter__(self) -> "RunRecorder":
        return self

    def __exit__(self, *exc) -> None:
        # Closing waits for the last (asynchronous) save, also when an epoch raises, so the newest
        # complete checkpoint is on disk before the error reaches the caller.
        self.close()

    def finish(self, class_names=None) -> dict:
        self.history.timings["run_s"] = time.perf_counter() - self.t_start
        summary = finalize(self.rd, self.config, self.history, class_names=class_names, plots=self.plots)
        self.rd.update_manifest(finished=True)
        return summary


def _run(configs: Sequence[StudyConfig], opened, progress: bool, mesh: Mesh, plots: bool = True,
         writers: tuple[str, ...] = ()) -> list[dict]:
    size = len(configs)
    runs = "" if size == 1 else f" ({size} runs)"
    recorders = [RunRecorder(c, rd, resumed, progress, mesh, plots, label="" if size == 1 else f"[run {r}] ",
                             writers=writers) for r, (c, (rd, resumed)) in enumerate(zip(configs, opened))]
    with contextlib.ExitStack() as stack:
        for rec in recorders:
            stack.enter_context(rec)
        if progress:
            LOGGER.info("%s %s", "devices:" if size == 1 else f"population of {size} runs on", describe_mesh(mesh))
        what = "the run (data, attack, poisoning plan, network)" if size == 1 else \
            f"{size} runs (data, attacks, poisoning plans, networks)"
        with phase(f"setting up {what}", enabled=progress) as setup_phase:
            pop = build_population(configs, mesh=mesh, progress=progress,
                                   precomputed=[rec.precomputed() for rec in recorders],
                                   keep=[rec.keep for rec in recorders])
        for rec in recorders:
            rec.start(setup_phase.seconds)
        state = stack_states([rec.restore(init_run_state(m)) for rec, m in zip(recorders, pop.members)], mesh)
        config = pop.config
        epochs = config.train.epochs
        mi_epochs = set(config.mi.epochs) if config.mi.offline else set()
        embed_epochs = set(config.resolved_embed_epochs)
        first = True
        for epoch in range(int(to_host(state.epoch)[0]) + 1, epochs + 1):
            t_epoch = time.perf_counter()
            bar = Progress(f"epoch {epoch}/{epochs} train{runs}", pop.steps_per_epoch, "step", enabled=progress,
                           first_is_compile=first)
            try:
                state, records = run_epoch(state, pop, progress=bar)
            except FloatingPointError as err:
                kept = (f"the last good checkpoint (epoch {epoch - 1}) is kept in {recorders[0].rd.file('checkpoints')}"
                        if size == 1 else f"the last good checkpoints (epoch {epoch - 1}) are kept")
                raise FloatingPointError(f"epoch {epoch}: {err}; {kept}") from err
            finally:
                bar.close()
            train_s = time.perf_counter() - t_epoch
            for rec, record, m in zip(recorders, records, pop.members):
                record["train_s"] = train_s
                rec.add_sample_losses(epoch, record.pop("sample_loss"))
                _record_online(rec.history, record.pop("online", None), m, epoch)
            if epoch in mi_epochs:
                t_mi = time.perf_counter()
                groups = "" if size == 1 else f"{size} runs x "
                with phase(f"epoch {epoch}: MI of {groups}{pop.members[0].num_groups} groups "
                           f"({config.mi.features} features)", enabled=progress):
                    res = estimate_network_mi([jax.random.fold_in(m.keys.mi, epoch) for m in pop.members],
                                              state.train.variables, pop, progress=progress, label=f"epoch {epoch} ")
                mi_s = time.perf_counter() - t_mi
                for rec, record, r in zip(recorders, records, res):
                    rec.add_mi(epoch, r, mi_s, record)
            if epoch in embed_epochs:
                clustered = representation_clustering([clustering_key(m.keys.train, epoch) for m in pop.members],
                                                      state.train.variables, pop, config.analysis.embedding.points,
                                                      config.analysis.embedding.method)
                for rec, (silhouettes, embedding) in zip(recorders, clustered):
                    rec.add_clustering(epoch, silhouettes, embedding)
            if epoch == epochs and config.analysis.bound_checks:
                # Written before the last checkpoint: a run that resumes finished never recomputes them.
                with phase("bound checks H(B), I(B;Y), I(B;Y_pred), I(X;B)", enabled=progress):
                    checks = backdoor_checks([jax.random.fold_in(m.keys.mi, CHECKS_FOLD) for m in pop.members],
                                             state.train.variables, pop)
                for rec, c in zip(recorders, checks):
                    rec.rd.write_json(CHECKS_FILE, c)
            if epoch == epochs and config.analysis.defenses:
                with phase(f"defences: {', '.join(resolve_defenses(config.analysis.defenses))}", enabled=progress):
                    found = population_defenses([jax.random.fold_in(m.keys.mi, DEFENSES_FOLD) for m in pop.members],
                                                jax.tree.map(to_host, state.train.variables), pop,
                                                [rec.sample_losses for rec in recorders],
                                                [rec.history.mi for rec in recorders])
                for rec, d in zip(recorders, found):
                    rec.rd.write_json(DEFENSES_FILE, d)
            host = jax.tree.map(to_host, state)
            wall_s = time.perf_counter() - t_epoch
            for r, (rec, record) in enumerate(zip(recorders, records)):
                record["wall_s"] = wall_s
                rec.record(epoch, member_of(host, r), record)
            first = False
    return [rec.finish(class_names=m.class_names) for rec, m in zip(recorders, pop.members)]


CHECKS_FILE = "checks.json"
SAMPLE_LOSSES_FILE = "sample_losses.npy"
CHECKS_FOLD = 1_000_003  # the bound checks' key: fold_in(mi key, this), apart from every epoch's fold_in(mi, epoch)
DEFENSES_FOLD = 1_000_033  # the defences' key, likewise


def clustering_key(train_key: jax.Array, epoch: int) -> jax.Array:
    """The key of an epoch's representation clustering."""
    return jax.random.fold_in(jax.random.fold_in(train_key, epoch), 2)


def _record_online(history: RunHistory, reads: Optional[dict], setup, epoch: int) -> None:
    """Online reads (on each step's new pairs, which the critic had not trained on) as "heldout"."""
    if reads is None:
        return
    for q, values in reads.items():
        history.add_mi(QUANTITIES[q].online_name, epoch,
                       {name: {"heldout": v} for name, v in zip(setup.plan.group_names, values)})


def _write_history(rd: RunDirectory, history: RunHistory) -> None:
    """The run directory's record files (JSON at the boundary)."""
    rd.write_jsonl("metrics.jsonl", history.records_json())
    rd.write_json("mi.json", history.mi_json())
    rd.write_json("clustering.json", history.clustering_json())


def _stealth(config: StudyConfig, mi_hist: Mapping[str, MIHistory]) -> dict:
    """The stealthiness metric for both reads, with the epochs actually used (a warning if fewer)."""
    if "xt" not in mi_hist or "ty" not in mi_hist:
        return {}
    available = ibmetrics.available_epochs(mi_hist)
    epochs = ibmetrics.select_epochs(available, config.analysis.stealth.epochs)
    if sorted(epochs) != sorted(set(config.analysis.stealth.epochs)):
        LOGGER.warning("stealthiness: epochs %s requested, MI exists at %s: using %s", list(config.analysis.stealth.epochs),
                       available, epochs)
    clean = [f"class_{c}" for c in config.analysis.stealth.classes] or None
    out = {}
    for read in ("heldout", "train"):
        try:
            out[read] = ibmetrics.stealthiness(mi_hist, epochs=epochs, read=read, normalise=config.analysis.stealth.normalise,
                                               clean=clean)
            out[read]["size_matched"] = ibmetrics.size_matched_comparisons(mi_hist, read, clean=clean)
        except ValueError as err:  # e.g. no held-out split (heldout_fraction=0): keep the other read
            out[read] = {"error": str(err)}
        out[read]["requested_epochs"] = list(config.analysis.stealth.epochs)
    return out


def finalize(rd: RunDirectory | str, config: StudyConfig, history: RunHistory, class_names=None,
             plots: bool = True) -> dict:
    """Stealthiness, plots (unless ``plots=False``), summary.json and summary.md from the run's history
    (idempotent)."""
    rd = rd if isinstance(rd, RunDirectory) else RunDirectory(rd)
    stealth = _stealth(config, history.mi)
    rd.write_json("stealth.json", stealth)
    checks = rd.read_json(CHECKS_FILE) if os.path.exists(rd.file(CHECKS_FILE)) else None
    defenses = rd.read_json(DEFENSES_FILE) if os.path.exists(rd.file(DEFENSES_FILE)) else None
    plots_made = report.make_plots(rd, config, history, class_names) if rd.writable and plots else []
    records = history.records
    summary = {
        "run_dir": rd.path,
        "attack": config.attack.name,
        "dataset": config.data.name,
        "model": config.model.name,
        "poison_ratio": config.poison.ratio,
        "seed": config.seed,
        "epochs": len(records),
        "test_accuracy": records[-1].test_accuracy if records else None,
        "asr": records[-1].asr if records else None,
        "stealth_read": config.analysis.stealth.read,
        "warnings": reference_departures(config),
        "stealth": stealth,
        "bound_checks": checks,
        "defenses": defenses,
        **{name: math.fsum(v for r in records if (v := getattr(r, name)) is not None and math.isfinite(v))
           for name in ("train_s", "mi_s", "wall_s")},
        "timings": dict(history.timings),
        "memory": memory_usage(),
        "plots": plots_made,
    }
    rd.write_json("summary.json", summary)
    rd.write_text("summary.md", report.summary_markdown(config, history, summary))
    return summary


def run_many(configs: Sequence[StudyConfig], run_dirs: Sequence[str], *, max_population: Optional[int] = None,
             populations: bool = True, progress: bool = True, devices: Optional[int] = None,
             writers: Sequence[str] = ()) -> list[dict]:
    """Run (or resume, or read when finished: ``resume="auto"``) many studies, in populations where
    they are compatible and one by one otherwise. Returns the summaries in the order of ``configs``.

    Runs join a population only with runs in the same state (all new, or all checkpointed after the
    same unfinished epoch); finished runs are read again alone, which costs no training.
    """
    configs, run_dirs = list(configs), list(run_dirs)
    states = []
    for d in run_dirs:
        rd = RunDirectory(d)
        m = rd.manifest() or {}
        states.append("finished" if m.get("finished") else int(m.get("epoch", 0)) if rd.checkpointed() else 0)
    groups = (group_populations(configs, max_population, keys=states) if populations
              else [[i] for i in range(len(configs))])
    out: list = [None] * len(configs)
    for group in groups:
        if len(group) > 1 and states[group[0]] != "finished":
            summaries = run_population([configs[i] for i in group], [run_dirs[i] for i in group], resume="auto",
                                       progress=progress, devices=devices, writers=writers)
        else:
            summaries = [run_study(configs[i], run_dirs[i], resume="auto", progress=progress, devices=devices,
                                   writers=writers) for i in group]
        for i, s in zip(group, summaries):
            out[i] = s
    return out
