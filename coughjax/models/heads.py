"""Projection head g, pair similarity (eq. 3 cosine, eq. 4 bilinear), ContrastiveModel.

Following COLA (google-research `cola/network.py`): g = Dense -> LayerNorm -> tanh,
and the bilinear similarity `g_i^T W g_j` with a learned, bias-free W drawn from a
normal with stddev 0.05 (Keras' `random_normal`, COLA's initializer). COLA divides
by a temperature only for cosine; coughjax keeps tau for both (`default_temperature`)
so that eq. 5 is one formula.

Parameter tree of `ContrastiveModel` (bilinear):

  encoder/...            the encoder's own parameters
  head/dense             kernel [d, proj_dim], bias [proj_dim]
  head/norm              scale [proj_dim], bias [proj_dim]
  similarity/bilinear    [proj_dim, proj_dim]   (absent for cosine)
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

_DEFAULT_TEMPERATURE = {"bilinear": 1.0, "cosine": 0.2}
SIMILARITIES = tuple(_DEFAULT_TEMPERATURE)
# COLA's Keras `random_normal` initializer for W.
BILINEAR_INIT_STDDEV = 0.05
# Keeps a zero vector's cosine at 0 instead of NaN.
_NORM_EPS = 1e-12


def _check_kind(kind: str) -> str:
  if kind not in _DEFAULT_TEMPERATURE:
    raise ValueError(f"unknown similarity {kind!r}; expected one of {SIMILARITIES}")
  return kind


def default_temperature(kind: str) -> float:
  """The default tau of a similarity: bilinear 1.0 (COLA uses none), cosine 0.2."""
  return _DEFAULT_TEMPERATURE[_check_kind(kind)]


def l2_normalize(x: jax.Array, axis: int = -1) -> jax.Array:
  norm = jnp.linalg.norm(x, axis=axis, keepdims=True)
  return x / jnp.maximum(norm, _NORM_EPS)


class ProjectionHead(nn.Module):
  """g: h [batch, d] -> z [batch, proj_dim] in (-1, 1), Dense -> LayerNorm -> tanh."""

  proj_dim: int = 64
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, h: jax.Array) -> jax.Array:
    z = nn.Dense(self.proj_dim, dtype=self.dtype, name="dense")(h)
    z = nn.LayerNorm(dtype=self.dtype, name="norm")(z)
    return jnp.tanh(z)


class Similarity(nn.Module):
  """Pairwise similarity logits: rows [N, p], cols [M, p] -> [N, M], divided by tau.

  Attributes:
    kind: "bilinear" (rows @ W @ cols.T, W learned [p, p]) or "cosine" (no
      parameters; logits lie in [-1/tau, 1/tau]).
    temperature: tau > 0.

  Computed in float32 whatever the inputs' dtype: the logits feed a softmax over the
  whole global batch, where bf16 rounding would swamp small differences.
  """

  kind: str = "bilinear"
  temperature: float = 1.0

  @nn.compact
  def __call__(self, rows: jax.Array, cols: jax.Array) -> jax.Array:
    _check_kind(self.kind)
    if not self.temperature > 0:
      raise ValueError(f"temperature must be > 0, got {self.temperature!r}")
    rows = rows.astype(jnp.float32)
    cols = cols.astype(jnp.float32)
    if self.kind == "bilinear":
      w = self.param("bilinear", nn.initializers.normal(BILINEAR_INIT_STDDEV),
                     (rows.shape[-1], cols.shape[-1]), jnp.float32)
      logits = rows @ w @ cols.T
    else:
      logits = l2_normalize(rows) @ l2_normalize(cols).T
    return logits / self.temperature


class ContrastiveModel(nn.Module):
  """Encoder f + projection head g + similarity, for contrastive pre-training.

  `__call__` maps clips to projections z; `logits` scores projections against each
  other, so a data-parallel trainer can gather z across devices in between:

    z = model.apply(params, x, train=True, rngs=...)            # [b, p] per device
    z_all = jax.lax.all_gather(z, "batch", tiled=True)          # [B, p]
    logits = model.apply(params, z, z_all, method=ContrastiveModel.logits)

  `__call__` alone would not create the similarity's W, since it does not use it.
  During `init` (and only then) it therefore also scores z against itself, so that
  `model.init(rngs, x, train=False)` returns every parameter; `init_contrastive` wraps
  that.

  Attributes:
    encoder: a registered encoder (`coughjax.models.build_encoder`).
    proj_dim: size p of z.
    similarity: "bilinear" or "cosine".
    temperature: tau of the logits (see `default_temperature`).
    dtype: computation dtype of the projection head; z is returned in float32.
  """

  encoder: nn.Module
  proj_dim: int = 64
  similarity: str = "bilinear"
  temperature: float = 1.0
  dtype: Any = jnp.float32

  def setup(self):
    self.head = ProjectionHead(self.proj_dim, dtype=self.dtype)
    # Named "similarity" in the parameter tree; the attribute name is taken by the
    # field that selects the kind.
    self.scorer = Similarity(self.similarity, self.temperature, name="similarity")

  def __call__(self, x: jax.Array, *, train: bool, mask: Optional[jax.Array] = None,
               clip_ids: Optional[jax.Array] = None) -> jax.Array:
    """x: [batch, time, mel] clips; mask: [batch, time] or None -> z [batch, proj_dim].

    `train`, `mask` and `clip_ids` (the clips' global ids, which key their masks and
    dropout) go to the encoder (see its docstring); z is float32.
    """
    h = self.encoder(x, train=train, mask=mask, clip_ids=clip_ids)  # [B, d]
    z = self.head(h).astype(jnp.float32)  # [B, p]
    if self.is_initializing():
      self.scorer(z, z)  # creates W; see the class docstring
    return z

  def logits(self, rows: jax.Array, cols: jax.Array) -> jax.Array:
    """rows [N, p], cols [M, p] projections -> [N, M] float32 logits (already / tau)."""
    return self.scorer(rows, cols)


def init_contrastive(model: ContrastiveModel, key: jax.Array,
                     input_shape: Sequence[int]) -> dict[str, Any]:
  """All parameters of `model` (encoder, head and similarity) for clips of `input_shape`.

  Args:
    model: the ContrastiveModel.
    key: a `jax.random` key.
    input_shape: [batch, time, mel] of a clip batch; any batch size gives the same
      parameters.

  Returns:
    The 'params' collection, a nested dict of float32 arrays.
  """
  x = jnp.zeros(tuple(input_shape), jnp.float32)

  # Compiled as one program: running init op by op compiles every op on its own,
  # which is several times slower (and nn.RNN's scan would retrace each time).
  @jax.jit
  def init(key, x):
    k_params, k_mask, k_dropout = jax.random.split(key, 3)
    # 'mask' and 'dropout' keys let an encoder that masks at eval time initialise
    # too; with train=False nothing else draws from them.
    rngs = {"params": k_params, "mask": k_mask, "dropout": k_dropout}
    return model.init(rngs, x, train=False)["params"]

  return init(key, x)
