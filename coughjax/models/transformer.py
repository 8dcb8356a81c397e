"""Transformer encoder f (paper §4.1.1) with random key masking (§4.1.2).

Dense(mel -> d) + fixed sinusoidal positions, then `num_layers` post-LN encoder
layers laid out as PyTorch's `nn.TransformerEncoderLayer` defaults (q, k, v and
output projections with biases, ReLU MLP, LayerNorm eps 1e-5), so that a PyTorch twin
has the same parameters:

  embed                    Dense            kernel [mel, d], bias [d]
  layer_{i}/attention      query|key|value  kernel [d, heads, d/heads], bias [heads, d/heads]
                           out              kernel [heads, d/heads, d], bias [d]
  layer_{i}/attention_norm LayerNorm        scale [d], bias [d]       (torch norm1)
  layer_{i}/mlp_in         Dense            kernel [d, mlp], bias [mlp] (torch linear1)
  layer_{i}/mlp_out        Dense            kernel [mlp, d], bias [d]   (torch linear2)
  layer_{i}/mlp_norm       LayerNorm        scale [d], bias [d]       (torch norm2)

torch's `in_proj_weight` [3d, d] is query/key/value kernels reshaped to [d, d],
transposed and stacked. One difference: torch also applies dropout to the attention
weights; `jax.nn.dot_product_attention` has no dropout, so here dropout acts on the
attention output and in the MLP only (it changes no parameter).
"""

from __future__ import annotations

import functools
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


class EncoderLayer(nn.Module):
  """Post-LN Transformer encoder layer: [batch, time, d] -> [batch, time, d]."""

  num_heads: int
  mlp_dim: int
  dropout: float
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, attn_mask: Optional[jax.Array], *,
               train: bool) -> jax.Array:
    """x: [B, T, d]; attn_mask: [B, 1, T, T] bool (True = may attend) or None."""
    d = x.shape[-1]
    drop = functools.partial(nn.Dropout, rate=self.dropout, deterministic=not train)
    norm = functools.partial(nn.LayerNorm, epsilon=LAYER_NORM_EPS, dtype=self.dtype)
    # The flax module filters attention_fn's keyword arguments by its signature, so
    # jax.nn.dot_product_attention receives q, k, v and `mask` only (~2x faster on
    # CPU than flax's own attention; it takes the softmax in float32 for bf16).
    attn = nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads, dtype=self.dtype,
        attention_fn=jax.nn.dot_product_attention, name="attention")
    x = norm(name="attention_norm")(x + drop()(attn(x, mask=attn_mask)))
    y = nn.Dense(self.mlp_dim, dtype=self.dtype, name="mlp_in")(x)
    y = drop()(nn.relu(y))
    y = nn.Dense(d, dtype=self.dtype, name="mlp_out")(y)
    return norm(name="mlp_norm")(x + drop()(y))


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
    attn_mask = None if mask is None else masking.attention_mask(mask.astype(bool))

    h = nn.Dense(self.d_model, dtype=self.dtype, name="embed")(x)  # [B, T, d]
    h = h + jnp.asarray(sinusoidal_positions(time, self.d_model), h.dtype)
    for i in range(self.num_layers):
      h = EncoderLayer(self.num_heads, self.mlp_dim, self.dropout, self.dtype,
                       name=f"layer_{i}")(h, attn_mask, train=train)
    return pool(h, self.pooling)  # [B, d]
