"""Meshes, shardings and the distributed runtime of a study: every local device, and many hosts.

A study runs on a :class:`jax.sharding.Mesh` with two named axes:

- ``"data"`` (:data:`DATA`): data parallelism. A training batch ``int32[B]`` of sample indices is
  split over it; parameters, optimiser state and the uint8 data set are replicated. XLA then
  all-reduces the gradients and the batch-norm statistics, so batch norm sees the global batch
  statistics exactly as on one device, and the update is the one-device update up to float
  summation order.
- ``"runs"`` (:data:`RUNS`): populations of runs (:mod:`ibjax.study.population`). The stacked
  parameters of R members are split over it, so each device trains R / runs members on
  B / data samples each.

The MI estimator's group axis (every group's critic is independent) is split over *all* devices of
the mesh (:func:`group_sharding`), padded to a multiple of the device count (:func:`pad_groups`).

Every placement helper builds global arrays from host values that every process holds identically
(``jax.make_array_from_callback``), so the same code runs in one process and across hosts after
:func:`initialize_distributed`. The noise of the networks is drawn with JAX's partitionable
Threefry (``jax_threefry_partitionable``, on by default): a random array has the same values
however it is sharded, which is what makes a sharded run equal the one-device run.

Runtime options (device count, distributed set-up) never enter :class:`~ibjax.study.StudyConfig`:
they do not change results beyond float summation order.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
from typing import Any, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

__all__ = [
    "DATA",
    "RUNS",
    "make_mesh",
    "population_mesh",
    "flat_mesh",
    "mesh_shape",
    "describe_mesh",
    "replicated",
    "batch_sharding",
    "group_sharding",
    "member_sharding",
    "global_array",
    "put_replicated",
    "put_batch",
    "put_groups",
    "put_members",
    "reshard_replicated",
    "to_host",
    "check_batch_divisible",
    "padded_size",
    "pad_rows",
    "pad_groups",
    "pad_batch_columns",
    "DistributedInfo",
    "initialize_distributed",
    "process_share",
    "is_primary",
    "barrier",
    "COLLECTIVE_OPS",
    "collectives_in_hlo",
]

LOGGER = logging.getLogger("ibjax")

DATA = "data"
"""Mesh axis of data parallelism (the batch axis)."""
RUNS = "runs"
"""Mesh axis of a population's members (the stacked-run axis)."""


# --------------------------------------------------------------------------------------------------
# meshes


def _device_list(devices, local: bool) -> list:
    pool = jax.local_devices() if local else jax.devices()
    if devices is None:
        return list(pool)
    if isinstance(devices, (int, np.integer)):
        n = int(devices)
        if n < 1:
            raise ValueError(f"devices must be >= 1, got {n}")
        if n > len(pool):
            where = "local " if local and jax.process_count() > 1 else ""
            raise ValueError(f"devices={n} but only {len(pool)} {where}device(s) are available "
                             f"({pool[0].platform}); pass --devices {len(pool)} or fewer")
        return list(pool[:n])
    return list(devices)


