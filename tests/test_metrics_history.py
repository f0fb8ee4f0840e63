"""ibjax.metrics.history: reading the clean classes and the common epochs of an MI history."""

import pytest

from ibjax import metrics


def _mi(groups_epochs):
    return {q: {g: {str(e): {"train": 1.0, "heldout": 1.0} for e in epochs} for g, epochs in groups_epochs.items()}
            for q in ("xt", "ty")}


def test_clean_groups_sorted_by_class_index():
    mi = _mi({"class_10": [1], "class_2": [1], "target": [1], "class_x": [1], "class_1": [1]})
    assert metrics.clean_groups(mi) == ["class_1", "class_2", "class_10", "class_x"]


def test_available_epochs_are_those_every_group_shares():
    mi = _mi({"target": [1, 5, 10], "target_clean": [1, 5, 10, 20], "class_1": [5, 10, 20], "class_2": [1, 5, 10]})
    assert metrics.available_epochs(mi) == [5, 10]
    assert metrics.available_epochs(mi, groups=["target", "class_2"]) == [1, 5, 10]
    with pytest.raises(ValueError, match="no group 'target_sample'"):
        metrics.available_epochs(mi, groups=["target_sample"])
    with pytest.raises(ValueError, match="no quantity 'zz'"):
        metrics.available_epochs(mi, quantities=("zz",))
