r"""Table 6 of the paper: inference time per instance, coughjax beside a PyTorch twin.

  python benchmarks/latency.py [--batch_sizes=1,1024] [--repeats=5] [--json=PATH]
  python benchmarks/latency.py --quick     # seconds: every row at batch 1, 1 repeat

One row per row of Table 6, each built from its downstream config
(configs/downstream.py) with the branches' `init` set to "scratch": weights do not
change the cost, and a -CP row is the same architecture as its plain row (the
paper's CP rows differ from theirs by noise only). The model runs in inference mode
with the config's DS masking (the last five rows: both branches draw a random key
mask at eval, as in the paper).

Implementations, timed in the same process, interleaved repeat by repeat:

* coughjax: `jax.jit` of `coughjax.infer.probabilities`, the one inference path
  that the downstream evaluation and `coughjax.predict` use, for the row's model
  (`downstream.Setup`'s Classifier) in chunks of the config's `model.chunk_size` ("auto":
  16 clips on CPU, the whole batch on GPU/TPU; 0 for VGGish rows: whole batch), each clip's DS masks drawn inside from its own key:
  on one device without pmap. Input already on the device, `block_until_ready`
  included. Compile time (first call minus a steady call) is excluded and shown
  apart.
* coughjax pmap: the downstream trainer's own `Setup.predict_step` (the same
  computation under `jax.pmap`, as the evaluation loop calls it), to show what the
  pmap dispatch adds.
* torch paper-style: the twin (benchmarks/torch_twins.py, the same weights) in plain
  eager mode under `torch.no_grad()`, whole batch at once, masks from the paper's
  Python for-loop generator.
* torch best: the twin with the vectorised torch mask under `torch.inference_mode()`,
  the faster of the whole batch and 16-clip chunks (the coughjax chunk size), chosen
  per row and batch on the warm-up calls and named in the table. torch.compile
  (inductor) is a candidate only with `--torch_compile` (the published tables were
  measured without it).

Per-instance time = seconds per call / batch; median and interquartile range over
`--repeats` repeats, each lasting at least `--min_repeat_s`. Torch gets every core
(torch.set_num_threads(os.cpu_count())), as XLA:CPU does. `max |dp|` is the largest
difference between coughjax's and the twin's probabilities on 8 clips (rows without
masking; masks are random and differ between the frameworks).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
import time
from typing import Any, Callable, NamedTuple

from absl import app
from absl import flags

import harness  # puts the checkout on sys.path  # pylint: disable=g-bad-import-order

import jax  # pylint: disable=g-bad-import-order
import jax.numpy as jnp
import numpy as np
import torch

from configs import downstream as downstream_configs
from coughjax import infer
from coughjax import paper
from coughjax.models import vggish as vggish_lib
from coughjax.train import downstream
from coughjax.train import trainer
import torch_twins

_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["1", "1024"], "batch sizes to time")
_REPEATS = flags.DEFINE_integer("repeats", 5, "timed repeats per implementation")
_MIN_REPEAT_S = flags.DEFINE_float("min_repeat_s", 0.3, "each repeat calls a function "
                                   "until it has run this long")
_ROWS = flags.DEFINE_list("rows", [], "only these variants (default: all 14 rows)")
_JSON = flags.DEFINE_string("json", None, "also write the results here")
_QUICK = flags.DEFINE_bool("quick", False, "smoke run: batch 1, 1 short repeat, all rows")
_DS_FLATNESS = flags.DEFINE_bool("ds_flatness", True, "also time coughjax's five DS-masked "
                                  "models interleaved (max/min over masking rates)")
_TORCH_COMPILE = flags.DEFINE_bool("torch_compile", False, "add torch.compile (inductor) "
                                   "as a candidate for the best torch")
_COMPILATION_CACHE = flags.DEFINE_bool(
    "compilation_cache", False, "let jax use a persistent compilation cache from the "
    "environment (compile times are then cache loads)")

TORCH_CHUNK = harness.TORCH_CHUNK


@dataclasses.dataclass(frozen=True)
class Row:
  label: str  # as in Table 6 (coughjax.paper.TABLE6_US)
  variant: str  # configs/downstream.py variant
  ds_masking: bool = False  # the paper's mask generator runs at inference


ROWS = (
    Row("VGGish", "vggish"),
    Row("VGGish (pre-trained)", "vggish_frozen"),
    Row("GRU", "gru"),
    Row("Transformer", "transformer"),
    Row("GRU-CP", "gru_cp_ft"),
    Row("Transformer-CP", "transformer_cp_ft"),
    Row("VGGish+Transformer", "ens_vggish_transformer"),
    Row("GRU+Transformer", "ens_gru_transformer"),
    Row("GRU-CP+Transformer-CP", "ens_gru_cp_transformer_cp"),
    *(Row(f"Transformer-CP x2, DS {r}%", f"ens_transformer_cp_ds{r}", ds_masking=True)
      for r in (0, 25, 50, 75, 100)),
)


class ParamsOnly(NamedTuple):
  """What `downstream.Setup.predict_step` reads of a TrainState (a pytree)."""
  params: Any


def row_config(variant: str):
  """The downstream config of `variant`, every branch initialised from scratch."""
  config = downstream_configs.get_config(variant)
  for key in downstream.BRANCHES:
    if config[key].name:
      config[key].init = "scratch"
  return config


def encoder_configs(config) -> list[dict[str, Any]]:
  return [downstream.encoder_config(config, k) for k in downstream.BRANCHES
          if config[k].name]


def forward_flops(config) -> float:
  """Forward FLOPs per clip of the row's encoders (the FC head is negligible)."""
  total = 0.0
  t, mel = config.features.clip_frames, config.features.nfilt
  for cfg in encoder_configs(config):
    if cfg["name"] == "transformer":
      total += harness.transformer_flops(t, mel, cfg["d_model"], cfg["num_layers"],
                                        cfg["num_heads"], cfg["mlp_dim"])
    elif cfg["name"] == "gru":
      total += harness.gru_flops(t, mel, cfg["d_model"], cfg["num_layers"])
    else:
      total += harness.vggish_flops(
          vggish_lib.CONV_LAYERS,
          [w for _, w in vggish_lib.HIDDEN_FC_LAYERS] + [cfg["embedding_dim"]], t, mel)
  return total


