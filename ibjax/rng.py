"""Random draws that compile fast on XLA:CPU: ``jax.random`` drawn flat and reshaped.

``jax.random.normal(key, (64, 28, 28, 16))`` and ``jax.random.normal(key, (64 * 28 * 28 * 16,))``
reshaped are the same numbers (Threefry counts its elements in row-major order, partitionable or
not; :mod:`tests.test_rng` checks it), but XLA:CPU compiles the multi-dimensional form several times
slower (its counter arithmetic over a rank-4 iota; docs/measurements.md, "CPU tuning"), and a noisy
network draws at every layer. The functions here take the same arguments as their ``jax.random``
namesakes and return the same values for Threefry keys (the default); for other PRNG implementations
they return an equally valid draw.

:func:`normal` also offers ``generator="philox"``: XLA's Philox-4x32-10 bit generator
(``lax.rng_bit_generator``), seeded by four 32-bit words drawn from ``key``. On XLA:CPU its normal
values cost about half Threefry's (docs/measurements.md, "CPU tuning"), and a noisy network draws a
value per activation, so the ``cpu`` preset's networks use it (``ModelConfig.noise_generator``). The
numbers differ from Threefry's (the same distribution, another stream).
Under ``vmap`` each key draws exactly what it draws alone (a population member equals its run alone).
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = ["GENERATORS", "normal", "uniform", "randint", "philox_bits"]

GENERATORS = ("threefry", "philox")
"""Bit generators :func:`normal` takes: the key's own (``jax.random``, Threefry by default) or Philox."""


def normal(key: jax.Array, shape: Sequence[int], dtype=jnp.float32, *, generator: str = "threefry") -> jax.Array:
    """Standard normal draws ``dtype[shape]``.

    ``generator="threefry"``: equals ``jax.random.normal(key, shape, dtype)``. ``"philox"``: the
    same transform (a uniform on (-1, 1) through ``sqrt(2) erfinv``) of :func:`philox_bits`, computed
    in float32 and cast to ``dtype``.
    """
    shape = tuple(shape)
    size = math.prod(shape)
    if generator == "threefry":
        return jax.random.normal(key, (size,), dtype).reshape(shape)
    if generator != "philox":
        raise ValueError(f"generator must be one of {GENERATORS}, got {generator!r}")
    # The float32 uniform on [0, 1) from the top 23 bits, as jax.random.uniform builds it.
    u = lax.bitcast_convert_type((philox_bits(key, size) >> 9) | np.uint32(0x3F800000), jnp.float32) - 1.0
    lo = np.nextafter(np.float32(-1.0), np.float32(0.0))  # erfinv(-1) is -inf
    z = np.float32(np.sqrt(2.0)) * lax.erf_inv(jnp.maximum(lo, 2.0 * u - 1.0))
    return z.astype(dtype).reshape(shape)


def _philox(seed: jax.Array, size: int) -> jax.Array:
    return lax.rng_bit_generator(seed, (size,), jnp.uint32, algorithm=lax.RandomAlgorithm.RNG_PHILOX)[1]


def philox_bits(key: jax.Array, size: int) -> jax.Array:
    """``uint32[size]`` from XLA's Philox-4x32-10, its 128-bit state seeded by ``jax.random.bits(key, (4,))``.

    ``lax.rng_bit_generator`` batches a vmapped key by drawing every row from the first key; here a
    batched key is mapped over instead (``lax.map``), so each key's bits are the ones it draws alone.
    """
    fn = jax.custom_batching.custom_vmap(lambda seed: _philox(seed, size))

    @fn.def_vmap
    def _per_key(axis_size, in_batched, seed):
        del axis_size
        if not in_batched[0]:
            return fn(seed), False
        return lax.map(fn, seed), True

    return fn(jax.random.bits(key, (4,), jnp.uint32))


def uniform(key: jax.Array, shape: Sequence[int], dtype=jnp.float32, minval=0.0, maxval=1.0) -> jax.Array:
    """Uniform draws on [minval, maxval) ``dtype[shape]``; equals ``jax.random.uniform`` with the same arguments."""
    shape = tuple(shape)
    return jax.random.uniform(key, (math.prod(shape),), dtype, minval, maxval).reshape(shape)


def randint(key: jax.Array, shape: Sequence[int], minval, maxval, dtype=jnp.int32) -> jax.Array:
    """Integers on [minval, maxval) ``dtype[shape]``; equals ``jax.random.randint`` with the same arguments."""
    shape = tuple(shape)
    return jax.random.randint(key, (math.prod(shape),), minval, maxval, dtype).reshape(shape)
