"""Random draws that compile fast on XLA:CPU: ``jax.random`` drawn flat and reshaped.

``jax.random.normal(key, (64, 28, 28, 16))`` and ``jax.random.normal(key, (64 * 28 * 28 * 16,))``
reshaped are the same numbers (Threefry counts its elements in row-major order, partitionable or
not; :mod:`tests.test_rng` checks it), but XLA:CPU compiles the multi-dimensional form several times
slower: its counter arithmetic over a rank-4 iota took 2.1 s to compile against 0.3 s for the flat
draw (2 cores, default flags), and a noisy network draws at every layer. The functions here take
the same arguments as their ``jax.random`` namesakes and return the same values for Threefry keys
(the default); for other PRNG implementations they return an equally valid draw.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp

__all__ = ["normal", "uniform", "randint"]


def normal(key: jax.Array, shape: Sequence[int], dtype=jnp.float32) -> jax.Array:
    """Standard normal draws ``dtype[shape]``; equals ``jax.random.normal(key, shape, dtype)``."""
    shape = tuple(shape)
    return jax.random.normal(key, (math.prod(shape),), dtype).reshape(shape)


def uniform(key: jax.Array, shape: Sequence[int], dtype=jnp.float32, minval=0.0, maxval=1.0) -> jax.Array:
    """Uniform draws on [minval, maxval) ``dtype[shape]``; equals ``jax.random.uniform`` with the same arguments."""
    shape = tuple(shape)
    return jax.random.uniform(key, (math.prod(shape),), dtype, minval, maxval).reshape(shape)


def randint(key: jax.Array, shape: Sequence[int], minval, maxval, dtype=jnp.int32) -> jax.Array:
    """Integers on [minval, maxval) ``dtype[shape]``; equals ``jax.random.randint`` with the same arguments."""
    shape = tuple(shape)
    return jax.random.randint(key, (math.prod(shape),), minval, maxval, dtype).reshape(shape)
