"""Training-time augmentation of log-mel clips, drawn per clip (`config.augment`).

Applied to the training batch of the downstream step only (never to validation,
test or inference clips), in this order:

  gain: a random level change, uniform in [-gain_db, +gain_db] dB per clip. In the
      log-mel domain (natural log of filterbank energies) a gain of g dB adds
      g * ln(10) / 10 to every frame and band. It makes a clip's loudness useless to
      the classifier, the confound that alone scores ~0.75 AUC in the covid19_cough
      call centre, without removing it from the features as `features.normalise`
      does.
  time masks / freq masks (SpecAugment, Park et al. 2019): `time_masks` spans of
      0..`time_mask_width` frames and `freq_masks` spans of 0..`freq_mask_width`
      bands, each at a uniform position, set to the clip's mean log energy (the
      log-mel domain has no neutral 0).

Every draw is a function of (step key, clip's global id) through the counter hash of
`coughjax.models.randomness`, so a clip is augmented the same way whatever the
devices or chunks, like its masks and dropout. All fields 0 (the default) leave the
batch untouched and draw nothing.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from coughjax.models import randomness

# Folded into the step key for the augmentation stream, so that the encoder's mask
# and dropout streams (split from the step key) are the same with and without it.
_STREAM = 0x61756730  # "aug0"


def mask_problem(masks: int, width: int, size: int, unit: str) -> str | None:
  """Why `masks` spans of up to `width` along an axis of `size` (frames or bands)
  are refused, or None.

  Spans that together could cover the whole axis could blank a whole clip (every
  value set to its mean): a training example with a label and no sound. So
  max(masks, 1) * width must stay below `size` (a single span too: a width that
  fills the axis is a mistake even while `masks` is 0).
  """
  cover = max(masks, 1) * width
  if cover < size:
    return None
  spans = f"{masks} masks of up to {width} {unit}" if masks > 1 else f"a mask of {width} {unit}"
  return (f"{spans} could blank all {size} {unit} of a clip; the masks must cover fewer "
          f"than {size} {unit} together (count x width < {size})")


@dataclasses.dataclass(frozen=True)
class Augment:
  """`config.augment`; see the module docstring."""

  gain_db: float = 0.0
  time_masks: int = 0
  time_mask_width: int = 0
  freq_masks: int = 0
  freq_mask_width: int = 0

  @classmethod
  def from_config(cls, config) -> "Augment":
    """From a config's `augment` (configs without one augment nothing)."""
    section = config.get("augment")
    return cls(**section) if section else cls()

  @property
  def active(self) -> bool:
    return bool(self.gain_db or (self.time_masks and self.time_mask_width)
                or (self.freq_masks and self.freq_mask_width))

  def __call__(self, x: jax.Array, key: jax.Array, clip_ids: jax.Array) -> jax.Array:
    """Augments x [batch, time, mel] (log-mel clips); clip_ids: [batch] global ids."""
    if not self.active:
      return x
    b, t, m = x.shape
    problems = [p for p in (mask_problem(self.time_masks, self.time_mask_width, t, "frames"),
                            mask_problem(self.freq_masks, self.freq_mask_width, m, "bands"))
                if p]
    if problems:
      raise ValueError(f"augment on clips of {t} x {m}: {'; '.join(problems)}")
    spans = ((self.time_masks, self.time_mask_width, t, 1),
             (self.freq_masks, self.freq_mask_width, m, 2))
    draws = 1 + 2 * (self.time_masks + self.freq_masks)
    bits = randomness.clip_bits(jax.random.fold_in(key, _STREAM), clip_ids, (b, draws))
    # [b, draws] uniform in [0, 1): 24 bits, which float32 holds exactly.
    u = (bits >> 8).astype(jnp.float32) * jnp.float32(2.0**-24)
    gain = (2.0 * u[:, 0] - 1.0) * (self.gain_db * math.log(10.0) / 10.0)
    x = x + gain[:, None, None].astype(x.dtype)
    masked = jnp.zeros((b, t, m), bool)
    col = 1
    for count, width, size, axis in spans:  # a span of width 0 masks nothing
      pos = jnp.arange(size)
      for _ in range(count):
        w = jnp.floor(u[:, col] * (width + 1)).astype(jnp.int32)  # 0..width
        start = jnp.floor(u[:, col + 1] * (size - w + 1).astype(jnp.float32)
                          ).astype(jnp.int32)
        col += 2
        span = (pos[None] >= start[:, None]) & (pos[None] < (start + w)[:, None])  # [b, size]
        masked |= jnp.expand_dims(span, 3 - axis)
    fill = jnp.mean(x, axis=(1, 2), keepdims=True)
    return jnp.where(masked, fill, x)
