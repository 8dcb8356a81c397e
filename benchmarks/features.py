"""Log-mel filterbank throughput: python_speech_features vs coughjax (numpy, jax).

Prints a markdown table of seconds of audio processed per second of compute (median
of --repeats passes over every recording), the speed-up over psf and the max abs
difference from psf, on the real Coswara recordings:

  python benchmarks/features.py [--data=PATH/coswara_ci] [--rate=16000] [--quick]
                                [--json=PATH]

The passes are interleaved (psf, coughjax, ... in rotating order) so that load on a
shared machine hits all alike. The jax row is timed after warm-up passes have compiled
every shape. The last row times only the float64 real FFT of as many frames, on data
already in cache: the work no exact implementation can skip, so its speed-up bounds
any other's.
"""

import json
import os
import pathlib
import sys

from absl import app
from absl import flags

import harness  # puts the checkout on sys.path  # pylint: disable=g-bad-import-order

import ducc0  # pylint: disable=g-bad-import-order
import jax
import numpy as np
import python_speech_features as psf
import soundfile as sf
import soxr

from coughjax import audio
from coughjax import audio_jax

_DATA = flags.DEFINE_string("data", None, "coswara_ci folder (default: $COUGHJAX_COSWARA_CI "
                            "or ../shared/data/coswara_ci)")
_RATE = flags.DEFINE_integer("rate", 16000, "input rate; files are resampled to it first")
_REPEATS = flags.DEFINE_integer("repeats", 5, "timed passes per implementation")
_QUICK = flags.DEFINE_bool("quick", False, "a handful of files, one pass (smoke test)")
_JSON = flags.DEFINE_string("json", None, "also write the results here")

FFT_FLOOR = "float64 FFT of the frames alone (floor)"


def _find_data() -> pathlib.Path:
  for c in (_DATA.value, os.environ.get("COUGHJAX_COSWARA_CI"),
            harness.REPO.parent / "shared" / "data" / "coswara_ci"):
    if c and (pathlib.Path(c) / "audio").is_dir():
      return pathlib.Path(c)
  sys.exit("coswara_ci not found: pass --data or set COUGHJAX_COSWARA_CI")


def _fft_floor(signals, rate: int, nfft: int, chunk: int = 256):
  """A function running the float64 real FFT of every recording's frame count, `chunk`
  frames at a time, on one buffer of real frames kept hot in cache."""
  frame_len, frame_step, _ = audio.frame_params(rate)
  head = np.concatenate(signals)[:(chunk - 1) * frame_step + frame_len]
  windows = np.lib.stride_tricks.sliding_window_view(head, frame_len)[::frame_step]
  frames = np.zeros((chunk, nfft))
  frames[:len(windows), :min(frame_len, nfft)] = windows[:, :nfft]
  spec = np.empty((chunk, nfft // 2 + 1), np.complex128)
  counts = [audio.num_frames(x.size, rate) for x in signals]

  def run():
    for n in counts:
      for i in range(0, n, chunk):
        m = min(chunk, n - i)
        ducc0.fft.r2c(frames[:m], axes=(1,), out=spec[:m])
  return run


def main(argv):
  del argv
  rate = _RATE.value
  paths = sorted(_find_data().glob("audio/*/*.flac"))[:6 if _QUICK.value else None]
  signals = [sf.read(p, dtype="float64")[0] for p in paths]
  if rate != 16000:
    signals = [soxr.resample(x, 16000, rate, quality="HQ") for x in signals]
  signals32 = [x.astype(np.float32) for x in signals]
  seconds = sum(x.size for x in signals) / rate
  nfft = audio.frame_params(rate)[2]

  impls = {  # name -> (one recording -> features, that implementation's inputs)
      "python_speech_features": (lambda x: psf.logfbank(x, rate, nfilt=64, nfft=nfft),
                                 signals),
      "coughjax numpy (float64)": (lambda x: audio.logfbank(x, rate), signals),
      f"coughjax jax jit ({jax.numpy.zeros(()).dtype})": (
          lambda x: audio_jax.logfbank(x, rate).block_until_ready(), signals32),
  }
  passes = {k: (lambda fn=fn, xs=xs: [fn(x) for x in xs]) for k, (fn, xs) in impls.items()}
  passes[FFT_FLOOR] = _fft_floor(signals, rate, nfft)
  repeats = 1 if _QUICK.value else _REPEATS.value
  times = harness.time_interleaved(passes, repeats, min_repeat_s=0, warmup=1)

  refs = passes["python_speech_features"]()
  base = times["python_speech_features"].median
  results = []
  for k, t in times.items():
    r = {"implementation": k, "audio_s_per_s": seconds / t.median,
         "speedup_vs_psf": base / t.median, "pass_s": t.samples}
    if k in impls:
      fn, xs = impls[k]
      d = np.concatenate([np.abs(np.asarray(fn(x)) - ref).ravel()
                          for x, ref in zip(xs, refs)])
      r.update(max_abs_diff=float(d.max()), median_abs_diff=float(np.median(d)))
    results.append(r)
  m = harness.machine()
  print(f"\n{len(signals)} recordings, {seconds:.1f} s of audio at {rate} Hz, nfilt=64, "
        f"nfft={nfft}; median of {repeats} interleaved passes; {harness.describe(m)}\n")
  print(harness.markdown_table(
      ["implementation", "audio s / compute s", "speed-up vs psf", "max abs diff vs psf",
       "median abs diff"],
      [[r["implementation"], f"{r['audio_s_per_s']:,.0f}", f"{r['speedup_vs_psf']:.2f}x",
        f"{r['max_abs_diff']:.2e}" if "max_abs_diff" in r else "-",
        f"{r['median_abs_diff']:.1e}" if "median_abs_diff" in r else "-"]
       for r in results]))
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump({"machine": m, "rate": rate, "nfft": nfft, "audio_s": seconds,
                 "repeats": repeats, "results": results}, f, indent=2)

if __name__ == "__main__":
  app.run(main)