def classifier_twin(config, params, mask_impl: str, ds_masking: bool
                    ) -> torch_twins.ClassifierTwin:
  """The row's classifier in torch, with coughjax's weights, in eval mode.

  Paper-style ("loop") twins run the mask generator only in the DS-masking rows,
  where the paper has it (at rate 0 too: its all-ones matrix); the vectorised twin
  masks wherever coughjax does (mask_rate > 0 with mask_at_eval).
  """
  encoders = []
  for seed, cfg in enumerate(encoder_configs(config)):
    # Resolved settings carry mask fields only for encoders that mask (Transformer).
    mask_rate = cfg.get("mask_rate", 0.0)
    if mask_impl == "loop":
      rate = mask_rate if ds_masking else None
    else:
      rate = mask_rate if cfg.get("mask_at_eval", False) else None
    encoders.append(torch_twins.encoder_twin(cfg, mask_rate=rate, mask_impl=mask_impl,
                                             seed=seed))
  twin = torch_twins.ClassifierTwin(encoders, dropout=config.model.head_dropout)
  return torch_twins.load_flax_params(twin, params).eval()


def torch_candidates(twin: torch.nn.Module, x: torch.Tensor, compile_too: bool
                     ) -> dict[str, Callable[[], Any]]:
  """The ways of running the vectorised twin that may be the fastest."""

  def whole():
    with torch.inference_mode():
      return torch.sigmoid(twin(x))

  def chunked():
    with torch.inference_mode():
      return torch.sigmoid(torch.cat([twin(c) for c in x.split(TORCH_CHUNK)]))

  out = {"eager, whole batch": whole}
  if x.shape[0] > TORCH_CHUNK:
    out[f"eager, {TORCH_CHUNK}-clip chunks"] = chunked
  if compile_too:
    compiled = torch.compile(twin)

    def whole_compiled():
      with torch.no_grad():
        return torch.sigmoid(compiled(x))

    out["torch.compile, whole batch"] = whole_compiled
  return out


