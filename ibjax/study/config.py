"""The study's configuration: one frozen dataclass tree, the single source of truth.

:class:`StudyConfig` nests the library's own configs (:class:`~ibjax.poison.PoisonConfig`,
:class:`~ibjax.models.ModelConfig`, :class:`~ibjax.train.TrainConfig`, two
:class:`~ibjax.mi.MIConfig`). The command line is generated from it (``experiments.study --help``
lists every field with its default), a JSON file of it is a config file, and run directories store
it as ``config.json``. Everything here is plain data and pure functions: dict round trips, a
field-by-field diff, and the checks that need no data set.
"""

from __future__ import annotations

import dataclasses
import json
import os
import typing
from typing import Any, Literal, Optional

from ibjax.mi import TY_CONFIG, XT_CONFIG, MIConfig
from ibjax.models import ModelConfig
from ibjax.poison import PoisonConfig
from ibjax.quantities import QUANTITIES
from ibjax.train import TrainConfig
from ibjax.triggers import ATTACKS

__all__ = [
    "StudyConfig",
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


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    """Everything that defines a run. Defaults: the reference protocol (SPEC.md: CIFAR-10, BadNets 10%,
    ResNet-18, 120 epochs, MI of all groups at 9 epochs) with ibjax's own estimator defaults (held-out
    reads); the preset 'reference' is the authors' code exactly.

    Attributes:
      dataset: 'mnist5k' (embedded, no download), a TFDS name ('cifar10', 'svhn_cropped', ...), or the
        path of an image folder / .tar.gz archive laid out split/class/image.
      data_dir: an image folder or .tar.gz archive (then 'dataset' is only a label), or a TFDS data dir.
      per_class_limit: keep the first N training images of every class (SVHN reference cut: 4000).
      attack: the attack (trigger and poisoning rules), one of ibjax.triggers.ATTACKS.
      attack_options: trigger parameter overrides as NAME VALUE pairs (VALUE parsed as JSON when it
        can be, e.g. 'size 3', 'alpha 0.2', 'colour [0,1,0]', 'pattern path/to/pattern.npy'); prefix a
        name with train_ or test_ to set one side only.
      trigger_rules: 'ibjax' or 'reference': where a trigger's details differ between ibjax's default and
        the authors' code (e.g. WaNet's noise warp on test images), which to follow.
      poison: how the training set is poisoned.
      model: the network.
      train: the training recipe.
      mi_epochs: epochs (1-based, after that epoch's training) at which MI is estimated offline.
      xt: the I(X;T) estimator.
      ty: the I(T;Y_pred) estimator.
      mi_mode: 'offline' (at mi_epochs, the reference), 'online' (critics trained alongside the network,
        read every epoch) or 'both'.
      feature_mode: 'fresh' (a new noise draw of the network at every critic step, the reference) or
        'bank' (a cached bank of bank_draws noise draws per sample: far faster).
      bank_draws: noise draws per sample in the bank (feature_mode 'bank').
      stealth_epochs: epochs of the stealthiness metric (the nearest MI epochs stand in on shorter runs;
        the epochs actually used are recorded).
      stealth_read: the read behind the headline stealthiness: 'heldout' (ibjax) or 'train' (the
        authors'); both are computed and stored.
      stealth_normalise: min-max normalisation of the metric: 'per_epoch' (the authors') or 'joint'.
      stealth_classes: clean classes the metric compares with (empty: all of them; the authors track 1 2 3).
      embed_epochs: epochs for silhouette scores and 2-D embeddings of T (empty: first and last MI epoch).
      embed_points: points drawn in each 2-D embedding.
      seed: the run's seed (every random choice derives from it and the epoch).
    """

    dataset: str = "cifar10"
    data_dir: Optional[str] = None
    per_class_limit: Optional[int] = None
    attack: AttackName = "badnets"
    attack_options: tuple[tuple[str, str], ...] = ()
    trigger_rules: Literal["ibjax", "reference"] = "ibjax"
    poison: PoisonConfig = PoisonConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    mi_epochs: tuple[int, ...] = REFERENCE_MI_EPOCHS
    xt: MIConfig = XT_CONFIG
    ty: MIConfig = TY_CONFIG
    mi_mode: Literal["offline", "online", "both"] = "offline"
    feature_mode: Literal["fresh", "bank"] = "fresh"
    bank_draws: int = 8
    stealth_epochs: tuple[int, ...] = (5, 40, 100)
    stealth_read: Literal["heldout", "train"] = "heldout"
    stealth_normalise: Literal["per_epoch", "joint"] = "per_epoch"
    stealth_classes: tuple[int, ...] = ()
    embed_epochs: tuple[int, ...] = ()
    embed_points: int = 2000
    seed: int = 0

    @property
    def offline(self) -> bool:
        return self.mi_mode in ("offline", "both")

    @property
    def online(self) -> bool:
        return self.mi_mode in ("online", "both")

    @property
    def resolved_embed_epochs(self) -> tuple[int, ...]:
        if self.embed_epochs:
            return self.embed_epochs
        return tuple(sorted({self.mi_epochs[0], self.mi_epochs[-1]})) if self.mi_epochs else ()


# --------------------------------------------------------------------------------------------------
# dict / JSON round trips


def config_to_dict(config) -> dict:
    """A JSON-ready nested dict of a config dataclass."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def _convert(tp, value, where: str):
    """``value`` (from JSON) as the annotated type ``tp``: nested dataclasses and tuples rebuilt."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _from_dict(tp, value, where)
    if origin is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return None if value is None else _convert(args[0], value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"config field {where} must be a list, got {value!r}")
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, where) for v in value)
        return tuple(_convert(a, v, where) for a, v in zip(args, value))
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _from_dict(cls, d: Any, where: str = ""):
    if not isinstance(d, dict):
        raise ValueError(f"config section {where or cls.__name__} must be an object, got {d!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"unknown config field(s) {[f'{where}.{u}'.lstrip('.') for u in unknown]}; "
                         f"{cls.__name__} has {sorted(names)}")
    kwargs = {k: _convert(hints[k], v, f"{where}.{k}".lstrip(".")) for k, v in d.items()}
    return cls(**kwargs)


