"""The attack registry: every attack registered once, and :func:`get_attack` that builds it.

An :class:`AttackSpec` says everything about one attack: its trigger function and params class,
the defaults that differ between training poisons and test images, whether each side's trigger
takes the per-sample key, its poisoning flags, and the overrides that reproduce the authors'
generator (:func:`reference_attack_overrides`). :data:`ATTACKS` is the registry's names.

:func:`get_attack` returns an :class:`Attack`: a frozen dataclass whose triggers are
:class:`~ibjax.triggers.common.Trigger` objects, so attacks built separately with equal settings
compare and hash equal and a jitted step that takes them as static arguments compiles once.
"""

from __future__ import annotations

import dataclasses
import types
from typing import Any, Callable, Mapping, Union

from ibjax.triggers.adversarial import LabelConsistentParams, label_consistent
from ibjax.triggers.blend import AdaptiveBlendParams, BlendParams, adaptive_blend, blend
from ibjax.triggers.common import Trigger, image_hwc
from ibjax.triggers.frequency import FTrojanParams, LowFrequencyParams, ftrojan, low_frequency
from ibjax.triggers.patch import BadNetsParams, TrojanNNParams, badnets, trojannn
from ibjax.triggers.quantise import BPPParams, bpp
from ibjax.triggers.signal import SIGParams, sig
from ibjax.triggers.universal import GrondParams, grond
from ibjax.triggers.warp import WaNetParams, wanet

__all__ = ["Attack", "AttackSpec", "REGISTRY", "ATTACKS", "get_attack", "reference_attack_overrides"]

Flag = Union[bool, Callable[[Any], bool]]


@dataclasses.dataclass(frozen=True)
class AttackSpec:
    """One registered attack.

    Attributes:
      name: the attack's name.
      fn: its module-level trigger function ``fn(images, params[, key=...])``.
      params: its frozen params class.
      train_defaults, test_defaults: ``(field, value)`` pairs that differ from the params class's
        defaults on one side (e.g. label-consistent amplitude 64/255 train, 1.0 test).
      train_key, test_key: whether that side's trigger takes the per-sample key: a bool, or a
        function of that side's params (WaNet: ``params.noise``).
      clean_label, keep_label_fraction, needs_perturbation: copied to the :class:`Attack`.
      optimised_pattern: a bool or a function of the training params (TrojanNN: no pattern yet).
      reference: ``(field, value)`` overrides that reproduce the authors' generator where ibjax's
        defaults differ on purpose (see :func:`reference_attack_overrides`).
    """

    name: str
    fn: Callable[..., Any]
    params: type
    train_defaults: tuple[tuple[str, Any], ...] = ()
    test_defaults: tuple[tuple[str, Any], ...] = ()
    train_key: Flag = False
    test_key: Flag = False
    clean_label: bool = False
    keep_label_fraction: float = 0.0
    needs_perturbation: bool = False
    optimised_pattern: Flag = False
    reference: tuple[tuple[str, Any], ...] = ()


def _flag(flag: Flag, params: Any) -> bool:
    return bool(flag(params)) if callable(flag) else bool(flag)


_SPECS = (
    AttackSpec("badnets", badnets, BadNetsParams),
    AttackSpec("blend", blend, BlendParams),
    AttackSpec(
        "wanet", wanet, WaNetParams,
        test_defaults=(("noise", False),),
        train_key=lambda p: p.noise, test_key=lambda p: p.noise,
        # The authors' generator warps triggered test images with the random noise too.
        reference=(("test_noise", True),),
    ),
    AttackSpec(
        "label_consistent", label_consistent, LabelConsistentParams,
        train_defaults=(("amplitude", 64.0 / 255.0),), test_defaults=(("amplitude", 1.0),),
        clean_label=True, needs_perturbation=True,
        # The authors' PGD starts from a random point of the eps-ball (advertorch's rand_init=True).
        reference=(("pgd_random_start", True),),
    ),
    AttackSpec(
        "adaptive_blend", adaptive_blend, AdaptiveBlendParams,
        train_defaults=(("alpha", 0.15),), test_defaults=(("alpha", 0.2),),
        train_key=True, keep_label_fraction=0.5,
    ),
    AttackSpec("sig", sig, SIGParams, clean_label=True),
    AttackSpec("ftrojan", ftrojan, FTrojanParams),
    AttackSpec("bpp", bpp, BPPParams),
    AttackSpec("trojannn", trojannn, TrojanNNParams, optimised_pattern=lambda p: p.pattern is None),
    AttackSpec("low_frequency", low_frequency, LowFrequencyParams),
    # Grond's perturbation is computed against a clean network at set-up (ibjax.study.setup).
    AttackSpec("grond", grond, GrondParams, clean_label=True, optimised_pattern=lambda p: p.pattern is None),
)

REGISTRY: Mapping[str, AttackSpec] = types.MappingProxyType({s.name: s for s in _SPECS})
"""Every attack, by name (read-only)."""

ATTACKS: tuple[str, ...] = tuple(REGISTRY)
"""The attack names, in registry order."""


