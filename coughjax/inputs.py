"""What a trained model reads: audio -> 16 kHz log-mel features -> clips -> batches.

The path shared by `coughjax.predict` (classifiers) and `coughjax.embed` (encoders):
a waveform or file is decoded, checked, mixed to mono and resampled to the model's
rate, turned into log-mel features by `audio.logfbank` with the model's feature
parameters (the numpy code the training data went through, so a file's features
and DS mask keys equal those of the evaluation loop), and cut into clips every
`hop` frames (`audio.clips`). The clips of many recordings are then run through a
compiled function in batches of at most `MAX_BATCH` rows, the last padded with
zeros to a power of two (at least `MIN_BATCH`): recordings of any length share a
few compiled shapes. Every row carries its recording's mask key and its clip index
(`coughjax.infer`), so an output depends only on its own clip, never on the batch.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, Iterable, Optional, Sequence

import numpy as np
import tqdm

from coughjax import audio
from coughjax.data import features as features_lib
from coughjax.data import mask_key

# Rows per compiled call: the smallest padded batch, and the largest (powers of two).
MIN_BATCH = 8
MAX_BATCH = 256
# Files decoded before their clips are run: bounds the clips held in memory.
FILES_PER_GROUP = 32


@dataclasses.dataclass(frozen=True)
class ClipSpec:
  """How a model's input is made: feature parameters, clip length and hop."""
  features: features_lib.FeatureParams
  clip_frames: int
  hop: int

  @classmethod
  def from_config(cls, features_cfg) -> "ClipSpec":
    """From a config's `features` section (`eval_hop` is the hop)."""
    return cls(features_lib.FeatureParams.from_config(features_cfg),
               int(features_cfg["clip_frames"]), int(features_cfg["eval_hop"]))

  def to_dict(self) -> dict:
    return {**dataclasses.asdict(self.features), "clip_frames": self.clip_frames,
            "eval_hop": self.hop}


def waveform_features(waveform: np.ndarray, sample_rate: int,
                      params: features_lib.FeatureParams, name: str = "waveform"
                      ) -> np.ndarray:
  """One recording's samples at `sample_rate` -> [T, nfilt] float32 features.

  The waveform goes through `audio.from_array` (integer PCM scaled as soundfile
  reads it, [samples, channels] or [channels, samples], the checks of a file).

  Raises:
    AudioError naming `name`: a bad sample rate, dtype or shape; empty, silent,
      non-finite or too short (`params.min_duration`) audio.
  """
  wave = audio.from_array(waveform, sample_rate, params.sample_rate,
                          min_duration=params.min_duration, name=name)
  return features_lib.waveform_features(wave, params)


def file_features(path: str | os.PathLike, params: features_lib.FeatureParams
                  ) -> np.ndarray:
  """An audio file's [T, nfilt] features, with the training data's checks
  (`audio.load`: missing, undecodable, silent, shorter than `params.min_duration`)."""
  wave = audio.load(path, params.sample_rate, min_duration=params.min_duration)
  return features_lib.waveform_features(wave, params)


@dataclasses.dataclass
class Clips:
  """The clips of several recordings, row-aligned.

  Attributes:
    x: [n, clip_frames, nfilt] float32.
    recording: [n] index of each row's recording (0 .. recordings - 1).
    clip: [n] index of each row within its recording.
    rec_keys: [n, 2] uint32 mask key of each row's recording (`mask_key.recording_key`).
  """
  x: np.ndarray
  recording: np.ndarray
  clip: np.ndarray
  rec_keys: np.ndarray


def cut(features: Sequence[np.ndarray], spec: ClipSpec,
        names: Optional[Sequence[str]] = None) -> Clips:
  """Every clip of every recording's [T, nfilt] features (`audio.clips`).

  Raises:
    AudioError naming the recording (from `names`): fewer frames than
      `spec.features.min_frames`.
  """
  names = recording_names(names, len(features))
  return _concat([_cut_one(f, spec, name) for f, name in zip(features, names)], spec)


def recording_names(names: Optional[Sequence[str]], count: int) -> list[str]:
  """`names` as a list, or "recording 0", "recording 1", ... when None."""
  return list(names) if names is not None else [f"recording {i}" for i in range(count)]


def _cut_one(feats: np.ndarray, spec: ClipSpec, name: str) -> Clips:
  c = np.asarray(audio.clips(feats, spec.clip_frames, spec.hop,
                             min_frames=spec.features.min_frames, name=name), np.float32)
  return Clips(c, np.zeros(len(c), int), np.arange(len(c)),
               np.broadcast_to(mask_key.recording_key(feats, spec.clip_frames), (len(c), 2)))


def _concat(parts: Sequence[Clips], spec: ClipSpec) -> Clips:
  """The clips of several single-recording `Clips` (recording i = parts[i])."""
  if not parts:
    shape = (0, spec.clip_frames, spec.features.nfilt)
    return Clips(np.zeros(shape, np.float32), np.zeros(0, int), np.zeros(0, int),
                 np.zeros((0, 2), np.uint32))
  return Clips(np.concatenate([p.x for p in parts]),
               np.concatenate([p.recording + i for i, p in enumerate(parts)]),
               np.concatenate([p.clip for p in parts]),
               np.concatenate([p.rec_keys for p in parts]).astype(np.uint32))


