"""Synthetic MI histories for the tests of ibjax.metrics (imported by tests/test_metrics_*.py), and
the authors' stealth arithmetic re-derived in plain NumPy."""

import numpy as np

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



def se_like(traj, value):
    return {q: {g: np.full(len(EPOCHS), value) for g in groups} for q, groups in traj.items()}


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