def make_mesh(devices: int | Sequence[Any] | None = None, *, runs: int = 1, local: bool = False) -> Mesh:
    """A ``("runs", "data")`` mesh over ``devices``.

    Args:
      devices: a device count (the first N devices), a list of devices, or None for all of them.
      runs: size of the ``"runs"`` axis (1 for a single study); it must divide the device count.
      local: use this process's devices only (a sweep's runs divided over processes), instead of
        every device of the distributed runtime (one study across hosts).

    The axes are ``AxisType.Auto``: XLA propagates shardings from the placed inputs through the
    unannotated model code.

    Raises:
      ValueError: more devices than available, or ``runs`` not dividing the device count.
    """
    devs = _device_list(devices, local)
    if runs < 1 or len(devs) % runs:
        raise ValueError(f"the runs axis ({runs}) must divide the device count ({len(devs)})")
    shape = (runs, len(devs) // runs)
    try:  # topology-aware order (TPU rings) where JAX knows one
        return jax.make_mesh(shape, (RUNS, DATA), (AxisType.Auto, AxisType.Auto), devices=devs)
    except Exception:  # noqa: BLE001 - a subset of a TPU slice may have no such order: plain order
        return Mesh(np.asarray(devs, dtype=object).reshape(shape), (RUNS, DATA), axis_types=(AxisType.Auto,) * 2)


def population_mesh(members: int, devices: int | Sequence[Any] | None = None, *, runs: Optional[int] = None,
                    local: bool = False) -> Mesh:
    """A mesh for a population of ``members`` runs: ``runs`` (default: the largest common divisor of
    the member and device counts) devices along ``"runs"``, the rest along ``"data"``.

    With 4 members on 8 devices: runs 4 x data 2 (each member's batch split over 2 devices); with 3
    members on 8 devices: runs 1 x data 8 (every member on every device, its batch split 8 ways).
    """
    devs = _device_list(devices, local)
    if runs is None:
        runs = math.gcd(int(members), len(devs))
    if members % runs:
        raise ValueError(f"the runs axis ({runs}) must divide the population size ({members})")
    return make_mesh(devs, runs=runs)


def flat_mesh(mesh: Mesh) -> Mesh:
    """The same devices with every device on the ``"data"`` axis (``runs`` = 1)."""
    if mesh.shape[RUNS] == 1:
        return mesh
    return Mesh(mesh.devices.reshape(1, -1), (RUNS, DATA), axis_types=(AxisType.Auto,) * 2)


def mesh_shape(mesh: Optional[Mesh]) -> dict:
    """``{"runs": r, "data": d}`` (``{"runs": 1, "data": 1}`` for no mesh)."""
    if mesh is None:
        return {RUNS: 1, DATA: 1}
    return {RUNS: int(mesh.shape[RUNS]), DATA: int(mesh.shape[DATA])}


def describe_mesh(mesh: Optional[Mesh]) -> str:
    if mesh is None:
        return "default device"
    s = mesh_shape(mesh)
    dev = mesh.devices.flat[0]
    hosts = len({d.process_index for d in mesh.devices.flat})
    where = f" on {hosts} processes" if hosts > 1 else ""
    return (f"{mesh.size} {dev.platform} device(s){where} (runs {s[RUNS]} x data {s[DATA]})")


# --------------------------------------------------------------------------------------------------
# shardings and placement


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array (parameters, optimiser state, the data set)."""
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, population: bool = False) -> NamedSharding:
    """Batch arrays: ``[B, ...]`` split over ``"data"``, or a population's ``[R, B, ...]`` split over
    ``("runs", "data")``."""
    return NamedSharding(mesh, P(RUNS, DATA) if population else P(DATA))


def group_sharding(mesh: Mesh) -> NamedSharding:
    """The estimator's group axis ``[G, ...]`` split over every device of the mesh."""
    return NamedSharding(mesh, P((RUNS, DATA)))


def member_sharding(mesh: Mesh) -> NamedSharding:
    """A population's stacked arrays ``[R, ...]`` (parameters, optimiser state, keys) split over ``"runs"``."""
    return NamedSharding(mesh, P(RUNS))


def global_array(value, sharding: NamedSharding) -> jax.Array:
    """A global array of ``sharding`` from a host value that every process holds identically.

    Each process fills only its own devices' shards, so this works across hosts too.
    """
    if jax.process_count() == 1 or (isinstance(value, jax.Array) and not value.is_fully_addressable):
        return jax.device_put(value, sharding)  # one process (no host round trip), or already global
    host = np.asarray(value)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def put_replicated(tree: Any, mesh: Optional[Mesh]) -> Any:
    """Every array leaf of ``tree`` replicated over ``mesh`` (unchanged for ``mesh=None``).

    PRNG key arrays (typed keys) keep their type.
    """
    if mesh is None:
        return tree
    sharding = replicated(mesh)

    def put(x):
        if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(global_array(jax.random.key_data(x), sharding),
                                            impl=jax.random.key_impl(x))
        if isinstance(x, (jax.Array, np.ndarray, np.generic, int, float, bool)):
            return global_array(x, sharding)
        return x

    return jax.tree.map(put, tree)


def put_batch(index, mesh: Optional[Mesh], population: bool = False) -> jax.Array:
    """A batch of sample indices ``int32[B]`` (or a population's ``[R, B]``) split over the mesh."""
    if mesh is None:
        return jnp.asarray(index)
    return global_array(np.asarray(index), batch_sharding(mesh, population))


def put_groups(tree: Any, mesh: Optional[Mesh]) -> Any:
    """Every leaf (leading group axis G, a multiple of ``mesh.size``) split over the mesh's devices."""
    if mesh is None:
        return tree
    return jax.tree.map(lambda x: global_array(x, group_sharding(mesh)), tree)


def put_members(tree: Any, mesh: Optional[Mesh]) -> Any:
    """Every array leaf (leading member axis R, a multiple of the ``"runs"`` axis) split over ``"runs"``."""
    if mesh is None:
        return tree
    sharding = member_sharding(mesh)

    def put(x):
        if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(global_array(jax.random.key_data(x), sharding),
                                            impl=jax.random.key_impl(x))
        return global_array(x, sharding)

    return jax.tree.map(put, tree)


def reshard_replicated(tree: Any, mesh: Optional[Mesh]) -> Any:
    """Device arrays of ``tree`` resharded to replicated on ``mesh`` (an all-gather where they were split)."""
    if mesh is None:
        return tree
    return jax.device_put(tree, replicated(mesh))


def to_host(x) -> np.ndarray:
    """A device array as NumPy on every process (gathered across hosts where a process holds only part)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


# --------------------------------------------------------------------------------------------------
# sizes and padding


def check_batch_divisible(batch_size: int, mesh: Optional[Mesh], name: str = "train.batch_size") -> None:
    """ValueError naming the setting unless the ``"data"`` axis divides the batch size."""
    d = mesh_shape(mesh)[DATA]
    if batch_size % d:
        ok = [k for k in range(d, 0, -1) if batch_size % k == 0][0]
        raise ValueError(f"{name} ({batch_size}) is not divisible by the {d} devices of the data axis: use a "
                         f"multiple of {d} (e.g. {batch_size + (-batch_size) % d}) or --devices {ok}")


def padded_size(n: int, multiple: int) -> int:
    """The smallest multiple of ``multiple`` that is >= n."""
    return -(-int(n) // int(multiple)) * int(multiple)


def pad_rows(x: np.ndarray, rows: int, source: int = 0) -> np.ndarray:
    """``x`` with copies of row ``source`` appended up to ``rows`` rows (leading axis)."""
    x = np.asarray(x)
    extra = rows - x.shape[0]
    if extra < 0:
        raise ValueError(f"cannot pad {x.shape[0]} rows down to {rows}")
    if extra == 0:
        return x
    return np.concatenate([x, np.repeat(x[source : source + 1], extra, axis=0)])


def pad_groups(num_groups: int, mesh: Optional[Mesh]) -> int:
    """Group count padded to a multiple of the mesh's devices (the padding groups are copies of
    group 0: they pass the estimator's size checks and leave the scan lengths unchanged, and every
    group's result depends on its own key and samples only, so real groups do not change)."""
    return padded_size(num_groups, 1 if mesh is None else mesh.size)


def pad_batch_columns(index: np.ndarray, valid: np.ndarray, mesh: Optional[Mesh]) -> tuple[np.ndarray, np.ndarray]:
    """Evaluation batches ``[S, B]`` widened to a multiple of the data axis with invalid columns.

    Padding at the end of each batch keeps every real sample in the batch and at the position it has
    on one device, so its noise draw (partitionable Threefry: a value depends on its position, not on
    the array's length) and its batch key are unchanged; the padding is masked out of every sum.
    """
    d = mesh_shape(mesh)[DATA]
    width = padded_size(index.shape[1], d)
    if width == index.shape[1]:
        return index, valid
    pad = width - index.shape[1]
    index = np.concatenate([index, np.repeat(index[:, :1], pad, axis=1)], axis=1)
    valid = np.concatenate([valid, np.zeros((valid.shape[0], pad), bool)], axis=1)
    return index, valid


# --------------------------------------------------------------------------------------------------
# the distributed runtime


@dataclasses.dataclass(frozen=True)
class DistributedInfo:
    """Where this process stands: ``process_index`` of ``process_count``, ``local_devices`` here,
    ``global_devices`` in all, and whether :func:`jax.distributed.initialize` was called here."""

    process_index: int
    process_count: int
    local_devices: int
    global_devices: int
    initialized: bool


_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def initialize_distributed(mode: str = "auto", env: Optional[Mapping[str, str]] = None) -> DistributedInfo:
    """Join the distributed runtime from the environment (call before any other JAX work).

    Args:
      mode: ``"auto"``: initialise when ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES`` and
        ``JAX_PROCESS_ID`` are set (and name more than one process); ``"on"``: always, letting JAX
        detect the cluster (Cloud TPU VMs, SLURM, Open MPI, Kubernetes) where those variables are
        absent; ``"off"``: never.
      env: the environment (default ``os.environ``).

    Raises:
      ValueError: a malformed variable, or only some of the three set.
    """
    env = os.environ if env is None else env
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"distributed mode must be 'auto', 'on' or 'off', got {mode!r}")
    present = [k for k in _ENV if env.get(k)]
    if mode == "auto" and 0 < len(present) < 3:
        missing = [k for k in _ENV if k not in present]
        raise ValueError(f"{', '.join(present)} set but {', '.join(missing)} missing: set all three to run "
                         "across processes (or none)")
    kwargs = {}
    if len(present) == 3:
        try:
            kwargs = dict(coordinator_address=env["JAX_COORDINATOR_ADDRESS"],
                          num_processes=int(env["JAX_NUM_PROCESSES"]), process_id=int(env["JAX_PROCESS_ID"]))
        except ValueError as e:
            raise ValueError(f"JAX_NUM_PROCESSES and JAX_PROCESS_ID must be integers ({e})") from e
        if not 0 <= kwargs["process_id"] < kwargs["num_processes"]:
            raise ValueError(f"JAX_PROCESS_ID ({kwargs['process_id']}) must lie in 0..JAX_NUM_PROCESSES-1 "
                             f"({kwargs['num_processes'] - 1})")
    start = mode == "on" or (mode == "auto" and kwargs and kwargs["num_processes"] > 1)
    initialized = False
    if start and not _distributed_started():
        jax.distributed.initialize(**kwargs)
        initialized = True
    info = DistributedInfo(process_index=jax.process_index(), process_count=jax.process_count(),
                           local_devices=jax.local_device_count(), global_devices=jax.device_count(),
                           initialized=initialized)
    if info.process_count > 1:
        LOGGER.info("process %d of %d: %d local device(s), %d in all", info.process_index, info.process_count,
                    info.local_devices, info.global_devices)
    return info


