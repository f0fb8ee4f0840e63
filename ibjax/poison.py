"""Poisoning plans: which training samples carry the trigger, their labels, and the MI sample groups.

A plan is computed once from the clean labels and a PRNG key; no poisoned copy of the data set is
ever stored (triggers are applied on the fly by :mod:`ibjax.pipeline`). The reference protocol
(SPEC.md): all-to-one, target class 0, poison ratio p of the WHOLE training set taken evenly from
every class (``p * N / num_classes`` per class, the last ones of each class), relabelled to the target.
With CIFAR-10 at 10% the target class then holds 4,500 clean + 5,000 backdoor samples and every other
class 4,500 clean ones. Clean-label attacks poison only target-class samples (ratio = fraction of that
class) and keep labels. Adaptive-Blend keeps the true label on a fraction of its poisoned samples
(its "regularisation" samples).

Sample groups for MI estimation (target class c), as boolean masks over the N training samples:
``target`` (training label c), ``target_backdoor`` (label c and triggered), ``target_clean`` (label c,
not triggered), ``target_sample`` (a random subsample of ``target`` as large as a clean class, with the
same backdoor/clean mix), and ``class_k`` for every other class k (label k, not triggered; triggered
regularisation samples are left out so that those groups stay clean).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import numpy as np
from flax import struct

__all__ = ["PoisonConfig", "PoisonPlan", "make_poison_plan", "group_index_table"]


@dataclasses.dataclass(frozen=True)
class PoisonConfig:
    """How to poison. Defaults are the reference's: 10% of the whole set, all-to-one onto class 0.

    Attributes:
      ratio: poisoned fraction of the whole training set (dirty-label), or of the target class
        (clean-label). In (0, 1).
      target: the target class.
      clean_label: poison only target-class samples and keep their labels.
      keep_label_fraction: fraction of the poisoned samples of non-target classes that keep their
        true label (Adaptive-Blend's regularisation samples: 0.5). Chosen at random with the plan's
        key. Dirty-label attacks only.
      selection: ``"last"`` takes the last samples of each class in data-set order (the reference);
        ``"random"`` draws them with the plan's key.
    """

    ratio: float = 0.1
    target: int = 0
    clean_label: bool = False
    keep_label_fraction: float = 0.0
    selection: str = "last"

    def validate(self, num_classes: Optional[int] = None) -> None:
        """Raise ValueError for a bad option; the target's upper bound is checked once ``num_classes`` is known."""
        if not 0.0 < self.ratio < 1.0:
            raise ValueError(f"poison ratio must lie in (0, 1), got {self.ratio}")
        if self.target < 0 or (num_classes is not None and self.target >= num_classes):
            hint = f": the data set has classes 0..{num_classes - 1}" if num_classes is not None else ""
            raise ValueError(f"target class {self.target} out of range{hint}")
        if not 0.0 <= self.keep_label_fraction < 1.0:
            raise ValueError(f"keep_label_fraction must lie in [0, 1), got {self.keep_label_fraction}")
        if self.clean_label and self.keep_label_fraction > 0:
            raise ValueError("keep_label_fraction has no effect on a clean-label attack (its poisons keep their "
                             "labels already): set it to 0")
        if self.selection not in ("last", "random"):
            raise ValueError(f"selection must be 'last' or 'random', got {self.selection!r}")


@struct.dataclass
class PoisonPlan:
    """A poisoning plan for N training samples (a pytree of arrays; group names are static).

    Attributes:
      poisoned: bool[N], the trigger is applied to this sample.
      labels: int32[N], training labels after poisoning.
      clean_labels: int32[N], the original labels.
      group_masks: bool[G, N], membership of every MI sample group.
      group_names: the G group names (static).
      target: the target class (static).
    """

    poisoned: np.ndarray
    labels: np.ndarray
    clean_labels: np.ndarray
    group_masks: np.ndarray
    group_names: tuple[str, ...] = struct.field(pytree_node=False)
    target: int = struct.field(pytree_node=False)

    @property
    def num_poisoned(self) -> int:
        return int(np.sum(self.poisoned))

    def group(self, name: str) -> np.ndarray:
        """Indices (int64[n]) of the samples in group ``name``."""
        if name not in self.group_names:
            raise KeyError(f"no group {name!r}; groups are {self.group_names}")
        return np.flatnonzero(self.group_masks[self.group_names.index(name)])


def _choose(idx: np.ndarray, n: int, selection: str, key: jax.Array) -> np.ndarray:
    if n > len(idx):
        raise ValueError(f"cannot poison {n} samples of a class that holds {len(idx)}")
    if selection == "last":
        return idx[len(idx) - n :]
    return np.sort(np.asarray(jax.random.choice(key, idx, (n,), replace=False)))


def make_poison_plan(
    labels: np.ndarray, num_classes: int, config: PoisonConfig, key: jax.Array
) -> PoisonPlan:
    """Compute the poisoning plan and the MI sample groups.

    Args:
      labels: int[N] clean training labels.
      num_classes: number of classes.
      config: see :class:`PoisonConfig`.
      key: PRNG key (random selection, kept labels, the ``target_sample`` subsample).

    Returns:
      A :class:`PoisonPlan` with G = 4 + (num_classes - 1) groups.
    """
    config.validate(num_classes)
    labels = np.asarray(labels, dtype=np.int32)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
    n = labels.shape[0]
    k_select, k_keep, k_sample = jax.random.split(key, 3)
    class_idx = [np.flatnonzero(labels == c) for c in range(num_classes)]
    poisoned = np.zeros(n, bool)
    if config.clean_label:
        count = int(round(config.ratio * len(class_idx[config.target])))
        poisoned[_choose(class_idx[config.target], count, config.selection, k_select)] = True
    else:
        per_class = int(round(config.ratio * n / num_classes))
        for c, k in zip(range(num_classes), jax.random.split(k_select, num_classes)):
            poisoned[_choose(class_idx[c], per_class, config.selection, k)] = True
    new_labels = labels.copy()
    if not config.clean_label:
        relabel = poisoned.copy()
        if config.keep_label_fraction > 0:
            # Drawn among the poisons of other classes: a target-class poison keeps its label anyway.
            p_idx = np.flatnonzero(poisoned & (labels != config.target))
            n_keep = int(round(config.keep_label_fraction * len(p_idx)))
            keep = np.asarray(jax.random.choice(k_keep, p_idx, (n_keep,), replace=False))
            relabel[keep] = False
        new_labels[relabel] = config.target

    t = config.target
    in_target = new_labels == t
    tb = in_target & poisoned
    tc = in_target & ~poisoned
    clean_class_masks = [(new_labels == c) & ~poisoned for c in range(num_classes) if c != t]
    # The size-matched sample: as large as a typical clean class, with the target's backdoor/clean mix.
    size = int(np.median([m.sum() for m in clean_class_masks])) if clean_class_masks else int(in_target.sum())
    size = min(size, int(in_target.sum()))
    n_bd = int(round(size * tb.sum() / max(int(in_target.sum()), 1)))
    kb, kc = jax.random.split(k_sample)
    sample = np.zeros(n, bool)
    if n_bd:
        sample[np.asarray(jax.random.choice(kb, np.flatnonzero(tb), (n_bd,), replace=False))] = True
    if size - n_bd:
        sample[np.asarray(jax.random.choice(kc, np.flatnonzero(tc), (size - n_bd,), replace=False))] = True
    names = ("target", "target_backdoor", "target_clean", "target_sample") + tuple(
        f"class_{c}" for c in range(num_classes) if c != t
    )
    masks = np.stack([in_target, tb, tc, sample, *clean_class_masks])
    return PoisonPlan(
        poisoned=poisoned,
        labels=new_labels,
        clean_labels=labels,
        group_masks=masks,
        group_names=names,
        target=t,
    )


def group_index_table(group_masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Turn bool[G, N] group masks into a padded index table for batched per-group work.

    Returns:
      ``(index int32[G, M], valid bool[G, M])`` with M the largest group size; row g lists group g's
      sample indices in increasing order, padded with index 0 where ``valid`` is False.
    """
    group_masks = np.asarray(group_masks, bool)
    sizes = group_masks.sum(axis=1)
    m = int(sizes.max()) if sizes.size else 0
    index = np.zeros((group_masks.shape[0], m), np.int32)
    valid = np.zeros((group_masks.shape[0], m), bool)
    for g, mask in enumerate(group_masks):
        idx = np.flatnonzero(mask)
        index[g, : len(idx)] = idx
        valid[g, : len(idx)] = True
    return index, valid
