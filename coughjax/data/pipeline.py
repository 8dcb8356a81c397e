"""Batches for training and evaluation, this process's rows of each, prefetched.

All recordings' features live in one `ClipStore` (a single [frames, mel] array with
per-recording offsets), so a batch is one gather of whole clips. The array is a
read-only memory map of a pack on disk (`coughjax.data.packed`) when the store comes
from `load_splits`: a batch reads only the pages of its own crops, so memory does not
grow with the corpus; in-memory arrays work the same (tests, benchmarks).

* `ContrastiveBatches`: each batch element is a distinct participant with two random
  96-frame crops from any of its recordings (the same file is allowed); participants
  are reshuffled every epoch. Batch k of epoch e depends only on (seed, e, k), so a
  resumed run sees exactly the batches an uninterrupted one would.
* `SupervisedBatches`: labelled clips for the downstream classifier, shuffled per
  epoch; `eval_batches` visits every clip of every recording once (padded last batch
  with a `valid` mask) so recording scores can average their clips.

Batches are numpy arrays whose first axis is the batch. In multi-process runs each
process builds, and reads from disk, only its own `rows` of every global batch (the
rows its devices hold: the trainer's `mesh.process_rows`); the random draws cover
the global batch, so that they do not depend on the devices or processes: only the
gather is restricted to the process's rows.
"""

from __future__ import annotations

import collections
import functools
import os
import queue
import threading
from typing import Iterator, Optional, Sequence

from absl import logging
import numpy as np

from coughjax import audio
from coughjax.data.manifest import Recording


class ClipStore:
  """Features of many recordings packed into one array.

  Recordings shorter than a clip are repeat-padded to one clip (the cache has already
  skipped those shorter than the minimum duration).

  Attributes:
    records: the recordings.
    frames: [total frames, mel] float32, in memory or a read-only memory map.
    offsets, lengths: [n] where each recording's frames are in `frames` (recordings
      need not be adjacent or in order: split stores can share one pack).
    labels: [n] int, -1 where unlabelled.
    clip_frames: frames per clip.
    recording_keys: [n, 2] uint32, each recording's `mask_key.recording_key` when
      known (a pack stores them), else None (`infer.store_recording_keys` computes
      and keeps them).
  """

  def __init__(self, records: Sequence[Recording], features: Sequence[np.ndarray],
               clip_frames: int = audio.CLIP_FRAMES):
    if len(records) != len(features):
      raise ValueError(f"{len(records)} records but {len(features)} feature arrays")
    if not records:
      raise ValueError("no recordings with usable features")
    padded = [audio.pad_to_clip(f, clip_frames) for f in features]
    lengths = np.array([f.shape[0] for f in padded])
    self._init(records, np.concatenate(padded).astype(np.float32, copy=False),
               np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths, clip_frames)

  @classmethod
  def from_frames(cls, records: Sequence[Recording], frames: np.ndarray,
                  offsets: np.ndarray, lengths: np.ndarray,
                  clip_frames: int = audio.CLIP_FRAMES,
                  recording_keys: Optional[np.ndarray] = None) -> "ClipStore":
    """A store over frames already packed (e.g. `packed.Packed.frames`, a memory
    map): recording i is frames[offsets[i]:offsets[i] + lengths[i]], lengths >=
    clip_frames, its `mask_key.recording_key` recording_keys[i] where given. Nothing
    is copied."""
    if not records:
      raise ValueError("no recordings with usable features")
    if not len(records) == len(offsets) == len(lengths):
      raise ValueError(f"{len(records)} records but {len(offsets)} offsets and "
                       f"{len(lengths)} lengths")
    lengths = np.asarray(lengths)
    if np.any(lengths < clip_frames):
      raise ValueError(f"recordings must be padded to {clip_frames} frames; the "
                       f"shortest has {lengths.min()}")
    if recording_keys is not None and len(recording_keys) != len(records):
      raise ValueError(f"{len(records)} records but {len(recording_keys)} recording keys")
    store = cls.__new__(cls)
    store._init(records, frames, offsets, lengths, clip_frames)
    store.recording_keys = recording_keys
    return store

  def _init(self, records, frames, offsets, lengths, clip_frames) -> None:
    self.records = list(records)
    self.recording_keys = None
    self.clip_frames = clip_frames
    self.frames = frames
    self.offsets = np.asarray(offsets, np.int64)
    self.lengths = np.asarray(lengths, np.int64)
    self.labels = np.array([-1 if r.label is None else r.label for r in self.records])
    # Every clip start as one row of a strided view (no copy): a gather takes whole
    # contiguous clips (one copy each) instead of indexing clip_frames rows apiece.
    rows = frames.shape[0] - clip_frames + 1
    self._clips = np.lib.stride_tricks.as_strided(
        frames, shape=(rows, clip_frames, frames.shape[1]),
        strides=(frames.strides[0],) + frames.strides, writeable=False)
    # A memory-mapped pack is gathered with pread into the batch, not through the
    # map: pages touched through a map stay resident in this process (its RSS grows
    # towards the corpus over an epoch, if reclaimably), pread's do not.
    self._file = None
    if isinstance(frames, np.memmap) and frames.filename and frames.flags.c_contiguous:
      self._file = open(frames.filename, "rb", buffering=0)  # pylint: disable=consider-using-with
      self._file_base = frames.offset
      if hasattr(os, "posix_fadvise"):  # crops are scattered: no read-ahead
        os.posix_fadvise(self._file.fileno(), 0, 0, os.POSIX_FADV_RANDOM)

  def __len__(self) -> int:
    return len(self.records)

  def gather(self, starts: np.ndarray) -> np.ndarray:
    """[n] absolute frame offsets -> [n, clip_frames, mel] clips (reads only
    these clips' pages of a memory-mapped store)."""
    starts = np.asarray(starts)
    if self._file is None:
      # Indexing, not np.take: take would first make the strided view contiguous.
      return self._clips[starts]
    out = np.empty((len(starts),) + self._clips.shape[1:], self.frames.dtype)
    row = self.frames.strides[0]
    fd = self._file.fileno()
    for clip, start in zip(out, starts.tolist()):
      if os.preadv(fd, [clip], self._file_base + start * row) != clip.nbytes:
        raise OSError(f"{self.frames.filename}: short read at frame {start}")
    return out

  def clip_starts(self, hop: int) -> tuple[np.ndarray, np.ndarray]:
    """Every clip of every recording, windows every `hop` frames (as audio.clips):
    (absolute starts [n], recording index [n])."""
    counts = (self.lengths - self.clip_frames) // hop + 1
    rec = np.repeat(np.arange(len(self)), counts)
    within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    return self.offsets[rec] + within * hop, rec


