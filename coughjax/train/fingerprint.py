"""A workdir belongs to one config: its fingerprint, and the refusal of another config.

A run records the config it resolved in its workdir: `config.json` (the whole
config, which `coughjax.predict` and a -CP downstream run read) and
`fingerprint.json`, the config less the keys a rerun may change (`EXTENDABLE`)
with its SHA-256. A rerun into a workdir that holds training (a checkpoint, in the
workdir or in a folder of it such as a downstream `run_i`) must have the same
fingerprint; otherwise `check` refuses it before any work, naming each key that
differs, and neither file is rewritten. So `launch.py`'s default workdir
(runs/<variant>, whatever the overrides) can never continue, report or overwrite
the run of another config.

A workdir written before fingerprints were recorded is compared with its
`config.json`. A workdir whose earlier run stopped before its first checkpoint (a
wrong data path, say) holds no training: the next run claims it afresh.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
from typing import Any

import jax

from coughjax import files

CONFIG_FILE = "config.json"
FINGERPRINT_FILE = "fingerprint.json"

# The keys a rerun may change in a workdir: they extend a run, or change how it is
# logged, checkpointed or split into work, never the numbers it computes. Every
# other key (data, features, model, optimiser, seeds, batch sizes, ...) is part of
# the fingerprint.
EXTENDABLE = (
    "num_epochs",               # more epochs extend a finished run (fewer end it)
    "early_stopping_patience",  # the run up to a stop does not depend on it
    "num_runs",                 # downstream: more seeds add run_i folders
    "log_every_steps", "checkpoint_every_steps", "keep_checkpoints",
    "data.workers",             # feature-building processes
    # How a batch is split into chunks (models.chunking, models.platform): masks
    # and dropout are drawn per clip, so the values do not change.
    "model.chunk_size", "model.eval_chunk_size", "model.remat",
    "model.gru.eval_unroll", "model.gru.eval_streams",
    # How one program steps its runs (train.many): batched or one after another,
    # the same numbers up to float rounding.
    "runs_impl",
)


_ABSENT = object()
_SHOWN = 6  # differing keys shown with both values (the others by name)


class WorkdirConfigError(ValueError):
  """A workdir holding the training of another config."""


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  """{"model.mask_rate": 0.5, ...}: a nested JSON object's leaves by dotted key."""
  if not isinstance(tree, dict):
    return {prefix: tree}
  out = {}
  for key, value in tree.items():
    out.update(flatten(value, f"{prefix}.{key}" if prefix else key))
  return out


def fingerprint(config) -> dict[str, Any]:
  """{"sha256": ..., "config": {dotted key: value}}: the config (as its JSON) less
  the `EXTENDABLE` keys."""
  resolved = json.loads(config.to_json_best_effort())
  kept = {k: v for k, v in sorted(flatten(resolved).items()) if k not in EXTENDABLE}
  digest = hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()
  return {"sha256": digest, "config": kept}


def holds_training(workdir: pathlib.Path) -> bool:
  """Whether `workdir`, or a folder in it (a downstream run_i), has a checkpoint."""
  return any(any(workdir.glob(pattern)) for pattern in (
      "checkpoints/*", "best/*", "*/checkpoints/*", "*/best/*"))


def _recorded(workdir: pathlib.Path) -> dict[str, Any] | None:
  """The fingerprinted config recorded in `workdir` (for a workdir from before
  fingerprints, its config.json less the extendable keys), or None."""
  path = workdir / FINGERPRINT_FILE
  if path.is_file():
    saved = files.read_json(path, "the workdir's config fingerprint", required=("config",))
    return saved["config"]
  path = workdir / CONFIG_FILE
  if path.is_file():
    saved = files.read_json(path, "the run's config")
    return {k: v for k, v in flatten(saved).items() if k not in EXTENDABLE}
  return None


def check(config, workdir: str | pathlib.Path) -> None:
  """Refuses a workdir holding the training of another config; writes nothing.

  Raises:
    WorkdirConfigError: naming each key that differs (beyond `EXTENDABLE`).
  """
  workdir = pathlib.Path(workdir)
  saved = _recorded(workdir)
  if saved is None or not holds_training(workdir):
    return
  want = fingerprint(config)["config"]
  # Keys that became extendable since the workdir was recorded are compared no more.
  differ = sorted(k for k in set(saved) | set(want)
                  if k not in EXTENDABLE and saved.get(k, _ABSENT) != want.get(k, _ABSENT))
  if not differ:
    return
  shown = "; ".join(f"{k} is {_show(want, k)} here, {_show(saved, k)} there"
                    for k in differ[:_SHOWN])
  more = f"; and {', '.join(differ[_SHOWN:])}" if len(differ) > _SHOWN else ""
  raise WorkdirConfigError(
      f"{workdir} holds the training of another config: {shown}{more}. A workdir "
      "belongs to one config (a rerun may change only num_epochs, early stopping, "
      "logging, checkpointing and chunking: coughjax.train.fingerprint.EXTENDABLE); "
      "train this config in a new --workdir, or rerun with the workdir's config "
      f"({workdir / CONFIG_FILE}).")


def _show(flat: dict[str, Any], key: str) -> str:
  return json.dumps(flat[key]) if key in flat else "absent"


def record(config, workdir: str | pathlib.Path) -> None:
  """Writes `config.json` and `fingerprint.json` into `workdir` (process 0 only),
  each whole or not at all. Call after `check` accepted the workdir."""
  if jax.process_index() != 0:
    return
  workdir = pathlib.Path(workdir)
  text = config.to_json_best_effort(indent=2) + "\n"
  files.atomic_write(workdir / CONFIG_FILE, lambda f: f.write(text.encode()))
  blob = json.dumps(fingerprint(config), indent=1) + "\n"
  files.atomic_write(workdir / FINGERPRINT_FILE, lambda f: f.write(blob.encode()))
