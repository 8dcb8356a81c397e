"""COVID-19 Sounds (Cambridge, KDD 2020 release): manifests for the downstream tasks.

The data of Brown et al., "Exploring Automatic Diagnosis of COVID-19 from
Crowdsourced Respiratory Sound Data" (KDD 2020), collected by the COVID-19 Sounds
app of the University of Cambridge until 22 May 2020. It is *not* public: it is
released for research under a data-sharing agreement with the University of
Cambridge (https://www.covid-19-sounds.org/en/blog/data_sharing.html); you cannot
redistribute it, and coughjax never downloads it. Point `root` at the folder in
which the release's zip files were unpacked.

Layout (from the release README and the code that reads it,
cam-mobsys/covid19-sounds-kdd20 `README.md` and `training/01_extract_handcrafted_
features.py`, `02_extract_vgg_features.py`, `03_classification_without_
augmentation.py`):

    <root>/android_breath2cough.json            Android breath file -> cough file
    <root>/<android subset>/cough/cough_<uid>_<ms timestamp>.wav
    <root>/<android subset>/breath/breaths_<uid>_<ms timestamp>.wav
    <root>/<web subset>/<YYYY-MM-DD-HH_MM_SS_micro>/audio_file_cough.<ext>    web
    <root>/<web subset>/<YYYY-MM-DD-HH_MM_SS_micro>/audio_file_breathe.<ext>  web

Ten subsets, `<status><platform><symptom>`: status covid / healthy / asthma,
platform android / web, symptom `withcough` (reported a dry or wet cough),
`nocough` (COVID-positive without cough) or `nosymp` (healthy, no symptoms):
covidandroidnocough, covidandroidwithcough, covidwebnocough, covidwebwithcough,
healthyandroidnosymp, healthyandroidwithcough, healthywebnosymp,
healthywebwithcough, asthmaandroidwithcough, asthmawebwithcough.

* Participant ids: on Android the user id `<uid>` in the file name (one user may
  have several samples, possibly in several subsets; they stay one participant so
  splits keep them together); the web form had no login, so each web submission
  folder is one participant (as the reference code groups them).
* Sounds: `cough`, `breath`; `voice` is accepted but the KDD release holds only
  cough and breathing ("we have collected voice ... but at this stage we only
  share cough and breathing"), so it is matched by a guess (`voice_*`/`read_*`
  Android files, `audio_file_voice*`/`audio_file_read*` web files, after the
  later NeurIPS release's code) that could not be checked against real data.
* Formats: Android recordings are .wav; the reference code reads the web ones as
  `audio_file_*.wav`. Browsers record webm/opus, and copies that keep those
  originals are read too (not verified against the release): any audio suffix
  (.wav, .webm, .ogg, ...) is accepted and decoded by `coughjax.audio.load`. One
  web folder is reported (third-party code) to hold files without a suffix; they
  are kept and the feature cache skips and counts them if they cannot be decoded.
* Excluded: augmented copies (`*.wav_aug_amp1.wav`, `_aug_noise*`,
  `_aug_pitchspeed*`, shipped in healthy*/asthma* subsets for tasks 2 and 3) and
  files with `mono` in the name, as the reference code excludes them.

Tasks (`03_classification_without_augmentation.py`; counts from the release's own
README, which describes 459 breath+cough samples from 378 users; a sample is one
breath+cough pair):

* task 1, COVID-positive vs healthy without symptoms: covid{android,web}{no,with}
  cough vs healthy{android,web}nosymp; 62 users (141 samples) / 220 users (298).
* task 2, COVID-positive with cough vs healthy with cough: covid{android,web}
  withcough vs healthy{android,web}withcough; 23 users (54) / 29 users (32).
* task 3, COVID-positive with cough vs asthma with cough: covid{android,web}
  withcough vs asthma{android,web}withcough; 23 users (54) / 18 users (20).

The Xue & Salim (KDD 2021) downstream set, "141 COVID-positive samples from 62
participants, 298 negative from 220", matches task 1 (the default) to the number
(some third-party code comments say 66 task-1 users; the release README says 62).
What could not be verified without the data: whether every task-1 cough file
yields one of the 141/298 samples (the reference code also drops Android samples
whose breath has no cough in `android_breath2cough.json` and any file shorter than
2 s after silence trimming, so this manifest may count slightly more), whether
some Android users are in both a positive and a negative subset (logged if so),
and which web suffixes the release uses.
"""

