"""Dispatch from a config to its task, and multi-host start-up."""

from __future__ import annotations

import logging as std_logging

from absl import logging
import jax

from coughjax.train import validate


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
  """Runs `config.task` ("pretrain" or "downstream") in `workdir`.

  The config is validated first (`validate.check`), before any data is loaded or
  anything written. `num_epochs = 0` builds the data only: the features and packs
  the run would read, cached for a later run; it trains nothing, writes nothing to
  `workdir` and returns None.
  """
  validate.check(config, jax.device_count())
  logging.get_absl_logger().addFilter(_QuietOrbax())
  if config.task == "pretrain":
    from coughjax.train import pretrain as task  # pylint: disable=g-import-not-at-top
  else:
    from coughjax.train import downstream as task  # pylint: disable=g-import-not-at-top
  if config.num_epochs == 0:
    logging.warning("%s: num_epochs=0 builds the data only (features and packs); nothing "
                    "is trained and nothing is written to %s", config.get("variant", ""),
                    workdir)
    task.build_data(config)
    return None
  if config.task == "pretrain":
    return task.train_and_evaluate(config, workdir)
  return task.run(config, workdir)
