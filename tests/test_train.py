import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ibjax import data as ibdata
from ibjax import models, pipeline, poison, train, triggers


def test_plateau_schedule_matches_pytorch_reduce_on_plateau():
    cfg = train.TrainConfig(plateau_patience=2, plateau_factor=0.5)
    state, lr = train.plateau_init(), 0.1
    lrs = []
    for loss in [1.0, 0.9, 0.95, 0.95, 0.95, 0.95, 0.95, 0.95, 0.8]:
        state, lr = train.plateau_update(state, lr, loss, cfg)
        lrs.append(float(lr))
    # torch: reduce when num_bad_epochs > patience, then the count restarts.
    np.testing.assert_allclose(lrs, [0.1, 0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025, 0.025], rtol=1e-6)


def test_plateau_schedule_equals_torch_on_random_losses_and_vmaps_over_runs():
    torch = pytest.importorskip("torch")
    cfg = train.TrainConfig(plateau_patience=3, plateau_factor=0.5, plateau_threshold=1e-2)
    rng = np.random.default_rng(0)
    losses = np.cumsum(rng.normal(-0.01, 0.05, size=(4, 60)), axis=1) + 2.0  # 4 runs, 60 epochs
    expected = []
    for run in losses:
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=0.5, patience=3, threshold=1e-2)
        lrs = []
        for v in run:
            sched.step(float(v))
            lrs.append(opt.param_groups[0]["lr"])
        expected.append(lrs)
    step = jax.jit(jax.vmap(lambda s, lr, m: train.plateau_update(s, lr, m, cfg)))
    state = jax.tree.map(lambda x: jnp.broadcast_to(x, (4,)), train.plateau_init())
    lr, got = jnp.full((4,), 0.1), []
    for e in range(losses.shape[1]):
        state, lr = step(state, lr, jnp.asarray(losses[:, e], jnp.float32))
        got.append(np.asarray(lr))
    np.testing.assert_allclose(np.stack(got, 1), np.asarray(expected), rtol=1e-6)


def test_cosine_lr_endpoints():
    assert float(train.cosine_lr(0.1, 0, 100)) == pytest.approx(0.1)
    assert float(train.cosine_lr(0.1, 50, 100)) == pytest.approx(0.05)
    assert float(train.cosine_lr(0.1, 100, 100)) == pytest.approx(0.0, abs=1e-8)


_create = jax.jit(train.create_train_state, static_argnums=(1, 2, 3))


