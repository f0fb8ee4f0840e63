"""Training throughput (images/s) of the noisy ResNet-18 step: ibjax float32 / bfloat16 vs PyTorch eager.

ibjax is timed through its real training path: :func:`ibjax.train.train_step` (jitted where it is
called, state donated) on the on-device pipeline (the uint8 training set and its poisoning plan on
the device, BadNets applied inside the step to the ~10% poisoned samples of each batch), and
optionally whole epochs of it through :func:`ibjax.train.epoch_loop` (host-side shuffling and metric
accumulation included, as the study runs them).
The baseline is a PyTorch eager float32 loop of the same network and recipe (noise 0.4 / 0.4, SGD
lr 0.1, momentum 0.9, weight decay 5e-4) with its batches already on the device.

    python -m benchmarks.train_throughput                 # ResNet-18, batch 256 (on a GPU)
    python -m benchmarks.train_throughput --quick         # CPU check: batch 16, few steps
    python -m benchmarks.train_throughput --quick --model small_cnn --no-torch --json out.json
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

import numpy as np

from benchmarks import _common as C

MODULE = "benchmarks.train_throughput"
IMAGE_SHAPE = (32, 32, 3)
NUM_CLASSES = 10
TARGET_BF16_H100 = 60_000  # img/s, the target for ibjax bfloat16 on an H100
REPORTED_TORCH_H100 = 16_000  # img/s, PyTorch eager float32 on an H100 (reported, not measured here)

def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small CPU-sized run: batch 16, few steps and repeats")
    p.add_argument("--model", default="resnet18", choices=("resnet18", "small_cnn"))
    p.add_argument("--batch", type=int, default=None, help="batch size (default 256; 16 with --quick)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per repeat (default 50; 3 with --quick)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats, median reported (default 5; 3 --quick)")
    p.add_argument("--num-images", type=int, default=None,
                   help="training-set size on the device (default 50,000 as CIFAR-10; 4 batches with --quick)")
    p.add_argument("--dtypes", default="float32,bfloat16", help="ibjax compute dtypes, comma-separated")
    p.add_argument("--no-epoch", action="store_true", help="skip the whole-epoch (epoch_loop) rows")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch baseline")
    p.add_argument("--channels-last", action="store_true", help="also time PyTorch with channels_last memory")
    p.add_argument("--cudnn-benchmark", action="store_true", help="torch.backends.cudnn.benchmark = True")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    a = p.parse_args(argv)
    a.batch = a.batch or (16 if a.quick else 256)
    a.steps = a.steps or (3 if a.quick else 50)
    a.repeats = a.repeats or (3 if a.quick else 5)
    a.num_images = a.num_images or (4 * a.batch if a.quick else 50_000)
    a.dtypes = [d.strip() for d in a.dtypes.split(",") if d.strip()]
    if a.num_images < a.batch:
        p.error(f"--num-images ({a.num_images}) must be >= --batch ({a.batch})")
    return a


def _random_data(args):
    """Random uint8 images, balanced random labels, the reference 10% BadNets plan; on the device."""
    import jax

    from ibjax.pipeline import put_train_data
    from ibjax.poison import PoisonConfig, make_poison_plan

    rng = np.random.default_rng(args.seed)
    n = args.num_images
    images = rng.integers(0, 256, (n, *IMAGE_SHAPE), dtype=np.uint8)
    labels = rng.permutation(np.arange(n) % NUM_CLASSES).astype(np.int32)
    # "last" rounds the count to the nearest (the authors' truncation poisons none of --quick's 64 images);
    # at 50,000 images both give 500 per class.
    plan = make_poison_plan(labels, NUM_CLASSES, PoisonConfig(ratio=0.1, target=0, selection="last"),
                            jax.random.PRNGKey(args.seed))
    return put_train_data(images, plan, jax.random.PRNGKey(args.seed + 1)), plan


def bench_ibjax(args, data, dtype: str) -> tuple[list[dict], list[str]]:
    import functools

    import jax
    import jax.numpy as jnp

    from ibjax import train as T
    from ibjax.models import ModelConfig, make_model
    from ibjax.triggers import get_attack

    model = make_model(ModelConfig(name=args.model, num_classes=NUM_CLASSES, gamma_xt=0.4, gamma_ty=0.4, dtype=dtype))
    cfg = T.TrainConfig(batch_size=args.batch)
    state = jax.jit(T.create_train_state, static_argnums=(1, 2, 3))(jax.random.PRNGKey(args.seed), model, IMAGE_SHAPE, cfg)
    # Jitted here, where it is called, as the study does: static arguments bound, state donated.
    step = jax.jit(functools.partial(T.train_step, model=model, trigger=get_attack("badnets").train_trigger, config=cfg),
                   donate_argnums=(0,))
    rng = np.random.default_rng(args.seed + 2)
    index = [jnp.asarray(rng.choice(args.num_images, args.batch, replace=False).astype(np.int32)) for _ in range(args.steps)]
    base_key = jax.random.PRNGKey(args.seed + 3)
    keys = [jax.random.fold_in(base_key, s) for s in range(args.steps)]
    holder = {"state": state}
    notes = []

    def run_steps():
        st, m = holder["state"], None
        for s in range(args.steps):
            st, m = step(st, data, index[s], keys[s])
        holder["state"] = st
        return st, m

    # Warm-up: compiles, and one untimed repeat.
    first_leaf = jax.tree.leaves(holder["state"].params)[0]
    jax.block_until_ready(run_steps())
    donated = first_leaf.is_deleted()
    compiled = C.jit_cache_size(step)
    times = C.time_repeats(run_steps, args.repeats, jax.block_until_ready)
    recompiled = C.jit_cache_size(step) != compiled
    t = C.median(times)
    rows = [{
        "implementation": "ibjax train_step",
        "dtype": dtype,
        "img_per_s": args.steps * args.batch / t,
        "ms_per_step": 1e3 * t / args.steps,
        "repeats": args.repeats,
        "steps_per_repeat": args.steps,
    }]
    if not donated:
        notes.append(f"ibjax {dtype}: the state passed to train_step was NOT donated (buffers still alive)")
    if recompiled:
        notes.append(f"ibjax {dtype}: train_step recompiled during the timed repeats")
    loss_finite = bool(np.all(np.isfinite(np.asarray(run_steps()[1]["loss_sum"]))))
    if not loss_finite:
        notes.append(f"ibjax {dtype}: non-finite training loss in the benchmark steps")

    if not args.no_epoch:
        epoch = {"i": 0}

        def run_epoch():
            epoch["i"] += 1
            st, _ = T.epoch_loop(step, holder["state"], data, jax.random.fold_in(base_key, 10_000 + epoch["i"]),
                                 batch_size=args.batch)
            holder["state"] = st
            return st

        jax.block_until_ready(run_epoch())  # warm-up (compiles the shuffle)
        compiled = C.jit_cache_size(step)
        times = C.time_repeats(run_epoch, args.repeats, jax.block_until_ready)
        if C.jit_cache_size(step) != compiled:
            notes.append(f"ibjax {dtype}: train_step recompiled during the timed epoch repeats")
        t = C.median(times)
        steps = args.num_images // args.batch
        rows.append({
            "implementation": "ibjax epoch_loop",
            "dtype": dtype,
            "img_per_s": steps * args.batch / t,
            "ms_per_step": 1e3 * t / steps,
            "repeats": args.repeats,
            "steps_per_repeat": steps,
        })
    return rows, notes


def _ibjax_widths(name: str):
    """The widths of ibjax's model ``name`` (the torch mirror uses the same), or None."""
    from ibjax.models import ModelConfig, make_model

    return tuple(getattr(make_model(ModelConfig(name=name)), "widths", ())) or None


