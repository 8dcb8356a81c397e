r"""Table 6 of the paper: inference time per instance, coughjax beside a PyTorch twin.

  python benchmarks/latency.py [--batch_sizes=1,1024] [--repeats=20] [--json=PATH]
  python benchmarks/latency.py --repeats=60 --time_identical --pmap  # publication run
  python benchmarks/latency.py --quick     # seconds: every row at batch 1, 1 repeat

The defaults took 13:49 min on 2 quiet cores (benchmarks/README.md; longer when a
batch-1024 VGGish call slows from ~12 s to ~25 s on a loaded machine); one progress
line per row and batch size goes to stderr as it is measured, with an estimate of the
time left.

One row per row of Table 6, each built from its downstream config
(configs/downstream.py) with the branches' `init` set to "scratch": weights do not
change the cost, and a -CP row is the same architecture as its plain row (the
paper's CP rows differ from theirs by noise only). The model runs in inference mode
with the config's DS masking (the last five rows: both branches draw a random key
mask at eval, as in the paper).

Implementations, timed in the same process, interleaved repeat by repeat:

* coughjax: `jax.jit` of `coughjax.infer.probabilities`, the one inference path
  that the downstream evaluation and `coughjax.predict` use, for the row's model
  (`downstream.Setup`'s Classifier) in chunks of the config's `model.eval_chunk_size`
  ("auto": on CPU 16 clips, 256 for GRU-only rows; the whole batch on GPU/TPU), each
  clip's DS masks drawn inside from its own seed (recording digest, clip index):
  on one device without pmap. Input already on the device, `block_until_ready`
  included. Compile time (first call minus a steady call) is excluded and shown
  apart.
* coughjax pmap (only with `--pmap`): the downstream trainer's own
  `Setup.predict_step` (the same computation as the evaluation loop calls it: a
  shard_map over the device mesh that gathers every row's probability), to show what
  that dispatch adds.
* coughjax GPU: an empty column, no GPU having been available to the published runs.
* torch paper-style: the twin (benchmarks/torch_twins.py, the same weights) in plain
  eager mode under `torch.no_grad()`, whole batch at once, masks from the paper's
  Python for-loop generator.
* torch best: the twin with the vectorised torch mask under `torch.inference_mode()`,
  the faster of the whole batch and 16-clip chunks (the coughjax chunk size): both
  are timed in the same interleaved repeats, the lower median is the row's best
  (named in the table). torch.compile
  (inductor) is a candidate only with `--torch_compile` (the published tables were
  measured without it).

Rows whose coughjax program is identical (same StableHLO: VGGish (pre-trained) and
VGGish, each -CP row and its plain row) are timed once and shown on both, unless
`--time_identical`. After the table, the five DS-masked ensembles are timed like for
like (`ds_flatness`: the masked program at every rate, 0 % an all-False mask).

Load: the CPU time that other processes took is counted (/proc/stat less this
process's own CPU time, in cores) over a second before the run and over the run, with
the hypervisor's steal time (a neighbour on a shared host); more than 0.15 of a core
means another job shared the cores, which slows the implementations unevenly, and the
report then says in bold, above the tables and after them, that its times and ratios
cannot be trusted (`harness.LoadMonitor`; without /proc/stat it falls back to the load
average). The `others` column is the same count over each row's own timings (and the
flatness table's over each batch size's), so a shared run says which rows it hit.

Per-instance time = seconds per call / batch; median and interquartile range over
`--repeats` repeats (fewer, at least one, where a row's timed repeats at a batch size
would exceed `--max_timed_s`), each lasting at least `--min_repeat_s`. Torch gets every core
(torch.set_num_threads(os.cpu_count())), as XLA:CPU does. `max |dp|` is the largest
difference between coughjax's and the twin's probabilities on 8 clips (rows without
masking; masks are random and differ between the frameworks).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
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
from coughjax.train import mesh as mesh_lib
import torch_twins

_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["1", "1024"], "batch sizes to time")
# Many short repeats rather than a few long ones: one program timed under five labels
# spread up to 1.16 (max/min of medians) with 15 repeats of 0.2 s on this host, 1.01-1.04
# with 60 of 0.05 s (benchmarks/timing_noise.py, benchmarks/README.md).
_REPEATS = flags.DEFINE_integer("repeats", 20, "timed repeats per implementation (at "
                                "most: see --max_timed_s)")
_MIN_REPEAT_S = flags.DEFINE_float("min_repeat_s", 0.05, "each repeat calls a function "
                                   "until it has run this long")
_MAX_TIMED_S = flags.DEFINE_float("max_timed_s", 30.0, "fewer repeats (at least 1) where "
                                  "the timed repeats of a row at a batch size would last "
                                  "longer than this (VGGish at batch 1024: ~25 s a call)")
_PMAP = flags.DEFINE_bool("pmap", False, "also time the downstream trainer's own "
                          "predict step (the coughjax pmap column)")
_TIME_IDENTICAL = flags.DEFINE_bool("time_identical", False, "time every row, also those "
                                    "whose program is identical to an earlier row's")
_FLATNESS_REPEATS = flags.DEFINE_integer(
    "flatness_repeats", 60, "repeats of the DS flatness table (at least --repeats)")
_ROWS = flags.DEFINE_list("rows", [], "only these variants (default: all 14 rows)")
_JSON = flags.DEFINE_string("json", None, "also write the results here")
_QUICK = flags.DEFINE_bool("quick", False, "smoke run: batch 1, 1 short repeat, all rows")
_DS_FLATNESS = flags.DEFINE_bool("ds_flatness", True, "also time coughjax's five DS-masked "
                                  "ensembles like for like, interleaved (max/min over "
                                  "masking rates)")
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


# coughjax / best torch that every row should reach (issue 30).
TARGET_RATIO = 0.8
# The rows of one encoder each, whose distance from the FLOP floor the summary gives.
ENCODER_ROWS = ("Transformer", "GRU", "VGGish")


class ParamsOnly(NamedTuple):
  """What `downstream.Setup.predict_step` reads of a TrainState (a pytree)."""
  params: Any


def row_config(variant: str):
  """The downstream config of `variant`, every branch initialised from scratch."""
  config = downstream_configs.get_config(variant)
  for key in downstream_configs.BRANCHES:
    if config[key].name:
      config[key].init = "scratch"
  return config


def encoder_configs(config) -> list[dict[str, Any]]:
  return [downstream.encoder_config(config, k)
          for k in downstream_configs.branch_keys(config)]


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


def clip_ids(batch: int) -> tuple[np.ndarray, np.ndarray]:
  """(rec_keys [batch, 2], clip_index [batch]) for timing: one recording's clips."""
  return np.zeros((batch, 2), np.uint32), np.arange(batch)


