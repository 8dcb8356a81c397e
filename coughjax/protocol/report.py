"""From out-of-fold scores to the numbers of a report: AUCs, comparisons, verdicts.

* A row's AUC in a setting: per repeat, the ROC-AUC of its out-of-fold scores over
  every recording, with DeLong's variance; repeats are combined by
  `stats.combine` (mean of the AUCs; the mean of their variances, conservative
  for the strongly correlated repeats of one data set), giving a 95 % interval.
* A comparison "A scores higher than B": on the recordings both scored and the
  repeats both ran, per repeat the paired DeLong difference AUC_A - AUC_B and its
  variance (the two rows' scores of the same recordings are correlated, which the
  paired variance accounts for), combined over repeats the same way; a two-sided
  p-value for "no difference".
* Holm's correction over every comparison of a report; a comparison *holds* at a
  corrected p < 0.05 with A ahead, *does not hold* at p < 0.05 with B ahead, and
  is *cannot tell* otherwise (`stats.verdict`).
* Threshold metrics (precision, recall, F1, accuracy at 0.5) of the pooled
  out-of-fold scores, only where the row predicts both classes; otherwise marked.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Optional, Sequence

import numpy as np

from coughjax.protocol import stats
from coughjax.protocol.runs import Scores

ALPHA = 0.05
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


def _mask(scores: Scores, stratum: Optional[str]) -> np.ndarray:
  if stratum is None:
    return np.ones(len(scores.keys), bool)
  return np.array([s == stratum for s in scores.strata])


def row_auc(scores: Scores, stratum: Optional[str] = None) -> stats.Estimate:
  """The row's AUC over its repeats (optionally within one stratum), with a 95 %
  interval and the p-value of "no better than chance"."""
  keep = _mask(scores, stratum)
  y = scores.labels[keep]
  if len(np.unique(y)) < 2:
    raise ValueError(f"AUC needs both labels; stratum {stratum!r} has {np.bincount(y)}")
  per = [stats.delong(y, s[keep]) for s in scores.scores]
  return stats.combine([a for a, _ in per], [v for _, v in per], null=0.5, bounds=(0, 1))


def _aligned(a: Scores, b: Scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(labels, a's scores, b's scores) on the recordings and repeats both have."""
  common = sorted(set(a.keys) & set(b.keys))
  if not common:
    raise ValueError("the two rows scored no recording in common")
  ia = {k: i for i, k in enumerate(a.keys)}
  ib = {k: i for i, k in enumerate(b.keys)}
  sel_a = np.array([ia[k] for k in common])
  sel_b = np.array([ib[k] for k in common])
  repeats = min(len(a.scores), len(b.scores))
  return a.labels[sel_a], a.scores[:repeats, sel_a], b.scores[:repeats, sel_b]


def compare(a: Scores, b: Scores) -> tuple[stats.Estimate, int, int]:
  """AUC_a - AUC_b, paired on common recordings and repeats: (estimate,
  recordings, repeats)."""
  y, sa, sb = _aligned(a, b)
  per = [stats.delong_paired(y, x, z) for x, z in zip(sa, sb)]
  est = stats.combine([d for d, _ in per], [v for _, v in per], null=0.0)
  return est, len(y), len(sa)


@dataclasses.dataclass
class Judged:
  comparison: Comparison
  estimate: stats.Estimate
  recordings: int
  repeats: int
  p_holm: float = float("nan")
  verdict: str = "cannot tell"


def judge(comparisons: Sequence[Comparison],
          results: dict[str, dict[str, Scores]]) -> list[Judged]:
  """Every comparison's paired estimate, Holm-corrected p-value and verdict."""
  judged = []
  for c in comparisons:
    rows = results.get(c.setting, {})
    missing = [n for n in (c.a, c.b) if n not in rows]
    if missing:
      raise ValueError(f"comparison {c}: rows {missing} did not run in {c.setting}")
    judged.append(Judged(c, *compare(rows[c.a], rows[c.b])))
  adjusted = stats.holm([j.estimate.p for j in judged]) if judged else []
  for j, p in zip(judged, adjusted):
    j.p_holm = float(p)
    j.verdict = stats.verdict(j.estimate, j.p_holm, alpha=ALPHA)
  return judged


def threshold_cells(scores: Scores, threshold: float = 0.5) -> dict[str, str]:
  """Precision / recall / F1 / accuracy (%) of the out-of-fold scores at `threshold`,
  mean over repeats; "one class" where some repeat's scores predict a single class."""
  per = [stats.threshold_metrics(scores.labels, s, threshold) for s in scores.scores]
  if any(m.degenerate for m in per):
    return {k: "one class" for k in THRESHOLD_METRICS}
  return {k: f"{100 * np.mean([getattr(m, k) for m in per]):.1f}"
          for k in THRESHOLD_METRICS}


def share_explained(confound: stats.Estimate, row: stats.Estimate) -> Optional[float]:
  """How much of a row's AUC above chance a confound's AUC reaches:
  (AUC_confound - 0.5) / (AUC_row - 0.5), or None where the row is at chance."""
  gain = row.mean - 0.5
  if gain <= 0:
    return None
  return (confound.mean - 0.5) / gain


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


def provenance(command: str) -> list[str]:
  """Lines naming what produced a report: commit, versions, machine, command."""
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
  return [
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
  """One line per row: AUC [95 % CI], threshold metrics, epochs, paper's AUC."""
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
  return lines


def strata_table(results: dict[str, Scores], titles: dict[str, str]) -> list[str]:
  """Each row's AUC within every stratum of its recordings (a pooled setting's
  breakdown by source)."""
  strata = sorted({s for r in results.values() for s in r.strata})
  lines = ["| row | all | " + " | ".join(strata) + " |", "|---|---|" + "---|" * len(strata)]
  for name, scores in results.items():
    cells = [auc_cell(row_auc(scores))]
    for s in strata:
      try:
        cells.append(auc_cell(row_auc(scores, s)))
      except ValueError:  # one class in this stratum: no AUC
        cells.append("one class")
    lines.append(f"| {titles.get(name, name)} | " + " | ".join(cells) + " |")
  return lines


def comparison_lines(judged: Sequence[Judged], titles: dict[str, str]) -> list[str]:
  """A table of every comparison: difference [95 % CI], p, Holm p, verdict."""
  lines = ["| setting | A | B | AUC A − B [95 % CI] | p | p (Holm) | verdict |",
           "|---|---|---|---|---:|---:|---|"]
  for j in judged:
    c = j.comparison
    lines.append(f"| {c.setting} | {titles.get(c.a, c.a)} | {titles.get(c.b, c.b)} | "
                 f"{signed_cell(j.estimate)} | {_p(j.estimate.p)} | "
                 f"{_p(j.p_holm)} | **{j.verdict}** |")
  return lines


def signed_cell(est: stats.Estimate) -> str:
  """A difference in AUC points: "+4.2 [-1.0, +9.4]"."""
  return f"{100 * est.mean:+.1f} [{100 * est.low:+.1f}, {100 * est.high:+.1f}]"


def _p(p: float) -> str:
  return "< 0.001" if p < 0.001 else f"{p:.3f}"


def cost_minutes(plan, results: dict[str, dict[str, Scores]]) -> tuple[float, float]:
  """(minutes of every row unit, minutes of every pre-training) this study took."""
  rows = sum(minutes(s) for res in results.values() for s in res.values())
  pre = 0.0
  for unit in (plan.workdir / "pretrain").glob("*/*/unit.json"):
    pre += json.loads(unit.read_text())["seconds"] / 60
  return rows, pre