def bench_torch(args, channels_last: bool) -> dict:
    torch = C.require_torch()
    from benchmarks import torch_models as TM

    dev = C.torch_device(torch)
    torch.manual_seed(args.seed)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = bool(args.cudnn_benchmark)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = TM.make_cnn(args.model, NUM_CLASSES, 0.4, 0.4, widths=_ibjax_widths(args.model)).to(dev).to(memory_format=fmt).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    # A few random batches already on the device, ~10% of each triggered (BadNets) and relabelled to 0.
    batches = []
    n_poison = max(1, round(0.1 * args.batch))
    for _ in range(4):
        x = torch.rand(args.batch, 3, 32, 32, device=dev)
        y = torch.randint(0, NUM_CLASSES, (args.batch,), device=dev)
        TM.badnets_(x[:n_poison])
        y[:n_poison] = 0
        batches.append((x.contiguous(memory_format=fmt), y))

    def step(x, y):
        logits, _ = model(x)
        loss = torch.nn.functional.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    def run_steps():
        loss = None
        for s in range(args.steps):
            loss = step(*batches[s % len(batches)])
        return loss

    run_steps()  # warm-up
    C.torch_sync(torch, dev)
    times = C.time_repeats(run_steps, args.repeats, lambda _: C.torch_sync(torch, dev))
    t = C.median(times)
    return {
        "implementation": "PyTorch eager" + (" (channels_last)" if channels_last else ""),
        "dtype": "float32",
        "img_per_s": args.steps * args.batch / t,
        "ms_per_step": 1e3 * t / args.steps,
        "repeats": args.repeats,
        "steps_per_repeat": args.steps,
    }


