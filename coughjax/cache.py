r"""What the feature cache holds, and pruning it.

  python -m coughjax.cache list
  python -m coughjax.cache prune [--older-than=30d] [--all] [--dry-run]

The cache (`$COUGHJAX_CACHE`, default ~/.cache/coughjax; `coughjax.data.features`)
holds, per entry:

* a pack (`packed/<key>.f32` + `.index.npz`): the features of one corpus in one
  file (`coughjax.data.packed`), written once per corpus and feature parameters;
  every split and split seed of the corpus reads it. A changed corpus (a recording
  added or re-encoded) or other feature parameters write a new one;
* a feature set (`features/<params key>/`): each recording's features under one
  set of feature parameters, from which packs are written;
* file hashes (`hashes/`): the sha256 of each audio file, remembered by path, size
  and modification time;
* near-duplicate groups (`dedup/`): the copies `coughjax.data.dedup` found in each
  set of recordings;
* temporaries (`.tmp-*`): files being written, or left by a writer that crashed.

`list` prints every entry with its size on disk, its last use (packs: opened;
feature sets: resolved), what it is for and whether a process has it open.

`prune` removes

* always: orphans, i.e. packs of an older format or left incomplete, feature sets
  of an older feature version, temporaries untouched for `TEMPORARY_GRACE_S`;
* with `--older-than=AGE` (`90m`, `12h`, `30d`, `2w`): also packs and feature sets
  not used for longer than AGE, and the file hashes when none was added for AGE;
* with `--all`: everything,

never an entry in use or being written: a process that has a pack open, that
resolves or reads a feature set, or that writes file hashes or near-duplicate
groups, holds a shared lock on it, and `prune` deletes only under an exclusive lock
it gets without waiting, so it keeps those entries and says so; packs and
temporaries younger than `TEMPORARY_GRACE_S` that are still being written are left
alone even by `--all`. A damaged pack (unreadable index, data of the wrong size,
NaN features) is an orphan. A run that
needs something pruned rebuilds it (features are recomputed, packs rewritten).
`--dry-run` prints what would go and removes nothing.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import fcntl
import json
import os
import pathlib
import re
import shutil
import time
from typing import Iterator, Optional

from absl import app
from absl import flags
import numpy as np

from coughjax import cli
from coughjax.data import features as features_lib
from coughjax.data import packed

TEMPORARY_GRACE_S = 3600  # a temporary untouched this long has lost its writer
_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


@dataclasses.dataclass
class Entry:
  """One thing in the cache.

  Attributes:
    kind: "pack", "features", "hashes", "dedup" or "temporary".
    name: the pack's key, the feature set's parameter key, or a path.
    paths: what removing it deletes (files or folders).
    size: bytes on disk.
    last_used: seconds since the epoch.
    about: what it is for.
    orphan: why nothing can use it ("" if something can).
    lock: the file a user holds a shared lock on, if any.
    params_key: a pack's feature parameters (the feature set it was made from).
  """
  kind: str
  name: str
  paths: list[pathlib.Path]
  size: int
  last_used: float
  about: str
  orphan: str = ""
  lock: Optional[pathlib.Path] = None
  params_key: str = ""

  def in_use(self) -> bool:
    with _exclusive(self.lock) as got:
      return not got


class _exclusive:  # pylint: disable=invalid-name
  """`with _exclusive(path) as got:` an exclusive flock on `path` if no one holds
  one (got=True; also when `path` is None or gone), else got=False; no waiting."""

  def __init__(self, path: Optional[pathlib.Path]):
    self._path, self._file = path, None

  def __enter__(self) -> bool:
    if self._path is None:
      return True
    try:
      self._file = open(self._path, "rb")  # pylint: disable=consider-using-with
    except FileNotFoundError:
      return True
    try:
      fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      return False
    return True

  def __exit__(self, *exc) -> None:
    if self._file is not None:
      self._file.close()  # releases the lock


def parse_age(text: str) -> float:
  """'90m' / '12h' / '30d' / '2w' / '45s' -> seconds."""
  m = _AGE.match(text)
  if not m:
    raise ValueError(f"age {text!r}: expected a number and a unit of s, m, h, d or w "
                     "(e.g. 30d)")
  return float(m.group(1)) * _UNITS[m.group(2)]


@dataclasses.dataclass
class _Scan:
  size: int = 0  # bytes on disk
  newest: float = 0.0  # mtime
  counts: dict = dataclasses.field(default_factory=dict)  # suffix -> files
  temporaries: list = dataclasses.field(default_factory=list)


def _scan(path: pathlib.Path) -> _Scan:
  """Size, newest mtime and files by suffix of a file or folder (temporaries apart)."""
  out = _Scan()
  try:
    st = path.stat()
  except FileNotFoundError:
    return out
  out.newest = st.st_mtime
  if not path.is_dir():
    out.size = st.st_blocks * 512
    return out
  for root, _, files in os.walk(path):
    for f in files:
      p = pathlib.Path(root) / f
      if f.startswith(".tmp-"):
        out.temporaries.append(p)
        continue
      try:
        s = p.stat()
      except FileNotFoundError:
        continue
      out.size += s.st_blocks * 512
      out.newest = max(out.newest, s.st_mtime)
      out.counts[p.suffix] = out.counts.get(p.suffix, 0) + 1
  return out


def _temporary(path: pathlib.Path, now: float) -> Entry:
  scan = _scan(path)
  idle = now - scan.newest
  if idle < TEMPORARY_GRACE_S:
    return Entry("temporary", str(path), [path], scan.size, scan.newest,
                 "being written")
  return Entry("temporary", str(path), [path], scan.size, scan.newest,
               "left by a writer that stopped", orphan=f"untouched for {_age(idle)}")


def _params_text(params: dict) -> str:
  return (f"{params.get('nfilt')} bands, {params.get('sample_rate')} Hz, "
          f"{params.get('winlen')}/{params.get('winstep')} s windows")


def _pack(folder: pathlib.Path, key: str, now: float) -> Entry:
  data, index = packed.paths(key, folder)
  size = _scan(data).size + _scan(index).size
  if not index.exists():
    mtime = _scan(data).newest
    if now - mtime < TEMPORARY_GRACE_S:  # its writer renames the index next
      return Entry("pack", key, [data], size, mtime, "being written", lock=data)
    return Entry("pack", key, [data], size, mtime, "a pack never finished",
                 "incomplete: data without index", lock=data)
  mtime = _scan(index).newest
  if not data.exists():
    return Entry("pack", key, [index], size, mtime, "a pack whose data is gone",
                 "index without data")
  try:
    meta = packed.read_meta(index)
  except KeyError:
    return Entry("pack", key, [index, data], size, mtime, "a pack of an older version",
                 "an older pack format (one pack per split)", lock=data)
  except Exception as e:  # pylint: disable=broad-except
    return Entry("pack", key, [index, data], size, mtime, "a pack",
                 f"unreadable index ({type(e).__name__}: {e})", lock=data)
  params = meta.get("feature_params", {})
  about = (f"{meta.get('corpus')}, from the {meta.get('kind')}: {meta.get('rows', 0):,} "
           f"recordings, {meta.get('frames', 0):,} frames, {meta.get('clip_frames')}-"
           f"frame clips; features {meta.get('params_key', '?')} "
           f"({_params_text(params)}); written {meta.get('written')}"
           + (f"; from {meta['source']}" if meta.get("source") else ""))
  expected = meta.get("frames", 0) * meta.get("mel", 0) * packed.DTYPE.itemsize
  if meta.get("version") != packed.PACK_VERSION:
    orphan = f"pack format {meta.get('version')}, not {packed.PACK_VERSION}"
  elif "mel" in meta and data.stat().st_size != expected:
    orphan = f"data of {data.stat().st_size} bytes, its index says {expected}"
  else:
    orphan = _nonfinite(data, index, meta)
  return Entry("pack", key, [index, data], size, mtime, about, orphan, lock=data,
               params_key=meta.get("params_key", ""))


def _nonfinite(data: pathlib.Path, index: pathlib.Path, meta: dict) -> str:
  """Why a pack's features are damaged (packed.nonfinite_rows' sample), or ""."""
  try:
    with np.load(index) as z:
      offsets = z["offsets"]
    frames = np.memmap(data, dtype=packed.DTYPE, mode="r",
                       shape=(meta["frames"], meta["mel"]))
  except (OSError, ValueError, KeyError) as e:
    return f"unreadable ({type(e).__name__}: {e})"
  bad = packed.nonfinite_rows(frames, offsets)
  return f"NaN or inf features in {len(bad)} sampled row(s)" if bad else ""


def _packs(root: pathlib.Path, now: float) -> Iterator[Entry]:
  folder = root / "packed"
  if not folder.is_dir():
    return
  keys = set()
  for p in folder.iterdir():
    if p.name.startswith(".tmp-"):
      yield _temporary(p, now)
    for suffix in (packed.INDEX_SUFFIX, packed.DATA_SUFFIX):
      if p.name.endswith(suffix) and not p.name.startswith("."):
        keys.add(p.name[:-len(suffix)])
  for key in sorted(keys):
    yield _pack(folder, key, now)


def _feature_set(folder: pathlib.Path, now: float, packs: int) -> Iterator[Entry]:
  scan = _scan(folder)
  for tmp in scan.temporaries:
    yield _temporary(tmp, now)
  lock = folder / features_lib.LOCK_FILE
  orphan, params = "", None
  try:
    described = json.loads((folder / features_lib.PARAMS_FILE).read_text())
    params = described["params"]
    if described.get("version") != features_lib.FEATURE_VERSION:
      orphan = (f"feature version {described.get('version')}, not "
                f"{features_lib.FEATURE_VERSION}")
  except (OSError, ValueError, KeyError):
    pass
  about = (f"features of {scan.counts.get('.npy', 0):,} recordings "
           f"({scan.counts.get('.err', 0):,} unusable) at "
           + (_params_text(params) if params else
              "parameters not recorded (an older cache)")
           + f"; {packs} pack(s) made from it")
  yield Entry("features", folder.name, [folder], scan.size,
              _scan(lock).newest or scan.newest, about, orphan, lock=lock)


def entries(root: Optional[pathlib.Path] = None,
            now: Optional[float] = None) -> list[Entry]:
  """Everything in the cache at `root` (default `$COUGHJAX_CACHE`)."""
  root = pathlib.Path(root) if root else features_lib.cache_root()
  now = time.time() if now is None else now
  found = list(_packs(root, now))
  packs_of = collections.Counter(e.params_key for e in found if e.params_key)
  if (root / "features").is_dir():
    for folder in sorted(p for p in (root / "features").iterdir() if p.is_dir()):
      found += _feature_set(folder, now, packs_of[folder.name])
  for kind, about in (
      (features_lib.HASHES, "sha256 of {:,} audio files (recomputed when missing: one "
                            "read of each file)"),
      (features_lib.DEDUP, "near-duplicate groups of {:,} sets of recordings "
                           "(recomputed when missing)")):
    folder = root / kind
    if folder.is_dir():
      scan = _scan(folder)
      found += [_temporary(t, now) for t in scan.temporaries]
      found.append(Entry(kind, kind, [folder], scan.size, scan.newest,
                         about.format(scan.counts.get(".json", 0)),
                         lock=folder / features_lib.LOCK_FILE))
  return found


def _age(seconds: float) -> str:
  for unit, span in (("d", 86400), ("h", 3600), ("m", 60)):
    if seconds >= span:
      return f"{seconds / span:.1f}{unit}"
  return f"{seconds:.0f}s"


def _gib(size: int) -> str:
  return f"{size / (1 << 30):.2f} GiB" if size >= 1 << 26 else f"{size / (1 << 20):.1f} MiB"


def _remove(entry: Entry) -> None:
  for p in entry.paths:
    if p.is_dir():
      shutil.rmtree(p)
    elif p.exists():
      p.unlink()


def prune(root: Optional[pathlib.Path] = None, *, older_than: Optional[float] = None,
          everything: bool = False, dry_run: bool = False,
          now: Optional[float] = None) -> list[tuple[Entry, str, str]]:
  """Removes orphans, entries unused for `older_than` seconds, or (`everything`)
  all, never one in use or being written (see the module docstring).

  Returns:
    (entry, why it goes, "removed" / "would remove" (dry run) / "kept" (in use))
    for every entry that goes or would go but for its use.
  """
  now = time.time() if now is None else now
  actions = []
  for entry in entries(root, now):
    idle = now - entry.last_used
    if entry.orphan:
      why = f"orphan: {entry.orphan}"
    elif entry.about == "being written":
      continue  # a writer is at work: not even --all touches it
    elif everything:
      why = "--all"
    elif older_than is not None and idle > older_than:
      why = f"unused for {_age(idle)}"
    else:
      continue
    # The exclusive lock is held while deleting: a process opening the entry
    # meanwhile waits, then finds it gone and rebuilds it.
    with _exclusive(entry.lock) as got:
      if not got:
        actions.append((entry, f"{why}, but a running process uses it", "kept"))
        continue
      if not dry_run:
        _remove(entry)
      actions.append((entry, why, "would remove" if dry_run else "removed"))
  return actions


def _table(header: list[str], rows: list[list[str]]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


@cli.user_errors
def main(argv):
  if len(argv) != 2 or argv[1] not in ("list", "prune"):
    raise app.UsageError("usage: python -m coughjax.cache list|prune "
                         "[--older-than=AGE] [--all] [--dry-run]")
  root = features_lib.cache_root()
  now = time.time()
  older = flags.FLAGS["older-than"].value
  try:
    older_than = parse_age(older) if older else None
  except ValueError as e:
    raise app.UsageError(f"--older-than: {e}") from e
  if argv[1] == "list":
    if older_than is not None or flags.FLAGS["all"].value:
      raise app.UsageError("--older-than and --all are options of prune")
    found = entries(root, now)
    print(f"{root}: {_gib(sum(e.size for e in found))} in {len(found)} entries")
    if found:
      print()
      print(_table(["kind", "name", "size", "last used", "in use", "for"], [
          [e.kind, e.name if e.kind != "temporary" else pathlib.Path(e.name).name,
           _gib(e.size),
           datetime.datetime.fromtimestamp(e.last_used).strftime("%Y-%m-%d %H:%M")
           + f" ({_age(now - e.last_used)} ago)",
           "yes" if e.in_use() else "no",
           e.about + (f" [orphan: {e.orphan}]" if e.orphan else "")]
          for e in found]))
    return
  actions = prune(root, older_than=older_than, everything=flags.FLAGS["all"].value,
                  dry_run=flags.FLAGS["dry-run"].value, now=now)
  freed = sum(e.size for e, _, done in actions if done == "removed")
  for entry, why, done in actions:
    print(f"{done} {entry.kind} {entry.name} ({_gib(entry.size)}): {why}")
  print(f"{root}: freed {_gib(freed)}"
        + (" (dry run: nothing removed)" if flags.FLAGS["dry-run"].value else ""))


def define_flags() -> None:
  flags.DEFINE_string("older-than", None, "prune: also what was not used for this long "
                      "(e.g. 90m, 12h, 30d, 2w)")
  flags.DEFINE_bool("all", False, "prune: everything not in use")
  flags.DEFINE_bool("dry-run", False, "prune: say what would go, remove nothing")


if __name__ == "__main__":
  define_flags()
  app.run(main)
