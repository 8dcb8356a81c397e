"""Repeated stratified k-fold over groups, each fold's parts, and the folds file.

Items (recordings) belong to groups (participants); a group never straddles folds. A
group's stratum is the majority stratum of its items (ties: the first in input
order), e.g. (source, label); unlabelled items take part with stratum None.

scikit-learn's `StratifiedGroupKFold` balances singleton groups well, but it counts a
group's items in every class they carry (not one stratum per group), has no
guarantee for groups of unequal sizes, and wants integer classes; the dealing below
is short, states its guarantee and does not depend on the order of the items.

A study's folds are drawn once and kept in its folds file (`write_folds`,
`read_folds`): each recording's fold in every repeat, keyed by `recording_key`.
Every unit of the study reads its fold from there (`coughjax.data.splits`).
"""

from __future__ import annotations

import collections
import json
import os
import pathlib
import uuid
from typing import Hashable, Sequence

import numpy as np

from coughjax import files

FOLDS_VERSION = 1


def _group_table(groups: Sequence[str], strata: Sequence[Hashable]
                 ) -> tuple[np.ndarray, list[str], list[Hashable], np.ndarray]:
  """(group index of each item [n], group names (sorted), stratum of each group,
  items per group)."""
  if len(groups) != len(strata):
    raise ValueError(f"groups and strata must have one entry per item; got "
                     f"{len(groups)} groups and {len(strata)} strata")
  if not len(groups):
    raise ValueError("no items to split (groups and strata are empty)")
  for i, g in enumerate(groups):
    if not isinstance(g, str):
      raise ValueError(f"groups[{i}] = {g!r} is a {type(g).__name__}; group ids "
                       "(participant ids) must be strings")
  names = sorted(set(groups))
  index = {g: i for i, g in enumerate(names)}
  group_of = np.fromiter((index[g] for g in groups), dtype=np.int64, count=len(groups))
  counts = [collections.Counter() for _ in names]
  for i, (g, s) in enumerate(zip(group_of, strata)):
    try:
      counts[g][s] += 1
    except TypeError as e:
      raise ValueError(f"strata[{i}] = {s!r} is not hashable; pass e.g. a tuple") from e
  # most_common orders equal counts by first occurrence.
  group_stratum = [c.most_common(1)[0][0] for c in counts]
  return group_of, names, group_stratum, np.bincount(group_of, minlength=len(names))


def _cells(group_stratum: Sequence[Hashable]) -> list[np.ndarray]:
  """Group indices of each stratum (ascending), strata in a fixed order (by repr, so
  that None sorts with tuples and strings)."""
  members = collections.defaultdict(list)
  for g, s in enumerate(group_stratum):
    members[s].append(g)
  return [np.asarray(members[s], dtype=np.int64) for s in sorted(members, key=repr)]


def _check_seed(seed: int) -> None:
  if not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ValueError(f"seed must be a non-negative integer, got {seed!r}")


def assign(groups: Sequence[str], strata: Sequence[Hashable], *, k: int, repeats: int,
           seed: int) -> np.ndarray:
  """Fold index (0..k-1) of each item in each repeat of a stratified group k-fold.

  Per repeat, each stratum's groups are shuffled, then sorted by size (largest
  first, the shuffle breaking ties) and dealt one at a time to the fold holding the
  fewest of that stratum's items; ties go to the fold with the fewest items overall,
  then to a per-repeat random order of folds. So a fold's item count per stratum is
  within one group (largest group size) of the ideal 1/k share (within ±1 item when
  groups are single items), each stratum's leftovers go to the smallest folds (fold
  sizes within one item of each other for single-item groups), and every fold gets at
  least one group. The result depends on the seed and on which items form which groups and
  strata, not on the order of the items (except for majority ties).

  Args:
    groups: [n] group id (participant id) of each item.
    strata: [n] stratum of each item, any hashable (e.g. (source, label); None for
      unlabelled items, which are assigned too).
    k: number of folds, 2 <= k <= number of groups.
    repeats: number of repeats, each with its own independent shuffle.
    seed: non-negative integer; repeat r draws from np.random.default_rng([seed, r]).

  Returns:
    [repeats, n] int64 fold indices.
  """
  group_of, _, group_stratum, sizes = _group_table(groups, strata)
  if not isinstance(k, (int, np.integer)) or k < 2:
    raise ValueError(f"k (number of folds) must be an integer >= 2, got {k!r}")
  if k > len(sizes):
    raise ValueError(f"k = {k} folds but only {len(sizes)} groups: every fold needs a "
                     "group; lower k")
  if not isinstance(repeats, (int, np.integer)) or repeats < 1:
    raise ValueError(f"repeats must be an integer >= 1, got {repeats!r}")
  _check_seed(seed)
  cells = _cells(group_stratum)
  out = np.empty((repeats, len(group_of)), dtype=np.int64)
  for r in range(repeats):
    rng = np.random.default_rng([seed, r])
    fold_of_group = np.empty(len(sizes), dtype=np.int64)
    total = [0] * k
    priority = rng.permutation(k).tolist()
    for members in cells:
      order = members[rng.permutation(len(members))]
      order = order[np.argsort(-sizes[order], kind="stable")]
      load = [0] * k
      for g in order:
        f = min(range(k), key=lambda f: (load[f], total[f], priority[f]))
        fold_of_group[g] = f
        load[f] += sizes[g]
        total[f] += sizes[g]
    out[r] = fold_of_group[group_of]
  return out


