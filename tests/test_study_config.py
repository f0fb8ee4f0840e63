"""StudyConfig: JSON round trips, diffs, data-free checks, presets, and the CLI generated from it."""

import json
import os

import pytest
from tiny_config import TINY

from ibjax import mi
from ibjax.cli import parse_study_command
from ibjax.fields import override
from ibjax.study import PRESETS, StudyConfig, check_config, config_diff, config_from_dict, config_to_dict, preset
from ibjax.study.presets import PRESET_OVERRIDES
from ibjax.study.config import flatten_config


def test_config_round_trips_through_json_and_partial_dicts_take_defaults():
    for config in (TINY, *PRESETS.values()):
        assert config_from_dict(json.loads(json.dumps(config_to_dict(config)))) == config
    partial = config_from_dict({"data": {"name": "mnist5k"}, "train": {"epochs": 4},
                                "mi": {"xt": {"critic": {"hidden": [8, 8]}}}})
    assert partial.train.epochs == 4 and partial.train.lr == StudyConfig().train.lr
    assert partial.mi.xt.critic.hidden == (8, 8) and isinstance(partial.mi.epochs, tuple)


def test_config_files_of_the_flat_layout_read_in_sections():
    old = {"dataset": "mnist5k", "attack": "blend", "attack_options": [["alpha", 0.2]], "mi_epochs": [1, 4],
           "feature_mode": "bank", "stealth_read": "train", "embed_points": 50, "train": {"epochs": 4},
           "xt": {"hidden": [8, 8], "critic": "separable", "lr": 1e-3, "epochs": 7, "candidates": ["critic_rank=0"]}}
    c = config_from_dict(old)
    assert (c.data.name, c.attack.name, c.attack.options, c.mi.epochs) == ("mnist5k", "blend", (("alpha", "0.2"),), (1, 4))
    assert (c.mi.features, c.analysis.stealth.read, c.analysis.embedding.points) == ("bank", "train", 50)
    x = c.mi.xt
    assert (x.critic.hidden, x.critic.family, x.optimiser.lr, x.protocol.epochs) == ((8, 8), "separable", 1e-3, 7)
    assert [str(k) for k in x.candidates] == ["critic.rank=0"]


def test_mixed_and_bad_mi_dicts_read_or_name_the_field():
    c = config_from_dict({"mi": {"xt": {"optimiser": {"lr": 1e-3}, "epochs": 3}}})  # sections and old flat names
    assert (c.mi.xt.optimiser.lr, c.mi.xt.protocol.epochs) == (1e-3, 3)
    with pytest.raises(ValueError, match=r"mi.xt.protocol must be an object of its fields"):
        config_from_dict({"xt": {"protocol": 3}})
    with pytest.raises(ValueError, match=r"mi.xt.protocol: ProtocolConfig.epochs = 'abc': expected an integer"):
        config_from_dict({"mi": {"xt": {"protocol": {"epochs": "abc"}}}})
    old = {"xt": {"candidates": ["critic=separable lr=1e-3"]}}
    assert config_to_dict(config_from_dict(old))["mi"]["xt"]["candidates"] == ["critic.family=separable optimiser.lr=0.001"]
    assert old == {"xt": {"candidates": ["critic=separable lr=1e-3"]}}  # the caller's dict is left as it was


def test_a_whole_section_and_dotted_changes_into_it_apply_in_any_order():
    from ibjax.poison import PoisonConfig

    for changes in ({"poison.ratio": 0.2, "poison": PoisonConfig(target=3)},
                    {"poison": PoisonConfig(target=3), "poison.ratio": 0.2}):
        p = override(StudyConfig(), changes).poison
        assert (p.ratio, p.target) == (0.2, 3)


