r"""The paper's Tables 1, 3, 4 and 5 on real COVID-19 labels (covid19_cough), with
baselines and a verdict on each of the paper's findings.

  python -m coughjax.reproduce_covid19_cough                       # everything, ~1.6 h
  python -m coughjax.reproduce_covid19_cough --root=DIR --workdir=runs/covid19_cough \
      --seeds=5 --epochs=5 --vggish_epochs=1 --tables=1,3,4,5 \
      --settings=call-center,telegram,pooled

Three settings: within the call centre (`data.source_filter=call-center`), within
Telegram, and pooled (both sources). Every row of a setting runs the same seeds on
the same splits (run i of every row uses `--split_seed + i`, 70/10/20, stratified by
label within source), so rows are compared seed by seed. The -CP rows start from
contrastive pre-training on real audio, `configs/pretrain.py:<variant>,real`, in
`--pretrain_runs/<variant>_real` (run here if missing, resumed if interrupted,
reused if finished). Rows that need AudioSet VGGish weights are listed as not run.

Beside each table: logistic regression on per-recording log-mel statistics, and in
the pooled setting the source alone as the score (`coughjax.baselines`). Every row
and baseline lives in `--workdir/<setting>/<name>` and is skipped when its
results.json exists, so an interrupted report resumes. The report (ours mean (std)
over seeds beside the paper, baselines, one sentence per finding with the paired
difference that decides it, the data, settings and cost) goes to `--report`.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import json
import os
import pathlib
import shlex
import sys
import time
from typing import Any, Optional, Sequence

from absl import app
from absl import flags
from absl import logging
import ml_collections
import numpy as np

from coughjax import baselines
from coughjax import data
from coughjax import evaluate
from coughjax import paper
from coughjax.data import covid19_cough
from coughjax.data import features as features_lib
from coughjax.data import manifest as manifest_lib
from coughjax.overrides import apply_overrides
from coughjax.overrides import config_modules as _configs
from coughjax.train import run as run_lib

# setting -> data.source_filter
SETTINGS = {"call-center": "call-center", "telegram": "telegram", "pooled": ""}
DEFAULT_TABLES = (1, 3, 4, 5)
NOT_RUN = {
    "vggish_frozen": "needs the AudioSet VGGish weights, which cannot be downloaded here",
    "vggish_ft": "needs the AudioSet VGGish weights, which cannot be downloaded here",
}
# Defaults chosen so the full report fits one 3-hour session on 2 CPU cores. Measured
# (2026-12-01, 2 cores, the machine otherwise quiet): 94.5 min in all, of which the
# six real-audio pre-trainings 11 min and the VGGish-branch rows 36 min (their one
# epoch costs ~15x a Transformer row's five); every row's time is in the report's Cost
# section. On a machine loaded by other jobs (load 4-7) rows ran ~3x slower.
DEFAULT_SEEDS = 5
DEFAULT_EPOCHS = 5
DEFAULT_VGGISH_EPOCHS = 1
DEFAULT_PRETRAIN_EPOCHS = 20
COST_NOTE = (
    "The defaults were sized for one 3-hour session on 2 CPU cores; the Cost section "
    "below gives every row's wall time and the total of this run.")
LOGMEL = "logmel_logreg"
CHANNEL = "channel_only"
BASELINE_LABELS = {
    LOGMEL: "baseline: log-mel statistics + logistic regression",
    CHANNEL: "baseline: channel only, P(positive \\| source)",
}
BEST = "ens_transformer_cp_ds50"  # the paper's best model (Table 5)
METRICS = ("auc", "precision", "recall", "accuracy")
K_SE = 2.0  # a finding holds when its paired mean difference exceeds K_SE standard errors

def define_flags() -> None:
  """Defines the command's flags (at run time only: coughjax.reproduce, which a
  process may import too, defines some of the same names)."""
  global _ROOT, _WORKDIR, _SEEDS, _EPOCHS, _VGGISH_EPOCHS, _TABLES, _ROWS, _SETTINGS
  global _SPLIT_SEED, _PRETRAIN_RUNS, _PRETRAIN_EPOCHS, _COSWARA_ROOT, _RUNLOCAL, _REPORT
  global _PRETRAIN_SET, _DOWNSTREAM_SET
  _ROOT = flags.DEFINE_string("root", None, "covid19_cough release folder (default: "
                              "$COUGHJAX_COVID19_COUGH or ../shared/data/covid19_cough)")
  _WORKDIR = flags.DEFINE_string("workdir", "runs/covid19_cough",
                                 "where every row's and baseline's runs go")
  _SEEDS = flags.DEFINE_integer("seeds", DEFAULT_SEEDS, "runs (seeds and splits) per row")
  _EPOCHS = flags.DEFINE_integer("epochs", DEFAULT_EPOCHS, "downstream epochs per run")
  _VGGISH_EPOCHS = flags.DEFINE_integer(
      "vggish_epochs", DEFAULT_VGGISH_EPOCHS,
      "downstream epochs of rows with a VGGish branch (~30x a Transformer's cost on CPU)")
  _TABLES = flags.DEFINE_list("tables", [str(t) for t in DEFAULT_TABLES], "paper tables")
  _ROWS = flags.DEFINE_list("rows", None, "only these rows of the tables (default: all)")
  _SETTINGS = flags.DEFINE_list("settings", list(SETTINGS), "call-center, telegram, pooled")
  _SPLIT_SEED = flags.DEFINE_integer("split_seed", 0, "run i of every row uses split_seed + i")
  _PRETRAIN_RUNS = flags.DEFINE_string(
      "pretrain_runs", "runs", "folder of the pre-training workdirs <variant>_real")
  _PRETRAIN_EPOCHS = flags.DEFINE_integer(
      "pretrain_epochs", DEFAULT_PRETRAIN_EPOCHS,
      "epochs (15 steps of B = 256 each) of each real-audio pre-training; 0 = the "
      "config's default")
  _COSWARA_ROOT = flags.DEFINE_string(
      "coswara_root", None, "Coswara folder joined to the pre-training data (default: as "
      "configs/pretrain.py's real option; '' = pre-train on covid19_cough alone)")
  _RUNLOCAL = flags.DEFINE_bool("runlocal", False, "runlocal-sized configs (smoke test)")
  _REPORT = flags.DEFINE_string("report", "docs/reproduction_covid19_cough.md", "report path")
  _PRETRAIN_SET = flags.DEFINE_multi_string("pretrain_set", [], "key=value for pre-training")
  _DOWNSTREAM_SET = flags.DEFINE_multi_string("downstream_set", [],
                                              "key=value for every downstream row")


@dataclasses.dataclass(frozen=True)
class Options:
  """Everything the command's flags decide."""
  root: pathlib.Path
  workdir: pathlib.Path
  seeds: int = DEFAULT_SEEDS
  epochs: int = DEFAULT_EPOCHS
  vggish_epochs: int = DEFAULT_VGGISH_EPOCHS
  tables: tuple[int, ...] = DEFAULT_TABLES
  settings: tuple[str, ...] = tuple(SETTINGS)
  split_seed: int = 0
  pretrain_runs: pathlib.Path = pathlib.Path("runs")
  pretrain_epochs: int = DEFAULT_PRETRAIN_EPOCHS
  coswara_root: str = ""   # "" = pre-train on covid19_cough alone
  runlocal: bool = False
  pretrain_set: tuple[str, ...] = ()
  downstream_set: tuple[str, ...] = ()
  rows: Optional[tuple[str, ...]] = None  # None: every runnable row of `tables`

  def __post_init__(self):
    unknown = [t for t in self.tables if t not in paper.TABLES]
    if unknown:
      raise ValueError(f"--tables: unknown table(s) {unknown}; choose from "
                       f"{sorted(paper.TABLES)}")
    unknown = [s for s in self.settings if s not in SETTINGS]
    if unknown:
      raise ValueError(f"--settings: unknown setting(s) {unknown}; choose from "
                       f"{list(SETTINGS)}")
    if min(self.seeds, self.epochs, self.vggish_epochs) < 1:
      raise ValueError(f"--seeds, --epochs and --vggish_epochs must be >= 1, got "
                       f"{self.seeds}, {self.epochs}, {self.vggish_epochs}")
    if self.rows is not None:
      known = {v for t in self.tables for v in paper.TABLES[t]}
      bad = sorted(set(self.rows) - known)
      if bad:
        raise ValueError(f"rows {bad} are not in tables {list(self.tables)}")


