"""Metric writers: live views of a run's records beside the run directory's own files.

The run directory's files (``metrics.jsonl``, ``mi.json``, ...) are always written and stay the
record of a run; a writer adds a view of the same numbers that a long study can be watched in while
it trains. Writers are named in :data:`WRITERS` (``run_study(..., writers=("tensorboard",))``,
``--writers tensorboard`` on the command line); each is built as ``factory(run_dir, first_epoch)``
and offers ``write(epoch, scalars)`` and ``close()`` (:class:`MetricWriter`).

- ``tensorboard``: TensorBoard event files under ``RUN_DIR/tensorboard`` through tensorboardX, a
  writer library that needs no TensorFlow (the ``tensorboard`` extra installs it). A resumed run
  purges the events of epochs after its checkpoint, so an epoch that was logged but not checkpointed
  before a kill is not shown twice.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, Optional, Protocol, Sequence, Union

from ibjax.records import EpochRecord, as_mi_histories

__all__ = ["MetricWriter", "TensorBoardWriter", "WriterSpec", "WRITERS", "check_writers", "writer_folders",
           "open_writers", "epoch_scalars", "TENSORBOARD_DIR"]

TENSORBOARD_DIR = "tensorboard"
"""The run directory's folder of TensorBoard event files."""


class MetricWriter(Protocol):
    def write(self, epoch: int, scalars: Mapping[str, float]) -> None:
        """Record ``scalars`` (name -> value) at ``epoch``."""

    def close(self) -> None:
        """Flush and release the writer."""


class TensorBoardWriter:
    """TensorBoard event files in ``run_dir/tensorboard`` (tensorboardX's SummaryWriter).

    Args:
      run_dir: the run directory.
      first_epoch: the first epoch this process records; events at it and later that an earlier
        start left behind are purged.
    """

    def __init__(self, run_dir: str, first_epoch: int):
        import os

        from tensorboardX import SummaryWriter

        self._writer = SummaryWriter(os.path.join(run_dir, TENSORBOARD_DIR), purge_step=int(first_epoch),
                                     flush_secs=30)

    def write(self, epoch: int, scalars: Mapping[str, float]) -> None:
        for name, value in scalars.items():
            self._writer.add_scalar(name, float(value), global_step=int(epoch))
        self._writer.flush()  # an epoch is long: show it as soon as it is done

    def close(self) -> None:
        self._writer.close()


def _tensorboard_available() -> Optional[str]:
    try:
        import tensorboardX  # noqa: F401
    except ImportError:
        return "writer 'tensorboard' needs tensorboardX: pip install tensorboardX (or ibjax's [tensorboard] extra)"
    return None


@dataclasses.dataclass(frozen=True)
class WriterSpec:
    """A registered writer.

    Attributes:
      factory: ``(run_dir, first_epoch) -> MetricWriter``.
      check: ``() -> why it cannot run here, or None`` (a missing library), asked before any work.
      folder: the top-level name it writes in the run directory (claimed as ibjax's, so that
        ``--fresh`` removes it with the rest).
    """

    factory: Callable[[str, int], MetricWriter]
    check: Callable[[], Optional[str]]
    folder: str


WRITERS: dict[str, WriterSpec] = {
    "tensorboard": WriterSpec(TensorBoardWriter, _tensorboard_available, TENSORBOARD_DIR),
}
"""The writers by name."""


def check_writers(names: Sequence[str]) -> None:
    """ValueError naming an unknown writer or one whose library is missing (before any work)."""
    if isinstance(names, str):
        raise ValueError(f"writers is a sequence of names, e.g. ({names!r},), not a string")
    for name in names:
        if name not in WRITERS:
            raise ValueError(f"unknown writer {name!r}: choose from {', '.join(sorted(WRITERS))}")
        why = WRITERS[name].check()
        if why:
            raise ValueError(why)


def writer_folders(names: Sequence[str]) -> list[str]:
    """The run-directory names the writers ``names`` write."""
    return [WRITERS[name].folder for name in names]


def open_writers(names: Sequence[str], run_dir: str, first_epoch: int) -> list[MetricWriter]:
    """The named writers of a run directory, recording from ``first_epoch`` on."""
    check_writers(names)
    return [WRITERS[name].factory(run_dir, first_epoch) for name in names]


def epoch_scalars(record: Union[EpochRecord, Mapping], mi: Mapping[str, Any], epoch: int) -> dict[str, float]:
    """The scalars of one epoch: the record's training and test metrics (``train/accuracy``,
    ``test/loss``, ``attack/asr``, ``lr``, ``time/wall_s``, ...) and every MI read at that epoch
    (``mi/<quantity>/<group>/<read>`` in nats, from the run's ``{quantity: MIHistory}``; mi.json's
    layout is read too). Non-finite values are left out."""
    record = record if isinstance(record, EpochRecord) else EpochRecord.from_json({"epoch": epoch, **record})
    names = {"train_accuracy": "train/accuracy", "train_loss": "train/loss", "test_accuracy": "test/accuracy",
             "test_loss": "test/loss", "asr": "attack/asr", "lr": "lr", "train_s": "time/train_s", "mi_s": "time/mi_s",
             "wall_s": "time/wall_s"}
    out = {tag: record.get(key) for key, tag in names.items() if isinstance(record.get(key), (int, float))}
    for quantity, history in as_mi_histories(mi).items():
        for group in history.groups:
            entry = history.entry(group, epoch)
            for read in ("heldout", "train"):
                if entry is not None and isinstance(entry.get(read), (int, float)):
                    out[f"mi/{quantity}/{group}/{read}"] = entry[read]
    return {k: float(v) for k, v in out.items() if math.isfinite(float(v))}
