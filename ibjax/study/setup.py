"""Building a run's fixed set-up from its config: data, attack, poisoning plan, network, device arrays.

Every check that needs the data (target class range, whether the trigger fits the images, MI group
sizes) runs here, before any training. What an attack must compute against a clean model first
(label-consistent PGD perturbations, TrojanNN's optimised patch, Grond's universal perturbation) is
computed once and handed to the caller to keep (the runner stores it in the run directory for resume).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np

from ibjax import mi as ibmi
from ibjax.data import Dataset, load_dataset
from ibjax.models import make_model
from ibjax.parallel import check_batch_divisible
from ibjax.pipeline import put_test_data, put_train_data
from ibjax.poison import PoisonPlan, make_poison_plan
from ibjax.progress import LOGGER, Progress, phase
from ibjax.study.config import StudyConfig, check_config
from ibjax.study.state import RunKeys, StudySetup
from ibjax.train import TrainConfig, create_train_state, train_epoch
from ibjax.triggers import Attack, get_attack, grond_tuap, pgd_l2, trojannn_pattern

__all__ = ["load_data", "build_attack", "reference_departures", "prepare_attack", "build_setup", "PRECOMPUTED_FILE",
           "clean_model_network", "save_clean_model", "load_clean_model"]

PRECOMPUTED_FILE = "attack_precomputed.npy"
"""The file a run keeps what its attack computed against a clean model in (label-consistent: the PGD
perturbations of the poisoned samples; TrojanNN, Grond: the optimised pattern)."""


def load_data(config: StudyConfig) -> tuple[Dataset, Dataset]:
    """The training (with ``per_class_limit``) and test splits of the config's data set."""
    train_set = load_dataset(config.data.name, "train", data_dir=config.data.dir, per_class_limit=config.data.per_class_limit)
    test_set = load_dataset(config.data.name, "test", data_dir=config.data.dir)
    if train_set.images.shape[1:] != test_set.images.shape[1:]:
        raise ValueError(f"train and test images of {config.data.name!r} differ in shape: "
                         f"{train_set.images.shape[1:]} vs {test_set.images.shape[1:]}")
    return train_set, test_set


def build_attack(config: StudyConfig, image_shape: Optional[tuple[int, ...]] = None, **extra) -> Attack:
    """The config's attack: its options, the authors' trigger details where ``attack.trigger_rules`` is
    'reference', and ``extra`` overrides (a prepared pattern). Checked against ``image_shape``."""
    from ibjax import triggers

    # Option values stay text: each trigger parameter reads its own type (ibjax.fields.coerce).
    options = dict(config.attack.options)
    if config.attack.trigger_rules == "reference":
        options = {**triggers.reference_attack_overrides(config.attack.name), **options}
    attack = get_attack(config.attack.name, **options, **extra)
    if image_shape is not None:
        attack.validate(tuple(image_shape))
    return attack


_AUTHORS_PATTERN_ATTACKS = ("blend", "adaptive_blend")


def reference_departures(config: StudyConfig) -> list[str]:
    """Where a run asked for the authors' rules but cannot follow them from the config alone, one
    line each saying what it does instead and how to fix it (logged at set-up and kept in the
    summary): today, Blend and Adaptive-Blend without the authors' noise pattern file."""
    out = []
    patterns = [name for name, _ in config.attack.options if name.split("_", 1)[-1] == "pattern" or name == "pattern"]
    if config.attack.trigger_rules == "reference" and config.attack.name in _AUTHORS_PATTERN_ATTACKS and not patterns:
        out.append(f"{config.attack.name} blends ibjax's own uniform noise pattern, not the authors' "
                   "(poison_data_generator/trigger/Blendnoise.npy in their repository; up to 0.28 per pixel apart): "
                   "pass it with --attack.options pattern PATH to reproduce their numbers")
    return out


def clean_model_network(config: StudyConfig, num_classes: int):
    """The victim network of an attack computed against a clean model: the run's model without noise
    layers (gamma_xt = gamma_ty = 0: the authors compute their perturbations against a plain clean
    ResNet-18, and noise in the victim would make PGD's gradients random)."""
    return make_model(dataclasses.replace(config.model, num_classes=num_classes, gamma_xt=0.0, gamma_ty=0.0))


def save_clean_model(path: str, variables) -> None:
    """Write a clean network's Flax variables (``{"params": ..., "batch_stats": ...}``) where
    ``attack.clean_model`` reads them (flax.serialization msgpack)."""
    with open(path, "wb") as f:
        f.write(flax.serialization.to_bytes(jax.device_get(variables)))


