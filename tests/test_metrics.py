"""Stealthiness (both normalisations, the authors' arithmetic re-derived, error bars), size-matched
comparisons, seed statistics across runs, silhouette scores and the 2-D embedding."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from ibjax import metrics

EPOCHS = (1, 5, 10, 20, 40, 60, 80, 100, 120)
NORMS = ("per_epoch", "joint")


def history(traj: dict, read_noise: float = 0.0, se: dict | None = None) -> dict:
    """An MI history from {quantity: {group: f32[len(EPOCHS)]}}; the train read is heldout + noise.
    ``se`` = {quantity: {group: f32[len(EPOCHS)]}} adds heldout_se and train_se."""
    out = {}
    for q, groups in traj.items():
        out[q] = {}
        for g, values in groups.items():
            out[q][g] = {}
            for j, (e, v) in enumerate(zip(EPOCHS, values)):
                entry = {"train": float(v) + read_noise, "heldout": float(v), "trajectory": [float(v)] * 3, "cap": 6.2}
                if se is not None:
                    entry["heldout_se"] = entry["train_se"] = float(se[q][g][j])
                out[q][g][str(e)] = entry
    return out


def clean_trajs(rng, num_clean=9):
    base = np.log1p(np.arange(len(EPOCHS), dtype=np.float64))
    return {f"class_{k}": base + 0.05 * rng.normal(size=len(EPOCHS)) for k in range(1, num_clean + 1)}


def make_run(rng, separate_xt=0.0, separate_ty=0.0):
    cleans = clean_trajs(rng)
    mean_clean = np.mean(list(cleans.values()), axis=0)
    ramp = np.linspace(0, 1, len(EPOCHS))
    traj = {}
    for q, sep in (("xt", separate_xt), ("ty", separate_ty)):
        traj[q] = {
            **cleans,
            "target_clean": mean_clean + 0.5 * sep * ramp,
            "target": mean_clean + sep * ramp,
            "target_backdoor": mean_clean + 3 * sep * ramp,
            "target_sample": mean_clean,
        }
    return traj


# The authors' metric (XinyuLiu71/IB-backdoor, mi.py, calculate_normalized_mi_difference), re-derived
# from its description in plain NumPy: per selected epoch, each group's value is the mean of its last
# 5 estimator epochs; min-max over {target} and the clean classes of that epoch, denominator
# (max - min + 1e-8); D_e = |mean_c (target - clean_c)|; D = mean over epochs.
def authors_distance(target_traj, clean_trajs_, epoch_index):
    per_epoch = []
    for e in epoch_index:
        t = float(np.mean(target_traj[e][-5:]))
        c = np.array([np.mean(tr[e][-5:]) for tr in clean_trajs_], np.float64)
        lo, hi = min(t, c.min()), max(t, c.max())
        tn, cn = (t - lo) / (hi - lo + 1e-8), (c - lo) / (hi - lo + 1e-8)
        per_epoch.append(abs(np.mean(tn - cn)))
    return float(np.mean(per_epoch))


def authors_distance_batched(target, clean):
    """The same rule on values, vectorised over leading draw axes: target [..., E], clean [..., C, E]."""
    allv = np.concatenate([target[..., None, :], clean], axis=-2)
    lo, hi = allv.min(-2, keepdims=True), allv.max(-2, keepdims=True)
    n = (allv - lo) / (hi - lo + 1e-8)
    return np.abs(np.mean(n[..., :1, :] - n[..., 1:, :], axis=-2)).mean(-1)


# ---------------------------------------------------------------------------------------------- helpers


def test_minmax_normalise_range_and_constant():
    x = jnp.array([[1.0, 3.0], [2.0, 5.0]])
    np.testing.assert_allclose(metrics.minmax_normalise(x), [[0.0, 0.5], [0.25, 1.0]])
    np.testing.assert_allclose(metrics.minmax_normalise(x, axis=1), [[0.0, 1.0], [0.0, 1.0]])
    np.testing.assert_allclose(metrics.minmax_normalise(x, eps=1.0), [[0.0, 0.4], [0.2, 0.8]])
    for eps in (0.0, 1e-8):
        c = metrics.minmax_normalise(jnp.full((3, 4), 7.0), eps=eps)
        assert not np.isnan(np.asarray(c)).any()
        np.testing.assert_array_equal(c, 0.0)


def test_select_epochs_nearest_with_ties_to_earlier():
    assert metrics.select_epochs([1, 5, 10, 20], (5, 40, 100)) == [5, 20]  # distinct: 20 is not counted twice
    assert metrics.select_epochs(["0", "4", "8"], (2, 6, 7)) == [0, 4, 8]
    with pytest.raises(ValueError):
        metrics.select_epochs([], (5,))


# ---------------------------------------------------------------------------------------------- stealth


def test_stealth_distance_hand_computed_both_normalisations():
    target = jnp.array([0.0, 4.0])
    clean = jnp.array([[2.0, 2.0], [1.0, 3.0]])
    # joint: min 0, max 4 -> e0: target 0, clean 0.5 / 0.25 -> |-0.375|; e1: 1 vs 0.5 / 0.75 -> 0.375.
    assert float(metrics.stealth_distance(target, clean, "joint")) == pytest.approx(0.375)
    # per epoch: e0 over {0, 2, 1}: 0 vs 1 / 0.5 -> 0.75; e1 over {4, 2, 3}: 1 vs 0 / 0.5 -> 0.75.
    assert float(metrics.stealth_distance(target, clean, "per_epoch")) == pytest.approx(0.75)
    assert float(metrics.stealth_distance(target, clean)) == pytest.approx(0.75)  # the authors' form is the default
    # Differences of opposite sign across classes cancel inside the mean, not after the abs.
    for norm in NORMS:
        assert float(metrics.stealth_distance(jnp.array([1.0]), jnp.array([[0.0], [2.0]]), norm)) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="normalise"):
        metrics.stealth_distance(target, clean, "global")


def test_stealth_distance_reproduces_the_authors_arithmetic():
    rng = np.random.default_rng(7)
    for e, c in ((1, 2), (3, 9), (5, 3)):  # a few shapes: each one compiles once
        scale = 10.0 ** rng.uniform(-1, 1, size=(100, 1, 1))
        target = scale[:, 0] * rng.normal(size=(100, e))
        clean = scale * rng.normal(size=(100, c, e)) + rng.normal(size=(100, 1, 1))
        got = np.asarray(jax.vmap(metrics.stealth_distance)(target, clean))
        want = [authors_distance([[v] for v in t], [[[v] for v in row] for row in cl], range(e))
                for t, cl in zip(target, clean)]
        np.testing.assert_allclose(got, want, atol=1e-6)
        np.testing.assert_allclose(got, authors_distance_batched(target, clean), atol=1e-6)
        assert float(metrics.stealth_distance(target[0], clean[0])) == pytest.approx(want[0], abs=1e-6)


def test_stealthiness_train_read_reproduces_the_authors_total_on_random_histories():
    """The whole pipeline, from estimator trajectories to the total, against the re-derivation."""
    rng = np.random.default_rng(8)
    selected = (5, 40, 100)
    idx = [EPOCHS.index(e) for e in selected]
    worst = 0.0
    for _ in range(40):
        classes = [f"class_{k}" for k in range(1, 10)]
        trajs = {}
        for q in ("xt", "ty"):
            level = {g: rng.uniform(0.5, 3.0) + np.cumsum(rng.uniform(0, 0.3, size=len(EPOCHS)))
                     for g in ["target", "target_clean", *classes]}
            trajs[q] = {g: [lv + 0.1 * rng.normal(size=rng.integers(6, 12)) for lv in lvl] for g, lvl in level.items()}
        mi = {q: {g: {str(e): {"trajectory": tr[j].tolist(), "train": float(np.mean(tr[j][-5:])), "heldout": None}
                      for j, e in enumerate(EPOCHS)} for g, tr in groups.items()} for q, groups in trajs.items()}
        res = metrics.stealthiness(mi, selected, read="train")
        total = 0.0
        for q in ("xt", "ty"):
            for g in ("target_clean", "target"):
                d = authors_distance(trajs[q][g], [trajs[q][c] for c in classes], idx)
                assert res["components"][f"{q}/{g}"] == pytest.approx(d, abs=1e-6)
                total += d
        worst = max(worst, abs(res["total"] - total))
    assert worst < 1e-6
    assert res["read"] == "train" and res["normalise"] == "per_epoch" and "authors" in res["description"]


def test_per_epoch_and_joint_disagree_on_rankings():
    """The two normalisations are different metrics: on random histories they order some pairs differently."""
    rng = np.random.default_rng(9)
    t = rng.normal(size=(60, 3))
    cl = rng.normal(size=(60, 9, 3)) + np.linspace(0, 2, 3)
    per = np.asarray(jax.vmap(lambda a, b: metrics.stealth_distance(a, b, "per_epoch"))(t, cl))
    joint = np.asarray(jax.vmap(lambda a, b: metrics.stealth_distance(a, b, "joint"))(t, cl))
    order = np.sign(per[:, None] - per[None, :]) != np.sign(joint[:, None] - joint[None, :])
    assert order.any()
    assert not np.allclose(per, joint, atol=1e-3)


@pytest.mark.parametrize("norm", NORMS)
def test_stealth_distance_identical_is_zero_and_separation_increases(norm):
    rng = np.random.default_rng(0)
    clean = np.stack(list(clean_trajs(rng).values()))
    mean_clean = clean.mean(0)
    assert float(metrics.stealth_distance(mean_clean, clean, norm)) == pytest.approx(0.0, abs=1e-6)
    same = np.tile(mean_clean, (4, 1))
    assert float(metrics.stealth_distance(mean_clean, same, norm)) == pytest.approx(0.0, abs=1e-7)
    prev = 0.0
    for shift in (0.2, 0.5, 1.0, 2.0):
        d = float(metrics.stealth_distance(mean_clean + shift * np.linspace(0, 1, len(EPOCHS)), clean, norm))
        assert d > prev
        prev = d


@pytest.mark.parametrize("norm", NORMS)
def test_stealth_distance_affine_invariant_and_usable_under_jit_vmap_grad(norm):
    rng = np.random.default_rng(1)
    target = rng.normal(size=5)
    clean = rng.normal(size=(4, 5))
    d = float(metrics.stealth_distance(target, clean, norm))
    # rel 2e-4: at an offset of 10, float32 keeps about 5 significant digits of differences of 0.01.
    for a, b in ((3.0, -2.0), (0.01, 10.0)):
        assert float(metrics.stealth_distance(a * target + b, a * clean + b, norm)) == pytest.approx(d, rel=2e-4)
    with pytest.raises(ValueError):
        metrics.stealth_distance(target, clean[:, :4], norm)
    batch_t = rng.normal(size=(6, 5))
    batched = jax.jit(jax.vmap(lambda t: metrics.stealth_distance(t, clean, norm)))(batch_t)
    np.testing.assert_allclose(batched, [float(metrics.stealth_distance(t, clean, norm)) for t in batch_t], atol=1e-6)
    g = jax.grad(lambda t: metrics.stealth_distance(t, clean, norm))(jnp.asarray(target, jnp.float32))
    assert g.shape == (5,) and np.isfinite(np.asarray(g)).all() and np.abs(np.asarray(g)).sum() > 0


@pytest.mark.parametrize("norm", NORMS)
def test_stealthiness_total_components_and_ordering(norm):
    rng = np.random.default_rng(2)
    blend_in = metrics.stealthiness(history(make_run(rng)), normalise=norm)
    stand_out = metrics.stealthiness(history(make_run(rng, 1.0, 2.0)), normalise=norm)
    for res in (blend_in, stand_out):
        assert tuple(res["components"]) == metrics.STEALTH_COMPONENTS
        assert res["total"] == pytest.approx(sum(res["components"].values()))
        assert res["epochs"] == [5, 40, 100] and res["read"] == "heldout" and res["normalise"] == norm
        assert res["clean"] == [f"class_{k}" for k in range(1, 10)]
        assert res["total_se"] is None and res["components_se"] is None  # no SEs in this history
    assert blend_in["total"] == pytest.approx(0.0, abs=1e-5)
    assert stand_out["total"] > 0.2
    assert stand_out["components"]["xt/target"] > stand_out["components"]["xt/target_clean"]


@pytest.mark.parametrize("norm", NORMS)
def test_stealthiness_matches_stealth_distance_and_read(norm):
    rng = np.random.default_rng(3)
    traj = make_run(rng, 0.7, 0.3)
    mi = history(traj, read_noise=0.0)
    res = metrics.stealthiness(mi, epochs=(5, 40, 100), normalise=norm)
    idx = [EPOCHS.index(e) for e in (5, 40, 100)]
    cleans = [f"class_{k}" for k in range(1, 10)]
    for q in ("xt", "ty"):
        clean = np.stack([traj[q][c][idx] for c in cleans])
        for g in ("target_clean", "target"):
            want = float(metrics.stealth_distance(traj[q][g][idx], clean, norm))
            assert res["components"][f"{q}/{g}"] == pytest.approx(want, rel=1e-6)
    sub = metrics.stealthiness(mi, clean=["class_1", "class_2", "class_3"], normalise=norm)
    clean3 = np.stack([traj["xt"][c][idx] for c in ("class_1", "class_2", "class_3")])
    assert sub["components"]["xt/target"] == pytest.approx(
        float(metrics.stealth_distance(traj["xt"]["target"][idx], clean3, norm)), rel=1e-6)
    # The train read here is heldout + a constant: every quantity shifted, the metric unchanged.
    res_train = metrics.stealthiness(history(traj, read_noise=0.3), read="train", normalise=norm)
    assert res_train["read"] == "train"
    assert res_train["total"] == pytest.approx(res["total"], rel=1e-5)


@pytest.mark.parametrize("norm", NORMS)
def test_stealthiness_affine_rescale_of_one_quantity(norm):
    rng = np.random.default_rng(4)
    traj = make_run(rng, 0.4, 0.9)
    base = metrics.stealthiness(history(traj), normalise=norm)
    scaled = {"xt": {g: 2.5 * v + 1.0 for g, v in traj["xt"].items()}, "ty": traj["ty"]}
    res = metrics.stealthiness(history(scaled), normalise=norm)
    for k, v in base["components"].items():
        assert res["components"][k] == pytest.approx(v, rel=1e-5, abs=1e-6)


def test_stealthiness_missing_epochs_and_values():
    rng = np.random.default_rng(5)
    mi = history(make_run(rng, 0.5, 0.5))
    with pytest.raises(ValueError, match=r"\[7, 200\].*available.*\[1, 5, 10"):
        metrics.stealthiness(mi, epochs=(5, 7, 200))
    short = {q: {g: {e: v for e, v in h.items() if int(e) <= 20} for g, h in groups.items()} for q, groups in mi.items()}
    with pytest.raises(ValueError, match="select_epochs"):
        metrics.stealthiness(short)
    chosen = metrics.select_epochs(metrics.available_epochs(short), (5, 40, 100))
    assert chosen == [5, 20]
    assert math.isfinite(metrics.stealthiness(short, chosen)["total"])
    # One clean class lacks an epoch: that epoch is not available.
    del mi["ty"]["class_3"]["40"]
    with pytest.raises(ValueError, match=r"\[40\]"):
        metrics.stealthiness(mi)
    mi = history(make_run(rng))
    mi["xt"]["target"]["5"]["heldout"] = None
    with pytest.raises(ValueError, match="train"):
        metrics.stealthiness(mi)
    assert math.isfinite(metrics.stealthiness(mi, read="train")["total"])
    with pytest.raises(ValueError, match="read"):
        metrics.stealthiness(mi, read="test")
    with pytest.raises(ValueError, match="normalise"):
        metrics.stealthiness(mi, read="train", normalise="global")


# ---------------------------------------------------------------------------------------------- error bars


def se_like(traj, value):
    return {q: {g: np.full(len(EPOCHS), value) for g in groups} for q, groups in traj.items()}


def test_stealth_bootstrap_matches_the_folded_normal():
    """Min and max pinned by exact clean classes 0 and 10, target 6 +- s at one epoch: D = |t - 5| / 10
    (eps negligible) is a folded normal, whose standard deviation is known in closed form."""
    s = 0.5
    mu, sigma = 0.1, s / 10
    draws = metrics.stealth_bootstrap(jax.random.PRNGKey(0), jnp.array([[6.0]]), jnp.array([[0.0], [10.0]]),
                                      jnp.array([[s]]), jnp.zeros((2, 1)), draws=20000)
    assert draws.shape == (20000, 1)
    fold_mean = (sigma * math.sqrt(2 / math.pi) * math.exp(-mu**2 / (2 * sigma**2))
                 + mu * (1 - 2 * stats.norm.cdf(-mu / sigma)))
    fold_sd = math.sqrt(mu**2 + sigma**2 - fold_mean**2)
    assert float(jnp.std(draws, ddof=1)) == pytest.approx(fold_sd, rel=0.03)
    assert float(jnp.mean(draws)) == pytest.approx(fold_mean, rel=0.01)


def test_stealthiness_standard_errors_zero_known_and_growing():
    rng = np.random.default_rng(11)
    traj = make_run(rng, 0.6, 0.4)
    zero = metrics.stealthiness(history(traj, se=se_like(traj, 0.0)))
    assert zero["total_se"] == pytest.approx(0.0, abs=1e-6)
    assert all(v == pytest.approx(0.0, abs=1e-6) for v in zero["components_se"].values())
    assert "bootstrap" in zero["se_method"]

    # Monte Carlo with NumPy and the re-derived rule: redraw every value, recompute, take the spread.
    se = {q: {g: rng.uniform(0.02, 0.08, size=len(EPOCHS)) for g in groups} for q, groups in traj.items()}
    res = metrics.stealthiness(history(traj, se=se))
    idx = [EPOCHS.index(e) for e in (5, 40, 100)]
    cleans = [f"class_{k}" for k in range(1, 10)]
    n = 4000
    comps = {}
    for q in ("xt", "ty"):
        c = np.stack([traj[q][k][idx] for k in cleans])
        c_se = np.stack([se[q][k][idx] for k in cleans])
        c_draw = c + c_se * rng.normal(size=(n, *c.shape))
        for g in ("target_clean", "target"):
            t_draw = traj[q][g][idx] + se[q][g][idx] * rng.normal(size=(n, len(idx)))
            comps[f"{q}/{g}"] = authors_distance_batched(t_draw, c_draw)
    for k, d in comps.items():
        assert res["components_se"][k] == pytest.approx(d.std(ddof=1), rel=0.08)
    assert res["total_se"] == pytest.approx(sum(comps.values()).std(ddof=1), rel=0.08)
    assert res["total"] == pytest.approx(metrics.stealthiness(history(traj))["total"])  # SEs leave the value alone

    again = metrics.stealthiness(history(traj, se=se))
    assert again["total_se"] == res["total_se"]  # fixed key: reproducible
    bigger = metrics.stealthiness(history(traj, se={q: {g: 2 * v for g, v in gs.items()} for q, gs in se.items()}))
    assert bigger["total_se"] > 1.3 * res["total_se"]
    assert all(bigger["components_se"][k] > res["components_se"][k] for k in res["components_se"])


def test_stealthiness_standard_errors_absent_or_incomplete_give_none():
    rng = np.random.default_rng(12)
    traj = make_run(rng, 0.3, 0.3)
    mi = history(traj, se=se_like(traj, 0.05))
    assert metrics.stealthiness(mi)["total_se"] is not None
    assert metrics.stealthiness(mi, se_draws=0)["total_se"] is None
    mi["ty"]["class_4"]["40"]["heldout_se"] = None
    partial = metrics.stealthiness(mi)
    assert partial["total_se"] is None and partial["components_se"] is None
    assert metrics.stealthiness(mi, read="train")["total_se"] is not None  # train_se still complete


# ---------------------------------------------------------------------------------------------- size-matched


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


# ---------------------------------------------------------------------------------------------- across runs


def test_protocol_labels_ignore_run_identity_fields():
    base = {"dataset": "cifar10", "attack": "badnets", "attack_options": [["size", 5]], "seed": 0,
            "poison": {"ratio": 0.1, "target": 0}, "train": {"epochs": 120, "lr": 0.1}, "xt": {"seed": 3},
            "out": "runs/a"}
    same = {**base, "attack": "blend", "attack_options": [], "seed": 4, "poison": {"ratio": 0.05, "target": 0},
            "xt": {"seed": 9}, "out": "runs/b"}
    labels, differing = metrics.protocol_labels([base, same])
    assert labels == ["P1", "P1"] and differing == {}
    other = {**base, "train": {"epochs": 60, "lr": 0.1}}
    missing = {k: v for k, v in base.items() if k != "dataset"}
    labels, differing = metrics.protocol_labels([base, same, other, missing])
    assert labels == ["P1", "P1", "P2", "P3"]
    assert differing == {"train.epochs": [120, 120, 60, 120], "dataset": ["cifar10", "cifar10", "cifar10", "<absent>"]}
    assert metrics.flatten_config({"a": {"b": [1, [2, 3]], "c": {}}}) == {"a.b": (1, (2, 3)), "a.c": ()}
    assert "poison.target" in metrics.protocol_of(base) and "poison.ratio" not in metrics.protocol_of(base)
    # The identity list is a parameter: ignoring nothing makes the attack part of the protocol.
    assert metrics.protocol_labels([base, same], ignore=())[0] == ["P1", "P2"]


def test_seed_statistics_interval_and_its_coverage():
    s = metrics.seed_statistics([1.0, 2.0, 3.0])
    half = stats.t.ppf(0.975, 2) * 1.0 / math.sqrt(3)
    assert (s["n"], s["mean"], s["sd"], s["min"], s["max"]) == (3, 2.0, 1.0, 1.0, 3.0)
    assert s["ci_low"] == pytest.approx(2.0 - half) and s["ci_high"] == pytest.approx(2.0 + half)
    one = metrics.seed_statistics([0.7])
    assert one["mean"] == 0.7 and one["sd"] is None and one["ci_low"] is None and one["min"] == one["max"] == 0.7
    assert metrics.seed_statistics([])["mean"] is None
    # The 95% interval covers the true mean in about 95% of repeated samples of 4 seeds.
    rng = np.random.default_rng(14)
    hits = 0
    for _ in range(2000):
        st = metrics.seed_statistics(rng.normal(1.0, 0.3, size=4))
        hits += st["ci_low"] <= 1.0 <= st["ci_high"]
    assert 0.93 < hits / 2000 < 0.97


def test_welch_p_value_matches_its_definition():
    rng = np.random.default_rng(15)
    a, b = rng.normal(0.0, 1.0, size=5), rng.normal(1.0, 3.0, size=8)
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    t = (a.mean() - b.mean()) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1))
    assert metrics.welch_p_value(a, b) == pytest.approx(2 * stats.t.sf(abs(t), df), rel=1e-9)
    assert metrics.welch_p_value(a[:1], b) is None
    assert metrics.welch_p_value([1.0, 1.0], [2.0, 2.0]) is None


def runs_for(attack, totals, ratio=0.1, protocol="P1", se=None):
    return [{"run": f"{attack}_s{i}", "attack": attack, "poison_ratio": ratio, "seed": i, "protocol": protocol,
             "total": t, "components": dict(zip(metrics.STEALTH_COMPONENTS, (t / 4,) * 4)), "total_se": se,
             "test_accuracy": 0.9, "asr": 1.0} for i, t in enumerate(totals)]


def test_compare_runs_groups_ranks_and_says_when_within_noise():
    runs = (runs_for("blend", [1.00, 1.05, 0.95]) + runs_for("badnets", [0.40, 0.42, 0.38])
            + runs_for("wanet", [1.02, 1.10, 0.98]) + runs_for("badnets", [2.0, 2.1], ratio=0.05))
    res = metrics.compare_runs(runs)
    first = res["rankings"][0]
    assert res["rankings"][0]["poison_ratio"] == 0.05 and res["rankings"][0]["order"] == ["badnets"]
    main = res["rankings"][1]
    assert main["poison_ratio"] == 0.1 and main["order"] == ["badnets", "blend", "wanet"]
    n1, n2 = main["neighbours"]
    assert (n1["better"], n1["worse"], n1["within_noise"]) == ("badnets", "blend", False) and n1["p_value"] < 0.01
    assert (n2["better"], n2["worse"], n2["within_noise"]) == ("blend", "wanet", True) and n2["p_value"] > 0.05
    assert "Welch" in n1["basis"] and "Welch" in res["test"]
    g = next(g for g in res["groups"] if g["attack"] == "blend")
    assert g["n"] == 3 and g["rank"] == 2 and g["seeds"] == [0, 1, 2]
    assert g["total"]["mean"] == pytest.approx(1.0) and g["total"]["ci_low"] < 1.0 < g["total"]["ci_high"]
    assert g["components"]["xt/target"]["mean"] == pytest.approx(0.25)
    assert first["neighbours"] == []


def test_compare_runs_with_one_seed_per_attack():
    res = metrics.compare_runs(runs_for("a", [0.5]) + runs_for("b", [0.6]))
    nb = res["rankings"][0]["neighbours"][0]
    assert nb["within_noise"] is None and "cannot tell" in nb["basis"]
    assert res["groups"][0]["total"]["ci_low"] is None
    # With bootstrap SEs, a z-test on the estimator noise alone (said so).
    res = metrics.compare_runs(runs_for("a", [0.5], se=0.01) + runs_for("b", [0.6], se=0.01))
    nb = res["rankings"][0]["neighbours"][0]
    assert nb["within_noise"] is False and "estimator" in nb["basis"]
    res = metrics.compare_runs(runs_for("a", [0.5], se=0.2) + runs_for("b", [0.6], se=0.2))
    assert res["rankings"][0]["neighbours"][0]["within_noise"] is True
    with pytest.raises(ValueError, match="seed 0"):
        metrics.compare_runs(runs_for("a", [0.5]) + runs_for("a", [0.6]))
    with pytest.raises(ValueError, match="no runs"):
        metrics.compare_runs([])
    # Different protocols are ranked apart.
    res = metrics.compare_runs(runs_for("a", [0.5]) + runs_for("a", [0.6], protocol="P2"))
    assert [r["protocol"] for r in res["rankings"]] == ["P1", "P2"]


# ---------------------------------------------------------------------------------------------- silhouette


def brute_silhouette(x, labels):
    x = np.asarray(x, np.float64)
    d = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
    out = np.zeros(len(x))
    present = np.unique(labels)
    for i in range(len(x)):
        own = labels == labels[i]
        if own.sum() == 1 or len(present) < 2:
            continue
        a = d[i, own].sum() / (own.sum() - 1)
        b = min(d[i, labels == l].mean() for l in present if l != labels[i])
        out[i] = (b - a) / max(a, b)
    return out


def test_silhouette_matches_brute_force_with_blocks_and_singletons():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(97, 5)).astype(np.float32) + 10.0  # offset: checks the cancellation guard
    labels = rng.integers(0, 4, size=97)
    labels[13] = 5  # singleton cluster; id 4 unused (empty)
    want = brute_silhouette(x, labels)
    for block in (16, 1024):
        got = np.asarray(metrics.silhouette_samples(x, labels, 6, block_size=block))
        np.testing.assert_allclose(got, want, atol=2e-5)
    assert got[13] == 0.0
    assert float(metrics.silhouette_score(x, labels, 6)) == pytest.approx(want.mean(), abs=2e-5)


def test_silhouette_valid_mask_equals_unpadded():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 3)).astype(np.float32)
    labels = rng.integers(0, 3, size=40)
    xp = np.concatenate([x, rng.normal(size=(24, 3)).astype(np.float32)])
    lp = np.concatenate([labels, rng.integers(0, 3, size=24)])
    valid = np.arange(64) < 40
    got = np.asarray(metrics.silhouette_samples(xp, lp, 3, valid, block_size=16))
    np.testing.assert_allclose(got[:40], brute_silhouette(x, labels), atol=2e-5)
    np.testing.assert_array_equal(got[40:], 0.0)
    assert float(metrics.silhouette_score(xp, lp, 3, valid, block_size=16)) == pytest.approx(
        brute_silhouette(x, labels).mean(), abs=2e-5)


def test_silhouette_blobs_high_random_labels_near_zero():
    key = jax.random.PRNGKey(0)
    k1, k2 = jax.random.split(key)
    centres = 20.0 * jax.random.normal(k1, (5, 16))
    labels = jnp.repeat(jnp.arange(5), 200)
    x = centres[labels] + jax.random.normal(k2, (1000, 16))
    assert float(metrics.silhouette_score(x, labels, 5, block_size=256)) > 0.8
    random_labels = jax.random.randint(jax.random.PRNGKey(3), (1000,), 0, 5)
    assert abs(float(metrics.silhouette_score(x, random_labels, 5, block_size=256))) < 0.05


def test_silhouette_single_cluster_is_zero():
    x = np.random.default_rng(2).normal(size=(10, 2))
    np.testing.assert_array_equal(metrics.silhouette_samples(x, np.zeros(10, int), 3), 0.0)


def test_group_silhouettes_splits_target_class():
    rng = np.random.default_rng(3)
    k, per = 4, 30
    centres = 10.0 * rng.normal(size=(k + 1, 8))
    labels = np.repeat(np.arange(k), per)
    poisoned = np.zeros(k * per, bool)
    # Target 0 gets 15 backdoor samples relabelled from the other classes, clustered far away.
    bd = rng.choice(np.arange(2 * per, k * per), 15, replace=False)
    labels[bd] = 0
    poisoned[bd] = True
    poisoned[per + 1] = True  # poisoned but kept its label (regularisation sample): stays in class 1
    ids = np.asarray(metrics.cluster_ids(labels, poisoned, 0, k))
    assert ids[per + 1] == 1 and (ids[bd] == k).all()
    x = centres[ids] + rng.normal(size=(k * per, 8))
    res = metrics.group_silhouettes(x, labels, poisoned, target=0, num_classes=k)
    assert set(res) == {"target_clean", "target_backdoor", "target", "class_1", "class_2", "class_3", "overall"}
    s = brute_silhouette(x, ids)
    assert res["target_backdoor"] == pytest.approx(s[ids == k].mean(), abs=1e-4)
    assert res["target_clean"] == pytest.approx(s[ids == 0].mean(), abs=1e-4)
    assert res["target"] == pytest.approx(s[labels == 0].mean(), abs=1e-4)
    assert res["class_2"] == pytest.approx(s[ids == 2].mean(), abs=1e-4)
    assert res["overall"] == pytest.approx(s.mean(), abs=1e-4)
    assert res["target_backdoor"] > 0.7
    # No backdoor samples: that group is NaN, the others are still defined.
    res = metrics.group_silhouettes(x, np.repeat(np.arange(k), per), np.zeros(k * per, bool), target=0)
    assert math.isnan(res["target_backdoor"]) and math.isfinite(res["overall"])
    with pytest.raises(ValueError):
        metrics.group_silhouettes(x, labels, poisoned, target=0, num_classes=3)


# ---------------------------------------------------------------------------------------------- PCA


def test_pca_2d_matches_numpy_up_to_sign_and_is_deterministic():
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(200, 6)) * np.array([5.0, 3.0, 1.0, 0.5, 0.2, 0.1])) @ np.linalg.qr(rng.normal(size=(6, 6)))[0]
    x = x.astype(np.float32) + 3.0
    got = np.asarray(metrics.pca_2d(x))
    assert got.shape == (200, 2)
    xc = x - x.mean(0)
    _, _, vt = np.linalg.svd(xc.astype(np.float64), full_matrices=False)
    want = xc @ vt[:2].T
    for j in range(2):
        sign = np.sign(np.dot(got[:, j], want[:, j]))
        np.testing.assert_allclose(got[:, j], sign * want[:, j], atol=1e-3)
    assert got[:, 0].var() > got[:, 1].var()
    # Sign convention is deterministic: flipping the data's sign flips nothing in the direction choice
    # (directions fixed by their largest entry), so the projection of -x is -projection of x.
    np.testing.assert_allclose(np.asarray(metrics.pca_2d(-x)), -got, atol=1e-3)
    # Wide data (D > N) goes through the SVD branch; D = 1 pads a zero column.
    wide = rng.normal(size=(10, 50)).astype(np.float32)
    w = np.asarray(metrics.pca_2d(wide))
    _, sv, _ = np.linalg.svd(wide - wide.mean(0), full_matrices=False)
    np.testing.assert_allclose(np.linalg.norm(w, axis=0), sv[:2], rtol=1e-3)
    one = np.asarray(metrics.pca_2d(x[:, :1]))
    np.testing.assert_array_equal(one[:, 1], 0.0)
