r"""Downstream COVID-19 classifier (paper §4.2) — one variant per row of Tables 1–5.

  python launch.py --config=configs/downstream.py:ensemble         # the paper's best
  python launch.py --config=configs/downstream.py:transformer_cp_ft,runlocal
  python launch.py --config=configs/downstream.py:gru_cp_frozen \
      --config.data.name=covid19_sounds --config.data.root=/data/covid19_sounds

A -CP variant starts from a contrastive pre-training workdir (default
runs/<pretrain variant>, e.g. runs/transformer_m50); if it is missing, the error says
which `python launch.py --config=configs/pretrain.py:...` command creates it.

| variant | paper row |
|---|---|
| vggish / vggish_frozen / vggish_ft | T1 VGGish: scratch / AudioSet weights frozen / fine-tuned |
| gru, transformer | T1 GRU, Transformer (no pre-training) |
| gru_cp_frozen, gru_cp_ft | T1 GRU-CP frozen / fine-tuned (CP bilinear, no mask) |
| transformer_cp_frozen, transformer_cp_ft | T1 Transformer-CP frozen / fine-tuned |
| gru_cp_cosine_ft, transformer_cp_cosine_ft | T2 cosine similarity (bilinear: the *_cp_ft rows) |
| transformer_cp_m{0,25,50,75,100}_ft | T3 CP masking rate, no DS masking |
| ens_vggish_transformer, ens_gru_transformer, ens_gru_cp_transformer_cp | T4 ensembles |
| ens_transformer_cp_ds{0,25,50,75,100} | T5 Transformer-CP x2 (CP mask 50 %), DS masking rate |
| ensemble | = ens_transformer_cp_ds50, the paper's best |

VGGish AudioSet weights cannot be downloaded here: convert the PyTorch port's file
with `python -m coughjax.models.vggish_convert --input vggish.pth --output DIR` and
pass `--config.encoder_a.checkpoint=DIR`.
"""

import copy

import ml_collections

from coughjax.configs import common

# The classifier's encoder branches: the config keys that describe them, in the order
# of its encoders (a key whose `name` is "" is no branch). Every module that walks
# the branches (the trainer, the config checks, the protocol) takes them from here.
BRANCHES = ("encoder_a", "encoder_b")


def branch_keys(config) -> list[str]:
  """The keys of `config`'s branches (those naming an encoder), in order."""
  return [k for k in BRANCHES if config[k].name]

def _encoder(name="", init="scratch", pretrain="", frozen=False):
  """One branch: `init` is scratch | cp (a pre-training workdir) | audioset (VGGish)."""
  return ml_collections.ConfigDict(dict(
      name=name, init=init,
      pretrain=pretrain,   # pre-training variant (configs/pretrain.py) for init="cp"
      checkpoint="",       # "" = runs/<pretrain>; audioset: the converted VGGish folder
      frozen=frozen))


def _single(name, init="scratch", pretrain="", frozen=False):
  return dict(encoder_a=_encoder(name, init, pretrain, frozen))


def _pair(a, b, ds_rate=0.0):
  return dict(encoder_a=_encoder(*a), encoder_b=_encoder(*b), ds_rate=ds_rate)


_T_CP = ("transformer", "cp", "transformer_m0")
VARIANTS = {
    # Table 1
    "vggish": _single("vggish"),
    "vggish_frozen": _single("vggish", "audioset", frozen=True),
    "vggish_ft": _single("vggish", "audioset"),
    "gru": _single("gru"),
    "transformer": _single("transformer"),
    "gru_cp_frozen": _single("gru", "cp", "gru", frozen=True),
    "gru_cp_ft": _single("gru", "cp", "gru"),
    "transformer_cp_frozen": _single("transformer", "cp", "transformer_m0", frozen=True),
    "transformer_cp_ft": _single("transformer", "cp", "transformer_m0"),
    # Table 2
    "gru_cp_cosine_ft": _single("gru", "cp", "gru_cosine"),
    "transformer_cp_cosine_ft": _single("transformer", "cp", "transformer_cosine"),
    # Table 3
    **{f"transformer_cp_m{r}_ft": _single("transformer", "cp", f"transformer_m{r}")
       for r in (0, 25, 50, 75, 100)},
    # Table 4
    "ens_vggish_transformer": _pair(("vggish",), ("transformer",)),
    "ens_gru_transformer": _pair(("gru",), ("transformer",)),
    "ens_gru_cp_transformer_cp": _pair(("gru", "cp", "gru"), _T_CP),
    # Table 5: both branches from the CP 50 % checkpoint, DS masking in both branches.
    **{f"ens_transformer_cp_ds{r}": _pair(("transformer", "cp", "transformer_m50"),
                                          ("transformer", "cp", "transformer_m50"),
                                          ds_rate=r / 100)
       for r in (0, 25, 50, 75, 100)},
}
VARIANTS["ensemble"] = VARIANTS["ens_transformer_cp_ds50"]


