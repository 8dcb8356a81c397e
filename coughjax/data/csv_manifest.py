"""A generic CSV manifest as a data source (`config.data.name='manifest'`)."""

from coughjax.data import manifest
from coughjax.data.manifest import Recording


def from_config(cfg) -> list[Recording]:
  """`config.data` fields: manifest (CSV path), sounds (empty = all),
  manifest_any_paths (allow paths outside the CSV's folder: `manifest.read_csv`)."""
  if not cfg.manifest:
    raise ValueError("data.name='manifest' needs --config.data.manifest=<CSV path>")
  records = manifest.read_csv(cfg.manifest,
                              any_paths=bool(cfg.get("manifest_any_paths", False)))
  return manifest.select(records, tuple(cfg.sounds) or None)
