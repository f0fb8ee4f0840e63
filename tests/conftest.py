"""Test-session set-up: CPU only, and a persistent XLA compilation cache shared with subprocesses.

Compilation dominates these small CPU tests; the cache lets the study subprocesses (resume test) and
tests that build identical programs reuse compiled executables. It lives in a temporary directory
of this session only, so no stale state leaks between runs.
"""

import os
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_CACHE = tempfile.mkdtemp(prefix="ibjax-xla-cache-")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _CACHE)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
