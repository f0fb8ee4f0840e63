"""ibjax.metrics.processing: the data processing check I(X;Y_pred) <= I(X;T) on MI histories."""

import pytest

from ibjax import metrics


def _mi(xt, xy, se=0.05):
    def q(values):
        return {g: {str(e): {"heldout": v, "heldout_se": se} for e, v in per.items()} for g, per in values.items()}

    return {"xt": q(xt), "xy": q(xy)}


def test_excess_beyond_its_standard_errors_is_a_violation_and_noise_is_not():
    mi = _mi({"target": {1: 1.0, 5: 2.0}, "class_1": {1: 1.0, 5: 1.5}},
             {"target": {1: 0.5, 5: 2.05}, "class_1": {1: 1.5, 5: 1.0}})
    res = metrics.data_processing_check(mi)
    assert res["checked"] == 4 and not res["holds"]
    assert res["violations"] == [("class_1", 1)]  # 0.5 nats over, SE 0.07: beyond 2 SE
    t5 = res["groups"]["target"]["5"]
    assert t5["excess"] == pytest.approx(0.05) and t5["excess_se"] == pytest.approx(0.0707, abs=1e-4)
    assert not t5["violated"]  # 0.05 over with SE 0.07: within noise
    fine = metrics.data_processing_check(_mi({"target": {1: 1.0}}, {"target": {1: 0.9}}))
    assert fine["holds"] and fine["checked"] == 1


def test_without_standard_errors_any_excess_counts_and_a_missing_quantity_is_named():
    mi = _mi({"target": {1: 1.0}}, {"target": {1: 1.01}}, se=None)
    assert metrics.data_processing_check(mi)["violations"] == [("target", 1)]
    with pytest.raises(ValueError, match="needs quantity 'xy'"):
        metrics.data_processing_check({"xt": mi["xt"]})
    with pytest.raises(ValueError, match="z must be positive"):
        metrics.data_processing_check(mi, z=0)
