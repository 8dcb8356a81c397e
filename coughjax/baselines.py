"""Non-deep baselines and confound controls, on the downstream trainer's splits.

* `logmel_statistics`: a recording's log-mel features [frames, mel] summarised per
  band as (mean, std, mean |Δ|) over time — 3 x 64 = 192 numbers — the "log-mel
  statistics" representation, reusable wherever a hand-made feature vector is needed
  (e.g. as the input of a linear probe).
* `logistic_regression_scores`: scikit-learn logistic regression on standardised
  statistics, its inverse regularisation C chosen on the validation split by ROC-AUC.
* `channel_only_scores`: the recording's source (stratum) alone as its score,
  P(positive | source) from the training split — how much of a pooled score the
  recording channel explains.

`BASELINES` maps each baseline's name to a function of the splits
(`load_split_features`: the same recordings and split as the downstream trainer's
for the same config) returning validation and test scores; besides the log-mel
statistics, the confound controls: loudness only, duration only, level and dynamics
(frame-energy percentiles, peak, spread, duration, a short flag), the per-band means
and the channel.
`coughjax.protocol` scores them fold by fold like the deep rows.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np
from sklearn import linear_model
from sklearn import metrics as skm
from sklearn import pipeline as sk_pipeline
from sklearn import preprocessing

from coughjax import audio
from coughjax import data
from coughjax.data import features as features_lib
from coughjax.data import manifest as manifest_lib
from coughjax.data import splits as splits_lib
from coughjax.data.manifest import Recording

STATISTICS = ("mean", "std", "mean_abs_delta")
# Inverse L2 strengths tried on the validation split (scikit-learn's default is 1).
C_GRID = (0.001, 0.01, 0.1, 1.0, 10.0)
# What a baseline returns: ({part: scores [n_part]} for each of SCORED, info for
# unit.json). The validation part's scores choose thresholds (never the test's).
SCORED = ("val", "test")


def logmel_statistics(feats: np.ndarray) -> np.ndarray:
  """Per-band statistics of one recording's log-mel features.

  Args:
    feats: [frames, mel] log-mel filterbank energies (frames >= 2).

  Returns:
    [3 * mel] float64: the mean over time of each band, its standard deviation
    (ddof 0), and the mean absolute frame-to-frame difference, in that order.
  """
  feats = np.asarray(feats, dtype=np.float64)
  if feats.ndim != 2 or feats.shape[0] < 2:
    raise ValueError(f"log-mel statistics need [frames >= 2, mel] features, got shape "
                     f"{feats.shape}")
  delta = np.abs(np.diff(feats, axis=0))  # [frames - 1, mel]
  return np.concatenate([feats.mean(axis=0), feats.std(axis=0), delta.mean(axis=0)])


def statistics_matrix(feature_list: Sequence[np.ndarray]) -> np.ndarray:
  """[recordings, 3 * mel] statistics of many recordings."""
  if not feature_list:
    raise ValueError("no recordings to summarise")
  return np.stack([logmel_statistics(f) for f in feature_list])


def logistic_model(c: float, seed: int = 0, max_iter: int = 5000):
  """An unfitted standardised logistic regression (scikit-learn pipeline)."""
  return sk_pipeline.make_pipeline(
      preprocessing.StandardScaler(),
      linear_model.LogisticRegression(C=c, max_iter=max_iter, random_state=seed))


def logistic_regression_scores(train_x: np.ndarray, train_y: np.ndarray,
                               val_x: np.ndarray, val_y: np.ndarray,
                               test_x: np.ndarray, seed: int = 0,
                               c_grid: Sequence[float] = C_GRID
                               ) -> tuple[np.ndarray, np.ndarray, float]:
  """P(positive) of the validation and test rows from standardised logistic
  regression.

  The model is fitted on the training rows only, with the C of `c_grid` whose
  validation ROC-AUC is highest (the smallest C among ties; if the validation split
  has a single class, C = 1) — the validation split plays the part it plays for the
  deep models (checkpoint choice), and never trains.

  Returns:
    (validation scores [n_val], test scores [n_test], chosen C).
  """
  train_y = np.asarray(train_y).astype(int)
  if len(np.unique(train_y)) != 2:
    raise ValueError(f"logistic regression needs both labels in the training split, "
                     f"got {np.bincount(train_y, minlength=2)} (negative, positive)")
  chosen = 1.0
  if len(np.unique(val_y)) == 2:
    aucs = [skm.roc_auc_score(val_y, logistic_model(c, seed).fit(train_x, train_y)
                              .predict_proba(val_x)[:, 1]) for c in c_grid]
    chosen = float(c_grid[int(np.argmax(aucs))])
  model = logistic_model(chosen, seed).fit(train_x, train_y)
  return model.predict_proba(val_x)[:, 1], model.predict_proba(test_x)[:, 1], chosen


def source_rates(train_sources: Sequence[str], train_y: np.ndarray) -> dict[str, float]:
  """{source: P(positive | source)} in the training split, sources sorted."""
  train_y = np.asarray(train_y, dtype=np.float64)
  return {s: float(train_y[np.asarray(train_sources) == s].mean())
          for s in sorted(set(train_sources))}


def channel_only_scores(train_sources: Sequence[str], train_y: np.ndarray,
                        test_sources: Sequence[str]) -> np.ndarray:
  """P(positive | source) estimated on the training split, as each test score."""
  rate = source_rates(train_sources, train_y)
  unseen = sorted(set(test_sources) - set(rate))
  if unseen:
    raise ValueError(f"channel-only score: source(s) {unseen} have no training "
                     f"recordings")
  return np.array([rate[s] for s in test_sources])


@dataclasses.dataclass(frozen=True)
class Split:
  """One split's usable recordings and their unpadded [frames, mel] features.

  clip_frames: the clip length of the deep rows on the same config (a recording
  shorter than it is padded for them: `level_dynamics` flags it).
  """
  records: list[Recording]
  features: list[np.ndarray]
  clip_frames: int = audio.CLIP_FRAMES

  @property
  def labels(self) -> np.ndarray:
    return np.array([r.label for r in self.records], dtype=int)

  @property
  def sources(self) -> list[str]:
    return [r.stratum for r in self.records]


def load_split_features(config) -> dict[str, Split]:
  """The train/val/test recordings `coughjax.data.load_splits(labelled=True)` gives
  for `config` (same manifest, labelled filter and split: `data.split_seed`, or a
  fold of `data.folds`), with their features as cached — unpadded, unlike a
  ClipStore, so short recordings' statistics are not diluted by zero frames."""
  records = manifest_lib.select(data.get_manifest(config.data), labelled=True)
  if not records:
    raise ValueError(f"{config.data.name}: no labelled recordings "
                     f"(data.label={config.data.label!r})")
  parts = splits_lib.from_config(records, config.data, require_all=True)
  cache = features_lib.FeatureCache(features_lib.FeatureParams.from_config(config.features))
  out = {}
  for name in splits_lib.SPLITS:
    kept, feats, _ = cache.load(parts[name], name=f"{config.data.name}/{name}",
                                workers=config.data.workers, progress=False)
    if not kept:
      raise ValueError(f"{config.data.name}: split {name!r} has no usable recordings")
    out[name] = Split(kept, feats, config.features.clip_frames)
  return out


