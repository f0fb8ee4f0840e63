"""The command line of a study, generated from :class:`~ibjax.study.config.StudyConfig` with tyro.

Every field of the config tree is a flag named by its section path (``--data.name``,
``--train.epochs``, ``--mi.xt.protocol.batch-size``, ...) whose help shows its default, its choices and its unit from the dataclasses' docstrings; there
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

A flag of the flat layout before config sections (``--mi-epochs``, ``--dataset``, ``--xt.lr``, ...)
ends with an error naming its new flag.

Bad input ends with one line ``error: ...`` on stderr naming the culprit and what to do, exit code
2, before any long work starts.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import logging
import os
import re
import sys
from typing import Annotated, Literal, Optional, Sequence

import tyro

from ibjax.fields import resolve_path
from ibjax.mi import MI_ALIASES, Candidate, MIConfig
from ibjax.study.config import (STUDY_RENAMES, StudyConfig, config_diff, config_from_dict, config_to_dict, flatten_config,
                                migrate_config_dict)
from ibjax.study.presets import PRESETS
from ibjax.study.writers import WRITERS, check_writers

__all__ = ["StudyCommand", "parse_study_command", "setup_logging", "fail", "cli_errors", "default_run_dir",
           "start_runtime", "named_fields"]

PresetName = Literal[tuple(PRESETS)]  # type: ignore[valid-type]
WriterName = Literal[tuple(WRITERS)]  # type: ignore[valid-type]


@dataclasses.dataclass(frozen=True)
class StudyCommand:
    """Run one study of the information-bottleneck analysis of backdoor training, or resume one.

    Attributes:
      study: the run's configuration.
      preset: the named configuration the flags start from: default (SPEC.md's protocol with ibjax's
        estimator), reference (the authors' code exactly), fast (for a GPU), cpu (mnist5k, for 2 CPU cores).
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
      writers: live views of the records beside the run directory's files, e.g. tensorboard
        (event files in RUN_DIR/tensorboard, through tensorboardX: watch a long run with
        `tensorboard --logdir RUN_DIR`).
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
    writers: tuple[WriterName, ...] = ()


def default_run_dir(config: StudyConfig) -> str:
    name = os.path.basename(os.path.normpath(config.data.name)) or "data"
    return os.path.join("runs", f"{name}_{config.attack.name}_{config.poison.ratio}_s{config.seed}")


def fail(message: str, code: int = 2):
    """End the program with one line ``error: message`` on stderr."""
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
    raise SystemExit(code)


def comma_list(text: str, cast, flag: str) -> list:
    """``"a,b,c"`` as a list of ``cast`` values (blanks dropped); one error line naming ``--flag``
    for a value ``cast`` refuses."""
    try:
        return [cast(x.strip()) for x in text.split(",") if x.strip()]
    except ValueError:
        fail(f"--{flag}: expected a comma-separated list, got {text!r}")


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
            base = config_from_dict(_merge(config_to_dict(base), migrate_config_dict(overlay)))
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


def _flag(path: str) -> str:
    return "--" + path.replace("_", "-")


def _flag_field(arg: str) -> Optional[str]:
    """The dotted field a flag names (``--train.batch-size=64`` -> ``train.batch_size``), or None
    for an argument that is not a flag."""
    return arg[2:].split("=", 1)[0].replace("-", "_") if arg.startswith("--") else None


def named_fields(argv: Sequence[str]) -> set[str]:
    """The dotted config fields a study command line names, whatever their values (``--model.name``,
    ``--analysis.no-bound-checks`` for ``analysis.bound_checks``); other flags' names too."""
    out = set()
    for arg in argv:
        path = _flag_field(arg)
        if path is None:
            continue
        out.add(path)
        head, _, leaf = path.rpartition(".")
        if leaf.startswith("no_"):  # tyro's negated boolean flags
            out.add(f"{head}.{leaf[3:]}" if head else leaf[3:])
    return out


def grid_changes(cmd: "StudyCommand", argv: Sequence[str]) -> dict:
    """A grid command's user changes as dotted overrides: what ``cmd.study`` changes from its preset,
    and every field named on the command line ``argv`` (a flag equal to the preset's value still
    beats a grid scale's, e.g. ``--model.name resnet18`` at the cpu scale)."""
    flat = flatten_config(cmd.study)
    changes = {k: new for k, (_, new) in config_diff(PRESETS[cmd.preset], cmd.study).items()}
    changes.update({k: flat[k] for k in named_fields(argv) if k in flat})
    return changes


def _renamed_flag(arg: str) -> Optional[str]:
    """The flag of today's sections that an old flat flag ``arg`` became, or None if ``arg`` is not one."""
    name = _flag_field(arg)
    if name is None:
        return None
    if name in STUDY_RENAMES:
        return _flag(STUDY_RENAMES[name])
    head, _, leaf = name.partition(".")
    if head in ("xt", "ty") and leaf:  # --xt.lr: the estimator's flat field, now under mi.xt's sections
        try:
            return _flag(f"mi.{head}.{resolve_path(MIConfig, leaf, MI_ALIASES)}")
        except ValueError:
            return f"--mi.{head}.SECTION.FIELD"
    return None


def _check_candidates(argv: Sequence[str]) -> None:
    """Fail with the candidate's own message (tyro would only say it found no valid parse)."""
    in_candidates = False
    for arg in argv:
        if arg.startswith("--"):
            name, eq, value = arg.partition("=")
            in_candidates = name.endswith(".candidates")
            if not (in_candidates and eq):
                continue
        elif not in_candidates:
            continue
        else:
            value = arg
        try:
            Candidate(value)
        except ValueError as e:
            fail(str(e))


def _tyro_registry() -> "tyro.constructors.ConstructorRegistry":
    """tyro rules for the config's own value types: a :class:`~ibjax.mi.Candidate` is one argument,
    its FIELD=VALUE text (quoted on the command line)."""
    registry = tyro.constructors.ConstructorRegistry()

    @registry.primitive_rule
    def _candidate(type_info):
        if type_info.type is not Candidate:
            return None
        return tyro.constructors.PrimitiveConstructorSpec(
            nargs=1, metavar="'FIELD=VALUE ...'", instance_from_str=lambda args: Candidate(args[0]),
            is_instance=lambda x: isinstance(x, Candidate), str_from_instance=lambda x: [str(x)])

    return registry


def parse_study_command(argv: Optional[Sequence[str]] = None) -> StudyCommand:
    """Parse a study command line (see the module docstring). Exits with one error line on bad input."""
    argv = list(sys.argv[1:] if argv is None else argv)
    for arg in argv:
        new = _renamed_flag(arg)
        if new:
            fail(f"{arg.split('=', 1)[0]} is now {new} (the config is in sections; see --help)")
    _check_candidates(argv)
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
                           registry=_tyro_registry(),
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
    try:
        check_writers(cmd.writers)
    except ValueError as e:
        fail(str(e))
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