def split(fold_of: np.ndarray, fold: int, *, val_fraction: float,
          strata: Sequence[Hashable], groups: Sequence[str], seed: int
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """One fold's (train, validation, test) item indices.

  The test part is the fold. Validation (for early stopping) takes whole groups
  from the other folds: per stratum, in a seeded shuffle, a group is taken when that
  brings the validation item count closer to val_fraction of the items seen so far
  (strata in a fixed order, the rounding carried from one stratum to the next). With
  single-item groups each stratum gets val_fraction of its items ±1, and the total is
  within 1 of val_fraction of the remaining items; a small stratum may get none. The
  rest is training.

  Args:
    fold_of: [n] fold index of each item in one repeat (a row of `assign`'s output).
    fold: the fold held out as the test part.
    val_fraction: fraction of the remaining items for validation, in [0, 1).
    strata: [n] stratum of each item, as given to `assign`.
    groups: [n] group id of each item, as given to `assign`.
    seed: non-negative integer; the draw is np.random.default_rng([seed, fold]), so
      pass a different seed per repeat (e.g. base_seed + repeat).

  Returns:
    (train_idx, val_idx, test_idx): ascending int64 index arrays that partition 0..n-1.
  """
  fold_of = np.asarray(fold_of)
  if fold_of.ndim != 1 or not np.issubdtype(fold_of.dtype, np.integer):
    raise ValueError(f"fold_of must be one repeat's integer fold indices [n] (a row of "
                     f"assign's output), got dtype {fold_of.dtype} and shape "
                     f"{fold_of.shape}")
  if len(groups) != len(fold_of):
    raise ValueError(f"fold_of has {len(fold_of)} items but groups has {len(groups)}")
  if not 0 <= val_fraction < 1:
    raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
  test = fold_of == fold
  if not test.any():
    raise ValueError(f"fold {fold} holds no items (folds present: "
                     f"{sorted(set(fold_of.tolist()))})")
  _check_seed(seed)
  group_of, names, group_stratum, sizes = _group_table(groups, strata)
  in_test = np.bincount(group_of, weights=test, minlength=len(sizes))
  straddling = np.flatnonzero((in_test > 0) & (in_test < sizes))
  if len(straddling):
    raise ValueError(f"group {names[straddling[0]]!r} has items inside and outside fold "
                     f"{fold} ({len(straddling)} such groups); fold_of must come from "
                     "assign with the same groups")
  rng = np.random.default_rng([seed, fold])
  in_val = np.zeros(len(sizes), dtype=bool)
  wanted, taken = 0.0, 0
  for members in _cells(group_stratum):
    members = members[in_test[members] == 0]
    members = members[rng.permutation(len(members))]
    wanted += val_fraction * sizes[members].sum()
    for g in members:
      if abs(taken + sizes[g] - wanted) < abs(taken - wanted):
        in_val[g] = True
        taken += sizes[g]
  val = in_val[group_of]
  return np.flatnonzero(~test & ~val), np.flatnonzero(val), np.flatnonzero(test)


# --- the folds file -----------------------------------------------------------------


def recording_key(path: str) -> str:
  """How a folds file names a recording: its real absolute path (a `scheme://` path,
  such as a synthetic recording's, as it is), so that a relative or symlinked root
  names the same file."""
  return path if "://" in path else os.path.realpath(path)


def write_folds(path: str | os.PathLike, keys: Sequence[str], fold_of: np.ndarray, *,
                seed: int, description: str = "") -> bool:
  """Writes a folds file, whole and once: for each recording, its fold per repeat.

  The file is written under a temporary name, then linked to `path` only if no file
  is there (`os.link` fails on an existing name): of several processes writing the
  folds of one study at once, exactly one writes them, and none replaces them.

  Args:
    path: the JSON file to write.
    keys: [n] `recording_key` of each recording the folds were assigned over.
    fold_of: [repeats, n] fold index of each recording per repeat.
    seed: the seed the assignment was drawn with (recorded).
    description: what the recordings are (recorded).

  Returns:
    Whether this call wrote the file (False: it was there already).
  """
  fold_of = np.asarray(fold_of)
  if fold_of.ndim != 2 or fold_of.shape[1] != len(keys):
    raise ValueError(f"fold_of must be [repeats, {len(keys)}], got {fold_of.shape}")
  table = {k: [int(f) for f in fold_of[:, i]] for i, k in enumerate(keys)}
  blob = {"version": FOLDS_VERSION, "k": int(fold_of.max()) + 1,
          "repeats": int(fold_of.shape[0]), "seed": seed, "description": description,
          "recordings": table}
  path = pathlib.Path(path)
  tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
  files.atomic_write(tmp, lambda f: f.write((json.dumps(blob, indent=1) + "\n").encode()))
  try:
    os.link(tmp, path)
    return True
  except FileExistsError:
    return False
  finally:
    os.unlink(tmp)


def read_folds(path: str | os.PathLike) -> dict:
  """A folds file written by `write_folds`, checked: {"path", "k", "repeats",
  "recordings": {key: [fold per repeat]}}."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{path}: folds file not found (data.folds)")
  fix = ("; a study's folds file can be deleted and drawn again (the same data, k, "
         "repeats and seed draw the same folds)")
  try:
    blob = files.read_json(path, "folds file")
  except ValueError as e:
    raise ValueError(f"{e}{fix}") from None
  try:
    table = blob["recordings"]
    k, repeats = int(blob["k"]), int(blob["repeats"])
    if not isinstance(table, dict):
      raise TypeError("'recordings' is not an object")
  except (ValueError, KeyError, TypeError) as e:
    raise ValueError(f"{path}: not a coughjax folds file ({e!r}){fix}") from None
  if blob.get("version") != FOLDS_VERSION:
    raise ValueError(f"{path}: folds file version {blob.get('version')!r}, expected "
                     f"{FOLDS_VERSION}")
  return {"path": str(path), "k": k, "repeats": repeats, "recordings": table}
