"""train.abi_u: Grond's Adversarial Backdoor Injection after every epoch's training steps, for any attack."""

import jax
import numpy as np
from tiny_config import TINY, short

from ibjax.defenses import abi_reset
from ibjax.parallel import make_mesh
from ibjax.study import build_population, init_run_state, run_epoch, stack_states
from ibjax.study.population import member_of


def _one_epoch(config):
    pop = build_population([config], mesh=make_mesh(), progress=False)
    state = stack_states([init_run_state(m) for m in pop.members], pop.mesh)
    state, records = run_epoch(state, pop)
    return member_of(jax.tree.map(np.asarray, state.train.variables), 0), records[0]


def test_abi_is_the_reset_of_the_epochs_trained_network():
    plain, _ = _one_epoch(short(TINY, 1))
    injected, record = _one_epoch(short(TINY, 1, **{"train.abi_u": 1.0}))  # u = 1 flags channels on a tiny network
    expected, marks = abi_reset(plain, "small_cnn", 1.0)
    assert sum(int(np.sum(m)) for m in marks.values()) > 0
    for a, b in zip(jax.tree.leaves(expected["params"]), jax.tree.leaves(injected["params"])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
    assert 0.0 <= record["asr"] <= 1.0  # evaluated after the reset
