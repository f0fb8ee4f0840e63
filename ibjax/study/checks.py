"""The authors' bound checks on a trained run's data and network (:func:`ibjax.metrics.backdoor.backdoor_bounds`).

For every member of a population: the training inputs as the network sees them (triggered where
poisoned), the flag B, the training labels Y and the network's predictions Y_pred (one noise draw),
then H(B), I(B;Y), I(B;Y_pred) and the estimated I(X;B), in nats.
"""

from __future__ import annotations

from typing import Optional, Sequence

import jax
import numpy as np

from ibjax.metrics.backdoor import backdoor_bounds
from ibjax.mi import MIConfig
from ibjax.study.population import PopulationSetup
from ibjax.study.steps import population_features

__all__ = ["backdoor_checks"]


def backdoor_checks(keys: Sequence[jax.Array], variables, pop: PopulationSetup, config: Optional[MIConfig] = None,
                    estimate_xb: bool = True) -> list[dict]:
    """:func:`~ibjax.metrics.backdoor.backdoor_bounds` of every member (member r with key ``keys[r]``:
    its prediction draw and its I(X;B) estimate), on the stacked ``variables`` of the population's
    networks. Returns one dict per member (nats)."""
    n = pop.train_data.size
    idx = np.arange(n)
    draw_keys = [[jax.random.fold_in(k, 0) for k in keys]]
    x_all, y_all = population_features(variables, pop, [idx] * pop.size, draw_keys, parts=(0, 2))
    out = []
    for r, (key, member) in enumerate(zip(keys, pop.members)):
        plan = member.plan
        x = x_all[r * n: (r + 1) * n]
        predictions = np.argmax(y_all[r * n: (r + 1) * n, 0], axis=-1)
        out.append(backdoor_bounds(jax.random.fold_in(key, 1), x, plan.poisoned, plan.labels, predictions,
                                   member.num_classes, config, estimate_xb))
    return out
