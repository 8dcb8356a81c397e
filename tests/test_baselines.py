"""coughjax.baselines: the level-and-dynamics control sees what gain normalisation
leaves of loudness."""

import numpy as np

from coughjax import baselines
from coughjax.data import features as features_lib
from coughjax.data.manifest import Recording
from coughjax.protocol import stats


def _split(rng, n, name):
  """n recordings of 60-200 frames of gain-normalised log-mel noise; positives have
  one frame 4 dB-ish above the rest (a peak), which normalisation keeps."""
  records, feats = [], []
  for i in range(n):
    label = i % 2
    f = rng.normal(size=(int(rng.integers(60, 200)), 16))
    if label:
      f[rng.integers(len(f))] += 4.0
    feats.append(features_lib.normalise(f.astype(np.float32), "gain"))
    records.append(Recording(f"{name}/{i}.wav", f"{name}{i}", "cough", label))
  return baselines.Split(records, feats, clip_frames=96)


def test_level_dynamics_finds_a_peak_that_gain_normalisation_keeps():
  rng = np.random.default_rng(0)
  parts = {k: _split(rng, n, k) for k, n in (("train", 120), ("val", 40), ("test", 80))}
  y = parts["test"].labels
  scores, info = baselines.BASELINES["level_dynamics"](parts, seed=0)
  assert info["num_features"] == len(baselines.ENERGY_PERCENTILES) + 4
  assert stats.auc(y, scores["test"]) > 0.9
  assert stats.auc(parts["val"].labels, scores["val"]) > 0.9
  # The mean level is gone: loudness alone is at chance.
  loud, _ = baselines.BASELINES["loudness_only"](parts, seed=0)
  assert abs(stats.auc(y, loud["test"]) - 0.5) < 0.15


def test_level_dynamics_numbers():
  f = np.array([[0.0, 2.0], [4.0, 6.0], [1.0, 1.0]])   # frame energies 1, 5, 1
  x = baselines.level_dynamics(f, clip_frames=96)
  np.testing.assert_allclose(x, [*np.percentile([1, 5, 1], baselines.ENERGY_PERCENTILES),
                                 5.0, np.std([1, 5, 1]), 3, 1.0])
  assert baselines.level_dynamics(np.ones((96, 2)), clip_frames=96)[-1] == 0.0