from __future__ import annotations

import collections
import pathlib
import re
from typing import Optional, Sequence

from absl import logging

from coughjax.data import manifest as manifest_lib
from coughjax.data.manifest import Recording

SUBSETS = (
    "covidandroidnocough", "covidandroidwithcough", "covidwebnocough", "covidwebwithcough",
    "healthyandroidnosymp", "healthyandroidwithcough", "healthywebnosymp",
    "healthywebwithcough", "asthmaandroidwithcough", "asthmawebwithcough",
)
# task -> (positive subsets, negative subsets), from the reference code's
# 03_classification_without_augmentation.py.
TASKS = {
    1: (("covidandroidnocough", "covidandroidwithcough", "covidwebnocough",
         "covidwebwithcough"),
        ("healthyandroidnosymp", "healthywebnosymp")),
    2: (("covidandroidwithcough", "covidwebwithcough"),
        ("healthyandroidwithcough", "healthywebwithcough")),
    3: (("covidandroidwithcough", "covidwebwithcough"),
        ("asthmaandroidwithcough", "asthmawebwithcough")),
}
SOUNDS = ("cough", "breath", "voice")
DEFAULT_SOUNDS = ("cough",)

# Android keeps each sound in its own folder of the subset.
_ANDROID_FOLDERS = {"cough": "cough", "breath": "breath", "voice": "voice"}
_AUDIO_SUFFIXES = (".wav", ".webm", ".ogg", ".flac", ".mp3", ".m4a", ".opus")
# <kind>_<uid>_<ms timestamp>, e.g. breaths_CNz7PwFNQz_1588140467902.
_ANDROID_NAME = re.compile(r"^(?P<kind>[A-Za-z]+)_(?P<uid>.+)_(?P<stamp>\d+)$")
_WEB_PREFIX = "audio_file_"


def _sound_of(kind: str) -> Optional[str]:
  """The coughjax sound of a file-name token (`cough`, `breaths`, `breathe`, ...)."""
  kind = kind.lower()
  if kind.startswith("cough"):
    return "cough"
  if kind.startswith("breath"):
    return "breath"
  if kind.startswith(("voice", "read")):
    return "voice"
  return None


def _is_candidate(path: pathlib.Path) -> bool:
  """An original recording by its name: not hidden, augmented or a mono copy, and
  audio-like (whether it is a regular file inside the root, `manifest` checks)."""
  name = path.name
  if name.startswith(".") or "_aug_" in name or "mono" in name:
    return False
  # One web folder of the release holds suffix-less files: keep them, the feature
  # cache reports them if they cannot be decoded.
  return "." not in name or path.suffix.lower() in _AUDIO_SUFFIXES


def _subset_dir(root: pathlib.Path, subset: str) -> pathlib.Path:
  folder = root / subset
  # Unzipping `<subset>.zip` may leave `<subset>/<subset>/...`.
  return folder / subset if (folder / subset).is_dir() else folder


def _android(folder: pathlib.Path, sounds: Sequence[str], label: int) -> list[Recording]:
  records = []
  for sound in sounds:
    sound_dir = folder / _ANDROID_FOLDERS[sound]
    if not sound_dir.is_dir():
      continue
    for path in sorted(sound_dir.iterdir()):
      match = _ANDROID_NAME.match(path.name.split(".")[0])
      if not _is_candidate(path) or not match or _sound_of(match["kind"]) != sound:
        continue
      records.append(Recording(str(path), match["uid"], sound, label))
  return records


def _web(folder: pathlib.Path, sounds: Sequence[str], label: int) -> list[Recording]:
  records = []
  for session in sorted(p for p in folder.iterdir() if p.is_dir()):
    if session.name.startswith((".", "__")):  # .DS_Store-like and __MACOSX zip debris
      continue
    for path in sorted(session.iterdir()):
      stem = path.name.split(".")[0]
      if not _is_candidate(path) or not stem.startswith(_WEB_PREFIX):
        continue
      sound = _sound_of(stem[len(_WEB_PREFIX):])
      if sound in sounds:
        records.append(Recording(str(path), session.name, sound, label))
  return records