def coughjax_predict(config, setup, mask_rates=None):
  """`predict(params, x, rec_keys, clip_index)`: the jitted `coughjax.infer.probabilities`
  over [batch, T, mel] clips in chunks of the config's chunk size (`mask_rates`: see
  `infer.branch_masks`; None = the model as configured)."""
  return jax.jit(functools.partial(infer.probabilities, setup.model,
                                   chunk_size=config.model.eval_chunk_size,
                                   mask_rates=mask_rates))


def init_params(config, setup, abstract: bool = False):
  """The model's initial parameters as Setup.init_state draws them, without the
  optimiser state (initialising Adam for VGGish's 72M parameters compiles ~30 small
  programs, and inference does not read it). `abstract`: shapes only."""
  shape = (config.features.clip_frames, config.features.nfilt)

  def init():
    return setup.init({"params": jax.random.PRNGKey(0), "mask": jax.random.PRNGKey(0)},
                      jnp.zeros((2,) + shape))["params"]

  return jax.eval_shape(init) if abstract else init()


def program_fingerprint(config) -> str:
  """A digest of the row's coughjax inference program (StableHLO at 8 clips).

  Rows with the same digest run the same computation on same-shaped weights
  (VGGish and VGGish (pre-trained): frozen weights change training, not inference;
  each -CP row and its plain row), and their twins are built from the same encoder
  configs, so by default such a row is timed once and reported on both.
  """
  setup = downstream.Setup.create(config)
  params = init_params(config, setup, abstract=True)
  x = jax.ShapeDtypeStruct((8, config.features.clip_frames, config.features.nfilt),
                           jnp.float32)
  text = coughjax_predict(config, setup).lower(params, x, *clip_ids(8)).as_text()
  return hashlib.sha256(text.encode()).hexdigest()


@dataclasses.dataclass
class Options:
  repeats: int
  min_repeat_s: float
  max_timed_s: float
  pmap: bool
  torch_compile: bool


