"""COVID-19 Sounds source: a fake KDD 2020 tree, task labels, features, splits."""

import json
import os
import shutil

import ml_collections
import numpy as np
import pytest
import soundfile as sf

import coughjax.data
from coughjax.data import covid19_sounds
from coughjax.data import splits
from coughjax.data.features import FeatureCache

try:
  import av  # pylint: disable=g-import-not-at-top
except ImportError:
  av = None

RATE = 16000
# Android: two users per subset, the first with two samples; web: two sessions.
ANDROID_USERS = ("Ab3dE5gH7j", "Zy_9xW8vU7")


def _tone(seed: int, rate: int = RATE) -> np.ndarray:
  rng = np.random.default_rng(seed)
  t = np.arange(rate) / rate  # 1 s: above the 0.5 s minimum
  return (0.3 * np.sin(2 * np.pi * (200 + 10 * seed) * t)
          + 0.01 * rng.normal(size=t.size)).astype(np.float32)


def _write_webm(path, x: np.ndarray, rate: int = 48000) -> None:
  with av.open(str(path), "w", format="webm") as c:
    stream = c.add_stream("libopus", rate=rate)
    stream.layout = "mono"
    frame = av.AudioFrame.from_ndarray(x[None], format="flt", layout="mono")
    frame.rate = rate
    for packet in stream.encode(frame):
      c.mux(packet)
    for packet in stream.encode(None):
      c.mux(packet)


@pytest.fixture(scope="module")
def kdd_root(tmp_path_factory):
  """The ten subsets in the release layout; web coughs are webm when PyAV exists."""
  root = tmp_path_factory.mktemp("kdd")
  seed, pairs = 0, {}
  for subset in covid19_sounds.SUBSETS:
    folder = root / subset
    if "android" in subset:
      for sound in ("cough", "breath"):
        (folder / sound).mkdir(parents=True)
      index = covid19_sounds.SUBSETS.index(subset)
      for user, samples in zip((f"{index}{u}" for u in ANDROID_USERS), (2, 1)):
        for k in range(samples):
          stamp = 1588140467000 + 100 * k
          cough = folder / "cough" / f"cough_{user}_{stamp}.wav"
          breath = folder / "breath" / f"breaths_{user}_{stamp + 1}.wav"
          sf.write(cough, _tone(seed), RATE)
          sf.write(breath, _tone(seed + 1), RATE)
          pairs[breath.name] = cough.name
          seed += 2
      # Augmented and mono copies are not original recordings.
      first = sorted((folder / "cough").iterdir())[0]
      sf.write(str(first) + "_aug_noise1.wav", _tone(99), RATE)
      sf.write(str(first) + "_mono.wav", _tone(98), RATE)
    else:
      for k in range(2):
        session = folder / f"2020-04-1{k}-19_23_25_1396{seed % 100:02d}"
        session.mkdir(parents=True)
        if av is not None:
          _write_webm(session / "audio_file_cough.webm", _tone(seed, 48000), 48000)
        else:
          sf.write(session / "audio_file_cough.wav", _tone(seed), RATE)
        sf.write(session / "audio_file_breathe.wav", _tone(seed + 1), RATE)
        sf.write(session / "audio_file_cough.wav_aug_amp1.wav", _tone(97), RATE)
        (session / "notes.txt").write_text("not audio")
        seed += 2
  (root / "android_breath2cough.json").write_text(json.dumps(pairs))
  return root


def _participants(records, label):
  return {r.participant_id for r in records if r.label == label}


def test_task1_counts_labels_and_participants(kdd_root):
  records = covid19_sounds.manifest(kdd_root)
  # Positive: 2 android subsets x 3 samples + 2 web subsets x 2 sessions.
  assert sum(r.label == 1 for r in records) == 10
  assert sum(r.label == 0 for r in records) == 5  # healthyandroidnosymp + healthywebnosymp
  assert {r.sound for r in records} == {"cough"}
  assert len(_participants(records, 1)) == 8 and len(_participants(records, 0)) == 4
  android = [r for r in records if "covidandroidnocough" in r.path]
  assert {r.participant_id for r in android} == {"0" + u for u in ANDROID_USERS}
  web = [r for r in records if "healthywebnosymp" in r.path]
  assert all(r.participant_id.startswith("2020-04-1") for r in web)
  assert not any("_aug_" in r.path or "mono" in r.path for r in records)
  subsets = {r.path.split("/")[-3] for r in records}  # <subset>/<cough|session>/<file>
  assert subsets == set(covid19_sounds.TASKS[1][0] + covid19_sounds.TASKS[1][1])
  if av is not None:
    assert any(r.path.endswith(".webm") for r in records)


