"""Flax CNNs with Gaussian noise injection, as the information-bottleneck study uses them.

Every model maps images ``f32[B, H, W, C]`` in [0, 1] to ``(logits f32[B, num_classes], T f32[B, D])``
where ``T`` is the last hidden representation (the global-average-pooled output of the last block;
D = 512 for ResNet-18 / PreAct-ResNet-18 / VGG-16).

Noise injection makes T a stochastic function of X so that I(X;T) is finite: Gaussian noise of std
``gamma_xt`` is added inside every block (ResNets: after the first ReLU and after the residual-add
ReLU; VGG and the small CNN: after every conv ReLU) and noise of std ``gamma_ty`` is added to the
pooled representation before the classifier. The noise is drawn from the ``'noise'`` RNG stream and is
on whenever gamma > 0, in training, evaluation and MI estimation alike (the reference protocol).
``noise_generator`` picks the bits behind it (:func:`ibjax.rng.normal`): the key's own Threefry
(default) or Philox, the same distribution at about half the cost on XLA:CPU, where drawing the
noise is a large share of a small network's step.

T is the pooled output of the last block *before* the ``gamma_ty`` noise (SPEC.md: "T = global-average-
pooled output of the last block"; the authors read it with a hook on the last block). The classifier
reads T + N(0, gamma_ty^2), so Y_pred is a noisy function of T and I(T;Y_pred) is finite; with the
noisy T returned instead, Y_pred would be a deterministic function of T.

The last block's output before pooling (f32[B, h, w, D], what BAN masks and TAC compares) is sown
as ``intermediates/feature_map`` when ``apply`` is called with ``mutable=["intermediates"]``
(:func:`feature_map`); a plain ``init`` or ``apply`` stores nothing.

Batch norm runs on batch statistics when ``train=True`` (collection ``batch_stats`` mutable) and on the
running averages otherwise. ``dtype`` is the compute dtype (float32 for exactness, bfloat16 for speed);
parameters stay float32 and the returned logits and T are float32.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Literal, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ibjax import rng
from ibjax.fields import Config

Dtype = Any

__all__ = [
    "ModelConfig",
    "SmallCNN",
    "ResNet18",
    "PreActResNet18",
    "VGG16",
    "MODELS",
    "INITS",
    "make_model",
    "NOISE_FIELDS",
    "with_noise_levels",
    "feature_map",
    "FEATURE_MAP",
]


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 max pooling with stride 2, ``f32[B, H, W, C] -> f32[B, H // 2, W // 2, C]``.

    The same function as ``nn.max_pool(x, (2, 2), (2, 2))`` (an odd last row or column is dropped),
    written as a reshape and a max, because XLA:CPU's ``reduce_window`` / ``select_and_scatter`` pair
    took over half of a small-CNN training step (docs/measurements.md, "CPU tuning").
    Where a window holds equal maxima the gradient is split between them instead of going to the
    first; after the models' additive noise such ties have probability zero.
    """
    b, h, w, c = x.shape
    x = x[:, : h // 2 * 2, : w // 2 * 2]
    return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


INITS = ("flax", "authors")
"""Weight initialisations: ``"flax"`` (Flax's defaults: LeCun normal kernels, zero biases) or
``"authors"`` (the authors' PyTorch networks: Kaiming-normal fan-out convolutions for ReLU, and
PyTorch's default Linear classifier, weights and bias uniform in +-1/sqrt(fan_in))."""

# Kaiming normal, fan_out, ReLU gain: std = sqrt(2 / (out_channels * kh * kw)) (torch.nn.init.kaiming_normal_).
_KAIMING_FAN_OUT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# PyTorch's Linear default (kaiming_uniform with a = sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
_TORCH_LINEAR = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def _conv(features: int, kernel: int, strides: int, name: str, dtype: Dtype, init: str = "flax") -> nn.Conv:
    """A bias-free k x k convolution with 'same'-style padding (as torchvision's CIFAR ResNets)."""
    pad = kernel // 2
    extra = {"kernel_init": _KAIMING_FAN_OUT} if init == "authors" else {}
    return nn.Conv(features, (kernel, kernel), (strides, strides), padding=[(pad, pad)] * 2, use_bias=False,
                   dtype=dtype, name=name, **extra)


def _pooled_head(module: nn.Module, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The study's head, called inside ``module``'s compact ``__call__``: T = global average pool of
    ``x``, and the logits of a linear classifier on T + N(0, gamma_ty^2) (both float32)."""
    x = x.astype(jnp.float32)
    if module.is_mutable_collection("intermediates") and not module.is_initializing():
        module.sow("intermediates", FEATURE_MAP, x, reduce_fn=lambda _, new: new, init_fn=lambda: None)
    t = jnp.mean(x, axis=(1, 2))
    extra = {}
    if module.weight_init == "authors":
        bound = 1.0 / float(t.shape[-1]) ** 0.5
        extra = {"kernel_init": _TORCH_LINEAR,
                 "bias_init": lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)}
    logits = nn.Dense(module.num_classes, dtype=module.dtype, name="classifier", **extra)(
        _noise(t, module.gamma_ty, module))
    return logits.astype(jnp.float32), t


FEATURE_MAP = "feature_map"


def feature_map(model: nn.Module, variables, x: jax.Array, key: jax.Array, train: bool = False):
    """The last block's output before pooling, ``f32[B, h, w, D]``, and the logits f32[B, K] of the
    same forward pass (noise from ``key``). ``train=True`` normalises with batch statistics and
    also returns the updated ``batch_stats``: ``(features, logits[, batch_stats])``."""
    mutable = ["intermediates", "batch_stats"] if train else ["intermediates"]
    (logits, _), state = model.apply(variables, x, train=train, rngs={"noise": key}, mutable=mutable)
    fmap = state["intermediates"][FEATURE_MAP]
    return (fmap, logits, state["batch_stats"]) if train else (fmap, logits)


def _noise(x: jax.Array, std, module: nn.Module) -> jax.Array:
    """Add N(0, std^2) noise from the module's 'noise' RNG stream.

    ``std`` is a Python number (a static module field: no-op, and no RNG draw, for std == 0) or a
    traced scalar (a population of runs with per-member noise levels, :func:`with_noise_levels`:
    always drawn, so a member draws exactly what the same run alone draws when its std > 0).
    """
    if isinstance(std, (int, float)) and std <= 0.0:
        return x
    eps = rng.normal(module.make_rng("noise"), x.shape, generator=module.noise_generator)
    return x + (std * eps).astype(x.dtype)


class _Block(nn.Module):
    """Fields shared by the residual blocks: width, stride, noise std gamma_xt, dtype, norm factory,
    noise bit generator."""

    features: int
    strides: int
    gamma: float
    dtype: Dtype
    norm: Callable[..., nn.Module]
    noise_generator: str = "threefry"
    weight_init: str = "flax"


class _BasicBlock(_Block):

    @nn.compact
    def __call__(self, x):
        conv = functools.partial(_conv, dtype=self.dtype, init=self.weight_init)
        y = conv(self.features, 3, self.strides, "conv1")(x)
        y = nn.relu(self.norm(name="bn1")(y))
        y = _noise(y, self.gamma, self)
        y = conv(self.features, 3, 1, "conv2")(y)
        y = self.norm(name="bn2")(y)
        if self.strides != 1 or x.shape[-1] != self.features:
            x = conv(self.features, 1, self.strides, "shortcut_conv")(x)
            x = self.norm(name="shortcut_bn")(x)
        y = nn.relu(y + x)
        return _noise(y, self.gamma, self)


class _PreActBlock(_Block):

    @nn.compact
    def __call__(self, x):
        conv = functools.partial(_conv, dtype=self.dtype, init=self.weight_init)
        out = nn.relu(self.norm(name="bn1")(x))
        out = _noise(out, self.gamma, self)
        shortcut = x
        if self.strides != 1 or x.shape[-1] != self.features:
            shortcut = conv(self.features, 1, self.strides, "shortcut_conv")(out)
        y = conv(self.features, 3, self.strides, "conv1")(out)
        y = nn.relu(self.norm(name="bn2")(y))
        y = conv(self.features, 3, 1, "conv2")(y)
        y = y + shortcut
        return _noise(y, self.gamma, self)


def _norm(train: bool, dtype: Dtype):
    return lambda name: nn.BatchNorm(
        use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype, name=name
    )


class _ResNet(nn.Module):
    """CIFAR-style ResNet: 3x3 stride-1 stem, no max-pool, four stages of basic blocks."""

    num_classes: int = 10
    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    widths: Sequence[int] = (64, 128, 256, 512)
    gamma_xt: float = 0.4
    gamma_ty: float = 0.4
    dtype: Dtype = jnp.float32
    preact: bool = False
    noise_generator: str = "threefry"
    weight_init: str = "flax"

    @nn.compact
    def __call__(self, x, train: bool = False):
        norm = _norm(train, self.dtype)
        block = _PreActBlock if self.preact else _BasicBlock
        x = x.astype(self.dtype)
        x = _conv(self.widths[0], 3, 1, "stem", self.dtype, self.weight_init)(x)
        if not self.preact:
            x = nn.relu(norm("stem_bn")(x))
        for i, (n, w) in enumerate(zip(self.stage_sizes, self.widths)):
            for j in range(n):
                strides = 2 if (i > 0 and j == 0) else 1
                x = block(w, strides, self.gamma_xt, self.dtype, norm, self.noise_generator, self.weight_init,
                          name=f"stage{i}_block{j}")(x)
        if self.preact:
            x = nn.relu(norm("final_bn")(x))
        return _pooled_head(self, x)


class ResNet18(_ResNet):
    """ResNet-18, CIFAR variant (He et al. 2016; 3x3 stride-1 stem, no max-pool). T is 512-d."""


class PreActResNet18(_ResNet):
    """Pre-activation ResNet-18 (He et al. 2016b), the common backdoor-benchmark model. T is 512-d."""

    preact: bool = True


_VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG16(nn.Module):
    """VGG-16 with batch norm; noise after every conv ReLU; T = global-average-pooled 512-d features."""

    num_classes: int = 10
    gamma_xt: float = 0.4
    gamma_ty: float = 0.4
    dtype: Dtype = jnp.float32
    noise_generator: str = "threefry"
    weight_init: str = "flax"

    @nn.compact
    def __call__(self, x, train: bool = False):
        norm = _norm(train, self.dtype)
        x = x.astype(self.dtype)
        k = 0
        for v in _VGG16_CFG:
            if v == "M":
                # Small inputs (e.g. 28x28) reach 1x1 before the last pool; skip pools that cannot halve.
                if x.shape[1] >= 2 and x.shape[2] >= 2:
                    x = max_pool_2x2(x)
                continue
            x = _conv(v, 3, 1, f"conv{k}", self.dtype, self.weight_init)(x)
            x = nn.relu(norm(f"bn{k}")(x))
            x = _noise(x, self.gamma_xt, self)
            k += 1
        return _pooled_head(self, x)


class SmallCNN(nn.Module):
    """A small noisy CNN for tests and CPU runs: conv blocks of ``widths`` with 2x2 pooling between.

    T is the global-average-pooled output of the last block (``widths[-1]``-d).
    """

    num_classes: int = 10
    widths: Sequence[int] = (16, 32, 64)
    gamma_xt: float = 0.4
    gamma_ty: float = 0.4
    dtype: Dtype = jnp.float32
    noise_generator: str = "threefry"
    weight_init: str = "flax"

    @nn.compact
    def __call__(self, x, train: bool = False):
        norm = _norm(train, self.dtype)
        x = x.astype(self.dtype)
        for i, w in enumerate(self.widths):
            if i > 0:
                x = max_pool_2x2(x)
            x = _conv(w, 3, 1, f"conv{i}", self.dtype, self.weight_init)(x)
            x = nn.relu(norm(f"bn{i}")(x))
            x = _noise(x, self.gamma_xt, self)
        return _pooled_head(self, x)


MODELS = {
    "small_cnn": SmallCNN,
    "resnet18": ResNet18,
    "preact_resnet18": PreActResNet18,
    "vgg16": VGG16,
}


@dataclasses.dataclass(frozen=True)
class ModelConfig(Config):
    """Which network to build. Defaults: the study's ResNet-18 with noise 0.4 / 0.4, float32.

    Attributes:
      name: one of ``MODELS`` (small_cnn, resnet18, preact_resnet18, vgg16).
      num_classes: classifier outputs.
      gamma_xt: std of the noise added inside every block (makes I(X;T) finite).
      gamma_ty: std of the noise added to T before the classifier (makes I(T;Y_pred) finite).
      dtype: compute dtype: float32, bfloat16 or float16 (parameters stay float32).
      noise_generator: bits behind the noise: 'threefry' (the key's own jax.random stream) or
        'philox' (ibjax.rng.normal: the same law at about half the cost on XLA:CPU; the cpu preset's).
      weight_init: weight initialisation (:data:`INITS`): 'flax' (Flax's defaults) or 'authors' (their
        PyTorch networks': Kaiming-normal fan-out convolutions, PyTorch's Linear classifier; the
        reference preset's).
    """

    name: str = "resnet18"
    num_classes: int = 10
    gamma_xt: float = 0.4
    gamma_ty: float = 0.4
    dtype: str = "float32"
    noise_generator: Literal["threefry", "philox"] = "threefry"
    weight_init: Literal["flax", "authors"] = "flax"

    def check(self) -> None:
        if self.name not in MODELS:
            raise ValueError(f"unknown model {self.name!r}; choose one of {sorted(MODELS)}")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be 'float32', 'bfloat16' or 'float16', got {self.dtype!r}")
        if self.gamma_xt < 0 or self.gamma_ty < 0:
            raise ValueError("noise stds gamma_xt and gamma_ty must be >= 0")
        if self.noise_generator not in rng.GENERATORS:
            raise ValueError(f"noise_generator must be one of {rng.GENERATORS}, got {self.noise_generator!r}")


NOISE_FIELDS = ("gamma_xt", "gamma_ty")
"""The noise-level fields every model has."""


def with_noise_levels(model: nn.Module, **levels) -> nn.Module:
    """``model`` with noise levels replaced, e.g. by traced per-member scalars inside a vmapped
    population step (``with_noise_levels(model, gamma_xt=g)``). Call it inside the traced function:
    a module holding tracers must not be a static argument. A traced level must be > 0 for the
    member's result to equal its run alone (a static 0 skips the draw, see :func:`_noise`)."""
    unknown = sorted(set(levels) - set(NOISE_FIELDS))
    if unknown:
        raise ValueError(f"unknown noise level(s) {unknown}; models have {NOISE_FIELDS}")
    return model.clone(**levels) if levels else model


def make_model(config: ModelConfig = ModelConfig()) -> nn.Module:
    """Build the Flax module a :class:`ModelConfig` names. Raises ValueError for a bad config."""
    config.validate()
    return MODELS[config.name](
        num_classes=config.num_classes,
        gamma_xt=config.gamma_xt,
        gamma_ty=config.gamma_ty,
        dtype=jnp.dtype(config.dtype),
        noise_generator=config.noise_generator,
        weight_init=config.weight_init,
    )
