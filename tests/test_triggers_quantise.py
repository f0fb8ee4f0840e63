"""Tests for ibjax.triggers.quantise: BPP."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from ibjax import triggers as T


def test_bpp_levels():
    for shape in [(2, 32, 32, 3), (28, 28, 1)]:
        x = np.random.default_rng(0).random(shape, dtype=np.float32)
        y = np.asarray(T.bpp(jnp.asarray(x)))
        for c in range(shape[-1]):
            assert len(np.unique(y[..., c])) <= 8
        np.testing.assert_allclose(y * 7, np.round(y * 7), atol=1e-5)
        assert np.abs(y - x).max() <= 0.5 / 7 + 1e-6
    y = np.asarray(T.bpp(jnp.asarray(np.random.default_rng(1).random((2, 32, 32, 3), dtype=np.float32)),
                         T.BPPParams(levels=2)))
    assert set(np.unique(y)) <= {0.0, 1.0}
    with pytest.raises(ValueError, match="levels"):
        T.get_attack("bpp", levels=1)
