"""The tiny study configuration the study and CLI tests share: 600 real digits, a small CNN, few steps."""

import dataclasses

from ibjax.mi import MIConfig
from ibjax.models import ModelConfig
from ibjax.poison import PoisonConfig
from ibjax.study import StudyConfig
from ibjax.train import TrainConfig

TINY_MI = MIConfig(epochs=6, batch_size=16, negatives=32, hidden=(16, 16), lr=1e-3, read_epochs=2, heldout_passes=1)
TINY = StudyConfig(
    dataset="mnist5k",
    per_class_limit=60,
    attack="badnets",
    poison=PoisonConfig(ratio=0.1),
    # Philox noise, as the cpu preset (the quickstart): the study, population and device-count tests
    # run it through vmapped members and sharded batches (tests/test_rng.py covers both generators).
    model=ModelConfig(name="small_cnn", gamma_xt=0.2, gamma_ty=0.2, noise_generator="philox"),
    train=TrainConfig(epochs=3, batch_size=32, lr=0.05, schedule="plateau", eval_batch_size=500),
    mi_epochs=(1, 3),
    xt=TINY_MI,
    ty=TINY_MI,
    feature_mode="bank",
    bank_draws=2,
    stealth_epochs=(1, 3),
    embed_epochs=(3,),
    embed_points=200,
)


def short(config: StudyConfig = TINY, epochs: int = 1, **changes) -> StudyConfig:
    """``config`` cut to ``epochs`` epochs with MI and the metric at the last one, no embeddings."""
    train = dataclasses.replace(changes.pop("train", config.train), epochs=epochs)
    return dataclasses.replace(config, train=train, mi_epochs=(epochs,), stealth_epochs=(epochs,), embed_epochs=(),
                               **changes)
