"""The defence registry: every detector, parameter-space statistic and representation metric by
name, each a function of one trained run (:class:`DefenseInputs`) and a key.

Levels: ``sample`` detectors score every training sample (a study knows which it poisoned, so their
AUROC, TPR and FPR are computed here); ``model`` detectors score the network (BAN's score and
suspected target, UCLC, TAC); ``defence`` entries change the network and report what it does then
(CLP: accuracy and ASR after pruning); ``representation`` entries compare the backdoor group's T
with the target class's clean T. Every entry reads only what a defender would have (training
inputs and labels, clean test images, the network) except where its name says otherwise: TAC,
DSWD and the representation metrics use the trigger or the poison flags, as the stealthiness
measurements they are.

``rules="reference"`` runs each method with its official code's settings where they differ from
ibjax's (see each module).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
import types
from typing import Any, Callable, Literal, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ibjax.defenses.activation_clustering import activation_clusters
from ibjax.defenses.ban import BAN_REFERENCE, BANConfig, ban_detect
from ibjax.defenses.lipschitz import clp_prune, trigger_activated_change, uclc_score
from ibjax.defenses.loss import loss_isolation, loss_trajectory_scores
from ibjax.defenses.monitor import defender_view, monitor_scores
from ibjax.defenses.representation import davies_bouldin, dswd, linear_probe, ot_distance
from ibjax.defenses.roc import auroc, detection_rates, threshold_at_fpr
from ibjax.defenses.spectral import flag_top_per_label, spectral_scores
from ibjax.defenses.strip import NetworkLogits, strip_entropy
from ibjax.models import feature_map

__all__ = ["DefenseInputs", "DefenseSpec", "DEFENSES", "DEFENSE_NAMES", "resolve_defenses", "run_defenses",
           "RULES", "NEEDS_CONV_BN_PAIRS", "NEEDS_SAMPLE_LOSSES", "NEEDS_MI_HISTORY"]

RULES = ("ibjax", "reference")
"""Which settings the methods run with: ibjax's defaults or their official code's."""

Rules = Literal["ibjax", "reference"]


@dataclasses.dataclass(frozen=True)
class DefenseInputs:
    """What the defences read from one trained run (host arrays; the methods underneath are pure).

    Attributes:
      model: the Flax network; model_name: its name in :data:`ibjax.models.MODELS`.
      variables: its ``{"params", "batch_stats"}``.
      train_images: f32[N, H, W, C] in [0, 1], the training set as the network saw it (poisons triggered).
      train_labels: int[N], the labels it trained on.
      poisoned: bool[N], which samples were poisoned (the evaluation's ground truth only).
      num_classes, target: classes; the attack's target class (evaluation and TAC only).
      test_images, test_labels: clean test images f32[M, H, W, C] and labels int[M] (the defender's
        clean data).
      triggered_images: f32[M, H, W, C], the same test images with the test trigger.
      batch_size: images per network call.
      sample_losses: f[E, N], every training sample's loss in each epoch's training step (nats;
        NaN where a sample was in no full batch), as the study records them; None: not recorded
        (the loss-based detectors then refuse to run).
      mi: the run's MI history, ``{quantity: MIHistory}`` (offline ``xt``/``ty`` and online
        ``xt_online``/``ty_online`` reads), for the MI-dynamics monitor; None: not given.
    """

    model: Any
    model_name: str
    variables: Any
    train_images: np.ndarray
    train_labels: np.ndarray
    poisoned: np.ndarray
    num_classes: int
    target: int
    test_images: np.ndarray
    test_labels: np.ndarray
    triggered_images: np.ndarray
    batch_size: int = 500
    sample_losses: Optional[np.ndarray] = None
    mi: Optional[Mapping[str, Any]] = None

    def representations(self, images: np.ndarray, key: jax.Array) -> jax.Array:
        """T f32[N, D] of ``images`` (noise from ``key``, one draw per batch)."""
        return _batched(_t_of, self.model, self.variables, images, key, self.batch_size)

    def feature_maps(self, images: np.ndarray, key: jax.Array) -> jax.Array:
        """The last block's map f32[N, h, w, C] of ``images``, before pooling."""
        return _batched(_map_of, self.model, self.variables, images, key, self.batch_size)

    def predictions(self, variables, images: np.ndarray, key: jax.Array) -> np.ndarray:
        """Predicted classes int[N] of ``images`` under ``variables`` (e.g. a pruned network)."""
        return np.asarray(_batched(_pred_of, self.model, variables, images, key, self.batch_size))


def _t_of(model, variables, x, key):
    return model.apply(variables, x, train=False, rngs={"noise": key})[1]


def _map_of(model, variables, x, key):
    return feature_map(model, variables, x, key)[0]


def _pred_of(model, variables, x, key):
    return jnp.argmax(NetworkLogits(model)(variables, x, key), axis=-1)


