"""The features of a corpus packed into one file on disk, read by memory map.

A corpus of log-mels can be larger than memory (the full Coswara and COVID-19 Sounds
sets are ~10-20 GB of float32), and in a multi-host run every host would hold all of
it. So `load_splits` does not concatenate features in memory: it writes them once,
recording after recording, into one flat file

  $COUGHJAX_CACHE/packed/<key>.f32          [frames, mel] little-endian float32
  $COUGHJAX_CACHE/packed/<key>.index.npz    offsets, lengths, digests, row names, meta

and its stores map that file (`np.memmap`, madvise RANDOM). A batch then reads only
the pages of its own crops, so memory does not grow with the corpus, and each
process of a multi-host run touches only the rows of its own shard of the batch.
Writing streams one recording at a time (peak memory: one recording).

One pack per corpus: for features from the feature cache (`from_cache`), `<key>` is
a digest of the feature parameters, the clip length (recordings shorter than a clip
are stored repeat-padded to one clip, as `ClipStore` pads them) and the *set* of the
recordings' content keys -- not their order, participants, labels or split. A pack's
rows are the distinct contents in sorted order, and every split of the corpus (the
train / validation / test splits of each of a downstream config's seeds) is a view
of it (`Corpus.store`: index subsets, no copy). A changed recording or parameter
packs anew (`python -m coughjax.cache prune` removes what is no longer used); an
unchanged corpus is packed once. A TFDS build is packed once too, keyed by its
folder and files (`tfds_source`).

Each row's `mask_key.recording_key` (the digest that keys its DS masks) is computed as
the row is written and stored in the index, so evaluation and embedding read it
instead of hashing every recording's features again (through the memory map).

Both files are written under temporary names and renamed, the index last: a crashed
or concurrent writer (several processes of one run sharing a cache) never leaves a
half pack that looks complete. A process that has a pack open holds a shared
`flock` on its data file (taken by `open_pack` and kept by the memory map's own
file descriptor until the last view of it is gone); `coughjax.cache` deletes a pack
only under an exclusive lock that it gets without waiting, i.e. never one in use.
Opening a pack sets its index's modification time: the pack's last use.

A pack that cannot be what it says -- an index that is not a readable `.npz` (e.g.
truncated: `zipfile.BadZipFile`), data of another size than the index describes, or
non-finite features -- is a `DamagedPackError` naming the file and saying to run
`python -m coughjax.cache prune` (which removes it; the next run rebuilds it). The
finiteness check at open is a cheap sample (the first frame of up to
`FINITE_CHECK_ROWS` rows spread over the pack: a few pages), which finds a pack
filled with NaN; `write_pack` refuses non-finite features outright.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import mmap
import os
import pathlib
import tempfile
import time
from typing import Iterable, Optional, Sequence
import zipfile

from absl import logging
import numpy as np

from coughjax import audio
from coughjax.data import features as features_lib
from coughjax.data import mask_key
from coughjax.data import pipeline
from coughjax.data.manifest import Recording

DTYPE = np.dtype("<f4")
# Bump when the layout or the rows' meaning changes (2: one pack per corpus, digests;
# 3: short rows repeat-padded, not zero-padded).
PACK_VERSION = 3
DATA_SUFFIX = ".f32"
INDEX_SUFFIX = ".index.npz"
FINITE_CHECK_ROWS = 1024  # rows whose first frame `open_pack` checks
_PRUNE = "run `python -m coughjax.cache prune` to remove it (the next run rebuilds it)"


class DamagedPackError(ValueError):
  """A pack's files are damaged; the message names the file and says to prune it."""


def nonfinite_rows(frames: np.ndarray, offsets: np.ndarray) -> list[int]:
  """Rows (of up to `FINITE_CHECK_ROWS`, spread over the pack) whose first frame of
  `frames` [total, mel] holds NaN or inf: a cheap test for a damaged pack."""
  if not len(offsets):
    return []
  rows = np.unique(np.linspace(0, len(offsets) - 1, min(len(offsets), FINITE_CHECK_ROWS))
                   .astype(np.int64))
  bad = ~np.isfinite(frames[offsets[rows]]).all(axis=1)
  return rows[bad].tolist()


