"""Config files and 'key=value' overrides for commands that build many configs
(`coughjax.reproduce`, `coughjax.protocol`, `coughjax.studies`)."""

from __future__ import annotations

import pathlib
import sys
from typing import Iterable


def config_modules():
  """(configs.pretrain, configs.downstream): the config files beside the package."""
  root = str(pathlib.Path(__file__).resolve().parents[1])
  if root not in sys.path:
    sys.path.insert(0, root)
  from configs import downstream  # pylint: disable=g-import-not-at-top
  from configs import pretrain  # pylint: disable=g-import-not-at-top
  return pretrain, downstream


def apply_overrides(config, assignments: Iterable[str]) -> None:
  """'data.root=/x' style overrides, typed like the field they replace."""
  for item in assignments:
    key, sep, value = item.partition("=")
    if not sep:
      raise ValueError(f"override {item!r} is not key=value")
    *path, leaf = key.split(".")
    target = config
    for p in path:
      if p not in target:
        raise KeyError(f"override {item!r}: the config has no field {key!r}")
      target = target[p]
    if leaf not in target:
      raise KeyError(f"override {item!r}: the config has no field {key!r}")
    current = target[leaf]
    if isinstance(current, bool):
      target[leaf] = value.lower() in ("1", "true", "yes")
    elif isinstance(current, tuple):
      target[leaf] = tuple(v for v in value.split(",") if v)
    else:
      target[leaf] = type(current)(value)