class Progress:
  """Per-measurement progress on stderr, flushed, with an estimate of the time left.

  Each unit of work (a row at a batch size, a flatness batch) has a prior cost in
  seconds, from its FLOPs; the time left is the remaining prior cost scaled by the
  ratio of elapsed time to the prior cost of what is done.
  """

  def __init__(self, units: list[tuple[str, float]]):
    self.prior = dict(units)
    self.done = 0.0
    self.count = 0
    self.start = time.perf_counter()

  def report(self, unit: str, message: str) -> None:
    self.count += 1
    self.done += self.prior[unit]
    elapsed = time.perf_counter() - self.start
    left = (sum(self.prior.values()) - self.done) * elapsed / max(self.done, 1e-9)
    print(f"[{self.count}/{len(self.prior)} {_minutes(elapsed)} elapsed, ~{_minutes(left)} "
          f"left] {unit}: {message}", file=sys.stderr, flush=True)


def _minutes(seconds: float) -> str:
  return f"{int(seconds // 60)}:{int(seconds % 60):02d}"


def prior_cost_s(flops_per_instance: float, batch: int, implementations: int,
                 repeats: int, min_repeat_s: float, max_timed_s: float = math.inf
                 ) -> float:
  """A rough prior of a measurement's seconds at ~40 GFLOP/s a call: set-up and
  compilation, two warm-up calls per implementation, then the timed repeats (each
  implementation's lasting about max(min_repeat_s, a call), at most max_timed_s in
  all, as `harness.time_interleaved` caps them)."""
  call_s = flops_per_instance * batch / 40e9
  timed_s = min(max_timed_s, repeats * implementations * max(min_repeat_s, call_s))
  return 6.0 + implementations * 2 * call_s + timed_s


def measure_row(row: Row, config, batch_sizes: list[int], opts: Options,
                progress: Progress) -> list[dict[str, Any]]:
  """Times one Table 6 row at every batch size."""
  setup = downstream.Setup.create(config)
  params = init_params(config, setup)
  predict = coughjax_predict(config, setup)
  shape = (config.features.clip_frames, config.features.nfilt)
  p_state = mesh_lib.put_replicated(setup.mesh, ParamsOnly(params)) if opts.pmap else None

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
    x_jax = jax.device_put(x_np)
    x_torch = torch.from_numpy(x_np)
    ids = [jax.device_put(a) for a in clip_ids(batch)]

    fns = {"coughjax": lambda: predict(params, x_jax, *ids).block_until_ready()}
    if opts.pmap:
      x_pmap, *ids_pmap = mesh_lib.global_batch(setup.mesh, (x_np, *clip_ids(batch)))
      fns["coughjax pmap"] = (
          lambda: setup.predict_step(p_state, x_pmap, *ids_pmap).block_until_ready())

    def paper_fn():
      with torch.no_grad():
        return torch.sigmoid(paper_twin(x_torch))

    fns["torch paper-style"] = paper_fn
    candidates = torch_candidates(best_twin, x_torch, opts.torch_compile)
    fns.update({f"torch {k}": fn for k, fn in candidates.items()})
    # Every candidate for the best torch is timed with the others; the best is the
    # lowest median of the same run.
    start = harness.cpu_seconds()
    timings = harness.time_interleaved(fns, repeats=opts.repeats,
                                       min_repeat_s=opts.min_repeat_s, warmup=2,
                                       max_timed_s=opts.max_timed_s)
    cpu = harness.cpu_since(start)
    best_name = min(candidates, key=lambda k: timings[f"torch {k}"].median)

    def us(name):
      t = timings[name]
      return {"median_us": t.median / batch * 1e6,
              "iqr_us": [v / batch * 1e6 for v in t.iqr]}

    cj = us("coughjax")
    best = timings[f"torch {best_name}"]
    results.append({
        "label": row.label, "variant": row.variant, "batch": batch,
        "paper_us": paper.TABLE6_US[row.label],
        "repeats": len(timings["coughjax"].samples),
        "coughjax": dict(cj, compile_s=max(timings["coughjax"].first_s
                                           - timings["coughjax"].median, 0.0)),
        "coughjax_pmap": us("coughjax pmap") if opts.pmap else None,
        "coughjax_gpu": None,  # no GPU in this run: see benchmarks/README.md
        "torch_paper_style": us("torch paper-style"),
        "torch_best": dict(us(f"torch {best_name}"), impl=best_name,
                           first_call_s=best.first_s),
        "torch_candidates_us": {k: timings[f"torch {k}"].median / batch * 1e6
                                for k in candidates},
        "ratio_best": cj["median_us"] / (best.median / batch * 1e6),
        "ratio_paper_style": cj["median_us"] / us("torch paper-style")["median_us"],
        "flops_per_instance": flops,
        "coughjax_gflops": flops / (cj["median_us"] * 1e-6) / 1e9,
        "max_abs_diff": max_diff,
        "same_program_as": None,
        "cpu": cpu,  # other processes' and steal cores while the row was timed
    })
    progress.report(f"{row.label} @ {batch}",
                    f"coughjax {_fmt_us(cj['median_us'])} µs, torch best "
                    f"{_fmt_us(results[-1]['torch_best']['median_us'])} µs ({best_name}): "
                    f"{results[-1]['ratio_best']:.2f}x")
  return results


