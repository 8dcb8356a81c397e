"""TFDS builders that store log-mel features of Coswara, COVID-19 Sounds and
covid19_cough as array_record.

Importing this module registers three `tfds.core.GeneratorBasedBuilder`s:

* `coswara` (configs `pretrain`: the four pre-training sounds, default; `all`),
* `covid19_sounds` (configs `task{1,2,3}_{cough,breath,cough_breath}`; default
  `task1_cough`, the paper's downstream set),
* `covid19_cough` (configs `all`, default; `call_center`, `telegram`, `verified`).

A build is a data source that a config names (`coughjax.data.tfds_source`):
`--config.data.name=tfds --config.data.tfds_name=coswara/pretrain
--config.data.tfds_dir=<data_dir>`.

Each example is one usable recording: `features` [T, 64] float32 log-mel (exactly
`coughjax.data.features.compute`, via the on-disk `FeatureCache`), `participant_id`,
`sound`, `label` (int64; -1 when unlabelled), `path` (the audio file) and `stratum`
(the split stratum, e.g. covid19_cough's recording channel; "" for the others). Recordings
that cannot be used (silent, corrupt, too short, ...) are skipped by the feature
cache, logged, and counted in the dataset's metadata (`num_skipped`, `skipped`).
There is a single `train` split with every recording: participant-disjoint
train/val/test splits are made afterwards by `coughjax.data.splits.split`, so the
stored data does not depend on a split seed.

The audio is licence-gated (COVID-19 Sounds) or large (Coswara), so it is never
downloaded: the builders read it from TFDS's *manual_dir* (the folder that the
source's `manifest(root)` takes), the standard TFDS way for manually obtained
data. Files are written as array_record, which TFDS reads by random access:

    from coughjax.data import tfds_builders  # registers the builders
    builder = tfds_builders.Covid19Sounds(config="task1_cough", data_dir=out)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir="/data/covid19_sounds_kdd"))
    source = builder.as_data_source(split="train")   # a Sequence of dicts
    # or, once built: tfds.data_source("covid19_sounds/task1_cough", split="train",
    #                                  data_dir=out, download=False)
    # or, without this module: tfds.builder_from_directory(
    #     builder.data_dir).as_data_source(split="train")
    records, feats = tfds_builders.to_recordings(source)  # text fields are bytes

Neither building nor reading needs TensorFlow: TFDS 4.9 serialises examples with
its own copy of the tf.Example protos (`tensorflow_datasets.proto`), writes them with
`array_record`, and `as_data_source` / `tfds.data_source` decode them with the numpy
example parser (see https://www.tensorflow.org/datasets/tfless_tfds). Only
`as_dataset` (tf.data) would need TensorFlow.

Custom configs (e.g. fewer participants for a smoke run, other feature parameters)
are `CoswaraConfig(name=..., ...)` / `Covid19SoundsConfig(name=..., ...)` passed as
`config=`; give them their own name, since the name picks the folder on disk.
"""

from __future__ import annotations

import dataclasses
import inspect
import pathlib
from typing import Any, Iterator, Optional, Sequence

from absl import logging
from etils import epath
import numpy as np

try:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
except ImportError as e:
  raise ImportError("coughjax.data.tfds_builders needs TensorFlow Datasets (not "
                    "TensorFlow): pip install 'coughjax[data]'") from e

from coughjax.data import coswara
from coughjax.data import covid19_cough
from coughjax.data import covid19_sounds
from coughjax.data.features import FEATURE_VERSION, FeatureCache, FeatureParams
from coughjax.data.manifest import PRETRAIN_SOUNDS, Recording

FILE_FORMAT = "array_record"
UNLABELLED = -1
# Recordings per FeatureCache.load call: bounds the features held in memory while
# writing (full Coswara is several GB of log-mels) yet keeps worker pools busy.
_CHUNK = 1024
_MAX_SKIPS_LISTED = 1000  # in metadata.json; the count is always exact


