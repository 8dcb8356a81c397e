"""Config files and 'key=value' overrides for commands that build many configs
(`coughjax.reproduce`, `coughjax.protocol`, `coughjax.studies`)."""

from __future__ import annotations

from typing import Iterable

_BOOLS = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}


def config_modules():
  """(coughjax.configs.pretrain, coughjax.configs.downstream)."""
  from coughjax.configs import downstream  # pylint: disable=g-import-not-at-top
  from coughjax.configs import pretrain  # pylint: disable=g-import-not-at-top
  return pretrain, downstream


def apply_overrides(config, assignments: Iterable[str]) -> None:
  """'data.root=/x' style overrides, typed like the field they replace.

  Raises:
    ValueError naming the override: not key=value, no such field, or a value that
      the field's type does not take.
  """
  for item in assignments:
    key, sep, value = item.partition("=")
    if not sep:
      raise ValueError(f"override {item!r} is not key=value")
    *path, leaf = key.split(".")
    target = config
    for p in path + [leaf]:
      if not hasattr(target, "keys") or p not in target:
        raise ValueError(f"override {item!r}: the config has no field {key!r}")
      parent, target = target, target[p]
    current = target
    if isinstance(current, bool):
      if value.lower() not in _BOOLS:
        raise ValueError(f"override {item!r}: {key} takes true or false")
      parent[leaf] = _BOOLS[value.lower()]
    elif isinstance(current, tuple):
      parent[leaf] = tuple(v for v in value.split(",") if v)
    else:
      try:
        parent[leaf] = type(current)(value)
      except (TypeError, ValueError) as e:
        raise ValueError(f"override {item!r}: {key} takes {type(current).__name__} values "
                         f"({e})") from None
