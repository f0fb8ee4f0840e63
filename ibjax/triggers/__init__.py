"""Backdoor triggers as pure ``jax.numpy`` functions, and the attack registry.

One module per kind of trigger:

* :mod:`~ibjax.triggers.patch`: :func:`badnets`, :func:`trojannn` (pattern from
  :func:`trojannn_pattern`);
* :mod:`~ibjax.triggers.blend`: :func:`blend`, :func:`adaptive_blend`;
* :mod:`~ibjax.triggers.warp`: :func:`wanet`;
* :mod:`~ibjax.triggers.adversarial`: :func:`pgd_l2`, :func:`label_consistent`;
* :mod:`~ibjax.triggers.signal`: :func:`sig`;
* :mod:`~ibjax.triggers.frequency`: :func:`ftrojan`, :func:`low_frequency` (optionally the UAP of
  :func:`low_frequency_uap`);
* :mod:`~ibjax.triggers.quantise`: :func:`bpp`;
* :mod:`~ibjax.triggers.universal`: :func:`grond` (the targeted universal perturbation of
  :func:`grond_tuap`, clean-label);
* :mod:`~ibjax.triggers.common`: the conventions every trigger follows, :class:`Trigger`,
  :class:`StaticArray`, :func:`load_pattern`;
* :mod:`~ibjax.triggers.registry`: :data:`REGISTRY` / :data:`ATTACKS`, :func:`get_attack` ->
  :class:`Attack` (``train_trigger(images, key=None)``, ``test_trigger(images, key=None)``,
  ``validate(image_shape)``), :func:`reference_attack_overrides`.

Images are ``[..., H, W, C]`` floats in [0, 1]; every trigger is a pure function of
``(images, params[, key])``, usable under jit, vmap and grad.
"""

from ibjax.triggers.adversarial import LabelConsistentParams, PGDParams, label_consistent, pgd_l2
from ibjax.triggers.universal import GrondParams, grond, grond_tuap
from ibjax.triggers.blend import (
    AdaptiveBlendParams,
    BlendParams,
    adaptive_blend,
    adaptive_blend_mask,
    blend,
    blend_pattern,
)
from ibjax.triggers.common import StaticArray, Trigger, load_pattern, uniform_pattern
from ibjax.triggers.frequency import (
    FTrojanParams,
    LowFrequencyParams,
    ftrojan,
    low_frequency,
    low_frequency_pattern,
    low_frequency_uap,
)
from ibjax.triggers.patch import BadNetsParams, TrojanNNParams, badnets, trojannn, trojannn_pattern
from ibjax.triggers.quantise import BPPParams, bpp
from ibjax.triggers.registry import ATTACKS, REGISTRY, Attack, AttackSpec, get_attack, reference_attack_overrides
from ibjax.triggers.signal import SIGParams, sig
from ibjax.triggers.warp import WaNetParams, bilinear_sample, wanet, wanet_field

__all__ = [
    # registry
    "Attack",
    "AttackSpec",
    "ATTACKS",
    "REGISTRY",
    "get_attack",
    "reference_attack_overrides",
    # shared pieces
    "Trigger",
    "StaticArray",
    "load_pattern",
    "uniform_pattern",
    # params
    "BadNetsParams",
    "BlendParams",
    "WaNetParams",
    "PGDParams",
    "LabelConsistentParams",
    "AdaptiveBlendParams",
    "SIGParams",
    "FTrojanParams",
    "BPPParams",
    "TrojanNNParams",
    "LowFrequencyParams",
    "GrondParams",
    "grond",
    "grond_tuap",
    # triggers and their helpers
    "badnets",
    "trojannn",
    "trojannn_pattern",
    "blend",
    "blend_pattern",
    "adaptive_blend",
    "adaptive_blend_mask",
    "wanet",
    "wanet_field",
    "bilinear_sample",
    "pgd_l2",
    "label_consistent",
    "sig",
    "ftrojan",
    "low_frequency",
    "low_frequency_pattern",
    "low_frequency_uap",
    "bpp",
]
