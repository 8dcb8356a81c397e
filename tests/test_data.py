"""Data sources, feature cache, splits and batches."""

import ast
import json
import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest
from sklearn import linear_model
from sklearn import model_selection
import soundfile as sf

import conftest

from coughjax import audio
from coughjax import data
from coughjax.data import coswara
from coughjax.data import features
from coughjax.data import manifest
from coughjax.data import pipeline
from coughjax.data import splits
from coughjax.data import synthetic


# What the input pipeline must not import: inference, training, serving, the models.
_ABOVE_DATA = ("coughjax.infer", "coughjax.train", "coughjax.models", "coughjax.predict",
               "coughjax.embed", "coughjax.export", "coughjax.probe", "flax", "jax")


def _imported(tree: ast.AST) -> set[str]:
  """Every module an `import` anywhere in `tree` names (function-level ones too),
  `from coughjax import infer` as coughjax.infer."""
  out = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      out.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      out.update([node.module] + [f"{node.module}.{a.name}" for a in node.names])
  return out


def test_the_input_pipeline_imports_nothing_above_it():
  below = lambda m: not any(m == a or m.startswith(a + ".") for a in _ABOVE_DATA)
  for path in sorted((conftest.REPO / "coughjax" / "data").glob("*.py")):
    bad = sorted(m for m in _imported(ast.parse(path.read_text())) if not below(m))
    assert not bad, f"{path.name} imports {bad}"
  # And at run time, through everything coughjax.data imports in turn.
  code = ("import importlib, pkgutil, sys, coughjax.data as d\n"
          "for m in pkgutil.iter_modules(d.__path__):\n"
          "  importlib.import_module('coughjax.data.' + m.name)\n"
          "print(' '.join(sys.modules))")
  proc = subprocess.run([sys.executable, "-c", code], cwd=conftest.REPO, check=True,
                        capture_output=True, text=True)
  loaded = proc.stdout.split()
  assert "coughjax.data.packed" in loaded and "coughjax.data.mask_key" in loaded
  assert not [m for m in loaded if not below(m)]


def _data_cfg(**kw):
  cfg = dict(name="synthetic", root="", manifest="", label="", sounds=(),
             num_participants=20, seed=0, age_threshold=50, task=1)
  cfg.update(kw)
  return ml_collections.ConfigDict(cfg)


def _tone(seconds, rate=16000, amp=0.3, f=300.0):
  return amp * np.sin(2 * np.pi * f * np.arange(int(seconds * rate)) / rate)


# ---------------------------------------------------------------------- synthetic


def test_synthetic_is_deterministic_and_labelled():
  recs = synthetic.manifest(60, seed=3)
  assert len(recs) == 240 and {r.sound for r in recs} == set(manifest.PRETRAIN_SOUNDS)
  assert recs == synthetic.manifest(60, seed=3)
  assert 0.1 < np.mean([r.label for r in recs]) < 0.6
  a = synthetic.render(recs[0].path)
  np.testing.assert_array_equal(a, synthetic.render(recs[0].path))
  assert a.dtype == np.float32 and 1.0 < a.size / 16000 < 5.0
  assert not np.array_equal(a, synthetic.render(synthetic.manifest(60, seed=4)[0].path))


def test_synthetic_participants_are_distinguishable():
  """Same-participant recordings are closer in mean log-mel spectrum than others'."""
  recs = synthetic.manifest(12, sounds=("breathing-deep", "breathing-shallow"))
  spec = {r.path: audio.logfbank(synthetic.render(r.path)).mean(0) for r in recs}
  same, other = [], []
  for i, a in enumerate(recs):
    for b in recs[i + 1:]:
      d = np.linalg.norm(spec[a.path] - spec[b.path])
      (same if a.participant_id == b.participant_id else other).append(d)
  assert np.mean(same) < 0.6 * np.mean(other)


