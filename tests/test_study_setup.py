"""ibjax.study.setup: a user's clean model for the attacks computed against one, the pattern warning."""

import dataclasses

import jax
import numpy as np
import pytest
from tiny_config import TINY, short

from ibjax.study import check_config
from ibjax.study import setup as study_setup
from ibjax.study.state import RunKeys


def _lc(path=""):
    return short(TINY, 1, **{"attack.name": "label_consistent", "poison.ratio": 0.25, "attack.clean_model": path,
                             "attack.options": (("pgd_steps", "2"),)})


def test_a_users_clean_model_is_the_victim_of_label_consistent_pgd(tmp_path):
    config = _lc()
    train_set, _ = study_setup.load_data(config)
    model = study_setup.clean_model_network(config, train_set.num_classes)
    variables = model.init({"params": jax.random.PRNGKey(7), "noise": jax.random.PRNGKey(0)},
                           np.zeros((1, *train_set.images.shape[1:]), np.float32))
    path = str(tmp_path / "clean.msgpack")
    study_setup.save_clean_model(path, variables)
    mine = _lc(path)
    check_config(mine)
    loaded_model, loaded = study_setup.load_clean_model(path, mine, train_set.images.shape[1:], train_set.num_classes)
    assert loaded_model == model
    for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(loaded)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # prepare_attack computes the perturbations against the given network, not one of its own.
    attack = study_setup.build_attack(mine, train_set.images.shape[1:])
    plan = study_setup.make_poison_plan(train_set.labels, 10, dataclasses.replace(mine.poison, clean_label=True),
                                        RunKeys.from_seed(0).plan)
    keys = RunKeys.from_seed(0)
    _, perturbations, _ = study_setup.prepare_attack(mine, attack, train_set, plan, keys, None, progress=False)
    expected = study_setup._label_consistent_perturbations(jax.random.fold_in(keys.clean_model, 2), attack, train_set,
                                                           plan, model, variables)
    np.testing.assert_allclose(perturbations, expected, atol=1e-5)
    assert perturbations.shape[0] == plan.num_poisoned and np.abs(perturbations).max() > 0


def test_a_clean_model_of_another_network_or_no_file_is_one_line_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="clean_model: no file"):
        check_config(_lc(str(tmp_path / "missing.msgpack")))
    config = _lc()
    train_set, _ = study_setup.load_data(config)
    model = study_setup.clean_model_network(config, 5)  # five classes: the classifier's shape differs
    variables = model.init({"params": jax.random.PRNGKey(0), "noise": jax.random.PRNGKey(0)},
                           np.zeros((1, *train_set.images.shape[1:]), np.float32))
    path = str(tmp_path / "five.msgpack")
    study_setup.save_clean_model(path, variables)
    with pytest.raises(ValueError, match=r"is not the run's small_cnn for 10 classes .*bias'\] has shape \(5,\), the "
                                         r"run's network needs \(10,\)"):
        study_setup.load_clean_model(path, config, train_set.images.shape[1:], 10)


def test_grond_computes_its_perturbation_against_the_clean_model_and_keeps_it(tmp_path):
    from ibjax.study import run_study

    config = short(TINY, 1, **{"attack.name": "grond", "poison.ratio": 0.5,
                               "attack.options": (("steps", "20"), ("batch_size", "32"))})
    s = run_study(config, str(tmp_path / "run"), progress=False)
    delta = np.load(tmp_path / "run" / study_setup.PRECOMPUTED_FILE)
    assert delta.shape == (28, 28, 1) and 0 < np.abs(delta).max() <= 8 / 255 + 1e-6
    assert s["attack"] == "grond" and s["asr"] is not None
