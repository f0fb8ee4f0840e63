"""The authors' bound checks on a trained network's data: how much the data carry about the backdoor flag.

B is the backdoor flag of a training sample (poisoned or not), Y its training label (after the
attack's relabelling), Y_pred the network's prediction (argmax of its logits) and X the input the
network sees (the triggered image for a poisoned sample). The checks (the authors' rebuttal; issue
"The paper, reproduced", C6), in nats:

- ``H(B)``: the flag's entropy, the most any variable can carry about it (0.3251 at a 10% ratio).
- ``I(B;Y)``: exact from the joint counts (0.1936 for an all-to-one dirty-label attack on ten balanced
  classes that poisons 10% of every class).
- ``I(B;Y_pred)``: exact plug-in value of the prediction's counts; at most ``H(B)``.
- ``I(X;B)``: the trigger makes B a function of X, so it should reach ``H(B)``; estimated with the
  InfoNCE estimator (a critic on (one-hot B, X) pairs, :func:`ibjax.mi.estimate_mi_groups` with one
  group): its held-out read (or the training read without a held-out split) and standard error.

Pure functions of arrays and a key.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from ibjax.mi import MIConfig, estimate_mi_groups, resolve_config
from ibjax.mi.discrete import discrete_mi, entropy

__all__ = ["BACKDOOR_CHECK_MI", "backdoor_bounds"]

BACKDOOR_CHECK_MI = resolve_config(epochs=40, batch_size=128, negatives=128, hidden=(128, 128), lr=1e-3,
                                   read_epochs=5, heldout_fraction=0.2, validation_fraction=0.2, select="best",
                                   preprocess="standardize")
"""The I(X;B) estimator's default: ibjax's levers (held-out read, best critic on validation) at a
length that reaches H(B) on a visible trigger; standardised rather than rank-mapped inputs (pixels
tie heavily, and the map costs more than it gives for a binary partner)."""


def backdoor_bounds(key: jax.Array, x: jax.Array, poisoned: jax.Array, labels: jax.Array,
                    predictions: jax.Array, num_classes: int, config: Optional[MIConfig] = None,
                    estimate_xb: bool = True) -> dict:
    """The bound checks of one trained run (see the module docstring), nats.

    Args:
      key: PRNG key of the I(X;B) estimate.
      x: f32[N, ...] the inputs the network sees (triggered where poisoned).
      poisoned: bool[N], the backdoor flag B.
      labels: i32[N], training labels after the attack.
      predictions: i32[N], the network's predicted classes on ``x``.
      num_classes: K, the label range.
      config: the I(X;B) estimator (default :data:`BACKDOOR_CHECK_MI`).
      estimate_xb: False skips the (critic-trained) I(X;B) estimate.

    Returns:
      ``{"H_B", "I_B_Y", "I_B_Ypred", "I_X_B", "I_X_B_se", "I_X_B_read"}`` as floats (the I(X;B)
      entries None when skipped); ``I_X_B_read`` names the read ("heldout" or "train").
    """
    b = jnp.asarray(poisoned, jnp.int32)
    h_b = entropy(jnp.bincount(b, length=2).astype(jnp.float32))
    out = {
        "H_B": float(h_b),
        "I_B_Y": float(discrete_mi(b, labels, 2, num_classes)),
        "I_B_Ypred": float(discrete_mi(b, predictions, 2, num_classes)),
        "I_X_B": None, "I_X_B_se": None, "I_X_B_read": None,
    }
    if estimate_xb:
        config = config or BACKDOOR_CHECK_MI
        a = jax.nn.one_hot(b, 2, dtype=jnp.float32)[None]
        flat = jnp.asarray(x, jnp.float32).reshape(1, x.shape[0], -1)
        res = estimate_mi_groups(jax.random.split(key, 1), a, flat, config=config)
        read = "heldout" if config.protocol.heldout_fraction > 0 else "train"
        out["I_X_B"] = float(np.asarray(getattr(res, read))[0])
        out["I_X_B_se"] = float(np.asarray(res.heldout_se)[0]) if read == "heldout" else None
        out["I_X_B_read"] = read
    return out

