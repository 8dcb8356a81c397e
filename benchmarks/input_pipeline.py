r"""The input pipeline at growing corpora: feature build, loader rate, pre-training and
embedding RSS.

  python benchmarks/input_pipeline.py [--sizes=1500,6000,15000] [--json=PATH]
  python benchmarks/input_pipeline.py --quick     # seconds: 40 / 80 participants, B = 16

For each size, the built-in synthetic set (`configs/pretrain.py:transformer_m50` with
`config.data.num_participants` = size, 4 sounds each, split 0.8 / 0.2) in a feature
cache of its own (`--workdir`, deleted afterwards unless `--keep`), measured in
subprocesses of their own, in this order:

* build: feature-build time (`FeatureCache.resolve`: render + log-mel of every
  recording, `config.data.workers` processes) and pack time (`coughjax.data.packed`:
  the cached features streamed into the corpus's one memory-mapped file, with each
  recording's mask key);
* loader: contrastive pairs per second from `ContrastiveBatches.batch` alone (one
  thread, B = `--batch`, over the packed, memory-mapped train split);
* pretrain: a pre-training process as `trainer.fit` runs it (`pretrain.make_task`:
  load_splits over the packs, batches, the B = `--batch` train step; batches through
  `pipeline.prefetch` and `mesh.prefetch`) for `--steps` steps after a
  warm-up step: its peak RSS (ru_maxrss, imports and compilation included) and the
  step's consumption rate (pairs per second = B / median step time);
* embed: `python -m coughjax.embed` over the corpus's coughs (the same participants,
  sounds cough-heavy and cough-shallow: half the recordings) with the shipped encoder
  `transformer_m50_real`, as a user runs it: its peak RSS (the command's own process,
  from `wait4`) and wall time, writing the coughs' pack (the features are cached by
  the build) and streaming the clips from it;
* in-memory (`--baseline`): peak RSS of loading the same splits the way `load_splits`
  did before the packs (every cached `.npy` loaded, then concatenated into one
  array), and of embedding the coughs as `embed_records` did before (every feature
  array loaded, all clips cut in memory, then run).

The page cache is not dropped between measurements (that needs root); the loader reads
features that the build has just written, as a run right after its feature build does.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

from absl import app
from absl import flags
import numpy as np

import harness  # puts the checkout on sys.path  # pylint: disable=g-bad-import-order

_SIZES = flags.DEFINE_list("sizes", ["1500", "6000", "15000"], "participants per corpus")
_BATCH = flags.DEFINE_integer("batch", 1024, "pairs B per step")
_STEPS = flags.DEFINE_integer("steps", 3, "timed pre-training steps (after a warm-up)")
_LOADER_BATCHES = flags.DEFINE_integer("loader_batches", 20, "batches the loader times")
_VARIANT = flags.DEFINE_string("variant", "transformer_m50", "configs/pretrain.py variant")
_BASELINE = flags.DEFINE_bool("baseline", True, "also measure the in-memory store's RSS")
_WORKDIR = flags.DEFINE_string("workdir", None, "where the feature caches go (default: a "
                               "temporary folder under $TMPDIR)")
_KEEP = flags.DEFINE_bool("keep", False, "keep the feature caches")
_JSON = flags.DEFINE_string("json", None, "also write the results here")
_QUICK = flags.DEFINE_bool("quick", False, "smoke run: 40 and 80 participants, B = 16, "
                           "one timed step")
_WORKER = flags.DEFINE_string("worker", None, "internal: run one measurement (JSON spec)")

GIB = 1 << 30
EMBED_ENCODER = "transformer_m50_real"  # shipped: nothing to train first
EMBED_SOUNDS = ("cough-heavy", "cough-shallow")


def make_config(spec: dict[str, Any]):
  from configs import pretrain as pretrain_configs  # pylint: disable=g-import-not-at-top
  config = pretrain_configs.get_config(spec["variant"])
  config.data.num_participants = spec["participants"]
  config.batch_size = spec["batch"]
  config.eval_batch_size = min(config.eval_batch_size, spec["batch"])
  # Enough steps in one epoch for the warm-up and the timed steps.
  config.passes_per_epoch = spec["steps"] + 1
  return config


def embed_data(participants: int) -> dict[str, Any]:
  """The corpus `embed` embeds: `make_config`'s participants, their coughs."""
  return {"name": "synthetic", "num_participants": participants, "seed": 0,
          "sounds": EMBED_SOUNDS}


