"""The one manifest format every data source produces: a table of recordings."""

from __future__ import annotations

import collections
import csv
import dataclasses
import os
import pathlib
from typing import Iterable, Optional, Sequence

# The sounds used for contrastive pre-training (paper §5.1.1): breathing and cough.
PRETRAIN_SOUNDS = ("breathing-deep", "breathing-shallow", "cough-heavy", "cough-shallow")
COLUMNS = ("path", "participant_id", "sound", "label")


@dataclasses.dataclass(frozen=True)
class Recording:
  """One recording.

  Attributes:
    path: audio file path, or `synthetic://...` for the built-in generator.
    participant_id: whose recording it is; splits and contrastive pairs use it.
    sound: e.g. "cough-heavy", "breathing-deep", "cough".
    label: binary task label (1 = positive class) or None when unlabelled.
  """
  path: str
  participant_id: str
  sound: str
  label: Optional[int] = None


def read_csv(path: str | os.PathLike) -> list[Recording]:
  """Reads a manifest CSV with columns path, participant_id, sound[, label].

  Relative audio paths are taken relative to the CSV's folder. Labels must be 0/1
  or empty; anything else is an error naming the file, row and value.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{path}: manifest not found")
  with open(path, newline="") as f:
    reader = csv.DictReader(f)
    missing = {"path", "participant_id", "sound"} - set(reader.fieldnames or ())
    if missing:
      raise ValueError(f"{path}: manifest lacks column(s) {sorted(missing)}; "
                       f"has {reader.fieldnames}")
    records = []
    for row_number, row in enumerate(reader, start=2):
      label = (row.get("label") or "").strip()
      if label not in ("", "0", "1"):
        raise ValueError(f"{path}:{row_number}: label must be 0, 1 or empty, got {label!r}")
      audio = row["path"]
      if not os.path.isabs(audio) and "://" not in audio:
        audio = str(path.parent / audio)
      records.append(Recording(audio, row["participant_id"], row["sound"],
                               int(label) if label else None))
  if not records:
    raise ValueError(f"{path}: manifest has no rows")
  return records


def write_csv(records: Iterable[Recording], path: str | os.PathLike) -> None:
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(COLUMNS)
    for r in records:
      writer.writerow([r.path, r.participant_id, r.sound, "" if r.label is None else r.label])


def select(records: Iterable[Recording], sounds: Optional[Sequence[str]] = None,
           labelled: bool = False) -> list[Recording]:
  """Keeps the recordings of the given sounds (all if None) and, if `labelled`, only
  those with a label."""
  keep = set(sounds) if sounds else None
  return [r for r in records
          if (keep is None or r.sound in keep) and (not labelled or r.label is not None)]


def describe(records: Sequence[Recording]) -> str:
  """One line: recordings, participants, sounds and label balance."""
  participants = len({r.participant_id for r in records})
  labels = collections.Counter(r.label for r in records)
  sounds = collections.Counter(r.sound for r in records)
  label_txt = ", ".join(f"{k}: {v}" for k, v in sorted(labels.items(), key=str))
  sound_txt = ", ".join(f"{k}: {v}" for k, v in sorted(sounds.items()))
  return (f"{len(records)} recordings from {participants} participants "
          f"(sounds {sound_txt}; labels {label_txt})")
