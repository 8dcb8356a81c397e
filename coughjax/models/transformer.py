"""Transformer encoder f (paper §4.1.1) with random key masking (§4.1.2).

Dense(mel -> d) + fixed sinusoidal positions, then `num_layers` post-LN encoder
layers laid out as PyTorch's `nn.TransformerEncoderLayer` defaults (q, k, v and
output projections with biases, ReLU MLP, LayerNorm eps 1e-5), so that a PyTorch twin
has the same parameters, each Dense kernel being the transpose of torch's weight:

  embed                    Dense  kernel [mel, d], bias [d]
  layer_{i}/attention/qkv  Dense  kernel [d, 3d], bias [3d]  (torch self_attn.in_proj_*)
  layer_{i}/attention/out  Dense  kernel [d, d], bias [d]    (torch self_attn.out_proj)
  layer_{i}/attention_norm LayerNorm  scale [d], bias [d]    (torch norm1)
  layer_{i}/mlp_in         Dense  kernel [d, mlp], bias [mlp] (torch linear1)
  layer_{i}/mlp_out        Dense  kernel [mlp, d], bias [d]  (torch linear2)
  layer_{i}/mlp_norm       LayerNorm  scale [d], bias [d]    (torch norm2)

So `in_proj_weight` [3d, d] = qkv kernel.T: columns [0, d) of the kernel are the
queries, [d, 2d) the keys, [2d, 3d) the values, and within each, head h owns the
Dh = d / heads columns [h * Dh, (h + 1) * Dh), as in torch. One difference: torch
also applies dropout to the attention weights; here, as before, dropout acts on the
attention output and in the MLP only (it changes no parameter).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from coughjax.models import masking
from coughjax.models.registry import register

# PyTorch's LayerNorm default (flax's is 1e-6); matters for a numerical twin.
LAYER_NORM_EPS = 1e-5
POOLINGS = ("mean", "first", "max")


@functools.lru_cache(maxsize=16)
def sinusoidal_positions(length: int, dim: int) -> np.ndarray:
  """[length, dim] float32 positions of Vaswani et al. (sin on even, cos on odd)."""
  pos = np.arange(length, dtype=np.float64)[:, None]
  rates = np.exp(-np.log(10_000.0) * np.arange(0, dim, 2) / dim)  # [ceil(dim / 2)]
  table = np.zeros((length, dim))
  table[:, 0::2] = np.sin(pos * rates)
  table[:, 1::2] = np.cos(pos * rates[:dim // 2])
  table = table.astype(np.float32)
  table.setflags(write=False)
  return table


def pool(h: jax.Array, how: str) -> jax.Array:
  """[batch, time, d] -> [batch, d] by `how` in POOLINGS."""
  if how == "mean":
    # Sum 96 steps in float32 even when computing in bf16.
    return h.mean(axis=1, dtype=jnp.float32).astype(h.dtype)
  if how == "first":
    return h[:, 0]
  if how == "max":
    return h.max(axis=1)
  raise ValueError(f"unknown pooling {how!r}; expected one of {POOLINGS}")


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
  # P(bits < threshold) = round(rate * 2**32) / 2**32, i.e. rate to within 2**-33.
  threshold = jnp.uint32(round(rate * 2.0**32))
  keep = hash_bits(key, x.shape) >= threshold
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


class SelfAttention(nn.Module):
  """Multi-head self-attention with one fused q|k|v projection: [B, T, d] -> [B, T, d].

  The fused kernel [d, 3d] holds q, k and v side by side, each head's Dh columns
  contiguous, which is exactly the transpose of torch's `in_proj_weight` [3d, d].
  One [B*T, d] x [d, 3d] matmul replaces three DenseGeneral projections and their
  [B, T, H, Dh] relayouts.
  """

  num_heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, bias: Optional[jax.Array]) -> jax.Array:
    """x: [B, T, d]; bias: [B, 1, T, T] additive logit bias or None."""
    batch, time, d = x.shape
    if d % self.num_heads:
      raise ValueError(f"num_heads {self.num_heads} does not divide d_model {d}")
    qkv = nn.Dense(3 * d, dtype=self.dtype, name="qkv")(x)  # [B, T, 3d]
    qkv = qkv.reshape(batch, time, 3, self.num_heads, d // self.num_heads)
    q, k, v = (qkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))  # [B, H, T, Dh]
    out = attend(q, k, v, bias).reshape(batch, time, d)
    return nn.Dense(d, dtype=self.dtype, name="out")(out)


class EncoderLayer(nn.Module):
  """Post-LN Transformer encoder layer: [batch, time, d] -> [batch, time, d]."""

  num_heads: int
  mlp_dim: int
  dropout: float
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, attn_bias: Optional[jax.Array], *,
               train: bool) -> jax.Array:
    """x: [B, T, d]; attn_bias: [B, 1, T, T] (0 = may attend, -inf = not) or None."""
    d = x.shape[-1]

    def drop(y):
      if not train or self.dropout == 0.0:
        return y
      return inverted_dropout(y, self.dropout, self.make_rng("dropout"))

    norm = functools.partial(nn.LayerNorm, epsilon=LAYER_NORM_EPS, dtype=self.dtype)
    attn = SelfAttention(self.num_heads, dtype=self.dtype, name="attention")
    x = norm(name="attention_norm")(x + drop(attn(x, attn_bias)))
    y = nn.Dense(self.mlp_dim, dtype=self.dtype, name="mlp_in")(x)
    y = drop(nn.relu(y))
    y = nn.Dense(d, dtype=self.dtype, name="mlp_out")(y)
    return norm(name="mlp_norm")(x + drop(y))


@register("transformer")
class Transformer(nn.Module):
  """Transformer encoder: log-mel clips [batch, time, mel] -> h [batch, d_model].

  Attributes:
    d_model: feature size d.
    num_layers: encoder layers.
    num_heads: attention heads (must divide d_model).
    mlp_dim: hidden width of each layer's MLP.
    dropout: rate after attention, inside and after the MLP.
    mask_rate: fraction of time steps removed as attention keys (see masking.py).
    mask_at_eval: also mask when train=False (the ensemble's "DS masking").
    pooling: "mean" over time (default), "first" step or "max" over time.
    dtype: computation dtype (e.g. jnp.bfloat16); parameters stay float32.
  """

  d_model: int = 64
  num_layers: int = 2
  num_heads: int = 4
  mlp_dim: int = 256
  dropout: float = 0.2
  mask_rate: float = 0.0
  mask_at_eval: bool = False
  pooling: str = "mean"
  dtype: Any = jnp.float32

  def masking_active(self, train: bool) -> bool:
    """Whether a mask is drawn when none is passed."""
    return self.mask_rate > 0 and (train or self.mask_at_eval)

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool,
               mask: Optional[jax.Array] = None) -> jax.Array:
    """Encodes clips.

    Args:
      x: [batch, time, mel] log-mel clips (time 96, mel 64 in coughjax).
      train: enables dropout (RNG stream 'dropout') and masking.
      mask: [batch, time] bool, True = masked step. If given it is applied as is,
        whatever `mask_rate` and `train` say: a caller can thus draw masks for a
        global batch and shard them. If None and `masking_active(train)`, a mask is
        drawn with `mask_rate` from the RNG stream 'mask'.

    Returns:
      h: [batch, d_model] in `dtype`.
    """
    if self.pooling not in POOLINGS:
      raise ValueError(f"unknown pooling {self.pooling!r}; expected one of {POOLINGS}")
    masking.check_rate(self.mask_rate)
    batch, time, _ = x.shape
    if mask is None and self.masking_active(train):
      mask = masking.random_key_mask(self.make_rng("mask"), batch, time, self.mask_rate)
    if mask is not None and mask.shape != (batch, time):
      raise ValueError(f"mask shape {mask.shape} does not match clips [{batch}, {time}]")
    attn_bias = None if mask is None else masking.attention_bias(mask.astype(bool))

    h = nn.Dense(self.d_model, dtype=self.dtype, name="embed")(x)  # [B, T, d]
    h = h + jnp.asarray(sinusoidal_positions(time, self.d_model), h.dtype)
    for i in range(self.num_layers):
      h = EncoderLayer(self.num_heads, self.mlp_dim, self.dropout, self.dtype,
                       name=f"layer_{i}")(h, attn_bias, train=train)
    return pool(h, self.pooling)  # [B, d]
