"""Critics f(a, b) for variational MI bounds, as pure functions over a params pytree, and their registry.

Three families:

- ``concat``: the reference's concatenation critic f(a, b) = MLP([a, b]) with ReLU hidden layers
  (128, 128) and a scalar output. Its first layer is linear in the concatenation, so
  W [a; b] + c = W_a a + (W_b b + c): ibjax projects every a and every b of a batch once and forms a
  pair's first hidden layer by an add. Negatives drawn from the batch then cost a gather and an add,
  not a (da + db)-wide matmul. This is the same function, not an approximation
  (:func:`concat_critic` evaluates it the plain way; the tests check they agree).
- ``separable``: f(a, b) = g(a) . h(b) with two MLP embeddings; all B x B scores are one matmul.
- ``gaussian``: the log density ratio of a Gaussian model of the pair, fitted in closed form to the
  training split's moments instead of trained (:mod:`ibjax.mi.gaussian`; its :class:`ClosedForm`).

Scores are read for a batch of B pairs (a_i, b_i) and negative indices ``neg_index int32[B, K]`` into
the batch: ``scores(params, a, b, neg_index) -> (pos f32[B], neg f32[B, K])`` with
``pos[i] = f(a_i, b_i)`` and ``neg[i, k] = f(a_i, b_{neg_index[i, k]})``.

:data:`CRITICS` maps each family's name (the values of ``MIConfig.critic.family``) to a :class:`Critic`, its
init, scores and all-pairs functions; adding a family is one entry there. :func:`init_critic`,
:func:`critic_scores` and :func:`critic_matrix` look a name up in it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp

from ibjax.mi import gaussian

__all__ = [
    "Critic",
    "ClosedForm",
    "CRITICS",
    "get_critic",
    "init_concat_critic",
    "concat_critic",
    "concat_critic_scores",
    "concat_critic_matrix",
    "init_separable_critic",
    "separable_critic_scores",
    "separable_critic_matrix",
    "init_critic",
    "critic_scores",
    "critic_matrix",
]


def _dense_layers(key: jax.Array, dims: Sequence[tuple[int, int]]) -> list[dict]:
    """Dense layers ``{"w": f32[d_in, d_out], "b": f32[d_out]}`` for each (d_in, d_out), PyTorch
    nn.Linear's default init (uniform +-1/sqrt(fan_in)), so critics start where the reference's do.

    All layers come from one uniform draw, sliced: every separate PRNG call is one more threefry
    kernel for XLA to compile, and compilation dominates short CPU runs.
    """
    sizes = [i * o + o for i, o in dims]
    u = jax.random.uniform(key, (sum(sizes),), jnp.float32, -1.0, 1.0)
    layers, start = [], 0
    for (d_in, d_out), size in zip(dims, sizes):
        bound = 1.0 / jnp.sqrt(float(d_in))
        chunk = u[start : start + size] * bound
        layers.append({"w": chunk[: d_in * d_out].reshape(d_in, d_out), "b": chunk[d_in * d_out :]})
        start += size
    return layers


def _mlp(layers: Sequence[dict], h: jax.Array, dtype) -> jax.Array:
    """ReLU between layers, none after the last. ``h`` is already the first layer's pre-activation."""
    for layer in layers:
        h = jax.nn.relu(h)
        h = h @ layer["w"].astype(dtype) + layer["b"].astype(dtype)
    return h


