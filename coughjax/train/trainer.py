"""The trainer loop shared by every task: epochs, logging, checkpoints, resume.

A task (contrastive pre-training, downstream classification) supplies its state,
its step (a per-device program over a mesh, `coughjax.train.mesh`), its batches and
its validation; `fit` does the rest:

* absl progress lines (step, loss, lr, steps/s, ETA) and one JSON line per log step
  and per validation in `workdir/metrics.jsonl`, with TensorBoard event files
  beside it (`coughjax.train.metrics`);
* the validation loss feeds ReduceLROnPlateau (PyTorch's rule, `optim`) once per
  epoch; the monitored metric keeps the best checkpoint (`workdir/best`) and drives
  optional early stopping (a NaN counts as its worst value);
* Orbax checkpoints in `workdir/checkpoints` (last k), every `checkpoint_every_steps`
  and at each epoch end, saved from the devices as they are (the state is replicated
  over the mesh, so a checkpoint restores onto any number of devices), so rerunning
  the same command resumes where it stopped and
  reaches the same parameters as an uninterrupted run (batches and random keys are
  functions of (seed, epoch, step), never of wall-clock or history). Whether a run
  is finished is decided from the current config (epochs done, early stopping), so
  a larger `num_epochs` extends a finished run; a workdir holding the training of
  another config is refused before any work (`coughjax.train.fingerprint`); a
  checkpoint that cannot be read for a reason of its own (missing or damaged files,
  bad data) is set aside, with a warning, for the newest intact one (nothing is
  deleted; with several processes, process 0 decides and every process resumes
  from its step), while a transient error (EIO, a full disk, a permission, Ctrl-C)
  is raised with every checkpoint left in place;
* `metrics.jsonl` holds each (step, split) once however a run was stopped: a
  resumed run drops the lines logged after its checkpoint;
* a non-finite loss stops training with the step number; the checkpoints already
  written are left as they are. A checkpoint with non-finite parameters, or one
  written by a coughjax with another `WORKDIR_FORMAT`, is refused with the reason;
* Ctrl-C (SIGINT) or SIGTERM on any process stops every process after the same
  step (`coughjax.train.stopping`): the step is checkpointed, checkpoints in flight
  are finished, and `stopping.Interrupted` says where it stopped (a second signal
  aborts at once).

The state and batches are global arrays: every process runs this same loop, and
validation sees every prediction, so every process takes the same decisions (best
checkpoint, learning rate, early stopping); files other than checkpoints are written
by process 0 alone. The loop keeps the host off the critical path: the step folds
the step number into the run's key itself, batches are put on the devices ahead of
use, and metrics stay on the devices until a log step (or a checkpoint) reads them
all at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import pathlib
import time
from typing import Any, Callable, Iterator, Optional

from absl import logging
from flax.training import train_state
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

import coughjax
from coughjax.data import pipeline
from coughjax.train import fingerprint
from coughjax.train import mesh as mesh_lib
from coughjax.train import metrics as metrics_lib
from coughjax.train import optim
from coughjax.train import stopping

MetricsWriter = metrics_lib.MetricsWriter  # what callers of the trainer used to find here
read_metrics = metrics_lib.read_metrics

# What a workdir's checkpoints hold: bump it when a change makes older checkpoints
# unfit to resume or reuse (parameter layouts, random keys, the checkpoint's items).
# Every checkpoint's meta records it (with the coughjax version); a checkpoint
# without it is from before it was recorded: format 1.
WORKDIR_FORMAT = 2


class TrainState(train_state.TrainState):
  """Flax TrainState plus the ReduceLROnPlateau state (checkpointed with it).

  `apply_gradients` scales the optimiser's updates by the plateau scale, so the
  learning-rate schedule is applied inside the pure train step.
  """
  plateau: optim.PlateauState = None

  @classmethod
  def create(cls, *, plateau: Optional[optim.PlateauState] = None, **kwargs):
    return super().create(plateau=optim.plateau_init() if plateau is None else plateau,
                          **kwargs)

  def apply_gradients(self, *, grads, **kwargs):
    updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
    updates = optim.scale_updates(updates, self.plateau.scale)
    return self.replace(step=self.step + 1, params=optax.apply_updates(self.params, updates),
                        opt_state=opt_state, **kwargs)


@dataclasses.dataclass
class Task:
  """What `fit` needs from a task.

  Attributes:
    name: for logs.
    init_state: key -> TrainState (on the host or one device; `fit` replicates it
      over `mesh`).
    train_step: (state, batch, key) -> (state, metrics), over `mesh`: state and key
      replicated, the batch global arrays split along their first axis. `key` is the
      run's training key, the same at every step: the step folds `state.step` into
      it. Metrics are replicated scalars (device averages) including "loss".
    batches: (epoch, start_step) -> iterator of this process's rows of each batch
      (numpy trees, `mesh.process_rows`).
    steps_per_epoch: batches per epoch.
    evaluate: state (replicated) -> validation metrics, including "loss"; the same
      on every process.
    mesh: the devices the step runs on (default: all of every process).
    monitor: validation metric choosing the best checkpoint (and early stopping).
    monitor_mode: "min" or "max".
  """
  name: str
  init_state: Callable[[jax.Array], TrainState]
  train_step: Callable[..., tuple[TrainState, dict[str, jax.Array]]]
  batches: Callable[[int, int], Iterator[Any]]
  steps_per_epoch: int
  evaluate: Callable[[TrainState], dict[str, float]]
  mesh: jax.sharding.Mesh = dataclasses.field(default_factory=mesh_lib.data_mesh)
  monitor: str = "loss"
  monitor_mode: str = "min"


def _better(mode: str, new: float, old: Optional[float]) -> bool:
  """Whether monitor value `new` beats `old` (None: no value yet). NaN (an AUC of a
  one-class split, say) is the worst value: never better, beaten by any number."""
  if math.isnan(new):
    return False
  if old is None or math.isnan(old):
    return True
  return new < old if mode == "min" else new > old


def _eta(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _checkpoint_manager(directory: pathlib.Path, keep: int = 1, *, write: bool = False,
                        processes: Optional[set[int]] = None) -> ocp.CheckpointManager:
  """Orbax manager of `directory`, over every process or only `processes`.

  A manager that may `write` creates the folder and removes the temporary folders of
  saves that never finished (a killed run); a reader changes nothing, so reading a
  workdir while it trains is safe. The cross-process barriers are named after the
  folder: `fit` runs two managers (checkpoints/ and best/) that save the same step,
  and Orbax's default names would collide.
  """
  directory = directory.absolute()
  barrier_prefix = str(directory) if processes is None else f"{directory}@{sorted(processes)}"
  return ocp.CheckpointManager(
      directory,
      item_handlers={"state": ocp.StandardCheckpointHandler(),
                     "meta": ocp.JsonCheckpointHandler()},
      options=ocp.CheckpointManagerOptions(
          max_to_keep=keep, create=write, cleanup_tmp_directories=write, read_only=not write,
          multiprocessing_options=ocp.options.MultiprocessingOptions(
              active_processes=processes, barrier_sync_key_prefix=barrier_prefix)))


def _save(mgr: ocp.CheckpointManager, step: int, state: TrainState, meta: dict) -> None:
  if step in mgr.all_steps():
    # Written by a run that stopped before its next resumable checkpoint (a "best"
    # one, say); the resumed run recomputes it with the same batches and keys.
    mgr.delete(step)
  mgr.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      meta=ocp.args.JsonSave(dict(meta, format=WORKDIR_FORMAT,
                                  coughjax=coughjax.__version__))), force=True)


class CorruptCheckpointError(ValueError):
  """A checkpoint whose files cannot be read back (not a config mismatch)."""


class WorkdirFormatError(ValueError):
  """A checkpoint written by a coughjax of another `WORKDIR_FORMAT` (older or newer)."""


class NonFiniteCheckpointError(ValueError):
  """A checkpoint whose parameters hold NaN or infinity."""


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


def _is_transient(error: BaseException) -> bool:
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
  caller may set the checkpoint aside; a transient one (`_is_transient`, Ctrl-C) is
  raised as it is, and the checkpoint left where it is."""
  try:
    yield
  except Exception as e:  # pylint: disable=broad-except
    if _is_transient(e):
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
    if jnp.issubdtype(x.dtype, jnp.inexact):
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


