"""Exact information of discrete variables: entropies and mutual information from counts (nats).

The backdoor flag B (poisoned or not), the training label Y and the prediction argmax Y_pred are
discrete, so their information needs no critic: the plug-in value of the empirical joint
distribution is the exact information of the training set's joint (the data *are* the
distribution the study's groups are drawn from). These are the authors' analytic bound checks
(SPEC.md; issue "The paper, reproduced", C6): H(B) = 0.3251 nats at a 10% poison ratio, I(B;Y) =
0.1936 nats for an all-to-one dirty-label attack on 10 balanced classes, and I(B;Y_pred) <= H(B).

Pure functions of arrays; the sizes are static (``num_a``, ``num_b``) so they jit and vmap.
"""

from __future__ import annotations

import jax.numpy as jnp

__all__ = ["entropy", "joint_counts", "mutual_information", "discrete_mi", "conditional_entropy"]


def entropy(p: jnp.ndarray, axis: int = -1) -> jnp.ndarray:
    """H(p) = -sum p log p in nats along ``axis`` (p normalised there; 0 log 0 = 0)."""
    p = jnp.asarray(p, jnp.float32)
    p = p / jnp.sum(p, axis=axis, keepdims=True)
    return -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0), axis=axis)


def joint_counts(a: jnp.ndarray, b: jnp.ndarray, num_a: int, num_b: int,
                 weights: jnp.ndarray | None = None) -> jnp.ndarray:
    """f32[num_a, num_b]: how often each pair of values (a_i, b_i) occurs (int labels in [0, num)),
    each sample counted with its weight (default 1; a 0/1 weight masks samples)."""
    a, b = jnp.asarray(a, jnp.int32), jnp.asarray(b, jnp.int32)
    w = jnp.ones(a.shape, jnp.float32) if weights is None else jnp.asarray(weights, jnp.float32)
    return jnp.zeros((num_a, num_b), jnp.float32).at[a, b].add(w)


def mutual_information(joint: jnp.ndarray) -> jnp.ndarray:
    """I(A;B) in nats of a joint distribution or count table ``[..., num_a, num_b]``:
    H(A) + H(B) - H(A, B)."""
    joint = jnp.asarray(joint, jnp.float32)
    flat = joint.reshape(*joint.shape[:-2], -1)
    return entropy(joint.sum(-1)) + entropy(joint.sum(-2)) - entropy(flat)


def discrete_mi(a: jnp.ndarray, b: jnp.ndarray, num_a: int, num_b: int,
                weights: jnp.ndarray | None = None) -> jnp.ndarray:
    """I(A;B) in nats of the empirical joint of int labels ``a``, ``b`` (f32[] for i32[N] inputs)."""
    return mutual_information(joint_counts(a, b, num_a, num_b, weights))


def conditional_entropy(a: jnp.ndarray, b: jnp.ndarray, num_a: int, num_b: int) -> jnp.ndarray:
    """H(A | B) = H(A) - I(A;B) in nats of the empirical joint."""
    joint = joint_counts(a, b, num_a, num_b)
    return entropy(joint.sum(-1)) - mutual_information(joint)
