"""Platform defaults: model settings of "auto" resolved for the backend being compiled for.

coughjax was tuned on a 2-core CPU, where memory traffic rather than FLOPs bounds the
encoder. Its best settings there (16-clip chunks with per-chunk remat, heads-major
einsum attention, hash-based dropout bits; see `chunking` and `cpu_kernels`) would
serialise a GPU or TPU step into many small calls and recompute each of them. Settings
that depend on the platform therefore default to "auto" and are resolved at trace time
from `jax.default_backend()`, the platform `jax.jit` and `jax.pmap` compile for unless
told otherwise; an explicit value in the config pins a setting on every platform.
"""

from __future__ import annotations

from typing import Optional, TypeVar

import jax

AUTO = "auto"
T = TypeVar("T")


def backend(platform: Optional[str] = None) -> str:
  """`platform` (lower-cased) or, if None, `jax.default_backend()`: 'cpu', 'gpu', 'tpu'."""
  return (platform or jax.default_backend()).lower()


def on_cpu(platform: Optional[str] = None) -> bool:
  """Whether `platform` (default: jax's default backend) is the CPU; any other backend
  (gpu, tpu, a plugin) counts as an accelerator."""
  return backend(platform) == "cpu"


def is_auto(value) -> bool:
  return isinstance(value, str) and value == AUTO


def resolve(value: T | str, *, cpu: T, accelerator: T,
            platform: Optional[str] = None) -> T:
  """`value`, or for "auto" the platform default: `cpu` on CPU, `accelerator` elsewhere.

  Args:
    value: a config value: "auto" or an explicit setting, returned as is.
    cpu: the CPU default.
    accelerator: the GPU/TPU default.
    platform: 'cpu', 'gpu', 'tpu'; None = `jax.default_backend()`.
  """
  if not is_auto(value):
    return value
  return cpu if on_cpu(platform) else accelerator