def test_synthetic_label_is_learnable_but_not_trivial():
  """A linear probe on per-band log-mel statistics of coughs finds the label well
  above chance, and below the 0.85 ceiling that the label noise sets."""
  x, y = [], []
  for r in synthetic.manifest(150, seed=1, sounds=("cough-heavy", "cough-shallow")):
    f = audio.logfbank(synthetic.render(r.path))
    x.append(np.concatenate([f.mean(0), f.std(0), np.abs(np.diff(f, axis=0)).mean(0)]))
    y.append(r.label)
  x = np.array(x)
  x = (x - x.mean(0)) / (x.std(0) + 1e-6)
  auc = model_selection.cross_val_score(
      linear_model.LogisticRegression(C=0.1, max_iter=2000), x, np.array(y), cv=5,
      scoring="roc_auc").mean()
  assert 0.62 < auc < 0.9, auc


def test_synthetic_bad_address():
  with pytest.raises(ValueError, match="not a synthetic recording address"):
    synthetic.render("synthetic://0/1/whistle")
  with pytest.raises(ValueError, match="no sound 'whistle'"):
    synthetic.manifest(2, sounds=("whistle",))


# ------------------------------------------------------------------------ coswara


def test_coswara_flat_layout(coswara_ci):
  recs = data.get_manifest(_data_cfg(name="coswara", root=str(coswara_ci), label="sex"))
  assert len(recs) == 184
  assert {r.sound for r in recs} == set(manifest.PRETRAIN_SOUNDS)
  assert len({r.participant_id for r in recs}) == 47
  assert {r.label for r in recs} == {0, 1}
  status = coswara.manifest(coswara_ci, label="covid_status")
  assert {r.label for r in status} == {0}  # the CI subset has no positives


def _extracted_tree(root, with_csv=True):
  """A fake extracted-release tree with a few bad files."""
  people = {"p1": ("positive_mild", "male", "61"), "p2": ("healthy", "female", "30"),
            "p3": ("recovered_full", "male", "44"), "p4": ("healthy", "male", "25")}
  for pid, (status, g, a) in people.items():
    d = root / "20200501" / pid
    d.mkdir(parents=True)
    json.dump({"id": pid, "covid_status": status, "g": g, "a": a},
              open(d / "metadata.json", "w"))
    for k, s in enumerate(manifest.PRETRAIN_SOUNDS + ("counting-normal",)):
      sf.write(d / f"{s}.wav", _tone(1.5 + k * 0.1, 48000), 48000)
  sf.write(root / "20200501" / "p4" / "cough-heavy.wav", np.zeros(48000), 48000)  # silent
  (root / "20200501" / "p4" / "cough-shallow.wav").write_bytes(b"RIFF junk")  # corrupt
  sf.write(root / "20200501" / "p2" / "breathing-deep.wav", _tone(0.2, 48000), 48000)
  if with_csv:  # combined_data.csv overrides metadata.json
    (root / "combined_data.csv").write_text(
        "id,a,covid_status,g\np1,61,positive_moderate,female\n")


def test_coswara_extracted_layout_labels(tmp_path):
  _extracted_tree(tmp_path)
  recs = coswara.manifest(tmp_path, label="covid_status")
  assert len(recs) == 16  # counting-normal excluded
  by = {r.participant_id: r.label for r in recs}
  assert by == {"p1": 1, "p2": 0, "p3": None, "p4": 0}
  sex = {r.participant_id: r.label for r in coswara.manifest(tmp_path, label="sex")}
  assert sex == {"p1": 0, "p2": 0, "p3": 1, "p4": 1}  # p1 from combined_data.csv
  age = {r.participant_id: r.label for r in coswara.manifest(tmp_path, label="age")}
  assert age == {"p1": 1, "p2": 0, "p3": 0, "p4": 0}
  with pytest.raises(ValueError, match="unknown Coswara label 'mood'"):
    coswara.manifest(tmp_path, label="mood")
  with pytest.raises(FileNotFoundError, match="Coswara root folder not found"):
    coswara.manifest(tmp_path / "nope")


def test_bad_files_are_skipped_and_counted(tmp_path, caplog):
  _extracted_tree(tmp_path)
  recs = coswara.manifest(tmp_path)
  cache = features.FeatureCache()
  with caplog.at_level("WARNING"):
    kept, feats, skipped = cache.load(recs, name="coswara", progress=False)
  assert len(kept) == len(feats) == 13 and len(skipped) == 3
  reasons = sorted(features._skip_kind(s.reason) for s in skipped)  # pylint: disable=protected-access
  assert reasons == ["cannot decode", "silent", "too short"]
  assert "skipped 3 of 16 recordings" in caplog.text
  # Cached: the second load decodes nothing and reports the same.
  kept2, feats2, skipped2 = cache.load(recs, progress=False)
  assert [s.reason for s in skipped2] == [s.reason for s in skipped]
  np.testing.assert_array_equal(feats2[0], feats[0])


