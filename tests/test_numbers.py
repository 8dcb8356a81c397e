"""The runlocal numbers do not change: pre-training losses and downstream test scores.

A refactor that should change no number (moving code between modules, splitting the
trainer) is checked against `tests/data/runlocal_numbers.json`, written by this module
from the code as it was before:

  python tests/test_numbers.py --write   # only when a change of numbers is intended

It holds, for `configs/pretrain.py:transformer_m50,runlocal` (contrastive pre-training
with the 50 % key mask), every logged train and validation loss and accuracy; and for
`configs/downstream.py:ensemble,runlocal` (both branches fine-tuned from that run's
best checkpoint, DS masking at 50 % in training and at inference), each run's
per-epoch validation loss, its best step and its test predictions (one probability
per recording, as run_i/test_predictions.csv holds them).

Tolerance: the file is also checked on machines whose CPU differs (AMD EPYC and Intel
Xeon: XLA:CPU's kernels differ with the vector width, so float sums are taken in
another order). Measured on this Intel Xeon (AVX-512) against the same runs compiled
for 128-bit vectors (XLA_FLAGS=--xla_cpu_max_isa=SSE4_2; AVX2 gave identical numbers),
the largest differences were 1.9e-6 in the pre-training losses and 2.6e-4 in the
downstream numbers, where eight Adam steps amplify the rounding noise (on 4 simulated
devices, whose gradient sums split four ways, 2e-3). So the pre-training losses, which
see every change of keys, masks, batches or the step, are held to 2e-5 (ten times the
noise); the downstream numbers to 2e-3: a change of seed moves them by up to 0.19, but
they are weakly sensitive (the 2 x 2 epochs hardly train: a DS mask rate of 0.45 for
0.5 moves them by 2.1e-3), so they guard the downstream wiring (restore, best
checkpoint, scoring) rather than fine numerics.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys

import numpy as np

REFERENCE = pathlib.Path(__file__).resolve().parent / "data" / "runlocal_numbers.json"
# Absolute tolerances per part (see the module docstring).
ATOL = {"pretrain": 2e-5, "downstream": 2e-3}


def compute(root: pathlib.Path) -> dict:
  """Runs both runlocal configs in `root` (a fresh folder); returns their numbers."""
  from configs import downstream as downstream_configs  # pylint: disable=g-import-not-at-top
  from configs import pretrain as pretrain_configs  # pylint: disable=g-import-not-at-top
  from coughjax import checkpoints  # pylint: disable=g-import-not-at-top
  from coughjax import files  # pylint: disable=g-import-not-at-top
  from coughjax.train import downstream  # pylint: disable=g-import-not-at-top
  from coughjax.train import run  # pylint: disable=g-import-not-at-top

  pre = pretrain_configs.get_config("transformer_m50,runlocal")
  pre.lock()
  pre_dir = root / "runs" / "transformer_m50_runlocal"
  run.run(pre, str(pre_dir))
  config = downstream_configs.get_config("ensemble,runlocal")
  for branch in downstream_configs.BRANCHES:
    config[branch].checkpoint = str(pre_dir)
  config.lock()
  results = run.run(config, str(root / "ensemble"))

  def logged(workdir, split):
    return [{k: l[k] for k in ("step", "epoch", "loss", "accuracy") if k in l}
            for l in checkpoints.read_metrics(workdir) if l["split"] == split]

  runs = []
  for r in results["runs"]:
    run_dir = root / "ensemble" / f"run_{r['run']}"
    rows = files.read_predictions(run_dir / downstream.PREDICTIONS_FILE)
    runs.append({"best_step": r["best_step"], "val": logged(run_dir, "val"),
                 "test": {row["path"]: row["probability"] for row in rows}})
  return {"pretrain": {"train": logged(pre_dir, "train"), "val": logged(pre_dir, "val")},
          "downstream": runs}


def _flat(tree, prefix=""):
  """{path: number} of a JSON tree's numbers (lists indexed, dicts keyed)."""
  items = tree.items() if isinstance(tree, dict) else enumerate(tree)
  out = {}
  for k, v in items:
    if isinstance(v, (dict, list)):
      out.update(_flat(v, f"{prefix}{k}/"))
    else:
      out[f"{prefix}{k}"] = v
  return out


def max_difference(got: dict, want: dict) -> float:
  """The largest absolute difference of two `compute` results of the same shape."""
  got, want = _flat(got), _flat(want)
  assert got.keys() == want.keys(), sorted(got.keys() ^ want.keys())[:5]
  return max(abs(float(got[k]) - float(want[k])) for k in want)


def test_runlocal_numbers_unchanged(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  got = _flat(compute(tmp_path))
  want = _flat(json.loads(REFERENCE.read_text()))
  assert got.keys() == want.keys(), sorted(got.keys() ^ want.keys())[:5]
  for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=0, atol=ATOL[k.split("/")[0]],
                               err_msg=k)


if __name__ == "__main__":
  # --write: (re)writes the reference; else prints the largest difference from it.
  import tempfile  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, str(REFERENCE.parents[2]))
  with tempfile.TemporaryDirectory() as d:
    os.environ.setdefault("COUGHJAX_CACHE", str(pathlib.Path(d) / "cache"))
    os.chdir(d)
    numbers = compute(pathlib.Path(d))
  if "--write" in sys.argv:
    REFERENCE.write_text(json.dumps(numbers, indent=1) + "\n")
  else:
    reference = json.loads(REFERENCE.read_text())
    print({part: max_difference(numbers[part], reference[part]) for part in ATOL})
