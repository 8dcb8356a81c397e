"""Many downstream runs as one program: their states stacked along a leading runs axis.

The evaluation protocol's unit of work is a row's runs (its folds x repeats x
seeds), each a small classifier (batch 128, d = 64) that alone leaves an
accelerator mostly idle. Here R runs train as one jitted program: the one-run
step of `coughjax.train.downstream` (`step_bodies`) over the runs, its
parameters, optimiser and plateau state stacked, over a ("runs", "data") mesh
(`mesh.runs_mesh`: runs split over "runs" when there are devices to spare, each
run's batch over "data"). Each run keeps what it has alone:

* its own data: its own train / validation / test stores (views of one pack) and
  its own `pipeline.SupervisedBatches` with its seed, so batch k of its epoch e is
  the one it trains on alone; its own init and training key (from its seed), its
  step counter folded into the key, clip ids the rows of its batch;
* its own clock: every run takes its next step at every tick of the program. A
  run whose epoch ends (runs of different training sets have different steps per
  epoch) is validated at that tick and goes on with its next epoch at the next
  one; its plateau, best checkpoint and early stopping are its own. A run that is
  done (its epochs, or its patience, used up) keeps its state: the step's update
  is masked, not skipped, so the program stays one program;
* its outputs in the layout `downstream.train_one` writes: `<run>/best` (the best
  checkpoint, as `coughjax.predict` / `embed` / `export` read it), `<run>/metrics.jsonl`
  (and event files), `<run>/config.json`, `<run>/test_predictions.csv`.

How the step goes over the runs is `config.runs_impl`: "vmap" batches them (one
kernel launch for every run's matmul, the point on an accelerator), "map" steps them
one after another inside the program (`jax.lax.map`, whose body is the one-run step).
"auto" is map on CPU, where batching measured no faster on 2 cores
(benchmarks/README.md), except for VGGish (its convolutions' gradients are 4x slower
inside the loop), and vmap on GPU/TPU (`models.platform`, `resolve_runs_impl`). With
map each run's predictions equal training it alone to the bit; with vmap up to float
rounding (the batched matmuls round unlike one run's, and Adam's first steps can
enlarge that to ~1e-4 on the test probabilities: docs/scaling.md).

The stacked state is checkpointed with Orbax (`<workdir>/checkpoints`, every
`checkpoint_every_steps` ticks and at every tick where an epoch ended) with each
run's progress, and rerunning resumes every run where it stopped, to the same
numbers; Ctrl-C or SIGTERM stop every process at one tick, checkpointed
(`coughjax.train.stopping`). Checkpoints restore onto any mesh, and a checkpoint of
other runs (a larger `num_runs`, say) gives back the runs it holds while the others
start afresh.
"""

from __future__ import annotations

import contextlib
import dataclasses
import pathlib
import time
from typing import Any, Iterator, Optional, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from coughjax import checkpoints
from coughjax import infer
from coughjax.data import pipeline
from coughjax.models import platform
from coughjax.models import registry
from coughjax.train import checkpointing
from coughjax.train import downstream
from coughjax.train import fingerprint
from coughjax.train import mesh as mesh_lib
from coughjax.train import metrics as metrics_lib
from coughjax.train import optim
from coughjax.train import stopping

AXIS, RUNS = mesh_lib.AXIS, mesh_lib.RUNS
P = jax.sharding.PartitionSpec
CHECKPOINTS = "checkpoints"
# Config fields every run of one program shares (the steps, the loop's schedule).
# Fields a run may have of its own: its seeds and its data (split, fold and the
# pre-training checkpoints its encoders start from).
_OWN = ("seed", "data", "encoder_a.checkpoint", "encoder_b.checkpoint")


@dataclasses.dataclass(frozen=True)
class Run:
  """One run of a program.

  Attributes:
    index: its `run` in the results (`downstream.run`'s seed offset).
    config: its own config (`downstream._run_config`, a protocol unit's).
    workdir: its outputs (best/, metrics.jsonl, test_predictions.csv).
    stores: its train, val and test `ClipStore`s (`downstream.load_run_splits`).
    tag: tells apart runs whose workdirs share a name (run_0 of each of a
      protocol row's folds: the fold's folder name).
  """
  index: int
  config: ml_collections.ConfigDict
  workdir: pathlib.Path
  stores: dict[str, pipeline.ClipStore]
  tag: str = ""

  @property
  def name(self) -> str:
    """How logs and the stacked checkpoint name it (unique within a program)."""
    return "/".join(p for p in (self.config.variant, self.tag, self.workdir.name) if p)


