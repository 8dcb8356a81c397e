"""Participant-disjoint, label-stratified, seeded train/validation/test splits."""

from __future__ import annotations

import collections
from typing import Optional, Sequence

import numpy as np

from coughjax.data.manifest import Recording

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
