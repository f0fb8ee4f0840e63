"""Tests for ibjax.triggers.registry: one registry, attacks that hash by value, early validation."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ibjax import triggers as T
from ibjax.triggers import registry

KEY = jax.random.PRNGKey(0)


def _images(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).random(shape, dtype=np.float32))


def test_registry_contents_and_flags():
    assert T.ATTACKS == ("badnets", "blend", "wanet", "label_consistent", "adaptive_blend", "sig", "ftrojan", "bpp",
                         "trojannn", "low_frequency", "grond")
    assert T.ATTACKS == tuple(T.REGISTRY)
    for name in T.ATTACKS:
        a = T.get_attack(name)
        spec = T.REGISTRY[name]
        assert isinstance(a, T.Attack) and a.name == name
        assert isinstance(a.train_params, spec.params) and isinstance(a.test_params, spec.params)
        assert a.train_trigger.fn is spec.fn and a.test_trigger.fn is spec.fn
    clean = {n for n in T.ATTACKS if T.get_attack(n).clean_label}
    keyed = {n for n in T.ATTACKS if T.get_attack(n).train_trigger.uses_key}
    assert clean == {"label_consistent", "sig", "grond"} and keyed == {"wanet", "adaptive_blend"}
    assert [n for n in T.ATTACKS if T.get_attack(n).needs_perturbation] == ["label_consistent"]
    assert [n for n in T.ATTACKS if T.get_attack(n).keep_label_fraction] == ["adaptive_blend"]
    assert [n for n in T.ATTACKS if T.get_attack(n).optimised_pattern] == ["trojannn", "grond"]
    with pytest.raises(TypeError):
        T.REGISTRY["mine"] = T.REGISTRY["badnets"]  # read-only


def test_attacks_compare_and_hash_by_value():
    p = np.random.default_rng(3).random((16, 16, 3), dtype=np.float32)
    for kwargs in ({"name": "wanet", "s": 0.4}, {"name": "trojannn", "pattern": p}, {"name": "ftrojan",
                                                                                     "positions": [[1, 2]]}):
        a = T.get_attack(**kwargs)
        b = T.get_attack(**{k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in kwargs.items()})
        assert a == b and hash(a) == hash(b) and a is not b
        assert hash(a.train_trigger) == hash(b.train_trigger)
    assert T.get_attack("wanet", s=0.4) != T.get_attack("wanet", s=0.5)
    assert T.get_attack("trojannn", pattern=p) != T.get_attack("trojannn", pattern=p * 0.5)


def test_a_jitted_step_with_the_attack_static_traces_once():
    traces = []

    @functools.partial(jax.jit, static_argnames=("attack",))
    def step(x, key, attack):
        traces.append(attack.name)  # a Python side effect: runs once per trace
        return attack.train_trigger(x, key), attack.test_trigger(x, key)

    x = _images((2, 16, 16, 3))
    p = np.random.default_rng(1).random((16, 16, 3), dtype=np.float32)
    for _ in range(3):  # built afresh each time: equal settings, no cache
        step(x, KEY, attack=T.get_attack("sig", delta=0.1, f=3))
        step(x, KEY, attack=T.get_attack("trojannn", pattern=p.copy()))
    assert traces == ["sig", "trojannn"]
    # The triggers alone as static arguments too (how train_step takes them).
    count = []

    @functools.partial(jax.jit, static_argnames=("trigger",))
    def apply(x, key, trigger):
        count.append(1)
        return trigger(x, key)

    apply(x, KEY, trigger=T.get_attack("adaptive_blend").train_trigger)
    apply(x, KEY, trigger=T.get_attack("adaptive_blend").train_trigger)
    assert len(count) == 1


def test_overrides_set_one_or_both_sides():
    x = _images((2, 32, 32, 3))
    a = T.get_attack("blend", alpha=0.2)
    for trig in (a.train_trigger, a.test_trigger):
        np.testing.assert_allclose(np.asarray(trig(x)), np.asarray(T.blend(x, T.BlendParams(alpha=0.2))))
    ab = T.get_attack("adaptive_blend", test_alpha=0.3, seed=5)
    assert ab.train_params == T.AdaptiveBlendParams(alpha=0.15, seed=5)
    assert ab.test_params == T.AdaptiveBlendParams(alpha=0.3, seed=5)
    lc = T.get_attack("label_consistent", train_amplitude=16 / 255)
    assert lc.train_params.amplitude == pytest.approx(16 / 255) and lc.test_params.amplitude == 1.0
    ft = T.get_attack("ftrojan", positions=[[15, 15]], channels=[1])  # lists become tuples
    assert ft.test_params.positions == ((15, 15),) and ft.test_params.channels == (1,)
    assert ft == T.get_attack("ftrojan", positions=((15, 15),), channels=(1,))
    assert T.get_attack("badnets", size=3.0).train_params.size == 3  # a whole float is an int


@pytest.mark.parametrize(
    "name, overrides, match",
    [
        ("nope", {}, "known attacks: badnets"),
        ("blend", {"not_a_field": 1}, "not_a_field"),
        ("badnets", {"alpha": 0.1}, "BadNetsParams fields"),
        ("blend", {"test_nothing": 0.1}, "test_nothing"),
        ("badnets", {"size": "abc"}, r"BadNetsParams.size = 'abc': expected an integer"),
        ("badnets", {"size": 2.5}, r"size = 2.5: expected an integer"),
        ("badnets", {"size": 0}, r"size = 0: expected an integer >= 1"),
        ("badnets", {"colour": "red"}, r"colour = 'red': expected a list"),
        ("badnets", {"colour": [1.0, 2.0, 0.0]}, r"colour = \(1.0, 2.0, 0.0\): expected one value in \[0, 1\]"),
        ("blend", {"alpha": 1.5}, r"alpha = 1.5: expected a number in \[0.0, 1.0\]"),
        ("blend", {"alpha": True}, r"alpha = True: expected a number"),
        ("wanet", {"test_noise": "maybe"}, r"noise = 'maybe': expected true or false"),  # text reads as the type: 'yes' is true
        ("ftrojan", {"positions": [1, 2]}, r"positions = \[1, 2\]"),
        ("ftrojan", {"channels": [3]}, r"channels = \(3,\)"),
        ("blend", {"pattern": 3.0}, r"pattern = 3.0: expected an array or a path"),
        ("label_consistent", {"pgd_steps": -1}, r"steps = -1"),
    ],
)
def test_bad_overrides_fail_at_get_attack_in_one_line(name, overrides, match):
    with pytest.raises(ValueError, match=match) as err:
        T.get_attack(name, **overrides)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "name, overrides, shape, match",
    [
        ("badnets", {"size": 100}, (28, 28, 1), "does not fit in 28x28"),
        ("badnets", {"row": 30}, (32, 32, 3), "does not fit"),
        ("badnets", {"colour": [1.0, 0.0]}, (32, 32, 3), "2 values but the images have 3 channels"),
        ("trojannn", {"size": 40}, (32, 32, 3), "does not fit"),
        ("trojannn", {"pattern": np.zeros((32, 32, 3))}, (32, 32, 1), r"\(32, 32, 1\)"),
        ("blend", {"pattern": np.zeros((16, 16))}, (32, 32, 3), "images' size"),
        ("adaptive_blend", {"pattern": np.zeros((32, 32, 2))}, (32, 32, 3), "shape"),
        ("low_frequency", {"pattern": np.zeros((32, 32, 3))}, (28, 28, 1), "shape"),
        ("ftrojan", {"positions": [[40, 0]]}, (32, 32, 3), "outside the 32x32 DCT blocks"),
        ("ftrojan", {}, (32, 32, 2), "1- or 3-channel"),
        ("label_consistent", {"size": 20}, (32, 32, 3), "overlap"),
        ("wanet", {}, (1, 8, 3), "at least 2x2"),
        ("badnets", {}, (32, 32), r"\(\.\.\., H, W, C\)"),
    ],
)
def test_validate_refuses_triggers_that_cannot_apply(name, overrides, shape, match):
    a = T.get_attack(name, **overrides)
    with pytest.raises(ValueError, match=match) as err:
        a.validate(shape)
    assert "\n" not in str(err.value)


def test_defaults_apply_to_the_usual_image_shapes():
    for name in T.ATTACKS:
        for shape in [(32, 32, 3), (28, 28, 1), (50000, 32, 32, 3)]:
            T.get_attack(name).validate(shape)


def test_reference_overrides():
    assert T.reference_attack_overrides("wanet") == {"test_noise": True}
    assert T.reference_attack_overrides("label_consistent") == {"pgd_random_start": True}
    for name in T.ATTACKS:
        over = T.reference_attack_overrides(name)
        T.get_attack(name, **over)  # every reference set is valid
        assert over is not T.reference_attack_overrides(name)  # a fresh dict: the registry cannot change
    with pytest.raises(ValueError, match="unknown attack"):
        T.reference_attack_overrides("nope")


def test_attack_is_frozen_and_documents_its_params():
    a = T.get_attack("label_consistent")
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.name = "x"  # type: ignore[misc]
    assert a.train_params is a.train_trigger.params and a.test_params is a.test_trigger.params
    assert set(registry.__all__) <= set(T.__all__)
