"""The trainer loop shared by every task: epochs, logging, checkpoints, resume.

A task (contrastive pre-training, downstream classification) supplies its state,
its pmapped step, its batches and its validation; `fit` does the rest:

* absl progress lines (step, loss, lr, steps/s, ETA) and one JSON line per log step
  and per validation in `workdir/metrics.jsonl`;
* the validation loss feeds ReduceLROnPlateau once per epoch; the monitored metric
  keeps the best checkpoint (`workdir/best`) and drives optional early stopping;
* Orbax checkpoints in `workdir/checkpoints` (last k), every `checkpoint_every_steps`
  and at each epoch end, so rerunning the same command resumes where it stopped and
  reaches the same parameters as an uninterrupted run (batches and random keys are
  functions of (seed, epoch, step), never of wall-clock or history);
* a non-finite loss stops training with the step number; the checkpoints already
  written are left as they are.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import time
from typing import Any, Callable, Iterator, Optional

from absl import logging
from flax.training import train_state
import jax
import numpy as np
import orbax.checkpoint as ocp

from coughjax.data import pipeline
from coughjax.train import optim


class TrainState(train_state.TrainState):
  """Flax TrainState plus the ReduceLROnPlateau state (checkpointed with it)."""
  plateau: Any = None


@dataclasses.dataclass
class Task:
  """What `fit` needs from a task.

  Attributes:
    name: for logs.
    init_state: rng -> (unreplicated) TrainState.
    train_step: pmapped (state, batch, rng) -> (state, metrics); metrics are
      device-averaged scalars including "loss".
    batches: (epoch, start_step) -> iterator of device-layout batches.
    steps_per_epoch: batches per epoch.
    evaluate: replicated state -> validation metrics, including "loss".
    monitor: validation metric choosing the best checkpoint (and early stopping).
    monitor_mode: "min" or "max".
  """
  name: str
  init_state: Callable[[jax.Array], TrainState]
  train_step: Callable[..., tuple[TrainState, dict[str, jax.Array]]]
  batches: Callable[[int, int], Iterator[Any]]
  steps_per_epoch: int
  evaluate: Callable[[TrainState], dict[str, float]]
  monitor: str = "loss"
  monitor_mode: str = "min"


AXIS = "batch"  # the pmap axis of every step


def replicate(tree, devices=None):
  """One copy of `tree` per local device, laid out exactly as a pmap over AXIS lays
  out its outputs, so that feeding outputs back does not recompile the step.

  Leaves go through host numpy first: strongly typed, so a weakly typed scalar (a
  fresh step counter, say) cannot change the step's signature either.
  """
  devices = jax.local_devices() if devices is None else devices
  sharding = jax.sharding.NamedSharding(jax.sharding.Mesh(np.array(devices), (AXIS,)),
                                        jax.sharding.PartitionSpec(AXIS))

  def put(x):
    x = np.asarray(jax.device_get(x))
    return jax.device_put(np.broadcast_to(x, (len(devices),) + x.shape), sharding)

  return jax.tree.map(put, tree)


def unreplicate(tree):
  return jax.tree.map(lambda x: x[0], tree)


def _better(mode: str, new: float, old: Optional[float]) -> bool:
  if old is None:
    return True
  return new < old if mode == "min" else new > old


def _eta(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class MetricsWriter:
  """Appends JSON lines to workdir/metrics.jsonl (from process 0 only)."""

  def __init__(self, workdir: pathlib.Path):
    self.path = workdir / "metrics.jsonl"
    self.enabled = jax.process_index() == 0

  def truncate_after(self, step: int) -> None:
    """Drops lines logged after `step` (by a run that died before checkpointing)."""
    if self.enabled and self.path.exists():
      lines = [l for l in self.path.read_text().splitlines()
               if l.strip() and json.loads(l)["step"] <= step]
      self.path.write_text("".join(l + "\n" for l in lines))

  def write(self, **record) -> None:
    if self.enabled:
      with open(self.path, "a") as f:
        f.write(json.dumps(record) + "\n")


def read_metrics(workdir: str | os.PathLike) -> list[dict]:
  path = pathlib.Path(workdir) / "metrics.jsonl"
  return [json.loads(l) for l in path.read_text().splitlines() if l.strip()]


def save_config(config, workdir: pathlib.Path) -> None:
  if jax.process_index() == 0:
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2) + "\n")


def _checkpoint_manager(directory: pathlib.Path, keep: int) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      directory.absolute(), item_names=("state", "meta"),
      options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))


def _save(mgr: ocp.CheckpointManager, step: int, state: TrainState, meta: dict) -> None:
  mgr.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(jax.device_get(state)), meta=ocp.args.JsonSave(meta)),
           force=True)


def _restore_state(mgr, step: int, target: TrainState) -> tuple[TrainState, dict]:
  try:
    out = mgr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(jax.device_get(target)),
        meta=ocp.args.JsonRestore()))
  except ValueError as e:
    raise ValueError(f"{mgr.directory}: checkpoint {step} does not fit this config's "
                     "model (a run of another config in the same workdir? use a new "
                     f"--workdir):\n{e}") from e
  return out.state, out.meta


def restore(directory: str | os.PathLike, target: TrainState,
            step: Optional[int] = None) -> tuple[TrainState, dict]:
  """Restores (state, meta) from a checkpoint folder (latest step by default)."""
  mgr = _checkpoint_manager(pathlib.Path(directory), keep=1)
  step = mgr.latest_step() if step is None else step
  try:
    if step is None:
      raise FileNotFoundError(f"{directory}: no checkpoint found")
    return _restore_state(mgr, step, target)
  finally:
    mgr.close()


def restore_params(directory: str | os.PathLike) -> tuple[dict, int]:
  """(params as nested dicts of numpy arrays, step) of the latest checkpoint in
  `directory`, without needing the model that wrote them."""
  mgr = _checkpoint_manager(pathlib.Path(directory), keep=1)
  step = mgr.latest_step()
  if step is None:
    raise FileNotFoundError(f"{directory}: no checkpoint found")
  out = mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(),
                                                  meta=ocp.args.JsonRestore()))
  mgr.close()
  return out.state["params"], step


def fit(task: Task, config, workdir: str | os.PathLike) -> TrainState:
  """Trains `task` per `config` in `workdir`, resuming from its checkpoints."""
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  save_config(config, workdir)
  writer = MetricsWriter(workdir)
  init_rng, train_rng = jax.random.split(jax.random.PRNGKey(config.seed))
  state = task.init_state(init_rng)
  plateau = optim.make_plateau(config.optim)
  if state.plateau is None:
    state = state.replace(plateau=plateau.init({}))
  base_lr = config.optim.learning_rate

  mgr = _checkpoint_manager(workdir / "checkpoints", config.keep_checkpoints)
  best_mgr = _checkpoint_manager(workdir / "best", 1)
  meta = {"epochs_done": 0, "best": None, "bad_epochs": 0, "finished": False}
  if mgr.latest_step() is not None:
    step0 = mgr.latest_step()
    state, meta = _restore_state(mgr, step0, state)
    writer.truncate_after(step0)
    logging.info("%s: resumed from %s at step %d (epoch %d)", task.name, mgr.directory,
                 step0, meta["epochs_done"])
  if meta["finished"]:
    logging.info("%s: already finished in %s; nothing to do", task.name, workdir)
    return state

  spe = task.steps_per_epoch
  total = config.num_epochs * spe
  step = int(state.step)
  p_state = replicate(state)
  t_last, s_last, t_start, s_start = time.time(), step, time.time(), step
  sums: dict[str, float] = {}
  for epoch in range(meta["epochs_done"], config.num_epochs):
    start_step = step - epoch * spe
    for batch in pipeline.prefetch(task.batches(epoch, start_step)):
      rng = jax.random.fold_in(train_rng, step)
      p_state, metrics = task.train_step(p_state, batch, replicate(rng))
      step += 1
      metrics = {k: float(v[0]) for k, v in metrics.items()}
      if not math.isfinite(metrics["loss"]):
        raise FloatingPointError(
            f"{task.name}: loss is {metrics['loss']} at step {step} (epoch {epoch}); "
            f"stopped. Last good checkpoint: step {mgr.latest_step()} in {mgr.directory}")
      for k, v in metrics.items():
        sums[k] = sums.get(k, 0.0) + v
      if step % config.log_every_steps == 0 or step == total:
        now = time.time()
        n = step - s_last
        rate = n / max(now - t_last, 1e-9)
        avg = {k: v / n for k, v in sums.items()}
        lr = optim.learning_rate(p_state.opt_state)
        eta = (total - step) * (now - t_start) / max(step - s_start, 1)
        logging.info("%s step %d/%d (epoch %d): %s, lr %.2e, %.2f steps/s, ETA %s",
                     task.name, step, total, epoch,
                     ", ".join(f"{k} {v:.4f}" for k, v in avg.items()), lr, rate, _eta(eta))
        writer.write(step=step, epoch=epoch, split="train", lr=lr, steps_per_sec=rate,
                     **avg)
        sums, t_last, s_last = {}, now, step
      if step % config.checkpoint_every_steps == 0 and step % spe:
        _save(mgr, step, unreplicate(p_state), meta)

    # End of epoch: validate, adjust the learning rate, keep the best, checkpoint.
    val = task.evaluate(p_state)
    state = unreplicate(p_state)
    plateau_state = optim.plateau_step(plateau, state.plateau, val["loss"])
    new_lr = base_lr * float(plateau_state.scale)
    p_state = p_state.replace(plateau=replicate(plateau_state))
    optim.set_learning_rate(p_state.opt_state, replicate(np.float32(new_lr)))
    score = val[task.monitor]
    improved = _better(task.monitor_mode, score, meta["best"])
    meta = dict(meta, epochs_done=epoch + 1,
                best=score if improved else meta["best"],
                bad_epochs=0 if improved else meta["bad_epochs"] + 1)
    patience = config.get("early_stopping_patience", 0)
    meta["finished"] = (epoch + 1 == config.num_epochs
                        or bool(patience and meta["bad_epochs"] >= patience))
    logging.info("%s epoch %d validation: %s%s", task.name, epoch,
                 ", ".join(f"{k} {v:.4f}" for k, v in val.items()),
                 " (best)" if improved else "")
    writer.write(step=step, epoch=epoch, split="val", lr=new_lr, best=improved, **val)
    state = unreplicate(p_state)
    if improved:
      _save(best_mgr, step, state, meta)
    _save(mgr, step, state, meta)
    if meta["finished"]:
      if epoch + 1 < config.num_epochs:
        logging.info("%s: early stopping after epoch %d (%s has not improved for %d "
                     "epochs)", task.name, epoch, task.monitor, meta["bad_epochs"])
      break
  mgr.wait_until_finished()
  best_mgr.wait_until_finished()
  mgr.close()
  best_mgr.close()
  return unreplicate(p_state)