# `config.runs_impl`: f applied to each run's slice of the stacked arguments, batched
# (vmap) or one run after another (lax.map, whose body is the one-run step itself).
_OVER_RUNS = {
    "vmap": lambda f, *args: jax.vmap(f)(*args),
    "map": lambda f, *args: jax.lax.map(lambda a: f(*a), args),
}


def resolve_runs_impl(value: str, encoders: Sequence[Any] = ()) -> str:
  """`config.runs_impl` -> "map" or "vmap". "auto" is the encoders'
  `platform.settings(...).runs`: vmap where any of them asks for it (every encoder on
  GPU/TPU; VGGish on CPU, whose convolutions XLA:CPU differentiates ~4x more slowly
  inside lax.map's loop), else map."""
  if not platform.is_auto(value):
    return value
  asked = {platform.settings(registry.registered_name(e)).runs for e in encoders}
  return "vmap" if "vmap" in asked else "map"


def make_steps(model, config, mesh: jax.sharding.Mesh):
  """(train_step, predict_step): `downstream.step_bodies` over the runs (batched or
  one after another: `config.runs_impl`), jitted over `mesh` (`mesh.runs_mesh`).

  train_step(state, {"x": [R, B, T, mel], "y": [R, B]}, keys [R], active [R] bool)
  -> (state, metrics {name: [R]}) donates the state; a run not `active` keeps its
  state. predict_step(state, x [R, B, T, mel], rec_keys [R, B, 2], clip_index
  [R, B]) -> [R, B] probabilities. State and keys split over "runs", batches over
  "runs" and "data"; what they return to the host is replicated.
  """
  train_body, predict_body = downstream.step_bodies(model, config)
  over_runs = _OVER_RUNS[resolve_runs_impl(config.runs_impl, model.encoders)]

  def train_step(state, batch, key, active):
    def one(state, batch, key, active):
      new, metrics = train_body(state, batch, key)
      return jax.tree.map(lambda n, o: jnp.where(active, n, o), new, state), metrics

    state, metrics = over_runs(one, state, batch, key, active)
    return state, jax.lax.all_gather(metrics, RUNS, tiled=True)

  def predict_step(state, x, rec_keys, clip_index):
    p = over_runs(predict_body, state, x, rec_keys, clip_index)
    return jax.lax.all_gather(p, RUNS, tiled=True)

  runs, block = P(RUNS), P(RUNS, AXIS)
  return (mesh_lib.per_device(train_step, mesh, (runs, block, runs, runs), (runs, P()),
                              donate_argnums=(0,)),
          mesh_lib.per_device(predict_step, mesh, (runs, block, block, block), P()))


def check_shared(runs: Sequence[Run]) -> None:
  """Raises a ValueError naming two runs of one name (the checkpoint could not tell
  them apart) or the first field (beyond `_OWN`) in which a run's config differs
  from the first run's: they would need programs of their own."""
  names = [run.name for run in runs]
  twice = sorted({n for n in names if names.count(n) > 1})
  if twice:
    raise ValueError(f"two runs named {twice[0]}: give runs whose workdirs share a "
                     "name a tag of their own")
  def shared(config):
    flat = fingerprint.flatten(config.to_dict())
    return {k: v for k, v in flat.items()
            if not any(k == o or k.startswith(o + ".") for o in _OWN)}
  first = shared(runs[0].config)
  for run in runs[1:]:
    mine = shared(run.config)
    differ = sorted(k for k in first.keys() | mine.keys() if first.get(k) != mine.get(k))
    if differ:
      raise ValueError(f"{run.name}: its config differs from {runs[0].name}'s in "
                       f"{differ[0]} ({mine.get(differ[0])!r} vs {first.get(differ[0])!r}): "
                       "runs of one program share all but their seeds and data")


def _stack(trees: Sequence[Any]) -> Any:
  """Host numpy leaves stacked along a new first axis (in JAX's default dtypes)."""
  def stack(*xs):
    x = np.stack([np.asarray(jax.device_get(v)) for v in xs])
    return x.astype(jax.dtypes.canonicalize_dtype(x.dtype), copy=False)
  return jax.tree.map(stack, *trees)