DS_RATES = (0, 25, 50, 75, 100)
_AGAIN = "0% again"  # the flatness table's control: the 0 % program compiled twice


def ds_flatness(batch_sizes: list[int], repeats: int, min_repeat_s: float,
                progress: Progress) -> dict[str, dict[str, Any]]:
  """coughjax's µs per instance of the five DS-masked ensembles, like for like.

  Each ensemble runs the same masked program at its rate: the masks are drawn and
  applied at every rate, 0 % included (an all-False mask; the models as configured
  skip masking at 0 %), so the programs differ in one constant, the number of masked
  steps. The five run in turn within every repeat, so drift of a shared machine's
  speed hits them alike and max/min isolates the cost of the masking rate. A control
  runs with them: the 0 % program jitted and compiled a second time, an executable of
  its own, whose ratio to the first (`same_program`, ≥ 1) is what two compiles of one
  program differ by with no rate between them (timing noise, and whatever sets one
  executable apart from another: its buffers, its place in memory).

  Returns:
    {str(batch): {"0%": µs, ..., "100%": µs, "max_over_min": x, "same_program": x,
    "cpu": other processes' and steal cores over the batch size's timings}}.
  """
  models = {}
  for label, rate in [(f"{r}%", r) for r in DS_RATES] + [(_AGAIN, 0)]:
    # _AGAIN: a new jit of the 0 % function, so its own trace, compile and executable.
    config = row_config(f"ens_transformer_cp_ds{rate}")
    setup = downstream.Setup.create(config)
    models[label] = (init_params(config, setup),
                     coughjax_predict(config, setup, mask_rates=(rate / 100,) * 2))
  shape = (config.features.clip_frames, config.features.nfilt)
  out = {}
  for batch in batch_sizes:
    x = jax.device_put(np.random.default_rng(batch).standard_normal((batch,) + shape,
                                                                    np.float32))
    ids = [jax.device_put(a) for a in clip_ids(batch)]

    def timed(params, predict):
      return lambda: predict(params, x, *ids).block_until_ready()

    fns = {label: timed(*model) for label, model in models.items()}
    start = harness.cpu_seconds()
    timings = harness.time_interleaved(fns, repeats=repeats, min_repeat_s=min_repeat_s)
    cpu = harness.cpu_since(start)
    us = {label: t.median / batch * 1e6 for label, t in timings.items()}
    again = us.pop(_AGAIN)
    out[str(batch)] = dict(us, max_over_min=max(us.values()) / min(us.values()),
                           same_program=max(again, us["0%"]) / min(again, us["0%"]),
                           cpu=cpu)
    progress.report(f"DS flatness @ {batch}",
                    f"max/min {out[str(batch)]['max_over_min']:.2f}, same program "
                    f"twice {out[str(batch)]['same_program']:.2f}")
  return out


def _fmt_us(v: float) -> str:
  return f"{v:,.1f}" if v < 1000 else f"{v:,.0f}"


