"""A run's metrics log: metrics.jsonl and TensorBoard event files holding the same
scalars (read back with TensorBoard's own reader), each step once after a resume,
and metrics.jsonl alone, with one warning, without tensorboardX."""

import logging
import sys

import pytest
from tensorboard.backend.event_processing import event_accumulator

from configs import pretrain as pretrain_configs
from coughjax import checkpoints
from coughjax.train import metrics
from coughjax.train import run


def _scalars(workdir) -> dict[str, list[tuple[int, float]]]:
  """{tag: [(step, value), ...]} as TensorBoard shows the event files of `workdir`
  (a step logged twice would be there twice)."""
  acc = event_accumulator.EventAccumulator(str(workdir))
  acc.Reload()
  return {tag: [(e.step, e.value) for e in acc.Scalars(tag)]
          for tag in acc.Tags()["scalars"]}


def test_a_run_writes_its_metrics_as_tensorboard_events(tmp_path):
  config = pretrain_configs.get_config("transformer_m50,runlocal")
  config.num_epochs = 1
  config.lock()
  run.run(config, str(tmp_path))
  assert list(tmp_path.glob("events.out.tfevents.*"))
  want = {}
  for record in checkpoints.read_metrics(tmp_path):
    for key, value in record.items():
      if key not in ("step", "epoch", "split") and not isinstance(value, bool):
        want.setdefault(f"{record['split']}/{key}", {})[record["step"]] = value
  assert {"train/loss", "train/lr", "train/steps_per_sec", "val/loss"} <= set(want)
  got = _scalars(tmp_path)
  assert set(got) == set(want)
  for tag, values in want.items():
    steps = [step for step, _ in got[tag]]
    assert steps == sorted(values), tag
    assert dict(got[tag]) == pytest.approx(values, rel=1e-6), tag  # stored as float32


def test_a_resumed_log_holds_each_step_once(tmp_path):
  """A run killed after logging step 4 resumes from its checkpoint of step 2: both
  logs show steps 1-2 of the first run and 3-4 of the second."""
  first = metrics.MetricsWriter(tmp_path)
  first.start(0)
  for step in (1, 2, 3, 4):
    first.write(step=step, epoch=0, split="train", loss=10.0 + step)
  first.close()
  second = metrics.MetricsWriter(tmp_path)
  second.start(2)
  for step in (3, 4):
    second.write(step=step, epoch=0, split="train", loss=20.0 + step)
  second.close()
  assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 2
  # The first file's steps 3 and 4 are hidden by the second's restart marker.
  assert _scalars(tmp_path) == {"train/loss": [(1, 11.0), (2, 12.0), (3, 23.0), (4, 24.0)]}
  assert [(r["step"], r["loss"]) for r in checkpoints.read_metrics(tmp_path)] == [
      (1, 11.0), (2, 12.0), (3, 23.0), (4, 24.0)]


def test_without_tensorboardx_one_warning_and_metrics_jsonl_alone(tmp_path, monkeypatch,
                                                                   caplog):
  monkeypatch.setitem(sys.modules, "tensorboardX", None)  # import raises ImportError
  with caplog.at_level(logging.WARNING):
    for name in ("a", "b"):
      writer = metrics.MetricsWriter(tmp_path / name)
      (tmp_path / name).mkdir()
      writer.start(0)
      writer.write(step=1, epoch=0, split="train", loss=1.0)
      writer.close()
      assert checkpoints.read_metrics(tmp_path / name) == [
          {"step": 1, "epoch": 0, "split": "train", "loss": 1.0}]
      assert not list((tmp_path / name).glob("events.*"))
  warnings = [r for r in caplog.records if "tensorboardX is not installed" in r.getMessage()]
  assert len(warnings) == 1 and "coughjax[tensorboard]" in warnings[0].getMessage()
