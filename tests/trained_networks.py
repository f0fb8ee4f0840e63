"""A BadNets small CNN on mnist5k and its clean twin (the same seed, recipe and initialisation, the
poisons left out), trained once per test module that asks for them: the ground truth of the
detector tests."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from tiny_config import TINY

from ibjax.fields import override
from ibjax.pipeline import put_train_data
from ibjax.study import build_setup
from ibjax.train import create_train_state, evaluate_attack, train_epoch

CONFIG = override(TINY, {"data.per_class_limit": None, "train.epochs": 4, "train.batch_size": 64,
                         "poison.target": 0, "mi.epochs": (4,), "analysis.stealth.epochs": (4,),
                         "analysis.embedding.epochs": ()})


@dataclasses.dataclass
class TrainedPair:
    setup: object  # the BadNets run's StudySetup
    backdoored: dict  # variables
    clean: dict
    metrics: dict  # {"backdoored": evaluate_attack(...), "clean": ...}


def train_pair(config=CONFIG) -> TrainedPair:
    setup = build_setup(config, progress=False)
    plan = setup.plan
    images = np.asarray(setup.train_data.images)
    clean_plan = plan.replace(poisoned=np.zeros_like(plan.poisoned), labels=plan.clean_labels)
    data = {"backdoored": setup.train_data, "clean": put_train_data(images, clean_plan, setup.keys.trigger)}
    cfg = config.train
    steps = config.train.epochs * (len(images) // cfg.batch_size)
    out, metrics = {}, {}
    for name, d in data.items():
        state = create_train_state(setup.keys.init, setup.model, setup.image_shape, cfg)
        for e in range(cfg.epochs):
            state, _ = train_epoch(state, d, jax.random.fold_in(setup.keys.train, e), model=setup.model,
                                   trigger=setup.attack.train_trigger, config=cfg, total_steps=steps)
        out[name] = state.variables
        metrics[name] = evaluate_attack(state.variables, setup.clean_test, setup.triggered_test, jax.random.PRNGKey(1),
                                        model=setup.model, trigger=setup.attack.test_trigger, target=config.poison.target,
                                        config=cfg)
    return TrainedPair(setup, out["backdoored"], out["clean"], metrics)