def _escaping_entries(root, outside):
  """Paths leading out of `root` or to non-regular files, relative to `root` where
  that matters, and the real targets a breach would open."""
  sf.write(outside / "secret.flac", _tone(1.0), 16000)
  (root / "audio" / "p").mkdir(parents=True, exist_ok=True)
  os.symlink(outside / "secret.flac", root / "audio" / "p" / "link.flac")
  os.mkfifo(root / "audio" / "p" / "pipe.flac")
  entries = {"../outside/secret.flac": "outside the data root",
             str(outside / "secret.flac"): "outside the data root",
             "audio/p/link.flac": "outside the data root",
             "audio/../../outside/secret.flac": "outside the data root",
             "/dev/zero": "outside the data root",
             "audio/p/pipe.flac": "not a regular file", "audio/p": "not a regular file",
             "": "empty path"}
  return entries, {str(outside / "secret.flac"), "/dev/zero",
                   str(root / "audio" / "p" / "pipe.flac")}


def test_coswara_labels_csv_paths_stay_inside_the_root(tmp_path, caplog):
  root, outside = tmp_path / "cw", tmp_path / "outside"
  outside.mkdir()
  entries, targets = _escaping_entries(root, outside)
  sf.write(root / "audio" / "p" / "cough-heavy.flac", _tone(1.0), 16000)
  rows = ["audio/p/cough-heavy.flac"] + list(entries)
  (root / "labels.csv").write_text("participant_id,sound,path,gender\n" + "".join(
      f"p,cough-heavy,{r},male\n" for r in rows))
  with conftest.deadline(60), conftest.opened_files() as opened, caplog.at_level("WARNING"):
    recs = coswara.manifest(root, label="sex")
    kept, _, skipped = features.FeatureCache().load(recs, workers=1, progress=False)
  assert [r.path for r in recs] == [str(root / rows[0])] and len(kept) == 1 and not skipped
  assert (f"labels.csv: skipped 8 of 9 audio paths, none of them opened (5 outside the data "
          f"root, 2 not a regular file, 1 empty path; data root {root}); first: "
          "'../outside/secret.flac'") in caplog.text
  assert not targets & set(opened), sorted(targets & set(opened))


def test_csv_manifest_paths_stay_inside_unless_allowed(tmp_path, caplog):
  root, outside = tmp_path / "m", tmp_path / "outside"
  outside.mkdir()
  entries, _ = _escaping_entries(root, outside)
  csv_path = root / "m.csv"
  csv_path.write_text("path,participant_id,sound\nsynthetic://0/1/cough-heavy,p,c\n" + "".join(
      f"{r},p,cough\n" for r in entries))
  with caplog.at_level("WARNING"):
    assert [r.path for r in manifest.read_csv(csv_path)] == ["synthetic://0/1/cough-heavy"]
  assert "m.csv: skipped 8 of 8 audio paths" in caplog.text
  # Opted in (data.manifest_any_paths): paths anywhere, but still regular files only.
  cfg = _data_cfg(name="manifest", manifest=str(csv_path), manifest_any_paths=True)
  assert sorted(r.path for r in data.get_manifest(cfg)) == sorted(
      [str(root / r) for r in entries if "outside" in entries[r] and r != "/dev/zero"]
      + ["synthetic://0/1/cough-heavy"])


def test_non_regular_files_are_skipped_by_the_cache_without_hanging(tmp_path):
  os.mkfifo(tmp_path / "pipe.wav")
  (tmp_path / "empty.wav").write_bytes(b"")
  recs = [manifest.Recording(p, "p", "cough") for p in
          ("/dev/zero", str(tmp_path / "pipe.wav"), str(tmp_path / "empty.wav"))]
  with conftest.deadline(60):
    kept, _, skipped = features.FeatureCache().load(recs, workers=1, progress=False)
  assert not kept
  assert [features._skip_kind(s.reason) for s in skipped] == [  # pylint: disable=protected-access
      "not a regular file", "not a regular file", "empty"]


# ------------------------------------------------------------------- feature cache


