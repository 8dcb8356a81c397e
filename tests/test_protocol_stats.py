"""coughjax.protocol.stats against a slow pairwise DeLong, a worked example and R's
multtest."""


import numpy as np
import pytest
from scipy import stats as sps
from sklearn import metrics as skm

from coughjax.protocol import stats

def slow_delong(y, scores):
  """AUCs [k] and DeLong covariance [k, k] straight from the definition (DeLong et
  al. 1988): psi(x, y) = 1 if x > y, 1/2 if x == y, else 0 over every (positive,
  negative) pair; V10 / V01 are its row / column means."""
  y = np.asarray(y, dtype=bool)
  v10, v01 = [], []
  for s in scores:
    pos, neg = s[y], s[~y]
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    v10.append(psi.mean(axis=1))
    v01.append(psi.mean(axis=0))
  v10, v01 = np.array(v10), np.array(v01)
  d10 = v10 - v10.mean(axis=1, keepdims=True)
  d01 = v01 - v01.mean(axis=1, keepdims=True)
  m, n = v10.shape[1], v01.shape[1]
  return v10.mean(axis=1), d10 @ d10.T / (m - 1) / m + d01 @ d01.T / (n - 1) / n


@pytest.mark.parametrize("seed", range(5))
def test_delong_matches_pairwise_definition_with_ties(seed):
  rng = np.random.default_rng(seed)
  n = int(rng.integers(10, 80))
  y = rng.random(n) < rng.uniform(0.2, 0.8)
  y[:2], y[2:4] = True, False
  # Integer scores on a few levels: many ties, within and across classes.
  a = rng.integers(0, 6, n) + y * rng.integers(0, 3, n)
  b = np.where(rng.random(n) < 0.5, a, rng.integers(0, 8, n)).astype(float)
  aucs, cov = slow_delong(y, [a, b])

  got_auc, got_var = stats.delong(y, a)
  np.testing.assert_allclose(got_auc, aucs[0], rtol=1e-12)
  np.testing.assert_allclose(got_auc, skm.roc_auc_score(y, a), rtol=1e-12)
  np.testing.assert_allclose(stats.auc(y, a), aucs[0], rtol=1e-12)
  np.testing.assert_allclose(got_var, cov[0, 0], rtol=1e-10)
  diff, var = stats.delong_paired(y.astype(int), a, b)
  np.testing.assert_allclose(diff, aucs[0] - aucs[1], rtol=1e-10, atol=1e-15)
  np.testing.assert_allclose(var, cov[0, 0] + cov[1, 1] - 2 * cov[0, 1], rtol=1e-9,
                             atol=1e-15)


def test_delong_worked_example():
  """By hand, positives scored 0.9 and 0.4, negatives 0.5 and 0.1: of the 4 pairs the
  positive wins 3, AUC = 3/4. DeLong's components: per positive, the share of
  negatives below it, V10 = (1, 1/2); per negative, the share of positives above it,
  V01 = (1/2, 1). Var = s10^2 / m + s01^2 / n with s^2 the sample variances
  (ddof 1): (1/8) / 2 + (1/8) / 2 = 1/8. Against the tied copy s_b = (0.9, 0.5, 0.5,
  0.1) (AUC 7/8: the tie counts 1/2; V10 = (1, 3/4), V01 = (3/4, 1)): cov = s(V10a,
  V10b) / 2 + s(V01a, V01b) / 2 = (1/16) / 2 + (1/16) / 2 = 1/16, so var(a - b) =
  1/8 + 1/32 - 2/16 = 1/32."""
  y = np.array([1, 1, 0, 0])
  a = np.array([0.9, 0.4, 0.5, 0.1])
  b = np.array([0.9, 0.5, 0.5, 0.1])
  assert stats.delong(y, a) == pytest.approx((3 / 4, 1 / 8), rel=1e-12)
  assert stats.delong(y, b) == pytest.approx((7 / 8, 1 / 32), rel=1e-12)
  assert stats.delong_paired(y, a, b) == pytest.approx((-1 / 8, 1 / 32), rel=1e-12)
  # The interval is the normal one on the AUC scale: 0.75 -/+ 1.95996 * sqrt(1/8).
  half = 1.959963984540054 * np.sqrt(1 / 8)
  np.testing.assert_allclose(stats.auc_interval(y, a), (0.75, 0.75 - half, 1.0))


