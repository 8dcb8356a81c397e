"""One pre-training step in a multi-process run (or the 1-process reference).

  python tests/multihost_step.py --out=DIR                    # 1 process, all devices
  python tests/multihost_step.py --out=DIR --coordinator=127.0.0.1:PORT \\
      --num_processes=2 --process_id=I                        # one of 2 processes

Each process builds only its own rows of the global contrastive batch (as the
trainer does, through `mesh.process_rows`), runs one train step whose collectives
span every process (gloo on CPU), and process 0 writes the loss and updated
parameters to DIR/result.npz and prints a JSON line. Used by tests/test_pretrain.py.
"""

import argparse
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from configs import pretrain as pretrain_configs  # pylint: disable=g-import-not-at-top,wrong-import-position
from coughjax.train import mesh as mesh_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from coughjax.train import pretrain  # pylint: disable=g-import-not-at-top,wrong-import-position
from coughjax.train import run  # pylint: disable=g-import-not-at-top,wrong-import-position


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--out", required=True)
  parser.add_argument("--coordinator", default="")
  parser.add_argument("--num_processes", type=int, default=1)
  parser.add_argument("--process_id", type=int, default=0)
  args = parser.parse_args()
  if args.coordinator:
    run.initialize_distributed(args.coordinator, args.num_processes, args.process_id)

  config = pretrain_configs.get_config("transformer_m50,runlocal")
  batch = config.batch_size
  # The global batch every process agrees on; each keeps its own rows.
  views = np.random.default_rng(0).normal(size=(batch, 2, 96, 64)).astype(np.float32)
  mesh = mesh_lib.data_mesh()
  mine = views[mesh_lib.process_rows(mesh, batch)]

  model = pretrain.build_model(config.model)
  train_step, _ = pretrain.make_steps(model, config, mesh)
  state = pretrain.init_state(model, config, jax.random.key(0))
  state, metrics = train_step(mesh_lib.put_replicated(mesh, state),
                              mesh_lib.global_batch(mesh, mine),
                              mesh_lib.put_replicated(mesh, jax.random.key(7)))
  params = jax.device_get(state.params)
  if jax.process_index() == 0:
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    leaves = {jax.tree_util.keystr(k): v
              for k, v in jax.tree_util.tree_flatten_with_path(params)[0]}
    np.savez(out / "result.npz", loss=float(metrics["loss"]), **leaves)
  print(json.dumps({"process": jax.process_index(), "processes": jax.process_count(),
                    "devices": jax.device_count(), "loss": float(metrics["loss"])}))


if __name__ == "__main__":
  main()