def table_rows(opts: Options) -> dict[int, list[str]]:
  """Each table's rows to run (paper order), without the not-run ones."""
  return {t: [v for v in paper.TABLES[t] if v not in NOT_RUN
              and (opts.rows is None or v in opts.rows)] for t in opts.tables}


# --- configs -------------------------------------------------------------------------


def _suffix(opts: Options) -> str:
  return ",runlocal" if opts.runlocal else ""


def pretrain_config(variant: str, opts: Options) -> ml_collections.ConfigDict:
  """`configs/pretrain.py:<variant>,real`, its covid19_cough root set to `opts.root`."""
  pretrain_cfgs, _ = _configs()
  config = pretrain_cfgs.get_config(f"{variant},real{_suffix(opts)}")
  if opts.coswara_root:
    config.data.name = "coswara+covid19_cough"
    config.data.roots = f"coswara={opts.coswara_root},covid19_cough={opts.root}"
    config.data.root = ""
  else:
    config.data.name = "covid19_cough"
    config.data.roots = ""
    config.data.root = str(opts.root)
  if opts.pretrain_epochs:
    config.num_epochs = opts.pretrain_epochs
  apply_overrides(config, opts.pretrain_set)
  return config


def pretrain_workdir(config, opts: Options) -> pathlib.Path:
  return opts.pretrain_runs / (config.variant + ("_runlocal" if opts.runlocal else ""))


