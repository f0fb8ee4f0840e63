"""Training and evaluation of a noisy CNN on a poisoned data set: pure steps over a pytree state.

The reference recipe (SPEC.md): SGD, lr 0.1, momentum 0.9, weight decay 5e-4 (coupled, as PyTorch's
SGD applies it), batch 256, learning rate halved when the test loss has not improved for 5 epochs.
A cosine schedule is offered as an option.

:func:`train_step`, :func:`eval_step` and :func:`features_step` are pure functions of (state or
variables, data, indices, key), not jitted here: callers jit them where they call them, with the
model, trigger and config as static arguments (all hash by value). :func:`epoch_loop` drives any such
step over one shuffled epoch; :func:`train_epoch`, :func:`evaluate`, :func:`evaluate_attack` and
:func:`extract_features` are the ready-made loops. Noise injection is on in every step, evaluation
included.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Literal, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from ibjax.fields import Config
from ibjax.parallel import pad_batch_columns, put_batch, put_replicated, replicated
from ibjax.pipeline import DeviceData, epoch_batches, gather_batch, test_batches
from ibjax.schedules import reduce_on_plateau

__all__ = [
    "TrainConfig",
    "TrainState",
    "PlateauState",
    "plateau_init",
    "plateau_update",
    "cosine_lr",
    "step_statics",
    "create_train_state",
    "train_step",
    "eval_step",
    "features_step",
    "epoch_loop",
    "step_keys",
    "summarise_epoch",
    "train_epoch",
    "evaluate",
    "evaluate_attack",
    "extract_features",
]


@dataclasses.dataclass(frozen=True)
class TrainConfig(Config):
    """The training recipe; defaults are the reference's (SPEC.md, "Model").

    Attributes:
      epochs: training epochs.
      batch_size: training batch size (images per SGD step); the last partial batch of an epoch is dropped.
      lr: base learning rate of SGD.
      momentum: SGD momentum.
      weight_decay: L2 weight decay, coupled (added to the gradient, as PyTorch's SGD).
      schedule: learning-rate schedule: 'plateau' (halve when the clean test loss stalls, the
        reference), 'cosine' (to 0 over all steps) or 'constant'.
      plateau_patience: epochs without improvement of the test loss before the rate is cut.
      plateau_factor: factor applied to the rate at a cut.
      plateau_threshold: relative improvement of the test loss that counts (PyTorch's default 1e-4).
      eval_batch_size: images per evaluation batch (every test image is counted exactly once).
      asr_on_all: count the attack success rate over all triggered test images (the reference's
        count) instead of the non-target ones (the standard definition).
      abi_u: Grond's Adversarial Backdoor Injection, for any attack: after every epoch's training
        steps, each batch-norm channel whose Lipschitz bound (UCLC) exceeds its layer's mean +
        abi_u std gets the layer's mean scale and bias (:func:`ibjax.defenses.abi_reset`; Grond:
        3). Applied before the epoch's evaluation, so the recorded accuracy and ASR and the final
        network include it (the Grond code evaluates and saves before it). 0: off.
    """

    epochs: int = 120
    batch_size: int = 256
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: Literal["plateau", "cosine", "constant"] = "plateau"
    plateau_patience: int = 5
    plateau_factor: float = 0.5
    plateau_threshold: float = 1e-4
    eval_batch_size: int = 1000
    asr_on_all: bool = False
    abi_u: float = 0.0

    def check(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1 or self.eval_batch_size < 1:
            raise ValueError(f"batch_size and eval_batch_size must be >= 1, got {self.batch_size} "
                             f"and {self.eval_batch_size}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0 < self.plateau_factor < 1:
            raise ValueError(f"plateau_factor must lie in (0, 1), got {self.plateau_factor}")
        if self.abi_u < 0:
            raise ValueError(f"abi_u must be >= 0 (0: no Adversarial Backdoor Injection), got {self.abi_u}")


@struct.dataclass
class TrainState:
    """Everything training needs, as one pytree.

    Attributes:
      step: int32 scalar, optimiser steps taken.
      params: model parameters.
      batch_stats: batch-norm running statistics.
      opt_state: optax state (weight decay + momentum trace).
      lr: float32 scalar, the base learning rate (changed by the plateau schedule; the cosine
        schedule scales it per step, see :func:`train_step`'s ``lr`` metric).
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    lr: jax.Array

    @property
    def variables(self) -> dict:
        return {"params": self.params, "batch_stats": self.batch_stats}


def _optimizer(config: TrainConfig) -> optax.GradientTransformation:
    # The learning rate is applied in train_step from state.lr so the plateau schedule can change it
    # without rebuilding the optimiser; this chain is PyTorch's SGD with coupled weight decay.
    return optax.chain(optax.add_decayed_weights(config.weight_decay), optax.trace(decay=config.momentum))


def create_train_state(key: jax.Array, model: nn.Module, image_shape: tuple[int, ...], config: TrainConfig) -> TrainState:
    """Initialise parameters (from ``key``) for images of shape (H, W, C). Jittable with
    ``model``, ``image_shape`` and ``config`` static."""
    k_params, k_noise = jax.random.split(key)
    variables = model.init({"params": k_params, "noise": k_noise}, jnp.zeros((1, *image_shape), jnp.float32))
    params = variables["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        opt_state=_optimizer(config).init(params),
        lr=jnp.asarray(config.lr, jnp.float32),
    )


def step_statics(config: TrainConfig, total_steps: int) -> tuple[TrainConfig, int]:
    """The static arguments :func:`train_step` needs, with every field it does not read normalised
    (epochs, batch and evaluation sizes, the plateau rule, the base rate, and the schedule's length
    unless it is cosine), so runs that differ only in those share one compiled step: a resumed run
    with more epochs, runs of other lengths. Returns ``(config, total_steps)``."""
    used = TrainConfig(momentum=config.momentum, weight_decay=config.weight_decay, schedule=config.schedule)
    return used, (total_steps if config.schedule == "cosine" else 0)


def cosine_lr(base_lr: jax.Array, step: jax.Array, total_steps: int) -> jax.Array:
    """Cosine decay from ``base_lr`` to 0 over ``total_steps``."""
    frac = jnp.clip(step / max(total_steps, 1), 0.0, 1.0)
    return base_lr * 0.5 * (1.0 + jnp.cos(jnp.pi * frac))


@struct.dataclass
class PlateauState:
    """Reduce-on-plateau schedule state (arrays, so it lives in the run state and vmaps over runs).

    Attributes:
      best: f32, the best (lowest) metric so far (inf before the first epoch).
      bad_epochs: int32, epochs since it last improved by the relative threshold.
    """

    best: jax.Array
    bad_epochs: jax.Array


def plateau_init() -> PlateauState:
    return PlateauState(best=jnp.asarray(jnp.inf, jnp.float32), bad_epochs=jnp.asarray(0, jnp.int32))


def plateau_update(state: PlateauState, lr: jax.Array, metric: jax.Array, config: TrainConfig) -> tuple[PlateauState, jax.Array]:
    """One epoch of PyTorch's ``ReduceLROnPlateau(mode="min", threshold_mode="rel")`` on ``metric``
    (:func:`ibjax.schedules.reduce_on_plateau`, without a minimum change of the rate).

    The rate is multiplied by ``plateau_factor`` once the metric has failed to improve on the best by
    the relative threshold for more than ``plateau_patience`` epochs, and the count restarts. Pure
    ``jnp``: jittable and vmappable (over a population of runs). Returns ``(state, lr)``.
    """
    lr, best, bad = reduce_on_plateau(lr, state.best, state.bad_epochs, metric, patience=config.plateau_patience,
                                      factor=config.plateau_factor, threshold=config.plateau_threshold)
    return PlateauState(best=best, bad_epochs=bad), lr


def train_step(
    state: TrainState,
    data: DeviceData,
    index: jax.Array,
    key: jax.Array,
    *,
    model: nn.Module,
    trigger,
    config: TrainConfig,
    total_steps: int = 0,
    return_features: bool = False,
) -> tuple[TrainState, dict]:
    """One SGD step on the batch ``index`` (int32[B]) of ``data``, triggers applied on the device.

    Pure; jit it with ``model``, ``trigger``, ``config``, ``total_steps`` and ``return_features``
    static (they hash by value) and the state donated.

    Args:
      state: the train state.
      data: the training set on the device.
      index: int32[B] sample indices.
      key: PRNG key for the noise injection.
      model, trigger, config: the network, ``attack.train_trigger`` and the recipe.
      total_steps: length of the cosine schedule.
      return_features: also return the batch's ``features``: ``(X f32[B, H*W*C], T f32[B, D],
        logits f32[B, K])`` as the network saw them in this step (for critics trained alongside).

    Returns:
      The new state and metrics: ``loss_sum f32[K]`` (cross-entropy summed per training label, nats),
      ``count i32[K]``, ``correct i32[K]`` per class, ``lr`` (f32, the rate this step used) and
      ``sample_loss`` f32[B] (each sample's cross-entropy, nats).
    """
    x, y, _ = gather_batch(data, index, trigger)

    def loss_fn(params):
        (logits, t), updates = model.apply(
            {"params": params, "batch_stats": state.batch_stats},
            x,
            train=True,
            rngs={"noise": key},
            mutable=["batch_stats"],
        )
        per_sample = optax.softmax_cross_entropy_with_integer_labels(logits, y)
        return per_sample.mean(), (per_sample, logits, t, updates)

    grads, (per_sample, logits, t, updates) = jax.grad(loss_fn, has_aux=True)(state.params)
    updates_opt, opt_state = _optimizer(config).update(grads, state.opt_state, state.params)
    lr = cosine_lr(state.lr, state.step, total_steps) if config.schedule == "cosine" else state.lr
    params = optax.apply_updates(state.params, jax.tree.map(lambda u: -lr * u, updates_opt))
    num_classes = logits.shape[-1]
    metrics = {
        "loss_sum": jax.ops.segment_sum(per_sample, y, num_classes),
        "count": jax.ops.segment_sum(jnp.ones_like(y), y, num_classes),
        "correct": jax.ops.segment_sum((jnp.argmax(logits, -1) == y).astype(jnp.int32), y, num_classes),
        "lr": jnp.asarray(lr, jnp.float32),
        "sample_loss": per_sample.astype(jnp.float32),  # f32[B]: not summed (the loops take it out)
    }
    if return_features:
        metrics["features"] = (x.reshape(x.shape[0], -1), t, logits)
    new_state = state.replace(
        step=state.step + 1, params=params, batch_stats=updates["batch_stats"], opt_state=opt_state
    )
    return new_state, metrics


def eval_step(
    variables: dict, data: DeviceData, index: jax.Array, valid: jax.Array, key: jax.Array, *, model: nn.Module, trigger
) -> dict:
    """Evaluate one padded batch with noise on and batch-norm running statistics (pure).

    Args:
      variables: ``{"params", "batch_stats"}``.
      data: a test set on the device (``poisoned`` flags the samples to trigger).
      index: int32[B]; valid: bool[B] marks real (non-padding) samples.
      key: PRNG key for the noise injection (and the per-sample trigger keys).
      trigger: ``attack.test_trigger``.

    Returns:
      Sums over valid samples: ``loss_sum`` (nats), ``correct``, ``count``, and ``pred_hist`` int32[K]
      (how many valid samples were predicted as each class).
    """
    x, y, _ = gather_batch(data, index, trigger)
    logits, _ = model.apply(variables, x, train=False, rngs={"noise": key})
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    pred = jnp.argmax(logits, -1)
    w = valid.astype(jnp.float32)
    return {
        "loss_sum": jnp.sum(loss * w),
        "correct": jnp.sum((pred == y) & valid),
        "count": jnp.sum(valid),
        "pred_hist": jax.ops.segment_sum(valid.astype(jnp.int32), pred, logits.shape[-1]),
    }


def features_step(variables: dict, data: DeviceData, index: jax.Array, key: jax.Array, *, model: nn.Module, trigger):
    """X, T and logits of the samples ``index`` (int32[B]) as the network sees them, noise on (pure).

    Returns ``(X f32[B, H*W*C], T f32[B, D], logits f32[B, K])``.
    """
    x, _, _ = gather_batch(data, index, trigger)
    logits, t = model.apply(variables, x, train=False, rngs={"noise": key})
    return x.reshape(x.shape[0], -1), t, logits


# The loops below call these; the model, trigger and config hash by value, so every run with equal
# settings shares one compiled program.
_train_step_jit = jax.jit(
    train_step, static_argnames=("model", "trigger", "config", "total_steps", "return_features"), donate_argnums=(0,)
)
_eval_step_jit = jax.jit(eval_step, static_argnames=("model", "trigger"))
_features_step_jit = jax.jit(features_step, static_argnames=("model", "trigger"))


def step_keys(key: jax.Array, steps: int):
    """``fold_in(key, s)`` for s < steps, in one call; raw keys come back as host arrays (fetched
    once, at the start of a loop, so that placing each step's key never waits for the device)."""
    keys = jax.vmap(jax.random.fold_in, (None, 0))(key, jnp.arange(steps))
    return keys if jnp.issubdtype(keys.dtype, jax.dtypes.prng_key) else np.asarray(keys)


def epoch_loop(step: Callable, carry: Any, data: DeviceData, key: jax.Array, *, batch_size: int,
               progress: Optional[Callable[[int, int], None]] = None, mesh=None) -> tuple[Any, dict]:
    """Run ``step`` over one shuffled epoch of full batches of ``data``.

    Args:
      step: ``(carry, data, index int32[B], key) -> (carry, metrics)``, typically jitted with the
        carry donated; ``metrics`` is a pytree of per-step sums (and ``lr``).
      key: this epoch's key: split into the shuffle key and the step keys (``fold_in(k, step)``).
      progress: optional ``(steps_done, steps_total)`` callable after each step.
      mesh: a :mod:`ibjax.parallel` mesh: each batch's indices are split over its ``"data"`` axis
        (the carry and data placed on it by the caller, replicated); None: the default device.

    Returns:
      ``(carry, totals)``: the metrics summed over the epoch on the host (``lr_first`` / ``lr_last``
      instead of a summed ``lr``).
    """
    k_perm, k_noise = jax.random.split(key)
    batches = epoch_batches(k_perm, data.size, batch_size)
    keys = step_keys(k_noise, len(batches))
    totals, lrs = None, []
    for s, idx in enumerate(batches):
        carry, m = step(carry, data, put_batch(idx, mesh), put_replicated(keys[s], mesh))
        lrs.append(m.pop("lr", None))
        m.pop("sample_loss", None)  # per sample, not a sum (the study records it: ibjax.study.steps.run_epoch)
        # Sums stay on the device: reading them every step would stall the pipeline.
        totals = m if totals is None else jax.tree.map(jnp.add, totals, m)
        if progress is not None:
            progress(s + 1, len(batches))
    totals = jax.device_get(totals)
    if lrs and lrs[0] is not None:
        totals["lr_first"], totals["lr_last"] = float(lrs[0]), float(lrs[-1])
    return carry, totals


def summarise_epoch(totals: dict) -> dict:
    """Host metrics of an epoch from :func:`epoch_loop`'s sums of :func:`train_step` metrics.

    Returns ``train_accuracy``, ``train_loss`` (mean nats), ``class_loss`` (per-class mean
    cross-entropy by training label) and ``lr`` / ``lr_last`` (the rates of the first and last step).
    Raises FloatingPointError if the loss is not finite.
    """
    count = np.maximum(totals["count"], 1)
    loss_total = float(np.sum(totals["loss_sum"]))
    if not np.isfinite(loss_total):
        raise FloatingPointError("the training loss is not finite (NaN/inf): lower train.lr or check the data")
    out = {
        "train_accuracy": float(np.sum(totals["correct"]) / np.sum(totals["count"])),
        "train_loss": loss_total / float(np.sum(totals["count"])),
        "class_loss": (totals["loss_sum"] / count).tolist(),
    }
    if "lr_first" in totals:
        out["lr"], out["lr_last"] = totals["lr_first"], totals["lr_last"]
    return out


def train_epoch(
    state: TrainState,
    data: DeviceData,
    key: jax.Array,
    *,
    model: nn.Module,
    trigger,
    config: TrainConfig,
    total_steps: int = 0,
    progress: Optional[Callable[[int, int], None]] = None,
) -> tuple[TrainState, dict]:
    """One epoch of :func:`train_step` over shuffled full batches (jitted, state donated).

    Returns the new state and :func:`summarise_epoch`'s host metrics.
    """
    step = functools.partial(_train_step_jit, model=model, trigger=trigger, config=config, total_steps=total_steps,
                             return_features=False)
    state, totals = epoch_loop(step, state, data, key, batch_size=config.batch_size, progress=progress)
    return state, summarise_epoch(totals)


def evaluate(
    variables: dict, data: DeviceData, index: np.ndarray, key: jax.Array, *, model: nn.Module, trigger, batch_size: int,
    mesh=None,
) -> dict:
    """Exact metrics over ``index`` (every sample counted once): loss (mean nats), accuracy, pred_hist.

    With a ``mesh`` each batch is split over its ``"data"`` axis (widened with masked padding to a
    multiple of it, :func:`ibjax.parallel.pad_batch_columns`; the results do not change).
    """
    batches, valid = pad_batch_columns(*test_batches(index, batch_size), mesh)
    keys = step_keys(key, len(batches))
    totals = None
    for s, (idx, v) in enumerate(zip(batches, valid)):
        out = _eval_step_jit(variables, data, put_batch(idx, mesh), put_batch(v, mesh), put_replicated(keys[s], mesh),
                             model=model, trigger=trigger)
        totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
    totals = jax.device_get(totals)
    n = int(totals["count"])
    return {
        "loss": float(totals["loss_sum"]) / n,
        "accuracy": float(totals["correct"]) / n,
        "count": n,
        "pred_hist": np.asarray(totals["pred_hist"]),
    }


def extract_features(
    variables: dict,
    data: DeviceData,
    index: np.ndarray,
    key: jax.Array,
    *,
    model: nn.Module,
    trigger,
    batch_size: int = 1000,
    mesh=None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Inputs, representation and prediction of the samples ``index``, noise on (one draw).

    With a ``mesh`` each batch is computed data-parallel (split over ``"data"``, widened with
    padding as in :func:`evaluate`) and the results are replicated over the mesh.

    Returns:
      ``(X f32[n, H*W*C], T f32[n, D], Y_pred f32[n, K] logits)`` for the n samples, as the network
      saw them in training (triggers and perturbations applied to the poisoned ones).
    """
    batches, _ = test_batches(index, batch_size)
    width = batches.shape[1]
    batches, _ = pad_batch_columns(batches, np.ones(batches.shape, bool), mesh)
    keys = step_keys(key, len(batches))
    outs = []
    for s, idx in enumerate(batches):
        outs.append(_features_step_jit(variables, data, put_batch(idx, mesh), put_replicated(keys[s], mesh),
                                       model=model, trigger=trigger))
    n = len(index)
    if mesh is None:
        return tuple(jnp.concatenate(parts)[:n] for parts in zip(*outs))
    return _join_rows(tuple(outs), width=width, n=n, sharding=replicated(mesh))


@functools.partial(jax.jit, static_argnames=("width", "n", "sharding"))
def _join_rows(outs, *, width: int, n: int, sharding):
    """The first ``width`` rows of every batch's outputs, concatenated and cut to ``n`` rows, in one
    program whose result is placed with ``sharding`` (one gather for all batches)."""
    joined = tuple(jnp.concatenate([o[:width] for o in parts])[:n] for parts in zip(*outs))
    return jax.lax.with_sharding_constraint(joined, sharding)


def evaluate_attack(
    variables: dict,
    clean_test: DeviceData,
    triggered_test: DeviceData,
    key: jax.Array,
    *,
    model: nn.Module,
    trigger,
    target: int,
    config: TrainConfig,
    mesh=None,
) -> dict:
    """Clean test accuracy and loss, and the attack success rate, counted exactly (data-parallel
    over ``mesh``'s ``"data"`` axis when one is given).

    ``trigger`` is ``attack.test_trigger``. ASR is the fraction of triggered test images classified
    as ``target``, over the test images whose true class is not the target (the standard
    definition) or over all of them with ``config.asr_on_all`` (the reference's count).
    """
    k_clean, k_trig = jax.random.split(key)
    labels = np.asarray(clean_test.labels)
    clean = evaluate(variables, clean_test, np.arange(len(labels)), k_clean, model=model, trigger=trigger,
                     batch_size=config.eval_batch_size, mesh=mesh)
    asr_index = np.arange(len(labels)) if config.asr_on_all else np.flatnonzero(labels != target)
    trig = evaluate(variables, triggered_test, asr_index, k_trig, model=model, trigger=trigger,
                    batch_size=config.eval_batch_size, mesh=mesh)
    return {
        "test_accuracy": clean["accuracy"],
        "test_loss": clean["loss"],
        "asr": float(trig["pred_hist"][target]) / trig["count"],
    }
