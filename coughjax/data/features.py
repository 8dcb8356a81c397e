"""Feature cache: log-mel features computed once per recording, stored on disk.

A recording's features are stored under a key made of its *content* (the file's bytes,
or the generator address for synthetic recordings) and the feature parameters, so a
changed file or a changed parameter recomputes only what changed, and a renamed file
costs nothing. Files that cannot be used (silent, empty, corrupt, too short, ...) are
remembered too, so they are reported on every run without being decoded again.

Layout: `$COUGHJAX_CACHE` (default `~/.cache/coughjax`)
  features/<params key>/<ab>/<content key>.npy    [T, nfilt] float32
  features/<params key>/<ab>/<content key>.err    why the recording was skipped
  features/<params key>/params.json               the feature parameters
  features/<params key>/.lock                     in use (see below); mtime: last use
  hashes/<ab>/<path key>.json                     size, mtime and sha256 of a file
  hashes/.lock                                    in use
  dedup/                                          near-duplicate groups (`dedup`)
  packed/                                         packs of corpora (`packed`)

A `FeatureCache` that has resolved recordings holds a shared `flock` on its feature
set's `.lock` for as long as it lives, and one that writes file hashes (or
near-duplicate groups) on `hashes/.lock` (`dedup/.lock`), so that
`python -m coughjax.cache prune` (which deletes only under an exclusive lock it gets
without waiting) never removes what a run is computing, writing or reading.

A cache folder that cannot be used (`$COUGHJAX_CACHE` is a file, or cannot be
written) is a `CacheError` naming `COUGHJAX_CACHE` and what to do.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import multiprocessing
import os
import pathlib
import stat
from typing import Optional, Sequence

from absl import logging
import numpy as np
import tqdm

from coughjax import audio
from coughjax import files
from coughjax.data import synthetic
from coughjax.data.manifest import Recording

FEATURE_VERSION = 1  # bump when the feature code changes meaning
PARAMS_FILE = "params.json"
LOCK_FILE = ".lock"
HASHES, DEDUP = "hashes", "dedup"  # cache folders besides features/ and packed/
NORMALISATIONS = ("", "gain", "cmn")
_MIN_PER_WORKER = 64  # fewer recordings than this per extra process: not worth a spawn


@dataclasses.dataclass(frozen=True)
class FeatureParams:
  """How recordings become features (SPEC: 16 kHz mono, psf logfbank, 64 mels)."""
  sample_rate: int = audio.SAMPLE_RATE
  nfilt: int = audio.NUM_MELS
  winlen: float = audio.WINLEN
  winstep: float = audio.WINSTEP
  nfft: int = 0  # 0 = smallest power of two covering the window
  preemph: float = audio.PREEMPH
  min_duration: float = 0.5  # seconds; shorter recordings are skipped
  normalise: str = ""  # "", "gain" or "cmn": see `normalise`

  def __post_init__(self):
    if self.normalise not in NORMALISATIONS:
      raise ValueError(f"features.normalise must be one of {NORMALISATIONS}, got "
                       f"{self.normalise!r}")

  @classmethod
  def from_config(cls, cfg) -> "FeatureParams":
    fields = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in dict(cfg).items() if k in fields})

  def key(self) -> str:
    fields = dataclasses.asdict(self)
    if not self.normalise:  # keys of caches written before the field stay valid
      del fields["normalise"]
    blob = json.dumps([FEATURE_VERSION, fields], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]

  @property
  def min_frames(self) -> int:
    return audio.min_frames_for(self.min_duration, self.sample_rate)


class CacheError(ValueError):
  """The cache folder cannot be used; the message names COUGHJAX_CACHE and what to do."""


def _named(root: pathlib.Path) -> str:
  return (f"COUGHJAX_CACHE={root}" if os.environ.get("COUGHJAX_CACHE")
          else f"the cache folder {root} (default of COUGHJAX_CACHE)")


def cache_root() -> pathlib.Path:
  """`$COUGHJAX_CACHE` (default ~/.cache/coughjax).

  Raises:
    CacheError: it is, or is inside, something other than a folder.
  """
  root = pathlib.Path(os.environ.get("COUGHJAX_CACHE") or "~/.cache/coughjax").expanduser()
  existing = root
  while not existing.exists() and existing != existing.parent:
    existing = existing.parent
  if not existing.is_dir():
    raise CacheError(f"{_named(root)}" + (" is" if existing == root else f": {existing} is")
                     + " a file, not a folder; set COUGHJAX_CACHE to a folder (it is "
                     "created if missing)")
  return root


@contextlib.contextmanager
def writing(root: pathlib.Path):
  """Turns an OSError of a write into the cache at `root` into a CacheError."""
  try:
    yield
  except OSError as e:
    raise CacheError(f"{_named(root)}: cannot write there ({e.strerror or e}: "
                     f"{e.filename or root}); set COUGHJAX_CACHE to a folder you can "
                     "write, or make this one writable") from e


def load_waveform(record: Recording, params: FeatureParams) -> np.ndarray:
  """A recording's audio at the feature rate, with every bad-input check applied."""
  if record.path.startswith(synthetic.SCHEME):
    wave = synthetic.render(record.path, params.sample_rate)
  else:
    return audio.load(record.path, params.sample_rate, min_duration=params.min_duration)
  if wave.size < params.min_duration * params.sample_rate:
    raise audio.AudioError(record.path, f"too short: {wave.size / params.sample_rate:.3f} s")
  return wave


