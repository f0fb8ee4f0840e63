"""ibjax.defenses.lipschitz: UCLC finds a planted high-Lipschitz channel, ABI resets it, CLP prunes it;
each rule against a numpy re-derivation of the Grond code's."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ibjax.defenses import abi_reset, channel_lipschitz, clp_prune, layer_outliers, tac_uclc_product
from ibjax.defenses import trigger_activated_change, uclc_score
from ibjax.defenses.network import conv_bn_pairs
from ibjax.models import ModelConfig, make_model


def _variables(name="small_cnn", shape=(1, 16, 16, 1)):
    model = make_model(ModelConfig(name=name, num_classes=4))
    k = jax.random.PRNGKey(0)
    v = model.init({"params": k, "noise": k}, jnp.zeros(shape))
    v = jax.tree.map(np.array, v)  # writable copies
    # batch norms as after training: scales and running variances that differ per channel
    r = np.random.default_rng(0)
    for bn in [k for k in v["params"] if k.startswith("bn")]:
        c = v["params"][bn]["scale"].shape[0]
        v["params"][bn]["scale"] = r.uniform(0.5, 1.5, c).astype(np.float32)
        v["params"][bn]["bias"] = r.normal(0, 0.1, c).astype(np.float32)
        v["batch_stats"][bn]["var"] = r.uniform(0.5, 2.0, c).astype(np.float32)
    return v


def _reference_uclc(kernel, scale, var, eps):
    # the Grond rule on PyTorch's layout: weight[k] [in, kh, kw] -> [in, kh*kw], times |gamma| / sigma
    w = np.transpose(kernel, (3, 2, 0, 1))
    out = []
    for k in range(w.shape[0]):
        m = w[k].reshape(w.shape[1], -1) * abs(scale[k]) / np.sqrt(var[k] + eps)
        out.append(np.linalg.svd(m, compute_uv=False).max())
    return np.array(out)


def test_channel_lipschitz_equals_the_reference_rule():
    v = _variables()
    got = channel_lipschitz(v, "small_cnn", eps=0.0)
    assert list(got) == [("bn0",), ("bn1",), ("bn2",)]
    for i in range(3):
        ref = _reference_uclc(v["params"][f"conv{i}"]["kernel"], v["params"][f"bn{i}"]["scale"],
                              v["batch_stats"][f"bn{i}"]["var"], 0.0)
        np.testing.assert_allclose(np.asarray(got[(f"bn{i}",)]), ref, rtol=1e-4)


def test_uclc_finds_a_planted_channel_abi_resets_it_and_clp_prunes_it():
    v = _variables()
    v["params"]["bn1"]["scale"][7] *= 25.0  # one channel with a far larger Lipschitz bound
    z, n = uclc_score(v, "small_cnn")
    assert float(z) > 4.0 and int(n) >= 1
    flagged = layer_outliers(channel_lipschitz(v, "small_cnn")[("bn1",)])
    assert bool(flagged[7]) and int(flagged.sum()) == 1

    scale, bias = v["params"]["bn1"]["scale"], v["params"]["bn1"]["bias"]
    after, marks = abi_reset(v, "small_cnn")
    assert bool(marks[("bn1",)][7])
    new_scale = np.asarray(after["params"]["bn1"]["scale"])
    assert new_scale[7] == pytest.approx(scale.mean(), rel=1e-6)  # the mean over all channels, itself included
    assert float(after["params"]["bn1"]["bias"][7]) == pytest.approx(bias.mean(), abs=1e-7)
    np.testing.assert_array_equal(np.delete(new_scale, 7), np.delete(scale, 7))
    assert not bool(layer_outliers(channel_lipschitz(after, "small_cnn")[("bn1",)])[7])  # no longer stands out

    pruned, marks = clp_prune(v, "small_cnn")
    assert float(pruned["params"]["bn1"]["scale"][7]) == 0.0 and float(pruned["params"]["bn1"]["bias"][7]) == 0.0
    assert int(sum(int(m.sum()) for m in marks.values())) == int(n)


def test_pairs_follow_the_layer_names_and_preact_is_refused():
    v = _variables("resnet18", (1, 8, 8, 3))
    pairs = conv_bn_pairs(v, "resnet18")
    assert (("stem",), ("stem_bn",)) in pairs
    assert (("stage1_block0", "shortcut_conv"), ("stage1_block0", "shortcut_bn")) in pairs
    assert len(pairs) == 20  # ResNet-18's 20 batch norms
    with pytest.raises(ValueError, match="preact_resnet18"):
        conv_bn_pairs(v, "preact_resnet18")


def test_tac_and_tup():
    r = np.random.default_rng(1)
    clean = r.normal(size=(10, 3, 3, 4)).astype(np.float32)
    trig = clean.copy()
    trig[..., 2] += 2.0  # channel 2 changes by 2 at each of 9 positions: norm 6
    tac = np.asarray(trigger_activated_change(clean, trig))
    np.testing.assert_allclose(tac, [0, 0, 6.0, 0], atol=1e-5)
    uclc = np.array([1.0, 2.0, 3.0, 4.0])
    benign = np.array([1.0, 1.0, 1.0, 2.0])
    # rank-matched ratio: channel 2 (largest TAC) meets the benign model's largest TAC (2)
    got = float(tac_uclc_product(uclc, np.array([1.0, 1.0, 6.0, 1.0]), benign))
    assert got == pytest.approx((1 * 1 + 2 * 1 + 4 * 1 + 3 * 3) / 4)
