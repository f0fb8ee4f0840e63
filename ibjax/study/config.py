"""The study's configuration: one frozen dataclass tree in sections, the single source of truth.

:class:`StudyConfig` nests ``data``, ``attack``, ``poison`` (:class:`~ibjax.poison.PoisonConfig`),
``model`` (:class:`~ibjax.models.ModelConfig`), ``train`` (:class:`~ibjax.train.TrainConfig`), ``mi``
(when and how MI is estimated, with the two :class:`~ibjax.mi.MIConfig` estimators ``xt`` and ``ty``)
and ``analysis`` (stealthiness, embeddings). Every section is an :class:`ibjax.fields.Config`: its
values are coerced to their annotations at construction and :meth:`~ibjax.fields.Config.validate`
names a bad one by its dotted path. The command line is generated from the tree (``python -m
experiments.study --help`` lists every field with its default: ``--mi.xt.optimiser.lr``), a JSON file
of it is a config file, and run directories store it as ``config.json``; files of the earlier flat
layout are read through :data:`STUDY_RENAMES`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from typing import Any, Literal, Optional

from ibjax.fields import Config, ConfigError, from_dict, resolve_path, to_dict
from ibjax.metrics.clustering import check_embedding
from ibjax.mi import MI_ALIASES, TY_CONFIG, XT_CONFIG, Candidate, MIConfig
from ibjax.models import ModelConfig
from ibjax.poison import PoisonConfig
from ibjax.quantities import QUANTITIES
from ibjax.train import TrainConfig
from ibjax.triggers import ATTACKS

__all__ = [
    "StudyConfig",
    "DataConfig",
    "AttackConfig",
    "StudyMIConfig",
    "AnalysisConfig",
    "StealthConfig",
    "EmbeddingConfig",
    "STUDY_RENAMES",
    "migrate_config_dict",
    "REFERENCE_MI_EPOCHS",
    "config_to_dict",
    "config_from_dict",
    "load_config",
    "save_config",
    "config_diff",
    "flatten_config",
    "check_config",
]

REFERENCE_MI_EPOCHS = (1, 5, 10, 20, 40, 60, 80, 100, 120)
"""SPEC.md's MI epochs."""

AttackName = Literal[ATTACKS]  # type: ignore[valid-type]  (choices in --help come from the registry)
QuantityName = Literal[tuple(QUANTITIES)]  # type: ignore[valid-type]


@dataclasses.dataclass(frozen=True)
class DataConfig(Config):
    """The data set.

    Attributes:
      name: 'mnist5k' (embedded, no download), a TFDS name ('cifar10', 'svhn_cropped', ...), or the
        path of an image folder / .tar.gz archive laid out split/class/image.
      dir: an image folder or .tar.gz archive (then 'name' is only a label), or a TFDS data dir.
      per_class_limit: keep the first N training images of every class (SVHN reference cut: 4000).
    """

    name: str = "cifar10"
    dir: Optional[str] = None
    per_class_limit: Optional[int] = None

    def check(self) -> None:
        if self.per_class_limit is not None and self.per_class_limit < 1:
            raise ValueError(f"per_class_limit must be >= 1, got {self.per_class_limit}")


@dataclasses.dataclass(frozen=True)
class AttackConfig(Config):
    """The attack: its trigger and poisoning rules.

    Attributes:
      name: one of ibjax.triggers.ATTACKS.
      options: trigger parameter overrides as NAME VALUE pairs, each VALUE read as its parameter's
        type (e.g. 'size 3', 'alpha 0.2', 'colour [0,1,0]', 'pattern path/to/pattern.npy'); prefix a
        name with train_ or test_ to set one side only.
      trigger_rules: 'ibjax' or 'reference': where a trigger's details differ between ibjax's default and
        the authors' code (e.g. WaNet's noise warp on test images), which to follow.
      clean_model: for the attacks computed against a clean network (label-consistent's PGD,
        TrojanNN's pattern): a file of that network's Flax variables (``flax.serialization``
        msgpack, as :func:`ibjax.study.setup.save_clean_model` writes them) for the run's model
        without noise layers. Empty: ibjax trains its own on the clean labels (up to 20 epochs of
        the run's recipe). The authors load a pretrained clean ResNet-18 whose recipe is unpublished.
    """

    name: AttackName = "badnets"
    options: tuple[tuple[str, str], ...] = ()
    trigger_rules: Literal["ibjax", "reference"] = "ibjax"
    clean_model: str = ""

    def check(self) -> None:
        if self.clean_model and not os.path.isfile(self.clean_model):
            raise ValueError(f"clean_model: no file {self.clean_model!r} (give the path of a clean network's variables, "
                             "as ibjax.study.setup.save_clean_model writes them, or leave it empty)")

    def _coerce_rules(self, f):
        # A JSON config file may give an option's value as a number or a list: kept as its JSON text,
        # which the trigger parameter reads as its own type.
        def text(v: Any, where: str) -> str:
            if isinstance(v, str):
                return v
            if isinstance(v, (bool, int, float, list, tuple)):
                return json.dumps(v)
            raise ValueError(f"{where} = {v!r}: expected a NAME VALUE pair of text")

        return {str: text} if f.name == "options" else None


