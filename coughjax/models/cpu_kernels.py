"""CPU kernel of the Transformer encoder: softmax attention as two heads-major einsums.

On XLA:CPU the pre-training step is bound by memory traffic rather than FLOPs.
`attend` computes attention in the heads-major layout with the softmax normalised
after the value product (one pass fewer over the [T, T] weights), which measured
faster there at T = 96, Dh = 16 than `jax.nn.dot_product_attention`
(benchmarks/README.md has the numbers). `transformer.py` uses it when its
`attention_impl` resolves to "einsum", which "auto" does on CPU
(`platform.settings`); elsewhere "auto" takes `jax.nn.dot_product_attention`. Both
compute the same function. The CPU's other choice, hash-based dropout bits, lives
with the rest of the randomness in `randomness.py`.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from coughjax.models import masking


def attend(q: jax.Array, k: jax.Array, v: jax.Array,
           key_bias: Optional[jax.Array]) -> jax.Array:
  """Softmax attention of every head: [B, H, T, Dh] q, k, v -> [B, T, H, Dh].

  Plain einsums in heads-major layout, faster on CPU at T = 96, Dh = 16 (forward and
  backward) than `jax.nn.dot_product_attention` on [B, T, H, Dh]. The softmax's
  normalisation is applied to the [T, Dh] output rather than to the [T, T] weights,
  which saves a pass over the weights in the forward and the backward pass:
  softmax(l) @ v = (exp(l - m) @ v) / sum(exp(l - m)) for any row constant m.

  Args:
    q, k, v: [B, H, T, Dh] queries, keys and values.
    key_bias: [B, 1, 1, T] `masking.key_bias` (0 for a kept key, -inf for a masked
      one, which only its own query still sees), or None.

  Returns:
    [B, T, H, Dh] attention output, ready to be flattened to [B, T, H * Dh].
  """
  if key_bias is not None:
    # XLA:CPU runs both einsums and the softmax as one fused kernel (YNNPACK), which
    # broadcasts a [B, 1, T, T] bias over the heads itself, unless that broadcast
    # has other users: XLA merges the layers' identical broadcasts of one shared
    # bias into one, which its producer then writes out at [B, H, T, T] (2.4 MB
    # per 16-clip chunk, read back by every layer: most of what a non-empty DS
    # mask cost, benchmarks/README.md). Tied to this call's queries by a barrier,
    # each layer's bias stays its own. (Spreading the key bias by a product with a
    # constant, which the kernel also fuses, missed the cache more: same README.)
    key_bias, q = jax.lax.optimization_barrier((key_bias.astype(jnp.float32), q))
  logits = jnp.einsum("bhqd,bhkd->bhqk", q * (q.shape[-1] ** -0.5), k)
  # The softmax runs in float32 even when computing in bf16.
  logits = logits.astype(jnp.float32)
  if key_bias is not None:
    logits = logits + masking.attention_bias(key_bias)
  # m = the row max keeps exp in range; it cancels out, so no gradient flows to it.
  row_max = jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
  weights = jnp.exp(logits - row_max)  # [B, H, T, T], unnormalised
  out = jnp.einsum("bhqk,bhkd->bhqd", weights.astype(v.dtype), v)
  out = out / jnp.sum(weights, axis=-1, keepdims=True).astype(out.dtype)
  return out.transpose(0, 2, 1, 3)
