"""One run of the study: poisoned training with MI of every sample group at chosen epochs.

:func:`run_study` composes the library's pure pieces (data, poison, pipeline, models, train, mi,
metrics, checkpoint, plots) into the reference protocol (SPEC.md) and writes a run directory:

    config.json        the full :class:`StudyConfig`
    metrics.jsonl      per epoch: train/test accuracy, ASR, per-class train loss, lr, wall time
    mi.json            mi[quantity][group][epoch] = {"trajectory", "train", "heldout"} in nats;
                       quantities "xt" = I(X;T), "ty" = I(T;Y_pred) (offline), "xt_online" /
                       "ty_online" (critics trained alongside the network, when enabled: every
                       step, each group's critic reads the batch's new pairs, then takes one
                       step on a buffer of its B most recent pairs, :func:`ibjax.mi.update_buffered`;
                       the epoch's mean read on those new pairs is stored as "heldout")
    stealth.json       the dynamics-based stealthiness metric and its four components
    clustering.json    per-group silhouette scores of T at the embedding epochs
    embedding_<e>.npz  2-D embedding of T (with labels and backdoor flags) at the embedding epochs
    checkpoints/       Orbax checkpoints of the whole run state, every epoch (online critics and
                       their pair buffers included)
    lc_perturbations.npy / trigger_pattern.npy
                       what the label-consistent (PGD) and TrojanNN (optimised patch) attacks
                       compute against a clean model first, kept for resume
    plots/*.png, summary.md

A run killed at any point resumes with ``resume=True`` from its last checkpoint and finishes with
the same results as an uninterrupted run: every random key derives from (seed, epoch), and the files
above are rewritten from the checkpointed history, so nothing is lost or duplicated.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import sys
import time
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ibjax import metrics as ibmetrics
from ibjax import mi as ibmi
from ibjax import plots
from ibjax.checkpoint import Checkpointer
from ibjax.data import load_dataset
from ibjax.models import ModelConfig, make_model
from ibjax.pipeline import DeviceData, gather_batch, put_test_data, put_train_data
from ibjax.poison import PoisonConfig, PoisonPlan, group_index_table, make_poison_plan
from ibjax.train import (
    TrainConfig,
    create_train_state,
    evaluate_attack,
    extract_features,
    plateau_init,
    plateau_update,
    train_epoch,
)
from ibjax.triggers import Attack, PGDParams, get_attack, pgd_l2, trojannn_pattern

__all__ = ["StudyConfig", "run_study", "validate", "config_to_dict", "config_from_dict", "estimate_groups_mi"]

REFERENCE_MI_EPOCHS = (1, 5, 10, 20, 40, 60, 80, 100, 120)


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    """Everything that defines a run. Defaults: the reference protocol (CIFAR-10, BadNets 10%, ResNet-18).

    Attributes:
      dataset: embedded name ('mnist5k'), TFDS name, or a path to an image folder / .tar.gz.
      data_dir: TFDS data dir, or an image folder / archive (then ``dataset`` is a label).
      per_class_limit: keep the first n training samples per class (SVHN reference cut: 4000).
      attack: a name from :data:`ibjax.triggers.ATTACKS`; attack_options: overrides of its params.
      poison, model, train: see :class:`PoisonConfig`, :class:`ModelConfig`, :class:`TrainConfig`.
      mi_epochs: epochs (1-based, after that epoch's training) at which MI is estimated offline.
      xt, ty: estimator settings for I(X;T) and I(T;Y_pred).
      mi_mode: "offline" (reference), "online" (critics alongside training, every epoch) or "both".
      feature_mode: "fresh" (a new noise draw of the network at every critic step, the reference)
        or "bank" (a cached bank of ``bank_draws`` noise draws per sample).
      stealth_epochs: epochs of the stealthiness metric (nearest MI epochs are used if absent).
      embed_epochs: epochs for silhouette scores and T embeddings (default: first and last MI epoch).
      pgd_steps: PGD steps of the label-consistent attack's perturbations (reference 100).
      seed: the run's seed.
    """

    dataset: str = "cifar10"
    data_dir: Optional[str] = None
    per_class_limit: Optional[int] = None
    attack: str = "badnets"
    attack_options: tuple = ()
    poison: PoisonConfig = PoisonConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    mi_epochs: tuple[int, ...] = REFERENCE_MI_EPOCHS
    xt: ibmi.MIConfig = ibmi.XT_CONFIG
    ty: ibmi.MIConfig = ibmi.TY_CONFIG
    mi_mode: str = "offline"
    feature_mode: str = "fresh"
    bank_draws: int = 8
    stealth_epochs: tuple[int, ...] = (5, 40, 100)
    embed_epochs: tuple[int, ...] = ()
    embed_points: int = 2000
    pgd_steps: int = 100
    seed: int = 0


def config_to_dict(config: StudyConfig) -> dict:
    return dataclasses.asdict(config)


def config_from_dict(d: dict) -> StudyConfig:
    d = dict(d)
    sub = {"poison": PoisonConfig, "model": ModelConfig, "train": TrainConfig, "xt": ibmi.MIConfig, "ty": ibmi.MIConfig}
    for k, cls in sub.items():
        if k in d:
            v = dict(d[k])
            if "hidden" in v:
                v["hidden"] = tuple(v["hidden"])
            d[k] = cls(**v)
    for k in ("mi_epochs", "stealth_epochs", "embed_epochs"):
        if k in d:
            d[k] = tuple(d[k])
    if "attack_options" in d:
        d["attack_options"] = tuple(tuple(x) for x in d["attack_options"])
    return StudyConfig(**d)


def validate(config: StudyConfig, run_dir: str) -> Attack:
    """Check every option before any long work starts; returns the attack. Raises ValueError."""
    attack = get_attack(config.attack, **dict(config.attack_options))
    config.train.validate()
    config.xt.validate()
    config.ty.validate()
    config.poison.validate()  # the target's upper bound is checked once the data set is loaded
    e = list(config.mi_epochs)
    if config.mi_mode != "online":
        if not e:
            raise ValueError("mi_epochs is empty: give at least one epoch for the offline MI estimates")
        if any(b <= a for a, b in zip(e, e[1:])):
            raise ValueError(f"mi_epochs must be strictly increasing, got {e}")
        if e[0] < 1 or e[-1] > config.train.epochs:
            raise ValueError(f"mi_epochs must lie in 1..{config.train.epochs} (the training epochs), got {e}")
    if config.mi_mode not in ("offline", "online", "both"):
        raise ValueError(f"mi_mode must be 'offline', 'online' or 'both', got {config.mi_mode!r}")
    if config.feature_mode not in ("fresh", "bank"):
        raise ValueError(f"feature_mode must be 'fresh' or 'bank', got {config.feature_mode!r}")
    if config.bank_draws < 1:
        raise ValueError("bank_draws must be >= 1")
    try:
        os.makedirs(run_dir, exist_ok=True)
        probe = os.path.join(run_dir, ".write_probe")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as err:
        raise ValueError(f"output directory {run_dir!r} is not writable ({err}); choose another --out") from err
    return attack


class _Progress:
    """A plain progress line with rate and ETA on stderr, redrawn at most once a second."""

    def __init__(self, desc: str, total: int, enabled: bool = True):
        self.desc, self.total, self.enabled = desc, total, enabled
        self.start = time.perf_counter()
        self.last = 0.0

    def __call__(self, done: int, total: Optional[int] = None) -> None:
        total = total or self.total
        now = time.perf_counter()
        if not self.enabled or (now - self.last < 1.0 and done < total):
            return
        self.last = now
        rate = done / max(now - self.start, 1e-9)
        eta = (total - done) / rate if rate > 0 else float("inf")
        sys.stderr.write(f"\r{self.desc}: {done}/{total} [{now - self.start:5.0f}s elapsed, ETA {eta:5.0f}s]")
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def _features_pair(quantity: str, x, t, logits):
    """(a, b) of a quantity: I(X;T) pairs a = T with b = X; I(T;Y_pred) pairs a = Y_pred with b = T."""
    return (t, x) if quantity == "xt" else (logits, t)


def _fresh_sample(shared, index_row, positions, key, *, model, trigger, quantity):
    """sample_fn: a fresh noise draw of the network on the pairs' inputs (the reference's behaviour)."""
    variables, data = shared
    x, _, _ = gather_batch(data, index_row[positions], trigger)
    logits, t = model.apply(variables, x, train=False, rngs={"noise": key})
    return _features_pair(quantity, x.reshape(x.shape[0], -1), t, logits)


def estimate_groups_mi(
    key: jax.Array,
    variables: dict,
    data: DeviceData,
    plan: PoisonPlan,
    *,
    model,
    attack: Attack,
    xt: ibmi.MIConfig,
    ty: ibmi.MIConfig,
    feature_mode: str = "fresh",
    bank_draws: int = 8,
    sample_fns: Optional[dict] = None,
    progress: bool = False,
) -> dict:
    """I(X;T) and I(T;Y_pred) of every group of ``plan`` in one batched call per quantity.

    Returns ``{"xt": {group: {"trajectory", "train", "heldout"}}, "ty": {...}}`` (nats).
    ``sample_fns`` caches the fresh-mode sample functions (and progress tickers) across calls, so the
    estimator compiles once per run.
    """
    index, valid = group_index_table(plan.group_masks)
    k_xt, k_ty, k_bank = jax.random.split(key, 3)
    num_pixels = int(np.prod(data.images.shape[1:]))
    num_classes, t_dim = _output_dims(model, variables, data.images.shape[1:])
    dims = {"xt": (t_dim, num_pixels), "ty": (num_classes, t_dim)}
    out = {}
    sample_fns = {} if sample_fns is None else sample_fns
    if feature_mode == "bank":
        used = np.unique(index[valid])
        row_of = np.zeros(data.size, np.int32)
        row_of[used] = np.arange(len(used))
        draws = [extract_features(variables, data, used, jax.random.fold_in(k_bank, r), model=model, trigger=attack.train_trigger)
                 for r in range(bank_draws)]
        x = draws[0][0]
        t_bank = jnp.stack([d[1] for d in draws], axis=1)
        y_bank = jnp.stack([d[2] for d in draws], axis=1)
        local = jnp.asarray(row_of[index])
        shared = {"xt": (t_bank, x), "ty": (y_bank, t_bank)}
        for q, cfg, k in (("xt", xt, k_xt), ("ty", ty, k_ty)):
            res = ibmi.estimate_mi_sampled(k, ibmi.bank_pairs, shared[q], local, valid, *dims[q], config=cfg,
                                           group_names=plan.group_names, progress=_ticker(sample_fns, q, cfg, progress))
            out[q] = _per_group(res, plan.group_names)
        return out
    for q, cfg, k in (("xt", xt, k_xt), ("ty", ty, k_ty)):
        if q not in sample_fns:
            sample_fns[q] = functools.partial(_fresh_sample, model=model, trigger=attack.train_trigger, quantity=q)
        res = ibmi.estimate_mi_sampled(k, sample_fns[q], (variables, data), jnp.asarray(index), valid, *dims[q],
                                       config=cfg, group_names=plan.group_names, progress=_ticker(sample_fns, q, cfg, progress))
        out[q] = _per_group(res, plan.group_names)
    return out


class _EpochTicker:
    """A stable (hashable by identity) progress callback for the MI estimator's device loop.

    The estimator takes it as a static argument, so one ticker per quantity is kept for the whole
    run and only its bar is replaced: a new callable every call would recompile the estimator.
    """

    def __init__(self, label: str):
        self.label, self.bar, self.done = label, None, 0

    def start(self, total: int) -> "_EpochTicker":
        self.bar, self.done = _Progress(self.label, total), 0
        return self

    def __call__(self, _epoch) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar(self.done)


def _ticker(cache: dict, quantity: str, cfg: ibmi.MIConfig, enabled: bool):
    if not enabled:
        return None
    name = f"ticker_{quantity}"
    if name not in cache:
        cache[name] = _EpochTicker(f"  {'I(X;T)' if quantity == 'xt' else 'I(T;Y_pred)'} estimator epochs")
    return cache[name].start(cfg.epochs)


def _output_dims(model, variables, image_shape) -> tuple[int, int]:
    """(number of classes, size of T) of ``model``, from shapes alone."""
    logits, t = jax.eval_shape(
        lambda v: model.apply(v, jnp.zeros((1, *image_shape)), train=False, rngs={"noise": jax.random.PRNGKey(0)}),
        variables,
    )
    return logits.shape[-1], t.shape[-1]


def _per_group(res: ibmi.MIResult, names) -> dict:
    d = res.to_dict()
    return {
        n: {"trajectory": d["trajectory"][g], "train": d["train"][g], "heldout": d["heldout"][g], "cap": d["cap"]}
        for g, n in enumerate(names)
    }


def _write_json(path: str, obj: Any) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, default=float)
    os.replace(tmp, path)


def _write_jsonl(path: str, records: list) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    os.replace(tmp, path)


def _clean_model(key, config, train_set, plan, model_cfg, progress):
    """A model trained here on the clean labels (up to 20 epochs): the victim that label-consistent
    perturbations and TrojanNN patterns are computed against. Returns ``(model, variables)``."""
    clean_plan = plan.replace(poisoned=np.zeros_like(plan.poisoned), labels=plan.clean_labels)
    ident = get_attack("badnets")  # never applied: nothing is flagged in the clean plan
    model = make_model(model_cfg)
    data = put_train_data(train_set.images, clean_plan, key)
    cfg = config.train
    state = create_train_state(jax.random.fold_in(key, 1), model, train_set.images.shape[1:], cfg)
    epochs = max(1, min(cfg.epochs, 20))
    for e in range(epochs):
        state, _ = train_epoch(state, data, jax.random.fold_in(key, 100 + e), model=model, attack=ident, config=cfg)
        progress(e + 1, epochs)
    return model, state.variables


def _label_consistent_perturbations(key, config, train_set, plan, model, variables) -> np.ndarray:
    """PGD perturbations of the poisoned (target-class) samples against the clean model."""
    p_idx = np.flatnonzero(plan.poisoned)

    @jax.jit
    def attack_batch(x, y, k):
        fn = lambda z: model.apply(variables, z, train=False, rngs={"noise": k})[0]  # noqa: E731
        return pgd_l2(fn, x, y, PGDParams(steps=config.pgd_steps)) - x

    out = []
    for s in range(0, len(p_idx), 256):
        idx = p_idx[s : s + 256]
        x = jnp.asarray(train_set.images[idx], jnp.float32) / 255.0
        out.append(np.asarray(attack_batch(x, jnp.asarray(plan.clean_labels[idx]), jax.random.fold_in(key, s))))
    return np.concatenate(out).astype(np.float16)


def _trojannn_pattern(key, attack, train_set, model, variables, images: int = 256) -> np.ndarray:
    """TrojanNN's patch optimised against the clean model on a random batch of training images."""
    k_pick, k_noise = jax.random.split(key)
    idx = np.sort(np.asarray(jax.random.choice(k_pick, len(train_set.labels), (min(images, len(train_set.labels)),),
                                               replace=False)))
    x = jnp.asarray(train_set.images[idx], jnp.float32) / 255.0
    features = lambda z: model.apply(variables, z, train=False, rngs={"noise": k_noise})[1]  # noqa: E731
    pattern, _ = jax.jit(lambda z: trojannn_pattern(features, z, attack.train_params))(x)
    return np.asarray(pattern)