def _first_call_s(fn: Callable[[], Any]) -> float:
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def clip_ids(batch: int) -> tuple[np.ndarray, np.ndarray]:
  """(rec_keys [batch, 2], clip_index [batch]) for timing: one recording's clips."""
  return np.zeros((batch, 2), np.uint32), np.arange(batch)


def coughjax_model(config):
  """(setup, params, predict) of a row: `predict(params, x, rec_keys, clip_index)`
  is the jitted `coughjax.infer.probabilities` over [batch, T, mel] clips in chunks
  of the config's chunk size."""
  setup = downstream.Setup.create(config)
  shape = (config.features.clip_frames, config.features.nfilt)
  # The model's initial parameters as Setup.init_state draws them, without the
  # optimiser state (initialising Adam for VGGish's 72M parameters compiles ~30
  # small programs, and inference does not read it).
  params = setup.init({"params": jax.random.PRNGKey(0), "mask": jax.random.PRNGKey(0)},
                      jnp.zeros((2,) + shape))["params"]

  predict = jax.jit(functools.partial(infer.probabilities, setup.model,
                                      chunk_size=config.model.chunk_size))
  return setup, params, predict


def measure_row(row: Row, batch_sizes: list[int], repeats: int, min_repeat_s: float,
                compile_too: bool) -> list[dict[str, Any]]:
  """Times one Table 6 row at every batch size."""
  config = row_config(row.variant)
  setup, params, predict = coughjax_model(config)
  shape = (config.features.clip_frames, config.features.nfilt)
  p_state = trainer.replicate(ParamsOnly(params))

  host_params = jax.device_get(params)
  paper_twin = classifier_twin(config, host_params, "loop", row.ds_masking)
  best_twin = classifier_twin(config, host_params, "vectorised", row.ds_masking)
  flops = forward_flops(config)

  # Same function, same weights: outputs agree where no random mask is drawn.
  max_diff = None
  if not config.model.mask_rate:
    x8 = np.random.default_rng(0).standard_normal((8,) + shape, np.float32)
    ours = np.asarray(predict(params, x8, *clip_ids(8)))
    with torch.inference_mode():
      theirs = torch.sigmoid(best_twin(torch.from_numpy(x8))).numpy()
    max_diff = float(np.abs(ours - theirs).max())

  results = []
  for batch in batch_sizes:
    x_np = np.random.default_rng(batch).standard_normal((batch,) + shape, np.float32)
    x_jax = jax.device_put(x_np[None])  # [devices = 1, batch, T, mel]
    x_torch = torch.from_numpy(x_np)
    ids = [jax.device_put(a) for a in clip_ids(batch)]
    ids_pmap = [jax.device_put(a[None]) for a in clip_ids(batch)]

    def coughjax_fn():
      return predict(params, x_jax[0], *ids).block_until_ready()

    def pmap_fn():
      return setup.predict_step(p_state, x_jax, *ids_pmap).block_until_ready()

    def paper_fn():
      with torch.no_grad():
        return torch.sigmoid(paper_twin(x_torch))

    first = {"coughjax": _first_call_s(coughjax_fn), "coughjax pmap": _first_call_s(pmap_fn)}
    candidates = torch_candidates(best_twin, x_torch, compile_too)
    first.update({k: _first_call_s(fn) for k, fn in candidates.items()})
    # Pick the best torch on a short interleaved run, then time it with the others
    # (every function has run once above: one more warm-up call is enough).
    trial = harness.time_interleaved(candidates, repeats=1, min_repeat_s=min_repeat_s / 3,
                                     warmup=1)
    best_name = min(trial, key=lambda k: trial[k].median)
    timings = harness.time_interleaved(
        {"coughjax": coughjax_fn, "coughjax pmap": pmap_fn, "torch paper-style": paper_fn,
         "torch best": candidates[best_name]}, repeats=repeats, min_repeat_s=min_repeat_s,
        warmup=1)

    def us(name):
      t = timings[name]
      return {"median_us": t.median / batch * 1e6,
              "iqr_us": [v / batch * 1e6 for v in t.iqr]}

    cj = us("coughjax")
    results.append({
        "label": row.label, "variant": row.variant, "batch": batch,
        "paper_us": paper.TABLE6_US[row.label],
        "coughjax": dict(cj, compile_s=max(first["coughjax"] - timings["coughjax"].median,
                                           0.0)),
        "coughjax_pmap": us("coughjax pmap"),
        "torch_paper_style": us("torch paper-style"),
        "torch_best": dict(us("torch best"), impl=best_name,
                           first_call_s=first[best_name]),
        "flops_per_instance": flops,
        "coughjax_gflops": flops / (cj["median_us"] * 1e-6) / 1e9,
        "max_abs_diff": max_diff,
    })
  return results


