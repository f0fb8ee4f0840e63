"""Poisoning plans: which training samples carry the trigger, their labels, and the MI sample groups.

A plan is computed once from the clean labels and a PRNG key; no poisoned copy of the data set is
ever stored (triggers are applied on the fly by :mod:`ibjax.pipeline`). The reference protocol
(SPEC.md, the authors' ``poison_data_generator.py``): all-to-one, target class 0, poison ratio p of
the WHOLE training set taken evenly from every class (``p * N / num_classes`` per class, the LAST
ones of each class in data-set order), relabelled to the target. With CIFAR-10 at 10% the target
class then holds 4,500 clean + 5,000 backdoor samples and every other class 4,500 clean ones.
Clean-label attacks poison only target-class samples (ratio = fraction of that class; the authors
take the FIRST ones of the class) and keep labels. Adaptive-Blend keeps the true label on a fraction
of the poisoned samples of every non-target class (its "regularisation" samples): exactly
``int(per_class * fraction)`` per class, the last ones of the class's poisons (250 of 500 on
CIFAR-10 at 10%, as the authors).

How many samples are poisoned (N samples, K classes, N_t of them in the target class):

=====================  ==========================================  ===============================
selection              dirty-label, per class                      clean-label, of the target class
=====================  ==========================================  ===============================
``"reference"``        ``int(int(p * N) / K)`` (the authors')      ``int(p * (N // K))`` (the
                                                                   authors': p of the *mean* class
                                                                   size, whatever N_t is)
``"first"``,           ``floor(p * N / K + 1/2)`` (nearest,        ``floor(p * N_t + 1/2)``
``"last"``,            halves up)                                  (nearest, halves up; p of the
``"random"``                                                       target class's own size)
=====================  ==========================================  ===============================

The two rules agree on the study's settings (CIFAR-10 and SVHN-4k at 1-20%, label-consistent at
10-50%) and differ where p * N / K or p * N_t is not an integer (e.g. N = 5,000, K = 10, p = 0.0019:
the authors' 0 per class, the nearest 1). A plan that would poison no sample, or that asks a class
for more samples than it holds, is refused with the ratio that fixes it; so are labels outside
[0, K).

Sample groups for MI estimation (target class c), as boolean masks over the N training samples:
``target`` (training label c); ``target_backdoor`` (label c and triggered) and ``target_clean``
(label c, not triggered) under ibjax's ``target_split="trigger"``, or, under the authors'
``"positional"`` split (REFERENCE_POISON's), the first ``int(N * split_rate)`` label-c rows of their
generated order and the rest, whatever their trigger; ``target_sample`` (a random subsample of
``target`` as large as a clean class: with the target's own backdoor/clean mix, or half and half as
the authors), and ``class_k`` for every other class k (label k; the triggered kept-label samples
are left out by default so that those groups stay clean, the authors include them).

:data:`REFERENCE_POISON` holds the authors' choices where ibjax's defaults differ on purpose.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Literal, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from ibjax.fields import Config

__all__ = ["PoisonConfig", "PoisonPlan", "REFERENCE_POISON", "make_poison_plan", "positional_target_split",
           "group_index_table"]



@dataclasses.dataclass(frozen=True)
class PoisonConfig(Config):
    """How to poison. Defaults: 10% of the whole set, all-to-one onto class 0, the authors' selection.

    Attributes:
      ratio: poisoned fraction of the whole training set (dirty-label), or of the target class
        (clean-label). In [0, 1); 0 is a clean run, the negative a detector is measured against:
        nothing is poisoned, ``target_backdoor`` is empty and every read of it is NaN.
      target: the target class.
      clean_label: poison only target-class samples and keep their labels.
      keep_label_fraction: fraction of the poisoned samples of each non-target class that keep
        their true label (Adaptive-Blend's regularisation samples: 0.5): ``int(per_class *
        fraction)`` in every class, the last of that class's poisons in data-set order (the
        authors' rule). Dirty-label attacks only.
      selection: which samples of a class are poisoned, and how their number is rounded (see the
        module docstring). ``"reference"`` (default): the authors' rule, the last ones of each class
        for dirty-label attacks and the first ones of the target class for clean-label attacks,
        counted with the authors' truncations. ``"first"`` / ``"last"``: the first / last ones of
        each poisoned class in data-set order; ``"random"``: drawn with the plan's key; these three
        round the count to the nearest integer (halves up).
      clean_groups_include_kept: put the triggered kept-label samples of class k in MI group
        ``class_k``. ibjax's default False keeps the clean-class groups clean (a triggered sample
        in a "clean" group mixes the backdoor signal into the reference curves the stealthiness
        metric compares against); the authors' groups are all samples of label k (True: 4,750 per
        class for Adaptive-Blend on CIFAR-10 at 10%).
      target_sample: how the size-matched ``target_sample`` group is drawn. ``"mix"`` (ibjax's
        default): with the target class's own backdoor/clean mix, as large as a typical clean-class
        group (the median size), so that it differs from ``target`` only in size. ``"half"`` (the
        authors' ``create_balanced_sample``): as large as the first clean class's group,
        ``min(#backdoor, size // 2)`` backdoor samples and the rest clean, each drawn without
        replacement (fewer clean ones if the class has fewer).
      target_split: how the target class is split into ``target_backdoor`` / ``target_clean``.
        ``"trigger"`` (ibjax's default): the samples with / without the trigger. ``"positional"``
        (the authors' ``ffcv_writer.py``): the first ``int(N * split_rate)`` target-labelled rows of
        the authors' generated set / the rest (see :data:`REFERENCE_POISON`); each group may then
        mix triggered and clean samples.
      split_rate: the positional split's rate (the writer's ``--poison_rate``; the authors'
        default 0.05, which their scripts never override). Only with ``target_split="positional"``.
    """

    ratio: float = 0.1
    target: int = 0
    clean_label: bool = False
    keep_label_fraction: float = 0.0
    selection: Literal["reference", "first", "last", "random"] = "reference"
    clean_groups_include_kept: bool = False
    target_sample: Literal["mix", "half"] = "mix"
    target_split: Literal["trigger", "positional"] = "trigger"
    split_rate: float = 0.05

    def check(self) -> None:
        if not 0.0 <= self.ratio < 1.0:
            raise ValueError(f"ratio must lie in [0, 1) (0: a clean run), got {self.ratio}")
        if self.target < 0:
            raise ValueError(f"target class {self.target} out of range: give a class index >= 0")
        if not 0.0 < self.split_rate < 1.0:
            raise ValueError(f"split_rate must lie in (0, 1), got {self.split_rate}")
        if not 0.0 <= self.keep_label_fraction < 1.0:
            raise ValueError(f"keep_label_fraction must lie in [0, 1), got {self.keep_label_fraction}")
        if self.clean_label and self.keep_label_fraction > 0:
            raise ValueError("keep_label_fraction has no effect on a clean-label attack (its poisons keep their "
                             "labels already): set it to 0")

    def validate(self, num_classes: Optional[int] = None) -> None:
        """:meth:`check`, and the target's upper bound once ``num_classes`` is known."""
        super().validate()
        if num_classes is not None and self.target >= num_classes:
            raise ValueError(f"target class {self.target} out of range: the data set has classes 0..{num_classes - 1}")


REFERENCE_POISON = PoisonConfig(selection="reference", clean_groups_include_kept=True, target_sample="half",
                                target_split="positional", split_rate=0.05)
"""The authors' poisoning rules (``poison_data_generator.py``) and their grouping rules
(``ffcv_writer.py``), the split of the target class included.

Which samples are triggered and relabelled, the counts (their truncations), the kept-label samples in
the clean-class groups (``class_k`` = every sample labelled k, 4,750 per class for Adaptive-Blend on
CIFAR-10 at 10%), and ``target_sample`` drawn half backdoor, half clean, as large as the first clean
class's group.

The target class is split by *position* (``create_class_datasets``): ``class_0_backdoor`` is the
first ``int(N * r)`` label-0 rows of their generated set and ``class_0_clean`` the rest, with r the
writer's own ``--poison_rate`` (default 0.05, which neither their ``run_experiment.sh`` nor their
README's commands override). Their generated set starts with the triggered rows. On CIFAR-10 with a
10% generator:

- BadNets, Blend, WaNet (5,000 triggered label-0 rows): r = 0.1 gives the trigger split; r = 0.05
  gives ``class_0_backdoor`` = 2,500 triggered and ``class_0_clean`` = 2,500 triggered + 4,500 clean.
- Adaptive-Blend (2,750 triggered label-0 rows: 500 from class 0, 250 from each other class; the
  other 250 per class keep their label): r = 0.1 gives ``class_0_backdoor`` = 2,750 triggered + 2,250
  clean and ``class_0_clean`` = 2,250 clean, so their 50/50 ``class_0_sample`` would draw its
  "backdoor" half from that mix (45% clean), and its clean half (2,375, half of class 1's 4,750)
  exceeds the 2,250 clean ones, which their ``random.sample`` refuses; r = 0.05 gives
  ``class_0_backdoor`` = 2,500 triggered and ``class_0_clean`` = 250 triggered + 4,500 clean.
- Label-consistent at 10% of the class (rows in data-set order, the first 500 of class 0
  triggered): r = 0.05 gives 500 triggered + 2,000 clean as "backdoor"; r = 0.1 the whole class
  (``class_0_clean`` empty, which :func:`positional_target_split` refuses).

ibjax's own default splits by the trigger (``target_split="trigger"``): the positional split puts
clean samples in the backdoor group or triggered samples in the clean group, depending on r, so a
group's MI mixes both kinds (docs/reference-mode.md measures what it moves). These counts are
re-derived in ``tests/test_poison.py``."""


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


def _rng(key: jax.Array, stream: int) -> np.random.Generator:
    """A NumPy generator determined by the PRNG key and a stream number (plans live on the host)."""
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    words = [int(w) for w in np.asarray(key).ravel()]
    return np.random.default_rng(words + [stream])


def _choose(idx: np.ndarray, n: int, selection: str, rng: np.random.Generator, cls: int, ratio: float,
            rule: str) -> np.ndarray:
    """``n`` of the (increasing) indices ``idx`` of class ``cls``, in increasing order."""
    if n > len(idx):
        raise ValueError(f"poison ratio {ratio} asks for {n} samples of class {cls} ({rule}), but class {cls} holds "
                         f"{len(idx)}: lower the ratio, or balance the classes")
    if selection == "last":
        return idx[len(idx) - n :]
    if selection == "first":
        return idx[:n]
    return np.sort(rng.choice(idx, n, replace=False))


def _nearest(x: float) -> int:
    """Round to the nearest integer, halves up (Python's ``round`` sends halves to even)."""
    return int(math.floor(x + 0.5))


def _count_rule(config: PoisonConfig, n: int, num_classes: int, n_target: int) -> tuple[Callable[[float], int], str]:
    """(ratio -> number of poisons per poisoned class, the rule in words); see the module docstring."""
    k = num_classes
    if config.clean_label:
        if config.selection == "reference":
            return (lambda p: int(p * (n // k))), f"the authors' int(ratio * (N // K)) with N = {n}, K = {k}"
        return (lambda p: _nearest(p * n_target)), f"nearest of ratio * {n_target} target-class samples"
    if config.selection == "reference":
        return (lambda p: int(int(p * n) / k)), f"the authors' int(int(ratio * N) / K) per class with N = {n}, K = {k}"
    return (lambda p: _nearest(p * n / k)), f"nearest of ratio * N / K per class with N = {n}, K = {k}"


def _no_poison_message(config: PoisonConfig, count_fn: Callable[[float], int], rule: str, n: int,
                       num_classes: int) -> str:
    """Why a plan poisons nothing, and the smallest ratio that poisons one sample per poisoned class."""
    what = "of the target class" if config.clean_label else "per class"
    msg = f"poison ratio {config.ratio} poisons no sample ({count_fn(config.ratio)} {what}: {rule})"
    # The rules are non-decreasing in the ratio: find the threshold by bisection, then print it with
    # as few digits as still poison one sample and lie within 0.1% of it.
    lo, hi = config.ratio, 1.0
    if count_fn(math.nextafter(hi, 0.0)) < 1:
        return msg + f"; no ratio below 1 poisons a sample of {n} samples in {num_classes} classes"
    hi = math.nextafter(hi, 0.0)
    for _ in range(200):
        mid = (lo + hi) / 2
        if mid in (lo, hi):
            break
        lo, hi = (lo, mid) if count_fn(mid) >= 1 else (mid, hi)
    smallest = next(f"{hi:.{d}g}" for d in range(1, 18)
                    if count_fn(float(f"{hi:.{d}g}")) >= 1 and float(f"{hi:.{d}g}") <= hi * (1 + 1e-3))
    return msg + f"; the smallest ratio that poisons one sample {what} is {smallest}"


def make_poison_plan(
    labels: np.ndarray, num_classes: int, config: PoisonConfig, key: jax.Array
) -> PoisonPlan:
    """Compute the poisoning plan and the MI sample groups.

    Args:
      labels: int[N] clean training labels.
      num_classes: number of classes.
      config: see :class:`PoisonConfig`.
      key: PRNG key (random selection, the ``target_sample`` subsample).

    Returns:
      A :class:`PoisonPlan` with G = 4 + (num_classes - 1) groups.

    Raises:
      ValueError: a bad config, labels that are not 1-D integers in [0, num_classes), a ratio that
        poisons no sample (the message gives the smallest that poisons one per class), or a class
        too small for its share of the poisons.
    """
    config.validate(num_classes)
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    outside = (labels < 0) | (labels >= num_classes)
    if outside.any():
        bad = np.unique(labels[outside])
        raise ValueError(f"{int(outside.sum())} labels lie outside [0, {num_classes}) (num_classes = {num_classes}): "
                         f"values {bad[:10].tolist()}{' ...' if bad.size > 10 else ''}; such samples would be in no "
                         "group: fix the labels or num_classes")
    labels = labels.astype(np.int32)
    n = labels.shape[0]
    t = config.target
    class_idx = [np.flatnonzero(labels == c) for c in range(num_classes)]
    poisoned = np.zeros(n, bool)
    new_labels = labels.copy()
    count_fn, rule = _count_rule(config, n, num_classes, len(class_idx[t]))
    count = count_fn(config.ratio)
    if count < 1 and config.ratio > 0:
        raise ValueError(_no_poison_message(config, count_fn, rule, n, num_classes))
    if config.clean_label:
        selection = "first" if config.selection == "reference" else config.selection
        poisoned[_choose(class_idx[t], count, selection, _rng(key, 0), t, config.ratio, rule)] = True
    else:
        selection = "last" if config.selection == "reference" else config.selection
        per_class = count
        for c in range(num_classes):
            chosen = _choose(class_idx[c], per_class, selection, _rng(key, 1 + c), c, config.ratio, rule)
            poisoned[chosen] = True
            n_keep = int(len(chosen) * config.keep_label_fraction) if c != t else 0
            # The authors relabel the first (per_class - n_keep) of a class's poisons and keep the rest.
            new_labels[chosen[: len(chosen) - n_keep]] = t

    in_target = new_labels == t
    if config.target_split == "positional":
        tb, tc = positional_target_split(labels, new_labels, poisoned, t, config.split_rate)
    else:
        tb, tc = in_target & poisoned, in_target & ~poisoned
    others = [c for c in range(num_classes) if c != t]
    clean_class_masks = [(new_labels == c) & (config.clean_groups_include_kept | ~poisoned) for c in others]
    sample = _target_sample(config, tb, tc, clean_class_masks, _rng(key, 1 + num_classes))
    names = ("target", "target_backdoor", "target_clean", "target_sample") + tuple(f"class_{c}" for c in others)
    masks = np.stack([in_target, tb, tc, sample, *clean_class_masks])
    return PoisonPlan(
        poisoned=poisoned,
        labels=new_labels,
        clean_labels=labels,
        group_masks=masks,
        group_names=names,
        target=t,
    )


def positional_target_split(clean_labels: np.ndarray, labels: np.ndarray, poisoned: np.ndarray, target: int,
                            rate: float) -> tuple[np.ndarray, np.ndarray]:
    """The authors' split of the target class by position (``ffcv_writer.create_class_datasets``).

    Their generated training set lists the triggered rows first, class by class of origin (each
    class's in data-set order), then the untouched rows; a clean-label attack keeps the data-set
    order. Of the rows labelled ``target`` in that order, the first ``int(N * rate)`` are
    "backdoor" and the rest "clean".

    Args:
      clean_labels: int[N] labels before poisoning; labels: int[N] after; poisoned: bool[N].
      target: the target class; rate: the writer's poison rate.

    Returns:
      ``(backdoor, clean)``, bool[N] each: a partition of the samples labelled ``target``.

    Raises:
      ValueError: the cut leaves either part empty (the message gives the rates that do not).
    """
    n = len(labels)
    in_target = np.flatnonzero(labels == target)
    relabelled = np.any(poisoned & (clean_labels != labels))
    if relabelled:  # dirty-label: the generator writes the triggered rows first, by class of origin
        trig = in_target[poisoned[in_target]]
        trig = trig[np.lexsort((trig, clean_labels[trig]))]
        rows = np.concatenate([trig, in_target[~poisoned[in_target]]])
    else:
        rows = in_target
    cut = int(n * rate)
    if not 0 < cut < len(rows):
        raise ValueError(f"the positional split at split_rate {rate} cuts {cut} of the {len(rows)} target-class rows "
                         f"(N = {n}), leaving a group empty: give a split_rate in ({1 / n:.4g}, {len(rows) / n:.4g}) "
                         "or target_split 'trigger'")
    backdoor, clean = np.zeros(n, bool), np.zeros(n, bool)
    backdoor[rows[:cut]] = True
    clean[rows[cut:]] = True
    return backdoor, clean


def _target_sample(config: PoisonConfig, tb: np.ndarray, tc: np.ndarray, clean_class_masks: list,
                   rng: np.random.Generator) -> np.ndarray:
    """bool[N]: the size-matched subsample of the target class (see ``PoisonConfig.target_sample``)."""
    n_tb, n_tc = int(tb.sum()), int(tc.sum())
    sizes = [int(m.sum()) for m in clean_class_masks]
    if config.target_sample == "half":
        size = sizes[0] if sizes else n_tb + n_tc
        n_bd = min(n_tb, size // 2)
        n_cl = min(size - n_bd, n_tc)
    else:
        size = min(int(np.median(sizes)) if sizes else n_tb + n_tc, n_tb + n_tc)
        n_bd = int(round(size * n_tb / max(n_tb + n_tc, 1)))
        n_cl = size - n_bd
    sample = np.zeros(tb.shape, bool)
    sample[rng.choice(np.flatnonzero(tb), n_bd, replace=False)] = True
    sample[rng.choice(np.flatnonzero(tc), n_cl, replace=False)] = True
    return sample


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
