"""Training and evaluation of a noisy CNN on a poisoned data set: pure jitted steps over a pytree state.

The reference recipe (SPEC.md): SGD, lr 0.1, momentum 0.9, weight decay 5e-4 (coupled, as PyTorch's
SGD applies it), batch 256, learning rate halved when the test loss has not improved for 5 epochs.
A cosine schedule is offered as an option.

``train_step`` and ``eval_step`` are pure functions of (state, data, indices, key); the model and the
attack are static arguments. Noise injection is on in every step, evaluation included.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from ibjax.pipeline import DeviceData, epoch_batches, gather_batch, test_batches
from ibjax.triggers import Attack

__all__ = [
    "TrainConfig",
    "TrainState",
    "PlateauState",
    "plateau_init",
    "plateau_update",
    "cosine_lr",
    "create_train_state",
    "train_step",
    "eval_step",
    "evaluate",
    "extract_features",
    "train_epoch",
    "evaluate_attack",
]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The training recipe; defaults are the reference's."""

    epochs: int = 120
    batch_size: int = 256
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "plateau"  # "plateau" (reference) | "cosine" | "constant"
    plateau_patience: int = 5
    plateau_factor: float = 0.5
    plateau_threshold: float = 1e-4  # relative improvement that counts, as torch's ReduceLROnPlateau
    eval_batch_size: int = 1000
    asr_on_all: bool = False  # reference counts all triggered test images; standard: non-target only

    def validate(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1 or self.eval_batch_size < 1:
            raise ValueError("batch sizes must be >= 1")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.schedule not in ("plateau", "cosine", "constant"):
            raise ValueError(f"schedule must be 'plateau', 'cosine' or 'constant', got {self.schedule!r}")


@struct.dataclass
class TrainState:
    """Everything training needs, as one pytree.

    Attributes:
      step: int32 scalar, optimiser steps taken.
      params: model parameters.
      batch_stats: batch-norm running statistics.
      opt_state: optax state (weight decay + momentum trace).
      lr: float32 scalar, the current base learning rate (changed by the plateau schedule).
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
    """Initialise parameters (from ``key``) for images of shape (H, W, C)."""
    config.validate()
    k_params, k_noise = jax.random.split(key)
    init = jax.jit(lambda k1, k2: model.init({"params": k1, "noise": k2}, jnp.zeros((1, *image_shape), jnp.float32)))
    variables = init(k_params, k_noise)
    params = variables["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        opt_state=_optimizer(config).init(params),
        lr=jnp.asarray(config.lr, jnp.float32),
    )


def cosine_lr(base_lr: jax.Array, step: jax.Array, total_steps: int) -> jax.Array:
    """Cosine decay from ``base_lr`` to 0 over ``total_steps``."""
    frac = jnp.clip(step / max(total_steps, 1), 0.0, 1.0)
    return base_lr * 0.5 * (1.0 + jnp.cos(jnp.pi * frac))


class PlateauState(NamedTuple):
    """Reduce-on-plateau schedule state: best metric so far and epochs since it improved."""

    best: float
    bad_epochs: int


def plateau_init() -> PlateauState:
    return PlateauState(best=float("inf"), bad_epochs=0)


def plateau_update(state: PlateauState, lr: float, metric: float, config: TrainConfig) -> tuple[PlateauState, float]:
    """One epoch of PyTorch-style ReduceLROnPlateau (mode 'min', relative threshold).

    Returns the new state and learning rate: the rate is multiplied by ``plateau_factor`` once the
    metric has failed to improve on the best by the relative threshold for more than
    ``plateau_patience`` epochs, and the count restarts.
    """
    if metric < state.best * (1.0 - config.plateau_threshold):
        return PlateauState(best=float(metric), bad_epochs=0), lr
    bad = state.bad_epochs + 1
    if bad > config.plateau_patience:
        return PlateauState(best=state.best, bad_epochs=0), lr * config.plateau_factor
    return PlateauState(best=state.best, bad_epochs=bad), lr


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

    Args:
      state: the train state (donated).
      data: the training set on the device.
      index: int32[B] sample indices.
      key: PRNG key for the noise injection.
      model, trigger, config: static; ``trigger`` is ``attack.train_trigger``.
      total_steps: for the cosine schedule.
      return_features: also return the batch's ``features``: ``(X f32[B, H*W*C], T f32[B, D],
        logits f32[B, K])`` as the network saw them in this step (for critics trained alongside).

    Returns:
      The new state and metrics: ``loss_sum f32[K]`` (cross-entropy summed per training label, nats),
      ``count i32[K]``, ``correct i32[K]`` per class.
    """
    # Every argument is passed by name to one jitted function, so the compiled step is shared by all
    # callers whatever defaults they spell out.
    return _train_step_jit(
        state, data, index, key, model=model, trigger=trigger, config=config, total_steps=total_steps,
        return_features=return_features,
    )


@functools.partial(
    jax.jit, static_argnames=("model", "trigger", "config", "total_steps", "return_features"), donate_argnums=(0,)
)
def _train_step_jit(state, data, index, key, *, model, trigger, config, total_steps, return_features):
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
    }
    if return_features:
        metrics["features"] = (x.reshape(x.shape[0], -1), t, logits)
    new_state = state.replace(
        step=state.step + 1, params=params, batch_stats=updates["batch_stats"], opt_state=opt_state
    )
    return new_state, metrics


