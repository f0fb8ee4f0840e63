"""The command line of a study, generated from :class:`~ibjax.study.config.StudyConfig` with tyro.

Every field of the config tree is a flag (``--dataset``, ``--train.epochs``, ``--xt.batch-size``,
...) whose help shows its default, its choices and its unit from the dataclasses' docstrings; there
is no hand-written list of flags to fall out of step with the config. tyro is used because it builds
nested, typed flags straight from frozen dataclasses (Literal types become choices, tuples become
lists of values) and reads their Google-style docstrings for help; ml_collections' config flags
would need a second, untyped ConfigDict description of the same tree.

Layers, each overriding the one before: the ``--preset`` (default, reference, fast, cpu), then a
``--config`` JSON file (a whole or partial StudyConfig), then the flags. With ``--resume RUN_DIR`` the
saved config of that run is the starting point instead, and flags may only extend it (more epochs,
later MI epochs, the stealthiness settings). ``--help`` shows the defaults of the chosen preset.

Runtime options (``--devices``, ``--distributed``) are fields of the command, not of the study's
config: they choose where a run computes, never what it computes (a run on 8 devices equals the run
on one up to float rounding, and may resume on another device count), so they are not saved in
config.json and a resume may change them.

Bad input ends with one line ``error: ...`` on stderr naming the culprit and what to do, exit code
2, before any long work starts.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import importlib.metadata
import io
import json
import logging
import os
import platform
import re
import sys
from typing import Annotated, Literal, MutableMapping, Optional, Sequence

import tyro

from ibjax.study.config import StudyConfig, config_from_dict, config_to_dict
from ibjax.study.presets import PRESETS

__all__ = ["StudyCommand", "parse_study_command", "setup_logging", "fail", "cli_errors", "default_run_dir",
           "start_runtime", "FAST_CPU_COMPILE_FLAGS", "fast_cpu_compile_flags", "fast_cpu_compile",
           "CPU_MALLOC_SETTINGS", "cpu_malloc_settings", "tune_cpu_malloc", "prepare_cpu_process"]

PresetName = Literal[tuple(PRESETS)]  # type: ignore[valid-type]


@dataclasses.dataclass(frozen=True)
class StudyCommand:
    """Run one study of the information-bottleneck analysis of backdoor training, or resume one.

    Attributes:
      study: the run's configuration.
      preset: the named configuration the flags start from: default (SPEC.md's protocol with ibjax's
        estimator), reference (the authors' code exactly), fast (for a GPU), cpu (mnist5k, about 57 s on 2 cores).
      config: a JSON file with a whole or partial StudyConfig, applied on top of the preset.
      out: run directory of a new run (default runs/<dataset>_<attack>_<ratio>_s<seed>).
      resume: run directory to continue from its last checkpoint; its saved config is the starting
        point, and flags may only extend it (more epochs, later MI epochs, stealthiness settings).
      fresh: start over in --out although it holds an earlier run: ibjax's files of that run are
        removed first (never any other file).
      quiet: log warnings and errors only (no progress).
      devices: devices to run data-parallel on (default: all of them: this host's, or every host's
        in a distributed runtime); train.batch_size must be a multiple of it. A runtime option:
        results equal a one-device run up to float rounding.
      distributed: join a multi-process runtime before anything else: auto (when
        JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID are set), on (also let JAX
        detect a Cloud TPU VM / SLURM / Open MPI cluster), off.
    """

    study: Annotated[StudyConfig, tyro.conf.arg(name="")] = StudyConfig()
    preset: PresetName = "default"
    config: Optional[str] = None
    out: Optional[str] = None
    resume: Optional[str] = None
    fresh: bool = False
    quiet: bool = False
    devices: Optional[int] = None
    distributed: Literal["auto", "on", "off"] = "auto"


def default_run_dir(config: StudyConfig) -> str:
    name = os.path.basename(os.path.normpath(config.dataset)) or "data"
    return os.path.join("runs", f"{name}_{config.attack}_{config.poison.ratio}_s{config.seed}")


def fail(message: str, code: int = 2):
    """End the program with one line ``error: message`` on stderr."""
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
    raise SystemExit(code)


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for k, v in update.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _starting_config(pre: argparse.Namespace) -> StudyConfig:
    if pre.resume:
        path = os.path.join(pre.resume, "config.json")
        if not os.path.isdir(pre.resume):
            fail(f"cannot resume {pre.resume!r}: no such directory (start a new run with --out)")
        if not os.path.exists(path):
            fail(f"cannot resume {pre.resume!r}: it holds no ibjax run (no config.json); start a new run with --out")
        try:
            with open(path) as f:
                return config_from_dict(json.load(f))
        except (ValueError, OSError) as e:
            fail(f"cannot resume {pre.resume!r}: its config.json is unreadable ({e})")
    if pre.preset not in PRESETS:
        fail(f"unknown preset {pre.preset!r}; presets: {', '.join(PRESETS)}")
    base = PRESETS[pre.preset]
    if pre.config:
        try:
            with open(pre.config) as f:
                overlay = json.load(f)
        except OSError as e:
            fail(f"cannot read config file {pre.config!r}: {e.strerror or e}")
        except json.JSONDecodeError as e:
            fail(f"config file {pre.config!r} is not valid JSON: {e}")
        if not isinstance(overlay, dict):
            fail(f"config file {pre.config!r} must hold a JSON object (a whole or partial StudyConfig)")
        try:
            base = config_from_dict(_merge(config_to_dict(base), overlay))
        except (ValueError, TypeError) as e:
            fail(f"config file {pre.config!r}: {e}")
    return base


_BOX = re.compile(r"[│╭╮╰╯─┃━]+")


def _tyro_error(text: str) -> str:
    """The message of tyro's boxed error, as one line: the box's first paragraph (its title if empty)."""
    raw = text.splitlines()
    title = _BOX.sub(" ", raw[0]).strip() if raw else ""
    body = []
    for line in raw[1:]:
        clean = _BOX.sub(" ", line).strip()
        if not clean:
            if body:
                break  # a separator line: the first paragraph is complete
            continue
        body.append(clean)
    return " ".join(body) or title or "invalid arguments"


def parse_study_command(argv: Optional[Sequence[str]] = None) -> StudyCommand:
    """Parse a study command line (see the module docstring). Exits with one error line on bad input."""
    argv = list(sys.argv[1:] if argv is None else argv)
    pre_parser = argparse.ArgumentParser(add_help=False)
    pre_parser.add_argument("--preset", default="default")
    pre_parser.add_argument("--config", default=None)
    pre_parser.add_argument("--resume", default=None)
    pre, _ = pre_parser.parse_known_args(argv)
    base = _starting_config(pre)
    default = StudyCommand(study=base, preset=pre.preset if pre.preset in PRESETS else "default")
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            cmd = tyro.cli(StudyCommand, default=default, args=argv, prog="python -m experiments.study",
                           description=StudyCommand.__doc__.split("\n\n")[0])
    except SystemExit as e:
        if e.code in (0, None):  # --help: tyro printed it (to stdout)
            sys.stderr.write(err.getvalue())
            raise
        fail(f"{_tyro_error(err.getvalue())} (see --help)")
    if cmd.resume and cmd.out and os.path.abspath(cmd.out) != os.path.abspath(cmd.resume):
        fail("--resume continues the run in its own directory: drop --out")
    if cmd.resume and cmd.fresh:
        fail("--fresh starts over and --resume continues: choose one")
    if cmd.devices is not None and cmd.devices < 1:
        fail(f"--devices must be >= 1, got {cmd.devices}")
    return cmd


def start_runtime(cmd: StudyCommand):
    """Join the distributed runtime the command asks for (before any JAX work) and return
    :class:`ibjax.parallel.DistributedInfo`; a malformed environment is a one-line error."""
    from ibjax.parallel import initialize_distributed

    try:
        return initialize_distributed(cmd.distributed)
    except (ValueError, RuntimeError) as e:
        fail(f"cannot join the distributed runtime: {e}")


def setup_logging(quiet: bool = False) -> None:
    """Log ibjax's messages (logger "ibjax") to stderr: INFO and up, or WARNING and up if quiet."""
    logger = logging.getLogger("ibjax")
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    if not any(getattr(h, "_ibjax_cli", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
        handler._ibjax_cli = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False


@contextlib.contextmanager
def cli_errors():
    """Turn the library's bad-input errors into one ``error:`` line and exit code 2 (a NaN loss: 1)."""
    from ibjax.data import DataUnavailableError

    try:
        yield
    except (ValueError, DataUnavailableError) as e:
        fail(str(e))
    except FloatingPointError as e:
        fail(str(e), code=1)


def _usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


FAST_CPU_COMPILE_FLAGS = (
    "--xla_cpu_use_fusion_emitters=false",
    "--xla_backend_optimization_level=1",
    "--xla_llvm_disable_expensive_passes=true",
    f"--xla_cpu_parallel_codegen_split_count={min(32, _usable_cores())}",
)
"""XLA flags under which XLA:CPU compiles ibjax's programs several times faster: XLA's older LLVM
fusion emitters instead of its MLIR ones, LLVM's cheaper optimisation passes, and a program's LLVM
module cut into as many parts as there are cores to compile them in parallel (XLA's default: 32). On 2
cores (2026-11-23) the first three compiled the quickstart's 60 programs in 13.7 s instead of 36.4 s
and ran it in 162 s instead of 165 s back to back (the cores' speed drifts ~15% between runs); the
13-group estimator compiled in 4.5 s instead of 9 s and ran as fast, the small CNN's training step ran
0-10% slower; the test suite took 566 s instead of 709 s. Two parts instead of 32 on 2 cores
(2026-11-24): the quickstart in 58.1 / 59.0 s instead of 59.8 / 60.3 s, alternating, same results
(with :data:`CPU_MALLOC_SETTINGS` in both).
Short CPU runs are compile-bound; a long one may prefer ``IBJAX_FAST_CPU_COMPILE=0``; a GPU run is
not touched (see :func:`fast_cpu_compile_flags`)."""

_FAST_COMPILE_JAXLIB = ((0, 10),)
"""jaxlib (major, minor) versions the flags were checked with: XLA aborts on a flag it does not know,
and the fusion-emitter flag goes when the older emitters do, so other versions get XLA's defaults."""


def _switched_off(env: MutableMapping[str, str], variable: str) -> bool:
    return env.get(variable, "1").strip().lower() in ("0", "false", "no", "off")


def _computes_on_cpu(env: MutableMapping[str, str]) -> bool:
    """Whether JAX will compute on the CPU: JAX_PLATFORMS is cpu, or unset with no GPU/TPU plugin."""
    platforms = [p.strip().lower() for p in env.get("JAX_PLATFORMS", "").split(",") if p.strip()]
    if platforms:
        return platforms == ["cpu"]
    return not _accelerator_plugin_installed()


def _accelerator_plugin_installed() -> bool:
    """Whether a PJRT plugin for a GPU or TPU is installed (JAX would then prefer that device)."""
    if importlib.metadata.entry_points(group="jax_plugins"):
        return True
    names = {(d.metadata["Name"] or "").lower().replace("_", "-") for d in importlib.metadata.distributions()}
    return any(n.startswith(("jax-cuda", "jax-rocm", "libtpu")) for n in names)


def _jaxlib_version() -> tuple[int, int]:
    major, minor = importlib.metadata.version("jaxlib").split(".")[:2]
    return int(major), int(minor)


def fast_cpu_compile_flags(env: MutableMapping[str, str] = os.environ) -> tuple[str, ...]:
    """The :data:`FAST_CPU_COMPILE_FLAGS` a process with environment ``env`` should add to XLA_FLAGS.

    None when ``IBJAX_FAST_CPU_COMPILE=0``, when the process may compute on an accelerator (JAX_PLATFORMS
    names another platform than cpu, or is unset and a GPU/TPU plugin is installed), or when jaxlib is
    not a version they were checked with; otherwise those whose XLA option XLA_FLAGS does not set yet
    (the user's own setting wins).
    """
    if _switched_off(env, "IBJAX_FAST_CPU_COMPILE") or not _computes_on_cpu(env):
        return ()
    if _jaxlib_version() not in _FAST_COMPILE_JAXLIB:
        return ()
    present = env.get("XLA_FLAGS", "")
    return tuple(f for f in FAST_CPU_COMPILE_FLAGS if f.split("=")[0] not in present)


def fast_cpu_compile(env: MutableMapping[str, str] = os.environ) -> tuple[str, ...]:
    """Add :func:`fast_cpu_compile_flags` to ``env["XLA_FLAGS"]`` and return them.

    XLA reads the flags when JAX starts its backend, so the command-line entry points call this first,
    before any JAX computation; a library embedding ibjax decides its XLA flags itself.
    """
    flags = fast_cpu_compile_flags(env)
    if flags:
        env["XLA_FLAGS"] = " ".join(x for x in (env.get("XLA_FLAGS", "").strip(), *flags) if x)
        logging.getLogger("ibjax").debug("XLA:CPU fast-compile flags added: %s", " ".join(flags))
    return flags


CPU_MALLOC_SETTINGS = {"M_MMAP_MAX": 0, "M_ARENA_MAX": 1, "M_TRIM_THRESHOLD": 1 << 30}
"""glibc malloc settings under which XLA:CPU reuses its freed buffers instead of returning them to the
kernel. XLA:CPU allocates each execution's temporary buffer afresh (the quickstart's training step:
35.7 MB, its evaluation and feature programs: 138 MB), and glibc serves allocations above 32 MB with
mmap and unmaps them on free, so every step touched its whole buffer as new pages: 5.5 to 6.5 million
page faults and 14 to 16 s of kernel time in a 65 s quickstart. No mmap (big blocks come from the
heap), one arena (XLA's worker threads otherwise grow and drop heaps of their own) and up to 1 GiB of
free heap kept (256 MiB let the evaluation's blocks be trimmed in some runs): 0.22 to 0.26 million
faults, 1.9 s of kernel time, the same peak RSS (0.95 to 1.12 GB against 1.03). With the codegen split
count of :data:`FAST_CPU_COMPILE_FLAGS`, side by side: the quickstart in 57.0 s instead of 64.7 s, same
results (2-core AMD EPYC, 2026-11-24, README "Measured results"). One arena serialises malloc across
threads: on a many-core host, compare with ``IBJAX_CPU_MALLOC=0`` (not measured there)."""

_MALLOPT_PARAMS = {"M_TRIM_THRESHOLD": -1, "M_MMAP_MAX": -4, "M_ARENA_MAX": -8}  # glibc's <malloc.h>


def cpu_malloc_settings(env: MutableMapping[str, str] = os.environ) -> dict[str, int]:
    """The :data:`CPU_MALLOC_SETTINGS` a process with environment ``env`` should apply.

    Empty when ``IBJAX_CPU_MALLOC=0``, when the process may compute on an accelerator (as for
    :func:`fast_cpu_compile_flags`), when the C library is not glibc, or when the user tunes malloc
    already (GLIBC_TUNABLES names a malloc setting, or a MALLOC_* variable is set).
    """
    if _switched_off(env, "IBJAX_CPU_MALLOC") or not _computes_on_cpu(env):
        return {}
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return {}
    if "malloc" in env.get("GLIBC_TUNABLES", "") or any(k.startswith("MALLOC_") for k in env):
        return {}
    return dict(CPU_MALLOC_SETTINGS)


def tune_cpu_malloc(env: MutableMapping[str, str] = os.environ) -> dict[str, int]:
    """Apply :func:`cpu_malloc_settings` to this process with glibc's ``mallopt``; return those applied.

    Process-wide, so only the command-line entry points call it, first (before JAX starts its worker
    threads, which would otherwise each take an arena); a library embedding ibjax leaves its
    process's allocator alone.
    """
    settings = cpu_malloc_settings(env)
    if not settings:
        return {}
    libc = ctypes.CDLL(None)
    applied = {name: value for name, value in settings.items() if libc.mallopt(_MALLOPT_PARAMS[name], value) == 1}
    logging.getLogger("ibjax").debug("glibc malloc settings applied: %s", applied)
    return applied


def prepare_cpu_process(env: MutableMapping[str, str] = os.environ) -> None:
    """What every command-line entry point does first, before JAX starts its backend: on a CPU-only
    run, :func:`fast_cpu_compile`'s XLA flags and :func:`tune_cpu_malloc`'s allocator settings."""
    fast_cpu_compile(env)
    tune_cpu_malloc(env)
