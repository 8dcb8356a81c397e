"""A row's out-of-fold scores in one setting, and the file every report number is
re-derived from (`scores.csv.gz`).

Repeat r of a row is row r of `Scores.scores`: repeat r of the study's folds, so two
rows' repeat r are the same partition of the same recordings, and comparing two rows
on their first `min(R_a, R_b)` repeats compares them on the same partitions.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import gzip
import io
import json
import os
import pathlib
from typing import Optional

import numpy as np

from coughjax import files

SCORES_FILE = "scores.csv.gz"
# The columns of `scores.csv.gz`, one line per (setting, row, repeat, recording, part)
# (a row's lines grouped by recording; the order carries no meaning):
# part "test" is the out-of-fold score (fold = the fold whose test part holds the
# recording), part "val" a score of the validation part of fold `fold`'s model (what
# a threshold is chosen on; only units that wrote `val_predictions.csv`), any other
# part (e.g. "gain+10") the out-of-fold score of a perturbation of the test inputs
# (`Scores.perturbed`; recording and fold as in part "test").
# Then the recording's stratum and any attributes a study attaches (e.g. a symptom
# flag), the same on every line of a recording. Scores are written with repr(), so
# they read back bit for bit.
COLUMNS = ("setting", "row", "repeat", "fold", "recording", "label", "score", "part",
           "stratum")
TEST, VAL = "test", "val"
# Beside scores.csv.gz: each unit's unit.json ({setting: {row: [[unit] per fold] per
# repeat]}) and what else a report states that is not a score ("extra").
UNITS_FILE = "units.json"


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
    perturbed: {perturbation (e.g. "gain+10"): [repeats, n] out-of-fold scores of
      the same models with the test inputs so changed}, for the perturbations every
      unit of the row wrote (deep rows: `coughjax.protocol.units.GAINS_DB`).
  """
  keys: list[str]
  labels: np.ndarray
  strata: list[str]
  scores: np.ndarray
  units: list[list[dict]]
  folds: Optional[np.ndarray] = None
  validation: Optional[list[list[Optional[tuple[np.ndarray, np.ndarray]]]]] = None
  perturbed: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

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
        validation=None if self.validation is None else self.validation[:repeats],
        perturbed={k: v[:repeats] for k, v in self.perturbed.items()})

  def subset(self, keep: np.ndarray) -> "Scores":
    """These scores on the recordings where `keep` [n] (bool) is set."""
    keep = np.asarray(keep, bool)
    return dataclasses.replace(
        self, keys=[k for k, m in zip(self.keys, keep) if m], labels=self.labels[keep],
        strata=[s for s, m in zip(self.strata, keep) if m], scores=self.scores[:, keep],
        folds=None if self.folds is None else self.folds[:, keep],
        perturbed={k: v[:, keep] for k, v in self.perturbed.items()})


def _relative(key: str, root: Optional[str]) -> str:
  return os.path.relpath(key, root) if root and "://" not in key else key


def write(folder: str | os.PathLike, results: dict[str, dict[str, Scores]], *,
          root: Optional[str | os.PathLike] = None,
          attributes: Optional[dict[str, dict]] = None, extra: Optional[dict] = None
          ) -> pathlib.Path:
  """Writes `folder`/scores.csv.gz (every score of `results`, test and validation
  parts) and `folder`/units.json (units and `extra`), each atomically.

  Args:
    folder: where the two files go.
    results: {setting: {row: Scores}}.
    root: recording keys are written relative to it (a data root), so the file names
      recordings the same on every machine and in every setting.
    attributes: {recording key: {name: value}}: extra columns (JSON values).
    extra: anything else a report needs (JSON), e.g. the plan's k and seed.

  Returns:
    The path of scores.csv.gz.
  """
  folder = pathlib.Path(folder)
  root = None if root is None else os.path.realpath(root)
  attributes = attributes or {}
  names = sorted({n for a in attributes.values() for n in a})
  text = io.StringIO()
  out = csv.writer(text, lineterminator="\n")
  out.writerow(COLUMNS + tuple(names))
  units = {}
  for setting, rows in results.items():
    for row, sc in rows.items():
      if sc.folds is None:
        raise ValueError(f"{setting} / {row}: scores without folds cannot be written")
      units.setdefault(setting, {})[row] = sc.units
      # A recording's lines are adjacent (every repeat and part), so gzip finds its
      # name and attributes again within its window: half the size of repeat-major.
      # The stratum and attributes go on the "test" line only.
      parts = [(TEST, sc.scores), *sorted(sc.perturbed.items())]
      for i, key in enumerate(sc.keys):
        name, attrs = _relative(key, root), attributes.get(key, {})
        own = [sc.strata[i], *(json.dumps(attrs.get(n)) for n in names)]
        for r in range(sc.repeats):
          for part, scores in parts:
            out.writerow([setting, row, r, int(sc.folds[r, i]), name, int(sc.labels[i]),
                          repr(float(scores[r, i])), part,
                          *(own if part == TEST else [""] * len(own))])
      for r in range(sc.repeats):
        for f, val in enumerate((sc.validation or [[]] * sc.repeats)[r]):
          if val is not None:
            for y, v in zip(*val):
              out.writerow([setting, row, r, f, "", int(y), repr(float(v)), VAL, "",
                            *([""] * len(names))])
  path = folder / SCORES_FILE
  files.atomic_write(path, lambda f: f.write(gzip.compress(text.getvalue().encode(),
                                                           mtime=0)))
  files.atomic_write(folder / UNITS_FILE, lambda f: f.write(
      json.dumps({"units": units, "extra": extra or {}}, indent=0).encode()))
  return path


