"""When training stops: a signal, early stopping, or the epochs all done.

A run is finished (`is_finished`) when it has trained the *current* config's
`num_epochs`, or when the validation monitor has not improved (`better`; a NaN counts
as its worst value) for `early_stopping_patience` epochs: `after_epoch` keeps that
count in the checkpoint's meta. It is decided from the current config, so a larger
`num_epochs` extends a finished run.

Ctrl-C or SIGTERM on any process stops every process at one step (`StopSignal`).
Ctrl-C sends SIGINT; a preempted cloud VM or a cluster job's time limit sends
SIGTERM. A KeyboardInterrupt raised wherever Python happens to be (an XLA
compilation, an Orbax save) leaves threads running and checkpoints half-written, so
while training the handler only records the signal (a second one raises
KeyboardInterrupt at once), and the loop asks `StopSignal.agreed` after every step.

With several processes, one that stopped alone would leave the others waiting in the
next step's collectives, and its checkpoint (a collective write) would hang. So
`agreed` is itself a collective: a tiny all-reduce (max) of every process's signal
number over the mesh, called by every process after the same step. All see the same
answer, checkpoint that step together and stop with the same signal (SIGTERM when
both arrived). It costs one host-device round trip per step, in multi-process runs
only; a single process reads its own flag.

`jax.experimental.multihost_utils.reached_preemption_sync_point` is the other way
JAX offers, but it hears SIGTERM only, through the coordination service's own SIGTERM
handler (which this one replaces while training), not Ctrl-C, and needs
`jax.distributed`; the all-reduce works everywhere, CPU included.
"""

from __future__ import annotations

import math
import signal
import threading
from typing import Optional

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from coughjax.train import mesh as mesh_lib

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
  """A signal stopped training at a step, which is checkpointed: rerunning the same
  command resumes there. `exit_code` is the shell's for that signal (128 + number)."""

  def __init__(self, step: int, signum: int = signal.SIGINT):
    verb = "interrupted" if signum == signal.SIGINT else (
        f"stopped by {signal.Signals(signum).name}")
    super().__init__(f"{verb} at step {step}; rerun the same command to resume")
    self.step = step
    self.signum = signum
    self.exit_code = 128 + signum


class StopSignal:
  """While active (a context manager), SIGINT and SIGTERM only set `received`; the
  loop stops where `agreed()` says so. Signals reach the main thread only, so
  elsewhere the handlers are not installed (and `received` stays 0)."""

  def __init__(self, mesh: jax.sharding.Mesh):
    self.received = 0  # the first signal this process got (0: none)
    self._mesh = mesh
    self._previous = {}
    self._any = (None if jax.process_count() == 1 else
                 jax.jit(jnp.max, out_shardings=mesh_lib.replicated(mesh)))

  def _handle(self, signum, frame):
    del frame
    if self.received:
      raise KeyboardInterrupt
    self.received = signum
    logging.warning("%s: stopping after this step, once it is checkpointed (a second "
                    "signal stops at once)", signal.Signals(signum).name)

  def agreed(self) -> int:
    """The signal that stops every process (0: carry on). With several processes,
    every one must call this at the same point of the loop: it is a collective."""
    if self._any is None:
      return self.received
    mine = np.full(len(self._mesh.local_devices), max(self.received, 0), np.int32)
    flags = jax.make_array_from_process_local_data(mesh_lib.batch_sharding(self._mesh), mine)
    return int(self._any(flags))

  def __enter__(self) -> "StopSignal":
    if threading.current_thread() is threading.main_thread():
      self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
    return self

  def __exit__(self, *exc_info) -> None:
    for s, handler in self._previous.items():
      # None: a handler not installed from Python, which Python cannot put back.
      signal.signal(s, signal.SIG_DFL if handler is None else handler)
    self._previous = {}


def better(mode: str, new: float, old: Optional[float]) -> bool:
  """Whether monitor value `new` beats `old` (None: no value yet) in `mode` ("min" or
  "max"). NaN (an AUC of a one-class split, say) is the worst value: never better,
  beaten by any number."""
  if math.isnan(new):
    return False
  if old is None or math.isnan(old):
    return True
  return new < old if mode == "min" else new > old


def after_epoch(meta: dict, epoch: int, score: float, mode: str) -> tuple[dict, bool]:
  """(meta after `epoch` whose validation monitor is `score`, whether it improved):
  `epochs_done`, the `best` score and `bad_epochs`, the epochs since it improved."""
  improved = better(mode, score, meta["best"])
  return dict(meta, epochs_done=epoch + 1, best=score if improved else meta["best"],
              bad_epochs=0 if improved else meta["bad_epochs"] + 1), improved


def is_finished(meta: dict, config) -> bool:
  """Whether a run with this progress is done under the *current* config: all of
  `num_epochs` trained, or early stopping's patience used up."""
  patience = config.get("early_stopping_patience", 0)
  return (meta["epochs_done"] >= config.num_epochs
          or bool(patience and meta["bad_epochs"] >= patience))