class _Program:
  """The runs, their mesh, steps and batches: what the loop and the scoring share."""

  def __init__(self, runs: Sequence[Run], setup: downstream.Setup,
               mesh: Optional[jax.sharding.Mesh]):
    check_shared(runs)
    for run in runs:  # before any work: a refused workdir is left as it was
      fingerprint.check(run.config, run.workdir)
    self.runs, self.setup = list(runs), setup
    self.mesh = mesh = mesh_lib.runs_mesh() if mesh is None else mesh
    self.config = runs[0].config
    self.train_step, self.predict_step = make_steps(setup.model, self.config, mesh)
    self.one_by_one = resolve_runs_impl(self.config.runs_impl, setup.model.encoders) == "map"
    r = len(runs)
    self.block, self.rows = mesh_lib.process_block(mesh, r, self.config.batch_size)
    self.batches = [pipeline.SupervisedBatches(
        run.stores["train"], run.config.batch_size, run.config.features.train_hop,
        run.config.seed, rows=self.rows, name=f"{run.name}/train") for run in runs]
    self.spe = np.array([b.steps_per_epoch for b in self.batches])
    self.total = self.config.num_epochs * self.spe
    replicated = mesh_lib.replicated(mesh)
    self._take = jax.jit(lambda s, i: jax.tree.map(lambda x: x[i], s),
                         out_shardings=replicated)
    self._stack = jax.jit(lambda *s: jax.tree.map(lambda *x: jnp.stack(x), *s),
                          out_shardings=mesh_lib.runs_sharding(mesh))
    self._plateau = jax.jit(self._update_plateau, donate_argnums=(0,),
                            out_shardings=(mesh_lib.runs_sharding(mesh), replicated))

  def _update_plateau(self, state, losses, ended):
    new = optim.plateau_update(self.config.optim, state.plateau, losses)
    plateau = jax.tree.map(lambda n, o: jnp.where(ended, n, o), new, state.plateau)
    return state.replace(plateau=plateau), plateau.scale

  def take(self, state, r: int):
    """Run `r`'s state, replicated over the mesh (as one run's trainer holds it)."""
    return self._take(state, mesh_lib.put_replicated(self.mesh, np.int32(r)))

  def stack(self, states: Sequence[Any]):
    """Replicated one-run states -> the stacked state, split over "runs"."""
    return self._stack(*states)

  def update_plateau(self, state, losses: np.ndarray, ended: np.ndarray):
    """The runs `ended` [R] stepped their plateau with validation `losses` [R]:
    (state, every run's learning-rate scale [R] on the host)."""
    state, scale = self._plateau(state, *mesh_lib.put_replicated(
        self.mesh, (losses.astype(np.float32), ended)))
    return state, np.asarray(scale)

  def active_array(self, active: np.ndarray) -> jax.Array:
    return jax.make_array_from_process_local_data(
        mesh_lib.runs_sharding(self.mesh), active[self.block], active.shape)

  def host_batches(self, steps: np.ndarray, active: np.ndarray) -> Iterator[dict]:
    """This process's block of every tick's stacked batch, from the runs' positions
    `steps` on: each active run's next batch (`active` is read as the loop clears
    it), zeros for the others (their update is masked)."""
    steps = steps.copy()
    rows = self.rows.stop - self.rows.start
    f = self.config.features
    zero = {"x": np.zeros((rows, f.clip_frames, f.nfilt), np.float32),
            "y": np.zeros((rows,), np.float32)}
    while True:
      going = active & (steps < self.total)
      parts = []
      for r in range(self.block.start, self.block.stop):
        if going[r]:
          parts.append(self.batches[r].batch(*divmod(int(steps[r]), int(self.spe[r]))))
        else:
          parts.append(zero)
      yield {k: np.stack([p[k] for p in parts]) for k in ("x", "y")}
      steps += going

  def put_batch(self, batch: dict) -> dict:
    return mesh_lib.global_runs_batch(self.mesh, batch, len(self.runs),
                                      self.config.batch_size)

  def predict(self, state, which: dict[int, pipeline.ClipStore]
              ) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """{run: (probs [n], recording index [n])} of every clip of store `which[run]`:
    `downstream.predict_clips` of each run in `which` (runs_impl "map": one after
    another, by the one-run program, so the runs not in `which` cost nothing) or of
    every run at once ("vmap": the others' rows padding)."""
    if self.one_by_one:
      return {r: downstream.predict_clips(self.setup.predict_step, self.take(state, r),
                                          store, self.config, self.setup.mesh)
              for r, store in which.items()}
    size, hop = self.config.eval_batch_size, self.config.features.eval_hop
    block, rows = mesh_lib.process_block(self.mesh, len(self.runs), size)
    plans = {r: list(pipeline.eval_batches(s, size, hop)) for r, s in which.items()}
    keys = {r: infer.store_recording_keys(s) for r, s in which.items()}
    f = self.config.features
    n = rows.stop - rows.start
    pad = (np.zeros((n, f.clip_frames, f.nfilt), np.float32), np.zeros((n, 2), np.uint32),
           np.zeros((n,), np.int32))
    out = {r: ([], []) for r in which}
    for j in range(max(len(p) for p in plans.values())):
      parts = []
      for r in range(block.start, block.stop):
        if r in plans and j < len(plans[r]):
          b = plans[r][j]
          rec = b["rec"][rows]
          parts.append((which[r].gather(b["start"][rows]), keys[r][rec],
                        b["clip"][rows].astype(np.int32)))
        else:
          parts.append(pad)
      inputs = tuple(np.stack([p[i] for p in parts]) for i in range(3))
      p = np.asarray(self.predict_step(
          state, *mesh_lib.global_runs_batch(self.mesh, inputs, len(self.runs), size)))
      for r, plan in plans.items():
        if j < len(plan):
          out[r][0].append(p[r][plan[j]["valid"]])
          out[r][1].append(plan[j]["rec"][plan[j]["valid"]])
    return {r: (np.concatenate(a), np.concatenate(b)) for r, (a, b) in out.items()}