def manifest(root: str | pathlib.Path, *, task: int = 1,
             sounds: Sequence[str] = DEFAULT_SOUNDS) -> list[Recording]:
  """The recordings of one KDD 2020 task under `root`.

  Args:
    root: folder holding the unpacked subset folders (`covidandroidnocough`, ...).
    task: 1, 2 or 3 (see the module docstring); 1 is the paper's downstream set.
    sounds: any of "cough", "breath", "voice".

  Returns:
    Recordings of the task's subsets only, label 1 for its positive subsets and
    0 for its negative ones, in subset then file order.

  Raises:
    FileNotFoundError: `root` or one of the task's subset folders is missing.
    ValueError: unknown task or sound, or no recordings found.
  """
  if task not in TASKS:
    raise ValueError(f"unknown COVID-19 Sounds task {task!r}; choose from {sorted(TASKS)}")
  sounds = tuple(sounds) or DEFAULT_SOUNDS
  unknown = sorted(set(sounds) - set(SOUNDS))
  if unknown:
    raise ValueError(f"unknown COVID-19 Sounds sound(s) {unknown}; choose from {SOUNDS}")
  root = pathlib.Path(root)
  if not root.is_dir():
    raise FileNotFoundError(f"{root}: COVID-19 Sounds root folder not found")
  positive, negative = TASKS[task]
  missing = [s for s in positive + negative if not _subset_dir(root, s).is_dir()]
  if missing:
    zipped = [s for s in missing if (root / f"{s}.zip").is_file()]
    hint = f"; unzip {', '.join(f'{s}.zip' for s in zipped)} first" if zipped else ""
    present = sorted(s for s in SUBSETS if (root / s).is_dir())
    raise FileNotFoundError(
        f"{root}: missing COVID-19 Sounds subset folder(s) {missing} needed for task "
        f"{task} (found {present or 'none'}){hint}")

  records, per_subset = [], {}
  for subset in positive + negative:
    label = int(subset in positive)
    read = _android if "android" in subset else _web
    found = read(_subset_dir(root, subset), sounds, label)
    # Listed, not named by metadata: still, a symbolic link may lead out of the root,
    # and an entry may be a folder or a fifo.
    kept = manifest_lib.confine(root, [r.path for r in found], source=root / subset)
    found = [r for r, path in zip(found, kept) if path is not None]
    per_subset[subset] = len(found)
    records.extend(found)
  if not records:
    raise ValueError(f"{root}: no COVID-19 Sounds recordings of sounds {list(sounds)} in "
                     f"the task {task} subsets (expected <subset>/cough/cough_<uid>_<ms>"
                     ".wav or <subset>/<session>/audio_file_cough.<ext>)")
  _log_summary(root, task, sounds, records, per_subset)
  return records


def _log_summary(root, task, sounds, records, per_subset) -> None:
  by_sound = collections.Counter(r.sound for r in records)
  for sound in sounds:
    if not by_sound[sound]:
      logging.warning("%s: no %s recordings found for task %d%s", root, sound, task,
                      " (the KDD 2020 release has only cough and breathing)"
                      if sound == "voice" else "")
  labels_of = collections.defaultdict(set)
  for r in records:
    labels_of[r.participant_id].add(r.label)
  both = sorted(p for p, labels in labels_of.items() if len(labels) > 1)
  if both:
    logging.warning("%s: %d participant(s) are in both classes of task %d (e.g. %s); "
                    "participant splits count them as positive", root, len(both), task,
                    both[0])
  classes = []
  for label, name in ((1, "positive"), (0, "negative")):
    rows = [r for r in records if r.label == label]
    classes.append(f"{name} {len(rows)} from {len({r.participant_id for r in rows})} "
                   "participants")
  subsets = ", ".join(f"{s} {n}" for s, n in per_subset.items())
  logging.info("COVID-19 Sounds task %d (%s): %d recordings, %s; per subset: %s", task,
               "+".join(sounds), len(records), "; ".join(classes), subsets)


def from_config(cfg) -> list[Recording]:
  """`config.data` fields: root, task (default 1), sounds (empty = cough)."""
  if not cfg.root:
    raise ValueError("data.name='covid19_sounds' needs --config.data.root=<folder with "
                     "the unpacked subset folders covidandroidnocough, ...>")
  return manifest(cfg.root, task=int(cfg.get("task") or 1),
                  sounds=tuple(cfg.get("sounds", ())) or DEFAULT_SOUNDS)