class ContrastiveBatches:
  """Pairs of clips of distinct participants (paper §4.1.1).

  An epoch makes `passes` passes over the participants, each in a fresh order with
  fresh crops. With ~1,200 participants and B = 1024 one pass is a single step, so
  several passes per epoch keep validation and the learning-rate plateau (counted
  in epochs) from reacting to every step.
  """

  def __init__(self, store: ClipStore, batch_size: int, seed: int = 0,
               rows: slice = slice(None), passes: int = 1):
    by_participant = collections.defaultdict(list)
    for i, r in enumerate(store.records):
      by_participant[r.participant_id].append(i)
    # Each participant's recordings in path order, so that the batches depend on the
    # recordings, not on the order a source lists them in (a TFDS build stores its
    # examples shuffled).
    for files in by_participant.values():
      files.sort(key=lambda i: store.records[i].path)
    self.participants = sorted(by_participant)
    if batch_size > len(self.participants):
      raise ValueError(
          f"contrastive batch size {batch_size} is larger than the number of "
          f"participants ({len(self.participants)}): every element of a batch must be a "
          f"distinct participant; lower batch_size to at most {len(self.participants)}")
    if passes < 1:
      raise ValueError(f"passes per epoch must be >= 1, got {passes}")
    self.store = store
    self.batch_size = batch_size
    self.seed = seed
    self.rows = rows
    self.passes = passes
    # [participants, max files] recording indices, padded by repetition.
    width = max(len(v) for v in by_participant.values())
    self._files = np.array([(v * width)[:width] for v in
                            (by_participant[p] for p in self.participants)])
    self._num_files = np.array([len(by_participant[p]) for p in self.participants])
    # One order per (epoch, pass), drawn once: a step costs O(batch), not
    # O(participants). The two most recent: the prefetch thread may run a step ahead.
    self._order = functools.lru_cache(maxsize=2)(self._permutation)

  def _permutation(self, epoch: int, pass_index: int) -> np.ndarray:
    return np.random.default_rng([self.seed, epoch, pass_index]).permutation(
        len(self.participants))

  @property
  def steps_per_pass(self) -> int:
    return len(self.participants) // self.batch_size

  @property
  def steps_per_epoch(self) -> int:
    return self.passes * self.steps_per_pass

  def batch(self, epoch: int, step: int) -> np.ndarray:
    """This process's rows of batch `step` of `epoch`: [rows, 2, clip, mel]; row i
    holds one participant's two views."""
    pass_index, k = divmod(step, self.steps_per_pass)
    who = self._order(epoch, pass_index)[k * self.batch_size:(k + 1) * self.batch_size]
    rng = np.random.default_rng([self.seed, epoch, step])
    # Draws cover the global batch so that they do not depend on the devices.
    pick = rng.integers(0, self._num_files[who][:, None], size=(self.batch_size, 2))
    rec = self._files[who[:, None], pick]
    room = self.store.lengths[rec] - self.store.clip_frames + 1
    starts = self.store.offsets[rec] + rng.integers(0, room)  # [B, 2]
    clips = self.store.gather(starts[self.rows].reshape(-1))  # [rows * 2, T, M]
    return clips.reshape((-1, 2) + clips.shape[1:])

  def epoch(self, epoch: int, start_step: int = 0) -> Iterator[np.ndarray]:
    for step in range(start_step, self.steps_per_epoch):
      yield self.batch(epoch, step)


