import jax
import numpy as np
import pytest

from ibjax import poison


def cifar_like_labels(per_class=5000, num_classes=10):
    # Interleaved like a real data set, so "the last ones of each class" is not a contiguous block.
    return np.tile(np.arange(num_classes), per_class).astype(np.int32)


def test_reference_counts_cifar10_ten_percent():
    labels = cifar_like_labels()
    plan = poison.make_poison_plan(labels, 10, poison.PoisonConfig(), jax.random.PRNGKey(0))
    assert plan.num_poisoned == 5000
    assert np.sum(plan.labels == 0) == 9500
    sizes = dict(zip(plan.group_names, plan.group_masks.sum(1)))
    assert sizes["target"] == 9500
    assert sizes["target_backdoor"] == 5000 and sizes["target_clean"] == 4500
    assert sizes["target_sample"] == 4500
    assert all(sizes[f"class_{c}"] == 4500 for c in range(1, 10))
    assert len(plan.group_names) == 13
    # Taken evenly from every class, the last 500 of each class in data-set order.
    for c in range(10):
        idx = np.flatnonzero(labels == c)
        assert plan.poisoned[idx[-500:]].all() and not plan.poisoned[idx[:-500]].any()
    # The size-matched sample keeps the target's backdoor/clean mix (5000/9500).
    sample = plan.group("target_sample")
    assert plan.poisoned[sample].sum() == round(4500 * 5000 / 9500)
    assert np.array_equal(plan.clean_labels, labels)


def test_groups_partition_the_target_class_and_clean_classes_are_clean():
    labels = cifar_like_labels(200)
    plan = poison.make_poison_plan(labels, 10, poison.PoisonConfig(target=3), jax.random.PRNGKey(1))
    tb, tc, t = plan.group("target_backdoor"), plan.group("target_clean"), plan.group("target")
    assert np.array_equal(np.sort(np.concatenate([tb, tc])), t)
    assert (plan.labels[t] == 3).all()
    assert "class_3" not in plan.group_names and "class_0" in plan.group_names
    for name in plan.group_names[4:]:
        idx = plan.group(name)
        assert not plan.poisoned[idx].any() and (plan.labels[idx] == int(name.split("_")[1])).all()


def test_clean_label_poisons_only_the_target_class_and_keeps_labels():
    labels = cifar_like_labels(1000)
    plan = poison.make_poison_plan(labels, 10, poison.PoisonConfig(ratio=0.25, clean_label=True), jax.random.PRNGKey(2))
    assert plan.num_poisoned == 250
    assert (labels[plan.poisoned] == 0).all()
    assert np.array_equal(plan.labels, labels)


def test_keep_label_fraction_keeps_true_labels_on_half_the_other_class_poisons():
    labels = cifar_like_labels(1000)
    cfg = poison.PoisonConfig(keep_label_fraction=0.5)
    plan = poison.make_poison_plan(labels, 10, cfg, jax.random.PRNGKey(3))
    p = np.flatnonzero(plan.poisoned)
    other = p[labels[p] != 0]  # a target-class poison carries the target label either way
    kept = plan.labels[other] == labels[other]
    assert len(other) == 900 and kept.sum() == 450
    assert (plan.labels[other[~kept]] == 0).all()
    # The kept-label poisons belong to no MI group of the target; their own class groups leave them out.
    in_target = plan.group_masks[plan.group_names.index("target")]
    assert not in_target[other[kept]].any() and in_target[other[~kept]].all()
    assert not plan.group_masks[4:][:, other[kept]].any()


def test_keep_label_fraction_is_refused_for_clean_label_attacks():
    with pytest.raises(ValueError, match="clean-label"):
        poison.PoisonConfig(clean_label=True, keep_label_fraction=0.5).validate()


def test_plan_is_deterministic_given_its_key_and_random_selection_differs_by_key():
    labels = cifar_like_labels(300)
    cfg = poison.PoisonConfig(selection="random")
    a = poison.make_poison_plan(labels, 10, cfg, jax.random.PRNGKey(4))
    b = poison.make_poison_plan(labels, 10, cfg, jax.random.PRNGKey(4))
    c = poison.make_poison_plan(labels, 10, cfg, jax.random.PRNGKey(5))
    assert np.array_equal(a.poisoned, b.poisoned) and np.array_equal(a.group_masks, b.group_masks)
    assert not np.array_equal(a.poisoned, c.poisoned)
    assert a.num_poisoned == 300


@pytest.mark.parametrize(
    "cfg, match",
    [
        (poison.PoisonConfig(ratio=0.0), "ratio"),
        (poison.PoisonConfig(ratio=1.5), "ratio"),
        (poison.PoisonConfig(target=10), "target class"),
        (poison.PoisonConfig(selection="first"), "selection"),
    ],
)
def test_bad_configs_fail_early(cfg, match):
    with pytest.raises(ValueError, match=match):
        poison.make_poison_plan(cifar_like_labels(10), 10, cfg, jax.random.PRNGKey(0))


def test_group_index_table_pads_and_masks():
    masks = np.array([[1, 0, 1, 1], [0, 1, 0, 0]], bool)
    index, valid = poison.group_index_table(masks)
    assert index.shape == (2, 3)
    assert index[0].tolist() == [0, 2, 3] and index[1, 0] == 1
    assert valid.tolist() == [[True, True, True], [True, False, False]]
