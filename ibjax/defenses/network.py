"""What the model-level defences read from an ibjax network's variables: its batch-norm layers, the
convolution that feeds each of them, and its classifier applied to a (masked) feature map.

ibjax's networks (:mod:`ibjax.models`) name their layers so that every batch norm of the
post-activation networks follows one convolution of a known name: ``conv{k}`` -> ``bn{k}`` (small
CNN, VGG-16, a block's ``conv1``/``conv2`` -> ``bn1``/``bn2``), ``stem`` -> ``stem_bn``,
``shortcut_conv`` -> ``shortcut_bn``. PreAct-ResNet-18 normalises *before* its convolutions, so a
channel's convolution and normalisation are not one linear map there and it has no pairs.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
from flax import traverse_util

__all__ = ["bn_paths", "conv_bn_pairs", "get_leaf", "scale_bn", "set_bn", "classifier_logits", "PAIRED_MODELS"]

PAIRED_MODELS = ("small_cnn", "resnet18", "vgg16")
"""The networks whose batch norms each follow one convolution (see :func:`conv_bn_pairs`)."""

Path = tuple[str, ...]


def bn_paths(variables) -> tuple[Path, ...]:
    """Paths (module names from the root) of every batch-norm layer: the modules with ``scale`` and
    ``bias`` parameters and running statistics, in the order of the parameter tree."""
    flat = traverse_util.flatten_dict(dict(variables["params"]))
    stats = traverse_util.flatten_dict(dict(variables.get("batch_stats", {})))
    out = []
    for path in flat:
        if path[-1] == "scale" and path[:-1] + ("bias",) in flat and path[:-1] + ("var",) in stats:
            out.append(path[:-1])
    return tuple(out)


def _conv_name(bn: str) -> Optional[str]:
    if bn.startswith("bn") and bn[2:].isdigit():
        return "conv" + bn[2:]
    return {"stem_bn": "stem", "shortcut_bn": "shortcut_conv"}.get(bn)


def conv_bn_pairs(variables, model_name: str) -> tuple[tuple[Path, Path], ...]:
    """``(conv path, bn path)`` of every batch norm and the convolution it normalises.

    Raises ValueError for a network outside :data:`PAIRED_MODELS` or a tree whose names do not pair.
    """
    if model_name not in PAIRED_MODELS:
        raise ValueError(f"channel Lipschitz constants need each batch norm to follow one convolution; "
                         f"{model_name!r} does not: use one of {', '.join(PAIRED_MODELS)}")
    params = traverse_util.flatten_dict(dict(variables["params"]))
    pairs = []
    for bn in bn_paths(variables):
        name = _conv_name(bn[-1])
        conv = bn[:-1] + (name,) if name else None
        if conv is None or conv + ("kernel",) not in params:
            raise ValueError(f"batch norm {'/'.join(bn)} has no convolution {name!r} beside it in this {model_name}")
        pairs.append((conv, bn))
    return tuple(pairs)


def _get(tree, path: Path):
    for p in path:
        tree = tree[p]
    return tree


def get_leaf(variables, collection: str, path: Path, name: str) -> jax.Array:
    """``variables[collection][path...][name]``."""
    return _get(variables[collection], path)[name]


def scale_bn(variables, factors: dict[Path, tuple[jax.Array, jax.Array]]):
    """``variables`` with every listed batch norm's scale and bias multiplied per channel:
    ``factors[path] = (f_scale f32[C], f_bias f32[C])`` (BAN's neuron noise is ``1 + d``).
    Differentiable in the factors; the other leaves are shared, not copied."""
    flat = traverse_util.flatten_dict(dict(variables["params"]))
    for path, (fs, fb) in factors.items():
        flat[path + ("scale",)] = flat[path + ("scale",)] * fs
        flat[path + ("bias",)] = flat[path + ("bias",)] * fb
    return {**variables, "params": traverse_util.unflatten_dict(flat)}


def set_bn(variables, path: Path, scale: jax.Array, bias: jax.Array):
    """``variables`` with one batch norm's scale and bias replaced."""
    flat = traverse_util.flatten_dict(dict(variables["params"]))
    flat[path + ("scale",)], flat[path + ("bias",)] = scale, bias
    return {**variables, "params": traverse_util.unflatten_dict(flat)}


def classifier_logits(variables, model: Any, fmap: jax.Array, key: Optional[jax.Array] = None) -> jax.Array:
    """The network's head on a feature map f32[B, h, w, D] (e.g. masked): global average pooling,
    the ``gamma_ty`` noise (from ``key``; none without one) and the ``classifier`` layer. f32[B, K]."""
    t = jnp.mean(fmap.astype(jnp.float32), axis=(1, 2))
    gamma = getattr(model, "gamma_ty", 0.0)
    if key is not None and not (isinstance(gamma, (int, float)) and gamma <= 0):
        t = t + gamma * jax.random.normal(key, t.shape, t.dtype)
    head = variables["params"]["classifier"]
    return jnp.matmul(t, head["kernel"], precision=jax.lax.Precision.HIGHEST) + head["bias"]
