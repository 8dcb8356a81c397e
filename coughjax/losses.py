"""Contrastive loss of the paper (eq. 5) over a global batch, and its pair indices.

For clip i with partner j among the 2B clips of a batch,

  l_i = -log exp(s_ij / tau) / sum_{k != i} exp(s_ik / tau),

averaged over all 2B clips. The logits passed in are already s / tau (see
`coughjax.models.heads.Similarity`). Each device scores its own rows against the
columns of the whole gathered batch, so a row carries the global column of its own
clip (`self_index`, excluded from the denominator) and of its partner
(`positive_index`, the target). With equal shards, `pmean` of the per-device loss is
the global eq. 5.
"""

from __future__ import annotations

from typing import Union

import jax
import jax.numpy as jnp

IntLike = Union[int, jax.Array]


def pair_indices(num_pairs: int, offset: IntLike = 0) -> tuple[jax.Array, jax.Array]:
  """Global columns of a shard's clips and of their partners.

  The shard holds 2 * num_pairs clips laid out as [a_0..a_{b-1}, b_0..b_{b-1}]
  (a_r and b_r are one participant's pair) and its first clip is global column
  `offset` (e.g. `jax.lax.axis_index("batch") * 2 * num_pairs`; may be traced).

  Returns:
    (self_index, positive_index), each [2 * num_pairs] int32: row r's own column is
    offset + r and its partner's is offset + (r + b) mod 2b.
  """
  rows = jnp.arange(2 * num_pairs, dtype=jnp.int32)
  partner = (rows + num_pairs) % (2 * num_pairs)
  offset = jnp.asarray(offset, jnp.int32)
  return offset + rows, offset + partner


def contrastive_loss(
    logits: jax.Array, self_index: jax.Array, positive_index: jax.Array,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Eq. 5 for some rows of a batch.

  Args:
    logits: [n, N] similarities / tau of n rows against all N clips of the batch.
    self_index: [n] int, column of each row's own clip (left out of the softmax).
    positive_index: [n] int, column of each row's partner (the target).

  Returns:
    (loss, metrics): loss is the float32 mean over rows of -log softmax of the
    partner; metrics hold "loss", "accuracy" (the partner has the highest logit
    among the allowed columns), "positive_logit" (mean partner logit) and
    "negative_logit" (mean logit over the other allowed columns). All are means over
    the n rows, so equal shards can be averaged with `pmean`.
  """
  if logits.ndim != 2 or logits.shape[1] < 2:
    raise ValueError(f"logits must be [rows, columns >= 2], got shape {logits.shape}")
  n, num_cols = logits.shape
  if self_index.shape != (n,) or positive_index.shape != (n,):
    raise ValueError(f"self_index {self_index.shape} and positive_index "
                     f"{positive_index.shape} must both be [{n}]")
  # float32 so that the excluded column can be -inf (bf16 logits would otherwise
  # also lose the small gaps between logits that the softmax depends on).
  logits = logits.astype(jnp.float32)
  cols = jnp.arange(num_cols)[None, :]
  is_self = cols == self_index[:, None]  # [n, N]
  is_positive = cols == positive_index[:, None]  # [n, N]
  # -inf is exact and safe here: every row keeps N - 1 >= 1 finite columns, and the
  # gradient of `where` sends nothing to the excluded column.
  allowed = jnp.where(is_self, -jnp.inf, logits)
  log_probs = jax.nn.log_softmax(allowed, axis=-1)
  loss = -jnp.mean(jnp.sum(jnp.where(is_positive, log_probs, 0.0), axis=-1))

  positive = jnp.sum(jnp.where(is_positive, logits, 0.0), axis=-1)  # [n]
  is_negative = ~(is_self | is_positive)
  negative = (jnp.sum(jnp.where(is_negative, logits, 0.0), axis=-1)
              / jnp.maximum(jnp.sum(is_negative, axis=-1), 1))
  accuracy = jnp.mean(jnp.argmax(allowed, axis=-1) == positive_index)
  metrics = {
      "loss": loss,
      "accuracy": accuracy.astype(jnp.float32),
      "positive_logit": jnp.mean(positive),
      "negative_logit": jnp.mean(negative),
  }
  return loss, metrics