def test_auc_interval_is_clipped_and_degenerate_cases():
  y = np.array([0, 0, 0, 1, 1, 1])
  assert stats.auc_interval(y, [0.1, 0.2, 0.3, 0.7, 0.8, 0.9]) == (1.0, 1.0, 1.0)
  a, low, high = stats.auc_interval(y, [0.1, 0.2, 0.8, 0.3, 0.7, 0.9])
  assert a == pytest.approx(7 / 9) and 0 <= low < a < high == 1.0
  assert stats.auc(y, np.zeros(6)) == 0.5
  assert stats.auc([1, 0], [0.2, 0.9]) == 0.0


def test_bad_input_is_an_error():
  with pytest.raises(ValueError, match="0/1"):
    stats.auc([0, 1, 2], [0.1, 0.2, 0.3])
  with pytest.raises(ValueError, match="NaN"):
    stats.auc([0, 1, 1], [0.1, np.nan, 0.3])
  with pytest.raises(ValueError, match="one value per item"):
    stats.auc([0, 1, 1], [0.1, 0.3])
  with pytest.raises(ValueError, match=r"s_b must be \[n\]"):
    stats.delong_paired([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4], [0.1, 0.2])
  with pytest.raises(ValueError, match="0 negative"):
    stats.auc([1, 1], [0.1, 0.3])
  with pytest.raises(ValueError, match="at least 2"):
    stats.delong([0, 1, 1], [0.1, 0.2, 0.3])
  with pytest.raises(ValueError, match="same length|equal"):
    stats.combine([0.1, 0.2], [0.01])
  with pytest.raises(ValueError, match=">= 0"):
    stats.combine([0.1], [-0.01])


def _binormal(rng, n_pos, n_neg, shift):
  """Scores whose true AUC is Phi(shift / sqrt(2))."""
  y = np.r_[np.ones(n_pos, bool), np.zeros(n_neg, bool)]
  return y, rng.normal(size=n_pos + n_neg) + shift * y


def test_delong_interval_covers_the_true_auc():
  """400 simulations with a known AUC of 0.75 (40 positives, 60 negatives): the 95 %
  interval covers it in ~95 % of them. (This Wald interval is slightly liberal at
  this size: 94.2 % in 4000 simulations; the binomial sd over 400 is 1.2 %.)"""
  rng = np.random.default_rng(0)
  shift = np.sqrt(2) * sps.norm.ppf(0.75)
  hits = [lo <= 0.75 <= hi for _, lo, hi in
          (stats.auc_interval(*_binormal(rng, 40, 60, shift)) for _ in range(400))]
  assert 0.90 <= np.mean(hits) <= 0.98, np.mean(hits)


def test_paired_delong_interval_covers_the_true_difference():
  """Two noisy readings of one latent score (positives shifted by 1.2): scorer a adds
  noise of sd 0.5, b of sd 1, so AUC_x = Phi(1.2 / sqrt(2 (1 + sd_x^2)))."""
  rng = np.random.default_rng(1)
  true = (sps.norm.cdf(1.2 / np.sqrt(2 * 1.25)) - sps.norm.cdf(1.2 / np.sqrt(2 * 2.0)))
  hits = []
  for _ in range(400):
    y, latent = _binormal(rng, 50, 70, 1.2)
    e = stats.combine(*map(lambda v: [v], stats.delong_paired(
        y, latent + 0.5 * rng.normal(size=len(y)), latent + rng.normal(size=len(y)))))
    hits.append(e.low <= true <= e.high)
  assert 0.90 <= np.mean(hits) <= 0.98, np.mean(hits)


def test_bootstrap_agrees_with_delong():
  """On 2000 recordings, the bootstrap standard error matches DeLong's within Monte
  Carlo error (500 replicates: ~3 % relative sd), for one AUC and for a paired
  difference; the point estimates are the same number."""
  rng = np.random.default_rng(2)
  y, latent = _binormal(rng, 800, 1200, 1.0)
  a = latent + 0.5 * rng.normal(size=len(y))
  b = latent + rng.normal(size=len(y))
  one = stats.paired_bootstrap(y, a, n_boot=500, seed=0, null=0.5)
  auc, var = stats.delong(y, a)
  assert one.mean == pytest.approx(auc, rel=1e-12)
  assert one.se == pytest.approx(np.sqrt(var), rel=0.12)
  pair = stats.paired_bootstrap(y, a, b, n_boot=500, seed=0)
  diff, var = stats.delong_paired(y, a, b)
  assert pair.mean == pytest.approx(diff, rel=1e-12)
  assert pair.se == pytest.approx(np.sqrt(var), rel=0.12)
  assert pair.z == pytest.approx(pair.mean / pair.se) and pair.p < 1e-3


