"""Encoders by name: `config.model.name` -> a Flax module class, and its settings.

A model config keeps each encoder's own settings in a sub-config named after it
(`config.model.transformer.dropout`, `config.model.vggish.dropout`, ...; see
configs/common.py) and a few fields shared by every encoder that declares them
(`SHARED_FIELDS`). `encoder_config` resolves the two into one encoder's keyword
arguments, so that a setting of one encoder never reaches another.
"""

import dataclasses
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax.numpy as jnp

_ENCODERS: dict[str, type[nn.Module]] = {}
# Model-level fields that every encoder declaring them takes (the Transformer's random
# key masking, the compute dtype); everything else comes from the encoder's sub-config.
SHARED_FIELDS = ("mask_rate", "mask_at_eval", "dtype", "attention_impl", "dropout_impl")


def register(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
  """Class decorator: makes an encoder available as `config.model.name = name`."""

  def wrap(cls):
    if name in _ENCODERS:
      raise ValueError(f"encoder {name!r} registered twice")
    _ENCODERS[name] = cls
    return cls

  return wrap


def names() -> list[str]:
  return sorted(_ENCODERS)


def encoder_class(name: str) -> type[nn.Module]:
  try:
    return _ENCODERS[name]
  except KeyError:
    raise ValueError(f"unknown encoder {name!r}; known: {', '.join(names())}") from None


def registered_name(encoder: nn.Module | type[nn.Module]) -> str:
  """The name an encoder (module or class) is registered under."""
  cls = encoder if isinstance(encoder, type) else type(encoder)
  for name, registered in _ENCODERS.items():
    if registered is cls:
      return name
  raise ValueError(f"{cls.__name__} is not a registered encoder; known: {', '.join(names())}")


def compute_dtype(dtype: Any) -> Any:
  """'float32' / 'bfloat16' (as configs spell it) -> the jnp dtype; dtypes pass."""
  if not isinstance(dtype, str):
    return dtype
  try:
    return {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[dtype]
  except KeyError:
    raise ValueError(f"model.dtype must be 'float32' or 'bfloat16', got {dtype!r}") from None


def fields(cls: type[nn.Module]) -> set[str]:
  """The configurable dataclass fields of an encoder class."""
  return {f.name for f in dataclasses.fields(cls)} - {"parent", "name"}


def encoder_config(model_cfg: Mapping[str, Any], name: str) -> dict[str, Any]:
  """The resolved settings of encoder `name` from a model config.

  Args:
    model_cfg: `config.model`: a sub-config per encoder (`model_cfg[name]`, e.g.
      {"d_model": 64, "dropout": 0.2}) and the `SHARED_FIELDS`.
    name: a registered encoder.

  Returns:
    {"name": name, **shared fields the encoder declares, **model_cfg[name]} (the
    encoder's own sub-config wins), JSON-serialisable: `build_encoder` takes it.

  Raises:
    ValueError: the sub-config is missing or sets a field the encoder does not have.
  """
  cls = encoder_class(name)
  declared = fields(cls)
  if name not in model_cfg:
    raise ValueError(f"model config has no settings for encoder {name!r} "
                     f"(expected a sub-config model.{name} with fields of "
                     f"{cls.__name__}: {sorted(declared)})")
  own = dict(model_cfg[name])
  unknown = set(own) - declared
  if unknown:
    raise ValueError(f"model.{name} sets {sorted(unknown)}, which {cls.__name__} does not "
                     f"have; its fields are {sorted(declared)}")
  shared = {k: model_cfg[k] for k in SHARED_FIELDS if k in declared and k in model_cfg}
  return {"name": name, **shared, **own}


def build_encoder(cfg: Mapping[str, Any]) -> nn.Module:
  """Instantiates `cfg['name']` with the fields of `cfg` that the encoder declares.

  `cfg` is normally `encoder_config`'s result. Fields the encoder does not declare
  are ignored, so that workdirs written before per-encoder configs (a flat dict of
  every encoder's fields) still load; a dtype may be given by name.
  """
  cls = encoder_class(cfg["name"])
  kwargs = {k: v for k, v in cfg.items() if k in fields(cls)}
  if "dtype" in kwargs:
    kwargs["dtype"] = compute_dtype(kwargs["dtype"])
  return cls(**kwargs)
