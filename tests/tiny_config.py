"""The tiny study configuration the study and CLI tests share: 600 real digits, a small CNN, few steps."""

from ibjax.fields import override
from ibjax.mi import resolve_config
from ibjax.study import StudyConfig

# A held-out read only (no validation split, rank map or best critic): the cheapest estimator that
# exercises every read the study writes; the defaults' levers have tests of their own.
TINY_MI = resolve_config(epochs=6, batch_size=16, negatives=32, hidden=(16, 16), lr=1e-3, read_epochs=2, heldout_passes=1,
                         validation_fraction=0.0, candidates=(), select="last", preprocess="none")
TINY = override(StudyConfig(), {
    "data.name": "mnist5k",
    "data.per_class_limit": 60,
    "attack.name": "badnets",
    "poison.ratio": 0.1,
    # Philox noise, as the cpu preset (the quickstart): the study, population and device-count tests
    # run it through vmapped members and sharded batches (tests/test_rng.py covers both generators).
    "model.name": "small_cnn", "model.gamma_xt": 0.2, "model.gamma_ty": 0.2, "model.noise_generator": "philox",
    "train.epochs": 3, "train.batch_size": 32, "train.lr": 0.05, "train.schedule": "plateau",
    "train.eval_batch_size": 500,
    "mi.epochs": (1, 3),
    "mi.xt": TINY_MI,
    "mi.ty": TINY_MI,
    "mi.xy": TINY_MI,
    "mi.features": "bank",
    "mi.bank_draws": 2,
    "analysis.stealth.epochs": (1, 3),
    "analysis.embedding.epochs": (3,),
    "analysis.embedding.points": 200,
})


def short(config: StudyConfig = TINY, epochs: int = 1, **changes) -> StudyConfig:
    """``config`` cut to ``epochs`` epochs with MI and the metric at the last one, no embeddings, and
    ``changes`` (dotted paths, e.g. ``**{"attack.name": "blend"}``) applied."""
    cut = {"train.epochs": epochs, "mi.epochs": (epochs,), "analysis.stealth.epochs": (epochs,),
           "analysis.embedding.epochs": ()}
    return override(override(config, changes), cut)