def get_config(arg: str = "ensemble"):
  name, options = common.parse_arg(arg, VARIANTS)
  config = common.get_base_config()
  config.task = "downstream"
  config.variant = name
  spec = copy.deepcopy(VARIANTS[name])  # callers may change the returned config
  for key in BRANCHES:
    config[key] = spec.get(key, _encoder())
  # DS masking: each branch draws its own random key mask at this rate, in training
  # and, with mask_at_eval, at inference (paper Tables 5 and 6).
  config.model.mask_rate = spec.get("ds_rate", 0.0)
  config.model.mask_at_eval = True
  # Downstream data. COVID-19 Sounds is licence-gated, so the default is the built-in
  # synthetic set: coughs of 450 participants disjoint from the pre-training ones
  # (generator seed 1), labelled positive/negative (about 1 in 3 positive).
  config.data.seed = 1
  config.data.num_participants = 450
  config.data.sounds = ("cough-heavy", "cough-shallow")
  config.data.split = (0.7, 0.1, 0.2)
  config.features.train_hop = 48   # training clips every 48 frames (overlapping)
  # Training-clip augmentation, drawn per clip (coughjax/train/augment.py); all 0 =
  # none (the paper). E.g. gain_db=10 makes loudness useless to the classifier.
  config.augment = ml_collections.ConfigDict(dict(
      gain_db=0.0, time_masks=0, time_mask_width=0, freq_masks=0, freq_mask_width=0))
  config.batch_size = 128
  config.eval_batch_size = 128
  config.num_epochs = 40
  config.early_stopping_patience = 10  # epochs without a better validation monitor
  # The validation metric that keeps the best checkpoint and stops training early:
  # "loss" (clip-level cross-entropy, lower is better) or "auc" (recording-level
  # ROC-AUC, higher is better). Loss by default: on a validation part of a few dozen
  # recordings the AUC moves in steps of one pair's order and ranks epochs by noise,
  # while the loss uses every score (covid19_cough's study measured both; its
  # protocol page says what it found).
  config.monitor = "loss"
  config.num_runs = 5                  # seeds: own split and init each; mean (std)
  # How one program trains its runs (coughjax/train/many.py): "map" (one after another
  # inside each step: every run's numbers bit-identical to training it alone), "vmap"
  # (batched: the same up to rounding, faster where one run leaves a device idle) or
  # "auto" (models/platform.py: map on CPU but for VGGish, vmap on GPU/TPU).
  config.runs_impl = "auto"
  config.threshold = 0.5
  config.log_every_steps = 20
  config.checkpoint_every_steps = 1000
  config.keep_checkpoints = 1
  if "runlocal" in options:
    runlocal(config)
  return config


def runlocal(config) -> None:
  """Seconds-long smoke run: tiny data, 2 runs of 2 epochs. CP branches load the
  pre-training runlocal workdirs, runs/<pretrain variant>_runlocal (made by
  `python launch.py --config=configs/pretrain.py:<pretrain variant>,runlocal`)."""
  config.data.num_participants = 24
  # Of 24 participants (8 positive), (0.7, 0.1, 0.2) leaves 2 negatives for
  # validation, whose ROC-AUC (picking the best checkpoint) needs both classes: 5
  # participants (1 positive) validate instead.
  config.data.split = (0.6, 0.2, 0.2)
  config.batch_size = 16
  config.eval_batch_size = 16
  config.num_epochs = 2
  config.runlocal = True
  config.num_runs = 2
  config.early_stopping_patience = 0
  config.log_every_steps = 1