def downstream_config(variant: str, setting: str, opts: Options
                      ) -> ml_collections.ConfigDict:
  """A paper row's downstream config on covid19_cough in `setting` (CP branches not
  yet pointed at their pre-training)."""
  _, downstream_cfgs = _configs()
  config = downstream_cfgs.get_config(variant + _suffix(opts))
  config.data.name = "covid19_cough"
  config.data.root = str(opts.root)
  config.data.label = "covid19"
  config.data.source_filter = SETTINGS[setting]
  config.data.split_seed = opts.split_seed
  config.num_runs = opts.seeds
  vggish = "vggish" in (config.encoder_a.name, config.encoder_b.name)
  config.num_epochs = opts.vggish_epochs if vggish else opts.epochs
  apply_overrides(config, opts.downstream_set)
  return config


def _cp_branches(config):
  return [config[k] for k in ("encoder_a", "encoder_b")
          if config[k].name and config[k].init == "cp"]


# Fields of a saved config that must match for a finished run to be reused.
_PRETRAIN_KEYS = ("data.name", "data.root", "data.roots", "num_epochs", "batch_size",
                  "model.name", "model.mask_rate", "model.similarity")
_ROW_KEYS = ("data.name", "data.root", "data.source_filter", "data.split_seed",
             "data.split", "num_runs", "num_epochs")


def _get(config: dict, dotted: str):
  for part in dotted.split("."):
    config = config[part]
  return list(config) if isinstance(config, (list, tuple)) else config


def _check_reusable(workdir: pathlib.Path, config, keys: Sequence[str]) -> None:
  """A workdir made with other settings is an error, not a silent reuse."""
  path = workdir / "config.json"
  if not path.is_file():
    return
  saved = json.loads(path.read_text())
  want = json.loads(config.to_json_best_effort())
  diff = [f"{k}: {_get(saved, k)!r} there, {_get(want, k)!r} now" for k in keys
          if _get(saved, k) != _get(want, k)]
  if diff:
    raise ValueError(f"{workdir} holds a run with other settings ({'; '.join(diff)}); "
                     "delete it or choose another --workdir / --pretrain_runs")


def ensure_pretrained(variant: str, opts: Options, timings: dict) -> pathlib.Path:
  """Runs (or resumes, or reuses) the real-audio pre-training `variant`."""
  config = pretrain_config(variant, opts)
  workdir = pretrain_workdir(config, opts)
  _check_reusable(workdir, config, _PRETRAIN_KEYS)
  if workdir in timings:
    return workdir
  logging.info("pre-training %s in %s", config.variant, workdir)
  config.lock()
  start = time.monotonic()
  run_lib.run(config, str(workdir))  # resumes; returns soon if already finished
  timings[workdir] = _record_time(workdir, time.monotonic() - start)
  return workdir


