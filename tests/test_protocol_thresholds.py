"""coughjax.protocol.thresholds against brute force and worked examples."""

import numpy as np
import pytest

from coughjax.protocol import thresholds


def test_bad_input_is_an_error():
  with pytest.raises(ValueError, match=r"must be \[n\] with"):
    thresholds.threshold_metrics([0, 1], [[0.1, 0.3]])
  with pytest.raises(ValueError, match="0/1"):
    thresholds.brier([0, 2], [0.1, 0.3])
  with pytest.raises(ValueError, match="probabilities in \\[0, 1\\]"):
    thresholds.ece([0, 1], [0.1, 1.3])


def test_threshold_metrics():
  y = [1, 1, 1, 0, 0, 0, 0]
  m = thresholds.threshold_metrics(y, [0.9, 0.6, 0.2, 0.7, 0.1, 0.3, 0.5])
  # predicted positive: 0.9, 0.6, 0.7, 0.5 -> tp 2, fp 2, fn 1, tn 2.
  assert (m.precision, m.recall, m.accuracy) == pytest.approx((0.5, 2 / 3, 4 / 7))
  assert m.f1 == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
  assert not m.degenerate
  none = thresholds.threshold_metrics(y, np.full(7, 0.4))
  assert none.degenerate and (none.precision, none.recall, none.f1) == (0, 0, 0)
  assert none.accuracy == pytest.approx(4 / 7)
  everything = thresholds.threshold_metrics(y, np.full(7, 0.8), threshold=0.8)
  assert everything.degenerate and everything.recall == 1.0


def _slow_rates(y, s, t):
  pred = s >= t
  return pred[y].mean(), (~pred[~y]).mean()


@pytest.mark.parametrize("seed", range(3))
def test_operating_points_and_thresholds_match_brute_force(seed):
  rng = np.random.default_rng(seed)
  n = 60
  y = rng.random(n) < 0.5
  y[:3], y[3:6] = True, False
  s = np.round(rng.random(n) + 0.3 * y, 1)   # ties
  cands = np.r_[np.unique(s), np.inf]
  rates = [_slow_rates(y, s, t) for t in cands]
  sens, spec = thresholds.operating_points(y, s, specificity=0.8, sensitivity=0.7)
  assert sens[0] == max(se for se, sp in rates if sp >= 0.8)
  assert spec[0] == max(sp for se, sp in rates if se >= 0.7)
  t = thresholds.threshold_for(y, s, specificity=0.8)
  assert t == min(c for c, (se, sp) in zip(cands, rates) if sp >= 0.8)
  t = thresholds.threshold_for(y, s, sensitivity=0.7)
  assert t == max(c for c, (se, sp) in zip(cands, rates) if se >= 0.7)
  j = [se + sp - 1 for se, sp in rates]
  assert thresholds.threshold_for(y, s) == max(c for c, v in zip(cands, j) if v == max(j))
  # Bootstrap weights of all ones are the data themselves.
  both = thresholds.operating_points(y, s, specificity=0.8, sensitivity=0.7,
                                     weights=np.ones((n, 3)))
  np.testing.assert_array_equal(both[0], np.repeat(sens, 3))
  out = thresholds.operating_intervals(y, np.stack([s, s]), n_boot=200,
                                       specificity=0.8, sensitivity=0.7)
  lo_, hi_ = out["sensitivity"][1:]
  assert out["sensitivity"][0] == sens[0] and lo_ <= sens[0] <= hi_


def test_brier_and_ece_by_hand():
  """Scores 0.1, 0.15 (labels 0, 1) fall in bin 1 (mean 0.125, rate 0.5) and 0.9, 0.95
  (labels 1, 1) in bin 9 (mean 0.925, rate 1): ECE = (2/4) 0.375 + (2/4) 0.075 = 0.225;
  Brier = (0.01 + 0.7225 + 0.01 + 0.0025) / 4 = 0.18625."""
  y, s = [0, 1, 1, 1], [0.1, 0.15, 0.9, 0.95]
  np.testing.assert_allclose(thresholds.ece(y, s), 0.225, rtol=1e-12)
  np.testing.assert_allclose(thresholds.brier(y, s), 0.18625, rtol=1e-12)
