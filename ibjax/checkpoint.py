"""Orbax checkpoints of a whole run: a pytree of arrays plus JSON metadata, saved atomically.

Orbax writes a step into a temporary directory and renames it when complete, so a process killed
mid-save leaves the previous checkpoint intact.

Saves are asynchronous by default: :meth:`Checkpointer.save` returns once the arrays are copied off
the device, and the write to disk overlaps the next epoch's work (a ResNet-18 run state is 89 MB,
and a blocking save of it takes several times longer than this one blocks; docs/measurements.md,
"Other figures behind the code").
A save waits for the previous one, :meth:`Checkpointer.wait` and :meth:`Checkpointer.close` wait
for the last, and a run that is killed mid-write resumes from the newest complete checkpoint, at most
one epoch back.

Sharded state: Orbax writes each array once whatever its sharding (a replicated array by one
device, a split one shard by shard, across processes too), and :meth:`Checkpointer.restore` puts
every array onto the sharding of the template's array, so a run saved on one device count resumes on
another (the template is the new run's freshly placed state). In a distributed runtime every process
calls save and restore (Orbax 0.12 coordinates each checkpoint across all processes of the runtime
and refuses arrays that live on one process only: process-local runs belong in processes that do not
join a runtime, as ``experiments.sweep`` runs them).
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional

import orbax.checkpoint as ocp

__all__ = ["Checkpointer"]


class Checkpointer:
    """Save and restore ``(state pytree, metadata dict)`` pairs by integer step (e.g. epoch).

    Args:
      directory: where the steps live (created if absent).
      max_to_keep: newest complete steps kept on disk.
      asynchronous: write in the background (the default); ``False`` makes :meth:`save` return only
        once the step is on disk.
    """

    def __init__(self, directory: str, max_to_keep: int = 2, asynchronous: bool = True):
        self.directory = os.path.abspath(directory)
        self.asynchronous = asynchronous
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, create=True, enable_async_checkpointing=asynchronous
            ),
        )

    def latest_step(self) -> Optional[int]:
        """The newest complete step on disk, or None."""
        return self._manager.latest_step()

    def save(self, step: int, state: Any, meta: dict) -> None:
        """Save ``state`` (a pytree of arrays; it may be donated to a jitted step right after this
        returns) and ``meta`` (JSON-serialisable) as ``step``."""
        meta = json.loads(json.dumps(meta))  # a snapshot: the caller may change ``meta`` while it is written
        self._manager.save(
            step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True
        )
        if not self.asynchronous:
            self._manager.wait_until_finished()

    def wait(self) -> None:
        """Block until every save so far is on disk."""
        self._manager.wait_until_finished()

    def restore(self, step: int, template: Any) -> tuple[Any, dict]:
        """Restore ``step`` into the structure, dtypes and shardings of ``template`` (any device count)."""
        self.wait()
        out = self._manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(template), meta=ocp.args.JsonRestore())
        )
        return out["state"], out["meta"]

    def close(self) -> None:
        """Wait for the last save and release the manager."""
        self.wait()
        self._manager.close()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
