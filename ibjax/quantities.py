"""The MI quantities a study estimates, as one registry: which features each pairs, its label, its dims.

A network's pass over a batch gives three features per sample (:data:`FEATURES`): the input X
(flattened, ``f32[B, H*W*C]``), the representation T (the last hidden layer, ``f32[B, D]``) and the
prediction Y_pred (logits, ``f32[B, K]``). A quantity is the mutual information between two of
them, estimated by a critic that scores pairs ``(a, b)``. The study loops over :data:`QUANTITIES`
for offline estimates, online critics, the files (``mi.json`` keys ``<name>`` and
``<name>_online``), the plots and the summary; adding a quantity is one entry here and its
estimator's config (the field of the same name in ``StudyConfig.mi``).

No jax import: the plots and the metrics read the names and labels without array code.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

__all__ = ["FEATURES", "Quantity", "QUANTITIES", "ONLINE_SUFFIX", "quantity_label"]

FEATURES = ("x", "t", "y")
"""Features of a network pass: input X, representation T, prediction Y_pred (logits)."""

ONLINE_SUFFIX = "_online"
"""History key of a quantity's online critics' reads: ``"xt_online"``."""


@dataclasses.dataclass(frozen=True)
class Quantity:
    """One MI quantity.

    Attributes:
      name: its key in the history and the config (``"xt"``).
      label: how plots and tables name it (``"I(X;T)"``), in nats.
      a, b: the features (:data:`FEATURES`) the critic pairs: ``critic(a, b)``.
      online: whether critics of it can train alongside the network (``mi.mode`` online/both; their
        states are fields of :class:`~ibjax.study.state.OnlineCritics`); offline estimates exist for
        every quantity.
    """

    name: str
    label: str
    a: str
    b: str
    online: bool = True

    @property
    def online_name(self) -> str:
        return self.name + ONLINE_SUFFIX

    def pair(self, features: Mapping[str, Any]) -> tuple[Any, Any]:
        """``(a, b)`` from ``{"x": X, "t": T, "y": Y_pred}`` (arrays, banks, or their sizes)."""
        return features[self.a], features[self.b]


QUANTITIES: dict[str, Quantity] = {
    "xt": Quantity("xt", "I(X;T)", a="t", b="x"),
    "ty": Quantity("ty", "I(T;Y_pred)", a="y", b="t"),
    "xy": Quantity("xy", "I(X;Y_pred)", a="y", b="x", online=False),
}
"""Every quantity a study can estimate, by name, in the order the files and plots list them; a run
estimates those its config names (``mi.quantities``: I(X;T) and I(T;Y_pred) by default, the
paper's pair; I(X;Y_pred) checks the data processing inequality I(X;Y_pred) <= I(X;T))."""


def quantity_label(key: str) -> str:
    """The label of a history key: ``"I(X;T)"`` for ``"xt"``, ``"I(X;T) online"`` for
    ``"xt_online"``, the key itself for anything else."""
    base = key[: -len(ONLINE_SUFFIX)] if key.endswith(ONLINE_SUFFIX) else key
    if base not in QUANTITIES:
        return key
    return QUANTITIES[base].label + (" online" if base != key else "")
