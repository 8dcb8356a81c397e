"""Platform defaults: model settings of "auto" resolved for the backend being compiled for.

coughjax was tuned on a 2-core CPU, where memory traffic rather than FLOPs bounds the
encoder. Its best settings there (16-clip chunks with per-chunk remat, heads-major
einsum attention, hash-based dropout bits; see `chunking` and `cpu_kernels`) would
serialise a GPU or TPU step into many small calls and recompute each of them. Settings
that depend on the platform therefore default to "auto" and are resolved at trace time
for the platform being compiled for: `jax.default_backend()`, the platform `jax.jit`
and `jax.pmap` compile for, unless a `target` context names another (what
`coughjax.export` does to lower for its `--platforms`, or for ONNX). An explicit value
in the config pins a setting on every platform.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator, Optional, TypeVar

import jax

AUTO = "auto"
T = TypeVar("T")
_TARGET: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar(
    "coughjax_platform_target", default=None)


@contextlib.contextmanager
def target(platform: str) -> Iterator[None]:
  """Resolves "auto" settings for `platform` ('cpu', 'cuda', 'rocm', 'tpu', ...)
  instead of `jax.default_backend()` while active.

  Settings are resolved when a model is traced, so trace under this context: the
  program then runs on `platform` what "auto" picks there, whatever machine traces it.
  """
  token = _TARGET.set(platform)
  try:
    yield
  finally:
    _TARGET.reset(token)


def backend(platform: Optional[str] = None) -> str:
  """`platform` (lower-cased) or, if None, the `target` being traced for, else
  `jax.default_backend()`: 'cpu', 'gpu', 'cuda', 'tpu', ..."""
  return (platform or _TARGET.get() or jax.default_backend()).lower()


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
    platform: 'cpu', 'gpu', 'tpu'; None = `backend()`.
  """
  if not is_auto(value):
    return value
  return cpu if on_cpu(platform) else accelerator
