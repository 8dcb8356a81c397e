"""Many runs as one program (coughjax.train.many): each run as it trains alone (to the
bit one after another, the CPU's "auto"; up to rounding batched), resumed after an
interruption, and on a runs x data mesh of 4 devices as on 1."""

import json
import os
import signal

import numpy as np
import pytest

import conftest
import many_runs
from coughjax import checkpoints
from coughjax import files
from coughjax.train import downstream
from coughjax.train import many
from coughjax.train import metrics as metrics_lib
from coughjax.train import stopping

NUM_RUNS = 3
TOLERANCE = 1e-5  # batched runs (vmap), and a batch split over devices: rounding only


def _val_epochs(run_dir):
  return [l["epoch"] for l in checkpoints.read_metrics(run_dir) if l["split"] == "val"]


@pytest.fixture(scope="module")
def together(tmp_path_factory):
  """(workdir, results) of NUM_RUNS runs trained as one program."""
  workdir = tmp_path_factory.mktemp("many")
  runs = many_runs.runs(workdir, NUM_RUNS)
  setup = downstream.Setup.create(runs[0].config)
  return workdir, many.train(runs, setup, workdir)


def test_runs_at_once_equal_runs_alone(together, tmp_path):
  workdir, results = together
  runs = many_runs.runs(workdir, NUM_RUNS)
  setup = downstream.Setup.create(runs[0].config)
  # Different training sets (steps per epoch) and early stopping at different epochs.
  assert len({many_runs.configs(NUM_RUNS)[i].data.split for i in range(NUM_RUNS)}) == NUM_RUNS
  epochs = [_val_epochs(run.workdir) for run in runs]
  assert len({len(e) for e in epochs}) > 1, epochs
  for base, run, got in zip(many_runs.configs(NUM_RUNS), runs, results):
    want = downstream.train_one(base, tmp_path, run.index, setup, run.stores)
    assert got["best_step"] == want["best_step"]
    assert got["scores"] == want["scores"]  # runs_impl "auto" on CPU: map, to the bit
    assert got["recording"]["positives"] == want["recording"]["positives"]
    alone = tmp_path / f"run_{run.index}"
    assert _val_epochs(run.workdir) == _val_epochs(alone)
    # The outputs of training it alone, in the same layout.
    assert [r["path"] for r in files.read_predictions(
        run.workdir / downstream.PREDICTIONS_FILE)] == [r.path for r in run.stores["test"].records]
    assert json.loads((run.workdir / "config.json").read_text()) == json.loads(
        (alone / "config.json").read_text())
    params, step = checkpoints.restore_params(run.workdir / "best")
    assert step == got["best_step"] and "fc" in params
    for line_many, line_alone in zip(checkpoints.read_metrics(run.workdir),
                                     checkpoints.read_metrics(alone)):
      assert (line_many["step"], line_many["split"]) == (line_alone["step"], line_alone["split"])
      assert line_many["loss"] == line_alone["loss"]


def test_batched_runs_equal_runs_alone_up_to_rounding(together, tmp_path):
  """runs_impl="vmap" (GPU/TPU's "auto"): the runs' matmuls batched round unlike one
  run's, so the scores agree with training alone (`together`, "map") up to rounding."""
  _, want = together
  runs = many_runs.runs(tmp_path, 2)
  for run in runs:
    run.config.runs_impl = "vmap"
  setup = downstream.Setup.create(runs[0].config)
  for got, w in zip(many.train(runs, setup, tmp_path), want):
    assert got["best_step"] == w["best_step"]
    np.testing.assert_allclose(got["scores"], w["scores"], atol=TOLERANCE, rtol=0)


def test_an_interrupted_program_resumes_to_the_same_numbers(together, tmp_path, monkeypatch):
  _, want = together
  runs = many_runs.runs(tmp_path, NUM_RUNS)
  setup = downstream.Setup.create(runs[0].config)
  write = metrics_lib.MetricsWriter.write

  def write_then_signal(self, **line):
    write(self, **line)
    # Ctrl-C inside run 1's second epoch, between checkpoints.
    if self.workdir.name == "run_1" and line["split"] == "train" and line["epoch"] == 1:
      os.kill(os.getpid(), signal.SIGINT)

  monkeypatch.setattr(metrics_lib.MetricsWriter, "write", write_then_signal)
  with pytest.raises(stopping.Interrupted):
    many.train(runs, setup, tmp_path)
  assert not (tmp_path / "run_0" / downstream.PREDICTIONS_FILE).exists()
  monkeypatch.setattr(metrics_lib.MetricsWriter, "write", write)
  got = many.train(runs, setup, tmp_path)
  for g, w in zip(got, want):
    assert g["best_step"] == w["best_step"]
    np.testing.assert_allclose(g["scores"], w["scores"], atol=1e-6, rtol=0)
  for run in runs:  # each (step, split) logged once
    lines = [(l["step"], l["split"]) for l in checkpoints.read_metrics(run.workdir)]
    assert len(lines) == len(set(lines))
  # Rerun once more: every run is finished, nothing is trained again.
  again = many.train(runs, setup, tmp_path)
  assert [r["scores"] for r in again] == [r["scores"] for r in got]


def test_runs_by_data_on_four_devices_as_on_one(tmp_path):
  one = conftest.run_script("many_runs.py", str(tmp_path / "one"), "2", "1")
  four = conftest.run_script("many_runs.py", str(tmp_path / "four"), "2", "2", devices=4)
  for a, b in zip(one, four):
    assert a["best_step"] == b["best_step"]
    np.testing.assert_allclose(a["scores"], b["scores"], atol=TOLERANCE, rtol=0)


def test_runs_of_other_configs_are_refused(tmp_path):
  runs = many_runs.runs(tmp_path, 2)
  runs[1].config.batch_size = 8
  with pytest.raises(ValueError, match="batch_size"):
    many.check_shared(runs)
