"""Orbax checkpoints of a whole run: a pytree of arrays plus JSON metadata, saved atomically.

Orbax writes a step into a temporary directory and renames it when complete, so a process killed
mid-save leaves the previous checkpoint intact; :meth:`Checkpointer.save` waits for the write to
finish so that whatever the run reports as done is on disk.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import orbax.checkpoint as ocp

__all__ = ["Checkpointer"]


class Checkpointer:
    """Save and restore ``(state pytree, metadata dict)`` pairs by integer step (e.g. epoch)."""

    def __init__(self, directory: str, max_to_keep: int = 2):
        self.directory = os.path.abspath(directory)
        self._manager = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
        )

    def latest_step(self) -> Optional[int]:
        return self._manager.latest_step()

    def save(self, step: int, state: Any, meta: dict) -> None:
        self._manager.save(
            step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True
        )
        self._manager.wait_until_finished()

    def restore(self, step: int, template: Any) -> tuple[Any, dict]:
        """Restore ``step`` into the structure (and dtypes) of ``template``."""
        out = self._manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(template), meta=ocp.args.JsonRestore())
        )
        return out["state"], out["meta"]

    def close(self) -> None:
        self._manager.close()
