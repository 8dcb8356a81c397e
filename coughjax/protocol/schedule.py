"""A study's units as a Dask task graph, on a local cluster or a running one.

Each unit (`plan.Unit`: a pre-training, or a row's repeat with all its folds) is
one task, `units.run`: it returns the small unit records of its folders and leaves
its outputs on disk. A row unit depends on the pre-training units its folds' -CP
branches load; units run in `plan.units_of`'s order as workers free up.

* `connect("", processes=N)`: an embedded `distributed.LocalCluster` of N worker
  processes with one thread each. Processes, not threads: each unit runs JAX, and
  one process per unit keeps their XLA runtimes and memory apart. The workers
  inherit this process's environment (`JAX_PLATFORMS`, `XLA_FLAGS`,
  `COUGHJAX_CACHE`, ...); with several on one machine, `worker_env` stops each from
  taking most of an accelerator's memory up front. The nanny's memory limit is
  off: a training unit needs the memory it needs, and killing it at a fraction of
  the machine's would only make it fail again.
* `connect("tcp://host:8786")` or `connect("scheduler.json")`: a running cluster
  (`dask scheduler` and `dask worker`, or dask-jobqueue on SLURM / PBS). Its workers
  must import the same coughjax, see the workdir and data at the same paths, be
  started with the environment their units need (`JAX_PLATFORMS=cpu`, say), and
  not be daemonic processes (`DASK_DISTRIBUTED__WORKER__DAEMON=False`: a unit
  starts processes of its own to compute features): `check_workers` says which
  fail.

A worker that dies (killed, out of memory) loses its unit; the scheduler gives it
to another worker, where it resumes from the dead attempt's checkpoints
(`coughjax.protocol.claims`). A unit that kills `ALLOWED_FAILURES` + 1 workers in a
row fails with `KilledWorker` rather than killing workers forever (the scheduler's
`distributed.scheduler.allowed-failures`, set here for the embedded cluster; a
running cluster's scheduler uses its own). A unit that raises is not retried: the
error is deterministic more often than not; a rerun resumes it.
"""

from __future__ import annotations

import contextlib
import logging as std_logging
import multiprocessing
import os
import pathlib
import threading
import traceback
from typing import Callable, Iterator, Sequence

from absl import logging

from coughjax.protocol import plan as plan_lib
from coughjax.protocol import units as units_lib

ALLOWED_FAILURES = 3
# The embedded cluster's settings. Workers are not daemonic processes: a unit
# computes features in a pool of processes of its own, which a daemon cannot start.
CLUSTER_CONFIG = {"distributed.scheduler.allowed-failures": ALLOWED_FAILURES,
                  "distributed.worker.daemon": False}


# Clusters started at once from several threads of one process race in distributed's
# lazy import of its dashboard (seen: "module 'distributed.dashboard' has no
# attribute 'scheduler'"): one start at a time.
_START = threading.Lock()


class ClusterError(Exception):
  """No cluster can be started or reached, or its workers cannot run this study."""


def worker_env(processes: int) -> dict[str, str]:
  """Environment variables the embedded cluster's workers get on top of this
  process's (which they inherit)."""
  env = {}
  if processes > 1 and "XLA_PYTHON_CLIENT_PREALLOCATE" not in os.environ:
    # Several processes on one GPU: each would otherwise reserve 75 % of its memory.
    env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
  return env


@contextlib.contextmanager
def connect(scheduler: str = "", processes: int = 1) -> Iterator["distributed.Client"]:
  """A Dask client: of a running cluster (`scheduler`: an address such as
  tcp://host:8786, or a scheduler file), else of an embedded local cluster of
  `processes` single-threaded worker processes, closed on exit."""
  import dask  # pylint: disable=g-import-not-at-top
  import distributed  # pylint: disable=g-import-not-at-top
  # The cluster's start, stop and connections: not news at INFO.
  std_logging.getLogger("distributed").setLevel(std_logging.WARNING)
  if scheduler:
    kwargs = ({"scheduler_file": scheduler} if pathlib.Path(scheduler).is_file()
              else {"address": scheduler})
    try:
      client = distributed.Client(**kwargs, timeout="30s")
    except (OSError, TimeoutError, ValueError) as e:
      raise ClusterError(f"--scheduler={scheduler}: cannot reach a Dask scheduler "
                         f"({e})") from None
    with client:
      yield client
    return
  if processes < 1:
    raise ClusterError(f"--processes must be >= 1, got {processes}")
  # For the cluster's whole life: the nanny reads `daemon` whenever it (re)starts a
  # worker.
  with dask.config.set(CLUSTER_CONFIG), contextlib.ExitStack() as stack:
    with _START:
      cluster = stack.enter_context(distributed.LocalCluster(
          n_workers=processes, threads_per_worker=1, processes=True, memory_limit=0,
          dashboard_address=":0", env=worker_env(processes)))
      client = stack.enter_context(distributed.Client(cluster))
    logging.info("Dask cluster of %d worker processes; dashboard %s", processes,
                 client.dashboard_link)
    yield client


