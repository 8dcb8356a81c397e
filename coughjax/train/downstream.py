"""Downstream COVID-19 classification (paper §4.2): train, evaluate over seeds, report.

For each of `config.num_runs` seeds (own participant split and own initialisation)
the classifier is trained (Adam + ReduceLROnPlateau on the validation loss, best
checkpoint and early stopping by the validation monitor), then its best checkpoint
is scored on the test participants. `run` trains the seeds as one program
(`coughjax.train.many`), each as `train_one` trains it alone with the shared
trainer (`coughjax.train.trainer.fit`). `run` writes results.json,
results.md, roc.png, curves.png and encoders.json into the workdir; run i lives in
workdir/run_i, with its per-recording test scores in run_i/test_predictions.csv.
Every score comes from `coughjax.infer.probabilities`, as in `coughjax.predict`.

Steps are per-device programs over the "data" mesh (`coughjax.train.mesh`): the
paper's pmapped step, written as JAX writes it now (shard_map over a Mesh). The
predict step gathers every row's probability onto every device, so with several
processes each sees every recording's score, computes the same metrics and takes
the same decisions; process 0 alone writes the files.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
from typing import Any, Callable, Optional, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from coughjax import checkpoints
from coughjax import data
from coughjax import evaluate
from coughjax import files
from coughjax import infer
from coughjax import models
from coughjax.configs import downstream as downstream_configs
from coughjax.data import pipeline
from coughjax.models import chunking
from coughjax.models import classifier as classifier_lib
from coughjax.models import vggish_convert
from coughjax.train import augment as augment_lib
from coughjax.train import fingerprint
from coughjax.train import mesh as mesh_lib
from coughjax.train import optim
from coughjax.train import trainer
from coughjax.train import validate as validate_lib

AXIS = mesh_lib.AXIS
P = jax.sharding.PartitionSpec
# Fields that fix an encoder's parameter shapes: a CP branch takes them from the
# pre-training run, so its checkpoint fits.
ARCHITECTURE = ("d_model", "num_layers", "num_heads", "mlp_dim", "pooling", "embedding_dim")
PREDICTIONS_FILE = "test_predictions.csv"


def branches(config) -> list[ml_collections.ConfigDict]:
  return [config[k] for k in downstream_configs.branch_keys(config)]


def pretrain_workdir(branch, runlocal: bool = False) -> pathlib.Path:
  """Where a CP branch's pre-training run lives (runs/<variant>[_runlocal])."""
  if branch.checkpoint:
    return pathlib.Path(branch.checkpoint)
  return pathlib.Path("runs") / (branch.pretrain + ("_runlocal" if runlocal else ""))


def _missing_checkpoint(key: str, branch, runlocal: bool, path) -> FileNotFoundError:
  option = ",runlocal" if runlocal else ""
  return FileNotFoundError(
      f"{key} ({branch.name}, init='cp') needs the contrastive pre-training checkpoint "
      f"in {path}, which does not exist. Create it first with:\n"
      f"  python launch.py --config=configs/pretrain.py:{branch.pretrain}{option}\n"
      f"or point --config.{key}.checkpoint at an existing pre-training workdir.")


def _pretrain_config(key, branch, runlocal) -> ml_collections.ConfigDict:
  path = pretrain_workdir(branch, runlocal)
  if not (path / "config.json").is_file() or not (path / "best").is_dir():
    raise _missing_checkpoint(key, branch, runlocal, path)
  return ml_collections.ConfigDict(json.loads((path / "config.json").read_text()))


def encoder_config(config, key: str) -> dict[str, Any]:
  """Resolved settings of one branch (`coughjax.models.encoder_config`): the
  downstream config's `model.<encoder>` sub-config (dropout) and shared fields (DS
  masking), with the architecture of its pre-training run for CP branches."""
  branch = config[key]
  cfg = models.encoder_config(config.model, branch.name)
  if branch.init == "cp":
    saved = _pretrain_config(key, branch, config.runlocal).model
    if saved.name != branch.name:
      raise ValueError(f"{key}: a {branch.name} branch cannot start from the "
                       f"{saved.name} checkpoint in {pretrain_workdir(branch)}")
    # Pre-training runs saved before per-encoder sub-configs kept a flat model.
    arch = saved[branch.name] if branch.name in saved else saved
    cfg.update({k: arch[k] for k in ARCHITECTURE if k in arch and k in cfg})
  return cfg


