r"""COVID-positive probability of recordings, from a trained downstream workdir.

  python -m coughjax.predict --workdir=runs/ensemble a.wav b.flac c.webm

prints one line per file: the path and the mean probability over its clips (6
decimals). Python:

  classifier = coughjax.load_classifier("runs/ensemble")
  p = classifier.predict(waveform, sample_rate)        # one recording
  rows = classifier.predict_files(["a.wav", "b.flac"])  # many: (path, p or "error: ...")

(`coughjax.predict.load(workdir)` is `load_classifier(workdir).predict`.) Logs are
quiet unless --verbosity is given (e.g. --verbosity=0 for INFO).

The model is the run (of the workdir's seeds) with the best validation ROC-AUC, at
its best checkpoint. Bad input gets the same errors as training data
(`coughjax.audio.AudioError`, naming the file and the problem).

Inputs are made by `coughjax.inputs` (decode, resample, log-mel, clips, padded
batches; shared with `coughjax.embed`) and clips are scored by
`coughjax.infer.probabilities`, the path the downstream
evaluation uses: where the config masks at inference (DS masking), each clip's masks
are keyed by the recording's features and the clip's index in it, so a file's score
does not depend on its path or on the other files scored with it, and equals the
score that run wrote to run_i/test_predictions.csv for the same recording.
"""

from __future__ import annotations

import functools
import os
import pathlib
import sys
from typing import Any, Callable, Iterable, Optional, Sequence

from absl import app
from absl import flags
import jax
import ml_collections
import numpy as np

from coughjax import checkpoints
from coughjax import cli
from coughjax import files
from coughjax import infer
from coughjax import inputs
from coughjax import models
from coughjax.data import mask_key
from coughjax.models import classifier as classifier_lib

ENCODERS_FILE = "encoders.json"


def best_run(workdir: pathlib.Path) -> pathlib.Path:
  """The run folder whose best validation AUC is highest (ties: the first)."""
  scores = {}
  for run_dir in sorted(workdir.glob("run_*")):
    val = [l["auc"] for l in checkpoints.read_metrics(run_dir) if l["split"] == "val"]
    if val and (run_dir / "best").is_dir():
      # A validation split with one class only has no AUC (NaN): such a run ranks last.
      scores[run_dir] = max((a for a in val if np.isfinite(a)), default=-np.inf)
  if not scores:
    raise FileNotFoundError(f"{workdir}: no trained downstream run (run_*/best) found; "
                            "train one with python launch.py --config=configs/downstream.py:...")
  return max(scores, key=scores.get)


def _read_workdir(workdir: pathlib.Path) -> tuple[ml_collections.ConfigDict, dict]:
  """(config, encoders.json) of a downstream workdir, or a clear error."""
  for name in ("config.json", ENCODERS_FILE):
    if not (workdir / name).is_file():
      raise FileNotFoundError(f"{workdir / name}: not found; is {workdir} a downstream "
                              "workdir (python launch.py --config=configs/downstream.py:...)?")
  config = files.read_json(workdir / "config.json", "the run's config", required=(
      "features", "model"))
  spec = files.read_json(workdir / ENCODERS_FILE, "encoder settings", required=(
      "encoders", "frozen"))
  return ml_collections.ConfigDict(config), spec


def build_model(workdir: str | pathlib.Path) -> tuple[classifier_lib.Classifier, Any,
                                                       ml_collections.ConfigDict, pathlib.Path]:
  """(model, params of the best run's best checkpoint, config, that run's folder)."""
  workdir = pathlib.Path(workdir)
  config, spec = _read_workdir(workdir)
  # Workdirs written before the head had its own dropout used model.dropout for it
  # (inference does not apply it either way).
  head_dropout = spec.get("head_dropout", config.model.get("dropout", 0.0))
  model = classifier_lib.Classifier(
      [models.build_encoder(c) for c in spec["encoders"]],
      tuple(spec["frozen"]), dropout=head_dropout)
  run_dir = best_run(workdir)
  params, _ = checkpoints.restore_params(run_dir / "best")
  return model, params, config, run_dir


