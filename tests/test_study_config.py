"""StudyConfig: JSON round trips, diffs, data-free checks, presets, and the CLI generated from it."""

import dataclasses
import json

import pytest
from tiny_config import TINY

from ibjax.cli import parse_study_command
from ibjax.study import PRESETS, StudyConfig, check_config, config_diff, config_from_dict, config_to_dict, preset
from ibjax.study.config import flatten_config


def test_config_round_trips_through_json_and_partial_dicts_take_defaults():
    for config in (TINY, *PRESETS.values()):
        assert config_from_dict(json.loads(json.dumps(config_to_dict(config)))) == config
    partial = config_from_dict({"dataset": "mnist5k", "train": {"epochs": 4}, "xt": {"hidden": [8, 8]}})
    assert partial.train.epochs == 4 and partial.train.lr == StudyConfig().train.lr
    assert partial.xt.hidden == (8, 8) and isinstance(partial.mi_epochs, tuple)


def test_unknown_config_fields_are_named():
    with pytest.raises(ValueError, match=r"unknown config field\(s\) \['train.epochz'\]"):
        config_from_dict({"train": {"epochz": 3}})


def test_diff_names_every_changed_leaf():
    b = dataclasses.replace(TINY, seed=3, train=dataclasses.replace(TINY.train, epochs=9))
    assert config_diff(TINY, b) == {"seed": (0, 3), "train.epochs": (3, 9)}
    assert config_diff(TINY, TINY) == {}


@pytest.mark.parametrize("change, match", [
    (dict(attack="trojan_horse"), "attack 'trojan_horse' is unknown"),
    (dict(mi_epochs=(3, 1)), "strictly increasing"),
    (dict(mi_epochs=(1, 9)), r"mi_epochs must lie in 1..3"),
    (dict(embed_epochs=(7,)), r"embed_epochs \[7\] lie outside"),
    (dict(stealth_epochs=()), "stealth_epochs is empty"),
    (dict(bank_draws=0), "bank_draws"),
    (dict(mi_mode="online", xt=dataclasses.replace(TINY.xt, validation_fraction=0.2, candidates=("lr=1e-3",))),
     "offline estimates"),
])
def test_bad_options_fail_without_data(change, match):
    with pytest.raises(ValueError, match=match):
        check_config(dataclasses.replace(TINY, **change))


def test_presets_differ_where_they_say_they_do():
    ref, default = preset("reference"), preset("default")
    assert ref.xt.heldout_fraction == 0 and ref.ty.heldout_fraction == 0  # the authors read the training pairs
    assert ref.stealth_read == "train" and ref.stealth_normalise == "per_epoch" and ref.train.asr_on_all
    assert default.xt.heldout_fraction > 0 and default.stealth_read == "heldout"
    assert (ref.xt.epochs, ref.xt.batch_size, ref.xt.negatives) == (350, 128, 512)
    assert (ref.ty.epochs, ref.ty.batch_size, ref.ty.negatives) == (250, 512, 256)
    assert preset("fast").feature_mode == "bank" and preset("fast").model.dtype == "bfloat16"
    cpu = preset("cpu")
    assert cpu.dataset == "mnist5k" and cpu.feature_mode == "bank"
    for config in PRESETS.values():
        check_config(config)
    with pytest.raises(ValueError, match="unknown preset 'gpu'"):
        preset("gpu")


def test_every_config_field_is_a_flag_with_its_default_in_help(capsys):
    with pytest.raises(SystemExit) as e:
        parse_study_command(["--preset", "cpu", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    squashed = " ".join(text.split())
    for name in flatten_config(preset("cpu")):
        assert "--" + name.replace("_", "-") in text, name
    assert "(default: mnist5k)" in squashed and "--train.epochs INT" in squashed  # the preset's defaults


def test_flags_override_the_config_file_which_overrides_the_preset(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"train": {"epochs": 5, "lr": 0.01}, "xt": {"hidden": [8]}}))
    cmd = parse_study_command(["--preset", "cpu", "--config", str(path), "--train.epochs", "6", "--attack", "blend",
                               "--attack-options", "alpha", "0.2", "--mi-epochs", "1", "6"])
    c = cmd.study
    assert c.dataset == "mnist5k" and c.train.epochs == 6 and c.train.lr == 0.01 and c.xt.hidden == (8,)
    assert c.attack == "blend" and c.attack_options == (("alpha", "0.2"),) and c.mi_epochs == (1, 6)
