"""covid19_cough source: counts, filters, identical files, errors, real MP3, splits."""

import collections
import json
import os
import shutil

import ml_collections
import numpy as np
import pytest
import soundfile as sf

import conftest
from configs import common
from configs import downstream as downstream_configs
from coughjax import data
from coughjax.data import covid19_cough
from coughjax.data import features
from coughjax.data import manifest
from coughjax.data import splits
from coughjax.data import synthetic
from coughjax.protocol import folds as folds_lib

# (source, covid19, verified) -> how many real files the small copy takes.
SLICE = {("call-center", True, True): 4, ("call-center", True, False): 2,
         ("call-center", False, None): 3, ("telegram", True, False): 3,
         ("telegram", False, False): 4}
# The two release files shorter than the 0.5 s minimum (0.481 s, 0.406 s).
SHORT = ("2fc9f5f0-0349-4f85-94ca-a200084f89da.mp3",
         "a03f77f1-5544-4b5a-ac0c-13b78ab55034.mp3")


def _cfg(root, **kw):
  cfg = common.get_base_config().data
  cfg.update(dict(name="covid19_cough", root=str(root), sounds=()), **kw)
  return cfg


@pytest.fixture(scope="module")
def small_copy(covid19_cough, tmp_path_factory):
  """18 real recordings in the release layout: SLICE's files (distinct contents)
  plus the two short ones, with their own records."""
  root = tmp_path_factory.mktemp("covid19_cough")
  kept = conftest.copy_covid19_cough_slice(
      covid19_cough, root, SLICE, lambda r: (r["source"], r["covid19"], r.get("verified")),
      always=SHORT)
  (root / "metadata.json").write_text(json.dumps(kept))
  return root, kept


def _expected(records, keep=lambda r: True):
  return collections.Counter((r["source"], int(r["covid19"])) for r in records if keep(r))


def test_counts_filters_and_labels(small_copy):
  root, meta = small_copy
  recs = data.get_manifest(_cfg(root))
  assert collections.Counter((r.stratum, r.label) for r in recs) == _expected(meta)
  assert len(recs) == 18 and {r.sound for r in recs} == {"cough"}
  # Each recording is its own participant, named after its file.
  assert sorted(r.participant_id for r in recs) == sorted(
      m["filename"][:-4] for m in meta)
  cc = data.get_manifest(_cfg(root, source_filter="call-center", label="covid19"))
  assert collections.Counter((r.stratum, r.label) for r in cc) == _expected(
      meta, lambda r: r["source"] == "call-center")
  tg = data.get_manifest(_cfg(root, source_filter="telegram"))
  assert {r.stratum for r in tg} == {"telegram"} and len(tg) == len(recs) - len(cc)
  verified = data.get_manifest(_cfg(root, verified_only=True))
  assert collections.Counter((r.stratum, r.label) for r in verified) == _expected(
      meta, lambda r: not r["covid19"] or r.get("verified") is True)
  assert sum(r.label == 1 for r in verified) == 4 + sum(  # the verified short file(s)
      m["filename"] in SHORT and m["covid19"] and m.get("verified") is True for m in meta)


def test_default_sound_selections_take_the_coughs(small_copy):
  root, _ = small_copy
  every = data.get_manifest(_cfg(root))
  for sounds in (manifest.PRETRAIN_SOUNDS, downstream_configs.get_config().data.sounds,
                 ("cough",), ()):
    assert data.get_manifest(_cfg(root, sounds=sounds)) == every
  with pytest.raises(ValueError, match=r"only coughs .*\['breathing-deep'\] selects no "
                                       "cough"):
    data.get_manifest(_cfg(root, sounds=("breathing-deep",)))


def test_real_mp3_both_channels_and_short_files_skipped(small_copy):
  root, meta = small_copy
  recs = covid19_cough.manifest(root)
  info = {r.stratum: sf.info(r.path) for r in recs if r.path.endswith(".mp3")}
  assert (info["call-center"].samplerate, info["call-center"].channels) == (8000, 2)
  assert (info["telegram"].samplerate, info["telegram"].channels) == (48000, 1)
  kept, feats, skipped = features.FeatureCache().load(recs, workers=1, progress=False)
  assert sorted(s.record.path.rsplit("/", 1)[1] for s in skipped) == sorted(SHORT)
  assert all(features._skip_kind(s.reason) == "too short" for s in skipped)  # pylint: disable=protected-access
  assert len(kept) == len(meta) - 2
  assert all(f.shape[1] == 64 and f.shape[0] >= 50 and np.isfinite(f).all() for f in feats)


def test_downstream_logs_counts_of_one_source(small_copy, caplog):
  """What `launch.py --config=configs/downstream.py:transformer,runlocal
  --config.data.name=covid19_cough --config.data.source_filter=call-center` loads."""
  root, meta = small_copy
  config = downstream_configs.get_config("transformer,runlocal")
  config.data.update(dict(name="covid19_cough", root=str(root),
                          source_filter="call-center"))
  config.lock()
  counts = _expected(meta, lambda r: r["source"] == "call-center")
  with caplog.at_level("INFO"):
    stores = data.load_splits(config, ("train", "val", "test"), labelled=True)
  n0, n1 = counts["call-center", 0], counts["call-center", 1]
  assert (f"covid19_cough: {n0 + n1} recordings from {n0 + n1} participants (sounds "
          f"cough: {n0 + n1}; labels 0: {n0}, 1: {n1})") in caplog.text
  assert sum(len(s) for s in stores.values()) == n0 + n1 - sum(
      m["filename"] in SHORT and m["source"] == "call-center" for m in meta)


