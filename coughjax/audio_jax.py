"""`logfbank` as a jitted JAX function, for computing features on an accelerator.

The recipe of `coughjax.audio.logfbank` (python_speech_features' `logfbank`), in the
default JAX float precision; `benchmarks/features.py` measures both.
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from coughjax import audio


@functools.partial(jax.jit, static_argnames=("frames_n", "frame_len", "frame_step",
                                             "nfft", "lo", "hi"))
def _logfbank_padded(padded, weights, *, frames_n, frame_len, frame_step, nfft, lo, hi):
  idx = (jnp.arange(frames_n)[:, None] * frame_step
         + jnp.arange(min(frame_len, nfft))[None, :])
  spec = jnp.fft.rfft(padded[idx], n=nfft)[:, lo:hi]
  feat = (spec.real**2 + spec.imag**2) @ weights
  return jnp.log(jnp.where(feat == 0, audio.LOG_FLOOR, feat))


def logfbank(
    signal, sample_rate: int = audio.SAMPLE_RATE, *, nfilt: int = audio.NUM_MELS,
    winlen: float = audio.WINLEN, winstep: float = audio.WINSTEP, nfft: Optional[int] = None,
    lowfreq: float = 0.0, highfreq: Optional[float] = None, preemph: float = audio.PREEMPH,
) -> jax.Array:
  """`coughjax.audio.logfbank` as a jitted JAX computation -> [num_frames, nfilt].

  To bound recompilation the frame count is rounded up to a power of two (at least
  128) and the result sliced. Precision follows `jax_enable_x64`: in float32 the
  lowest-energy bands (e.g. above the Nyquist of upsampled audio) lose accuracy,
  which `benchmarks/features.py` reports.
  """
  x = jnp.asarray(signal)
  frame_len, frame_step, nfft = audio.frame_params(sample_rate, winlen, winstep, nfft)
  frames_n = audio.num_frames(x.shape[0], sample_rate, winlen, winstep)
  bucket = max(128, 1 << (frames_n - 1).bit_length())
  padded_len = (bucket - 1) * frame_step + frame_len
  x = jnp.concatenate([x[:1], x[1:] - preemph * x[:-1]])
  x = jnp.pad(x, (0, padded_len - x.shape[0]))
  bank = audio.mel_filterbank(nfilt, nfft, sample_rate, lowfreq, highfreq)
  used = np.flatnonzero(bank.any(axis=0))
  lo, hi = int(used[0]), int(used[-1]) + 1
  weights = jnp.asarray(bank[:, lo:hi].T / nfft, dtype=x.dtype)
  out = _logfbank_padded(x, weights, frames_n=bucket, frame_len=frame_len,
                         frame_step=frame_step, nfft=nfft, lo=lo, hi=hi)
  return out[:frames_n]
