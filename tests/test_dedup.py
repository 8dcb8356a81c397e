"""Near-duplicate groups: re-encoded copies share a participant; scores; the cache."""

import collections
import json
import re
import subprocess
import sys
import uuid

import numpy as np
import pytest
import soundfile as sf
import soxr

import conftest
from configs import common
from coughjax import data
from coughjax.data import dedup

# (source, covid19) -> real files of the slice (distinct contents, > 1.6 s).
SLICE = {("telegram", False): 5, ("telegram", True): 2, ("call-center", True): 2,
         ("call-center", False): 2}
# Copies: (index of the original in the slice, new rate or None, gain, seconds trimmed
# at the start, at the end, soundfile format, subtype, flip the label). All are
# written under new `raw/<uuid>.mp3` names, as the release names its files.
COPIES = [
    (0, 16000, 1.0, 0.0, 0.0, "WAV", "PCM_16", False),            # resampled
    (0, None, 0.5, 0.3, 0.2, "OGG", "VORBIS", False),             # re-gained, trimmed
    (1, 44100, 0.7, 0.5, 0.0, "MP3", "MPEG_LAYER_III", True),     # all, label flipped
    (5, None, 1.3, 0.0, 0.5, "FLAC", "PCM_16", False),            # telegram positive
    (7, 16000, 0.5, 0.25, 0.25, "MP3", "MPEG_LAYER_III", False),  # call centre
]


@pytest.fixture(scope="module")
def release_with_copies(covid19_cough, tmp_path_factory):
  """A copy of the release layout: real recordings plus re-encoded copies of some of
  them. Returns (root, {copy file name: original file name}, metadata)."""
  root = tmp_path_factory.mktemp("covid19_cough")
  meta = conftest.copy_covid19_cough_slice(
      covid19_cough, root, SLICE, lambda r: (r["source"], r["covid19"]), min_bytes=13000)
  original_of = {}
  for k, (i, rate, gain, start, end, fmt, subtype, flip) in enumerate(COPIES):
    rec = meta[i]
    x, sr = sf.read(root / "raw" / rec["filename"], always_2d=True)
    x = x[int(start * sr):len(x) - int(end * sr)] * gain
    if rate:
      x, sr = soxr.resample(x, sr, rate), rate
    name = f"{uuid.UUID(int=k)}.mp3"
    sf.write(root / "raw" / name, np.clip(x, -1, 1), sr, format=fmt, subtype=subtype)
    meta.append(dict(rec, filename=name, covid19=rec["covid19"] != flip))
    original_of[name] = rec["filename"]
  (root / "metadata.json").write_text(json.dumps(meta))
  return root, original_of, meta


def _cfg(root, **kw):
  cfg = common.get_base_config().data
  cfg.update(dict(name="covid19_cough", root=str(root), sounds=()), **kw)
  return cfg


def test_copies_share_their_originals_participant(release_with_copies, caplog):
  root, original_of, meta = release_with_copies
  with caplog.at_level("WARNING"):
    recs = data.get_manifest(_cfg(root))  # data.dedup="auto": on for covid19_cough
  pid = {r.path.rsplit("/", 1)[1]: r.participant_id for r in recs}
  assert len(recs) == len(meta)
  for copy, original in original_of.items():
    assert pid[copy] == pid[original] == original[:-4], copy
  # Nothing else is grouped: every other recording is a participant of its own.
  groups = collections.Counter(pid.values())
  assert sorted(groups.values(), reverse=True) == [3, 2, 2, 2] + [1] * (len(meta) - 9)
  label = {r.path.rsplit("/", 1)[1]: r.label for r in recs}
  flipped = meta[COPIES[2][0]]["filename"]
  assert label[flipped] is None and all(
      label[c] is None for c, o in original_of.items() if o == flipped)
  assert all(label[m["filename"]] == int(m["covid19"])
             for m in meta if pid[m["filename"]] != pid[flipped])
  assert ("4 groups of near-duplicate recordings (9 recordings" in caplog.text
          and f"{len(meta)} -> {len(meta) - 5} participants; 1 merged participants had "
              "conflicting labels (2 labelled recordings left unlabelled)" in caplog.text)

  # Off: every recording is its own participant, labels as in the metadata.
  off = data.get_manifest(_cfg(root, dedup=False))
  assert len({r.participant_id for r in off}) == len(meta)
  assert [r.label for r in off] == [int(m["covid19"]) for m in meta]


def test_groups_keep_the_source_prefix_of_several_sources(release_with_copies):
  root, original_of, _ = release_with_copies
  cfg = _cfg("", name="synthetic+covid19_cough", roots=f"covid19_cough={root}",
             num_participants=3, sounds=("cough-heavy",))
  recs = data.get_manifest(cfg)
  pid = {r.path.rsplit("/", 1)[1]: r.participant_id for r in recs}
  for copy, original in original_of.items():
    assert pid[copy] == pid[original] == f"covid19_cough:{original[:-4]}"
  assert sum(r.participant_id.startswith("synthetic:") for r in recs) == 3


