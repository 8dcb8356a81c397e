r"""The contrastive pre-training step: coughjax beside a PyTorch twin, time and memory.

  python benchmarks/train_step.py [--batch_sizes=1024,256] [--steps=3] [--json=PATH]
  python benchmarks/train_step.py --quick        # seconds: small batch, one step each
  python benchmarks/train_step.py --batch_sizes=1024 --devices=1 --torch_modes= --steps=5
                                                  # the trainer loop's overhead alone

One step = encode the 2B clips of B pairs, bilinear logits over the batch, eq. 5
loss, gradients, Adam update (paper §4.1; config `configs/pretrain.py:--variant`,
default transformer_m50: the paper's best, 50 % random key masking, dropout 0.2;
`--variant=gru` times the GRU's step against a stock nn.GRU twin, which masks
nothing, so its paper-style and whole-batch modes are the same step).

* coughjax: the real `coughjax.train.pretrain.make_steps` train step (a shard_map
  over the device mesh, jitted; encoder in chunks of `config.model.chunk_size` clips with remat -- their CPU
  defaults, "auto": 16 clips with remat for the Transformer, the whole batch for
  the GRU -- state donated),
  on 1 device and on 2 and 4 fake CPU devices
  (XLA_FLAGS=--xla_force_host_platform_device_count=N; the global batch is split).
* torch: the twin (benchmarks/torch_twins.py ContrastiveTwin: same model, bilinear
  head, eq. 5, torch.optim.Adam lr 1e-3, dropout as coughjax) in eager mode:
    paper-style      whole batch at once, masks from the paper's Python for-loop;
    whole batch      the same with the vectorised torch mask;
    16-clip chunks   the encoder's forward over chunks of 16 clips (autograd keeps
                     every chunk's graph), vectorised mask;
    chunks + remat   the same with torch.utils.checkpoint per chunk (recomputed in
                     the backward pass, as coughjax does).

* trainer loop: `trainer.fit` (real input pipeline, batches prefetched to the
  device, metrics kept on the device until a log step) against the bare step, in
  one process, at the first batch size (`--loop`).

Every measurement runs in a subprocess of its own, so that its peak resident memory
(ru_maxrss, which includes imports and compilation) is its own. Step time is the
median over `--steps` steps after one warm-up step; compile time = first step minus
the median. Torch uses every core (torch.set_num_threads(os.cpu_count())).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

from absl import app
from absl import flags
import numpy as np

import harness  # puts the checkout on sys.path  # pylint: disable=g-bad-import-order

_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["1024", "256"], "pairs B per step")
_DEVICES = flags.DEFINE_list("devices", ["1", "2", "4"], "coughjax fake CPU device counts "
                             "(at the first batch size; 1 at the others)")
_STEPS = flags.DEFINE_integer("steps", 3, "timed steps per measurement")
_VARIANT = flags.DEFINE_string("variant", "transformer_m50", "configs/pretrain.py variant")
_TORCH_MODES = flags.DEFINE_list("torch_modes", ["paper", "whole", "chunked", "remat"],
                                 "torch twin modes (see the module docstring)")
_LOOP = flags.DEFINE_bool("loop", True, "also time trainer.fit's loop against the bare "
                          "step, in one process (at the first batch size)")
_JSON = flags.DEFINE_string("json", None, "also write the results here")
_QUICK = flags.DEFINE_bool("quick", False, "smoke run: B = 32, one step, 1 and 2 devices")
_COMPILATION_CACHE = flags.DEFINE_bool(
    "compilation_cache", False, "let jax use a persistent compilation cache from the "
    "environment (compile times are then cache loads)")
_WORKER = flags.DEFINE_string("worker", None, "internal: run one measurement (JSON spec)")

TORCH_CHUNK = harness.TORCH_CHUNK
TORCH_MODES = {"paper": "torch paper-style", "whole": "torch whole batch",
               "chunked": f"torch {TORCH_CHUNK}-clip chunks",
               "remat": f"torch {TORCH_CHUNK}-clip chunks + remat"}


def pretrain_config(variant: str, batch: int):
  from configs import pretrain as pretrain_configs  # pylint: disable=g-import-not-at-top
  config = pretrain_configs.get_config(variant)
  config.batch_size = batch
  return config


def random_views(batch: int, time_steps: int, mel: int) -> np.ndarray:
  return np.random.default_rng(0).standard_normal((2, batch, time_steps, mel), np.float32)


def coughjax_worker(spec: dict[str, Any]) -> dict[str, Any]:
  """Times the real pre-training step on jax.local_device_count() devices."""
  import jax  # pylint: disable=g-import-not-at-top
  from coughjax.train import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from coughjax.train import pretrain  # pylint: disable=g-import-not-at-top

  if not spec["compilation_cache"]:
    jax.config.update("jax_enable_compilation_cache", False)  # compile time is real
  devices = jax.local_device_count()
  if devices != spec["devices"]:
    raise RuntimeError(f"asked for {spec['devices']} devices, jax has {devices}")
  config = pretrain_config(spec["variant"], spec["batch"])
  mesh = mesh_lib.data_mesh()
  model = pretrain.build_model(config.model)
  train_step, _ = pretrain.make_steps(model, config, mesh)
  state = mesh_lib.put_replicated(mesh, pretrain.init_state(model, config,
                                                            jax.random.PRNGKey(0)))
  views = random_views(spec["batch"], config.features.clip_frames, config.features.nfilt)
  # [B, 2, T, M] split over the devices once, as torch's input is placed once.
  views = mesh_lib.global_batch(mesh, views.swapaxes(0, 1))
  key = mesh_lib.put_replicated(mesh, jax.random.key(1))  # the step folds its number in
  times, losses = [], []
  for _ in range(spec["steps"] + 1):
    start = time.perf_counter()
    state, metrics = train_step(state, views, key)
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - start)
    losses.append(float(metrics["loss"]))
  return {"times": times, "losses": losses}


def loop_worker(spec: dict[str, Any]) -> dict[str, Any]:
  """The trainer loop's overhead: steps/s of `trainer.fit` against the bare step.

  Same process, same compiled step: bare steps on a batch already on the device,
  then `trainer.fit` over the real input pipeline (`ContrastiveBatches` gathering
  random crops from a ClipStore of random features, prefetched to the device,
  metrics on the device until a log step), then bare steps again. fit's rate is read
  from its metrics.jsonl over its second log window (after compilation); its
  validation and checkpoints fall outside the window.
  """
  import tempfile  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from coughjax.data import pipeline  # pylint: disable=g-import-not-at-top
  from coughjax.data.manifest import Recording  # pylint: disable=g-import-not-at-top
  from coughjax.train import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from coughjax.train import pretrain  # pylint: disable=g-import-not-at-top
  from coughjax import checkpoints  # pylint: disable=g-import-not-at-top
  from coughjax.train import trainer  # pylint: disable=g-import-not-at-top

  config = pretrain_config(spec["variant"], spec["batch"])
  window = spec["steps"]
  config.num_epochs, config.log_every_steps = 1, window
  config.checkpoint_every_steps = 10 * window
  mesh = mesh_lib.data_mesh()
  model = pretrain.build_model(config.model)
  train_step, _ = pretrain.make_steps(model, config, mesh)
  rng = np.random.default_rng(0)
  n = spec["batch"]
  records = [Recording(path=f"p{i}.wav", participant_id=f"p{i}", sound="cough-heavy")
             for i in range(n)]
  feats = [rng.standard_normal((int(rng.integers(150, 400)), config.features.nfilt),
                               np.float32) for _ in range(n)]
  store = pipeline.ClipStore(records, feats, config.features.clip_frames)
  batches = pipeline.ContrastiveBatches(store, n, 0, passes=2 * window)
  key = mesh_lib.put_replicated(mesh, jax.random.key(1))
  state = mesh_lib.put_replicated(mesh, pretrain.init_state(model, config, jax.random.key(0)))
  on_device = mesh_lib.global_batch(mesh, batches.batch(0, 0))

  def bare(state):
    times = []
    for _ in range(window + 1):
      start = time.perf_counter()
      state, metrics = train_step(state, on_device, key)
      jax.block_until_ready((state, metrics))
      times.append(time.perf_counter() - start)
    return state, times[1:]

  state, before = bare(state)
  task = trainer.Task(
      name="loop", init_state=lambda k: pretrain.init_state(model, config, k),
      train_step=train_step, batches=batches.epoch, steps_per_epoch=batches.steps_per_epoch,
      evaluate=lambda _: {"loss": 0.0}, mesh=mesh)
  with tempfile.TemporaryDirectory() as workdir:
    trainer.fit(task, config, workdir)
    rates = [l["steps_per_sec"] for l in checkpoints.read_metrics(workdir)
             if l["split"] == "train"]
  _, after = bare(state)
  return {"bare_times": before + after, "loop_step_s": 1.0 / rates[1],
          "times": before + after, "losses": []}


def contrastive_twin(config, mask_impl: str):
  """(ContrastiveTwin, its encoder) of a pre-training config, the bilinear head.

  The Transformer masks at the config's rate in training (the paper-style "loop"
  generator or the vectorised one); the GRU twin is a stock nn.GRU.
  """
  import torch_twins  # pylint: disable=g-import-not-at-top
  from coughjax.train import pretrain  # pylint: disable=g-import-not-at-top

  m = config.model
  if m.similarity != "bilinear":
    raise NotImplementedError("the torch step twins the bilinear similarity only")
  cfg = pretrain.encoder_config(m)
  encoder = torch_twins.encoder_twin(cfg, mask_rate=cfg.get("mask_rate"),
                                     mask_impl=mask_impl)
  return torch_twins.ContrastiveTwin(encoder, m.proj_dim, m.temperature), encoder


def torch_worker(spec: dict[str, Any]) -> dict[str, Any]:
  """Times the twin's step in one of TORCH_MODES."""
  import torch  # pylint: disable=g-import-not-at-top
  from torch.utils import checkpoint  # pylint: disable=g-import-not-at-top
  import torch_twins  # pylint: disable=g-import-not-at-top

  torch_twins.set_threads()
  torch.manual_seed(0)
  mode = spec["mode"]
  config = pretrain_config(spec["variant"], spec["batch"])
  twin, encoder = contrastive_twin(config, "loop" if mode == "paper" else "vectorised")
  twin.train()
  optimizer = torch.optim.Adam(twin.parameters(), lr=config.optim.learning_rate)
  views = random_views(spec["batch"], config.features.clip_frames, config.features.nfilt)
  x = torch.from_numpy(views.reshape((-1,) + views.shape[2:]))  # [a..., b...]

  # A GRU has no attention to mask: its twin draws none.
  has_mask = hasattr(encoder, "draw_mask")

  def encode(xc, mc):
    return twin(xc, mc)

  def step():
    optimizer.zero_grad(set_to_none=True)
    # One mask per clip for the whole batch, drawn outside the (possibly
    # recomputed) forward so that a recomputation sees the same mask.
    mask = encoder.draw_mask(x.shape[0], x.shape[1]) if has_mask else None
    if mode in ("paper", "whole"):
      z = twin(x, mask)
    else:
      masks = [None] * (x.shape[0] // TORCH_CHUNK) if mask is None else mask.split(TORCH_CHUNK)
      if mode == "chunked":
        z = torch.cat([twin(xc, mc) for xc, mc in zip(x.split(TORCH_CHUNK), masks)])
      else:
        z = torch.cat([checkpoint.checkpoint(encode, xc, mc, use_reentrant=False)
                       for xc, mc in zip(x.split(TORCH_CHUNK), masks)])
    loss = torch_twins.contrastive_loss(twin.logits(z, z))
    loss.backward()
    optimizer.step()
    return float(loss)

  times, losses = [], []
  for _ in range(spec["steps"] + 1):
    start = time.perf_counter()
    losses.append(step())
    times.append(time.perf_counter() - start)
  return {"times": times, "losses": losses}


def run_worker(spec: dict[str, Any]) -> dict[str, Any]:
  """One measurement in a fresh process; its JSON report plus peak RSS."""
  env = dict(os.environ)
  if spec["impl"] in ("coughjax", "loop"):
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_"
                        f"count={spec['devices']}").strip()
  env.setdefault("JAX_PLATFORMS", "cpu")
  proc = subprocess.run([sys.executable, os.path.abspath(__file__),
                         f"--worker={json.dumps(spec)}"], env=env, capture_output=True,
                        text=True, check=False)
  if proc.returncode:
    raise RuntimeError(f"worker {spec} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


def summarise(spec: dict[str, Any], report: dict[str, Any]) -> dict[str, Any]:
  steady = report["times"][1:]
  median = float(np.median(steady))
  label = ("coughjax" if spec["impl"] == "coughjax" else TORCH_MODES[spec["mode"]])
  return dict(spec, label=label, step_s=median,
              step_range_s=[min(steady), max(steady)],
              steps_per_s=1.0 / median, clips_per_s=2 * spec["batch"] / median,
              compile_s=max(report["times"][0] - median, 0.0),
              peak_rss_gib=report["peak_rss"] / 2**30, losses=report["losses"])


def table(results: list[dict[str, Any]]) -> str:
  header = ["implementation", "B (pairs)", "devices", "step s", "min–max",
            "steps/s", "clips/s", "compile s", "peak RSS GiB", "time / coughjax",
            "RSS − coughjax GiB"]
  rows = []
  for r in results:
    ref = next((c for c in results if c["impl"] == "coughjax" and c["batch"] == r["batch"]
                and c["devices"] == 1), r)
    lo, hi = r["step_range_s"]
    rows.append([r["label"], r["batch"], r.get("devices", "–") if r["impl"] == "coughjax"
                 else "–", f"{r['step_s']:.3f}", f"{lo:.3f}–{hi:.3f}",
                 f"{r['steps_per_s']:.2f}", f"{r['clips_per_s']:,.0f}",
                 f"{r['compile_s']:.1f}", f"{r['peak_rss_gib']:.2f}",
                 f"{r['step_s'] / ref['step_s']:.2f}",
                 f"{r['peak_rss_gib'] - ref['peak_rss_gib']:+.2f}"])
  return harness.markdown_table(header, rows)


def main(argv):
  del argv
  if _WORKER.value:
    spec = json.loads(_WORKER.value)
    worker = {"coughjax": coughjax_worker, "loop": loop_worker,
              "torch": torch_worker}[spec["impl"]]
    report = worker(spec)
    report["peak_rss"] = harness.peak_rss_bytes()
    print(json.dumps(report))
    return

  quick = _QUICK.value
  batch_sizes = [32] if quick else [int(b) for b in _BATCH_SIZES.value]
  device_counts = [1, 2] if quick else [int(d) for d in _DEVICES.value]
  steps = 1 if quick else _STEPS.value
  modes = ["paper", "chunked"] if quick else _TORCH_MODES.value
  specs = []
  for i, batch in enumerate(batch_sizes):
    base = dict(variant=_VARIANT.value, batch=batch, steps=steps,
                compilation_cache=_COMPILATION_CACHE.value)
    for devices in (device_counts if i == 0 else [1]):
      specs.append(dict(base, impl="coughjax", devices=devices))
    specs += [dict(base, impl="torch", mode=mode, devices=1) for mode in modes]
  loop = None
  if _LOOP.value:
    spec = dict(variant=_VARIANT.value, batch=batch_sizes[0], steps=max(steps, 2),
                impl="loop", devices=1)
    report = run_worker(spec)
    bare = float(np.median(report["bare_times"]))
    loop = dict(spec, bare_step_s=bare, loop_step_s=report["loop_step_s"],
                overhead=report["loop_step_s"] / bare - 1)
    print(f"  trainer loop B={spec['batch']}: {loop['overhead']:+.1%} over the bare step",
          file=sys.stderr, flush=True)
  results = []
  for spec in specs:
    results.append(summarise(spec, run_worker(spec)))
    print(f"  {results[-1]['label']} B={spec['batch']} devices={spec['devices']}: "
          f"{results[-1]['step_s']:.3f} s/step", file=sys.stderr, flush=True)

  m = harness.machine()
  print(f"\nContrastive pre-training step ({_VARIANT.value}) on {harness.describe(m)}. "
        f"Median of {steps} steps after one warm-up step; each row a separate process.\n")
  print(table(results))
  if loop:
    print(f"\ntrainer.fit's loop (input pipeline, device prefetch, metrics kept on the "
          f"device) at B = {loop['batch']}: {loop['loop_step_s']:.3f} s/step against "
          f"{loop['bare_step_s']:.3f} s for the bare step in the same process "
          f"(median of {2 * loop['steps']}), overhead {loop['overhead']:+.1%}.")
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump({"machine": m, "results": results, "loop": loop}, f, indent=2)


if __name__ == "__main__":
  app.run(main)