def test_cache_rebuilds_only_what_changed(tmp_path, monkeypatch):
  paths = []
  for i in range(3):
    p = tmp_path / f"r{i}.wav"
    sf.write(p, _tone(1.0, f=200.0 + 100 * i), 16000)
    paths.append(p)
  recs = [manifest.Recording(str(p), f"p{i}", "cough") for i, p in enumerate(paths)]
  built = []
  real = features.compute
  monkeypatch.setattr(features, "compute", lambda r, p: built.append(r.path) or real(r, p))
  cache = features.FeatureCache()
  _, first, _ = cache.load(recs, progress=False)
  assert len(built) == 3
  np.testing.assert_allclose(first[1], audio.logfbank(audio.load(paths[1])))
  cache.load(recs, progress=False)
  assert len(built) == 3  # all cached
  sf.write(paths[1], _tone(1.0, f=777.0), 16000)  # content changes
  _, second, _ = cache.load(recs, progress=False)
  assert built[3:] == [str(paths[1])]
  assert not np.allclose(second[1], first[1])
  features.FeatureCache(features.FeatureParams(nfilt=40)).load(recs, progress=False)
  assert len(built) == 3 + 1 + 3  # a new parameter set recomputes everything


def test_cache_worker_processes_give_identical_features():
  recs = synthetic.manifest(40, sounds=("cough-shallow", "cough-heavy"))
  _, serial, _ = features.FeatureCache(root=None).load(recs, workers=1, progress=False)
  params = features.FeatureParams(nfilt=32)
  _, parallel, _ = features.FeatureCache(params).load(recs, workers=2, progress=False)
  _, direct, _ = features.FeatureCache(params).load(recs, workers=1, progress=False)
  assert len(parallel) == 80
  for a, b in zip(parallel, direct):
    np.testing.assert_array_equal(a, b)
  assert serial[0].shape[1] == 64 and parallel[0].shape[1] == 32


# -------------------------------------------------------------------------- splits


def _assert_disjoint(parts, records):
  seen = {}
  for name, recs in parts.items():
    for r in recs:
      assert seen.setdefault(r.participant_id, name) == name, r.participant_id
  assert sum(len(v) for v in parts.values()) == len(records)


def test_splits_disjoint_stratified_seeded():
  recs = synthetic.manifest(200)
  parts = splits.split(recs, (0.7, 0.1, 0.2), seed=1)
  _assert_disjoint(parts, recs)
  people = {k: {r.participant_id for r in v} for k, v in parts.items()}
  assert [len(people[k]) for k in splits.SPLITS] == [140, 20, 40]
  rate = {k: np.mean([r.label for r in v]) for k, v in parts.items()}
  assert max(rate.values()) - min(rate.values()) < 0.06  # stratified
  assert parts == splits.split(recs, (0.7, 0.1, 0.2), seed=1)
  assert parts != splits.split(recs, (0.7, 0.1, 0.2), seed=2)
  with pytest.raises(ValueError, match="summing to 1"):
    splits.split(recs, (0.5, 0.1, 0.1))


def test_splits_disjoint_for_every_source(coswara_ci, tmp_path):
  csv_path = tmp_path / "m.csv"
  manifest.write_csv(synthetic.manifest(30), csv_path)
  _extracted_tree(tmp_path / "cw")
  sources = {
      "synthetic": _data_cfg(num_participants=50),
      "coswara flat": _data_cfg(name="coswara", root=str(coswara_ci), label="sex"),
      "coswara extracted": _data_cfg(name="coswara", root=str(tmp_path / "cw")),
      "manifest": _data_cfg(name="manifest", manifest=str(csv_path)),
  }
  for name, cfg in sources.items():
    recs = data.get_manifest(cfg)
    for seed in range(3):
      _assert_disjoint(splits.split(recs, seed=seed), recs)
    assert recs, name


# ------------------------------------------------------------------------ manifest