def normalise(feats: np.ndarray, how: str) -> np.ndarray:
  """A recording's log-mel features with its level removed (the front end's option).

  Args:
    feats: [T, nfilt] log-mel features of one whole recording.
    how: "" (unchanged); "gain": subtract the recording's mean log energy over all
      frames and bands, i.e. scale the waveform to a fixed mean filterbank energy
      (removes loudness, keeps the spectral shape); "cmn": subtract each band's mean
      over time (cepstral mean normalisation in the log-mel domain: removes
      loudness and any fixed channel colouring, e.g. a microphone's or a telephone
      line's response).

  Returns:
    [T, nfilt] float32.
  """
  if not how:
    return feats
  if how not in NORMALISATIONS:
    raise ValueError(f"unknown normalisation {how!r}; expected one of {NORMALISATIONS}")
  axis = None if how == "gain" else 0
  mean = feats.mean(axis=axis, keepdims=True, dtype=np.float64)
  return (feats - mean).astype(np.float32)


def waveform_features(wave: np.ndarray, params: FeatureParams) -> np.ndarray:
  """[samples] mono audio at `params.sample_rate` -> [T, nfilt] float32 features:
  `audio.logfbank`, then `normalise` per `params.normalise`."""
  feats = audio.logfbank(wave, params.sample_rate, nfilt=params.nfilt,
                         winlen=params.winlen, winstep=params.winstep,
                         nfft=params.nfft or None, preemph=params.preemph)
  return normalise(feats, params.normalise)


def compute(record: Recording, params: FeatureParams) -> np.ndarray:
  """[T, nfilt] features of one recording (no cache)."""
  return waveform_features(load_waveform(record, params), params)


def _hold_shared_lock(path: pathlib.Path):
  """An open file holding a shared `flock` on `path` (created if missing), which
  lasts until the file is closed; if `path` was deleted while this waited for the
  lock (a prune), the lock is taken on the file that replaces it."""
  while True:
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "ab")  # pylint: disable=consider-using-with
    fcntl.flock(f.fileno(), fcntl.LOCK_SH)
    try:
      if os.stat(path).st_ino == os.fstat(f.fileno()).st_ino:
        return f
    except FileNotFoundError:
      pass
    f.close()