def load_clean_model(path: str, config: StudyConfig, image_shape: tuple[int, ...], num_classes: int):
    """``(model, variables)`` of the clean network in ``path`` (see :func:`save_clean_model`), checked
    against the run's model: ValueError naming the mismatch."""
    model = clean_model_network(config, num_classes)
    template = jax.eval_shape(lambda: model.init({"params": jax.random.PRNGKey(0), "noise": jax.random.PRNGKey(0)},
                                                 jnp.zeros((1, *image_shape))))
    with open(path, "rb") as f:
        state = flax.serialization.msgpack_restore(f.read())
    def shapes(tree) -> dict[str, tuple]:
        return {jax.tree_util.keystr(p): tuple(np.shape(a)) for p, a in jax.tree_util.tree_flatten_with_path(tree)[0]}

    want, got = shapes(template), shapes(state)
    if got != want:
        missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
        wrong = [k for k in want if k in got and got[k] != want[k]]
        what = (f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}" if extra else
                f"{wrong[0]} has shape {got[wrong[0]]}, the run's network needs {want[wrong[0]]}")
        raise ValueError(f"attack.clean_model {path!r} is not the run's {config.model.name} for {num_classes} classes on "
                         f"images {tuple(image_shape)}: {what}")
    variables = jax.tree.map(lambda t, a: jnp.asarray(a, t.dtype), template, state)
    return model, variables


