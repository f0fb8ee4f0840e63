"""ibjax.metrics.claims: each claim's verdict on synthetic histories where the verdict is known."""

import math

import numpy as np
import pytest

from ibjax.metrics import claims
from ibjax.metrics.claims import ClaimRun, closed_form_label_mi, combine_verdicts, evaluate_claims, judge

EPOCHS = (1, 4, 8)
CLEAN = ("class_1", "class_2", "class_3")


def _history(backdoor_xt, backdoor_ty, clean_xt=(1.0, 1.1, 1.2), clean_ty=(1.0, 1.0, 1.0), se=0.02, xy=None,
             clean_spread=0.1):
    """mi.json layout: the backdoor group's per-epoch values, clean classes around the given curves."""
    def group(values):
        return {str(e): {"heldout": float(v), "heldout_se": se, "train": float(v)} for e, v in zip(EPOCHS, values)}

    def quantity(bd, clean):
        out = {"target_backdoor": group(bd), "target": group(clean), "target_clean": group(clean)}
        for i, g in enumerate(CLEAN):
            out[g] = group(np.asarray(clean) + clean_spread * (i - 1))
        return out

    mi = {"xt": quantity(backdoor_xt, clean_xt), "ty": quantity(backdoor_ty, clean_ty)}
    if xy is not None:
        mi["xy"] = quantity(*xy)
    return mi


def _run(attack, mi, seed=0, noise=0.4, **kw):
    return ClaimRun(attack=attack, noise=noise, seed=seed, mi=mi, **kw)


def _by_claim(results):
    return {r.claim: r for r in results}


def test_judge_and_combine_follow_the_stated_rules():
    assert judge(0.5, 0.1, +1) == "holds" and judge(-0.5, 0.1, +1) == "contradicted"
    assert judge(0.1, 0.1, +1) == "within noise" and judge(-0.5, 0.1, -1) == "holds"
    assert judge(0.01, None, +1) == "holds" and judge(math.nan, 0.1, +1) == "not testable"
    assert combine_verdicts(["holds", "holds"]) == "holds"
    assert combine_verdicts(["holds", "within noise"]) == "within noise"
    assert combine_verdicts(["holds", "contradicted", "within noise"]) == "contradicted"
    assert combine_verdicts(["not testable"]) == "not testable" and combine_verdicts([]) == "not testable"


def test_c1_ranks_badnets_against_the_imperceptible_attacks_over_seeds():
    mi = _history((1, 1, 1), (1, 1, 1))
    runs = [_run("badnets", mi, s, stealth=1.0 + 0.05 * s) for s in range(3)]
    runs += [_run("blend", mi, s, stealth=2.0 + 0.05 * s) for s in range(3)]
    runs += [_run("wanet", mi, s, stealth=1.9 - 0.05 * s) for s in range(3)]
    c1 = _by_claim(evaluate_claims(runs))["C1"]
    assert c1.verdict == "holds" and len(c1.parts) == 2
    assert c1.parts[0]["d"] == pytest.approx(1.0) and c1.parts[0]["n"] == 3
    # One attack far below BadNets contradicts; one overlapping it is within noise.
    low = runs[:6] + [_run("wanet", mi, s, stealth=0.5) for s in range(3)]
    assert _by_claim(evaluate_claims(low))["C1"].verdict == "contradicted"
    noisy = runs[:3] + [_run("blend", mi, s, stealth=v) for s, v in enumerate((0.4, 1.9, 1.0))]
    assert _by_claim(evaluate_claims(noisy))["C1"].verdict == "within noise"
    # One seed each: the bootstrap standard errors decide.
    single = [_run("badnets", mi, stealth=1.0, stealth_se=0.1), _run("blend", mi, stealth=1.5, stealth_se=0.1)]
    assert _by_claim(evaluate_claims(single))["C1"].verdict == "holds"
    single[1] = _run("blend", mi, stealth=1.1, stealth_se=0.1)
    assert _by_claim(evaluate_claims(single))["C1"].verdict == "within noise"
    assert _by_claim(evaluate_claims(runs[3:]))["C1"].verdict == "not testable"


def test_c2_holds_when_blends_backdoor_sits_below_the_clean_groups_at_every_epoch():
    below = _history((0.5, 0.6, 0.4), (0.3, 0.4, 0.5))
    c2 = _by_claim(evaluate_claims([_run("blend", below)]))["C2"]
    assert c2.verdict == "holds" and len(c2.parts) == 6  # two quantities x three epochs
    crosses = _history((0.5, 1.6, 0.4), (0.3, 0.4, 0.5))  # I(X;T) above the clean mean at epoch 4
    assert _by_claim(evaluate_claims([_run("blend", crosses)]))["C2"].verdict == "contradicted"
    close = _history((0.98, 0.6, 0.4), (0.3, 0.4, 0.5))  # 0.02 below with SE ~0.024: noise
    assert _by_claim(evaluate_claims([_run("blend", close)]))["C2"].verdict == "within noise"
    assert _by_claim(evaluate_claims([_run("badnets", below)]))["C2"].verdict == "not testable"


def test_c3_needs_both_noise_levels_and_reads_the_rise_and_the_compression():
    high = _history((0.5, 0.9, 0.6), (0.3, 0.4, 0.5), clean_ty=(1.0, 1.0, 1.0))
    low = _history((0.7, 1.3, 0.9), (0.6, 0.8, 0.9), clean_ty=(1.5, 1.6, 1.7))
    runs = [_run("blend", high, noise=0.4), _run("blend", low, noise=0.1)]
    c3 = _by_claim(evaluate_claims(runs))["C3"]
    assert c3.verdict == "holds"
    assert c3.parts[-1]["part"].startswith("blend at noise 0.1: backdoor I(X;T) peak - last")
    assert c3.parts[-1]["d"] == pytest.approx(0.4)
    no_compression = _history((0.7, 0.9, 1.3), (0.6, 0.8, 0.9), clean_ty=(1.5, 1.6, 1.7))
    runs[1] = _run("blend", no_compression, noise=0.1)
    assert _by_claim(evaluate_claims(runs))["C3"].verdict == "contradicted"
    assert _by_claim(evaluate_claims(runs[:1]))["C3"].verdict == "not testable"