def _prepare_attack(key, config, attack, train_set, plan, model_cfg, run_dir, timings, progress):
    """Compute what the attack needs from a clean model, once per run (saved for resume).

    Returns ``(attack, perturbations)``: the attack with its optimised pattern (TrojanNN) and the
    label-consistent PGD perturbations (or None).
    """
    if not (attack.needs_perturbation or attack.optimised_pattern):
        return attack, None
    path = os.path.join(run_dir, "lc_perturbations.npy" if attack.needs_perturbation else "trigger_pattern.npy")
    if os.path.exists(path):
        result = np.load(path)
    else:
        t0 = time.perf_counter()
        model, variables = _clean_model(key, config, train_set, plan, model_cfg, _Progress("clean model", 1, progress))
        if attack.needs_perturbation:
            result = _label_consistent_perturbations(jax.random.fold_in(key, 2), config, train_set, plan, model, variables)
        else:
            result = _trojannn_pattern(jax.random.fold_in(key, 3), attack, train_set, model, variables)
        np.save(path, result)
        timings["clean_model_s"] = time.perf_counter() - t0
    if attack.needs_perturbation:
        return attack, result
    return get_attack(config.attack, **dict(config.attack_options), pattern=result), None


def run_study(config: StudyConfig, run_dir: str, *, resume: bool = False, progress: bool = True) -> dict:
    """Run (or resume) one study and write its run directory. Returns the summary dict.

    Raises ValueError for bad options before any training; FloatingPointError if a loss turns NaN
    (the last good checkpoint is kept).
    """
    attack = validate(config, run_dir)
    ckpt_dir = os.path.join(run_dir, "checkpoints")
    cfg_path = os.path.join(run_dir, "config.json")
    if resume:
        if not os.path.exists(cfg_path):
            raise ValueError(f"nothing to resume in {run_dir!r}: no config.json there")
        with open(cfg_path) as f:
            saved = json.load(f)
        if saved != json.loads(json.dumps(config_to_dict(config))):
            raise ValueError(f"{run_dir!r} holds a run with a different configuration; resume it with its own "
                             f"config (experiments.study --resume RUN_DIR reads it) or choose a new directory")
    elif os.path.exists(os.path.join(ckpt_dir)) and os.listdir(ckpt_dir):
        raise ValueError(f"{run_dir!r} already holds a run; pass --resume to continue it or choose a new directory")
    _write_json(cfg_path, config_to_dict(config))

    say = (lambda *a: print(*a, file=sys.stderr, flush=True)) if progress else (lambda *a: None)
    t0 = time.perf_counter()
    train_set = load_dataset(config.dataset, "train", data_dir=config.data_dir, per_class_limit=config.per_class_limit)
    test_set = load_dataset(config.dataset, "test", data_dir=config.data_dir)
    num_classes = train_set.num_classes
    poison_cfg = dataclasses.replace(
        config.poison,
        clean_label=config.poison.clean_label or attack.clean_label,
        keep_label_fraction=config.poison.keep_label_fraction or attack.keep_label_fraction,
    )
    key = jax.random.PRNGKey(config.seed)
    k_plan, k_trig, k_init, k_train, k_mi, k_pgd = jax.random.split(key, 6)
    plan = make_poison_plan(train_set.labels, num_classes, poison_cfg, k_plan)
    if config.mi_mode != "online":
        for cfg in (config.xt, config.ty):  # fail now, not after the first training epochs
            ibmi.check_groups(plan.group_masks, cfg, plan.group_names)
    model_cfg = dataclasses.replace(config.model, num_classes=num_classes)
    model = make_model(model_cfg)
    timings = {"load_s": time.perf_counter() - t0}

    attack, perturbations = _prepare_attack(k_pgd, config, attack, train_set, plan, model_cfg, run_dir, timings,
                                            progress)
    data = put_train_data(train_set.images, plan, k_trig, perturbations)
    clean_test = put_test_data(test_set.images, test_set.labels, k_trig)
    trig_test = put_test_data(test_set.images, test_set.labels, k_trig, triggered=True)

    tcfg = config.train
    steps_per_epoch = len(train_set.labels) // tcfg.batch_size
    total_steps = tcfg.epochs * steps_per_epoch
    state = create_train_state(k_init, model, train_set.images.shape[1:], tcfg)
    online = config.mi_mode in ("online", "both")
    x_dim = int(np.prod(train_set.images.shape[1:]))
    _, t_dim = _output_dims(model, state.variables, train_set.images.shape[1:])
    G = len(plan.group_names)
    critics, buffers = {}, {}
    if online:
        critics = {
            "xt": ibmi.init(jax.random.fold_in(k_mi, 1), G, t_dim, x_dim, config.xt),
            "ty": ibmi.init(jax.random.fold_in(k_mi, 2), G, num_classes, t_dim, config.ty),
        }
        buffers = {"xt": ibmi.buffer_init(G, t_dim, x_dim, config.xt), "ty": ibmi.buffer_init(G, num_classes, t_dim, config.ty)}
    run_state = {"train": state, "critics": critics, "buffers": buffers}
    meta = {"epoch": 0, "plateau": list(plateau_init()), "metrics": [], "mi": {}, "clustering": {}, "timings": {}}
    ckpt = Checkpointer(ckpt_dir)
    if resume and ckpt.latest_step() is not None:
        run_state, meta = ckpt.restore(ckpt.latest_step(), run_state)
        say(f"resumed {run_dir} after epoch {meta['epoch']}")
    meta["timings"] = {**timings, **meta.get("timings", {})}

    group_masks = jnp.asarray(plan.group_masks)
    online_step = jax.jit(ibmi.update_buffered, static_argnames=("config",))
    sample_fns: dict = {}
    mi_epochs = set(config.mi_epochs) if config.mi_mode != "online" else set()
    embed_epochs = set(config.embed_epochs or ((config.mi_epochs[0], config.mi_epochs[-1]) if config.mi_epochs else ()))
    plateau = type(plateau_init())(*meta["plateau"])

    # Closing waits for the last (asynchronous) save, also when an epoch raises, so the newest
    # complete checkpoint is on disk before the error reaches the caller.
    with ckpt:
        for epoch in range(meta["epoch"] + 1, tcfg.epochs + 1):
            t_epoch = time.perf_counter()
            ek = jax.random.fold_in(k_train, epoch)
            state = run_state["train"]
            # Online sums stay on the device: reading them every step would stall the pipeline.
            acc = {q: (jnp.zeros(G), jnp.zeros(G)) for q in ("xt", "ty")}  # (row-weighted sum of reads, rows)
            crit, bufs = dict(run_state["critics"]), dict(run_state["buffers"])

            def on_step(s, idx, feats, crit=crit, bufs=bufs, ek=ek, acc=acc):
                x, t, logits = feats
                member = group_masks[:, idx]
                for q, cfg in (("xt", config.xt), ("ty", config.ty)):
                    a, b = _features_pair(q, x, t, logits)
                    key = jax.random.fold_in(jax.random.fold_in(ek, 7 if q == "xt" else 8), s)
                    crit[q], bufs[q], est, rows = online_step(crit[q], bufs[q], a, b, member, key, config=cfg)
                    acc[q] = (acc[q][0] + est * rows, acc[q][1] + rows)

            bar = _Progress(f"epoch {epoch}/{tcfg.epochs} train", steps_per_epoch, progress)
            try:
                state, m = train_epoch(state, data, ek, model=model, attack=attack, config=tcfg, total_steps=total_steps,
                                       progress=bar, on_step=on_step if online else None)
            except FloatingPointError as err:
                raise FloatingPointError(f"epoch {epoch}: {err}. The last good checkpoint (epoch {meta['epoch']}) is kept "
                                         f"in {ckpt_dir}") from err
            ev = evaluate_attack(state.variables, clean_test, trig_test, jax.random.fold_in(ek, 1), model=model,
                                 attack=attack, target=plan.target, config=tcfg)
            lr = float(state.lr)
            if tcfg.schedule == "plateau":
                plateau, new_lr = plateau_update(plateau, lr, ev["test_loss"], tcfg)
                state = state.replace(lr=jnp.asarray(new_lr, jnp.float32))
            train_s = time.perf_counter() - t_epoch
            record = {"epoch": epoch, **m, **ev, "lr": lr, "train_s": train_s}
            if online:
                for q, cfg in (("xt", config.xt), ("ty", config.ty)):
                    epoch_est = np.asarray(acc[q][0]) / np.maximum(np.asarray(acc[q][1]), 1)
                    crit[q] = ibmi.end_epoch(crit[q], jnp.asarray(epoch_est, jnp.float32), cfg)
                    hist = meta["mi"].setdefault(f"{q}_online", {})
                    for g, name in enumerate(plan.group_names):
                        # Read on pairs the critic had not trained on: the online counterpart of "heldout".
                        hist.setdefault(name, {})[str(epoch)] = {"trajectory": [], "train": None,
                                                                 "heldout": float(epoch_est[g])}
            if epoch in mi_epochs:
                t_mi = time.perf_counter()
                say(f"epoch {epoch}: estimating I(X;T) and I(T;Y_pred) for {G} groups ...")
                res = estimate_groups_mi(jax.random.fold_in(k_mi, epoch), state.variables, data, plan, model=model,
                                         attack=attack, xt=config.xt, ty=config.ty, feature_mode=config.feature_mode,
                                         bank_draws=config.bank_draws, sample_fns=sample_fns, progress=progress)
                for q, groups in res.items():
                    for name, r in groups.items():
                        meta["mi"].setdefault(q, {}).setdefault(name, {})[str(epoch)] = r
                record["mi_s"] = time.perf_counter() - t_mi
            if epoch in embed_epochs:
                meta["clustering"][str(epoch)] = _clustering(run_dir, epoch, state.variables, data, plan, model, attack,
                                                             jax.random.fold_in(ek, 2), config.embed_points)
            record["wall_s"] = time.perf_counter() - t_epoch
            say(f"epoch {epoch}: train acc {m['train_accuracy']:.3f}  test acc {ev['test_accuracy']:.3f}  "
                f"ASR {ev['asr']:.3f}  lr {lr:g}  ({record['wall_s']:.1f}s)")
            meta["metrics"].append(record)
            meta["epoch"] = epoch
            meta["plateau"] = list(plateau)
            run_state = {"train": state, "critics": crit, "buffers": bufs}
            ckpt.save(epoch, run_state, meta)
            _write_jsonl(os.path.join(run_dir, "metrics.jsonl"), meta["metrics"])
            _write_json(os.path.join(run_dir, "mi.json"), meta["mi"])
            _write_json(os.path.join(run_dir, "clustering.json"), meta["clustering"])
    return finalize(run_dir, config, meta)


