"""Data: manifests from every source, feature cache, splits and batches."""

from __future__ import annotations

import importlib

from coughjax.data.manifest import PRETRAIN_SOUNDS, Recording

# config.data.name -> module with `from_config(config.data) -> list[Recording]`.
SOURCES = {
    "synthetic": "coughjax.data.synthetic",
    "coswara": "coughjax.data.coswara",
    "covid19_sounds": "coughjax.data.covid19_sounds",
    "manifest": "coughjax.data.csv_manifest",
}


def get_manifest(cfg) -> list[Recording]:
  """The recordings of `config.data` (fields: name, and what that source needs)."""
  if cfg.name not in SOURCES:
    raise ValueError(f"unknown data source {cfg.name!r}; known: {', '.join(SOURCES)}")
  return importlib.import_module(SOURCES[cfg.name]).from_config(cfg)
