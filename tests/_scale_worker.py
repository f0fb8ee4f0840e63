"""Subprocess driver of the scaling tests (tests/test_parallel.py, tests/test_study_population.py,
tests/test_distributed.py): JAX reads the device count and the distributed set-up when it starts, so
these checks run in processes of their own. Not a test module (pytest does not collect it).

    python tests/_scale_worker.py multidevice OUT     # 8 forced CPU devices (set by the caller)
    python tests/_scale_worker.py distributed OUT     # one of two processes (JAX_* set by the caller)

Each writes its run directories under OUT and a ``done.json`` when it finishes; the tests read the
run directories' own files.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from tiny_config import TINY, short  # noqa: E402

from ibjax.fields import override  # noqa: E402
from ibjax.runtime import fast_cpu_compile  # noqa: E402


ONE = short(TINY, 1)
TWO = override(short(TINY, 2), {"mi.epochs": (1,), "analysis.stealth.epochs": (1,)})
"""ONE extended by a second epoch (MI at epoch 1 only: estimator programs are most of the compile time)."""
# Member 3 of the population differs in seed, poison ratio and noise level (traced per member).
MEMBERS = [override(ONE, {"seed": s}) for s in range(3)] + [
    override(ONE, {"seed": 3, "poison.ratio": 0.2, "model.gamma_xt": 0.3})]
ESTIMATOR_MODULES = ("estimate", "run_epochs", "prepare", "finish")
"""Substrings of the estimator's compiled module names (jit__estimate_all; after the chunked
rewrite jit__prepare, jit__run_epochs, jit__finish)."""


def multidevice(out: str) -> None:
    import jax
    import numpy as np

    from ibjax.commands import compare
    from ibjax.parallel import make_mesh
    from ibjax.study import build_population, init_run_state, run_epoch, run_population, run_study, stack_states

    assert jax.device_count() == 8, jax.devices()
    p = lambda name: os.path.join(out, name)  # noqa: E731
    done = {}
    quiet = dict(progress=False, plots=False)
    # The one-device references: a two-epoch run of seed 0 and a one-epoch run of seed 1 (members 2
    # and 3 are checked on identical inputs below; member 3, whose noise level and poison ratio
    # differ, alone would compile a third set of programs: test_study_population.py checks traced
    # noise levels against static ones).
    run_study(TWO, p("alone_0"), devices=1, **quiet)
    run_study(MEMBERS[1], p("alone_1"), devices=1, **quiet)
    # Epoch 1 on 2 devices, then resumed on 8 devices for epoch 2 (a different device count). Its
    # references for epoch 2 start that epoch from its own checkpoint: the same epoch-1 directory
    # resumed on one device, and both epochs on 2 devices uninterrupted (alone_0's epoch 2 starts from
    # other rounding, which training amplifies: test_parallel.py compares it at epoch 1 only).
    run_study(ONE, p("sharded"), devices=2, **quiet)
    shutil.copytree(p("sharded"), p("sharded_1"))
    run_study(TWO, p("sharded"), resume=True, devices=8, **quiet)
    run_study(TWO, p("sharded_1"), resume=True, devices=1, **quiet)
    run_study(TWO, p("two_devices"), devices=2, **quiet)
    # A population of 4 on 2 devices (runs 2 x data 1: two members per device), each member in its
    # own run directory; compare reads them, and a member's directory resumes alone (one device).
    run_population(MEMBERS, [p(f"member_{r}") for r in range(4)], devices=2, **quiet)
    compare.main([p(f"member_{r}") for r in range(3)] + ["--out", p("compare")])
    run_study(TWO, p("member_0"), resume=True, devices=1, **quiet)
    # Parameters and optimiser state stay replicated after a data-parallel epoch on 8 devices.
    pop8 = build_population([ONE], progress=False, mesh=make_mesh(8))
    setup8 = pop8.members[0]
    state, _ = run_epoch(stack_states([init_run_state(setup8)], pop8.mesh), pop8)
    done["replicated_state"] = all(x.sharding.is_fully_replicated for x in jax.tree.leaves(state))
    done["state_devices"] = sorted({len(x.sharding.device_set) for x in jax.tree.leaves(state)})
    done["exact"] = _exact_checks(setup8)
    try:  # a batch the data axis does not divide: one clear error before any work
        run_study(override(ONE, {"train.batch_size": 30}), p("bad"),
                  devices=8, **quiet)
    except ValueError as e:
        done["indivisible_error"] = str(e)
    done["bad_dir_left"] = os.path.exists(p("bad"))
    done["np"] = np.__version__
    with open(p("done.json"), "w") as f:
        json.dump(done, f)


def _exact_checks(setup8) -> dict:
    """Identical inputs through different programs (no new estimator compile: the shapes are the
    study runs' own). Largest differences, relative to the features' scale for banks, in nats for
    MI reads (trajectory, train and held-out):

    - ``data_parallel``: a feature bank built on 8 devices vs on one, from the same variables;
    - ``estimator_8``: the I(X;T) estimator on that one bank, 13 groups split over 8 devices (padded
      to 16) vs on one device (first estimator epoch, and all of it);
    - ``population``: each member's rows of a population's joint bank vs its bank built alone;
    - ``joint_call``: members 1 and 2's groups in the joint estimator call (after other members'
      rows and groups, their own keys) vs each member alone on its rows of the same bank.
    """
    import jax
    import numpy as np

    from ibjax import mi as ibmi
    from ibjax.parallel import make_mesh, population_mesh, put_replicated, to_host
    from ibjax.poison import group_index_table
    from ibjax.study import build_setup, init_run_state
    from ibjax.study.population import build_population, stack_states
    from ibjax.study.steps import estimate_mi_on_mesh, population_bank
    from ibjax.train import extract_features

    out = {}
    host = lambda tree: jax.tree.map(to_host, tree)  # noqa: E731

    def rel(a, b):
        a, b = to_host(a), to_host(b)
        return float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-6))

    def reads(res):
        return np.concatenate([np.asarray(res.trajectory), np.asarray(res.train)[:, None],
                               np.asarray(res.heldout)[:, None]], 1)

    def bank_of(setup, variables, key):
        """estimate_network_mi's bank of ``setup``'s groups, and its group tables."""
        index, valid = group_index_table(setup.plan.group_masks)
        used = np.unique(index[valid])
        row_of = np.zeros(setup.train_data.size, np.int32)
        row_of[used] = np.arange(len(used))
        draws = [host(extract_features(put_replicated(variables, setup.mesh), setup.train_data, used,
                                       jax.random.fold_in(key, d), model=setup.model,
                                       trigger=setup.attack.train_trigger, mesh=setup.mesh))
                 for d in range(setup.config.mi.bank_draws)]
        return draws[0][0], np.stack([d[1] for d in draws], 1), np.stack([d[2] for d in draws], 1), row_of[index], valid

    setup1 = build_setup(ONE, progress=False, mesh=make_mesh(1))
    variables = host(init_run_state(setup1).train.variables)
    k_xt, _, k_bank = jax.random.split(jax.random.PRNGKey(7), 3)
    x1, t1, y1, rows, valid = bank_of(setup1, variables, k_bank)
    x8, t8, y8, _, _ = bank_of(setup8, variables, k_bank)
    out["data_parallel"] = max(rel(x1, x8), rel(t1, t8), rel(y1, y8))

    def xt(setup, keys, shared, group_data, valid, mesh):
        return reads(estimate_mi_on_mesh(keys, ibmi.bank_pairs, put_replicated(shared, mesh), group_data, valid,
                                         setup.t_dim, setup.x_dim, config=setup.config.mi.xt, mesh=mesh))

    def diff(a, b):
        """Largest difference in the first estimator epoch (reads of the initial critics: exact up to
        float rounding, and changed completely by a wrong key, group or row) and over everything."""
        return {"first_epoch": float(np.abs(a[:, 0] - b[:, 0]).max()), "all": float(np.abs(a - b).max())}

    one = xt(setup1, k_xt, (t1, x1), rows, valid, setup1.mesh)
    out["estimator_8"] = diff(xt(setup8, k_xt, (t1, x1), rows, valid, setup8.mesh), one)
    out["first_epoch_spread"] = float(one[:, 0].max() - one[:, 0].min())

    mesh = population_mesh(len(MEMBERS), 2)
    pop = build_population(MEMBERS, mesh=mesh, progress=False)
    state = stack_states([init_run_state(m) for m in pop.members], mesh)
    keys = [jax.random.fold_in(m.keys.mi, 1) for m in pop.members]
    bank = population_bank(keys, state.train.variables, pop)
    member_vars = host(state.train.variables)
    (t_all, x_all), y_all = host(bank.shared["xt"]), to_host(bank.shared["ty"][0])
    joint = reads(estimate_mi_on_mesh(bank.keys["xt"], ibmi.bank_pairs, bank.shared["xt"], bank.group_data, bank.valid,
                                      setup1.t_dim, setup1.x_dim, config=ONE.mi.xt, mesh=mesh))
    banks, calls = [], []
    for r in (1, 2):  # not the first member (offset 0); member 3's network would compile anew
        m = pop.members[r]
        k_bank_r = jax.random.split(keys[r], 3)[2]
        xr, tr, yr, rows_r, valid_r = bank_of(m, jax.tree.map(lambda v: v[r], member_vars), k_bank_r)
        rows_ = slice(bank.offsets[r], bank.offsets[r] + bank.sizes[r])
        banks += [rel(xr, x_all[rows_]), rel(tr, t_all[rows_]), rel(yr, y_all[rows_])]
        groups = slice(sum(bank.groups[:r]), sum(bank.groups[: r + 1]))
        alone = xt(setup1, bank.keys["xt"][groups], (t_all[rows_], x_all[rows_]), rows_r, valid_r, setup1.mesh)
        calls.append(diff(joint[groups], alone))
    out["population"] = max(banks)
    out["joint_call"] = {k: max(c[k] for c in calls) for k in ("first_epoch", "all")}
    return out


def distributed(out: str) -> None:
    """One of two processes (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES=2, JAX_PROCESS_ID set by the
    caller): a tiny study over both processes' devices through the real command line, then the same
    study computed by this process alone (process 0: the single-process reference)."""
    from ibjax.parallel import barrier, initialize_distributed

    info = initialize_distributed("auto")
    import jax

    from ibjax.commands import study
    from ibjax.study import config_to_dict

    config = os.path.join(out, "tiny.json")
    if info.process_index == 0:
        with open(config, "w") as f:
            json.dump(config_to_dict(ONE), f)
    barrier("config written")
    # One study over both processes' devices (a 2-device global mesh); process 0 writes its directory.
    summary = study.main(["--config", config, "--out", os.path.join(out, "global"), "--quiet"])
    with open(os.path.join(out, f"done_{info.process_index}.json"), "w") as f:
        json.dump({"process_count": jax.process_count(), "global_devices": jax.device_count(),
                   "local_devices": jax.local_device_count(), "initialized": info.initialized,
                   "test_accuracy": summary["test_accuracy"]}, f)


def sweep_share(out: str) -> None:
    """One of two independent processes sharing a sweep (--process-index / --process-count)."""
    from ibjax.commands import sweep

    index = os.environ["SWEEP_INDEX"]
    sweep.main(["--attacks", "badnets", "--seeds", "0,1", "--root", os.path.join(out, "sweep"), "--config",
                os.path.join(out, "tiny.json"), "--quiet", "--process-index", index, "--process-count", "2"])


# --------------------------------------------------------------------------------------------------
# comparing two run directories

METRIC_TOL = {"train_loss": ("rel", 3e-4), "test_loss": ("abs", 2.5e-3), "train_accuracy": ("abs", 2.5e-3),
              "test_accuracy": ("abs", 0.015), "asr": ("abs", 0.015), "lr": ("rel", 1e-6), "lr_last": ("rel", 1e-6)}
"""Same run, different programs (device counts, vmapped members): float32 sums in another order. After
one epoch of 18 SGD steps the training loss moved by at most 1e-6 relative and the test loss by
9e-5 nats; after the second epoch of a population member resumed alone (its first epoch's rounding
amplified by training) by 1.1e-4 relative and 1.3e-3 nats (2026-11-23, Philox noise, fast-compile
flags; 2e-5 and 5e-4 the day before with Threefry noise). The tolerances are 2-3x that and still
10x (training loss) below what another seed changes after one epoch (2.9e-3 relative; a wrong
noise draw is another seed, and the 8-device worker also compares banks of noisy features built both ways, to
1e-6). Test accuracy and ASR count predictions, and a tiny network after two epochs has many near
ties: a population member resumed alone flipped 3 of 1,000 test predictions and 9 of 900 triggered
ones against the run made alone (2026-11-23, under the fast-compile flags), so they get 1.5% (another
seed moves them by up to 0.4)."""
MI_TOL = 0.005
"""nats, for MI reads of the same run computed by different programs. The critics train on features
that differ by float rounding, and Adam turns sign flips of near-zero gradient components into
full-size steps, so the reads drift apart epoch by epoch: by at most 6e-4 nats in these tiny runs
(reads of ~1e-3), by up to 0.06 nats with 20 stronger estimator epochs (tests/_scale_worker.py
measures the estimator on identical inputs instead: equal to 1e-5). A read of another seed differs
by as much, so whole-run MI comparisons only guard against gross errors; the exact checks are
:func:`_estimator_checks` and :func:`_bank_checks`."""
EXACT_TOL = 1e-5
"""Identical inputs, different programs (sharded, padded, joined): banks relative to the features'
scale (measured: 0, bitwise equal), and the estimator's first epoch in nats (the reads of the initial
critics, before Adam compounds float rounding; measured below 1e-6). Later epochs drift apart as
whole runs do (see :data:`MI_TOL`)."""


def _close(a: float, b: float, kind: str, tol: float) -> bool:
    return abs(a - b) <= (tol * max(abs(a), abs(b)) if kind == "rel" else tol)


def run_records(run_dir: str) -> tuple[list, dict]:
    """A run's metrics records and mi.json."""
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    with open(os.path.join(run_dir, "mi.json")) as f:
        return records, json.load(f)