def _clustering(run_dir, epoch, variables, data, plan, model, attack, key, points) -> dict:
    idx = np.arange(data.size)
    _, t, _ = extract_features(variables, data, idx, key, model=model, trigger=attack.train_trigger)
    sil = ibmetrics.group_silhouettes(t, jnp.asarray(plan.labels), jnp.asarray(plan.poisoned), plan.target)
    rng = np.random.default_rng(epoch)
    sub = np.sort(rng.choice(len(idx), size=min(points, len(idx)), replace=False))
    emb = np.asarray(ibmetrics.pca_2d(t[sub]))
    np.savez(os.path.join(run_dir, f"embedding_{epoch}.npz"), embedding=emb, labels=plan.labels[sub],
             poisoned=plan.poisoned[sub])
    return jax.tree.map(lambda v: float(v), sil)


def finalize(run_dir: str, config: StudyConfig, meta: dict) -> dict:
    """Stealthiness, plots and summary.md from the run's history (idempotent)."""
    mi_hist = meta["mi"]
    stealth = {}
    if "xt" in mi_hist and "ty" in mi_hist:
        available = sorted(int(e) for e in next(iter(mi_hist["xt"].values())))
        epochs = ibmetrics.select_epochs(available, config.stealth_epochs)
        for read in ("heldout", "train"):
            try:
                stealth[read] = ibmetrics.stealthiness(mi_hist, epochs=epochs, read=read)
            except ValueError as err:  # e.g. no held-out split (heldout_fraction=0): keep the other read
                stealth[read] = {"error": str(err)}
    _write_json(os.path.join(run_dir, "stealth.json"), stealth)
    pdir = os.path.join(run_dir, "plots")
    os.makedirs(pdir, exist_ok=True)
    made = []
    records = meta["metrics"]
    made.append(plots.plot_training_curves(records, os.path.join(pdir, "accuracy_asr.png")))
    made.append(plots.plot_class_loss(records, os.path.join(pdir, "class_loss.png"), target=config.poison.target))
    if "xt" in mi_hist:
        made.append(plots.plot_mi_curves(mi_hist, os.path.join(pdir, "mi_curves.png")))
        made.append(plots.plot_information_plane(mi_hist, os.path.join(pdir, "information_plane.png")))
    if "xt_online" in mi_hist:
        online = {"xt": mi_hist["xt_online"], "ty": mi_hist["ty_online"]}
        made.append(plots.plot_mi_curves(online, os.path.join(pdir, "mi_curves_online.png"), read="heldout"))
    for e in sorted(meta["clustering"], key=int):
        z = np.load(os.path.join(run_dir, f"embedding_{e}.npz"))
        made.append(plots.plot_embedding(z["embedding"], z["labels"], z["poisoned"],
                                         os.path.join(pdir, f"embedding_{e}.png"), f"T at epoch {e} (PCA)"))
    last = records[-1] if records else {}
    summary = {
        "run_dir": run_dir,
        "attack": config.attack,
        "dataset": config.dataset,
        "model": config.model.name,
        "epochs": meta["epoch"],
        "test_accuracy": last.get("test_accuracy"),
        "asr": last.get("asr"),
        "stealth": stealth,
        "train_s": float(sum(r.get("train_s", 0.0) for r in records)),
        "mi_s": float(sum(r.get("mi_s", 0.0) for r in records)),
        "wall_s": float(sum(r.get("wall_s", 0.0) for r in records)),
        "plots": [os.path.relpath(p, run_dir) for p in made],
    }
    _write_json(os.path.join(run_dir, "summary.json"), summary)
    with open(os.path.join(run_dir, "summary.md"), "w") as f:
        f.write(_summary_markdown(config, meta, summary))
    return summary


