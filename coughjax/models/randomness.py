"""Per-clip randomness: every random draw is a function of (key, stream, clip id).

A train step may encode its batch whole, in chunks, or split over devices and hosts.
For a clip to get the same random key mask and the same dropout in every layout, no
draw may depend on where the clip sits in a chunk or on which device it runs: each
is keyed by the key of its RNG stream (as `flax.linen.Module.make_rng` gives it:
the step's stream key folded with the module's path and call) and the clip's
*global id*, its place in the global batch (`chunking`, `train/pretrain.py`,
`train/downstream.py` number the clips; a module called without ids numbers its
rows 0, 1, 2, ...).

Two generators draw the bits:

  counter hash (`clip_bits`, `keep_mask`, dropout impl "hash"): element i of clip c
      is fmix32(fmix32(i + s0) ^ fmix32(c + s1)), (s0, s1) drawn from the key. The
      inner round depends on i alone, so it is computed once for one clip's shape and
      broadcast over the clips: about one 32-bit hash per element. Threefry, which
      XLA:CPU lowers as a rolled loop, costs many times more per bit (see
      benchmarks/README.md), which is why CPU steps take this path. Clips get
      streams that are not shifted copies of one another, as they would be with
      per-clip counter offsets: every clip's stream goes through its own xor before
      the last round. Enough for dropout (drop rate, lag, cross-clip and 4-point
      correlations match i.i.d. draws, tests/test_randomness.py), not for anything
      that needs a cryptographic generator.
  threefry (`clip_keys`, dropout impl "flax", the Transformer's training masks):
      `jax.random` with key fold_in(key, c) per clip, as `flax.linen.Dropout` draws
      its bits; cheap on GPU/TPU.

`hash_words` and `counter_bits` need no `jax.random` key at all: `coughjax.infer`
derives inference (DS) masks from a recording's digest with them, so those masks
do not depend on JAX's PRNG implementation or its settings.
"""

from __future__ import annotations

import math
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

DROPOUT_IMPLS = ("hash", "flax")


def fmix32(h: jax.Array) -> jax.Array:
  """MurmurHash3's 32-bit finalizer: a bijection on uint32 with full avalanche."""
  h = h ^ (h >> 16)
  h = h * jnp.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * jnp.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


def hash_words(*words, start=0) -> jax.Array:
  """A 32-bit hash of a sequence of uint32 words (arrays broadcast): h = fmix32(h ^ w)
  word by word from h = `start` (a hash to continue), so each word, the others
  fixed, maps to distinct hashes."""
  h = jnp.asarray(start).astype(jnp.uint32)
  for w in words:
    h = fmix32(h ^ jnp.asarray(w).astype(jnp.uint32))
  return h


def counter_bits(s0: jax.Array, seeds: jax.Array, shape: tuple[int, ...],
                 axis: int = 0) -> jax.Array:
  """uint32 bits of `shape` whose slice c along `axis` is the stream of `seeds[c]`:
  element i of the slice is fmix32(fmix32(i + s0) ^ seeds[c]).

  Args:
    s0: uint32 scalar shared by every slice.
    seeds: [shape[axis]] uint32, one per slice (clip); they should already be hash
      outputs (e.g. `hash_words`), not small consecutive integers.
    shape: of the result.
    axis: the clip axis of `shape`.

  Returns:
    uint32 array of `shape`.
  """
  axis = axis % len(shape)
  if seeds.shape != (shape[axis],):
    raise ValueError(f"seeds of shape {seeds.shape} for a result of shape {shape} "
                     f"(expected ({shape[axis]},): one per clip along axis {axis})")
  per_clip = shape[:axis] + shape[axis + 1:]
  counter = jax.lax.iota(jnp.uint32, math.prod(per_clip)).reshape(per_clip)
  inner = jnp.expand_dims(fmix32(counter + jnp.asarray(s0, jnp.uint32)), axis)
  seeds = seeds.astype(jnp.uint32).reshape((1,) * axis + (-1,) + (1,) * (len(shape) - axis - 1))
  return fmix32(inner ^ seeds)