def config_from_dict(d: dict, cls=StudyConfig):
    """Rebuild a config from :func:`config_to_dict`'s output. Missing fields take their defaults (so
    older files still load); unknown fields raise ValueError naming them."""
    return _from_dict(cls, d)


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
    """Raise ValueError, naming the field and what to do, for any option that cannot work; called
    before any data is loaded. Checks that need the data (the target class's range, group sizes,
    whether the trigger fits the images) follow once it is loaded."""
    if config.attack not in ATTACKS:
        raise ValueError(f"attack {config.attack!r} is unknown; choose one of {', '.join(ATTACKS)}")
    config.train.validate()
    config.poison.validate()
    for name in QUANTITIES:
        mi_cfg = getattr(config, name)
        try:
            mi_cfg.validate()
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from e
    if not config.offline and (config.xt.candidates or config.ty.candidates):
        raise ValueError("xt/ty.candidates choose among offline estimates, and mi_mode 'online' makes none: "
                         "use mi_mode 'offline' or 'both', or leave candidates empty")
    e = list(config.mi_epochs)
    if config.offline:
        if not e:
            raise ValueError("mi_epochs is empty: give at least one epoch for the offline MI estimates "
                             "(or mi_mode online)")
        if any(b <= a for a, b in zip(e, e[1:])):
            raise ValueError(f"mi_epochs must be strictly increasing, got {e}")
        if e[0] < 1 or e[-1] > config.train.epochs:
            raise ValueError(f"mi_epochs must lie in 1..{config.train.epochs} (train.epochs), got {e}")
    if config.bank_draws < 1:
        raise ValueError(f"bank_draws must be >= 1, got {config.bank_draws}")
    if config.embed_points < 2:
        raise ValueError(f"embed_points must be >= 2, got {config.embed_points}")
    bad = [x for x in config.resolved_embed_epochs if not 1 <= x <= config.train.epochs]
    if bad:
        raise ValueError(f"embed_epochs {bad} lie outside 1..{config.train.epochs} (train.epochs)")
    if not config.stealth_epochs:
        raise ValueError("stealth_epochs is empty: give the epochs of the stealthiness metric")
    if config.per_class_limit is not None and config.per_class_limit < 1:
        raise ValueError(f"per_class_limit must be >= 1, got {config.per_class_limit}")
    for pair in config.attack_options:
        if len(pair) != 2:
            raise ValueError(f"attack_options must be NAME VALUE pairs, got {pair!r}")
