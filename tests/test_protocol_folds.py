"""coughjax.protocol.folds: groups kept whole, strata balanced, seeded, splits, and
the folds file."""

import collections

import numpy as np
import pytest

from coughjax.protocol import folds


def _data(seed, n_groups=120, max_size=1):
  """Groups of 1..max_size items; strata (source, label) with some unlabelled (None
  label), one stratum per group."""
  rng = np.random.default_rng(seed)
  groups, strata = [], []
  for g in range(n_groups):
    source = str(rng.choice(["a", "b", "c"], p=[0.5, 0.3, 0.2]))
    label = rng.choice([0, 1, None], p=[0.6, 0.3, 0.1])
    size = int(rng.integers(1, max_size + 1))
    groups += [f"p{g:03d}"] * size
    strata += [(source, label)] * size
  order = rng.permutation(len(groups))   # items of a group need not be adjacent
  return [groups[i] for i in order], [strata[i] for i in order]


def _counts(fold_of, strata, k):
  """{stratum: items per fold [k]}."""
  out = collections.defaultdict(lambda: np.zeros(k, int))
  for f, s in zip(fold_of, strata):
    out[s][f] += 1
  return out


@pytest.mark.parametrize("max_size", [1, 4])
def test_groups_whole_strata_balanced(max_size):
  groups, strata = _data(0, max_size=max_size)
  k = 5
  fold_of = folds.assign(groups, strata, k=k, repeats=3, seed=0)
  assert fold_of.shape == (3, len(groups)) and fold_of.dtype == np.int64
  for row in fold_of:
    per_group = collections.defaultdict(set)
    for g, f in zip(groups, row):
      per_group[g].add(int(f))
    assert all(len(f) == 1 for f in per_group.values())       # never straddle
    assert set(row.tolist()) == set(range(k))
    for stratum, counts in _counts(row, strata, k).items():
      ideal = counts.sum() / k
      # within one item (singletons), within one group's size otherwise
      assert np.all(np.abs(counts - ideal) < max_size), (stratum, counts)
    sizes = np.bincount(row, minlength=k)
    assert sizes.max() - sizes.min() <= max_size, sizes


def test_majority_stratum_decides():
  """Groups of three items whose strata disagree count in their majority stratum:
  per fold, the number of groups of each majority stratum is within ±1 of ideal."""
  rng = np.random.default_rng(1)
  groups, strata, majority = [], [], {}
  for g in range(90):
    major, minor = rng.choice(["x", "y", "z"], size=2, replace=False)
    items = [major, major, minor]
    groups += [f"g{g}"] * 3
    strata += items
    majority[f"g{g}"] = major
  fold_of = folds.assign(groups, strata, k=4, repeats=2, seed=3)
  for row in fold_of:
    fold_of_group = dict(zip(groups, row.tolist()))
    counts = _counts([fold_of_group[g] for g in majority], list(majority.values()), 4)
    for counts_s in counts.values():
      assert np.all(np.abs(counts_s - counts_s.sum() / 4) < 1), counts


def test_seeded_repeats_differ_and_item_order_does_not_matter():
  groups, strata = _data(2, max_size=3)
  a = folds.assign(groups, strata, k=4, repeats=3, seed=11)
  np.testing.assert_array_equal(a, folds.assign(groups, strata, k=4, repeats=3, seed=11))
  assert not np.array_equal(a, folds.assign(groups, strata, k=4, repeats=3, seed=12))
  assert not np.array_equal(a[0], a[1]) and not np.array_equal(a[1], a[2])
  # More repeats extend, never change, the earlier ones.
  np.testing.assert_array_equal(a[:2], folds.assign(groups, strata, k=4, repeats=2,
                                                    seed=11))
  perm = np.random.default_rng(0).permutation(len(groups))
  b = folds.assign([groups[i] for i in perm], [strata[i] for i in perm], k=4, repeats=3,
                   seed=11)
  np.testing.assert_array_equal(b, a[:, perm])


def test_assign_errors():
  groups, strata = ["a", "b", "c"], [0, 1, 0]
  with pytest.raises(ValueError, match=">= 2"):
    folds.assign(groups, strata, k=1, repeats=1, seed=0)
  with pytest.raises(ValueError, match="only 3 groups"):
    folds.assign(groups, strata, k=4, repeats=1, seed=0)
  with pytest.raises(ValueError, match="3 groups and 2 strata"):
    folds.assign(groups, strata[:2], k=2, repeats=1, seed=0)
  with pytest.raises(ValueError, match="must be strings"):
    folds.assign([1, 2, 3], strata, k=2, repeats=1, seed=0)
  with pytest.raises(ValueError, match="not hashable"):
    folds.assign(groups, [["a", 0], ["b", 1], ["a", 0]], k=2, repeats=1, seed=0)
  with pytest.raises(ValueError, match="repeats"):
    folds.assign(groups, strata, k=2, repeats=0, seed=0)
  with pytest.raises(ValueError, match="seed"):
    folds.assign(groups, strata, k=2, repeats=1, seed=-1)
  # k equal to the number of groups: one group per fold.
  assert sorted(folds.assign(groups, strata, k=3, repeats=1, seed=0)[0]) == [0, 1, 2]