def test_attack_options_are_text_read_as_each_parameter_type():
    from ibjax.study.setup import build_attack

    c = override(TINY, {"attack.name": "blend", "attack.options": (("alpha", "0.3"), ("pattern", "[[[0.5]]]"))})
    params = build_attack(c).train_trigger.params
    assert params.alpha == 0.3 and params.pattern.shape == (1, 1, 1)
    c = config_from_dict({"attack": {"name": "badnets", "options": [["size", 4]]}})  # a JSON number kept as text
    assert c.attack.options == (("size", "4"),) and build_attack(c).train_trigger.params.size == 4


def test_a_bad_candidate_on_the_command_line_is_its_own_one_line_error(capsys):
    with pytest.raises(SystemExit) as e:
        parse_study_command(["--preset", "cpu", "--mi.xt.candidates", "bogus=1"])
    assert e.value.code == 2
    assert capsys.readouterr().err.startswith("error: candidate 'bogus=1': unknown field 'bogus'")


def test_one_coercion_reads_text_and_refuses_a_bad_boolean():
    from ibjax.fields import coerce, override

    c = override(TINY, {"train.asr_on_all": "yes", "mi.xt.critic.hidden": "8,8", "poison.ratio": "0.2"})
    assert c.train.asr_on_all is True and c.mi.xt.critic.hidden == (8, 8) and c.poison.ratio == 0.2
    for text in ("ture", "2", ""):
        with pytest.raises(ValueError, match="expected true or false"):
            coerce(text, bool, "train.asr_on_all")
    with pytest.raises(ValueError, match="TrainConfig.asr_on_all = 'maybe': expected true or false"):
        override(TINY, {"train.asr_on_all": "maybe"})


def test_unknown_config_fields_are_named():
    with pytest.raises(ValueError, match=r"unknown config field\(s\) \['train.epochz'\]"):
        config_from_dict({"train": {"epochz": 3}})


def test_diff_names_every_changed_leaf():
    b = override(TINY, {"seed": 3, "train.epochs": 9})
    assert config_diff(TINY, b) == {"seed": (0, 3), "train.epochs": (3, 9)}
    assert config_diff(TINY, TINY) == {}


@pytest.mark.parametrize("change, match", [
    ({"attack.name": "trojan_horse"}, r"AttackConfig.name = 'trojan_horse': expected one of 'badnets'"),
    ({"mi.epochs": (3, 1)}, "mi: epochs must be strictly increasing"),
    ({"mi.epochs": (1, 9)}, r"mi: epochs must lie in 1..3"),
    ({"analysis.embedding.epochs": (7,)}, r"analysis.embedding: epochs \[7\] lie outside"),
    ({"analysis.stealth.epochs": ()}, "analysis.stealth: epochs is empty"),
    ({"mi.bank_draws": 0}, "mi: bank_draws"),
    ({"mi.mode": "online", "mi.xt": mi.resolve_config(TINY.mi.xt, validation_fraction=0.2, candidates=("lr=3e-3",))},
     "offline estimates"),
    ({"mi.xt.protocol.read_epochs": 99}, r"mi.xt.protocol: read_epochs \(99\) exceeds"),
    ({"poison.ratio": 1.5}, r"poison: ratio must lie in \[0, 1\)"),
    ({"poison.ratio": -0.1}, r"poison: ratio must lie in \[0, 1\) \(0: a clean run\)"),
])
def test_bad_options_fail_without_data(change, match):
    with pytest.raises(ValueError, match=match):
        check_config(override(TINY, change))