def table(results: list[dict[str, Any]], batch: int) -> str:
  header = ["model", "paper µs (RTX 2080 Ti)", "coughjax µs", "IQR", "coughjax pmap µs",
            "coughjax GPU µs", "torch paper-style µs", "torch best µs", "torch best is",
            "coughjax / best", "coughjax / paper-style", "compile s", "GFLOP/s",
            "max abs dp", "others"]
  rows = []
  for r in results:
    if r["batch"] != batch:
      continue
    cj, ps, best = r["coughjax"], r["torch_paper_style"], r["torch_best"]
    lo, hi = cj["iqr_us"]
    label = r["label"]
    if r["same_program_as"]:
      label += f" (timed as {r['same_program_as']}: same program)"
    rows.append([
        label, f"{r['paper_us']:.2f}", _fmt_us(cj["median_us"]),
        f"{_fmt_us(lo)}–{_fmt_us(hi)}",
        _fmt_us(r["coughjax_pmap"]["median_us"]) if r["coughjax_pmap"] else "–", "–",
        _fmt_us(ps["median_us"]), _fmt_us(best["median_us"]), best["impl"],
        f"{r['ratio_best']:.2f}", f"{r['ratio_paper_style']:.2f}",
        f"{cj['compile_s']:.2f}", f"{r['coughjax_gflops']:.1f}",
        "–" if r["max_abs_diff"] is None else f"{r['max_abs_diff']:.1e}",
        _others(r["cpu"])])
  return harness.markdown_table(header, rows, "l" + "r" * 7 + "l" + "r" * 6)


def _others(cpu) -> str:
  """A row's `others` cell: the cores other processes (and the hypervisor's steal)
  took while it was timed."""
  return "–" if cpu is None else f"{cpu['others_cores'] + cpu['steal_cores']:.2f}"


def flatness_table(flatness: dict[str, dict[str, float]]) -> str:
  rates = [f"{r}%" for r in DS_RATES]
  return harness.markdown_table(
      ["batch", *rates, "max/min", "0 % twice: max/min", "others"],
      [[b, *(_fmt_us(t[r]) for r in rates), f"{t['max_over_min']:.2f}",
        f"{t['same_program']:.2f}", _others(t["cpu"])]
       for b, t in flatness.items()])


def summary(results: list[dict[str, Any]], peak: dict[str, float]) -> str:
  """Ratios to the best twin, the main table's DS rows, each encoder's FLOP floor."""
  lines = []
  peak_flops = max(peak.values())
  for batch in sorted({r["batch"] for r in results}):
    at = {r["label"]: r for r in results if r["batch"] == batch}
    ratios = [r["ratio_best"] for r in at.values()]
    worst = max(at.values(), key=lambda r: r["ratio_best"])
    lines.append(f"- batch {batch}: coughjax / best torch {min(ratios):.2f}–{max(ratios):.2f} "
                 f"over {len(ratios)} rows, {sum(x <= TARGET_RATIO for x in ratios)} at or "
                 f"under {TARGET_RATIO}, {sum(x <= 1.0 for x in ratios)} at or under 1.0 "
                 f"(highest: {worst['label']})")
    ds = [at[k] for k in at if k.startswith("Transformer-CP x2, DS")]
    if len(ds) > 1:
      ours = [r["coughjax"]["median_us"] for r in ds]
      theirs = [r["paper_us"] for r in ds]
      loop = [r["torch_paper_style"]["median_us"] for r in ds]
      lines.append(f"- batch {batch}: DS-masked rows of this table (timed one after another; "
                   f"0 % runs unmasked) max/min over rates: coughjax "
                   f"{max(ours) / min(ours):.2f}, torch paper-style "
                   f"{max(loop) / min(loop):.2f}, paper {max(theirs) / min(theirs):.2f}")
    for label in ENCODER_ROWS:  # how far each encoder runs from its FLOP floor
      if label in at:
        r = at[label]
        floor = r["flops_per_instance"] / peak_flops * 1e6
        lines.append(f"- batch {batch}: {label} {r['flops_per_instance'] / 1e6:,.2f} "
                     f"MFLOP/instance; FLOP floor at {peak_flops / 1e9:.0f} GFLOP/s = "
                     f"{_fmt_us(floor)} µs; coughjax {_fmt_us(r['coughjax']['median_us'])} "
                     f"µs = {r['coughjax']['median_us'] / floor:.2f}x the floor "
                     f"({r['coughjax_gflops']:.0f} GFLOP/s)")
  return "\n".join(lines)


def main(argv):
  del argv
  if not _COMPILATION_CACHE.value:
    jax.config.update("jax_enable_compilation_cache", False)
  # XLA:CPU and torch (set_threads) each use every core, one implementation at a time.
  with harness.LoadMonitor(torch_twins.set_threads()) as load:
    start = time.perf_counter()
    report = measure()
    report["wall_s"] = time.perf_counter() - start
  report.update(machine=harness.machine(), load=load.summary())
  print_report(report)
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump(report, f, indent=2)


