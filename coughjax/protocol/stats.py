"""ROC-AUC statistics for the evaluation protocol: DeLong variances and intervals,
paired comparisons, combination over repeats, a paired bootstrap, the corrected
resampled t-test, Holm correction and verdicts. Metrics at a threshold, operating
points and calibration are `coughjax.protocol.thresholds`'.

Labels are 0/1 (or bool), 1 = positive; a higher score means "more positive". AUC
counts tied (positive, negative) pairs as 1/2 (the Mann-Whitney statistic).

DeLong et al. (1988), "Comparing the areas under two or more correlated receiver
operating characteristic curves: a nonparametric approach", Biometrics 44(3),
837-845, computed with the O(n log n) midrank algorithm of Sun & Xu (2014), "Fast
implementation of DeLong's algorithm for comparing the areas under correlated
receiver operating characteristic curves", IEEE Signal Processing Letters 21(11),
1389-1393. This is the estimator of R's pROC (`var`, `cov`, `ci.auc`, `roc.test`).
"""

from __future__ import annotations

import dataclasses
from typing import Hashable, Optional, Sequence

import numpy as np
from scipy import stats as sps


@dataclasses.dataclass(frozen=True)
class Estimate:
  """A point estimate with its standard error, interval and test against a null.

  z = (mean - null) / se and p is its two-sided p-value: normal where df is inf,
  Student's t with df degrees of freedom otherwise (`corrected_resampled_t`);
  low/high is the interval mean -/+ q_{(1+level)/2} se (possibly clipped, see
  `combine`). degenerate: se is 0 for want of any spread (e.g. every fold
  difference equal), so no test is possible: p is 1 and `verdict` says "cannot tell".
  """
  mean: float
  se: float
  low: float
  high: float
  z: float
  p: float
  df: float = float("inf")
  degenerate: bool = False

  def format(self, scale: float = 100, digits: int = 1) -> str:
    """E.g. "72.9 [68.1, 77.7]" (mean [low, high], times `scale`)."""
    return (f"{self.mean * scale:.{digits}f} [{self.low * scale:.{digits}f}, "
            f"{self.high * scale:.{digits}f}]")


def check_labels(y) -> np.ndarray:
  """y as a bool array [n]; an error unless it is 1-D and holds only 0/1."""
  y = np.asarray(y)
  if y.ndim != 1:
    raise ValueError(f"labels must be 1-D [n], got shape {y.shape}")
  if y.dtype != bool:
    if not np.issubdtype(y.dtype, np.number) or not np.isin(y, (0, 1)).all():
      bad = y[~np.isin(y, (0, 1))][:3] if np.issubdtype(y.dtype, np.number) else y[:3]
      raise ValueError(f"labels must be 0/1 (drop unlabelled items first), got e.g. "
                       f"{bad.tolist()}")
    y = y.astype(bool)
  return y


def check_scores(s, n: int, what: str = "scores", *, rows: bool = False) -> np.ndarray:
  """s as float64 [n], or with rows [R, n] (from [n] or [R, n]); an error unless its
  shape fits and every value is finite."""
  s = np.asarray(s, dtype=np.float64)
  if not (s.shape == (n,) or (rows and s.ndim == 2 and s.shape[1] == n)):
    raise ValueError(f"{what} must be [n]{' or [R, n]' if rows else ''} with one value "
                     f"per item (n = {n}), got shape {s.shape}")
  if not np.isfinite(s).all():
    raise ValueError(f"{what} hold {np.sum(~np.isfinite(s))} NaN/inf values")
  return np.atleast_2d(s) if rows else s


def check_classes(y: np.ndarray, at_least: int) -> None:
  pos, neg = int(y.sum()), int((~y).sum())
  if pos < at_least or neg < at_least:
    raise ValueError(f"needs at least {at_least} positive and {at_least} negative "
                     f"items, got {pos} positive and {neg} negative")


