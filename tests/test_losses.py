"""Tests for the contrastive loss (eq. 5) against a plain numpy version."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from coughjax import losses

TAU = 0.2


def _global_partners(num_shards: int, pairs_per_shard: int) -> np.ndarray:
  """Partner of every clip when each shard is laid out [a_0..a_{b-1}, b_0..b_{b-1}]."""
  partner = []
  for shard in range(num_shards):
    for r in range(2 * pairs_per_shard):
      local = r + pairs_per_shard if r < pairs_per_shard else r - pairs_per_shard
      partner.append(shard * 2 * pairs_per_shard + local)
  return np.array(partner)


def _eq5_numpy(s: np.ndarray, rows, partner: np.ndarray, tau: float):
  """Per-row loss and hit of eq. 5, a row at a time: -log e^{s_ij/t} / sum_{k!=i} e^{s_ik/t}."""
  s = s.astype(np.float64)
  row_loss, hit = [], []
  for i in rows:
    j = partner[i]
    others = [k for k in range(s.shape[1]) if k != i]
    denominator = sum(np.exp(s[i, k] / tau) for k in others)
    row_loss.append(-np.log(np.exp(s[i, j] / tau) / denominator))
    hit.append(others[int(np.argmax(s[i, others]))] == j)
  return np.array(row_loss), np.array(hit)


@pytest.fixture(scope="module")
def similarities():
  return np.random.default_rng(0).uniform(-1, 1, size=(32, 32)).astype(np.float32)


def test_pair_indices():
  self_index, positive = losses.pair_indices(3, offset=12)
  np.testing.assert_array_equal(self_index, np.arange(12, 18))
  np.testing.assert_array_equal(positive, [15, 16, 17, 12, 13, 14])


def test_full_batch_matches_numpy(similarities):
  s = similarities[:16, :16]
  partner = _global_partners(1, 8)
  row_loss, hit = _eq5_numpy(s, range(16), partner, TAU)
  loss, metrics = losses.contrastive_loss(jnp.asarray(s / TAU), *losses.pair_indices(8))
  np.testing.assert_allclose(loss, row_loss.mean(), rtol=1e-5)
  np.testing.assert_allclose(metrics["loss"], loss)
  np.testing.assert_allclose(metrics["accuracy"], hit.mean())
  np.testing.assert_allclose(metrics["positive_logit"],
                             np.mean(s[np.arange(16), partner]) / TAU, rtol=1e-5)


def test_sharded_rows_match_numpy(similarities):
  """4 shards of 4 pairs: each scores its 8 rows against all 32 columns."""
  partner = _global_partners(4, 4)
  row_loss, hit = _eq5_numpy(similarities, range(32), partner, TAU)
  shard_losses = []
  for shard in range(4):
    rows = slice(8 * shard, 8 * shard + 8)
    self_index, positive = losses.pair_indices(4, offset=8 * shard)
    np.testing.assert_array_equal(positive, partner[rows])
    loss, metrics = losses.contrastive_loss(jnp.asarray(similarities[rows] / TAU),
                                            self_index, positive)
    np.testing.assert_allclose(loss, row_loss[rows].mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics["accuracy"], hit[rows].mean())
    shard_losses.append(loss)
  # Equal shards: the mean of the shard losses is the global eq. 5.
  np.testing.assert_allclose(np.mean(shard_losses), row_loss.mean(), rtol=1e-5)


def test_self_column_is_excluded():
  # The clip itself scores highest; excluded, the partner wins every row.
  logits = jnp.asarray(np.eye(4) * 100 + np.roll(np.eye(4), 2, axis=1) * 10, jnp.float32)
  loss, metrics = losses.contrastive_loss(logits, *losses.pair_indices(2))
  assert metrics["accuracy"] == 1.0 and loss < 1e-3
  np.testing.assert_allclose(metrics["negative_logit"], 0.0)


def test_gradient_finite_and_bfloat16(similarities):
  logits = jnp.asarray(similarities[8:16] / TAU)
  idx = losses.pair_indices(4, offset=8)
  grad = np.asarray(jax.grad(lambda x: losses.contrastive_loss(x, *idx)[0])(logits))
  assert np.all(np.isfinite(grad))
  np.testing.assert_array_equal(grad[np.arange(8), idx[0]], 0.0)  # self columns
  np.testing.assert_allclose(grad.sum(axis=1), 0.0, atol=1e-6)  # softmax rows
  loss16, _ = losses.contrastive_loss(logits.astype(jnp.bfloat16), *idx)
  assert loss16.dtype == jnp.float32
  np.testing.assert_allclose(loss16, losses.contrastive_loss(logits, *idx)[0], rtol=2e-2)


def test_shape_errors():
  with pytest.raises(ValueError, match="logits"):
    losses.contrastive_loss(jnp.zeros((4, 1)), jnp.zeros(4, int), jnp.zeros(4, int))
  with pytest.raises(ValueError, match="self_index"):
    losses.contrastive_loss(jnp.zeros((4, 8)), jnp.zeros(3, int), jnp.zeros(4, int))
