"""Data: manifests from every source, feature cache, splits and batches."""

from __future__ import annotations

import importlib

from absl import logging

from coughjax.data import manifest as manifest_lib
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


def load_splits(config, needed: tuple[str, ...] = ("train", "val"),
                labelled: bool = False) -> dict:
  """`config.data` -> participant split -> cached features -> {split: ClipStore}.

  With `labelled`, recordings without a label are dropped first (downstream tasks).
  """
  # Imported here: the feature code pulls in the audio stack, which a caller that
  # only needs manifests should not pay for.
  from coughjax.data import features, pipeline, splits  # pylint: disable=g-import-not-at-top
  records = get_manifest(config.data)
  if labelled:
    records = manifest_lib.select(records, labelled=True)
    if not records:
      raise ValueError(f"{config.data.name}: no labelled recordings "
                       f"(data.label={config.data.label!r})")
  logging.info("%s: %s", config.data.name, manifest_lib.describe(records))
  parts = splits.split(records, config.data.split, config.data.split_seed)
  cache = features.FeatureCache(features.FeatureParams.from_config(config.features))
  stores = {}
  for name in needed:
    kept, feats, _ = cache.load(parts[name], name=f"{config.data.name}/{name}",
                                workers=config.data.workers)
    stores[name] = pipeline.ClipStore(kept, feats, config.features.clip_frames)
  return stores
