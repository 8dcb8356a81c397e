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
      # synthetic | coswara | covid19_sounds | covid19_cough | manifest | tfds, or several
      # joined by "+" (e.g. "coswara+covid19_cough") with their folders in `roots`.
      name="synthetic",
      root="",            # dataset folder (coswara, covid19_sounds, covid19_cough)
      roots="",           # several sources: "coswara=PATH,covid19_cough=PATH"
      manifest="",        # CSV path (name="manifest")
      # name="manifest": its paths must stay inside the CSV's folder (others are
      # skipped and counted); True allows absolute paths and paths outside it, for a
      # CSV you trust.
      manifest_any_paths=False,
      # name="tfds": a build of coughjax.data.tfds_builders, e.g. "coswara/pretrain"
      # (or "<dataset>/<config>:<version>"), in the TFDS data_dir `tfds_dir`.
      tfds_name="", tfds_dir="", tfds_split="train",
      label="",           # coswara: covid_status | sex | age; covid19_cough: covid19
      source_filter="",   # covid19_cough: "" (both) | call-center | telegram
      verified_only=False,  # covid19_cough: only PCR-verified positives (+ all negatives)
      # Near-duplicate recordings (copies re-encoded, resampled, re-gained or trimmed
      # by up to 0.5 s) become one participant, unlabelled if their labels disagree
      # (coughjax/data/dedup.py): "auto" (on for covid19_cough), True or False.
      dedup=FieldReference("auto", field_type=object),
      age_threshold=50,   # coswara label="age": 1 if age >= this
      task=1,             # covid19_sounds task (1, 2 or 3)
      sounds=PRETRAIN_SOUNDS,  # which sounds to use (empty: all of the source)
      num_participants=1500,   # synthetic
      seed=0,                  # synthetic generator seed
      split=(0.8, 0.2, 0.0),   # participant fractions train/val/test
      split_seed=0,
      # The evaluation protocol's folds (coughjax.protocol): a folds file; its fold
      # `fold` of repeat `fold_repeat` is the test part and the rest is split by
      # `split`'s train/val proportions. "" = split by `split` alone.
      folds="", fold=0, fold_repeat=0,
      workers=0,               # feature-building processes (0 = all cores)
  ))
  config.features = ml_collections.ConfigDict(dict(
      sample_rate=16000, nfilt=64, winlen=0.025, winstep=0.01,
      nfft=0,             # 0 = smallest power of two covering the window
      preemph=0.97, min_duration=0.5, clip_frames=96,
      # Front-end level normalisation per recording (data/features.py `normalise`):
      # "" none (the paper), "gain" (remove loudness) or "cmn" (per-band means).
      normalise="",
      train_hop=96,       # downstream training clips every this many frames
      eval_hop=96,        # clip hop when evaluating every clip of a recording
  ))
  # Model. Each encoder has its own sub-config (architecture and dropout), read only
  # when that encoder is built (`coughjax.models.encoder_config`): a downstream
  # ensemble of VGGish and a Transformer gives each its own dropout. Override one
  # with e.g. --config.model.vggish.dropout=0.5.
  config.model = ml_collections.ConfigDict(dict(
      name="transformer",  # pre-training encoder (downstream: encoder_a/b.name)
      transformer=dict(    # paper §4.1.1 / §5.2: d = 64 and dropout 0.2 (Fig. 5)
          d_model=64, num_layers=2, num_heads=4, mlp_dim=256,
          dropout=0.2,     # after attention, inside and after the MLP
          pooling="mean"),
      gru=dict(d_model=64, num_layers=2,
               dropout=0.2,   # between GRU layers (torch nn.GRU's dropout)
               # inference scan (models/gru.py): "auto" (models/platform.py) or an int
               eval_unroll=FieldReference("auto", field_type=object),
               eval_streams=FieldReference("auto", field_type=object)),
      vggish=dict(embedding_dim=128,
                  dropout=0.0),  # after fc1_1 / fc1_2; VGGish was trained without it
      # Shared by every encoder that declares them (models.registry.SHARED_FIELDS):
      mask_rate=0.0,       # random key masking (Transformer): CP rate, or DS rate downstream
      mask_at_eval=False,  # also mask at inference (downstream DS masking)
      dtype="float32",     # compute dtype: float32 | bfloat16 (params stay float32)
      # Downstream classifier head (paper Fig. 4): dropout on the (concatenated)
      # encoder features before the FC layer; unused in pre-training.
      head_dropout=0.2,
      # Pre-training head (projection g and similarity).
      proj_dim=64, similarity="bilinear",
      temperature=1.0,    # tau: bilinear 1.0, cosine 0.2 (COLA)
      # Platform-dependent settings (coughjax/models/platform.py): "auto" is resolved
      # from jax.default_backend() at trace time; an explicit value pins one. On CPU
      # the measured optimum (the step is memory-bound): the encoder over 16-clip
      # chunks, each recomputed in the backward pass (remat), or the whole batch where
      # an encoder asks for it (GRU, VGGish: platform.CPU), einsum attention and
      # hash-based dropout bits. On GPU/TPU: the whole batch at once, no remat,
      # jax.nn.dot_product_attention and threefry (flax-style) dropout bits. Masks and
      # dropout are drawn per clip, so none of these settings changes them.
      chunk_size=FieldReference("auto", field_type=object),  # int: clips per chunk, 0 = all
      remat=FieldReference("auto", field_type=object),       # bool: pre-training recomputes chunks
      # Inference (evaluation, predict, embed) chunks: "auto" is the whole batch on
      # GPU/TPU and on CPU the encoders' preference (platform.CPU: 16 clips, the GRU
      # 256).
      eval_chunk_size=FieldReference("auto", field_type=object),
      # (the Transformer's, passed to it as shared fields):
      attention_impl="auto",  # einsum | dot_product
      dropout_impl="auto",    # hash | flax
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


def parse_arg(arg, variants, options=("runlocal",)) -> tuple[str, set[str]]:
  """'transformer_m50,runlocal' -> ('transformer_m50', {'runlocal'}), checked
  against the variants and the comma options the config file knows."""
  parts = [p for p in (arg or "").split(",") if p]
  name = parts[0] if parts else ""
  chosen = set(parts[1:])
  if name not in variants:
    raise ValueError(f"unknown config variant {name!r}; choose from {sorted(variants)}")
  unknown = chosen - set(options)
  if unknown:
    raise ValueError(f"unknown config option(s) {sorted(unknown)}; known: "
                     f"{', '.join(options)}")
  return name, chosen