def _tiny_setup(n=200, classes=4):
    rng = np.random.default_rng(0)
    labels = np.tile(np.arange(classes), n // classes).astype(np.int32)
    images = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    plan = poison.make_poison_plan(labels, classes, poison.PoisonConfig(), jax.random.PRNGKey(0))
    return images, labels, plan


def test_sgd_step_is_pytorch_sgd_with_coupled_weight_decay():
    images, labels, plan = _tiny_setup()
    model = models.SmallCNN(num_classes=4, widths=(4,), gamma_xt=0.0, gamma_ty=0.0)
    cfg = train.TrainConfig(batch_size=8, lr=0.1, momentum=0.9, weight_decay=5e-4, schedule="constant")
    state = _create(jax.random.PRNGKey(0), model, (8, 8, 3), cfg)
    data = pipeline.put_train_data(images, plan, jax.random.PRNGKey(1))
    attack = triggers.get_attack("badnets")
    idx = jnp.arange(8)
    p0 = jax.tree.map(jnp.copy, state.params)  # train_step donates its state
    x, y, _ = pipeline.gather_batch(data, idx, attack.train_trigger)

    def loss(p):
        logits, _ = model.apply({"params": p, "batch_stats": state.batch_stats}, x, train=True, mutable=["batch_stats"])[0]
        return jnp.mean(-jax.nn.log_softmax(logits)[jnp.arange(8), y])

    g = jax.grad(loss)(p0)
    s1, m = train.train_step(state, data, idx, jax.random.PRNGKey(2), model=model, trigger=attack.train_trigger, config=cfg)
    assert float(m["lr"]) == pytest.approx(0.1)
    # first step: buf = g + wd p; p1 = p0 - lr buf
    expected = jax.tree.map(lambda p, gg: p - 0.1 * (gg + 5e-4 * p), p0, g)
    for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(expected)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_evaluate_counts_every_sample_exactly_once():
    images, labels, _ = _tiny_setup(n=204)
    images, labels = images[:203], labels[:203]
    model = models.SmallCNN(num_classes=4, widths=(4,), gamma_xt=0.0, gamma_ty=0.0)
    cfg = train.TrainConfig(batch_size=8)
    state = _create(jax.random.PRNGKey(0), model, (8, 8, 3), cfg)
    data = pipeline.put_test_data(images, labels, jax.random.PRNGKey(0))
    ident = lambda x, k: x  # noqa: E731
    out = train.evaluate(state.variables, data, np.arange(203), jax.random.PRNGKey(0), model=model, trigger=ident, batch_size=50)
    logits, _ = model.apply(state.variables, images.astype(np.float32) / 255)
    assert out["count"] == 203
    assert out["accuracy"] == pytest.approx(float(np.mean(np.argmax(logits, -1) == labels)))
    assert out["pred_hist"].sum() == 203


def _run(attack_name, poisoned, epochs=5):
    tr, te = ibdata.load_dataset("mnist5k", "train"), ibdata.load_dataset("mnist5k", "test")
    key = jax.random.PRNGKey(0)
    plan = poison.make_poison_plan(tr.labels, 10, poison.PoisonConfig(ratio=0.1), key)
    if not poisoned:
        plan = plan.replace(poisoned=np.zeros_like(plan.poisoned), labels=plan.clean_labels)
    attack = triggers.get_attack(attack_name)
    model = models.SmallCNN(widths=(16, 32, 64), gamma_xt=0.1, gamma_ty=0.1)
    cfg = train.TrainConfig(epochs=epochs, batch_size=64, lr=0.05, schedule="cosine")
    state = _create(key, model, tr.images.shape[1:], cfg)
    data = pipeline.put_train_data(tr.images, plan, key)
    clean_test = pipeline.put_test_data(te.images, te.labels, key)
    trig_test = pipeline.put_test_data(te.images, te.labels, key, triggered=True)
    total = epochs * (len(tr.labels) // cfg.batch_size)
    for e in range(epochs):
        state, m = train.train_epoch(state, data, jax.random.fold_in(key, e), model=model, trigger=attack.train_trigger,
                                     config=cfg, total_steps=total)
        # The cosine rate actually used is logged, not the flat base rate.
        assert m["lr"] > m["lr_last"] and m["lr_last"] == pytest.approx(float(train.cosine_lr(0.05, total * (e + 1) / epochs - 1, total)), rel=1e-4)
    assert len(m["class_loss"]) == 10
    return train.evaluate_attack(state.variables, clean_test, trig_test, key, model=model, trigger=attack.test_trigger,
                                 target=0, config=cfg)


def test_badnets_ten_percent_on_real_digits_reaches_high_asr_at_clean_accuracy():
    poisoned = _run("badnets", True)
    clean = _run("badnets", False)
    assert poisoned["asr"] >= 0.90
    assert clean["asr"] < 0.2  # the trigger alone does not cause the target prediction
    assert poisoned["test_accuracy"] >= clean["test_accuracy"] - 0.03
    assert clean["test_accuracy"] > 0.85


def test_features_for_mi_are_the_poisoned_inputs_and_noisy_representations():
    images, labels, plan = _tiny_setup()
    model = models.SmallCNN(num_classes=4, widths=(4, 8), gamma_xt=0.4, gamma_ty=0.4)
    cfg = train.TrainConfig(batch_size=8)
    state = _create(jax.random.PRNGKey(0), model, (8, 8, 3), cfg)
    data = pipeline.put_train_data(images, plan, jax.random.PRNGKey(1))
    attack = triggers.get_attack("badnets")
    idx = np.arange(0, 200, 3)
    x, t, y = train.extract_features(state.variables, data, idx, jax.random.PRNGKey(2), model=model, trigger=attack.train_trigger, batch_size=16)
    assert x.shape == (len(idx), 192) and t.shape == (len(idx), 8) and y.shape == (len(idx), 4)
    xb, _, _ = pipeline.gather_batch(data, jnp.asarray(idx), attack.train_trigger)
    np.testing.assert_allclose(x, xb.reshape(len(idx), -1))
    _, t2, _ = train.extract_features(state.variables, data, idx, jax.random.PRNGKey(3), model=model, trigger=attack.train_trigger, batch_size=16)
    assert not np.allclose(t, t2)  # noise is on
