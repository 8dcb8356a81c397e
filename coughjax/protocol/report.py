"""From out-of-fold scores to the numbers of a report: AUCs, comparisons, verdicts.

* A row's AUC in a setting: per repeat, the ROC-AUC of its out-of-fold scores over
  every recording, with DeLong's variance; repeats are combined by `stats.combine`
  (mean of the AUCs; the mean of their variances, never too small *conditional on
  the fitted models* — it leaves out training variance), giving a 95 % interval.
* A comparison "A scores higher than B" is made on the recordings both scored and
  the repeats both ran (repeat r is the same partition for every row, so the first
  min(R_A, R_B) repeats), and its table shows each side's AUC over exactly those
  repeats. The verdict's test is the corrected resampled t-test
  (`stats.corrected_resampled_t`) over the repeat x fold AUC differences: it
  includes the variance of training the models again on other folds and seeds.
  Beside it, per repeat, the paired DeLong difference (conditional on that repeat's
  fitted models).
* A family of comparisons is declared before anything runs; Holm's correction runs
  over all of it, with m = the number of declared comparisons: one whose rows did
  not run is shown as "not run" and counts as p = 1 (it can only make the others'
  corrected p larger, never smaller). A comparison *holds* at a corrected p < 0.05
  with A ahead, *does not hold* at p < 0.05 with B ahead, and is *cannot tell*
  otherwise (`stats.verdict`); a "cannot tell" also states what its 95 % interval
  rules out (`rules_out`), and every comparison the smallest difference it could
  detect with 80 % power at the family's strictest Holm level (alpha / m).
* Threshold metrics (precision, recall, F1, accuracy) of the pooled out-of-fold
  scores at thresholds chosen on each fold's validation part (never at 0.5, never
  on the test part), beside an all-positive reference; operating points
  (sensitivity at 95 % specificity, specificity at 90 % sensitivity) with bootstrap
  intervals over recordings; Brier score, ECE and reliability plots.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Callable, Optional, Sequence

import numpy as np

from coughjax import files
from coughjax.protocol import stats
from coughjax.protocol import thresholds
from coughjax.protocol.scores import Scores

ALPHA = 0.05
POWER = 0.8
# The fewest positives (and negatives) a fold's test part may hold for its AUC to
# enter a per-fold comparison.
MIN_CLASS = 5
NOT_RUN, REFUSED = "not run", "refused"
THRESHOLD_METRICS = ("precision", "recall", "f1", "accuracy")


@dataclasses.dataclass(frozen=True)
class Comparison:
  """The claim "row `a` scores a higher AUC than row `b`" in `setting`.

  Attributes:
    setting: where both rows ran.
    a, b: row names.
    finding: the finding this comparison tests (report grouping), e.g. "i".
  """
  setting: str
  a: str
  b: str
  finding: str = ""


def row_auc(scores: Scores) -> stats.Estimate:
  """The row's AUC over its repeats, with a 95 % interval and the p-value of "no
  better than chance"."""
  if len(np.unique(scores.labels)) < 2:
    raise ValueError(f"AUC needs both labels; got {np.bincount(scores.labels)}")
  per = [stats.delong(scores.labels, s) for s in scores.scores]
  return stats.combine([a for a, _ in per], [v for _, v in per], null=0.5, bounds=(0, 1))


def aligned(a: Scores, b: Scores) -> tuple[Scores, Scores]:
  """`a` and `b` on the recordings both scored and the repeats both ran (the first
  min(R_a, R_b): repeat r is the same partition for both)."""
  common = set(a.keys) & set(b.keys)
  if not common:
    raise ValueError("the two rows scored no recording in common")
  repeats = min(a.repeats, b.repeats)
  return (a.subset(np.isin(a.keys, sorted(common))).first(repeats),
          b.subset(np.isin(b.keys, sorted(common))).first(repeats))


