"""The trainer loop shared by every task: epochs, validation, resume.

A task (contrastive pre-training, downstream classification) supplies its state,
its step (a per-device program over a mesh, `coughjax.train.mesh`), its batches and
its validation; `fit` does the rest, with one room for each concern:

* `coughjax.train.metrics`: absl progress lines (step, loss, lr, steps/s, ETA) and
  one JSON line per log step and per validation in `workdir/metrics.jsonl`, with
  TensorBoard event files beside it; `metrics.jsonl` holds each (step, split) once
  however a run was stopped (a resumed run drops the lines logged after its
  checkpoint); a non-finite loss stops training with the step number, the
  checkpoints already written left as they are;
* `coughjax.train.checkpointing`: Orbax checkpoints in `workdir/checkpoints` (last
  k), every `checkpoint_every_steps` and at each epoch end, and the best one in
  `workdir/best`, so rerunning the same command resumes where it stopped and reaches
  the same parameters as an uninterrupted run (batches and random keys are functions
  of (seed, epoch, step), never of wall-clock or history); unreadable checkpoints are
  set aside for the newest intact one, and checkpoints of another format or with
  non-finite parameters refused (`coughjax.checkpoints`);
* `coughjax.train.stopping`: whether a run is finished is decided from the current
  config (epochs done, early stopping on the monitored metric, a NaN its worst
  value), so a larger `num_epochs` extends a finished run; Ctrl-C (SIGINT) or SIGTERM
  on any process stops every process after the same step: the step is checkpointed,
  checkpoints in flight are finished, and `stopping.Interrupted` says where it
  stopped (a second signal aborts at once);
* `coughjax.train.fingerprint`: a workdir holding the training of another config is
  refused before any work;
* `coughjax.train.optim`: the validation loss feeds ReduceLROnPlateau (PyTorch's
  rule) once per epoch.

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
import os
import pathlib
from typing import Any, Callable, Iterator, Optional

from absl import logging
from flax.training import train_state
import jax
import optax

from coughjax.data import pipeline
from coughjax.train import checkpointing
from coughjax.train import fingerprint
from coughjax.train import mesh as mesh_lib
from coughjax.train import metrics as metrics_lib
from coughjax.train import optim
from coughjax.train import stopping

# Restores a checkpoint folder of `fit`'s into a TrainState: the best one, say.
restore = checkpointing.restore


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
  ckpts = checkpointing.RunCheckpoints(workdir, config.keep_checkpoints)
  writer = metrics_lib.MetricsWriter(workdir)
  with stopping.StopSignal(task.mesh) as signals:
    try:
      state = _train(task, config, workdir, ckpts, signals, writer)
    finally:
      ckpts.close()
      writer.close()
    signum = signals.agreed()  # also a signal after the last step (validation, say)
  if signum:
    raise stopping.Interrupted(int(state.step), signum)
  return state


@dataclasses.dataclass
class _Run:
  """What the loop carries between epochs."""
  task: Task
  config: Any
  ckpts: checkpointing.RunCheckpoints
  signals: stopping.StopSignal
  writer: metrics_lib.MetricsWriter
  key: jax.Array  # the training key, replicated
  state: TrainState
  meta: dict  # the checkpoint's progress: epochs_done, best, bad_epochs
  lr: float = 0.0
  stop: int = 0  # the signal every process stops for (`StopSignal.agreed`)


def _train(task: Task, config, workdir: pathlib.Path,
           ckpts: checkpointing.RunCheckpoints, signals: stopping.StopSignal,
           writer: metrics_lib.MetricsWriter) -> TrainState:
  """`fit`'s resume and loop; returns the state it stopped with."""
  init_key, train_key = jax.random.split(jax.random.key(config.seed))
  state = mesh_lib.put_replicated(task.mesh, task.init_state(init_key))
  meta = {"epochs_done": 0, "best": None, "bad_epochs": 0}
  found = ckpts.resume(state)
  if found is not None:
    _, state, meta = found
    logging.info("%s: resumed from %s at step %d (epoch %d)", task.name,
                 ckpts.last.directory, int(state.step), meta["epochs_done"])
  fingerprint.record(config, workdir)  # not before: a refused workdir is left as it was
  writer.start(int(state.step))
  if stopping.is_finished(meta, config):
    logging.info("%s: already finished in %s (%d of %d epochs); nothing to do",
                 task.name, workdir, meta["epochs_done"], config.num_epochs)
    return state

  run = _Run(task, config, ckpts, signals, writer, state=state, meta=meta,
             key=mesh_lib.put_replicated(task.mesh, train_key),
             lr=optim.learning_rate(config.optim, state.plateau))
  log = metrics_lib.TrainLog(task.name, config.num_epochs * task.steps_per_epoch,
                             int(state.step), writer, ckpts.last_good)
  for epoch in range(meta["epochs_done"], config.num_epochs):
    step = _train_epoch(run, epoch, log)
    if run.stop and step % task.steps_per_epoch:
      break  # stopped inside the epoch, at a checkpointed step
    log.flush()
    _end_epoch(run, epoch, step)
    if stopping.is_finished(run.meta, config):
      if epoch + 1 < config.num_epochs:
        logging.info("%s: early stopping after epoch %d (%s has not improved for %d "
                     "epochs)", task.name, epoch, task.monitor, run.meta["bad_epochs"])
      break
    if run.stop:  # at an epoch's end: validated and checkpointed
      break
  return run.state