def _fit(x: dict[str, np.ndarray], parts: dict[str, Split], seed: int,
         c_grid: Sequence[float] = C_GRID) -> tuple[dict[str, np.ndarray], dict]:
  val, test, c = logistic_regression_scores(x["train"], parts["train"].labels, x["val"],
                                            parts["val"].labels, x["test"], seed, c_grid)
  return {"val": val, "test": test}, {"C": c, "num_features": int(x["train"].shape[1])}


def _summary_baseline(summary: Callable[[np.ndarray], np.ndarray],
                      c_grid: Sequence[float] = C_GRID):
  """A baseline: logistic regression on `summary(features)` of each recording."""

  def baseline(parts: dict[str, Split], seed: int) -> tuple[dict[str, np.ndarray], dict]:
    x = {k: np.stack([np.atleast_1d(summary(f)) for f in p.features]).astype(np.float64)
         for k, p in parts.items()}
    return _fit(x, parts, seed, c_grid)

  return baseline


def loudness(feats: np.ndarray) -> float:
  """A recording's mean log-mel energy over all frames and bands (its loudness)."""
  return float(np.mean(feats, dtype=np.float64))


def duration(feats: np.ndarray) -> float:
  """A recording's length in frames (one per `features.winstep`, 10 ms)."""
  return float(len(feats))