def test_metadata_paths_leaving_the_root_are_skipped_unopened_in_training(
    small_copy, tmp_path, caplog):
  """A release copy whose metadata.json names "../" and absolute paths (and a
  device, and a fifo) pre-trains on the rest; those entries are counted, and
  nothing opens them."""
  from configs import pretrain as pretrain_configs  # pylint: disable=g-import-not-at-top
  from coughjax import checkpoints  # pylint: disable=g-import-not-at-top
  from coughjax.train import run  # pylint: disable=g-import-not-at-top
  release, meta = small_copy
  root, outside = tmp_path / "copy", tmp_path / "outside"
  shutil.copytree(release, root)
  outside.mkdir()
  # Real recordings outside the root: a breach would hash and decode them.
  shutil.copy(root / "raw" / meta[0]["filename"], outside / "secret.mp3")
  shutil.copy(root / "raw" / meta[1]["filename"], tmp_path / "absolute.mp3")
  os.mkfifo(root / "raw" / "pipe.mp3")
  bad = ["../../outside/secret.mp3", str(tmp_path / "absolute.mp3"), "/dev/zero",
         "pipe.mp3"]
  (root / "metadata.json").write_text(json.dumps(meta + [
      dict(filename=name, covid19=True, source="telegram") for name in bad]))
  config = pretrain_configs.get_config("transformer_m50,runlocal")
  config.data.update(dict(name="covid19_cough", root=str(root), sounds=(), workers=1))
  config.batch_size, config.eval_batch_size, config.num_epochs = 4, 2, 1
  config.lock()
  with conftest.deadline(300), conftest.opened_files() as opened, caplog.at_level("INFO"):
    run.run(config, str(tmp_path / "run"))
  assert (f"metadata.json: skipped 4 of {len(meta) + 4} audio paths, none of them opened (3 "
          "outside the data root, 1 not a regular file") in caplog.text
  assert f"{len(meta)} recordings from {len(meta)} participants" in caplog.text
  targets = {str(outside / "secret.mp3"), str(tmp_path / "absolute.mp3"), "/dev/zero",
             str(root / "raw" / "pipe.mp3")}
  assert not targets & set(opened), sorted(targets & set(opened))
  assert any(p.startswith(str(root / "raw")) for p in opened)  # the good ones were read
  assert [l["split"] for l in checkpoints.read_metrics(tmp_path / "run")][-1] == "val"


def _fake_release(root, records):
  """metadata.json + raw/ files with the given byte contents (no decoding needed)."""
  (root / "raw").mkdir(parents=True)
  meta = []
  for name, content, source, positive in records:
    (root / "raw" / name).write_bytes(content)
    meta.append(dict(filename=name, covid19=positive, source=source, verified=False,
                     comment=""))
  (root / "metadata.json").write_text(json.dumps(meta))


def test_identical_files_are_one_recording(tmp_path, caplog):
  _fake_release(tmp_path, [("a.mp3", b"same", "telegram", False),
                           ("b.mp3", b"other", "telegram", True),
                           ("c.mp3", b"same", "telegram", True),
                           ("d.mp3", b"agree", "call-center", True),
                           ("e.mp3", b"agree", "call-center", True),
                           ("f.mp3", b"alone", "call-center", False)])
  with caplog.at_level("WARNING"):
    recs = covid19_cough.manifest(tmp_path)
  assert [(r.participant_id, r.label) for r in recs] == [("a", None), ("b", 1), ("d", 1),
                                                         ("f", 0)]
  assert "2 groups of byte-identical files (4 files)" in caplog.text
  assert "1 of them are labelled both positive and negative" in caplog.text
  # Copies are found over the whole release, whatever the filter keeps.
  assert [r.label for r in covid19_cough.manifest(tmp_path, source_filter="telegram")] == [
      None, 1]