def _skip_kind(reason: str) -> str:
  """A short category for the summary line, from an AudioError reason."""
  for kind in ("not found", "cannot decode", "no audio samples", "empty file", "NaN/inf",
               "silent", "too short", "directory", "not a regular file", "PyAV"):
    if kind in reason:
      return {"no audio samples": "empty", "empty file": "empty",
              "PyAV": "needs webm extra"}.get(kind, kind)
  return "other"


def _entry_paths(directory: pathlib.Path, key: str) -> tuple[pathlib.Path, pathlib.Path]:
  base = directory / key[:2] / key
  return base.with_suffix(".npy"), base.with_suffix(".err")


def _build(args) -> Optional[str]:
  """Computes and stores one recording's features; returns the skip reason, if any.
  A top-level function so that worker processes can run it."""
  directory, params, record, key = args
  npy, err = _entry_paths(directory, key)
  try:
    feats = compute(record, params)
  except audio.AudioError as e:
    reason = e.reason
    if not key.startswith("missing-"):  # a missing file may appear later
      with writing(directory.parents[1]):
        files.atomic_write(err, lambda f: f.write(reason.encode()))
    return reason
  with writing(directory.parents[1]):
    files.atomic_write(npy, lambda f: np.save(f, feats))
  return None


@dataclasses.dataclass
class Skipped:
  record: Recording
  reason: str