def _record_time(workdir: pathlib.Path, seconds: float) -> float:
  """Keeps the longest wall time this workdir took (a reused run takes ~0 s)."""
  path = workdir / "timing.json"
  old = json.loads(path.read_text())["seconds"] if path.is_file() else 0.0
  best = max(old, seconds)
  path.write_text(json.dumps({"seconds": best}) + "\n")
  return best


# --- running ---------------------------------------------------------------------------


def _config_key(config) -> str:
  """The config without its name: rows with equal keys are the same experiment."""
  d = config.to_dict()
  d.pop("variant", None)
  return json.dumps(d, sort_keys=True, default=str)


def run_setting(setting: str, opts: Options, pretrain_timings: dict) -> dict[str, Any]:
  """Every row and baseline of one setting; {name: results.json contents}, with
  "same_as" for rows whose config equals an earlier row's."""
  out: dict[str, Any] = {}
  seen: dict[str, str] = {}
  for variant in dict.fromkeys(v for rows in table_rows(opts).values() for v in rows):
    config = downstream_config(variant, setting, opts)
    for branch in _cp_branches(config):
      if not branch.checkpoint:
        branch.checkpoint = str(ensure_pretrained(branch.pretrain, opts, pretrain_timings))
    key = _config_key(config)
    if key in seen:  # e.g. transformer_cp_m0_ft is transformer_cp_ft
      out[variant] = dict(out[seen[key]], same_as=seen[key])
      continue
    seen[key] = variant
    workdir = opts.workdir / setting / variant
    _check_reusable(workdir, config, _ROW_KEYS)
    if not (workdir / "results.json").is_file():
      logging.info("%s: %s in %s", setting, variant, workdir)
      config.lock()
      start = time.monotonic()
      run_lib.run(config, str(workdir))
      _record_time(workdir, time.monotonic() - start)
    out[variant] = _read_results(workdir)
  base = downstream_config("transformer", setting, opts)
  for name in (LOGMEL,) + ((CHANNEL,) if setting == "pooled" else ()):
    workdir = opts.workdir / setting / name
    _check_reusable(workdir, base, ("data.name", "data.root", "data.source_filter",
                                    "data.split_seed", "data.split", "num_runs"))
    if not (workdir / "results.json").is_file():
      start = time.monotonic()
      baselines.run(name, base, workdir)
      _record_time(workdir, time.monotonic() - start)
    out[name] = _read_results(workdir)
  return out


def _read_results(workdir: pathlib.Path) -> dict[str, Any]:
  results = json.loads((workdir / "results.json").read_text())
  timing = workdir / "timing.json"
  results["seconds"] = json.loads(timing.read_text())["seconds"] if timing.is_file() else None
  results["workdir"] = str(workdir)
  return results


# --- data description ---------------------------------------------------------------


def data_counts(opts: Options) -> dict[str, Any]:
  """Files in metadata.json, and recordings after the source's handling of identical
  files, per source x label; those with usable features (>= 0.5 s) too."""
  metadata = json.loads((opts.root / covid19_cough.METADATA).read_text())
  files = collections.Counter((m["source"], int(m["covid19"])) for m in metadata)
  cfg = downstream_config("transformer", "pooled", opts)
  records = data.get_manifest(cfg.data)
  recordings = collections.Counter((r.stratum, r.label) for r in records)
  labelled = manifest_lib.select(records, labelled=True)
  cache = features_lib.FeatureCache(features_lib.FeatureParams.from_config(cfg.features))
  kept, _, skipped = cache.load(labelled, name="covid19_cough/all", progress=False,
                                workers=cfg.data.workers)
  usable = collections.Counter((r.stratum, r.label) for r in kept)
  return {"files": files, "recordings": recordings, "usable": usable,
          "num_files": len(metadata), "num_recordings": len(records),
          "num_skipped": len(skipped)}


# --- findings -----------------------------------------------------------------------


