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
# Written only when some recording has a stratum, so other manifests keep 4 columns.
STRATUM_COLUMN = "stratum"


@dataclasses.dataclass(frozen=True)
class Recording:
  """One recording.

  Attributes:
    path: audio file path, or `synthetic://...` for the built-in generator.
    participant_id: whose recording it is; splits and contrastive pairs use it.
    sound: e.g. "cough-heavy", "breathing-deep", "cough".
    label: binary task label (1 = positive class) or None when unlabelled.
    stratum: a group that splits keep apart besides the label, e.g. the recording
      channel of covid19_cough ("call-center" / "telegram"): participants are
      split per (stratum, label), so every split keeps each stratum's label
      balance. "" (one group) for sources without such a confound.
  """
  path: str
  participant_id: str
  sound: str
  label: Optional[int] = None
  stratum: str = ""


def read_csv(path: str | os.PathLike) -> list[Recording]:
  """Reads a manifest CSV with columns path, participant_id, sound[, label][, stratum].

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
                               int(label) if label else None,
                               (row.get(STRATUM_COLUMN) or "").strip()))
  if not records:
    raise ValueError(f"{path}: manifest has no rows")
  return records


def write_csv(records: Iterable[Recording], path: str | os.PathLike) -> None:
  """Writes COLUMNS, plus `stratum` when any recording has one."""
  records = list(records)
  strata = any(r.stratum for r in records)
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(COLUMNS + ((STRATUM_COLUMN,) if strata else ()))
    for r in records:
      row = [r.path, r.participant_id, r.sound, "" if r.label is None else r.label]
      writer.writerow(row + ([r.stratum] if strata else []))


def select(records: Iterable[Recording], sounds: Optional[Sequence[str]] = None,
           labelled: bool = False) -> list[Recording]:
  """Keeps the recordings of the given sounds (all if None) and, if `labelled`, only
  those with a label."""
  keep = set(sounds) if sounds else None
  return [r for r in records
          if (keep is None or r.sound in keep) and (not labelled or r.label is not None)]


def _labels_text(records: Sequence[Recording]) -> str:
  labels = collections.Counter(r.label for r in records)
  return ", ".join(f"{k}: {v}" for k, v in sorted(labels.items(), key=str))


def describe(records: Sequence[Recording]) -> str:
  """One line: recordings, participants, sounds and label balance (per stratum too,
  when the recordings have strata)."""
  participants = len({r.participant_id for r in records})
  sounds = collections.Counter(r.sound for r in records)
  sound_txt = ", ".join(f"{k}: {v}" for k, v in sorted(sounds.items()))
  line = (f"{len(records)} recordings from {participants} participants "
          f"(sounds {sound_txt}; labels {_labels_text(records)})")
  if any(r.stratum for r in records):
    line += "; per stratum: " + "; ".join(
        f"{s or '-'} labels {_labels_text([r for r in records if r.stratum == s])}"
        for s in sorted({r.stratum for r in records}))
  return line
