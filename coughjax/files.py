"""Files coughjax writes and the settings it reads: atomic writes, output checks, JSON.

* `atomic_write`: a file appears whole or not at all (written under a temporary
  name in its folder, then renamed), so a crash never leaves a half-written file
  that looks like a result.
* `check_output`: a command's `--output` is checked before any work (its folder
  exists and is writable), so a bad path fails in a second, not after the work.
* `read_json`: settings files (`config.json`, `encoders.json`, a shipped encoder's
  `.json`) read with an error that names the file and says what is wrong.
* `write_predictions` / `read_predictions`: the per-recording scores CSV (path,
  label, probability) that the trainer and the evaluation protocol write.
"""

from __future__ import annotations

import csv
import io
import json
import os
import pathlib
import tempfile
from typing import Any, BinaryIO, Callable, Sequence


def umask() -> int:
  """The process's umask: from /proc where it can be read (Linux), else by setting
  it and setting it back (which other threads could see for that instant)."""
  try:
    with open("/proc/self/status", encoding="ascii") as f:
      for line in f:
        if line.startswith("Umask:"):
          return int(line.split()[1], 8)
  except (OSError, ValueError):
    pass
  mask = os.umask(0o022)
  os.umask(mask)
  return mask


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], Any]) -> None:
  """Calls write(f) on a temporary file beside `path`, then renames it to `path`
  (creating the folder); on any error the temporary file is removed.

  The file gets the mode a plain `open(path, "w")` gives (0o666 less the umask),
  not the temporary file's private 0o600, so others can read the outputs where
  the umask lets them.
  """
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
  try:
    os.fchmod(fd, 0o666 & ~umask())
    with os.fdopen(fd, "wb") as f:
      write(f)
    os.replace(tmp, path)
  except BaseException:
    os.unlink(tmp)
    raise


def with_suffix(path: str | os.PathLike, suffix: str) -> pathlib.Path:
  """`path` with `suffix` appended unless its name already ends with it (what
  np.savez does to `x`: it writes `x.npz`)."""
  path = pathlib.Path(path)
  return path if path.name.endswith(suffix) else path.with_name(path.name + suffix)


def check_output(path: str | os.PathLike, *, suffix: str = "", folder: bool = False,
                 flag: str = "--output") -> pathlib.Path:
  """The path a command will write, checked before the work.

  Args:
    path: the `--output` value.
    suffix: appended when `path` lacks it (`with_suffix`), so the returned path
      is the one written.
    folder: the output is a folder, created with its missing parents: the nearest
      existing ancestor must be a writable folder. Otherwise the output is a file
      whose folder must exist and be writable, and which must not be a folder.
    flag: how messages name the option.

  Returns:
    The path that will be written.

  Raises:
    ValueError naming the flag and the path.
  """
  out = with_suffix(path, suffix)
  if folder:
    if out.exists() and not out.is_dir():
      raise ValueError(f"{flag}={path}: {out} exists and is not a folder")
    parent = out
    while not parent.exists():
      parent = parent.parent
  else:
    if out.is_dir() or pathlib.Path(path).is_dir():
      raise ValueError(f"{flag}={path}: a folder; give a file name")
    parent = out.parent
    if not parent.is_dir():
      raise ValueError(f"{flag}={path}: folder {parent} does not exist; create it first")
  if not parent.is_dir():
    raise ValueError(f"{flag}={path}: {parent} is not a folder")
  if not os.access(parent, os.W_OK | os.X_OK):
    raise ValueError(f"{flag}={path}: folder {parent} is not writable")
  return out


def read_json(path: str | os.PathLike, what: str, required: Sequence[str] = ()) -> Any:
  """The JSON document in `path`.

  Args:
    path: the file.
    what: what it holds, for messages (e.g. "encoder settings").
    required: keys the document (then an object) must have.

  Raises:
    FileNotFoundError: no such file.
    ValueError naming the file: unreadable, not JSON, not an object with `required`.
  """
  path = pathlib.Path(path)
  try:
    text = path.read_text(encoding="utf-8")
  except FileNotFoundError:
    raise FileNotFoundError(f"{path}: {what} not found") from None
  except (OSError, UnicodeDecodeError) as e:
    raise ValueError(f"{path}: cannot read {what} ({e})") from e
  try:
    doc = json.loads(text)
  except ValueError as e:
    raise ValueError(f"{path}: {what}: not valid JSON ({e}); the file is damaged or was "
                     "not written by coughjax") from e
  if required:
    if not isinstance(doc, dict):
      raise ValueError(f"{path}: {what}: expected a JSON object, got "
                       f"{type(doc).__name__}")
    missing = [k for k in required if k not in doc]
    if missing:
      raise ValueError(f"{path}: {what}: missing {missing}; the file is damaged or was "
                       "not written by coughjax")
  return doc


PREDICTIONS_COLUMNS = ("path", "label", "probability")


def write_predictions(path: str | os.PathLike, paths: Sequence[str], labels: Sequence,
                      scores: Sequence[float]) -> None:
  """One row per recording: its path, label (0 / 1) and probability (written as
  `repr`, so it reads back to the same float), atomically (`atomic_write`)."""
  if not len(paths) == len(labels) == len(scores):
    raise ValueError(f"{path}: {len(scores)} scores and {len(labels)} labels for "
                     f"{len(paths)} recordings")
  text = io.StringIO()
  writer = csv.writer(text)
  writer.writerow(PREDICTIONS_COLUMNS)
  for p, y, s in zip(paths, labels, scores):
    writer.writerow([p, int(y), repr(float(s))])
  atomic_write(path, lambda f: f.write(text.getvalue().encode()))


def read_predictions(path: str | os.PathLike) -> list[dict[str, Any]]:
  """`write_predictions`' rows: [{"path", "label" (int), "probability" (float)}].

  Raises:
    ValueError naming the file: its columns are not `PREDICTIONS_COLUMNS`.
  """
  with open(path, newline="", encoding="utf-8") as f:
    reader = csv.DictReader(f)
    if tuple(reader.fieldnames or ()) != PREDICTIONS_COLUMNS:
      raise ValueError(f"{path}: columns {reader.fieldnames}, expected "
                       f"{list(PREDICTIONS_COLUMNS)}; not a predictions file of coughjax")
    return [{"path": r["path"], "label": int(r["label"]),
             "probability": float(r["probability"])} for r in reader]
