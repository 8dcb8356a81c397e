"""PyTorch twins of the coughjax models, for the benchmarks and the equivalence tests.

The paper's code is PyTorch and was not published; these twins are what it would
most plausibly be, built from stock PyTorch modules with coughjax's architecture and
parameter count (`num_params(twin) == num_params(flax params)`, checked by the
tests), and `load_flax_params` copies a coughjax parameter tree into them:

  TransformerTwin   nn.Linear embed + sinusoidal positions + nn.TransformerEncoderLayer
                    (post-LN, ReLU, eps 1e-5, batch_first) x num_layers, mean pooling
  GRUTwin           nn.GRU (batch_first), whose parameter layout coughjax's GRU keeps
  VGGishTwin        the AudioSet VGGish as ported to PyTorch (key names of
                    coughjax.models.vggish_convert)
  ClassifierTwin    encoder(s) -> concat -> dropout -> nn.Linear(sum d, 1)
  ContrastiveTwin   encoder -> Linear/LayerNorm/tanh head -> bilinear W, with
                    `contrastive_loss` (eq. 5) for the pre-training step

Random key masking (paper §4.1.2) is drawn two ways, both masking exactly
round(rate * T) steps per clip as coughjax does:

  "loop"        the paper's generator (§5.6): start from an all-ones keep matrix (all
                zeros at rate 1.0) and set the chosen steps to 0 in a Python for-loop,
                clip by clip, so its cost grows with the rate (Table 6);
  "vectorised"  one torch draw for the whole batch (argsort of uniform noise).

Either way a masked step is removed as an attention key for every query except its
own position (coughjax.models.masking). With "loop", a twin built with a rate draws
and applies the matrix even at rate 0 (the paper's all-ones default); "vectorised"
knows statically that rate 0 masks nothing and skips the mask, as coughjax does.

Threads: `set_threads()` gives torch every core (os.cpu_count()), as XLA:CPU uses.

This module imports no jax (only VGGishTwin reads coughjax's VGGish layout, lazily),
so that a torch process's memory is torch's own.
"""

from __future__ import annotations

import math
import os
import random
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import nn

MASK_IMPLS = ("loop", "vectorised")
# PyTorch's LayerNorm default, which coughjax's Transformer also uses.
ENCODER_NORM_EPS = 1e-5
# The projection head's LayerNorm is flax's default (coughjax.models.heads).
HEAD_NORM_EPS = 1e-6


def set_threads(num_threads: Optional[int] = None) -> int:
  """Gives torch `num_threads` intra-op threads (default: every core, like XLA:CPU)."""
  num_threads = num_threads or os.cpu_count()
  torch.set_num_threads(num_threads)
  return num_threads


def num_params(tree_or_module: Any) -> int:
  """Number of parameters of a torch module or of a (nested dict) Flax params tree."""
  if isinstance(tree_or_module, nn.Module):
    return sum(p.numel() for p in tree_or_module.parameters())
  if isinstance(tree_or_module, Mapping):
    return sum(num_params(v) for v in tree_or_module.values())
  # Arrays, and jax.ShapeDtypeStruct leaves of an eval_shape-d tree.
  return math.prod(getattr(tree_or_module, "shape", np.shape(tree_or_module)))


# ---------------------------------------------------------------------------- masks


def num_masked(length: int, rate: float) -> int:
  """round(rate * length) masked steps per clip, coughjax's rule (Python's round).

  Kept here rather than imported from coughjax.models.masking, which imports jax;
  the tests check that both agree.
  """
  if not 0.0 <= float(rate) <= 1.0:  # also rejects NaN
    raise ValueError(f"mask rate must be in [0, 1], got {rate!r}")
  return round(float(rate) * length)


def loop_mask(batch: int, length: int, rate: float, rng: random.Random) -> torch.Tensor:
  """The paper's masking generator: [batch, length] bool, True = masked step.

  As §5.6 describes it: the keep matrix starts all ones (all zeros for rate 1.0,
  where there is nothing left to choose), and for a given rate the chosen entries
  are set from 1 to 0 one at a time in a Python loop, so the time grows with the
  number of masked steps.

  Args:
    batch: clips.
    length: time steps per clip.
    rate: masking rate in [0, 1]; exactly round(rate * length) steps per clip.
    rng: Python random generator choosing the steps.
  """
  count = num_masked(length, rate)
  if count == length:
    keep = np.zeros((batch, length), np.float32)
  else:
    keep = np.ones((batch, length), np.float32)
    if count:
      steps = range(length)
      for b in range(batch):
        for t in rng.sample(steps, count):
          keep[b, t] = 0.0
  return torch.from_numpy(keep == 0.0)