@dataclasses.dataclass(eq=False)
class FeatureConfig(tfds.core.BuilderConfig):
  """Options shared by both builders.

  Attributes:
    feature_params: how recordings become log-mel features.
    max_participants: keep only the first N participants (sorted ids); 0 = all.
      For quick builds and tests.
  """
  feature_params: FeatureParams = FeatureParams()
  max_participants: int = 0


@dataclasses.dataclass(eq=False)
class CoswaraConfig(FeatureConfig):
  """`sounds`: which recordings (empty = all); `label`: see `coswara.to_label`."""
  sounds: tuple[str, ...] = PRETRAIN_SOUNDS
  label: Optional[str] = "covid_status"
  age_threshold: int = 50


@dataclasses.dataclass(eq=False)
class Covid19SoundsConfig(FeatureConfig):
  """`task`: 1, 2 or 3 (see `covid19_sounds`); `sounds`: cough / breath / voice."""
  task: int = 1
  sounds: tuple[str, ...] = covid19_sounds.DEFAULT_SOUNDS


class _FeatureBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Recordings of a coughjax source -> one array_record `train` split of features."""

  # The minor version follows the feature code's version, so that changed feature
  # code writes to a new folder instead of passing off stale features as current.
  VERSION = tfds.core.Version(f"1.{FEATURE_VERSION}.1")
  RELEASE_NOTES = {"1.1.0": "Log-mel features (coughjax FEATURE_VERSION 1).",
                   "1.1.1": "The recordings' split stratum (`stratum`)."}

  def __init__(self, *, file_format: Optional[str] = None, **kwargs: Any):
    # array_record by default: random access, and readable without TensorFlow.
    super().__init__(file_format=file_format or FILE_FORMAT, **kwargs)

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # TFDS 4.9.10 finds this file through `importlib_resources`, which it declares
    # only for Python < 3.9, so preparing fails without that package; the answer
    # (where to look for a checksums file, which these builders never have) is
    # simply the defining module.
    return epath.Path(inspect.getfile(cls))

  def _manifest(self, root: pathlib.Path) -> list[Recording]:
    raise NotImplementedError

  def _info(self) -> tfds.core.DatasetInfo:
    nfilt = self.builder_config.feature_params.nfilt
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            # Raw float32 bytes: the exact values, and far faster to write than the
            # default tf.Example float list of every one of the T*64 numbers.
            "features": tfds.features.Tensor(shape=(None, nfilt), dtype=np.float32,
                                             encoding=tfds.features.Encoding.BYTES),
            "participant_id": tfds.features.Text(),
            "sound": tfds.features.Text(),
            "label": tfds.features.Scalar(dtype=np.int64),
            "path": tfds.features.Text(),
            "stratum": tfds.features.Text(),
        }),
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = pathlib.Path(dl_manager.manual_dir)
    records = _first_participants(self._manifest(root),
                                  self.builder_config.max_participants)
    return {"train": self._generate_examples(records)}

  def _generate_examples(self, records: Sequence[Recording]
                         ) -> Iterator[tuple[str, dict[str, Any]]]:
    params = self.builder_config.feature_params
    cache = FeatureCache(params)
    skipped = []
    for start in range(0, len(records), _CHUNK):
      kept, feats, skips = cache.load(records[start:start + _CHUNK],
                                      name=f"{self.name}/{self.builder_config.name}")
      skipped.extend(skips)
      for record, f in zip(kept, feats):
        yield record.path, {
            "features": f.astype(np.float32, copy=False),
            "participant_id": record.participant_id,
            "sound": record.sound,
            "label": UNLABELLED if record.label is None else record.label,
            "path": record.path,
            "stratum": record.stratum,
        }
    # Written to metadata.json with the dataset info once the split is done.
    self.info.metadata.update(
        num_recordings=len(records), num_skipped=len(skipped),
        skipped=[{"path": s.record.path, "reason": s.reason}
                 for s in skipped[:_MAX_SKIPS_LISTED]],
        feature_params=dataclasses.asdict(params), feature_version=FEATURE_VERSION)
    if skipped:
      logging.warning("%s: %d of %d recordings skipped (listed in metadata.json)",
                      self.name, len(skipped), len(records))


def _first_participants(records: list[Recording], n: int) -> list[Recording]:
  if n <= 0:
    return records
  keep = set(sorted({r.participant_id for r in records})[:n])
  return [r for r in records if r.participant_id in keep]


class Coswara(_FeatureBuilder):
  """Coswara (IISc, CC BY 4.0) log-mel features; manual_dir = the Coswara root."""

  BUILDER_CONFIGS = [
      CoswaraConfig(name="pretrain", description="Breathing and cough, for pre-training."),
      CoswaraConfig(name="all", sounds=(), description="Every Coswara sound."),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Set manual_dir to a Coswara folder in either layout that "
      "coughjax.data.coswara.manifest reads: the extracted iiscleap/Coswara-Data "
      "release (<date>/<participant>/<sound>.wav) or audio/<participant>/<sound>.flac "
      "with labels.csv.")

  def _manifest(self, root: pathlib.Path) -> list[Recording]:
    cfg = self.builder_config
    return coswara.manifest(root, label=cfg.label, sounds=tuple(cfg.sounds) or None,
                            age_threshold=cfg.age_threshold)


class Covid19Sounds(_FeatureBuilder):
  """COVID-19 Sounds (Cambridge, KDD 2020 release) log-mel features of one task."""

  BUILDER_CONFIGS = [
      Covid19SoundsConfig(name=f"task{task}_{'_'.join(sounds)}", task=task, sounds=sounds,
                          description=f"Task {task}, {' + '.join(sounds)} recordings.")
      for task in sorted(covid19_sounds.TASKS)
      for sounds in (("cough",), ("breath",), ("cough", "breath"))
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "The COVID-19 Sounds KDD 2020 data is licence-gated: request it from the "
      "University of Cambridge (https://www.covid-19-sounds.org/en/blog/"
      "data_sharing.html), unzip every subset and set manual_dir to the folder that "
      "holds covidandroidnocough/, ..., asthmawebwithcough/.")

  def _manifest(self, root: pathlib.Path) -> list[Recording]:
    cfg = self.builder_config
    return covid19_sounds.manifest(root, task=cfg.task, sounds=cfg.sounds)


@dataclasses.dataclass(eq=False)
class Covid19CoughConfig(FeatureConfig):
  """`source_filter`: "" (both), "call-center" or "telegram"; `verified_only`: only
  PCR-verified positives (and every negative); see `coughjax.data.covid19_cough`."""
  source_filter: str = ""
  verified_only: bool = False


class Covid19Cough(_FeatureBuilder):
  """covid19_cough (CC0 1.0) log-mel features; manual_dir = the release copy."""

  BUILDER_CONFIGS = [
      Covid19CoughConfig(name="all", description="Both sources."),
      Covid19CoughConfig(name="call_center", source_filter="call-center",
                         description="Call-centre recordings only."),
      Covid19CoughConfig(name="telegram", source_filter="telegram",
                         description="Telegram recordings only."),
      Covid19CoughConfig(name="verified", verified_only=True,
                         description="PCR-verified positives and every negative."),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Set manual_dir to a copy of the covid19-cough/dataset release: the folder with "
      "metadata.json and raw/<uuid>.mp3.")

  def _manifest(self, root: pathlib.Path) -> list[Recording]:
    cfg = self.builder_config
    return covid19_cough.manifest(root, source_filter=cfg.source_filter,
                                  verified_only=cfg.verified_only)


def to_recordings(source: Sequence[dict[str, Any]]
                  ) -> tuple[list[Recording], list[np.ndarray]]:
  """The examples of a data source as coughjax Recordings and their [T, mel] features,
  ready for `coughjax.data.splits` and the batch pipelines."""
  records, feats = [], []
  for example in source:
    text = {k: _text(example[k]) for k in ("path", "participant_id", "sound")}
    label = int(example["label"])
    records.append(Recording(text["path"], text["participant_id"], text["sound"],
                             None if label == UNLABELLED else label,
                             _text(example.get("stratum", b""))))
    feats.append(np.asarray(example["features"], np.float32))
  return records, feats


def _text(value) -> str:
  return value.decode() if isinstance(value, bytes) else str(value)