@functools.partial(jax.jit, static_argnames=("model", "trigger"))
def eval_step(
    variables: dict, data: DeviceData, index: jax.Array, valid: jax.Array, key: jax.Array, *, model: nn.Module, trigger
) -> dict:
    """Evaluate one padded batch with noise on and batch-norm running statistics.

    Args:
      variables: ``{"params", "batch_stats"}``.
      data: a test set on the device (``poisoned`` flags the samples to trigger).
      index: int32[B]; valid: bool[B] marks real (non-padding) samples.
      key: PRNG key for the noise injection.
      trigger: static, ``attack.test_trigger``.

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


def evaluate(
    variables: dict, data: DeviceData, index: np.ndarray, key: jax.Array, *, model: nn.Module, trigger, batch_size: int
) -> dict:
    """Exact metrics over ``index`` (every sample counted once): loss (mean nats), accuracy, pred_hist."""
    batches, valid = test_batches(index, batch_size)
    totals = None
    for s, (idx, v) in enumerate(zip(batches, valid)):
        out = eval_step(variables, data, jnp.asarray(idx), jnp.asarray(v), jax.random.fold_in(key, s), model=model, trigger=trigger)
        totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
    totals = jax.device_get(totals)
    n = int(totals["count"])
    return {
        "loss": float(totals["loss_sum"]) / n,
        "accuracy": float(totals["correct"]) / n,
        "count": n,
        "pred_hist": np.asarray(totals["pred_hist"]),
    }


@functools.partial(jax.jit, static_argnames=("model", "trigger"))
def _features_step(variables, data, index, key, *, model, trigger):
    x, _, _ = gather_batch(data, index, trigger)
    logits, t = model.apply(variables, x, train=False, rngs={"noise": key})
    return x.reshape(x.shape[0], -1), t, logits


def extract_features(
    variables: dict,
    data: DeviceData,
    index: np.ndarray,
    key: jax.Array,
    *,
    model: nn.Module,
    trigger,
    batch_size: int = 1000,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Inputs, representation and prediction of the samples ``index``, noise on (one draw).

    Returns:
      ``(X f32[n, H*W*C], T f32[n, D], Y_pred f32[n, K] logits)`` for the n samples, as the network
      saw them in training (triggers and perturbations applied to the poisoned ones).
    """
    batches, valid = test_batches(index, batch_size)
    outs = [
        _features_step(variables, data, jnp.asarray(idx), jax.random.fold_in(key, s), model=model, trigger=trigger)
        for s, idx in enumerate(batches)
    ]
    n = len(index)
    return tuple(jnp.concatenate(parts)[:n] for parts in zip(*outs))


def train_epoch(
    state: TrainState,
    data: DeviceData,
    key: jax.Array,
    *,
    model: nn.Module,
    attack: Attack,
    config: TrainConfig,
    total_steps: int = 0,
    progress=None,
    on_step=None,
) -> tuple[TrainState, dict]:
    """One epoch over shuffled full batches of ``data``.

    Args:
      key: PRNG key for this epoch (shuffle and noise).
      progress: optional callable ``(steps_done, steps_total)`` called after every step.
      on_step: optional callable ``(step, index int32[B], features)`` called after every step with the
        batch's features (see :func:`train_step`); used to train MI critics alongside the network.

    Returns:
      The new state and host metrics: ``train_accuracy``, ``train_loss`` (mean nats) and
      ``class_loss`` (list of per-class mean cross-entropy, by training label).
    """
    k_perm, k_noise = jax.random.split(key)
    batches = epoch_batches(k_perm, data.size, config.batch_size)
    totals = None
    for s, idx in enumerate(batches):
        state, m = train_step(
            state, data, jnp.asarray(idx), jax.random.fold_in(k_noise, s),
            model=model, trigger=attack.train_trigger, config=config, total_steps=total_steps,
            return_features=on_step is not None,
        )
        if on_step is not None:
            on_step(s, idx, m.pop("features"))
        totals = m if totals is None else jax.tree.map(jnp.add, totals, m)
        if progress is not None:
            progress(s + 1, len(batches))
    totals = jax.device_get(totals)
    count = np.maximum(totals["count"], 1)
    loss_total = float(np.sum(totals["loss_sum"]))
    if not np.isfinite(loss_total):
        raise FloatingPointError("training loss is not finite (NaN/inf): lower the learning rate or check the data")
    return state, {
        "train_accuracy": float(np.sum(totals["correct"]) / np.sum(totals["count"])),
        "train_loss": loss_total / float(np.sum(totals["count"])),
        "class_loss": (totals["loss_sum"] / count).tolist(),
    }


def evaluate_attack(
    variables: dict,
    clean_test: DeviceData,
    triggered_test: DeviceData,
    key: jax.Array,
    *,
    model: nn.Module,
    attack: Attack,
    target: int,
    config: TrainConfig,
) -> dict:
    """Clean test accuracy and loss, and the attack success rate, counted exactly.

    ASR is the fraction of triggered test images classified as ``target``, over the test images whose
    true class is not the target (the standard definition) or over all of them with
    ``config.asr_on_all`` (the reference's count).
    """
    k_clean, k_trig = jax.random.split(key)
    labels = np.asarray(clean_test.labels)
    clean = evaluate(variables, clean_test, np.arange(len(labels)), k_clean, model=model,
                     trigger=attack.test_trigger, batch_size=config.eval_batch_size)
    asr_index = np.arange(len(labels)) if config.asr_on_all else np.flatnonzero(labels != target)
    trig = evaluate(variables, triggered_test, asr_index, k_trig, model=model, trigger=attack.test_trigger,
                    batch_size=config.eval_batch_size)
    return {
        "test_accuracy": clean["accuracy"],
        "test_loss": clean["loss"],
        "asr": float(trig["pred_hist"][target]) / trig["count"],
    }
