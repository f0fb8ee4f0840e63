"""Tests for ibjax.triggers."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ibjax import triggers as T

SHAPES = [(2, 32, 32, 3), (2, 28, 28, 1), (32, 32, 3)]


def _images(shape, seed=0):
    # numpy RNG: avoids compiling a jax.random program for every test shape.
    return jnp.asarray(np.random.default_rng(seed).random(shape, dtype=np.float32))


KEY = jax.random.PRNGKey(42)

# Direct trigger functions as (images, key) -> images.
DIRECT = {
    "badnets": lambda x, k: T.badnets(x),
    "blend": lambda x, k: T.blend(x),
    "wanet": lambda x, k: T.wanet(x),
    "wanet_noise": lambda x, k: T.wanet(x, key=k),
    "label_consistent": lambda x, k: T.label_consistent(x),
    "label_consistent_pert": lambda x, k: T.label_consistent(
        x, perturbation=0.2 * jnp.sin(40.0 * x)
    ),
    "adaptive_blend": lambda x, k: T.adaptive_blend(x),
    "adaptive_blend_masked": lambda x, k: T.adaptive_blend(x, key=k),
    "sig": lambda x, k: T.sig(x),
    "ftrojan": lambda x, k: T.ftrojan(x),
    "bpp": lambda x, k: T.bpp(x),
    "trojannn": lambda x, k: T.trojannn(x),
    "low_frequency": lambda x, k: T.low_frequency(x),
}


def _all_triggers():
    out = [pytest.param(f, id=f"direct-{n}") for n, f in DIRECT.items()]
    for name in T.ATTACKS:
        a = T.get_attack(name)
        out.append(pytest.param(a.train_trigger, id=f"{name}-train"))
        out.append(pytest.param(a.test_trigger, id=f"{name}-test"))
    return out


ALL_TRIGGERS = _all_triggers()
DIRECT_TRIGGERS = [pytest.param(f, id=n) for n, f in DIRECT.items()]


# ---------------------------------------------------------------- generic


@pytest.mark.parametrize("fn", ALL_TRIGGERS)
def test_shape_dtype_range(fn):
    for shape in SHAPES:
        x = _images(shape)
        y = fn(x, KEY)
        assert y.shape == x.shape
        assert y.dtype == x.dtype
        y = np.asarray(y)
        assert np.all(np.isfinite(y))
        assert y.min() >= 0.0 and y.max() <= 1.0


@pytest.mark.parametrize("fn", DIRECT_TRIGGERS)
def test_jit_matches_eager_and_deterministic(fn):
    x = _images((3, 16, 16, 3))
    eager = fn(x, KEY)
    jitted = jax.jit(fn)(x, KEY)
    np.testing.assert_allclose(np.asarray(eager), np.asarray(jitted), atol=1e-5)
    np.testing.assert_array_equal(np.asarray(fn(x, KEY)), np.asarray(eager))


@pytest.mark.parametrize("fn", DIRECT_TRIGGERS)
def test_vmap_with_per_image_keys(fn):
    x = _images((3, 16, 16, 3))
    keys = jax.random.split(KEY, 3)
    y = jax.vmap(fn)(x, keys)
    assert y.shape == x.shape and y.dtype == x.dtype
    # Each vmapped lane equals applying the trigger to that single image with its key.
    for i in range(3):
        np.testing.assert_allclose(
            np.asarray(y[i]), np.asarray(fn(x[i], keys[i])), atol=1e-5
        )


DETERMINISTIC = ["badnets", "blend", "wanet", "label_consistent", "adaptive_blend",
                 "sig", "ftrojan", "bpp", "trojannn", "low_frequency"]


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_vmap_equals_batch_for_deterministic(name):
    fn = DIRECT[name]
    x = _images((5, 32, 32, 3), seed=1)
    batched = fn(x, KEY)
    vm = jax.vmap(lambda im: fn(im, KEY))(x)
    np.testing.assert_allclose(np.asarray(vm), np.asarray(batched), atol=1e-6)


@pytest.mark.parametrize("name", ["wanet_noise", "adaptive_blend_masked", "ftrojan", "badnets"])
def test_multiple_leading_axes(name):
    fn = DIRECT[name]
    x = _images((2, 3, 16, 16, 3))
    y = fn(x, KEY)
    assert y.shape == x.shape and y.dtype == x.dtype
    if name in ("ftrojan", "badnets"):
        np.testing.assert_allclose(
            np.asarray(y), np.asarray(fn(x.reshape(6, 16, 16, 3), KEY)).reshape(x.shape), atol=1e-6
        )


def test_bfloat16_dtype_kept():
    x = _images((2, 16, 16, 3)).astype(jnp.bfloat16)
    for fn in (T.blend, T.wanet, T.ftrojan):
        y = fn(x)
        assert y.dtype == jnp.bfloat16 and y.shape == x.shape


def test_typed_keys_work():
    x = _images((2, 16, 16, 3))
    k = jax.random.key(0)
    assert T.wanet(x, key=k).shape == x.shape
    assert T.adaptive_blend(x, key=k).shape == x.shape


def test_rejects_bad_inputs():
    with pytest.raises(ValueError):
        T.blend(jnp.zeros((32, 32)))
    with pytest.raises(TypeError):
        T.blend(jnp.zeros((32, 32, 3), jnp.uint8))


# ---------------------------------------------------------------- BadNets


@pytest.mark.parametrize("shape", [(4, 32, 32, 3), (32, 32, 3), (3, 28, 28, 1)])
def test_badnets_patch_only(shape):
    x = _images(shape)
    y = np.asarray(T.badnets(x))
    x = np.asarray(x)
    c = shape[-1]
    patch = y[..., :5, :5, :]
    expected = np.array([1.0, 0.0, 0.0]) if c == 3 else np.array([1.0])  # white on grey images
    np.testing.assert_allclose(patch, np.broadcast_to(expected, patch.shape), atol=1e-7)
    mask = np.zeros(shape[-3:], bool)
    mask[:5, :5, :] = True
    mask = np.broadcast_to(mask, shape)
    np.testing.assert_array_equal(y[~mask], x[~mask])


def test_badnets_grey_and_position():
    x = _images((2, 28, 28, 1))
    y = np.asarray(T.badnets(x, T.BadNetsParams(grey=1.0, row=20, col=21, size=3)))
    np.testing.assert_array_equal(y[:, 20:23, 21:24], 1.0)
    assert np.array_equal(y[:, :20], np.asarray(x)[:, :20])
    # Patch cut at the border.
    y = np.asarray(T.badnets(x, T.BadNetsParams(grey=0.0, row=26, col=26, size=5)))
    np.testing.assert_array_equal(y[:, 26:, 26:], 0.0)


# ---------------------------------------------------------------- Blend


def test_blend_identity_and_formula():
    x = _images((3, 32, 32, 3))
    np.testing.assert_array_equal(np.asarray(T.blend(x, T.BlendParams(alpha=0.0))), np.asarray(x))
    p = T.blend_pattern(32, 32, 0)
    assert p.shape == (32, 32, 1)
    y = T.blend(x)
    np.testing.assert_allclose(np.asarray(y), np.asarray(0.7 * x + 0.3 * p), atol=1e-6)
    # Same for every channel offset, and different seeds give different patterns.
    assert not np.allclose(np.asarray(T.blend_pattern(32, 32, 1)), np.asarray(p))
    # Works at other sizes.
    assert T.blend(_images((28, 28, 1))).shape == (28, 28, 1)


# ---------------------------------------------------------------- WaNet


@pytest.mark.parametrize("shape", [(3, 32, 32, 3), (28, 28, 1), (2, 20, 24, 3)])
def test_wanet_zero_strength_is_identity(shape):
    x = _images(shape)
    y = T.wanet(x, T.WaNetParams(s=0.0))
    np.testing.assert_allclose(np.asarray(y), np.asarray(x), atol=1e-6)


def test_wanet_default_changes_image_a_little():
    x = _images((4, 32, 32, 3))
    d = np.abs(np.asarray(T.wanet(x)) - np.asarray(x))
    assert d.max() > 1e-3


def test_wanet_warp_moves_smooth_image_subpixel():
    # On a linear ramp, bilinear sampling returns the sample position itself,
    # so the displacement is visible directly and bounded by s * max|field| / H.
    h = w = 32
    ramp = jnp.broadcast_to(jnp.linspace(0.0, 1.0, w)[None, :, None], (h, w, 1))
    y = T.wanet(ramp)
    field = T.wanet_field(h, w)
    # Displacement in grid units is 0.5 * field / H; in [0,1] ramp units half that.
    expected = jnp.clip(jnp.linspace(-1, 1, w)[None, :] + 0.5 * field[..., 0] / h, -1, 1)
    np.testing.assert_allclose(np.asarray(y[..., 0]), np.asarray((expected + 1) / 2), atol=1e-5)


def test_wanet_noise_mode_keys():
    x = _images((4, 32, 32, 3))
    a = T.wanet(x, key=jax.random.PRNGKey(0))
    b = T.wanet(x, key=jax.random.PRNGKey(0))
    c = T.wanet(x, key=jax.random.PRNGKey(1))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.allclose(np.asarray(a), np.asarray(c))
    assert not np.allclose(np.asarray(a), np.asarray(T.wanet(x)))
    # Same image repeated in the batch gets different noise.
    rep = jnp.broadcast_to(x[:1], (2, 32, 32, 3))
    r = np.asarray(T.wanet(rep, key=jax.random.PRNGKey(0)))
    assert not np.allclose(r[0], r[1])


def test_wanet_field_is_aligned_bicubic_through_the_control_grid():
    # WaNet upsamples with align_corners=True: the corner samples are the corner control values, and
    # a field upsampled to k x k is the control grid itself.
    k, seed = 4, 3
    ins = np.random.default_rng(seed).uniform(-1.0, 1.0, (k, k, 2))
    ins = ins / np.mean(np.abs(ins))
    field = np.asarray(T.wanet_field(32, 32, k, seed))
    for r, c in [(0, 0), (0, -1), (-1, 0), (-1, -1)]:
        np.testing.assert_allclose(field[r, c], ins[r, c], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(T.wanet_field(k, k, k, seed)), ins, rtol=1e-6)
    # Keys' kernel: weights sum to 1 for any a, and with a = -0.5 they reproduce a linear function.
    t = np.linspace(0.0, 1.0, 11)
    np.testing.assert_allclose(T._cubic_weights(t).sum(1), 1.0, atol=1e-12)
    np.testing.assert_allclose(T._cubic_weights(t, a=-0.5) @ np.arange(-1.0, 3.0), t, atol=1e-12)
    np.testing.assert_allclose(T._bicubic_matrix(31, 7).sum(1), 1.0, atol=1e-12)


def test_wanet_field_matches_torch_bicubic_align_corners():
    torch = pytest.importorskip("torch")
    k = 4
    ins = np.random.default_rng(0).uniform(-1.0, 1.0, (k, k, 2))
    ins = ins / np.mean(np.abs(ins))
    up = torch.nn.functional.interpolate(
        torch.tensor(ins.transpose(2, 0, 1)[None]), size=(32, 32), mode="bicubic", align_corners=True
    )[0].numpy().transpose(1, 2, 0)
    np.testing.assert_allclose(np.asarray(T.wanet_field(32, 32, k, 0)), up, atol=1e-5)


@pytest.mark.parametrize("shape,rescale", [((2, 32, 32, 3), 1.0), ((20, 24, 1), 1.0), ((2, 16, 16, 3), 0.9)])
def test_wanet_matches_grid_formulation(shape, rescale):
    # WaNet's definition: clamp((identity + s * field / H) * rescale) then grid-sample.
    x = _images(shape)
    h, w = shape[-3:-1]
    p = T.WaNetParams(s=2.0, grid_rescale=rescale)
    grid = jnp.clip((T._identity_grid(h, w) + p.s * T.wanet_field(h, w) / h) * rescale, -1, 1)
    np.testing.assert_allclose(
        np.asarray(T.wanet(x, p)), np.asarray(T.bilinear_sample(x, grid)), atol=1e-5
    )


def test_bilinear_sample_identity_and_border():
    x = _images((2, 8, 10, 3))
    g = T._identity_grid(8, 10)
    np.testing.assert_allclose(np.asarray(T.bilinear_sample(x, g)), np.asarray(x), atol=1e-6)
    # Out-of-range positions read the nearest border pixel.
    g2 = jnp.full((8, 10, 2), 5.0)
    out = T.bilinear_sample(x, g2)
    np.testing.assert_allclose(
        np.asarray(out), np.broadcast_to(np.asarray(x)[:, -1:, -1:, :], out.shape), atol=1e-6
    )


# ---------------------------------------------------------------- PGD


def _linear_model(d, k=10, seed=0):
    w = jax.random.normal(jax.random.PRNGKey(seed), (d, k)) * 0.05

    def logits_fn(x):
        return x.reshape(x.shape[0], -1) @ w

    return logits_fn


def _ce(logits_fn, x, y):
    logp = jax.nn.log_softmax(logits_fn(x))
    return -jnp.take_along_axis(logp, y[:, None], axis=1)[:, 0]


def test_pgd_l2_increases_loss_within_ball():
    x = _images((6, 8, 8, 3))
    logits_fn = _linear_model(8 * 8 * 3)
    y = jnp.argmax(logits_fn(x), axis=1)  # "true" labels = clean predictions
    params = T.PGDParams()
    adv = jax.jit(functools.partial(T.pgd_l2, logits_fn))(x, y)
    assert adv.shape == x.shape and adv.dtype == x.dtype
    adv_np = np.asarray(adv)
    assert adv_np.min() >= 0.0 and adv_np.max() <= 1.0
    norms = np.sqrt(np.sum((adv_np - np.asarray(x)) ** 2, axis=(1, 2, 3)))
    assert np.all(norms <= params.eps + 1e-4)
    assert np.all(norms > 0.1 * params.eps)
    before = np.asarray(_ce(logits_fn, x, y))
    after = np.asarray(_ce(logits_fn, adv, y))
    assert np.all(after > before)


def test_pgd_l2_small_budget_and_zero_steps():
    x = _images((3, 8, 8, 1))
    logits_fn = _linear_model(64, seed=1)
    y = jnp.array([0, 1, 2])
    same = T.pgd_l2(logits_fn, x, y, T.PGDParams(steps=0))
    np.testing.assert_array_equal(np.asarray(same), np.asarray(x))
    p = T.PGDParams(eps=0.05, step_size=0.02, steps=10)
    adv = T.pgd_l2(logits_fn, x, y, p)
    norms = np.sqrt(np.sum((np.asarray(adv) - np.asarray(x)) ** 2, axis=(1, 2, 3)))
    assert np.all(norms <= 0.05 + 1e-4)


# ---------------------------------------------------------------- label-consistent


@pytest.mark.parametrize("shape", [(3, 32, 32, 3), (28, 28, 1)])
def test_label_consistent_test_amplitude_checkerboard(shape):
    x = _images(shape)
    y = np.asarray(T.get_attack("label_consistent").test_trigger(x, None))
    assert np.array_equal(y, np.asarray(T.label_consistent(x, T.LabelConsistentParams(amplitude=1.0))))
    board = np.array([[1, 0, 1], [0, 1, 0], [1, 0, 1]], np.float32)[:, :, None]
    for sl in [(slice(0, 3), slice(0, 3)), (slice(0, 3), slice(-3, None)),
               (slice(-3, None), slice(0, 3)), (slice(-3, None), slice(-3, None))]:
        corner = y[..., sl[0], sl[1], :]
        np.testing.assert_array_equal(corner, np.broadcast_to(board, corner.shape))
    # Everything outside the corners is untouched.
    mask = np.ones(shape[-3:], bool)
    for r in (slice(0, 3), slice(-3, None)):
        for c in (slice(0, 3), slice(-3, None)):
            mask[r, c, :] = False
    mask = np.broadcast_to(mask, shape)
    np.testing.assert_array_equal(y[mask], np.asarray(x)[mask])


def test_label_consistent_train_amplitude_and_perturbation():
    x = jnp.full((2, 32, 32, 3), 0.5)
    y = np.asarray(T.get_attack("label_consistent").train_trigger(x, None))
    a = 64 / 255
    np.testing.assert_allclose(y[:, 0, 0], 0.5 + a, atol=1e-6)
    np.testing.assert_allclose(y[:, 0, 1], 0.5 - a, atol=1e-6)
    np.testing.assert_allclose(y[:, -1, -1], 0.5 + a, atol=1e-6)
    np.testing.assert_allclose(y[:, 10, 10], 0.5, atol=1e-7)
    pert = jnp.full(x.shape, 0.7)
    z = np.asarray(T.label_consistent(x, perturbation=pert))
    np.testing.assert_allclose(z[:, 10, 10], 1.0)  # clipped perturbation
    np.testing.assert_allclose(z[:, 0, 1], 1.0 - a, atol=1e-6)  # clipped, then stamped


# ---------------------------------------------------------------- Adaptive-Blend


def _piece_changed(x, y, grid=4):
    """[..., grid*grid] bool: whether each piece of y differs from x."""
    d = np.abs(np.asarray(y) - np.asarray(x)).max(axis=-1)
    h, w = d.shape[-2:]
    d = d.reshape(d.shape[:-2] + (grid, h // grid, grid, w // grid))
    return (d.max(axis=(-3, -1)) > 0).reshape(d.shape[:-4] + (grid * grid,))


def test_adaptive_blend_masks_exactly_half():
    x = _images((16, 32, 32, 3))
    y = T.adaptive_blend(x, key=jax.random.PRNGKey(3))
    changed = _piece_changed(x, y)
    np.testing.assert_array_equal(changed.sum(axis=-1), 8)
    # Different images in one batch get different masks.
    assert len({tuple(r) for r in changed}) > 1
    # Applied pieces equal the full blend there; masked pieces untouched.
    full = np.asarray(T.adaptive_blend(x))
    mask = np.asarray(T.adaptive_blend_mask(jax.random.PRNGKey(3), (16,), 32, 32))
    assert mask.shape == (16, 32, 32, 1)
    np.testing.assert_array_equal(mask.reshape(16, -1).sum(axis=1), 32 * 32 // 2)
    yb = np.asarray(y)
    mb = np.broadcast_to(mask, yb.shape)
    np.testing.assert_allclose(yb[mb], full[mb], atol=1e-7)
    np.testing.assert_array_equal(yb[~mb], np.asarray(x)[~mb])


def test_adaptive_blend_non_divisible_size_and_keys():
    x = _images((5, 28, 28, 1))
    m = np.asarray(T.adaptive_blend_mask(jax.random.PRNGKey(0), (5,), 28, 28))
    # 28 = 7 * 4: each kept piece is 7x7 -> exactly half the pixels.
    np.testing.assert_array_equal(m.reshape(5, -1).sum(axis=1), 28 * 28 // 2)
    a = T.adaptive_blend(x, key=jax.random.PRNGKey(0))
    b = T.adaptive_blend(x, key=jax.random.PRNGKey(0))
    c = T.adaptive_blend(x, key=jax.random.PRNGKey(1))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.allclose(np.asarray(a), np.asarray(c))
    m30 = np.asarray(T.adaptive_blend_mask(jax.random.PRNGKey(0), (), 30, 30))
    assert m30.shape == (30, 30, 1)


def test_adaptive_blend_attack_alphas():
    a = T.get_attack("adaptive_blend")
    assert a.keep_label_fraction == 0.5
    assert a.train_params.alpha == 0.15 and a.test_params.alpha == 0.2
    x = _images((2, 32, 32, 3))
    np.testing.assert_allclose(
        np.asarray(a.test_trigger(x, None)),
        np.asarray(0.8 * x + 0.2 * T.blend_pattern(32, 32, 0)),
        atol=1e-6,
    )
    with pytest.raises(ValueError):
        a.train_trigger(x, None)


# ---------------------------------------------------------------- SIG, FTrojan, BPP


def test_sig_formula():
    x = jnp.full((2, 32, 32, 3), 0.5)
    y = np.asarray(T.sig(x))
    j = np.arange(32)
    expected = 0.5 + 40 / 255 * np.sin(2 * np.pi * j * 6 / 32)
    np.testing.assert_allclose(y[0, 5, :, 1], expected, atol=1e-6)
    np.testing.assert_array_equal(y[:, 0], y[:, 17])


@pytest.mark.parametrize("shape", [(3, 32, 32, 3), (28, 28, 1), (2, 64, 64, 3), (2, 40, 24, 3)])
def test_ftrojan_identity_and_small_change(shape):
    x = _images(shape)
    ident = T.ftrojan(x, T.FTrojanParams(magnitude=0.0))
    np.testing.assert_allclose(np.asarray(ident), np.asarray(x), atol=1e-5)
    y = np.asarray(T.ftrojan(x))
    d = np.abs(y - np.asarray(x))
    assert d.max() < 0.1
    assert d.max() > 1e-3


def test_ftrojan_adds_coefficients():
    # Mid-grey image: no clipping, so the DCT of the UV change is exactly the trigger.
    x = jnp.full((32, 32, 3), 0.5)
    y = T.ftrojan(x)
    m = jnp.asarray(T._RGB2YCRCB, jnp.float32)
    d = T._dct_matrix(32)
    yuv_diff = np.einsum("hwc,dc->hwd", np.asarray(y - x), np.asarray(m))
    coeffs = np.einsum("ki,ijc,lj->klc", d, yuv_diff, d)
    expected = np.zeros((32, 32, 3))
    expected[15, 15, 1:] = expected[31, 31, 1:] = 30 / 255
    np.testing.assert_allclose(coeffs, expected, atol=1e-5)


def test_ftrojan_uses_full_range_ycrcb_like_opencv():
    # OpenCV's RGB2YCrCb for floats: Cr = (R - Y) 0.713 + 0.5, Cb = (B - Y) 0.564 + 0.5. Adding m to
    # Cr and Cb moves R, G, B by about (1.403, -1.058, 1.773) m.
    rgb = np.random.default_rng(0).uniform(size=(50, 3))
    y = rgb @ np.array([0.299, 0.587, 0.114])
    ycrcb = np.stack([y, (rgb[:, 0] - y) * 0.713, (rgb[:, 2] - y) * 0.564], -1)
    np.testing.assert_allclose(rgb @ T._RGB2YCRCB.T, ycrcb, atol=1e-12)
    np.testing.assert_allclose(T._YCRCB2RGB @ np.array([0.0, 1.0, 1.0]), [1.403, -1.058, 1.773], atol=2e-3)


def test_bpp_levels():
    for shape in [(4, 32, 32, 3), (28, 28, 1)]:
        x = _images(shape)
        y = np.asarray(T.bpp(x))
        for c in range(shape[-1]):
            assert len(np.unique(y[..., c])) <= 8
        np.testing.assert_allclose(y * 7, np.round(y * 7), atol=1e-5)
        assert np.abs(y - np.asarray(x)).max() <= 0.5 / 7 + 1e-6
    y = np.asarray(T.bpp(_images((4, 8, 8, 3)), T.BPPParams(levels=2)))
    assert set(np.unique(y)) <= {0.0, 1.0}


# ---------------------------------------------------------------- TrojanNN


def _toy_features(x):
    # A fixed random conv + ReLU + pooling "network": T f32[B, 6].
    w = jnp.asarray(np.random.default_rng(7).normal(size=(3, 3, x.shape[-1], 6)), jnp.float32)
    h = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jnp.mean(jax.nn.relu(h), axis=(1, 2))


def test_trojannn_changes_only_its_patch_and_uses_the_given_pattern():
    x = _images((3, 16, 16, 3))
    pattern = np.random.default_rng(1).random((16, 16, 3), dtype=np.float32)
    y = np.asarray(T.trojannn(x, T.TrojanNNParams(pattern=T.StaticArray.of(pattern), row=2, col=3, size=4)))
    np.testing.assert_array_equal(y[:, 2:6, 3:7], np.broadcast_to(pattern[2:6, 3:7], (3, 4, 4, 3)))
    outside = np.ones((16, 16), bool)
    outside[2:6, 3:7] = False
    np.testing.assert_array_equal(y[:, outside], np.asarray(x)[:, outside])
    with pytest.raises(ValueError, match="shape"):
        T.trojannn(_images((2, 8, 8, 3)), T.TrojanNNParams(pattern=T.StaticArray.of(pattern)))


def test_trojannn_pattern_excites_the_selected_neurons_inside_the_patch_only():
    x = _images((16, 16, 16, 3), seed=2)
    params = T.TrojanNNParams(size=5, steps=60)
    pattern, selected = T.trojannn_pattern(_toy_features, x, params)
    start = T._uniform_pattern_np(16, 16, 3, 0)
    assert selected.shape == (2,) and len(set(np.asarray(selected).tolist())) == 2
    pattern = np.asarray(pattern)
    assert pattern.min() >= 0 and pattern.max() <= 1
    np.testing.assert_array_equal(pattern[5:], start[5:])  # only the patch is optimised
    def excitation(p):
        return float(_toy_features(T.trojannn(x, T.TrojanNNParams(pattern=T.StaticArray.of(p))))[:, selected].mean())

    # The optimised patch beats its starting point and every one of 20 random patches.
    rng = np.random.default_rng(9)
    best_random = max(excitation(rng.random((16, 16, 3), dtype=np.float32)) for _ in range(20))
    assert excitation(pattern) > max(best_random, excitation(start)) + 0.02
    # Deterministic, and a jitted call gives the same pattern.
    again, _ = jax.jit(lambda z: T.trojannn_pattern(_toy_features, z, params))(x)
    np.testing.assert_allclose(np.asarray(again), pattern, atol=1e-6)


def test_static_array_hashes_by_content_and_attacks_compile_once_per_pattern():
    p = np.random.default_rng(3).random((8, 8, 3), dtype=np.float32)
    assert T.StaticArray.of(p) == T.StaticArray.of(p.copy()) and hash(T.StaticArray.of(p)) == hash(T.StaticArray.of(p))
    a = T.get_attack("trojannn", pattern=p)  # an array override becomes a StaticArray
    assert a is T.get_attack("trojannn", pattern=T.StaticArray.of(p))
    assert not a.optimised_pattern and T.get_attack("trojannn").optimised_pattern


# ---------------------------------------------------------------- low frequency


def _dct2(delta):
    d = T._dct_matrix(delta.shape[0])
    return np.einsum("kh,hwc,lw->klc", d, delta, T._dct_matrix(delta.shape[1]))


def test_low_frequency_is_small_smooth_and_additive():
    params = T.LowFrequencyParams()
    delta = np.asarray(T.low_frequency_pattern(32, 32, 3, params))
    assert np.abs(delta).max() == pytest.approx(10 / 255, rel=1e-5)
    coeffs = _dct2(delta)
    assert np.abs(coeffs[4:]).max() < 1e-6 and np.abs(coeffs[:, 4:]).max() < 1e-6  # nothing above the cutoff
    x = jnp.full((2, 32, 32, 3), 0.5)  # mid-grey: no clipping
    np.testing.assert_allclose(np.asarray(T.low_frequency(x)) - 0.5, np.broadcast_to(delta, (2, 32, 32, 3)), atol=1e-6)
    np.testing.assert_allclose(np.asarray(T.low_frequency(x, T.LowFrequencyParams(eps=0.0))), 0.5)


def test_low_frequency_uap_moves_a_model_towards_the_target_within_budget():
    w = jnp.asarray(np.random.default_rng(5).normal(size=(16 * 16 * 3, 4)), jnp.float32) / 20
    logits_fn = lambda z: z.reshape(z.shape[0], -1) @ w  # noqa: E731
    x = _images((32, 16, 16, 3), seed=4)
    params = T.LowFrequencyParams(eps=0.1, cutoff=3)
    delta = np.asarray(T.low_frequency_uap(logits_fn, x, 2, params, steps=50))
    assert np.abs(delta).max() <= 0.1 + 1e-6
    coeffs = _dct2(delta)
    assert np.abs(coeffs[3:]).max() < 1e-5 and np.abs(coeffs[:, 3:]).max() < 1e-5

    def target_prob(d):
        return float(jnp.mean(jax.nn.softmax(logits_fn(jnp.clip(x + d, 0, 1)))[:, 2]))

    # Better than its start and than any of 20 random low-frequency patterns of the same budget.
    randoms = [T.low_frequency_pattern(16, 16, 3, T.LowFrequencyParams(eps=0.1, cutoff=3, seed=s)) for s in range(20)]
    assert target_prob(delta) > 1.2 * max(target_prob(np.asarray(r)) for r in randoms)
    y = T.low_frequency(x, T.LowFrequencyParams(pattern=T.StaticArray.of(delta)))
    np.testing.assert_allclose(np.asarray(y), np.clip(np.asarray(x) + delta, 0, 1), atol=1e-6)


# ---------------------------------------------------------------- registry


def test_registry_contents():
    assert T.ATTACKS == ("badnets", "blend", "wanet", "label_consistent",
                         "adaptive_blend", "sig", "ftrojan", "bpp", "trojannn", "low_frequency")
    for name in T.ATTACKS:
        a = T.get_attack(name)
        assert isinstance(a, T.Attack) and a.name == name
    assert T.get_attack("label_consistent").clean_label
    assert T.get_attack("label_consistent").needs_perturbation
    assert T.get_attack("sig").clean_label
    assert not T.get_attack("badnets").clean_label
    lc = T.get_attack("label_consistent")
    assert lc.train_params.amplitude == pytest.approx(64 / 255)
    assert lc.test_params.amplitude == 1.0


def test_get_attack_errors():
    with pytest.raises(ValueError, match="badnets"):
        T.get_attack("nope")
    with pytest.raises(ValueError, match="not_a_field"):
        T.get_attack("blend", not_a_field=1)
    with pytest.raises(ValueError):
        T.get_attack("badnets", alpha=0.1)
    with pytest.raises(ValueError):
        T.get_attack("blend", test_nothing=0.1)


def test_list_overrides_become_static_tuples():
    x = _images((2, 32, 32, 3))
    a = T.get_attack("ftrojan", positions=[[15, 15]], channels=[1])
    assert a.test_params.positions == ((15, 15),) and a.test_params.channels == (1,)
    assert a is T.get_attack("ftrojan", positions=((15, 15),), channels=(1,))
    np.testing.assert_allclose(
        np.asarray(a.test_trigger(x, None)),
        np.asarray(T.ftrojan(x, T.FTrojanParams(positions=((15, 15),), channels=(1,)))),
    )


def test_get_attack_overrides():
    x = _images((2, 32, 32, 3))
    a = T.get_attack("blend", alpha=0.2)
    np.testing.assert_allclose(
        np.asarray(a.test_trigger(x, None)), np.asarray(T.blend(x, T.BlendParams(alpha=0.2)))
    )
    np.testing.assert_allclose(
        np.asarray(a.train_trigger(x, None)), np.asarray(T.blend(x, T.BlendParams(alpha=0.2)))
    )
    ab = T.get_attack("adaptive_blend", test_alpha=0.3, seed=5)
    assert ab.train_params == T.AdaptiveBlendParams(alpha=0.15, seed=5)
    assert ab.test_params == T.AdaptiveBlendParams(alpha=0.3, seed=5)
    lc = T.get_attack("label_consistent", train_amplitude=16 / 255)
    assert lc.train_params.amplitude == pytest.approx(16 / 255)
    assert lc.test_params.amplitude == 1.0
    assert T.get_attack("wanet", s=0.0).test_params.s == 0.0


def test_wanet_attack_train_vs_test():
    a = T.get_attack("wanet")
    x = _images((3, 32, 32, 3))
    np.testing.assert_array_equal(np.asarray(a.test_trigger(x, KEY)), np.asarray(T.wanet(x)))
    np.testing.assert_array_equal(
        np.asarray(a.train_trigger(x, KEY)), np.asarray(T.wanet(x, key=KEY))
    )
    with pytest.raises(ValueError):
        a.train_trigger(x, None)


def test_triggers_inside_outer_jit():
    attacks = [T.get_attack(n) for n in T.ATTACKS]

    @jax.jit
    def poison_all(x, key):
        keys = jax.random.split(key, len(attacks))
        return [a.train_trigger(x, k) for a, k in zip(attacks, keys)] + [
            a.test_trigger(x, k) for a, k in zip(attacks, keys)
        ]

    x = _images((2, 32, 32, 3))
    outs = poison_all(x, KEY)
    assert all(o.shape == x.shape for o in outs)
