r"""Runs per hour: R downstream runs trained as one program against one by one.

  python benchmarks/many_runs.py [--runs=5] [--participants=48] [--epochs=3]
                                 [--rounds=2] [--step_repeats=5] [--json=PATH]
  python benchmarks/many_runs.py --quick     # seconds: 2 runs, 1 round, tiny step

Two measurements, every mode in the same run:

* whole runs: `--runs` seeds of `configs/downstream.py:transformer,runlocal` on the
  built-in synthetic data (`--participants`, `--epochs`, no early stopping), trained
  one by one (`downstream.train_one`, today's `trainer.fit` per run) and at once
  (`coughjax.train.many.train`: one program over a leading runs axis, its step going
  over the runs one after another, `runs_impl="map"`, or batched, "vmap"), each in a
  fresh subprocess (compilation, validation, checkpoints and test scoring included,
  as a protocol unit pays them), the modes alternated `--rounds` times. Runs per
  hour = runs / median wall seconds.
* the train step alone, steady state, at the paper's downstream size (batch 128,
  the d = 64 Transformer of `configs/downstream.py:transformer`): one step of R runs
  (map, vmap) against R calls of the one-run step, interleaved (`harness`).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

import harness  # pylint: disable=g-import-not-at-top

# Each mode and its runs_impl (None: one run at a time, `downstream.train_one`).
MODES = {"one by one": None, "at once, map": "map", "at once, vmap": "vmap"}


def _configs(args):
  from configs import downstream as downstream_configs  # pylint: disable=g-import-not-at-top
  config = downstream_configs.get_config("transformer,runlocal")
  config.num_runs, config.num_epochs = args.runs, args.epochs
  config.data.num_participants = args.participants
  return config


def child(args) -> None:
  """One mode's whole runs in this process: prints {"seconds": ...}."""
  from coughjax.train import downstream  # pylint: disable=g-import-not-at-top
  from coughjax.train import many  # pylint: disable=g-import-not-at-top
  config = _configs(args)
  workdir = pathlib.Path(args.workdir)
  splits = [downstream.load_run_splits(config, i) for i in range(args.runs)]
  start = time.perf_counter()
  setup = downstream.Setup.create(config)
  if args.child == "alone":
    for i, stores in enumerate(splits):
      downstream.train_one(config, workdir, i, setup, stores)
  else:
    config.runs_impl = args.child
    many.train([many.Run(i, downstream._run_config(config, i), workdir / f"run_{i}",  # pylint: disable=protected-access
                         stores) for i, stores in enumerate(splits)], setup, workdir)
  print(json.dumps({"seconds": time.perf_counter() - start}))


def whole_runs(args) -> dict[str, list[float]]:
  """Wall seconds of each mode's subprocess, round by round."""
  seconds = {mode: [] for mode in MODES}
  flags = [f"--runs={args.runs}", f"--participants={args.participants}",
           f"--epochs={args.epochs}"]
  for r in range(args.rounds):
    order = list(seconds) if r % 2 == 0 else list(seconds)[::-1]
    for mode in order:
      with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run(
            [sys.executable, __file__, *flags, f"--workdir={tmp}",
             f"--child={MODES[mode] or 'alone'}"],
            capture_output=True, text=True, check=False, cwd=harness.REPO)
      if proc.returncode:
        raise RuntimeError(f"{mode} failed:\n{proc.stderr[-3000:]}")
      seconds[mode].append(json.loads(proc.stdout.strip().splitlines()[-1])["seconds"])
      print(f"round {r + 1}/{args.rounds}, {mode}: {seconds[mode][-1]:.1f} s",
            file=sys.stderr)
  return seconds


