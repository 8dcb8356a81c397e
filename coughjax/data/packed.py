"""Features of many recordings packed into one file on disk, read by memory map.

A corpus of log-mels can be larger than memory (the full Coswara and COVID-19 Sounds
sets are ~10-20 GB of float32), and in a multi-host run every host would hold all of
it. So `load_splits` does not concatenate features in memory: it writes them once,
recording after recording, into one flat file

  $COUGHJAX_CACHE/packed/<key>.f32          [frames, mel] little-endian float32
  $COUGHJAX_CACHE/packed/<key>.index.npz    offsets, lengths, which recordings

and `ClipStore` maps that file (`np.memmap`, madvise RANDOM). A batch then reads only
the pages of its own crops, so memory does not grow with the corpus, and each
process of a multi-host run touches only the rows of its own shard of the batch.
Writing streams one recording at a time (peak memory: one recording).

`<key>` is a digest of what the frames are made of: the feature parameters, the
clip length (recordings shorter than a clip are stored zero-padded to one clip, as
`ClipStore` pads them) and the content key of every recording in order (for a TFDS
build: its folder and files), so a changed recording or parameter packs anew and an
unchanged corpus is packed once. Both files are written under temporary names and
renamed, the index last: a crashed or concurrent writer (several processes of one
run sharing a cache) never leaves a half pack that looks complete.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import mmap
import os
import pathlib
import tempfile
import time
from typing import Iterable, Optional, Sequence

from absl import logging
import numpy as np

from coughjax.data import features as features_lib
from coughjax.data.manifest import Recording

DTYPE = np.dtype("<f4")
PACK_VERSION = 1  # bump when the layout changes


@dataclasses.dataclass
class Packed:
  """A pack opened for reading.

  Attributes:
    frames: [total frames, mel] read-only memory map.
    offsets: [n] first frame of each recording.
    lengths: [n] its frames (>= clip_frames).
    kept: [n] the index of each packed recording in the list it was packed from.
    records: the packed recordings when the pack stores them (TFDS builds), else None.
    skipped: the recordings of that list that have no usable features.
  """
  frames: np.ndarray
  offsets: np.ndarray
  lengths: np.ndarray
  kept: np.ndarray
  records: Optional[list[Recording]]
  skipped: list[features_lib.Skipped]


def directory() -> pathlib.Path:
  return features_lib.cache_root() / "packed"


def digest(*parts) -> str:
  blob = json.dumps([PACK_VERSION, *parts], sort_keys=True, default=str)
  return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _paths(key: str) -> tuple[pathlib.Path, pathlib.Path]:
  base = directory() / key
  return base.with_suffix(".f32"), base.with_suffix(".index.npz")


def _record_rows(records: Sequence[Recording]) -> str:
  return json.dumps([[r.path, r.participant_id, r.sound, r.label, r.stratum]
                     for r in records])


def _records_from_rows(text: str) -> list[Recording]:
  return [Recording(*row) for row in json.loads(text)]


def open_pack(key: str, all_records: Optional[Sequence[Recording]] = None
              ) -> Optional[Packed]:
  """The pack `key`, or None if it has not been written (completely).

  `all_records`: the list the pack was made from, to name the skipped recordings.
  """
  data, index = _paths(key)
  if not index.exists() or not data.exists():
    return None
  with np.load(index) as z:
    offsets, lengths, kept = z["offsets"], z["lengths"], z["kept"]
    mel = int(z["mel"])
    records = _records_from_rows(str(z["records"])) if "records" in z else None
    reasons = json.loads(str(z["skipped"]))
  total = int(offsets[-1] + lengths[-1]) if len(offsets) else 0
  if data.stat().st_size != total * mel * DTYPE.itemsize:
    raise ValueError(f"{data}: {data.stat().st_size} bytes, but its index "
                     f"{index.name} describes {total} x {mel} float32; delete both "
                     "to rebuild")
  frames = np.memmap(data, dtype=DTYPE, mode="r", shape=(total, mel))
  # Crops are scattered over the file: read-ahead would pull in pages nobody uses.
  if hasattr(frames, "_mmap") and hasattr(mmap, "MADV_RANDOM"):
    frames._mmap.madvise(mmap.MADV_RANDOM)  # pylint: disable=protected-access
  skipped = ([features_lib.Skipped(all_records[i], reason) for i, reason in reasons]
             if all_records is not None else [])
  return Packed(frames, offsets, lengths, kept, records, skipped)


def write_pack(key: str, arrays: Iterable[np.ndarray], clip_frames: int, *,
               kept: Sequence[int], skipped: Sequence[tuple[int, str]] = (),
               records: Optional[Sequence[Recording]] = None) -> None:
  """Streams [T, mel] arrays (each released once written) into pack `key`."""
  data, index = _paths(key)
  data.parent.mkdir(parents=True, exist_ok=True)
  lengths, mel = [], None
  fd, tmp = tempfile.mkstemp(dir=data.parent, prefix=f".tmp-{key}-")
  try:
    with os.fdopen(fd, "wb") as f:
      for a in arrays:
        a = np.asarray(a, DTYPE)
        if a.ndim != 2 or (mel is not None and a.shape[1] != mel):
          raise ValueError(f"pack {key}: array {len(lengths)} has shape {a.shape}, "
                           f"expected [T, {mel or 'mel'}]")
        mel = a.shape[1]
        if a.shape[0] < clip_frames:
          a = np.pad(a, ((0, clip_frames - a.shape[0]), (0, 0)))
        f.write(np.ascontiguousarray(a).data)
        lengths.append(a.shape[0])
    if len(lengths) != len(kept):
      raise ValueError(f"pack {key}: {len(lengths)} arrays for {len(kept)} recordings")
    os.replace(tmp, data)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise
  lengths = np.asarray(lengths, np.int64)
  offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
  extra = {"records": np.asarray(_record_rows(records))} if records is not None else {}
  fd, tmp = tempfile.mkstemp(dir=data.parent, prefix=f".tmp-{key}-", suffix=".npz")
  try:
    with os.fdopen(fd, "wb") as f:
      np.savez(f, offsets=offsets, lengths=lengths, kept=np.asarray(kept, np.int64),
               mel=np.asarray(mel or 0), skipped=np.asarray(json.dumps(list(skipped))),
               **extra)
    os.replace(tmp, index)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def from_cache(cache: features_lib.FeatureCache, records: Sequence[Recording],
               clip_frames: int, *, name: str = "data", workers: int = 0,
               progress: bool = True) -> Packed:
  """The features of `records` as a pack: computed into the feature cache where it
  lacks them, then packed (once per corpus; later calls open the existing pack)."""
  key = digest("cache", cache.params.key(), clip_frames,
               [cache.content_key(r) for r in records])
  found = open_pack(key, records)
  if found is not None:
    logging.info("%s: %d recordings (%d frames) from %s", name, len(found.kept),
                 len(found.frames), _paths(key)[0])
    features_lib.log_skipped(name, found.skipped, len(records))
    return found
  kept, paths, skipped = cache.resolve(records, name=name, workers=workers,
                                       progress=progress)
  if not kept:
    raise ValueError(f"{name}: no recordings with usable features (of {len(records)})")
  start = time.time()
  kept_set = set(kept)
  # `resolve` lists the skipped recordings in order, as it does the kept ones.
  reasons = [(i, s.reason) for i, s in zip(
      (i for i in range(len(records)) if i not in kept_set), skipped)]
  write_pack(key, (np.load(p) for p in paths), clip_frames, kept=kept, skipped=reasons)
  packed = open_pack(key, records)
  logging.info("%s: packed %d recordings (%d frames) into %s in %.1f s", name,
               len(kept), len(packed.frames), _paths(key)[0], time.time() - start)
  return packed