def test_combine_over_repeats_is_conservative():
  """Three 'repeats' that share most of their scores: combine's standard error (mean
  variance) is not below the bootstrap's for the mean over repeats, which keeps the
  correlation; both means are the mean of the per-repeat differences."""
  rng = np.random.default_rng(3)
  y, latent = _binormal(rng, 300, 400, 1.0)
  a = latent + 0.6 * rng.normal(size=(3, len(y)))
  b = latent + 0.9 * rng.normal(size=(3, len(y)))
  per_repeat = [stats.delong_paired(y, a[r], b[r]) for r in range(3)]
  combined = stats.combine([d for d, _ in per_repeat], [v for _, v in per_repeat])
  boot = stats.paired_bootstrap(y, a, b, n_boot=400, seed=1)
  assert boot.mean == pytest.approx(combined.mean, rel=1e-12)
  assert combined.se >= 0.9 * boot.se
  assert combined.se == pytest.approx(np.sqrt(np.mean([v for _, v in per_repeat])))


def test_combine_arithmetic_and_degenerate_cases():
  e = stats.combine([0.70, 0.74], [0.001, 0.003], null=0.5, bounds=(0, 1))
  assert e.mean == pytest.approx(0.72) and e.se == pytest.approx(np.sqrt(0.002))
  assert e.z == pytest.approx(0.22 / np.sqrt(0.002))
  assert e.p == pytest.approx(2 * sps.norm.sf(e.z))
  assert e.low == pytest.approx(0.72 - 1.959963984540054 * np.sqrt(0.002))
  assert stats.combine([0.98], [0.001], null=0.5, bounds=(0, 1)).high == 1.0
  assert stats.combine([0.98], [0.001], null=0.5).high > 1.0
  certain = stats.combine([0.1, 0.1], [0.0, 0.0])
  assert (certain.z, certain.p, certain.low, certain.high) == (np.inf, 0.0, 0.1, 0.1)
  assert stats.combine([0.0], [0.0]).p == 1.0
  assert e.format() == f"{72.0:.1f} [{e.low * 100:.1f}, {e.high * 100:.1f}]"
  assert stats.Estimate(0.729, 0.02, 0.681, 0.777, 11.5, 0.0).format() == \
      "72.9 [68.1, 77.7]"
  assert stats.Estimate(-0.0325, 0.02, -0.08, 0.016, -1.6, 0.1).format(digits=2) == \
      "-3.25 [-8.00, 1.60]"


def test_weighted_auc_equals_auc_of_the_resample():
  """A bootstrap replicate's AUC, computed from counts, is the AUC of the explicitly
  resampled recordings (scores with many ties)."""
  rng = np.random.default_rng(5)
  y = rng.random(60) < 0.4
  s = rng.integers(0, 5, 60).astype(float)
  pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
  neg_order = np.argsort(s[neg], kind="stable")
  ranks = [np.searchsorted(s[neg][neg_order], s[pos], side=side)
           for side in ("left", "right")]
  draws = rng.integers(0, 60, size=(4, 60))
  w = np.stack([np.bincount(d, minlength=60) for d in draws], axis=1).astype(float)
  got = stats._weighted_auc(w[pos], w[neg], neg_order, *ranks)  # pylint: disable=protected-access
  np.testing.assert_allclose(got, [skm.roc_auc_score(y[d], s[d]) for d in draws],
                             rtol=1e-12)


def test_bootstrap_keeps_classes_and_is_seeded():
  """Resampling within label (and given strata) keeps both classes in every
  replicate, even with 2 positives in 200; the same seed gives the same result."""
  rng = np.random.default_rng(4)
  y = np.zeros(200, bool)
  y[:2] = True
  s = rng.normal(size=(2, 200)) + y
  strata = ["a"] * 100 + ["b"] * 100
  e = stats.paired_bootstrap(y, s[0], s[1], n_boot=50, seed=7, strata=strata)
  assert np.isfinite(e.se) and e.se > 0
  assert e == stats.paired_bootstrap(y, s[0], s[1], n_boot=50, seed=7, strata=strata)
  assert e != stats.paired_bootstrap(y, s[0], s[1], n_boot=50, seed=8, strata=strata)
  with pytest.raises(ValueError, match="one shape"):
    stats.paired_bootstrap(y, s, s[0], n_boot=50, seed=0)
  with pytest.raises(ValueError, match="n_boot"):
    stats.paired_bootstrap(y, s, s, n_boot=1, seed=0)


