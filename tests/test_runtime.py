"""CPU runtime tuning (ibjax.runtime): the fast-compile XLA flags and the glibc malloc settings apply
only to CPU runs, never over the user's own settings, and the tuned malloc reuses freed buffers."""

import json
import os
import subprocess
import sys

import pytest

from ibjax import runtime


def test_fast_cpu_compile_flags_only_for_cpu_runs_and_never_over_the_users_own(monkeypatch):
    monkeypatch.setattr(runtime, "_jaxlib_version", lambda: runtime._FAST_COMPILE_JAXLIB[0])
    monkeypatch.setattr(runtime, "_accelerator_plugin_installed", lambda: False)
    env = {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_backend_optimization_level=3"}
    added = runtime.fast_cpu_compile(env)
    assert "--xla_backend_optimization_level=1" not in added and "--xla_cpu_use_fusion_emitters=false" in added
    assert env["XLA_FLAGS"].split() == ["--xla_backend_optimization_level=3", *added]  # the user's setting kept
    assert runtime.fast_cpu_compile(env) == () and env["XLA_FLAGS"].split()[0] == "--xla_backend_optimization_level=3"
    assert runtime.fast_cpu_compile_flags({}) == runtime.FAST_CPU_COMPILE_FLAGS  # no accelerator installed: CPU
    assert runtime.fast_cpu_compile_flags({"JAX_PLATFORMS": "cuda"}) == ()
    assert runtime.fast_cpu_compile_flags({"JAX_PLATFORMS": "cpu", "IBJAX_FAST_CPU_COMPILE": "0"}) == ()
    monkeypatch.setattr(runtime, "_accelerator_plugin_installed", lambda: True)
    assert runtime.fast_cpu_compile_flags({}) == ()  # JAX would pick the GPU: XLA's defaults
    assert runtime.fast_cpu_compile_flags({"JAX_PLATFORMS": "cpu"}) == runtime.FAST_CPU_COMPILE_FLAGS
    monkeypatch.setattr(runtime, "_jaxlib_version", lambda: (99, 0))  # XLA would abort on an unknown flag
    assert runtime.fast_cpu_compile_flags({"JAX_PLATFORMS": "cpu"}) == ()


def test_the_suite_runs_under_the_fast_compile_flags():
    # conftest.py applies them, so the comparisons in the suite and its subprocesses share one setting.
    for flag in runtime.FAST_CPU_COMPILE_FLAGS:
        assert flag in os.environ["XLA_FLAGS"].split()


def test_cpu_malloc_settings_only_for_cpu_runs_on_glibc_and_never_over_the_users_own(monkeypatch):
    monkeypatch.setattr(runtime, "_accelerator_plugin_installed", lambda: False)
    monkeypatch.setattr(runtime.platform, "libc_ver", lambda: ("glibc", "2.36"))
    monkeypatch.setattr(runtime.sys, "platform", "linux")
    assert runtime.cpu_malloc_settings({}) == runtime.CPU_MALLOC_SETTINGS
    assert runtime.cpu_malloc_settings({"JAX_PLATFORMS": "cpu"}) == runtime.CPU_MALLOC_SETTINGS
    assert runtime.cpu_malloc_settings({"JAX_PLATFORMS": "cuda"}) == {}
    assert runtime.cpu_malloc_settings({"IBJAX_CPU_MALLOC": "0"}) == {}
    assert runtime.cpu_malloc_settings({"GLIBC_TUNABLES": "glibc.malloc.arena_max=4"}) == {}  # the user's own
    assert runtime.cpu_malloc_settings({"MALLOC_ARENA_MAX": "4"}) == {}
    assert runtime.cpu_malloc_settings({"GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX512F"}) == runtime.CPU_MALLOC_SETTINGS
    monkeypatch.setattr(runtime, "_accelerator_plugin_installed", lambda: True)
    assert runtime.cpu_malloc_settings({}) == {}  # JAX would pick the GPU
    monkeypatch.setattr(runtime, "_accelerator_plugin_installed", lambda: False)
    monkeypatch.setattr(runtime.platform, "libc_ver", lambda: ("", ""))  # musl, or not Linux: no mallopt
    assert runtime.cpu_malloc_settings({}) == {}


_REUSE_PROBE = """
import ctypes, json, resource, sys
from ibjax.runtime import tune_cpu_malloc
applied = tune_cpu_malloc()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
size = 40 << 20  # above glibc's largest dynamic mmap threshold (32 MiB), as XLA's temporary buffers are
faults = []
for _ in range(3):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    p = libc.malloc(size)
    ctypes.memset(p, 1, size)
    libc.free(p)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"applied": applied, "faults": faults}))
"""


@pytest.mark.skipif(sys.platform != "linux" or __import__("platform").libc_ver()[0] != "glibc", reason="glibc only")
def test_tuned_malloc_reuses_a_freed_large_buffer_instead_of_faulting_it_in_again():
    def probe(switch):
        env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
        env.update(JAX_PLATFORMS="cpu", IBJAX_CPU_MALLOC=switch)
        out = subprocess.run([sys.executable, "-c", _REUSE_PROBE], env=env, capture_output=True, text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    tuned, plain = probe("1"), probe("0")
    pages = (40 << 20) // 4096
    assert plain["applied"] == {} and tuned["applied"] == {"M_MMAP_MAX": 0, "M_ARENA_MAX": 1,
                                                           "M_TRIM_THRESHOLD": 1 << 30}
    assert min(plain["faults"][1:]) > pages // 2  # glibc's default: mmap per allocation, every page new
    assert max(tuned["faults"][1:]) < pages // 10  # the freed block is reused from the heap