def _names(variant: str) -> str:
  nice = {
      "vggish": "VGGish", "gru": "GRU", "transformer": "Transformer",
      "gru_cp_frozen": "GRU-CP frozen", "gru_cp_ft": "GRU-CP fine-tuned",
      "transformer_cp_frozen": "Transformer-CP frozen",
      "transformer_cp_ft": "Transformer-CP fine-tuned",
      "ens_vggish_transformer": "VGGish+Transformer", "ens_gru_transformer":
      "GRU+Transformer", "ens_gru_cp_transformer_cp": "GRU-CP+Transformer-CP",
      LOGMEL: "the log-mel statistics baseline", CHANNEL: "the channel alone",
  }
  if variant in nice:
    return nice[variant]
  if variant.startswith("transformer_cp_m"):
    return f"Transformer-CP (CP mask {variant[16:-3]} %)"
  if variant.startswith("ens_transformer_cp_ds"):
    return f"Transformer-CP x2 (DS mask {variant[21:]} %)"
  return variant


@dataclasses.dataclass(frozen=True)
class Finding:
  key: str
  claim: str
  comparisons: tuple[tuple[str, str], ...]  # (A, B): "A beats B"


FINDINGS = (
    Finding("i-a", "contrastive pre-training beats training from scratch (Transformer)",
            (("transformer_cp_ft", "transformer"),)),
    Finding("i-b", "contrastive pre-training beats training from scratch (GRU)",
            (("gru_cp_ft", "gru"),)),
    Finding("ii", "50 % CP masking is best (Table 3)",
            tuple(("transformer_cp_m50_ft", f"transformer_cp_m{r}_ft")
                  for r in (0, 25, 75, 100))),
    Finding("iii", "the DS-masked Transformer-CP ensemble (DS 50 %) is best (Table 5 "
            "vs the Table 4 ensembles, the single Transformer-CP and the other DS rates)",
            tuple((BEST, b) for b in (*paper.TABLE4, "transformer_cp_ft",
                                      "transformer_cp_m50_ft",
                                      *(v for v in paper.TABLE5 if v != BEST)))),
    Finding("iv", "the paper's best model beats the log-mel statistics baseline",
            ((BEST, LOGMEL),)),
)
CHANNEL_FINDING = Finding("v", "the paper's best model beats the channel alone (pooled)",
                          ((BEST, CHANNEL),))


def paired_aucs(a: dict, b: dict) -> np.ndarray:
  """Per-seed recording-level AUC differences A - B (same split seeds required)."""
  seeds_a = [r["split_seed"] for r in a["runs"]]
  seeds_b = [r["split_seed"] for r in b["runs"]]
  if seeds_a != seeds_b:
    raise ValueError(f"{a['variant']} and {b['variant']} ran on different splits "
                     f"(split seeds {seeds_a} vs {seeds_b}); they cannot be paired")
  return np.array([ra["recording"]["auc"] - rb["recording"]["auc"]
                   for ra, rb in zip(a["runs"], b["runs"])])


def judge(finding: Finding, results: dict[str, Any]) -> dict[str, Any]:
  """Each comparison's paired verdict and the finding's: holds if every comparison
  holds, does not hold if any clearly fails, else cannot tell."""
  parts = []
  for a, b in finding.comparisons:
    if a not in results or b not in results:
      missing = [x for x in (a, b) if x not in results]
      parts.append({"a": a, "b": b, "verdict": "not run", "missing": missing})
      continue
    parts.append({"a": a, "b": b,
                  **evaluate.paired_verdict(paired_aucs(results[a], results[b]), K_SE)})
  verdicts = [p["verdict"] for p in parts]
  if all(v == "holds" for v in verdicts):
    overall = "holds"
  elif "does not hold" in verdicts:
    overall = "does not hold"
  else:
    overall = "cannot tell"
  return {"finding": finding, "comparisons": parts, "verdict": overall}


def _diff_text(p: dict) -> str:
  if p["verdict"] == "not run":
    return f"{_names(p['a'])} vs {_names(p['b'])}: not run ({', '.join(p['missing'])})"
  se = "n/a" if not np.isfinite(p["se"]) else f"{p['se']:.2f}"
  return (f"{_names(p['a'])} − {_names(p['b'])}: {p['mean']:+.2f} ± {p['std']:.2f} "
          f"(SE {se}, n {p['n']}) → {p['verdict']}")


def finding_lines(judged: dict) -> list[str]:
  f = judged["finding"]
  lines = [f"- ({f.key}) {f.claim}: **{judged['verdict']}**."]
  lines += [f"  - {_diff_text(p)}" for p in judged["comparisons"]]
  return lines