class FeatureCache:
  """Computes or loads the features of many recordings."""

  def __init__(self, params: FeatureParams = FeatureParams(),
               root: Optional[str | os.PathLike] = None):
    self.params = params
    self.root = pathlib.Path(root) if root else cache_root()
    self._dir = self.root / "features" / params.key()
    self._lock = None
    self._held = {}  # cache folder ("hashes", "dedup") -> its open shared lock

  def hold(self, folder: str) -> pathlib.Path:
    """Marks `root/folder` in use while this object lives (a shared lock on its
    `.lock`), so that `coughjax.cache prune` leaves it alone while this writes
    there; returns the folder."""
    path = self.root / folder
    if folder not in self._held:
      with writing(self.root):
        self._held[folder] = _hold_shared_lock(path / LOCK_FILE)
    return path

  def _claim(self) -> None:
    """Marks this feature set in use (and used now) while this object lives, and
    describes it for `coughjax.cache list`."""
    if self._lock is not None:
      return
    try:
      self._lock = _hold_shared_lock(self._dir / LOCK_FILE)
      os.utime(self._dir / LOCK_FILE)
      if not (self._dir / PARAMS_FILE).exists():
        text = json.dumps({"version": FEATURE_VERSION,
                           "params": dataclasses.asdict(self.params)})
        files.atomic_write(self._dir / PARAMS_FILE, lambda f: f.write(text.encode()))
    except OSError as e:  # a read-only cache: usable if it holds every feature
      logging.info("%s: not marked in use (%s)", self._dir, e)
      self._lock = False

  def content_key(self, record: Recording) -> str:
    if record.path.startswith(synthetic.SCHEME):
      return hashlib.sha256(
          f"{synthetic.GENERATOR_VERSION}:{record.path}".encode()).hexdigest()
    return self._file_hash(record.path)

  def _file_hash(self, path: str) -> str:
    """sha256 of the file's bytes, memoised by (path, size, mtime) to avoid rereading."""
    try:
      st = os.stat(path)
    except OSError:
      st = None
    if st is None or not stat.S_ISREG(st.st_mode):
      # Missing, or a device/fifo (never read: /dev/zero would hash forever);
      # `audio.load` says which, and nothing is cached for it.
      return "missing-" + hashlib.sha256(path.encode()).hexdigest()
    apath = os.path.abspath(path)
    name = hashlib.sha256(apath.encode()).hexdigest()
    memo = self.root / HASHES / name[:2] / (name + ".json")
    stamp = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    try:
      saved = json.loads(memo.read_text())
      if {k: saved.get(k) for k in stamp} == stamp:
        return saved["sha256"]
    except (OSError, ValueError, KeyError):
      pass
    digest = hashlib.sha256()
    with open(path, "rb") as f:
      for block in iter(lambda: f.read(1 << 20), b""):
        digest.update(block)
    sha = digest.hexdigest()
    self.hold(HASHES)
    with writing(self.root):
      files.atomic_write(memo, lambda f: f.write(json.dumps({**stamp, "sha256": sha}).encode()))
    return sha

  def _lookup(self, record: Recording):
    """(path of the cached features or None, skip reason or None, key); reads no
    features."""
    key = self.content_key(record)
    npy, err = _entry_paths(self._dir, key)
    if npy.exists():
      return npy, None, key
    if err.exists() and not key.startswith("missing-"):
      return None, err.read_text(), key
    return None, None, key

  def resolve(self, records: Sequence[Recording], *, name: str = "data",
              workers: int = 0, progress: bool = True
              ) -> tuple[list[int], list[pathlib.Path], list[Skipped]]:
    """Makes sure the cache holds the features of `records`, computing (in `workers`
    processes, 0 = all cores) what it lacks, without loading any: returns the
    indices of the usable recordings, the `.npy` file of each (a [T, nfilt] float32
    array, which `np.load(path, mmap_mode="r")` opens without reading it), and the
    skipped recordings; logs the skips."""
    self._claim()
    found = [self._lookup(r) for r in records]
    todo = [i for i, (f, reason, _) in enumerate(found) if f is None and reason is None]
    if todo:
      workers = min(workers or os.cpu_count() or 1, -(-len(todo) // _MIN_PER_WORKER))
      logging.info("%s: computing features of %d of %d recordings (%d processes) into %s",
                   name, len(todo), len(records), workers, self._dir)
      args = [(self._dir, self.params, records[i], found[i][2]) for i in todo]
      # Rendering and feature code is numpy-bound but call-heavy: threads contend for
      # the GIL, so several cores need processes (spawned: the parent may run JAX).
      with (concurrent.futures.ProcessPoolExecutor(
          workers, mp_context=multiprocessing.get_context("spawn")) if workers > 1
            else contextlib.nullcontext()) as pool:
        jobs = (pool.map(_build, args, chunksize=16) if pool else map(_build, args))
        bar = tqdm.tqdm(jobs, total=len(todo), desc=f"{name} features", unit="rec",
                        disable=not progress, mininterval=1.0)
        for i, reason in zip(todo, bar):
          key = found[i][2]
          found[i] = (None if reason else _entry_paths(self._dir, key)[0], reason, key)

    kept, paths, skipped = [], [], []
    for i, (record, (path, reason, _)) in enumerate(zip(records, found)):
      if path is None:
        skipped.append(Skipped(record, reason))
      else:
        kept.append(i)
        paths.append(path)
    log_skipped(name, skipped, len(records))
    return kept, paths, skipped

  def load(self, records: Sequence[Recording], *, name: str = "data",
           workers: int = 0, progress: bool = True
           ) -> tuple[list[Recording], list[np.ndarray], list[Skipped]]:
    """Features for `records` in memory (see `resolve`). Returns the usable
    recordings, their [T, nfilt] features, and the skipped ones. For corpora larger
    than memory, `coughjax.data.packed` reads the cache by memory map instead."""
    kept, paths, skipped = self.resolve(records, name=name, workers=workers,
                                        progress=progress)
    feats = [np.load(p) for p in paths]
    logging.info("%s: %d recordings with features (%d frames)", name, len(kept),
                 sum(f.shape[0] for f in feats))
    return [records[i] for i in kept], feats, skipped


def log_skipped(name: str, skipped: Sequence[Skipped], total: int) -> None:
  """One warning line summing up why recordings were skipped."""
  if skipped:
    kinds = collections.Counter(_skip_kind(s.reason) for s in skipped)
    detail = ", ".join(f"{n} {k}" for k, n in kinds.most_common())
    logging.warning("%s: skipped %d of %d recordings (%s); first: %s: %s", name,
                    len(skipped), total, detail, skipped[0].record.path,
                    skipped[0].reason)
