"""Random key masking (paper §4.1.2, Fig. 3): which time steps attention may not use.

The paper's masking generator is a Python loop whose cost grows with the masking rate
(Table 6). Here a mask is one vectorised draw: every row ranks `length` uniform
numbers and masks the `round(rate * length)` lowest ranks, so the computation is the
same for every rate, only a constant differs.

Masked steps are removed as attention *keys* for every query except the query's own
position: rate 1.0 then means "no attention between any time steps" (each step sees
only itself) while every softmax row keeps at least one entry, so nothing is NaN.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


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


def random_key_mask(key: jax.Array, batch: int, length: int, rate: float) -> jax.Array:
  """Draws which time steps are masked, exactly round(rate * length) per row.

  Args:
    key: a `jax.random` key; fold the step into it to get a fresh mask per step.
    batch: number of rows (clips).
    length: time steps per row.
    rate: static masking rate in [0, 1].

  Returns:
    [batch, length] bool, True = masked. Each row's masked set is uniform over all
    subsets of that size.
  """
  count = num_masked(length, rate)
  noise = jax.random.uniform(key, (batch, length))
  # Rank of each step in its row. argsort is stable, so even tied noise values get
  # distinct ranks and the count is exact.
  ranks = jnp.argsort(jnp.argsort(noise, axis=-1), axis=-1)
  return ranks < count


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
  itself = jnp.eye(time, dtype=bool)[None, None]  # [1, 1, T, T]
  return jnp.logical_or(keep_key, itself)