def _clean_model(key, config: StudyConfig, train_set: Dataset, plan: PoisonPlan, progress: bool):
    """The victim that label-consistent perturbations and TrojanNN patterns are computed against: the
    user's (``attack.clean_model``), or a network trained on the clean labels (up to 20 epochs of
    the run's recipe; :func:`clean_model_network`). Returns ``(model, variables)``."""
    if config.attack.clean_model:
        return load_clean_model(config.attack.clean_model, config, tuple(train_set.images.shape[1:]),
                                train_set.num_classes)
    clean_plan = plan.replace(poisoned=np.zeros_like(plan.poisoned), labels=plan.clean_labels)
    model = clean_model_network(config, train_set.num_classes)
    data = put_train_data(train_set.images, clean_plan, key)
    epochs = max(1, min(config.train.epochs, 20))
    cfg: TrainConfig = dataclasses.replace(config.train, schedule="cosine" if config.train.schedule == "cosine" else "constant")
    state = jax.jit(create_train_state, static_argnums=(1, 2, 3))(jax.random.fold_in(key, 1), model,
                                                                   train_set.images.shape[1:], cfg)
    trigger = get_attack("badnets").train_trigger  # never applied: nothing is flagged in the clean plan
    bar = Progress("clean model", epochs, "epoch", enabled=progress)
    for e in range(epochs):
        state, _ = train_epoch(state, data, jax.random.fold_in(key, 100 + e), model=model, trigger=trigger, config=cfg,
                               total_steps=epochs * (len(train_set) // cfg.batch_size))
        bar.update(e + 1)
    return model, state.variables


def _label_consistent_perturbations(key, attack: Attack, train_set, plan, model, variables) -> np.ndarray:
    """PGD perturbations (float32 [P, H, W, C]) of the poisoned (target-class) samples against the
    clean model, with the attack's PGD settings (``pgd_*`` fields of its params)."""
    p_idx = np.flatnonzero(plan.poisoned)
    params = attack.train_params.pgd

    @jax.jit
    def attack_batch(x, y, k):
        k_noise, k_start = jax.random.split(k)
        fn = lambda z: model.apply(variables, z, train=False, rngs={"noise": k_noise})[0]  # noqa: E731
        return pgd_l2(fn, x, y, params, key=k_start) - x

    out = []
    for s in range(0, len(p_idx), 256):
        idx = p_idx[s : s + 256]
        x = jnp.asarray(train_set.images[idx], jnp.float32) / 255.0
        out.append(np.asarray(attack_batch(x, jnp.asarray(plan.clean_labels[idx]), jax.random.fold_in(key, s))))
    return np.concatenate(out).astype(np.float32)


def _trojannn_pattern(key, attack, train_set, model, variables, images: int = 256) -> np.ndarray:
    """TrojanNN's patch optimised against the clean model on a random batch of training images."""
    k_pick, k_noise = jax.random.split(key)
    n = min(images, len(train_set))
    idx = np.sort(np.asarray(jax.random.choice(k_pick, len(train_set), (n,), replace=False)))
    x = jnp.asarray(train_set.images[idx], jnp.float32) / 255.0
    features = lambda z: model.apply(variables, z, train=False, rngs={"noise": k_noise})[1]  # noqa: E731
    pattern, _ = jax.jit(lambda z: trojannn_pattern(features, z, attack.train_params))(x)
    return np.asarray(pattern)


def _grond_pattern(key, attack, train_set, model, variables, target: int) -> np.ndarray:
    """Grond's targeted universal perturbation of the clean model, from the training images of every
    class (:func:`ibjax.triggers.grond_tuap`)."""
    x = jnp.asarray(train_set.images, jnp.float32) / 255.0
    logits = lambda z, k: model.apply(variables, z, train=False, rngs={"noise": k})[0]  # noqa: E731
    return np.asarray(jax.jit(lambda k, z: grond_tuap(logits, k, z, target, attack.train_params))(key, x))


_PATTERNS = {"trojannn": ("TrojanNN pattern", 3), "grond": ("Grond perturbation", 4)}
"""The attacks whose pattern is optimised against a clean model: what it is called, and the fold of
the clean-model key it is drawn with."""


def prepare_attack(config: StudyConfig, attack: Attack, train_set: Dataset, plan: PoisonPlan, keys: RunKeys,
                   precomputed: Optional[np.ndarray], progress: bool) -> tuple[Attack, Optional[np.ndarray], Optional[np.ndarray]]:
    """What the attack needs from a clean model: ``(attack, perturbations or None, computed array or None)``.

    ``precomputed`` is the array a previous start of this run computed (reused as is); the third
    value is the array to keep (None if the attack needs nothing).
    """
    if not (attack.needs_perturbation or attack.optimised_pattern):
        return attack, None, None
    result = precomputed
    if result is None:
        label, fold = ("PGD perturbations", 2) if attack.needs_perturbation else _PATTERNS[attack.name]
        with phase(f"computing the {label} against a clean model", enabled=progress):
            model, variables = _clean_model(keys.clean_model, config, train_set, plan, progress)
            key = jax.random.fold_in(keys.clean_model, fold)
            if attack.needs_perturbation:
                result = _label_consistent_perturbations(key, attack, train_set, plan, model, variables)
            elif attack.name == "grond":
                result = _grond_pattern(key, attack, train_set, model, variables, config.poison.target)
            else:
                result = _trojannn_pattern(key, attack, train_set, model, variables)
    if attack.needs_perturbation:
        return attack, result, result
    return build_attack(config, train_set.images.shape[1:], pattern=result), None, result


def build_setup(config: StudyConfig, *, precomputed: Optional[np.ndarray] = None, progress: bool = True,
                keep: Optional[Callable[[np.ndarray], None]] = None, mesh=None) -> StudySetup:
    """Load the data and build everything fixed for the run, checking every option first.

    Args:
      config: the run's config.
      precomputed: the clean-model array a previous start of this run computed, if any.
      progress: log phases and progress.
      keep: called with the clean-model array when one was computed or reused (to store it).
      mesh: an :mod:`ibjax.parallel` mesh to run data-parallel on (the data sets are replicated on
        it); None: the default device. What an attack computes against a clean model first runs on
        one device either way.

    Raises:
      ValueError (or :class:`~ibjax.data.DataUnavailableError`) naming the culprit, before training.
    """
    check_config(config)
    check_batch_divisible(config.train.batch_size, mesh)
    build_attack(config)  # bad attack options fail before the data set is read
    for line in reference_departures(config):
        LOGGER.warning("reference rules: %s", line)
    with phase(f"loading {config.data.name}", enabled=progress):
        train_set, test_set = load_data(config)
    image_shape = tuple(train_set.images.shape[1:])
    num_classes = train_set.num_classes
    config.poison.validate(num_classes)
    attack = build_attack(config, image_shape)
    poison_cfg = dataclasses.replace(
        config.poison,
        clean_label=config.poison.clean_label or attack.clean_label,
        keep_label_fraction=config.poison.keep_label_fraction or attack.keep_label_fraction,
    )
    keys = RunKeys.from_seed(config.seed)
    plan = make_poison_plan(train_set.labels, num_classes, poison_cfg, keys.plan)
    if config.train.batch_size > len(train_set):
        raise ValueError(f"train.batch_size ({config.train.batch_size}) exceeds the {len(train_set)} training images")
    if config.mi.offline:
        # Fail now, not after the first epochs. An empty group (a clean run's target_backdoor) is no
        # error: it reads NaN (ibjax.study.steps.estimate_mi_on_mesh).
        present = plan.group_masks.any(axis=1)
        for name in config.mi.quantities:
            cfg = getattr(config.mi, name)
            try:
                ibmi.check_groups(plan.group_masks[present], cfg, np.asarray(plan.group_names)[present].tolist())
            except ValueError as e:
                raise ValueError(f"{name}: {e}") from e
    model = make_model(dataclasses.replace(config.model, num_classes=num_classes))
    attack, perturbations, computed = prepare_attack(config, attack, train_set, plan, keys, precomputed, progress)
    if computed is not None and keep is not None:
        keep(computed)
    _, t = jax.eval_shape(
        lambda v, x: model.apply(v, x, train=False, rngs={"noise": jax.random.PRNGKey(0)}),
        jax.eval_shape(lambda: model.init({"params": jax.random.PRNGKey(0), "noise": jax.random.PRNGKey(0)},
                                          jnp.zeros((1, *image_shape)))),
        jax.ShapeDtypeStruct((1, *image_shape), jnp.float32),
    )
    return StudySetup(
        config=config,
        model=model,
        attack=attack,
        plan=plan,
        train_data=put_train_data(train_set.images, plan, keys.trigger, perturbations, mesh=mesh),
        clean_test=put_test_data(test_set.images, test_set.labels, keys.trigger, mesh=mesh),
        triggered_test=put_test_data(test_set.images, test_set.labels, keys.trigger, triggered=True, mesh=mesh),
        class_names=tuple(train_set.class_names),
        keys=keys,
        image_shape=image_shape,
        t_dim=int(t.shape[-1]),
        num_classes=num_classes,
        mesh=mesh,
    )
