r"""Linear probe of frozen recording embeddings (OPERA's protocol), and `coughjax.embed`'s
data source.

  python -m coughjax.probe --encoder=runs/transformer_m50               # built-in data
  python -m coughjax.probe --encoder=runs/transformer_m50 \
      --config.data.name=covid19_cough --config.data.root=../shared/data/covid19_cough \
      --config.data.source_filter=call-center
  python -m coughjax.probe --encoder=runs/transformer_m50 \
      --config.data.name=coswara --config.data.root=../shared/data/coswara_ci \
      --config.data.label=sex "--config.data.sounds=('cough-heavy','cough-shallow')"
  python -m coughjax.probe --config=configs/probe.py:runlocal --encoder=...  # seconds

Data and splits are the downstream config's (configs/downstream.py): run i splits the
participants with seed `data.split_seed + i`, stratified by (stratum, label), so the
probe's test participants are those of downstream run i. The probe trains on the
train and validation participants together (it has no early stopping to validate).
"""

from coughjax.configs import common
from coughjax.configs import downstream


def get_config(arg: str = ""):
  options = {o for o in (arg or "").split(",") if o}
  unknown = options - {"runlocal"}
  if unknown:
    raise ValueError(f"unknown config option(s) {sorted(unknown)}; known: runlocal")
  base = downstream.get_config("transformer" + (",runlocal" if options else ""))
  config = common.get_base_config()
  config.task = "probe"
  config.variant = "probe"
  config.runlocal = base.runlocal
  config.data = base.data
  config.features = base.features
  config.seed = 0
  config.num_runs = 5  # participant splits (seeds split_seed .. split_seed + 4)
  config.probe = dict(
      C=0.0,            # > 0: fixed inverse regularisation; 0: chosen by CV below
      C_grid=(1e-3, 1e-2, 1e-1, 1.0, 10.0),
      cv_folds=3,       # participant-grouped, label-stratified folds of the training split
      max_iter=5000,
  )
  return config