def test_holm_against_r_multtest():
  """R multtest's mt.rawp2adjp(p, "Holm") values, as recorded in statsmodels'
  stats/tests/test_multi.py (pval0 / res_multtest1 and res_multtest3); the input is
  given unsorted to check the order is kept."""
  p = np.array([0.838541367553, 0.642193923795, 0.680845947633, 0.967833824309,
                0.71626938238, 0.177096952723, 5.23656777208e-05, 0.0202732688798,
                0.00028140506198, 0.0149877310796])
  expected = np.ones(10)
  expected[[6, 8, 9, 7]] = [5.23656777208e-04, 2.5326455578199999e-03,
                            1.1990184863680001e-01, 1.4191288215860001e-01]
  np.testing.assert_allclose(stats.holm(p), expected, rtol=1e-12)
  # Step-down monotonicity: 0.06 * 4 = 0.24 is raised to 0.05 * 5 = 0.25.
  p3 = [0.001, 0.002, 0.003, 0.004, 0.005, 0.05, 0.06, 0.07, 0.08, 0.09]
  np.testing.assert_allclose(stats.holm(p3[::-1])[::-1],
                             [0.01, 0.018, 0.024, 0.028, 0.03] + [0.25] * 5, rtol=1e-12)
  # A hand example: 0.005 * 4, 0.01 * 3, max(0.03 * 2, ...), max(0.04 * 1, 0.06).
  np.testing.assert_allclose(stats.holm([0.01, 0.04, 0.03, 0.005]),
                             [0.03, 0.06, 0.06, 0.02])
  assert stats.holm([]).shape == (0,)
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    stats.holm([0.1, np.nan])


def test_verdict():
  up = stats.Estimate(0.05, 0.02, 0.01, 0.09, 2.5, 0.012)
  down = stats.Estimate(-0.05, 0.02, -0.09, -0.01, -2.5, 0.012)
  assert stats.verdict(up, 0.03) == "holds"
  assert stats.verdict(down, 0.03) == "does not hold"
  assert stats.verdict(up, 0.05) == "cannot tell"
  assert stats.verdict(up, 0.2) == "cannot tell"
  assert stats.verdict(up, 0.03, alpha=0.01) == "cannot tell"
  assert stats.verdict(stats.Estimate(0, 0, 0, 0, 0.0, 1.0), 0.0) == "cannot tell"


def slow_corrected_t(diffs, ratio):
  """Nadeau & Bengio's corrected resampled t, term by term."""
  d = [float(x) for x in np.ravel(diffs)]
  j = len(d)
  mean = sum(d) / j
  var = sum((x - mean) ** 2 for x in d) / (j - 1)
  t = mean / np.sqrt((1 / j + ratio) * var)
  return mean, t, 2 * sps.t.sf(abs(t), j - 1)