def run_differences(a_dir: str, b_dir: str, epochs) -> list[str]:
    """What differs between two runs beyond :data:`METRIC_TOL` / :data:`MI_TOL` at ``epochs``
    (an empty list when they are the same run)."""
    (ra, ma), (rb, mb) = run_records(a_dir), run_records(b_dir)
    by_a, by_b = {r["epoch"]: r for r in ra}, {r["epoch"]: r for r in rb}
    out = []
    for e in epochs:
        if e not in by_a or e not in by_b:
            out.append(f"epoch {e} missing")
            continue
        for k, (kind, tol) in METRIC_TOL.items():
            if not _close(by_a[e][k], by_b[e][k], kind, tol):
                out.append(f"epoch {e} {k}: {by_a[e][k]} vs {by_b[e][k]}")
        for q in ("xt", "ty"):
            for g, per_epoch in ma[q].items():
                if str(e) not in per_epoch:
                    continue
                for read in ("train", "heldout"):
                    x, y = per_epoch[str(e)][read], mb[q][g][str(e)][read]
                    if not abs(x - y) <= MI_TOL:
                        out.append(f"epoch {e} {q} {g} {read}: {x} vs {y}")
    return out


def subprocess_env(**extra) -> dict:
    """The environment of a worker: CPU, this checkout first, the fast-compile flags (plus ``extra``)."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT, **extra}
    env["XLA_FLAGS"] = extra.get("XLA_FLAGS", "")
    fast_cpu_compile(env)  # the suite's own flags (conftest.py): both sides of every comparison use them
    return env


MULTIDEVICE_ENV = "IBJAX_TEST_MULTIDEVICE_OUT"
"""Set by conftest.py when it starts the 8-device worker in the background at session start."""


def _multidevice_command(out: str) -> tuple[list, dict]:
    flags = (f"--xla_force_host_platform_device_count=8 --xla_dump_to={os.path.join(out, 'hlo')} "
             "--xla_dump_hlo_as_text --xla_dump_hlo_module_re=.*(" + "|".join(ESTIMATOR_MODULES) + ").*")
    return [sys.executable, os.path.abspath(__file__), "multidevice-recorded", out], subprocess_env(XLA_FLAGS=flags)


def start_multidevice(out: str) -> subprocess.Popen:
    """Start :func:`multidevice` in the background (it records its status in OUT/worker_status.json)."""
    os.makedirs(out, exist_ok=True)
    cmd, env = _multidevice_command(out)
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def multidevice_recorded(out: str) -> None:
    """:func:`multidevice`, recording its exit status and the end of its stderr for the tests."""
    import traceback

    status = {"returncode": 0, "stderr": ""}
    try:
        multidevice(out)
    except BaseException:  # noqa: BLE001 - every failure goes to the tests' assertion message
        status = {"returncode": 1, "stderr": traceback.format_exc()[-4000:]}
    with open(os.path.join(out, "worker_status.json.tmp"), "w") as f:
        json.dump(status, f)
    os.replace(os.path.join(out, "worker_status.json.tmp"), os.path.join(out, "worker_status.json"))


def multidevice_results(timeout: float = 1500) -> str:
    """The OUT directory of the session's one :func:`multidevice` run, waiting for it to finish.

    test_parallel.py and test_study_population.py both read it, possibly from different pytest-xdist
    workers. conftest.py starts it in the background when the session begins (so no worker sits
    idle waiting for it); a session that did not (e.g. ``pytest -p no:cacheprovider`` from elsewhere)
    runs it here, once, under a lock. Raises AssertionError with the worker's output if it failed.
    """
    import fcntl
    import time

    out = os.environ.get(MULTIDEVICE_ENV)
    if out is None:
        session = os.environ.get("PYTEST_XDIST_TESTRUNUID") or f"pid{os.getpid()}"
        out = os.path.join(tempfile.gettempdir(), f"ibjax-multidevice-{session}")
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not os.path.exists(os.path.join(out, "worker_status.json")):
                cmd, env = _multidevice_command(out)
                subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    status = os.path.join(out, "worker_status.json")
    deadline = time.monotonic() + timeout
    while not os.path.exists(status):
        assert time.monotonic() < deadline, f"the 8-device worker did not finish in {timeout} s ({out})"
        time.sleep(1.0)
    result = json.load(open(status))
    assert result["returncode"] == 0, result["stderr"]
    return out


if __name__ == "__main__":
    {"multidevice": multidevice, "multidevice-recorded": multidevice_recorded, "distributed": distributed,
     "sweep": sweep_share}[sys.argv[1]](sys.argv[2])
