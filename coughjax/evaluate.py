"""One `launch.py` downstream run's report: metrics over its seeds, results.md, plots.

A downstream config trains `num_runs` seeds on one split (`train/downstream.py`);
this module reports them the way the paper reports a row: metrics per recording — a
recording's score is the mean of its clips' probabilities — and per clip: ROC-AUC,
and precision, recall and accuracy at a fixed threshold (the protocol's own
definitions: `coughjax.protocol.stats.auc`, `thresholds.threshold_metrics`), each as
mean (std) over the seeds, plus the paper's "Average F1": the harmonic mean of the
*average* precision and the *average* recall. Intervals, folds and comparisons
between rows are the evaluation protocol's (`coughjax.protocol`, and
`coughjax.reproduce` for the paper's tables).
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Optional, Sequence

import numpy as np
from sklearn import metrics as skm

from coughjax import files
from coughjax.protocol import stats
from coughjax.protocol import thresholds

METRICS = ("auc", "precision", "recall", "accuracy")


def recording_scores(clip_probs: np.ndarray, clip_rec: np.ndarray,
                     num_recordings: int) -> np.ndarray:
  """Mean clip probability per recording: [num_recordings]."""
  sums = np.bincount(clip_rec, weights=clip_probs, minlength=num_recordings)
  counts = np.bincount(clip_rec, minlength=num_recordings)
  if np.any(counts == 0):
    raise ValueError(f"{np.sum(counts == 0)} recordings have no clip scores")
  return sums / counts


def binary_metrics(labels: np.ndarray, scores: np.ndarray,
                   threshold: float = 0.5) -> dict[str, float]:
  """ROC-AUC (NaN where the labels hold one class), precision, recall and accuracy
  (at `threshold`; precision 0 where nothing is predicted positive) in %, and counts."""
  labels = np.asarray(labels).astype(int)
  at = thresholds.threshold_metrics(labels, scores, threshold)
  both = len(np.unique(labels)) == 2
  return {
      "auc": 100 * stats.auc(labels, scores) if both else float("nan"),
      "precision": 100 * at.precision,
      "recall": 100 * at.recall,
      "accuracy": 100 * at.accuracy,
      "positives": int(labels.sum()),
      "negatives": int((1 - labels).sum()),
  }


def summarize(runs: Sequence[dict[str, float]]) -> dict[str, float]:
  """mean/std of each metric over runs (std with ddof=0, as numpy) and Average F1."""
  out: dict[str, float] = {}
  for k in METRICS:
    values = np.array([r[k] for r in runs], dtype=np.float64)
    out[f"{k}_mean"] = float(np.mean(values))
    out[f"{k}_std"] = float(np.std(values))
  p, r = out["precision_mean"], out["recall_mean"]
  out["avg_f1"] = 2 * p * r / (p + r) if p + r > 0 else 0.0
  return out


def format_row(name: str, s: dict[str, float]) -> str:
  cells = [f"{s[f'{k}_mean']:.2f} ({s[f'{k}_std']:.2f})" for k in METRICS]
  return f"| {name} | " + " | ".join(cells) + f" | {s['avg_f1']:.2f} |"


TABLE_HEADER = ("| model | ROC-AUC | Precision | Recall | Accuracy | Avg F1 |\n"
                "|---|---|---|---|---|---|")


def results_of(variant: str, runs: list[dict], dataset: str) -> dict:
  """What results.json holds: the runs and their recording- and clip-level summary."""
  levels = {level: summarize([r[level] for r in runs]) for level in ("recording", "clip")}
  return {"variant": variant, "dataset": dataset, "num_runs": len(runs),
          "summary": levels, "runs": runs}


def write_report(workdir: str | os.PathLike, variant: str, runs: list[dict],
                 dataset: str, paper: Optional[dict[str, float]] = None,
                 paper_source: str = "") -> dict:
  """Writes results.json and results.md (recording- and clip-level tables); `paper`
  is the paper's row (`coughjax.paper.reference`), `paper_source` says which."""
  workdir = pathlib.Path(workdir)
  results = results_of(variant, runs, dataset)
  levels = results["summary"]
  lines = [f"# {variant}: test set, mean (std) over {len(runs)} runs", "",
           f"Dataset: {dataset}. Threshold 0.5; Avg F1 from average precision and recall.",
           ""]
  for level, s in levels.items():
    lines += [f"## {level} level", "", TABLE_HEADER, format_row(variant, s), ""]
  if paper:
    source = f", {paper_source}" if paper_source else ""
    lines += [f"Paper (COVID-19 Sounds, Xue & Salim 2021{source}): "
              + ", ".join(f"{k} {v:.2f}" for k, v in paper.items()), ""]
  files.atomic_write(workdir / "results.md", lambda f: f.write("\n".join(lines).encode()))
  # results.json last: its presence marks a finished report.
  text = json.dumps(results, indent=2) + "\n"
  files.atomic_write(workdir / "results.json", lambda f: f.write(text.encode()))
  return results


def _pyplot():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")  # headless
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def plot_roc(runs: Sequence[dict], path: str | os.PathLike, title: str) -> None:
  """ROC curves of every run (recording level), AUC in the legend."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(5, 5))
  for i, r in enumerate(runs):
    fpr, tpr, _ = skm.roc_curve(r["labels"], r["scores"])
    ax.plot(fpr, tpr, label=f"run {i}: AUC {r['recording']['auc']:.1f}")
  ax.plot([0, 1], [0, 1], "k--", lw=0.8)
  ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title)
  ax.legend(loc="lower right", fontsize=8)
  fig.tight_layout()
  files.atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))
  plt.close(fig)


def plot_curves(histories: Sequence[list[dict]], path: str | os.PathLike,
                title: str) -> None:
  """Train / validation loss and validation AUC per epoch, from metrics.jsonl lines."""
  plt = _pyplot()
  fig, (ax_loss, ax_auc) = plt.subplots(1, 2, figsize=(10, 4))
  for i, lines in enumerate(histories):
    train = {}
    for l in lines:
      if l["split"] == "train":
        train.setdefault(l["epoch"], []).append(l["loss"])
    val = [l for l in lines if l["split"] == "val"]
    epochs = sorted(train)
    ax_loss.plot(epochs, [np.mean(train[e]) for e in epochs], f"C{i}-", label=f"run {i} train")
    ax_loss.plot([l["epoch"] for l in val], [l["loss"] for l in val], f"C{i}--",
                 label=f"run {i} val")
    ax_auc.plot([l["epoch"] for l in val], [l["auc"] for l in val], f"C{i}-",
                label=f"run {i}")
  ax_loss.set(xlabel="epoch", ylabel="BCE loss", title=f"{title}: loss")
  ax_auc.set(xlabel="epoch", ylabel="validation ROC-AUC (%)", title=f"{title}: AUC")
  ax_loss.legend(fontsize=7)
  ax_auc.legend(fontsize=7)
  fig.tight_layout()
  files.atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))
  plt.close(fig)