@dataclasses.dataclass(frozen=True)
class Attack:
    """A poisoning attack: how its training poisons and test inputs are triggered.

    Frozen and hashed by value: two attacks built with equal settings are equal, so they are one
    static argument to ``jax.jit``.

    Attributes:
      name: attack name (one of :data:`ATTACKS`).
      train_trigger: ``(images [..., H, W, C], key=None) -> images``, applied to the poisoned
        TRAINING samples. WaNet and Adaptive-Blend need the key (a batch with one key gets
        different randomness per image); the others ignore it.
      test_trigger: ``(images, key=None) -> images``, applied to the triggered TEST set
        (deterministic except WaNet with ``test_noise=True``, which needs the key).
      clean_label: poison only target-class samples and keep their labels (label-consistent, SIG).
      keep_label_fraction: fraction of the poisoned samples of each non-target class that keep
        their true label (Adaptive-Blend: 0.5).
      needs_perturbation: training poisons need a precomputed adversarial perturbation
        (label-consistent: add ``pgd_l2(..., train_params.pgd) - x`` before ``train_trigger``).
      optimised_pattern: the trigger pattern is still to be optimised against a clean model
        (TrojanNN without a ``pattern``: compute it with :func:`trojannn_pattern`; Grond: with
        :func:`grond_tuap`; then rebuild the attack with ``pattern=...``).
    """

    name: str
    train_trigger: Trigger
    test_trigger: Trigger
    clean_label: bool = False
    keep_label_fraction: float = 0.0
    needs_perturbation: bool = False
    optimised_pattern: bool = False

    @property
    def train_params(self) -> Any:
        """The training trigger's params dataclass."""
        return self.train_trigger.params

    @property
    def test_params(self) -> Any:
        """The test trigger's params dataclass."""
        return self.test_trigger.params

    def validate(self, image_shape: Any) -> None:
        """Raise a one-line ValueError if the triggers cannot apply to images of shape ``(..., H, W, C)``.

        Checks what depends on the images: patches that do not fit, patterns of the wrong shape,
        colours with the wrong number of channels, FTrojan positions outside its DCT blocks, ...
        Call it once the data set is loaded, before any training.
        """
        shape = image_hwc(image_shape)
        for side, params in (("train", self.train_params), ("test", self.test_params)):
            try:
                params.validate_shape(shape)
            except ValueError as err:
                raise ValueError(f"attack {self.name!r} ({side} trigger) on images {shape}: {err}") from None


def _spec(name: str) -> AttackSpec:
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown attack {name!r}; known attacks: {', '.join(ATTACKS)}") from None


def _split_overrides(spec: AttackSpec, overrides: Mapping[str, Any]) -> tuple[dict, dict]:
    fields = {f.name for f in dataclasses.fields(spec.params)}
    train: dict[str, Any] = {}
    test: dict[str, Any] = {}
    both: dict[str, Any] = {}
    for key, value in overrides.items():
        if key in fields:
            both[key] = value
        elif key.startswith("train_") and key[len("train_"):] in fields:
            train[key[len("train_"):]] = value
        elif key.startswith("test_") and key[len("test_"):] in fields:
            test[key[len("test_"):]] = value
        else:
            raise ValueError(
                f"unknown override {key!r} for attack {spec.name!r}; {spec.params.__name__} fields are "
                f"{sorted(fields)} (prefix with 'train_' or 'test_' to set one side only)"
            )
    return {**both, **train}, {**both, **test}


def get_attack(name: str, **overrides: Any) -> Attack:
    """Build the :class:`Attack` ``name`` with ibjax's defaults and the given overrides.

    Overrides are fields of the attack's params dataclass. A plain field name (``alpha=0.2``) sets
    the field for both the training and the test trigger; ``train_<field>`` / ``test_<field>``
    set one side only (e.g. ``get_attack("label_consistent", train_amplitude=16/255)``). Defaults
    that differ between sides: label-consistent amplitude 64/255 train / 1.0 test; Adaptive-Blend
    alpha 0.15 train (random half of the pieces masked per image) / 0.2 test (full pattern); WaNet
    noise warp on in training, off at test. Lists become tuples; pattern fields take an array or
    a path (``.npy`` or an image file). Every value is checked here, before any compilation.

    Equal arguments give equal (and equally hashing) attacks; nothing is cached.

    Raises:
      ValueError: an unknown attack name (the message lists :data:`ATTACKS`), an override that names
        no field, or a value of the wrong type or range (one line naming the field, the value and
        what was expected).
    """
    spec = _spec(name)
    train_over, test_over = _split_overrides(spec, overrides)
    sides = []
    for side, defaults, over, key_flag in (("train", spec.train_defaults, train_over, spec.train_key),
                                           ("test", spec.test_defaults, test_over, spec.test_key)):
        try:
            params = spec.params(**{**dict(defaults), **over})
        except ValueError as err:
            raise ValueError(f"attack {name!r}: {err}") from None
        sides.append(Trigger(spec.fn, params, _flag(key_flag, params)))
    train, test = sides
    return Attack(
        name=name,
        train_trigger=train,
        test_trigger=test,
        clean_label=spec.clean_label,
        keep_label_fraction=spec.keep_label_fraction,
        needs_perturbation=spec.needs_perturbation,
        optimised_pattern=_flag(spec.optimised_pattern, train.params),
    )


def reference_attack_overrides(name: str) -> dict[str, Any]:
    """Overrides that make ``get_attack(name, **overrides)`` reproduce the authors' generator.

    Only where ibjax's default differs from the authors' on purpose: WaNet ``test_noise=True``
    (noise warp on triggered test images too), label-consistent ``pgd_random_start=True``. Empty
    for the other attacks (their defaults are the authors' rules, or the authors have no such
    attack). The authors' Blend / Adaptive-Blend noise is a file of theirs
    (``poison_data_generator/trigger/Blendnoise.npy``): pass it as ``pattern=PATH``.
    """
    return dict(_spec(name).reference)
