"""What each defence costs next to the training it inspects, and what it reads on a backdoored network
and its clean twin.

Trains a backdoored network (the config's attack) and its clean twin (the same seed, recipe and
initialisation, the poisons left out), timing the training epochs, then runs every defence of
:data:`ibjax.defenses.DEFENSES` but the loss-based ones (they read the per-sample losses a study
records, which these hand-trained networks lack) on both under each set of rules, each method called twice (the first
call compiles; the second is timed). Sample-level detectors read their AUROC against the poisons
(the twin has none: not run), model-level ones their score on both networks.

    python -m benchmarks.defense_cost                            # mnist5k, small CNN, BadNets, 4 epochs
    python -m benchmarks.defense_cost --defenses ban,uclc --rules reference
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from typing import Optional, Sequence

import numpy as np

from benchmarks import _common as C

MODULE = "benchmarks.defense_cost"


@dataclasses.dataclass
class TrainedPair:
    """A backdoored network, its clean twin, and how they were trained."""

    setup: object  # the backdoored run's StudySetup
    backdoored: dict  # variables
    clean: dict
    metrics: dict  # {"backdoored": ibjax.train.evaluate_attack(...), "clean": ...}
    epoch_s: float  # median seconds of a compiled training epoch


def pair_config(dataset: str = "mnist5k", attack: str = "badnets", epochs: int = 4, seed: int = 0):
    """The study config both networks train with: the small CNN at the quickstart's noise, batch 64."""
    from ibjax.fields import override
    from ibjax.study import StudyConfig

    return override(StudyConfig(), {
        "data.name": dataset, "attack.name": attack, "poison.ratio": 0.1, "poison.target": 0, "seed": seed,
        "model.name": "small_cnn", "model.gamma_xt": 0.2, "model.gamma_ty": 0.2, "model.noise_generator": "philox",
        "train.epochs": epochs, "train.batch_size": 64, "train.lr": 0.05, "train.eval_batch_size": 500,
        "mi.epochs": (epochs,), "analysis.stealth.epochs": (epochs,), "analysis.embedding.epochs": (),
    })


