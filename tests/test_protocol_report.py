"""coughjax.protocol.report: comparisons on matched repeats, families, verdict words."""

import numpy as np

from coughjax.protocol import report as rep
from coughjax.protocol import stats
from coughjax.protocol.scores import Scores


def _scores(rng, y, folds, strength, repeats):
  n = len(y)
  return Scores(keys=[f"r{i:03d}" for i in range(n)], labels=y.astype(int),
                strata=[""] * n,
                scores=1 / (1 + np.exp(-(rng.normal(size=(repeats, n)) + strength * y))),
                units=[[{}] * 3 for _ in range(repeats)], folds=folds[:repeats])


def _data(seed=0, n=120, repeats=5, k=3):
  rng = np.random.default_rng(seed)
  y = np.arange(n) % 2 == 0
  folds = np.stack([rng.permutation(np.arange(n) % k) for _ in range(repeats)])
  return rng, y, folds


def test_a_one_repeat_row_is_compared_on_the_other_rows_first_repeat_and_shown_so():
  rng, y, folds = _data()
  deep = _scores(rng, y, folds, 1.5, repeats=1)
  base = _scores(rng, y, folds, 1.0, repeats=5)
  (j,) = rep.judge([rep.Comparison("s", "deep", "base")], {"s": {"deep": deep,
                                                                  "base": base}})
  assert j.repeats == 1 and j.recordings == len(y)
  one = rep.row_auc(base.first(1))
  five = rep.row_auc(base)
  assert one.mean != five.mean
  assert j.auc_b == one and j.auc_a == rep.row_auc(deep)
  # The difference is exactly the two shown AUCs' difference on those repeats.
  np.testing.assert_allclose(j.delong[0].mean, j.auc_a.mean - j.auc_b.mean, rtol=1e-12)
  (line,) = rep.comparison_lines([j], {})[2:]
  assert f"| 1 (0–0) | {rep.auc_cell(rep.row_auc(deep))} | {rep.auc_cell(one)} |" in line
  assert rep.auc_cell(five) not in line
  # The verdict's test is the corrected t over the 3 folds of repeat 0.
  diffs, ratio = stats.fold_differences(y, deep.scores, base.scores[:1], folds[:1])
  assert j.estimate == stats.corrected_resampled_t(diffs, ratio, bounds=(-1, 1))
  assert j.estimate.df == 2


def test_rows_that_did_not_run_count_in_the_family():
  rng, y, folds = _data()
  a = _scores(rng, y, folds, 3.0, repeats=5)
  b = _scores(rng, y, folds, 0.0, repeats=5)
  family = [rep.Comparison("s", "a", "b"), rep.Comparison("s", "a", "missing"),
            rep.Comparison("t", "a", "b")]
  judged = rep.judge(family, {"s": {"a": a, "b": b}})
  assert [j.verdict for j in judged[1:]] == [rep.NOT_RUN, rep.NOT_RUN]
  np.testing.assert_allclose(judged[0].p_holm, min(1, 3 * judged[0].estimate.p))
  assert judged[0].verdict == "holds"
  np.testing.assert_allclose(judged[0].detectable, stats.minimum_detectable(
      judged[0].estimate.se, judged[0].estimate.df, alpha=0.05 / 3))
  lines = rep.comparison_lines(judged, {})
  assert "**not run** (no repeat of missing)" in lines[3]


def test_cannot_tell_states_what_it_rules_out():
  rng, y, folds = _data(1)
  a = _scores(rng, y, folds, 1.0, repeats=2)
  b = _scores(rng, y, folds, 1.0, repeats=2)
  (j,) = rep.judge([rep.Comparison("s", "a", "b")], {"s": {"a": a, "b": b}})
  assert j.verdict == "cannot tell"
  assert (f"a lead above {100 * j.estimate.high:+.1f} and a lag beyond "
          f"{100 * j.estimate.low:+.1f} are excluded") in rep.verdict_cell(j)
  # An interval on one side of 0 (p < 0.05 before Holm, not after): no "lag beyond
  # +23.8" but the lead it holds.
  one_side = stats.Estimate(mean=0.286, se=0.02, low=0.238, high=0.334, z=14.0,
                            p=0.002, df=4)
  assert rep.rules_out(one_side) == ("a lead of +23.8 to +33.4 before Holm's correction, "
                                     "not after it")
  behind = stats.Estimate(mean=-0.118, se=0.05, low=-0.236, high=-0.001, z=-2.4,
                          p=0.05, df=4)
  assert rep.rules_out(behind) == ("a lag of -0.1 to -23.6 before Holm's correction, "
                                   "not after it")


def test_a_fold_with_too_few_of_a_class_is_refused_with_its_reason():
  rng, y, folds = _data(n=24)
  a = _scores(rng, y, folds, 1.0, repeats=1)
  b = _scores(rng, y, folds, 0.0, repeats=1)
  y = y.copy()
  a.labels[:] = b.labels[:] = (folds[0] == 0) & (np.arange(24) < 12) | (folds[0] != 0) & y
  (j,) = rep.judge([rep.Comparison("s", "a", "b")], {"s": {"a": a, "b": b}})
  assert j.verdict == rep.REFUSED and "fewer than 5 of a class" in j.note


def test_a_confound_share_needs_a_row_above_chance():
  def auc(mean, half):
    return stats.Estimate(mean=mean, se=half / 1.96, low=mean - half, high=mean + half,
                          z=0.0, p=1.0)
  np.testing.assert_allclose(rep.share_explained(auc(0.65, 0.05), auc(0.8, 0.05)), 0.5)
  # A row whose interval reaches chance has no lead to share: not "3227 %".
  assert rep.share_explained(auc(0.609, 0.08), auc(0.503, 0.08)) is None
  assert rep.share_explained(auc(0.6, 0.05), auc(0.45, 0.03)) is None