def step_alone(args) -> dict[str, harness.Timing]:
  """One train step of R runs (map, vmap) vs R one-run steps (steady state)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from configs import downstream as downstream_configs  # pylint: disable=g-import-not-at-top
  from coughjax.train import downstream  # pylint: disable=g-import-not-at-top
  from coughjax.train import many  # pylint: disable=g-import-not-at-top
  from coughjax.train import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  config = downstream_configs.get_config("transformer")
  config.batch_size = args.step_batch
  setup = downstream.Setup.create(config)
  r, b = args.runs, config.batch_size
  rng = np.random.default_rng(0)
  x = rng.normal(size=(r, b, config.features.clip_frames, config.features.nfilt)
                 ).astype(np.float32)
  y = (rng.random((r, b)) < 0.5).astype(np.float32)
  states = [setup.init_state(config, jax.random.key(i)) for i in range(r)]
  keys = [jax.random.key(100 + i) for i in range(r)]
  one = {"state": [mesh_lib.put_replicated(setup.mesh, s) for s in states],
         "key": [mesh_lib.put_replicated(setup.mesh, k) for k in keys],
         "batch": [mesh_lib.global_batch(setup.mesh, {"x": x[i], "y": y[i]}) for i in range(r)]}
  mesh = mesh_lib.runs_mesh()

  def alone():
    for i in range(r):
      one["state"][i], m = setup.train_step(one["state"][i], one["batch"][i], one["key"][i])
    jax.block_until_ready(m)

  def at_once(impl):
    config.runs_impl = impl
    train_step, _ = many.make_steps(setup.model, config, mesh)
    stacked = {"state": mesh_lib.put_runs(mesh, many._stack(states)),  # pylint: disable=protected-access
               "key": mesh_lib.put_runs(mesh, jax.random.wrap_key_data(
                   np.stack([jax.random.key_data(k) for k in keys]))),
               "batch": mesh_lib.global_runs_batch(mesh, {"x": x, "y": y}, r, b),
               "active": mesh_lib.put_runs(mesh, np.ones(r, bool))}

    def step():
      stacked["state"], m = train_step(stacked["state"], stacked["batch"], stacked["key"],
                                       stacked["active"])
      jax.block_until_ready(m)
    return step

  return harness.time_interleaved(
      {mode: at_once(impl) if impl else alone for mode, impl in MODES.items()},
      repeats=args.step_repeats)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--runs", type=int, default=5)
  parser.add_argument("--participants", type=int, default=48)
  parser.add_argument("--epochs", type=int, default=3)
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--step_batch", type=int, default=128)
  parser.add_argument("--step_repeats", type=int, default=5)
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--json", default="")
  parser.add_argument("--child", default="", help=argparse.SUPPRESS)
  parser.add_argument("--workdir", default="", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    child(args)
    return
  if args.quick:
    args.runs, args.participants, args.epochs, args.rounds = 2, 24, 1, 1
    args.step_batch, args.step_repeats = 16, 1
  machine = harness.machine()
  seconds = whole_runs(args)
  steps = step_alone(args)
  runs_per_hour = {m: 3600 * args.runs / statistics.median(s) for m, s in seconds.items()}
  print(f"# {args.runs} runs of transformer,runlocal ({args.participants} participants, "
        f"{args.epochs} epochs), {args.rounds} rounds; {harness.describe(machine)}\n")
  print(harness.markdown_table(
      ["mode", "wall s per round", "runs / hour", "vs one by one"],
      [[m, ", ".join(f"{x:.1f}" for x in s), f"{runs_per_hour[m]:,.0f}",
        f"{runs_per_hour[m] / runs_per_hour['one by one']:.2f}x"]
       for m, s in seconds.items()]))
  print(f"\n# train step, batch {args.step_batch}, {args.runs} runs "
        "(median, IQR over repeats)\n")
  base = steps["one by one"].median
  print(harness.markdown_table(
      ["mode", "s per step of every run", "IQR", "runs x steps / s", "vs one by one"],
      [[m, f"{t.median:.4f}", "–".join(f"{q:.4f}" for q in t.iqr),
        f"{args.runs / t.median:,.1f}", f"{base / t.median:.2f}x"]
       for m, t in steps.items()]))
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps({
        "machine": machine, "args": vars(args), "whole_runs_seconds": seconds,
        "runs_per_hour": runs_per_hour,
        "step_seconds": {m: t.samples for m, t in steps.items()}}, indent=1))


if __name__ == "__main__":
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  main()
