"""ibjax.study.checks: the authors' bound checks on a run's own data and network."""

import math

import jax
import numpy as np
import pytest
from tiny_config import TINY, short

from ibjax.mi import discrete, resolve_config
from ibjax.parallel import make_mesh
from ibjax.study import build_population, init_run_state, stack_states
from ibjax.study.checks import backdoor_checks


def test_bound_checks_of_a_population_read_each_members_data_and_network():
    configs = [short(TINY, 1), short(TINY, 1, **{"seed": 1, "poison.ratio": 0.2})]
    pop = build_population(configs, mesh=make_mesh(), progress=False)
    state = stack_states([init_run_state(m) for m in pop.members], pop.mesh)
    small = resolve_config(epochs=3, batch_size=32, negatives=32, hidden=(16,), read_epochs=1, heldout_passes=1,
                           validation_fraction=0.0, candidates=(), select="last", preprocess="none")
    keys = [jax.random.PRNGKey(r) for r in range(2)]
    out = backdoor_checks(keys, state.train.variables, pop, small)
    assert len(out) == 2
    for res, m in zip(out, pop.members):
        b, y = np.asarray(m.plan.poisoned), np.asarray(m.plan.labels)
        p = b.mean()
        assert res["H_B"] == pytest.approx(-p * math.log(p) - (1 - p) * math.log(1 - p), abs=1e-5)
        assert res["I_B_Y"] == pytest.approx(float(discrete.discrete_mi(b, y, 2, m.num_classes)), abs=1e-6)
        assert 0.0 <= res["I_B_Ypred"] <= res["H_B"] + 1e-6
        assert math.isfinite(res["I_X_B"]) and res["I_X_B_read"] == "heldout"
    assert out[0]["H_B"] < out[1]["H_B"]  # 10% vs 20% poisoned
