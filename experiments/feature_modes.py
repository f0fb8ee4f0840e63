"""How far the cached bank of noise draws departs from a fresh noise draw per critic step.

``python -m experiments.feature_modes [--epochs 6] [--draws 1,4,16] [--repeats 2]``

Trains the quickstart's noisy CNN (the ``cpu`` preset: BadNets 10% on mnist5k) and estimates
I(X;T) and I(T;Y_pred) of all 13 groups with (a) a fresh noise draw of the network at every critic
step (the reference's behaviour) and (b) cached banks of R draws per sample, same keys and settings.
Prints the mean and max absolute difference of the held-out reads against fresh, and the spread of
fresh itself across seeds (the noise floor the differences should be compared with).
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import jax
import numpy as np

from ibjax.fields import override
from ibjax.parallel import make_mesh
from ibjax.runtime import prepare_cpu_process
from ibjax.study import build_population, estimate_network_mi, init_run_state, preset, run_epoch, stack_states


def _reads(res) -> np.ndarray:
    return np.array([[g["heldout"] for g in res[q].values()] for q in ("xt", "ty")])


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=6, help="training epochs before the estimates (default: %(default)s)")
    p.add_argument("--draws", default="1,4,16", help="bank sizes R to compare (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=2, help="fresh-draw estimates with different seeds (default: %(default)s)")
    a = p.parse_args(argv)
    prepare_cpu_process()  # before JAX starts its backend
    base = preset("cpu")
    config = override(base, {"train.epochs": a.epochs, "mi.epochs": (a.epochs,), "analysis.embedding.epochs": (a.epochs,),
                             "analysis.stealth.epochs": (a.epochs,)})
    pop = build_population([config], mesh=make_mesh(), progress=False)  # one run: a population of one
    state = stack_states([init_run_state(pop.members[0])], pop.mesh)
    for _ in range(a.epochs):
        state, _ = run_epoch(state, pop)
    variables = state.train.variables

    def estimate(key, mode, draws=1):
        member = dataclasses.replace(pop.members[0], config=override(config, {"mi.features": mode,
                                                                               "mi.bank_draws": draws}))
        return _reads(estimate_network_mi([key], variables, dataclasses.replace(pop, members=(member,)))[0])

    fresh = [estimate(jax.random.PRNGKey(100 + r), "fresh") for r in range(a.repeats)]
    out = {"fresh_seed_spread_mean": float(np.mean(np.abs(fresh[0] - fresh[1]))) if a.repeats > 1 else None,
           "fresh_mean_read": {"xt": float(fresh[0][0].mean()), "ty": float(fresh[0][1].mean())}}
    for r_draws in (int(x) for x in a.draws.split(",")):
        diff = np.abs(estimate(jax.random.PRNGKey(100), "bank", r_draws) - fresh[0])
        out[f"bank_R{r_draws}"] = {"xt_mean_abs_diff": float(diff[0].mean()), "xt_max_abs_diff": float(diff[0].max()),
                                   "ty_mean_abs_diff": float(diff[1].mean()), "ty_max_abs_diff": float(diff[1].max())}
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
