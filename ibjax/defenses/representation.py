"""How the backdoor group sits among the clean ones in representation space: Davies-Bouldin index,
DSWD, the optimal-transport distance between two groups' T, and a linear backdoor probe.

Silhouette scores are :func:`ibjax.metrics.silhouette_score`. Every function is a pure function of
arrays (groups as masks over one set of rows, so shapes are static) and vmaps over a population's
member axis; distances are Euclidean, in the units of T.
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import optax

__all__ = ["davies_bouldin", "dswd", "ot_distance", "linear_probe"]


@functools.partial(jax.jit, static_argnames=("num_labels",))
def davies_bouldin(x: jax.Array, labels: jax.Array, num_labels: int, valid: Optional[jax.Array] = None) -> jax.Array:
    """Davies-Bouldin index of the clusters ``labels`` int[N] in [0, num_labels) of the rows of x f[N, D]
    (lower: tighter, better separated; scikit-learn's ``davies_bouldin_score``). Empty labels take no
    part. f32[]."""
    x = jnp.asarray(x, jnp.float32)
    ok = jnp.ones(labels.shape, bool) if valid is None else jnp.asarray(valid, bool)
    m = ((labels[None, :] == jnp.arange(num_labels)[:, None]) & ok[None, :]).astype(jnp.float32)  # [C, N]
    n = jnp.sum(m, axis=1)
    present = n > 0
    centroids = m @ x / jnp.maximum(n, 1.0)[:, None]
    cross = jnp.matmul(centroids, x.T, precision=jax.lax.Precision.HIGHEST)  # [C, N], no [C, N, D] difference
    d2 = jnp.sum(centroids**2, 1)[:, None] + jnp.sum(x**2, 1)[None, :] - 2.0 * cross
    dist = jnp.sqrt(jnp.maximum(d2, 0.0))
    spread = jnp.sum(m * dist, axis=1) / jnp.maximum(n, 1.0)
    sep = jnp.sqrt(jnp.maximum(jnp.sum((centroids[:, None] - centroids[None]) ** 2, axis=-1), 0.0))
    pair = present[:, None] & present[None, :] & ~jnp.eye(num_labels, dtype=bool)
    ratio = jnp.where(pair, (spread[:, None] + spread[None]) / jnp.where(sep > 0, sep, jnp.inf), -jnp.inf)
    worst = jnp.where(present, jnp.max(ratio, axis=1), 0.0)
    return jnp.sum(jnp.where(jnp.isfinite(worst), worst, 0.0)) / jnp.maximum(jnp.sum(present), 1)


@jax.jit
def dswd(clean: jax.Array, triggered: jax.Array, classifier_kernel: jax.Array) -> jax.Array:
    """DSWD (backdoor-stealthiness' "discriminative sliced Wasserstein distance"): the representations
    of the same images without and with the trigger, f[N, D] each, projected on each class's
    normalised classifier row; the squared 1-D Wasserstein-2 distance per class, averaged over the
    classes, square-rooted. ``classifier_kernel`` f[D, K] (Flax's Dense kernel: one column per
    class). f32[], units of T."""
    w = classifier_kernel.astype(jnp.float32)
    w = w / jnp.maximum(jnp.linalg.norm(w, axis=0, keepdims=True), 1e-12)
    a = jnp.sort(jnp.asarray(clean, jnp.float32) @ w, axis=0)  # [N, K]
    b = jnp.sort(jnp.asarray(triggered, jnp.float32) @ w, axis=0)
    return jnp.sqrt(jnp.mean((a - b) ** 2))


@functools.partial(jax.jit, static_argnames=("max_iterations",))
def ot_distance(x: jax.Array, y: jax.Array, x_valid: Optional[jax.Array] = None, y_valid: Optional[jax.Array] = None,
                *, relative_epsilon: float = 1e-3, max_iterations: int = 2000) -> jax.Array:
    """The 2-Wasserstein distance between the empirical distributions of the rows of x f[N, D] and y
    f[M, D] (uniform weights over the valid rows), in the units of T: the square root of the Sinkhorn
    divergence with squared Euclidean cost (ott-jax, the JAX optimal-transport library).

    The divergence removes entropic regularisation's bias (a cloud is at distance 0 from itself) and
    tends to the exact W2^2 as epsilon -> 0; ``relative_epsilon`` is epsilon as a fraction of the
    mean cost (1e-3: within a few percent of the exact assignment on small sets, tested against
    scipy's). f32[].
    """
    from ott.geometry import pointcloud
    from ott.tools import sinkhorn_divergence

    x = jnp.asarray(x, jnp.float32)
    y = jnp.asarray(y, jnp.float32)
    a = jnp.ones(x.shape[:1]) if x_valid is None else jnp.asarray(x_valid, jnp.float32)
    b = jnp.ones(y.shape[:1]) if y_valid is None else jnp.asarray(y_valid, jnp.float32)
    a, b = a / jnp.sum(a), b / jnp.sum(b)
    # epsilon from the mean cost between the clouds, so the regularisation scales with T's units
    scale = jnp.sum(a * jnp.sum(x**2, 1)) + jnp.sum(b * jnp.sum(y**2, 1)) - 2 * jnp.sum((a @ x) * (b @ y))
    eps = relative_epsilon * jnp.maximum(scale, 1e-12)
    out = sinkhorn_divergence.sinkhorn_divergence(
        pointcloud.PointCloud, x, y, a=a, b=b, epsilon=eps,
        solve_kwargs={"max_iterations": max_iterations, "threshold": 1e-6})
    div = out[0] if isinstance(out, tuple) else out.divergence
    return jnp.sqrt(jnp.maximum(div, 0.0))


@functools.partial(jax.jit, static_argnames=("steps",))
def linear_probe(key: jax.Array, x: jax.Array, positive: jax.Array, valid: Optional[jax.Array] = None, *,
                 heldout_fraction: float = 0.3, steps: int = 500, lr: float = 0.05, l2: float = 1e-3) -> jax.Array:
    """Held-out balanced accuracy of a logistic probe telling ``positive`` rows (the backdoor group)
    from the others in x f[N, D] (a backdoor probe: are backdoor features linearly readable?).

    A random ``heldout_fraction`` of the valid rows is kept out; the probe (standardised inputs, L2
    penalty ``l2``) trains on the rest with Adam for ``steps`` full-batch steps, its loss weighted so
    both classes count equally. The read is the mean of the two classes' held-out accuracies, so a
    probe that learns nothing reads 0.5 whatever the class sizes. f32[] in [0, 1].
    """
    x = jnp.asarray(x, jnp.float32)
    pos = jnp.asarray(positive, bool)
    ok = jnp.ones(pos.shape, bool) if valid is None else jnp.asarray(valid, bool)
    heldout = ok & (jax.random.uniform(key, pos.shape) < heldout_fraction)
    train = ok & ~heldout
    wt = train.astype(jnp.float32)
    mean = wt @ x / jnp.maximum(jnp.sum(wt), 1.0)
    std = jnp.sqrt(wt @ (x - mean) ** 2 / jnp.maximum(jnp.sum(wt), 1.0)) + 1e-6
    z = (x - mean) / std
    y = pos.astype(jnp.float32)
    n_pos, n_neg = jnp.sum(wt * y), jnp.sum(wt * (1 - y))
    w_row = wt * jnp.where(pos, 0.5 / jnp.maximum(n_pos, 1.0), 0.5 / jnp.maximum(n_neg, 1.0))

    def loss(p):
        logit = z @ p["w"] + p["b"]
        return jnp.sum(w_row * optax.sigmoid_binary_cross_entropy(logit, y)) + l2 * jnp.sum(p["w"] ** 2)

    opt = optax.adam(lr)
    params = {"w": jnp.zeros(x.shape[1]), "b": jnp.zeros(())}

    def step(carry, _):
        p, s = carry
        g = jax.grad(loss)(p)
        u, s = opt.update(g, s, p)
        return (optax.apply_updates(p, u), s), None

    (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), None, length=steps)
    pred = (z @ params["w"] + params["b"]) > 0
    correct = (pred == pos).astype(jnp.float32)
    hp, hn = heldout & pos, heldout & ~pos
    acc_pos = jnp.sum(correct * hp) / jnp.maximum(jnp.sum(hp), 1)
    acc_neg = jnp.sum(correct * hn) / jnp.maximum(jnp.sum(hn), 1)
    return 0.5 * (acc_pos + acc_neg)
