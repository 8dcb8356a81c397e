"""coughjax's `ml_collections` config files, shipped with the package.

`pretrain` (contrastive pre-training, one variant per encoder and masking rate),
`downstream` (one variant per row of the paper's Tables 1-5), `probe` (the linear
probe and `coughjax.embed`'s data source) and `common` (the defaults they share).
In a clone, `configs/<name>.py` re-exports each, so that
`python launch.py --config=configs/pretrain.py:transformer_m50` keeps working; the
commands that default to a config (`coughjax.embed`, `coughjax.probe`) and those
that build many (`coughjax.reproduce`, `coughjax.protocol`, `coughjax.studies`)
read them from the package, so they work from any folder with an installed wheel.
"""

import pathlib

FOLDER = pathlib.Path(__file__).resolve().parent


def path(name: str) -> str:
  """The file of config `name` (e.g. "probe"), for `config_flags.DEFINE_config_file`."""
  file = FOLDER / f"{name.removesuffix('.py')}.py"
  if not file.is_file():
    known = sorted(p.stem for p in FOLDER.glob("*.py") if not p.stem.startswith("_"))
    raise FileNotFoundError(f"{file}: no config {name!r}; coughjax's configs: {known}")
  return str(file)