def build_classifier(config) -> classifier_lib.Classifier:
  encoders = [models.build_encoder(encoder_config(config, k))
              for k in downstream_configs.branch_keys(config)]
  return classifier_lib.Classifier(encoders, tuple(b.frozen for b in branches(config)),
                                   dropout=config.model.head_dropout)


def initial_encoder_params(config, key: str) -> Optional[dict]:
  """Pre-trained parameters of a branch, or None to keep the random init."""
  branch = config[key]
  if branch.init == "scratch":
    return None
  if branch.init == "audioset":
    if branch.name != "vggish" or not branch.checkpoint:
      raise ValueError(f"{key}: init='audioset' needs name='vggish' and "
                       f"--config.{key}.checkpoint=<folder from "
                       "python -m coughjax.models.vggish_convert>")
    return vggish_convert.load_flax_params(branch.checkpoint)
  if branch.init == "cp":
    runlocal = config.runlocal
    _pretrain_config(key, branch, runlocal)  # clear error if missing
    params, step = checkpoints.restore_params(pretrain_workdir(branch, runlocal) / "best")
    logging.info("%s: encoder from %s (best step %d)", key,
                 pretrain_workdir(branch, runlocal), step)
    return params["encoder"]
  raise ValueError(f"{key}.init must be scratch, cp or audioset; got {branch.init!r}")


def _check_shapes(key, loaded, fresh):
  want = jax.tree.map(jnp.shape, fresh)
  got = jax.tree.map(jnp.shape, loaded)
  if want != got:
    raise ValueError(f"{key}: pre-trained parameter shapes do not fit the encoder:\n"
                     f"expected {want}\ngot {got}")


@dataclasses.dataclass(frozen=True)
class Setup:
  """What every run of a variant shares, built (and compiled) once: the model, its
  jitted init, the optimiser, the mesh and the steps over it. Reusing the same
  optimiser object matters: it is static data of the TrainState, so a new one per
  run would recompile the step."""
  model: classifier_lib.Classifier
  init: Callable[..., Any]
  tx: optax.GradientTransformation
  mesh: jax.sharding.Mesh
  train_step: Callable[..., Any]
  predict_step: Callable[..., Any]

  @classmethod
  def create(cls, config, mesh: Optional[jax.sharding.Mesh] = None) -> "Setup":
    """`mesh`: default every device of every process."""
    model = build_classifier(config)
    init = jax.jit(functools.partial(model.init, train=False))
    x = jax.ShapeDtypeStruct((2, config.features.clip_frames, config.features.nfilt),
                             jnp.float32)
    shapes = jax.eval_shape(init, {"params": jax.random.PRNGKey(0),
                                   "mask": jax.random.PRNGKey(0)}, x)["params"]
    trainable = {k: jax.tree.map(lambda _: True, v) for k, v in shapes.items()}
    for i, key in enumerate(downstream_configs.branch_keys(config)):
      if config[key].frozen:
        name = classifier_lib.encoder_param_name(i)
        trainable[name] = jax.tree.map(lambda _: False, shapes[name])
    tx = optim.make_optimizer(config.optim, trainable_mask=trainable)
    mesh = mesh_lib.data_mesh() if mesh is None else mesh
    return cls(model, init, tx, mesh, *make_steps(model, config, mesh))

  def init_state(self, config, rng: jax.Array) -> trainer.TrainState:
    """Random init with the pre-trained encoders copied in."""
    k_params, k_mask = jax.random.split(rng)
    x = jnp.zeros((2, config.features.clip_frames, config.features.nfilt))
    params = dict(self.init({"params": k_params, "mask": k_mask}, x)["params"])
    for i, key in enumerate(downstream_configs.branch_keys(config)):
      loaded = initial_encoder_params(config, key)
      if loaded is not None:
        name = classifier_lib.encoder_param_name(i)
        _check_shapes(key, loaded, params[name])
        params[name] = jax.tree.map(jnp.asarray, loaded)
    return trainer.TrainState.create(apply_fn=self.model.apply, params=params, tx=self.tx)