@dataclasses.dataclass
class Packed:
  """A pack opened for reading.

  Attributes:
    path: its data file.
    frames: [total frames, mel] read-only memory map.
    offsets: [n] first frame of each row (recording).
    lengths: [n] its frames (>= clip_frames).
    digests: [n, 2] uint32, each row's `mask_key.recording_key`.
    clip_frames: the clip length it was padded for.
    names: each row's content key (packs of the feature cache), else None.
    records: each row's recording (TFDS builds), else None.
    skipped: content key -> why that recording has no row (feature cache packs).
    meta: what it was written for (`coughjax.cache list` shows it).
  """
  path: pathlib.Path
  frames: np.ndarray
  offsets: np.ndarray
  lengths: np.ndarray
  digests: np.ndarray
  clip_frames: int
  names: Optional[list[str]]
  records: Optional[list[Recording]]
  skipped: dict[str, str]
  meta: dict

  def store(self, records: Sequence[Recording], rows: Sequence[int]
            ) -> pipeline.ClipStore:
    """A `ClipStore` of `records`, record i being row rows[i]: a view, no copy."""
    rows = np.asarray(rows, np.int64)
    return pipeline.ClipStore.from_frames(
        records, self.frames, self.offsets[rows], self.lengths[rows], self.clip_frames,
        recording_keys=self.digests[rows])


@dataclasses.dataclass
class Corpus:
  """Recordings and the pack that holds their features.

  Attributes:
    pack: the pack.
    records: the recordings, in the order given to `from_cache`.
    rows: [len(records)] each recording's row of the pack, -1 where it has none.
    skipped: the recordings without usable features, and why.
  """
  pack: Packed
  records: list[Recording]
  rows: np.ndarray
  skipped: list[features_lib.Skipped]

  def __post_init__(self):
    self._row = dict(zip(self.records, self.rows.tolist()))

  def store(self, records: Optional[Sequence[Recording]] = None
            ) -> pipeline.ClipStore:
    """The usable recordings of `records` (default: all of the corpus; any of its
    recordings in any order, e.g. a split) in that order, as a view of the pack."""
    records = self.records if records is None else records
    rows = []
    for r in records:
      if r not in self._row:
        raise ValueError(f"{r.path}: not a recording of the corpus of pack "
                         f"{self.pack.path}")
      rows.append(self._row[r])
    kept = [r for r, row in zip(records, rows) if row >= 0]
    return self.pack.store(kept, [row for row in rows if row >= 0])


def directory() -> pathlib.Path:
  return features_lib.cache_root() / "packed"


def digest(*parts) -> str:
  blob = json.dumps([PACK_VERSION, *parts], sort_keys=True, default=str)
  return hashlib.sha256(blob.encode()).hexdigest()[:24]


def paths(key: str, folder: Optional[pathlib.Path] = None
          ) -> tuple[pathlib.Path, pathlib.Path]:
  """(data file, index file) of pack `key` (in `folder`, default `directory()`)."""
  folder = folder or directory()
  return folder / (key + DATA_SUFFIX), folder / (key + INDEX_SUFFIX)


def _record_rows(records: Sequence[Recording]) -> str:
  return json.dumps([[r.path, r.participant_id, r.sound, r.label, r.stratum]
                     for r in records])


def _records_from_rows(text: str) -> list[Recording]:
  return [Recording(*row) for row in json.loads(text)]


def read_meta(index: pathlib.Path) -> dict:
  """The meta of a pack's index without opening its data (raises on an unreadable
  or pre-version-2 index, which has none)."""
  with np.load(index) as z:
    return json.loads(str(z["meta"]))


