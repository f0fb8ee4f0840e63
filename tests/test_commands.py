"""``python -m ibjax COMMAND``: the installed form of experiments/, which the distribution does not
install (no top-level package named ``experiments`` in a user's environment)."""

import os
import subprocess
import sys

import pytest

import ibjax.__main__ as entry
from ibjax.commands import COMMANDS


def test_usage_and_unknown_command(capsys):
    entry.main(["--help"])
    usage = capsys.readouterr().out
    assert all(c in usage for c in COMMANDS)
    with pytest.raises(SystemExit) as e:
        entry.main(["train"])
    assert e.value.code == 2 and "unknown command 'train'" in capsys.readouterr().err


def test_each_command_is_the_experiment_s_program():
    import experiments.compare
    import experiments.detection
    import experiments.paper
    import experiments.quickstart
    import experiments.study
    import experiments.sweep
    import ibjax.commands.compare
    import ibjax.commands.detection
    import ibjax.commands.paper
    import ibjax.commands.quickstart
    import ibjax.commands.study
    import ibjax.commands.sweep

    for name in COMMANDS:
        assert getattr(experiments, name).main is getattr(ibjax.commands, name).main


def test_installed_ibjax_runs_commands_outside_a_checkout_and_claims_no_experiments_package(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    probe = "import importlib.util as u; print(u.find_spec('experiments') is None, u.find_spec('ibjax') is not None)"
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.stdout.split() == ["True", "True"], out
    help_text = subprocess.run([sys.executable, "-m", "ibjax", "study", "--help"], cwd=tmp_path, env=env,
                               capture_output=True, text=True)
    assert help_text.returncode == 0 and "--train.epochs" in help_text.stdout, help_text.stderr[-2000:]
