"""One pre-training step in a multi-process run (or the 1-process reference).

  python tests/multihost_step.py --out=DIR                    # 1 process, all devices
  python tests/multihost_step.py --out=DIR --coordinator=127.0.0.1:PORT \\
      --num_processes=2 --process_id=I                        # one of 2 processes

Each process builds only its own rows of the global contrastive batch (as the
trainer does, through `DeviceLayout.current()`), runs one pmapped step whose
collectives span every process (gloo on CPU), and process 0 writes the loss and
updated parameters to DIR/result.npz and prints a JSON line. Used by
tests/test_pretrain.py.
"""

import argparse
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from configs import pretrain as pretrain_configs  # pylint: disable=g-import-not-at-top,wrong-import-position
from coughjax.data import pipeline  # pylint: disable=g-import-not-at-top,wrong-import-position
from coughjax.train import pretrain  # pylint: disable=g-import-not-at-top,wrong-import-position
from coughjax.train import run  # pylint: disable=g-import-not-at-top,wrong-import-position
from coughjax.train import trainer  # pylint: disable=g-import-not-at-top,wrong-import-position


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
  views = np.random.default_rng(0).normal(size=(2, batch, 96, 64)).astype(np.float32)
  layout = pipeline.DeviceLayout.current()
  mine = views[:, layout.rows(batch)]
  shards = mine.reshape((2, layout.local_devices, -1) + mine.shape[2:]).swapaxes(0, 1)

  model = pretrain.build_model(config.model)
  train_step, _ = pretrain.make_steps(model, config, layout.total_devices)
  state = pretrain.init_state(model, config, jax.random.key(0))
  p_state, metrics = train_step(trainer.replicate(state), shards,
                                trainer.replicate(jax.random.key(7)))
  params = jax.device_get(trainer.unreplicate(p_state.params))
  if jax.process_index() == 0:
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    leaves = {jax.tree_util.keystr(k): v
              for k, v in jax.tree_util.tree_flatten_with_path(params)[0]}
    np.savez(out / "result.npz", loss=float(metrics["loss"][0]), **leaves)
  print(json.dumps({"process": jax.process_index(), "processes": jax.process_count(),
                    "devices": jax.device_count(), "loss": float(metrics["loss"][0])}))


if __name__ == "__main__":
  main()
