"""One full run of the reference protocol: ``python -m experiments.study --dataset cifar10 --attack badnets``.

Every option is a flag whose default is SPEC.md's; ``--resume RUN_DIR`` continues an interrupted run
with the configuration saved in it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

from ibjax.mi import TY_CONFIG, XT_CONFIG
from ibjax.models import MODELS
from ibjax.study import StudyConfig, config_from_dict, run_study
from ibjax.triggers import ATTACKS


def _ints(s: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in s.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}")


def _option(s: str):
    if "=" not in s:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {s!r}")
    k, v = s.split("=", 1)
    try:
        return k, json.loads(v)
    except json.JSONDecodeError:
        return k, v


def build_parser() -> argparse.ArgumentParser:
    d = StudyConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default=None, help="run directory (default runs/<dataset>_<attack>_<ratio>_s<seed>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its checkpoints")
    p.add_argument("--dataset", default=d.dataset, help="mnist5k (embedded), a TFDS name, or an image folder / .tar.gz")
    p.add_argument("--data-dir", default=None, help="TFDS data dir, or an image folder / .tar.gz archive")
    p.add_argument("--per-class-limit", type=int, default=None, help="first N training samples per class (SVHN: 4000)")
    p.add_argument("--attack", default=d.attack, choices=ATTACKS)
    p.add_argument("--attack-option", type=_option, action="append", default=[], metavar="NAME=VALUE",
                   help="override a trigger parameter, e.g. alpha=0.2")
    p.add_argument("--poison-ratio", type=float, default=d.poison.ratio)
    p.add_argument("--target", type=int, default=d.poison.target)
    p.add_argument("--model", default=d.model.name, choices=sorted(MODELS))
    p.add_argument("--gamma-xt", type=float, default=d.model.gamma_xt)
    p.add_argument("--gamma-ty", type=float, default=d.model.gamma_ty)
    p.add_argument("--dtype", default=d.model.dtype, choices=["float32", "bfloat16"])
    p.add_argument("--epochs", type=int, default=d.train.epochs)
    p.add_argument("--batch-size", type=int, default=d.train.batch_size)
    p.add_argument("--lr", type=float, default=d.train.lr)
    p.add_argument("--schedule", default=d.train.schedule, choices=["plateau", "cosine", "constant"])
    p.add_argument("--asr-on-all", action="store_true", help="count ASR over all test images (the reference's count)")
    p.add_argument("--mi-epochs", type=_ints, default=d.mi_epochs)
    p.add_argument("--mi-mode", default=d.mi_mode, choices=["offline", "online", "both"])
    p.add_argument("--feature-mode", default=d.feature_mode, choices=["fresh", "bank"])
    p.add_argument("--bank-draws", type=int, default=d.bank_draws)
    p.add_argument("--xt-epochs", type=int, default=XT_CONFIG.epochs)
    p.add_argument("--xt-batch-size", type=int, default=XT_CONFIG.batch_size)
    p.add_argument("--xt-negatives", type=int, default=XT_CONFIG.negatives)
    p.add_argument("--ty-epochs", type=int, default=TY_CONFIG.epochs)
    p.add_argument("--ty-batch-size", type=int, default=TY_CONFIG.batch_size)
    p.add_argument("--ty-negatives", type=int, default=TY_CONFIG.negatives)
    p.add_argument("--critic", default=XT_CONFIG.critic, choices=["concat", "separable"])
    p.add_argument("--critic-hidden", type=_ints, default=XT_CONFIG.hidden)
    p.add_argument("--mi-dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--heldout-fraction", type=float, default=XT_CONFIG.heldout_fraction)
    p.add_argument("--stealth-epochs", type=_ints, default=d.stealth_epochs)
    p.add_argument("--embed-epochs", type=_ints, default=d.embed_epochs)
    p.add_argument("--pgd-steps", type=int, default=d.pgd_steps)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--quiet", action="store_true")
    return p


def config_from_args(a: argparse.Namespace) -> StudyConfig:
    d = StudyConfig()
    common = dict(dtype=a.mi_dtype, heldout_fraction=a.heldout_fraction, critic=a.critic, hidden=a.critic_hidden)
    return StudyConfig(
        dataset=a.dataset,
        data_dir=a.data_dir,
        per_class_limit=a.per_class_limit,
        attack=a.attack,
        attack_options=tuple(a.attack_option),
        poison=dataclasses.replace(d.poison, ratio=a.poison_ratio, target=a.target),
        model=dataclasses.replace(d.model, name=a.model, gamma_xt=a.gamma_xt, gamma_ty=a.gamma_ty, dtype=a.dtype),
        train=dataclasses.replace(d.train, epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, schedule=a.schedule,
                                  asr_on_all=a.asr_on_all),
        mi_epochs=a.mi_epochs,
        xt=dataclasses.replace(XT_CONFIG, epochs=a.xt_epochs, batch_size=a.xt_batch_size, negatives=a.xt_negatives,
                               read_epochs=min(XT_CONFIG.read_epochs, a.xt_epochs), **common),
        ty=dataclasses.replace(TY_CONFIG, epochs=a.ty_epochs, batch_size=a.ty_batch_size, negatives=a.ty_negatives,
                               read_epochs=min(TY_CONFIG.read_epochs, a.ty_epochs), **common),
        mi_mode=a.mi_mode,
        feature_mode=a.feature_mode,
        bank_draws=a.bank_draws,
        stealth_epochs=a.stealth_epochs,
        embed_epochs=a.embed_epochs,
        pgd_steps=a.pgd_steps,
        seed=a.seed,
    )


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    if args.resume:
        with open(os.path.join(args.resume, "config.json")) as f:
            config = config_from_dict(json.load(f))
        run_dir = args.resume
    else:
        config = config_from_args(args)
        run_dir = args.out or os.path.join("runs", f"{config.dataset}_{config.attack}_{config.poison.ratio}_s{config.seed}")
    try:
        summary = run_study(config, run_dir, resume=bool(args.resume), progress=not args.quiet)
    except ValueError as err:
        sys.exit(f"error: {err}")
    print(json.dumps({k: summary[k] for k in ("run_dir", "test_accuracy", "asr", "wall_s")}, indent=1))
    return summary


if __name__ == "__main__":
    main()
