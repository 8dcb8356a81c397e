"""One validation pass over a training config, before any data is loaded or written.

`check(config, num_devices)` runs first in `coughjax.train.run.run`: every value that
training would otherwise reject late (after loading and packing the data, writing
`config.json`, training an epoch) or not at all (a negative learning rate trains,
diverging) is checked here, and all problems are reported at once, each naming its
key and the allowed values:

  config.batch_size=-8: must be an integer >= 1
  config.model.mask_rate=1.5: must be a finite number in [0, 1]

Only keys the config has are checked (configs of older workdirs may lack some).
`num_epochs = 0` is valid: it builds the data only (features and packs, see
`run.run`), trains nothing and writes nothing to the workdir.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Optional, Sequence

import numpy as np

from coughjax import data as data_lib
from coughjax import models
from coughjax.configs import downstream as downstream_configs
from coughjax.data import covid19_cough
from coughjax.data import coswara
from coughjax.data import covid19_sounds
from coughjax.data import features as features_lib
from coughjax.models import heads
from coughjax.models import platform
from coughjax.models import transformer
from coughjax.train import augment

TASKS = ("pretrain", "downstream")
INITS = ("scratch", "cp", "audioset")
# Encoder fields by kind (every registered encoder's sub-config is checked by name).
_SIZES = ("d_model", "num_layers", "num_heads", "mlp_dim", "embedding_dim")
# ... and those that may also be "auto" (`models.platform.settings`).
_AUTO_SIZES = ("eval_unroll", "eval_streams")
# Sources that read a folder (`data.root`).
_NEEDS_ROOT = ("coswara", "covid19_sounds", "covid19_cough")
_MISSING = object()


class ConfigError(ValueError):
  """A config with values training cannot use; the message lists each key."""


class _Checker:
  """Collects problems as 'config.<key>=<value>: <what is allowed>' lines."""

  def __init__(self, config):
    self.config = config
    self.problems: list[str] = []

  def get(self, key: str) -> Any:
    node = self.config
    for part in key.split("."):
      if not hasattr(node, "keys") or part not in node:
        return _MISSING
      node = node[part]
    return node

  def fail(self, key: str, allowed: str) -> None:
    self.problems.append(f"config.{key}={self.get(key)!r}: {allowed}")

  def integer(self, key: str, low: int, note: str = "") -> Optional[int]:
    value = self.get(key)
    if value is _MISSING:
      return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or (
        value < low):
      self.fail(key, f"must be an integer >= {low}{note}")
      return None
    return int(value)

  def number(self, key: str, low: float, high: float = math.inf, *,
             low_open: bool = False, high_open: bool = False) -> None:
    value = self.get(key)
    if value is _MISSING:
      return
    ok = (not isinstance(value, (bool, np.bool_)) and isinstance(value, (int, float, np.number))
          and math.isfinite(value)
          and (value > low if low_open else value >= low)
          and (value < high if high_open else value <= high))
    if not ok:
      interval = (f"{'(' if low_open else '['}{low:g}, "
                  f"{'inf)' if high == math.inf else f'{high:g}' + (')' if high_open else ']')}")
      self.fail(key, f"must be a finite number in {interval}")

  def choice(self, key: str, choices: Sequence[Any]) -> None:
    value = self.get(key)
    if value is not _MISSING and value not in choices:
      self.fail(key, f"must be one of {', '.join(repr(c) for c in choices)}")

  def boolean(self, key: str) -> None:
    value = self.get(key)
    if value is not _MISSING and not isinstance(value, (bool, np.bool_)):
      self.fail(key, "must be true or false")

  def auto_or_int(self, key: str, low: int) -> None:
    value = self.get(key)
    if value is not _MISSING and not platform.is_auto(value):
      self.integer(key, low, " or 'auto'")

  def multiple_of(self, key: str, devices: int) -> None:
    value = self.get(key)
    if isinstance(value, (int, np.integer)) and value >= 1 and value % devices:
      self.fail(key, f"must be a multiple of the {devices} devices (each takes an equal "
                     "share of the batch)")


def check(config, num_devices: int = 1) -> None:
  """Checks `config` for `coughjax.train.run.run` on `num_devices` devices.

  Raises:
    ConfigError listing every key with a value outside its allowed range.
  """
  c = _Checker(config)
  c.choice("task", TASKS)
  task = c.get("task")
  _loop(c, task, num_devices)
  _optim(c)
  _model(c, task)
  _features(c)
  _augment(c)
  _data(c)
  if c.problems:
    raise ConfigError(f"{len(c.problems)} invalid config value(s); nothing was loaded or "
                      "written:\n  " + "\n  ".join(c.problems))


def _loop(c: _Checker, task, num_devices: int) -> None:
  c.integer("batch_size", 1)
  c.multiple_of("batch_size", num_devices)
  c.integer("eval_batch_size", 1)
  if task == "downstream":
    c.multiple_of("eval_batch_size", num_devices)
    c.integer("num_runs", 1)
    c.choice("runs_impl", (platform.AUTO,) + platform.RUNS_IMPLS)
    c.number("threshold", 0, 1)
    c.choice("monitor", ("loss", "auc"))
  elif isinstance(c.get("eval_batch_size"), int) and 1 <= c.get("eval_batch_size") < (
      num_devices):
    # Pre-training rounds its validation batch down to a multiple of the devices.
    c.fail("eval_batch_size", f"must be at least the {num_devices} devices")
  c.integer("num_epochs", 0, " (0 builds the data only and trains nothing)")
  c.integer("passes_per_epoch", 1)
  c.integer("early_stopping_patience", 0, " (0 = off)")
  c.integer("log_every_steps", 1)
  c.integer("checkpoint_every_steps", 1)
  c.integer("keep_checkpoints", 1)


def _optim(c: _Checker) -> None:
  c.number("optim.learning_rate", 0, low_open=True)
  c.number("optim.grad_clip", 0)
  c.number("optim.plateau_factor", 0, 1, low_open=True, high_open=True)
  c.integer("optim.plateau_patience", 0)
  c.number("optim.plateau_rtol", 0, 1, high_open=True)
  c.integer("optim.plateau_cooldown", 0)
  c.number("optim.min_lr_scale", 0, 1)


def _model(c: _Checker, task) -> None:
  c.number("model.mask_rate", 0, 1)
  c.boolean("model.mask_at_eval")
  c.choice("model.dtype", ("float32", "bfloat16"))
  c.number("model.head_dropout", 0, 1, high_open=True)
  c.integer("model.proj_dim", 1)
  c.choice("model.similarity", heads.SIMILARITIES)
  c.number("model.temperature", 0, low_open=True)
  c.auto_or_int("model.chunk_size", 0)
  c.auto_or_int("model.eval_chunk_size", 0)
  remat = c.get("model.remat")
  if remat is not _MISSING and not platform.is_auto(remat):
    c.boolean("model.remat")
  c.choice("model.attention_impl", (platform.AUTO,) + transformer.ATTENTION_IMPLS)
  c.choice("model.dropout_impl", (platform.AUTO,) + transformer.DROPOUT_IMPLS)
  model = c.get("model")
  if model is _MISSING:
    return
  for name in models.names():
    if name not in model:
      continue
    try:
      models.encoder_config(model, name)  # fields the encoder does not have
    except ValueError as e:
      c.problems.append(f"config.model.{name}: {e}")
    for field in _SIZES:
      c.integer(f"model.{name}.{field}", 1)
    c.number(f"model.{name}.dropout", 0, 1, high_open=True)
    c.choice(f"model.{name}.pooling", transformer.POOLINGS)
    for field in _AUTO_SIZES:
      c.auto_or_int(f"model.{name}.{field}", 1)
  d, heads_ = c.get("model.transformer.d_model"), c.get("model.transformer.num_heads")
  if (isinstance(d, int) and isinstance(heads_, int) and d >= 1 and heads_ >= 1
      and d % heads_):
    c.fail("model.transformer.num_heads", f"must divide model.transformer.d_model={d}")
  if task == "pretrain":
    c.choice("model.name", models.names())
  elif task == "downstream":
    _branches(c)


def _branches(c: _Checker) -> None:
  for key in downstream_configs.BRANCHES:
    name = c.get(f"{key}.name")
    if name is _MISSING:
      continue
    if key == downstream_configs.BRANCHES[0] or name:
      c.choice(f"{key}.name", models.names())
    if not name:
      continue
    c.choice(f"{key}.init", INITS)
    c.boolean(f"{key}.frozen")
    init = c.get(f"{key}.init")
    if init == "audioset" and (name != "vggish" or not c.get(f"{key}.checkpoint")):
      c.fail(f"{key}.init", "'audioset' needs name='vggish' and a checkpoint folder "
                            "(python -m coughjax.models.vggish_convert)")
    if init == "cp" and not (c.get(f"{key}.pretrain") or c.get(f"{key}.checkpoint")):
      c.fail(f"{key}.init", "'cp' needs a pre-training variant (pretrain) or workdir "
                            "(checkpoint)")


def _features(c: _Checker) -> None:
  for key in ("sample_rate", "nfilt", "clip_frames", "train_hop", "eval_hop"):
    c.integer(f"features.{key}", 1)
  c.integer("features.nfft", 0, " (0 = the smallest power of two covering the window)")
  c.number("features.winlen", 0, low_open=True)
  c.number("features.winstep", 0, low_open=True)
  c.number("features.preemph", 0, 1)
  c.number("features.min_duration", 0)
  c.choice("features.normalise", features_lib.NORMALISATIONS)


def _augment(c: _Checker) -> None:
  section = c.get("augment")
  if section is _MISSING:
    return
  fields = {f.name for f in dataclasses.fields(augment.Augment)}
  for key in sorted(set(section) - fields):
    c.fail(f"augment.{key}", f"unknown field; augment has {', '.join(sorted(fields))}")
  c.number("augment.gain_db", 0)
  for count, width, size, unit in (("time_masks", "time_mask_width", "clip_frames", "frames"),
                                   ("freq_masks", "freq_mask_width", "nfilt", "bands")):
    masks, value = c.integer(f"augment.{count}", 0), c.integer(f"augment.{width}", 0)
    limit = c.get(f"features.{size}")
    if value is not None and isinstance(limit, int):
      problem = augment.mask_problem(masks or 0, value, limit, unit)
      if problem:
        c.fail(f"augment.{width}", f"{problem} (features.{size}={limit})")


def _data(c: _Checker) -> None:
  name = c.get("data.name")
  if name is _MISSING:
    return
  names = str(name).split(data_lib.SEPARATOR)
  unknown = [n for n in names if n not in data_lib.SOURCES]
  if unknown or not isinstance(name, str):
    c.fail("data.name", f"must be one of {', '.join(data_lib.SOURCES)}, or several joined "
                        f"by {data_lib.SEPARATOR!r}")
    return
  split = c.get("data.split")
  if split is not _MISSING:
    values = np.asarray(split, dtype=object).ravel()
    if (len(values) != 3 or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                    and v >= 0 for v in values)
        or not np.isclose(float(sum(values)), 1)):
      c.fail("data.split", "must be 3 fractions >= 0 (train, val, test) summing to 1")
  c.integer("data.workers", 0, " (0 = all cores)")
  c.integer("data.split_seed", 0)
  folds = c.get("data.folds")
  if folds not in (_MISSING, ""):
    if not isinstance(folds, str) or not os.path.isfile(folds):
      c.fail("data.folds", "must be '' or an existing folds file (coughjax.protocol)")
    c.integer("data.fold", 0)
    c.integer("data.fold_repeat", 0)
  dedup = c.get("data.dedup")
  if dedup is not _MISSING:
    try:
      data_lib.dedup_enabled(c.config.data)
    except ValueError as e:
      c.fail("data.dedup", str(e))
  if len(names) > 1:
    try:
      data_lib.parse_roots(c.get("data.roots") or "")
    except ValueError as e:
      c.fail("data.roots", str(e))
  if "synthetic" in names:
    c.integer("data.num_participants", 1)
  if len(names) == 1 and name in _NEEDS_ROOT:
    root = c.get("data.root")
    if not root:
      c.fail("data.root", f"data.name={name!r} needs the folder of its data")
    elif not os.path.isdir(root):
      c.fail("data.root", "must be an existing folder")
  if names == ["manifest"] and not c.get("data.manifest"):
    c.fail("data.manifest", "data.name='manifest' needs the path of a CSV manifest")
  if names == ["coswara"]:
    c.choice("data.label", ("",) + coswara.LABELS)
  if names == ["covid19_cough"]:
    c.choice("data.label", ("",) + covid19_cough.LABELS)
  if "covid19_cough" in names:
    c.choice("data.source_filter", ("",) + covid19_cough.SOURCES)
  if "covid19_sounds" in names:
    c.choice("data.task", tuple(covid19_sounds.TASKS))


def check_classes(labels: np.ndarray, split: str, config, where: str = "") -> None:
  """Refuses a downstream split without both classes, once its data is loaded and
  before any training: the validation split's ROC-AUC (logged every epoch, the
  monitor with `config.monitor="auc"`) and the thresholds chosen on it are undefined
  with one class.

  Args:
    labels: [recordings] 0/1 labels of the split.
    split: its name ("val").
    config: the run's config (its data keys are named in the message).
    where: what runs it, for the message (e.g. "ensemble/run_1").

  Raises:
    ConfigError naming the split, its counts and what to change.
  """
  labels = np.asarray(labels)
  pos, neg = int(np.sum(labels == 1)), int(np.sum(labels == 0))
  if pos and neg:
    return
  d = config.data
  fold = (f", data.fold={d.fold} of data.folds={d.folds}" if d.get("folds") else "")
  raise ConfigError(
      f"{where + ': ' if where else ''}the {split} split has {pos} positive and {neg} "
      f"negative recordings (data.name={d.name!r}, data.split={tuple(d.split)}, "
      f"data.split_seed={d.split_seed}{fold}); its ROC-AUC needs both classes. Give "
      "it more participants: a larger validation "
      "fraction in data.split, another data.split_seed, or more data.")