@dataclasses.dataclass(frozen=True)
class StudyMIConfig(Config):
    """When and how the study estimates MI, and the two estimators.

    Attributes:
      epochs: epochs (1-based, after that epoch's training) at which MI is estimated offline.
      mode: 'offline' (at the MI epochs, the reference), 'online' (critics trained alongside the
        network, read every epoch) or 'both'.
      features: 'fresh' (a new noise draw of the network at every critic step, the reference) or
        'bank' (a cached bank of bank_draws noise draws per sample: far faster).
      bank_draws: noise draws per sample in the bank (features 'bank').
      quantities: which quantities of :data:`ibjax.quantities.QUANTITIES` are estimated, offline and
        online: ``xt`` I(X;T) and ``ty`` I(T;Y_pred) (the paper's, which the stealthiness metric
        needs), ``xy`` I(X;Y_pred) (for the data processing check I(X;Y_pred) <= I(X;T)).
      xt: the I(X;T) estimator.
      ty: the I(T;Y_pred) estimator.
      xy: the I(X;Y_pred) estimator (the authors have none: ibjax's I(X;T) defaults, the same X side).
    """

    epochs: tuple[int, ...] = REFERENCE_MI_EPOCHS
    mode: Literal["offline", "online", "both"] = "offline"
    features: Literal["fresh", "bank"] = "fresh"
    bank_draws: int = 8
    quantities: tuple[QuantityName, ...] = ("xt", "ty")
    xt: MIConfig = XT_CONFIG
    ty: MIConfig = TY_CONFIG
    xy: MIConfig = XT_CONFIG

    @property
    def offline(self) -> bool:
        return self.mode in ("offline", "both")

    @property
    def online(self) -> bool:
        return self.mode in ("online", "both")

    def check(self) -> None:
        if self.bank_draws < 1:
            raise ValueError(f"bank_draws must be >= 1, got {self.bank_draws}")
        if not self.quantities or len(set(self.quantities)) != len(self.quantities):
            raise ValueError(f"quantities must name distinct quantities of {list(QUANTITIES)}, got {list(self.quantities)}")
        if not self.offline and any(getattr(self, q).candidates for q in self.quantities):
            raise ValueError("xt/ty.candidates choose among offline estimates, and mode 'online' makes none: "
                             "use mode 'offline' or 'both', or leave candidates empty")
        e = list(self.epochs)
        if self.offline:
            if not e:
                raise ValueError("epochs is empty: give at least one epoch for the offline MI estimates "
                                 "(or mode online)")
            if any(b <= a for a, b in zip(e, e[1:])):
                raise ValueError(f"epochs must be strictly increasing, got {e}")


@dataclasses.dataclass(frozen=True)
class StealthConfig(Config):
    """The stealthiness metric.

    Attributes:
      epochs: epochs of the metric (the nearest MI epochs stand in on shorter runs; the epochs
        actually used are recorded).
      read: the read behind the headline stealthiness: 'heldout' (ibjax) or 'train' (the authors');
        both are computed and stored.
      normalise: min-max normalisation of the metric: 'per_epoch' (the authors') or 'joint'.
      classes: clean classes the metric compares with (empty: all of them; the authors track 1 2 3).
    """

    epochs: tuple[int, ...] = (5, 40, 100)
    read: Literal["heldout", "train"] = "heldout"
    normalise: Literal["per_epoch", "joint"] = "per_epoch"
    classes: tuple[int, ...] = ()

    def check(self) -> None:
        if not self.epochs:
            raise ValueError("epochs is empty: give the epochs of the stealthiness metric")


@dataclasses.dataclass(frozen=True)
class EmbeddingConfig(Config):
    """Silhouette scores and 2-D embeddings of T.

    Attributes:
      epochs: epochs of the embeddings (empty: the first and last MI epoch).
      points: points drawn in each 2-D embedding.
      method: 'pca' (ibjax's, in JAX) or 'tsne' (the authors' figures; scikit-learn, an optional
        extra: about 15 s per 2,000 points on 2 CPU cores).
    """

    epochs: tuple[int, ...] = ()
    points: int = 2000
    method: Literal["pca", "tsne"] = "pca"

    def check(self) -> None:
        if self.points < 4:
            raise ValueError(f"points must be >= 4, got {self.points}")
        try:
            check_embedding(self.method)
        except ImportError as e:
            raise ValueError(str(e)) from None


