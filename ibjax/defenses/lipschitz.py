"""The parameter-space view of a backdoor: channel Lipschitz constants (UCLC), the trigger-activated
change (TAC), Grond's Adversarial Backdoor Injection (ABI) and the CLP defence.

A backdoor tends to live in a few channels that react strongly to the trigger, which shows up as a
large upper bound on the channel's Lipschitz constant (Zheng et al., ECCV 2022, "CLP"): for
output channel k of a convolution followed by batch norm, UCLC_k = |gamma_k| / sigma_k times the
largest singular value of the channel's kernel as an ``[in_channels, kh * kw]`` matrix. CLP prunes
(zeroes the batch norm of) every channel above its layer's mean + u std; Grond's ABI (Xu et al.,
2025) instead sets those channels' scale and bias to the layer's means after every training epoch,
so that the backdoor spreads over unremarkable channels.

Rules as the Grond and backdoor-stealthiness code (xiaoyunxxy/grond ``lipschitzness_pruning.py``,
xiaoyunxxy/backdoor-stealthiness ``eval_metrics.py``): the standard deviation with Bessel's
correction, a strict ``>``, and the layer means over all its channels (the flagged ones included).
One departure, ``eps``: sigma_k = sqrt(running var + eps) with the batch norm's own eps (1e-5),
which is the scale the network applies; ``eps=0`` is the reference's sqrt(running var).

Pure functions of a network's variables (``{"params", "batch_stats"}``) and arrays; the per-layer
arithmetic jits and vmaps over a population's member axis.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from ibjax.defenses.network import conv_bn_pairs, get_leaf, set_bn

__all__ = ["channel_lipschitz", "layer_outliers", "uclc_score", "abi_reset", "clp_prune", "trigger_activated_change",
           "tac_uclc_product", "BN_EPS"]

BN_EPS = 1e-5
"""ibjax's batch-norm epsilon (:mod:`ibjax.models`)."""


def _kernel_norms(kernel: jax.Array) -> jax.Array:
    """Largest singular value f32[C_out] of every output channel's kernel f[kh, kw, C_in, C_out] as an
    ``[C_in, kh * kw]`` matrix (the reference's reshape of PyTorch's [out, in, kh, kw] weight)."""
    kh, kw, cin, cout = kernel.shape
    mats = jnp.transpose(kernel.astype(jnp.float32), (3, 2, 0, 1)).reshape(cout, cin, kh * kw)
    return jnp.linalg.svd(mats, compute_uv=False)[:, 0]


def channel_lipschitz(variables, model_name: str, eps: float = BN_EPS) -> dict[tuple[str, ...], jax.Array]:
    """UCLC of every channel of every convolution + batch-norm pair: ``{bn path: f32[C]}``.

    ``model_name`` is the network's name in :data:`ibjax.models.MODELS` (its layer names say what
    pairs with what: :func:`ibjax.defenses.network.conv_bn_pairs`).
    """
    out = {}
    for conv, bn in conv_bn_pairs(variables, model_name):
        scale = jnp.abs(get_leaf(variables, "params", bn, "scale")) * jax.lax.rsqrt(
            get_leaf(variables, "batch_stats", bn, "var") + eps)
        out[bn] = scale * _kernel_norms(get_leaf(variables, "params", conv, "kernel"))
    return out


def layer_outliers(values: jax.Array, u: float = 3.0) -> jax.Array:
    """bool[C]: channels whose value exceeds the layer's mean + u x std (Bessel-corrected)."""
    return values > jnp.mean(values) + u * jnp.std(values, ddof=1)


def uclc_score(variables, model_name: str, eps: float = BN_EPS) -> tuple[jax.Array, jax.Array]:
    """The model's UCLC score: the largest per-layer z-score of any channel (each layer's UCLC
    standardised by its own mean and Bessel-corrected std; backdoor-stealthiness' ``UCLC``), and the
    number of channels above mean + 3 std (what CLP would prune). ``(f32[], int32[])``."""
    z, n = [], []
    for v in channel_lipschitz(variables, model_name, eps).values():
        z.append(jnp.max((v - jnp.mean(v)) / jnp.maximum(jnp.std(v, ddof=1), 1e-12)))
        n.append(jnp.sum(layer_outliers(v)))
    return jnp.max(jnp.stack(z)), jnp.sum(jnp.stack(n)).astype(jnp.int32)


def _rewrite_outliers(variables, model_name: str, u: float, eps: float, rule: str):
    flagged = {}
    for bn, v in channel_lipschitz(variables, model_name, eps).items():
        mask = layer_outliers(v, u)
        scale, bias = get_leaf(variables, "params", bn, "scale"), get_leaf(variables, "params", bn, "bias")
        if rule == "mean":
            new_s, new_b = jnp.mean(scale), jnp.mean(bias)
        else:
            new_s = new_b = jnp.zeros((), scale.dtype)
        variables = set_bn(variables, bn, jnp.where(mask, new_s, scale), jnp.where(mask, new_b, bias))
        flagged[bn] = mask
    return variables, flagged


def abi_reset(variables, model_name: str, u: float = 3.0, eps: float = BN_EPS):
    """Grond's Adversarial Backdoor Injection on a network: every channel whose UCLC exceeds its
    layer's mean + u std gets the layer's mean batch-norm scale and bias. Returns ``(variables,
    {bn path: bool[C] flagged})``; running statistics and kernels are untouched."""
    return _rewrite_outliers(variables, model_name, u, eps, "mean")


def clp_prune(variables, model_name: str, u: float = 3.0, eps: float = BN_EPS):
    """CLP, the data-free defence: every channel whose UCLC exceeds its layer's mean + u std gets
    batch-norm scale and bias 0. Returns ``(variables, {bn path: bool[C] pruned})``."""
    return _rewrite_outliers(variables, model_name, u, eps, "zero")


def trigger_activated_change(clean_maps: jax.Array, triggered_maps: jax.Array,
                             valid: Optional[jax.Array] = None) -> jax.Array:
    """TAC per channel, f32[D]: the mean over inputs of the L2 norm, over the h x w map, of the
    change of each channel of the last block's output when the trigger is added.

    Args:
      clean_maps, triggered_maps: f[N, h, w, D] feature maps (:func:`ibjax.models.feature_map`) of
        the same (non-target) images without and with the trigger.
      valid: optional bool[N] rows that count.
    """
    d = jnp.sqrt(jnp.sum((triggered_maps.astype(jnp.float32) - clean_maps.astype(jnp.float32)) ** 2, axis=(1, 2)))
    w = jnp.ones(d.shape[:1], jnp.float32) if valid is None else jnp.asarray(valid, jnp.float32)
    return w @ d / jnp.maximum(jnp.sum(w), 1.0)


def tac_uclc_product(uclc_last: jax.Array, tac_model: jax.Array, tac_benign: jax.Array) -> jax.Array:
    """TUP, backdoor-stealthiness' parameter-space metric: the last convolution's UCLC f32[D] of each
    channel times the ratio of its TAC to a benign model's TAC of the same rank (both sorted on
    their own), averaged over channels. f32[]."""
    order = jnp.argsort(tac_model)
    ratio = tac_model[order] / jnp.maximum(jnp.sort(tac_benign), 1e-12)
    return jnp.mean(uclc_last[order] * ratio)