def test_presets_differ_where_they_say_they_do():
    ref, default = preset("reference"), preset("default")
    # the authors read the training pairs
    assert ref.mi.xt.protocol.heldout_fraction == 0 and ref.mi.ty.protocol.heldout_fraction == 0
    assert ref.analysis.stealth.read == "train" and ref.analysis.stealth.normalise == "per_epoch" and ref.train.asr_on_all
    assert default.mi.xt.protocol.heldout_fraction > 0 and default.analysis.stealth.read == "heldout"
    xt, ty = ref.mi.xt.protocol, ref.mi.ty.protocol
    assert (xt.epochs, xt.batch_size, xt.negatives) == (350, 128, 512)
    assert (ty.epochs, ty.batch_size, ty.negatives) == (250, 512, 256)
    assert preset("fast").mi.features == "bank" and preset("fast").model.dtype == "bfloat16"
    for name, changes in PRESET_OVERRIDES.items():  # each preset is its overrides of the default
        assert override(StudyConfig(), changes) == PRESETS[name]
        assert set(config_diff(StudyConfig(), PRESETS[name])) <= set(flatten_config(PRESETS[name]))
    cpu = preset("cpu")
    assert cpu.data.name == "mnist5k" and cpu.mi.features == "bank"
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
    path.write_text(json.dumps({"train": {"epochs": 5, "lr": 0.01}, "mi": {"xt": {"critic": {"hidden": [8]}}}}))
    cmd = parse_study_command(["--preset", "cpu", "--config", str(path), "--train.epochs", "6", "--attack.name", "blend",
                               "--attack.options", "alpha", "0.2", "--mi.epochs", "1", "6",
                               "--mi.xt.candidates", "critic.family=separable optimiser.lr=1e-3"])
    c = cmd.study
    assert c.data.name == "mnist5k" and c.train.epochs == 6 and c.train.lr == 0.01 and c.mi.xt.critic.hidden == (8,)
    assert c.attack.name == "blend" and c.attack.options == (("alpha", "0.2"),) and c.mi.epochs == (1, 6)
    assert c.mi.xt.candidates == (mi.Candidate("critic.family=separable optimiser.lr=1e-3"),)
    # a config file of the flat layout still reads
    path.write_text(json.dumps({"train": {"epochs": 5}, "mi_epochs": [1, 5], "xt": {"hidden": [8]}}))
    c = parse_study_command(["--preset", "cpu", "--config", str(path)]).study
    assert c.mi.epochs == (1, 5) and c.mi.xt.critic.hidden == (8,)


@pytest.mark.parametrize("flag, new", [("--mi-epochs", "--mi.epochs"), ("--dataset", "--data.name"),
                                       ("--attack-options", "--attack.options"), ("--xt.lr", "--mi.xt.optimiser.lr"),
                                       ("--ty.critic-rank", "--mi.ty.critic.rank"), ("--stealth-read=train",
                                                                                      "--analysis.stealth.read")])
def test_old_flat_flags_fail_naming_the_new_flag(flag, new, capsys):
    with pytest.raises(SystemExit) as e:
        parse_study_command(["--preset", "cpu", flag, "1"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {flag.split('=')[0]} is now {new} (the config is in sections; see --help)"]


AUTHORS_PATTERN = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "authors-blendnoise.npy")


def test_reference_blend_without_the_authors_pattern_is_said_loudly(caplog):
    from ibjax.study.setup import build_attack, reference_departures

    ref = override(preset("reference"), {"attack.name": "blend"})
    (line,) = reference_departures(ref)
    assert "not the authors'" in line and "Blendnoise.npy" in line and "--attack.options pattern PATH" in line
    assert reference_departures(override(ref, {"attack.name": "adaptive_blend"}))
    assert reference_departures(override(ref, {"attack.options": (("pattern", "p.npy"),)})) == []
    assert reference_departures(override(ref, {"attack.trigger_rules": "ibjax"})) == []  # ibjax's own rules
    assert reference_departures(override(ref, {"attack.name": "badnets"})) == []
    if not os.path.exists(AUTHORS_PATTERN):
        pytest.skip("the authors' Blend pattern is not on this machine (../shared/data)")
    with_file = override(ref, {"attack.options": (("pattern", AUTHORS_PATTERN),)})
    assert reference_departures(with_file) == []
    assert build_attack(with_file, (32, 32, 3)).train_trigger.params.pattern.shape[:2] == (32, 32)
