"""How I(X;T) estimators read one trained network's features: each group's held-out read and its
scatter over estimator seeds, estimator by estimator, on the same network.

``python -m experiments.network_estimators [--data cifar10 --data-dir PATH] [--variants default,previous]``

Trains the ``cpu`` preset's noisy network (the small CNN, or ``--model``; BadNets 10%) on the chosen data set, then estimates
I(X;T) of all 13 groups with every named estimator (:data:`VARIANTS`) and ``--seeds`` estimator keys
each (the same bank of noise draws). Prints, per estimator, the mean read, the mean absolute
difference between its first two seeds' reads (the estimator's own scatter, which a held-out
standard error does not contain: critic initialisation and batches), the largest group difference
against the first estimator, and the wall time per estimate; ``--json`` keeps every read. The
question it answers: does an estimator change move a network's curves beyond the estimator's noise
(docs/estimator.md, "On network features")?
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import jax
import numpy as np

from ibjax import mi
from ibjax.fields import override
from ibjax.parallel import make_mesh
from ibjax.runtime import prepare_cpu_process
from ibjax.study import build_population, estimate_network_mi, init_run_state, preset, run_epoch, stack_states

VARIANTS = {
    "default": mi.XT_CONFIG,
    "previous": mi.resolve_config(mi.XT_CONFIG, family="concat", hidden=(128, 128), candidates=()),
    "reference": mi.XT_REFERENCE,
}
"""The I(X;T) estimators compared: ibjax's default (the separable critic and the Gaussian candidate),
the previous default (the concat (128, 128) critic with ibjax's levers, no candidate) and the authors'."""


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="mnist5k", help="data set name (default: %(default)s)")
    p.add_argument("--data-dir", default=None, help="an image-folder archive or directory for --data")
    p.add_argument("--per-class-limit", type=int, default=None, help="the first N training images of every class")
    p.add_argument("--model", default=None, help="network (default: the cpu preset's small_cnn; resnet18 on a GPU)")
    p.add_argument("--train-epochs", type=int, default=8, help="training epochs (default: %(default)s)")
    p.add_argument("--mi-epochs", type=int, default=150, help="critic epochs of every estimator (default: %(default)s)")
    p.add_argument("--variants", default="default,previous", help=f"comma-separated, of {','.join(VARIANTS)}")
    p.add_argument("--seeds", type=int, default=2, help="estimator keys per variant (default: %(default)s)")
    p.add_argument("--json", metavar="PATH", help="also write every read as JSON")
    a = p.parse_args(argv)
    names = a.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown or a.seeds < 1 or a.mi_epochs < 1 or a.train_epochs < 1:
        p.error(f"--variants takes names of {', '.join(VARIANTS)} (got {unknown}); --seeds, --mi-epochs and "
                "--train-epochs must be >= 1")
    prepare_cpu_process()  # before JAX starts its backend
    data = {"data.name": a.data, "data.dir": a.data_dir, "data.per_class_limit": a.per_class_limit,
            "model.name": a.model}
    e = a.train_epochs
    config = override(preset("cpu"), {**{k: v for k, v in data.items() if v is not None}, "train.epochs": e,
                                      "mi.epochs": (e,), "analysis.embedding.epochs": (e,),
                                      "analysis.stealth.epochs": (e,), "mi.quantities": ("xt",)})
    estimators = {n: mi.resolve_config(VARIANTS[n], epochs=a.mi_epochs, read_epochs=min(5, a.mi_epochs))
                  for n in names}
    pop = build_population([config], mesh=make_mesh(), progress=False)  # one run: a population of one
    state = stack_states([init_run_state(pop.members[0])], pop.mesh)
    for _ in range(e):
        state, _ = run_epoch(state, pop)
    reads, out = {}, {"config": {**vars(a)}, "variants": {}}
    for name, est in estimators.items():
        member = dataclasses.replace(pop.members[0], config=override(config, {"mi.xt": est}))
        one = dataclasses.replace(pop, members=(member,))
        runs, seconds = [], []
        for s in range(a.seeds):
            t0 = time.perf_counter()
            res = estimate_network_mi([jax.random.PRNGKey(100 + s)], state.train.variables, one)[0]["xt"]
            seconds.append(time.perf_counter() - t0)
            runs.append({g: r["heldout"] for g, r in res.items()})
        groups = list(runs[0])
        reads[name] = np.array([[r[g] for g in groups] for r in runs])  # [seeds, groups]
        row = {"mean": float(reads[name].mean()), "seconds": seconds, "reads": runs}
        if a.seeds > 1:
            row["seed_abs_diff_mean"] = float(np.mean(np.abs(reads[name][0] - reads[name][1])))
        first = reads[names[0]].mean(0)
        row["vs_first_mean"] = float(np.mean(reads[name].mean(0) - first))
        row["vs_first_max_abs"] = float(np.max(np.abs(reads[name].mean(0) - first)))
        out["variants"][name] = row
        scatter = f", seed |diff| {row['seed_abs_diff_mean']:.3f}" if a.seeds > 1 else ""
        print(f"{name}: mean {row['mean']:.3f}{scatter}, against {names[0]} {row['vs_first_mean']:+.3f} "
              f"(largest {row['vs_first_max_abs']:.3f}), {np.median(seconds):.1f} s per estimate", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
