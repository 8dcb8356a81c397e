"""Audio front end: decode recordings, log-mel filterbanks, 96-frame clips.

The feature recipe is python_speech_features' `logfbank` (pre-emphasis, rectangular
25 ms frames every 10 ms, power spectrum, triangular mel filterbank, natural log),
re-implemented vectorised so that it matches psf to float64 round-off, several times
faster than psf (`benchmarks/features.py` measures both; benchmarks/README.md has the
figures, and why the float64 FFT, which no exact version can skip, bounds the rest):

* the mel filterbank is built without Python loops and cached per parameter set;
* frames are cut with a strided view straight into the zero-padded FFT buffer;
* the real FFT is ducc0's (the vectorised FFT XLA itself uses on CPU), faster than
  numpy's;
* power and mel projection are fused into one GEMM on the interleaved
  (re, im) view of the spectrum, over the FFT bins the filters actually touch.

`coughjax.audio_jax.logfbank` is the same recipe as a jitted JAX function (kept
apart so that the input pipeline does not import JAX).
"""

from __future__ import annotations

import functools
import math
import numbers
import os
import stat
from typing import Optional

from absl import logging
import ducc0
import numpy as np
import soundfile as sf
import soxr

SAMPLE_RATE = 16_000
NUM_MELS = 64
CLIP_FRAMES = 96
WINLEN = 0.025  # seconds
WINSTEP = 0.01  # seconds
PREEMPH = 0.97
# psf replaces exact zeros by this before the log (numpy.finfo(float).eps).
LOG_FLOOR = float(np.finfo(np.float64).eps)

WEBM_EXTRA = "pip install 'coughjax[webm]'"
_AV_SUFFIXES = (".webm", ".m4a", ".mp4", ".aac", ".opus")


class AudioError(ValueError):
  """A recording that cannot be used; the message names the file and the reason."""

  def __init__(self, path, reason: str):
    self.path = str(path)
    self.reason = reason
    super().__init__(f"{self.path}: {reason}")


# ----------------------------------------------------------------------------- load


def load(
    path: str | os.PathLike,
    sample_rate: int = SAMPLE_RATE,
    *,
    min_duration: float = 0.0,
) -> np.ndarray:
  """Reads a recording as mono float32 at `sample_rate`.

  Args:
    path: wav, flac, ogg, mp3 (libsndfile), or webm/m4a (PyAV, extra `webm`).
    sample_rate: output rate in Hz; other rates are converted with soxr (HQ).
    min_duration: shortest acceptable duration in seconds (after decoding).

  Returns:
    [num_samples] float32 in [-1, 1].

  Raises:
    AudioError: missing, not a regular file, undecodable (an unrecognised or
      truncated header, truncated or corrupt data), empty, non-finite, silent or
      too short.
  """
  path = os.fspath(path)
  check_regular_file(path)
  if path.lower().endswith(_AV_SUFFIXES):
    audio, rate = _decode_av(path)
  else:
    try:
      audio, rate = sf.read(path, dtype="float32", always_2d=True)
    except _SF_ERRORS as e:
      raise AudioError(path, _decode_failure(path, e)) from e
  return _to_mono_checked(path, audio, rate, sample_rate, min_duration)


def check_regular_file(path: str | os.PathLike) -> None:
  """Raises AudioError unless `path` is a non-empty regular file.

  Checked with one `stat`, before anything opens the file: a device (`/dev/zero`),
  fifo or socket would hang or feed endless bytes to whatever reads it.
  """
  try:
    st = os.stat(path)
  except FileNotFoundError:
    raise AudioError(path, "file not found") from None
  except OSError as e:
    raise AudioError(path, f"cannot be read ({e.strerror or e})") from e
  if stat.S_ISDIR(st.st_mode):
    raise AudioError(path, "is a directory, not an audio file")
  if not stat.S_ISREG(st.st_mode):
    raise AudioError(path, "not a regular file (a device, pipe or socket); audio is "
                     "read from regular files only")
  if st.st_size == 0:
    raise AudioError(path, "empty file (0 bytes)")


_SF_ERRORS = (sf.LibsndfileError, RuntimeError, TypeError, ValueError)