def _placements(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """DeLong's structural components via midranks (Sun & Xu 2014).

  Args:
    y: [n] bool labels.
    s: [k, n] scores of k scorers.

  Returns:
    v10: [k, m] for each positive, the fraction of negatives it outscores (ties 1/2);
    v01: [k, n0] for each negative, the fraction of positives that outscore it.
    The AUC is v10.mean(-1) = v01.mean(-1).
  """
  pos, neg = s[:, y], s[:, ~y]
  m, n0 = pos.shape[1], neg.shape[1]
  both = sps.rankdata(np.concatenate([pos, neg], axis=1), axis=1)
  v10 = (both[:, :m] - sps.rankdata(pos, axis=1)) / n0
  v01 = 1.0 - (both[:, m:] - sps.rankdata(neg, axis=1)) / m
  return v10, v01


def _delong_cov(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """AUCs [k] and their DeLong covariance matrix [k, k] for scores s [k, n]."""
  check_classes(y, 2)
  v10, v01 = _placements(y, s)
  cov = (np.atleast_2d(np.cov(v10)) / v10.shape[1]
         + np.atleast_2d(np.cov(v01)) / v01.shape[1])
  return v10.mean(axis=1), cov


def auc(y, s) -> float:
  """ROC-AUC of scores s [n] for labels y [n] (ties count 1/2)."""
  y = check_labels(y)
  s = check_scores(s, len(y))
  check_classes(y, 1)
  return float(_placements(y, s[None])[0].mean())


def delong(y, s) -> tuple[float, float]:
  """(AUC, DeLong variance of the AUC) for scores s [n]; needs >= 2 of each class."""
  y = check_labels(y)
  aucs, cov = _delong_cov(y, check_scores(s, len(y))[None])
  return float(aucs[0]), float(cov[0, 0])


def delong_paired(y, s_a, s_b) -> tuple[float, float]:
  """(AUC_a - AUC_b, its DeLong variance) for two scorings of the same items:
  var_a + var_b - 2 cov_ab."""
  y = check_labels(y)
  aucs, cov = _delong_cov(y, np.stack([check_scores(s_a, len(y), "s_a"),
                                       check_scores(s_b, len(y), "s_b")]))
  return float(aucs[0] - aucs[1]), float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])


def _normal(mean: float, var: float, null: float, level: float,
            bounds: Optional[tuple[float, float]] = None) -> Estimate:
  if not 0 < level < 1:
    raise ValueError(f"level must be in (0, 1), got {level}")
  if not var >= 0:
    raise ValueError(f"variance must be >= 0, got {var}")
  se = float(np.sqrt(var))
  half = float(sps.norm.ppf((1 + level) / 2)) * se
  low, high = mean - half, mean + half
  if bounds is not None:
    low, high = float(np.clip(low, *bounds)), float(np.clip(high, *bounds))
  diff = mean - null
  if se > 0:
    z = diff / se
  else:  # a degenerate estimate: certain unless it sits exactly on the null
    z = 0.0 if diff == 0 else float(np.copysign(np.inf, diff))
  return Estimate(mean=float(mean), se=se, low=float(low), high=float(high), z=float(z),
                  p=float(2 * sps.norm.sf(abs(z))))


def auc_interval(y, s, level: float = 0.95) -> tuple[float, float, float]:
  """(AUC, low, high): the DeLong normal interval on the AUC scale itself (not the
  logit scale), AUC -/+ z se, clipped to [0, 1] — as pROC's `ci.auc`."""
  a, var = delong(y, s)
  e = _normal(a, var, 0.5, level, bounds=(0.0, 1.0))
  return e.mean, e.low, e.high


def combine(estimates, variances, *, null: float = 0.0, level: float = 0.95,
            bounds: Optional[tuple[float, float]] = None) -> Estimate:
  """Combines per-repeat estimates of one quantity (e.g. an AUC or an AUC difference
  from each repeat of a repeated k-fold) into one Estimate.

  mean = the mean of the R estimates; variance = the mean of their R (DeLong)
  variances. The repeats score the same recordings, so their estimates are strongly
  and positively correlated and the variance of their mean is unknown; but by
  Cauchy-Schwarz, var(mean of R) = (1/R^2) sum_ij cov_ij <= (mean_r sd_r)^2
  <= mean_r var_r, so the mean variance is never too small *conditional on the fitted
  models*: exact when the repeats agree perfectly, too large by up to a factor R when
  they are independent. DeLong's variance holds every fold model fixed, so it leaves
  out what changes when the models are trained again (partition, seeds, fold-model
  variance): it is no bound on the variance of the procedure, which
  `corrected_resampled_t` estimates. `paired_bootstrap` is a resampling cross-check
  of this conditional variance.

  Args:
    estimates: [R] per-repeat estimates.
    variances: [R] their variances (e.g. from `delong` or `delong_paired`).
    null: the value under H0 (0 for differences; pass 0.5 for a single AUC).
    level: interval coverage.
    bounds: optional (low, high) to clip the interval to, e.g. (0, 1) for an AUC.

  Returns:
    Estimate(mean, se, low, high, z = (mean - null) / se, two-sided normal p).
  """
  est = np.asarray(estimates, dtype=np.float64)
  var = np.asarray(variances, dtype=np.float64)
  if est.ndim != 1 or est.shape != var.shape or not len(est):
    raise ValueError(f"estimates and variances must be 1-D of one equal, non-zero "
                     f"length, got shapes {est.shape} and {var.shape}")
  if not (np.isfinite(est).all() and np.isfinite(var).all()) or (var < 0).any():
    raise ValueError(f"estimates must be finite and variances finite and >= 0, got "
                     f"{est.tolist()} and {var.tolist()}")
  return _normal(float(est.mean()), float(var.mean()), null, level, bounds)