def ds_flatness(batch_sizes: list[int], repeats: int, min_repeat_s: float
                ) -> dict[int, dict[str, float]]:
  """coughjax's µs per instance of the five DS-masked rows, timed interleaved.

  The rows of the main table are measured one after another, so drift of a shared
  machine's speed between them shows up as a rate effect; here the five models run
  in turn within every repeat, so max/min isolates the cost of the masking rate.
  """
  configs = {r.label: row_config(r.variant) for r in ROWS if r.ds_masking}
  models = {label: coughjax_model(c)[1:] for label, c in configs.items()}
  config = next(iter(configs.values()))
  shape = (config.features.clip_frames, config.features.nfilt)
  out = {}
  for batch in batch_sizes:
    x = jax.device_put(np.random.default_rng(batch).standard_normal((batch,) + shape,
                                                                    np.float32))
    ids = [jax.device_put(a) for a in clip_ids(batch)]

    def timed(params, predict, x=x, ids=ids):
      return lambda: predict(params, x, *ids).block_until_ready()

    fns = {label: timed(params, predict, x) for label, (params, predict) in models.items()}
    timings = harness.time_interleaved(fns, repeats=repeats, min_repeat_s=min_repeat_s)
    out[batch] = {label: t.median / batch * 1e6 for label, t in timings.items()}
  return out


def _fmt_us(v: float) -> str:
  return f"{v:,.1f}" if v < 1000 else f"{v:,.0f}"


def table(results: list[dict[str, Any]], batch: int) -> str:
  header = ["model", "paper µs (RTX 2080 Ti)", "coughjax µs", "IQR", "coughjax pmap µs",
            "torch paper-style µs", "torch best µs", "torch best is",
            "coughjax / best", "coughjax / paper-style", "compile s", "GFLOP/s",
            "max abs dp"]
  rows = []
  for r in results:
    if r["batch"] != batch:
      continue
    cj, ps, best = r["coughjax"], r["torch_paper_style"], r["torch_best"]
    lo, hi = cj["iqr_us"]
    rows.append([
        r["label"], f"{r['paper_us']:.2f}", _fmt_us(cj["median_us"]),
        f"{_fmt_us(lo)}–{_fmt_us(hi)}", _fmt_us(r["coughjax_pmap"]["median_us"]),
        _fmt_us(ps["median_us"]),
        _fmt_us(best["median_us"]), best["impl"],
        f"{cj['median_us'] / best['median_us']:.2f}",
        f"{cj['median_us'] / ps['median_us']:.2f}", f"{cj['compile_s']:.2f}",
        f"{r['coughjax_gflops']:.1f}",
        "–" if r["max_abs_diff"] is None else f"{r['max_abs_diff']:.1e}"])
  return harness.markdown_table(header, rows, "l" + "r" * 6 + "l" + "r" * 5)