@dataclasses.dataclass
class Judged:
  """A comparison's numbers, over the recordings and repeats both rows have.

  Attributes:
    comparison: what is compared.
    estimate: AUC_a - AUC_b, the corrected resampled t-test over the repeat x fold
      differences (None: not run or refused).
    delong: per repeat, the paired DeLong difference (conditional on the fitted
      models).
    auc_a, auc_b: each row's AUC over exactly these recordings and repeats.
    recordings, repeats: how many.
    p_holm: Holm-adjusted p over the comparison's family.
    verdict: "holds" / "does not hold" / "cannot tell", or "not run", "refused".
    note: why a comparison was refused.
    detectable: the smallest difference detectable with 80 % power at the family's
      strictest Holm level.
    test_train_ratio: n_test / n_train of the folds (the corrected test's term).
  """
  comparison: Comparison
  estimate: Optional[stats.Estimate] = None
  delong: tuple[stats.Estimate, ...] = ()
  auc_a: Optional[stats.Estimate] = None
  auc_b: Optional[stats.Estimate] = None
  recordings: int = 0
  repeats: int = 0
  p_holm: float = 1.0
  verdict: str = NOT_RUN
  note: str = ""
  detectable: float = float("nan")
  test_train_ratio: float = float("nan")

  def detectable_with(self, repeats: float, alpha: float) -> float:
    """`detectable` at `alpha` had both rows run `repeats` repeats (np.inf:
    unlimited) of as many folds, at the spread of fold differences observed
    (`stats.corrected_detectable`)."""
    folds = (self.estimate.df + 1) / self.repeats
    return stats.corrected_detectable(self.estimate, self.test_train_ratio,
                                      repeats * folds, alpha=alpha, power=POWER)


def compare(a: Scores, b: Scores, comparison: Optional[Comparison] = None) -> Judged:
  """AUC_a - AUC_b on common recordings and repeats (see `Judged`), not yet
  Holm-corrected. A fold with fewer than `MIN_CLASS` of a class is refused."""
  a, b = aligned(a, b)
  if a.folds is None or b.folds is None or not np.array_equal(a.folds, b.folds):
    raise ValueError(f"{comparison}: the rows' folds are unknown or differ; a paired "
                     "per-fold comparison needs the same partitions")
  judged = Judged(comparison, auc_a=row_auc(a), auc_b=row_auc(b), recordings=len(a.keys),
                  repeats=a.repeats, verdict="cannot tell")
  judged.delong = tuple(
      stats.combine(*map(np.atleast_1d, stats.delong_paired(a.labels, x, z)))
      for x, z in zip(a.scores, b.scores))
  try:
    diffs, ratio = stats.fold_differences(a.labels, a.scores, b.scores, a.folds,
                                          min_class=MIN_CLASS)
  except ValueError as e:
    judged.verdict, judged.note = REFUSED, str(e)
    return judged
  judged.estimate = stats.corrected_resampled_t(diffs, ratio, bounds=(-1.0, 1.0))
  judged.test_train_ratio = ratio
  return judged


def judge(comparisons: Sequence[Comparison],
          results: dict[str, dict[str, Scores]]) -> list[Judged]:
  """One family: every comparison's estimate, Holm-corrected p-value (m = all of
  `comparisons`, run or not) and verdict."""
  judged = []
  for c in comparisons:
    rows = results.get(c.setting, {})
    if c.a in rows and c.b in rows:
      judged.append(compare(rows[c.a], rows[c.b], c))
    else:
      judged.append(Judged(c, note="no repeat of " + ", ".join(
          n for n in (c.a, c.b) if n not in rows)))
  tested = [j.estimate is not None for j in judged]
  adjusted = stats.holm([j.estimate.p if t else 1.0 for j, t in zip(judged, tested)])
  alpha = ALPHA / max(len(judged), 1)   # Holm's first (strictest) step
  for j, p, t in zip(judged, adjusted, tested):
    if t:
      j.p_holm = float(p)
      j.verdict = stats.verdict(j.estimate, j.p_holm, alpha=ALPHA)
      if not j.estimate.degenerate:
        j.detectable = stats.minimum_detectable(j.estimate.se, j.estimate.df,
                                                alpha=alpha, power=POWER)
  return judged


def validation_predictions(scores: Scores, **criterion) -> Optional[np.ndarray]:
  """[repeats, n] bool: each recording predicted positive where its out-of-fold score
  reaches the threshold chosen on its fold model's validation part
  (`thresholds.threshold_for(**criterion)`); None where a unit wrote no validation
  scores (or the folds are unknown)."""
  if scores.folds is None or scores.validation is None:
    return None
  pred = np.zeros(scores.scores.shape, bool)
  for r, per_fold in enumerate(scores.validation):
    for f, val in enumerate(per_fold):
      if val is None or len(np.unique(val[0])) < 2:
        return None
      test = scores.folds[r] == f
      pred[r, test] = scores.scores[r, test] >= thresholds.threshold_for(*val, **criterion)
  return pred