# --- report ---------------------------------------------------------------------------


def _cell(s: dict, m: str) -> str:
  return f"{s[f'{m}_mean']:.2f} ({s[f'{m}_std']:.2f})"


def table_lines(table: int, rows: Sequence[str], results: dict[str, Any],
                baseline_names: Sequence[str]) -> list[str]:
  head = ["| row | " + " | ".join(f"{m} ours | {m} paper" for m in METRICS)
          + " | avg F1 ours | avg F1 paper |", "|---|" + "---|---|" * (len(METRICS) + 1)]
  lines = [f"#### Table {table}", ""] + head
  for variant in paper.TABLES[table]:
    ref = paper.TABLES[table][variant]
    if variant in NOT_RUN:
      lines.append(f"| {variant} | not run: {NOT_RUN[variant]} |" + " |" * 9)
      continue
    if variant not in rows:
      continue
    r = results[variant]
    s = r["summary"]["recording"]
    cells = []
    for m in METRICS:
      cells += [_cell(s, m), f"{ref[m]:.2f}" if m in ref else "–"]
    cells += [f"{s['avg_f1']:.2f}", f"{ref['avg_f1']:.2f}" if "avg_f1" in ref else "–"]
    name = variant + (f" (= {r['same_as']})" if "same_as" in r else "")
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  for name in baseline_names:
    s = results[name]["summary"]["recording"]
    cells = []
    for m in METRICS:
      cells += [_cell(s, m), "–"]
    cells += [f"{s['avg_f1']:.2f}", "–"]
    lines.append(f"| *{BASELINE_LABELS[name]}* | " + " | ".join(cells) + " |")
  return lines + [""]


def _counts_lines(counts: dict) -> list[str]:
  lines = ["| source | label | files in metadata.json | recordings (identical files "
           "merged) | with features (≥ 0.5 s) |", "|---|---|---:|---:|---:|"]
  for source in covid19_cough.SOURCES:
    for label, name in ((1, "positive"), (0, "negative"), (None, "unlabelled")):
      f = counts["files"].get((source, label), 0) if label is not None else 0
      rec = counts["recordings"].get((source, label), 0)
      if label is None and not rec:
        continue
      use = counts["usable"].get((source, label), 0) if label is not None else "–"
      lines.append(f"| {source} | {name} | {f if label is not None else '–'} | {rec} | "
                   f"{use} |")
  return lines


def _minutes(seconds: Optional[float]) -> str:
  return "–" if seconds is None else f"{seconds / 60:.1f}"


