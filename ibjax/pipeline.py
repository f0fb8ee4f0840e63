"""On-device input pipeline: batches are gathered on the device and triggered inside the jitted step.

The training set lives on the device once, as uint8 images (N, H, W, C) with its poisoning plan's
flags and labels; no poisoned copy is stored. A batch is a gather of indices, a cast to float32 in
[0, 1], and the attack's trigger applied to the flagged samples. Each sample's trigger randomness
(WaNet's noise warp, Adaptive-Blend's piece mask) comes from ``fold_in(trigger_key, index)``, so a
poisoned sample is the same image in every epoch and when its features are read for MI estimation,
as in a poisoned set generated once and stored (some public WaNet code draws a new noise warp at
every load instead; that would make the MI groups' inputs change between reads). The same holds for
a triggered test set whose trigger takes a key (WaNet with ``test_noise=True``).

The label-consistent attack's PGD perturbations are the one precomputed exception: they are stored
(float32, as the authors keep them) for the poisoned samples only and added before the trigger.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from ibjax.parallel import put_replicated
from ibjax.poison import PoisonPlan

__all__ = ["DeviceData", "put_train_data", "put_test_data", "gather_batch", "epoch_batches", "test_batches"]


@struct.dataclass
class DeviceData:
    """A data set on the device (a pytree).

    Attributes:
      images: uint8[N, H, W, C].
      labels: int32[N] (training labels after poisoning, or clean test labels).
      poisoned: bool[N], apply the trigger to this sample.
      perturbation_row: int32[N], row of ``perturbations`` added before the trigger (0 = none).
      perturbations: float32[P + 1, H, W, C]; row 0 is zeros.
      trigger_key: the key that per-sample trigger keys are folded from.
    """

    images: jax.Array
    labels: jax.Array
    poisoned: jax.Array
    perturbation_row: jax.Array
    perturbations: jax.Array
    trigger_key: jax.Array

    @property
    def size(self) -> int:
        return int(self.images.shape[0])


def _check_images(images: np.ndarray) -> None:
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (N, H, W, C), got {images.dtype} {images.shape}")


def put_train_data(
    images: np.ndarray,
    plan: PoisonPlan,
    trigger_key: jax.Array,
    perturbations: Optional[np.ndarray] = None,
    mesh=None,
) -> DeviceData:
    """Put a training set and its poisoning plan on the device (replicated over every device of
    ``mesh``, a :mod:`ibjax.parallel` mesh, when one is given: batches then gather from the local
    copy with no communication, and a shuffle over the whole set stays what it is on one device).

    Args:
      images: uint8[N, H, W, C] clean training images.
      plan: the poisoning plan (flags and labels).
      trigger_key: key for the per-sample trigger randomness.
      perturbations: float[P, H, W, C] additive perturbations for the P poisoned samples, in index
        order (label-consistent attack), or None.
    """
    _check_images(images)
    n = images.shape[0]
    if plan.poisoned.shape != (n,):
        raise ValueError(f"plan covers {plan.poisoned.shape[0]} samples but there are {n} images")
    rows = np.zeros(n, np.int32)
    if perturbations is None:
        table = np.zeros((1, *images.shape[1:]), np.float32)
    else:
        p_idx = np.flatnonzero(plan.poisoned)
        if perturbations.shape != (len(p_idx), *images.shape[1:]):
            raise ValueError(
                f"perturbations must be ({len(p_idx)}, {images.shape[1:]}) for the poisoned samples, "
                f"got {perturbations.shape}"
            )
        rows[p_idx] = np.arange(1, len(p_idx) + 1)
        table = np.concatenate([np.zeros((1, *images.shape[1:]), np.float32), perturbations.astype(np.float32)])
    return _place(DeviceData(
        images=np.asarray(images),
        labels=np.asarray(plan.labels, np.int32),
        poisoned=np.asarray(plan.poisoned, bool),
        perturbation_row=rows,
        perturbations=table,
        trigger_key=trigger_key,
    ), mesh)


def _place(data: DeviceData, mesh) -> DeviceData:
    """Host arrays to the default device, or replicated over ``mesh``."""
    if mesh is not None:
        return put_replicated(data, mesh)
    return jax.tree.map(jnp.asarray, data)


def put_test_data(images: np.ndarray, labels: np.ndarray, trigger_key: jax.Array, triggered: bool = False,
                  mesh=None) -> DeviceData:
    """Put a test set on the device (replicated over ``mesh`` if given); ``triggered=True`` flags
    every sample (the ASR set)."""
    _check_images(images)
    n = images.shape[0]
    return _place(DeviceData(
        images=np.asarray(images),
        labels=np.asarray(labels, np.int32),
        poisoned=np.full((n,), triggered),
        perturbation_row=np.zeros((n,), np.int32),
        perturbations=np.zeros((1, *images.shape[1:]), np.float32),
        trigger_key=trigger_key,
    ), mesh)


def gather_batch(data: DeviceData, index: jax.Array, trigger) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Gather a batch and apply ``trigger(image f32[H,W,C], key) -> image`` to the flagged samples.

    Args:
      data: the device data set.
      index: int32[B] sample indices.
      trigger: a per-image trigger, vmapped over the batch here: an attack's
        :class:`~ibjax.triggers.Trigger` (``attack.train_trigger`` / ``attack.test_trigger``) or any
        callable ``(image, key) -> image``. Each sample's key is ``fold_in(data.trigger_key, index)``;
        a ``Trigger`` with ``uses_key=False`` gets no key (nothing is folded).

    Returns:
      ``(images f32[B, H, W, C] in [0, 1], labels int32[B], poisoned bool[B])``.
    """
    if not callable(trigger):
        raise TypeError(f"trigger must be a per-image callable such as attack.train_trigger, got {type(trigger).__name__}: "
                        "pass get_attack(name).train_trigger (or .test_trigger)")
    x = data.images[index].astype(jnp.float32) / 255.0
    x = jnp.clip(x + data.perturbations[data.perturbation_row[index]].astype(jnp.float32), 0.0, 1.0)
    if getattr(trigger, "uses_key", True):
        keys = jax.vmap(jax.random.fold_in, (None, 0))(data.trigger_key, index)
        x_trig = jax.vmap(trigger)(x, keys)
    else:
        x_trig = jax.vmap(trigger)(x)
    flag = data.poisoned[index]
    x = jnp.where(flag[:, None, None, None], x_trig, x)
    return x, data.labels[index], flag


def epoch_batches(key: jax.Array, n: int, batch_size: int) -> np.ndarray:
    """A shuffled epoch of full batches, int32[steps, batch_size] (the remainder is dropped)."""
    if not 0 < batch_size <= n:
        raise ValueError(f"batch size must lie in [1, {n}] (the training samples), got {batch_size}")
    perm = np.asarray(jax.random.permutation(key, n), np.int32)
    steps = n // batch_size
    return perm[: steps * batch_size].reshape(steps, batch_size)


def test_batches(index: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Cover ``index`` exactly with fixed-size batches: (int32[S, B] indices, bool[S, B] valid).

    The last batch is padded (with the first index) and the padding is marked invalid, so metrics
    count every sample once and only once.
    """
    index = np.asarray(index, np.int32)
    steps = max(1, -(-len(index) // batch_size))
    padded = np.full(steps * batch_size, index[0] if len(index) else 0, np.int32)
    padded[: len(index)] = index
    valid = np.zeros(steps * batch_size, bool)
    valid[: len(index)] = True
    return padded.reshape(steps, batch_size), valid.reshape(steps, batch_size)