def init_concat_critic(key: jax.Array, da: int, db: int, hidden: Sequence[int] = (128, 128), rank: int = 0) -> dict:
    """Parameters of MLP([a, b]) with ``hidden`` ReLU layers and a scalar output.

    The first layer's weight is stored split: ``first.wa f32[da, h1]``, ``first.wb f32[db, h1]``.
    ``rank > 0`` puts a linear bottleneck before it: the MLP sees ``a @ proj.a`` (``proj.a f32[da, r]``)
    and ``b @ proj.b`` with r = min(rank, da) and min(rank, db) coordinates.
    """
    if not hidden:
        raise ValueError("the concat critic needs at least one hidden layer")
    if rank < 0:
        raise ValueError(f"rank must be >= 0 (0: no bottleneck), got {rank}")
    ra, rb = (min(rank, da), min(rank, db)) if rank else (da, db)
    dims = [(ra + rb, hidden[0]), *zip(hidden, (*hidden[1:], 1))]
    if not rank:
        first, *rest = _dense_layers(key, dims)
        return {"first": {"wa": first["w"][:da], "wb": first["w"][da:], "b": first["b"]}, "rest": rest}
    # The projections are linear without an offset (the first layer has one): their biases go unused.
    proj_a, proj_b, first, *rest = _dense_layers(key, [(da, ra), (db, rb), *dims])
    return {"proj": {"a": proj_a["w"], "b": proj_b["w"]},
            "first": {"wa": first["w"][:ra], "wb": first["w"][ra:], "b": first["b"]}, "rest": rest}


def _bottleneck(params: dict, a: jax.Array, b: jax.Array, dtype) -> tuple[jax.Array, jax.Array]:
    if "proj" not in params:
        return a, b
    return a.astype(dtype) @ params["proj"]["a"].astype(dtype), b.astype(dtype) @ params["proj"]["b"].astype(dtype)


def concat_critic(params: dict, a: jax.Array, b: jax.Array, dtype=jnp.float32) -> jax.Array:
    """The plain concatenation critic: f(a, b) = MLP([a, b]) for paired rows ``a[..., da]``, ``b[..., db]``.

    Returns f32[...]. This is the reference's formulation; :func:`concat_critic_scores` computes the same
    function for all negatives of a batch without forming the concatenations.
    """
    a, b = _bottleneck(params, a, b, dtype)
    w = jnp.concatenate([params["first"]["wa"], params["first"]["wb"]], axis=0).astype(dtype)
    h = jnp.concatenate([a, b], axis=-1).astype(dtype) @ w + params["first"]["b"].astype(dtype)
    return _mlp(params["rest"], h, dtype)[..., 0].astype(jnp.float32)


def concat_critic_scores(
    params: dict, a: jax.Array, b: jax.Array, neg_index: jax.Array, dtype=jnp.float32
) -> tuple[jax.Array, jax.Array]:
    """Positive and negative scores of the concatenation critic with its first layer split.

    Args:
      params: from :func:`init_concat_critic`.
      a: f[B, da]; b: f[B, db]; neg_index: int32[B, K] indices into the batch.

    Returns:
      ``(pos f32[B], neg f32[B, K])``.

    When K >= B every negative is one of the B x B pairs of the batch, so the critic is evaluated on
    those B^2 pairs once and the K scores per row are gathered (fewer MLP evaluations than B x K);
    otherwise the K pairs per row are evaluated directly. Both give the same values.
    """
    a, b = _bottleneck(params, a, b, dtype)
    first = params["first"]
    pa = a.astype(dtype) @ first["wa"].astype(dtype)  # [B, h]
    pb = b.astype(dtype) @ first["wb"].astype(dtype) + first["b"].astype(dtype)  # [B, h]
    bsz, k = neg_index.shape
    if k >= bsz:
        all_pairs = _mlp(params["rest"], pa[:, None, :] + pb[None, :, :], dtype)[..., 0].astype(jnp.float32)
        pos = jnp.diagonal(all_pairs)
        neg = jnp.take_along_axis(all_pairs, neg_index, axis=1)
        return pos, neg
    pos = _mlp(params["rest"], pa + pb, dtype)[..., 0].astype(jnp.float32)
    neg = _mlp(params["rest"], pa[:, None, :] + pb[neg_index], dtype)[..., 0].astype(jnp.float32)
    return pos, neg


