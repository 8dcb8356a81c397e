"""Encoders by name: `config.model.name` -> a Flax module class."""

import dataclasses
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax.numpy as jnp

_ENCODERS: dict[str, type[nn.Module]] = {}


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


def compute_dtype(dtype: Any) -> Any:
  """'float32' / 'bfloat16' (as configs spell it) -> the jnp dtype; dtypes pass."""
  if not isinstance(dtype, str):
    return dtype
  try:
    return {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[dtype]
  except KeyError:
    raise ValueError(f"model.dtype must be 'float32' or 'bfloat16', got {dtype!r}") from None


def build_encoder(cfg: Mapping[str, Any]) -> nn.Module:
  """Instantiates `cfg['name']` with the fields of `cfg` that the encoder declares.

  A flat model config can thus carry the fields of every encoder (d_model, mask_rate,
  ...) and each encoder takes what it understands; a dtype may be given by name.
  """
  cls = encoder_class(cfg["name"])
  fields = {f.name for f in dataclasses.fields(cls)} - {"parent", "name"}
  kwargs = {k: v for k, v in cfg.items() if k in fields}
  if "dtype" in kwargs:
    kwargs["dtype"] = compute_dtype(kwargs["dtype"])
  return cls(**kwargs)
