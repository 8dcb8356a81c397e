"""Data: manifests from every source, feature cache, splits and batches.

Several sources at once: `config.data.name` joins source names with "+", and
`config.data.roots` gives each its folder as "name=path,name=path", e.g.

    --config.data.name=coswara+covid19_cough \
    --config.data.roots=coswara=/data/coswara_ci,covid19_cough=/data/covid19_cough

Every other `config.data` field (label, sounds, source_filter, ...) goes to every
source. Participant ids become "<source>:<id>" so that they cannot collide, and each
source's recordings form their own split strata ("<source>" or
"<source>/<stratum>"), so every split keeps the sources' proportions.

Near-duplicate recordings (byte-identical, re-encoded, resampled, re-gained or
trimmed copies) are grouped into one participant each when `config.data.dedup` is on
("auto": for the sources in DEDUP_BY_DEFAULT), within each source
(`coughjax.data.dedup`).

A TFDS build of features is a source too (`coughjax.data.tfds_source`):

    --config.data.name=tfds --config.data.tfds_name=coswara/pretrain \
    --config.data.tfds_dir=/data/tfds

`load_splits` hands out stores whose features stay on disk (`coughjax.data.packed`).
"""

from __future__ import annotations

import dataclasses
import importlib

from absl import logging
import ml_collections

from coughjax.data import manifest as manifest_lib
from coughjax.data.manifest import PRETRAIN_SOUNDS, Recording

# config.data.name -> module with `from_config(config.data) -> list[Recording]`.
SOURCES = {
    "synthetic": "coughjax.data.synthetic",
    "coswara": "coughjax.data.coswara",
    "covid19_sounds": "coughjax.data.covid19_sounds",
    "covid19_cough": "coughjax.data.covid19_cough",
    "manifest": "coughjax.data.csv_manifest",
    # A TFDS build of features (coughjax.data.tfds_builders): data.tfds_name/tfds_dir.
    "tfds": "coughjax.data.tfds_source",
}
# Sources whose recordings come with their features (not audio for the cache).
PREBUILT = ("tfds",)
# Sources whose near-duplicates are grouped when data.dedup is "auto": releases known
# to hold copies of one recording under several names.
DEDUP_BY_DEFAULT = ("covid19_cough",)


SEPARATOR = "+"


def get_manifest(cfg) -> list[Recording]:
  """The recordings of `config.data` (fields: name, and what that source needs;
  for several sources, "a+b" and `roots`, see the module docstring)."""
  names = cfg.name.split(SEPARATOR)
  if len(names) > 1:
    return _combined(cfg, names)
  if cfg.name not in SOURCES:
    raise ValueError(f"unknown data source {cfg.name!r}; known: {', '.join(SOURCES)}")
  dedup = dedup_enabled(cfg)
  records = importlib.import_module(SOURCES[cfg.name]).from_config(cfg)
  if dedup:
    # Imported here: it pulls in the feature code and the audio stack (see load_splits).
    from coughjax.data import dedup as dedup_lib  # pylint: disable=g-import-not-at-top
    records = dedup_lib.apply(records, name=cfg.name, workers=cfg.get("workers", 0))
  return records


def dedup_enabled(cfg) -> bool:
  """Whether `config.data.dedup` ("auto", True or False; absent = "auto") groups the
  near-duplicates of the source `cfg.name`."""
  value = cfg.get("dedup", "auto")
  if isinstance(value, str) and value.lower() in ("auto", "true", "false"):
    value = {"auto": "auto", "true": True, "false": False}[value.lower()]
  if value == "auto":
    return cfg.name in DEDUP_BY_DEFAULT
  if not isinstance(value, bool):
    raise ValueError(f"data.dedup must be 'auto', True or False, got {value!r}")
  if value and cfg.name in PREBUILT:
    raise ValueError(f"data.dedup=True: data.name={cfg.name!r} holds features, not "
                     "audio, so its near-duplicates cannot be found; set data.dedup=False")
  return value


