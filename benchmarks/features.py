"""Log-mel filterbank throughput: python_speech_features vs coughjax (numpy, jax).

Prints a markdown table of seconds of audio processed per second of compute (median
of --repeats passes over every recording), the speed-up over psf and the max abs
difference from psf, on the real Coswara recordings:

  python benchmarks/features.py [--data=PATH/coswara_ci] [--rate=16000] [--quick]

Each pass runs psf and coughjax back to back so that load on a shared machine hits
both alike. The jax column is timed after a warm-up pass has compiled every shape.
"""

import os
import pathlib
import platform
import statistics
import sys
import time

from absl import app
from absl import flags
import jax
import numpy as np
import python_speech_features as psf
import soundfile as sf
import soxr

from coughjax import audio

_DATA = flags.DEFINE_string("data", None, "coswara_ci folder (default: $COUGHJAX_COSWARA_CI "
                            "or ../shared/data/coswara_ci)")
_RATE = flags.DEFINE_integer("rate", 16000, "input rate; files are resampled to it first")
_REPEATS = flags.DEFINE_integer("repeats", 5, "timed passes per implementation")
_QUICK = flags.DEFINE_bool("quick", False, "a handful of files, one pass (smoke test)")


def _find_data() -> pathlib.Path:
  here = pathlib.Path(__file__).resolve().parents[1]
  for c in (_DATA.value, os.environ.get("COUGHJAX_COSWARA_CI"),
            here.parent / "shared" / "data" / "coswara_ci"):
    if c and (pathlib.Path(c) / "audio").is_dir():
      return pathlib.Path(c)
  sys.exit("coswara_ci not found: pass --data or set COUGHJAX_COSWARA_CI")


def _time_pass(fn, signals) -> float:
  start = time.perf_counter()
  for x in signals:
    fn(x)
  return time.perf_counter() - start


def main(argv):
  del argv
  root = _find_data()
  rate = _RATE.value
  paths = sorted(root.glob("audio/*/*.flac"))
  if _QUICK.value:
    paths = paths[:6]
  signals = [sf.read(p, dtype="float64")[0] for p in paths]
  if rate != 16000:
    signals = [soxr.resample(x, 16000, rate, quality="HQ") for x in signals]
  seconds = sum(x.size for x in signals) / rate
  nfft = audio.frame_params(rate)[2]

  impls = {
      "python_speech_features": lambda x: psf.logfbank(x, rate, nfilt=64, nfft=nfft),
      "coughjax numpy (float64)": lambda x: audio.logfbank(x, rate),
      f"coughjax jax jit ({jax.numpy.zeros(()).dtype})":
          lambda x: audio.logfbank_jax(x, rate).block_until_ready(),
  }
  signals32 = [x.astype(np.float32) for x in signals]
  inputs = {k: (signals32 if "jax" in k else signals) for k in impls}
  for k, fn in impls.items():  # warm-up: caches, jit compilation of every shape
    _time_pass(fn, inputs[k])

  repeats = 1 if _QUICK.value else _REPEATS.value
  times = {k: [] for k in impls}
  for _ in range(repeats):
    for k, fn in impls.items():
      times[k].append(_time_pass(fn, inputs[k]))

  refs = [impls["python_speech_features"](x) for x in signals]
  diffs = {k: np.concatenate([np.abs(np.asarray(fn(x)) - r).ravel()
                              for x, r in zip(inputs[k], refs)]) for k, fn in impls.items()}

  base = statistics.median(times["python_speech_features"])
  print(f"\n{len(signals)} recordings, {seconds:.1f} s of audio at {rate} Hz, nfilt=64, "
        f"nfft={nfft}; {repeats} passes, median; {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, jax {jax.__version__} on {jax.devices()[0].platform}\n")
  print("| implementation | audio s / compute s | speed-up vs psf "
        "| max abs diff vs psf | median abs diff |")
  print("|---|---:|---:|---:|---:|")
  for k in impls:
    t = statistics.median(times[k])
    print(f"| {k} | {seconds / t:,.0f} | {base / t:.2f}x "
          f"| {diffs[k].max():.2e} | {np.median(diffs[k]):.1e} |")


if __name__ == "__main__":
  app.run(main)