def padded_size(rows: int) -> int:
  """The compiled batch for `rows` (<= MAX_BATCH) rows: a power of two >= MIN_BATCH."""
  return max(MIN_BATCH, 1 << max(rows - 1, 0).bit_length())


# fn(x [b, T, mel], rec_keys [b, 2] uint32, clip_index [b] int32) -> [b, ...]
BatchFn = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def run(fn: BatchFn, clips: Clips) -> np.ndarray:
  """fn over every row of `clips` in padded batches: [n, ...] (n = rows)."""
  n = len(clips.x)
  out = []
  for start in range(0, n, MAX_BATCH):
    rows = slice(start, min(start + MAX_BATCH, n))
    m = rows.stop - rows.start
    size = padded_size(m)

    def pad(a):
      return np.concatenate([a[rows], np.zeros((size - m,) + a.shape[1:], a.dtype)])

    # Padding rows are zero clips with key 0 and index 0: inert, each row being
    # computed on its own.
    out.append(np.asarray(fn(pad(clips.x), pad(clips.rec_keys), pad(clips.clip)))[:m])
  if not out:
    raise ValueError("no clips to run")
  return np.concatenate(out)


@dataclasses.dataclass
class FileResults:
  """Per-clip outputs of the usable recordings, and why the others failed.

  Attributes:
    paths: the usable files (or recording names), in the order given.
    outputs: [clips, ...] per-clip outputs, all finite.
    recording: [clips] index into `paths` of each row.
    clip: [clips] clip index within its file.
    errors: (path or name, message) of each recording that could not be used.
  """
  paths: list[str]
  outputs: np.ndarray
  recording: np.ndarray
  clip: np.ndarray
  errors: list[tuple[str, str]]


NONFINITE = ("the model's output is NaN/inf for this recording (damaged parameters, "
             "or an input the model cannot handle); nothing returned for it")


def run_named(fn: BatchFn, clips: Clips, names: Sequence[str]) -> FileResults:
  """fn over every row of `clips` (recording i named `names[i]`); a recording any of
  whose outputs is NaN/inf is listed in `errors` (`NONFINITE`), never returned."""
  return finite_only(run(fn, clips), clips.recording, clips.clip, names)


def finite_only(out: np.ndarray, recording: np.ndarray, clip: np.ndarray,
                names: Sequence[str]) -> FileResults:
  """Outputs [n, ...] of clips of recordings `names` (row i: recording `recording[i]`,
  clip `clip[i]`), without the recordings any of whose outputs is NaN/inf: those are
  listed in `errors` (`NONFINITE`), the others renumbered in order."""
  rows_ok = np.isfinite(out.reshape(len(out), -1)).all(axis=1)
  bad = np.bincount(recording[~rows_ok], minlength=len(names)) > 0
  keep = ~bad[recording]
  renumber = np.cumsum(~bad) - 1
  return FileResults([n for n, b in zip(names, bad) if not b], out[keep],
                     renumber[recording[keep]], clip[keep],
                     [(names[i], NONFINITE) for i in np.flatnonzero(bad)])


def as_paths(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[str]:
  """A list of path strings; one str, bytes or PathLike is one path (not a sequence
  of one-character paths)."""
  if isinstance(paths, (str, bytes, os.PathLike)):
    paths = [paths]
  return [os.fsdecode(p) for p in paths]


def run_files(fn: BatchFn, paths: str | os.PathLike | Iterable[str | os.PathLike],
              spec: ClipSpec, *, progress: bool = False, desc: str = "files"
              ) -> FileResults:
  """fn over every clip of many files (`as_paths`), `FILES_PER_GROUP` files at a
  time. A file that cannot be decoded or is too short, or whose outputs are not
  finite (`run_named`), is listed in `errors`; the rest run."""
  paths = as_paths(paths)
  good, outputs, recs, clip_idx, errors = [], [], [], [], []
  bar = tqdm.tqdm(total=len(paths), desc=desc, unit="file", disable=not progress,
                  mininterval=1.0)
  for start in range(0, len(paths), FILES_PER_GROUP):
    parts, names = [], []
    for path in paths[start:start + FILES_PER_GROUP]:
      try:  # each file alone: an unreadable or too-short one fails here
        parts.append(_cut_one(file_features(path, spec.features), spec, path))
        names.append(path)
      except audio.AudioError as e:
        errors.append((path, str(e)))
    if parts:
      group = run_named(fn, _concat(parts, spec), names)
      outputs.append(group.outputs)
      recs.append(group.recording + len(good))
      clip_idx.append(group.clip)
      good += group.paths
      errors += group.errors
    bar.update(min(FILES_PER_GROUP, len(paths) - start))
  bar.close()
  if not good:
    return FileResults([], np.zeros((0,)), np.zeros(0, int), np.zeros(0, int), errors)
  return FileResults(good, np.concatenate(outputs), np.concatenate(recs),
                     np.concatenate(clip_idx), errors)


def recording_means(outputs: np.ndarray, recording: np.ndarray, count: int) -> np.ndarray:
  """Mean over each recording's rows: [rows, ...] -> [count, ...] float64."""
  sums = np.zeros((count,) + outputs.shape[1:], np.float64)
  np.add.at(sums, recording, outputs)
  counts = np.bincount(recording, minlength=count).reshape((count,) + (1,) * (outputs.ndim - 1))
  if np.any(counts == 0):
    raise ValueError(f"recordings {np.flatnonzero(counts.ravel() == 0).tolist()} have no clips")
  return sums / counts