def build_worker(spec):
  from coughjax import data  # pylint: disable=g-import-not-at-top
  from coughjax.data import features, packed  # pylint: disable=g-import-not-at-top
  config = make_config(spec)
  records = data.get_manifest(config.data)
  cache = features.FeatureCache(features.FeatureParams.from_config(config.features))
  start = time.perf_counter()
  cache.resolve(records, name="corpus", workers=config.data.workers, progress=False)
  middle = time.perf_counter()
  corpus = packed.from_cache(cache, records, config.features.clip_frames, name="corpus")
  frames = len(corpus.pack.frames)
  return {"recordings": len(records), "feature_s": middle - start,
          "pack_s": time.perf_counter() - middle, "frames": frames,
          "pack_gib": frames * config.features.nfilt * 4 / GIB}


def loader_worker(spec):
  from coughjax import data  # pylint: disable=g-import-not-at-top
  from coughjax.data import pipeline  # pylint: disable=g-import-not-at-top
  config = make_config(spec)
  train = data.load_splits(config, ("train",))["train"]
  n = spec["loader_batches"]
  batches = pipeline.ContrastiveBatches(train, spec["batch"], passes=n + 1)
  batches.batch(0, 0)
  start = time.perf_counter()
  for step in range(1, n + 1):
    batches.batch(0, step)
  seconds = time.perf_counter() - start
  return {"pairs_per_s": n * spec["batch"] / seconds, "batch_s": seconds / n,
          "peak_rss": harness.peak_rss_bytes()}


def pretrain_worker(spec):
  import jax  # pylint: disable=g-import-not-at-top
  from coughjax.data import pipeline  # pylint: disable=g-import-not-at-top
  from coughjax.train import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from coughjax.train import pretrain  # pylint: disable=g-import-not-at-top
  config = make_config(spec)
  task = pretrain.make_task(config)
  state = mesh_lib.put_replicated(task.mesh, task.init_state(jax.random.key(0)))
  key = mesh_lib.put_replicated(task.mesh, jax.random.key(1))
  times, losses = [], []
  batches = mesh_lib.prefetch(pipeline.prefetch(task.batches(0, 0)), task.mesh)
  for _, batch in zip(range(spec["steps"] + 1), batches):
    start = time.perf_counter()
    state, metrics = task.train_step(state, batch, key)
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - start)
    losses.append(float(metrics["loss"]))
  step_s = float(np.median(times[1:]))
  return {"step_s": step_s, "pairs_per_s": spec["batch"] / step_s, "losses": losses,
          "peak_rss": harness.peak_rss_bytes()}


def inmemory_worker(spec):
  """The store as load_splits built it before packs: every .npy loaded, concatenated."""
  from coughjax import data  # pylint: disable=g-import-not-at-top
  from coughjax.data import features, pipeline, splits  # pylint: disable=g-import-not-at-top
  config = make_config(spec)
  parts = splits.split(data.get_manifest(config.data), config.data.split,
                       config.data.split_seed)
  cache = features.FeatureCache(features.FeatureParams.from_config(config.features))
  stores = {}
  for name in ("train", "val"):
    kept, feats, _ = cache.load(parts[name], name=name, progress=False)
    stores[name] = pipeline.ClipStore(kept, feats, config.features.clip_frames)
  return {"peak_rss": harness.peak_rss_bytes()}


def embed_worker(spec):
  """`python -m coughjax.embed` over the corpus's coughs, in a process of its own."""
  folder = pathlib.Path(tempfile.mkdtemp(prefix="coughjax-embed-"))
  try:
    cmd = [sys.executable, "-m", "coughjax.embed", f"--encoder={EMBED_ENCODER}",
           f"--output={folder / 'embeddings.npz'}"] + [
               f"--config.data.{k}={v!r}" if isinstance(v, tuple) else
               f"--config.data.{k}={v}" for k, v in embed_data(spec["participants"]).items()]
    with open(folder / "log", "w") as log:
      start = time.perf_counter()
      child = subprocess.Popen(cmd, cwd=harness.REPO, stdout=log, stderr=log)  # pylint: disable=consider-using-with
      _, status, usage = os.wait4(child.pid, 0)  # the command's own peak RSS
      seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status):
      raise RuntimeError(f"{' '.join(cmd)} failed:\n{(folder / 'log').read_text()[-4000:]}")
    with np.load(folder / "embeddings.npz") as z:
      recordings, clips = len(z["paths"]), len(z["clip_embeddings"])
  finally:
    shutil.rmtree(folder, ignore_errors=True)
  return {"seconds": seconds, "recordings": recordings, "clips": clips,
          "peak_rss": usage.ru_maxrss * 1024}