@dataclasses.dataclass(frozen=True)
class AnalysisConfig(Config):
    """What the run computes from its MI histories and features.

    Attributes:
      stealth: the stealthiness metric.
      embedding: silhouette scores and 2-D embeddings of T.
      bound_checks: after the last epoch, the authors' bound checks on the training data and the
        trained network (H(B), I(B;Y), I(B;Y_pred) exactly, I(X;B) estimated:
        :func:`ibjax.study.checks.backdoor_checks`), written to ``checks.json`` and the summary.
        Off by default: the I(X;B) critic costs about as much as one MI epoch of a group.
      defenses: after the last epoch, these detectors, parameter-space statistics and
        representation metrics of :data:`ibjax.defenses.DEFENSES` (``("all",)``: every one) on the
        trained network, written to ``defenses.json`` and the summary: sample-level detectors with
        their AUROC, TPR and FPR against the run's poisons, model-level ones with their score
        and suspected target, each with its wall time.
      defense_rules: ``"ibjax"`` (ibjax's settings of each method) or ``"reference"`` (their
        official code's).
    """

    stealth: StealthConfig = StealthConfig()
    embedding: EmbeddingConfig = EmbeddingConfig()
    bound_checks: bool = False
    defenses: tuple[str, ...] = ()
    defense_rules: Literal["ibjax", "reference"] = "ibjax"

    def check(self) -> None:
        from ibjax.defenses.registry import resolve_defenses

        resolve_defenses(self.defenses)


@dataclasses.dataclass(frozen=True)
class StudyConfig(Config):
    """Everything that defines a run. Defaults: the reference protocol (SPEC.md: CIFAR-10, BadNets 10%,
    ResNet-18, 120 epochs, MI of all groups at 9 epochs) with ibjax's own estimator defaults (held-out
    reads); the preset 'reference' is the authors' code exactly.

    Attributes:
      data: the data set.
      attack: the attack (trigger and poisoning rules).
      poison: how the training set is poisoned.
      model: the network.
      train: the training recipe.
      mi: when and how MI is estimated, and the two estimators.
      analysis: the stealthiness metric and the embeddings.
      seed: the run's seed (every random choice derives from it and the epoch).
    """

    data: DataConfig = DataConfig()
    attack: AttackConfig = AttackConfig()
    poison: PoisonConfig = PoisonConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    mi: StudyMIConfig = StudyMIConfig()
    analysis: AnalysisConfig = AnalysisConfig()
    seed: int = 0

    @property
    def resolved_embed_epochs(self) -> tuple[int, ...]:
        """The embedding epochs: ``analysis.embedding.epochs``, or the first and last MI epoch."""
        if self.analysis.embedding.epochs:
            return self.analysis.embedding.epochs
        e = self.mi.epochs
        return tuple(sorted({e[0], e[-1]})) if e else ()

    def check(self) -> None:
        # Relations between sections; each section checks its own fields.
        last = self.train.epochs
        e = list(self.mi.epochs)
        if self.mi.offline and e and (e[0] < 1 or e[-1] > last):
            raise ConfigError("mi", f"epochs must lie in 1..{last} (train.epochs), got {e}")
        bad = [x for x in self.resolved_embed_epochs if not 1 <= x <= last]
        if bad:
            raise ConfigError("analysis.embedding", f"epochs {bad} lie outside 1..{last} (train.epochs)")
        from ibjax.defenses.network import PAIRED_MODELS
        from ibjax.defenses.registry import NEEDS_CONV_BN_PAIRS, resolve_defenses

        if self.model.name not in PAIRED_MODELS:
            # caught here, not after the training: these read each batch norm's convolution
            if self.train.abi_u > 0:
                raise ConfigError("train", f"abi_u needs each batch norm to follow one convolution; {self.model.name} "
                                           f"does not: use one of {', '.join(PAIRED_MODELS)} or abi_u 0")
            paired = [n for n in resolve_defenses(self.analysis.defenses) if n in NEEDS_CONV_BN_PAIRS]
            if paired:
                raise ConfigError("analysis", f"defenses {paired} need each batch norm to follow one convolution; "
                                              f"{self.model.name} does not: use one of {', '.join(PAIRED_MODELS)}")


STUDY_RENAMES = {
    "dataset": "data.name",
    "data_dir": "data.dir",
    "per_class_limit": "data.per_class_limit",
    "attack": "attack.name",
    "attack_options": "attack.options",
    "trigger_rules": "attack.trigger_rules",
    "mi_epochs": "mi.epochs",
    "mi_mode": "mi.mode",
    "feature_mode": "mi.features",
    "bank_draws": "mi.bank_draws",
    "xt": "mi.xt",
    "ty": "mi.ty",
    "stealth_epochs": "analysis.stealth.epochs",
    "stealth_read": "analysis.stealth.read",
    "stealth_normalise": "analysis.stealth.normalise",
    "stealth_classes": "analysis.stealth.classes",
    "embed_epochs": "analysis.embedding.epochs",
    "embed_points": "analysis.embedding.points",
}
"""Top-level fields of the flat StudyConfig of earlier versions and where they live now: old
``config.json`` files are read through it (:func:`config_from_dict`), old flags are refused naming
the new one (:mod:`ibjax.cli`)."""