def step_bodies(model: classifier_lib.Classifier, config):
  """(train_step, predict_step): the per-device programs of one run, naming the
  "data" axis in their collectives; `make_steps` jits them over a mesh, and
  `coughjax.train.many` vmaps them over a leading runs axis.

  train_step(state, {"x": [b, T, mel], "y": [b]}, key) -> (state, metrics), a
  device's b rows. predict_step(state, x [b, T, mel], rec_keys [b, 2], clip_index
  [b]) -> [B] probabilities by `coughjax.infer.probabilities` (per-clip DS masks) of
  every device's rows (gathered).
  """
  chunk_size = config.model.chunk_size
  augment = augment_lib.Augment.from_config(config)

  def train_step(state, batch, key):
    rng = jax.random.fold_in(key, state.step)
    b = batch["x"].shape[0]
    # Clip ids = rows of the global batch: masks, dropout and augmentation do not
    # depend on the devices or the chunking.
    ids = jax.lax.axis_index(AXIS) * b + jnp.arange(b, dtype=jnp.int32)
    x = augment(batch["x"], rng, ids)
    chunk = chunking.chunk_size_for(b, chunk_size, model.encoders)

    def loss_fn(params):
      logits = chunking.apply_in_chunks(
          lambda xc, rngs, cids: model.apply({"params": params}, xc, train=True, rngs=rngs,
                                             clip_ids=cids),
          x, rng, chunk, ids)
      loss = optax.sigmoid_binary_cross_entropy(logits, batch["y"]).mean()
      acc = jnp.mean((logits > 0) == (batch["y"] > 0.5))
      return loss, {"loss": loss, "accuracy": acc}

    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grads = jax.lax.pmean(grads, AXIS)
    return state.apply_gradients(grads=grads), jax.lax.pmean(metrics, AXIS)

  def predict_step(state, x, rec_keys, clip_index):
    p = infer.probabilities(model, state.params, x, rec_keys, clip_index,
                            chunk_size=config.model.eval_chunk_size)
    return jax.lax.all_gather(p, AXIS, tiled=True)  # [B]: every device's rows

  return train_step, predict_step


def make_steps(model: classifier_lib.Classifier, config,
               mesh: Optional[jax.sharding.Mesh] = None):
  """(train_step, predict_step) of `step_bodies` over `mesh`'s "data" axis
  (default: every device of every process), jitted (`mesh.per_device`): state and
  key replicated, the batch split over the devices; the train step donates the
  state, the predict step returns every row's probability on every device."""
  mesh = mesh_lib.data_mesh() if mesh is None else mesh
  train_step, predict_step = step_bodies(model, config)
  return (mesh_lib.per_device(train_step, mesh, (P(), P(AXIS), P()), P(),
                              donate_argnums=(0,)),
          mesh_lib.per_device(predict_step, mesh, (P(), P(AXIS), P(AXIS), P(AXIS)), P()))


def predict_clips(predict_step, state, store: pipeline.ClipStore, config,
                  mesh: Optional[jax.sharding.Mesh] = None) -> tuple[np.ndarray, np.ndarray]:
  """P(positive) of every clip of every recording: (probs [n], recording index [n]),
  the same on every process (each reads only its rows' features).

  `predict_step` runs over `mesh` (default: every device of every process). DS masks
  are keyed by recording and clip index (`coughjax.infer`), so a clip's probability
  does not depend on the batch it falls in.
  """
  mesh = mesh_lib.data_mesh() if mesh is None else mesh
  rows = mesh_lib.process_rows(mesh, config.eval_batch_size)
  rec_keys = infer.store_recording_keys(store)  # [recordings, 2]
  probs, recs = [], []
  for batch in pipeline.eval_batches(store, config.eval_batch_size,
                                     config.features.eval_hop):
    rec = batch["rec"][rows]
    inputs = (store.gather(batch["start"][rows]), rec_keys[rec], batch["clip"][rows])
    p = np.asarray(predict_step(state, *mesh_lib.global_batch(mesh, inputs)))
    probs.append(p[batch["valid"]])
    recs.append(batch["rec"][batch["valid"]])
  return np.concatenate(probs), np.concatenate(recs)


def score(predict_step, state, store, config,
          mesh: Optional[jax.sharding.Mesh] = None) -> dict[str, Any]:
  """Recording- and clip-level metrics (and the scores behind the ROC curve)."""
  return score_clips(*predict_clips(predict_step, state, store, config, mesh), store, config)