def format_report(opts: Options, results: dict[str, dict[str, Any]], counts: dict,
                  pretrain: dict[str, pathlib.Path], pretrain_timings: dict,
                  command: str, date: str) -> str:
  """The markdown report. `results`: {setting: {row or baseline: results.json}}."""
  rows = table_rows(opts)
  base = downstream_config("transformer", opts.settings[0], opts)  # what rows share
  default_epochs = _configs()[1].get_config("transformer").num_epochs
  cc = {s: sum(counts["recordings"].get((s, l), 0) for l in (0, 1))
        for s in covid19_cough.SOURCES}
  pos = {s: counts["recordings"].get((s, 1), 0) for s in covid19_cough.SOURCES}
  lines = [
      "# The paper's tables on real COVID-19 labels (covid19_cough)", "",
      f"Date: {date}. Command (from the repository root):", "", f"    {command}", "",
      "Ours: recording-level test metrics, mean (std, ddof 0) over seeds; the paper's: "
      f"COVID-19 Sounds test set, mean over 5 runs ({paper.SOURCE}). The paper's numbers "
      "are on another data set and are beside ours for orientation only.", "",
      "## Data", "",
      f"covid19_cough (CC0 1.0) at `{opts.root}`: {counts['num_files']} files in "
      f"metadata.json; byte-identical files are one recording (unlabelled when the "
      f"copies' labels disagree; `coughjax/data/covid19_cough.py`), leaving "
      f"{counts['num_recordings']} recordings; {counts['num_skipped']} labelled "
      "recordings are shorter than 0.5 s or otherwise unusable and skipped.", "",
      *_counts_lines(counts), "",
      "**Source confound.** The channel (8 kHz telephone vs 48 kHz app) and the label "
      "balance both depend on the source: the call centre is "
      f"{100 * pos['call-center'] / max(cc['call-center'], 1):.0f} % positive, Telegram "
      f"{100 * pos['telegram'] / max(cc['telegram'], 1):.0f} %. A pooled model can score "
      "by recognising the channel; the *channel only* baseline measures how much of a "
      "pooled AUC that alone gives. The within-source settings are the honest ones.", "",
      "## Settings", "",
      f"- Settings: {', '.join(opts.settings)} (within call centre / within Telegram: "
      "`data.source_filter`; pooled: both sources).",
      f"- Splits: train/val/test {'/'.join(f'{f:g}' for f in base.data.split)} of "
      "recordings (each its own participant, but copies of one recording share one: "
      "`data.dedup`), stratified by label within source; run "
      f"i of every row and baseline of a setting uses split seed {opts.split_seed} + i, "
      "so rows are compared seed by seed on the same splits.",
      f"- Seeds: {opts.seeds} per row (paper: 5). Downstream epochs: {opts.epochs} "
      f"({opts.vggish_epochs} with a VGGish branch) "
      f"(config default {default_epochs}; early stopping patience "
      f"{base.early_stopping_patience} epochs on validation AUC; the best validation checkpoint "
      "is scored on test). Batch "
      f"{base.batch_size}."
      + (" **runlocal-sized configs (smoke run).**" if opts.runlocal else ""),
      "- Pre-training for the -CP rows: `configs/pretrain.py:<variant>,real` on "
      + ("Coswara (breathing and coughs) + " if opts.coswara_root else "")
      + f"all covid19_cough coughs (labels unused), {opts.pretrain_epochs or 'default'} "
      "epochs of 15 steps (config default 40); workdirs: "
      + ", ".join(f"`{p}` ({_minutes(pretrain_timings.get(p))} min)"
                  for p in pretrain.values()) + ". "
      "Pre-training sees the test recordings' audio (never their labels).",
      "- Not run: " + "; ".join(f"`{v}` ({why})" for v, why in NOT_RUN.items()
                                if any(v in paper.TABLES[t] for t in opts.tables)) + ".",
      f"- Rows whose config is identical are run once (`transformer_cp_m0_ft` = "
      "`transformer_cp_ft`).",
      f"- Baselines: {baselines.DESCRIPTIONS[LOGMEL]}; pooled only: "
      f"{baselines.DESCRIPTIONS[CHANNEL]}. Same splits as the rows.",
      f"- **Cut**: {_cut_text(opts)}",
      f"- **Rule for the findings**: for rows A and B, d_i = AUC_A − AUC_B on seed i "
      f"(recording-level test ROC-AUC, same split). A finding *holds* when mean(d) > 0 "
      f"and mean(d) > {K_SE:g} × SE, SE = std(d, ddof 1) / √n; it *does not hold* when "
      f"mean(d) < 0 and |mean(d)| > {K_SE:g} × SE; otherwise *cannot tell*. A finding "
      "with several comparisons holds only if all hold, and does not hold if any "
      f"clearly fails.{_t_note(opts.seeds)} Differences are given as mean ± std over "
      "seeds.", "",
      "## Findings", ""]
  for setting in opts.settings:
    res = results[setting]
    lines += [f"### {setting}", ""]
    for f in FINDINGS + ((CHANNEL_FINDING,) if setting == "pooled" else ()):
      lines += finding_lines(judge(f, res))
    beaten = [v for v in res if v not in BASELINE_LABELS and "summary" in res[v]
              and res[v]["summary"]["recording"]["auc_mean"]
              < res[LOGMEL]["summary"]["recording"]["auc_mean"]]
    lines.append(f"- Rows whose mean AUC is below the log-mel statistics baseline's "
                 f"({res[LOGMEL]['summary']['recording']['auc_mean']:.2f}): "
                 + (", ".join(beaten) if beaten else "none") + ".")
    if setting == "pooled":
      lines.append(f"- The channel alone gives a pooled AUC of "
                   f"{_cell(res[CHANNEL]['summary']['recording'], 'auc')}.")
    lines.append("")
  lines += ["## Tables", ""]
  for setting in opts.settings:
    lines += [f"### {setting}", ""]
    names = (LOGMEL,) + ((CHANNEL,) if setting == "pooled" else ())
    for table in opts.tables:
      lines += table_lines(table, rows[table], results[setting], names)
  lines += ["## Cost", "",
            "Wall time of each row's own run (all seeds), minutes, on the machine and "
            "load of the run that made it:", "",
            "| row | " + " | ".join(opts.settings) + " |",
            "|---|" + "---:|" * len(opts.settings)]
  for name in next(iter(results.values())):
    lines.append(f"| {name} | " + " | ".join(
        _minutes(results[s].get(name, {}).get("seconds")) if "same_as" not in
        results[s].get(name, {}) else "(same run)" for s in opts.settings) + " |")
  row_s = sum(r.get("seconds") or 0.0 for res in results.values() for r in res.values()
              if "same_as" not in r)
  pre_s = sum(pretrain_timings.get(p) or 0.0 for p in pretrain.values())
  lines += ["", f"Total: rows and baselines {_minutes(row_s)} min + pre-training "
            f"{_minutes(pre_s)} min = {_minutes(row_s + pre_s)} min."]
  return "\n".join(lines) + "\n"


