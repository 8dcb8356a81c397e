"""Random key masking (paper §4.1.2, Fig. 3): which time steps attention may not use.

The paper's masking generator is a Python loop whose cost grows with the masking rate
(Table 6). Here a mask is one vectorised draw: every row draws `length` random
numbers and masks the `round(rate * length)` smallest (`lowest`), so the computation
is the same for every rate, only a constant differs.

Masked steps are removed as attention *keys* for every query except the query's own
position: rate 1.0 then means "no attention between any time steps" (each step sees
only itself) while every softmax row keeps at least one entry, so nothing is NaN.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from coughjax.models import randomness


def check_rate(rate: float) -> float:
  """Returns `rate` as a float if it is a masking rate in [0, 1], else raises."""
  try:
    value = float(rate)
  except (TypeError, ValueError):
    raise ValueError(f"mask rate must be a number in [0, 1], got {rate!r}") from None
  if not 0.0 <= value <= 1.0:  # also rejects NaN
    raise ValueError(f"mask rate must be in [0, 1], got {rate!r}")
  return value


def num_masked(length: int, rate: float) -> int:
  """Masked steps per row: round(rate * length), Python's round (half to even)."""
  return round(check_rate(rate) * length)


def random_key_mask(key: jax.Array, batch: int, length: int, rate: float,
                    clip_ids: Optional[jax.Array] = None) -> jax.Array:
  """Draws which time steps are masked, exactly round(rate * length) per row.

  Args:
    key: a `jax.random` key; fold the step into it to get a fresh mask per step.
    batch: number of rows (clips).
    length: time steps per row.
    rate: static masking rate in [0, 1].
    clip_ids: [batch] int, each row's global clip id (default 0, 1, ...): row i's
      mask comes from `jax.random.bits(fold_in(key, clip_ids[i]))` alone, so a clip
      gets the same mask in any batch, chunk or device (`randomness`).

  Returns:
    [batch, length] bool, True = masked: `lowest` of the draws, a uniform subset of
    that size per row (up to rare ties, see `lowest`).
  """
  clip_ids = randomness.default_clip_ids(batch, clip_ids)
  noise = jax.vmap(lambda k: jax.random.bits(k, (length,), jnp.uint32))(
      randomness.clip_keys(key, clip_ids))
  return lowest(noise, rate)


def lowest(noise: jax.Array, rate: float) -> jax.Array:
  """The mask that uint32 noise draws: True at the round(rate * T) smallest entries
  of each row.

  Each entry's key is the top 31 - 7 = 24 bits of its noise followed by its index (7
  bits for T = 96), so the keys of a row are distinct: the mask is `key <= the k-th
  smallest key`, exactly k entries whatever ties the noise has. One sort of the keys
  per row (values only; `jnp.argsort` would sort index pairs) costs the same for
  every rate and was measured faster on CPU than counting a [batch, T, T]
  comparison, into whose fusion XLA may recompute the noise (benchmarks/README.md).

  Args:
    noise: [batch, T] uint32, i.i.d. uniform bits per entry.
    rate: static masking rate in [0, 1].

  Returns:
    [batch, T] bool, True = masked. For i.i.d. noise each row's masked set is uniform
    over all subsets of size k, up to ties among the noise's top 24 bits, which go
    to the earlier step (a row of T = 96 has one with probability ~3e-4).
  """
  length = noise.shape[-1]
  count = num_masked(length, rate)
  index_bits = max(1, (length - 1).bit_length())
  # Non-negative int32 keys (the top 31 - index_bits bits of the noise, then the
  # index): ONNX Runtime's TopK, which an exported sort becomes, takes no uint32.
  top = (noise.astype(jnp.uint32) >> (index_bits + 1)) << index_bits
  keys = (top | jax.lax.iota(jnp.uint32, length)).astype(jnp.int32)
  # The k-th smallest key of each row; k = 0 takes the smallest and masks nothing,
  # so that every rate runs the same program (only two constants differ).
  threshold = jax.lax.dynamic_slice_in_dim(  # [batch, 1]; the keys are distinct
      jnp.sort(keys, axis=-1), max(count, 1) - 1, 1, axis=-1)
  return (keys <= threshold) & (count > 0)


def attention_mask(masked: jax.Array) -> jax.Array:
  """Turns masked time steps into a boolean attention mask.

  Args:
    masked: [batch, time] bool, True = masked step.

  Returns:
    [batch, 1, time, time] bool, True = query q may attend to key k, i.e.
    `not masked[b, k] or q == k`. The singleton axis broadcasts over heads.
  """
  if masked.ndim != 2:
    raise ValueError(f"masked must be [batch, time], got shape {masked.shape}")
  time = masked.shape[-1]
  keep_key = jnp.logical_not(masked)[:, None, None, :]  # [B, 1, 1, T]
  # A constant (numpy): ONNX Runtime has no bool EyeLike for jnp.eye to become.
  itself = np.eye(time, dtype=bool)[None, None]  # [1, 1, T, T]
  return jnp.logical_or(keep_key, itself)


def key_bias(masked: jax.Array, dtype=jnp.float32) -> jax.Array:
  """Masked time steps as an additive bias on the attention logits of their keys.

  Args:
    masked: [batch, time] bool, True = masked step.
    dtype: of the bias (the logits' dtype, float32 in `cpu_kernels.attend`).

  Returns:
    [batch, 1, 1, time]: 0 for a kept key, -inf for a masked one. It applies to every
    query but the key's own position (`attention_bias`), so a softmax row is never
    all -inf.
  """
  if masked.ndim != 2:
    raise ValueError(f"masked must be [batch, time], got shape {masked.shape}")
  bias = jnp.where(masked, jnp.asarray(-jnp.inf, dtype), jnp.zeros((), dtype))
  return bias[:, None, None]


def attention_bias(keys: jax.Array) -> jax.Array:
  """A `key_bias` spread over the queries: `attention_mask` as an additive logit bias.

  Args:
    keys: [batch, 1, 1, time], a `key_bias`.

  Returns:
    [batch, 1, time, time]: 0 where query q may attend to key k, -inf elsewhere; the
    diagonal stays 0 (a masked step still sees itself).
  """
  itself = np.eye(keys.shape[-1], dtype=bool)  # a constant, as in `attention_mask`
  return jnp.where(itself, jnp.zeros((), keys.dtype), keys)