def train_pair(config) -> TrainedPair:
    """Train the config's backdoored network and its clean twin (the plan's poisons left out)."""
    import jax

    from ibjax.pipeline import put_train_data
    from ibjax.study import build_setup
    from ibjax.train import create_train_state, evaluate_attack, train_epoch

    setup = build_setup(config, progress=False)
    plan, cfg = setup.plan, config.train
    images = np.asarray(setup.train_data.images)
    clean_plan = plan.replace(poisoned=np.zeros_like(plan.poisoned), labels=plan.clean_labels)
    data = {"backdoored": setup.train_data, "clean": put_train_data(images, clean_plan, setup.keys.trigger)}
    steps = cfg.epochs * (len(images) // cfg.batch_size)
    out, metrics, seconds = {}, {}, []
    for name, d in data.items():
        state = create_train_state(setup.keys.init, setup.model, setup.image_shape, cfg)
        for e in range(cfg.epochs):
            t0 = time.perf_counter()
            state, _ = train_epoch(state, d, jax.random.fold_in(setup.keys.train, e), model=setup.model,
                                   trigger=setup.attack.train_trigger, config=cfg, total_steps=steps)
            jax.block_until_ready(state.params)
            if e > 0:  # the first epoch compiles
                seconds.append(time.perf_counter() - t0)
        out[name] = state.variables
        metrics[name] = evaluate_attack(state.variables, setup.clean_test, setup.triggered_test, jax.random.PRNGKey(1),
                                        model=setup.model, trigger=setup.attack.test_trigger,
                                        target=config.poison.target, config=cfg)
    return TrainedPair(setup, out["backdoored"], out["clean"], metrics, C.median(seconds) if seconds else float("nan"))


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    from ibjax.defenses import DEFENSE_NAMES, RULES
    from ibjax.defenses.registry import NEEDS_SAMPLE_LOSSES

    # the networks train here by hand (ibjax.train.train_epoch), which records no per-sample losses
    names = [n for n in DEFENSE_NAMES if n not in NEEDS_SAMPLE_LOSSES]

    p = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", default="mnist5k")
    p.add_argument("--attack", default="badnets")
    p.add_argument("--epochs", type=int, default=4, help="training epochs of both networks")
    p.add_argument("--defenses", default=",".join(names), help=f"comma-separated, from {', '.join(names)} (the loss-based "
                   "ones need a study's recorded losses: run them with --analysis.defenses)")
    p.add_argument("--rules", default=",".join(RULES), help=f"comma-separated, from {', '.join(RULES)}")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    a = p.parse_args(argv)
    a.defenses = C.parse_names(p, a.defenses, names, "defence")
    a.rules = C.parse_names(p, a.rules, RULES, "rules")
    if a.epochs < 2:
        p.error("--epochs must be >= 2 (the first epoch compiles; the others are timed)")
    return a


def _headline(record: dict) -> str:
    if record["level"] == "sample":
        return f"AUROC {record['auroc']:.3f}, TPR {record['tpr']:.3f}, FPR {record['fpr']:.3f}"
    if record["level"] == "model":
        target = record.get("suspected_target")
        return f"score {record['score']:.3f}" + ("" if target is None else f", target {target}")
    if record["level"] == "defence":
        return (f"ASR {record['asr_before']:.3f} -> {record['asr_after']:.3f}, accuracy {record['accuracy_before']:.3f}"
                f" -> {record['accuracy_after']:.3f}, {record['channels_pruned']} pruned")
    return ", ".join(f"{k} {record[k]:.3f}" for k in ("silhouette", "davies_bouldin", "ot_distance", "linear_probe", "dswd"))


def main(argv: Optional[Sequence[str]] = None) -> dict:
    import jax

    from ibjax.defenses import DEFENSES, run_defenses
    from ibjax.study.defenses import member_defense_inputs

    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    pair = train_pair(pair_config(args.dataset, args.attack, args.epochs, args.seed))
    inputs = {name: member_defense_inputs(pair.setup, v) for name, v in (("backdoored", pair.backdoored),
                                                                          ("clean", pair.clean))}
    rows = []
    for rules in args.rules:
        for name in args.defenses:
            row = {"defence": name, "rules": rules, "level": DEFENSES[name].level}
            for net in ("backdoored", "clean"):
                if net == "clean" and DEFENSES[name].level == "sample":
                    continue  # nothing to find in the twin
                key = jax.random.PRNGKey(args.seed)
                run_defenses(inputs[net], [name], key, rules)  # compile
                rec = run_defenses(inputs[net], [name], key, rules)[name]
                row[f"{net}_s"] = rec["wall_s"]
                row[net] = _headline(rec)
                row[f"{net}_record"] = {k: v for k, v in rec.items() if k not in ("per_channel", "histogram")}
            row["epochs_of_training"] = row["backdoored_s"] / pair.epoch_s
            rows.append(row)
    cols = [("defence", "defence", 0), ("rules", "rules", 0), ("level", "level", 0),
            ("backdoored network", "backdoored", 0), ("clean twin", "clean", 0), ("s (compiled)", "backdoored_s", 2),
            ("/ training epoch", "epochs_of_training", 2)]
    m = pair.metrics
    notes = [f"{args.dataset}, small CNN, {args.attack} 10% to class 0, {args.epochs} epochs of batch 64: backdoored "
             f"accuracy {m['backdoored']['test_accuracy']:.3f}, ASR {m['backdoored']['asr']:.3f}; clean twin accuracy "
             f"{m['clean']['test_accuracy']:.3f}, ASR {m['clean']['asr']:.3f}",
             f"one compiled training epoch: {pair.epoch_s:.2f} s (median); each defence's seconds are its second call "
             "on the backdoored network (the first compiles)"]
    return C.report(title="Defences: cost and reads on a backdoored network and its clean twin", module=MODULE,
                    argv=argv, hw=C.hardware(), config={"dataset": args.dataset, "attack": args.attack,
                                                        "epochs": args.epochs, "seed": args.seed},
                    columns=cols, rows=rows, notes=notes, json_path=args.json, extra={"epoch_s": pair.epoch_s})


if __name__ == "__main__":
    main()
