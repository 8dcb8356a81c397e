"""Contrastive pre-training (paper §4.1): the per-device step with a global-batch loss.

The paper's pmapped step, written as JAX writes it now (shard_map over a Mesh,
`coughjax.train.mesh`): every device encodes its shard of the 2B clips (in chunks,
see `coughjax.models.chunking`), the projections are `all_gather`-ed along the
"data" axis, each device scores its own rows against all 2B clips (eq. 5), and
gradients are `pmean`-ed: the update equals that of one device holding the whole
batch. Each clip's mask and dropout are keyed by its place in the global batch
(`clip_ids`), so they do not depend on the devices, the hosts or the chunking either.
"""

from __future__ import annotations

import functools
from typing import Any, Optional

from absl import logging
import jax
import jax.numpy as jnp

from coughjax import losses
from coughjax import models
from coughjax import data
from coughjax.data import pipeline
from coughjax.models import chunking
from coughjax.models import heads
from coughjax.train import fingerprint
from coughjax.train import mesh as mesh_lib
from coughjax.train import optim
from coughjax.train import trainer

AXIS = mesh_lib.AXIS
P = jax.sharding.PartitionSpec


def encoder_config(model_cfg) -> dict[str, Any]:
  """Encoder kwargs of `model_cfg.name`: its sub-config and the shared fields
  (`coughjax.models.encoder_config`), with the compute dtype resolved."""
  cfg = models.encoder_config(model_cfg, model_cfg.name)
  return dict(cfg, dtype=models.compute_dtype(cfg.get("dtype", model_cfg.dtype)))


def build_model(model_cfg) -> heads.ContrastiveModel:
  """Encoder f + projection g + similarity from `config.model`."""
  return heads.ContrastiveModel(
      encoder=models.build_encoder(encoder_config(model_cfg)),
      proj_dim=model_cfg.proj_dim, similarity=model_cfg.similarity,
      temperature=model_cfg.temperature, dtype=models.compute_dtype(model_cfg.dtype))


def clip_ids(b: int, num_devices: int, device) -> jax.Array:
  """[2b] global ids of a device's clips [a_0..a_{b-1}, b_0..b_{b-1}]: view v of
  global pair p is clip v * B + p (B = num_devices * b pairs), and the device holds
  pairs [device * b, (device + 1) * b)."""
  pairs = device * b + jnp.arange(b, dtype=jnp.int32)
  return jnp.concatenate([pairs, num_devices * b + pairs])


def contrastive_loss_fn(model: heads.ContrastiveModel, params, views: jax.Array,
                        rng: jax.Array, *, train: bool, chunk_size: int | str,
                        axis_name: Optional[str] = AXIS, remat: bool | str = "auto"):
  """Eq. 5 over the global batch for this device's shard.

  Args:
    model: the contrastive model.
    params: its parameters.
    views: [b, 2, T, M] this device's pairs (views[i][0] and views[i][1] are one
      participant's two clips).
    rng: step key (identical on every device).
    train: dropout / masking on.
    chunk_size: encoder chunk rows, or "auto" (`chunking.resolve_chunk_size`, which
      asks the encoder).
    axis_name: mesh axis to gather over (None: one device, no collectives).
    remat: recompute each chunk in the backward pass of a train step, or "auto"
      (`chunking.resolve_remat`, which asks the encoder).

  Returns:
    (loss, metrics) for this device's rows; their pmean is the global result.
  """
  b = views.shape[0]
  device = jax.lax.axis_index(axis_name) if axis_name else 0
  num_devices = jax.lax.axis_size(axis_name) if axis_name else 1
  # [a_0..a_{b-1}, b_0..b_{b-1}]
  x = views.swapaxes(0, 1).reshape((2 * b,) + views.shape[2:])
  # One chunk covers both views when the chunk size allows: one encoder call.
  chunk = chunking.chunk_size_for(2 * b, chunk_size, (model.encoder,))
  ids = clip_ids(b, num_devices, device)

  def encode(xc, rngs, ids):
    return model.apply({"params": params}, xc, train=train, rngs=rngs, clip_ids=ids)

  remat = train and chunking.resolve_remat(remat, encoders=(model.encoder,))
  z = chunking.apply_in_chunks(encode, x, rng, chunk, ids, remat=remat)  # [2b, p]
  z_all = jax.lax.all_gather(z, axis_name, tiled=True) if axis_name else z  # [2B, p]
  # Gathered columns are device-major: device d's clips are [d * 2b, (d + 1) * 2b).
  logits = model.apply({"params": params}, z, z_all, method=heads.ContrastiveModel.logits)
  self_idx, pos_idx = losses.pair_indices(b, offset=device * 2 * b)
  return losses.contrastive_loss(logits, self_idx, pos_idx)


