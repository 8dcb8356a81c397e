"""Participant-disjoint, label-stratified, seeded train/validation/test splits.

Two ways to split, chosen by `config.data` (`from_config`): seeded fractions
(`split`: `data.split`, `data.split_seed`), or one fold of a folds file written by
the evaluation protocol (`fold_split`: `data.folds`, `data.fold`, `data.fold_repeat`),
whose test parts cover every recording once per repeat (`coughjax.protocol.folds`
writes and reads that file).
"""

from __future__ import annotations

import collections
import os
from typing import Iterable, Optional, Sequence

from absl import logging
import numpy as np

from coughjax.data.manifest import Recording
from coughjax.protocol import folds as folds_lib

SPLITS = ("train", "val", "test")


def participant_label(records: Sequence[Recording]) -> Optional[int]:
  """A participant's label: 1 if any recording is positive, 0 if all are negative,
  None if unlabelled."""
  labels = [r.label for r in records if r.label is not None]
  return max(labels) if labels else None


def participant_stratum(records: Sequence[Recording]) -> tuple[str, Optional[int]]:
  """What a participant's split is stratified by: (stratum, label). A participant
  whose recordings name several strata takes the first in sorted order."""
  return min(r.stratum for r in records), participant_label(records)


def split(records: Sequence[Recording], fractions: Sequence[float] = (0.7, 0.1, 0.2),
          seed: int = 0) -> dict[str, list[Recording]]:
  """Splits recordings by participant, stratified by (stratum, participant label).

  Within each (stratum, label) group participants are shuffled (seeded) and cut at
  the cumulative fractions, rounding so the counts add up; every recording goes
  where its participant goes. Returns {"train": [...], "val": [...], "test": [...]}.
  Groups are visited in (stratum, str(label)) order, so sources without strata
  (all "") split exactly as when only the label was used.
  """
  fractions = np.asarray(fractions, dtype=np.float64)
  if fractions.shape != (3,) or np.any(fractions < 0) or not np.isclose(fractions.sum(), 1):
    raise ValueError(f"split fractions must be 3 non-negative numbers summing to 1, "
                     f"got {tuple(fractions)}")
  by_participant: dict[str, list[Recording]] = collections.defaultdict(list)
  for r in records:
    by_participant[r.participant_id].append(r)
  strata: dict[tuple[str, Optional[int]], list[str]] = collections.defaultdict(list)
  for pid in sorted(by_participant):
    strata[participant_stratum(by_participant[pid])].append(pid)

  rng = np.random.default_rng(seed)
  assignment: dict[str, str] = {}
  for key in sorted(strata, key=lambda k: (k[0], str(k[1]))):
    pids = strata[key]
    order = rng.permutation(len(pids))
    cuts = np.round(np.cumsum(fractions) * len(pids)).astype(int)
    for rank, i in enumerate(order):
      assignment[pids[i]] = SPLITS[int(np.searchsorted(cuts, rank, side="right"))]
  out = {name: [] for name in SPLITS}
  for r in records:
    out[assignment[r.participant_id]].append(r)
  return out


# --- folds of the evaluation protocol (`coughjax.protocol`) ----------------------------


def fold_split(records: Sequence[Recording], folds: dict, fold: int, repeat: int,
               fractions: Sequence[float] = (0.7, 0.1, 0.2), seed: int = 0,
               require_all: bool = False) -> dict[str, list[Recording]]:
  """One fold of a folds file as train / val / test.

  The test part is every participant with a recording in fold `fold` of repeat
  `repeat`; the other participants are split into train and val in the proportions
  of `fractions[:2]` (its test fraction is ignored), stratified as `split` does.
  Recordings the file does not name (another source joined for pre-training, say)
  are never test; but records none of which is in the test part are an error: for
  pre-training (records = its data) that would be a pre-training on every test
  recording's audio, e.g. the same audio under another root than the folds'.

  Args:
    records: the recordings to split.
    folds: `coughjax.protocol.folds.read_folds`' result.
    fold: the test fold, in [0, k).
    repeat: the repeat, in [0, repeats).
    fractions: train / val / (ignored) fractions.
    seed: the seed of the train / val split.
    require_all: every recording must be in the file (downstream data must be the
      data the folds were drawn over).
  """
  if not 0 <= fold < folds["k"] or not 0 <= repeat < folds["repeats"]:
    raise ValueError(f"{folds['path']}: has {folds['k']} folds x {folds['repeats']} "
                     f"repeats; data.fold={fold}, data.fold_repeat={repeat} is outside")
  table, key = folds["recordings"], folds_lib.recording_key
  missing = [r.path for r in records if key(r.path) not in table]
  if missing and require_all:
    raise ValueError(f"{folds['path']}: {len(missing)} of {len(records)} recordings are "
                     f"not in this folds file (e.g. {missing[0]}); it was written for "
                     "other data: write the folds for these recordings")
  test_ids = {r.participant_id for r in records
              if table.get(key(r.path), [None] * (repeat + 1))[repeat] == fold}
  rest = [r for r in records if r.participant_id not in test_ids]
  train_val = np.asarray(fractions[:2], dtype=np.float64)
  if train_val.shape != (2,) or np.any(train_val < 0) or train_val.sum() <= 0:
    raise ValueError(f"split fractions {tuple(fractions)}: train and val fractions must "
                     "be non-negative with a positive sum")
  parts = split(rest, (*(train_val / train_val.sum()), 0.0), seed)
  parts["test"] = [r for r in records if r.participant_id in test_ids]
  if not parts["test"]:
    tested = [k for k, f in table.items() if f[repeat] == fold]
    raise ValueError(
        f"{folds['path']}: fold {fold} of repeat {repeat}: none of these {len(records)} "
        f"recordings (under {_root(r.path for r in records)}) is one of its "
        f"{len(tested)} test recordings (under {_root(tested)}), so none would be held "
        "out: give the data the folds were drawn over, at the same root")
  logging.info("fold %d of repeat %d (%s): %d train, %d val, %d test recordings%s", fold,
               repeat, folds["path"], len(parts["train"]), len(parts["val"]),
               len(parts["test"]),
               f"; {len(missing)} not in the file (never test)" if missing else "")
  return parts


def _root(paths: Iterable[str]) -> str:
  """The longest folder common to `paths` (how an error names where they are)."""
  prefix = os.path.commonprefix(list(paths))
  return prefix[:prefix.rfind("/") + 1] or "(no common folder)"


def from_config(records: Sequence[Recording], cfg, require_all: bool = False
                ) -> dict[str, list[Recording]]:
  """The split `config.data` asks for: `split` fractions drawn with `split_seed`, or
  with `folds` set, fold `fold` of repeat `fold_repeat` of that folds file as test
  (`fold_split`)."""
  if not cfg.get("folds"):
    return split(records, cfg.split, cfg.split_seed)
  return fold_split(records, folds_lib.read_folds(cfg.folds), cfg.fold, cfg.fold_repeat,
                    cfg.split, cfg.split_seed, require_all)
