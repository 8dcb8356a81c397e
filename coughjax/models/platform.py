"""Platform defaults: model settings of "auto" resolved for the backend being compiled for.

coughjax was tuned on a 2-core CPU, where memory traffic rather than FLOPs bounds the
encoder. Its best settings there (16-clip chunks with per-chunk remat, heads-major
einsum attention, hash-based dropout bits; see `chunking`, `cpu_kernels` and
`randomness`) would serialise a GPU or TPU step into many small calls and recompute
each of them. Settings that depend on the platform therefore default to "auto" and
are resolved at trace time for the platform being compiled for:
`jax.default_backend()`, the platform `jax.jit` compiles for, unless a
`target` context names another (what `coughjax.export` does to lower for its
`--platforms`, or for ONNX). An explicit value in the config pins a setting on every
platform.

What "auto" becomes is kept in one small registry, `settings(encoder, platform)`:
on GPU/TPU the same for every encoder (`ACCELERATOR`: the whole batch, jax's own
kernels), on CPU each encoder's measured preference (`CPU`, by registered encoder
name; the measurements are in benchmarks/README.md).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from typing import Iterator, Optional, TypeVar

import jax

AUTO = "auto"
RUNS_IMPLS = ("map", "vmap")  # `Settings.runs`
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


@dataclasses.dataclass(frozen=True)
class Settings:
  """What an encoder's "auto" settings resolve to on one kind of platform.

  Attributes:
    train_chunk: clips per chunk of a train step (`model.chunk_size`); 0 = the whole
      batch at once, without remat (`model.remat`), else chunks recomputed in the
      backward pass.
    inference_chunk: clips per chunk at inference (`model.eval_chunk_size`); 0 = all.
    scan_streams: batch slices a recurrent encoder advances per scan iteration at
      inference (the GRU's `eval_streams`).
    scan_unroll: time steps per scan iteration at inference (the GRU's `eval_unroll`).
    attention: the Transformer's `attention_impl`.
    dropout: the Transformer's `dropout_impl`.
    runs: how one downstream program steps its runs (`runs_impl`, `train.many`):
      "vmap" (batched) or "map" (one after another, each bit-identical to alone).
  """

  train_chunk: int
  inference_chunk: int
  scan_streams: int = 1
  scan_unroll: int = 1
  attention: str = "dot_product"
  dropout: str = "flax"
  runs: str = "vmap"


# GPU/TPU: the whole batch in one call and jax's kernels (jax.nn.dot_product_attention,
# threefry dropout bits), whatever the encoder; a program's runs batched (vmap).
ACCELERATOR = Settings(train_chunk=0, inference_chunk=0)
# CPU: 16-clip chunks with remat, einsum attention (cpu_kernels.attend) and hash-based
# dropout bits (randomness.keep_mask), unless an encoder's entry says otherwise; a
# program's runs one after another (map: batching them gained nothing measurable on
# 2 cores, and each run then rounds exactly as it does alone).
CPU_DEFAULT = Settings(train_chunk=16, inference_chunk=16, attention="einsum",
                       dropout="hash", runs="map")
CPU = {
    # Its recurrence pays per time step, not per clip: whole-batch training, larger
    # inference chunks advanced as two independent streams, 4 steps per iteration.
    "gru": dataclasses.replace(CPU_DEFAULT, train_chunk=0, inference_chunk=256,
                               scan_streams=2, scan_unroll=4),
    # Compute-bound convolutions, which XLA:CPU differentiates far more slowly inside
    # lax.map: whole-batch training, a program's runs batched (a runlocal downstream
    # of 2 runs: 510 s in lax.map, 126 s vmapped); 16-clip chunks at inference.
    "vggish": dataclasses.replace(CPU_DEFAULT, train_chunk=0, runs="vmap"),
}


def backend(platform: Optional[str] = None) -> str:
  """`platform` (lower-cased) or, if None, the `target` being traced for, else
  `jax.default_backend()`: 'cpu', 'gpu', 'cuda', 'tpu', ..."""
  return (platform or _TARGET.get() or jax.default_backend()).lower()


def on_cpu(platform: Optional[str] = None) -> bool:
  """Whether `platform` (default: jax's default backend) is the CPU; any other backend
  (gpu, tpu, a plugin) counts as an accelerator."""
  return backend(platform) == "cpu"


def settings(encoder: Optional[str] = None, platform: Optional[str] = None) -> Settings:
  """What "auto" means for the encoder registered as `encoder` (None: any encoder
  without an entry of its own) on `platform` (None = `backend()`, the platform being
  traced for)."""
  if not on_cpu(platform):
    return ACCELERATOR
  return CPU.get(encoder, CPU_DEFAULT)


def is_auto(value) -> bool:
  return isinstance(value, str) and value == AUTO


def resolve_setting(value: T | str, field: str, encoder: Optional[str] = None,
                    platform: Optional[str] = None) -> T:
  """`value`, or for "auto" the `Settings` field `field` of `encoder` on `platform`."""
  if not is_auto(value):
    return value
  return getattr(settings(encoder, platform), field)