def _fmt(x, digits=3):
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _summary_markdown(config: StudyConfig, meta: dict, s: dict) -> str:
    lines = [
        f"# {config.attack} on {config.dataset} ({config.model.name})",
        "",
        f"Poison ratio {config.poison.ratio}, target class {config.poison.target}, noise "
        f"{config.model.gamma_xt}/{config.model.gamma_ty}, {s['epochs']} epochs, seed {config.seed}.",
        "",
        "| clean test accuracy | ASR | training (s) | MI estimation (s) | total (s) |",
        "|---|---|---|---|---|",
        f"| {_fmt(s['test_accuracy'])} | {_fmt(s['asr'])} | {s['train_s']:.1f} | {s['mi_s']:.1f} | {s['wall_s']:.1f} |",
        "",
    ]
    for read, st in s["stealth"].items():
        if "error" in st:
            lines += [f"## Stealthiness ({read} read): not computed", "", st["error"], ""]
            continue
        comps = st["components"]
        lines += [f"## Stealthiness ({read} read, epochs {st['epochs']}; lower = more stealthy)", "",
                  "| " + " | ".join(comps) + " | total |", "|" + "---|" * (len(comps) + 1),
                  "| " + " | ".join(_fmt(v) for v in comps.values()) + f" | {_fmt(st['total'])} |", ""]
    mi_hist = meta["mi"]
    if "xt" in mi_hist:
        epochs = sorted(int(e) for e in next(iter(mi_hist["xt"].values())))
        for q, label in (("xt", "I(X;T)"), ("ty", "I(T;Y_pred)")):
            lines += [f"## {label}, nats (held-out read / reference-style train read)", "",
                      "| group | " + " | ".join(str(e) for e in epochs) + " |", "|---|" + "---|" * len(epochs)]
            for g, per in mi_hist[q].items():
                cells = [f"{_fmt(per[str(e)]['heldout'], 2)} / {_fmt(per[str(e)]['train'], 2)}" for e in epochs]
                lines.append(f"| {g} | " + " | ".join(cells) + " |")
            lines.append("")
    if "xt_online" in mi_hist and "xt" in mi_hist:
        lines += ["## Online critics vs offline reads at the MI epochs (target group, reads on unseen pairs, nats)", "",
                  "| epoch | I(X;T) online | I(X;T) offline | I(T;Y) online | I(T;Y) offline |", "|---|---|---|---|---|"]
        for e in sorted(int(e) for e in mi_hist["xt"]["target"]):
            on = [mi_hist[f"{q}_online"]["target"].get(str(e), {}).get("heldout") for q in ("xt", "ty")]
            off = [mi_hist[q]["target"][str(e)]["heldout"] for q in ("xt", "ty")]
            lines.append(f"| {e} | {_fmt(on[0])} | {_fmt(off[0])} | {_fmt(on[1])} | {_fmt(off[1])} |")
        lines.append("")
    if meta["clustering"]:
        lines += ["## Silhouette of T per group", ""]
        for e, sil in sorted(meta["clustering"].items(), key=lambda kv: int(kv[0])):
            lines.append(f"- epoch {e}: " + ", ".join(f"{k} {_fmt(v)}" for k, v in sil.items()))
        lines.append("")
    lines += ["## Plots", ""] + [f"![{p}]({p})" for p in s["plots"]]
    return "\n".join(lines) + "\n"
