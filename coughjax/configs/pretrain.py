r"""Contrastive pre-training (paper §4.1) — one variant per encoder / masking rate.

  python launch.py --config=configs/pretrain.py:transformer_m50
  python launch.py --config=configs/pretrain.py:transformer_m50,runlocal   # seconds
  python launch.py --config=configs/pretrain.py:gru \
      --config.data.name=coswara --config.data.root=/data/Coswara-Data
  python launch.py --config=configs/pretrain.py:transformer_m50,real

Variants: transformer_m{0,25,50,75,100} (CP masking rate in %), transformer_cosine
(cosine similarity, m0), gru, gru_cosine. The paper's best is transformer_m50.
The workdir defaults to runs/<variant>; the downstream configs look there.

Options (after a comma): `runlocal` (seconds-long smoke run) and `real`: pre-train
on every real recording beside the repository at once, `data.name =
"coswara+covid19_cough"` with `data.roots` from `$COUGHJAX_COSWARA_CI` (default
../shared/data/coswara_ci) and `$COUGHJAX_COVID19_COUGH` (default
../shared/data/covid19_cough); override with `--config.data.roots=coswara=A,
covid19_cough=B`. Its workdir is runs/<variant>_real (a downstream -CP variant reads
it with `--config.encoder_a.checkpoint=runs/transformer_m50_real`). On the shared
copies: 814 training participants (38 Coswara, 776 covid19_cough), 203 validation;
B = 256, 40 epochs of 15 steps (what a run of it costs: benchmarks/README.md).
"""

import os
import pathlib

from coughjax.configs import common

# `real`: the real recordings shipped beside the repository (../shared/data), each
# folder overridable by an environment variable.
SHARED_DATA = pathlib.Path(__file__).resolve().parents[2].parent / "shared" / "data"
REAL_SOURCES = {  # source -> (environment variable, default folder)
    "coswara": ("COUGHJAX_COSWARA_CI", SHARED_DATA / "coswara_ci"),
    "covid19_cough": ("COUGHJAX_COVID19_COUGH", SHARED_DATA / "covid19_cough"),
}
OPTIONS = ("runlocal", "real")

VARIANTS = {
    **{f"transformer_m{r}": dict(name="transformer", mask_rate=r / 100)
       for r in (0, 25, 50, 75, 100)},
    "transformer_cosine": dict(name="transformer", similarity="cosine", temperature=0.2),
    "gru": dict(name="gru"),
    "gru_cosine": dict(name="gru", similarity="cosine", temperature=0.2),
}


def get_config(arg: str = "transformer_m50"):
  name, options = common.parse_arg(arg, VARIANTS, OPTIONS)
  config = common.get_base_config()
  config.task = "pretrain"
  config.variant = name
  config.model.update(VARIANTS[name])
  # Synthetic data: 1,200 training participants give one step of B = 1024 per pass
  # over them; an epoch is 10 passes, then validation and the plateau check.
  config.passes_per_epoch = 10
  config.num_epochs = 30
  # Global-norm gradient clipping (not in the paper). Without it the B = 1024 default
  # run can collapse: one run's embeddings became near-constant at step 60 (validation
  # loss back to log(2B - 1)) and never recovered; clipped at 1.0, the same seed learns
  # steadily (validation pair accuracy 0.043 at step 70).
  config.optim.grad_clip = 1.0
  if "real" in options:
    real(config)
  if "runlocal" in options:
    runlocal(config)
  return config


def real_roots() -> str:
  """`data.roots` of the `real` option: "coswara=...,covid19_cough=..."."""
  return ",".join(f"{name}={os.environ.get(var) or default}"
                  for name, (var, default) in REAL_SOURCES.items())


def real(config) -> None:
  """Pre-training on every real recording under ../shared/data at once: Coswara
  participants' breathing and coughs, and the covid19_cough coughs (one recording
  per participant, so their positive pairs are two crops of one recording)."""
  config.variant += "_real"  # its own workdir, runs/<variant>_real
  config.data.name = "+".join(REAL_SOURCES)
  config.data.roots = real_roots()
  config.data.label = ""  # labels are not used in pre-training
  # The (0.8, 0.2, 0) split of the shared copies leaves 814 training participants
  # (38 Coswara, 776 covid19_cough after identical files and 3 files under 0.5 s) and
  # 203 for validation (one batch). B = 256 takes 3 steps per pass over them; each
  # pass reshuffles, so the ~50 left out of a pass change.
  config.batch_size = 256
  config.eval_batch_size = 256
  config.passes_per_epoch = 5  # 15 steps per epoch
  config.num_epochs = 40       # 600 steps, ~150k pairs (the synthetic default: ~300k)


def runlocal(config) -> None:
  """A seconds-long smoke run: tiny synthetic set and batches, two epochs (with
  `real`: the real data, all of whose features are computed once, then cached)."""
  config.data.num_participants = 40
  config.data.sounds = ("cough-heavy", "breathing-deep")
  config.batch_size = 16
  config.eval_batch_size = 8
  config.num_epochs = 2
  config.passes_per_epoch = 1
  config.runlocal = True
  config.log_every_steps = 1
  config.checkpoint_every_steps = 1
