import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ibjax import models


def _init_apply(model, x, noise_key=1):
    @jax.jit
    def run(x):
        variables = model.init({"params": jax.random.PRNGKey(0), "noise": jax.random.PRNGKey(0)}, x)
        return variables, model.apply(variables, x, rngs={"noise": jax.random.PRNGKey(noise_key)})

    return run(x)


@pytest.mark.parametrize("name", ["resnet18", "preact_resnet18", "vgg16"])
def test_study_models_return_logits_and_512d_representation(name):
    # Shapes and parameter counts from abstract evaluation: no compilation of the full networks.
    model = models.make_model(models.ModelConfig(name=name, num_classes=10))
    x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    key = jax.ShapeDtypeStruct((2,), jnp.uint32)
    variables = jax.eval_shape(lambda x, k: model.init({"params": k, "noise": k}, x), x, key)
    logits, t = jax.eval_shape(lambda v, x, k: model.apply(v, x, rngs={"noise": k}), variables, x, key)
    assert logits.shape == (2, 10) and t.shape == (2, 512)
    assert logits.dtype == jnp.float32 and t.dtype == jnp.float32
    n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables["params"]))
    expected = {"resnet18": 11.17e6, "preact_resnet18": 11.17e6, "vgg16": 14.73e6}[name]
    assert abs(n_params - expected) / expected < 0.02  # the published parameter counts


@pytest.mark.parametrize("generator", ["threefry", "philox"])
def test_noise_makes_t_a_random_function_of_x_and_is_on_in_eval(generator):
    model = models.SmallCNN(widths=(8, 16), gamma_xt=0.4, gamma_ty=0.4, noise_generator=generator)
    x = jnp.ones((4, 16, 16, 3)) * 0.5
    variables = jax.jit(model.init)({"params": jax.random.PRNGKey(0), "noise": jax.random.PRNGKey(0)}, x)
    apply = jax.jit(lambda k: model.apply(variables, x, train=False, rngs={"noise": k}))
    _, t1 = apply(jax.random.PRNGKey(1))
    _, t2 = apply(jax.random.PRNGKey(2))
    _, t3 = apply(jax.random.PRNGKey(1))
    assert float(jnp.max(jnp.abs(t1 - t2))) > 1e-2  # another noise draw, another T
    np.testing.assert_allclose(t1, t3, rtol=1e-6, atol=1e-6)  # same program, same key: the same draw


def test_zero_noise_is_deterministic_and_needs_no_noise_rng():
    model = models.SmallCNN(widths=(8, 16), gamma_xt=0.0, gamma_ty=0.0)
    x = jnp.ones((2, 16, 16, 1))
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), x)
    apply = jax.jit(model.apply)
    _, t1 = apply(variables, x)
    _, t2 = apply(variables, x)
    np.testing.assert_allclose(t1, t2, rtol=1e-6, atol=1e-6)


def test_t_is_read_before_the_gamma_ty_noise_and_the_classifier_reads_it_noisy():
    # SPEC: T = pooled output of the last block; noise of std gamma_ty is added after pooling, before
    # the classifier. So T does not change with gamma_ty, and logits - (T W + b) = eps W, eps ~ N(0, g^2).
    base = models.SmallCNN(widths=(8,), gamma_xt=0.0, gamma_ty=0.0)
    noisy = models.SmallCNN(widths=(8,), gamma_xt=0.0, gamma_ty=1.0)
    x = jax.random.uniform(jax.random.PRNGKey(3), (512, 8, 8, 3))
    variables = jax.jit(base.init)(jax.random.PRNGKey(0), x)
    _, t0 = jax.jit(base.apply)(variables, x)
    logits, t1 = jax.jit(lambda v, x, k: noisy.apply(v, x, rngs={"noise": k}))(variables, x, jax.random.PRNGKey(4))
    np.testing.assert_allclose(t1, t0, rtol=1e-5, atol=1e-6)
    w, b = variables["params"]["classifier"]["kernel"], variables["params"]["classifier"]["bias"]
    resid = np.asarray(logits - (t1 @ w + b))
    np.testing.assert_allclose(np.std(resid, axis=0), np.sqrt(np.sum(np.asarray(w) ** 2, axis=0)), rtol=0.1)
    # Philox noise: the same law.
    philox = models.SmallCNN(widths=(8,), gamma_xt=0.0, gamma_ty=1.0, noise_generator="philox")
    logits_p, _ = jax.jit(lambda v, x, k: philox.apply(v, x, rngs={"noise": k}))(variables, x, jax.random.PRNGKey(4))
    resid_p = np.asarray(logits_p - (t1 @ w + b))
    np.testing.assert_allclose(np.std(resid_p, axis=0), np.sqrt(np.sum(np.asarray(w) ** 2, axis=0)), rtol=0.1)
    assert not np.allclose(resid_p, resid)