def test_split_parts():
  groups, strata = _data(3)     # single-item groups
  k = 5
  row = folds.assign(groups, strata, k=k, repeats=1, seed=0)[0]
  for fold in range(k):
    train, val, test = folds.split(row, fold, val_fraction=0.2, strata=strata,
                                   groups=groups, seed=5)
    np.testing.assert_array_equal(test, np.flatnonzero(row == fold))
    np.testing.assert_array_equal(np.sort(np.r_[train, val, test]),
                                  np.arange(len(groups)))
    rest = np.r_[train, val]
    assert abs(len(val) - 0.2 * len(rest)) <= 1
    val_counts = collections.Counter(strata[i] for i in val)
    for stratum, n in collections.Counter(strata[i] for i in rest).items():
      assert abs(val_counts[stratum] - 0.2 * n) <= 1, (stratum, val_counts[stratum], n)
  again = folds.split(row, 2, val_fraction=0.2, strata=strata, groups=groups, seed=5)
  other = folds.split(row, 2, val_fraction=0.2, strata=strata, groups=groups, seed=6)
  np.testing.assert_array_equal(again[1], folds.split(
      row, 2, val_fraction=0.2, strata=strata, groups=groups, seed=5)[1])
  assert not np.array_equal(again[1], other[1])
  assert len(folds.split(row, 0, val_fraction=0.0, strata=strata, groups=groups,
                         seed=0)[1]) == 0


def test_split_keeps_groups_whole():
  groups, strata = _data(4, max_size=4)
  row = folds.assign(groups, strata, k=3, repeats=1, seed=1)[0]
  train, val, test = folds.split(row, 1, val_fraction=0.25, strata=strata, groups=groups,
                                 seed=0)
  part = {}
  for name, idx in (("train", train), ("val", val), ("test", test)):
    for i in idx:
      assert part.setdefault(groups[i], name) == name
  rest = len(train) + len(val)
  assert abs(len(val) - 0.25 * rest) <= 4     # within one group's size


def test_split_errors():
  groups, strata = ["a", "a", "b", "c"], [0, 0, 1, 0]
  with pytest.raises(ValueError, match="'a' has items inside and outside fold 0"):
    folds.split(np.array([0, 1, 1, 0]), 0, val_fraction=0.1, strata=strata,
                groups=groups, seed=0)
  with pytest.raises(ValueError, match="fold 2 holds no items"):
    folds.split(np.array([0, 0, 1, 1]), 2, val_fraction=0.1, strata=strata,
                groups=groups, seed=0)
  with pytest.raises(ValueError, match="one repeat"):
    folds.split(np.zeros((2, 4), int), 0, val_fraction=0.1, strata=strata, groups=groups,
                seed=0)
  with pytest.raises(ValueError, match=r"\[0, 1\)"):
    folds.split(np.array([0, 0, 1, 1]), 0, val_fraction=1.0, strata=strata,
                groups=groups, seed=0)


def test_the_folds_file_is_written_once_and_read_back(tmp_path):
  path, keys = tmp_path / "folds.json", ["a", "b", "c", "d"]
  fold_of = folds.assign(["p1", "p1", "p2", "p3"], [0, 0, 1, 1], k=2, repeats=3, seed=0)
  assert folds.write_folds(path, keys, fold_of, seed=0, description="four")
  first = path.read_bytes()
  # Another writer (another command on the workdir) neither replaces nor fails.
  assert not folds.write_folds(path, keys, 1 - fold_of, seed=1)
  assert path.read_bytes() == first and sorted(p.name for p in tmp_path.iterdir()) == [
      "folds.json"]
  read = folds.read_folds(path)
  assert (read["k"], read["repeats"]) == (2, 3)
  assert read["recordings"] == {k: fold_of[:, i].tolist() for i, k in enumerate(keys)}
  with pytest.raises(ValueError, match=r"fold_of must be \[repeats, 3\]"):
    folds.write_folds(tmp_path / "x.json", keys[:3], fold_of, seed=0)
  path.write_bytes(first[:40])  # truncated
  with pytest.raises(ValueError, match="folds.json: folds file: not valid JSON .*can be "
                     "deleted and drawn again"):
    folds.read_folds(path)
