"""Tests for ibjax.triggers.common, and the properties every trigger shares (shape, dtype, range,
jit / vmap, determinism)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ibjax import triggers as T
from ibjax.triggers import common

# The same shapes throughout, so that the jitted triggers compile once per shape for the whole file.
BATCH, SINGLE, GREY = (2, 32, 32, 3), (32, 32, 3), (28, 28, 1)
KEY = jax.random.PRNGKey(42)


def _images(shape, seed=0):
    # NumPy RNG: no jax.random program to compile per shape.
    return jnp.asarray(np.random.default_rng(seed).random(shape, dtype=np.float32))


def _triggers():
    """Every attack's training and test trigger, plus the label-consistent trigger with a perturbation."""
    out = []
    for name in T.ATTACKS:
        a = T.get_attack(name)
        out.append(pytest.param(a.train_trigger, id=f"{name}-train"))
        if a.test_trigger != a.train_trigger:
            out.append(pytest.param(a.test_trigger, id=f"{name}-test"))
    pert = lambda x, k=None: T.label_consistent(x, perturbation=0.2 * jnp.sin(40.0 * x))  # noqa: E731
    out.append(pytest.param(pert, id="label_consistent-perturbation"))
    return out


TRIGGERS = _triggers()
# Greyscale images at another size are a shape of their own: one more compilation per trigger. The
# training triggers cover the code paths for C = 1; the test variants differ from them only in
# parameter values.
GREY_TRIGGERS = [p for p in TRIGGERS if p.id.endswith("-train")]


def _uses_key(fn):
    return getattr(fn, "uses_key", False)


def _check_shape_dtype_range(fn, shape):
    x = _images(shape)
    y = fn(x, KEY)
    assert y.shape == x.shape and y.dtype == x.dtype
    y = np.asarray(y)
    assert np.all(np.isfinite(y)) and y.min() >= 0.0 and y.max() <= 1.0


# BATCH and SINGLE are the shapes test_jit_vmap_and_determinism compiles too: checking them here
# costs (almost) no compilation of its own.
@pytest.mark.parametrize("fn", TRIGGERS)
def test_shape_dtype_range(fn):
    for shape in (BATCH, SINGLE):
        _check_shape_dtype_range(fn, shape)


@pytest.mark.parametrize("fn", GREY_TRIGGERS)
def test_shape_dtype_range_greyscale(fn):
    _check_shape_dtype_range(fn, GREY)


@pytest.mark.parametrize("fn", TRIGGERS)
def test_jit_vmap_and_determinism(fn):
    x = _images(BATCH)
    eager = np.asarray(fn(x, KEY))
    np.testing.assert_array_equal(np.asarray(fn(x, KEY)), eager)  # same key, same output
    # Jitted and vmapped with one key per image: each lane is that image triggered alone with its key.
    keys = jax.random.split(KEY, 2)
    lanes = np.asarray(jax.jit(jax.vmap(fn))(x, keys))
    for i in range(2):
        np.testing.assert_allclose(lanes[i], np.asarray(fn(x[i], keys[i])), atol=1e-5)
    if not _uses_key(fn):  # deterministic: the batch call is the per-image map
        np.testing.assert_allclose(lanes, eager, atol=1e-5)
    else:  # one key for a batch still gives every image its own randomness
        twin = jnp.broadcast_to(x[:1], x.shape)
        y = np.asarray(fn(twin, KEY))
        assert not np.allclose(y[0], y[1])
        assert not np.allclose(np.asarray(fn(x, jax.random.PRNGKey(1))), eager)


@pytest.mark.parametrize("name", ["adaptive_blend", "ftrojan", "badnets"])
def test_multiple_leading_axes(name):
    fn = T.get_attack(name).train_trigger
    x = _images((2, 3, 16, 16, 3))
    y = fn(x, KEY)
    assert y.shape == x.shape and y.dtype == x.dtype
    if not fn.uses_key:
        np.testing.assert_allclose(np.asarray(y), np.asarray(fn(x.reshape(6, 16, 16, 3), KEY)).reshape(x.shape),
                                   atol=1e-6)


def test_bfloat16_dtype_kept_and_typed_keys_work():
    x = _images(BATCH).astype(jnp.bfloat16)
    for fn in (T.blend, T.ftrojan):
        y = fn(x)
        assert y.dtype == jnp.bfloat16 and y.shape == x.shape
    assert T.get_attack("adaptive_blend").train_trigger(_images(BATCH), jax.random.key(0)).shape == BATCH


def test_rejects_bad_inputs():
    with pytest.raises(ValueError, match="H, W, C"):
        T.blend(jnp.zeros((32, 32)))
    with pytest.raises(TypeError, match="floating"):
        T.blend(jnp.zeros((32, 32, 3), jnp.uint8))