# ``fn`` (a module-level function) and ``model`` (a Flax module, hashed by value) are static
# separately so that every call on the same network reuses one compiled program.
@functools.partial(jax.jit, static_argnames=("fn", "model"))
def _call(fn, model, variables, x, key):
    return fn(model, variables, x, key)


def _batched(fn, model, variables, images, key, batch_size: int):
    out = []
    for i, s in enumerate(range(0, len(images), batch_size)):
        out.append(_call(fn, model, variables, jnp.asarray(images[s:s + batch_size], jnp.float32),
                         jax.random.fold_in(key, i)))
    return jnp.concatenate(out)


@dataclasses.dataclass(frozen=True)
class DefenseSpec:
    """One registered defence: ``run(inputs, key, rules) -> record`` (a JSON-ready dict; sample-level
    records carry ``scores`` f32[N] and ``flags`` bool[N], which :func:`run_defenses` evaluates)."""

    name: str
    level: Literal["sample", "model", "defence", "representation"]
    run: Callable[[DefenseInputs, jax.Array, str], dict]
    summary: str


def _spectral(inp: DefenseInputs, key, rules):
    t = inp.representations(inp.train_images, key)
    scores = spectral_scores(t, inp.train_labels, inp.num_classes, centred=rules != "reference")
    return {"scores": scores, "flags": flag_top_per_label(scores, inp.train_labels, inp.num_classes, 0.15),
            "flagged_fraction_per_label": 0.15}


def _activation_clustering(inp: DefenseInputs, key, rules):
    k_t, k_c = jax.random.split(key)
    t = inp.representations(inp.train_images, k_t)
    scores, flags = activation_clusters(k_c, t, inp.train_labels, inp.num_classes, whiten=rules == "reference")
    return {"scores": scores, "flags": flags}