def _decode_failure(path: str, error: Exception) -> str:
  """Why libsndfile could not decode `path`: a header it does not recognise (not
  audio, or cut before the audio starts) or audio data that ends or breaks early."""
  size = os.path.getsize(path)
  try:
    info = sf.info(path)
  except _SF_ERRORS:
    return (f"cannot decode audio: not a recognised audio format, or its header is "
            f"damaged or truncated ({size} bytes; libsndfile: {error})")
  return (f"cannot decode audio: truncated or corrupt {info.format} data (its header "
          f"declares {info.frames} frames at {info.samplerate} Hz; {size} bytes; "
          f"libsndfile: {error})")


def _decode_av(path: str) -> tuple[np.ndarray, int]:
  """Decodes container formats (webm/opus, m4a) with PyAV -> ([n, channels], rate)."""
  try:
    import av  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise AudioError(path, f"reading this format needs PyAV: {WEBM_EXTRA}") from e
  try:
    with av.open(path) as container:
      if not container.streams.audio:
        raise AudioError(path, "container has no audio stream")
      stream = container.streams.audio[0]
      rate = stream.codec_context.sample_rate or stream.rate
      # Planar float output: each decoded frame is [channels, samples].
      resampler = av.AudioResampler(format="fltp", layout=None, rate=rate)
      chunks = []
      for frame in container.decode(stream):
        for out in resampler.resample(frame):
          chunks.append(out.to_ndarray())
      for out in resampler.resample(None):
        chunks.append(out.to_ndarray())
  except AudioError:
    raise
  except Exception as e:  # PyAV raises many error types (av.error.*).
    raise AudioError(path, f"cannot decode audio ({type(e).__name__}: {e})") from e
  if not chunks:
    return np.zeros((0, 1), np.float32), rate
  return np.concatenate(chunks, axis=1).T.astype(np.float32), rate


# Sample rates accepted (Hz), from old telephone recordings to high-rate studio audio.
MIN_RATE, MAX_RATE = 1_000, 1_000_000
# A 2-D waveform with at most this many entries along one axis, and more along the
# other, has its channels on that axis.
MAX_CHANNELS = 8
# PCM integer types -> (offset, full scale), as libsndfile converts them to float.
_PCM_SCALE = {"int8": (0, 2**7), "int16": (0, 2**15), "int32": (0, 2**31),
              "uint8": (128, 2**7)}


def from_array(
    waveform,
    sample_rate,
    target_rate: int = SAMPLE_RATE,
    *,
    min_duration: float = 0.0,
    name: str = "waveform",
) -> np.ndarray:
  """A waveform given as an array, checked and converted as `load` converts a file.

  The one check of every public function that takes audio samples
  (`Classifier.predict`, `Encoder.embed`, `Encoder.embed_clips`).

  Args:
    waveform: [samples] or [samples, channels]; [channels, samples] is recognised
      when one axis has at most `MAX_CHANNELS` entries and the other more. Floats
      are taken as they are (full scale [-1, 1]); integer PCM is scaled as
      soundfile reads it as float: int16 / 2**15, int32 / 2**31, int8 / 2**7,
      uint8 (offset binary) (x - 128) / 2**7.
    sample_rate: its rate in Hz, a positive integer.
    target_rate: the rate to return.
    min_duration: shortest acceptable duration in seconds.
    name: how errors name the waveform.

  Returns:
    [num_samples] float32 mono at `target_rate`.

  Raises:
    AudioError naming `name`: a bad sample rate, dtype or shape; empty,
      non-finite, silent or too short audio.
  """
  rate = _sample_rate(sample_rate, name)
  return _to_mono_checked(name, _float_frames(waveform, name), rate, target_rate,
                          min_duration)


def _sample_rate(sample_rate, name: str) -> int:
  if (isinstance(sample_rate, (bool, np.bool_)) or not isinstance(sample_rate, numbers.Real)
      or not float(sample_rate).is_integer() or sample_rate <= 0):
    raise AudioError(name, f"sample_rate must be a positive integer (Hz), got "
                     f"{sample_rate!r}")
  return int(sample_rate)