class _Metrics:
  """Every run's step metrics, kept on the devices until `flush` reads them all at
  once; each run's averages since its last log line (`metrics.TrainLog`, per run)."""

  def __init__(self, runs: Sequence[Run]):
    self.runs = runs
    self.pending: list[tuple[np.ndarray, np.ndarray, dict[str, jax.Array]]] = []
    self.sums = [dict() for _ in runs]
    self.counts = np.zeros(len(runs), int)

  def add(self, steps: np.ndarray, going: np.ndarray, metrics) -> None:
    """`metrics` {name: [R]} of a tick after which run r is at step `steps[r]`, for
    the runs that were `going`."""
    self.pending.append((steps.copy(), going.copy(), metrics))

  def flush(self, last_good) -> None:
    """Reads the pending metrics; raises at the first step with a non-finite loss."""
    for (steps, going), metrics in zip([(s, g) for s, g, _ in self.pending],
                                       jax.device_get([m for _, _, m in self.pending])):
      for r in np.flatnonzero(going):
        values = {k: float(v[r]) for k, v in metrics.items()}
        if not np.isfinite(values["loss"]):
          raise FloatingPointError(
              f"{self.runs[r].name}: loss is {values['loss']} at step {steps[r]}; "
              f"stopped. Last good checkpoint: {last_good()}")
        for k, v in values.items():
          self.sums[r][k] = self.sums[r].get(k, 0.0) + v
        self.counts[r] += 1
    self.pending = []

  def averages(self, r: int) -> dict[str, float]:
    avg = {k: v / self.counts[r] for k, v in self.sums[r].items()}
    self.sums[r], self.counts[r] = {}, 0
    return avg


def _restore(mgr, program: _Program, fresh: list, workdir: pathlib.Path):
  """(tick, [state or None per run], [meta per run]) of the newest intact stacked
  checkpoint (`checkpointing.restore_newest_intact`); a run it does not hold gets None
  and fresh meta. Restored to the host: any mesh can take it."""
  runs = program.runs
  saved_runs = len(runs)
  latest = mgr.latest_step()
  if latest is not None:
    try:  # how many runs it holds: its target's shape
      saved_runs = int(mgr.item_metadata(latest)["state"]["step"].shape[0])
    except Exception:  # pylint: disable=broad-except
      pass  # unreadable: `checkpointing.restore_newest_intact` sets it aside and says so
  target = _stack([fresh[0]] * saved_runs)
  found = checkpointing.restore_newest_intact(
      mgr, target, set_aside=workdir / "corrupted_checkpoints")
  metas = [{"epochs_done": 0, "best": None, "bad_epochs": 0} for _ in runs]
  states = [None] * len(runs)
  if found is None:
    return 0, states, metas
  _, stacked, meta = found
  where = {name: i for i, name in enumerate(meta["runs"])}
  for r, run in enumerate(runs):
    if run.name in where:
      i = where[run.name]
      states[r] = jax.tree.map(lambda x: x[i], stacked)  # pylint: disable=cell-var-from-loop
      metas[r] = meta["meta"][i]
  logging.info("%s: resumed %d of %d runs at tick %d", mgr.directory,
               sum(s is not None for s in states), len(runs), meta["tick"])
  return meta["tick"], states, metas