def _restore_state(mgr, step: int, target: TrainState) -> tuple[TrainState, dict]:
  """Restores checkpoint `step` into the structure of `target`: global arrays onto
  their shardings, host arrays to the host (`_abstract`).

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


def _find_newest_intact(mgr, target: TrainState, set_aside: Optional[pathlib.Path]
                        ) -> Optional[tuple[int, TrainState, dict]]:
  """`_restore_newest_intact` as one process sees the checkpoints."""
  skipped = []
  for step in sorted(mgr.all_steps(), reverse=True):
    try:
      return (step, *_restore_state(mgr, step, target))
    except CorruptCheckpointError as e:
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
    raise CorruptCheckpointError(
        f"{mgr.directory}: no checkpoint can be read back (steps {sorted(skipped)}"
        + (f", moved to {set_aside}" if set_aside else "") + "); see the warnings. "
        "Start afresh with a new --workdir.")
  return None


_NO_CHECKPOINT, _FAILED = -1, -2  # what process 0 broadcasts besides a step


def _restore_newest_intact(mgr, target: TrainState,
                           set_aside: Optional[pathlib.Path] = None
                           ) -> Optional[tuple[int, TrainState, dict]]:
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
    own = _checkpoint_manager(pathlib.Path(mgr.directory), processes={0})
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
  return (step, *_restore_state(mgr, step, target))


def restore(directory: str | os.PathLike, target: TrainState,
            step: Optional[int] = None) -> tuple[TrainState, dict]:
  """Restores (state, meta) from a checkpoint folder (the newest intact step by
  default)."""
  mgr = _checkpoint_manager(pathlib.Path(directory))
  try:
    if step is not None:
      return _restore_state(mgr, step, target)
    found = _restore_newest_intact(mgr, target)
    if found is None:
      raise FileNotFoundError(f"{directory}: no checkpoint found")
    return found[1:]
  finally:
    mgr.close()


def restore_params(directory: str | os.PathLike) -> tuple[dict, int]:
  """(params as nested dicts of numpy arrays, step) of the latest checkpoint in
  `directory`, without needing the model (or the devices) that wrote them."""
  mgr = _checkpoint_manager(pathlib.Path(directory))
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


def is_finished(meta: dict, config) -> bool:
  """Whether a run with this progress is done under the *current* config: all of
  `num_epochs` trained, or early stopping's patience used up."""
  patience = config.get("early_stopping_patience", 0)
  return (meta["epochs_done"] >= config.num_epochs
          or bool(patience and meta["bad_epochs"] >= patience))