def measure() -> dict[str, Any]:
  """Every measurement the flags ask for: the rows, then the DS flatness."""
  quick = _QUICK.value
  batch_sizes = [1] if quick else [int(b) for b in _BATCH_SIZES.value]
  opts = Options(repeats=1 if quick else _REPEATS.value,
                 min_repeat_s=0.01 if quick else _MIN_REPEAT_S.value,
                 max_timed_s=_MAX_TIMED_S.value, pmap=_PMAP.value,
                 torch_compile=_TORCH_COMPILE.value)
  rows = [r for r in ROWS if not _ROWS.value or r.variant in _ROWS.value]
  if not rows:
    raise app.UsageError(f"--rows matches none of {[r.variant for r in ROWS]}")

  # Rows that run the same program are timed once (unless --time_identical).
  configs = {r.label: row_config(r.variant) for r in rows}
  timed_as = {}
  if not _TIME_IDENTICAL.value:
    first_with = {}
    for r in rows:
      timed_as[r.label] = first_with.setdefault(program_fingerprint(configs[r.label]),
                                                r.label)
  units = []
  implementations = 4 + opts.pmap + opts.torch_compile
  for r in rows:
    if timed_as.get(r.label, r.label) == r.label:
      flops = forward_flops(configs[r.label])
      units += [(f"{r.label} @ {b}", prior_cost_s(flops, b, implementations, opts.repeats,
                                                   opts.min_repeat_s, opts.max_timed_s))
                for b in batch_sizes]
  flatness_repeats = 1 if quick else max(_FLATNESS_REPEATS.value, opts.repeats)
  if _DS_FLATNESS.value:
    ds_flops = forward_flops(configs.get("Transformer-CP x2, DS 50%")
                             or row_config("ens_transformer_cp_ds50"))
    units += [(f"DS flatness @ {b}", 10 + prior_cost_s(ds_flops, b, len(DS_RATES) + 1,
                                                       flatness_repeats, opts.min_repeat_s))
              for b in batch_sizes]
  progress = Progress(units)

  peak = harness.peak_matmul_flops(size=1024 if quick else 4096)
  results = []
  for row in rows:
    source = timed_as.get(row.label, row.label)
    if source != row.label:
      results += [dict(r, label=row.label, variant=row.variant,
                       paper_us=paper.TABLE6_US[row.label], same_program_as=source)
                  for r in results if r["label"] == source]
      continue
    results += measure_row(row, configs[row.label], batch_sizes, opts, progress)
  flatness = {}
  if _DS_FLATNESS.value:
    flatness = ds_flatness(batch_sizes, flatness_repeats, opts.min_repeat_s, progress)
  return {"peak_flops": peak, "batch_sizes": batch_sizes, "repeats": opts.repeats,
          "min_repeat_s": opts.min_repeat_s, "max_timed_s": opts.max_timed_s,
          "flatness_repeats": flatness_repeats, "results": results,
          "ds_flatness": flatness}


def print_report(report: dict[str, Any]) -> None:
  """The tables and notes of a `measure` report (with its machine, load and wall_s)."""
  peak, load = report["peak_flops"], report["load"]
  print(f"\nTable 6 on {harness.describe(report['machine'])}. Median of up to "
        f"{report['repeats']} repeats (fewer for calls over {report['max_timed_s']:.0f} s "
        f"a round); µs per instance; peak fp32 matmul "
        f"{', '.join(f'{k} {v / 1e9:.0f}' for k, v in peak.items())} GFLOP/s; the whole "
        f"run took {_minutes(report['wall_s'])} min.\n")
  # Before the tables, where no reader misses it; the `others` column says which rows.
  print(f"{'**' if load['shared'] else ''}{load['note']}.{'**' if load['shared'] else ''}\n")
  for batch in report["batch_sizes"]:
    print(f"Batch {batch}:\n")
    print(table(report["results"], batch))
    print()
  print(summary(report["results"], peak))
  if report["ds_flatness"]:
    print(f"\nDS-masked ensembles like for like: the same masked program at every rate "
          f"(0 % an all-False mask), the five timed interleaved with a second compile "
          f"of the 0 % program (its max/min with the first: what two executables of one "
          f"program differ by), median of {report['flatness_repeats']} repeats of at "
          f"least {report['min_repeat_s']:g} s (coughjax µs per instance; "
          "paper max/min 1.74):\n")
    print(flatness_table(report["ds_flatness"]))
  if load["shared"]:
    print(f"\n**{load['note']}.**")

if __name__ == "__main__":
  app.run(main)