def inmemory_embed_worker(spec):
  """The coughs embedded as `embed_records` did before it streamed from a pack."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from coughjax import data  # pylint: disable=g-import-not-at-top
  from coughjax import embed  # pylint: disable=g-import-not-at-top
  from coughjax.data import features  # pylint: disable=g-import-not-at-top
  encoder = embed.load_encoder(EMBED_ENCODER)
  records = data.get_manifest(ml_collections.ConfigDict(
      dict(make_config(spec).data.to_dict(), **embed_data(spec["participants"]))))
  kept, feats, _ = features.FeatureCache(encoder.spec.features).load(records,
                                                                     progress=False)
  encoder.embed_features(feats, [r.path for r in kept])
  return {"peak_rss": harness.peak_rss_bytes()}


WORKERS = {"build": build_worker, "loader": loader_worker, "pretrain": pretrain_worker,
           "embed": embed_worker, "inmemory": inmemory_worker,
           "inmemory_embed": inmemory_embed_worker}


def run_worker(spec: dict[str, Any], cache: pathlib.Path) -> dict[str, Any]:
  env = dict(os.environ, COUGHJAX_CACHE=str(cache), JAX_PLATFORMS="cpu")
  env.pop("JAX_COMPILATION_CACHE_DIR", None)  # every process compiles: same RSS terms
  proc = subprocess.run([sys.executable, __file__, f"--worker={json.dumps(spec)}"],
                        env=env, capture_output=True, text=True, check=False)
  if proc.returncode != 0:
    raise RuntimeError(f"{spec['kind']} worker failed:\n{proc.stdout[-2000:]}\n"
                       f"{proc.stderr[-4000:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv):
  del argv
  if _WORKER.value:
    spec = json.loads(_WORKER.value)
    print(json.dumps(WORKERS[spec["kind"]](spec)))
    return
  quick = _QUICK.value
  sizes = [40, 80] if quick else [int(s) for s in _SIZES.value]
  base = {"variant": _VARIANT.value + (",runlocal" if quick else ""),
          "batch": 16 if quick else _BATCH.value, "steps": 1 if quick else _STEPS.value,
          "loader_batches": 5 if quick else _LOADER_BATCHES.value}
  root = pathlib.Path(_WORKDIR.value or tempfile.mkdtemp(prefix="coughjax-input-"))
  root.mkdir(parents=True, exist_ok=True)
  results = []
  try:
    for size in sizes:
      cache = root / f"cache-{size}"
      spec = dict(base, participants=size)
      row = {"participants": size}
      for kind in ("build", "loader", "pretrain", "embed") + (
          ("inmemory", "inmemory_embed") if _BASELINE.value else ()):
        start = time.perf_counter()
        row[kind] = run_worker(dict(spec, kind=kind), cache)
        print(f"# {size} participants, {kind}: {time.perf_counter() - start:.0f} s",
              file=sys.stderr, flush=True)
      results.append(row)
      if not _KEEP.value:
        shutil.rmtree(cache, ignore_errors=True)
  finally:
    if not _KEEP.value and not _WORKDIR.value:
      shutil.rmtree(root, ignore_errors=True)

  batch = base["batch"]
  header = ["participants", "recordings", "features (GiB)", "feature build s", "pack s",
            "loader pairs/s", f"B = {batch} step s", "step pairs/s", "loader / step",
            "pre-training peak RSS (GiB)", "embed recordings", "embed s",
            "embed peak RSS (GiB)"] + (
                ["in-memory store peak RSS (GiB)", "in-memory embed peak RSS (GiB)"]
                if _BASELINE.value else [])
  rows = []
  for r in results:
    ratio = r["loader"]["pairs_per_s"] / r["pretrain"]["pairs_per_s"]
    rows.append([f"{r['participants']:,}", f"{r['build']['recordings']:,}",
                 f"{r['build']['pack_gib']:.2f}", f"{r['build']['feature_s']:.1f}",
                 f"{r['build']['pack_s']:.1f}", f"{r['loader']['pairs_per_s']:,.0f}",
                 f"{r['pretrain']['step_s']:.2f}", f"{r['pretrain']['pairs_per_s']:,.0f}",
                 f"{ratio:.0f}x", f"{r['pretrain']['peak_rss'] / GIB:.2f}",
                 f"{r['embed']['recordings']:,}", f"{r['embed']['seconds']:.1f}",
                 f"{r['embed']['peak_rss'] / GIB:.2f}"]
                + ([f"{r['inmemory']['peak_rss'] / GIB:.2f}",
                    f"{r['inmemory_embed']['peak_rss'] / GIB:.2f}"]
                   if _BASELINE.value else []))
  print(harness.markdown_table(header, rows))
  for kind, what in (("pretrain", "pre-training"), ("embed", "python -m coughjax.embed")):
    rss = [r[kind]["peak_rss"] for r in results]
    print(f"\n{what} peak RSS, largest minus smallest corpus: "
          f"{(rss[-1] - rss[0]) / GIB:+.2f} GiB")
  print(f"\n{harness.describe(harness.machine())}")
  if _JSON.value:
    pathlib.Path(_JSON.value).write_text(json.dumps(
        {"machine": harness.machine(), "results": results}, indent=2) + "\n")


if __name__ == "__main__":
  app.run(main)