class _Metrics:
  """Per-step metrics kept on the devices until `flush` reads them all at once."""

  def __init__(self, task_name: str):
    self.task_name = task_name
    self.pending: list[tuple[int, dict[str, jax.Array]]] = []
    self.sums: dict[str, float] = {}
    self.count = 0

  def add(self, step: int, metrics: dict[str, jax.Array]) -> None:
    self.pending.append((step, metrics))

  def flush(self, last_good_checkpoint) -> None:
    """Reads the pending metrics; raises at the first step with a non-finite loss."""
    for step, metrics in jax.device_get(self.pending):
      values = {k: float(v) for k, v in metrics.items()}
      if not math.isfinite(values["loss"]):
        raise FloatingPointError(
            f"{self.task_name}: loss is {values['loss']} at step {step}; stopped. Last "
            f"good checkpoint: {last_good_checkpoint()}")
      for k, v in values.items():
        self.sums[k] = self.sums.get(k, 0.0) + v
      self.count += 1
    self.pending = []

  def averages(self) -> dict[str, float]:
    avg = {k: v / self.count for k, v in self.sums.items()}
    self.sums, self.count = {}, 0
    return avg


def fit(task: Task, config, workdir: str | os.PathLike) -> TrainState:
  """Trains `task` per `config` in `workdir`, resuming from its checkpoints.

  Returns:
    The state it stopped with, replicated over `task.mesh`.

  Raises:
    stopping.Interrupted: SIGINT or SIGTERM (on any process) stopped training at a
      checkpointed step.
    FloatingPointError: a non-finite loss.
    fingerprint.WorkdirConfigError: `workdir` holds the training of another config.
  """
  workdir = pathlib.Path(workdir)
  fingerprint.check(config, workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  mgr = _checkpoint_manager(workdir / "checkpoints", config.keep_checkpoints, write=True)
  best_mgr = _checkpoint_manager(workdir / "best", write=True)
  writer = MetricsWriter(workdir)
  with stopping.StopSignal(task.mesh) as signals:
    try:
      state = _train(task, config, workdir, mgr, best_mgr, signals, writer)
    finally:
      # Lets the saves in flight finish: no temporary checkpoint folder is left.
      mgr.close()
      best_mgr.close()
      writer.close()
    signum = signals.agreed()  # also a signal after the last step (validation, say)
  if signum:
    raise stopping.Interrupted(int(state.step), signum)
  return state


def _train(task: Task, config, workdir: pathlib.Path, mgr: ocp.CheckpointManager,
           best_mgr: ocp.CheckpointManager, signals: stopping.StopSignal,
           writer: MetricsWriter) -> TrainState:
  """`fit`'s resume and loop; returns the state it stopped with."""
  mesh = task.mesh
  init_key, train_key = jax.random.split(jax.random.key(config.seed))
  state = mesh_lib.put_replicated(mesh, task.init_state(init_key))
  meta = {"epochs_done": 0, "best": None, "bad_epochs": 0}
  found = _restore_newest_intact(mgr, state, set_aside=workdir / "corrupted_checkpoints")
  if found is not None:
    _, state, meta = found
    logging.info("%s: resumed from %s at step %d (epoch %d)", task.name, mgr.directory,
                 int(state.step), meta["epochs_done"])
  fingerprint.record(config, workdir)  # not before: a refused workdir is left as it was
  writer.start(int(state.step))
  if is_finished(meta, config):
    logging.info("%s: already finished in %s (%d of %d epochs); nothing to do",
                 task.name, workdir, meta["epochs_done"], config.num_epochs)
    return state

  spe = task.steps_per_epoch
  total = config.num_epochs * spe
  step = int(state.step)
  lr = optim.learning_rate(config.optim, state.plateau)
  key = mesh_lib.put_replicated(mesh, train_key)
  metrics = _Metrics(task.name)

  def last_good():
    return f"step {mgr.latest_step()} in {mgr.directory}"

  t_last, s_last, t_start, s_start = time.time(), step, time.time(), step
  stop = 0  # the signal every process stops for (`StopSignal.agreed`)
  for epoch in range(meta["epochs_done"], config.num_epochs):
    if stop:  # before any step of this epoch: nothing new to save
      break
    batches = task.batches(epoch, step - epoch * spe)
    with contextlib.closing(mesh_lib.prefetch(pipeline.prefetch(batches), mesh)) as ahead:
      for batch in ahead:
        state, step_metrics = task.train_step(state, batch, key)
        step += 1
        metrics.add(step, step_metrics)
        if step % config.log_every_steps == 0 or step == total:
          metrics.flush(last_good)
          now = time.time()
          rate = (step - s_last) / max(now - t_last, 1e-9)
          avg = metrics.averages()
          eta = (total - step) * (now - t_start) / max(step - s_start, 1)
          logging.info("%s step %d/%d (epoch %d): %s, lr %.2e, %.2f steps/s, ETA %s",
                       task.name, step, total, epoch,
                       ", ".join(f"{k} {v:.4f}" for k, v in avg.items()), lr, rate,
                       _eta(eta))
          writer.write(step=step, epoch=epoch, split="train", lr=lr, steps_per_sec=rate,
                       **avg)
          t_last, s_last = now, step
        stop = signals.agreed()
        # An epoch's last step goes on to validation and its checkpoint.
        inside = stop and step % spe != 0
        if step % config.checkpoint_every_steps == 0 and step % spe or inside:
          metrics.flush(last_good)  # never checkpoint past a non-finite loss
          _save(mgr, step, state, meta)
        if inside:
          break
    if stop and step % spe:  # stopped inside the epoch
      break
    metrics.flush(last_good)

    # End of epoch: validate, adjust the learning rate, keep the best, checkpoint.
    # `val` holds the same numbers on every process, so all decide alike.
    val = task.evaluate(state)
    plateau = optim.plateau_update(config.optim, jax.device_get(state.plateau), val["loss"])
    state = state.replace(plateau=mesh_lib.put_replicated(mesh, plateau))
    lr = optim.learning_rate(config.optim, state.plateau)
    score = val[task.monitor]
    improved = _better(task.monitor_mode, score, meta["best"])
    meta = dict(meta, epochs_done=epoch + 1,
                best=score if improved else meta["best"],
                bad_epochs=0 if improved else meta["bad_epochs"] + 1)
    logging.info("%s epoch %d validation: %s%s", task.name, epoch,
                 ", ".join(f"{k} {v:.4f}" for k, v in val.items()),
                 " (best)" if improved else "")
    writer.write(step=step, epoch=epoch, split="val", lr=lr, best=improved, **val)
    if improved:
      _save(best_mgr, step, state, meta)
    _save(mgr, step, state, meta)
    if is_finished(meta, config):
      if epoch + 1 < config.num_epochs:
        logging.info("%s: early stopping after epoch %d (%s has not improved for %d "
                     "epochs)", task.name, epoch, task.monitor, meta["bad_epochs"])
      break
  return state
