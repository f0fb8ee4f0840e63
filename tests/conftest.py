"""Test-session set-up: CPU only, a persistent XLA compilation cache shared with subprocesses, and a
data cache of the session's own.

Compilation dominates these small CPU tests; the cache lets the study subprocesses (resume test) and
tests that build identical programs reuse compiled executables. Both caches live in temporary
directories of this session only, so no stale state leaks between runs and the user's data cache
($IBJAX_CACHE or ~/.cache/ibjax) is never written by the tests.
"""

import os
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_CACHE = tempfile.mkdtemp(prefix="ibjax-xla-cache-")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _CACHE)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
os.environ.setdefault("IBJAX_CACHE", tempfile.mkdtemp(prefix="ibjax-data-cache-"))