def _t_note(n: int) -> str:
  if n < 2:
    return " With one seed there is no standard error: every finding is *cannot tell*."
  from scipy import stats  # pylint: disable=g-import-not-at-top
  return (f" With n = {n} seeds, {K_SE:g} SE is a lenient bar (a two-sided 5 % "
          f"t-test needs {stats.t.ppf(0.975, n - 1):.2f} SE).")


def _cut_text(opts: Options) -> str:
  seeds = "" if opts.seeds >= 5 else f"{opts.seeds} seeds instead of the paper's 5, "
  return (f"{opts.epochs} downstream epochs per run ({opts.vggish_epochs} for rows "
          f"with a VGGish branch) instead of the config's 40 with patience 10, {seeds}"
          f"pre-training {opts.pretrain_epochs or 40} of 40 epochs; every row is kept. "
          + COST_NOTE)


def run_report(opts: Options, command: str, date: Optional[str] = None) -> str:
  """Runs (or reuses) everything `opts` asks for; returns the report."""
  pretrain_timings: dict = {}
  results = {s: run_setting(s, opts, pretrain_timings) for s in opts.settings}
  pretrain = {v: pretrain_workdir(pretrain_config(v, opts), opts) for v in sorted({
      b.pretrain for t in table_rows(opts).values() for v in t
      for b in _cp_branches(downstream_config(v, opts.settings[0], opts))})}
  return format_report(opts, results, data_counts(opts), pretrain, pretrain_timings,
                       command, date or datetime.date.today().isoformat())


def default_root() -> pathlib.Path:
  pretrain_cfgs, _ = _configs()
  var, default = pretrain_cfgs.REAL_SOURCES["covid19_cough"]
  return pathlib.Path(os.environ.get(var) or default)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  pretrain_cfgs, _ = _configs()
  coswara = _COSWARA_ROOT.value
  if coswara is None:  # as configs/pretrain.py's `real` option
    coswara = data.parse_roots(pretrain_cfgs.real_roots())["coswara"]
  opts = Options(
      root=pathlib.Path(_ROOT.value) if _ROOT.value else default_root(),
      workdir=pathlib.Path(_WORKDIR.value), seeds=_SEEDS.value, epochs=_EPOCHS.value,
      vggish_epochs=_VGGISH_EPOCHS.value,
      tables=tuple(int(t) for t in _TABLES.value), settings=tuple(_SETTINGS.value),
      split_seed=_SPLIT_SEED.value, pretrain_runs=pathlib.Path(_PRETRAIN_RUNS.value),
      pretrain_epochs=_PRETRAIN_EPOCHS.value, coswara_root=coswara,
      runlocal=_RUNLOCAL.value, pretrain_set=tuple(_PRETRAIN_SET.value),
      downstream_set=tuple(_DOWNSTREAM_SET.value),
      rows=tuple(_ROWS.value) if _ROWS.value else None)
  command = "python -m coughjax.reproduce_covid19_cough " + " ".join(
      shlex.quote(a) for a in sys.argv[1:])
  report = run_report(opts, command)
  out = pathlib.Path(_REPORT.value)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(report)
  print(report)
  print(f"written to {out}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
