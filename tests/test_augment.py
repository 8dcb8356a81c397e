"""Training augmentation (coughjax/train/augment.py): what each part does, per clip."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from coughjax.train import augment as augment_lib

KEY = jax.random.key(3)
B, T, M = 64, 96, 64


def _clips(b=B):
  return jnp.asarray(np.random.default_rng(0).normal(size=(b, T, M)), jnp.float32)


def test_off_changes_nothing():
  x = _clips()
  assert augment_lib.Augment()(x, KEY, jnp.arange(B)) is x
  assert not augment_lib.Augment(time_masks=3).active  # no width: nothing to mask


def test_gain_is_one_uniform_offset_per_clip():
  x = _clips()
  out = np.asarray(augment_lib.Augment(gain_db=10.0)(x, KEY, jnp.arange(B)))
  offset = out - np.asarray(x)
  per_clip = offset[:, 0, 0]
  np.testing.assert_allclose(offset, per_clip[:, None, None] * np.ones((1, T, M)), atol=1e-5)
  limit = 10.0 * math.log(10.0) / 10.0  # 10 dB in natural-log energy
  assert np.all(np.abs(per_clip) <= limit + 1e-6)
  assert per_clip.min() < -0.5 * limit and per_clip.max() > 0.5 * limit
  assert len(np.unique(np.round(per_clip, 6))) == B


@pytest.mark.parametrize("axis,kwargs", [(1, dict(time_masks=2, time_mask_width=20)),
                                         (2, dict(freq_masks=2, freq_mask_width=8))])
def test_masks_are_spans_filled_with_the_clip_mean(axis, kwargs):
  x = _clips()
  out = np.asarray(augment_lib.Augment(**kwargs)(x, KEY, jnp.arange(B)))
  changed = out != np.asarray(x)
  width = kwargs.get("time_mask_width") or kwargs.get("freq_mask_width")
  masks = kwargs.get("time_masks") or kwargs.get("freq_masks")
  # Whole rows (frames) or columns (bands): a span along `axis` and all of the other.
  line = changed.any(axis=3 - axis)  # [B, size]
  np.testing.assert_array_equal(changed, np.expand_dims(line, 3 - axis)
                                & np.ones_like(changed))
  assert np.all(line.sum(1) <= masks * width)
  assert line.any(1).mean() > 0.8  # most clips get a span
  fill = np.asarray(x).mean(axis=(1, 2))
  for i in range(B):
    np.testing.assert_allclose(out[i][changed[i]], fill[i], atol=1e-6)


def test_a_clip_is_augmented_by_its_id_alone():
  aug = augment_lib.Augment(gain_db=6.0, time_masks=2, time_mask_width=30, freq_masks=1,
                            freq_mask_width=10)
  x = _clips()
  ids = jnp.arange(B) + 100
  whole = np.asarray(aug(x, KEY, ids))
  order = np.random.default_rng(1).permutation(B)[:16]
  part = np.asarray(aug(x[order], KEY, ids[order]))
  np.testing.assert_array_equal(part, whole[order])
  other = np.asarray(aug(x, KEY, ids + 1))
  assert np.abs(other - whole).max() > 0.1
  assert np.abs(np.asarray(aug(x, jax.random.key(4), ids)) - whole).max() > 0.1


def test_masks_that_could_blank_the_whole_clip_are_an_error():
  with pytest.raises(ValueError, match="on clips of 96 x 64: a mask of 64 bands could blank "
                                       "all 64 bands of a clip"):
    augment_lib.Augment(freq_masks=1, freq_mask_width=64)(_clips(2), KEY, jnp.arange(2))
  # Together: 4 spans of up to 24 frames could cover all 96.
  with pytest.raises(ValueError, match="4 masks of up to 24 frames could blank all 96"):
    augment_lib.Augment(time_masks=4, time_mask_width=24)(_clips(2), KEY, jnp.arange(2))
  assert augment_lib.mask_problem(4, 23, 96, "frames") is None  # 92 frames at most
  assert augment_lib.mask_problem(0, 96, 96, "frames")  # a width that fills the axis
