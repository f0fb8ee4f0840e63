"""ibjax.metrics.comparison: size-matched target-vs-clean comparisons and their Markdown table."""

import math

import numpy as np
import pytest

from ibjax import metrics
from metrics_histories import EPOCHS, history, se_like


def test_size_matched_comparisons_verdicts_and_arithmetic():
    cleans = {f"class_{k}": np.full(len(EPOCHS), 2.0) + 0.01 * k for k in range(1, 10)}
    clean_mean = np.mean([v[0] for v in cleans.values()])
    se_val = 0.05
    traj = {"xt": {**cleans,
                   "target": np.full(len(EPOCHS), clean_mean + 0.5),          # far beyond noise
                   "target_sample": np.full(len(EPOCHS), clean_mean + 0.45),  # ...and size-matched too
                   "target_clean": np.full(len(EPOCHS), clean_mean + 0.02),   # within noise
                   "target_backdoor": np.full(len(EPOCHS), clean_mean + 1.0)},
            "ty": {**cleans,
                   "target": np.full(len(EPOCHS), clean_mean - 0.5),
                   "target_sample": np.full(len(EPOCHS), clean_mean + 0.01),  # vanishes at clean size
                   "target_clean": np.full(len(EPOCHS), clean_mean),
                   "target_backdoor": np.full(len(EPOCHS), clean_mean)}}
    mi = history(traj, se=se_like(traj, se_val))
    res = metrics.size_matched_comparisons(mi, epochs=(5, 40))
    assert res["read"] == "heldout" and res["z"] == 2.0 and set(res["quantities"]) == {"xt", "ty"}
    e = res["quantities"]["xt"]["5"]
    clean_se = math.sqrt(9 * se_val**2) / 9
    assert e["clean"]["mean"] == pytest.approx(clean_mean) and e["clean"]["se"] == pytest.approx(clean_se)
    t = e["groups"]["target"]
    assert t["diff"] == pytest.approx(0.5, abs=1e-6)
    assert t["diff_se"] == pytest.approx(math.sqrt(se_val**2 + clean_se**2))
    assert t["beyond"] and t["outside_clean_range"]
    assert e["groups"]["target_clean"]["beyond"] is False
    assert e["size_matched"] == "survives"
    assert res["quantities"]["ty"]["40"]["size_matched"] == "does not survive"
    flagged = {(f["quantity"], f["epoch"], f["group"]) for f in res["flagged"]}
    assert ("xt", 5, "target_backdoor") in flagged and ("xt", 5, "target_clean") not in flagged
    assert ("ty", 40, "target_sample") not in flagged
    # Raising z past the difference: the target is no longer beyond noise.
    loose = metrics.size_matched_comparisons(mi, epochs=(5,), z=20.0)
    assert loose["quantities"]["xt"]["5"]["size_matched"] == "not beyond noise" and not loose["flagged"]
    # Without standard errors nothing can be called significant.
    bare = metrics.size_matched_comparisons(history(traj), epochs=(5,))
    assert bare["quantities"]["xt"]["5"]["size_matched"] == "unknown"
    assert bare["quantities"]["xt"]["5"]["groups"]["target"]["beyond"] is None and not bare["flagged"]
    md = metrics.size_matched_markdown(res)
    assert "| xt | 5 | target |" in md and "survives" in md and "does not survive" in md
    short = metrics.size_matched_markdown(res, only_flagged=True)
    assert "| xt | 5 | target_backdoor |" in short and "| xt | 5 | target_clean |" not in short
    assert "| ty | 40 | target |" in short  # the target's verdict row stays
    with pytest.raises(ValueError, match="missing"):
        metrics.size_matched_comparisons(mi, epochs=(7,))
