"""Beyond the AUC: metrics at a threshold, operating points and calibration.

What a screening test is judged by once a threshold is set: precision, recall, F1 and
accuracy at a threshold; sensitivity at a fixed specificity (and the other way
round) read off the ROC curve, with bootstrap intervals over recordings; thresholds
chosen on validation scores; and the calibration of the scores themselves (Brier
score, reliability bins, ECE). Inputs are checked as `coughjax.protocol.stats`
checks them (labels 0/1, 1 = positive; a higher score means "more positive").
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from coughjax.protocol import stats


@dataclasses.dataclass(frozen=True)
class ThresholdMetrics:
  """Precision, recall, accuracy and F1 (fractions) at a threshold.

  degenerate: the scorer predicts a single class on these items, so precision,
  recall and F1 describe that constant answer rather than the scorer and are not
  comparable with other rows' (precision of no positive predictions is 0).
  """
  precision: float
  recall: float
  accuracy: float
  f1: float
  degenerate: bool


def threshold_metrics(y, s, threshold: float = 0.5) -> ThresholdMetrics:
  """Metrics of predicting positive where s >= threshold."""
  y = stats.check_labels(y)
  s = stats.check_scores(s, len(y))
  if not len(y):
    raise ValueError("no items to score")
  pred = s >= threshold
  tp = int(np.sum(pred & y))
  precision = tp / pred.sum() if pred.any() else 0.0
  recall = tp / y.sum() if y.any() else 0.0
  f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
  return ThresholdMetrics(precision=float(precision), recall=float(recall),
                          accuracy=float(np.mean(pred == y)), f1=float(f1),
                          degenerate=bool(pred.all() or not pred.any()))


def _roc(y: np.ndarray, s: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(tpr, fpr), each [thresholds + 1, B], of scores s [n] under item weights w [n, B]
  (bootstrap counts; ones for the data as they are), at every distinct score taken as
  the threshold ("positive where score >= threshold"), highest first, after (0, 0)."""
  order = np.argsort(-s, kind="stable")
  wo, yo = w[order], y[order]
  cum_p = np.cumsum(wo * yo[:, None], axis=0)
  cum_n = np.cumsum(wo * ~yo[:, None], axis=0)
  last = np.r_[np.flatnonzero(np.diff(s[order]) != 0), len(s) - 1]   # end of each tie
  zero = np.zeros((1, w.shape[1]))
  return (np.concatenate([zero, cum_p[last] / cum_p[-1]]),
          np.concatenate([zero, cum_n[last] / cum_n[-1]]))


def operating_points(y, s, *, specificity: float = 0.95, sensitivity: float = 0.9,
                     weights: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
  """(sensitivity at `specificity`, specificity at `sensitivity`), read off the ROC
  curve of scores s [n]: the best sensitivity of any threshold whose specificity is
  at least `specificity`, and the other way round. With weights [n, B] (bootstrap
  counts) each is [B]; without, shape [1]."""
  y = stats.check_labels(y)
  s = stats.check_scores(s, len(y))
  stats.check_classes(y, 1)
  w = np.ones((len(y), 1)) if weights is None else np.asarray(weights, np.float64)
  tpr, fpr = _roc(y, s, w)
  sens = np.where(1 - fpr >= specificity - 1e-12, tpr, 0).max(axis=0)
  spec = np.where(tpr >= sensitivity - 1e-12, 1 - fpr, 0).max(axis=0)
  return sens, spec


def operating_intervals(y, scores, *, n_boot: int = 1000, seed: int = 0,
                        level: float = 0.95, specificity: float = 0.95,
                        sensitivity: float = 0.9) -> dict[str, tuple[float, float, float]]:
  """Sensitivity at `specificity` and specificity at `sensitivity` of scores
  [R, n] (the mean over repeats), with percentile bootstrap intervals over
  recordings (drawn within each label, the same draw for every repeat; the fitted
  models are held fixed). Returns {"sensitivity": (value, low, high),
  "specificity": (...)}."""
  y = stats.check_labels(y)
  runs = stats.check_scores(scores, len(y), rows=True)
  stats.check_classes(y, 1)
  rng = np.random.default_rng(seed)
  w = np.zeros((len(y), n_boot))
  for cell in (np.flatnonzero(y), np.flatnonzero(~y)):
    drawn = rng.integers(0, len(cell), size=(n_boot, len(cell)))
    np.add.at(w, (cell[drawn], np.arange(n_boot)[:, None]), 1)
  kw = dict(specificity=specificity, sensitivity=sensitivity)
  point = np.mean([operating_points(y, r, **kw) for r in runs], axis=0)[:, 0]
  boot = np.mean([operating_points(y, r, weights=w, **kw) for r in runs], axis=0)
  lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2], axis=1)
  return {k: (float(point[i]), float(lo[i]), float(hi[i]))
          for i, k in enumerate(("sensitivity", "specificity"))}


def threshold_for(y, s, *, specificity: Optional[float] = None,
                  sensitivity: Optional[float] = None) -> float:
  """The threshold ("positive where score >= threshold") chosen on scores s [n] (a
  validation part): the lowest whose specificity is at least `specificity`, or the
  highest whose sensitivity is at least `sensitivity`, or, with neither, the one
  maximising Youden's J = sensitivity + specificity - 1 (the highest among ties)."""
  y = stats.check_labels(y)
  s = stats.check_scores(s, len(y))
  stats.check_classes(y, 1)
  tpr, fpr = (a[1:, 0] for a in _roc(y, s, np.ones((len(y), 1))))
  thresholds = np.unique(s)[::-1]          # highest first, as _roc's rows
  if specificity is not None:
    ok = np.flatnonzero(1 - fpr >= specificity - 1e-12)
    return float(thresholds[ok[-1]]) if len(ok) else float(np.inf)
  if sensitivity is not None:
    return float(thresholds[np.flatnonzero(tpr >= sensitivity - 1e-12)[0]])
  return float(thresholds[int(np.argmax(tpr - fpr))])


def brier(y, s) -> float:
  """The mean squared difference between score and label."""
  y = stats.check_labels(y)
  return float(np.mean((stats.check_scores(s, len(y)) - y) ** 2))


def calibration_bins(y, s, bins: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(mean score [bins], positive rate [bins], count [bins]) of scores in `bins`
  equal-width bins of [0, 1] (the last one closed); NaN where a bin is empty."""
  y = stats.check_labels(y)
  s = stats.check_scores(s, len(y))
  if ((s < 0) | (s > 1)).any():
    raise ValueError("calibration needs probabilities in [0, 1]")
  b = np.minimum((s * bins).astype(int), bins - 1)
  count = np.bincount(b, minlength=bins).astype(float)
  with np.errstate(invalid="ignore"):
    return (np.bincount(b, s, bins) / count, np.bincount(b, y.astype(float), bins) / count,
            count)


def ece(y, s, bins: int = 10) -> float:
  """Expected calibration error: sum over equal-width bins of
  (bin count / n) * abs(positive rate - mean score)."""
  mean, rate, count = calibration_bins(y, s, bins)
  full = count > 0
  return float(np.sum(count[full] * np.abs(rate[full] - mean[full])) / count.sum())