def concat_critic_matrix(params: dict, a: jax.Array, b: jax.Array, dtype=jnp.float32, block_rows: int = 128
                         ) -> jax.Array:
    """All B x B scores ``f32[B, B]``, ``[i, j] = f(a_i, b_j)``, of the concatenation critic for a batch
    a f[B, da], b f[B, db].

    Evaluated ``block_rows`` rows at a time (the first layer still split into two projections), so
    memory stays O(block_rows * B * width) for large B.
    """
    a, b = _bottleneck(params, a, b, dtype)
    first = params["first"]
    pa = a.astype(dtype) @ first["wa"].astype(dtype)
    pb = b.astype(dtype) @ first["wb"].astype(dtype) + first["b"].astype(dtype)
    n = a.shape[0]
    blocks = -(-n // block_rows)
    pa = jnp.pad(pa, ((0, blocks * block_rows - n), (0, 0))).reshape(blocks, block_rows, -1)

    def rows(block):
        return _mlp(params["rest"], block[:, None, :] + pb[None, :, :], dtype)[..., 0].astype(jnp.float32)

    return jax.lax.map(rows, pa).reshape(blocks * block_rows, n)[:n]


def init_separable_critic(
    key: jax.Array, da: int, db: int, hidden: Sequence[int] = (128, 128), embed_dim: int = 64
) -> dict:
    """Parameters of f(a, b) = g(a) . h(b), g and h MLPs with ``hidden`` ReLU layers to ``embed_dim``."""
    dims_g, dims_h = (da, *hidden, embed_dim), (db, *hidden, embed_dim)
    pairs = lambda dims: list(zip(dims[:-1], dims[1:]))  # noqa: E731
    layers = _dense_layers(key, pairs(dims_g) + pairs(dims_h))
    return {"g": layers[: len(dims_g) - 1], "h": layers[len(dims_g) - 1 :]}


def _embed(layers, x, dtype):
    h = x.astype(dtype) @ layers[0]["w"].astype(dtype) + layers[0]["b"].astype(dtype)
    return _mlp(layers[1:], h, dtype)


def separable_critic_matrix(params: dict, a: jax.Array, b: jax.Array, dtype=jnp.float32, block_rows: int = 128
                            ) -> jax.Array:
    """All B x B scores ``f32[B, B]``, ``[i, j] = g(a_i) . h(b_j)``: one matmul (``block_rows`` is unused;
    it is there so every family's matrix function takes the same arguments)."""
    return (_embed(params["g"], a, dtype) @ _embed(params["h"], b, dtype).T).astype(jnp.float32)


def separable_critic_scores(
    params: dict, a: jax.Array, b: jax.Array, neg_index: jax.Array, dtype=jnp.float32
) -> tuple[jax.Array, jax.Array]:
    """Scores of the separable critic: ``(pos f32[B], neg f32[B, K])`` from one B x B matmul."""
    s = separable_critic_matrix(params, a, b, dtype)
    return jnp.diagonal(s), jnp.take_along_axis(s, neg_index, axis=1)


# --------------------------------------------------------------------------------------------------
# The registry: one entry per family
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ClosedForm:
    """How a family is fitted without training: moments accumulated over the training split, solved once.

    Attributes:
      zero: ``(da, db, capacity) -> moments``, the empty moments pytree for at most ``capacity`` rows
        (a family may keep the rows themselves where that is cheaper).
      add: ``(moments, a f[B, da], b f[B, db], weight f[B]) -> moments``.
      solve: ``moments -> params`` (every pair or component of the family).
      ranks: ``(da, db) -> tuple[int, ...]``, the model sizes compared on the validation split when
        ``MIConfig.critic.rank`` is 0.
      keep: ``(params, rank int or int32[]) -> params`` of that size.
    """

    zero: Callable[[int, int, int], Any]
    add: Callable[..., Any]
    solve: Callable[[Any], dict]
    ranks: Callable[[int, int], tuple]
    keep: Callable[[dict, Any], dict]


@dataclasses.dataclass(frozen=True)
class Critic:
    """One family of critics as pure functions of its params pytree (jit-, vmap- and grad-safe).

    Attributes:
      init: ``(key, da, db, hidden, embed_dim, rank) -> params``; a family reads the options it has.
      scores: ``(params, a f[B, da], b f[B, db], neg_index int32[B, K], dtype) -> (pos f32[B],
        neg f32[B, K])``.
      matrix: ``(params, a f[B, da], b f[B, db], dtype, block_rows) -> f32[B, B]``, every pair's score.
      takes_rank: whether ``rank`` (``MIConfig.critic.rank``) is an option of it.
      fit: None for a family trained by gradient steps; a :class:`ClosedForm` for one fitted to the
        training split in closed form (the estimator then runs no critic epochs).
    """

    init: Callable[..., dict]
    scores: Callable[..., tuple[jax.Array, jax.Array]]
    matrix: Callable[..., jax.Array]
    takes_rank: bool = False
    fit: Optional[ClosedForm] = None

    @property
    def trained(self) -> bool:
        """Whether the family's critic is trained by steps (online critics and :func:`ibjax.mi.update`
        need one)."""
        return self.fit is None


def _init_concat(key, da, db, hidden, embed_dim, rank):
    return init_concat_critic(key, da, db, hidden, rank)


def _init_separable(key, da, db, hidden, embed_dim, rank):
    return init_separable_critic(key, da, db, hidden, embed_dim)


def _init_gaussian(key, da, db, hidden, embed_dim, rank):
    del key, hidden, embed_dim, rank
    return gaussian.init_gaussian_critic(da, db)


CRITICS: dict[str, Critic] = {
    "concat": Critic(init=_init_concat, scores=concat_critic_scores, matrix=concat_critic_matrix, takes_rank=True),
    "separable": Critic(init=_init_separable, scores=separable_critic_scores, matrix=separable_critic_matrix),
    "gaussian": Critic(init=_init_gaussian, scores=gaussian.gaussian_critic_scores,
                       matrix=gaussian.gaussian_critic_matrix, takes_rank=True,
                       fit=ClosedForm(zero=gaussian.zero_stats, add=gaussian.add_stats,
                                      solve=gaussian.fit_gaussian_critic, ranks=gaussian.pair_ranks,
                                      keep=gaussian.keep_pairs)),
}
"""The critic families by name: the values ``MIConfig.critic.family`` takes (saved configs hold them)."""


def get_critic(kind: str) -> Critic:
    """The family ``kind`` names in :data:`CRITICS`; ValueError listing the known names otherwise."""
    try:
        return CRITICS[kind]
    except (KeyError, TypeError):
        raise ValueError(f"unknown critic {kind!r}; known critics: {', '.join(CRITICS)}") from None


def init_critic(key: jax.Array, kind: str, da: int, db: int, hidden: Sequence[int], embed_dim: int = 64,
                rank: int = 0) -> dict:
    """Initialise a critic of family ``kind`` (``embed_dim``: the separable critic's embedding width;
    ``rank``: the concat critic's bottleneck)."""
    return get_critic(kind).init(key, da, db, hidden, embed_dim, rank)


def critic_scores(kind: str, params: dict, a, b, neg_index, dtype=jnp.float32):
    """``(pos f32[B], neg f32[B, K])`` of a batch under family ``kind``'s scores function."""
    return get_critic(kind).scores(params, a, b, neg_index, dtype)


def critic_matrix(kind: str, params: dict, a: jax.Array, b: jax.Array, dtype=jnp.float32, block_rows: int = 128
                  ) -> jax.Array:
    """All B x B scores ``f32[B, B]``, ``[i, j] = f(a_i, b_j)``, of a batch a f[B, da], b f[B, db]
    (the concat critic ``block_rows`` rows at a time, so memory stays O(block_rows * B * width))."""
    return get_critic(kind).matrix(params, a, b, dtype, block_rows)