def parse_roots(text: str) -> dict[str, str]:
  """'coswara=/a,covid19_cough=/b' -> {'coswara': '/a', 'covid19_cough': '/b'}."""
  roots = {}
  for item in (t.strip() for t in text.split(",")):
    if not item:
      continue
    name, sep, path = item.partition("=")
    name, path = name.strip(), path.strip()
    if not sep or not name or not path:
      raise ValueError(f"data.roots entry {item!r} is not name=path (in {text!r})")
    if name in roots:
      raise ValueError(f"data.roots names {name!r} twice (in {text!r})")
    roots[name] = path
  return roots


def _combined(cfg, names: list[str]) -> list[Recording]:
  """The recordings of several sources, ids prefixed with the source name."""
  unknown = [n for n in names if n not in SOURCES]
  if unknown or len(set(names)) != len(names) or not all(names):
    raise ValueError(f"data.name={cfg.name!r}: sources must be distinct names from "
                     f"{', '.join(SOURCES)} joined by {SEPARATOR!r}"
                     + (f"; unknown: {unknown}" if unknown else ""))
  prebuilt = sorted(set(names) & set(PREBUILT))
  if prebuilt:
    raise ValueError(f"data.name={cfg.name!r}: {prebuilt} cannot be combined with other "
                     "sources (its features are stored, not computed from audio)")
  roots = parse_roots(cfg.get("roots", ""))
  extra = sorted(set(roots) - set(names))
  if extra:
    raise ValueError(f"data.roots names {extra}, which data.name={cfg.name!r} does not "
                     "use")
  base = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
  records = []
  for name in names:
    sub = ml_collections.ConfigDict(dict(base, name=name, root=roots.get(name, ""),
                                         roots=""))
    if not sub.root and name not in ("synthetic", "manifest"):
      raise ValueError(f"data.name={cfg.name!r} needs a folder for {name!r}: "
                       f"--config.data.roots={name}=PATH[,other=PATH]")
    found = get_manifest(sub)
    logging.info("%s (of %s): %s", name, cfg.name, manifest_lib.describe(found))
    records += [dataclasses.replace(
        r, participant_id=f"{name}:{r.participant_id}",
        stratum=f"{name}/{r.stratum}" if r.stratum else name) for r in found]
  return records


def load_splits(config, needed: tuple[str, ...] = ("train", "val"),
                labelled: bool = False) -> dict:
  """`config.data` -> participant split -> cached features -> {split: ClipStore}.

  With `labelled`, recordings without a label are dropped first (downstream tasks).
  The stores are views of one memory-mapped pack of the corpus's features on disk
  (`coughjax.data.packed`), written once per corpus (not per split or split seed),
  so memory does not grow with the corpus.
  """
  # Imported here: the feature code pulls in the audio stack, which a caller that
  # only needs manifests should not pay for.
  from coughjax.data import features, packed, splits  # pylint: disable=g-import-not-at-top
  params = features.FeatureParams.from_config(config.features)
  clip_frames = config.features.clip_frames
  prebuilt = None
  if config.data.name == "tfds":
    from coughjax.data import tfds_source  # pylint: disable=g-import-not-at-top
    prebuilt = tfds_source.pack(config.data, params, clip_frames)
    # The build's own config chose its sounds (coswara/pretrain: the four pre-training
    # sounds; covid19_sounds/task1_cough: coughs): data.sounds is not applied, since
    # its default names Coswara's sounds, which other builds do not have.
    records = prebuilt.records
  else:
    records = get_manifest(config.data)
  if labelled:
    records = manifest_lib.select(records, labelled=True)
    if not records:
      raise ValueError(f"{config.data.name}: no labelled recordings "
                       f"(data.label={config.data.label!r})")
  logging.info("%s: %s", config.data.name, manifest_lib.describe(records))
  parts = splits.from_config(records, config.data, require_all=labelled)
  if prebuilt is not None:
    return tfds_source.stores_for(prebuilt, parts, needed)
  # One pack for the whole corpus, whatever the split: each split's store is a view.
  corpus = packed.from_cache(features.FeatureCache(params), records, clip_frames,
                             name=config.data.name, workers=config.data.workers)
  return {name: corpus.store(parts[name]) for name in needed}