def test_second_run_reads_the_cache(release_with_copies, monkeypatch, caplog):
  root, _, _ = release_with_copies
  first = data.get_manifest(_cfg(root, source_filter="telegram"))

  def fail(*args, **kwargs):
    raise AssertionError("the near-duplicate search ran again")

  monkeypatch.setattr(dedup, "search", fail)
  with caplog.at_level("INFO"):
    assert data.get_manifest(_cfg(root, source_filter="telegram")) == first
  assert "near-duplicate groups read from" in caplog.text
  with pytest.raises(AssertionError, match="ran again"):  # another set of files
    data.get_manifest(_cfg(root, source_filter="call-center"))


def test_dedup_setting():
  cfg = common.get_base_config().data
  assert cfg.dedup == "auto" and not data.dedup_enabled(cfg)  # synthetic
  cfg.name = "covid19_cough"
  assert data.dedup_enabled(cfg)
  for value, on in ((False, False), ("false", False), (True, True), ("True", True)):
    cfg.dedup = value
    assert data.dedup_enabled(cfg) is on
  cfg.dedup = "yes"
  with pytest.raises(ValueError, match="data.dedup must be 'auto', True or False, got"):
    data.dedup_enabled(cfg)
  cfg.update(dict(name="tfds", dedup=True))
  with pytest.raises(ValueError, match="'tfds' holds features, not audio"):
    data.dedup_enabled(cfg)


def _brute_best_lag(a, b, max_lag):
  """The best-lag correlation by its definition, one lag at a time."""
  best, best_lag = -np.inf, 0
  if abs(len(a) - len(b)) > 2 * max_lag:
    return best, best_lag
  for lag in range(-max_lag, max_lag + 1):
    lo, hi = max(0, lag), min(len(a), len(b) + lag)
    if 2 * (hi - lo) < max(len(a), len(b)):
      continue
    score = np.corrcoef(a[lo:hi].ravel(), b[lo - lag:hi - lag].ravel())[0, 1]
    if score > best:
      best, best_lag = score, lag
  return best, best_lag


def test_best_lag_matches_its_definition():
  rng = np.random.default_rng(0)
  base = rng.standard_normal((70, 6))
  a = [base, rng.standard_normal((40, 6)), rng.standard_normal((9, 6))]
  b = [base[7:] * 3 + 1, base[:-5], rng.standard_normal((60, 6)),
       rng.standard_normal((12, 6)), rng.standard_normal((30, 6))]
  score, lag = dedup.best_lag(a, b, 10)
  for r, x in enumerate(a):
    for c, y in enumerate(b):
      want, want_lag = _brute_best_lag(x, y, 10)
      if np.isinf(want):
        assert np.isneginf(score[r, c]), (r, c)
      else:
        np.testing.assert_allclose(score[r, c], want, atol=1e-5)
        assert lag[r, c] == want_lag, (r, c)
  assert score[0, 0] == pytest.approx(1.0, abs=1e-5) and lag[0, 0] == 7  # a[t] = b[t - 7]
  pairs = dedup.all_pairs(a + b, 10, -1.0)
  assert {(i, j) for i, j, _, _ in pairs} == {
      (i, j) for i in range(8) for j in range(i + 1, 8)
      if np.isfinite(_brute_best_lag((a + b)[i], (a + b)[j], 10)[0])}
  for i, j, s, l in pairs:
    assert (s, l) == pytest.approx(_brute_best_lag((a + b)[i], (a + b)[j], 10), abs=1e-5)


def test_fingerprint_ignores_gain_and_keeps_the_telephone_band():
  rng = np.random.default_rng(1)
  logmel = rng.standard_normal((50, 64)) - 10
  fine, coarse = dedup.fingerprint(logmel)
  assert fine.shape == (50, 48) and coarse.shape == (12, 24)  # bands below 4 kHz
  np.testing.assert_allclose(dedup.fingerprint(logmel + 2.5)[0], fine, atol=1e-9)
  np.testing.assert_allclose(fine.mean(0), 0, atol=1e-9)
  np.testing.assert_allclose(fine.mean(1), 0, atol=1e-9)


def test_benchmark_quick_finds_what_the_exhaustive_scoring_finds(covid19_cough):
  """`benchmarks/dedup.py --quick`: every 16th recording of the release, 7 copies."""
  proc = subprocess.run(
      [sys.executable, str(conftest.REPO / "benchmarks" / "dedup.py"), "--quick",
       f"--data={covid19_cough}"], cwd=conftest.REPO, capture_output=True, text=True,
      timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = proc.stdout
  assert "same copies found: True" in out and "| unrelated, Telegram |" in out
  assert out.count("| copy made here: ") == 7  # one row per kind of copy
  lowest, highest = re.search(r"margin: lowest copy ([\d.]+) - highest unrelated "
                              r"([\d.]+)", out).groups()
  assert float(lowest) >= dedup.Params().threshold > float(highest)

