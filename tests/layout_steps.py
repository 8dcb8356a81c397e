"""One train step per layout: chunk sizes 0 / 4 / 16 on 1 and on 4 devices.

  XLA_FLAGS=--xla_force_host_platform_device_count=4 \
      python tests/layout_steps.py pretrain downstream

From the same parameters, batch and step key, runs one train step for every
(chunk size, devices) pair and prints a JSON report of each one's loss and its
largest gradient difference (read from Adam's first moment) from the run on the
whole batch on 1 device. Randomness is per clip (`coughjax.models.randomness`), so
every layout draws the same masks and dropout; the numbers may differ only by
float round-off.

* pretrain: the runlocal Transformer with one layer (mask 50 %, dropout 0.2, hash
  dropout bits), B = 16 pairs.
* downstream: a scratch GRU + Transformer ensemble (one Transformer layer), B = 16
  clips, with the Transformer masking at 50 % in training and drawing flax-style
  (threefry) dropout bits, the GRU's inter-layer dropout, the head's dropout and
  training augmentation (random gain, time and frequency masks).
Used by tests/test_randomness.py.
"""

import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from configs import downstream as downstream_configs  # pylint: disable=g-import-not-at-top,wrong-import-position
from configs import pretrain as pretrain_configs  # pylint: disable=g-import-not-at-top,wrong-import-position
from coughjax.train import downstream  # pylint: disable=g-import-not-at-top,wrong-import-position
from coughjax.train import mesh as mesh_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from coughjax.train import pretrain  # pylint: disable=g-import-not-at-top,wrong-import-position

CHUNKS = (0, 4, 16)
DEVICES = (1, 4)


def pretrain_step(chunk: int, devices: list):
  config = pretrain_configs.get_config("transformer_m50,runlocal")
  config.model.chunk_size = chunk
  config.model.dropout_impl = "hash"
  config.model.transformer.num_layers = 1  # compiles faster; 1 layer draws it all
  model = pretrain.build_model(config.model)
  views = np.random.default_rng(0).normal(
      size=(config.batch_size, 2, 96, 64)).astype(np.float32)
  mesh = mesh_lib.data_mesh(devices)
  train_step, _ = pretrain.make_steps(model, config, mesh)
  state = pretrain.init_state(model, config, jax.random.key(0))
  return _step(train_step, state, views, mesh)


def downstream_step(chunk: int, devices: list):
  config = downstream_configs.get_config("ens_gru_transformer,runlocal")
  config.model.chunk_size = chunk
  config.model.mask_rate = 0.5
  config.model.dropout_impl = "flax"
  config.model.transformer.num_layers = 1
  config.model.gru.d_model = 16  # 2 layers: dropout between them
  config.augment.update(gain_db=10.0, time_masks=2, time_mask_width=20, freq_masks=2,
                        freq_mask_width=8)
  rng = np.random.default_rng(0)
  batch = {"x": rng.normal(size=(config.batch_size, 96, 64)).astype(np.float32),
           "y": (np.arange(config.batch_size) % 2).astype(np.float32)}
  mesh = mesh_lib.data_mesh(devices)
  setup = downstream.Setup.create(config, mesh)
  state = setup.init_state(config, jax.random.key(0))
  return _step(setup.train_step, state, batch, mesh)


def _step(train_step, state, batch, mesh):
  """(loss, Adam's first moment) after one step: mu = (1 - b1) * the (clipped) pmean
  gradient, which is compared rather than the parameters (Adam's first update,
  lr * g / (|g| + eps), turns round-off in a near-zero gradient into a step of lr)."""
  state, metrics = train_step(mesh_lib.put_replicated(mesh, state),
                              mesh_lib.global_batch(mesh, batch),
                              mesh_lib.put_replicated(mesh, jax.random.key(7)))
  opt_state = jax.device_get(state.opt_state)
  mu = [s.mu for s in jax.tree.leaves(opt_state, is_leaf=lambda s: hasattr(s, "mu"))
        if hasattr(s, "mu")]
  assert mu, "no Adam state found"
  return float(metrics["loss"]), mu


def main():
  assert jax.local_device_count() >= max(DEVICES), "run with 4 fake devices"
  report = {}
  for task in sys.argv[1:]:
    step = {"pretrain": pretrain_step, "downstream": downstream_step}[task]
    runs = {(c, d): step(c, jax.local_devices()[:d]) for d in DEVICES for c in CHUNKS}
    ref_loss, ref_mu = runs[(0, 1)]
    report[task] = [
        {"chunk": c, "devices": d, "loss": loss, "loss_diff": abs(loss - ref_loss),
         "grad_diff": max(float(np.max(np.abs(a - b))) / 0.1
                          for a, b in zip(jax.tree.leaves(mu), jax.tree.leaves(ref_mu)))}
        for (c, d), (loss, mu) in runs.items()]
  print(json.dumps(report))


if __name__ == "__main__":
  main()
