"""Downstream classifier (paper §4.2, Fig. 4): encoder(s) + dropout + FC -> logit.

With one encoder this is the paper's classifier f -> FC(d -> 1) -> sigmoid; with two
it is the ensemble: each branch has its own parameters (both may start from the same
pre-trained checkpoint) and draws its own random key mask (the "DS masking rate",
its encoder's `mask_rate`), the branch features are concatenated and fed to one FC.
Masks and dropout are drawn per clip, keyed by the clips' global ids (`randomness`).

Frozen branches run in inference mode (no dropout) behind `stop_gradient`, so no
gradient reaches them; the optimiser additionally gives them no update at all
(`coughjax.train.optim.make_optimizer(trainable_mask=...)`), which keeps their
parameters bit-identical.
"""

from __future__ import annotations

from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from coughjax.models import randomness


class Classifier(nn.Module):
  """x: [batch, time, mel] clips -> [batch] logits (sigmoid gives P(positive)).

  Attributes:
    encoders: one or two registered encoders (`coughjax.models.build_encoder`);
      their parameters are named encoder_0, encoder_1.
    frozen: per encoder, whether it is a fixed feature extractor.
    dropout: rate on the (concatenated) features before the FC layer (the head's
      own, `config.model.head_dropout`; each encoder has its own dropout field).
  """

  encoders: Sequence[nn.Module]
  frozen: Sequence[bool] = ()
  dropout: float = 0.2

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool,
               masks: Optional[Sequence[Optional[jax.Array]]] = None,
               clip_ids: Optional[jax.Array] = None) -> jax.Array:
    """Classifies clips.

    Args:
      x: [batch, time, mel] clips.
      train: dropout on (frozen branches always run in inference mode).
      masks: per encoder, a [batch, time] bool key mask (True = masked) passed as
        its `mask=`, or None to let it draw its own from the 'mask' stream where it
        masks (training). Inference gives per-clip masks (`coughjax.infer`).
      clip_ids: [batch] int, each clip's global id (its row in the global batch),
        which keys its masks and dropout, in the encoders and the head (default 0,
        1, ..., batch - 1).

    Returns:
      [batch] logits.
    """
    frozen = tuple(self.frozen) or (False,) * len(self.encoders)
    masks = (None,) * len(self.encoders) if masks is None else tuple(masks)
    if len(masks) != len(self.encoders):
      raise ValueError(f"{len(masks)} masks for {len(self.encoders)} encoders")
    feats = []
    for encoder, fixed, mask in zip(self.encoders, frozen, masks):
      # Each encoder is its own submodule, so make_rng("mask") inside it yields a
      # key of its own: the branches' masks differ.
      if fixed:
        h = jax.lax.stop_gradient(encoder(x, train=False, mask=mask, clip_ids=clip_ids))
      else:
        h = encoder(x, train=train, mask=mask, clip_ids=clip_ids)
      feats.append(h.astype(jnp.float32))  # [B, d_i]
    h = jnp.concatenate(feats, axis=-1)  # [B, sum d_i]
    h = randomness.ClipDropout(self.dropout)(h, clip_ids, deterministic=not train)
    return nn.Dense(1, name="fc")(h)[:, 0]  # [B]


def encoder_param_name(i: int) -> str:
  """Flax auto-names the i-th module of the `encoders` field like this."""
  return f"encoders_{i}"
