"""Pre-training step and encoder inference time on this machine, with ablations.

Prints a markdown table: median and min wall time over --repeats of the
pre-training step (B pairs = 2B clips, one device), of the eval step (forward and
loss over the same 2B clips) and of the Transformer encoder alone over B clips, with
the achieved GFLOP/s from an analytic FLOP count; then the same train step with
dropout off and with masking off, which shows what each costs:

  python benchmarks/profile_step.py [--config=transformer_m50] [--batch_size=1024]
                                    [--repeats=5] [--chunk_size=16] [--remat=false]

--chunk_size and --remat pin the config's `model.chunk_size` / `model.remat`, whose
"auto" default is the platform's (16-clip chunks with remat on CPU, the whole batch
on GPU/TPU; coughjax/models/chunking.py).

All rows are timed round-robin in one process (compile excluded), so that load on a
shared machine hits them alike; the load average is printed before and after. For
an op-level profile, wrap a step in `jax.profiler.trace(dir, create_perfetto_trace=
True)` and sum the events of the perfetto trace by name.
"""

import os
import statistics
import time

from absl import app
from absl import flags
import jax
import numpy as np

import harness  # puts the checkout on sys.path  # pylint: disable=g-bad-import-order

from configs import pretrain as pretrain_configs
from coughjax import models
from coughjax.models import chunking
from coughjax.train import mesh as mesh_lib
from coughjax.train import pretrain

_CONFIG = flags.DEFINE_string("config", "transformer_m50", "configs/pretrain.py variant")
_BATCH = flags.DEFINE_integer("batch_size", 1024, "pairs per step (2x clips)")
_CHUNK = flags.DEFINE_integer("chunk_size", None,
                               "encoder chunk rows, 0 = whole batch (default: the config's)")
_REMAT = flags.DEFINE_bool("remat", None, "recompute chunks in the backward pass "
                           "(default: the config's)")
_REPEATS = flags.DEFINE_integer("repeats", 5, "timed calls per row")


def encoder_flops(cfg) -> float:
  """Forward FLOPs of the Transformer encoder for one clip (multiply-add = 2)."""
  m = cfg.model.transformer
  return harness.transformer_flops(cfg.features.clip_frames, cfg.features.nfilt,
                                   m.d_model, m.num_layers, m.num_heads, m.mlp_dim)


def _config(**model_overrides):
  cfg = pretrain_configs.get_config(_CONFIG.value)
  cfg.batch_size = _BATCH.value
  if _CHUNK.value is not None:
    cfg.model.chunk_size = _CHUNK.value
  if _REMAT.value is not None:
    cfg.model.remat = _REMAT.value
  for k, v in model_overrides.items():
    # Shared fields (mask_rate) are model-level; dropout is the encoder's own.
    (cfg.model if k in cfg.model else cfg.model[cfg.model.name])[k] = v
  return cfg


def _step_fns(cfg, views):
  """(train, eval) closures over a state on one device."""
  mesh = mesh_lib.data_mesh(jax.devices()[:1])
  model = pretrain.build_model(cfg.model)
  train_step, eval_step = pretrain.make_steps(model, cfg, mesh)
  holder = {"state": mesh_lib.put_replicated(
      mesh, pretrain.init_state(model, cfg, jax.random.PRNGKey(0)))}
  rng = mesh_lib.put_replicated(mesh, jax.random.PRNGKey(1))
  views = mesh_lib.global_batch(mesh, views)

  def train():
    holder["state"], metrics = train_step(holder["state"], views, rng)
    return metrics["loss"]

  def evaluate():
    return eval_step(holder["state"], views, rng)["loss"]

  return train, evaluate


def _encoder_fn(cfg, clips):
  """The encoder alone over [n, T, mel] clips, in chunks as the steps run it."""
  encoder = models.build_encoder(pretrain.encoder_config(cfg.model))
  params = jax.jit(lambda k, x: encoder.init(k, x[:2], train=False))(
      jax.random.PRNGKey(0), clips)
  chunk = chunking.chunk_size_for(clips.shape[0], cfg.model.chunk_size, (encoder,))

  @jax.jit
  def encode(params, x, rng):
    return chunking.apply_in_chunks(
        lambda xc, rngs, ids: encoder.apply(params, xc, train=False, rngs=rngs, clip_ids=ids),
        x, rng, chunk, jax.numpy.arange(x.shape[0]))

  rng = jax.random.PRNGKey(2)
  return lambda: encode(params, clips, rng)


def main(argv):
  del argv
  cfg = _config()
  b = cfg.batch_size
  rng = np.random.default_rng(0)
  shape = (cfg.features.clip_frames, cfg.features.nfilt)
  views = rng.normal(size=(b, 2) + shape).astype(np.float32)  # [B, 2, T, M]
  clips = jax.numpy.asarray(rng.normal(size=(b,) + shape).astype(np.float32))
  fwd = encoder_flops(cfg)

  train, evaluate = _step_fns(cfg, views)
  rows = {  # name: (fn, clips per call, FLOPs per call or 0 = not a whole model)
      "train step": (train, 2 * b, 3 * fwd * 2 * b),
      "eval step (fwd + loss)": (evaluate, 2 * b, fwd * 2 * b),
      "encoder inference": (_encoder_fn(cfg, clips), b, fwd * b),
      "train step, dropout 0": (_step_fns(_config(dropout=0.0), views)[0], 2 * b, 0),
  }
  if cfg.model.mask_rate:
    rows["train step, no mask"] = (_step_fns(_config(mask_rate=0.0), views)[0], 2 * b, 0)
  for name, (fn, _, _) in rows.items():
    start = time.perf_counter()
    jax.block_until_ready(fn())
    print(f"compiled {name} in {time.perf_counter() - start:.1f} s", flush=True)

  load_before = os.getloadavg()[0]
  times = {name: [] for name in rows}
  for _ in range(_REPEATS.value):
    for name, (fn, _, _) in rows.items():
      start = time.perf_counter()
      jax.block_until_ready(fn())
      times[name].append(time.perf_counter() - start)

  encoder = models.build_encoder(pretrain.encoder_config(cfg.model))
  chunk = chunking.chunk_size_for(2 * b, cfg.model.chunk_size, (encoder,))
  remat = chunking.resolve_remat(cfg.model.remat, encoders=(encoder,))
  print(f"\n{_CONFIG.value}, B = {b} pairs, chunk {chunk} ({cfg.model.chunk_size}), "
        f"remat {remat}, "
        f"{jax.devices()[0].platform} x{os.cpu_count()} cores, encoder "
        f"{fwd / 1e6:.1f} MFLOP/clip forward; load average {load_before:.1f} -> "
        f"{os.getloadavg()[0]:.1f}\n")
  print("| what | median s | min s | us/clip | GFLOP/s |")
  print("|---|---|---|---|---|")
  for name, (_, n, flops) in rows.items():
    med, best = statistics.median(times[name]), min(times[name])
    rate = f"{flops / med / 1e9:.0f}" if flops else ""
    print(f"| {name} | {med:.3f} | {best:.3f} | {med / n * 1e6:.0f} | {rate} |")
  print("\nGFLOP/s counts the train step as 3x the forward FLOPs"
        + ("; its backward pass also recomputes each chunk's forward (remat), which is "
           "not counted." if remat else "."))


if __name__ == "__main__":
  app.run(main)
