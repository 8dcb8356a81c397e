"""Evaluating a model over a large batch in chunks, with layout-independent keys.

At B = 1024 the encoder is memory-bound on CPU: running it over chunks of ~16 clips
inside the jitted step (`jax.lax.map`) keeps each chunk's activations in cache and
was measured ~2x faster than one big batch, with a lower peak memory; recomputing
each chunk in the backward pass (remat) was faster still. On a GPU or TPU the same
chunks would run one after another (128 per device at B = 1024), each recomputed, on
hardware built to take the whole batch at once. So `model.chunk_size` and
`model.remat` default to "auto" (`resolve_chunk_size`, `resolve_remat`): 16 clips with
remat on CPU, the whole batch without remat on an accelerator. An encoder may ask for
other CPU chunks through class attributes (`CPU_TRAIN_CHUNK`, `CPU_INFERENCE_CHUNK`):
the GRU, whose recurrence pays per step rather than per clip, trains on the whole
batch and infers in 256-clip chunks. A config pins either
with an explicit value (e.g. `--config.model.chunk_size=256 --config.model.remat=True`
to bound a GPU's activation memory).

Each chunk draws its random keys (mask, dropout) from `fold_in(key, chunk_id)`, where
the caller numbers chunks by their place in the *global* batch. A clip therefore gets
the same mask and dropout whether the batch runs on 1 device or is split over 4.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from coughjax.models import platform as platform_lib

RNG_STREAMS = ("mask", "dropout")
# Clips per chunk on CPU: the measured optimum of the attention encoders' pre-training
# step at B = 1024 on 2 cores (benchmarks/README.md); 0 = the whole batch.
CPU_CHUNK_SIZE = 16


def resolve_chunk_size(value: int | str, platform: Optional[str] = None, *,
                       encoders: Sequence[Any] = ()) -> int:
  """`config.model.chunk_size` -> rows per chunk of a train step, 0 meaning the whole batch.

  Args:
    value: "auto" or an int >= 0, which pins it. "auto" on GPU/TPU is the whole batch;
      on CPU it asks `encoders` through their class attribute `CPU_TRAIN_CHUNK`
      (default `CPU_CHUNK_SIZE`): the whole batch if any of them asks for it (0:
      the GRU, whose recurrence is bound by per-step overhead, and VGGish, whose
      convolutions differentiate ~15x slower inside `lax.map`), else the smallest.
    platform: 'cpu', 'gpu', 'tpu'; None = `models.platform.backend()` (the platform
      being traced for).
    encoders: the model's encoder modules.
  """
  size = platform_lib.resolve(value, cpu=_cpu_train_chunk(encoders), accelerator=0,
                              platform=platform)
  return _checked(size, value, "model.chunk_size")


def _cpu_train_chunk(encoders: Sequence[Any]) -> int:
  asked = [getattr(e, "CPU_TRAIN_CHUNK", CPU_CHUNK_SIZE) for e in encoders]
  return 0 if 0 in asked else min(asked, default=CPU_CHUNK_SIZE)


def inference_chunk_size(value: int | str, encoders: Sequence[Any] = (),
                         platform: Optional[str] = None) -> int:
  """`config.model.eval_chunk_size` -> rows per inference chunk, 0 meaning all.

  Args:
    value: "auto" or an int >= 0, which pins it. "auto" on GPU/TPU is the whole
      batch; on CPU the smallest `CPU_INFERENCE_CHUNK` of `encoders` (an encoder
      class attribute: the GRU's recurrence prefers 256-clip chunks), else
      `CPU_CHUNK_SIZE`.
    encoders: the model's encoder modules.
    platform: 'cpu', 'gpu', 'tpu'; None = `models.platform.backend()` (the platform
      being traced for).
  """
  cpu = min((getattr(e, "CPU_INFERENCE_CHUNK", CPU_CHUNK_SIZE) for e in encoders),
            default=CPU_CHUNK_SIZE)
  size = platform_lib.resolve(value, cpu=cpu, accelerator=0, platform=platform)
  return _checked(size, value, "model.eval_chunk_size")


def _checked(size, value, key: str) -> int:
  if isinstance(size, (bool, np.bool_)) or not isinstance(size, (int, np.integer)) or size < 0:
    raise ValueError(f"{key} must be 'auto' or an int >= 0 (0 = whole batch), got {value!r}")
  return int(size)


def resolve_remat(value: bool | str, platform: Optional[str] = None, *,
                  encoders: Sequence[Any] = ()) -> bool:
  """`config.model.remat` -> whether a differentiated step recomputes its chunks.

  Args:
    value: "auto" or a bool, which pins it. "auto" is True where "auto" chunking
      cuts the batch into small chunks (CPU, unless one of `encoders` asks for the
      whole batch: see `resolve_chunk_size`), False where it runs the whole batch
      (GPU/TPU). A config that pins a chunk size on an accelerator to bound memory
      should also pin remat=True: without it the backward pass keeps every chunk's
      activations.
    platform: 'cpu', 'gpu', 'tpu'; None = `models.platform.backend()` (the platform
      being traced for).
    encoders: the model's encoder modules.
  """
  remat = platform_lib.resolve(value, cpu=_cpu_train_chunk(encoders) > 0, accelerator=False,
                               platform=platform)
  if not isinstance(remat, (bool, np.bool_)):
    raise ValueError(f"model.remat must be 'auto', True or False, got {value!r}")
  return bool(remat)


def chunk_size_for(rows: int, chunk_size: int | str, encoders: Sequence[Any] = ()) -> int:
  """The largest divisor of `rows` not above `chunk_size` (all rows if <= 0).

  `chunk_size` may be a config value, "auto" included (see `resolve_chunk_size`,
  which asks `encoders`).
  """
  chunk_size = resolve_chunk_size(chunk_size, encoders=encoders)
  if chunk_size == 0 or chunk_size >= rows:
    return rows
  return max(c for c in range(1, chunk_size + 1) if rows % c == 0)


def apply_in_chunks(
    apply_fn: Callable[[jax.Array, dict[str, jax.Array]], jax.Array],
    x: jax.Array, rng: jax.Array, chunk_size: int, chunk_ids: jax.Array | None = None,
    *, remat: bool = False,
) -> jax.Array:
  """apply_fn over x [n, ...] in chunks of `chunk_size` rows (n must divide evenly).

  Args:
    apply_fn: (x_chunk [c, ...], rngs {stream: key}) -> [c, ...].
    x: the batch.
    rng: key from which every chunk's streams are folded.
    chunk_size: rows per chunk.
    chunk_ids: [n // chunk_size] global id of each chunk (may be traced); default
      0, 1, 2, ...
    remat: under differentiation, recompute each chunk's forward pass in the
      backward pass (`jax.checkpoint`) instead of storing its activations.

  Returns:
    The outputs of all chunks concatenated: [n, ...].
  """
  n = x.shape[0]
  if n % chunk_size:
    raise ValueError(f"batch of {n} rows does not split into chunks of {chunk_size}")
  keys = dict(zip(RNG_STREAMS, jax.random.split(rng, len(RNG_STREAMS))))
  ids = jnp.arange(n // chunk_size) if chunk_ids is None else chunk_ids

  def one(args):
    xc, cid = args
    return apply_fn(xc, {k: jax.random.fold_in(v, cid) for k, v in keys.items()})

  if n == chunk_size:
    # One chunk: call it directly. Beyond saving a loop, this matters for VGGish,
    # whose convolutions differentiate ~15x slower inside lax.map on XLA:CPU.
    return one((x, ids[0]))
  if remat:
    # Differentiating lax.map stores every chunk's activations, stacked over all
    # chunks (~1 GB for the Transformer at B = 1024: the softmax weights alone are
    # [2048, heads, 96, 96] per layer), and writing them page-faults fresh memory.
    # Recomputing one chunk at a time in the backward pass keeps it all in cache and
    # was measured faster despite the extra forward pass.
    one = jax.checkpoint(one, prevent_cse=False)
  out = jax.lax.map(one, (x.reshape((n // chunk_size, chunk_size) + x.shape[1:]), ids))
  return out.reshape((n,) + out.shape[2:])
