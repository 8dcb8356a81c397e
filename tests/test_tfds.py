"""TFDS builders: array_record built from real Coswara audio, read back without TensorFlow."""

import sys

import numpy as np
import pytest
import soundfile as sf

tfds = pytest.importorskip("tensorflow_datasets")

# pylint: disable=g-import-not-at-top,wrong-import-position
from coughjax.data import coswara
from coughjax.data import covid19_sounds
from coughjax.data import features
from coughjax.data import tfds_builders
from coughjax.data.manifest import Recording


def _prepare(builder, manual_dir):
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))


def test_coswara_roundtrip(coswara_ci, tmp_path):
  tf_loaded_before = "tensorflow" in sys.modules
  records = coswara.manifest(coswara_ci, label="covid_status")
  # One process: on a small set, spawning workers costs more than it saves.
  usable, feats, skipped = features.FeatureCache().load(records, workers=1, progress=False)

  data_dir = tmp_path / "tfds"
  builder = tfds_builders.Coswara(config="pretrain", data_dir=data_dir)
  _prepare(builder, coswara_ci)
  assert list(data_dir.glob("coswara/pretrain/*/*.array_record-*"))
  assert builder.info.metadata["num_recordings"] == len(records)
  assert builder.info.metadata["num_skipped"] == len(skipped)

  # Read by name, as a user would, from what is on disk.
  source = tfds.data_source("coswara/pretrain", split="train", data_dir=data_dir,
                            download=False)
  assert len(source) == len(usable)
  back, back_feats = tfds_builders.to_recordings(source)
  assert sorted(back, key=lambda r: r.path) == sorted(usable, key=lambda r: r.path)
  assert {r.label for r in back} <= {0, 1, None}
  reference = dict(zip((r.path for r in usable), feats))
  for record, f in list(zip(back, back_feats))[:8]:
    assert f.dtype == np.float32 and f.shape == reference[record.path].shape
  # Exactly what features.compute gives, independently of the cache.
  record, f = back[0], back_feats[0]
  np.testing.assert_allclose(f, features.compute(record, features.FeatureParams()),
                             atol=1e-6, rtol=0)
  if not tf_loaded_before:
    assert "tensorflow" not in sys.modules  # neither building nor reading needed it


def _tone(seed: int) -> np.ndarray:
  t = np.arange(16000) / 16000
  return (0.3 * np.sin(2 * np.pi * (150 + 20 * seed) * t)).astype(np.float32)


def test_covid19_sounds_skips_and_counts_bad_files(tmp_path):
  root = tmp_path / "kdd"
  positive, negative = covid19_sounds.TASKS[1]
  for i, subset in enumerate(positive + negative):
    if "android" in subset:
      path = root / subset / "cough" / f"cough_User{i:06d}_1588140467{i:03d}.wav"
    else:
      path = root / subset / f"2020-04-1{i}-19_23_25_139694" / "audio_file_cough.wav"
    path.parent.mkdir(parents=True)
    sf.write(path, _tone(i), 16000)
  broken = root / "healthywebnosymp" / "2020-04-20-10_00_00_000001" / "audio_file_cough.wav"
  broken.parent.mkdir()
  broken.write_bytes(b"RIFF\x00\x00 not audio")

  config = tfds_builders.Covid19SoundsConfig(name="test_task1", task=1)
  builder = tfds_builders.Covid19Sounds(config=config, data_dir=tmp_path / "tfds")
  _prepare(builder, root)
  source = builder.as_data_source(split="train")
  records, feats = tfds_builders.to_recordings(source)
  assert len(records) == len(positive + negative)
  assert sum(r.label for r in records) == len(positive)
  assert all(f.shape[1] == 64 for f in feats)
  # Reopened from disk alone (no builder class needed), metadata included.
  meta = tfds.builder_from_directory(builder.data_dir).info.metadata
  assert meta["num_recordings"] == len(records) + 1 and meta["num_skipped"] == 1
  assert meta["skipped"][0]["path"] == str(broken)
  assert "cannot decode" in meta["skipped"][0]["reason"]


def test_first_participants():
  # pylint: disable=protected-access
  records = [Recording(f"{p}{k}.wav", p, "cough", 0) for p in "cab" for k in range(2)]
  kept = tfds_builders._first_participants(records, 2)
  assert {r.participant_id for r in kept} == {"a", "b"} and len(kept) == 4
  assert tfds_builders._first_participants(records, 0) == records


def test_default_configs():
  assert tfds_builders.Covid19Sounds.BUILDER_CONFIGS[0].name == "task1_cough"
  names = {c.name for c in tfds_builders.Covid19Sounds.BUILDER_CONFIGS}
  assert {"task2_breath", "task3_cough_breath"} <= names
  assert tfds_builders.Coswara.BUILDER_CONFIGS[0].sounds == coswara.PRETRAIN_SOUNDS


def test_pretraining_from_a_tfds_build_equals_reading_the_recordings(coswara_ci, tmp_path):
  """config.data.name="tfds" trains from a build: the runlocal pre-training from a
  build of the real Coswara subset starts at exactly the loss of the same
  recordings read (and featurised) directly."""
  # pylint: disable=g-import-not-at-top
  from configs import pretrain as pretrain_configs
  from coughjax import checkpoints
  from coughjax.train import run

  data_dir = tmp_path / "tfds"
  _prepare(tfds_builders.Coswara(config="pretrain", data_dir=data_dir), coswara_ci)

  def first_losses(workdir, **data_fields):
    config = pretrain_configs.get_config("transformer_m50,runlocal")
    config.num_epochs = 1
    config.data.update(data_fields)  # a build holds the sounds of its own config
    config.lock()
    run.run(config, str(workdir))
    lines = checkpoints.read_metrics(workdir)
    return [l["loss"] for l in lines if l["split"] == "train"][0], lines[-1]["loss"]

  direct = first_losses(tmp_path / "direct", name="coswara", root=str(coswara_ci),
                        label="covid_status", sounds=coswara.PRETRAIN_SOUNDS)
  built = first_losses(tmp_path / "tfds_run", name="tfds", tfds_name="coswara/pretrain",
                       tfds_dir=str(data_dir))
  assert np.isfinite(direct[0])
  assert built == direct  # first training step and the validation after the epoch


def test_covid19_cough_build_keeps_strata_and_serves_load_splits(covid19_cough, tmp_path):
  # pylint: disable=g-import-not-at-top
  from configs import downstream as downstream_configs
  from coughjax import data
  from coughjax.data import covid19_cough as covid19_cough_lib

  config = tfds_builders.Covid19CoughConfig(name="first40", max_participants=40)
  _prepare(tfds_builders.Covid19Cough(config=config, data_dir=tmp_path / "tfds"),
           covid19_cough)
  expected = tfds_builders._first_participants(  # pylint: disable=protected-access
      covid19_cough_lib.manifest(covid19_cough), 40)
  run_config = downstream_configs.get_config()
  run_config.data.update(name="tfds", tfds_name="covid19_cough/first40",
                         tfds_dir=str(tmp_path / "tfds"), split=(0.6, 0.2, 0.2))
  stores = data.load_splits(run_config, ("train", "val", "test"), labelled=True)
  got = [r for s in stores.values() for r in s.records]
  usable = {r.path for r in got}
  assert {r.stratum for r in got} <= set(covid19_cough_lib.SOURCES)
  assert sorted(got, key=lambda r: r.path) == sorted(
      (r for r in expected if r.path in usable and r.label is not None),
      key=lambda r: r.path)
  assert len(got) >= 30 and all(isinstance(s.frames, np.memmap) for s in stores.values())
