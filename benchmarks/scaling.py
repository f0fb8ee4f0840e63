"""Scaling: training img/s and estimator group-steps/s against the device count and the population size,
side by side with the single-device, single-run path, in one run.

Training rows time the study's own jitted steps on the on-device pipeline (uint8 images, BadNets on the
~10% poisoned samples inside the step):

- ``single run, 1 device``: :func:`ibjax.train.train_step` on the default device (the baseline: the
  per-member step, as the study ran a single run before every run became a population);
- ``data-parallel, N devices``: the same step with the batch split over a ``"data"`` axis of N devices
  (parameters and optimiser state replicated);
- ``population of R``: :func:`ibjax.study.steps.population_train_step`, R runs vmapped in one
  program, spread over ``--population-devices`` devices (members over ``"runs"``); img/s counts every
  member's images. The population of 1 is how the study now runs a single run: its row against the
  baseline is the cost of having one path.

Training rows also report the step's compile time (``lower().compile()``, timed once, before the
timed repeats).

Estimator rows time :func:`ibjax.study.steps.estimate_mi_on_mesh` (the batched InfoNCE estimator on a
feature bank) with G groups on one device, with the group axis split over N devices, and with R x G
groups (a population's members x groups as one axis); group-steps/s counts every group's critic steps.

Every row is the median of ``--repeats`` timed repeats after a compiling warm-up, and reports its ratio
to the single-device, single-run row. Correctness: the first data-parallel step's loss is compared
with the one-device step's, and population member 0's with the single run's (max relative difference).

    python -m benchmarks.scaling                                      # every local device (a GPU/TPU host)
    python -m benchmarks.scaling --quick --force-cpu-devices 8        # CPU check: correctness and overheads

On CPU, ``--force-cpu-devices N`` splits the same cores into N XLA devices: it checks that the sharded
programs run and agree, and shows their overheads; it measures no speed-up.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

import numpy as np

from benchmarks import _common as C

MODULE = "benchmarks.scaling"
IMAGE_SHAPE = (32, 32, 3)
NUM_CLASSES = 10


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x.strip()]


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="CPU-sized run: small_cnn, batch 32, few steps and repeats")
    p.add_argument("--model", default=None, choices=("resnet18", "small_cnn"),
                   help="default resnet18 (small_cnn with --quick)")
    p.add_argument("--batch", type=int, default=None, help="per-run batch size (default 256; 32 with --quick)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per repeat (default 20; 3 with --quick)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats, median reported (default 5; 3 --quick)")
    p.add_argument("--devices", default=None, help="comma-separated device counts (default 1,2,4,... up to all)")
    p.add_argument("--populations", default=None,
                   help="comma-separated population sizes (default 1,2,4,8; 1,2,4 with --quick)")
    p.add_argument("--population-devices", type=int, default=None,
                   help="devices a population is spread over (default: all)")
    p.add_argument("--groups", type=int, default=13, help="estimator groups per run (default %(default)s, the study's)")
    p.add_argument("--group-size", type=int, default=None, help="samples per group (default 4500; 256 with --quick)")
    p.add_argument("--estimator-epochs", type=int, default=None,
                   help="estimator epochs per call (default 4; 2 with --quick)")
    p.add_argument("--no-estimator", action="store_true", help="skip the estimator rows")
    p.add_argument("--force-cpu-devices", type=int, default=None,
                   help="split the CPU into this many XLA devices (sets XLA_FLAGS before JAX starts)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    a = p.parse_args(argv)
    a.model = a.model or ("small_cnn" if a.quick else "resnet18")
    a.batch = a.batch or (32 if a.quick else 256)
    a.steps = a.steps or (3 if a.quick else 20)
    a.repeats = a.repeats or (3 if a.quick else 5)
    a.group_size = a.group_size or (256 if a.quick else 4500)
    a.estimator_epochs = a.estimator_epochs or (2 if a.quick else 4)
    a.populations = _ints(a.populations) if a.populations else ([1, 2, 4] if a.quick else [1, 2, 4, 8])
    if a.force_cpu_devices:
        if "jax" in sys.modules:
            p.error("--force-cpu-devices must be set before JAX starts: run the benchmark as its own process")
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_force_host_platform_device_count={a.force_cpu_devices}").strip()
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    return a


def _data(args, mesh):
    import jax

    from ibjax.pipeline import put_train_data
    from ibjax.poison import PoisonConfig, make_poison_plan

    rng = np.random.default_rng(args.seed)
    n = max(8 * args.batch, 512)
    images = rng.integers(0, 256, (n, *IMAGE_SHAPE), dtype=np.uint8)
    labels = rng.permutation(np.arange(n) % NUM_CLASSES).astype(np.int32)
    plan = make_poison_plan(labels, NUM_CLASSES, PoisonConfig(ratio=0.1, target=0), jax.random.PRNGKey(args.seed))
    return put_train_data(images, plan, jax.random.PRNGKey(args.seed + 1), mesh=mesh), plan, n


def _time(run, args, sync):
    run()  # compile and warm up
    sync(run())
    return C.median(C.time_repeats(run, args.repeats, sync))


def _compile_s(step, *args) -> float:
    import time

    t0 = time.perf_counter()
    step.lower(*args).compile()
    return time.perf_counter() - t0


def bench_training(args, device_counts: list[int]) -> tuple[list[dict], list[str]]:
    import functools

    import jax

    from ibjax import train as T
    from ibjax.models import ModelConfig, make_model
    from ibjax.parallel import check_batch_divisible, make_mesh, population_mesh, put_batch, put_members, put_replicated
    from ibjax.study.steps import population_train_step
    from ibjax.triggers import get_attack

    model = make_model(ModelConfig(name=args.model, num_classes=NUM_CLASSES, gamma_xt=0.4, gamma_ty=0.4))
    cfg = T.TrainConfig(batch_size=args.batch)
    trigger = get_attack("badnets").train_trigger
    init = jax.jit(T.create_train_state, static_argnums=(1, 2, 3))
    rows, notes = [], []
    first_loss = {}

    def batches(n: int, members: int = 0) -> list[np.ndarray]:
        # Every setting sees the same batches (member 0 of a population the single run's ones), so
        # their first-step losses are comparable.
        rng = np.random.default_rng(args.seed + 2)
        one = [rng.choice(n, args.batch, replace=False).astype(np.int32) for _ in range(args.steps)]
        if not members:
            return one
        return [np.stack([b] + [np.roll(b, 7 * m) for m in range(1, members)]) for b in one]

    def keys(members: int = 0) -> list[np.ndarray]:
        k = [np.asarray(jax.random.fold_in(jax.random.PRNGKey(args.seed + 3), s)) for s in range(args.steps)]
        return k if not members else [np.stack([x] * members) for x in k]

    def record(label, loss_sum, members=False):
        first_loss[label] = float(np.sum(np.asarray(loss_sum)[0] if members else np.asarray(loss_sum))) / args.batch
        if label != "single run, 1 device":
            ref = first_loss["single run, 1 device"]
            return f"first-step loss rel. diff {abs(first_loss[label] - ref) / ref:.1e}" + (" (member 0)" if members
                                                                                             else "")
        return ""

    def run_single(mesh, label, devices):
        data, _, n = _data(args, mesh)
        step = jax.jit(functools.partial(T.train_step, model=model, trigger=trigger, config=cfg), donate_argnums=(0,))
        fresh = lambda: put_replicated(init(jax.random.PRNGKey(args.seed), model, IMAGE_SHAPE, cfg), mesh)  # noqa: E731
        placed = [(put_batch(i, mesh), put_replicated(k, mesh)) for i, k in zip(batches(n), keys())]
        compile_s = _compile_s(step, fresh(), data, *placed[0])
        _, m = step(fresh(), data, *placed[0])
        check = record(label, m["loss_sum"])
        holder = {"state": fresh()}

        def run():
            st, m = holder["state"], None
            for idx, k in placed:
                st, m = step(st, data, idx, k)
            holder["state"] = st
            return m["loss_sum"]

        t = _time(run, args, jax.block_until_ready)
        rows.append({"part": "training", "setting": label, "devices": devices, "runs": 1,
                     "rate": args.steps * args.batch / t, "unit": "img/s", "ms_per_step": 1e3 * t / args.steps,
                     "compile_s": compile_s, "check": check})

    run_single(None, "single run, 1 device", 1)
    for d in device_counts:
        mesh = make_mesh(d)
        try:
            check_batch_divisible(args.batch, mesh, "--batch")
        except ValueError as e:
            notes.append(f"skipped data-parallel on {d} devices: {e}")
            continue
        run_single(mesh, f"data-parallel, {d} devices", d)

    pop_devices = args.population_devices or jax.device_count()
    for r in args.populations:
        mesh = population_mesh(r, pop_devices)
        try:
            check_batch_divisible(args.batch, mesh, "--batch")
        except ValueError as e:
            notes.append(f"skipped population of {r}: {e}")
            continue
        data, _, n = _data(args, mesh)
        # The members share images and plan here (the timing does not depend on them); seeds differ.
        stacked = data.replace(**put_replicated({f: np.stack([np.asarray(getattr(data, f))] * r)
                                                 for f in ("labels", "poisoned", "perturbation_row", "trigger_key")},
                                                mesh))

        def fresh():
            states = [init(jax.random.PRNGKey(args.seed + m), model, IMAGE_SHAPE, cfg) for m in range(r)]
            return put_members(jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *states), mesh)

        placed = [(put_batch(i, mesh, population=True), put_members(k, mesh)) for i, k in zip(batches(n, r), keys(r))]
        noise = put_replicated(np.zeros((r, 0), np.float32), mesh)
        step = jax.jit(functools.partial(population_train_step, model=model, trigger=trigger, config=cfg,
                                         total_steps=0, varying=()), donate_argnums=(0,))
        s = mesh.shape
        label = f"population of {r} (runs {s['runs']} x data {s['data']})"
        compile_s = _compile_s(step, fresh(), stacked, *placed[0], noise)
        _, m = step(fresh(), stacked, *placed[0], noise)
        check = record(label, m["loss_sum"], members=True)
        holder = {"state": fresh()}

        def run():
            st, m = holder["state"], None
            for idx, k in placed:
                st, m = step(st, stacked, idx, k, noise)
            holder["state"] = st
            return m["loss_sum"]

        t = _time(run, args, jax.block_until_ready)
        rows.append({"part": "training", "setting": label, "devices": mesh.size, "runs": r,
                     "rate": r * args.steps * args.batch / t, "unit": "img/s", "ms_per_step": 1e3 * t / args.steps,
                     "compile_s": compile_s, "check": check})
    base = rows[0]["rate"]
    for row in rows:
        row["ratio"] = row["rate"] / base
    return rows, notes


def _steps_per_epoch(cfg, size: int) -> int:
    """Critic steps per estimator epoch of a group of ``size`` samples (the estimator's own rule)."""
    try:  # the chunked estimator (ibjax.mi package)
        from ibjax.mi.config import batches_per_epoch, split_sizes

        _, _, n_tr = split_sizes(np.asarray([size]), cfg)
        return int(np.asarray(batches_per_epoch(n_tr, cfg.protocol.batch_size, cfg.optimiser.batch_fraction))[0])
    except ImportError:
        n_tr = size - int(np.floor(cfg.protocol.heldout_fraction * size))
        return max(1, int((n_tr // cfg.protocol.batch_size) * cfg.optimiser.batch_fraction))


def bench_estimator(args, device_counts: list[int]) -> list[dict]:
    import jax

    from ibjax import mi as ibmi
    from ibjax.parallel import make_mesh, put_replicated
    from ibjax.study.steps import estimate_mi_on_mesh

    cfg = ibmi.resolve_config(epochs=args.estimator_epochs, batch_size=64 if args.quick else 128,
                              negatives=128 if args.quick else 512, hidden=(128, 128), read_epochs=1, heldout_passes=1)
    g, m = args.groups, args.group_size
    da, db, draws = 64 if args.quick else 512, 256 if args.quick else 3072, 2
    rng = np.random.default_rng(args.seed)
    rows = []

    def setting(groups: int, mesh, label: str, devices: int, runs: int):
        n = groups * m
        bank = rng.standard_normal((n, draws, da), dtype=np.float32)
        x = rng.standard_normal((n, db), dtype=np.float32)
        shared = put_replicated((bank, x), mesh) if mesh is not None else jax.device_put((bank, x))
        index = np.arange(n, dtype=np.int32).reshape(groups, m)
        valid = np.ones((groups, m), bool)
        steps = groups * _steps_per_epoch(cfg, m) * cfg.protocol.epochs

        def run():
            return estimate_mi_on_mesh(jax.random.PRNGKey(args.seed), ibmi.bank_pairs, shared, index, valid, da, db,
                                       config=cfg, mesh=mesh).train

        t = _time(run, args, lambda out: np.asarray(out))
        rows.append({"part": "estimator", "setting": label, "devices": devices, "runs": runs,
                     "rate": steps / t, "unit": "group-steps/s", "ms_per_step": 1e3 * t / (steps / groups)})

    setting(g, None, f"{g} groups, 1 device", 1, 1)
    for d in device_counts:
        setting(g, make_mesh(d), f"{g} groups over {d} devices", d, 1)
    for r in args.populations:
        if r > 1:
            setting(r * g, make_mesh(), f"population of {r}: {r} x {g} groups over {jax.device_count()} devices",
                    jax.device_count(), r)
    base = rows[0]["rate"]
    for row in rows:
        row["ratio"] = row["rate"] / base
    return rows


def main(argv: Optional[Sequence[str]] = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    import jax

    total = jax.device_count()
    device_counts = _ints(args.devices) if args.devices else [d for d in (2, 4, 8, 16, 32, 64) if d <= total]
    device_counts = [d for d in device_counts if d > 1]
    if any(d > total for d in device_counts):
        raise SystemExit(f"error: --devices asks for {max(device_counts)} devices but {total} are available")
    hw = C.hardware()
    hw["devices"] = f"{total} x {jax.devices()[0].device_kind}"
    rows, notes = bench_training(args, device_counts)
    if not args.no_estimator:
        rows += bench_estimator(args, device_counts)
    platform = jax.devices()[0].platform
    if platform == "cpu":
        notes.insert(0, f"CPU: the {total} devices are XLA host devices splitting the same {os.cpu_count()} cores; "
                        "these rows check that the sharded and vmapped programs run and agree, and show their "
                        "overheads. They measure no speed-up.")
    notes.append("ratio: rate / the single-run, 1-device rate of the same part (img/s, or group-steps/s)")
    notes.append("population img/s counts every member's images; group-steps/s counts every group's critic steps")
    if args.quick:
        notes.append("--quick: sizes for a CPU check only; not a measurement")
    cols = [("part", "part", 0), ("setting", "setting", 0), ("devices", "devices", 0), ("runs", "runs", 0),
            ("rate (median)", "rate", 0), ("unit", "unit", 0), ("ratio vs 1 device, 1 run", "ratio", 2),
            ("ms/step", "ms_per_step", 2), ("compile s", "compile_s", 2), ("check", "check", 0)]
    config = {"model": args.model, "batch": args.batch, "steps": args.steps, "repeats": args.repeats,
              "devices": device_counts, "populations": args.populations, "groups": args.groups,
              "group_size": args.group_size, "estimator_epochs": args.estimator_epochs, "quick": args.quick,
              "force_cpu_devices": args.force_cpu_devices}
    return C.report(title="Scaling: devices and populations", module=MODULE, argv=argv, hw=hw, config=config,
                    columns=cols, rows=rows, notes=notes, json_path=args.json)


if __name__ == "__main__":
    main()
