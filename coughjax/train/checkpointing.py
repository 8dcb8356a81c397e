"""The trainer's checkpoint policy: what a run saves, and which checkpoint it resumes from.

A run keeps Orbax checkpoints in two folders of its workdir (`RunCheckpoints`):
`checkpoints/` (the last k, every `checkpoint_every_steps` and at each epoch end) and
`best/` (the step with the best validation monitor). Each is saved from the devices as
they are: the state is replicated over the mesh, so a checkpoint restores onto any
number of devices. Reading them, and the reasons a checkpoint is refused, are
`coughjax.checkpoints`' (shared with the serving path); what is decided here:

* a run resumes from the newest checkpoint that reads back. One that cannot be read
  for a reason of its own (missing or damaged files, bad data) is set aside in
  `corrupted_checkpoints/`, with a warning, for the next older one: nothing is
  deleted. A transient error (EIO, a full disk, a permission, Ctrl-C) is raised with
  every checkpoint left in place, and so are a config mismatch, another workdir
  format and non-finite parameters;
* with several processes, process 0 alone decides which step that is and every
  process resumes from it;
* a step saved again (a "best" checkpoint written by a run that stopped before its
  next resumable one) replaces the earlier save: the resumed run recomputes it with
  the same batches and keys.
"""

from __future__ import annotations

import os
import pathlib
import time
from typing import Any, Optional

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp

import coughjax
from coughjax import checkpoints


def save(mgr: ocp.CheckpointManager, step: int, state: Any, meta: dict) -> None:
  """Saves (state, meta) as checkpoint `step` of `mgr` (replacing one of that step);
  the meta records the workdir format and this coughjax's version."""
  if step in mgr.all_steps():
    # Written by a run that stopped before its next resumable checkpoint (a "best"
    # one, say); the resumed run recomputes it with the same batches and keys.
    mgr.delete(step)
  mgr.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      meta=ocp.args.JsonSave(dict(meta, format=checkpoints.WORKDIR_FORMAT,
                                  coughjax=coughjax.__version__))), force=True)


def _find_newest_intact(mgr, target, set_aside: Optional[pathlib.Path]
                        ) -> Optional[tuple[int, Any, dict]]:
  """`restore_newest_intact` as one process sees the checkpoints."""
  skipped = []
  for step in sorted(mgr.all_steps(), reverse=True):
    try:
      return (step, *checkpoints.restore_state(mgr, step, target))
    except checkpoints.CorruptCheckpointError as e:
      skipped.append(step)
      if set_aside is None:
        logging.warning("skipping corrupted checkpoint %s; trying an older one", e)
        continue
      set_aside.mkdir(parents=True, exist_ok=True)
      dest = set_aside / f"{step}.{time.strftime('%Y%m%d-%H%M%S')}"
      (pathlib.Path(mgr.directory) / str(step)).rename(dest)
      mgr.reload()
      logging.warning("skipping corrupted checkpoint %s; moved it to %s (nothing "
                      "deleted) and trying an older one", e, dest)
  if skipped:
    raise checkpoints.CorruptCheckpointError(
        f"{mgr.directory}: no checkpoint can be read back (steps {sorted(skipped)}"
        + (f", moved to {set_aside}" if set_aside else "") + "); see the warnings. "
        "Start afresh with a new --workdir.")
  return None


_NO_CHECKPOINT, _FAILED = -1, -2  # what process 0 broadcasts besides a step


def restore_newest_intact(mgr, target, set_aside: Optional[pathlib.Path] = None
                          ) -> Optional[tuple[int, Any, dict]]:
  """(step, state, meta) of the newest checkpoint that reads back, or None if there
  is none. Unreadable ones are skipped with a warning; with `set_aside`, they are
  moved there (kept for inspection, out of the way of the steps to be saved again).

  With several processes (sharing the folder) process 0 alone reads the checkpoints,
  through a manager of its own whose barriers wait for nobody, and moves the
  unreadable ones; it broadcasts the step it found, and every process restores that
  step, so all resume from the same one. Process 0 reads that step twice: Orbax's
  restore is collective, so it takes part in the common one too (its own reading
  goes to the host: the target's arrays span devices of every process).
  """
  if jax.process_count() == 1:
    return _find_newest_intact(mgr, target, set_aside)
  found, error = None, None
  if jax.process_index() == 0:
    own = checkpoints.manager(pathlib.Path(mgr.directory), processes={0})
    try:
      found = _find_newest_intact(own, jax.device_get(target), set_aside)
    except BaseException as e:  # pylint: disable=broad-except
      # Raised after the broadcast (a transient error and Ctrl-C too), so that the
      # others do not wait forever.
      error = e
    finally:
      own.close()
  code = _FAILED if error else _NO_CHECKPOINT if found is None else found[0]
  step = int(multihost_utils.broadcast_one_to_all(np.int32(code)))
  if error is not None:
    raise error
  if step == _FAILED:
    raise RuntimeError(f"{mgr.directory}: process 0 could not restore a checkpoint; "
                       "its log says why")
  mgr.reload()  # process 0 may have moved checkpoints away
  if step == _NO_CHECKPOINT:
    return None
  return (step, *checkpoints.restore_state(mgr, step, target))


def restore(directory: str | os.PathLike, target: Any,
            step: Optional[int] = None) -> tuple[Any, dict]:
  """Restores (state, meta) from a checkpoint folder into the structure of `target`
  (the newest intact step by default)."""
  mgr = checkpoints.manager(pathlib.Path(directory))
  try:
    if step is not None:
      return checkpoints.restore_state(mgr, step, target)
    found = restore_newest_intact(mgr, target)
    if found is None:
      raise FileNotFoundError(f"{directory}: no checkpoint found")
    return found[1:]
  finally:
    mgr.close()


class RunCheckpoints:
  """A training run's checkpoint folders: `last` (workdir/checkpoints, the last
  `keep` steps, which a rerun resumes from) and `best` (workdir/best)."""

  def __init__(self, workdir: pathlib.Path, keep: int):
    self.last = checkpoints.manager(workdir / "checkpoints", keep, write=True)
    self.best = checkpoints.manager(workdir / "best", write=True)
    self.set_aside = workdir / "corrupted_checkpoints"

  def resume(self, target) -> Optional[tuple[int, Any, dict]]:
    """`restore_newest_intact` of `last`, setting unreadable checkpoints aside."""
    return restore_newest_intact(self.last, target, set_aside=self.set_aside)

  def save(self, step: int, state, meta: dict, *, best: bool = False) -> None:
    """Saves a resumable checkpoint of `step` (with `best`, the best one instead)."""
    save(self.best if best else self.last, step, state, meta)

  def last_good(self) -> str:
    """Where the newest resumable checkpoint is, for an error message."""
    return f"step {self.last.latest_step()} in {self.last.directory}"

  def close(self) -> None:
    """Lets the saves in flight finish: no temporary checkpoint folder is left."""
    self.last.close()
    self.best.close()
