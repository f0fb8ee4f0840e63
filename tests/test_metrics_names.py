"""ibjax.metrics.names: the names of an MI history's parts and the check of a stored number, defined
once and shared by the metrics and the plots."""

import ast
import inspect
import math

import jax.numpy as jnp
import numpy as np
import pytest

from ibjax import metrics, plots
from ibjax.metrics import names


def test_names_module_imports_no_jax():
    tree = ast.parse(inspect.getsource(names))
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not {m for m in imported if m.split(".")[0] in ("jax", "jaxlib", "flax")}


def test_metrics_and_plots_share_one_definition():
    assert plots.STEALTH_COMPONENTS is metrics.STEALTH_COMPONENTS is names.STEALTH_COMPONENTS
    assert metrics.STEALTH_COMPONENTS == tuple(f"{q}/{g}" for q in metrics.QUANTITIES
                                               for g in metrics.STEALTH_TARGET_GROUPS)
    assert plots._finite is metrics.is_finite_number


@pytest.mark.parametrize("value, finite", [
    (1, True), (0.5, True), (np.float32(2.0), True), (np.int64(3), True), (np.array(4.0), True),
    (jnp.float32(1.5), True), (-0.0, True),
    (None, False), (math.nan, False), (math.inf, False), (np.float32("nan"), False),
    (True, False), (False, False), (np.bool_(True), False), (np.array(True), False),
    ("1.0", False), (b"1", False), ([1.0], False), (np.ones(2), False), ({}, False),
])
def test_is_finite_number(value, finite):
    assert names.is_finite_number(value) is finite


def test_clean_groups_are_named_and_ordered_one_way():
    names_ = ["class_10", "target", "class_2", "class_x", "class_1"]
    assert [n for n in names_ if names.is_clean_group(n)] == ["class_10", "class_2", "class_x", "class_1"]
    assert sorted(filter(names.is_clean_group, names_), key=names.clean_group_key) == \
        ["class_1", "class_2", "class_10", "class_x"]