def score_clips(probs: np.ndarray, rec: np.ndarray, store: pipeline.ClipStore,
                config) -> dict[str, Any]:
  """`score` from every clip's probability [n] and recording index [n]."""
  rec_scores = evaluate.recording_scores(probs, rec, len(store))
  eps = 1e-7
  clip_labels = store.labels[rec]
  bce = -np.mean(clip_labels * np.log(probs + eps) + (1 - clip_labels) * np.log(1 - probs + eps))
  return {"recording": evaluate.binary_metrics(store.labels, rec_scores, config.threshold),
          "clip": evaluate.binary_metrics(clip_labels, probs, config.threshold),
          "loss": float(bce), "labels": store.labels.tolist(),
          "scores": rec_scores.tolist()}


def validation_metrics(scored: dict[str, Any]) -> dict[str, float]:
  """What the trainer monitors of a `score` of the validation split."""
  return {"loss": scored["loss"], **{k: scored["recording"][k] for k in evaluate.METRICS}}


def _run_config(config, i: int):
  run_cfg = ml_collections.ConfigDict(config.to_dict())
  run_cfg.seed = config.seed + i
  run_cfg.data.split_seed = config.data.split_seed + i
  return run_cfg


def load_run_splits(config, run_index: int) -> dict[str, pipeline.ClipStore]:
  """Run `run_index`'s train/val/test stores, its validation split checked for
  both classes (`validate.check_classes`)."""
  cfg = _run_config(config, run_index)
  stores = data.load_splits(cfg, ("train", "val", "test"), labelled=True)
  validate_lib.check_classes(stores["val"].labels, "validation", cfg,
                             f"{cfg.variant}/run_{run_index}")
  return stores


def train_one(config, workdir: pathlib.Path, run_index: int, setup: Setup,
              stores: Optional[dict[str, pipeline.ClipStore]] = None) -> dict[str, Any]:
  """Trains run `run_index` and scores its best checkpoint on the test split.
  `stores`: its `load_run_splits` (loaded here if not given)."""
  cfg = _run_config(config, run_index)
  stores = load_run_splits(config, run_index) if stores is None else stores
  name = f"{cfg.variant}/run_{run_index}"
  mesh = setup.mesh
  batches = pipeline.SupervisedBatches(stores["train"], cfg.batch_size,
                                       cfg.features.train_hop, cfg.seed,
                                       rows=mesh_lib.process_rows(mesh, cfg.batch_size))

  def validate(state):
    return validation_metrics(score(setup.predict_step, state, stores["val"], cfg, mesh))

  task = trainer.Task(
      name=name,
      init_state=functools.partial(setup.init_state, cfg),
      train_step=setup.train_step, batches=batches.epoch, steps_per_epoch=batches.steps_per_epoch,
      evaluate=validate, mesh=mesh, monitor=cfg.monitor,
      monitor_mode="min" if cfg.monitor == "loss" else "max")
  run_dir = workdir / f"run_{run_index}"
  final = trainer.fit(task, cfg, run_dir)
  # Score the best checkpoint (by the validation monitor), not the last.
  best, _ = trainer.restore(run_dir / "best", final)
  return test_result(cfg, run_index, run_dir, stores["test"],
                     score(setup.predict_step, best, stores["test"], cfg, mesh),
                     int(best.step))


def test_result(config, run_index: int, run_dir: pathlib.Path, store: pipeline.ClipStore,
                scored: dict[str, Any], best_step: int) -> dict[str, Any]:
  """A run's record (its best checkpoint's test `score`, its seeds and best step),
  its `PREDICTIONS_FILE` written into `run_dir` by process 0. `config`: the run's."""
  if jax.process_index() == 0:
    files.write_predictions(run_dir / PREDICTIONS_FILE, [r.path for r in store.records],
                            store.labels, scored["scores"])
  scored.update(run=run_index, seed=config.seed, split_seed=config.data.split_seed,
                best_step=best_step)
  logging.info("%s run %d test (recording level): %s", config.variant, run_index,
               ", ".join(f"{k} {scored['recording'][k]:.2f}" for k in evaluate.METRICS))
  return scored