def _float_frames(waveform, name: str) -> np.ndarray:
  """Any accepted waveform -> [samples, channels] float32 in full scale [-1, 1]."""
  try:
    x = np.asarray(waveform)
  except ValueError as e:  # a ragged nested list
    raise AudioError(name, f"not an array of audio samples ({e})") from e
  accepted = ("give float samples in [-1, 1], or int16 / int32 / int8 / uint8 PCM")
  if x.dtype.kind == "f":
    x = x.astype(np.float32)
  elif x.dtype.name in _PCM_SCALE:
    offset, scale = _PCM_SCALE[x.dtype.name]
    # Exact: every int16/int8/uint8 value is a float32, the scale a power of two.
    x = (x.astype(np.float32) - np.float32(offset)) * np.float32(1 / scale)
  elif x.dtype.kind in "iu":
    raise AudioError(name, f"{x.dtype} samples have no standard audio full scale; "
                     f"{accepted}")
  else:
    raise AudioError(name, f"{x.dtype} arrays are not audio samples; {accepted}")
  if x.ndim == 1:
    return x[:, None]
  if x.ndim == 2:
    if x.shape[1] <= MAX_CHANNELS:
      return x
    if x.shape[0] <= MAX_CHANNELS:
      return x.T  # [channels, samples], as torchaudio and librosa give it
  raise AudioError(name, f"waveform of shape {x.shape}: expected [samples] or [samples, "
                   f"channels] (or [channels, samples]) with at most {MAX_CHANNELS} "
                   "channels")


def _to_mono_checked(path, audio, rate, sample_rate, min_duration) -> np.ndarray:
  """[samples, channels] at `rate` -> checked [samples] mono at `sample_rate`."""
  if not MIN_RATE <= rate <= MAX_RATE:
    # A damaged header, say: resampling 1 Hz audio to 16 kHz would need 16,000x the
    # memory, and 2**31 Hz audio would come out empty.
    raise AudioError(path, f"sample rate {rate} Hz is outside the {MIN_RATE}-{MAX_RATE} Hz "
                     "that coughjax reads")
  if audio.size == 0:
    raise AudioError(path, "no audio samples")
  audio = audio.mean(axis=1) if audio.ndim == 2 else audio
  if not np.all(np.isfinite(audio)):
    bad = int(np.size(audio) - np.count_nonzero(np.isfinite(audio)))
    raise AudioError(path, f"{bad} NaN/inf samples")
  peak = float(np.max(np.abs(audio)))
  if peak == 0.0:
    raise AudioError(path, "audio is silent (all samples are zero)")
  duration = audio.shape[0] / rate
  if duration < min_duration:
    raise AudioError(path, f"too short: {duration:.3f} s < minimum {min_duration} s")
  if rate != sample_rate:
    audio = soxr.resample(audio, rate, sample_rate, quality="HQ")
  return np.ascontiguousarray(audio, dtype=np.float32)


# ------------------------------------------------------------------------ features


def _round_half_up(x: float) -> int:
  return int(math.floor(x + 0.5))


def frame_params(
    sample_rate: int, winlen: float = WINLEN, winstep: float = WINSTEP,
    nfft: Optional[int] = None,
) -> tuple[int, int, int]:
  """(frame length, frame step, FFT size) in samples, as psf computes them.

  nfft=None picks the smallest power of two that covers the window (psf's default of
  512 would truncate 25 ms frames above 20.48 kHz).
  """
  frame_len = _round_half_up(winlen * sample_rate)
  frame_step = _round_half_up(winstep * sample_rate)
  if nfft is None:
    nfft = 1 << max(0, (frame_len - 1).bit_length())
  return frame_len, frame_step, nfft


def num_frames(num_samples: int, sample_rate: int = SAMPLE_RATE,
               winlen: float = WINLEN, winstep: float = WINSTEP) -> int:
  """Number of psf frames for a signal (the last one zero-padded)."""
  frame_len, frame_step, _ = frame_params(sample_rate, winlen, winstep)
  if num_samples <= frame_len:
    return 1
  return 1 + math.ceil((num_samples - frame_len) / frame_step)


