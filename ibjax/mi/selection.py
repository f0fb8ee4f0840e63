"""Model selection across estimators: per group, the candidate critic with the best validation read.

Several :class:`~ibjax.mi.result.MIResult` of the same groups, each from another critic family or
capacity (for example a concat critic with and without a rank bottleneck, and a separable one), all
run with the same key so that they share each group's held-out and validation splits. For each
group the candidate whose selected critic reads highest on the validation split is kept, with all
of its fields. The held-out split takes no part in the choice, so the kept held-out read stays a
read on pairs the choice never saw; InfoNCE reads are lower bounds in expectation, so the higher
validation read marks the better critic.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from ibjax.mi.result import MIResult

__all__ = ["validation_score", "select_by_validation"]


def validation_score(result: MIResult) -> jax.Array:
    """f32[G]: each group's validation read (nats) at the epoch of the critic it kept (``best_epoch``)."""
    epoch = jnp.asarray(result.best_epoch, jnp.int32)[:, None]
    return jnp.take_along_axis(jnp.asarray(result.validation), epoch, axis=1)[:, 0]


def select_by_validation(results: Sequence[MIResult]) -> tuple[MIResult, jax.Array]:
    """Per group, the candidate with the highest :func:`validation_score`.

    Args:
      results: C >= 1 results with a group axis G, equal shapes and equal ``cap``, from estimators
        with a validation split (``validation_fraction > 0``) run with the same key.

    Returns:
      ``(result, choice)``: an :class:`MIResult` whose group g is ``results[choice[g]]``'s group g,
      with ``candidate = choice``, and ``choice`` int32[G]. Ties go to the earlier candidate.

    Raises:
      ValueError: no candidates, shapes or caps that differ, or a group with no validation read in any
        candidate.
    """
    results = list(results)
    if not results:
        raise ValueError("select_by_validation needs at least one result")
    first = results[0]
    for r in results[1:]:
        if r.cap != first.cap or jax.tree.map(jnp.shape, r) != jax.tree.map(jnp.shape, first):
            raise ValueError("the candidates must read the same groups over the same epochs with the same bound cap "
                             "(equal MIResult shapes and cap); run them on the same data with the same epochs")
    scores = jnp.stack([validation_score(r) for r in results])  # [C, G]
    # Checked where the reads are concrete; under jit a group without reads keeps candidate 0.
    if not isinstance(scores, jax.core.Tracer) and bool(jnp.any(jnp.all(jnp.isnan(scores), axis=0))):
        raise ValueError("a group has no validation read in any candidate: select_by_validation needs estimators "
                         "with validation_fraction > 0")
    choice = jnp.argmax(jnp.where(jnp.isnan(scores), -jnp.inf, scores), axis=0).astype(jnp.int32)
    groups = jnp.arange(choice.shape[0])

    def pick(*leaves):
        return jnp.stack([jnp.asarray(x) for x in leaves])[choice, groups]

    return jax.tree.map(pick, *results).replace(candidate=choice), choice
