"""GRU encoder f (the paper's recurrent baseline): clips -> last hidden state.

Stacked like PyTorch's `nn.GRU(batch_first=True, num_layers, dropout)`: dropout acts
on the outputs of every layer but the last. Parameters per layer (`layer_{i}`):
input Dense `ir`, `iz`, `in` (kernel [in, d], bias [d]) and hidden Dense `hr`, `hz`
(kernel [d, d], no bias) and `hn` (kernel [d, d], bias [d]). The update rule is
torch's (r multiplies W_hn h + b_hn); torch keeps separate input and hidden biases
for the r and z gates, where flax has one each, so a torch twin has 2d more
parameters per layer and loads b_ir + b_hr, b_iz + b_hz into `ir`, `iz`.
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from coughjax.models.registry import register


@register("gru")
class GRU(nn.Module):
  """GRU encoder: log-mel clips [batch, time, mel] -> h [batch, d_model].

  Attributes:
    d_model: hidden size d of every layer.
    num_layers: stacked GRU layers.
    dropout: rate between layers (as torch nn.GRU's `dropout`).
    dtype: computation dtype (e.g. jnp.bfloat16); parameters stay float32.
  """

  d_model: int = 64
  num_layers: int = 2
  dropout: float = 0.2
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool,
               mask: Optional[jax.Array] = None) -> jax.Array:
    """Encodes clips.

    Args:
      x: [batch, time, mel] log-mel clips.
      train: enables dropout between layers (RNG stream 'dropout').
      mask: ignored. A GRU has no attention to mask; the argument exists so that
        every encoder shares one call signature.

    Returns:
      h: [batch, d_model], the top layer's hidden state after the last step.
    """
    del mask
    h = x  # [B, T, mel], then [B, T, d]
    carry = None
    for i in range(self.num_layers):
      if i:
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
      # The cell, not the (parameter-free) RNN wrapper, owns the parameters, so
      # naming it puts them at params/layer_{i}.
      cell = nn.GRUCell(self.d_model, dtype=self.dtype, name=f"layer_{i}")
      carry, h = nn.RNN(cell, return_carry=True)(h)
    return carry.astype(self.dtype)