def _weighted_auc(wp: np.ndarray, wn: np.ndarray, neg_order: np.ndarray,
                  below: np.ndarray, at_or_below: np.ndarray) -> np.ndarray:
  """AUCs [B] under item multiplicities (bootstrap counts) wp [m, B] of the positives
  and wn [n0, B] of the negatives, for a scorer whose negatives sorted by score are
  `neg_order` and whose i-th positive outscores the first below[i] of them and ties
  the next at_or_below[i] - below[i]."""
  cum = np.zeros((len(neg_order) + 1, wn.shape[1]))
  np.cumsum(wn[neg_order], axis=0, out=cum[1:])     # cum[j]: weight of the j lowest
  beaten = cum[below] + cum[at_or_below]             # twice (below + ties / 2): [m, B]
  return np.einsum("mb,mb->b", wp, beaten) / (2 * wp.sum(axis=0) * cum[-1])


def paired_bootstrap(y, scores_a, scores_b=None, *, n_boot: int, seed: int,
                     strata: Optional[Sequence[Hashable]] = None, null: float = 0.0,
                     level: float = 0.95) -> Estimate:
  """Bootstrap over recordings of mean_r (AUC_a[r] - AUC_b[r]), r over repeats.

  Each replicate draws recordings with replacement within each (stratum, label)
  cell (strata default to none, i.e. stratified by label only), and the same draw is
  used for every repeat and both scorers, so the correlation between repeats and
  between the scorers is kept. Without scores_b the statistic is mean_r AUC_a[r]
  (pass null=0.5).

  Args:
    y: [n] 0/1 labels.
    scores_a: [R, n] (or [n]) scores of row a in each repeat.
    scores_b: [R, n] (or [n]) scores of row b, or None.
    n_boot: number of bootstrap replicates (>= 2).
    seed: seeds np.random.default_rng.
    strata: optional [n] stratum per recording (e.g. source).
    null: the value under H0.
    level: interval coverage.

  Returns:
    Estimate: mean = the statistic on the original data (equal to `combine`'s mean of
    per-repeat estimates), se = the replicates' standard deviation, and the normal
    interval, z and p from them (as for DeLong, so the two are comparable).
  """
  y = check_labels(y)
  n = len(y)
  a = check_scores(scores_a, n, "scores_a", rows=True)
  signs, runs = [1.0], [a]
  if scores_b is not None:
    b = check_scores(scores_b, n, "scores_b", rows=True)
    if b.shape != a.shape:
      raise ValueError(f"scores_a and scores_b must have one shape, got {a.shape} and "
                       f"{b.shape}")
    signs.append(-1.0)
    runs.append(b)
  if not isinstance(n_boot, (int, np.integer)) or n_boot < 2:
    raise ValueError(f"n_boot must be an integer >= 2, got {n_boot!r}")
  check_classes(y, 1)
  if strata is not None and len(strata) != n:
    raise ValueError(f"strata must have one entry per item ({n}), got {len(strata)}")
  by_cell = {}
  for i, key in enumerate(zip(strata if strata is not None else [None] * n, y.tolist())):
    by_cell.setdefault(key, []).append(i)
  cells = [np.asarray(c) for c in by_cell.values()]

  # Per (scorer, repeat): where each positive falls among the sorted negatives,
  # reused by every replicate.
  pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
  placements = []
  for sign, s in zip(signs, runs):
    for row in s:
      neg_order = np.argsort(row[neg], kind="stable")
      neg_sorted = row[neg][neg_order]
      placements.append((sign / len(s), neg_order,
                         np.searchsorted(neg_sorted, row[pos], side="left"),
                         np.searchsorted(neg_sorted, row[pos], side="right")))

  def statistic(w: np.ndarray) -> np.ndarray:   # w: [n, B] counts -> [B]
    wp, wn = w[pos], w[neg]
    return sum(c * _weighted_auc(wp, wn, *p) for c, *p in placements)

  observed = float(statistic(np.ones((n, 1)))[0])
  rng = np.random.default_rng(seed)
  chunk = max(1, min(n_boot, 2**22 // n))   # replicates per chunk: bounds memory
  reps = []
  for start in range(0, n_boot, chunk):
    size = min(chunk, n_boot - start)
    w = np.empty((n, size))
    for c in cells:   # len(c) draws from each cell, as counts per item and replicate
      k = len(c)
      drawn = rng.integers(0, k, size=(size, k)) + k * np.arange(size)[:, None]
      w[c] = np.bincount(drawn.ravel(), minlength=size * k).reshape(size, k).T
    reps.append(statistic(w))
  reps = np.concatenate(reps)
  return _normal(observed, float(np.var(reps, ddof=1)), null, level)


def fold_differences(y, s_a, s_b, folds, *, min_class: int = 5
                     ) -> tuple[np.ndarray, float]:
  """Per (repeat, fold): AUC_a - AUC_b on that fold's test recordings.

  Args:
    y: [n] 0/1 labels.
    s_a, s_b: [R, n] out-of-fold scores of two rows on the same recordings/repeats.
    folds: [R, n] int, the fold whose test part scored each recording in each repeat.
    min_class: the fewest positives and negatives a fold's test part may hold (a
      fold AUC on fewer is too coarse to average: an error naming the fold).

  Returns:
    (differences [R, k], test/training ratio): the ratio is the mean over folds of
    n_test / (n - n_test), the recordings the fold's model was fitted and selected on
    being every recording outside its test part (training and validation parts).
  """
  y = check_labels(y)
  n = len(y)
  a = check_scores(s_a, n, "s_a", rows=True)
  b = check_scores(s_b, n, "s_b", rows=True)
  folds = np.atleast_2d(np.asarray(folds))
  if not (a.shape == b.shape == folds.shape):
    raise ValueError(f"s_a, s_b and folds must have one shape [R, n], got {a.shape}, "
                     f"{b.shape} and {folds.shape}")
  k = len(np.unique(folds))
  diffs, ratios = np.empty((len(a), k)), []
  for r in range(len(a)):
    ids = np.unique(folds[r])
    if len(ids) != k:
      raise ValueError(f"repeat {r} has {len(ids)} folds, repeat 0 {k}")
    for j, f in enumerate(ids):
      test = folds[r] == f
      pos, neg = int(y[test].sum()), int((~y[test]).sum())
      if min(pos, neg) < min_class:
        raise ValueError(f"repeat {r} fold {f}: its test part holds {pos} positive and "
                         f"{neg} negative recordings, fewer than {min_class} of a class; "
                         "a per-fold AUC on so few is not usable (use fewer folds)")
      diffs[r, j] = (_placements(y[test], a[r:r + 1, test])[0].mean()
                     - _placements(y[test], b[r:r + 1, test])[0].mean())
      ratios.append(test.sum() / (n - test.sum()))
  return diffs, float(np.mean(ratios))


def corrected_resampled_t(differences, test_train_ratio: float, *, null: float = 0.0,
                          level: float = 0.95,
                          bounds: Optional[tuple[float, float]] = None) -> Estimate:
  """The corrected resampled t-test over the J = R x k (repeat, fold) differences of
  a repeated k-fold (Nadeau & Bengio 2003, "Inference for the generalization error",
  Machine Learning 52(3), 239-281; in the repeated k-fold form of Bouckaert & Frank
  2004, "Evaluating the replicability of significance tests for comparing learning
  algorithms", PAKDD, LNCS 3056, 3-12).

  Each difference comes from models trained again on another training set, so their
  spread holds the training, seed and partition variance that DeLong's leaves out;
  their training sets overlap, so the naive variance of the mean, s^2 / J, is too
  small; Nadeau & Bengio's correction replaces 1/J by 1/J + n_test/n_train:

    t = (mean(d) - null) / sqrt((1/J + n_test/n_train) s^2),  s^2 = var(d, ddof=1),

  with Student's t on J - 1 degrees of freedom, and the interval
  mean -/+ t_{J-1, (1+level)/2} se.

  Degenerate case: if every difference is equal, s^2 = 0 and t would be infinite
  (p = 0) on no evidence of spread at all (e.g. two rows ranking every fold alike).
  Then the estimate is marked `degenerate`, se = 0, the interval is the point and
  p = 1, so no verdict rests on it.

  Args:
    differences: [R, k] (or [J]) per-fold differences, e.g. from `fold_differences`.
    test_train_ratio: n_test / n_train of a fold.
    null: the difference under H0.
    level: interval coverage.
    bounds: optional (low, high) to clip the interval to, e.g. (-1, 1) for an AUC
      difference.
  """
  d = np.asarray(differences, dtype=np.float64).ravel()
  if len(d) < 2 or not np.isfinite(d).all():
    raise ValueError(f"need >= 2 finite fold differences, got {d.tolist()}")
  if not test_train_ratio > 0:
    raise ValueError(f"test_train_ratio must be > 0, got {test_train_ratio}")
  if not 0 < level < 1:
    raise ValueError(f"level must be in (0, 1), got {level}")
  j, mean = len(d), float(d.mean())
  if np.ptp(d) == 0:  # (np.var of equal values may round to a tiny non-zero)
    return Estimate(mean=mean, se=0.0, low=mean, high=mean, z=0.0, p=1.0,
                    df=float(j - 1), degenerate=True)
  se = float(np.sqrt((1 / j + test_train_ratio) * np.var(d, ddof=1)))
  t = (mean - null) / se
  half = float(sps.t.ppf((1 + level) / 2, j - 1)) * se
  low, high = mean - half, mean + half
  if bounds is not None:
    low, high = float(np.clip(low, *bounds)), float(np.clip(high, *bounds))
  return Estimate(mean=mean, se=se, low=low, high=high, z=float(t),
                  p=float(2 * sps.t.sf(abs(t), j - 1)), df=float(j - 1))


def minimum_detectable(se: float, df: float, *, alpha: float, power: float = 0.8
                       ) -> float:
  """The smallest true difference a two-sided test at `alpha` detects with
  probability `power`, given the standard error `se` of the estimate:
  (q_{1-alpha/2} + q_{power}) se, with q Student's t quantiles on `df` degrees of
  freedom (normal quantiles for df = inf)."""
  if not (0 < alpha < 1 and 0 < power < 1):
    raise ValueError(f"alpha and power must be in (0, 1), got {alpha} and {power}")
  q = sps.norm.ppf if np.isinf(df) else (lambda x: sps.t.ppf(x, df))
  return float((q(1 - alpha / 2) + q(power)) * se)


def corrected_detectable(estimate: Estimate, test_train_ratio: float, j: float, *,
                         alpha: float, power: float = 0.8) -> float:
  """`minimum_detectable` of a `corrected_resampled_t` estimate had it been made over
  `j` fold differences (np.inf: unlimited repeats) at the spread s its own showed.
  Its variance (1/J + n_test/n_train) s^2 keeps the second term however many
  repeats run, so at J = inf the difference is still (z_{1-alpha/2} + z_power)
  sqrt(n_test/n_train) s: repeats buy little power."""
  own = estimate.df + 1
  s2 = estimate.se ** 2 / (1 / own + test_train_ratio)
  se = float(np.sqrt((1 / j + test_train_ratio) * s2))
  return minimum_detectable(se, j - 1, alpha=alpha, power=power)


def holm(p_values) -> np.ndarray:
  """Holm-Bonferroni step-down adjusted p-values, in the input order.

  With the m p-values sorted ascending, p_(i) is adjusted to
  max_{j <= i} min(1, (m - j + 1) p_(j)) (1-based), so adjusted values never decrease
  along the sorted order and are capped at 1. Rejecting where adjusted < alpha controls
  the family-wise error rate at alpha under any dependence (Holm 1979).
  """
  p = np.asarray(p_values, dtype=np.float64)
  if p.ndim != 1:
    raise ValueError(f"p_values must be 1-D, got shape {p.shape}")
  if not ((p >= 0) & (p <= 1)).all():
    raise ValueError(f"p-values must be in [0, 1] (no NaN), got {p.tolist()}")
  m = len(p)
  order = np.argsort(p, kind="stable")
  adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
  out = np.empty(m)
  out[order] = adjusted
  return out


def verdict(estimate: Estimate, p_adjusted: float, *, alpha: float = 0.05) -> str:
  """"holds" when p_adjusted < alpha and the effect is positive (the finding claims
  mean > null, i.e. z > 0), "does not hold" when p_adjusted < alpha and it is
  negative, else "cannot tell" (always for a degenerate estimate)."""
  if not 0 <= p_adjusted <= 1:
    raise ValueError(f"p_adjusted must be in [0, 1], got {p_adjusted}")
  if estimate.degenerate:
    return "cannot tell"
  if p_adjusted < alpha and estimate.z > 0:
    return "holds"
  if p_adjusted < alpha and estimate.z < 0:
    return "does not hold"
  return "cannot tell"