def build_data(config) -> None:
  """The features and packs of every run's splits, without training (num_epochs = 0)."""
  for i in range(config.num_runs):
    data.load_splits(_run_config(config, i), ("train", "val", "test"), labelled=True)


def run(config, workdir: str) -> dict[str, Any]:
  """All runs, then results.json / results.md / roc.png / curves.png in `workdir`
  (written by process 0; every process returns the results)."""
  return run_many([config], [pathlib.Path(workdir)], pathlib.Path(workdir))[0]


def run_many(configs: Sequence[ml_collections.ConfigDict],
             workdirs: Sequence[pathlib.Path], workdir: pathlib.Path
             ) -> list[dict[str, Any]]:
  """`run` of each config into its own workdir, the runs of all of them trained as
  one program (`coughjax.train.many`, its stacked checkpoints in `workdir`), each
  workdir left as `run` leaves it; their results. The configs may differ in their
  seeds and data only (`many.check_shared`): a protocol row's folds, say."""
  from coughjax.train import many  # pylint: disable=g-import-not-at-top
  workdirs = [pathlib.Path(w) for w in workdirs]
  for config, where in zip(configs, workdirs):
    fingerprint.check(config, where)  # before any work: a refused one is left as it was
  for config, where in zip(configs, workdirs):
    where.mkdir(parents=True, exist_ok=True)
    fingerprint.record(config, where)
  setup = Setup.create(configs[0])
  # Every run's splits first (views of one cached pack): a split that cannot be
  # used stops the command before any training.
  runs = [many.Run(i, _run_config(config, i), where / f"run_{i}",
                   load_run_splits(config, i), "" if where == workdir else where.name)
          for config, where in zip(configs, workdirs) for i in range(config.num_runs)]
  if jax.process_index() == 0:
    for config, where in zip(configs, workdirs):
      # The resolved encoder configs and head dropout, so that coughjax.predict can
      # rebuild the model without the pre-training workdirs.
      (where / "encoders.json").write_text(json.dumps(model_spec(config), indent=2))
  records = many.train(runs, setup, workdir)
  out = []
  for config, where in zip(configs, workdirs):
    out.append(_report(config, where, records[:config.num_runs]))
    records = records[config.num_runs:]
  return out


def _report(config, workdir: pathlib.Path, runs: list[dict[str, Any]]) -> dict[str, Any]:
  """The results of `config`'s `runs` (their records); process 0 writes them into
  `workdir` (results.json, results.md, roc.png, curves.png)."""
  from coughjax import paper  # pylint: disable=g-import-not-at-top
  dataset = describe_data(config)
  ref, source = paper.reference(config.variant) or (None, "")
  if jax.process_index() != 0:
    return evaluate.results_of(config.variant, runs, dataset)
  results = evaluate.write_report(workdir, config.variant, runs, dataset, ref, source)
  evaluate.plot_roc(runs, workdir / "roc.png", config.variant)
  evaluate.plot_curves([checkpoints.read_metrics(workdir / f"run_{i}")
                        for i in range(config.num_runs)], workdir / "curves.png",
                       config.variant)
  s = results["summary"]["recording"]
  logging.info("%s: test ROC-AUC %.2f (%.2f), accuracy %.2f (%.2f) over %d runs; see %s",
               config.variant, s["auc_mean"], s["auc_std"], s["accuracy_mean"],
               s["accuracy_std"], config.num_runs, workdir / "results.md")
  return results


def model_spec(config) -> dict[str, Any]:
  """What encoders.json holds: {"encoders": [resolved settings per branch],
  "frozen": [bool per branch], "head_dropout": float}."""
  return {"encoders": [encoder_config(config, k)
                       for k in downstream_configs.branch_keys(config)],
          "frozen": [b.frozen for b in branches(config)],
          "head_dropout": config.model.head_dropout}


def describe_data(config) -> str:
  d = config.data
  if d.name == "synthetic":
    return (f"built-in synthetic set ({d.num_participants} participants, seed {d.seed}, "
            f"sounds {', '.join(d.sounds)})")
  extra = {"coswara": f"label {d.label}", "covid19_sounds": f"task {d.task}",
           "manifest": d.manifest}.get(d.name, "")
  return f"{d.name} at {d.root or d.manifest} ({extra}; sounds {', '.join(d.sounds)})"