def _distributed_started() -> bool:
    from jax._src import distributed  # the one place JAX records it; no public accessor

    return distributed.global_state.client is not None


def is_primary() -> bool:
    """True on the process that writes shared files (process 0)."""
    return jax.process_index() == 0


def process_share(items: Sequence[Any], index: Optional[int] = None, count: Optional[int] = None) -> list:
    """This process's share of ``items`` (round robin: items ``index``, ``index + count``, ...)."""
    index = jax.process_index() if index is None else index
    count = jax.process_count() if count is None else count
    return list(items[index::count])


def barrier(name: str, mesh: Optional[Mesh] = None) -> None:
    """Wait until every process reaches this point (no-op in one process, or when ``mesh`` lies on
    this process's devices only: a sweep's run computed by one process)."""
    if mesh is not None and len({d.process_index for d in mesh.devices.flat}) == 1:
        return
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


# --------------------------------------------------------------------------------------------------
# checking compiled programs

COLLECTIVE_OPS = ("all-gather", "all-reduce", "all-to-all", "collective-permute", "reduce-scatter")
"""HLO instructions that move data between devices."""


def collectives_in_hlo(text: str) -> dict[str, int]:
    """Count the cross-device collectives (:data:`COLLECTIVE_OPS`, async ``-start`` forms included)
    in an HLO module's text, e.g. ``jax.jit(f).lower(...).compile().as_text()``."""
    out = {}
    for op in COLLECTIVE_OPS:
        n = len(re.findall(rf"\s{re.escape(op)}(?:-start)?\(", text))
        if n:
            out[op] = n
    return out