def _strip(inp: DefenseInputs, key, rules):
    # The clean test images are split in two: the overlay pool and the images the threshold is set
    # on (at a false rejection rate of clean images), so no image overlays itself.
    n = len(inp.test_labels)
    order = np.asarray(jax.random.permutation(jax.random.fold_in(key, 0), n))
    pool, calib = inp.test_images[order[: n // 2]], inp.test_images[order[n // 2:]]
    opts = (dict(overlays=100, alpha=1.0, blend="sum"), 0.10) if rules == "reference" else \
        (dict(overlays=64, alpha=0.5, blend="mean"), 0.05)
    fn = NetworkLogits(inp.model)
    h_train = strip_entropy(jax.random.fold_in(key, 1), fn, inp.variables, inp.train_images, pool, **opts[0])
    h_clean = strip_entropy(jax.random.fold_in(key, 2), fn, inp.variables, calib, pool, **opts[0])
    threshold = threshold_at_fpr(-h_clean, opts[1])
    return {"scores": -h_train, "flags": -h_train > threshold, "false_rejection_rate": opts[1],
            "overlays": opts[0]["overlays"], "clean_entropy_mean": float(jnp.mean(h_clean))}


def _ban(inp: DefenseInputs, key, rules):
    # The defender's clean data: 1% of the training set's size (BAN's), but at least one fitting
    # batch of distinct images, from the clean test images; the score is read on the rest of them
    # (the official code scores on a superset of its fitting set). The floor matters on small sets:
    # on mnist5k 1% is 40 images, and batch statistics of 128 draws from 40 images collapse a clean
    # small CNN's noisy predictions as surely as a backdoored one's (docs/defenses.md).
    cfg = BAN_REFERENCE if rules == "reference" else BANConfig()
    n = len(inp.test_labels)
    m = min(max(cfg.batch_size, math.ceil(0.01 * len(inp.train_labels))), n // 2)
    order = np.asarray(jax.random.permutation(jax.random.fold_in(key, 0), n))
    fit, score = order[:m], order[m:]
    res = ban_detect(jax.random.fold_in(key, 1), inp.model, inp.variables, inp.test_images[fit], inp.test_labels[fit],
                     inp.test_images[score], inp.test_labels[score], cfg)
    return {"score": float(res.score), "suspected_target": int(res.target), "accuracy_under_noise": float(res.accuracy),
            "noisy_accuracy": float(res.noisy_accuracy), "histogram": np.asarray(res.histogram).tolist(),
            "mask_mean": float(res.mask_l1), "fit_images": int(m)}


def _uclc(inp: DefenseInputs, key, rules):
    z, n = uclc_score(inp.variables, inp.model_name, eps=0.0 if rules == "reference" else 1e-5)
    return {"score": float(z), "channels_above_3_std": int(n)}


def _non_target(inp: DefenseInputs) -> np.ndarray:
    return np.flatnonzero(inp.test_labels != inp.target)


def _tac(inp: DefenseInputs, key, rules):
    idx = _non_target(inp)
    clean = inp.feature_maps(inp.test_images[idx], key)
    trig = inp.feature_maps(inp.triggered_images[idx], key)  # the same noise draws: only the trigger differs
    tac = trigger_activated_change(clean, trig)
    return {"score": float(jnp.max(tac)), "per_channel": np.asarray(tac).tolist()}


def _clp(inp: DefenseInputs, key, rules):
    pruned, marks = clp_prune(inp.variables, inp.model_name, eps=0.0 if rules == "reference" else 1e-5)
    idx = _non_target(inp)
    out = {"channels_pruned": int(sum(int(np.sum(m)) for m in marks.values()))}
    for name, v in (("before", inp.variables), ("after", pruned)):
        out[f"accuracy_{name}"] = float(np.mean(inp.predictions(v, inp.test_images, key) == inp.test_labels))
        out[f"asr_{name}"] = float(np.mean(inp.predictions(v, inp.triggered_images[idx], key) == inp.target))
    return out


def _losses(inp: DefenseInputs) -> np.ndarray:
    if inp.sample_losses is None:
        raise ValueError("the loss-based detectors need the run's per-sample training losses "
                         "(sample_losses.npy, recorded by every study since they exist)")
    return np.asarray(inp.sample_losses, np.float32)


def _loss_isolation(inp: DefenseInputs, key, rules):
    losses = _losses(inp)
    epoch = max(1, math.ceil(0.2 * len(losses)))  # after a warm-up of a fifth of the training
    scores, flags = loss_isolation(losses[epoch - 1], 0.01)
    return {"scores": scores, "flags": flags, "epoch": epoch, "isolated_fraction": 0.01}


def _loss_trajectory(inp: DefenseInputs, key, rules):
    scores = loss_trajectory_scores(_losses(inp))
    return {"scores": scores, "flags": scores >= np.nanquantile(np.asarray(scores), 0.99), "epochs": len(inp.sample_losses)}


def _mi_monitor(inp: DefenseInputs, key, rules):
    # Both sources when the run has them: the offline reads at the MI epochs and the online critics'
    # reads every epoch; the headline is the offline read at the last epoch, else the online one.
    if inp.mi is None:
        raise ValueError("the MI monitor needs the run's MI history (DefenseInputs.mi)")
    out = {}
    for source, quantities in (("offline", ("xt", "ty")), ("online", ("xt_online", "ty_online"))):
        if not all(q in inp.mi for q in quantities):
            continue
        values, epochs = defender_view(inp.mi, inp.target, inp.num_classes, quantities=quantities)
        if not epochs:
            continue
        res = monitor_scores(values)
        out[source] = {"epochs": list(epochs), "scores": np.asarray(res.score).tolist(),
                       "targets": np.asarray(res.target).tolist()}
    if not out:
        raise ValueError("the MI monitor found no epoch at which every class was read (estimate MI offline at "
                         "some epochs, or run the online critics)")
    head = out.get("offline", out.get("online"))
    return {"score": head["scores"][-1], "suspected_target": head["targets"][-1], **out}


def _representation(inp: DefenseInputs, key, rules):
    from ibjax.metrics.clustering import silhouette_score

    k_t, k_probe, k_test = jax.random.split(key, 3)
    t = inp.representations(inp.train_images, k_t)
    in_target = inp.train_labels == inp.target
    backdoor, clean_target = inp.poisoned & in_target, ~inp.poisoned & in_target
    labels = np.where(backdoor, 1, np.where(clean_target, 0, -1))
    valid = labels >= 0
    idx = _non_target(inp)
    clean_t = inp.representations(inp.test_images[idx], k_test)
    trig_t = inp.representations(inp.triggered_images[idx], k_test)
    dswd_ = float(dswd(clean_t, trig_t, inp.variables["params"]["classifier"]["kernel"]))
    if not backdoor.any():  # a clean run: no backdoor group to compare; the trigger's DSWD still reads
        return {"silhouette": math.nan, "davies_bouldin": math.nan, "ot_distance": math.nan, "linear_probe": math.nan,
                "dswd": dswd_, "backdoor_samples": 0, "clean_target_samples": int(clean_target.sum())}
    return {
        "silhouette": float(silhouette_score(t, labels, 2, valid)),
        "davies_bouldin": float(davies_bouldin(t, labels, 2, valid)),
        "ot_distance": float(ot_distance(t[backdoor], t[clean_target])),  # the two groups' rows only: an n x m cost
        "linear_probe": float(linear_probe(k_probe, t, backdoor, valid)),
        "dswd": dswd_,
        "backdoor_samples": int(backdoor.sum()), "clean_target_samples": int(clean_target.sum()),
    }


_SPECS = (
    DefenseSpec("spectral", "sample", _spectral, "spectral signatures: top 15% per label along its top singular direction"),
    DefenseSpec("activation_clustering", "sample", _activation_clustering,
                "activation clustering: 2-means per label on 10 principal dimensions, the smaller cluster if < 35%"),
    DefenseSpec("strip", "sample", _strip, "STRIP: low prediction entropy under superimposed clean images"),
    DefenseSpec("loss_isolation", "sample", _loss_isolation,
                "ABL-style isolation: the lowest-loss 1% of training samples after a warm-up (a fifth of the epochs)"),
    DefenseSpec("loss_trajectory", "sample", _loss_trajectory,
                "per-sample loss trajectory: samples that rank lowest in loss epoch after epoch"),
    DefenseSpec("ban", "model", _ban, "BAN: prediction collapse under adversarial neuron noise and the negative mask"),
    DefenseSpec("uclc", "model", _uclc, "UCLC: the largest per-layer z-score of a channel's Lipschitz bound (data-free)"),
    DefenseSpec("tac", "model", _tac, "TAC: the largest per-channel change of the last block's output under the trigger"),
    DefenseSpec("clp", "defence", _clp, "CLP: channels above mean + 3 std of UCLC pruned; accuracy and ASR after"),
    DefenseSpec("mi_monitor", "model", _mi_monitor,
                "MI-dynamics monitor: how far the most deviant class's I(X;T), I(T;Y_pred) curves sit from the others'"),
    DefenseSpec("representation", "representation", _representation,
                "backdoor vs target-class clean T: silhouette, Davies-Bouldin, OT distance, linear probe; DSWD"),
)

DEFENSES: Mapping[str, DefenseSpec] = types.MappingProxyType({s.name: s for s in _SPECS})
"""Every defence by name (read-only)."""

DEFENSE_NAMES: tuple[str, ...] = tuple(DEFENSES)

NEEDS_CONV_BN_PAIRS = ("uclc", "clp")
"""The entries that read each batch norm's convolution (:func:`ibjax.defenses.network.conv_bn_pairs`)."""

NEEDS_MI_HISTORY = ("mi_monitor",)
"""The entries that read the run's MI history (``DefenseInputs.mi``)."""

NEEDS_SAMPLE_LOSSES = ("loss_isolation", "loss_trajectory")
"""The entries that read the per-sample training losses a study records (``DefenseInputs.sample_losses``)."""


def resolve_defenses(names: Sequence[str]) -> tuple[str, ...]:
    """The registry names ``names`` asks for, in registry order (``"all"``: every one). Raises a
    one-line ValueError naming an unknown one."""
    names = tuple(names)
    if "all" in names:
        return DEFENSE_NAMES
    unknown = [n for n in names if n not in DEFENSES]
    if unknown:
        raise ValueError(f"unknown defence(s) {unknown}; choose from {', '.join(DEFENSE_NAMES)} or 'all'")
    return tuple(n for n in DEFENSE_NAMES if n in names)


def _evaluate_samples(record: dict, poisoned: np.ndarray) -> dict:
    scores = np.asarray(record.pop("scores"), np.float32)
    flags = np.asarray(record.pop("flags"), bool)
    tpr, fpr = detection_rates(flags.astype(np.float32), poisoned, 0.5)
    return {**record, "auroc": float(auroc(scores, poisoned)), "tpr": float(tpr), "fpr": float(fpr),
            "flagged": int(flags.sum()), "poisoned": int(poisoned.sum())}


def run_defenses(inputs: DefenseInputs, names: Sequence[str], key: jax.Array, rules: Rules = "ibjax",
                 keep_scores: bool = False) -> dict[str, dict]:
    """Run the named defences (:data:`DEFENSES`, or ``"all"``) on one trained run.

    Returns ``{name: record}``: each record has ``level``, ``wall_s`` (seconds, after compilation is
    included: the first call of a method compiles it) and its method's numbers; sample-level ones
    their ``auroc``, ``tpr`` and ``fpr`` against ``inputs.poisoned`` (and, with ``keep_scores``,
    the per-sample ``scores``).
    """
    if rules not in RULES:
        raise ValueError(f"rules must be one of {RULES}, got {rules!r}")
    out = {}
    for name in resolve_defenses(names):
        spec = DEFENSES[name]
        t0 = time.perf_counter()
        # each method's key from its place in the registry: the same whatever else runs beside it
        record = spec.run(inputs, jax.random.fold_in(key, DEFENSE_NAMES.index(name)), rules)
        if spec.level == "sample":
            scores = np.asarray(record["scores"], np.float32)
            record = _evaluate_samples(record, np.asarray(inputs.poisoned, bool))
            if keep_scores:
                record["scores"] = scores
        out[name] = {"level": spec.level, **record, "wall_s": time.perf_counter() - t0}
    return out
