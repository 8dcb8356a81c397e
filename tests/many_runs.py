"""Trains the runs of tests/test_many.py as one program on a ("runs", "data") mesh.

  python tests/many_runs.py WORKDIR NUM_RUNS RUNS_AXIS

Prints a JSON report: each run's test scores and best step. Run with 4 simulated
devices (XLA_FLAGS=--xla_force_host_platform_device_count=4) and RUNS_AXIS=2 it
trains the runs in 2 groups, each run's batch over 2 devices; tests/test_many.py
compares it with 1 device.
"""

import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from configs import downstream as downstream_configs  # pylint: disable=g-import-not-at-top,wrong-import-position
from coughjax.train import downstream  # pylint: disable=g-import-not-at-top,wrong-import-position
from coughjax.train import many  # pylint: disable=g-import-not-at-top,wrong-import-position
from coughjax.train import mesh as mesh_lib  # pylint: disable=g-import-not-at-top,wrong-import-position

# Run i's training split: different sizes, so different steps per epoch.
SPLITS = ((0.6, 0.2, 0.2), (0.45, 0.25, 0.3), (0.5, 0.3, 0.2), (0.55, 0.25, 0.2))


def configs(num_runs: int):
  """Run i's base config (`downstream._run_config(config, i)` gives its own)."""
  out = []
  for split in SPLITS[:num_runs]:
    config = downstream_configs.get_config("transformer,runlocal")
    config.num_epochs, config.early_stopping_patience, config.monitor = 4, 1, "loss"
    config.data.split = split
    out.append(config)
  return out


def runs(workdir: pathlib.Path, num_runs: int) -> list[many.Run]:
  return [many.Run(i, downstream._run_config(c, i), workdir / f"run_{i}",  # pylint: disable=protected-access
                   downstream.load_run_splits(c, i))
          for i, c in enumerate(configs(num_runs))]


def main(workdir: str, num_runs: str, runs_axis: str) -> None:
  todo = runs(pathlib.Path(workdir), int(num_runs))
  setup = downstream.Setup.create(todo[0].config)
  results = many.train(todo, setup, pathlib.Path(workdir),
                       mesh_lib.runs_mesh(int(runs_axis)))
  print(json.dumps([{"scores": r["scores"], "best_step": r["best_step"]} for r in results]))


if __name__ == "__main__":
  main(*sys.argv[1:])
