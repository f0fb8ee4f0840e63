"""Tests for ibjax.triggers.signal: SIG."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from ibjax import triggers as T


def test_sig_formula():
    x = jnp.full((2, 32, 32, 3), 0.5)
    y = np.asarray(T.sig(x))
    j = np.arange(32)
    expected = 0.5 + 40 / 255 * np.sin(2 * np.pi * j * 6 / 32)
    np.testing.assert_allclose(y[0, 5, :, 1], expected, atol=1e-6)
    np.testing.assert_array_equal(y[:, 0], y[:, 17])  # the same on every row
    np.testing.assert_array_equal(y[..., 0], y[..., 2])  # and every channel
    a = T.get_attack("sig")
    assert a.clean_label and a.train_params == a.test_params == T.SIGParams()
