"""BAN (Xu et al., NeurIPS 2024): backdoored networks are fragile to adversarial neuron noise; with
that noise and the network's most decisive features masked out, a backdoored network sends clean
inputs to its target class.

Three stages on a small clean data set of the defender's:

1. **Feature mask.** A mask m in [0, 1] over the last block's output map f (per element, shape
   [h, w, D]) is fitted with Adam to ``CE(head(m f)) - CE(head((1 - m) f)) + lambda |m|_1 / sg(|m|_1)``
   (the kept features explain the labels, the rest does not; the L1 term normalised by its own
   value, so its gradient is lambda sign(m) / |m|_1).
2. **Neuron noise.** Every batch-norm channel's scale and bias are multiplied by ``1 + d``, and d is
   raised by sign-gradient ascent on the cross-entropy (``steps`` steps of ``eps / steps`` per batch).
3. **Score.** On held-out clean images, with the noise on and the negative mask ``1 - m``: the
   histogram of predictions. Its largest class fraction is the score (a backdoored network
   collapses onto its target, which the histogram's mode names), and the accuracy under noise
   falls.

``BANConfig()`` is the method with the BAN code's README settings (eps 0.3, 30 steps, lambda 0.75,
Adam 0.01 for 20 epochs of 20 batches of 128) and the paper's rules where the official code departs
from them: the noise projected onto [-eps, eps], one noise raised over fresh batches (``steps``
steps from a random start, as strong as the official code's but fitted to the whole fitting set,
not its last batch), the mask clamped after its Adam step, scoring data apart from the fitting data.
Batch norm runs in training mode through both fitting stages, as in the official code: measured on
a BadNets small CNN and its clean twin (mnist5k, docs/defenses.md), with batch norm on the
running statistics the noise collapses the clean network onto one class as surely as the
backdoored one (both score 1.0 at eps 0.1 to 0.3), with batch statistics only the backdoored one
(1.0 against 0.45 to 0.72, three keys). ``BAN_REFERENCE`` is the official code's behaviour
(xiaoyunxxy/ban ``ban_detection.py``): no projection (its clip is commented out, so |d| reaches
2 eps), the noise drawn afresh for every batch (only the last batch's is scored) and the mask
clamped before its Adam step.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Literal

import jax
import jax.numpy as jnp
import optax
from flax import struct

from ibjax.defenses.network import bn_paths, classifier_logits, get_leaf, scale_bn
from ibjax.fields import Config
from ibjax.models import feature_map

__all__ = ["BANConfig", "BAN_REFERENCE", "BANResult", "ban_detect"]


@dataclasses.dataclass(frozen=True)
class BANConfig(Config):
    """BAN's settings.

    Attributes:
      eps: bound of the relative neuron noise d (also its random start's range).
      steps: sign-gradient steps per batch (step size eps / steps).
      noise_batches: ``noise_reset="batch"`` only: batches the noise is drawn afresh and raised on.
      mask_lambda: weight of the normalised L1 term of the mask.
      mask_lr: Adam learning rate of the mask.
      mask_epochs, mask_batches: the mask trains for mask_epochs x mask_batches Adam steps.
      batch_size: images per fitting batch, drawn with replacement from the fitting set.
      clip_noise: project d onto [-eps, eps] after every step (the paper); False: the official code.
      noise_reset: ``"once"``: d starts once and each of its ``steps`` steps is taken on a fresh
        batch; ``"batch"`` (the official code): d is drawn afresh for each of ``noise_batches``
        batches and raised ``steps`` times on it, so the last batch's noise is scored.
      bn_mode: ``"train"`` (the official code): batch statistics while fitting, the running
        statistics updated by every fitting batch and then used for the score; ``"eval"``: the
        network's running statistics throughout.
      mask_clamp: ``"after"``: the mask is clamped to [0, 1] after each Adam step (projected
        gradient); ``"before"`` (the official code): before it, so the final mask may leave [0, 1]
        by one step.
    """

    eps: float = 0.3
    steps: int = 30
    noise_batches: int = 20
    mask_lambda: float = 0.75
    mask_lr: float = 0.01
    mask_epochs: int = 20
    mask_batches: int = 20
    batch_size: int = 128
    clip_noise: bool = True
    noise_reset: Literal["once", "batch"] = "once"
    bn_mode: Literal["eval", "train"] = "train"
    mask_clamp: Literal["after", "before"] = "after"

    def check(self) -> None:
        if self.eps <= 0 or self.steps < 1 or self.noise_batches < 1 or self.batch_size < 1:
            raise ValueError("BAN needs eps > 0 and steps, noise_batches, batch_size >= 1")
        if self.mask_epochs * self.mask_batches < 1:
            raise ValueError("BAN needs mask_epochs x mask_batches >= 1 mask steps")


BAN_REFERENCE = BANConfig(clip_noise=False, noise_reset="batch", mask_clamp="before")
"""The official BAN code's behaviour (see the module docstring)."""


@struct.dataclass
class BANResult:
    """What BAN reads from one network.

    Attributes:
      score: f32[], the largest class fraction of the noisy, negatively masked predictions (1/K for a
        uniform histogram, 1 for a network that sends every image to one class).
      target: int32[], that class (the suspected target).
      accuracy: f32[], accuracy of those predictions (noise on, negative mask).
      noisy_accuracy: f32[], accuracy with the noise on and no mask.
      histogram: f32[K], the fraction of scoring images predicted as each class.
      mask_l1: f32[], mean of the fitted mask (the share of features it keeps).
    """

    score: jax.Array
    target: jax.Array
    accuracy: jax.Array
    noisy_accuracy: jax.Array
    histogram: jax.Array
    mask_l1: jax.Array


_SCORE_CHUNK = 500  # scoring images per network call


def _ce(logits, labels):
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels))


