"""VGGish encoder: the AudioSet VGG-like CNN on one 96x64 log-mel patch.

The architecture of Hershey et al. (ICASSP 2017) as released with AudioSet
(`vggish_slim.py`) and ported to PyTorch by tcvrick/audioset-vggish-tensorflow-to-pytorch
and harritaylor/torchvggish, whose weights the paper's "pre-trained" rows use:

  [B, 96, 64, 1] -> conv1 64 -> pool -> conv2 128 -> pool -> conv3_1 256 -> conv3_2 256
  -> pool -> conv4_1 512 -> conv4_2 512 -> pool -> [B, 6, 4, 512] -> flatten (h, w, c)
  -> fc1_1 4096 -> fc1_2 4096 -> fc2 128

Every convolution is 3x3, stride 1, SAME padding; every pool 2x2 with stride 2; every
conv and FC layer is followed by a ReLU, *including* the 128-d embedding layer `fc2`:
the TensorFlow-Slim release that both ports converted gives every layer slim's
ReLU (fc2 included), and both ports keep it, so the embeddings are non-negative.

Module names are the TensorFlow scopes (conv1 ... conv4_2, fc1_1, fc1_2, fc2) so that
`vggish_convert` maps checkpoints onto them one to one. Computation is NHWC with
H = time and W = mel, i.e. the TensorFlow layout; the ports flatten in that same
(h, w, c) order before the FC layers, so the Flax flatten needs no permutation.
"""

import functools
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from coughjax.audio import CLIP_FRAMES, NUM_MELS
from coughjax.models import randomness
from coughjax.models.registry import register

# (name, output channels, max-pool after it) in forward order.
CONV_LAYERS: tuple[tuple[str, int, bool], ...] = (
    ("conv1", 64, True),
    ("conv2", 128, True),
    ("conv3_1", 256, False),
    ("conv3_2", 256, True),
    ("conv4_1", 512, False),
    ("conv4_2", 512, True),
)
# The two hidden FC layers; the embedding layer `fc2` has `embedding_dim` units.
HIDDEN_FC_LAYERS: tuple[tuple[str, int], ...] = (("fc1_1", 4096), ("fc1_2", 4096))
EMBEDDING_LAYER = "fc2"
_NUM_POOLS = sum(pool for _, _, pool in CONV_LAYERS)
# (6, 4, 512): the last feature map (time, mel, channels) that the FC layers flatten.
FEATURE_MAP_SHAPE = (CLIP_FRAMES // 2**_NUM_POOLS, NUM_MELS // 2**_NUM_POOLS,
                     CONV_LAYERS[-1][1])


@register("vggish")
class VGGish(nn.Module):
  """VGGish: [batch, 96 frames, 64 mels] log-mel patches -> [batch, embedding_dim].

  Attributes:
    embedding_dim: width of the embedding layer `fc2`; the AudioSet weights need 128.
    dropout: dropout rate after each 4096-wide FC layer (as in VGG's classifier),
      per clip (`randomness.ClipDropout`, counter-hash bits). 0.0 by default because
      VGGish was trained without it; the field exists so that every coughjax encoder
      takes the same configuration.
    dtype: computation dtype (e.g. jnp.bfloat16); parameters stay float32.
  """

  embedding_dim: int = 128
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool, mask: Optional[jax.Array] = None,
               clip_ids: Optional[jax.Array] = None) -> jax.Array:
    """Embeds log-mel patches.

    Args:
      x: [batch, 96, 64] log-mel patches (time, mel).
      train: enables dropout (only if `dropout > 0`, drawn from the 'dropout' stream).
      mask: ignored. It belongs to the shared encoder signature: the random time-step
        masking removes keys from self-attention, and a CNN has no attention to
        remove them from (the paper masks only its sequence encoders).
      clip_ids: [batch] int, each clip's global id, which keys its dropout (default
        0, 1, ..., batch - 1).

    Returns:
      [batch, embedding_dim] embeddings, non-negative (ReLU'd, as released).
    """
    del mask  # See the docstring: a CNN has no attention to mask.
    if x.ndim != 3 or x.shape[1:] != (CLIP_FRAMES, NUM_MELS):
      raise ValueError(f"VGGish expects [batch, {CLIP_FRAMES}, {NUM_MELS}] log-mel "
                       f"patches, got shape {x.shape}")
    x = x[..., None]  # [B, 96, 64, 1]: NHWC, one input channel.
    for name, channels, pool in CONV_LAYERS:
      x = nn.relu(nn.Conv(channels, (3, 3), padding="SAME", dtype=self.dtype,
                          name=name)(x))
      if pool:
        # window_shape by keyword, as jax2onnx (ONNX export) intercepts max_pool.
        x = nn.max_pool(x, window_shape=(2, 2), strides=(2, 2), padding="SAME")
    # [B, 6, 4, 512] -> [B, 12288] in (h, w, c) order, the order the FC weights expect.
    x = x.reshape(x.shape[0], -1)
    for name, width in HIDDEN_FC_LAYERS:
      x = nn.relu(nn.Dense(width, dtype=self.dtype, name=name)(x))
      x = randomness.ClipDropout(self.dropout)(x, clip_ids, deterministic=not train)
    return nn.relu(nn.Dense(self.embedding_dim, dtype=self.dtype,
                            name=EMBEDDING_LAYER)(x))


def abstract_params(embedding_dim: int = 128) -> dict[str, Any]:
  """The shapes and dtypes of VGGish's `params` collection, without allocating them."""
  # A fresh tree each call (callers may edit it); the trace itself is cached.
  return jax.tree.map(lambda leaf: leaf, _abstract_params(embedding_dim))


@functools.lru_cache(maxsize=4)
def _abstract_params(embedding_dim: int) -> dict[str, Any]:
  # Tracing the initialisers of 72M parameters is not free, and conversions and
  # checkpoint loads ask for these shapes repeatedly.
  model = VGGish(embedding_dim=embedding_dim)
  x = jax.ShapeDtypeStruct((1, CLIP_FRAMES, NUM_MELS), jnp.float32)
  variables = jax.eval_shape(
      lambda x: model.init(jax.random.key(0), x, train=False), x)
  return variables["params"]