def test_bfloat16_compute_keeps_float32_params_and_outputs():
    model = models.make_model(models.ModelConfig(name="small_cnn", dtype="bfloat16"))
    x = jnp.ones((2, 16, 16, 3))
    variables, (logits, t) = _init_apply(model, x)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables["params"]))
    assert logits.dtype == jnp.float32 and t.dtype == jnp.float32


def test_bad_model_configs_are_rejected():
    with pytest.raises(ValueError, match="unknown model"):
        models.make_model(models.ModelConfig(name="resnet50"))
    with pytest.raises(ValueError, match="dtype"):
        models.make_model(models.ModelConfig(dtype="int8"))
    with pytest.raises(ValueError, match="noise_generator"):
        models.make_model(models.ModelConfig(noise_generator="mt19937"))
    assert models.make_model(models.ModelConfig(name="small_cnn", noise_generator="philox")).noise_generator == "philox"


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (3, 7, 5, 2), (1, 2, 2, 1)])
def test_max_pool_2x2_is_flax_max_pool_in_value_and_gradient(shape):
    import flax.linen as nn

    # Continuous random values: no ties in a window, so the gradients are defined the same way.
    x = jax.random.normal(jax.random.PRNGKey(sum(shape)), shape)
    ref = nn.max_pool(x, (2, 2), (2, 2))
    np.testing.assert_array_equal(models.max_pool_2x2(x), ref)
    w = jax.random.normal(jax.random.PRNGKey(1), ref.shape)
    g = jax.grad(lambda v: jnp.sum(models.max_pool_2x2(v) * w))(x)
    g_ref = jax.grad(lambda v: jnp.sum(nn.max_pool(v, (2, 2), (2, 2)) * w))(x)
    np.testing.assert_allclose(g, g_ref, atol=1e-6)


def test_the_authors_initialisation_has_their_weight_statistics():
    import jax.numpy as jnp

    from ibjax.models import ModelConfig, make_model

    def params(init):
        model = make_model(ModelConfig(name="small_cnn", weight_init=init, gamma_xt=0.0, gamma_ty=0.0))
        return model.init({"params": jax.random.PRNGKey(0)}, jnp.zeros((1, 16, 16, 3)))["params"]

    ours, theirs = params("flax"), params("authors")
    k = np.asarray(theirs["conv1"]["kernel"])  # (3, 3, 16, 32): Kaiming normal, fan_out = 32 * 9
    assert k.std() == pytest.approx(np.sqrt(2.0 / (32 * 9)), rel=0.05) and abs(k.mean()) < 0.01
    w, b = np.asarray(theirs["classifier"]["kernel"]), np.asarray(theirs["classifier"]["bias"])  # (64, 10)
    bound = 1.0 / np.sqrt(64)
    assert np.abs(w).max() <= bound and np.abs(b).max() <= bound and np.abs(b).max() > 0.5 * bound
    assert w.std() == pytest.approx(bound / np.sqrt(3.0), rel=0.1)
    k0 = np.asarray(ours["conv1"]["kernel"])  # Flax's LeCun normal: fan_in = 16 * 9
    assert k0.std() / k.std() == pytest.approx(np.sqrt((1.0 / (16 * 9)) / (2.0 / (32 * 9))), rel=0.1)
    assert not np.asarray(ours["classifier"]["bias"]).any()