def read(path: str | os.PathLike) -> tuple[dict[str, dict[str, Scores]], dict, dict]:
  """What `write` wrote: ({setting: {row: Scores}}, {recording: {attribute: value}},
  extra). Recording keys are as written (relative to the root given to `write`).

  Raises:
    ValueError: a file whose columns, repeats or recordings do not fit together,
      naming the file and what is wrong.
  """
  path = pathlib.Path(path)
  with gzip.open(path, "rt", newline="") as f:
    lines = list(csv.reader(f))
  if not lines or tuple(lines[0][:len(COLUMNS)]) != COLUMNS:
    raise ValueError(f"{path}: not a scores file (its columns must start with "
                     f"{','.join(COLUMNS)})")
  names = lines[0][len(COLUMNS):]
  test = collections.defaultdict(dict)   # (setting, row) -> {(repeat, key): line}
  val = collections.defaultdict(list)    # (setting, row, repeat, fold) -> [(y, s)]
  perturbed = collections.defaultdict(dict)  # (setting, row, part) -> {(repeat, key): s}
  attributes = {}
  for n, line in enumerate(lines[1:], 2):
    if len(line) != len(lines[0]):
      raise ValueError(f"{path}: line {n} has {len(line)} fields, not {len(lines[0])}")
    setting, row, repeat, fold, key, label, score, part, stratum, *attrs = line
    if part == TEST:
      test[setting, row][int(repeat), key] = (int(fold), int(label), float(score), stratum)
      attributes[key] = {a: json.loads(v) for a, v in zip(names, attrs)}
    elif part == VAL:
      val[setting, row, int(repeat), int(fold)].append((int(label), float(score)))
    elif part:
      perturbed[setting, row, part][int(repeat), key] = float(score)
    else:
      raise ValueError(f"{path}: line {n}: no part (test, val or a perturbation)")
  units = json.loads((path.parent / UNITS_FILE).read_text())
  results: dict[str, dict[str, Scores]] = {}
  for (setting, row), cells in test.items():
    repeats = 1 + max(r for r, _ in cells)
    keys = sorted({k for _, k in cells})
    if len(cells) != repeats * len(keys):
      raise ValueError(f"{path}: {setting} / {row}: not every recording has a score in "
                       f"every one of its {repeats} repeats")
    first = [cells[0, k] for k in keys]
    folds = np.array([[cells[r, k][0] for k in keys] for r in range(repeats)])
    k = 1 + int(folds.max())
    validation = [[tuple(np.array(c) for c in zip(*val[setting, row, r, f]))
                   if val.get((setting, row, r, f)) else None for f in range(k)]
                  for r in range(repeats)]
    results.setdefault(setting, {})[row] = Scores(
        keys=keys, labels=np.array([c[1] for c in first]),
        strata=[c[3] for c in first],
        scores=np.array([[cells[r, k][2] for k in keys] for r in range(repeats)]),
        units=units["units"][setting][row], folds=folds, validation=validation)
  for (setting, row, part), cells in perturbed.items():
    sc = results.get(setting, {}).get(row)
    want = {(r, k) for r in range(sc.repeats) for k in sc.keys} if sc else set()
    if set(cells) != want:
      raise ValueError(f"{path}: {setting} / {row}: part {part!r} does not score the "
                       "recordings and repeats of its part 'test'")
    sc.perturbed[part] = np.array([[cells[r, k] for k in sc.keys]
                                   for r in range(sc.repeats)])
  return results, attributes, units["extra"]
