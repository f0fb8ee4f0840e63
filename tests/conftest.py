"""Test-session set-up: CPU only, a persistent XLA compilation cache shared with subprocesses, and a
data cache of the session's own.

Compilation dominates these small CPU tests; the cache lets the study subprocesses (resume test) and
tests that build identical programs reuse compiled executables. It lives in a temporary directory of
this session unless JAX_COMPILATION_CACHE_DIR is set (executables are keyed by their program, so a
shared one only saves time). The data cache is always the session's own: the user's ($IBJAX_CACHE or
~/.cache/ibjax) is never written by the tests, even when IBJAX_CACHE is set.
"""

import os
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Compile faster: these programs run for milliseconds to seconds, so compiling is most of the suite's
# time. The command-line entry points' fast-compile XLA flags (ibjax.runtime.FAST_CPU_COMPILE_FLAGS); every
# side of every comparison in the suite runs under the same flags, and subprocesses inherit them. Their
# malloc settings too (ibjax.runtime.CPU_MALLOC_SETTINGS: XLA's freed buffers reused, not faulted in again).
from ibjax.runtime import prepare_cpu_process  # noqa: E402 - after JAX_PLATFORMS, before JAX starts a backend

prepare_cpu_process(os.environ)
# One cache for the whole session: pytest-xdist workers (and their subprocesses) inherit the
# controlling process's environment, so they reuse each other's executables for the configurations
# many tests share. The directories are the session's own and go when it ends (_CREATED).
_CREATED: list = []


_SESSION_MARK = "IBJAX_TEST_SESSION_"


def _session_dir(variable: str, prefix: str, replace_users: bool = False) -> None:
    """Point ``variable`` at a new temporary directory, unless it already holds this session's (an
    xdist worker inherits the controller's: the mark says so) or, with ``replace_users`` False, the
    user's own setting."""
    value = os.environ.get(variable)
    if value and (os.environ.get(_SESSION_MARK + variable) == value or not replace_users):
        return
    os.environ[variable] = os.environ[_SESSION_MARK + variable] = tempfile.mkdtemp(prefix=prefix)
    _CREATED.append(os.environ[variable])


_session_dir("JAX_COMPILATION_CACHE_DIR", "ibjax-xla-cache-")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
_session_dir("IBJAX_CACHE", "ibjax-data-cache-", replace_users=True)

_BACKGROUND: list = []
_NEEDS_MULTIDEVICE = ("test_parallel.py", "test_study_population.py")


def pytest_configure(config):
    """Start the 8-device worker (tests/_scale_worker.py) in the background when the session will
    read it, in the controlling process only: under pytest-xdist the workers run other tests
    meanwhile instead of waiting for it."""
    if hasattr(config, "workerinput") or os.environ.get("IBJAX_TEST_MULTIDEVICE_OUT"):
        return
    here = os.path.dirname(os.path.abspath(__file__))
    args = [os.path.abspath(a.split("::")[0]) for a in config.args] or [here]
    wanted = any((os.path.isdir(a) and os.path.samefile(a, here)) or os.path.basename(a) in _NEEDS_MULTIDEVICE
                 for a in args if os.path.exists(a))
    if not wanted:
        return
    import sys

    sys.path.insert(0, here)
    from _scale_worker import MULTIDEVICE_ENV, start_multidevice

    out = tempfile.mkdtemp(prefix="ibjax-multidevice-")
    _CREATED.append(out)
    _BACKGROUND.append(start_multidevice(out))
    os.environ[MULTIDEVICE_ENV] = out  # inherited by pytest-xdist workers, which start after this


def pytest_unconfigure(config):
    import shutil

    for proc in _BACKGROUND:
        if proc.poll() is None:
            proc.terminate()
        proc.wait()
    # Only the process that made them removes them (under pytest-xdist: the controller, after its
    # workers have ended), so no test loses a directory it still reads.
    for path in _CREATED:
        shutil.rmtree(path, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    # The tests that read the background 8-device worker go last, so that no worker sits waiting for
    # it while other tests are left (stable sort: the order is otherwise unchanged, and the same on
    # every pytest-xdist worker, as xdist requires).
    items.sort(key=lambda item: os.path.basename(str(item.fspath)) in _NEEDS_MULTIDEVICE)