def threshold_cells(scores: Scores) -> dict[str, str]:
  """Precision / recall / F1 / accuracy (%) of the out-of-fold scores at each fold's
  threshold chosen on its validation part (Youden's J), mean over repeats; "no val
  scores" where units wrote none, "one class" where a repeat predicts a single
  class."""
  pred = validation_predictions(scores)
  if pred is None:
    return {k: "no val scores" for k in THRESHOLD_METRICS}
  per = [thresholds.threshold_metrics(scores.labels, p.astype(float)) for p in pred]
  if any(m.degenerate for m in per):
    return {k: "one class" for k in THRESHOLD_METRICS}
  return {k: f"{100 * np.mean([getattr(m, k) for m in per]):.1f}"
          for k in THRESHOLD_METRICS}


def all_positive_cells(labels: np.ndarray) -> dict[str, str]:
  """The threshold metrics (%) of calling every recording positive: the reference a
  threshold metric must beat (its F1 is 2p / (1 + p) at prevalence p)."""
  m = thresholds.threshold_metrics(labels, np.ones(len(labels)))
  return {k: f"{100 * getattr(m, k):.1f}" for k in THRESHOLD_METRICS}


SPECIFICITY, SENSITIVITY = 0.95, 0.90


def operating_cells(scores: Scores, n_boot: int = 1000) -> list[str]:
  """Sensitivity at 95 % specificity and specificity at 90 % sensitivity read off the
  ROC curve (mean over repeats, [95 % percentile bootstrap over recordings]); the
  test sensitivity (and specificity) at each fold's threshold where its validation
  part reaches 95 % specificity; Brier score and ECE (mean over repeats)."""
  ops = thresholds.operating_intervals(scores.labels, scores.scores, n_boot=n_boot,
                                       specificity=SPECIFICITY, sensitivity=SENSITIVITY)
  cells = [f"{100 * v:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"
           for v, lo, hi in (ops["sensitivity"], ops["specificity"])]
  pred = validation_predictions(scores, specificity=SPECIFICITY)
  if pred is None:
    cells.append("no val scores")
  else:
    y = scores.labels.astype(bool)
    cells.append(f"{100 * np.mean(pred[:, y]):.1f} ({100 * np.mean(~pred[:, ~y]):.1f})")
  cells += [f"{np.mean([thresholds.brier(scores.labels, s) for s in scores.scores]):.3f}",
            f"{np.mean([thresholds.ece(scores.labels, s) for s in scores.scores]):.3f}"]
  return cells


def operating_table(results: dict[str, Scores], titles: dict[str, str]) -> list[str]:
  """One line per row of `operating_cells`, and the references: a constant score
  (no threshold separates anything: 0 at either operating point) at the prevalence
  (Brier p(1 - p), perfectly calibrated)."""
  lines = [f"| row | sensitivity at {100 * SPECIFICITY:.0f} % specificity [95 % CI] "
           f"| specificity at {100 * SENSITIVITY:.0f} % sensitivity [95 % CI] "
           f"| sensitivity (specificity) at the validation threshold for "
           f"{100 * SPECIFICITY:.0f} % specificity | Brier | ECE |",
           "|---|---|---|---|---:|---:|"]
  for name, scores in results.items():
    lines.append(f"| {titles.get(name, name)} | " + " | ".join(operating_cells(scores))
                 + " |")
  labels = next(iter(results.values())).labels
  p = float(np.mean(labels))
  lines.append(f"| *reference: constant score (prevalence {100 * p:.1f} %)* | 0.0 | 0.0 "
               f"| – | {p * (1 - p):.3f} | 0.000 |")
  return lines


