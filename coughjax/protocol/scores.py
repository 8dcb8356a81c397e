"""A row's out-of-fold scores in one setting, and the file every report number is
re-derived from (`scores.csv.gz`).

Repeat r of a row is row r of `Scores.scores`: repeat r of the study's folds, so two
rows' repeat r are the same partition of the same recordings, and comparing two rows
on their first `min(R_a, R_b)` repeats compares them on the same partitions.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import io
from typing import Optional

import numpy as np

SCORES_FILE = "scores.csv.gz"
# The columns of `scores.csv.gz`, one line per (setting, row, repeat, recording, part):
# part "test" is the out-of-fold score (fold = the fold whose test part holds the
# recording), part "val" a score of the validation part of fold `fold`'s model (what
# a threshold is chosen on; only units that wrote `val_predictions.csv`).
COLUMNS = ("setting", "row", "repeat", "fold", "recording", "label", "score", "part")
TEST, VAL = "test", "val"


@dataclasses.dataclass
class Scores:
  """A row's out-of-fold scores in one setting.

  Attributes:
    keys: [n] recording keys (sorted), the same for every repeat.
    labels: [n] int.
    strata: [n] each recording's stratum (source).
    scores: [repeats, n] out-of-fold scores; row r is repeat r.
    units: per repeat, per fold, the unit.json contents.
    folds: [repeats, n] int, the fold whose test part scored each recording in each
      repeat (None where unknown: then no per-fold statistic can be computed).
    validation: per repeat, per fold, (labels [m], scores [m]) of that fold's model
      on its validation part, or None where the unit wrote none.
  """
  keys: list[str]
  labels: np.ndarray
  strata: list[str]
  scores: np.ndarray
  units: list[list[dict]]
  folds: Optional[np.ndarray] = None
  validation: Optional[list[list[Optional[tuple[np.ndarray, np.ndarray]]]]] = None

  @property
  def repeats(self) -> int:
    return len(self.scores)

  def first(self, repeats: int) -> "Scores":
    """These scores restricted to repeats 0 .. `repeats` - 1."""
    if not 1 <= repeats <= self.repeats:
      raise ValueError(f"asked for {repeats} repeats of a row that ran {self.repeats}")
    return dataclasses.replace(
        self, scores=self.scores[:repeats], units=self.units[:repeats],
        folds=None if self.folds is None else self.folds[:repeats],
        validation=None if self.validation is None else self.validation[:repeats])

  def subset(self, keep: np.ndarray) -> "Scores":
    """These scores on the recordings where `keep` [n] (bool) is set."""
    keep = np.asarray(keep, bool)
    return dataclasses.replace(
        self, keys=[k for k, m in zip(self.keys, keep) if m], labels=self.labels[keep],
        strata=[s for s, m in zip(self.strata, keep) if m], scores=self.scores[:, keep],
        folds=None if self.folds is None else self.folds[:, keep])