def clip_bits(key: jax.Array, clip_ids: jax.Array, shape: tuple[int, ...],
              axis: int = 0) -> jax.Array:
  """Counter-hash bits of `shape` whose slice along `axis` depends on its clip's id
  and `key` only (not on the other clips, their number or their order).

  Args:
    key: a `jax.random` key (one threefry call draws the two seeds).
    clip_ids: [shape[axis]] int, the global id of each clip.
    shape: of the result.
    axis: the clip axis.
  """
  s0, s1 = jax.random.bits(key, (2,), jnp.uint32)
  return counter_bits(s0, fmix32(clip_ids.astype(jnp.uint32) + s1), shape, axis)


def keep_mask(key: jax.Array, clip_ids: jax.Array, shape: tuple[int, ...], rate: float,
              axis: int = 0) -> jax.Array:
  """Boolean dropout keep mask from `clip_bits`: each entry False with probability
  `rate` (static, in [0, 1]), to within 2**-33."""
  if rate >= 1.0:  # the threshold 2**32 would not fit a uint32
    return jnp.zeros(shape, bool)
  threshold = jnp.uint32(round(rate * 2.0**32))  # P(bits < threshold) = rate
  return clip_bits(key, clip_ids, shape, axis) >= threshold


def clip_keys(key: jax.Array, clip_ids: jax.Array) -> jax.Array:
  """[n] `jax.random` keys, fold_in(key, id) per clip."""
  return jax.vmap(lambda c: jax.random.fold_in(key, c))(clip_ids)


def default_clip_ids(batch: int, clip_ids: Optional[jax.Array]) -> jax.Array:
  """`clip_ids` checked against the batch, or 0, 1, ..., batch - 1 when None. Called
  only where bits are drawn, so that inference (symbolic batches included) makes
  no ids."""
  if clip_ids is None:
    return jnp.arange(batch, dtype=jnp.int32)
  if clip_ids.shape != (batch,):
    raise ValueError(f"clip_ids of shape {clip_ids.shape} for a batch of {batch} clips "
                     f"(expected ({batch},))")
  return clip_ids


def dropout(x: jax.Array, rate: float, key: jax.Array, clip_ids: jax.Array,
            impl: str = "hash") -> jax.Array:
  """Inverted dropout of x [batch, ...] with per-clip bits: zeroes each element with
  probability `rate`, divides the rest by 1 - rate (`flax.linen.Dropout`'s semantics).

  Args:
    x: activations, clips along axis 0.
    rate: drop probability in [0, 1] (static).
    key: the stream's key.
    clip_ids: [batch] global clip ids.
    impl: "hash" (`keep_mask`) or "flax" (`jax.random.bernoulli` with fold_in(key,
      clip id) per clip, the bits `flax.linen.Dropout` would draw with that key).
  """
  if impl not in DROPOUT_IMPLS:
    raise ValueError(f"unknown dropout_impl {impl!r}; expected one of {DROPOUT_IMPLS}")
  if rate == 0.0:
    return x
  if rate == 1.0:
    return jnp.zeros_like(x)
  if impl == "hash":
    keep = keep_mask(key, clip_ids, x.shape, rate)
  else:
    keep = jax.vmap(lambda k: jax.random.bernoulli(k, 1.0 - rate, x.shape[1:]))(
        clip_keys(key, clip_ids))
  return jnp.where(keep, x / jnp.asarray(1.0 - rate, x.dtype), jnp.zeros((), x.dtype))


class ClipDropout(nn.Module):
  """`flax.linen.Dropout` with per-clip bits (`dropout`), drawn from the 'dropout' stream.

  Attributes:
    rate: drop probability in [0, 1].
    impl: "hash" or "flax" (see `dropout`).
  """

  rate: float
  impl: str = "hash"

  @nn.compact
  def __call__(self, x: jax.Array, clip_ids: Optional[jax.Array], *, deterministic: bool
               ) -> jax.Array:
    """x: [batch, ...]; clip_ids: [batch] global clip ids, or None for 0, 1, ..."""
    if not 0.0 <= self.rate <= 1.0:
      raise ValueError(f"dropout rate must be in [0, 1], got {self.rate!r}")
    if deterministic or self.rate == 0.0:
      return x
    clip_ids = default_clip_ids(x.shape[0], clip_ids)
    return dropout(x, self.rate, self.make_rng("dropout"), clip_ids, self.impl)
