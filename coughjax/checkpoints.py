"""Reading a training workdir: its Orbax checkpoints, their format, and metrics.jsonl.

A workdir (`coughjax.train.trainer.fit`) holds `checkpoints/` (the last k steps),
`best/` (the step with the best validation monitor) and `metrics.jsonl`. Each
checkpoint is an Orbax step folder of two items: `state`, the TrainState, and
`meta`, JSON holding the run's progress, the `WORKDIR_FORMAT` it was written in and
the coughjax version that wrote it.

This module reads them for everyone: the trainer resuming (`restore_state`, into the
structure of its own state) and the serving path (`restore_params`, parameters alone,
without the model or the devices that wrote them: `coughjax.predict`, `embed`,
`export`, `probe`), which so never imports the training loop. A checkpoint that cannot
be used is refused with the reason: written in another format (`WorkdirFormatError`),
holding NaN or inf (`NonFiniteCheckpointError`), or unreadable for a reason of its own,
missing or damaged files (`CorruptCheckpointError`, which the trainer answers by
setting the checkpoint aside for an older one, `coughjax.train.checkpointing`); an
error of the disk or the machine rather than of the checkpoint (`is_transient`) is
raised as it is.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

# What a workdir's checkpoints hold: bump it when a change makes older checkpoints
# unfit to resume or reuse (parameter layouts, random keys, the checkpoint's items).
# Every checkpoint's meta records it (with the coughjax version); a checkpoint
# without it is from before it was recorded: format 1.
WORKDIR_FORMAT = 2
METRICS_FILE = "metrics.jsonl"


class CorruptCheckpointError(ValueError):
  """A checkpoint whose files cannot be read back (not a config mismatch)."""


class WorkdirFormatError(ValueError):
  """A checkpoint written by a coughjax of another `WORKDIR_FORMAT` (older or newer)."""


class NonFiniteCheckpointError(ValueError):
  """A checkpoint whose parameters hold NaN or infinity."""


def manager(directory: pathlib.Path, keep: int = 1, *, write: bool = False,
            processes: Optional[set[int]] = None) -> ocp.CheckpointManager:
  """Orbax manager of checkpoint folder `directory`, over every process or only
  `processes`.

  A manager that may `write` creates the folder and removes the temporary folders of
  saves that never finished (a killed run); a reader changes nothing, so reading a
  workdir while it trains is safe. The cross-process barriers are named after the
  folder: the trainer runs two managers (checkpoints/ and best/) that save the same
  step, and Orbax's default names would collide.
  """
  directory = pathlib.Path(directory).absolute()
  barrier_prefix = str(directory) if processes is None else f"{directory}@{sorted(processes)}"
  return ocp.CheckpointManager(
      directory,
      item_handlers={"state": ocp.StandardCheckpointHandler(),
                     "meta": ocp.JsonCheckpointHandler()},
      options=ocp.CheckpointManagerOptions(
          max_to_keep=keep, create=write, cleanup_tmp_directories=write, read_only=not write,
          multiprocessing_options=ocp.options.MultiprocessingOptions(
              active_processes=processes, barrier_sync_key_prefix=barrier_prefix)))


# Orbax reads through TensorStore, which reports an OS error as a ValueError whose
# message starts with the errno's absl status code (absl::ErrnoToStatusCode). These
# codes say that the disk, the file system or the machine failed (EIO, ENOSPC,
# EACCES, a time-out), not the checkpoint; NOT_FOUND (a missing file) and
# DATA_LOSS / INVALID_ARGUMENT (bad contents) are the checkpoint's own.
_TRANSIENT_STATUS = ("UNAVAILABLE:", "RESOURCE_EXHAUSTED:", "PERMISSION_DENIED:",
                     "DEADLINE_EXCEEDED:", "ABORTED:", "CANCELLED:")
# OSErrors about the checkpoint's own files: one is missing, or a file stands where
# a folder should (or the reverse). Any other OSError (EIO, ENOSPC, EACCES, ...) is not.
_OWN_OS_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError)


def is_transient(error: BaseException) -> bool:
  """Whether reading a checkpoint failed for a reason outside it (anywhere in the
  chain of causes): rereading later may well succeed."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and not isinstance(error, _OWN_OS_ERRORS):
      return True
    if isinstance(error, MemoryError) or str(error).startswith(_TRANSIENT_STATUS):
      return True
    error = error.__cause__ or error.__context__
  return False


@contextlib.contextmanager
def _reading(path: pathlib.Path, what: str):
  """Reads checkpoint `path` in the block: an error of the checkpoint's own (missing
  or damaged files, bad data) becomes CorruptCheckpointError(`what`), so that the
  caller may set the checkpoint aside; a transient one (`is_transient`, Ctrl-C) is
  raised as it is, and the checkpoint left where it is."""
  try:
    yield
  except Exception as e:  # pylint: disable=broad-except
    if is_transient(e):
      raise
    raise CorruptCheckpointError(f"{path}: {what} ({e})") from e