def reliability_plot(panels: dict[str, dict[str, Scores]], titles: dict[str, str],
                     path: pathlib.Path, bins: int = 10) -> None:
  """A reliability diagram per panel (e.g. per setting): for each row, the positive
  rate against the mean score in `bins` equal-width bins (all repeats' scores
  pooled), written to `path` (PNG) atomically."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4),
                           squeeze=False)
  for ax, (panel, rows) in zip(axes[0], panels.items()):
    ax.plot([0, 1], [0, 1], color="0.6", lw=0.8, ls="--")
    for name, scores in rows.items():
      mean, rate, _ = thresholds.calibration_bins(
          np.tile(scores.labels, scores.repeats), scores.scores.ravel(), bins)
      full = ~np.isnan(mean)
      ax.plot(mean[full], rate[full], marker="o", ms=3,
              label=titles.get(name, name).strip("*"))
    ax.set(title=panel, xlabel="mean score", xlim=(0, 1), ylim=(0, 1))
    ax.set_ylabel("positive rate")
  axes[0, 0].legend(fontsize=6, loc="upper left")
  fig.tight_layout()
  files.atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
  plt.close(fig)


def above_chance(auc: stats.Estimate) -> bool:
  """Whether an AUC's interval lies above 0.5."""
  return auc.low > 0.5


def share_explained(confound: stats.Estimate, row: stats.Estimate) -> Optional[float]:
  """How much of a row's AUC above chance a confound's AUC reaches:
  (AUC_confound - 0.5) / (AUC_row - 0.5), or None where the row is not
  `above_chance`: a share of a lead that may be none means nothing (a row at 50.3
  made a confound at 60.9 "3227 %")."""
  if not above_chance(row):
    return None
  return (confound.mean - 0.5) / (row.mean - 0.5)


def epochs_cell(scores: Scores) -> str:
  """'median [min-max]' of the epochs early stopping used and of the best epoch."""
  units = [u for rep in scores.units for u in rep]
  if not units or "epochs" not in units[0]:
    return "–"
  e = [u["epochs"] for u in units]
  b = [u["best_epoch"] for u in units]
  return (f"{int(np.median(e))} [{min(e)}–{max(e)}]; best {int(np.median(b))} "
          f"[{min(b)}–{max(b)}]")


def minutes(scores: Scores) -> float:
  return sum(u["seconds"] for rep in scores.units for u in rep) / 60


# --- markdown -----------------------------------------------------------------------