def fit(runs: Sequence[Run], setup: downstream.Setup, workdir: pathlib.Path,
        mesh: Optional[jax.sharding.Mesh] = None):
  """Trains `runs` as one program, resuming from `workdir`'s checkpoints.

  Args:
    runs: what each run trains on, and where its outputs go.
    setup: the model and optimiser every run shares (`downstream.Setup`).
    workdir: where the stacked state is checkpointed (`CHECKPOINTS`).
    mesh: a ("runs", "data") mesh (`mesh.runs_mesh`); default every device on
      "data". Its "runs" axis must divide the number of runs.

  Returns:
    The stacked state it stopped with, split over the mesh's "runs" axis.

  Raises:
    stopping.Interrupted: SIGINT or SIGTERM (on any process) stopped training at a
      checkpointed tick.
    FloatingPointError: a non-finite loss (naming the run).
    fingerprint.WorkdirConfigError: a run's workdir holds another config's training.
  """
  return _fit(_Program(runs, setup, mesh), pathlib.Path(workdir))


def _fit(program: _Program, workdir: pathlib.Path):
  runs, config = program.runs, program.config
  mgr = checkpoints.manager(
      workdir / CHECKPOINTS, config.keep_checkpoints, write=True)
  best = [checkpoints.manager(run.workdir / "best", write=True)
          for run in runs]
  writers = [metrics_lib.MetricsWriter(run.workdir) for run in runs]
  with stopping.StopSignal(program.mesh) as signals:
    try:
      state, tick = _train(program, workdir, mgr, best, writers, signals)
    finally:
      for closing in [mgr, *best, *writers]:
        closing.close()
    signum = signals.agreed()
  if signum:
    raise stopping.Interrupted(tick, signum)
  return state