class Classifier:
  """A trained downstream classifier: P(positive) of waveforms, files, features.

  Attributes:
    workdir: the downstream workdir; run_dir: its best run, whose best checkpoint
      this is.
    spec: how inputs are made (`inputs.ClipSpec`: feature parameters, clip, hop).
    model, params, config: the Flax classifier, its parameters, the run's config.
  """

  def __init__(self, workdir: str | pathlib.Path):
    self.workdir = pathlib.Path(workdir)
    self.model, params, self.config, self.run_dir = build_model(self.workdir)
    self.params = jax.device_put(params)
    self.spec = inputs.ClipSpec.from_config(self.config.features)
    probs = jax.jit(functools.partial(infer.probabilities, self.model,
                                      chunk_size=self.config.model.get(
                                          "eval_chunk_size", "auto")))
    self._fn = functools.partial(probs, self.params)

  def clip_probabilities(self, clips: inputs.Clips) -> np.ndarray:
    """[n] P(positive) of each row of `clips` (`infer.probabilities`)."""
    return inputs.run(self._fn, clips)

  def predict_features(self, features: Sequence[np.ndarray],
                       names: Optional[Sequence[str]] = None,
                       mask_features: Optional[Sequence[np.ndarray]] = None
                       ) -> np.ndarray:
    """[recordings] float64: the mean P(positive) over each recording's clips, from
    its [T, nfilt] features (as `audio.logfbank` with `spec.features` makes them).

    `mask_features` (one per recording): the features whose digest keys each
    recording's DS masks (`mask_key.recording_key`) instead of `features`' own, so a
    perturbed copy of a recording (e.g. another gain) is scored under the masks of
    the original, and its score moves by what the perturbation does alone.

    Raises:
      FloatingPointError naming the first recording whose output is not finite.
    """
    names = inputs.recording_names(names, len(features))
    clips = inputs.cut(features, self.spec, names)
    if mask_features is not None:
      if len(mask_features) != len(features):
        raise ValueError(f"mask_features has {len(mask_features)} recordings, features "
                         f"{len(features)}")
      keys = np.stack([mask_key.recording_key(f, self.spec.clip_frames)
                       for f in mask_features])
      clips.rec_keys = keys[clips.recording]
    out = inputs.run_named(self._fn, clips, names)
    if out.errors:
      raise FloatingPointError(f"{out.errors[0][0]}: {out.errors[0][1]}")
    return inputs.recording_means(out.outputs, out.recording, len(features))

  def predict(self, waveform: np.ndarray, sample_rate: int, name: str = "waveform"
              ) -> float:
    """P(positive) of one recording: [samples] or [samples, channels] (or [channels,
    samples]) float or integer PCM (`coughjax.audio.from_array`).

    Raises:
      AudioError naming `name`: unusable audio.
      FloatingPointError naming `name`: the model's output is not finite.
    """
    feats = inputs.waveform_features(waveform, sample_rate, self.spec.features, name)
    return float(self.predict_features([feats], [name])[0])

  __call__ = predict

  def predict_files(self, paths: Iterable[str | os.PathLike], *, progress: bool = False
                    ) -> list[tuple[str, float | str]]:
    """(path, probability) per file, in order, or (path, "error: ...") for a file
    that cannot be scored (one str or path is one file); the clips of many files
    share batches."""
    paths = inputs.as_paths(paths)  # read twice below: an iterator would be spent
    out = inputs.run_files(self._fn, paths, self.spec, progress=progress, desc="scoring")
    probs = inputs.recording_means(out.outputs, out.recording, len(out.paths))
    results = dict(zip(out.paths, (float(p) for p in probs)))
    results.update((path, f"error: {message}") for path, message in out.errors)
    return [(p, results[p]) for p in paths]


def load_classifier(workdir: str | pathlib.Path) -> Classifier:
  """The best run of a downstream workdir, at its best checkpoint (`Classifier`)."""
  return Classifier(workdir)


def load(workdir: str | pathlib.Path) -> Callable[..., float]:
  """A function (waveform, sample_rate[, name]) -> P(positive) for a downstream workdir."""
  return Classifier(workdir).predict


def predict_files(workdir, paths) -> list[tuple[str, float | str]]:
  """(path, probability) per file, or (path, error message) for unusable ones."""
  return Classifier(workdir).predict_files(paths)


def define_flags() -> None:
  """The command's flags; defined only when run as a command, so that importing the
  library (`coughjax.load_classifier`) adds no flags to a caller's program."""
  flags.DEFINE_string("workdir", None, "downstream workdir", required=True)


@cli.user_errors
def main(argv):
  cli.quiet_logging()
  if len(argv) < 2:
    raise app.UsageError("give one or more audio files")
  failed = 0
  for path, result in predict_files(flags.FLAGS.workdir, argv[1:]):
    if isinstance(result, str):
      failed += 1
      print(f"{path}\t{result}", file=sys.stderr)
    else:
      print(f"{path}\t{result:.6f}")
  if failed:
    sys.exit(f"{failed} of {len(argv) - 1} files could not be scored")


if __name__ == "__main__":
  define_flags()
  app.run(main)