def _check_format(path: pathlib.Path, meta: dict) -> None:
  """Raises WorkdirFormatError unless `meta` (a checkpoint's) has this WORKDIR_FORMAT."""
  found = meta.get("format", 1)
  if found == WORKDIR_FORMAT:
    return
  wrote = (f"coughjax {meta['coughjax']}" if "coughjax" in meta else
           "a coughjax from before workdirs recorded their format")
  raise WorkdirFormatError(
      f"{path}: written by {'an older' if found < WORKDIR_FORMAT else 'a newer'} version "
      f"of coughjax ({wrote}, workdir format {found}); this one reads workdir format "
      f"{WORKDIR_FORMAT} only (parameter layouts and random keys differ between formats), "
      "so it cannot resume or reuse this checkpoint. Start afresh with a new --workdir, "
      f"or finish and use this workdir with {wrote}.")


def _check_finite(path: pathlib.Path, step: int, params) -> None:
  """Raises NonFiniteCheckpointError if a floating-point parameter is NaN or inf."""
  bad = {}
  for key, x in jax.tree_util.tree_leaves_with_path(params):
    x = np.asarray(x)
    if jnp.issubdtype(x.dtype, jnp.inexact):  # bfloat16 too
      n = int(x.size - np.count_nonzero(np.isfinite(x)))
      if n:
        bad[jax.tree_util.keystr(key)] = n
  if bad:
    names = ", ".join(f"{k} ({n})" for k, n in list(bad.items())[:3])
    raise NonFiniteCheckpointError(
        f"{path}: the checkpoint of step {step} holds {sum(bad.values())} non-finite "
        f"parameter values (NaN/inf) in {len(bad)} arrays: {names}"
        f"{', ...' if len(bad) > 3 else ''}; refused. Move it out of {path.parent} to "
        "fall back on an older checkpoint, or start afresh with a new --workdir.")


def _leaf_shapes(tree) -> list[tuple[int, ...]]:
  """Sorted shapes of every leaf (a Python scalar has shape ()): comparable between a
  state and Orbax's metadata of it, whose pytree types differ."""
  return sorted(tuple(np.shape(x) if not hasattr(x, "shape") else x.shape)
                for x in jax.tree.leaves(tree))


def _abstract(x):
  """What Orbax restores a leaf of a target as: a global array onto its sharding (of
  any device count: the state is replicated), anything else to host numpy."""
  if isinstance(x, jax.Array):
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
  return np.asarray(x)


def restore_state(mgr: ocp.CheckpointManager, step: int, target):
  """(state, meta) of checkpoint `step`, the state in the structure of `target` (a
  TrainState): global arrays onto their shardings, host arrays to the host.

  Raises:
    WorkdirFormatError: the checkpoint has another workdir format.
    ValueError: the checkpoint holds another model's state (a config mismatch).
    CorruptCheckpointError: its metadata or data files cannot be read.
    NonFiniteCheckpointError: its parameters hold NaN or inf.
  """
  path = pathlib.Path(mgr.directory) / str(step)
  with _reading(path, "unreadable metadata"):
    saved = mgr.item_metadata(step)["state"]
    meta = mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
  if saved is None or not isinstance(meta, dict):
    raise CorruptCheckpointError(f"{path}: no state metadata or meta")
  _check_format(path, meta)
  want, got = _leaf_shapes(target), _leaf_shapes(saved)
  if want != got:
    missing = sorted(set(want) - set(got))[:5]
    extra = sorted(set(got) - set(want))[:5]
    raise ValueError(
        f"{path}: checkpoint does not fit this config's model (a run of another "
        f"config in the same workdir? use a new --workdir): {len(got)} arrays saved, "
        f"{len(want)} expected; shapes expected but not saved {missing}, saved but not "
        f"expected {extra}")
  with _reading(path, "cannot be read back"):
    state = mgr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(jax.tree.map(_abstract, target)))).state
  _check_finite(path, step, state.params)
  return state, meta


def restore_params(directory: str | os.PathLike) -> tuple[dict, int]:
  """(params as nested dicts of numpy arrays, step) of the latest checkpoint in
  `directory`, without needing the model (or the devices) that wrote them.

  Raises:
    FileNotFoundError: `directory` holds no checkpoint.
    WorkdirFormatError, CorruptCheckpointError, NonFiniteCheckpointError: as
      `restore_state`.
  """
  mgr = manager(pathlib.Path(directory))
  try:
    step = mgr.latest_step()
    if step is None:
      raise FileNotFoundError(f"{directory}: no checkpoint found")
    path = pathlib.Path(mgr.directory) / str(step)
    with _reading(path, "cannot be read back"):
      # Host arrays of the saved shapes: without a target, Orbax would rebuild the
      # saved sharding, on devices this process may not have.
      host = jax.tree.map(lambda m: np.empty(m.shape, m.dtype),
                          mgr.item_metadata(step)["state"])
      out = mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(host),
                                                      meta=ocp.args.JsonRestore()))
    _check_format(path, out.meta)
    _check_finite(path, step, out.state["params"])
    return out.state["params"], step
  finally:
    mgr.close()


def read_metrics(workdir: str | os.PathLike) -> list[dict]:
  """The records of a workdir's metrics.jsonl, in order (`coughjax.train.metrics`
  writes them: `step`, `epoch`, `split` and the metrics)."""
  path = pathlib.Path(workdir) / METRICS_FILE
  return [json.loads(l) for l in path.read_text().splitlines() if l.strip()]
