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
    model = models.make_model(models.ModelConfig(name=name, num_classes=10))
    x = jax.random.uniform(jax.random.PRNGKey(1), (2, 32, 32, 3))
    variables, (logits, t) = _init_apply(model, x)
    assert logits.shape == (2, 10) and t.shape == (2, 512)
    assert logits.dtype == jnp.float32 and t.dtype == jnp.float32
    n_params = sum(p.size for p in jax.tree.leaves(variables["params"]))
    expected = {"resnet18": 11.17e6, "preact_resnet18": 11.17e6, "vgg16": 14.73e6}[name]
    assert abs(n_params - expected) / expected < 0.02  # the published parameter counts


def test_noise_makes_t_a_random_function_of_x_and_is_on_in_eval():
    model = models.SmallCNN(widths=(8, 16), gamma_xt=0.4, gamma_ty=0.4)
    x = jnp.ones((4, 16, 16, 3)) * 0.5
    variables, (l1, t1) = _init_apply(model, x, noise_key=1)
    apply = jax.jit(lambda k: model.apply(variables, x, train=False, rngs={"noise": k}))
    l2, t2 = apply(jax.random.PRNGKey(2))
    l3, t3 = apply(jax.random.PRNGKey(1))
    assert not np.allclose(t1, t2)
    np.testing.assert_array_equal(t1, t3)  # deterministic given the noise key


def test_zero_noise_is_deterministic_and_needs_no_noise_rng():
    model = models.SmallCNN(widths=(8, 16), gamma_xt=0.0, gamma_ty=0.0)
    x = jnp.ones((2, 16, 16, 1))
    variables = model.init(jax.random.PRNGKey(0), x)
    l1, t1 = model.apply(variables, x)
    l2, t2 = model.apply(variables, x)
    np.testing.assert_array_equal(t1, t2)


def test_gamma_ty_noise_is_added_to_t_before_the_classifier():
    base = models.SmallCNN(widths=(8,), gamma_xt=0.0, gamma_ty=0.0)
    noisy = models.SmallCNN(widths=(8,), gamma_xt=0.0, gamma_ty=1.0)
    x = jax.random.uniform(jax.random.PRNGKey(3), (256, 8, 8, 3))
    variables = base.init(jax.random.PRNGKey(0), x)
    _, t0 = base.apply(variables, x)
    logits, t1 = noisy.apply(variables, x, rngs={"noise": jax.random.PRNGKey(4)})
    assert abs(float(jnp.std(t1 - t0)) - 1.0) < 0.05
    w, b = variables["params"]["classifier"]["kernel"], variables["params"]["classifier"]["bias"]
    np.testing.assert_allclose(logits, t1 @ w + b, rtol=1e-4, atol=1e-4)


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
