"""Participant-disjoint, label-stratified, seeded train/validation/test splits."""

from __future__ import annotations

import collections
from typing import Optional, Sequence

import numpy as np

from coughjax.data.manifest import Recording

SPLITS = ("train", "val", "test")


def participant_label(records: Sequence[Recording]) -> Optional[int]:
  """A participant's stratum: 1 if any recording is positive, 0 if all are negative,
  None if unlabelled."""
  labels = [r.label for r in records if r.label is not None]
  return max(labels) if labels else None


def split(records: Sequence[Recording], fractions: Sequence[float] = (0.7, 0.1, 0.2),
          seed: int = 0) -> dict[str, list[Recording]]:
  """Splits recordings by participant, stratified by participant label.

  Within each label stratum participants are shuffled (seeded) and cut at the
  cumulative fractions, rounding so the counts add up; every recording goes where
  its participant goes. Returns {"train": [...], "val": [...], "test": [...]}.
  """
  fractions = np.asarray(fractions, dtype=np.float64)
  if fractions.shape != (3,) or np.any(fractions < 0) or not np.isclose(fractions.sum(), 1):
    raise ValueError(f"split fractions must be 3 non-negative numbers summing to 1, "
                     f"got {tuple(fractions)}")
  by_participant: dict[str, list[Recording]] = collections.defaultdict(list)
  for r in records:
    by_participant[r.participant_id].append(r)
  strata: dict[Optional[int], list[str]] = collections.defaultdict(list)
  for pid in sorted(by_participant):
    strata[participant_label(by_participant[pid])].append(pid)

  rng = np.random.default_rng(seed)
  assignment: dict[str, str] = {}
  for label in sorted(strata, key=str):
    pids = strata[label]
    order = rng.permutation(len(pids))
    cuts = np.round(np.cumsum(fractions) * len(pids)).astype(int)
    for rank, i in enumerate(order):
      assignment[pids[i]] = SPLITS[int(np.searchsorted(cuts, rank, side="right"))]
  out = {name: [] for name in SPLITS}
  for r in records:
    out[assignment[r.participant_id]].append(r)
  return out
