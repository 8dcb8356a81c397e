"""CPU kernels of the Transformer encoder: hash-based dropout and einsum attention.

Chosen for XLA:CPU, where the pre-training step at B = 1024 is bound by memory traffic
and by the cost of drawing random bits, not by FLOPs:

  hash_bits / inverted_dropout  dropout masks from a two-round integer hash of a
      counter instead of threefry, which XLA:CPU lowers as a rolled loop (dropout
      went from ~20% of the step to a few percent);
  attend  softmax attention as two heads-major einsums with the softmax normalised
      after the value product (one pass fewer over the [T, T] weights), faster on
      CPU at T = 96, Dh = 16 than `jax.nn.dot_product_attention`.

`transformer.py` uses them when its `attention_impl` / `dropout_impl` resolve to
"einsum" / "hash" ("auto" does so on CPU). On a GPU or TPU, threefry is cheap and
`jax.nn.dot_product_attention` lets XLA (or cuDNN) pick a fused kernel, so "auto"
takes `jax.nn.dot_product_attention` and `flax.linen.Dropout` there. Both choices
compute the same function; the dropout masks of the two differ (other bits).
"""

from __future__ import annotations

import math
from typing import Optional

import jax
import jax.numpy as jnp


def _fmix32(h: jax.Array) -> jax.Array:
  """MurmurHash3's 32-bit finalizer: a bijection on uint32 with full avalanche."""
  h = h ^ (h >> 16)
  h = h * jnp.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * jnp.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


def hash_bits(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """Random uint32 bits of `shape`: element i is fmix32(fmix32(i + s0) ^ s1).

  A counter-based generator like `jax.random`'s own (which hashes a counter with
  threefry), with a cheaper hash. The seeds s0, s1 are drawn from `key` with
  `jax.random.bits`, so each key gives an independent stream; the second round
  keeps streams of nearby seeds from being shifted copies of each other. Enough for
  dropout masks (drop rate, lag and cross-seed correlations match i.i.d. draws),
  not for anything that needs a cryptographic generator.

  Args:
    key: a `jax.random` key.
    shape: of the result (at most 2**32 elements).

  Returns:
    uint32 array of `shape`.
  """
  s0, s1 = jax.random.bits(key, (2,), jnp.uint32)
  counter = jax.lax.iota(jnp.uint32, math.prod(shape)).reshape(shape)
  return _fmix32(_fmix32(counter + s0) ^ s1)


def keep_mask(key: jax.Array, shape: tuple[int, ...], rate: float) -> jax.Array:
  """Boolean dropout keep mask from `hash_bits`: each entry False with probability
  `rate` (static, in [0, 1]), to within 2**-33."""
  if rate >= 1.0:  # the threshold 2**32 would not fit a uint32
    return jnp.zeros(shape, bool)
  threshold = jnp.uint32(round(rate * 2.0**32))  # P(bits < threshold) = rate
  return hash_bits(key, shape) >= threshold


def inverted_dropout(x: jax.Array, rate: float, key: jax.Array) -> jax.Array:
  """Inverted dropout: zeroes each element with probability `rate`, scales the rest.

  Same semantics as `flax.linen.Dropout`, with the keep mask drawn by `hash_bits`
  instead of `jax.random.bernoulli`: on CPU, threefry (lowered as a rolled loop) made
  dropout ~20% of the pre-training step at B = 1024, and jax's unrolled "philox4x32"
  key was only ~25% cheaper inside the model; with `hash_bits` it is a few percent.

  Args:
    x: activations of any shape.
    rate: drop probability in [0, 1] (static).
    key: a `jax.random` key; fold the step into it upstream.

  Returns:
    x with dropped elements 0 and kept ones divided by 1 - rate.
  """
  if rate == 0.0:
    return x
  if rate == 1.0:
    return jnp.zeros_like(x)
  keep = keep_mask(key, x.shape, rate)
  return jnp.where(keep, x / jnp.asarray(1.0 - rate, x.dtype), jnp.zeros((), x.dtype))


def attend(q: jax.Array, k: jax.Array, v: jax.Array,
           bias: Optional[jax.Array]) -> jax.Array:
  """Softmax attention of every head: [B, H, T, Dh] q, k, v -> [B, T, H, Dh].

  Plain einsums in heads-major layout, faster on CPU at T = 96, Dh = 16 (forward and
  backward) than `jax.nn.dot_product_attention` on [B, T, H, Dh]. The softmax's
  normalisation is applied to the [T, Dh] output rather than to the [T, T] weights,
  which saves a pass over the weights in the forward and the backward pass:
  softmax(l) @ v = (exp(l - m) @ v) / sum(exp(l - m)) for any row constant m.

  Args:
    q, k, v: [B, H, T, Dh] queries, keys and values.
    bias: [B, 1, T, T] added to the logits (0, or -inf for a masked key; every row
      must keep a finite entry), or None.

  Returns:
    [B, T, H, Dh] attention output, ready to be flattened to [B, T, H * Dh].
  """
  logits = jnp.einsum("bhqd,bhkd->bhqk", q * (q.shape[-1] ** -0.5), k)
  # The softmax runs in float32 even when computing in bf16.
  logits = logits.astype(jnp.float32)
  if bias is not None:
    logits = logits + bias
  # m = the row max keeps exp in range; it cancels out, so no gradient flows to it.
  row_max = jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
  weights = jnp.exp(logits - row_max)  # [B, H, T, T], unnormalised
  out = jnp.einsum("bhqk,bhkd->bhqd", weights.astype(v.dtype), v)
  out = out / jnp.sum(weights, axis=-1, keepdims=True).astype(out.dtype)
  return out.transpose(0, 2, 1, 3)
