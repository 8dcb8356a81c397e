r"""Contrastive pre-training (paper §4.1) — one variant per encoder / masking rate.

  python launch.py --config=configs/pretrain.py:transformer_m50
  python launch.py --config=configs/pretrain.py:transformer_m50,runlocal   # seconds
  python launch.py --config=configs/pretrain.py:gru \
      --config.data.name=coswara --config.data.root=/data/Coswara-Data

Variants: transformer_m{0,25,50,75,100} (CP masking rate in %), transformer_cosine
(cosine similarity, m0), gru, gru_cosine. The paper's best is transformer_m50.
The workdir defaults to runs/<variant>; the downstream configs look there.
"""

from configs import common

VARIANTS = {
    **{f"transformer_m{r}": dict(name="transformer", mask_rate=r / 100)
       for r in (0, 25, 50, 75, 100)},
    "transformer_cosine": dict(name="transformer", similarity="cosine", temperature=0.2),
    "gru": dict(name="gru"),
    "gru_cosine": dict(name="gru", similarity="cosine", temperature=0.2),
}


def get_config(arg: str = "transformer_m50"):
  name, options = common.parse_arg(arg, VARIANTS)
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
  if "runlocal" in options:
    runlocal(config)
  return config


def runlocal(config) -> None:
  """A seconds-long smoke run: tiny synthetic set and batches, two epochs."""
  config.data.num_participants = 40
  config.data.sounds = ("cough-heavy", "breathing-deep")
  config.batch_size = 16
  config.eval_batch_size = 8
  config.num_epochs = 2
  config.passes_per_epoch = 1
  config.runlocal = True
  config.log_every_steps = 1
  config.checkpoint_every_steps = 1
