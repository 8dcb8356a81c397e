"""Coswara (IISc, CC BY 4.0): manifests from the extracted release or the flat subset.

Two layouts under `root`:

* extracted release (iiscleap/Coswara-Data after running its extraction script):
  `<root>/<YYYYMMDD>/<participant>/<sound>.wav`, each participant folder with a
  `metadata.json`, and/or a `combined_data.csv` (columns `id, a, covid_status, g, ...`)
  at the root or one level up;
* flat: `<root>/audio/<participant>/<sound>.<ext>` with `<root>/labels.csv`
  (columns `participant_id, sound, path, covid_status, age, gender, ...`), e.g. the
  `coswara_ci` test subset.

Labels (`label=`): `covid_status` (1 = positive_*, 0 = healthy /
no_resp_illness_exposed / resp_illness_not_identified; other statuses such as
recovered or under_validation are left unlabelled), `sex` (1 = male, 0 = female),
`age` (1 = age >= `age_threshold`), or None.
"""

from __future__ import annotations

import json
import pathlib
from typing import Mapping, Optional, Sequence

from absl import logging

from coughjax.data import manifest as manifest_lib
from coughjax.data.manifest import PRETRAIN_SOUNDS, Recording

LABELS = ("covid_status", "sex", "age")
_NEGATIVE_STATUS = ("healthy", "no_resp_illness_exposed", "resp_illness_not_identified")
_AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".webm")


def to_label(meta: Mapping[str, str], label: Optional[str],
             age_threshold: int = 50) -> Optional[int]:
  """Binary label of a participant from its metadata (keys as in Coswara's
  combined_data.csv: `covid_status`, `g`/`gender`, `a`/`age`)."""
  if label is None:
    return None
  if label == "covid_status":
    status = str(meta.get("covid_status") or "").strip()
    if status.startswith("positive"):
      return 1
    return 0 if status in _NEGATIVE_STATUS else None
  if label == "sex":
    sex = str(meta.get("g") or meta.get("gender") or "").strip().lower()
    return {"male": 1, "female": 0}.get(sex)
  if label == "age":
    try:
      return int(float(str(meta.get("a") or meta.get("age") or "")) >= age_threshold)
    except ValueError:
      return None
  raise ValueError(f"unknown Coswara label {label!r}; choose from {LABELS} or None")


def manifest(root: str | pathlib.Path, *, label: Optional[str] = None,
             sounds: Optional[Sequence[str]] = PRETRAIN_SOUNDS,
             age_threshold: int = 50) -> list[Recording]:
  """The recordings under `root` (either layout), restricted to `sounds`."""
  root = pathlib.Path(root)
  if not root.is_dir():
    raise FileNotFoundError(f"{root}: Coswara root folder not found")
  if (root / "labels.csv").is_file() and (root / "audio").is_dir():
    records = _flat(root, label, age_threshold)
  else:
    records = _extracted(root, label, age_threshold)
  if sounds:
    records = [r for r in records if r.sound in set(sounds)]
  if not records:
    raise ValueError(f"{root}: no Coswara recordings of sounds {list(sounds or [])} found "
                     "(expected <date>/<participant>/<sound>.wav or audio/<participant>/"
                     "<sound>.flac with labels.csv)")
  return records


def _flat(root: pathlib.Path, label, age_threshold) -> list[Recording]:
  labels_csv = root / "labels.csv"
  rows = manifest_lib.read_csv_rows(labels_csv, ("participant_id", "sound", "path"),
                                    "Coswara labels")
  paths = manifest_lib.confine(root, [row["path"] for row in rows], source=labels_csv)
  return [Recording(str(path), row["participant_id"], row["sound"],
                    to_label(row, label, age_threshold))
          for row, path in zip(rows, paths) if path is not None]


def _extracted(root: pathlib.Path, label, age_threshold) -> list[Recording]:
  combined = {}
  for csv_path in (root / "combined_data.csv", root.parent / "combined_data.csv"):
    if csv_path.is_file():
      combined = {row["id"]: row for row in manifest_lib.read_csv_rows(
          csv_path, ("id",), "Coswara combined_data")}
      break
  records, unlabelled = [], 0
  for folder in sorted(p for p in root.glob("*/*") if p.is_dir()):
    meta = combined.get(folder.name)
    meta_json = folder / "metadata.json"
    if meta is None and meta_json.is_file():
      try:
        meta = json.loads(meta_json.read_text())
        if not isinstance(meta, dict):
          raise ValueError(f"expected a JSON object, got {type(meta).__name__}")
      except ValueError as e:
        meta = None
        logging.warning("%s: unreadable metadata (%s); participant kept unlabelled",
                        meta_json, e)
    y = to_label(meta or {}, label, age_threshold)
    unlabelled += label is not None and y is None
    for audio_path in sorted(folder.iterdir()):
      if audio_path.suffix.lower() in _AUDIO_SUFFIXES:
        records.append(Recording(str(audio_path), folder.name, audio_path.stem, y))
  # Listed, not named by metadata, but a symbolic link may still lead out of the root.
  kept = manifest_lib.confine(root, [r.path for r in records], source=root)
  records = [r for r, path in zip(records, kept) if path is not None]
  if unlabelled:
    logging.info("%s: %d participants have no %s label", root, unlabelled, label)
  return records


def from_config(cfg) -> list[Recording]:
  """`config.data` fields: root, label, sounds, age_threshold."""
  if not cfg.root:
    raise ValueError("data.name='coswara' needs --config.data.root=<Coswara folder>")
  return manifest(cfg.root, label=cfg.label or None, sounds=tuple(cfg.sounds) or None,
                  age_threshold=cfg.age_threshold)
