"""benchmarks/scaling.py: its options (the benchmark itself runs in a process of its own, with forced
CPU devices; its output is in the scaling notes, not checked here)."""

import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # the repo root, for plain `pytest` too

from benchmarks import scaling  # noqa: E402


def test_quick_defaults_are_cpu_sized():
    a = scaling.parse_args(["--quick"])
    assert (a.model, a.batch, a.steps, a.repeats, a.populations) == ("small_cnn", 32, 3, 3, [1, 2, 4])
    full = scaling.parse_args([])
    assert (full.model, full.batch, full.group_size, full.populations) == ("resnet18", 256, 4500, [1, 2, 4, 8])


def test_forced_cpu_devices_need_a_process_where_jax_has_not_started():
    import jax  # noqa: F401 - this test process has started JAX

    with pytest.raises(SystemExit):
        scaling.parse_args(["--quick", "--force-cpu-devices", "2"])
