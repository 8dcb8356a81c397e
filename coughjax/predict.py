r"""COVID-positive probability of recordings, from a trained downstream workdir.

  python -m coughjax.predict --workdir=runs/ensemble a.wav b.flac c.webm

prints one line per file: the path and the mean probability over its clips (6
decimals). Python:

  predict_fn = coughjax.predict.load("runs/ensemble")
  p = predict_fn(waveform, sample_rate)

The model is the run (of the workdir's seeds) with the best validation ROC-AUC, at
its best checkpoint. Bad input gets the same errors as training data
(`coughjax.audio.AudioError`, naming the file and the problem).

Clips are scored by `coughjax.infer.probabilities`, the path the downstream
evaluation uses: where the config masks at inference (DS masking), each clip's masks
are keyed by the recording's features and the clip's index in it, so a file's score
does not depend on its path or on the other files scored with it, and equals the
score that run wrote to run_i/test_predictions.csv for the same recording.
"""

from __future__ import annotations

import functools
import json
import pathlib
import sys
from typing import Callable

from absl import app
from absl import flags
import jax
import ml_collections
import numpy as np
import soxr

from coughjax import audio
from coughjax import infer
from coughjax import models
from coughjax.data import features as features_lib
from coughjax.models import classifier as classifier_lib
from coughjax.train import trainer

ENCODERS_FILE = "encoders.json"
# Clips are scored in batches padded to a power of two, at least this many: recordings
# of different lengths then share a few compiled shapes instead of one each.
MIN_BATCH = 8


def best_run(workdir: pathlib.Path) -> pathlib.Path:
  """The run folder whose best validation AUC is highest (ties: the first)."""
  scores = {}
  for run_dir in sorted(workdir.glob("run_*")):
    val = [l["auc"] for l in trainer.read_metrics(run_dir) if l["split"] == "val"]
    if val and (run_dir / "best").is_dir():
      # A validation split with one class only has no AUC (NaN): such a run ranks last.
      scores[run_dir] = max((a for a in val if np.isfinite(a)), default=-np.inf)
  if not scores:
    raise FileNotFoundError(f"{workdir}: no trained downstream run (run_*/best) found; "
                            "train one with python launch.py --config=configs/downstream.py:...")
  return max(scores, key=scores.get)


def load(workdir: str | pathlib.Path) -> Callable[[np.ndarray, int], float]:
  """A function (waveform, sample_rate) -> P(positive) for a downstream workdir."""
  workdir = pathlib.Path(workdir)
  for name in ("config.json", ENCODERS_FILE):
    if not (workdir / name).is_file():
      raise FileNotFoundError(f"{workdir / name}: not found; is {workdir} a downstream "
                              "workdir (python launch.py --config=configs/downstream.py:...)?")
  config = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))
  spec = json.loads((workdir / ENCODERS_FILE).read_text())
  # Workdirs written before the head had its own dropout used model.dropout for it
  # (inference does not apply it either way).
  head_dropout = spec.get("head_dropout", config.model.get("dropout", 0.0))
  model = classifier_lib.Classifier(
      [models.build_encoder(c) for c in spec["encoders"]],
      tuple(spec["frozen"]), dropout=head_dropout)
  params, _ = trainer.restore_params(best_run(workdir) / "best")
  params = jax.device_put(params)
  fparams = features_lib.FeatureParams.from_config(config.features)
  clip_frames, hop = config.features.clip_frames, config.features.eval_hop
  probs = jax.jit(functools.partial(infer.probabilities, model,
                                    chunk_size=config.model.chunk_size))

  def predict(waveform: np.ndarray, sample_rate: int, name: str = "waveform") -> float:
    wave = np.asarray(waveform, np.float32)
    if wave.ndim == 2:
      wave = wave.mean(axis=1)
    if wave.size == 0 or not np.all(np.isfinite(wave)) or not np.any(wave):
      raise audio.AudioError(name, "empty, silent or non-finite audio")
    if sample_rate != fparams.sample_rate:
      wave = soxr.resample(wave, sample_rate, fparams.sample_rate, quality="HQ")
    feats = audio.logfbank(wave, fparams.sample_rate, nfilt=fparams.nfilt,
                           winlen=fparams.winlen, winstep=fparams.winstep,
                           nfft=fparams.nfft or None, preemph=fparams.preemph)
    clips = audio.clips(feats, clip_frames, hop, min_frames=fparams.min_frames, name=name)
    n = len(clips)
    # Each clip is scored on its own, its DS masks keyed by (recording, clip index):
    # the zero padding rows are inert.
    size = max(MIN_BATCH, 1 << (n - 1).bit_length())
    batch = np.zeros((size,) + clips.shape[1:], np.float32)
    batch[:n] = clips
    rec_keys = np.broadcast_to(infer.recording_key(feats, clip_frames), (size, 2))
    p = np.asarray(probs(params, batch, rec_keys, np.arange(size)))
    return float(np.mean(p[:n], dtype=np.float64))

  return predict


def predict_files(workdir, paths) -> list[tuple[str, float | str]]:
  """(path, probability) per file, or (path, error message) for unusable ones."""
  predict = load(workdir)
  config = json.loads((pathlib.Path(workdir) / "config.json").read_text())
  rate = config["features"]["sample_rate"]
  min_duration = config["features"]["min_duration"]
  out = []
  for path in paths:
    try:
      wave = audio.load(path, rate, min_duration=min_duration)
      out.append((str(path), predict(wave, rate, name=str(path))))
    except audio.AudioError as e:
      out.append((str(path), f"error: {e}"))
  return out


_WORKDIR = flags.DEFINE_string("workdir", None, "downstream workdir", required=True)


def main(argv):
  if len(argv) < 2:
    raise app.UsageError("give one or more audio files")
  failed = 0
  for path, result in predict_files(_WORKDIR.value, argv[1:]):
    if isinstance(result, str):
      failed += 1
      print(f"{path}\t{result}", file=sys.stderr)
    else:
      print(f"{path}\t{result:.6f}")
  if failed:
    sys.exit(f"{failed} of {len(argv) - 1} files could not be scored")


if __name__ == "__main__":
  app.run(main)