class SupervisedBatches:
  """Labelled clips for the downstream classifier.

  Each epoch visits its clips in one random order (from (seed, epoch)), drawn once
  per epoch and sliced per step, so a step costs O(batch) and batch k of epoch e
  depends only on (seed, e, k): every clip at most once per epoch (the tail short of
  a batch is left out), and a resumed epoch gets exactly the uninterrupted batches.
  """

  def __init__(self, store: ClipStore, batch_size: int, hop: int = audio.CLIP_FRAMES,
               seed: int = 0, rows: slice = slice(None), name: str = "train"):
    if np.any(store.labels < 0):
      raise ValueError(f"{name}: {np.sum(store.labels < 0)} recordings have no label")
    self.store, self.batch_size, self.seed, self.rows = store, batch_size, seed, rows
    self.starts, self.rec = store.clip_starts(hop)
    if len(self.starts) < batch_size:
      raise ValueError(f"{name}: {len(self.starts)} clips, fewer than the batch size "
                       f"{batch_size}")
    self._order = functools.lru_cache(maxsize=2)(self._permutation)
    y = store.labels[self.rec]
    logging.info("%s: %d clips from %d recordings; class balance: %d positive (%.1f%%), "
                 "%d negative", name, len(y), len(store), y.sum(), 100 * y.mean(),
                 len(y) - y.sum())

  @property
  def steps_per_epoch(self) -> int:
    return len(self.starts) // self.batch_size

  def _permutation(self, epoch: int) -> np.ndarray:
    return np.random.default_rng([self.seed, epoch]).permutation(len(self.starts))

  def batch(self, epoch: int, step: int) -> dict[str, np.ndarray]:
    """This process's rows of batch `step` of `epoch`: {"x": [rows, clip, mel],
    "y": [rows] float32 labels}."""
    idx = self._order(epoch)[step * self.batch_size:(step + 1) * self.batch_size]
    idx = idx[self.rows]
    return {"x": self.store.gather(self.starts[idx]),
            "y": self.store.labels[self.rec[idx]].astype(np.float32)}

  def epoch(self, epoch: int, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
    for step in range(start_step, self.steps_per_epoch):
      yield self.batch(epoch, step)


def eval_batches(store: ClipStore, batch_size: int, hop: int = audio.CLIP_FRAMES
                 ) -> Iterator[dict[str, np.ndarray]]:
  """Every clip of every recording once, in global batches of `batch_size` (the last
  padded with copies of clip 0, valid=False): {"start": frame offsets, "rec":
  recording index, "clip": the clip's index within its recording, "valid"}, each
  [batch_size]. No features: each process gathers those of its own rows
  (`ClipStore.gather(batch["start"][rows])`), while every process knows the whole
  batch's recordings, to file the gathered scores under."""
  starts, rec = store.clip_starts(hop)
  clip = (starts - store.offsets[rec]) // hop
  for begin in range(0, len(starts), batch_size):
    idx = np.arange(begin, begin + batch_size)
    valid = idx < len(starts)
    idx = np.where(valid, idx, 0)
    yield {"start": starts[idx], "rec": rec[idx], "clip": clip[idx], "valid": valid}


def prefetch(iterator: Iterator, size: int = 2) -> Iterator:
  """Runs `iterator` in a background thread, `size` items ahead, so that batch
  assembly overlaps the accelerator's work. Exceptions reach the consumer."""
  q: queue.Queue = queue.Queue(maxsize=size)
  done = object()
  stop = threading.Event()

  def work():
    try:
      for item in iterator:
        if stop.is_set():
          return
        q.put(item)
    except BaseException as e:  # pylint: disable=broad-except
      q.put(e)
      return
    q.put(done)

  thread = threading.Thread(target=work, daemon=True)
  thread.start()
  try:
    while True:
      item = q.get()
      if item is done:
        return
      if isinstance(item, BaseException):
        raise item
      yield item
  finally:
    stop.set()
    while thread.is_alive():  # unblock a producer waiting on a full queue
      try:
        q.get_nowait()
      except queue.Empty:
        thread.join(timeout=0.05)