def open_pack(key: str) -> Optional[Packed]:
  """The pack `key`, or None if it has not been written (completely)."""
  data, index = paths(key)
  try:
    f = open(data, "rb")  # pylint: disable=consider-using-with
  except FileNotFoundError:
    return None
  with f:
    # Shared while open; `coughjax.cache` deletes under an exclusive lock, so this
    # waits out a deletion under way (and then finds no index).
    fcntl.flock(f.fileno(), fcntl.LOCK_SH)
    try:
      with np.load(index) as z:
        offsets, lengths, digests = z["offsets"], z["lengths"], z["digests"]
        mel, clip_frames = int(z["mel"]), int(z["clip_frames"])
        names = [n.decode() for n in z["names"]] if "names" in z else None
        records = _records_from_rows(str(z["records"])) if "records" in z else None
        skipped = json.loads(str(z["skipped"]))
        meta = json.loads(str(z["meta"]))
    except FileNotFoundError:
      return None  # the data of a writer that has not renamed its index yet
    except (zipfile.BadZipFile, KeyError, ValueError, EOFError, OSError) as e:
      raise DamagedPackError(f"{index}: damaged pack index ({type(e).__name__}: {e}); "
                             f"{_PRUNE}") from e
    total = int(offsets[-1] + lengths[-1]) if len(offsets) else 0
    size = os.fstat(f.fileno()).st_size
    if size != total * mel * DTYPE.itemsize or not total:
      raise DamagedPackError(f"{data}: {size} bytes, but its index {index.name} describes "
                             f"{total} x {mel} float32; {_PRUNE}")
    # The map dups the descriptor, and with it the lock: it is held until the map
    # (the last view of `frames`) is gone, though `f` closes here.
    frames = np.memmap(f, dtype=DTYPE, mode="r", shape=(total, mel))
    bad = nonfinite_rows(frames, offsets)
    if bad:
      raise DamagedPackError(f"{data}: NaN or inf features in row(s) {bad[:5]}"
                             f"{' ...' if len(bad) > 5 else ''} of {len(offsets)}; the "
                             f"pack is damaged: {_PRUNE}")
  # Crops are scattered over the file: read-ahead would pull in pages nobody uses.
  if hasattr(frames, "_mmap") and hasattr(mmap, "MADV_RANDOM"):
    frames._mmap.madvise(mmap.MADV_RANDOM)  # pylint: disable=protected-access
  try:
    os.utime(index)  # last use, for `coughjax.cache prune --older-than`
  except OSError:
    pass  # a read-only cache
  return Packed(data, frames, offsets, lengths, digests, clip_frames, names, records,
                skipped, meta)


def _replace_atomically(tmp: str, dest: pathlib.Path, write) -> None:
  try:
    with open(tmp, "wb") as f:
      write(f)
    os.replace(tmp, dest)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def write_pack(key: str, arrays: Iterable[np.ndarray], clip_frames: int, *,
               names: Optional[Sequence[str]] = None,
               skipped: Optional[dict[str, str]] = None,
               records: Optional[Sequence[Recording]] = None,
               meta: Optional[dict] = None) -> None:
  """Streams [T, mel] arrays (each released once written) into pack `key`.

  Args:
    key: the pack's name.
    arrays: the rows' features.
    clip_frames: rows shorter than this are repeat-padded to it.
    names: each row's name (content key), read once `arrays` is drained.
    skipped: name -> reason, of recordings of the corpus without a row.
    records: each row's recording, read once `arrays` is drained.
    meta: what the pack is for (JSON), shown by `coughjax.cache list`.
  """
  data, index = paths(key)
  with features_lib.writing(data.parents[1]):
    data.parent.mkdir(parents=True, exist_ok=True)
  lengths, digests, mel = [], [], None

  def write_frames(f):
    nonlocal mel
    for a in arrays:
      a = np.asarray(a, DTYPE)
      if a.ndim != 2 or (mel is not None and a.shape[1] != mel):
        raise ValueError(f"pack {key}: array {len(lengths)} has shape {a.shape}, "
                         f"expected [T, {mel or 'mel'}]")
      mel = a.shape[1]
      if not np.isfinite(a).all():
        raise ValueError(f"pack {key}: array {len(lengths)} holds NaN or inf")
      a = audio.pad_to_clip(a, clip_frames)
      f.write(np.ascontiguousarray(a).data)
      lengths.append(a.shape[0])
      digests.append(mask_key.recording_key(a, clip_frames))
    if not lengths:
      raise ValueError(f"pack {key}: no arrays to pack")
    for what, given in (("names", names), ("records", records)):
      if given is not None and len(given) != len(lengths):
        raise ValueError(f"pack {key}: {len(lengths)} arrays for {len(given)} {what}")

  with features_lib.writing(data.parents[1]):
    fd, tmp = tempfile.mkstemp(dir=data.parent, prefix=f".tmp-{key}-")
  os.close(fd)
  _replace_atomically(tmp, data, write_frames)
  lengths = np.asarray(lengths, np.int64)
  offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
  extra = {}
  if names is not None:
    extra["names"] = np.array([n.encode() for n in names])
  if records is not None:
    extra["records"] = np.asarray(_record_rows(records))
  meta = dict(meta or {}, version=PACK_VERSION, rows=len(lengths), frames=int(lengths.sum()),
              mel=mel, written=time.strftime("%Y-%m-%d %H:%M:%S"))
  fd, tmp = tempfile.mkstemp(dir=data.parent, prefix=f".tmp-{key}-", suffix=".npz")
  os.close(fd)
  _replace_atomically(tmp, index, lambda f: np.savez(
      f, offsets=offsets, lengths=lengths, digests=np.stack(digests), mel=np.asarray(mel),
      clip_frames=np.asarray(clip_frames), skipped=np.asarray(json.dumps(skipped or {})),
      meta=np.asarray(json.dumps(meta)), **extra))