def hz_to_mel(hz):
  return 2595.0 * np.log10(1.0 + np.asarray(hz) / 700.0)


def mel_to_hz(mel):
  return 700.0 * (10.0 ** (np.asarray(mel) / 2595.0) - 1.0)


@functools.lru_cache(maxsize=32)
def mel_filterbank(nfilt: int, nfft: int, sample_rate: int, lowfreq: float = 0.0,
                   highfreq: Optional[float] = None) -> np.ndarray:
  """[nfilt, nfft // 2 + 1] triangular filters, identical to psf.get_filterbanks."""
  highfreq = highfreq or sample_rate / 2
  if highfreq > sample_rate / 2:
    raise ValueError(f"highfreq {highfreq} Hz is above Nyquist ({sample_rate / 2} Hz)")
  mels = np.linspace(hz_to_mel(lowfreq), hz_to_mel(highfreq), nfilt + 2)
  edges = np.floor((nfft + 1) * mel_to_hz(mels) / sample_rate)
  left, centre, right = edges[:-2, None], edges[1:-1, None], edges[2:, None]
  i = np.arange(nfft // 2 + 1, dtype=np.float64)[None, :]
  with np.errstate(divide="ignore", invalid="ignore"):
    rise = np.where((i >= left) & (i < centre), (i - left) / (centre - left), 0.0)
    fall = np.where((i >= centre) & (i < right), (right - i) / (right - centre), 0.0)
  bank = rise + fall
  bank.setflags(write=False)
  return bank


@functools.lru_cache(maxsize=32)
def _banded_bank(nfilt, nfft, sample_rate, lowfreq, highfreq, group=8):
  """The filterbank / nfft as blocks of `group` filters, each trimmed to the FFT bins
  its filters touch and laid out for the (re, im)-interleaved spectrum.

  Each bin feeds at most two filters, so the blocks hold ~8x fewer weights than the
  dense [bins, nfilt] matrix. Returns [(first filter, last filter + 1, lo bin,
  hi bin, weights [2 * (hi - lo), filters])].
  """
  bank = mel_filterbank(nfilt, nfft, sample_rate, lowfreq, highfreq)
  blocks = []
  for f0 in range(0, nfilt, group):
    f1 = min(f0 + group, nfilt)
    used = np.flatnonzero(bank[f0:f1].any(axis=0))
    lo, hi = (int(used[0]), int(used[-1]) + 1) if used.size else (0, 0)
    weights = np.repeat(bank[f0:f1, lo:hi].T / nfft, 2, axis=0)
    blocks.append((f0, f1, lo, hi, np.ascontiguousarray(weights)))
  return tuple(blocks)


def logfbank(
    signal: np.ndarray,
    sample_rate: int = SAMPLE_RATE,
    *,
    nfilt: int = NUM_MELS,
    winlen: float = WINLEN,
    winstep: float = WINSTEP,
    nfft: Optional[int] = None,
    lowfreq: float = 0.0,
    highfreq: Optional[float] = None,
    preemph: float = PREEMPH,
    chunk: int = 256,
) -> np.ndarray:
  """Log mel-filterbank energies, python_speech_features.logfbank reimplemented.

  Args:
    signal: [num_samples] mono audio.
    sample_rate: rate of `signal` in Hz.
    nfilt, winlen, winstep, lowfreq, highfreq, preemph: as in psf.
    nfft: FFT size; None = smallest power of two covering the window. A smaller
      value truncates each frame, as psf does (with a warning).
    chunk: frames processed together; the working set of a chunk stays in cache,
      which matters more here than the arithmetic.

  Returns:
    [num_frames, nfilt] float32; computed in float64 so that it equals psf
    (run with the same nfft) to round-off.
  """
  x = np.asarray(signal, dtype=np.float64)
  if x.ndim != 1 or x.size == 0:
    raise ValueError(f"logfbank expects a non-empty 1-D signal, got shape {x.shape}")
  frame_len, frame_step, nfft = frame_params(sample_rate, winlen, winstep, nfft)
  if nfft < frame_len:
    logging.warning("frame length (%d) is greater than FFT size (%d), frame will be "
                    "truncated. Increase NFFT to avoid.", frame_len, nfft)
  blocks = _banded_bank(nfilt, nfft, sample_rate, lowfreq, highfreq)
  n = x.size
  frames_n = num_frames(n, sample_rate, winlen, winstep)
  # Pre-emphasised signal, zero-padded to cover the last frame.
  padded = np.empty((frames_n - 1) * frame_step + frame_len)
  padded[0] = x[0]
  np.subtract(x[1:], preemph * x[:-1], out=padded[1:n])
  padded[n:] = 0.0
  windows = np.lib.stride_tricks.sliding_window_view(padded, frame_len)[::frame_step]

  out = np.empty((frames_n, nfilt), np.float32)
  width = min(frame_len, nfft)
  chunk = min(chunk, frames_n)
  buf = np.zeros((chunk, nfft))  # columns past `width` stay zero (FFT padding)
  spec = np.empty((chunk, nfft // 2 + 1), np.complex128)
  reim = spec.view(np.float64)  # [chunk, 2 * bins]: re, im, re, im, ...
  feat = np.empty((chunk, nfilt))
  for start in range(0, frames_n, chunk):
    m = min(chunk, frames_n - start)
    buf[:m, :width] = windows[start:start + m, :width]
    ducc0.fft.r2c(buf[:m], axes=(1,), out=spec[:m])
    np.square(reim[:m], out=reim[:m])  # re^2, im^2: summed by the weights below
    for f0, f1, lo, hi, weights in blocks:
      np.matmul(reim[:m, 2 * lo:2 * hi], weights, out=feat[:m, f0:f1])
    np.copyto(feat[:m], LOG_FLOOR, where=feat[:m] == 0)
    np.log(feat[:m], out=feat[:m])
    out[start:start + m] = feat[:m]
  return out


# --------------------------------------------------------------------------- clips


def min_frames_for(min_duration: float, sample_rate: int = SAMPLE_RATE) -> int:
  """Frames psf produces for `min_duration` seconds of audio."""
  return num_frames(max(1, round(min_duration * sample_rate)), sample_rate)


def clips(
    features: np.ndarray,
    length: int = CLIP_FRAMES,
    hop: Optional[int] = None,
    *,
    min_frames: int = 0,
    name: str = "features",
) -> np.ndarray:
  """Cuts [T, mel] features into [n, length, mel] windows every `hop` frames.

  Windows start at 0, hop, 2*hop, ... while they fit (a tail shorter than a hop is
  dropped). A recording shorter than `length` but with at least `min_frames` frames
  is repeat-padded to one clip (`pad_to_clip`); shorter than that raises AudioError
  naming `name`.
  Returns a strided view when no padding is needed (copy it before writing).
  """
  hop = length if hop is None else hop
  if hop <= 0 or length <= 0:
    raise ValueError(f"clip length ({length}) and hop ({hop}) must be positive")
  features = np.asarray(features)
  t = features.shape[0]
  if t < length:
    if t < max(min_frames, 1):
      raise AudioError(name, f"too short: {t} frames < minimum {min_frames} frames")
    return pad_to_clip(features, length)[None]
  windows = np.lib.stride_tricks.sliding_window_view(features, length, axis=0)
  # sliding_window_view puts the window axis last: [n, mel, length] -> [n, length, mel]
  return np.moveaxis(windows[::hop], -1, 1)


def pad_to_clip(features: np.ndarray, length: int = CLIP_FRAMES) -> np.ndarray:
  """[T, ...] features repeated (tiled) to at least `length` frames: [max(T, length), ...].

  Repeating, not zero-padding: a block of zeros is a log-mel level no real frame has
  (louder than any quiet frame in raw log-mel), so it marks short recordings — a cue
  the label can ride on. A tiled recording holds only its own frames, so its level,
  peak and spectrum are its own.
  """
  t = features.shape[0]
  if t >= length:
    return features
  if t == 0:
    raise ValueError(f"cannot pad an empty recording to {length} frames")
  return np.take(features, np.arange(length) % t, axis=0)