def test_csv_manifest_round_trip_and_errors(tmp_path):
  recs = synthetic.manifest(3)
  p = tmp_path / "m.csv"
  manifest.write_csv(recs, p)
  assert manifest.read_csv(p) == recs
  (tmp_path / "bad.csv").write_text("path,participant_id,sound,label\na.wav,p,cough,yes\n")
  with pytest.raises(ValueError, match=r"bad\.csv:2: label must be 0, 1 or empty"):
    manifest.read_csv(tmp_path / "bad.csv")
  (tmp_path / "cols.csv").write_text("file,who\n")
  with pytest.raises(ValueError, match=r"cols\.csv: manifest lacks column"):
    manifest.read_csv(tmp_path / "cols.csv")
  (tmp_path / "rel.csv").write_text("path,participant_id,sound\naudio/x.wav,p,cough\n")
  assert manifest.read_csv(tmp_path / "rel.csv")[0].path == str(tmp_path / "audio/x.wav")
  with pytest.raises(ValueError, match="unknown data source 'nope'"):
    data.get_manifest(_data_cfg(name="nope"))
  with pytest.raises(ValueError, match="needs --config.data.root"):
    data.get_manifest(_data_cfg(name="coswara"))


# ------------------------------------------------------------------------- batches


def _store(n_participants=12, sounds=("cough-shallow", "breathing-deep")):
  recs = synthetic.manifest(n_participants, sounds=sounds)
  kept, feats, _ = features.FeatureCache().load(recs, progress=False)
  return pipeline.ClipStore(kept, feats)


def test_contrastive_batches_distinct_participants_and_pairs():
  store = _store()
  batches = pipeline.ContrastiveBatches(store, 8, seed=0)
  x = batches.batch(epoch=0, step=0)
  assert x.shape == (8, 2, 96, 64)
  # Each crop is a real window of one of the participant's recordings.
  owner = {}
  for i, r in enumerate(store.records):
    f = store.frames[store.offsets[i]:store.offsets[i] + store.lengths[i]]
    for s in range(f.shape[0] - 95):
      owner[f[s:s + 96].tobytes()] = r.participant_id
  pairs = [(owner[x[i, 0].tobytes()], owner[x[i, 1].tobytes()]) for i in range(8)]
  assert all(a == b for a, b in pairs)
  assert len({a for a, _ in pairs}) == 8
  # Deterministic per (seed, epoch, step); reshuffled across epochs.
  np.testing.assert_array_equal(x, batches.batch(0, 0))
  assert not np.array_equal(x, batches.batch(1, 0))
  with pytest.raises(ValueError, match=r"batch size 13 is larger than the number of "
                     r"participants \(12\)"):
    pipeline.ContrastiveBatches(store, 13)


def test_contrastive_rows_are_slices_of_the_global_batch():
  store = _store()
  one = pipeline.ContrastiveBatches(store, 8).batch(2, 0)
  # Process 1 of 2 holds the second half of the global batch.
  p1 = pipeline.ContrastiveBatches(store, 8, rows=slice(4, 8))
  np.testing.assert_array_equal(p1.batch(2, 0), one[4:])


def test_contrastive_batch_1024_from_synthetic():
  store = _store(1030, sounds=("cough-shallow",))
  batches = pipeline.ContrastiveBatches(store, 1024, seed=0)
  assert batches.steps_per_epoch == 1
  x = batches.batch(0, 0)
  assert x.shape == (1024, 2, 96, 64) and x.dtype == np.float32


def test_contrastive_on_real_coswara(coswara_ci):
  recs = coswara.manifest(coswara_ci)
  kept, feats, _ = features.FeatureCache().load(recs, progress=False)
  store = pipeline.ClipStore(kept, feats)
  x = pipeline.ContrastiveBatches(store, 16).batch(0, 0)
  assert x.shape == (16, 2, 96, 64) and np.isfinite(x).all()
  with pytest.raises(ValueError, match=r"batch size 64 is larger than the number of "
                     r"participants \(47\)"):
    pipeline.ContrastiveBatches(store, 64)