def vectorised_mask(batch: int, length: int, rate: float,
                    generator: Optional[torch.Generator] = None) -> Optional[torch.Tensor]:
  """One draw for the whole batch: [batch, length] bool (True = masked), or None.

  The masked steps of a clip are the `round(rate * length)` lowest of `length`
  uniform draws, so every subset of that size is equally likely. None when the rate
  masks nothing (known from the rate alone, so no work and no mask to apply).
  """
  count = num_masked(length, rate)
  if count == 0:
    return None
  order = torch.rand(batch, length, generator=generator).argsort(dim=1)
  masked = torch.zeros(batch, length, dtype=torch.bool)
  return masked.scatter_(1, order[:, :count], True)


def make_mask(impl: str, batch: int, length: int, rate: float,
              rng: random.Random, generator: torch.Generator) -> Optional[torch.Tensor]:
  if impl == "loop":
    return loop_mask(batch, length, rate, rng)
  if impl == "vectorised":
    return vectorised_mask(batch, length, rate, generator)
  raise ValueError(f"unknown mask impl {impl!r}; expected one of {MASK_IMPLS}")


def blocked_keys(masked: torch.Tensor, num_heads: int) -> torch.Tensor:
  """[B, T] masked steps -> [B * heads, T, T] bool attention mask, True = blocked.

  PyTorch's convention for nn.MultiheadAttention (the opposite of
  F.scaled_dot_product_attention's): query q may not attend to key k when k is
  masked and k != q. Heads are the fastest axis of the first dimension, as
  nn.MultiheadAttention reshapes it.
  """
  time = masked.shape[-1]
  itself = torch.eye(time, dtype=torch.bool)
  blocked = masked[:, None, :] & ~itself  # [B, T(query), T(key)]
  return blocked.repeat_interleave(num_heads, dim=0)


# ------------------------------------------------------------------------- encoders