def summary(results: list[dict[str, Any]], peak: dict[str, float]) -> str:
  """DS-masking flatness and the Transformer's distance to the FLOP floor."""
  lines = []
  peak_flops = max(peak.values())
  for batch in sorted({r["batch"] for r in results}):
    at = {r["label"]: r for r in results if r["batch"] == batch}
    ds = [at[k] for k in at if k.startswith("Transformer-CP x2, DS")]
    if len(ds) > 1:
      ours = [r["coughjax"]["median_us"] for r in ds]
      theirs = [r["paper_us"] for r in ds]
      loop = [r["torch_paper_style"]["median_us"] for r in ds]
      lines.append(f"- batch {batch}: DS-masked ensemble max/min over rates: coughjax "
                   f"{max(ours) / min(ours):.2f}, torch paper-style "
                   f"{max(loop) / min(loop):.2f}, paper {max(theirs) / min(theirs):.2f}")
    if "Transformer" in at:
      r = at["Transformer"]
      floor = r["flops_per_instance"] / peak_flops * 1e6
      lines.append(f"- batch {batch}: Transformer {r['flops_per_instance'] / 1e6:.2f} "
                   f"MFLOP/instance; FLOP floor at {peak_flops / 1e9:.0f} GFLOP/s = "
                   f"{floor:.0f} µs; coughjax {r['coughjax']['median_us']:.0f} µs = "
                   f"{r['coughjax']['median_us'] / floor:.2f}x the floor "
                   f"({r['coughjax_gflops']:.0f} GFLOP/s)")
  return "\n".join(lines)


def main(argv):
  del argv
  if not _COMPILATION_CACHE.value:
    jax.config.update("jax_enable_compilation_cache", False)
  torch_twins.set_threads()
  quick = _QUICK.value
  batch_sizes = [1] if quick else [int(b) for b in _BATCH_SIZES.value]
  repeats = 1 if quick else _REPEATS.value
  min_repeat_s = 0.01 if quick else _MIN_REPEAT_S.value
  rows = [r for r in ROWS if not _ROWS.value or r.variant in _ROWS.value]
  if not rows:
    raise app.UsageError(f"--rows matches none of {[r.variant for r in ROWS]}")

  peak = harness.peak_matmul_flops(size=1024 if quick else 4096)
  results = []
  for row in rows:
    results += measure_row(row, batch_sizes, repeats, min_repeat_s, _TORCH_COMPILE.value)
    print(f"  {row.label}: " + ", ".join(
        f"batch {r['batch']} {r['coughjax']['median_us']:,.1f} µs" for r in results
        if r["label"] == row.label), file=sys.stderr, flush=True)
  m = harness.machine()
  print(f"\nTable 6 on {harness.describe(m)}. Median of {repeats} repeats; µs per "
        f"instance; peak fp32 matmul {', '.join(f'{k} {v / 1e9:.0f}' for k, v in peak.items())} "
        "GFLOP/s.\n")
  for batch in batch_sizes:
    print(f"Batch {batch}:\n")
    print(table(results, batch))
    print()
  print(summary(results, peak))
  flatness = {}
  if _DS_FLATNESS.value:
    flatness = ds_flatness(batch_sizes, repeats, min_repeat_s)
    print("\nDS-masked ensemble, the five rates timed interleaved (coughjax µs per "
          "instance):\n")
    labels = list(next(iter(flatness.values())))
    print(harness.markdown_table(
        ["batch", *(l.rsplit(" ", 1)[-1] for l in labels), "max/min"],
        [[b, *(_fmt_us(t[l]) for l in labels), f"{max(t.values()) / min(t.values()):.2f}"]
         for b, t in flatness.items()]))
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump({"machine": m, "peak_flops": peak, "repeats": repeats,
                 "results": results, "ds_flatness_us": flatness}, f, indent=2)


if __name__ == "__main__":
  app.run(main)
