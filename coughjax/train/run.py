"""Dispatch from a config to its task, and multi-host start-up."""

from __future__ import annotations

import logging as std_logging

from absl import logging
import jax


def initialize_distributed(coordinator: str, num_processes: int, process_id: int) -> None:
  """Joins a multi-process run; on CPU, collectives go over gloo."""
  if jax.config.jax_platforms in (None, "", "cpu") or "cpu" in str(jax.config.jax_platforms):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=coordinator,
                             num_processes=num_processes, process_id=process_id)
  logging.info("process %d of %d: %d local / %d global devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())


class _QuietOrbax(std_logging.Filter):
  """Orbax logs every checkpoint step at INFO; keep its warnings, drop the chatter."""

  def filter(self, record):
    return record.levelno >= std_logging.WARNING or "/orbax/" not in record.pathname


def run(config, workdir: str):
  """Runs `config.task` ("pretrain" or "downstream") in `workdir`."""
  logging.get_absl_logger().addFilter(_QuietOrbax())
  if config.task == "pretrain":
    from coughjax.train import pretrain  # pylint: disable=g-import-not-at-top
    return pretrain.train_and_evaluate(config, workdir)
  if config.task == "downstream":
    from coughjax.train import downstream  # pylint: disable=g-import-not-at-top
    return downstream.run(config, workdir)
  raise ValueError(f"config.task must be 'pretrain' or 'downstream', got {config.task!r}")