def sinusoidal_positions(length: int, dim: int) -> torch.Tensor:
  """[length, dim] Vaswani et al. positions: sin on even channels, cos on odd."""
  pos = torch.arange(length, dtype=torch.float64)[:, None]
  rates = torch.exp(-math.log(10_000.0) * torch.arange(0, dim, 2, dtype=torch.float64) / dim)
  table = torch.zeros(length, dim, dtype=torch.float64)
  table[:, 0::2] = torch.sin(pos * rates)
  table[:, 1::2] = torch.cos(pos * rates[:dim // 2])
  return table.float()


def _dense(tree: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """A flax Dense {kernel [in, out], bias [out]} as torch Linear {weight, bias}."""
  out = {"weight": np.asarray(tree["kernel"]).T}
  if "bias" in tree:
    out["bias"] = np.asarray(tree["bias"])
  return out


def _norm(tree: Mapping[str, Any]) -> dict[str, np.ndarray]:
  return {"weight": np.asarray(tree["scale"]), "bias": np.asarray(tree["bias"])}


def _prefixed(prefix: str, tree: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  return {f"{prefix}.{k}": v for k, v in tree.items()}


class TransformerTwin(nn.Module):
  """coughjax's Transformer: [B, T, mel] -> h [B, d], from stock torch modules.

  Flax -> torch (every Dense kernel is the transpose of the torch weight):

    embed                    -> embed                       (nn.Linear)
    layer_i/attention/qkv    -> layers.i.self_attn.in_proj_{weight,bias}
    layer_i/attention/out    -> layers.i.self_attn.out_proj
    layer_i/attention_norm   -> layers.i.norm1
    layer_i/mlp_in, mlp_out  -> layers.i.linear1, linear2
    layer_i/mlp_norm         -> layers.i.norm2

  Dropout acts where coughjax's does (attention output, MLP): torch's extra dropout
  on the attention weights is set to 0, so a training step does the same work.
  In eval mode without gradients, nn.TransformerEncoderLayer takes PyTorch's fused
  inference kernel (`torch._transformer_encoder_layer_fwd`), masks included.

  Args:
    mel, time: input frame size and clip length.
    d_model, num_layers, num_heads, mlp_dim, dropout: as coughjax's fields.
    mask_rate: None = never mask; else draw a mask at this rate in training, and in
      eval mode too if `mask_at_eval` (the ensemble's DS masking).
    mask_impl: "loop" (the paper's) or "vectorised" (see the module docstring).
    seed: of the mask generators.
  """

  def __init__(self, mel: int = 64, time: int = 96, d_model: int = 64,
               num_layers: int = 2, num_heads: int = 4, mlp_dim: int = 256,
               dropout: float = 0.2, mask_rate: Optional[float] = None,
               mask_at_eval: bool = False, mask_impl: str = "vectorised", seed: int = 0):
    super().__init__()
    if mask_impl not in MASK_IMPLS:
      raise ValueError(f"unknown mask impl {mask_impl!r}; expected one of {MASK_IMPLS}")
    self.num_heads = num_heads
    self.mask_rate = None if mask_rate is None else float(mask_rate)
    if mask_rate is not None:
      num_masked(time, mask_rate)  # validates the rate
    self.mask_at_eval = mask_at_eval
    self.mask_impl = mask_impl
    self.py_rng = random.Random(seed)
    self.generator = torch.Generator().manual_seed(seed)
    self.embed = nn.Linear(mel, d_model)
    self.register_buffer("positions", sinusoidal_positions(time, d_model), persistent=False)
    self.layers = nn.ModuleList(
        nn.TransformerEncoderLayer(d_model, num_heads, mlp_dim, dropout, activation="relu",
                                   layer_norm_eps=ENCODER_NORM_EPS, batch_first=True,
                                   norm_first=False)
        for _ in range(num_layers))
    for layer in self.layers:
      layer.self_attn.dropout = 0.0  # coughjax drops the attention output, not weights

  def draw_mask(self, batch: int, time: int) -> Optional[torch.Tensor]:
    """The mask forward() would draw now: [batch, time] bool or None."""
    if self.mask_rate is None or not (self.training or self.mask_at_eval):
      return None
    return make_mask(self.mask_impl, batch, time, self.mask_rate, self.py_rng,
                     self.generator)

  def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """x [B, T, mel]; mask [B, T] bool (True = masked) to use instead of drawing one."""
    if mask is None:
      mask = self.draw_mask(x.shape[0], x.shape[1])
    blocked = None if mask is None else blocked_keys(mask, self.num_heads)
    h = self.embed(x) + self.positions[:x.shape[1]]  # [B, T, d]
    for layer in self.layers:
      h = layer(h, src_mask=blocked)
    return h.mean(dim=1)  # [B, d]

  def flax_to_torch(self, params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """coughjax Transformer params -> this module's state dict (numpy)."""
    out = _prefixed("embed", _dense(params["embed"]))
    for i in range(len(self.layers)):
      p, t = params[f"layer_{i}"], f"layers.{i}"
      qkv = _dense(p["attention"]["qkv"])
      out[f"{t}.self_attn.in_proj_weight"] = qkv["weight"]
      out[f"{t}.self_attn.in_proj_bias"] = qkv["bias"]
      out.update(_prefixed(f"{t}.self_attn.out_proj", _dense(p["attention"]["out"])))
      out.update(_prefixed(f"{t}.norm1", _norm(p["attention_norm"])))
      out.update(_prefixed(f"{t}.linear1", _dense(p["mlp_in"])))
      out.update(_prefixed(f"{t}.linear2", _dense(p["mlp_out"])))
      out.update(_prefixed(f"{t}.norm2", _norm(p["mlp_norm"])))
    return out


class GRUTwin(nn.Module):
  """coughjax's GRU: [B, T, mel] -> last hidden state [B, d], as a stock `nn.GRU`.

  coughjax keeps torch's own layout (two biases per gate, r | z | n order), so the
  twin is `nn.GRU(batch_first=True)` itself: weight_ih_l{i} = kernel_ih.T,
  weight_hh_l{i} = kernel_hh.T, bias_ih_l{i} = bias_ih, bias_hh_l{i} = bias_hh.
  """

  def __init__(self, mel: int = 64, d_model: int = 64, num_layers: int = 2,
               dropout: float = 0.2):
    super().__init__()
    self.d_model = d_model
    self.num_layers = num_layers
    self.gru = nn.GRU(mel, d_model, num_layers, batch_first=True, dropout=dropout)

  def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    del mask  # a GRU has no attention to mask (as in coughjax)
    _, h_n = self.gru(x)
    return h_n[-1]  # [B, d]

  def flax_to_torch(self, params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    out = {}
    for i in range(self.num_layers):
      p = params[f"layer_{i}"]
      out[f"gru.weight_ih_l{i}"] = np.asarray(p["kernel_ih"]).T
      out[f"gru.weight_hh_l{i}"] = np.asarray(p["kernel_hh"]).T
      out[f"gru.bias_ih_l{i}"] = np.asarray(p["bias_ih"])
      out[f"gru.bias_hh_l{i}"] = np.asarray(p["bias_hh"])
    return out


class VGGishTwin(nn.Module):
  """The PyTorch VGGish port (tcvrick layout): [B, 96, 64] -> [B, 128] embeddings.

  `features.*` / `fc.*` are the key names `coughjax.models.vggish_convert` reads, so
  its converter and `flax_to_torch` are inverses. The last feature map is permuted
  NCHW -> NHWC before flattening, as both public ports do.
  """

  def __init__(self, embedding_dim: int = 128, dropout: float = 0.0):
    super().__init__()
    from coughjax.models import vggish as vggish_lib  # pylint: disable=g-import-not-at-top
    layers, channels = [], 1
    for _, out, pool in vggish_lib.CONV_LAYERS:
      layers += [nn.Conv2d(channels, out, 3, stride=1, padding=1), nn.ReLU()]
      layers += [nn.MaxPool2d(2, stride=2)] if pool else []
      channels = out
    self.features = nn.Sequential(*layers)
    self.dropout = dropout
    fc, width = [], math.prod(vggish_lib.FEATURE_MAP_SHAPE)
    for _, units in vggish_lib.HIDDEN_FC_LAYERS + ((vggish_lib.EMBEDDING_LAYER, embedding_dim),):
      fc += [nn.Linear(width, units), nn.ReLU()]
      width = units
    self.fc = nn.Sequential(*fc)

  def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    del mask  # a CNN has no attention to mask (as in coughjax)
    x = self.features(x[:, None])  # [B, 1, 96, 64] -> [B, 512, 6, 4]
    x = x.permute(0, 2, 3, 1)  # (h, w, c) flatten order, as the ports
    x = x.reshape(x.shape[0], -1)
    for i, layer in enumerate(self.fc):
      x = layer(x)
      if isinstance(layer, nn.ReLU) and i < len(self.fc) - 1:
        # coughjax's dropout after each 4096-wide layer, functional so that the
        # Sequential keeps the ports' indices.
        x = nn.functional.dropout(x, self.dropout, self.training)
    return x

  def flax_to_torch(self, params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    from coughjax.models import vggish_convert  # pylint: disable=g-import-not-at-top
    out = {}
    for key, (name, leaf) in vggish_convert.torch_key_map("fc").items():
      value = np.asarray(params[name][leaf])
      if value.ndim == 4:  # HWIO -> OIHW
        value = value.transpose(3, 2, 0, 1)
      elif value.ndim == 2:  # [in, out] -> [out, in]
        value = value.T
      out[key] = value
    return out


ENCODER_TWINS = {"transformer": TransformerTwin, "gru": GRUTwin, "vggish": VGGishTwin}


def encoder_twin(cfg: Mapping[str, Any], *, mask_rate: Optional[float] = None,
                 mask_impl: str = "vectorised", seed: int = 0) -> nn.Module:
  """The twin of `coughjax.models.build_encoder(cfg)` (a flat model config dict).

  Masking is not read from `cfg` but passed explicitly (`mask_rate`, None = no
  mask), since the paper's and the vectorised generator treat rate 0 differently.
  """
  name = cfg["name"]
  if name == "transformer" and cfg.get("pooling", "mean") != "mean":
    raise NotImplementedError("the Transformer twin pools by mean only")
  if name == "transformer":
    return TransformerTwin(d_model=cfg["d_model"], num_layers=cfg["num_layers"],
                           num_heads=cfg["num_heads"], mlp_dim=cfg["mlp_dim"],
                           dropout=cfg["dropout"], mask_rate=mask_rate,
                           mask_at_eval=cfg.get("mask_at_eval", False),
                           mask_impl=mask_impl, seed=seed)
  if name == "gru":
    return GRUTwin(d_model=cfg["d_model"], num_layers=cfg["num_layers"],
                   dropout=cfg["dropout"])
  if name == "vggish":
    return VGGishTwin(embedding_dim=cfg["embedding_dim"], dropout=cfg["dropout"])
  raise ValueError(f"no torch twin for encoder {name!r}; known: {sorted(ENCODER_TWINS)}")


def feature_dim(encoder: nn.Module) -> int:
  if isinstance(encoder, VGGishTwin):
    return encoder.fc[-2].out_features  # the embedding Linear, before its ReLU
  if isinstance(encoder, GRUTwin):
    return encoder.d_model
  return encoder.embed.out_features


# ----------------------------------------------------------------------- full models


class ClassifierTwin(nn.Module):
  """coughjax's Classifier: encoder(s) -> concat -> dropout -> Linear(sum d, 1) -> [B].

  Flax names: encoders_{i} -> encoders.{i}, fc -> fc.
  """

  def __init__(self, encoders: Sequence[nn.Module], dropout: float = 0.2):
    super().__init__()
    self.encoders = nn.ModuleList(encoders)
    self.dropout = nn.Dropout(dropout)
    self.fc = nn.Linear(sum(feature_dim(e) for e in encoders), 1)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    """x [B, T, mel] -> logits [B] (each encoder draws its own mask)."""
    h = torch.cat([encoder(x) for encoder in self.encoders], dim=-1)
    return self.fc(self.dropout(h))[:, 0]

  def flax_to_torch(self, params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    out = _prefixed("fc", _dense(params["fc"]))
    for i, encoder in enumerate(self.encoders):
      out.update(_prefixed(f"encoders.{i}", encoder.flax_to_torch(params[f"encoders_{i}"])))
    return out


class ContrastiveTwin(nn.Module):
  """coughjax's ContrastiveModel with the bilinear similarity.

  encoder -> head (Linear d->p, LayerNorm eps 1e-6, tanh) -> z [B, p]; `logits(z, z)`
  = z W z^T / tau. Flax names: encoder, head/dense, head/norm, similarity/bilinear.
  """

  def __init__(self, encoder: nn.Module, proj_dim: int = 64, temperature: float = 1.0):
    super().__init__()
    self.encoder = encoder
    self.temperature = temperature
    self.dense = nn.Linear(feature_dim(encoder), proj_dim)
    self.norm = nn.LayerNorm(proj_dim, eps=HEAD_NORM_EPS)
    self.bilinear = nn.Parameter(torch.randn(proj_dim, proj_dim) * 0.05)  # COLA's init

  def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    return torch.tanh(self.norm(self.dense(self.encoder(x, mask))))

  def logits(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    return rows @ self.bilinear @ cols.T / self.temperature

  def flax_to_torch(self, params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    out = _prefixed("encoder", self.encoder.flax_to_torch(params["encoder"]))
    out.update(_prefixed("dense", _dense(params["head"]["dense"])))
    out.update(_prefixed("norm", _norm(params["head"]["norm"])))
    out["bilinear"] = np.asarray(params["similarity"]["bilinear"])
    return out


def contrastive_loss(logits: torch.Tensor) -> torch.Tensor:
  """Eq. 5 over 2B clips laid out [a_0..a_{B-1}, b_0..b_{B-1}]: logits [2B, 2B].

  Row i's partner is column (i + B) mod 2B; its own column leaves the softmax.
  """
  n = logits.shape[0]
  rows = torch.arange(n)
  logits = logits.masked_fill(torch.eye(n, dtype=torch.bool), float("-inf"))
  return nn.functional.cross_entropy(logits, (rows + n // 2) % n)


def load_flax_params(twin: nn.Module, params: Mapping[str, Any]) -> nn.Module:
  """Copies a coughjax params tree into `twin` (in place) and returns it.

  Raises ValueError if a torch parameter is missing from the mapping, a shape
  differs, or the two trees do not hold the same number of parameters (so every
  flax value was used exactly once).
  """
  values = twin.flax_to_torch(params)
  own = dict(twin.named_parameters())
  if set(values) != set(own):
    raise ValueError(f"flax -> torch mapping mismatch: unmapped torch parameters "
                     f"{sorted(set(own) - set(values))}, unknown keys "
                     f"{sorted(set(values) - set(own))}")
  if num_params(params) != num_params(twin):
    raise ValueError(f"flax params hold {num_params(params)} values, the twin "
                     f"{num_params(twin)}")
  with torch.no_grad():
    for name, value in values.items():
      if tuple(own[name].shape) != value.shape:
        raise ValueError(f"{name}: torch shape {tuple(own[name].shape)}, flax gives "
                         f"{value.shape}")
      own[name].copy_(torch.from_numpy(np.array(value, np.float32)))
  return twin
