"""The package's public API: every name in ``__all__`` resolves, subpackages list theirs, and a plain
``import ibjax`` stays light (no matplotlib, orbax or TFDS until used)."""

import importlib
import subprocess
import sys

import ibjax


def test_every_public_name_resolves_and_help_lists_them():
    assert len(ibjax.__all__) == len(set(ibjax.__all__))
    for name in ibjax.__all__:
        assert getattr(ibjax, name) is not None, name
    for name in ("estimate_mi_groups", "badnets", "make_poison_plan", "stealthiness", "MIConfig"):
        assert name in ibjax.__all__ and name in dir(ibjax)


def test_subpackages_export_what_they_list():
    for mod in ("mi.bounds", "mi.critics", "mi", "metrics", "triggers", "poison", "study", "parallel",
                "mi.groundtruth"):
        m = importlib.import_module(f"ibjax.{mod}")
        assert m.__all__, mod
        for name in m.__all__:
            assert hasattr(m, name), f"ibjax.{mod}.{name}"


def test_import_is_light_and_heavy_modules_load_on_first_use():
    code = ("import sys, ibjax\n"
            "heavy = ('matplotlib', 'orbax.checkpoint', 'tensorflow_datasets')\n"
            "assert not [m for m in heavy if m in sys.modules], [m for m in heavy if m in sys.modules]\n"
            "ibjax.plots\n"
            "assert 'matplotlib' in sys.modules\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