ENERGY_PERCENTILES = (10, 25, 50, 75, 90)


def level_dynamics(feats: np.ndarray, clip_frames: int = audio.CLIP_FRAMES) -> np.ndarray:
  """Spectrum-free numbers of one recording: how loud it is and how that moves.

  The frame energy is each frame's mean log-mel over bands. Gain normalisation
  removes its mean, not its shape: the peak, the spread and the percentiles relative
  to one another survive, and so does the duration.

  Args:
    feats: [frames, mel] log-mel features.
    clip_frames: a recording shorter than this is flagged short (it is padded to one
      clip for the deep rows).

  Returns:
    [len(ENERGY_PERCENTILES) + 4] float64: the frame-energy percentiles, its peak
    (max), its standard deviation, the duration in frames and the short flag (0/1).
  """
  feats = np.asarray(feats, dtype=np.float64)
  if feats.ndim != 2 or not len(feats):
    raise ValueError(f"level and dynamics need [frames >= 1, mel] features, got shape "
                     f"{feats.shape}")
  energy = feats.mean(axis=1)  # [frames]
  return np.concatenate([np.percentile(energy, ENERGY_PERCENTILES),
                         [energy.max(), energy.std(), len(feats),
                          float(len(feats) < clip_frames)]])


def level_dynamics_scores(parts: dict[str, Split], seed: int
                          ) -> tuple[dict[str, np.ndarray], dict]:
  """Logistic regression (C chosen on validation) on `level_dynamics`."""
  x = {k: np.stack([level_dynamics(f, p.clip_frames) for f in p.features])
       for k, p in parts.items()}
  return _fit(x, parts, seed)


def channel_only(parts: dict[str, Split], seed: int
                 ) -> tuple[dict[str, np.ndarray], dict]:
  """Validation and test scores P(positive | source) from the training split."""
  del seed  # deterministic
  train = parts["train"]
  scores = {k: channel_only_scores(train.sources, train.labels, parts[k].sources)
            for k in SCORED}
  return scores, {"p_positive_by_source": source_rates(train.sources, train.labels)}


# A single feature needs no regularisation to choose: C = 1.
_ONE = (1.0,)
BASELINES: dict[str, Callable[[dict[str, Split], int],
                              tuple[dict[str, np.ndarray], dict]]] = {
    "logmel_logreg": _summary_baseline(logmel_statistics),
    "band_means": _summary_baseline(lambda f: f.mean(axis=0, dtype=np.float64)),
    "loudness_only": _summary_baseline(loudness, _ONE),
    "duration_only": _summary_baseline(duration, _ONE),
    "level_dynamics": level_dynamics_scores,
    "channel_only": channel_only,
}
DESCRIPTIONS = {
    "logmel_logreg": "logistic regression (scikit-learn, standardised, C chosen on "
                     "validation AUC) on per-recording log-mel statistics: mean, std and "
                     "mean |Δ| of each of the 64 bands (192 features)",
    "band_means": "the same logistic regression on the 64 per-band means alone (the "
                  "recording's average spectrum: level and channel colouring)",
    "loudness_only": "the recording's mean log-mel energy alone (one number: loudness), "
                     "through a one-feature logistic regression fitted on training",
    "duration_only": "the recording's duration alone (frames of 10 ms), through a "
                     "one-feature logistic regression fitted on training",
    "level_dynamics": "the same logistic regression on 9 spectrum-free numbers: "
                      "percentiles (10/25/50/75/90) and peak of the frame energy (mean "
                      "log-mel of a frame), its standard deviation, the duration and a "
                      "flag for recordings shorter than a clip; they survive gain "
                      "normalisation, unlike the mean level",
    "channel_only": "the recording's source alone: P(positive | source) in the training "
                    "split as the score",
}
