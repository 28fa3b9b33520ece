"""Checkpoints that resume: orbax, one folder per run, the latest complete epoch kept.

A checkpoint holds a pytree of arrays (restored with the shapes, dtypes and shardings of a template, so a
data-parallel run resumes replicated on its mesh) and a small JSON record (epoch, history). orbax writes
each step to a temporary folder and renames it when complete: an interrupted save leaves the previous
checkpoint, never a half-written one that reads as the latest.
"""
from __future__ import annotations

import pathlib
import threading
from typing import Any

import jax

# orbax's managers share process-wide machinery: two threads saving at once collide on temporary folders
# (measured: FileExistsError on "<step>.orbax-checkpoint-tmp"). Runs in threads take turns here.
_ORBAX = threading.RLock()


class Checkpoints:
  """`save(step, tree, record)`, `latest() -> (step, tree, record) | None`, over an orbax manager."""

  def __init__(self, directory: pathlib.Path, *, keep: int = 1):
    import orbax.checkpoint as ocp  # an extra (rtjax[data]): imported where it is used
    self._ocp = ocp
    self.directory = pathlib.Path(directory).absolute()
    with _ORBAX:
      self._manager = ocp.CheckpointManager(
          self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))

  def save(self, step: int, tree: Any, record: dict) -> None:
    """Saves `tree` (arrays) and `record` (JSON) as `step` and waits until both are on disk."""
    ocp = self._ocp
    with _ORBAX:
      self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(tree),
                                                       record=ocp.args.JsonSave(record)))
      self._manager.wait_until_finished()

  def latest(self, template: Any) -> tuple[int, Any, dict] | None:
    """The latest complete checkpoint restored like `template` (same structure, shapes, shardings)."""
    ocp = self._ocp
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), template)
    with _ORBAX:
      step = self._manager.latest_step()
      if step is None:
        return None
      restored = self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                                     record=ocp.args.JsonRestore()))
    return step, restored.state, restored.record

  def close(self) -> None:
    with _ORBAX:
      self._manager.close()