def _train_epoch(run: _Run, epoch: int, log: metrics_lib.TrainLog) -> int:
  """Trains `epoch` from the state's step on; returns the step it ended at. Stops
  early at a signal, checkpointing the step it stopped at unless it is the epoch's
  last (`_end_epoch` saves that)."""
  task, config = run.task, run.config
  spe = task.steps_per_epoch
  total = config.num_epochs * spe
  step = int(run.state.step)
  batches = task.batches(epoch, step - epoch * spe)
  with contextlib.closing(mesh_lib.prefetch(pipeline.prefetch(batches), task.mesh)) as ahead:
    for batch in ahead:
      run.state, step_metrics = task.train_step(run.state, batch, run.key)
      step += 1
      log.add(step, step_metrics)
      if step % config.log_every_steps == 0 or step == total:
        log.log(step, epoch, run.lr)
      run.stop = run.signals.agreed()
      inside = run.stop and step % spe != 0
      if step % config.checkpoint_every_steps == 0 and step % spe or inside:
        log.flush()  # never checkpoint past a non-finite loss
        run.ckpts.save(step, run.state, run.meta)
      if inside:
        break
  return step


def _end_epoch(run: _Run, epoch: int, step: int) -> None:
  """Validates, adjusts the learning rate, keeps the best and checkpoints `step`,
  the epoch's last. The validation holds the same numbers on every process, so all
  decide alike."""
  task, state = run.task, run.state
  val = task.evaluate(state)
  plateau = optim.plateau_update(run.config.optim, jax.device_get(state.plateau),
                                 val["loss"])
  run.state = state = state.replace(plateau=mesh_lib.put_replicated(task.mesh, plateau))
  run.lr = optim.learning_rate(run.config.optim, state.plateau)
  run.meta, improved = stopping.after_epoch(run.meta, epoch, val[task.monitor],
                                            task.monitor_mode)
  logging.info("%s epoch %d validation: %s%s", task.name, epoch,
               ", ".join(f"{k} {v:.4f}" for k, v in val.items()),
               " (best)" if improved else "")
  run.writer.write(step=step, epoch=epoch, split="val", lr=run.lr, best=improved, **val)
  if improved:
    run.ckpts.save(step, state, run.meta, best=True)
  run.ckpts.save(step, state, run.meta)
