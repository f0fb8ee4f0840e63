"""How far the cached bank of noise draws departs from a fresh noise draw per critic step.

``python -m experiments.feature_modes [--epochs 6] [--draws 1,4,16] [--repeats 2]``

Trains the quickstart's noisy CNN (BadNets 10% on mnist5k) and estimates I(X;T) and I(T;Y_pred) of
all 13 groups with (a) a fresh noise draw of the network at every critic step (the reference's
behaviour) and (b) cached banks of R draws per sample, same keys and settings. Prints the mean and
max absolute difference of the held-out reads against fresh, and the spread of fresh itself across
seeds (the noise floor the differences should be compared with).
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import jax
import numpy as np

from experiments.quickstart import QUICKSTART
from ibjax.data import load_dataset
from ibjax.models import make_model
from ibjax.pipeline import put_train_data
from ibjax.poison import make_poison_plan
from ibjax.study import estimate_groups_mi
from ibjax.train import create_train_state, train_epoch
from ibjax.triggers import get_attack


def _reads(res) -> np.ndarray:
    return np.array([[g["heldout"] for g in res[q].values()] for q in ("xt", "ty")])


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--draws", default="1,4,16")
    p.add_argument("--repeats", type=int, default=2)
    a = p.parse_args(argv)
    cfg = QUICKSTART
    key = jax.random.PRNGKey(cfg.seed)
    tr = load_dataset(cfg.dataset, "train")
    attack = get_attack(cfg.attack)
    plan = make_poison_plan(tr.labels, tr.num_classes, cfg.poison, key)
    data = put_train_data(tr.images, plan, key)
    model = make_model(cfg.model)
    tcfg = dataclasses.replace(cfg.train, epochs=a.epochs)
    state = create_train_state(key, model, tr.images.shape[1:], tcfg)
    for e in range(a.epochs):
        state, _ = train_epoch(state, data, jax.random.fold_in(key, e), model=model, attack=attack, config=tcfg,
                               total_steps=a.epochs * (len(tr.labels) // tcfg.batch_size))
    common = dict(model=model, attack=attack, xt=cfg.xt, ty=cfg.ty)
    fresh = [_reads(estimate_groups_mi(jax.random.PRNGKey(100 + r), state.variables, data, plan, feature_mode="fresh",
                                       **common)) for r in range(a.repeats)]
    out = {"fresh_seed_spread_mean": float(np.mean(np.abs(fresh[0] - fresh[1]))) if a.repeats > 1 else None,
           "fresh_mean_read": {"xt": float(fresh[0][0].mean()), "ty": float(fresh[0][1].mean())}}
    for r_draws in (int(x) for x in a.draws.split(",")):
        bank = _reads(estimate_groups_mi(jax.random.PRNGKey(100), state.variables, data, plan, feature_mode="bank",
                                         bank_draws=r_draws, **common))
        diff = np.abs(bank - fresh[0])
        out[f"bank_R{r_draws}"] = {"xt_mean_abs_diff": float(diff[0].mean()), "xt_max_abs_diff": float(diff[0].max()),
                                   "ty_mean_abs_diff": float(diff[1].mean()), "ty_max_abs_diff": float(diff[1].max())}
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