# ---------------------------------------------------------------- Trigger


def test_trigger_hashes_by_value_and_needs_its_key():
    a = common.Trigger(T.blend, T.BlendParams(alpha=0.2))
    b = common.Trigger(T.blend, T.BlendParams(alpha=0.2))
    assert a == b and hash(a) == hash(b) and a is not b
    assert a != common.Trigger(T.blend, T.BlendParams(alpha=0.3))
    assert a != common.Trigger(T.badnets, T.BadNetsParams())
    keyed = common.Trigger(T.wanet, T.WaNetParams(), uses_key=True)
    with pytest.raises(ValueError, match="PRNG key"):
        keyed(_images(BATCH))
    np.testing.assert_allclose(np.asarray(a(_images(BATCH), KEY)), np.asarray(a(_images(BATCH))))  # key ignored


# ---------------------------------------------------------------- StaticArray


def test_static_array_hashes_by_content():
    p = np.random.default_rng(3).random((8, 8, 3), dtype=np.float32)
    s = T.StaticArray.of(p)
    assert s == T.StaticArray.of(p.copy()) and hash(s) == hash(T.StaticArray.of(p.copy()))
    assert s != T.StaticArray.of(p + 1e-3)
    np.testing.assert_array_equal(s.value, p)
    assert "shape=(8, 8, 3)" in repr(s) and len(repr(s)) < 80  # never the raw bytes


# ---------------------------------------------------------------- load_pattern


def test_load_pattern_scales_an_8bit_npy_like_the_authors_blend_noise(tmp_path):
    # The authors' Blendnoise.npy is uint8 [32, 32] in 0..255, used as np.load(...) / 255 with a
    # channel axis added.
    noise = np.random.default_rng(0).integers(0, 256, (32, 32), dtype=np.uint8)
    path = tmp_path / "noise.npy"
    np.save(path, noise)
    p = T.load_pattern(str(path))
    assert p.shape == (32, 32, 1) and p.dtype == np.float32
    np.testing.assert_allclose(p, np.expand_dims(noise / 255.0, -1), atol=1e-7)
    np.testing.assert_array_equal(T.load_pattern(path), p)  # a PathLike too
    np.testing.assert_array_equal(T.load_pattern(noise), p)  # the array itself
    floats = np.random.default_rng(1).random((32, 32, 3), dtype=np.float32)
    np.testing.assert_array_equal(T.load_pattern(floats), floats)  # floats in [0, 1] as they are


def test_load_pattern_reads_image_files_with_pillow(tmp_path):
    from PIL import Image

    rgb = np.random.default_rng(2).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "p.png")
    np.testing.assert_allclose(T.load_pattern(tmp_path / "p.png"), rgb / 255.0, atol=1e-7)
    Image.fromarray(rgb[..., 0]).save(tmp_path / "g.png")
    np.testing.assert_allclose(T.load_pattern(tmp_path / "g.png"), rgb[..., :1] / 255.0, atol=1e-7)
    rgba = np.concatenate([rgb, np.full((20, 24, 1), 128, np.uint8)], -1)
    Image.fromarray(rgba).save(tmp_path / "a.png")
    assert T.load_pattern(tmp_path / "a.png").shape == (20, 24, 3)  # alpha dropped


@pytest.mark.parametrize(
    "make, kwargs, match",
    [
        (lambda d: str(d / "missing.npy"), {}, "does not exist"),
        (lambda d: (d / "bad.png").write_text("not an image") and str(d / "bad.png"), {}, "not a readable image"),
        (lambda d: (d / "bad.npy").write_text("junk") and str(d / "bad.npy"), {}, "not a readable .npy"),
        (lambda d: np.full((4, 4), 200.0), {}, r"\[0, 1\]"),
        (lambda d: np.full((4, 4), 300, np.int32), {}, "0..255"),
        (lambda d: np.zeros((2, 4, 4, 3)), {}, r"\[H, W\]"),
        (lambda d: np.full((4, 4), np.nan), {"signed": True}, "NaN"),
        (lambda d: np.zeros((4, 4), np.uint8), {"signed": True}, "floating"),
    ],
)
def test_load_pattern_errors_name_the_problem(tmp_path, make, kwargs, match):
    with pytest.raises(ValueError, match=match):
        T.load_pattern(make(tmp_path), **kwargs)


def test_signed_patterns_keep_negative_values():
    delta = np.linspace(-0.1, 0.1, 48, dtype=np.float32).reshape(4, 4, 3)
    np.testing.assert_array_equal(T.load_pattern(delta, signed=True), delta)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        T.load_pattern(delta)