def from_cache(cache: features_lib.FeatureCache, records: Sequence[Recording],
               clip_frames: int, *, name: str = "data", workers: int = 0,
               progress: bool = True) -> Corpus:
  """The corpus `records` and its pack: features computed into the feature cache
  where it lacks them, then packed, once per corpus (see the module docstring);
  later calls, with these recordings in any order or grouping, open that pack.

  Raises:
    ValueError: none of `records` has usable features.
  """
  records = list(records)
  content = [cache.content_key(r) for r in records]
  distinct = sorted(set(content))
  key = digest("cache", cache.params.key(), clip_frames, distinct)
  found = open_pack(key)
  if found is None:
    first = {}
    for r, k in zip(records, content):
      first.setdefault(k, r)
    kept, files, skipped = cache.resolve([first[k] for k in distinct], name=name,
                                         workers=workers, progress=progress)
    if not kept:
      raise ValueError(f"{name}: none of {len(records)} recordings has usable features"
                       + (f" (first: {skipped[0].record.path}: {skipped[0].reason})"
                          if skipped else ""))
    start = time.time()
    kept_set = set(kept)
    # `resolve` lists the skipped recordings in order, as it does the kept ones.
    reasons = {distinct[i]: s.reason for i, s in zip(
        (i for i in range(len(distinct)) if i not in kept_set), skipped)}
    write_pack(key, (np.load(p) for p in files), clip_frames,
               names=[distinct[i] for i in kept], skipped=reasons,
               meta={"kind": "feature cache", "corpus": name,
                     "feature_params": dataclasses.asdict(cache.params),
                     "params_key": cache.params.key(), "clip_frames": clip_frames})
    found = open_pack(key)
    logging.info("%s: packed %d recordings (%d frames) into %s in %.1f s", name,
                 len(kept), len(found.frames), found.path, time.time() - start)
    corpus = _corpus(found, records, content)  # `resolve` has reported the skips
  else:
    corpus = _corpus(found, records, content)
    features_lib.log_skipped(name, corpus.skipped, len(records))
  logging.info("%s: %d of %d recordings (%d frames) in %s", name,
               int(np.sum(corpus.rows >= 0)), len(records), len(found.frames), found.path)
  return corpus


def _corpus(found: Packed, records: list[Recording], content: list[str]) -> Corpus:
  row_of = {n: i for i, n in enumerate(found.names or ())}
  rows, skipped = np.full(len(records), -1, np.int64), []
  for i, (r, k) in enumerate(zip(records, content)):
    if k in row_of:
      rows[i] = row_of[k]
    elif k in found.skipped:
      skipped.append(features_lib.Skipped(r, found.skipped[k]))
    else:
      raise ValueError(f"{found.path}: has no entry for {r.path} (content {k}); delete "
                       "the pack (python -m coughjax.cache prune --all) to rebuild it")
  return Corpus(found, records, rows, skipped)
