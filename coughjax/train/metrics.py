"""What a run logs: progress lines, JSON lines in `metrics.jsonl`, TensorBoard event files.

The train step's metrics stay on the devices until a log step (`TrainLog`) reads
them all at once: one absl progress line (step, loss, lr, steps/s, ETA) and one
record of their averages. A non-finite loss stops training there, with its step.

`metrics.jsonl` holds one JSON object per log step and per validation (`step`,
`epoch`, `split` and the metrics); it is the record that reports and plots read
(`coughjax.checkpoints.read_metrics`). The same scalars go to TensorBoard event
files in the workdir, tagged `<split>/<metric>` (`train/loss`, `val/auc`), so that

  tensorboard --logdir runs/

shows every run under runs/ (a downstream workdir's seeds as its `run_i`). They
need the `tensorboard` extra (`pip install 'coughjax[tensorboard]'`: tensorboardX
writes them, tensorboard shows them); without tensorboardX the run logs one warning
and writes metrics.jsonl alone. Only process 0 writes either.

A resumed run logs again the steps after its checkpoint: `start` drops them from
metrics.jsonl, and its event file opens with TensorBoard's restart marker (a
SessionLog START at the next step), which hides the earlier files' events from that
step on, so both hold each step once.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import pathlib
import time
from typing import Any, Callable, Optional

from absl import logging
import jax

from coughjax.checkpoints import METRICS_FILE
# Fields of a record that say where it belongs rather than what was measured.
_KEYS = ("step", "epoch", "split")


def _event_writer(workdir: pathlib.Path, step: int) -> Optional[Any]:
  """A tensorboardX SummaryWriter on `workdir` hiding earlier events after `step`,
  or None (with one warning per process) if tensorboardX is not installed."""
  try:
    import tensorboardX  # pylint: disable=g-import-not-at-top
  except ImportError:
    logging.log_first_n(
        logging.WARNING, "tensorboardX is not installed, so no TensorBoard event files "
        "are written (metrics.jsonl has every metric); pip install "
        "'coughjax[tensorboard]' for them", 1)
    return None
  # The name holds the time in seconds; the suffix orders (and keeps apart) two files
  # opened within one second, which would otherwise share a name.
  return tensorboardX.SummaryWriter(str(workdir), purge_step=step + 1,
                                    filename_suffix=f".{time.time_ns()}")


class MetricsWriter:
  """A run's metrics log (see the module docstring), written by process 0 only."""

  def __init__(self, workdir: pathlib.Path):
    self.workdir = pathlib.Path(workdir)
    self.path = self.workdir / METRICS_FILE
    self.enabled = jax.process_index() == 0
    self.events = None

  def start(self, step: int) -> None:
    """Starts logging at `step`, the step a run resumes from (0 for a fresh start):
    drops what was logged after it (`truncate_after`) and opens an event file."""
    self.truncate_after(step)
    if self.enabled:
      self.events = _event_writer(self.workdir, step)

  def truncate_after(self, step: int) -> None:
    """Drops the lines logged after `step`, the step a run resumes from (0 for a
    fresh start): a run that died before its next checkpoint logs them again.

    The file is replaced in one rename, so a crash here loses nothing; a last line
    cut short by a crash while it was written is dropped as well.
    """
    if not (self.enabled and self.path.exists()):
      return
    lines = self.path.read_text().splitlines()
    kept = []
    for i, line in enumerate(lines):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        if i == len(lines) - 1:
          logging.warning("%s: dropping its last line, cut short (%s)", self.path, e)
          continue
        raise ValueError(f"{self.path}, line {i + 1}: not JSON ({e}); fix or remove "
                         "the line, then rerun") from e
      if record["step"] <= step:
        kept.append(line + "\n")
    tmp = self.path.with_name(self.path.name + ".tmp")
    tmp.write_text("".join(kept))
    os.replace(tmp, self.path)

  def write(self, **record) -> None:
    """Logs one record: `step`, `epoch`, `split` and its metrics."""
    if not self.enabled:
      return
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
    if self.events is not None:
      for key, value in record.items():
        if key not in _KEYS and isinstance(value, numbers.Real) and not isinstance(value, bool):
          self.events.add_scalar(f"{record['split']}/{key}", value, record["step"])
      self.events.flush()  # as far as metrics.jsonl: a killed run loses neither

  def close(self) -> None:
    if self.events is not None:
      self.events.close()
      self.events = None


def _eta(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class TrainLog:
  """The train split's log: each step's metrics (replicated scalars, "loss" among
  them) kept on the devices until `flush` reads them all at once; at a log step,
  `log` writes their averages since the last one.

  Attributes:
    name: the task's, for the log lines and errors.
    total_steps: of the whole run, for the ETA.
    start_step: the step the run starts (or resumes) at, for steps/s and the ETA.
    writer: where the records go.
    last_good: says where the newest checkpoint is, for the non-finite loss error.
  """

  def __init__(self, name: str, total_steps: int, start_step: int, writer: MetricsWriter,
               last_good: Callable[[], str]):
    self.name, self.total_steps = name, total_steps
    self.writer, self.last_good = writer, last_good
    self.pending: list[tuple[int, dict[str, jax.Array]]] = []
    self.sums: dict[str, float] = {}
    self.count = 0
    self.t_start = self.t_last = time.time()
    self.s_start = self.s_last = start_step

  def add(self, step: int, metrics: dict[str, jax.Array]) -> None:
    self.pending.append((step, metrics))

  def flush(self) -> None:
    """Reads the pending metrics; raises at the first step with a non-finite loss."""
    for step, metrics in jax.device_get(self.pending):
      values = {k: float(v) for k, v in metrics.items()}
      if not math.isfinite(values["loss"]):
        raise FloatingPointError(
            f"{self.name}: loss is {values['loss']} at step {step}; stopped. Last "
            f"good checkpoint: {self.last_good()}")
      for k, v in values.items():
        self.sums[k] = self.sums.get(k, 0.0) + v
      self.count += 1
    self.pending = []

  def log(self, step: int, epoch: int, lr: float) -> None:
    """Logs the averages of the steps since the last log step, ending at `step`."""
    self.flush()
    now = time.time()
    rate = (step - self.s_last) / max(now - self.t_last, 1e-9)
    avg = {k: v / self.count for k, v in self.sums.items()}
    self.sums, self.count = {}, 0
    eta = (self.total_steps - step) * (now - self.t_start) / max(step - self.s_start, 1)
    logging.info("%s step %d/%d (epoch %d): %s, lr %.2e, %.2f steps/s, ETA %s",
                 self.name, step, self.total_steps, epoch,
                 ", ".join(f"{k} {v:.4f}" for k, v in avg.items()), lr, rate, _eta(eta))
    self.writer.write(step=step, epoch=epoch, split="train", lr=lr, steps_per_sec=rate,
                      **avg)
    self.t_last, self.s_last = now, step
