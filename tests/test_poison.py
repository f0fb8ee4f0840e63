"""Tests for ibjax.poison, with the authors' rules (``poison_data_generator.py``, ``ffcv_writer.py``)
re-derived in NumPy on sample indices."""

import dataclasses

import jax
import numpy as np
import pytest

from ibjax import poison


def cifar_like_labels(per_class=5000, num_classes=10, shuffle=None):
    # Interleaved (or shuffled) like a real data set, so "the last ones of each class" is not a contiguous block.
    labels = np.tile(np.arange(num_classes), per_class).astype(np.int32)
    if shuffle is not None:
        labels = labels[np.random.default_rng(shuffle).permutation(len(labels))]
    return labels


# ---------------------------------------------------------------- the authors' rules, in NumPy


def authors_generated_set(labels, num_classes, ratio, target, attack):
    """The authors' ``generate_poisoned_dataset`` run on sample indices instead of images.

    Returns ``(origin, label, triggered)`` in the order of their generated training set: ``origin``
    is the index of the original sample each row was made from."""
    origin = np.arange(len(labels))
    spc = len(labels) // num_classes
    if attack == "label_consistent":
        poison_count = int(ratio * spc)
        triggered = np.zeros(len(labels), bool)
        triggered[np.where(labels == target)[0][:poison_count]] = True  # the FIRST of the target class
        return origin, labels.copy(), triggered
    poison_count = int(ratio * len(labels))
    clean_num = spc - int(poison_count // num_classes)
    rows, rows_label, rows_trig = [], [], []
    for c in range(num_classes):
        idx = origin[labels == c][-int(poison_count / num_classes):]  # the LAST of every class
        lab = np.full(len(idx), target)
        if attack == "adaptive_blend":
            regularisation = int(len(idx) * 0.5)  # conservatism_ratio
            lab[len(idx) - regularisation:] = c  # "first payload_count samples change label"
        rows.append(idx), rows_label.append(lab), rows_trig.append(np.ones(len(idx), bool))
    rows.append(origin[labels == target][:clean_num])
    rows_label.append(np.full(clean_num, target)), rows_trig.append(np.zeros(clean_num, bool))
    for c in range(num_classes):
        if c != target:
            rows.append(origin[labels == c][:clean_num])
            rows_label.append(np.full(clean_num, c)), rows_trig.append(np.zeros(clean_num, bool))
    return np.concatenate(rows), np.concatenate(rows_label), np.concatenate(rows_trig)


def authors_groups(origin, label, triggered, num_classes, target, writer_rate=None):
    """``ffcv_writer.create_class_datasets``' groups as sets of original indices: ``class_k`` = every
    sample labelled k; the target class split as ``cls0_images[:poison_num]`` / ``[poison_num:]``
    with ``poison_num = int(N * writer_rate)`` in the generated set's row order (their split), or,
    with ``writer_rate=None``, into its triggered and clean samples (ibjax's split)."""
    groups = {f"class_{c}": set(origin[label == c]) for c in range(num_classes)}
    if writer_rate is None:
        groups["target_backdoor"] = set(origin[(label == target) & triggered])
        groups["target_clean"] = set(origin[(label == target) & ~triggered])
    else:
        rows = origin[label == target]  # the generated set's order
        cut = int(len(label) * writer_rate)
        groups["target_backdoor"], groups["target_clean"] = set(rows[:cut]), set(rows[cut:])
    return groups


# ---------------------------------------------------------------- the authors' rules


@pytest.mark.parametrize("attack", ["badnets", "adaptive_blend", "label_consistent"])
@pytest.mark.parametrize("shuffle", [None, 1])
def test_reference_plan_is_the_authors_poisoning(attack, shuffle):
    labels = cifar_like_labels(500, shuffle=shuffle)
    ratio = 0.25 if attack == "label_consistent" else 0.1
    cfg = poison.PoisonConfig(ratio=ratio, clean_label=attack == "label_consistent",
                              keep_label_fraction=0.5 if attack == "adaptive_blend" else 0.0)
    plan = poison.make_poison_plan(labels, 10, cfg, jax.random.PRNGKey(0))
    origin, label, triggered = authors_generated_set(labels, 10, ratio, 0, attack)
    # Same samples triggered, same training labels (the authors' set is a permutation of ours).
    assert sorted(origin) == list(range(len(labels)))
    np.testing.assert_array_equal(plan.poisoned[origin], triggered)
    np.testing.assert_array_equal(plan.labels[origin], label)
    # The MI groups of the reference configuration are the authors' (their clean-class groups hold
    # the kept-label poisons).
    ref = poison.make_poison_plan(labels, 10, dataclasses.replace(poison.REFERENCE_POISON, ratio=ratio,
                                                                         clean_label=cfg.clean_label,
                                                                         keep_label_fraction=cfg.keep_label_fraction),
                                  jax.random.PRNGKey(0))
    theirs = authors_groups(origin, label, triggered, 10, 0, writer_rate=0.05)
    assert set(ref.group("target")) == theirs["class_0"]
    assert set(ref.group("target_backdoor")) == theirs["target_backdoor"]
    assert set(ref.group("target_clean")) == theirs["target_clean"]
    for c in range(1, 10):
        assert set(ref.group(f"class_{c}")) == theirs[f"class_{c}"]
    # ibjax's split by the trigger, on the same poisoning.
    by_trigger = poison.make_poison_plan(labels, 10, dataclasses.replace(ref_config(ratio, cfg), target_split="trigger"),
                                         jax.random.PRNGKey(0))
    ours = authors_groups(origin, label, triggered, 10, 0)
    assert set(by_trigger.group("target_backdoor")) == ours["target_backdoor"]
    assert set(by_trigger.group("target_clean")) == ours["target_clean"]


def ref_config(ratio, cfg):
    return dataclasses.replace(poison.REFERENCE_POISON, ratio=ratio, clean_label=cfg.clean_label,
                               keep_label_fraction=cfg.keep_label_fraction)


@pytest.mark.parametrize("rate", [0.02, 0.05, 0.1])
def test_positional_split_is_the_writers_cut_at_every_rate(rate):
    labels = cifar_like_labels(500, shuffle=2)
    for attack in ("badnets", "adaptive_blend"):
        cfg = poison.PoisonConfig(ratio=0.1, keep_label_fraction=0.5 if attack == "adaptive_blend" else 0.0)
        plan = poison.make_poison_plan(labels, 10, cfg, jax.random.PRNGKey(0))
        origin, label, triggered = authors_generated_set(labels, 10, 0.1, 0, attack)
        bd, cl = poison.positional_target_split(labels, plan.labels, plan.poisoned, 0, rate)
        theirs = authors_groups(origin, label, triggered, 10, 0, writer_rate=rate)
        assert set(np.flatnonzero(bd)) == theirs["target_backdoor"] and set(np.flatnonzero(cl)) == theirs["target_clean"]
    with pytest.raises(ValueError, match="leaving a group empty: give a split_rate in"):
        poison.positional_target_split(labels, plan.labels, plan.poisoned, 0, 0.5)
    with pytest.raises(ValueError, match="split_rate must lie in"):
        poison.PoisonConfig(split_rate=0.0).validate()


def test_adaptive_blend_keeps_the_same_number_of_labels_in_every_class():
    labels = cifar_like_labels()  # CIFAR-10's 50,000 at 10%
    cfg = poison.PoisonConfig(keep_label_fraction=0.5)
    plan = poison.make_poison_plan(labels, 10, cfg, jax.random.PRNGKey(3))
    kept = plan.poisoned & (plan.labels == labels) & (labels != 0)
    np.testing.assert_array_equal(np.bincount(labels[kept], minlength=10), [0] + [250] * 9)
    for c in range(1, 10):  # the last 250 of each class keep their label, the 250 before are relabelled
        idx = np.flatnonzero(labels == c)
        assert kept[idx[-250:]].all() and (plan.labels[idx[-500:-250]] == 0).all()
    sizes = dict(zip(plan.group_names, plan.group_masks.sum(1)))
    assert sizes["target"] == 4500 + 500 + 9 * 250 and sizes["target_backdoor"] == 2750
    assert all(sizes[f"class_{c}"] == 4500 for c in range(1, 10))  # ibjax: clean groups stay clean
    ref = poison.make_poison_plan(labels, 10, dataclasses.replace(poison.REFERENCE_POISON, keep_label_fraction=0.5),
                                  jax.random.PRNGKey(3))
    ref_sizes = dict(zip(ref.group_names, ref.group_masks.sum(1)))
    assert all(ref_sizes[f"class_{c}"] == 4750 for c in range(1, 10))  # the authors': 4,750 each


def test_target_sample_half_is_the_authors_balanced_sample():
    labels = cifar_like_labels()
    for keep, include, expected_size in [(0.0, False, 4500), (0.5, True, 4750)]:
        cfg = poison.PoisonConfig(keep_label_fraction=keep, target_sample="half", clean_groups_include_kept=include)
        plan = poison.make_poison_plan(labels, 10, cfg, jax.random.PRNGKey(4))
        sample = plan.group("target_sample")
        # create_balanced_sample: size = len(class_1); min(#backdoor, size // 2) backdoor, the rest clean,
        # each drawn without replacement (random.sample).
        size = len(plan.group("class_1"))
        n_bd = min(len(plan.group("target_backdoor")), size // 2)
        assert size == expected_size and len(sample) == size
        assert plan.poisoned[sample].sum() == n_bd
        assert set(sample) <= set(plan.group("target")) and len(set(sample)) == len(sample)
    # A clean-label target class: all its 500 poisons and 4,500 of its clean samples (a class's size).
    plan = poison.make_poison_plan(labels, 10, poison.PoisonConfig(clean_label=True, target_sample="half"),
                                   jax.random.PRNGKey(4))
    sample = plan.group("target_sample")
    assert len(sample) == 5000 and plan.poisoned[sample].sum() == 500


def _per_class_labels(sizes):
    """Interleaved labels with ``sizes[c]`` samples of class c."""
    labels = np.concatenate([np.full(n, c) for c, n in enumerate(sizes)]).astype(np.int32)
    return labels[np.random.default_rng(len(labels)).permutation(len(labels))]


@pytest.mark.parametrize("n, k, p", [
    (50000, 10, 0.1), (40000, 10, 0.05), (5000, 10, 0.003), (5000, 10, 0.0019), (1234, 7, 0.1), (1000, 10, 0.0215),
    (999, 10, 0.05), (5000, 10, 0.015), (300, 3, 0.35),
])
def test_reference_counts_are_the_authors_truncations(n, k, p):
    """Dirty-label: int(int(p * N) / K) per class (the generator's poison_count and its slice
    [-int(poison_count / n_classes):]); the other selections round p * N / K to the nearest, halves up."""
    per_class = int(int(p * n) / k)
    sizes = [n // k + (1 if c < n % k else 0) for c in range(k)]  # N need not be a multiple of K
    labels = _per_class_labels(sizes)
    if per_class == 0:  # 0.0019 * 5000 = 9.5 -> 9 -> 9 / 10 -> 0: the authors' rule poisons nothing
        with pytest.raises(ValueError, match="poisons no sample"):
            poison.make_poison_plan(labels, k, poison.PoisonConfig(ratio=p), jax.random.PRNGKey(0))
    else:
        plan = poison.make_poison_plan(labels, k, poison.PoisonConfig(ratio=p), jax.random.PRNGKey(0))
        np.testing.assert_array_equal(np.bincount(labels[plan.poisoned], minlength=k), [per_class] * k)
    nearest = int(np.floor(p * n / k + 0.5))
    if nearest >= 1:
        last = poison.make_poison_plan(labels, k, poison.PoisonConfig(ratio=p, selection="last"), jax.random.PRNGKey(0))
        np.testing.assert_array_equal(np.bincount(labels[last.poisoned], minlength=k), [nearest] * k)


@pytest.mark.parametrize("sizes, p", [([500] * 10, 0.1), ([700, 400, 400, 500], 0.25), ([333, 400, 401], 0.1),
                                      ([90, 110, 100], 0.15), ([1000, 10, 10, 10], 0.01)])
def test_reference_clean_label_count_is_int_of_p_times_the_mean_class_size(sizes, p):
    """Clean-label: the generator's int(p * samples_per_class), samples_per_class = N // K, whatever the
    target class's own size; the other selections take p of the target class's own size."""
    labels = _per_class_labels(sizes)
    n, k = len(labels), len(sizes)
    plan = poison.make_poison_plan(labels, k, poison.PoisonConfig(ratio=p, clean_label=True), jax.random.PRNGKey(0))
    assert plan.num_poisoned == int(p * (n // k))
    np.testing.assert_array_equal(np.flatnonzero(plan.poisoned), np.flatnonzero(labels == 0)[: int(p * (n // k))])
    own = poison.make_poison_plan(labels, k, poison.PoisonConfig(ratio=p, clean_label=True, selection="first"),
                                  jax.random.PRNGKey(0))
    assert own.num_poisoned == int(np.floor(p * sizes[0] + 0.5))


def test_reference_and_nearest_counts_agree_on_the_study_settings():
    """The claim of the module docstring: CIFAR-10 (50,000) and SVHN cut to 4,000 per class at 1-20%,
    label-consistent at 10-50% of a class, give the same counts under both rules."""
    for n in (50000, 40000):
        labels = cifar_like_labels(n // 10)
        for p in (0.01, 0.02, 0.05, 0.1, 0.15, 0.2):
            counts = [poison.make_poison_plan(labels, 10, poison.PoisonConfig(ratio=p, selection=sel),
                                              jax.random.PRNGKey(0)).num_poisoned for sel in ("reference", "last")]
            assert counts[0] == counts[1] == 10 * int(int(p * n) / 10)
        for p in (0.1, 0.25, 0.5):
            counts = [poison.make_poison_plan(labels, 10, poison.PoisonConfig(ratio=p, clean_label=True, selection=sel),
                                              jax.random.PRNGKey(0)).num_poisoned for sel in ("reference", "first")]
            assert counts[0] == counts[1] == int(p * (n // 10))


def test_a_plan_that_poisons_nothing_is_refused_with_the_smallest_ratio_that_does():
    labels = cifar_like_labels(500)  # 5,000 labels
    with pytest.raises(ValueError, match=r"poison ratio 0\.001 poisons no sample .*smallest ratio that poisons one "
                                         r"sample per class is 0\.002$"):
        poison.make_poison_plan(labels, 10, poison.PoisonConfig(ratio=0.001), jax.random.PRNGKey(0))
    # 0.0019: 9.5 -> int 9 -> 9 / 10 -> 0 per class under the authors' truncation.
    with pytest.raises(ValueError, match=r"0\.0019 poisons no sample"):
        poison.make_poison_plan(labels, 10, poison.PoisonConfig(ratio=0.0019), jax.random.PRNGKey(0))
    assert poison.make_poison_plan(labels, 10, poison.PoisonConfig(ratio=0.002), jax.random.PRNGKey(0)).num_poisoned == 10
    # Nearest rounding (other selections): 0.5 per class rounds up, so the threshold is half as large.
    with pytest.raises(ValueError, match=r"smallest ratio that poisons one sample per class is 0\.001$"):
        poison.make_poison_plan(labels, 10, poison.PoisonConfig(ratio=0.0009, selection="random"), jax.random.PRNGKey(0))
    assert poison.make_poison_plan(labels, 10, poison.PoisonConfig(ratio=0.001, selection="random"),
                                   jax.random.PRNGKey(0)).num_poisoned == 10
    # Clean-label: one sample of the target class; the threshold printed is one that works.
    for sizes in ([500] * 10, [300, 700, 450, 450]):
        lab = _per_class_labels(sizes)
        with pytest.raises(ValueError, match="poisons no sample") as info:
            poison.make_poison_plan(lab, len(sizes), poison.PoisonConfig(ratio=1e-4, clean_label=True),
                                    jax.random.PRNGKey(0))
        smallest = float(str(info.value).rsplit(" ", 1)[1])
        ok = poison.make_poison_plan(lab, len(sizes), poison.PoisonConfig(ratio=smallest, clean_label=True),
                                     jax.random.PRNGKey(0))
        assert ok.num_poisoned == 1 and smallest == pytest.approx(1 / (len(lab) // len(sizes)), rel=1e-3)
    # A set too small for any ratio below 1.
    with pytest.raises(ValueError, match="no ratio below 1"):
        poison.make_poison_plan(np.arange(5, dtype=np.int32) % 3, 10, poison.PoisonConfig(ratio=0.9), jax.random.PRNGKey(0))


@pytest.mark.parametrize("clean_label", [False, True])
def test_ratio_zero_is_a_clean_run_whose_backdoor_group_is_empty(clean_label):
    labels = cifar_like_labels(50)
    plan = poison.make_poison_plan(labels, 10, poison.PoisonConfig(ratio=0.0, clean_label=clean_label),
                                   jax.random.PRNGKey(0))
    assert plan.num_poisoned == 0 and np.array_equal(plan.labels, labels)
    assert plan.group("target_backdoor").size == 0
    in_target = np.flatnonzero(labels == 0)
    assert np.array_equal(plan.group("target"), in_target) and np.array_equal(plan.group("target_clean"), in_target)
    # the size-matched target group is as large as a clean class, as in a poisoned run
    assert plan.group("target_sample").size == plan.group("class_1").size == 50


@pytest.mark.parametrize("bad", [[0, 1, 10], [0, -1, 2], [0, 1, 12, 12, -3]])
def test_labels_outside_the_classes_are_refused(bad):
    labels = np.concatenate([cifar_like_labels(50), np.asarray(bad, np.int32)])
    with pytest.raises(ValueError, match=r"outside \[0, 10\)") as info:
        poison.make_poison_plan(labels, 10, poison.PoisonConfig(), jax.random.PRNGKey(0))
    assert str(sorted({b for b in bad if not 0 <= b < 10})) in str(info.value)


def test_a_class_too_small_for_its_share_names_the_class_and_the_ratio():
    labels = _per_class_labels([500] * 3 + [20] + [500] * 6)  # class 3 holds 20, each class gives 45
    with pytest.raises(ValueError, match=r"poison ratio 0\.1 asks for 45 samples of class 3 .*class 3 holds 20"):
        poison.make_poison_plan(labels, 10, poison.PoisonConfig(ratio=0.1), jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match=r"poison ratio 0\.5 asks for 68 samples of class 0 .*holds 20"):
        poison.make_poison_plan(_per_class_labels([20, 200, 190]), 3, poison.PoisonConfig(ratio=0.5, clean_label=True),
                                jax.random.PRNGKey(0))


def _positional_split(origin, label, triggered, writer_rate, target=0):
    """``ffcv_writer.create_class_datasets``' split of the target class by position: the first
    ``int(N * writer_rate)`` label-0 rows of the generated set are "backdoor", the rest "clean".
    Returns (#triggered, #clean) in each part."""
    rows = np.flatnonzero(label == target)
    cut = int(len(label) * writer_rate)
    bd, cl = rows[:cut], rows[cut:]
    return (int(triggered[bd].sum()), int((~triggered[bd]).sum())), (int(triggered[cl].sum()), int((~triggered[cl]).sum()))


def test_the_authors_positional_split_mixes_clean_samples_into_the_backdoor_group():
    """The numbers REFERENCE_POISON's docstring states, re-derived on the authors' generated set
    (CIFAR-10 sizes, 10% generator); ibjax's own default is the trigger split."""
    labels = cifar_like_labels()
    origin, label, triggered = authors_generated_set(labels, 10, 0.1, 0, "adaptive_blend")
    assert _positional_split(origin, label, triggered, 0.1) == ((2750, 2250), (0, 2250))
    assert _positional_split(origin, label, triggered, 0.05) == ((2500, 0), (250, 4500))
    # create_balanced_sample at r = 0.1: half of class_1's size from the clean part, which is smaller.
    class_1 = int((label == 1).sum())
    assert class_1 == 4750 and class_1 - min(5000, class_1 // 2) > 2250
    ref = poison.make_poison_plan(labels, 10, dataclasses.replace(poison.REFERENCE_POISON, keep_label_fraction=0.5),
                                  jax.random.PRNGKey(0))  # the writer's default rate, 0.05
    tb, tc = ref.group("target_backdoor"), ref.group("target_clean")
    assert (len(tb), int(ref.poisoned[tb].sum())) == (2500, 2500)
    assert (len(tc), int(ref.poisoned[tc].sum())) == (4750, 250)
    by_trigger = poison.make_poison_plan(labels, 10, dataclasses.replace(poison.REFERENCE_POISON, keep_label_fraction=0.5,
                                                                         target_split="trigger"), jax.random.PRNGKey(0))
    assert len(by_trigger.group("target_backdoor")) == 2750 and by_trigger.poisoned[by_trigger.group("target_backdoor")].all()
    assert len(by_trigger.group("target_clean")) == 4500 and not by_trigger.poisoned[by_trigger.group("target_clean")].any()
    # BadNets: the positional split is the trigger split only when the writer's rate is the generator's.
    origin, label, triggered = authors_generated_set(labels, 10, 0.1, 0, "badnets")
    assert _positional_split(origin, label, triggered, 0.1) == ((5000, 0), (0, 4500))
    assert _positional_split(origin, label, triggered, 0.05) == ((2500, 0), (2500, 4500))
    # Label-consistent at 10% of the class: rows in data-set order, the first 500 of class 0 triggered.
    origin, label, triggered = authors_generated_set(labels, 10, 0.1, 0, "label_consistent")
    assert _positional_split(origin, label, triggered, 0.05) == ((500, 2000), (0, 2500))
    assert _positional_split(origin, label, triggered, 0.1) == ((500, 4500), (0, 0))


# ---------------------------------------------------------------- ibjax's own rules


def test_reference_counts_cifar10_ten_percent():
    labels = cifar_like_labels()
    plan = poison.make_poison_plan(labels, 10, poison.PoisonConfig(), jax.random.PRNGKey(0))
    assert plan.num_poisoned == 5000
    sizes = dict(zip(plan.group_names, plan.group_masks.sum(1)))
    assert sizes["target"] == 9500 and sizes["target_backdoor"] == 5000 and sizes["target_clean"] == 4500
    assert sizes["target_sample"] == 4500
    assert all(sizes[f"class_{c}"] == 4500 for c in range(1, 10))
    assert len(plan.group_names) == 13
    for c in range(10):  # evenly from every class, the last 500 of each class in data-set order
        idx = np.flatnonzero(labels == c)
        assert plan.poisoned[idx[-500:]].all() and not plan.poisoned[idx[:-500]].any()
    # The size-matched sample keeps the target's backdoor/clean mix (5000/9500) by default.
    assert plan.poisoned[plan.group("target_sample")].sum() == round(4500 * 5000 / 9500)
    np.testing.assert_array_equal(plan.clean_labels, labels)


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


@pytest.mark.parametrize("selection", ["first", "last", "reference"])
def test_clean_label_poisons_only_the_target_class_and_keeps_labels(selection):
    labels = cifar_like_labels(1000, shuffle=2)
    cfg = poison.PoisonConfig(ratio=0.25, clean_label=True, selection=selection)
    plan = poison.make_poison_plan(labels, 10, cfg, jax.random.PRNGKey(2))
    idx = np.flatnonzero(labels == 0)
    chosen = idx[-250:] if selection == "last" else idx[:250]  # the authors' (reference): the first
    np.testing.assert_array_equal(np.flatnonzero(plan.poisoned), chosen)
    np.testing.assert_array_equal(plan.labels, labels)


def test_keep_label_fraction_is_refused_for_clean_label_attacks():
    with pytest.raises(ValueError, match="clean-label"):
        poison.PoisonConfig(clean_label=True, keep_label_fraction=0.5).validate()


def test_plan_is_deterministic_given_its_key_and_random_selection_differs_by_key():
    labels = cifar_like_labels(300)
    cfg = poison.PoisonConfig(selection="random")
    a = poison.make_poison_plan(labels, 10, cfg, jax.random.PRNGKey(4))
    b = poison.make_poison_plan(labels, 10, cfg, jax.random.key(4))  # a typed key: the same plan
    c = poison.make_poison_plan(labels, 10, cfg, jax.random.PRNGKey(5))
    assert np.array_equal(a.poisoned, b.poisoned) and np.array_equal(a.group_masks, b.group_masks)
    assert not np.array_equal(a.poisoned, c.poisoned)
    assert a.num_poisoned == 300 and np.all(np.bincount(labels[a.poisoned]) == 30)


@pytest.mark.parametrize(
    "changes, match",
    [
        (dict(ratio=-0.1), "ratio"),
        (dict(ratio=1.5), "ratio"),
        (dict(target=10), "target class"),
        (dict(selection="middle"), "selection"),  # refused at construction: a Literal field
        (dict(target_sample="all"), "target_sample"),
    ],
)
def test_bad_configs_fail_early(changes, match):
    with pytest.raises(ValueError, match=match):
        poison.make_poison_plan(cifar_like_labels(10), 10, poison.PoisonConfig(**changes), jax.random.PRNGKey(0))


def test_group_index_table_pads_and_masks():
    masks = np.array([[1, 0, 1, 1], [0, 1, 0, 0]], bool)
    index, valid = poison.group_index_table(masks)
    assert index.shape == (2, 3)
    assert index[0].tolist() == [0, 2, 3] and index[1, 0] == 1
    assert valid.tolist() == [[True, True, True], [True, False, False]]
