"""GRU encoder f (the paper's recurrent baseline): clips -> last hidden state.

Stacked like PyTorch's `nn.GRU(batch_first=True, num_layers, dropout)`, with its
parameters and update rule exactly (r multiplies W_hn h + b_hn; dropout acts on the
outputs of every layer but the last). Per layer `layer_{i}`:

  kernel_ih [in, 3d]  = torch weight_ih_l{i}.T   (gates r | z | n side by side)
  kernel_hh [d, 3d]   = torch weight_hh_l{i}.T
  bias_ih   [3d]      = torch bias_ih_l{i}
  bias_hh   [3d]      = torch bias_hh_l{i}

Computed as cuDNN and oneDNN do: the input projections of all time steps in one
[B*T, in] x [in, 3d] matmul before the recurrence, then one fused [B, d] x [d, 3d]
matmul per step for the three recurrent gates.

Inference on CPU (measured at B = 1024 on 2 cores, interleaved with the torch twin):
the recurrence is bound by per-step overhead, not FLOPs, so it runs over 256-clip
chunks (`CPU_INFERENCE_CHUNK`, against 16 for the attention encoders), advances two
independent halves of each chunk per scan iteration (`eval_streams`; independent ops
that XLA:CPU may run on both cores) and unrolls 4 steps per iteration
(`eval_unroll`): 119-123 us per clip, against 140 us for a plain scan over the same
chunks, 174-181 us over 16-clip chunks and 131-137 us for torch's fused nn.GRU. In a
training step the same settings were ~18 % slower (pre-training, B = 256), so the
differentiated scan stays plain. The outputs do not change: each clip's recurrence
is computed alone either way.
"""

from __future__ import annotations

from typing import Any, ClassVar, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from coughjax.models import platform
from coughjax.models.registry import register


def _stacked_orthogonal(num: int):
  """Init of a [d, num * d] kernel as `num` independent orthogonal [d, d] blocks
  (each gate's recurrent matrix orthogonal, as flax's GRUCell initialises them)."""
  orthogonal = nn.initializers.orthogonal()

  def init(key, shape, dtype=jnp.float32):
    d = shape[1] // num
    return jnp.concatenate([orthogonal(k, (shape[0], d), dtype)
                            for k in jax.random.split(key, num)], axis=1)

  return init


class GRULayer(nn.Module):
  """One GRU layer over a time-major sequence: [T, B, in] -> ([T, B, d], [B, d]).

  Attributes:
    d_model: hidden size d.
    return_sequence: also return every step's hidden state (else only the last).
    unroll: time steps per scan iteration.
    streams: batch slices advanced independently in each scan iteration (1 when the
      batch does not split evenly).
    dtype: computation dtype; parameters stay float32.
  """

  d_model: int
  return_sequence: bool = True
  unroll: int = 1
  streams: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[Optional[jax.Array], jax.Array]:
    d = self.d_model
    w_ih = self.param("kernel_ih", nn.initializers.lecun_normal(), (x.shape[-1], 3 * d))
    w_hh = self.param("kernel_hh", _stacked_orthogonal(3), (d, 3 * d))
    b_ih = self.param("bias_ih", nn.initializers.zeros, (3 * d,))
    b_hh = self.param("bias_hh", nn.initializers.zeros, (3 * d,))
    w_ih, w_hh, b_ih, b_hh = (p.astype(self.dtype) for p in (w_ih, w_hh, b_ih, b_hh))
    # Every step's input gates at once: [T, B, in] x [in, 3d].
    gates_x = jnp.einsum("tbi,ig->tbg", x.astype(self.dtype), w_ih) + b_ih

    def cell(h, gx):  # h [b, d], gx [b, 3d]
      gh = h @ w_hh + b_hh  # the three recurrent gates in one matmul
      # r and z in one [b, 2d] sigmoid, as tanh (one transcendental fewer per entry
      # than XLA:CPU's logistic).
      rz = 0.5 * jnp.tanh(0.5 * (gx[:, :2 * d] + gh[:, :2 * d])) + 0.5
      r, z = rz[:, :d], rz[:, d:]
      n = jnp.tanh(gx[:, 2 * d:] + r * gh[:, 2 * d:])
      return (1 - z) * n + z * h

    def step(hs, gxs):
      hs = tuple(cell(h, gx) for h, gx in zip(hs, gxs))
      return hs, (hs if self.return_sequence else None)

    b = x.shape[1]
    streams = self.streams if b % self.streams == 0 else 1
    h0 = (jnp.zeros((b // streams, d), self.dtype),) * streams
    last, seq = jax.lax.scan(step, h0, tuple(jnp.split(gates_x, streams, axis=1)),
                             unroll=self.unroll)
    last = jnp.concatenate(last, axis=0)
    seq = jnp.concatenate(seq, axis=1) if self.return_sequence else None
    return seq, last


@register("gru")
class GRU(nn.Module):
  """GRU encoder: log-mel clips [batch, time, mel] -> h [batch, d_model].

  Attributes:
    d_model: hidden size d of every layer.
    num_layers: stacked GRU layers.
    dropout: rate between layers (as torch nn.GRU's `dropout`).
    eval_unroll: time steps per scan iteration at inference (see the module doc).
    eval_streams: batch slices advanced together at inference, or "auto" (2 on CPU,
      1 on GPU/TPU).
    dtype: computation dtype (e.g. jnp.bfloat16); parameters stay float32.
  """

  # Clips per inference chunk on CPU, where "auto" chunking asks the encoders
  # (`chunking.inference_chunk_size`); the attention encoders' is 16.
  CPU_INFERENCE_CHUNK: ClassVar[int] = 256

  d_model: int = 64
  num_layers: int = 2
  dropout: float = 0.2
  eval_unroll: int = 4
  eval_streams: int | str = platform.AUTO
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
    unroll, streams = 1, 1  # a plain scan to differentiate
    if not train:
      unroll = self.eval_unroll
      streams = platform.resolve(self.eval_streams, cpu=2, accelerator=1)
    h = x.swapaxes(0, 1)  # time-major [T, B, mel], then [T, B, d]
    last = None
    for i in range(self.num_layers):
      if i:
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
      top = i == self.num_layers - 1
      h, last = GRULayer(self.d_model, return_sequence=not top, unroll=unroll,
                         streams=streams, dtype=self.dtype, name=f"layer_{i}")(h)
    return last
