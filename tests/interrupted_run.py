"""`launch.py`, interrupted by a signal it sends itself at a chosen moment.

  python tests/interrupted_run.py --at=metrics:STEP:SPLIT --signal=KILL LAUNCH_FLAGS...
  python tests/interrupted_run.py --at=save:STEP --signal=INT LAUNCH_FLAGS...
  python tests/interrupted_run.py --at=... --signal=TERM --only_process=1 LAUNCH_FLAGS...

`metrics:STEP:SPLIT`: right after the metrics.jsonl line of (STEP, SPLIT) is written
(or, on processes other than 0, would be). `save:STEP`: right after the resumable
checkpoint of STEP has been handed to Orbax, while it is still being written. KILL
is SIGKILL (nothing runs after it), INT is Ctrl-C, TERM is SIGTERM. With
`--only_process=I`, only process I of a multi-process run signals itself. The rest
of the command line goes to launch.py as it is. Used by tests/test_trainer.py.
"""

import os
import pathlib
import signal
import sys
from typing import Optional

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from absl import app  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position

from coughjax.train import checkpointing  # pylint: disable=g-import-not-at-top,wrong-import-position
from coughjax.train import metrics  # pylint: disable=g-import-not-at-top,wrong-import-position


def _arm(at: str, signum: int, only_process: Optional[int]) -> None:
  """Patches the trainer to send `signum` to this process at `at`."""
  kind, step, *split = at.split(":")
  step = int(step)

  def fire():
    import jax  # pylint: disable=g-import-not-at-top
    if only_process is None or jax.process_index() == only_process:
      os.kill(os.getpid(), signum)

  if kind == "metrics":
    write = metrics.MetricsWriter.write

    def write_then_fire(self, **record):
      write(self, **record)
      if (record["step"], record["split"]) == (step, split[0]):
        fire()

    metrics.MetricsWriter.write = write_then_fire
  elif kind == "save":
    save = checkpointing.save

    def save_then_fire(mgr, at_step, state, meta):
      save(mgr, at_step, state, meta)
      if at_step == step and pathlib.Path(mgr.directory).name == "checkpoints":
        fire()

    checkpointing.save = save_then_fire
  else:
    raise ValueError(f"--at={at}: expected metrics:STEP:SPLIT or save:STEP")


def main():
  ours = {}
  while sys.argv[1].split("=")[0] in ("--at", "--signal", "--only_process"):
    key, value = sys.argv.pop(1)[2:].split("=", 1)
    ours[key] = value
  only = ours.get("only_process")
  _arm(ours["at"], getattr(signal, "SIG" + ours["signal"]),
       None if only is None else int(only))
  sys.argv = [str(REPO / "launch.py")] + sys.argv[1:]
  os.chdir(REPO)
  import launch  # pylint: disable=g-import-not-at-top
  flags.mark_flag_as_required("config")
  app.run(launch.main)


if __name__ == "__main__":
  main()