@pytest.mark.parametrize("task,negative", [(2, "healthy"), (3, "asthma")])
def test_tasks_2_and_3_use_withcough_subsets(kdd_root, task, negative):
  records = covid19_sounds.manifest(kdd_root, task=task)
  for r in records:
    subset = r.path.split("/")[-3]
    assert subset.endswith("withcough")
    assert r.label == int(subset.startswith("covid"))
    assert r.label == 1 or subset.startswith(negative)
  assert sum(r.label == 1 for r in records) == 5 and sum(r.label == 0 for r in records) == 5


def test_breath_and_cough(kdd_root):
  records = covid19_sounds.manifest(kdd_root, task=1, sounds=("cough", "breath"))
  sounds = [r.sound for r in records]
  assert sounds.count("cough") == sounds.count("breath") == 15
  breaths = [r.path for r in records if r.sound == "breath"]
  assert all("/breath/breaths_" in p or p.endswith("audio_file_breathe.wav") for p in breaths)


def test_get_manifest_from_config(kdd_root):
  cfg = ml_collections.ConfigDict(dict(name="covid19_sounds", root=str(kdd_root), task=1,
                                       sounds=("cough",)))
  assert coughjax.data.get_manifest(cfg) == covid19_sounds.manifest(kdd_root)
  cfg.sounds = ()  # empty means cough
  assert coughjax.data.get_manifest(cfg) == covid19_sounds.manifest(kdd_root)


def test_features_load_including_webm(kdd_root):
  records = covid19_sounds.manifest(kdd_root)
  kept, feats, skipped = FeatureCache().load(records, workers=1, progress=False)
  assert not skipped and len(kept) == len(records)
  assert all(f.ndim == 2 and f.shape[1] == 64 and f.dtype == np.float32 for f in feats)
  assert all(90 <= f.shape[0] <= 110 for f in feats)  # ~1 s at 10 ms steps


def test_split_is_participant_disjoint(kdd_root):
  records = covid19_sounds.manifest(kdd_root, sounds=("cough", "breath"))
  parts = splits.split(records, seed=0)
  assert sum(len(v) for v in parts.values()) == len(records)
  owners = [{r.participant_id for r in v} for v in parts.values()]
  for i in range(len(owners)):
    for j in range(i + 1, len(owners)):
      assert not owners[i] & owners[j]


def test_missing_root(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"nowhere: COVID-19 Sounds root folder not"):
    covid19_sounds.manifest(tmp_path / "nowhere")
  cfg = ml_collections.ConfigDict(dict(name="covid19_sounds", root="", task=1, sounds=()))
  with pytest.raises(ValueError, match="needs --config.data.root"):
    coughjax.data.get_manifest(cfg)


def test_missing_subset_names_it(tmp_path):
  (tmp_path / "covidandroidnocough").mkdir()
  (tmp_path / "healthywebnosymp.zip").write_bytes(b"PK")
  with pytest.raises(FileNotFoundError, match=r"missing .*'covidwebnocough'.*task 1.*"
                                              r"unzip healthywebnosymp\.zip"):
    covid19_sounds.manifest(tmp_path, task=1)


def test_bad_task_and_sound(kdd_root):
  with pytest.raises(ValueError, match="unknown COVID-19 Sounds task 4"):
    covid19_sounds.manifest(kdd_root, task=4)
  with pytest.raises(ValueError, match=r"sound\(s\) \['sneeze'\]"):
    covid19_sounds.manifest(kdd_root, sounds=("sneeze",))
  with pytest.raises(ValueError, match="no COVID-19 Sounds recordings"):
    covid19_sounds.manifest(kdd_root, sounds=("voice",))


def test_links_out_of_the_root_and_fifos_are_skipped(kdd_root, tmp_path, caplog):
  root = tmp_path / "kdd"
  shutil.copytree(kdd_root, root)
  before = covid19_sounds.manifest(root)
  sf.write(tmp_path / "elsewhere.wav", _tone(50), RATE)
  cough = root / "covidandroidnocough" / "cough"
  os.symlink(tmp_path / "elsewhere.wav", cough / "cough_Link1_1588140467999.wav")
  os.mkfifo(cough / "cough_Fifo1_1588140467998.wav")
  with caplog.at_level("WARNING"):
    assert covid19_sounds.manifest(root) == before
  assert ("covidandroidnocough: skipped 2 of 5 audio paths, none of them opened (1 not a "
          "regular file, 1 outside the data root") in caplog.text