# --------------------------------------------------------------------------------------------------
# dict / JSON round trips


def config_to_dict(config) -> dict:
    """A JSON-ready nested dict of a config dataclass."""
    return to_dict(config)


def _migrate_mi(d: Any, where: str) -> Any:
    """An MIConfig dict in today's sections: flat fields of earlier versions (and their old names)
    moved into them, sections kept, candidates' text in today's spelling."""
    if not isinstance(d, dict):
        return d
    sections = {f.name for f in dataclasses.fields(MIConfig)} - {"candidates"}
    out: dict = {}
    for name, value in d.items():
        if name == "candidates":
            out[name] = [_candidate_text(c) for c in value] if isinstance(value, (list, tuple)) else value
        elif name in sections and isinstance(value, dict):
            out.setdefault(name, {}).update(value)
        else:
            try:
                path = resolve_path(MIConfig, name, MI_ALIASES)
            except ValueError as e:
                raise ValueError(f"{where}: {e}") from None
            if path in sections:
                raise ValueError(f"{where}.{name} must be an object of its fields, got {value!r}")
            section, leaf = path.split(".")
            out.setdefault(section, {})[leaf] = value
    return out


def _candidate_text(c: Any) -> Any:
    """A candidate's text in today's spelling (``critic=separable`` -> ``critic.family=separable``),
    so that equal candidates of an old and a new file compare equal; left as it is if unreadable
    (the config's own check then names what is wrong)."""
    try:
        return str(Candidate.coerce(c, "candidate"))
    except ValueError:
        return c


def migrate_config_dict(d: Any) -> Any:
    """A StudyConfig dict of an earlier version (flat sections, see :data:`STUDY_RENAMES`) in today's
    layout; today's layout unchanged."""
    if not isinstance(d, dict):
        return d
    d = copy.deepcopy(d)  # the caller's dict stays as it was
    out = {k: v for k, v in d.items() if k not in STUDY_RENAMES or isinstance(v, dict) and k == "attack"}
    for old, new in STUDY_RENAMES.items():
        if old not in d or (old == "attack" and isinstance(d[old], dict)):
            continue
        node = out
        *heads, leaf = new.split(".")
        for h in heads:
            node = node.setdefault(h, {})
        node[leaf] = d[old]
    mi = out.get("mi")
    if isinstance(mi, dict):
        for q in QUANTITIES:
            if q in mi:
                mi[q] = _migrate_mi(mi[q], f"mi.{q}")
    return out


def config_from_dict(d: dict, cls=StudyConfig):
    """Rebuild a config from :func:`config_to_dict`'s output. Missing fields take their defaults;
    a StudyConfig dict of an earlier, flat version is read in today's sections; unknown fields
    raise ValueError naming them."""
    if cls is StudyConfig:
        d = migrate_config_dict(d)
    return from_dict(cls, d)


def load_config(path: str | os.PathLike, cls=StudyConfig):
    """Read a JSON config file (a whole or partial :class:`StudyConfig` as nested objects)."""
    try:
        with open(path) as f:
            d = json.load(f)
    except OSError as e:
        raise ValueError(f"cannot read config file {os.fspath(path)!r}: {e.strerror or e}") from e
    except json.JSONDecodeError as e:
        raise ValueError(f"config file {os.fspath(path)!r} is not valid JSON: {e}") from e
    return config_from_dict(d, cls)


def save_config(config, path: str | os.PathLike) -> None:
    with open(path, "w") as f:
        json.dump(config_to_dict(config), f, indent=1)


def flatten_config(config) -> dict[str, Any]:
    """``{"train.epochs": 120, ...}``: every leaf field by its dotted name."""
    out: dict[str, Any] = {}

    def walk(prefix: str, value):
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            out[prefix] = value

    walk("", config if isinstance(config, dict) else config_to_dict(config))
    return out


def config_diff(a, b) -> dict[str, tuple[Any, Any]]:
    """Fields (dotted names) whose values differ between two configs: ``{name: (a's, b's)}``."""
    fa, fb = flatten_config(a), flatten_config(b)
    return {k: (fa.get(k), fb.get(k)) for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)}


# --------------------------------------------------------------------------------------------------
# Checks that need no data


def check_config(config: StudyConfig) -> None:
    """Raise ValueError (``section.field: what to do``) for any option that cannot work; called
    before any data is loaded. Checks that need the data (the target class's range, group sizes,
    whether the trigger fits the images) follow once it is loaded."""
    config.validate()