def main(argv: Optional[Sequence[str]] = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    torch = None if args.no_torch else C.require_torch()  # fail early and clearly if it is missing

    hw = C.hardware(torch)
    data, plan = _random_data(args)
    rows, notes = [], []
    for dtype in args.dtypes:
        r, n = bench_ibjax(args, data, dtype)
        rows += r
        notes += n
    if torch is not None:
        rows.append(bench_torch(args, channels_last=False))
        if args.channels_last:
            rows.append(bench_torch(args, channels_last=True))
        base = rows[-2 if args.channels_last else -1]["img_per_s"]
        for r in rows:
            r["ratio_vs_torch_fp32"] = r["img_per_s"] / base
    else:
        notes.append("PyTorch baseline skipped (--no-torch): no ratio")

    full_size = args.model == "resnet18" and args.batch == 256
    for r in rows:
        if r["implementation"].startswith("ibjax") and r["dtype"] == "bfloat16":
            r["h100_reference"] = f">= {TARGET_BF16_H100:,} (target)"
        elif r["implementation"] == "PyTorch eager":
            r["h100_reference"] = f"~{REPORTED_TORCH_H100:,} (reported, not measured here)"
        else:
            r["h100_reference"] = ""
    notes.insert(0, (
        f"H100 references are for ResNet-18 at batch 256: target >= {TARGET_BF16_H100:,} img/s for ibjax bfloat16; "
        f"a PyTorch eager float32 baseline did ~{REPORTED_TORCH_H100:,} img/s (reported, not measured here)."
        + ("" if full_size else f" This run ({args.model}, batch {args.batch}) is not comparable to them.")
    ))
    notes.append(f"poisoned samples on the device: {plan.num_poisoned} of {data.size} (BadNets, target 0)")
    notes.append("ibjax train_step: jitted step on device-resident indices and keys; epoch_loop adds host shuffling "
                 "and per-step metric accumulation (what the study runs)")
    notes.append("float32 on NVIDIA GPUs: both JAX (default precision) and cuDNN (allow_tf32) run convolutions in TF32")
    if args.quick:
        notes.append("--quick: sizes for a CPU check only; not a measurement")
    cols = [
        ("implementation", "implementation", 0),
        ("dtype", "dtype", 0),
        ("img/s (median)", "img_per_s", 0),
        ("ms/step", "ms_per_step", 2),
        ("ratio vs PyTorch eager fp32", "ratio_vs_torch_fp32", 2),
        ("H100 img/s", "h100_reference", 0),
    ]
    config = {
        "model": args.model, "batch": args.batch, "steps": args.steps, "repeats": args.repeats,
        "num_images": args.num_images, "dtypes": args.dtypes, "noise": [0.4, 0.4], "attack": "badnets 10%",
        "quick": args.quick, "torch": torch is not None, "channels_last": args.channels_last,
        "cudnn_benchmark": args.cudnn_benchmark,
    }
    return C.report(title="Training throughput (images/s)", module=MODULE, argv=argv, hw=hw, config=config,
                    columns=cols, rows=rows, notes=notes, json_path=args.json)


if __name__ == "__main__":
    main()
