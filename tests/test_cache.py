"""The cache command: listing, and pruning orphans, old entries and all, never what
a process uses."""

import gc
import os
import pathlib
import subprocess
import sys
import time

import numpy as np
import pytest

from configs import downstream as downstream_configs
from coughjax import cache as cache_lib
from coughjax import data
from coughjax.data import features
from coughjax.data import packed
from tests.conftest import REPO

HOURS = 3600


def _cli(*args):
  return subprocess.run([sys.executable, "-m", "coughjax.cache", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=300, check=False)


def _age(path, seconds):
  t = time.time() - seconds
  os.utime(path, (t, t))


def _stores():
  config = downstream_configs.get_config("transformer,runlocal")
  return data.load_splits(config, ("train", "val", "test"), labelled=True)


def test_age_parsing():
  assert cache_lib.parse_age("30d") == 30 * 86400
  assert cache_lib.parse_age("1.5h") == 1.5 * HOURS
  assert cache_lib.parse_age("2w") == 14 * 86400
  with pytest.raises(ValueError, match="'30 days'.*s, m, h, d or w"):
    cache_lib.parse_age("30 days")


def test_list_and_prune_keep_what_is_in_use():
  root = features.cache_root()
  stores = _stores()
  folder = packed.directory()
  (live,) = [p.name[:-len(packed.DATA_SUFFIX)] for p in folder.glob("*.f32")]
  # Orphans: a pack of the old format, data never indexed, a writer's leftover; and
  # a temporary being written now, which no prune may touch.
  np.savez(folder / f"old{packed.INDEX_SUFFIX}", offsets=np.zeros(1), lengths=np.ones(1))
  (folder / f"old{packed.DATA_SUFFIX}").write_bytes(b"\0" * 256)
  (folder / f"half{packed.DATA_SUFFIX}").write_bytes(b"\0" * 256)
  _age(folder / f"half{packed.DATA_SUFFIX}", 2 * HOURS)
  (folder / ".tmp-crashed").write_bytes(b"x")
  _age(folder / ".tmp-crashed", 2 * HOURS)
  (folder / ".tmp-writing").write_bytes(b"x")

  found = {e.name: e for e in cache_lib.entries(root)}
  pack = found[live]
  assert pack.kind == "pack" and not pack.orphan and pack.in_use()
  assert "synthetic, from the feature cache: 48 recordings" in pack.about
  (feature_set,) = [e for e in found.values() if e.kind == "features"]
  assert feature_set.name == pack.params_key and "1 pack(s) made from it" in feature_set.about
  assert "48 recordings (0 unusable)" in feature_set.about
  assert "older pack format" in found["old"].orphan
  assert "data without index" in found["half"].orphan

  proc = _cli("list")
  assert proc.returncode == 0, proc.stderr
  assert live in proc.stdout and "| pack |" in proc.stdout and "| yes |" in proc.stdout

  dry = cache_lib.prune(root, everything=True, dry_run=True)
  assert all(done in ("would remove", "kept") for _, _, done in dry)
  assert (folder / f"old{packed.INDEX_SUFFIX}").exists()

  # By default: the orphans only.
  actions = {e.name.split("/")[-1]: (why, done) for e, why, done in cache_lib.prune(root)}
  assert set(actions) == {"old", "half", ".tmp-crashed"}, actions
  assert all(done == "removed" for _, done in actions.values())
  assert sorted(p.name for p in folder.iterdir()) == sorted(
      [f"{live}{packed.DATA_SUFFIX}", f"{live}{packed.INDEX_SUFFIX}", ".tmp-writing"])

  # Everything: but not the pack this process has open (nor from another process).
  proc = _cli("prune", "--all")
  assert proc.returncode == 0, proc.stderr
  assert f"kept pack {live}" in proc.stdout and "a running process uses it" in proc.stdout
  assert (folder / f"{live}{packed.DATA_SUFFIX}").exists()
  assert (folder / ".tmp-writing").exists()

  # Once the stores are gone, the pack goes; the next run rebuilds it.
  train = stores["train"].records
  del stores, found, pack
  gc.collect()
  actions = cache_lib.prune(root, everything=True)
  assert any(e.name == live and done == "removed" for e, _, done in actions)
  assert not (folder / f"{live}{packed.DATA_SUFFIX}").exists()
  assert _stores()["train"].records == train


def test_prune_older_than():
  root = features.cache_root()
  stores = _stores()
  (data_file,) = packed.directory().glob("*.f32")
  key = data_file.name[:-len(packed.DATA_SUFFIX)]
  del stores
  gc.collect()
  assert cache_lib.prune(root, older_than=cache_lib.parse_age("30d")) == []
  _age(packed.paths(key)[1], 40 * 86400)  # last opened 40 days ago
  actions = cache_lib.prune(root, older_than=cache_lib.parse_age("30d"))
  assert [(e.name, done) for e, _, done in actions] == [(key, "removed")]
  assert "unused for 40.0d" in actions[0][1]
  assert not data_file.exists()
  # A pack whose data does not match its index (e.g. a truncated copy) is an orphan.
  del actions
  _stores()
  gc.collect()
  with open(data_file, "r+b") as f:
    f.truncate(1024)
  (action,) = cache_lib.prune(root)
  assert action[0].name == key and "its index says" in action[1]
  proc = _cli("prune", "--older-than=soon")
  assert proc.returncode != 0 and "--older-than" in proc.stderr


def test_a_cache_folder_that_cannot_be_used_is_named(tmp_path, monkeypatch):
  (tmp_path / "file").write_text("")
  monkeypatch.setenv("COUGHJAX_CACHE", str(tmp_path / "file"))
  with pytest.raises(features.CacheError, match=r"^COUGHJAX_CACHE=\S+/file is a file, not a "
                     r"folder; set COUGHJAX_CACHE to a folder"):
    _stores()
  monkeypatch.setenv("COUGHJAX_CACHE", str(tmp_path / "file" / "cache"))
  with pytest.raises(features.CacheError, match=r"^COUGHJAX_CACHE=\S+/file/cache: \S+/file "
                     "is a file, not a folder"):
    _stores()
  # A folder that cannot be written (chmod does not stop root, who runs some CI: then
  # a folder of /sys, which root cannot write either).
  if os.getuid():
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
  else:
    locked = pathlib.Path("/sys/coughjax-test-cache")
    try:
      locked.mkdir()
      locked.rmdir()
      pytest.skip("no unwritable folder to test with")
    except OSError:
      pass
  monkeypatch.setenv("COUGHJAX_CACHE", str(locked))
  with pytest.raises(features.CacheError, match=rf"^COUGHJAX_CACHE={locked}: cannot write "
                     r"there \(.*\); set COUGHJAX_CACHE to a folder you can write"):
    _stores()


def test_hashes_and_dedup_being_written_are_listed_and_never_pruned(tmp_path):
  root = features.cache_root()
  wav = tmp_path / "a.wav"
  wav.write_bytes(b"RIFF" + bytes(64))
  writer = features.FeatureCache()
  writer.content_key(data.manifest.Recording(str(wav), "p", "cough", None))  # a hash
  (writer.hold(features.DEDUP) / "ab").mkdir(parents=True)
  (root / features.DEDUP / "ab" / "abc.json").write_text("{}")
  found = {e.kind: e for e in cache_lib.entries(root)}
  assert "sha256 of 1 audio files" in found["hashes"].about
  assert "near-duplicate groups of 1 sets" in found["dedup"].about
  assert found["hashes"].in_use() and found["dedup"].in_use()
  proc = _cli("prune", "--all")  # another process, while this one may still write
  assert proc.returncode == 0, proc.stderr
  assert "kept hashes" in proc.stdout and "kept dedup" in proc.stdout
  assert (root / "hashes").is_dir() and (root / "dedup" / "ab" / "abc.json").exists()
  del writer
  gc.collect()
  proc = _cli("prune", "--all")
  assert "removed hashes" in proc.stdout and "removed dedup" in proc.stdout, proc.stdout
  assert not (root / "hashes").exists() and not (root / "dedup").exists()
  # A writer that starts during or after a prune recreates the folder.
  writer = features.FeatureCache()
  writer.content_key(data.manifest.Recording(str(wav), "p", "cough", None))
  assert len(list((root / "hashes").glob("*/*.json"))) == 1


def _one_pack():
  stores = _stores()
  (data_file,) = packed.directory().glob("*" + packed.DATA_SUFFIX)
  records = stores["train"].records
  del stores
  gc.collect()
  return data_file, packed.paths(data_file.name[:-len(packed.DATA_SUFFIX)])[1], records


def test_a_damaged_pack_is_named_with_what_to_do():
  data_file, index, records = _one_pack()
  index.write_bytes(index.read_bytes()[:100])  # a truncated index: BadZipFile
  with pytest.raises(packed.DamagedPackError, match=(
      rf"^{index}: damaged pack index \(BadZipFile: .*\); run `python -m coughjax.cache "
      r"prune` to remove it")):
    _stores()
  proc = _cli("prune")
  assert proc.returncode == 0 and "orphan: unreadable index" in proc.stdout, proc.stdout
  assert _stores()["train"].records == records  # rebuilt
  gc.collect()

  n = data_file.stat().st_size // 4
  np.full(n, np.nan, "<f4").tofile(data_file)  # the right size, all NaN
  with pytest.raises(packed.DamagedPackError, match=(
      rf"^{data_file}: NaN or inf features in row\(s\) \[0, 1, 2, 3, 4\] \.\.\. of \d+; the "
      r"pack is damaged: run `python -m coughjax.cache prune`")):
    _stores()
  (action,) = cache_lib.prune()
  assert "NaN or inf features in" in action[1] and action[2] == "removed"
  assert _stores()["train"].records == records
  with pytest.raises(ValueError, match="array 1 holds NaN"):
    packed.write_pack("nan", [np.zeros((96, 64)), np.full((96, 64), np.nan)], 96)
