"""The all-groups critic step (init / update / end_epoch), used inside other loops."""

import jax
import jax.numpy as jnp
import numpy as np

from ibjax import mi
from ibjax.mi import groundtruth

CFG = mi.resolve_config(batch_size=64, negatives=64, hidden=(16, 16), lr=3e-3)


def test_init_and_update_train_critics_side_by_side_in_float32_and_bfloat16():
    truth = (0.0, 1.5)
    pairs = [groundtruth.gaussian(jax.random.PRNGKey(i), 4096, dx=2, dy=2, mi=m) for i, m in enumerate(truth)]
    x, y = jnp.stack([p[0] for p in pairs]), jnp.stack([p[1] for p in pairs])
    late = {}
    for dtype in ("float32", "bfloat16"):
        cfg = mi.resolve_config(CFG, dtype=dtype)
        state = mi.init(jax.random.PRNGKey(14), 2, 2, 2, cfg)
        assert state.lr.shape == (2,) and state.best_loss.shape == (2,)
        step = jax.jit(lambda s, a, b, k, cfg=cfg: mi.update(s, a, b, k, cfg))
        ests = []
        for t in range(120):
            idx = jax.random.randint(jax.random.fold_in(jax.random.PRNGKey(15), t), (64,), 0, 4096)
            state, est = step(state, x[:, idx], y[:, idx], jax.random.PRNGKey(t))
            ests.append(est)
        late[dtype] = np.mean(ests[-40:], axis=0)
    assert late["float32"][1] > 1.0 and abs(late["float32"][0]) < 0.15
    np.testing.assert_allclose(late["bfloat16"], late["float32"], atol=0.15)


def test_end_epoch_halves_a_group_that_stops_improving_on_its_loss():
    state = mi.init(jax.random.PRNGKey(0), 2, 2, 2, CFG)
    state = mi.end_epoch(state, jnp.array([1.0, 1.0]), CFG)  # loss -1 for both
    np.testing.assert_allclose(state.best_loss, [-1.0, -1.0])
    for _ in range(CFG.optimiser.plateau_patience + 1):
        state = mi.end_epoch(state, jnp.array([0.5, 2.0]), CFG)  # group 0 worse, group 1 better
    np.testing.assert_allclose(state.lr, [CFG.optimiser.lr * 0.5, CFG.optimiser.lr])
    np.testing.assert_array_equal(state.bad_epochs, [0, 0])


def test_plateau_update_is_elementwise_and_stops_at_eps():
    lr, best, bad = jnp.asarray([1e-3, 3e-8]), jnp.asarray([-1.0, -1.0]), jnp.asarray([8, 8])
    new_lr, new_best, new_bad = mi.plateau_update(lr, best, bad, jnp.asarray([0.0, 0.0]), CFG)
    np.testing.assert_allclose(new_lr, [5e-4, 1.5e-8])  # 3e-8 - 1.5e-8 > 1e-8: still halved
    new_lr2, _, _ = mi.plateau_update(new_lr, new_best, jnp.asarray([8, 8]), jnp.asarray([0.0, 0.0]), CFG)
    np.testing.assert_allclose(new_lr2, [2.5e-4, 1.5e-8])  # 1.5e-8 - 7.5e-9 <= 1e-8: kept
    np.testing.assert_array_equal(new_bad, [0, 0])