def _forward(model, variables, x, key, train: bool):
    """(feature map, logits, batch_stats) in the config's batch-norm mode."""
    if train:
        return feature_map(model, variables, x, key, train=True)
    f, logits = feature_map(model, variables, x, key)
    return f, logits, variables["batch_stats"]


def _with_stats(variables, stats):
    return {**variables, "batch_stats": stats}


@functools.partial(jax.jit, static_argnames=("model", "config"))
def ban_detect(key: jax.Array, model: Any, variables, fit_images: jax.Array, fit_labels: jax.Array,
               score_images: jax.Array, score_labels: jax.Array, config: BANConfig = BANConfig()) -> BANResult:
    """Run BAN on one network (vmap over a population's member axis for many).

    Args:
      key: PRNG key (mask start, batches, noise start, the network's own noise).
      model: the Flax module (static).
      variables: its ``{"params", "batch_stats"}``.
      fit_images, fit_labels: f[M, H, W, C] in [0, 1] and int[M]: the defender's clean fitting set
        (BAN: 1% of the training set).
      score_images, score_labels: the clean images the score is read on (kept apart from the
        fitting set by ibjax's callers; the official code scores on a superset of it).
      config: :class:`BANConfig` (static).

    Returns:
      :class:`BANResult`.
    """
    train_bn = config.bn_mode == "train"
    k_mask, k_mb, k_noise, k_nb, k_score = jax.random.split(key, 5)
    m_fit = fit_images.shape[0]
    fmap_shape = jax.eval_shape(lambda x: feature_map(model, variables, x, key)[0], fit_images[:1]).shape[1:]

    def batch(k):
        k_idx, k_net = jax.random.split(k)
        idx = jax.random.randint(k_idx, (config.batch_size,), 0, m_fit)
        return fit_images[idx].astype(jnp.float32), fit_labels[idx], k_net

    # Stage 1: the feature mask (the network fixed; its batch statistics move in train mode).
    opt = optax.adam(config.mask_lr)
    mask0 = jax.random.uniform(k_mask, fmap_shape)

    def mask_step(carry, k):
        mask, opt_state, stats = carry
        x, y, k_net = batch(k)
        f, _, new_stats = _forward(model, _with_stats(variables, stats), x, k_net, train_bn)
        f = jax.lax.stop_gradient(f)
        k_pos, k_neg = jax.random.split(k_net)

        def loss(m):
            l1 = jnp.sum(jnp.abs(m))
            # normalised by its own value (a mask clamped to all zeros would make it 0 / 0)
            return (_ce(classifier_logits(variables, model, m * f, k_pos), y)
                    - _ce(classifier_logits(variables, model, (1.0 - m) * f, k_neg), y)
                    + config.mask_lambda * l1 / jnp.maximum(jax.lax.stop_gradient(l1), 1e-12))

        g = jax.grad(loss)(mask)
        if config.mask_clamp == "before":
            mask = jnp.clip(mask, 0.0, 1.0)
        upd, opt_state = opt.update(g, opt_state, mask)
        mask = optax.apply_updates(mask, upd)
        if config.mask_clamp == "after":
            mask = jnp.clip(mask, 0.0, 1.0)
        return (mask, opt_state, new_stats), None

    steps_mask = config.mask_epochs * config.mask_batches
    (mask, _, stats), _ = jax.lax.scan(mask_step, (mask0, opt.init(mask0), variables["batch_stats"]),
                                       jax.random.split(k_mb, steps_mask))

    # Stage 2: neuron noise on every batch norm's scale and bias.
    paths = bn_paths(variables)

    def draw(k):
        ks = jax.random.split(k, len(paths))
        return {p: jax.random.uniform(kk, (2, *get_leaf(variables, "params", p, "scale").shape),
                                      minval=-config.eps, maxval=config.eps)
                for p, kk in zip(paths, ks)}

    def noisy(d, stats):
        return scale_bn(_with_stats(variables, stats), {p: (1.0 + v[0], 1.0 + v[1]) for p, v in d.items()})

    lr = config.eps / config.steps

    def ascent(d, stats, x, y, k):
        def loss(d):
            _, logits, new_stats = _forward(model, noisy(d, stats), x, k, train_bn)
            return _ce(logits, y), new_stats

        g, new_stats = jax.grad(loss, has_aux=True)(d)
        d = jax.tree.map(lambda v, gv: v + lr * jnp.sign(gv), d, g)
        if config.clip_noise:
            d = jax.tree.map(lambda v: jnp.clip(v, -config.eps, config.eps), d)
        return d, new_stats

    if config.noise_reset == "once":
        # one noise, each of its steps on a fresh batch: the official code's strength (steps steps
        # from a random start), fitted to the whole fitting set instead of its last batch
        def noise_step(carry, k):
            d, stats = carry
            x, y, k_net = batch(k)
            return ascent(d, stats, x, y, k_net), None

        (d, stats), _ = jax.lax.scan(noise_step, (draw(k_noise), stats), jax.random.split(k_nb, config.steps))
    else:
        def noise_batch(carry, k):
            _, stats = carry
            k_start, k_b = jax.random.split(k)
            x, y, k_net = batch(k_b)

            def on_batch(carry, kk):
                return ascent(*carry, x, y, kk), None

            return jax.lax.scan(on_batch, (draw(k_start), stats), jax.random.split(k_net, config.steps))[0], None

        (d, stats), _ = jax.lax.scan(noise_batch, (draw(k_noise), stats), jax.random.split(k_nb, config.noise_batches))

    # Stage 3: predictions under noise with the negative mask, batch norm on (the fitted) running
    # stats; in chunks, so a large scoring set never runs through the network at once.
    noisy_vars = noisy(d, stats)
    n = score_images.shape[0]
    chunk = min(n, _SCORE_CHUNK)
    pad = -n % chunk
    xs = jnp.concatenate([score_images.astype(jnp.float32), jnp.zeros((pad, *score_images.shape[1:]), jnp.float32)])

    def predict(args):
        xb, kk = args
        k_f, k_h = jax.random.split(kk)
        f, plain_logits = feature_map(model, noisy_vars, xb, k_f)
        masked = classifier_logits(noisy_vars, model, (1.0 - mask) * f, k_h)
        return jnp.argmax(masked, axis=-1), jnp.argmax(plain_logits, axis=-1)

    chunks = xs.reshape(-1, chunk, *score_images.shape[1:])
    pred, plain = jax.lax.map(predict, (chunks, jax.random.split(k_score, chunks.shape[0])))
    pred, plain = pred.reshape(-1)[:n], plain.reshape(-1)[:n]
    k = jax.eval_shape(lambda z: model.apply(variables, z, train=False, rngs={"noise": key}), score_images[:1])[0].shape[-1]
    hist = jnp.bincount(pred, length=k) / n
    return BANResult(
        score=jnp.max(hist),
        target=jnp.argmax(hist).astype(jnp.int32),
        accuracy=jnp.mean(pred == score_labels),
        noisy_accuracy=jnp.mean(plain == score_labels),
        histogram=hist,
        mask_l1=jnp.mean(mask),
    )