def _worker_info(workdir: str) -> dict:
  """Runs on each worker: what `check_workers` compares."""
  import coughjax  # pylint: disable=g-import-not-at-top
  return {"coughjax": os.path.dirname(coughjax.__file__), "version": coughjax.__version__,
          "jax_platforms": os.environ.get("JAX_PLATFORMS", ""),
          "workdir": os.access(workdir, os.W_OK | os.X_OK),
          "daemon": multiprocessing.current_process().daemon}


def check_workers(client, workdir: pathlib.Path) -> None:
  """Every worker of a running cluster imports this coughjax and can write the
  workdir; raises a ClusterError naming the first that does not."""
  import coughjax  # pylint: disable=g-import-not-at-top
  try:
    info = client.run(_worker_info, str(workdir.absolute()))
  except Exception as e:  # pylint: disable=broad-except
    raise ClusterError(f"the cluster's workers cannot run coughjax ({e!r}): start them "
                     "in this environment") from None
  if not info:
    logging.warning("the cluster has no workers yet: the units wait for them")
  for address, got in sorted(info.items()):
    if got["version"] != coughjax.__version__:
      raise ClusterError(f"worker {address} imports coughjax {got['version']} from "
                       f"{got['coughjax']}, this command {coughjax.__version__}: start "
                       "the workers from the same environment")
    if got["daemon"]:
      raise ClusterError(f"worker {address} is a daemonic process, which cannot start "
                         "the processes that compute features: start the workers with "
                         "DASK_DISTRIBUTED__WORKER__DAEMON=False")
    if not got["workdir"]:
      raise ClusterError(f"worker {address} cannot write the workdir {workdir.absolute()}: "
                       "it must be a folder every worker shares, at the same path")
  logging.info("%d workers (JAX_PLATFORMS: %s)", len(info),
               ", ".join(sorted({g["jax_platforms"] or "unset" for g in info.values()})))


def _run_unit(unit: plan_lib.Unit, runner: Callable, *after: list[dict]) -> list[dict]:
  """The task of one unit: its folders' records; `after` holds those of the units
  it needs (Dask runs it once they are done)."""
  del after
  return units_lib.run(unit, runner)


def run_units(client, todo: Sequence[plan_lib.Unit],
              runner: Callable = units_lib.default_runner) -> None:
  """Runs `todo` (in order, as `plan.units_of` lists them) on `client`'s cluster and
  waits for every one; a unit's failure fails its dependants, not the others. Then
  raises the first failure, if any, having logged every failed unit."""
  import distributed  # pylint: disable=g-import-not-at-top
  futures: dict[pathlib.Path, distributed.Future] = {}
  names = {}
  for i, unit in enumerate(todo):
    after = [futures[n.folder] for n in unit.needs if n.folder in futures]
    # The key is the unit's folder: two commands on one workdir and one scheduler
    # share the task.
    futures[unit.folder] = client.submit(
        _run_unit, unit, runner, *after, key=f"coughjax-unit-{unit.folder.absolute()}",
        priority=len(todo) - i, retries=0, pure=False)
    names[futures[unit.folder].key] = unit.name
  failed = []
  for done, future in enumerate(distributed.as_completed(futures.values()), 1):
    name = names[future.key]
    if future.status == "finished":
      records = future.result()
      logging.info("unit %d/%d done: %s (%.0f s, attempt %d)", done, len(todo), name,
                   sum(r["seconds"] for r in records),
                   max(r.get("attempt", 0) for r in records))
      continue
    error = future.exception()
    if isinstance(error, distributed.KilledWorker):
      error = RuntimeError(f"{name}: its worker died more often than the scheduler's "
                           "allowed-failures (out of memory? see the workers' logs)")
    logging.error("unit %s failed: %r\n%s", name, error,
                  "".join(traceback.format_tb(future.traceback())))
    failed.append((name, error))
  if failed:
    logging.error("%d of %d units failed: %s; the others are done, and a rerun resumes "
                  "(the first failure follows)", len(failed), len(todo),
                  ", ".join(n for n, _ in failed))
    raise failed[0][1]


def describe(todo: Sequence[plan_lib.Unit]) -> list[str]:
  """One line per unit: its folder, the units it needs, its state."""
  lines = []
  for unit in todo:
    needs = ", ".join(n.name for n in unit.needs) or "-"
    lines.append(f"{unit.name:<48} needs {needs:<40} {units_lib.state(unit)}")
  return lines
