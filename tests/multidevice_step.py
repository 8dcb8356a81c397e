"""One pre-training step at B = 1024 on 1 device and on 4 (run with 4 fake devices).

Prints a JSON report: both losses, the largest gradient difference, and the largest
difference of the updated parameters. Adam's first update is lr * g / (|g| + eps):
for a coordinate whose true gradient is zero (e.g. the attention key bias, to which
softmax is invariant) it turns float rounding noise into a step of up to lr, so the
parameter comparison leaves out coordinates with |g| < GRAD_FLOOR and reports how
many; their gradients are compared like all others. Used by tests/test_pretrain.py;
standalone:
  XLA_FLAGS=--xla_force_host_platform_device_count=4 python tests/multidevice_step.py
"""

import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from configs import pretrain as pretrain_configs  # pylint: disable=g-import-not-at-top,wrong-import-position
from coughjax.train import mesh as mesh_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from coughjax.train import pretrain  # pylint: disable=g-import-not-at-top,wrong-import-position


def one_step(config, views, devices):
  """Loss and parameters after one train step over `devices` from the same init."""
  mesh = mesh_lib.data_mesh(devices)
  model = pretrain.build_model(config.model)
  train_step, _ = pretrain.make_steps(model, config, mesh)
  state = mesh_lib.put_replicated(mesh, pretrain.init_state(model, config, jax.random.key(0)))
  key = mesh_lib.put_replicated(mesh, jax.random.key(7))
  state, metrics = train_step(state, mesh_lib.global_batch(mesh, views), key)
  return float(metrics["loss"]), jax.device_get(state.params)


GRAD_FLOOR = 1e-6


def grads(config, views, devices):
  """pmean-ed gradients of the train loss over `devices` (as the train step takes)."""
  mesh = mesh_lib.data_mesh(devices)
  model = pretrain.build_model(config.model)
  state = pretrain.init_state(model, config, jax.random.key(0))

  def grad_fn(params, shard, rng):
    g = jax.grad(lambda p: pretrain.contrastive_loss_fn(
        model, p, shard, rng, train=True, chunk_size=config.model.chunk_size)[0])(params)
    return jax.lax.pmean(g, pretrain.AXIS)

  P = jax.sharding.PartitionSpec
  step = mesh_lib.per_device(grad_fn, mesh, (P(), P(pretrain.AXIS), P()), P())
  return jax.device_get(step(mesh_lib.put_replicated(mesh, state.params),
                             mesh_lib.global_batch(mesh, views),
                             mesh_lib.put_replicated(mesh, jax.random.key(7))))


def main():
  assert jax.local_device_count() >= 4, "run with 4 fake devices"
  config = pretrain_configs.get_config("transformer_m50")
  batch = config.batch_size
  views = np.random.default_rng(0).normal(size=(batch, 2, 96, 64)).astype(np.float32)
  loss1, params1 = one_step(config, views, jax.local_devices()[:1])
  loss4, params4 = one_step(config, views, jax.local_devices()[:4])
  g1 = jax.tree.leaves(grads(config, views, jax.local_devices()[:1]))
  g4 = jax.tree.leaves(grads(config, views, jax.local_devices()[:4]))
  grad_diff = max(float(np.max(np.abs(a - b))) for a, b in zip(g1, g4))
  param_diff, excluded, total = 0.0, 0, 0
  for a, b, g in zip(jax.tree.leaves(params1), jax.tree.leaves(params4), g1):
    ok = np.abs(g) >= GRAD_FLOOR
    param_diff = max(param_diff, float(np.max(np.abs(a - b)[ok], initial=0.0)))
    excluded += int(np.sum(~ok))
    total += g.size
  print(json.dumps({"batch": batch, "loss1": loss1, "loss4": loss4,
                    "max_grad_diff": grad_diff, "max_param_diff": param_diff,
                    "near_zero_grad_coords": excluded, "num_params": total}))


if __name__ == "__main__":
  main()