def test_errors_name_the_culprit(tmp_path):
  with pytest.raises(FileNotFoundError, match="nowhere: covid19_cough root folder not"):
    covid19_cough.manifest(tmp_path / "nowhere")
  with pytest.raises(FileNotFoundError, match=r"metadata\.json: covid19_cough metadata not"):
    covid19_cough.manifest(tmp_path)
  _fake_release(tmp_path, [("a.mp3", b"x", "telegram", False)])
  meta = json.loads((tmp_path / "metadata.json").read_text())
  (tmp_path / "metadata.json").write_text(json.dumps(
      meta + [dict(filename="gone.mp3", covid19=True, source="telegram")]))
  with pytest.raises(FileNotFoundError, match=r"raw/gone\.mp3: named by .*metadata\.json"):
    covid19_cough.manifest(tmp_path)
  (tmp_path / "metadata.json").write_text(json.dumps(
      meta + [dict(filename="a.mp3", covid19="yes", source="telegram")]))
  with pytest.raises(ValueError, match=r"record 1 \(a\.mp3\): covid19 must be true or"):
    covid19_cough.manifest(tmp_path)
  (tmp_path / "metadata.json").write_text(json.dumps(meta + [dict(filename="a.mp3")]))
  with pytest.raises(ValueError, match=r"record 1 \(a\.mp3\) lacks \['covid19', 'source'\]"):
    covid19_cough.manifest(tmp_path)
  (tmp_path / "metadata.json").write_text(json.dumps(meta))
  with pytest.raises(ValueError, match="unknown covid19_cough source_filter 'telegam'"):
    data.get_manifest(_cfg(tmp_path, source_filter="telegam"))
  with pytest.raises(ValueError, match="only the label 'covid19'.*'covid_status'"):
    data.get_manifest(_cfg(tmp_path, label="covid_status"))
  with pytest.raises(ValueError, match=r"no covid19_cough recordings left \(source_filter="
                                       "'call-center'"):
    data.get_manifest(_cfg(tmp_path, source_filter="call-center"))
  with pytest.raises(ValueError, match="needs --config.data.root"):
    data.get_manifest(_cfg(""))


# ------------------------------------------------------------------------- splits


def _label_only_split(records, fractions, seed):
  """The split as it was before strata: label groups only (reference)."""
  by = collections.defaultdict(list)
  for r in records:
    by[r.participant_id].append(r)
  groups = collections.defaultdict(list)
  for pid in sorted(by):
    groups[splits.participant_label(by[pid])].append(pid)
  rng, where = np.random.default_rng(seed), {}
  for label in sorted(groups, key=str):
    order = rng.permutation(len(groups[label]))
    cuts = np.round(np.cumsum(fractions) * len(groups[label])).astype(int)
    for rank, i in enumerate(order):
      where[groups[label][i]] = splits.SPLITS[int(np.searchsorted(cuts, rank, "right"))]
  return {name: [r for r in records if where[r.participant_id] == name]
          for name in splits.SPLITS}


def test_splits_unchanged_without_strata(coswara_ci):
  sources = [synthetic.manifest(90),
             data.get_manifest(ml_collections.ConfigDict(dict(
                 name="coswara", root=str(coswara_ci), label="sex",
                 sounds=manifest.PRETRAIN_SOUNDS, age_threshold=50)))]
  for recs in sources:
    for seed in range(2):
      assert splits.split(recs, (0.7, 0.1, 0.2), seed) == _label_only_split(
          recs, (0.7, 0.1, 0.2), seed)


def test_splits_stratified_by_label_within_stratum():
  # Source a: 80 % positive; source b: 20 % positive (a confound like the release's).
  recs = [manifest.Recording(f"{s}{i}.mp3", f"{s}{i}", "cough", int(i < n), stratum=s)
          for s, n in (("a", 80), ("b", 20)) for i in range(100)]
  for seed in range(3):
    parts = splits.split(recs, (0.6, 0.2, 0.2), seed)
    for name, share in zip(splits.SPLITS, (60, 20, 20)):
      got = collections.Counter((r.stratum, r.label) for r in parts[name])
      assert got == {("a", 1): share * 4 // 5, ("a", 0): share // 5,
                     ("b", 1): share // 5, ("b", 0): share * 4 // 5}, (name, got)


def test_csv_keeps_strata(tmp_path):
  recs = [manifest.Recording("x.mp3", "x", "cough", 1, "telegram"),
          manifest.Recording("y.mp3", "y", "cough", None, "")]
  manifest.write_csv(recs, tmp_path / "m.csv")
  assert manifest.read_csv(tmp_path / "m.csv") == [
      manifest.Recording(str(tmp_path / "x.mp3"), "x", "cough", 1, "telegram"),
      manifest.Recording(str(tmp_path / "y.mp3"), "y", "cough", None, "")]
  plain = synthetic.manifest(2)
  manifest.write_csv(plain, tmp_path / "p.csv")
  assert (tmp_path / "p.csv").read_text().splitlines()[0] == ",".join(manifest.COLUMNS)


def test_asymptomatic_flags_are_read_per_recording(tmp_path):
  (tmp_path / "metadata.json").write_text(json.dumps([
      {"filename": "a.mp3", "covid19": True, "source": "call-center", "asymptomatic": True},
      {"filename": "b.mp3", "covid19": True, "source": "telegram", "asymptomatic": False},
      {"filename": "c.mp3", "covid19": False, "source": "telegram"}]))
  flags = covid19_cough.asymptomatic(tmp_path)
  key = lambda name: folds_lib.recording_key(str(tmp_path / "raw" / name))
  assert flags == {key("a.mp3"): True, key("b.mp3"): False}
  (tmp_path / "metadata.json").write_text(json.dumps([
      {"filename": "a.mp3", "covid19": True, "source": "telegram", "asymptomatic": "yes"}]))
  with pytest.raises(ValueError, match=r"record 0 \(a.mp3\): asymptomatic must be"):
    covid19_cough.asymptomatic(tmp_path)
