"""Estimator settings: :class:`MIConfig`, the authors' exact configurations and ibjax's defaults.

Two families of configurations, for the two quantities of the study:

- ``XT_REFERENCE`` / ``TY_REFERENCE``: the authors' estimator exactly (SPEC.md, "MI estimation";
  ``ffcv_observeMI.py``): the critic trains on the whole group, half the shuffled loader per epoch,
  the learning rate halved on a plateau of the epoch's mean loss, and the reported number is the
  mean of the last 5 epochs' training estimates (``MIResult.train``). No held-out split, none of
  ibjax's accuracy levers.
- ``XT_CONFIG`` / ``TY_CONFIG``: ibjax's defaults at the same sizes (B, K, learning rates, epochs),
  with the levers that measurably improve the held-out read (docs/estimator.md has the measurements
  behind each, from ``benchmarks/ground_truth.py``; docs/reading-the-numbers.md says what each read
  means).
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Literal, Optional

import numpy as np

from ibjax.mi.bounds import bound_cap, get_bound
from ibjax.mi.critics import CRITICS, get_critic

__all__ = [
    "MIConfig",
    "XT_REFERENCE",
    "TY_REFERENCE",
    "XT_CONFIG",
    "TY_CONFIG",
    "resolve_config",
    "batches_per_epoch",
    "split_sizes",
    "CANDIDATE_FIELDS",
    "parse_overrides",
    "candidate_configs",
]

_PREPROCESS = ("none", "standardize", "rank")
_SELECT = ("last", "best")
_PLATEAU_ON = ("train", "validation")
CriticName = Literal[tuple(CRITICS)]  # type: ignore[valid-type]  # the registry's names: the flags' choices


@dataclasses.dataclass(frozen=True)
class MIConfig:
    """Estimator settings (frozen: hashes by value, a static argument of the jitted estimator).

    Attributes:
      epochs: estimator epochs.
      batch_size: B, pairs per step.
      negatives: K, negatives per pair, drawn uniformly with replacement from the batch.
      negative_sampling: ``"sampled"`` (the reference: K draws with replacement) or ``"all"``
        (every other row of the batch, K = B - 1: the all-pairs InfoNCE).
      lr, weight_decay: AdamW (decoupled weight decay scaled by the learning rate, as PyTorch's).
      grad_clip: global gradient-norm clip (per group).
      plateau_patience, plateau_factor, plateau_threshold, plateau_eps: PyTorch's
        ``ReduceLROnPlateau(mode="min", factor, patience, threshold, threshold_mode="rel", eps)``
        stepped once per epoch on the epoch's mean loss (minus the mean estimate), as the authors
        do: an epoch improves if loss < best * (1 - threshold); after more than ``patience`` epochs
        without improvement the rate is multiplied by ``factor`` (unless that changes it by at most
        ``eps``) and the count restarts.
      plateau_on: ``"train"`` (the authors: the training batches' mean loss) or ``"validation"``
        (the validation split's loss; needs ``validation_fraction > 0``).
      batch_fraction: which batches of each epoch's shuffled loader are used. The loader has
        ceil(n / B) batches (the last one partial); batches with index i <= batch_fraction * len are
        used, as the authors' ``if batch > len(loader) / 2: continue`` with 0.5 (19 of 36 batches for
        n = 4,500, B = 128). A partial last batch inside that range is used with its own size.
      critic: a family of :data:`ibjax.mi.critics.CRITICS`: ``"concat"`` (reference) or ``"separable"``;
        hidden: hidden widths; embed_dim: separable only.
      critic_rank: concat only: ``r > 0`` puts a linear bottleneck in front of the MLP, which then sees
        r linear features of a and r of b (at most their widths); ``0`` (reference): none. A
        low-rank prior: on 2-D dependence hidden in 32 x 32 dimensions it lifts the held-out read
        (docs/estimator.md, "Why a low-rank critic is not the default"), but on inputs whose
        dependence spans many directions it caps what the critic can see.
      bound: ``"infonce"`` (reference), ``"nwj"`` or ``"dv"``.
      heldout_fraction: fraction of each group held out from everything (training, selection) for
        the held-out read and its standard error. ``0`` is the authors' protocol (no held-out read).
      validation_fraction: fraction of the rest (after the held-out split) kept out of training, read
        every epoch: drives ``select="best"``, ``plateau_on="validation"`` and the convergence verdict.
      select: which critic the held-out read uses: ``"last"`` (the final one) or ``"best"`` (the one
        of the epoch with the highest validation read; early stopping without stopping).
      preprocess: per-group, per-coordinate map of a and b before the critic: ``"none"`` (reference),
        ``"standardize"`` (zero mean, unit variance) or ``"rank"`` (rank-Gaussianisation: the
        empirical CDF, then the standard normal quantile). MI is invariant under invertible
        per-coordinate maps, so "rank" changes the task, not the truth; ties (pixel data) are broken
        at random (a randomised probability transform, which keeps MI).
      fit_samples: training pairs per group that fit the ``preprocess`` map (at most the split).
      heldout_passes: shuffles of the held-out split averaged in the held-out read.
      read_batch_size: the held-out InfoNCE read cuts the split into equal batches of at most this
        many rows and takes every other row of a row's batch as its negatives (all-pairs InfoNCE,
        at most log(rows) nats). For the same critic more negatives make the bound tighter: its
        shortfall below the truth falls with K (heavy tails need many). ``0`` reads with the
        training batch size and negatives. (NWJ and DV always read as they train.)
      read_epochs: the ``train`` read is the mean of this many last epochs (reference: 5).
      convergence_fraction: the verdict looks at this last fraction of the epochs (at least 5; a run
        shorter than 5 epochs is never called converged).
      convergence_tol: a rise below this many nats over that window counts as converged whatever
        its noise.
      dtype: critic compute dtype, ``"float32"`` or ``"bfloat16"`` (parameters stay float32). The
        authors run the critic under CUDA fp16 autocast with a GradScaler; ibjax does not reproduce
        that (float32 unless asked).
      candidates: other critics to choose from, per group, by validation (model selection; needs
        ``validation_fraction > 0``): each a space-separated list of ``FIELD=VALUE`` overrides of this
        config, e.g. ``"critic=separable lr=1e-3 weight_decay=1"`` (a tuple value as ``hidden=64,64``).
        Every candidate, this config first, is estimated with the same key, so all share each
        group's held-out and validation splits; per group the one whose kept critic reads highest on
        the validation split is returned (:func:`ibjax.mi.select_by_validation`;
        ``MIResult.candidate`` says which). Only the critic and its training may differ
        (:data:`CANDIDATE_FIELDS`), so the validation reads compare like with like. Cost: one
        estimate per candidate. Offline estimates only (online critics use this config itself).
        ``()`` (reference and default): no selection.
    """

    epochs: int = 350
    batch_size: int = 128
    negatives: int = 512
    negative_sampling: Literal["sampled", "all"] = "sampled"
    lr: float = 3e-4
    weight_decay: float = 1e-4
    grad_clip: float = 5.0
    plateau_patience: int = 8
    plateau_factor: float = 0.5
    plateau_threshold: float = 1e-4
    plateau_eps: float = 1e-8
    plateau_on: Literal["train", "validation"] = "train"
    batch_fraction: float = 0.5
    critic: CriticName = "concat"
    hidden: tuple[int, ...] = (128, 128)
    embed_dim: int = 64
    critic_rank: int = 0
    bound: Literal["infonce", "nwj", "dv"] = "infonce"
    heldout_fraction: float = 0.2
    validation_fraction: float = 0.0
    select: Literal["last", "best"] = "last"
    preprocess: Literal["none", "standardize", "rank"] = "none"
    fit_samples: int = 4096
    heldout_passes: int = 4
    read_batch_size: int = 1024
    read_epochs: int = 5
    convergence_fraction: float = 0.25
    convergence_tol: float = 0.02
    dtype: Literal["float32", "bfloat16"] = "float32"
    candidates: tuple[str, ...] = ()

    @property
    def num_negatives(self) -> int:
        return self.batch_size - 1 if self.negative_sampling == "all" else self.negatives

    @property
    def total_epochs(self) -> int:
        """Critic epochs of one estimate, over all its candidates (what progress bars count)."""
        return self.epochs * (1 + len(self.candidates))

    @property
    def cap(self) -> float:
        """Largest value the bound can read, nats (log(K + 1) for InfoNCE).

        With K > B negatives drawn with replacement from the batch, a row's own partner is among its
        negatives about K / B times, so in practice InfoNCE saturates near log(B) (4.85 nats for the
        reference's I(X;T), B = 128) well before this cap; a batch of n < B real rows (a small group)
        saturates near log(n).
        """
        return bound_cap(self.bound, self.num_negatives)

    @property
    def reads_all_pairs(self) -> bool:
        """Whether the held-out read is the all-pairs InfoNCE over batches of ``read_batch_size``."""
        return self.read_batch_size > 0 and self.bound == "infonce"

    @property
    def convergence_window(self) -> int:
        """Epochs at the end of the run the convergence verdict looks at."""
        return int(min(self.epochs, max(5, round(self.convergence_fraction * self.epochs))))

    def validate(self) -> None:
        """Raise ValueError naming the first bad field."""
        get_bound(self.bound)
        critic = get_critic(self.critic)
        choices = {"negative_sampling": ("sampled", "all"), "dtype": ("float32", "bfloat16"),
                   "preprocess": _PREPROCESS, "select": _SELECT, "plateau_on": _PLATEAU_ON}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.read_batch_size < 0 or self.read_batch_size == 1:
            raise ValueError(f"read_batch_size must be 0 (read as training) or >= 2, got {self.read_batch_size}")
        for name in ("epochs", "batch_size", "negatives", "read_epochs", "heldout_passes", "fit_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.critic_rank < 0:
            raise ValueError(f"critic_rank must be >= 0 (0: no bottleneck), got {self.critic_rank}")
        if self.critic_rank and not critic.takes_rank:
            with_rank = "/".join(name for name, c in CRITICS.items() if c.takes_rank)
            raise ValueError(f"critic_rank is a {with_rank}-critic option; got critic={self.critic!r}: "
                             "set critic_rank=0")
        if not self.hidden or min(self.hidden) < 1:
            raise ValueError(f"hidden must be a non-empty tuple of positive widths, got {self.hidden!r}")
        if self.negative_sampling == "all" and self.batch_size < 2:
            raise ValueError("all-pairs negatives need batch_size >= 2")
        for name in ("heldout_fraction", "validation_fraction"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must lie in [0, 1), got {getattr(self, name)}")
        if not 0.0 < self.batch_fraction <= 1.0:
            raise ValueError(f"batch_fraction must lie in (0, 1], got {self.batch_fraction}")
        if not 0.0 < self.convergence_fraction <= 1.0:
            raise ValueError(f"convergence_fraction must lie in (0, 1], got {self.convergence_fraction}")
        if self.read_epochs > self.epochs:
            raise ValueError(f"read_epochs ({self.read_epochs}) exceeds epochs ({self.epochs})")
        needs_val = [n for n, v in (("select='best'", self.select == "best"),
                                    ("plateau_on='validation'", self.plateau_on == "validation")) if v]
        if not isinstance(self.candidates, tuple) or not all(isinstance(c, str) for c in self.candidates):
            raise ValueError(f"candidates must be a tuple of strings such as ('critic_rank=4 lr=1e-3',), "
                             f"got {self.candidates!r}")
        if self.candidates and self.validation_fraction <= 0:
            needs_val.append("candidates")
        if needs_val and self.validation_fraction <= 0:
            raise ValueError(f"{' and '.join(needs_val)} need a validation split: set validation_fraction > 0")
        candidate_configs(self)


# The authors' estimator (ffcv_observeMI.py, config): I(X;T) B 128, K 512, AdamW 3e-4, 350 epochs;
# I(T;Y_pred) B 512, K 256, AdamW 5e-4, 250 epochs; both trained and read on the whole group.
XT_REFERENCE = MIConfig(heldout_fraction=0.0)
"""The authors' I(X;T) estimator exactly: B 128, K 512, AdamW 3e-4 (wd 1e-4), clip 5, 350 epochs,
half the loader per epoch, plateau on the training loss; read = mean of the last 5 training epochs."""
TY_REFERENCE = MIConfig(epochs=250, batch_size=512, negatives=256, lr=5e-4, heldout_fraction=0.0)
"""The authors' I(T;Y_pred) estimator exactly: B 512, K 256, AdamW 5e-4, 250 epochs, otherwise as XT."""

# ibjax's defaults at the reference sizes. Each lever is measured in benchmarks/ground_truth.py
# (tables in docs/estimator.md): a validation split with best-critic selection keeps the held-out read near
# the truth at the full 350-epoch length (the last critic of a memorising run reads far below it),
# and rank-Gaussianisation removes the shortfall under nonlinear marginals.
_IBJAX_LEVERS = dict(heldout_fraction=0.2, validation_fraction=0.2, select="best", preprocess="rank")
XT_CONFIG = dataclasses.replace(XT_REFERENCE, **_IBJAX_LEVERS)
"""ibjax's I(X;T) default: the reference's sizes plus a held-out split, best-by-validation critic and
rank-Gaussianised inputs (see the module docstring)."""
TY_CONFIG = dataclasses.replace(TY_REFERENCE, **_IBJAX_LEVERS)
"""ibjax's I(T;Y_pred) default: the reference's sizes plus ibjax's levers (as :data:`XT_CONFIG`)."""


def resolve_config(config: Optional[MIConfig] = None, **overrides) -> MIConfig:
    """``config`` (default :class:`MIConfig`) with keyword ``overrides`` applied, validated.

    Raises TypeError on an unknown option (listing the valid ones), ValueError on a bad value.
    """
    config = config or MIConfig()
    fields = {f.name for f in dataclasses.fields(MIConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise TypeError(f"unknown MI option(s) {unknown}; options are {sorted(fields)}")
    if isinstance(overrides.get("candidates"), str):  # one candidate, not its characters
        overrides["candidates"] = (overrides["candidates"],)
    overrides = {k: tuple(v) if k in ("hidden", "candidates") else v for k, v in overrides.items()}
    config = dataclasses.replace(config, **overrides)
    config.validate()
    return config


def batches_per_epoch(n: int | np.ndarray, batch_size: int, fraction: float) -> np.ndarray:
    """Batches used per epoch from a shuffled loader over n samples with the last partial batch kept.

    The loader has ``L = ceil(n / B)`` batches; batch i is used when ``i <= fraction * L`` (the
    authors skip ``batch > len(loader) / 2``), so ``min(L, floor(fraction * L) + 1)`` batches are used.
    ``fraction * L`` is the same float product as the authors' comparison, so the floor agrees with it
    exactly. Returns int64 of n's shape.
    """
    n = np.asarray(n, np.int64)
    num = -(-n // batch_size)
    return np.minimum(num, np.floor(fraction * num).astype(np.int64) + 1)


def split_sizes(n: int | np.ndarray, config: MIConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(held-out, validation, training) sample counts of groups of n samples, int64 each.

    held-out = floor(heldout_fraction * n); validation = floor(validation_fraction * (n - held-out));
    training = the rest.
    """
    n = np.asarray(n, np.int64)
    n_ho = np.floor(config.heldout_fraction * n).astype(np.int64)
    n_val = np.floor(config.validation_fraction * (n - n_ho)).astype(np.int64)
    return n_ho, n_val, n - n_ho - n_val


# --------------------------------------------------------------------------------------------------
# Model selection across critics (MIConfig.candidates)

CANDIDATE_FIELDS = frozenset({"lr", "weight_decay", "grad_clip", "plateau_patience", "plateau_factor",
                              "plateau_threshold", "plateau_eps", "plateau_on", "batch_fraction", "critic", "hidden",
                              "embed_dim", "critic_rank", "select", "preprocess", "fit_samples", "dtype"})
"""Fields a candidate may change: the critic and its training. The rest (epochs, splits, batch size,
negatives, bound and reads) fix what the validation and held-out reads measure, so they stay shared."""

def _parse_value(tp, text: str, where: str):
    origin = typing.get_origin(tp)
    if origin is Literal:
        if text not in typing.get_args(tp):
            raise ValueError(f"{where}: must be one of {typing.get_args(tp)}, got {text!r}")
        return text
    if origin is tuple:
        inner = typing.get_args(tp)[0]
        return tuple(_parse_value(inner, part, where) for part in text.strip("()").split(",") if part)
    try:
        return tp(text) if tp is not bool else text.lower() in ("1", "true", "yes")
    except ValueError:
        raise ValueError(f"{where}: expected {tp.__name__}, got {text!r}") from None


def parse_overrides(text: str) -> dict:
    """``"critic=separable lr=1e-3 hidden=64,64"`` as typed MIConfig overrides.

    Raises ValueError naming the item that is not ``FIELD=VALUE``, an unknown field or a bad value.
    """
    hints = typing.get_type_hints(MIConfig)
    out = {}
    for item in text.split():
        name, eq, value = item.partition("=")
        if not eq or not name or not value:
            raise ValueError(f"{text!r}: expected space-separated FIELD=VALUE items, got {item!r}")
        if name not in hints:
            raise ValueError(f"{text!r}: unknown field {name!r}; fields are {sorted(hints)}")
        out[name] = _parse_value(hints[name], value, f"{text!r}, {name}")
    return out


def candidate_configs(config: MIConfig) -> tuple[MIConfig, ...]:
    """The configs model selection chooses from: ``config`` itself (without candidates), then each of
    ``config.candidates`` applied to it, validated.

    Raises ValueError for a candidate that cannot be parsed, changes a field outside
    :data:`CANDIDATE_FIELDS`, or is not a valid config.
    """
    base = dataclasses.replace(config, candidates=())
    out = [base]
    for text in config.candidates:
        try:
            over = parse_overrides(text)
        except ValueError as e:
            raise ValueError(f"candidate {e}") from None
        fixed = sorted(set(over) - CANDIDATE_FIELDS)
        if fixed:
            raise ValueError(f"candidate {text!r} changes {fixed}: candidates share the splits, batches and reads "
                             f"and may change only {sorted(CANDIDATE_FIELDS)}")
        if not over:
            raise ValueError("an empty candidate repeats the config itself: give FIELD=VALUE overrides")
        cand = dataclasses.replace(base, **over)
        try:
            cand.validate()
        except ValueError as e:
            raise ValueError(f"candidate {text!r}: {e}") from e
        out.append(cand)
    return tuple(out)