def test_supervised_and_eval_batches(caplog):
  store = _store(10)
  with caplog.at_level("INFO"):
    sup = pipeline.SupervisedBatches(store, 8, hop=48)
  assert "class balance" in caplog.text
  b = sup.batch(0, 0)
  assert b["x"].shape == (8, 96, 64) and b["y"].shape == (8,)
  starts, rec = store.clip_starts(96)
  seen = np.zeros(len(store), int)
  for eb in pipeline.eval_batches(store, 16):
    assert all(v.shape == (16,) for v in eb.values())
    np.testing.assert_array_equal(eb["clip"], (eb["start"] - store.offsets[eb["rec"]]) // 96)
    np.add.at(seen, eb["rec"][eb["valid"]], 1)
  # Every clip exactly once: per recording as many as audio.clips cuts.
  for i in range(len(store)):
    f = store.frames[store.offsets[i]:store.offsets[i] + store.lengths[i]]
    assert seen[i] == (rec == i).sum() == audio.clips(f).shape[0]


def test_prefetch_order_and_errors():
  assert list(pipeline.prefetch(iter(range(10)))) == list(range(10))

  def boom():
    yield 1
    raise RuntimeError("bad batch")

  it = pipeline.prefetch(boom())
  assert next(it) == 1
  with pytest.raises(RuntimeError, match="bad batch"):
    next(it)


def test_load_splits_maps_a_pack_written_once(tmp_path, monkeypatch):
  """Stores from load_splits memory-map one pack of the corpus, written on first use
  and reopened after, and batch exactly as in-memory stores of the same features."""
  monkeypatch.setenv("COUGHJAX_CACHE", str(tmp_path))  # packs of earlier tests aside
  from configs import pretrain as pretrain_configs  # pylint: disable=g-import-not-at-top
  from coughjax.data import packed  # pylint: disable=g-import-not-at-top
  config = pretrain_configs.get_config("transformer_m50,runlocal")
  stores = data.load_splits(config)
  train = stores["train"]
  assert isinstance(train.frames, np.memmap)
  assert stores["val"].frames.filename == train.frames.filename  # views of one pack
  kept, feats, _ = features.FeatureCache().load(train.records, progress=False)
  in_memory = pipeline.ClipStore(kept, feats)
  for epoch in range(2):
    np.testing.assert_array_equal(
        pipeline.ContrastiveBatches(train, 16).batch(epoch, 1),
        pipeline.ContrastiveBatches(in_memory, 16).batch(epoch, 1))
  files = {p: p.stat().st_mtime_ns for p in packed.directory().iterdir()
           if p.suffix == ".f32"}
  assert len(files) == 1  # train and val: one pack
  again = data.load_splits(config)["train"]
  assert {p: p.stat().st_mtime_ns for p in files} == files
  np.testing.assert_array_equal(again.frames, train.frames)


def test_split_seeds_share_one_pack_with_its_digests(tmp_path, monkeypatch):
  """Five downstream seeds (split seeds 0..4) write one pack; every split's store is
  a view of it holding what a store of that split's own features holds, and its
  recording keys are `mask_key.recording_key` of those features, read, not rehashed."""
  monkeypatch.setenv("COUGHJAX_CACHE", str(tmp_path))
  from configs import downstream as downstream_configs  # pylint: disable=g-import-not-at-top
  from coughjax import infer  # pylint: disable=g-import-not-at-top
  from coughjax.data import mask_key  # pylint: disable=g-import-not-at-top
  from coughjax.data import packed  # pylint: disable=g-import-not-at-top
  config = downstream_configs.get_config("transformer,runlocal")
  cache = features.FeatureCache()
  stores = {}
  for seed in range(5):
    config.data.split_seed = seed
    stores[seed] = data.load_splits(config, ("train", "val", "test"), labelled=True)
  assert len(list(packed.directory().glob("*.f32"))) == 1
  assert len(list(packed.directory().glob("*.index.npz"))) == 1
  assert [s.records for s in stores[0].values()] != [s.records for s in stores[1].values()]
  for seed in (0, 3):
    for name, store in stores[seed].items():
      assert store.frames.filename == stores[0]["train"].frames.filename
      kept, feats, _ = cache.load(store.records, progress=False)
      own = pipeline.ClipStore(kept, feats)  # the split's features alone
      assert store.records == own.records
      np.testing.assert_array_equal(store.lengths, own.lengths)
      for i in range(len(store)):
        np.testing.assert_array_equal(
            store.frames[store.offsets[i]:store.offsets[i] + store.lengths[i]],
            own.frames[own.offsets[i]:own.offsets[i] + own.lengths[i]])
      np.testing.assert_array_equal(store.recording_keys, np.stack(
          [mask_key.recording_key(f, store.clip_frames) for f in feats]))
      if name == "train":
        for a, b in zip(pipeline.SupervisedBatches(store, 8, hop=48).epoch(1),
                        pipeline.SupervisedBatches(own, 8, hop=48).epoch(1)):
          np.testing.assert_array_equal(a["x"], b["x"])
          np.testing.assert_array_equal(a["y"], b["y"])
  # Validation reads the stored keys: one recording hashed (the check), not all.
  val = stores[2]["val"]
  calls = []
  real = mask_key.recording_key
  monkeypatch.setattr(mask_key, "recording_key", lambda *a: calls.append(1) or real(*a))
  np.testing.assert_array_equal(infer.store_recording_keys(val), val.recording_keys)
  assert len(calls) == 1
  val.recording_keys = val.recording_keys.copy()
  val.recording_keys[0] += 1
  with pytest.raises(ValueError, match="is not its recording_key"):
    infer.store_recording_keys(val)


def test_supervised_batches_each_clip_once_per_epoch_and_resume(monkeypatch):
  """Each clip at most once an epoch (all but the tail short of a batch), the same
  batches as before the per-epoch order was kept (one permutation of the clips per
  (seed, epoch)), a resumed epoch equal to the uninterrupted one, and one
  permutation drawn per epoch, not per step."""
  rng = np.random.default_rng(0)
  lengths = rng.integers(16, 60, size=30)
  offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
  # Frame t holds t: a clip's first value is its start.
  frames = np.repeat(np.arange(lengths.sum(), dtype=np.float32)[:, None], 3, axis=1)
  records = [manifest.Recording(f"r{i}", f"p{i}", "cough", i % 2) for i in range(30)]
  store = pipeline.ClipStore.from_frames(records, frames, offsets, lengths, 16)
  starts, rec = store.clip_starts(8)
  batches = pipeline.SupervisedBatches(store, 8, hop=8, seed=3)
  epoch = list(batches.epoch(2))
  assert len(epoch) == batches.steps_per_epoch == len(starts) // 8
  seen = np.concatenate([b["x"][:, 0, 0] for b in epoch]).astype(int)
  assert len(set(seen.tolist())) == len(seen) == len(epoch) * 8
  assert set(seen.tolist()) <= set(starts.tolist())
  owner = dict(zip(starts.tolist(), rec.tolist()))
  np.testing.assert_array_equal(np.concatenate([b["y"] for b in epoch]),
                                store.labels[[owner[s] for s in seen.tolist()]])
  order = np.random.default_rng([3, 2]).permutation(len(starts))
  np.testing.assert_array_equal(seen, starts[order[:len(seen)]])  # as before
  resumed = list(pipeline.SupervisedBatches(store, 8, hop=8, seed=3).epoch(2, 5))
  for a, b in zip(resumed, epoch[5:], strict=True):
    np.testing.assert_array_equal(a["x"], b["x"])
  other = np.concatenate([b["x"][:, 0, 0] for b in batches.epoch(3)])
  assert not np.array_equal(other, seen)
  draws = []
  real = np.random.default_rng
  monkeypatch.setattr(np.random, "default_rng", lambda *a: draws.append(a) or real(*a))
  fresh = pipeline.SupervisedBatches(store, 8, hop=8, seed=3)
  for step in range(batches.steps_per_epoch):
    fresh.batch(4, step)
  assert len(draws) == 1
  # A process's rows are its slice of the same global batch.
  half = pipeline.SupervisedBatches(store, 8, hop=8, seed=3, rows=slice(4, 8)).batch(2, 1)
  np.testing.assert_array_equal(half["x"], epoch[1]["x"][4:])


def test_each_process_gathers_only_its_rows():
  """Multi-host: process 1 of 2 reads only its half of the batch."""
  store = _store()
  read = []
  real_gather = store.gather
  store.gather = lambda s: read.append(np.array(s)) or real_gather(s)
  full = pipeline.ContrastiveBatches(store, 8).batch(3, 0)  # [8, 2, T, M]
  mine = pipeline.ContrastiveBatches(store, 8, rows=slice(4, 8)).batch(3, 0)
  all_starts, my_starts = read
  # Pairs (a_i, b_i) of the global batch; process 1 holds pairs 4..7.
  np.testing.assert_array_equal(my_starts, all_starts.reshape(8, 2)[4:].reshape(-1))
  np.testing.assert_array_equal(mine, full[4:])
