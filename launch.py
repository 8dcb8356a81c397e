r"""coughjax entry point: pre-training or downstream training from a config file.

  python launch.py --config=configs/pretrain.py:transformer_m50 [--workdir=DIR]
  python launch.py --config=configs/downstream.py:ensemble
  python launch.py --config=configs/pretrain.py:gru,runlocal --config.batch_size=8

Multi-host: pass --coordinator=HOST:PORT --num_processes=N --process_id=I (or set
COUGHJAX_COORDINATOR / COUGHJAX_NUM_PROCESSES / COUGHJAX_PROCESS_ID) to call
`jax.distributed.initialize`; each process then feeds its rows of the global batch,
and process 0 writes the files.

Ctrl-C (SIGINT) or SIGTERM on any process stops every process at the next training
step, which is checkpointed; they exit with status 130 (SIGINT) or 143 (SIGTERM).
Rerunning the same command resumes.

A workdir belongs to one config (`coughjax.train.fingerprint`): the default workdir
ignores overrides, so a rerun there with another value (say
--config.model.mask_rate=0.75) is refused, naming the keys; give it its own
--workdir. Only `num_epochs` (which extends a finished run), early stopping, logging,
checkpointing and chunking may change between runs in one workdir.
"""

import os

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from coughjax import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "config file[:variant[,runlocal]]",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "where checkpoints, metrics and results go "
                               "(default: runs/<variant>, runs/<variant>_runlocal)")
_COORDINATOR = flags.DEFINE_string("coordinator", os.environ.get("COUGHJAX_COORDINATOR"),
                                   "multi-host: coordinator address host:port")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", int(os.environ.get("COUGHJAX_NUM_PROCESSES", "1")),
    "multi-host: number of processes")
_PROCESS_ID = flags.DEFINE_integer("process_id", int(os.environ.get("COUGHJAX_PROCESS_ID", "0")),
                                   "multi-host: this process's index")


@cli.user_errors
def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  import jax  # pylint: disable=g-import-not-at-top
  from coughjax.train import run  # pylint: disable=g-import-not-at-top
  if _COORDINATOR.value:
    run.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  config = _CONFIG.value
  workdir = _WORKDIR.value or os.path.join(
      "runs", config.variant + ("_runlocal" if config.runlocal else ""))
  logging.info("%s on %d device(s) (%s), workdir %s", config.variant, jax.device_count(),
               jax.devices()[0].platform, workdir)
  run.run(config, workdir)  # a signal: stopping.Interrupted says at which step


if __name__ == "__main__":
  flags.mark_flag_as_required("config")
  app.run(main)