def _train(program: _Program, workdir: pathlib.Path, mgr, best: list, writers: list,
           signals: stopping.StopSignal):
  """`fit`'s resume and loop: (the state it stopped with, its tick)."""
  runs, config, mesh = program.runs, program.config, program.mesh
  keys = [jax.random.split(jax.random.key(run.config.seed)) for run in runs]
  fresh = [program.setup.init_state(run.config, k[0]) for run, k in zip(runs, keys)]
  tick, states, metas = _restore(mgr, program, fresh, workdir)
  host = _stack([s if s is not None else f for s, f in zip(states, fresh)])
  for run in runs:
    fingerprint.record(run.config, run.workdir)  # not before: a refused one is left as it was
  steps = np.array(host.step)
  for writer, step in zip(writers, steps):
    writer.start(int(step))
  active = np.array([not stopping.is_finished(m, config) for m in metas])
  if not active.any():
    logging.info("%s: all %d runs already finished", workdir, len(runs))
  state = mesh_lib.put_runs(mesh, host)
  if not active.any():
    return state, tick
  train_keys = mesh_lib.put_runs(mesh, jax.random.wrap_key_data(
      np.stack([jax.random.key_data(k[1]) for k in keys])))
  spe, total = program.spe, program.total
  lrs = config.optim.learning_rate * np.asarray(host.plateau.scale, np.float64)
  metrics = _Metrics(runs)

  def last_good():
    return f"tick {mgr.latest_step()} in {mgr.directory}"

  def save():
    metrics.flush(last_good)  # never checkpoint past a non-finite loss
    checkpointing.save(mgr, tick, state, {
        "tick": tick, "runs": [r.name for r in runs], "meta": metas})

  t_last, tick_last = time.time(), tick
  stop = 0
  host = program.host_batches(steps, active)
  with contextlib.closing(mesh_lib.prefetch(pipeline.prefetch(host), mesh,
                                            put=program.put_batch)) as ahead:
    for batch in ahead:
      going = active & (steps < total)
      state, step_metrics = program.train_step(state, batch, train_keys,
                                               program.active_array(going))
      tick += 1
      steps += going
      metrics.add(steps, going, step_metrics)
      ended = going & (steps % spe == 0)
      logs = going & ((steps % config.log_every_steps == 0) | (steps == total))
      if logs.any():
        metrics.flush(last_good)
        now = time.time()
        rate = (tick - tick_last) / max(now - t_last, 1e-9)
        t_last, tick_last = now, tick
        for r in np.flatnonzero(logs):
          avg = metrics.averages(r)
          epoch = int((steps[r] - 1) // spe[r])
          logging.info("%s step %d/%d (epoch %d): %s, lr %.2e, %.2f steps/s",
                       runs[r].name, steps[r], total[r], epoch,
                       ", ".join(f"{k} {v:.4f}" for k, v in avg.items()), lrs[r], rate)
          writers[r].write(step=int(steps[r]), epoch=epoch, split="train", lr=lrs[r],
                           steps_per_sec=rate, **avg)
      stop = signals.agreed()
      if ended.any():
        metrics.flush(last_good)
        state = _end_epochs(program, state, ended, steps, metas, lrs, best, writers)
        active &= np.array([not stopping.is_finished(m, config) for m in metas])
      if ended.any() or tick % config.checkpoint_every_steps == 0 or stop:
        save()
      if stop or not (active & (steps < total)).any():
        break
  return state, tick


def _end_epochs(program: _Program, state, ended: np.ndarray, steps: np.ndarray,
                metas: list, lrs: np.ndarray, best: list, writers: list):
  """Validates the runs whose epoch `ended` [R] at `steps`, steps their plateau,
  keeps their best checkpoints and progress (`metas`, `lrs` updated in place)."""
  runs, config = program.runs, program.config
  which = np.flatnonzero(ended)
  scored = program.predict(state, {r: runs[r].stores["val"] for r in which})
  vals = {r: downstream.validation_metrics(downstream.score_clips(
      *scored[r], runs[r].stores["val"], runs[r].config)) for r in which}
  losses = np.array([vals[r]["loss"] if r in vals else 0.0 for r in range(len(runs))])
  state, scale = program.update_plateau(state, losses, ended)
  mode = "min" if config.monitor == "loss" else "max"
  for r in which:
    val, meta = vals[r], metas[r]
    lrs[r] = config.optim.learning_rate * scale[r]
    epoch = int(steps[r] // program.spe[r]) - 1
    score = val[config.monitor]
    metas[r], improved = stopping.after_epoch(meta, epoch, score, mode)
    logging.info("%s epoch %d validation: %s%s", runs[r].name, epoch,
                 ", ".join(f"{k} {v:.4f}" for k, v in val.items()),
                 " (best)" if improved else "")
    writers[r].write(step=int(steps[r]), epoch=epoch, split="val", lr=lrs[r],
                     best=improved, **val)
    if improved:
      checkpointing.save(best[r], int(steps[r]), program.take(state, r), metas[r])
    if stopping.is_finished(metas[r], config) and epoch + 1 < config.num_epochs:
      logging.info("%s: early stopping after epoch %d (%s has not improved for %d "
                   "epochs)", runs[r].name, epoch, config.monitor, metas[r]["bad_epochs"])
  return state


def train(runs: Sequence[Run], setup: downstream.Setup, workdir: pathlib.Path,
          mesh: Optional[jax.sharding.Mesh] = None) -> list[dict[str, Any]]:
  """Trains `runs` as one program (`fit`, checkpoints in `workdir`), then scores
  each run's best checkpoint on its test split and writes its test predictions:
  each run's record, as `downstream.train_one` returns it."""
  program = _Program(runs, setup, mesh)
  final = _fit(program, pathlib.Path(workdir))
  bests = [checkpointing.restore(run.workdir / "best", program.take(final, r))[0]
           for r, run in enumerate(runs)]
  scored = program.predict(program.stack(bests),
                           {r: run.stores["test"] for r, run in enumerate(runs)})
  return [downstream.test_result(
      run.config, run.index, run.workdir, run.stores["test"],
      downstream.score_clips(*scored[r], run.stores["test"], run.config),
      int(jax.device_get(bests[r].step))) for r, run in enumerate(runs)]
