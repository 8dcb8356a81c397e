"""Evaluating a model over a large batch in chunks, with per-clip randomness.

At B = 1024 the encoder is memory-bound on CPU: running it over chunks of ~16 clips
inside the jitted step (`jax.lax.map`) keeps each chunk's activations in cache, and
recomputing each chunk in the backward pass (remat) keeps the stored activations to
one chunk's; both were measured faster than one big batch on CPU
(benchmarks/README.md). On a GPU or TPU the same chunks would run one after another,
each recomputed, on hardware built to take the whole batch at once. So
`model.chunk_size` and `model.remat` default to "auto" (`resolve_chunk_size`,
`resolve_remat`), resolved from the encoders' entries in `platform.settings`: 16
clips with remat on CPU (the GRU and VGGish: the whole batch), the whole batch
without remat on an accelerator. A config pins either with an explicit value (e.g.
`--config.model.chunk_size=256 --config.model.remat=True` to bound a GPU's
activation memory).

Chunking changes no random draw: every chunk gets the step's stream keys and the
global ids of its clips, from which the model draws each clip's mask and dropout
(`randomness`). A clip therefore gets the same mask and dropout whether the batch
runs whole, in chunks of any size, on 1 device or split over 4 or over hosts.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import jax
import numpy as np

from coughjax.models import platform as platform_lib
from coughjax.models import registry

RNG_STREAMS = ("mask", "dropout")


def _names(encoders: Sequence[Any]) -> list[Optional[str]]:
  return [registry.registered_name(e) for e in encoders] or [None]


def _cpu_train_chunk(encoders: Sequence[Any], platform: Optional[str]) -> int:
  """The train chunk "auto" gives `encoders`: the whole batch (0) if any of them
  asks for it, else the smallest they ask for."""
  asked = [platform_lib.settings(n, platform).train_chunk for n in _names(encoders)]
  return 0 if 0 in asked else min(asked)


def resolve_chunk_size(value: int | str, platform: Optional[str] = None, *,
                       encoders: Sequence[Any] = ()) -> int:
  """`config.model.chunk_size` -> rows per chunk of a train step, 0 meaning the whole batch.

  Args:
    value: "auto" or an int >= 0, which pins it. "auto" is the encoders'
      `platform.settings(...).train_chunk`: the whole batch on GPU/TPU; on CPU the
      whole batch if any encoder asks for it (the GRU, VGGish), else the smallest.
    platform: 'cpu', 'gpu', 'tpu'; None = `platform.backend()` (the platform
      being traced for).
    encoders: the model's encoder modules (registered encoders).
  """
  size = value
  if platform_lib.is_auto(value):
    size = _cpu_train_chunk(encoders, platform)
  return _checked(size, value, "model.chunk_size")


def inference_chunk_size(value: int | str, encoders: Sequence[Any] = (),
                         platform: Optional[str] = None) -> int:
  """`config.model.eval_chunk_size` -> rows per inference chunk, 0 meaning all.

  Args:
    value: "auto" or an int >= 0, which pins it. "auto" is the smallest
      `platform.settings(...).inference_chunk` of `encoders`: the whole batch on
      GPU/TPU, 16 clips on CPU (256 for a GRU alone).
    encoders: the model's encoder modules (registered encoders).
    platform: 'cpu', 'gpu', 'tpu'; None = `platform.backend()` (the platform
      being traced for).
  """
  size = value
  if platform_lib.is_auto(value):
    size = min(platform_lib.settings(n, platform).inference_chunk for n in _names(encoders))
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
      cuts the batch into chunks (CPU, unless an encoder asks for the whole batch:
      see `resolve_chunk_size`), False where it runs the whole batch (GPU/TPU). A
      config that pins a chunk size on an accelerator to bound memory should also
      pin remat=True: without it the backward pass keeps every chunk's activations.
    platform: 'cpu', 'gpu', 'tpu'; None = `platform.backend()` (the platform
      being traced for).
    encoders: the model's encoder modules.
  """
  remat = value
  if platform_lib.is_auto(value):
    remat = _cpu_train_chunk(encoders, platform) > 0
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


def stream_keys(rng: jax.Array) -> dict[str, jax.Array]:
  """The step key -> one key per RNG stream ({"mask": ..., "dropout": ...})."""
  return dict(zip(RNG_STREAMS, jax.random.split(rng, len(RNG_STREAMS))))


def apply_in_chunks(
    apply_fn: Callable[[jax.Array, dict[str, jax.Array], jax.Array], jax.Array],
    x: jax.Array, rng: jax.Array, chunk_size: int, clip_ids: jax.Array,
    *, remat: bool = False,
) -> jax.Array:
  """apply_fn over x [n, ...] in chunks of `chunk_size` rows (n must divide evenly).

  Args:
    apply_fn: (x_chunk [c, ...], rngs {stream: key}, clip_ids [c]) -> [c, ...]. Every
      chunk gets the same stream keys (`stream_keys(rng)`) and its rows' clip ids,
      so that what a clip draws does not depend on its chunk.
    x: the batch.
    rng: the step key.
    chunk_size: rows per chunk.
    clip_ids: [n] global id of each row (may be traced).
    remat: under differentiation, recompute each chunk's forward pass in the
      backward pass (`jax.checkpoint`) instead of storing its activations.

  Returns:
    The outputs of all chunks concatenated: [n, ...].
  """
  n = x.shape[0]
  if n % chunk_size:
    raise ValueError(f"batch of {n} rows does not split into chunks of {chunk_size}")
  if clip_ids.shape != (n,):
    raise ValueError(f"clip_ids of shape {clip_ids.shape} for {n} rows")
  rngs = stream_keys(rng)

  def one(args):
    xc, ids = args
    return apply_fn(xc, rngs, ids)

  if n == chunk_size:
    # One chunk: call it directly. Beyond saving a loop, this matters for VGGish,
    # whose convolutions differentiate far more slowly inside lax.map on XLA:CPU.
    return one((x, clip_ids))
  if remat:
    # Differentiating lax.map stores every chunk's activations, stacked over all
    # chunks (~1 GB for the Transformer at B = 1024: the softmax weights alone are
    # [2048, heads, 96, 96] per layer), and writing them page-faults fresh memory.
    # Recomputing one chunk at a time in the backward pass keeps it all in cache.
    one = jax.checkpoint(one, prevent_cse=False)
  chunks = n // chunk_size
  out = jax.lax.map(one, (x.reshape((chunks, chunk_size) + x.shape[1:]),
                          clip_ids.reshape(chunks, chunk_size)))
  return out.reshape((n,) + out.shape[2:])
