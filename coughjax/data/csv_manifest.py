"""A generic CSV manifest as a data source (`config.data.name='manifest'`)."""

from coughjax.data import manifest
from coughjax.data.manifest import Recording


def from_config(cfg) -> list[Recording]:
  """`config.data` fields: manifest (CSV path), sounds (empty = all)."""
  if not cfg.manifest:
    raise ValueError("data.name='manifest' needs --config.data.manifest=<CSV path>")
  return manifest.select(manifest.read_csv(cfg.manifest), tuple(cfg.sounds) or None)