def make_steps(model: heads.ContrastiveModel, config, mesh: Optional[jax.sharding.Mesh] = None):
  """(train_step, eval_step): per-device programs over `mesh`'s "data" axis
  (default: every device of every process), jitted (`mesh.per_device`).

  train_step(state, views [B, 2, T, M], key) -> (state, metrics) donates the state;
  eval_step(state, views, key) -> metrics. The state and key are replicated, the
  views split over the devices; the metrics are averaged over them.
  """
  mesh = mesh_lib.data_mesh() if mesh is None else mesh
  loss_fn = functools.partial(contrastive_loss_fn, model, chunk_size=config.model.chunk_size,
                              remat=config.model.remat)

  def train_step(state: trainer.TrainState, views, key):
    rng = jax.random.fold_in(key, state.step)
    grad_fn = jax.value_and_grad(functools.partial(loss_fn, train=True), has_aux=True)
    (_, metrics), grads = grad_fn(state.params, views, rng)
    grads = jax.lax.pmean(grads, AXIS)
    return state.apply_gradients(grads=grads), jax.lax.pmean(metrics, AXIS)

  def eval_step(state: trainer.TrainState, views, rng):
    _, metrics = loss_fn(state.params, views, rng, train=False)
    return jax.lax.pmean(metrics, AXIS)

  specs = (P(), P(AXIS), P())
  return (mesh_lib.per_device(train_step, mesh, specs, P(), donate_argnums=(0,)),
          mesh_lib.per_device(eval_step, mesh, specs, P()))


def init_state(model: heads.ContrastiveModel, config, rng: jax.Array) -> trainer.TrainState:
  params = heads.init_contrastive(
      model, rng, (2, config.features.clip_frames, config.features.nfilt))
  return trainer.TrainState.create(apply_fn=model.apply, params=params,
                                   tx=optim.make_optimizer(config.optim))


def make_task(config) -> trainer.Task:
  mesh = mesh_lib.data_mesh()
  stores = data.load_splits(config)
  train = pipeline.ContrastiveBatches(
      stores["train"], config.batch_size, config.seed,
      rows=mesh_lib.process_rows(mesh, config.batch_size), passes=config.passes_per_epoch)
  val_participants = len({r.participant_id for r in stores["val"].records})
  eval_batch = min(config.eval_batch_size, val_participants)
  eval_batch -= eval_batch % mesh.size
  val = pipeline.ContrastiveBatches(stores["val"], eval_batch, config.seed + 1,
                                    rows=mesh_lib.process_rows(mesh, eval_batch))
  logging.info("pre-training: %d train participants (%d steps of %d pairs per epoch), "
               "%d validation participants (%d steps of %d pairs)",
               len(train.participants), train.steps_per_epoch, config.batch_size,
               val_participants, val.steps_per_epoch, eval_batch)
  model = build_model(config.model)
  train_step, eval_step = make_steps(model, config, mesh)
  eval_key = mesh_lib.put_replicated(mesh, jax.random.key(config.seed + 2))

  def evaluate(state) -> dict[str, float]:
    """Contrastive loss/accuracy on held-out participants (a fixed set of batches)."""
    totals: dict[str, float] = {}
    for views in val.epoch(0):
      for k, v in eval_step(state, mesh_lib.global_batch(mesh, views), eval_key).items():
        totals[k] = totals.get(k, 0.0) + float(v)
    return {k: v / val.steps_per_epoch for k, v in totals.items()}

  return trainer.Task(
      name="pretrain", init_state=functools.partial(init_state, model, config),
      train_step=train_step, batches=train.epoch, steps_per_epoch=train.steps_per_epoch,
      evaluate=evaluate, mesh=mesh, monitor="loss", monitor_mode="min")


def build_data(config) -> None:
  """The features and packs `make_task` reads, without training (num_epochs = 0)."""
  data.load_splits(config)


def train_and_evaluate(config, workdir: str) -> trainer.TrainState:
  """Runs contrastive pre-training per `config`; checkpoints and metrics in `workdir`."""
  fingerprint.check(config, workdir)  # before the data is loaded (`fit` checks again)
  return trainer.fit(make_task(config), config, workdir)
