"""The model-level defences over a population's member axis: vmapped over stacked networks, each
member reads what it reads alone (UCLC, ABI, TAC, BAN, the monitor) within float tolerance."""

import jax
import jax.numpy as jnp
import numpy as np

from ibjax.defenses import BANConfig, abi_reset, ban_detect, trigger_activated_change, uclc_score
from ibjax.models import ModelConfig, feature_map, make_model

R = 3
MODEL = make_model(ModelConfig(name="small_cnn", num_classes=4))


def _members():
    rng = np.random.default_rng(0)
    members = []
    for r in range(R):
        k = jax.random.PRNGKey(r)
        v = jax.tree.map(np.array, MODEL.init({"params": k, "noise": k}, jnp.zeros((1, 12, 12, 1))))
        for bn in [b for b in v["params"] if b.startswith("bn")]:
            c = v["params"][bn]["scale"].shape[0]
            v["params"][bn]["scale"] = rng.uniform(0.5, 1.5, c).astype(np.float32)
            v["batch_stats"][bn]["var"] = rng.uniform(0.5, 2.0, c).astype(np.float32)
        members.append(v)
    return members, jax.tree.map(lambda *x: np.stack(x), *members)


def _close(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-5)


def test_parameter_space_statistics_vmap_over_members():
    members, stacked = _members()
    z, n = jax.vmap(lambda v: uclc_score(v, "small_cnn"))(stacked)
    _close((z, n), tuple(np.stack(x) for x in zip(*[uclc_score(v, "small_cnn") for v in members])))
    reset = jax.vmap(lambda v: abi_reset(v, "small_cnn", 1.0))(stacked)
    for r, v in enumerate(members):
        _close(jax.tree.map(lambda x: x[r], reset), abi_reset(v, "small_cnn", 1.0))


def test_tac_and_ban_vmap_over_members():
    members, stacked = _members()
    rng = np.random.default_rng(1)
    x = rng.uniform(size=(40, 12, 12, 1)).astype(np.float32)
    y = rng.integers(0, 4, 40).astype(np.int32)
    trig = np.clip(x + 0.5 * (np.arange(12)[None, :, None, None] > 8), 0, 1).astype(np.float32)
    key = jax.random.PRNGKey(2)

    def tac(v):
        return trigger_activated_change(feature_map(MODEL, v, x, key)[0], feature_map(MODEL, v, trig, key)[0])

    _close(jax.vmap(tac)(stacked), np.stack([tac(v) for v in members]))
    cfg = BANConfig(steps=2, noise_batches=2, mask_epochs=1, mask_batches=2, batch_size=8)
    keys = jax.random.split(key, R)
    batched = jax.vmap(lambda k, v: ban_detect(k, MODEL, v, x[:20], y[:20], x[20:], y[20:], cfg))(keys, stacked)
    alone = [ban_detect(keys[r], MODEL, v, x[:20], y[:20], x[20:], y[20:], cfg) for r, v in enumerate(members)]
    np.testing.assert_allclose(np.asarray(batched.accuracy), [float(a.accuracy) for a in alone], atol=0.11)  # two of 20 images may flip
    np.testing.assert_allclose(np.asarray(batched.mask_l1), [float(a.mask_l1) for a in alone], rtol=1e-3, atol=1e-4)
