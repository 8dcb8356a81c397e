"""Where training runs: one "data" mesh axis over every device of every process.

The paper trains with a pmapped step: each device runs the same program on its share
of the batch, the contrastive negatives are `all_gather`-ed across devices and the
gradients `pmean`-ed. That is the step here too, written as JAX writes it now: a
`jax.shard_map` over a `Mesh` (`per_device`), jitted, with the same axis-name
collectives. What changes is the host side, which sees global arrays only:

* the train state (and the run's key) is one global array per leaf, replicated over
  the mesh (`NamedSharding(mesh, P())`, `put_replicated`);
* a batch is one global array per leaf, split along its first axis over "data".
  Each process builds only the rows its devices hold (`process_rows`, read off the
  sharding) and `global_batch` joins every process's rows into it;
* what a step returns with `P()` (metrics, gathered predictions) is the same on
  every device of every process: any process can read all of it.
"""

from __future__ import annotations

import collections
import functools
from typing import Any, Callable, Iterator, Optional, Sequence

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np

AXIS = "data"  # the mesh axis every step's collectives name
# Many runs trained as one program (`coughjax.train.many`): their states stacked
# along a leading axis, split over this mesh axis when there are devices to spare.
RUNS = "runs"


def data_mesh(devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """A one-axis mesh over `devices` (default: every device of every process).

  `jax.devices()` lists them process by process, so each process's devices hold one
  contiguous block of every batch (`process_rows`).
  """
  return Mesh(np.array(jax.devices() if devices is None else list(devices)), (AXIS,))


def runs_mesh(runs: int = 1, devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """A ("runs", "data") mesh over `devices` (default: every device of every process):
  `runs` groups of devices, each a data-parallel mesh of its own runs' steps.

  Raises:
    ValueError: the devices do not split into `runs` equal groups.
  """
  devices = np.array(jax.devices() if devices is None else list(devices))
  if runs < 1 or devices.size % runs:
    raise ValueError(f"{devices.size} devices do not split into {runs} groups of runs")
  return Mesh(devices.reshape(runs, -1), (RUNS, AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leaves split along their first axis over the devices."""
  return NamedSharding(mesh, P(AXIS))


def runs_sharding(mesh: Mesh) -> NamedSharding:
  """Leaves stacked over runs (their first axis) split over the "runs" axis."""
  return NamedSharding(mesh, P(RUNS))


def runs_batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leaves [runs, batch, ...]: runs over "runs", each run's batch over "data"."""
  return NamedSharding(mesh, P(RUNS, AXIS))


def per_device(fn: Callable, mesh: Mesh, in_specs, out_specs,
               donate_argnums: tuple[int, ...] = ()) -> Callable:
  """`fn`, a per-device program naming AXIS in its collectives, jitted over `mesh`.

  `check_vma=False` keeps pmap's semantics, as `jax.pmap` itself does (it is this
  shard_map since JAX 0.8): inside `fn`, the gradient of a device's loss is that
  device's own, and the explicit `pmean` averages them. (With the check on, JAX
  would sum the replicated parameters' gradients over the devices by itself.)
  """
  return jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs,
                               check_vma=False), donate_argnums=donate_argnums)


def process_rows(mesh: Mesh, global_batch: int) -> slice:
  """The rows of a global batch of `global_batch` rows that this process's devices
  hold (as `batch_sharding` lays it out): the only rows it reads from disk.

  Raises:
    ValueError: the batch does not split evenly over the mesh's devices.
  """
  if global_batch % mesh.size:
    raise ValueError(f"batch size {global_batch} is not divisible by the {mesh.size} "
                     "devices")
  index = batch_sharding(mesh).addressable_devices_indices_map((global_batch,))
  blocks = sorted(s[0].indices(global_batch)[:2] for s in index.values())
  start, stop = blocks[0][0], blocks[-1][1]
  if stop - start != sum(b - a for a, b in blocks):
    raise ValueError(f"process {jax.process_index()}'s devices do not hold one "
                     "contiguous block of the batch: the mesh must list the devices "
                     "process by process")
  return slice(start, stop)


def process_block(mesh: Mesh, runs: int, global_batch: int) -> tuple[slice, slice]:
  """(runs, rows): the block of a [runs, global_batch, ...] array laid out by
  `runs_batch_sharding` that this process's devices hold, the only runs and rows it
  builds.

  Raises:
    ValueError: the runs or the batch do not split evenly over the mesh, or this
      process's devices do not hold one block.
  """
  if runs % mesh.shape[RUNS] or global_batch % mesh.shape[AXIS]:
    raise ValueError(f"{runs} runs of batch {global_batch} do not split over a "
                     f"{mesh.shape[RUNS]} x {mesh.shape[AXIS]} (runs x data) mesh")
  index = runs_batch_sharding(mesh).addressable_devices_indices_map((runs, global_batch))
  blocks = {(s[0].indices(runs)[:2], s[1].indices(global_batch)[:2])
            for s in index.values()}
  spans = [sorted({b[axis] for b in blocks}) for axis in (0, 1)]
  if (len(blocks) != len(spans[0]) * len(spans[1])
      or any(s[-1][1] - s[0][0] != sum(b - a for a, b in s) for s in spans)):
    raise ValueError(f"process {jax.process_index()}'s devices do not hold one block of "
                     "runs and rows: the mesh must list the devices process by process")
  return slice(spans[0][0][0], spans[0][-1][1]), slice(spans[1][0][0], spans[1][-1][1])


def global_batch(mesh: Mesh, tree: Any) -> Any:
  """This process's rows (`process_rows`) of a batch, numpy leaves [rows, ...] ->
  global arrays [batch, ...] split along their first axis over the mesh."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree)


def global_runs_batch(mesh: Mesh, tree: Any, runs: int, global_batch: int) -> Any:
  """This process's block (`process_block`) of a stacked batch, numpy leaves
  [block runs, block rows, ...] -> global arrays [runs, global_batch, ...] laid out
  by `runs_batch_sharding`."""
  sharding = runs_batch_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(
      sharding, np.asarray(x), (runs, global_batch) + np.shape(x)[2:]), tree)


def put_replicated(mesh: Mesh, tree: Any) -> Any:
  """A tree on the host or on any one device (typed keys too) as global arrays
  replicated over `mesh`: the layout of the train state and keys.

  Leaves go through host numpy: a device array of one process cannot be copied to
  another process's devices, and numpy leaves are strongly typed, so a weakly typed
  scalar (a fresh step counter) cannot change a jitted step's signature.
  """
  return _put(tree, replicated(mesh))


def put_runs(mesh: Mesh, tree: Any) -> Any:
  """`put_replicated`, for a tree whose leaves are stacked over runs (every process
  holding all of them): split over the "runs" axis (`runs_sharding`)."""
  return _put(tree, runs_sharding(mesh))


def _put(tree: Any, sharding: NamedSharding) -> Any:

  def put(x):
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      return jax.random.wrap_key_data(put(jax.random.key_data(x)),
                                      impl=jax.random.key_impl(x))
    return jax.device_put(np.asarray(jax.device_get(x)), sharding)

  return jax.tree.map(put, tree)


def prefetch(iterator: Iterator[Any], mesh: Mesh, size: int = 2,
             put: Optional[Callable[[Any], Any]] = None) -> Iterator[Any]:
  """`global_batch` (or `put`) of each of this process's batches, `size` ahead of
  use, so that the copy of the next batches to the devices overlaps the current
  step."""
  put = functools.partial(global_batch, mesh) if put is None else put
  ahead = collections.deque()
  for batch in iterator:
    ahead.append(put(batch))
    if len(ahead) > size:
      yield ahead.popleft()
  while ahead:
    yield ahead.popleft()
