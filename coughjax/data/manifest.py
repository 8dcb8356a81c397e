"""The one manifest format every data source produces: a table of recordings."""

from __future__ import annotations

import collections
import csv
import dataclasses
import os
import pathlib
import stat
from typing import Iterable, Optional, Sequence

from absl import logging

# The sounds used for contrastive pre-training (paper §5.1.1): breathing and cough.
PRETRAIN_SOUNDS = ("breathing-deep", "breathing-shallow", "cough-heavy", "cough-shallow")
COLUMNS = ("path", "participant_id", "sound", "label")
# Written only when some recording has a stratum, so other manifests keep 4 columns.
STRATUM_COLUMN = "stratum"
# The built-in generator's addresses (`coughjax.data.synthetic.SCHEME`), not files.
SYNTHETIC_SCHEME = "synthetic://"


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


def confine(root: str | os.PathLike, names: Sequence[str], *, source: str | os.PathLike,
            allow_outside: bool = False) -> list[Optional[pathlib.Path]]:
  """The audio paths a data source's metadata names, kept inside its data root.

  Every source that reads paths from metadata (or finds files by listing folders)
  passes them through here, before anything opens them: a path that resolves
  outside `root` (an absolute path elsewhere, "..", a symbolic link leading out)
  and anything that exists but is not a regular file (a folder, a device such as
  /dev/zero, a fifo, a socket) are skipped, counted and logged in one warning
  naming `source`. Nothing is opened; a missing path is returned as it is (the
  caller or the feature cache reports it).

  Args:
    root: the data root.
    names: paths relative to `root` (or absolute).
    source: the metadata file (or folder) the names come from, for the log line.
    allow_outside: accept paths outside `root` (a CSV manifest whose user opted in);
      non-regular files are still skipped.

  Returns:
    Per name, its path (`root` / name, as given), or None where skipped.
  """
  real_root = os.path.realpath(root)
  out, skipped = [], []
  for name in names:
    path = pathlib.Path(root) / name
    reason = _why_skipped(name, path, real_root, allow_outside)
    out.append(None if reason else path)
    if reason:
      skipped.append((name, reason))
  if skipped:
    kinds = collections.Counter(reason for _, reason in skipped)
    logging.warning("%s: skipped %d of %d audio paths, none of them opened (%s; data root "
                    "%s); first: %r", source, len(skipped), len(names),
                    ", ".join(f"{n} {k}" for k, n in kinds.most_common()), real_root,
                    skipped[0][0])
  return out


def _why_skipped(name: str, path: pathlib.Path, real_root: str, allow_outside: bool
                 ) -> Optional[str]:
  """Why `confine` skips a path (None: it does not). Only stats, never opens."""
  if not name:
    return "empty path"
  try:
    real = os.path.realpath(path)
  except (ValueError, OSError):  # a NUL byte in the name, say
    return "not a usable path"
  if not allow_outside and os.path.commonpath([real, real_root]) != real_root:
    return "outside the data root"
  try:
    mode = os.stat(real).st_mode
  except FileNotFoundError:
    return None  # missing: the caller or the feature cache says so
  except OSError:  # a name too long, a file used as a folder, no permission
    return "not a usable path"
  return None if stat.S_ISREG(mode) else "not a regular file"


def read_csv_rows(path: str | os.PathLike, required: Iterable[str] = (),
                  what: str = "CSV file") -> list[dict[str, str]]:
  """The rows of a CSV file with a header, as dicts (missing cells are "").

  Raises:
    ValueError naming the file: unreadable, not UTF-8 text, malformed CSV (a NUL
      byte, an oversized field), or without the `required` columns.
  """
  try:
    with open(path, newline="", encoding="utf-8-sig") as f:
      reader = csv.DictReader(f)
      rows = list(reader)
      columns = reader.fieldnames or []
  except (OSError, UnicodeDecodeError, csv.Error) as e:
    raise ValueError(f"{path}: cannot read the {what} as UTF-8 CSV ({e})") from e
  missing = sorted(set(required) - set(columns))
  if missing:
    raise ValueError(f"{path}: {what} lacks column(s) {missing}; has {columns}")
  # A short row has None for its missing cells; an extra cell goes under the key None.
  return [{k: v or "" for k, v in row.items() if k is not None} for row in rows]


def read_csv(path: str | os.PathLike, *, any_paths: bool = False) -> list[Recording]:
  """Reads a manifest CSV with columns path, participant_id, sound[, label][, stratum].

  Audio paths are relative to the CSV's folder and must stay inside it (`confine`:
  others are skipped and counted) unless `any_paths` (config
  `data.manifest_any_paths`: for a CSV you trust) allows absolute paths and paths
  outside it. `synthetic://` addresses are kept as they are. Labels must be 0/1 or
  empty; anything else is an error naming the file, row and value.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{path}: manifest not found")
  rows = []
  for row_number, row in enumerate(
      read_csv_rows(path, ("path", "participant_id", "sound"), "manifest"), start=2):
    label = row.get("label", "").strip()
    if label not in ("", "0", "1"):
      raise ValueError(f"{path}:{row_number}: label must be 0, 1 or empty, got {label!r}")
    rows.append((row["path"], Recording("", row["participant_id"], row["sound"],
                                        int(label) if label else None,
                                        row.get(STRATUM_COLUMN, "").strip())))
  if not rows:
    raise ValueError(f"{path}: manifest has no rows")
  files = [name for name, _ in rows if not name.startswith(SYNTHETIC_SCHEME)]
  found = iter(confine(path.parent, files, source=path, allow_outside=any_paths))
  records = []
  for name, record in rows:
    audio = name if name.startswith(SYNTHETIC_SCHEME) else next(found)
    if audio is not None:
      records.append(dataclasses.replace(record, path=str(audio)))
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