def test_corrected_resampled_t_worked_example():
  """By hand, one repeat of 5 folds with differences (0.5, 0.6, 0.9, 0.4, 0.6) against
  0.5 (the example of CBIG's `CBIG_corrected_resampled_ttest_kfoldCV`): mean 0.6,
  squared deviations 0.01 + 0 + 0.09 + 0.04 + 0 = 0.14, s^2 = 0.14 / 4 = 0.035; with
  n_test / n_train = (1/5) / (4/5) = 1/4 the corrected variance is
  (1/5 + 1/4) 0.035 = 0.01575, t = 0.1 / sqrt(0.01575) = 0.79682 on 4 df."""
  est = stats.corrected_resampled_t([[0.5, 0.6, 0.9, 0.4, 0.6]], 0.25, null=0.5)
  assert est.df == 4 and not est.degenerate
  np.testing.assert_allclose(est.mean, 0.6, rtol=1e-12)
  np.testing.assert_allclose(est.se, np.sqrt(0.01575), rtol=1e-12)
  np.testing.assert_allclose(est.z, 0.1 / np.sqrt(0.01575), rtol=1e-12)
  np.testing.assert_allclose(est.z, 0.796819, rtol=1e-6)
  np.testing.assert_allclose(est.p, 2 * sps.t.sf(0.1 / np.sqrt(0.01575), 4), rtol=1e-12)
  half = sps.t.ppf(0.975, 4) * np.sqrt(0.01575)
  np.testing.assert_allclose([est.low, est.high], [0.6 - half, 0.6 + half], rtol=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_fold_differences_and_corrected_t_match_a_slow_version(seed):
  rng = np.random.default_rng(seed)
  repeats, k, n = 3, 3, 90
  y = rng.random(n) < 0.4
  y[:15], y[15:30] = True, False
  folds = np.stack([rng.permutation(np.arange(n) % k) for _ in range(repeats)])
  a = rng.normal(size=(repeats, n)) + y
  b = rng.normal(size=(repeats, n)) + 0.5 * y
  # A fold with too few of a class is refused, naming it.
  sparse = folds.copy()
  sparse[0] = np.where(y, 0, np.arange(n) % k)   # fold 1: negatives only
  with pytest.raises(ValueError, match="repeat 0 fold 1: .* 0 positive"):
    stats.fold_differences(y, a, b, sparse)
  for r in range(repeats):
    for f in range(k):
      if min(y[folds[r] == f].sum(), (~y[folds[r] == f]).sum()) < 5:
        pytest.skip("a fold too small for this seed")
  diffs, ratio = stats.fold_differences(y.astype(int), a, b, folds)
  slow = np.array([[skm.roc_auc_score(y[folds[r] == f], a[r, folds[r] == f])
                    - skm.roc_auc_score(y[folds[r] == f], b[r, folds[r] == f])
                    for f in range(k)] for r in range(repeats)])
  np.testing.assert_allclose(diffs, slow, rtol=1e-12, atol=1e-15)
  np.testing.assert_allclose(ratio, np.mean([(folds[r] == f).sum() / (n - (folds[r] == f).sum())
                                              for r in range(repeats) for f in range(k)]))
  mean, t, p = slow_corrected_t(slow, ratio)
  est = stats.corrected_resampled_t(diffs, ratio)
  np.testing.assert_allclose([est.mean, est.z, est.p], [mean, t, p], rtol=1e-10)
  assert est.df == repeats * k - 1


def test_corrected_t_guards_a_zero_spread():
  """Equal fold differences have no spread: a degenerate estimate with p = 1 and no
  verdict, never p = 0 and "holds"."""
  est = stats.corrected_resampled_t(np.full((2, 3), 0.1), 0.5)
  assert est.degenerate and est.p == 1.0 and est.se == 0
  assert stats.verdict(est, 0.0) == "cannot tell"
  with pytest.raises(ValueError, match="need >= 2 finite fold differences"):
    stats.corrected_resampled_t([0.1], 0.5)


def test_minimum_detectable_difference():
  """A true difference of that size is detected (two-sided, at alpha) with the given
  power: with df = inf, P(|N(mdd/se, 1)| > z_{1-alpha/2}) = 0.8 up to the far tail."""
  se, alpha = 0.03, 0.05 / 3
  mdd = stats.minimum_detectable(se, float("inf"), alpha=alpha)
  crit = sps.norm.ppf(1 - alpha / 2)
  power = sps.norm.sf(crit - mdd / se) + sps.norm.cdf(-crit - mdd / se)
  np.testing.assert_allclose(power, 0.8, atol=1e-4)
  assert stats.minimum_detectable(se, 4, alpha=alpha) > mdd   # t is wider


def test_corrected_detectable_keeps_the_test_train_term_at_any_repeats():
  """Made over its own J it is `minimum_detectable` of its own se; with more repeats
  it shrinks only towards (z_{1-alpha/2} + z_power) sqrt(n_test/n_train) s."""
  d = np.random.default_rng(1).normal(0.01, 0.04, (5, 3))
  est = stats.corrected_resampled_t(d, 0.5)
  alpha = 0.01
  own = stats.corrected_detectable(est, 0.5, 15, alpha=alpha)
  np.testing.assert_allclose(own, stats.minimum_detectable(est.se, 14, alpha=alpha))
  limit = stats.corrected_detectable(est, 0.5, np.inf, alpha=alpha)
  s = np.std(d, ddof=1)
  np.testing.assert_allclose(
      limit, (sps.norm.ppf(1 - alpha / 2) + sps.norm.ppf(0.8)) * np.sqrt(0.5) * s)
  assert own > stats.corrected_detectable(est, 0.5, 30, alpha=alpha) > limit
