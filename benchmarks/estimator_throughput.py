"""MI critic training throughput (group-steps/s): ibjax's batched estimator vs a reference-style loop.

For I(X;T) (a = T 512-d, b = X 3072-d, B = 128, K = 512) and I(T;Y_pred) (a = Y_pred 10-d,
b = T 512-d, B = 512, K = 256), concat critic with hidden (128, 128), AdamW, G = 1, 7, 13 groups:

- ``ibjax mi.update``: the jitted all-groups step :func:`ibjax.mi.update`, one call per step, on
  random cached features already on the device (G groups per call).
- ``ibjax estimate_mi_groups``: a whole :func:`ibjax.mi.estimate_mi_groups` call with a fixed number of
  epochs on random feature arrays of realistic group sizes (CIFAR-10, 10% BadNets: the target class
  9,500 = 5,000 backdoor + 4,500 clean, a 4,500 size-matched sample, and 4,500 per clean class),
  compiled first, then timed, for each ``--group-batch`` setting. Vmapped groups are padded to the
  largest, so a smaller group's scan runs steps it does not use; groups in a loop skip them: the
  table shows useful group-steps/s (steps the protocol asks for) and computed group-steps/s (what
  the scan evaluates).
- ``PyTorch reference-style``: one group at a time, as the reference works: every step runs the noisy
  CNN forward (under no_grad) on a batch of images to produce T (and Y_pred), evaluates the concat
  critic on all B x (K + 1) concatenated pairs, and steps AdamW (with a GradScaler under fp16 autocast
  on CUDA), reading the loss back with ``.item()`` every step. Its G-group aggregate is G sequential
  runs: the same steps/s.

Plus the wall time of a whole 13-group I(X;T) estimate of 7,000 steps from cached features (measured
on an accelerator unless --skip-full; extrapolated from the measured rate with --quick or on CPU).

    python -m benchmarks.estimator_throughput                  # H100 sizes
    python -m benchmarks.estimator_throughput --quick          # CPU check (B and K / 4, groups / 16)
    python -m benchmarks.estimator_throughput --quick --group-batch all,1   # vmapped vs looped groups
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Optional, Sequence

import numpy as np

from benchmarks import _common as C

MODULE = "benchmarks.estimator_throughput"

# Group sizes of the study's CIFAR-10 run at 10% BadNets, target 0, in the order ibjax's poison plan
# lists them: target, target_backdoor, target_clean, target_sample, then the 9 clean classes.
REALISTIC_SIZES = (9500, 5000, 4500, 4500) + (4500,) * 9

TARGET_XT_GROUP_STEPS_H100 = 9_200  # I(X;T) group-steps/s at G = 13 (target)
TARGET_FULL_ESTIMATE_S_H100 = 10.0  # whole 13-group I(X;T) estimate of 7,000 steps (target)
REPORTED_REFERENCE_H100 = {"xt": 115.0, "ty": 61.0}  # reference-style steps/s (reported, not measured here)
FULL_GROUPS, FULL_STEPS = 13, 7000

QUANTITIES = {
    "xt": {"label": "I(X;T)", "da": 512, "db": 3072, "a": "T", "b": "X"},
    "ty": {"label": "I(T;Y)", "da": 10, "db": 512, "a": "Y_pred", "b": "T"},
}


def _base_config(q: str, which: str = "default"):
    from ibjax import mi

    configs = {"default": (mi.XT_CONFIG, mi.TY_CONFIG), "reference": (mi.XT_REFERENCE, mi.TY_REFERENCE)}[which]
    return mi.resolve_config(configs[0] if q == "xt" else configs[1], critic="concat", hidden=(128, 128))


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="small CPU-sized run: B and K divided by 4, group sizes by 16, few steps")
    p.add_argument("--groups", default="1,7,13", help="numbers of groups G, comma-separated (at most 13)")
    p.add_argument("--quantities", default="xt,ty", help="xt (I(X;T)) and/or ty (I(T;Y)), comma-separated")
    p.add_argument("--epochs", type=int, default=None, help="estimator epochs per timed estimate_mi_groups call "
                   "(default 10; 1 with --quick)")
    p.add_argument("--steps", type=int, default=None, help="timed mi.update / baseline steps per repeat "
                   "(default 50; 3 with --quick)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats, median reported (default 5; 3 --quick)")
    p.add_argument("--batch-div", type=int, default=None, help="divide B and K by this (default 1; 4 with --quick)")
    p.add_argument("--size-div", type=int, default=None, help="divide the group sizes by this (default 1; 16 --quick)")
    p.add_argument("--cnn", default="resnet18", choices=("resnet18", "small_cnn"),
                   help="the CNN the baseline runs every step (default resnet18, as the reference)")
    p.add_argument("--skip-full", action="store_true", help="extrapolate the whole 13-group estimate, do not run it")
    p.add_argument("--measure-full", action="store_true",
                   help="run the whole 13-group estimate even on a CPU or with --quick (at the sizes in force)")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch baseline")
    p.add_argument("--mi-config", default="default", choices=("default", "reference"),
                   help="estimator settings: ibjax's defaults (XT_CONFIG / TY_CONFIG: held-out and validation "
                   "splits, best critic, rank-Gaussianised inputs) or the authors' (XT_REFERENCE / TY_REFERENCE)")
    p.add_argument("--group-batch", default="auto",
                   help="estimate_mi_groups' group_batch settings to time side by side, comma-separated: auto, all "
                   "(vmap over the groups) or k (a loop, k groups at a time); e.g. all,1")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    a = p.parse_args(argv)
    settings = [t.strip() for t in a.group_batch.split(",") if t.strip()]
    if not settings or not all(v in ("auto", "all") or (v.isdigit() and int(v) >= 1) for v in settings):
        p.error("--group-batch takes auto, all or positive integers, comma-separated")
    a.group_batch = [v if v in ("auto", "all") else int(v) for v in settings]
    a.groups = [int(g) for g in a.groups.split(",") if g.strip()]
    if not a.groups or min(a.groups) < 1 or max(a.groups) > len(REALISTIC_SIZES):
        p.error(f"--groups must lie in 1..{len(REALISTIC_SIZES)}")
    a.quantities = [q.strip() for q in a.quantities.split(",") if q.strip()]
    if not a.quantities or any(q not in QUANTITIES for q in a.quantities):
        p.error("--quantities takes xt and/or ty")
    a.epochs = a.epochs or (1 if a.quick else 10)
    a.steps = a.steps or (3 if a.quick else 50)
    a.repeats = a.repeats or (3 if a.quick else 5)
    a.batch_div = a.batch_div or (4 if a.quick else 1)
    a.size_div = a.size_div or (16 if a.quick else 1)
    return a


def _config(args, q: str, epochs: Optional[int] = None):
    from ibjax import mi

    base = _base_config(q, args.mi_config)
    return mi.resolve_config(
        base,
        batch_size=max(2, base.protocol.batch_size // args.batch_div),
        negatives=max(1, base.protocol.negatives // args.batch_div),
        epochs=epochs or args.epochs,
        read_epochs=min(base.protocol.read_epochs, epochs or args.epochs),
    )


def _group_sizes(args, g: int, cfg) -> list[int]:
    # Every group keeps at least one training batch and two validation / held-out samples after the splits.
    keep = (1.0 - cfg.protocol.heldout_fraction) * (1.0 - cfg.protocol.validation_fraction)
    floor = int(math.ceil((cfg.protocol.batch_size + 2) / keep)) + 4
    return [max(floor, s // args.size_div) for s in REALISTIC_SIZES[:g]]


def _schedule(sizes: Sequence[int], cfg) -> tuple[int, list[int]]:
    """(scan steps per epoch, useful steps per epoch of each group), as ibjax.mi schedules them."""
    from ibjax import mi

    n_tr = mi.split_sizes(np.asarray(sizes), cfg)[2]
    useful = [int(u) for u in mi.batches_per_epoch(n_tr, cfg.protocol.batch_size, cfg.optimiser.batch_fraction)]
    return max(useful), useful


def _features(seed: int, g: int, n: int, q: str):
    """Random features on the device (never all zeros): a ~ N(0, 1) (T) or N(0, 9) (Y_pred logits);
    b ~ U[0, 1] (X) or N(0, 1) (T). Drawn with NumPy: nothing to compile."""
    import jax
    import jax.numpy as jnp

    spec = QUANTITIES[q]
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((g, n, spec["da"]), np.float32) * np.float32(1.0 if q == "xt" else 3.0)
    b = rng.random((g, n, spec["db"]), np.float32) if q == "xt" else rng.standard_normal((g, n, spec["db"]), np.float32)
    return jax.block_until_ready((jnp.asarray(a), jnp.asarray(b)))


def bench_update(args, q: str, g: int) -> dict:
    import jax

    from ibjax import mi

    spec, cfg = QUANTITIES[q], _config(args, q)
    key = jax.random.PRNGKey(args.seed)
    state = mi.init(key, g, spec["da"], spec["db"], cfg)  # jitted inside: untimed set-up
    pool = [_features(args.seed + 10 + i, g, cfg.protocol.batch_size, q) for i in range(4)]
    keys = [jax.random.fold_in(key, 1000 + s) for s in range(args.steps)]
    holder = {"state": state}

    def run():
        st, est = holder["state"], None
        for s in range(args.steps):
            a, b = pool[s % len(pool)]
            st, est = mi.update(st, a, b, keys[s], config=cfg)
        holder["state"] = st
        return st, est

    jax.block_until_ready(run())  # compile + warm-up
    compiled = C.jit_cache_size(getattr(mi.training, "_update", None))
    times = C.time_repeats(run, args.repeats, jax.block_until_ready)
    recompiled = C.jit_cache_size(getattr(mi.training, "_update", None)) != compiled
    t = C.median(times)
    rate = g * args.steps / t
    return {
        "quantity": spec["label"], "implementation": "ibjax mi.update (per-step dispatch)", "groups": g,
        "group_steps_per_s": rate, "computed_group_steps_per_s": rate, "seconds": t,
        "B": cfg.protocol.batch_size, "K": cfg.protocol.negatives, "recompiled_while_timed": recompiled,
    }


def bench_estimate(args, q: str, g: int, group_batch="auto") -> tuple[dict, float]:
    """Times estimate_mi_groups; returns the row and the computed group-steps/s.

    With the groups in a loop (``group_batch`` an int, or "auto" on a CPU) a smaller group skips the
    steps it has no batch for, so the computed steps are the useful ones.
    """
    import jax

    from ibjax import mi

    spec, cfg = QUANTITIES[q], _config(args, q)
    sizes = _group_sizes(args, g, cfg)
    m = max(sizes)
    key = jax.random.PRNGKey(args.seed + 1)
    a, b = _features(args.seed + 1, g, m, q)
    mask = np.arange(m)[None, :] < np.asarray(sizes)[:, None]
    scan_steps, useful = _schedule(sizes, cfg)

    def run():
        return mi.estimate_mi_groups(key, a, b, mask, config=cfg, group_batch=group_batch)

    resolved = mi.estimator.resolve_group_batch(group_batch, g) or "all"
    looped = resolved != "all"
    res = run()
    jax.block_until_ready(res)  # compile + warm-up
    compiled = C.jit_cache_size(getattr(mi.estimator, "_run_epochs", None))
    times = C.time_repeats(run, args.repeats, jax.block_until_ready)
    recompiled = C.jit_cache_size(getattr(mi.estimator, "_run_epochs", None)) != compiled
    t = C.median(times)
    finite = bool(np.all(np.isfinite(np.asarray(res.train))))
    computed = (sum(useful) if looped else g * scan_steps) * cfg.protocol.epochs / t
    row = {
        "quantity": spec["label"], "groups": g, "group_batch": resolved,
        "implementation": f"ibjax estimate_mi_groups ({cfg.protocol.epochs} epochs, group_batch={resolved})",
        "group_steps_per_s": sum(useful) * cfg.protocol.epochs / t, "computed_group_steps_per_s": computed, "seconds": t,
        "B": cfg.protocol.batch_size, "K": cfg.protocol.negatives, "group_sizes": sizes, "scan_steps_per_epoch": scan_steps,
        "useful_steps_per_epoch": useful, "finite": finite, "recompiled_while_timed": recompiled, "looped": looped,
    }
    return row, computed


def bench_full(args, quick_rate: Optional[tuple[float, bool]]) -> dict:
    """Wall time of a whole 13-group I(X;T) estimate of 7,000 steps (measured, or extrapolated)."""
    import time

    import jax

    from ibjax import mi

    cfg0 = _config(args, "xt")
    sizes = _group_sizes(args, FULL_GROUPS, cfg0)
    scan_steps, useful = _schedule(sizes, cfg0)
    epochs = int(math.ceil(FULL_STEPS / scan_steps))
    total_steps = epochs * scan_steps
    row = {"groups": FULL_GROUPS, "epochs": epochs, "scan_steps": total_steps,
           "computed_group_steps": FULL_GROUPS * total_steps, "useful_group_steps": sum(useful) * epochs,
           "group_sizes": sizes, "target_s": TARGET_FULL_ESTIMATE_S_H100}
    measure = args.measure_full or not (args.quick or args.skip_full or jax.default_backend() == "cpu")
    if not measure:
        steps = row["useful_group_steps" if quick_rate and quick_rate[1] else "computed_group_steps"]
        row.update(kind="extrapolated", seconds=None if not quick_rate else steps / quick_rate[0],
                   note="extrapolated: computed group-steps (the useful ones when the groups run in a loop) / "
                   "the measured G=13 computed I(X;T) rate"
                   + (" at --quick sizes" if args.quick else ""))
        return row
    cfg = _config(args, "xt", epochs=epochs)
    key = jax.random.PRNGKey(args.seed + 2)
    a, b = _features(args.seed + 2, FULL_GROUPS, max(sizes), "xt")
    mask = np.arange(max(sizes))[None, :] < np.asarray(sizes)[:, None]
    t0 = time.perf_counter()
    res = mi.estimate_mi_groups(key, a, b, mask, config=cfg)
    jax.block_until_ready(res)
    first = time.perf_counter() - t0
    runs = max(1, min(args.repeats, 3))
    times = C.time_repeats(lambda: mi.estimate_mi_groups(key, a, b, mask, config=cfg), runs, jax.block_until_ready)
    row.update(kind="measured", seconds=C.median(times), seconds_with_compile=first, all_seconds=times,
               note=f"measured: median of {runs} compiled calls; the first call, compile included, is "
               "'wall s incl. compile'")
    return row


def bench_torch(args, q: str) -> dict:
    """Reference-style loop, one group: CNN forward every step, concat critic on all B x (K+1) pairs."""
    torch = C.require_torch()
    from benchmarks import torch_models as TM

    dev = C.torch_device(torch)
    cuda = dev.type == "cuda"
    torch.manual_seed(args.seed)
    spec, cfg = QUANTITIES[q], _config(args, q)
    bsz, k = cfg.protocol.batch_size, cfg.protocol.negatives
    n = max(bsz, REALISTIC_SIZES[-1] // args.size_div)
    from ibjax.models import ModelConfig, make_model

    widths = tuple(getattr(make_model(ModelConfig(name=args.cnn)), "widths", ())) or None
    if args.cnn == "small_cnn":  # T must be 512-d as ResNet-18's, so the critic does the same work
        widths = (*widths[:-1], 512)
    cnn = TM.make_cnn(args.cnn, 10, 0.4, 0.4, widths=widths).to(dev).eval()  # noise stays on in eval
    images = torch.rand(n, 3, 32, 32, device=dev)
    critic = TM.ConcatCritic(spec["da"], spec["db"], cfg.critic.hidden).to(dev)
    opt = torch.optim.AdamW(critic.parameters(), lr=cfg.optimiser.lr, weight_decay=cfg.optimiser.weight_decay)
    scaler = torch.amp.GradScaler("cuda") if cuda else None
    autocast = (lambda: torch.autocast("cuda", dtype=torch.float16)) if cuda else None

    def step():
        x = images[torch.randint(0, n, (bsz,), device=dev)]
        with torch.no_grad():
            if cuda:
                with autocast():
                    logits, t = cnn(x)
            else:
                logits, t = cnn(x)
        a, b = (t, x.flatten(1)) if q == "xt" else (logits, t)
        opt.zero_grad(set_to_none=True)
        if cuda:
            with autocast():
                est = TM.infonce_reference(critic, a, b, k)
            scaler.scale(-est).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(critic.parameters(), cfg.optimiser.grad_clip)
            scaler.step(opt)
            scaler.update()
        else:
            est = TM.infonce_reference(critic, a.float(), b.float(), k)
            (-est).backward()
            torch.nn.utils.clip_grad_norm_(critic.parameters(), cfg.optimiser.grad_clip)
            opt.step()
        return est.item()  # read back every step, as the reference logs it

    def run():
        return [step() for _ in range(args.steps)]

    ests = run()  # warm-up
    C.torch_sync(torch, dev)
    times = C.time_repeats(run, args.repeats, lambda _: C.torch_sync(torch, dev))
    t = C.median(times)
    return {
        "quantity": spec["label"], "implementation": f"PyTorch reference-style ({args.cnn} fwd/step, 1 group)",
        "groups": 1, "group_steps_per_s": args.steps / t, "computed_group_steps_per_s": args.steps / t,
        "seconds": t, "B": bsz, "K": k, "amp": "fp16 autocast + GradScaler" if cuda else "none (CPU)",
        "finite": bool(np.all(np.isfinite(ests))),
    }


def main(argv: Optional[Sequence[str]] = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    torch = None if args.no_torch else C.require_torch()
    hw = C.hardware(torch)
    rows, notes, xt_rate13 = [], [], {}
    for q in args.quantities:
        q_rows = []
        for g in args.groups:
            q_rows.append(bench_update(args, q, g))
            for group_batch in args.group_batch:
                row, computed = bench_estimate(args, q, g, group_batch)
                q_rows.append(row)
                if q == "xt" and g not in xt_rate13:  # the first --group-batch setting drives the extrapolation
                    xt_rate13[g] = (computed, row["looped"])
                if not row["finite"]:
                    notes.append(f"{row['quantity']} G={g}: non-finite estimate")
        for r in q_rows:
            if r.get("recompiled_while_timed"):
                notes.append(f"{r['quantity']} G={r['groups']} {r['implementation']}: recompiled during the timed repeats")
        if torch is not None:
            base = bench_torch(args, q)
            for r in q_rows:
                r["ratio_vs_reference_style"] = r["group_steps_per_s"] / base["group_steps_per_s"]
            base["ratio_vs_reference_style"] = 1.0
            q_rows.append(base)
            base["h100_reference"] = f"{REPORTED_REFERENCE_H100[q]:g} steps/s (reported, not measured here)"
        for r in q_rows:
            if q == "xt" and r["groups"] == 13 and r["implementation"].startswith("ibjax"):
                r["h100_reference"] = f">= {TARGET_XT_GROUP_STEPS_H100:,} (target, G=13)"
            r.setdefault("h100_reference", "")
        rows += q_rows

    full = None
    if "xt" in args.quantities:
        rate = xt_rate13.get(FULL_GROUPS) or (max(xt_rate13.items())[1] if xt_rate13 else None)
        full = bench_full(args, rate)
        if full["kind"] == "extrapolated" and FULL_GROUPS not in xt_rate13:
            full["note"] += f" (G=13 not run: used G={max(xt_rate13)})"

    notes.insert(0, (
        f"H100 context: targets at G = 13: >= {TARGET_XT_GROUP_STEPS_H100:,} I(X;T) group-steps/s and a whole "
        f"13-group estimate (7,000 steps) in <= {TARGET_FULL_ESTIMATE_S_H100:g} s. Reference-style loop: "
        f"{REPORTED_REFERENCE_H100['xt']:g} I(X;T) and {REPORTED_REFERENCE_H100['ty']:g} I(T;Y) steps/s in one "
        "process (reported, not measured here)."
    ))
    notes.append("group-steps/s: useful critic steps (each group's own schedule) per second summed over groups; "
                 "computed: G x scan steps when the groups are vmapped (padded groups run masked steps), the useful "
                 "steps when they run in a loop (group_batch k < G skips them); the ratio uses useful")
    notes.append("estimate_mi_groups wall time includes its held-out read (heldout_passes forward passes over the "
                 "held-out split), the validation read every epoch (ibjax's default), fitting the input maps and "
                 "per-epoch shuffles, none counted as steps; the per-run parts' share shrinks with --epochs")
    notes.append("baseline: one group, its G-group aggregate is G sequential runs (the same rate); ibjax reads from "
                 "cached features, the baseline re-runs the CNN every step (as the reference does)")
    if args.quick or args.batch_div != 1 or args.size_div != 1:
        notes.append(f"reduced sizes (B, K / {args.batch_div}; group sizes / {args.size_div}): a CPU check only, "
                     "not comparable with the H100 numbers")
    if args.cnn != "resnet18":
        notes.append(f"baseline CNN is {args.cnn} (last width 512 so T is 512-d), not the reference's ResNet-18")
    cols = [
        ("quantity", "quantity", 0),
        ("implementation", "implementation", 0),
        ("G", "groups", 0),
        ("B", "B", 0),
        ("K", "K", 0),
        ("group-steps/s (median)", "group_steps_per_s", 0),
        ("computed group-steps/s", "computed_group_steps_per_s", 0),
        ("ratio vs reference-style", "ratio_vs_reference_style", 2),
        ("H100 context", "h100_reference", 0),
    ]
    extra_md = ""
    if full is not None:
        extra_md = "\n".join([
            "### Whole 13-group I(X;T) estimate, 7,000 steps, cached features",
            "",
            C.markdown_table([
                ("kind", "kind", 0), ("epochs", "epochs", 0), ("scan steps", "scan_steps", 0),
                ("computed group-steps", "computed_group_steps", 0), ("wall s", "seconds", 2),
                ("wall s incl. compile", "seconds_with_compile", 2), ("H100 target s", "target_s", 0),
            ], [full]),
            "",
            f"- {full['note']}",
        ])
    config = {
        "groups": args.groups, "quantities": args.quantities, "epochs": args.epochs, "steps": args.steps,
        "repeats": args.repeats, "batch_div": args.batch_div, "size_div": args.size_div, "cnn": args.cnn,
        "critic": "concat (128, 128)", "optimizer": "AdamW", "quick": args.quick, "torch": torch is not None,
        "mi_config": args.mi_config,
    }
    return C.report(title="MI estimator throughput (group-steps/s)", module=MODULE, argv=argv, hw=hw, config=config,
                    columns=cols, rows=rows, notes=notes, json_path=args.json,
                    extra={"full_estimate": full}, extra_md=extra_md)


if __name__ == "__main__":
    main()