def provenance(command: str, progress: Optional[tuple[int, int]] = None) -> list[str]:
  """Lines naming what produced a report: commit, versions, machine, command; and
  first, for an interim report (`progress`: units done, units of the plan), how much
  of the study it covers."""
  from importlib import metadata  # pylint: disable=g-import-not-at-top
  import platform  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import flax  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top

  def git(*args):
    try:
      return subprocess.run(["git", *args], capture_output=True, text=True, check=True,
                            cwd=pathlib.Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
      return ""

  commit = git("rev-parse", "HEAD") or "unknown (not a git checkout)"
  dirty = git("status", "--porcelain", "--untracked-files=no")
  cpu = next((l.split(":", 1)[1].strip() for l in _read("/proc/cpuinfo").splitlines()
              if l.startswith("model name")), platform.processor() or "unknown")
  interim = [] if progress is None else [
      f"- **Interim report: {progress[0]} of {progress[1]} units done** (`--interim`: "
      "the study has not finished). Each row is reported on its first repeats whose "
      "every fold is done (the tables' repeats column), a row with none as not run; "
      "the comparisons use the repeats both rows have. Verdicts and intervals will "
      "change as the remaining units run."]
  return interim + [
      f"- Commit: `{commit}`" + (" (with uncommitted changes)" if dirty else ""),
      f"- jax {jax.__version__}, jaxlib {metadata.version('jaxlib')}, flax "
      f"{flax.__version__}, optax {metadata.version('optax')}, numpy {np.__version__}, "
      f"scikit-learn {metadata.version('scikit-learn')}, Python "
      f"{platform.python_version()}",
      f"- Machine: {os.cpu_count()} cores ({cpu}), {jax.devices()[0].platform}",
      f"- Command (from the repository root): `{command}`",
  ]


def _read(path: str) -> str:
  try:
    return pathlib.Path(path).read_text()
  except OSError:
    return ""


def auc_cell(est: stats.Estimate) -> str:
  return est.format(scale=100)


def rows_table(results: dict[str, Scores], titles: dict[str, str],
               paper: Optional[dict[str, float]] = None) -> list[str]:
  """One line per row: AUC [95 % CI], threshold metrics at the validation-chosen
  thresholds, repeats, epochs, paper's AUC; then the all-positive reference."""
  head = ("| row | ROC-AUC [95 % CI] | precision | recall | F1 | accuracy | repeats "
          "| epochs trained; best epoch (median [range] over folds) |"
          + (" paper AUC |" if paper is not None else ""))
  lines = [head, "|---|---|---:|---:|---:|---:|---:|---|" + ("---:|" if paper is not None
                                                             else "")]
  for name, scores in results.items():
    t = threshold_cells(scores)
    cells = [titles.get(name, name), auc_cell(row_auc(scores)), t["precision"],
             t["recall"], t["f1"], t["accuracy"], str(len(scores.scores)),
             epochs_cell(scores)]
    if paper is not None:
      cells.append(f"{paper[name]:.2f}" if name in paper else "–")
    lines.append("| " + " | ".join(cells) + " |")
  if results:
    ref = all_positive_cells(next(iter(results.values())).labels)
    lines.append("| *reference: all positive* | – | " + " | ".join(
        ref[k] for k in ("precision", "recall", "f1", "accuracy")) + " | – | – |"
                 + (" – |" if paper is not None else ""))
  return lines


def breakdown_table(results: dict[str, Scores], titles: dict[str, str],
                    columns: dict[str, Callable[[Scores], np.ndarray]]) -> list[str]:
  """Each row's AUC over all its recordings and within each column's subset of them
  (`columns[name](scores)`: a bool mask [n]); where a subset has fewer than 2 of a
  class (no DeLong variance), its counts instead."""
  lines = ["| row | all | " + " | ".join(columns) + " |",
           "|---|---|" + "---|" * len(columns)]
  for name, scores in results.items():
    cells = [auc_cell(row_auc(scores))]
    for keep in columns.values():
      sub = scores.subset(keep(scores))
      counts = np.bincount(sub.labels, minlength=2)
      cells.append(auc_cell(row_auc(sub)) if counts.min() >= 2
                   else f"{counts[1]} pos., {counts[0]} neg.")
    lines.append(f"| {titles.get(name, name)} | " + " | ".join(cells) + " |")
  return lines


def strata_table(results: dict[str, Scores], titles: dict[str, str]) -> list[str]:
  """Each row's AUC within every stratum of its recordings (a pooled setting's
  breakdown by source)."""
  strata = sorted({s for r in results.values() for s in r.strata})
  return breakdown_table(results, titles, {
      s: (lambda sc, s=s: np.array([x == s for x in sc.strata])) for s in strata})


def quintile_columns(value: dict[str, float]) -> dict[str, Callable[[Scores], np.ndarray]]:
  """Columns of `breakdown_table` for the quintiles of `value` (by recording key)
  among each row's recordings: "Q1" (lowest fifth) ... "Q5"."""
  def column(q):
    def keep(scores):
      v = np.array([value[k] for k in scores.keys])
      edges = np.quantile(v, [0.2, 0.4, 0.6, 0.8])
      return np.searchsorted(edges, v, side="right") == q
    return keep
  return {f"Q{q + 1}": column(q) for q in range(5)}


def rules_out(est: stats.Estimate) -> str:
  """What a "cannot tell" says: the differences outside its 95 % interval; or, where
  the interval lies on one side of 0 (p < 0.05 before Holm's correction, not after
  it), the lead or lag it holds."""
  low, high = 100 * est.low, 100 * est.high
  if low > 0:
    return f"a lead of {low:+.1f} to {high:+.1f} before Holm's correction, not after it"
  if high < 0:
    return f"a lag of {high:+.1f} to {low:+.1f} before Holm's correction, not after it"
  return f"a lead above {high:+.1f} and a lag beyond {low:+.1f} are excluded"


def verdict_cell(j: Judged) -> str:
  if j.estimate is None:
    return f"**{j.verdict}**" + (f" ({j.note})" if j.note else "")
  if j.estimate.degenerate:
    return (f"**{j.verdict}** (every fold difference is "
            f"{100 * j.estimate.mean:+.1f}: no spread, no test)")
  if j.verdict == "cannot tell":
    return f"**{j.verdict}**: {rules_out(j.estimate)}"
  return f"**{j.verdict}**"


def comparison_lines(judged: Sequence[Judged], titles: dict[str, str]) -> list[str]:
  """A table of one family's comparisons: each side's AUC over the repeats both ran,
  the difference [95 % CI] and p of the corrected resampled t-test, Holm p, the
  verdict, the paired DeLong difference per repeat, and the smallest difference
  detectable with 80 % power."""
  lines = ["| setting | A | B | repeats | AUC A | AUC B | A − B [95 % CI] (corrected t) "
           "| p | p (Holm) | verdict | DeLong A − B per repeat (p) | detectable (80 %) |",
           "|---|---|---|---:|---|---|---|---:|---:|---|---|---:|"]
  for j in judged:
    c = j.comparison
    est = j.estimate
    delong = "; ".join(f"{100 * d.mean:+.1f} ({p_cell(d.p)})" for d in j.delong) or "–"
    cells = [c.setting, titles.get(c.a, c.a), titles.get(c.b, c.b),
             f"{j.repeats} (0–{j.repeats - 1})" if j.repeats else "–",
             auc_cell(j.auc_a) if j.auc_a else "–", auc_cell(j.auc_b) if j.auc_b else "–",
             signed_cell(est) if est else "–", p_cell(est.p) if est else "–",
             p_cell(j.p_holm) if est else "–", verdict_cell(j), delong,
             f"{100 * j.detectable:.1f}" if np.isfinite(j.detectable) else "–"]
    lines.append("| " + " | ".join(cells) + " |")
  return lines


def signed_cell(est: stats.Estimate) -> str:
  """A difference in AUC points: "+4.2 [-1.0, +9.4]"."""
  return f"{100 * est.mean:+.1f} [{100 * est.low:+.1f}, {100 * est.high:+.1f}]"


def p_cell(p: float) -> str:
  return "< 0.001" if p < 0.001 else f"{p:.3f}"


def pretrain_minutes(workdir: pathlib.Path) -> float:
  """Minutes of every pre-training unit of a study's workdir."""
  return sum(json.loads(unit.read_text())["seconds"] / 60
             for unit in (workdir / "pretrain").glob("*/*/unit.json"))


def cost_minutes(plan, results: dict[str, dict[str, Scores]]) -> tuple[float, float]:
  """(minutes of every row unit, minutes of every pre-training) this study took."""
  rows = sum(minutes(s) for res in results.values() for s in res.values())
  return rows, pretrain_minutes(plan.workdir)


def perturbation_shift(scores: Scores, perturbation: str) -> np.ndarray:
  """[repeats] how far each repeat's AUC moves under `perturbation` (e.g. "gain+10":
  the same models scoring the test inputs so changed): AUC(perturbed) - AUC."""
  return np.array([stats.auc(scores.labels, p) - stats.auc(scores.labels, s)
                   for p, s in zip(scores.perturbed[perturbation], scores.scores)])


def perturbation_table(results: dict[str, Scores], titles: dict[str, str]) -> list[str]:
  """One line per row with perturbed scores (deep rows): its AUC, and how far it
  moves under each perturbation, in AUC points: mean over its repeats [lowest,
  highest repeat]. [] when no row has any."""
  def order(p):  # "gain-10" -> ("gain", -10.0)
    kind = p.rstrip("+-.0123456789")
    return kind, float(p[len(kind):] or 0)

  names = sorted({p for sc in results.values() for p in sc.perturbed}, key=order)
  if not names:
    return []
  lines = ["| row | AUC | " + " | ".join(
      f"AUC moves at {order(p)[1]:+g} dB" if order(p)[0] == "gain" else p
      for p in names) + " |",
           "|---|---|" + "---|" * len(names)]
  for name, scores in results.items():
    if not scores.perturbed:
      continue
    cells = [auc_cell(row_auc(scores))]
    for p in names:
      if p not in scores.perturbed:
        cells.append("–")
        continue
      shift = 100 * perturbation_shift(scores, p)
      cells.append(f"{shift.mean():+.1f} [{shift.min():+.1f}, {shift.max():+.1f}]")
    lines.append(f"| {titles.get(name, name)} | " + " | ".join(cells) + " |")
  return lines