def test_c4_reads_two_phases_and_the_backdoor_ty_inside_the_clean_range():
    two_phase = _history((0.5, 1.5, 1.0), (1.0, 1.0, 1.0), clean_spread=0.1)
    c4 = _by_claim(evaluate_claims([_run("adaptive_blend", two_phase)]))["C4"]
    assert c4.verdict == "holds", c4.parts
    monotone = _history((0.5, 1.0, 1.5), (1.0, 1.0, 1.0))  # no compression after the peak
    assert _by_claim(evaluate_claims([_run("adaptive_blend", monotone)]))["C4"].verdict == "contradicted"
    far = _history((0.5, 1.5, 1.0), (1.0, 2.0, 1.0))  # backdoor I(T;Y_pred) leaves the clean range
    parts = _by_claim(evaluate_claims([_run("adaptive_blend", far)]))["C4"].parts
    assert [p["verdict"] for p in parts if "epoch 4" in p["part"]] == ["contradicted"]


def test_c5_uses_the_data_processing_check_of_every_run():
    xy_ok = ((0.4, 0.5, 0.3), (0.5, 0.6, 0.7))  # (backdoor, clean) I(X;Y_pred) below I(X;T)
    ok = _history((0.5, 0.6, 0.4), (1, 1, 1), clean_xt=(1.0, 1.1, 1.2), xy=xy_ok)
    assert _by_claim(evaluate_claims([_run("blend", ok)]))["C5"].verdict == "holds"
    bad = _history((0.5, 0.6, 0.4), (1, 1, 1), xy=((0.4, 1.5, 0.3), (0.5, 0.6, 0.7)))
    c5 = _by_claim(evaluate_claims([_run("blend", bad)]))["C5"]
    assert c5.verdict == "contradicted" and c5.parts[0]["violations"] == 1
    assert _by_claim(evaluate_claims([_run("blend", _history((1, 1, 1), (1, 1, 1)))]))["C5"].verdict == "not testable"


def test_closed_form_label_mi_is_the_authors_analytic_value_and_c6_reads_the_bounds():
    assert closed_form_label_mi(0.1, 10) == pytest.approx(0.1936, abs=2e-4)
    mi = _history((1, 1, 1), (1, 1, 1))
    bounds = {"H_B": 0.3251, "I_B_Y": 0.19365, "I_B_Ypred": 0.30, "I_X_B": 0.32, "I_X_B_se": 0.03}
    run = _run("badnets", mi, bounds=bounds, ratio=0.1, num_classes=10)
    c6 = _by_claim(evaluate_claims([run]))["C6"]
    assert c6.verdict == "holds" and len(c6.parts) == 2
    short = _run("badnets", mi, bounds={**bounds, "I_X_B": 0.15}, ratio=0.1, num_classes=10)
    assert _by_claim(evaluate_claims([short]))["C6"].verdict == "contradicted"
    # Clean-label attacks have no closed form here: only the I(X;B) part is read.
    lc = _run("label_consistent", mi, bounds=bounds, ratio=0.1, num_classes=10, clean_label=True)
    assert len(_by_claim(evaluate_claims([lc]))["C6"].parts) == 1
    assert _by_claim(evaluate_claims([_run("badnets", mi)]))["C6"].verdict == "not testable"


def test_results_are_json_ready_and_render_as_markdown():
    import json

    mi = _history((0.5, 0.6, 0.4), (0.3, 0.4, 0.5))
    results = evaluate_claims([_run("badnets", mi, stealth=1.0), _run("blend", mi, stealth=2.0)])
    assert [r.claim for r in results] == list(claims.CLAIMS)
    assert all(r.verdict in claims.VERDICTS for r in results)
    json.dumps([r.to_json() for r in results])
    md = claims.claims_markdown(results)
    assert md.count("\n| C") == 6 and "**holds**" in md
    with pytest.raises(ValueError, match="read must be one of"):
        evaluate_claims([], read="test")


def test_consistent_seeds_do_not_beat_their_own_estimator_noise_and_the_train_read_goes_by_sign():
    mi = _history((1, 1, 1), (1, 1, 1))
    bounds = {"H_B": 0.3251, "I_B_Y": 0.19365, "I_B_Ypred": 0.30, "I_X_B_se": 0.03}
    # Three seeds 0.005 below H(B), agreeing to 1e-4: the spread alone would call it contradicted;
    # each estimate's own SE (0.03) says the shortfall is noise.
    runs = [_run("badnets", mi, s, bounds={**bounds, "I_X_B": 0.3201 + 1e-4 * s}, ratio=0.1, num_classes=10)
            for s in range(3)]
    part = _by_claim(evaluate_claims(runs))["C6"].parts[0]
    # The part's se is rounded to 6 places.
    assert part["verdict"] == "holds" and part["se"] == pytest.approx(math.sqrt(3) * 0.03 / 3, abs=1e-6)
    # The authors' train read has no SE: one seed's C2 parts are judged by sign and say se None.
    blend = _run("blend", _history((0.5, 0.6, 0.7), (0.5, 0.5, 0.5)))
    c2 = _by_claim(evaluate_claims([blend], read="train"))["C2"]
    assert c2.verdict == "holds" and all(p["se"] is None for p in c2.parts)
