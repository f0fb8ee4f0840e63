"""The quantity registry: every quantity pairs two of the network's features, names a config field of
the study, and labels its history keys (offline and online)."""

import dataclasses

from ibjax.mi import MIConfig
from ibjax.quantities import FEATURES, QUANTITIES, quantity_label
from ibjax.study import StudyConfig, StudyMIConfig


def test_each_quantity_pairs_two_features_and_has_its_estimator_config():
    fields = {f.name for f in dataclasses.fields(StudyMIConfig)}
    for name, q in QUANTITIES.items():
        assert q.name == name and {q.a, q.b} <= set(FEATURES) and q.a != q.b
        assert name in fields and isinstance(getattr(StudyConfig().mi, name), MIConfig)
    sizes = {"x": 784, "t": 64, "y": 10}
    assert QUANTITIES["xt"].pair(sizes) == (64, 784)  # critic(T, X)
    assert QUANTITIES["ty"].pair(sizes) == (10, 64)  # critic(Y_pred, T)
    assert QUANTITIES["xy"].pair(sizes) == (10, 784) and not QUANTITIES["xy"].online  # critic(Y_pred, X), offline


def test_labels_of_history_keys():
    assert quantity_label("xt") == "I(X;T)" and quantity_label("ty_online") == "I(T;Y_pred) online"
    assert QUANTITIES["xt"].online_name == "xt_online"
    assert quantity_label("something_else") == "something_else"
