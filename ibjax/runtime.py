"""CPU runtime tuning for ibjax's command-line entry points: XLA:CPU fast-compile flags and glibc
malloc settings, applied at process start, before JAX starts its backend.

Both are process-wide, so only programs that own their process apply them (the entry points in
``experiments/`` and the test suite, through :func:`prepare_cpu_process`); a library embedding ibjax
decides its XLA flags and leaves its allocator alone. Both apply only where the process will compute
on the CPU, and never over a setting of the user's own; ``IBJAX_FAST_CPU_COMPILE=0`` and
``IBJAX_CPU_MALLOC=0`` switch them off. XLA reads its flags when JAX starts its backend (the first
computation, not the first import), and glibc's settings are best made before JAX starts its worker
threads: hence "first" in every entry point.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import logging
import os
import platform
import sys
from typing import MutableMapping

__all__ = ["FAST_CPU_COMPILE_FLAGS", "fast_cpu_compile_flags", "fast_cpu_compile", "CPU_MALLOC_SETTINGS",
           "cpu_malloc_settings", "tune_cpu_malloc", "prepare_cpu_process"]


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
module cut into as many parts as there are cores to compile them in parallel (XLA's default: 32).
Short CPU runs are compile-bound, so they finish sooner although some programs (the small CNN's
training step) run a little slower; the results are the same (docs/measurements.md, "CPU tuning", has the
figures). A long run may prefer ``IBJAX_FAST_CPU_COMPILE=0``; a GPU run is not touched (see
:func:`fast_cpu_compile_flags`)."""

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
kernel. XLA:CPU allocates each execution's temporary buffer afresh (tens to over a hundred MB for the
quickstart's training, evaluation and feature programs), and glibc serves allocations above 32 MB
with mmap and unmaps them on free, so every step would touch its whole buffer as new pages: millions
of page faults and seconds of kernel time in a quickstart. No mmap (big blocks come from the heap),
one arena (XLA's worker threads otherwise grow and drop heaps of their own) and up to 1 GiB of free
heap kept (256 MiB let the evaluation's blocks be trimmed in some runs): a tenth of the faults, the
same peak memory, the same results (docs/measurements.md, "CPU tuning"). One arena serialises malloc across
threads: on a many-core host, compare with ``IBJAX_CPU_MALLOC=0``."""

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
