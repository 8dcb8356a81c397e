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

Kernels per platform, chosen at trace time (`coughjax.models.platform.settings`):
`attention_impl` "auto" is "einsum" on CPU (`cpu_kernels.attend`, measured faster
there) and "dot_product" on GPU/TPU: `jax.nn.dot_product_attention` with
`implementation=None`, which in JAX 0.10 runs its XLA implementation (jax does not
pick cuDNN's fused kernel by itself; that takes `implementation="cudnn"`).
`dropout_impl` "auto" is "hash" on CPU (counter-hash bits, `randomness`: threefry is
slow on XLA:CPU) and "flax" elsewhere (`jax.random.bernoulli`, as
`flax.linen.Dropout` draws it). Either choice computes the same function with the
same parameters; the dropout bits of the two differ. A config pins one with
`--config.model.attention_impl=...` / `--config.model.dropout_impl=...`.

Randomness is per clip (`randomness`): clip c's mask comes from fold_in(mask key,
c) and its dropout bits from the dropout key and c, where c is the clip's global id
(`clip_ids`, default its row), so the output of a clip does not depend on the batch,
chunk or device it is computed in.
"""

from __future__ import annotations

import functools
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from coughjax.models import cpu_kernels
from coughjax.models import masking
from coughjax.models import platform as platform_lib
from coughjax.models import randomness
from coughjax.models.registry import register

# PyTorch's LayerNorm default (flax's is 1e-6); matters for a numerical twin.
LAYER_NORM_EPS = 1e-5
POOLINGS = ("mean", "first", "max")
ATTENTION_IMPLS = ("einsum", "dot_product")
DROPOUT_IMPLS = randomness.DROPOUT_IMPLS


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


def _resolve_impl(field: str, value: str, known: tuple[str, ...], setting: str,
                  platform: Optional[str]) -> str:
  impl = platform_lib.resolve_setting(value, setting, "transformer", platform)
  if impl not in known:
    raise ValueError(f"unknown {field} {value!r}; expected 'auto' or one of {known}")
  return impl


def resolve_attention_impl(value: str, platform: Optional[str] = None) -> str:
  """`attention_impl` -> "einsum" or "dot_product" ("auto": einsum on CPU only).

  Args:
    value: "auto", "einsum" or "dot_product".
    platform: 'cpu', 'gpu', 'tpu'; None = `models.platform.backend()` (the platform
      being traced for).
  """
  return _resolve_impl("attention_impl", value, ATTENTION_IMPLS, "attention", platform)


def resolve_dropout_impl(value: str, platform: Optional[str] = None) -> str:
  """`dropout_impl` -> "hash" or "flax" ("auto": hash on CPU only).

  Args:
    value: "auto", "hash" or "flax".
    platform: 'cpu', 'gpu', 'tpu'; None = `models.platform.backend()` (the platform
      being traced for).
  """
  return _resolve_impl("dropout_impl", value, DROPOUT_IMPLS, "dropout", platform)


class SelfAttention(nn.Module):
  """Multi-head self-attention with one fused q|k|v projection: [B, T, d] -> [B, T, d].

  The fused kernel [d, 3d] holds q, k and v side by side, each head's Dh columns
  contiguous, which is exactly the transpose of torch's `in_proj_weight` [3d, d].
  One [B*T, d] x [d, 3d] matmul replaces three DenseGeneral projections and their
  [B, T, H, Dh] relayouts.

  Attributes:
    num_heads: attention heads H (must divide d).
    attention_impl: "einsum" (CPU kernel), "dot_product" (jax.nn.dot_product_attention)
      or "auto" (einsum on CPU, dot_product on GPU/TPU).
    dtype: computation dtype; the softmax runs in float32 either way.
  """

  num_heads: int
  attention_impl: str = platform_lib.AUTO
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, masked: Optional[jax.Array]) -> jax.Array:
    """x: [B, T, d]; masked: [B, T] bool (True = masked key, `masking`) or None."""
    batch, time, d = x.shape
    if d % self.num_heads:
      raise ValueError(f"num_heads {self.num_heads} does not divide d_model {d}")
    impl = resolve_attention_impl(self.attention_impl)
    qkv = nn.Dense(3 * d, dtype=self.dtype, name="qkv")(x)  # [B, T, 3d]
    qkv = qkv.reshape(batch, time, 3, self.num_heads, d // self.num_heads)
    if impl == "einsum":
      q, k, v = (qkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))  # [B, H, T, Dh]
      # [B, 1, 1, T] per clip; the kernel spreads it over the queries.
      bias = None if masked is None else masking.key_bias(masked)
      out = cpu_kernels.attend(q, k, v, bias)  # [B, T, H, Dh]
    else:
      q, k, v = (qkv[:, :, i] for i in range(3))  # [B, T, H, Dh]
      mask = None if masked is None else masking.attention_mask(masked)  # [B, 1, T, T]
      # implementation=None: jax's choice, its XLA implementation in JAX 0.10 (on
      # GPU too); its softmax also runs in float32.
      out = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=None)
    return nn.Dense(d, dtype=self.dtype, name="out")(out.reshape(batch, time, d))


class EncoderLayer(nn.Module):
  """Post-LN Transformer encoder layer: [batch, time, d] -> [batch, time, d].

  `attention_impl` and `dropout_impl` as in `Transformer`.
  """

  num_heads: int
  mlp_dim: int
  dropout: float
  attention_impl: str = platform_lib.AUTO
  dropout_impl: str = platform_lib.AUTO
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, masked: Optional[jax.Array], *,
               train: bool, clip_ids: Optional[jax.Array] = None) -> jax.Array:
    """x: [B, T, d]; masked: [B, T] bool (True = masked key, `masking`) or None;
    clip_ids: [B] global clip ids keying the dropout (default 0..B-1)."""
    d = x.shape[-1]
    dropout_impl = resolve_dropout_impl(self.dropout_impl)

    def drop(y):  # stream 'dropout'
      return randomness.ClipDropout(self.dropout, dropout_impl)(
          y, clip_ids, deterministic=not train)

    norm = functools.partial(nn.LayerNorm, epsilon=LAYER_NORM_EPS, dtype=self.dtype)
    attn = SelfAttention(self.num_heads, self.attention_impl, dtype=self.dtype,
                         name="attention")
    x = norm(name="attention_norm")(x + drop(attn(x, masked)))
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
    attention_impl: "einsum" (`cpu_kernels.attend`), "dot_product"
      (`jax.nn.dot_product_attention`) or "auto": einsum on CPU, dot_product on
      GPU/TPU (resolved at trace time for `models.platform.backend()`, the platform
      being compiled for).
    dropout_impl: "hash" (counter-hash bits), "flax" (`jax.random.bernoulli`) or
      "auto": hash on CPU, flax on GPU/TPU (see `randomness.dropout`).
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
  attention_impl: str = platform_lib.AUTO
  dropout_impl: str = platform_lib.AUTO
  dtype: Any = jnp.float32

  def masking_active(self, train: bool) -> bool:
    """Whether a mask is drawn when none is passed."""
    return self.mask_rate > 0 and (train or self.mask_at_eval)

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool,
               mask: Optional[jax.Array] = None,
               clip_ids: Optional[jax.Array] = None) -> jax.Array:
    """Encodes clips.

    Args:
      x: [batch, time, mel] log-mel clips (time 96, mel 64 in coughjax).
      train: enables dropout (RNG stream 'dropout') and masking.
      mask: [batch, time] bool, True = masked step. If given it is applied as is,
        whatever `mask_rate` and `train` say: a caller can thus draw masks for a
        global batch and shard them. If None and `masking_active(train)`, a mask is
        drawn with `mask_rate` from the RNG stream 'mask'.
      clip_ids: [batch] int, each clip's global id, which keys its mask and dropout
        (default 0, 1, ..., batch - 1).

    Returns:
      h: [batch, d_model] in `dtype`.
    """
    if self.pooling not in POOLINGS:
      raise ValueError(f"unknown pooling {self.pooling!r}; expected one of {POOLINGS}")
    masking.check_rate(self.mask_rate)
    batch, time, _ = x.shape
    if mask is None and self.masking_active(train):
      mask = masking.random_key_mask(self.make_rng("mask"), batch, time, self.mask_rate,
                                     clip_ids)
    if mask is not None and mask.shape != (batch, time):
      raise ValueError(f"mask shape {mask.shape} does not match clips [{batch}, {time}]")
    if mask is not None:
      mask = mask.astype(bool)

    h = nn.Dense(self.d_model, dtype=self.dtype, name="embed")(x)  # [B, T, d]
    h = h + jnp.asarray(sinusoidal_positions(time, self.d_model), h.dtype)
    for i in range(self.num_layers):
      h = EncoderLayer(self.num_heads, self.mlp_dim, self.dropout, self.attention_impl,
                       self.dropout_impl, self.dtype, name=f"layer_{i}")(
                           h, mask, train=train, clip_ids=clip_ids)
    return pool(h, self.pooling)  # [B, d]
