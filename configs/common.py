"""Defaults shared by every coughjax config; variants change only what differs."""

import ml_collections
from ml_collections.config_dict import FieldReference

from coughjax.data.manifest import PRETRAIN_SOUNDS


def get_base_config() -> ml_collections.ConfigDict:
  """Paper defaults (SPEC.md); every field can be overridden with --config.<field>."""
  config = ml_collections.ConfigDict()
  config.task = "pretrain"
  config.seed = 0
  config.runlocal = False  # set by the ",runlocal" option; workdirs get a suffix

  config.data = ml_collections.ConfigDict(dict(
      name="synthetic",   # synthetic | coswara | covid19_sounds | manifest
      root="",            # dataset folder (coswara, covid19_sounds)
      manifest="",        # CSV path (name="manifest")
      label="",           # coswara: covid_status | sex | age
      age_threshold=50,   # coswara label="age": 1 if age >= this
      task=1,             # covid19_sounds task (1, 2 or 3)
      sounds=PRETRAIN_SOUNDS,  # which sounds to use (empty: all of the source)
      num_participants=1500,   # synthetic
      seed=0,                  # synthetic generator seed
      split=(0.8, 0.2, 0.0),   # participant fractions train/val/test
      split_seed=0,
      workers=0,               # feature-building processes (0 = all cores)
  ))
  config.features = ml_collections.ConfigDict(dict(
      sample_rate=16000, nfilt=64, winlen=0.025, winstep=0.01,
      nfft=0,             # 0 = smallest power of two covering the window
      preemph=0.97, min_duration=0.5, clip_frames=96,
      train_hop=96,       # downstream training clips every this many frames
      eval_hop=96,        # clip hop when evaluating every clip of a recording
  ))
  config.model = ml_collections.ConfigDict(dict(
      name="transformer",
      d_model=64, num_layers=2, num_heads=4, mlp_dim=256, dropout=0.2,
      mask_rate=0.0, mask_at_eval=False, pooling="mean",
      embedding_dim=128,  # vggish
      proj_dim=64, similarity="bilinear",
      temperature=1.0,    # tau: bilinear 1.0, cosine 0.2 (COLA)
      # Platform-dependent settings (coughjax/models/platform.py): "auto" is resolved
      # from jax.default_backend() at trace time; an explicit value pins one. On CPU
      # the measured optimum (the step is memory-bound): the encoder over 16-clip
      # chunks, each recomputed in the backward pass (remat), einsum attention and
      # hash-based dropout bits. On GPU/TPU: the whole batch at once, no remat,
      # jax.nn.dot_product_attention and flax's dropout.
      chunk_size=FieldReference("auto", field_type=object),  # int: clips per chunk, 0 = all
      remat=FieldReference("auto", field_type=object),       # bool: pre-training recomputes chunks
      attention_impl="auto",  # einsum | dot_product
      dropout_impl="auto",    # hash | flax
      dtype="float32",    # compute dtype: float32 | bfloat16 (params stay float32)
  ))
  config.optim = ml_collections.ConfigDict(dict(
      learning_rate=1e-3,
      grad_clip=0.0,          # global-norm clipping, 0 = off
      plateau_factor=0.1, plateau_patience=10, plateau_rtol=1e-4, plateau_cooldown=0,
      min_lr_scale=0.0,
  ))
  config.batch_size = 1024
  config.eval_batch_size = 256
  config.num_epochs = 100
  config.passes_per_epoch = 1  # pre-training: passes over the participants per epoch
  config.early_stopping_patience = 0  # epochs without improvement; 0 = off
  config.log_every_steps = 10
  config.checkpoint_every_steps = 200
  config.keep_checkpoints = 2
  return config


def parse_arg(arg, variants) -> tuple[str, set[str]]:
  """'transformer_m50,runlocal' -> ('transformer_m50', {'runlocal'}), checked."""
  parts = [p for p in (arg or "").split(",") if p]
  name = parts[0] if parts else ""
  options = set(parts[1:])
  if name not in variants:
    raise ValueError(f"unknown config variant {name!r}; choose from {sorted(variants)}")
  unknown = options - {"runlocal"}
  if unknown:
    raise ValueError(f"unknown config option(s) {sorted(unknown)}; known: runlocal")
  return name, options

