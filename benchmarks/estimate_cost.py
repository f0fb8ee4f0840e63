"""The whole estimate's cost, split into its fixed part and its part per epoch, estimator by estimator.

A 13-group I(X;T) estimate (:func:`ibjax.mi.estimate_mi_groups`; a = T 512-d, b = X 3072-d, the
group sizes of a CIFAR-10 study at 10% BadNets divided by ``--size-div``, B and K of the I(X;T)
estimator divided by ``--batch-div``, random features as ``benchmarks.estimator_throughput`` draws
them) timed at two lengths, compiled first, median of ``--repeats`` calls each: per epoch =
(t(long) - t(short)) / (long - short) epochs, fixed = t(short) - short x per epoch (fitting the input
maps, the held-out read, shuffles: what a run pays once). All variants run side by side in one
process, in the order given, on the same arrays:

- ``reference``: the authors' estimator (:data:`ibjax.mi.XT_REFERENCE`).
- ``levers-each-batch``: the reference's sizes with held-out and validation splits, the best
  critic and the rank map of every fitted value applied to every batch: ibjax's estimator before
  rows were mapped once per estimate.
- ``levers``: the same levers as ibjax maps them now (rows mapped once, 256 knots).
- ``default``: :class:`ibjax.mi.MIConfig` itself, the function's defaults (:data:`ibjax.mi.XT_CONFIG`).

    python -m benchmarks.estimate_cost                   # CPU: groups / 16, B and K / 4
    python -m benchmarks.estimate_cost --size-div 4      # larger groups (minutes per variant)
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any, Optional, Sequence

import numpy as np

from benchmarks import _common as C
from benchmarks import estimator_throughput as ET

MODULE = "benchmarks.estimate_cost"
VARIANTS = ("reference", "levers-each-batch", "levers", "default")


@dataclasses.dataclass(frozen=True)
class EachBatch:
    """A sample function the estimator does not know how to premap (it is not
    :func:`ibjax.mi.gather_pairs`): its pairs go through the input maps batch by batch."""

    inner: Any

    def __call__(self, shared, group_data, positions, key):
        return self.inner(shared, group_data, positions, key)


def variant_config(name: str, args):
    """(MIConfig at the benchmark's sizes, whether batches are mapped one by one)."""
    from ibjax import mi

    levers = dict(heldout_fraction=0.2, validation_fraction=0.2, select="best", preprocess="rank", candidates=())
    base, each = {
        "reference": (mi.XT_REFERENCE, False),
        "levers-each-batch": (mi.resolve_config(mi.XT_REFERENCE, **levers, rank_knots=0), True),
        "levers": (mi.resolve_config(mi.XT_REFERENCE, **levers), False),
        "default": (mi.MIConfig(), False),
    }[name]
    sizes = dict(batch_size=max(2, base.protocol.batch_size // args.batch_div),
                 negatives=max(1, base.protocol.negatives // args.batch_div))
    return [mi.resolve_config(base, **sizes, epochs=e, read_epochs=min(base.protocol.read_epochs, e))
            for e in args.epochs], each


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {', '.join(VARIANTS)}")
    p.add_argument("--epochs", default="1,8", help="the two lengths, short,long")
    p.add_argument("--size-div", type=int, default=16, help="divide the CIFAR-10 group sizes by this")
    p.add_argument("--batch-div", type=int, default=4, help="divide B and K by this")
    p.add_argument("--groups", type=int, default=13, help="groups G (at most 13)")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per length, median reported")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    a = p.parse_args(argv)
    a.variants = C.parse_names(p, a.variants, VARIANTS)
    try:
        a.epochs = [int(e) for e in a.epochs.split(",")]
    except ValueError:
        p.error(f"--epochs takes two integers, short,long; got {a.epochs!r}")
    if len(a.epochs) != 2 or not 1 <= a.epochs[0] < a.epochs[1]:
        p.error(f"--epochs takes two lengths 1 <= short < long, got {a.epochs}")
    if not 1 <= a.groups <= len(ET.REALISTIC_SIZES):
        p.error(f"--groups must lie in 1..{len(ET.REALISTIC_SIZES)}")
    return a


def bench_variant(name: str, args, arrays: dict) -> dict:
    import jax

    from ibjax import mi

    configs, each = variant_config(name, args)
    sizes = [max(s // args.size_div, 4 * configs[0].protocol.batch_size) for s in ET.REALISTIC_SIZES[:args.groups]]
    m = max(sizes)
    if m not in arrays:
        arrays[m] = ET._features(args.seed + 1, args.groups, m, "xt")
    a, b = arrays[m]
    mask = np.arange(m)[None, :] < np.asarray(sizes)[:, None]
    key = jax.random.PRNGKey(args.seed + 2)
    seconds, finite = [], True
    for cfg in configs:
        if each:
            def run(cfg=cfg):
                return mi.estimate_mi_sampled(key, EachBatch(mi.gather_pairs), None, (a, b), mask, a.shape[-1],
                                              b.shape[-1], config=cfg)
        else:
            def run(cfg=cfg):
                return mi.estimate_mi_groups(key, a, b, mask, config=cfg)
        res = jax.block_until_ready(run())  # compile and warm up
        finite &= bool(np.all(np.isfinite(np.asarray(res.train))))
        seconds.append(C.median(C.time_repeats(run, args.repeats, jax.block_until_ready)))
    (e0, e1), (t0, t1) = args.epochs, seconds
    per_epoch = (t1 - t0) / (e1 - e0)
    cfg = configs[0]
    return {"variant": name, "candidates": len(cfg.candidates), "preprocess": cfg.critic.preprocess,
            "mapped": "each batch" if each else ("once" if cfg.critic.preprocess != "none" else "-"),
            "short_s": t0, "long_s": t1, "per_epoch_s": per_epoch, "fixed_s": t0 - e0 * per_epoch,
            "B": cfg.protocol.batch_size, "K": cfg.protocol.negatives, "group_sizes": sizes, "finite": finite}


def main(argv: Optional[Sequence[str]] = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    arrays: dict = {}
    rows = [bench_variant(v, args, arrays) for v in args.variants]
    base = rows[0]
    for r in rows:
        r["per_epoch_ratio"] = r["per_epoch_s"] / base["per_epoch_s"] if base["per_epoch_s"] > 0 else None
        r["fixed_ratio"] = r["fixed_s"] / base["fixed_s"] if base["fixed_s"] > 0 else None
    cols = [("variant", "variant", 0), ("candidates", "candidates", 0), ("input map", "preprocess", 0),
            ("mapped", "mapped", 0), (f"{args.epochs[0]} epoch(s) s", "short_s", 3), (f"{args.epochs[1]} epochs s", "long_s", 3),
            ("fixed s", "fixed_s", 3), ("s per epoch", "per_epoch_s", 3),
            (f"fixed / {base['variant']}", "fixed_ratio", 2), (f"per epoch / {base['variant']}", "per_epoch_ratio", 2)]
    notes = [f"13-group I(X;T) estimate at group sizes {rows[0]['group_sizes']} (CIFAR-10's / {args.size_div}), "
             f"B and K / {args.batch_div}; medians of {args.repeats} compiled calls per length",
             "fixed: what the estimate costs beyond its epochs (input maps fitted and applied once, the held-out "
             "read, shuffles); candidates that share the input maps fit and apply them once, and each pays its own "
             "fit or epochs and reads"]
    notes += [f"{r['variant']}: non-finite estimate" for r in rows if not r["finite"]]
    config = {"variants": args.variants, "epochs": args.epochs, "size_div": args.size_div, "batch_div": args.batch_div,
              "groups": args.groups, "repeats": args.repeats, "seed": args.seed}
    return C.report(title="Whole-estimate cost: fixed and per epoch", module=MODULE, argv=argv, hw=C.hardware(),
                    config=config, columns=cols, rows=rows, notes=notes, json_path=args.json)


if __name__ == "__main__":
    main()
