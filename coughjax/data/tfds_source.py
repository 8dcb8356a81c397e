"""A TFDS build of log-mel features (`coughjax.data.tfds_builders`) as a data source.

    --config.data.name=tfds --config.data.tfds_name=coswara/pretrain \
    --config.data.tfds_dir=/data/tfds [--config.data.tfds_split=train]

`tfds_name` is "<dataset>/<config>" or "<dataset>/<config>:<version>" (default: the
newest version in the folder), as built by `tfds_builders` (`coswara/pretrain`,
`coswara/all`, `covid19_sounds/task1_cough`, ..., or a custom config's name). The
build is opened from its folder alone (`tfds.builder_from_directory`: no builder
class, no TensorFlow; array_record read by random access with TFDS's numpy parser).

The build holds the sounds its config chose; `config.data.sounds` does not apply.
Its recordings go through the same participant splits as every other source, and its
features -- exactly those the build stored -- are streamed once into a pack
(`coughjax.data.packed`, keyed by the build's folder and files), which training
memory-maps. The build's feature parameters must be those of `config.features`.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Iterator

from absl import logging

from coughjax.data import packed as packed_lib
from coughjax.data.features import FeatureParams
from coughjax.data.manifest import Recording

UNLABELLED = -1
_READ_BATCH = 256  # examples per array_record read


def _tfds():
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("data.name='tfds' needs TensorFlow Datasets (not TensorFlow): "
                      "pip install 'coughjax[data]'") from e
  return tfds


def build_dir(cfg) -> pathlib.Path:
  """The folder of the build that `cfg.tfds_name` names under `cfg.tfds_dir`."""
  if not cfg.get("tfds_name") or not cfg.get("tfds_dir"):
    raise ValueError("data.name='tfds' needs --config.data.tfds_name=<dataset>/<config> "
                     "(e.g. coswara/pretrain) and --config.data.tfds_dir=<data_dir>")
  name, _, version = cfg.tfds_name.partition(":")
  folder = pathlib.Path(cfg.tfds_dir).expanduser() / name
  if version:
    found = folder / version
  else:
    versions = sorted((p for p in folder.glob("*") if (p / "dataset_info.json").exists()),
                      key=lambda p: tuple(int(x) for x in p.name.split(".")
                                          if x.isdigit()))
    found = versions[-1] if versions else folder / "?"
  if not (found / "dataset_info.json").exists():
    raise FileNotFoundError(f"{found}: no TFDS build of {cfg.tfds_name!r} under "
                            f"{cfg.tfds_dir} (build it with coughjax.data.tfds_builders)")
  return found.resolve()


def _source(cfg, decoders=None):
  tfds = _tfds()
  builder = tfds.builder_from_directory(str(build_dir(cfg)))
  split = cfg.get("tfds_split", "train") or "train"
  return builder, builder.as_data_source(split=split, decoders=decoders)


def _record(example: dict[str, Any]) -> Recording:
  text = {k: (v.decode() if isinstance(v, bytes) else str(v))
          for k, v in ((k, example[k]) for k in ("path", "participant_id", "sound"))}
  label = int(example["label"])
  stratum = example.get("stratum", b"")  # builds before version 1.1.1 have none
  return Recording(text["path"], text["participant_id"], text["sound"],
                   None if label == UNLABELLED else label,
                   stratum.decode() if isinstance(stratum, bytes) else str(stratum))


def _examples(source) -> Iterator[dict[str, Any]]:
  for start in range(0, len(source), _READ_BATCH):
    yield from source.__getitems__(range(start, min(start + _READ_BATCH, len(source))))


def from_config(cfg) -> list[Recording]:
  """The build's recordings (text fields only: the features are not decoded)."""
  tfds = _tfds()
  _, source = _source(cfg, decoders={"features": tfds.decode.SkipDecoding()})
  return [_record(e) for e in _examples(source)]


def check_params(builder, params: FeatureParams) -> None:
  built = builder.info.metadata.get("feature_params") if builder.info.metadata else None
  if built is not None and built != dataclasses.asdict(params):
    diff = {k: (built.get(k), v) for k, v in dataclasses.asdict(params).items()
            if built.get(k) != v}
    raise ValueError(f"{builder.data_dir}: built with other feature parameters than "
                     f"config.features; (built, configured): {diff}")


def pack(cfg, params: FeatureParams, clip_frames: int) -> packed_lib.Packed:
  """The build's recordings and features as a pack (written on first use).

  The pack's `records` are the build's recordings in the build's order.
  """
  builder, source = _source(cfg)
  check_params(builder, params)
  folder = pathlib.Path(builder.data_dir)
  split = cfg.get("tfds_split", "train") or "train"
  files = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns)
                 for p in folder.glob(f"*-{split}.*"))
  key = "tfds-" + packed_lib.digest("tfds", str(folder), split, files, clip_frames)
  found = packed_lib.open_pack(key)
  if found is None:
    logging.info("%s: packing %d examples of %s (split %s)", cfg.tfds_name,
                 len(source), folder, split)
    records: list[Recording] = []

    def arrays():
      for example in _examples(source):
        records.append(_record(example))
        yield example["features"]

    # write_pack reads `records` after it has drained `arrays`, so it is complete.
    packed_lib.write_pack(key, arrays(), clip_frames, records=records,
                          meta={"kind": "TFDS build", "corpus": cfg.tfds_name,
                                "source": f"{folder} (split {split})",
                                "feature_params": dataclasses.asdict(params),
                                "params_key": params.key(), "clip_frames": clip_frames})
    found = packed_lib.open_pack(key)
  logging.info("%s: %d recordings (%d frames) packed from %s", cfg.tfds_name,
               len(found.records), len(found.frames), folder)
  return found


def stores_for(found: packed_lib.Packed, parts: dict[str, list[Recording]], needed):
  """{split: ClipStore} views of one pack, each split's recordings in split order."""
  index = {r: i for i, r in enumerate(found.records)}
  return {name: found.store(parts[name], [index[r] for r in parts[name]])
          for name in needed}
