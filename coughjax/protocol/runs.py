"""Running a study: every row fold by fold, out-of-fold scores for every recording.

A *row* scores recordings: a downstream variant of `configs/downstream.py`, trained
on each fold's training part with early stopping on its validation part (the best
validation checkpoint scores the test part), or a baseline of `coughjax.baselines`
fitted on the same parts. A *setting* is a selection of the data (config
overrides: one source, a front-end option, verified labels only, ...). The test
parts of one repeat's k folds cover every recording once, so each (setting, row,
repeat) yields one out-of-fold score per recording, which `coughjax.protocol.report`
turns into AUCs with intervals and paired comparisons.

Folds are drawn once per study, over the recordings of its base data (every
setting's recordings are among them), by `coughjax.protocol.folds.assign`: groups
(participants) kept together, stratified by (stratum, label); they are written to
`<workdir>/folds.json` and every unit reads its fold from there (`data.folds`).

A -CP row's pre-training is *inductive* by default: one pre-training per (repeat,
fold) on the pre-training data without that fold's test recordings (their audio is
never seen before they are scored); `pretraining="transductive"` pre-trains once on
all of it, as a reference for what seeing the test audio is worth.

Layout of `<workdir>` (every unit is skipped when its `unit.json` exists, so an
interrupted study resumes where it stopped; each unit is claimed with a lock file,
so several processes, or hosts sharing the folder, can run one study together, each
taking the units no other has started):

  folds.json
  pretrain/<variant>[-<front end>]/{r<repeat>f<fold> | all}/   pre-training workdirs
  <setting>/<row>/r<repeat>f<fold>/                            a downstream workdir,
      or a baseline's folder; both hold predictions.csv and unit.json
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import fcntl
import json
import pathlib
import shlex
import subprocess
import sys
import time
from typing import Any, Callable, Optional, Sequence

from absl import app
from absl import logging
import ml_collections
import numpy as np

from coughjax import baselines
from coughjax import data
from coughjax import files
from coughjax.data import manifest as manifest_lib
from coughjax.data import splits as splits_lib
from coughjax.overrides import apply_overrides
from coughjax.overrides import config_modules
from coughjax.protocol import folds as folds_lib
from coughjax.protocol.scores import Scores

INDUCTIVE, TRANSDUCTIVE = "inductive", "transductive"
UNIT_FILE = "unit.json"
PREDICTIONS_FILE = "predictions.csv"
# A unit's scores of its validation part (columns as predictions.csv), where the
# row writes them: thresholds are chosen on these, never on the test part.
VAL_PREDICTIONS_FILE = "val_predictions.csv"


@dataclasses.dataclass(frozen=True)
class Row:
  """Something that scores recordings.

  Attributes:
    name: unique within a study (a folder name).
    variant: a `configs/downstream.py` variant, or a `coughjax.baselines` name.
    label: how the report names it ("" = the name).
    overrides: "key=value" for this row's downstream config.
    pretraining: for -CP branches: INDUCTIVE (per fold) or TRANSDUCTIVE (once).
    pretrain_overrides: "key=value" for its -CP branches' pre-training (e.g. a
      longer schedule); such pre-trainings get their own workdirs.
  """
  name: str
  variant: str
  label: str = ""
  overrides: tuple[str, ...] = ()
  pretraining: str = INDUCTIVE
  pretrain_overrides: tuple[str, ...] = ()

  def __post_init__(self):
    if self.pretraining not in (INDUCTIVE, TRANSDUCTIVE):
      raise ValueError(f"row {self.name}: pretraining must be {INDUCTIVE!r} or "
                       f"{TRANSDUCTIVE!r}, got {self.pretraining!r}")

  @property
  def is_baseline(self) -> bool:
    return self.variant in baselines.BASELINES

  @property
  def title(self) -> str:
    return self.label or self.name


@dataclasses.dataclass(frozen=True)
class Setting:
  """A selection of the study's data, and the rows run on it.

  Attributes:
    name: a folder name.
    overrides: "key=value" config overrides (`data.*`, `features.*`); `features.*`
      ones apply to the -CP rows' pre-training too (an encoder is pre-trained on
      the front end it will see).
    rows: the names of the rows run here.
    description: a sentence for the report.
  """
  name: str
  overrides: tuple[str, ...]
  rows: tuple[str, ...]
  description: str = ""

  @property
  def front_end(self) -> tuple[str, ...]:
    return tuple(o for o in self.overrides if o.startswith("features."))


@dataclasses.dataclass(frozen=True)
class Plan:
  """What a study runs.

  Attributes:
    workdir: where everything goes.
    data: "key=value" overrides that every config gets (`data.name`, roots, label).
    rows: every row of the study.
    settings: where each row runs.
    k: folds.
    repeats: repeats of the k-fold for deep rows.
    baseline_repeats: repeats for baselines (cheap: more repeats narrow their
      intervals; comparisons use the repeats both rows have).
    seed: of the folds; unit (r, f) trains with seed `seed + r * k + f`.
    pretrain_data: "key=value" overrides of the -CP rows' pre-training configs
      (`configs/pretrain.py:<variant>`), e.g. the `real` data's roots.
    pretrain_option: comma options of the pre-training configs (e.g. "real").
    downstream_set / pretrain_set: extra overrides of every downstream /
      pre-training config (after everything else).
    runlocal: seconds-long configs (smoke tests).
  """
  workdir: pathlib.Path
  data: tuple[str, ...]
  rows: tuple[Row, ...]
  settings: tuple[Setting, ...]
  k: int = 5
  repeats: int = 1
  baseline_repeats: int = 1
  seed: int = 0
  pretrain_data: tuple[str, ...] = ()
  pretrain_option: str = ""
  downstream_set: tuple[str, ...] = ()
  pretrain_set: tuple[str, ...] = ()
  runlocal: bool = False

  def __post_init__(self):
    names = [r.name for r in self.rows]
    if len(set(names)) != len(names):
      raise ValueError(f"row names must be unique, got {names}")
    for s in self.settings:
      unknown = sorted(set(s.rows) - set(names))
      if unknown:
        raise ValueError(f"setting {s.name}: unknown rows {unknown}; rows: {names}")
    if self.k < 2 or min(self.repeats, self.baseline_repeats) < 1:
      raise ValueError(f"need k >= 2 folds and >= 1 repeat, got k={self.k}, repeats="
                       f"{self.repeats}, baseline_repeats={self.baseline_repeats}")

  def row(self, name: str) -> Row:
    return next(r for r in self.rows if r.name == name)

  def repeats_of(self, row: Row) -> int:
    return self.baseline_repeats if row.is_baseline else self.repeats

  @property
  def folds_path(self) -> pathlib.Path:
    return self.workdir / "folds.json"


# --- configs ------------------------------------------------------------------------


def _suffix(plan: Plan) -> str:
  return ",runlocal" if plan.runlocal else ""


def downstream_config(plan: Plan, setting: Setting, row: Row, repeat: int = 0,
                      fold: int = 0) -> ml_collections.ConfigDict:
  """The config of one unit: `row`'s variant (a baseline takes the plain
  Transformer's, for its data and feature fields) on `setting`, fold `fold` of
  repeat `repeat` of the study's folds, one run."""
  _, downstream_cfgs = config_modules()
  variant = "transformer" if row.is_baseline else row.variant
  config = downstream_cfgs.get_config(variant + _suffix(plan))
  apply_overrides(config, plan.data + setting.overrides + row.overrides)
  seed = plan.seed + repeat * plan.k + fold
  config.data.folds = str(plan.folds_path)
  config.data.fold, config.data.fold_repeat = fold, repeat
  config.data.split_seed = seed
  config.seed = seed
  config.num_runs = 1
  apply_overrides(config, plan.downstream_set)
  return config


def pretrain_config(plan: Plan, variant: str, setting: Setting,
                    fold: Optional[tuple[int, int]], extra: Sequence[str] = ()
                    ) -> ml_collections.ConfigDict:
  """`configs/pretrain.py:<variant>` on the study's pre-training data with the
  setting's front end and `extra` overrides; without the test part of `fold` =
  (repeat, fold), or on everything when `fold` is None (transductive)."""
  pretrain_cfgs, _ = config_modules()
  options = ",".join(o for o in (plan.pretrain_option, "runlocal" * plan.runlocal) if o)
  config = pretrain_cfgs.get_config(variant + ("," + options if options else ""))
  apply_overrides(config, plan.pretrain_data + setting.front_end + tuple(extra))
  if fold is not None:
    repeat, k = fold
    config.data.folds = str(plan.folds_path)
    config.data.fold_repeat, config.data.fold = repeat, k
    config.seed = plan.seed + repeat * plan.k + k
  apply_overrides(config, plan.pretrain_set)
  return config


def _tag(overrides: Sequence[str]) -> str:
  """'features.normalise=gain' -> 'normalise_gain' (a folder name part)."""
  return "-".join(o.rsplit(".", 1)[-1].replace("=", "_") for o in overrides)


def pretrain_workdir(plan: Plan, variant: str, setting: Setting,
                     fold: Optional[tuple[int, int]], extra: Sequence[str] = ()
                     ) -> pathlib.Path:
  name = "-".join([variant] + [_tag(o) for o in (setting.front_end, extra) if o])
  return (plan.workdir / "pretrain" / name
          / ("all" if fold is None else f"r{fold[0]}f{fold[1]}"))


def _cp_branches(config) -> list:
  return [config[k] for k in ("encoder_a", "encoder_b")
          if config[k].name and config[k].init == "cp"]


# --- folds --------------------------------------------------------------------------


def labelled_records(config) -> list[manifest_lib.Recording]:
  records = manifest_lib.select(data.get_manifest(config.data), labelled=True)
  if not records:
    raise ValueError(f"{config.data.name}: no labelled recordings "
                     f"(data.label={config.data.label!r})")
  return records


def ensure_folds(plan: Plan) -> dict:
  """Draws the study's folds over its base data's labelled recordings once (groups
  = participants, strata = (stratum, label)); later calls check the file still
  fits the data."""
  config = downstream_config(plan, Setting("base", (), ()), Row("base", "transformer"))
  records = labelled_records(config)
  repeats = max(plan.repeats, plan.baseline_repeats)
  path = plan.folds_path
  if path.is_file():
    found = splits_lib.read_folds(path)
    keys = {splits_lib.recording_key(r.path) for r in records}
    if (set(found["recordings"]) != keys or found["k"] != plan.k
        or found["repeats"] < repeats):
      raise ValueError(f"{path}: written for other data or another k / number of "
                       f"repeats (k={found['k']}, repeats={found['repeats']}, "
                       f"{len(found['recordings'])} recordings; now k={plan.k}, "
                       f"repeats={repeats}, {len(keys)} recordings): use a new workdir")
    return found
  fold_of = folds_lib.assign([r.participant_id for r in records],
                             [(r.stratum, r.label) for r in records],
                             k=plan.k, repeats=repeats, seed=plan.seed)
  path.parent.mkdir(parents=True, exist_ok=True)
  splits_lib.write_folds(path, records, fold_of, seed=plan.seed,
                         description=" ".join(plan.data))
  logging.info("%s: %d recordings in %d folds x %d repeats", path, len(records), plan.k,
               repeats)
  return splits_lib.read_folds(path)


# --- units --------------------------------------------------------------------------


def _done(folder: pathlib.Path) -> Optional[dict]:
  path = folder / UNIT_FILE
  return json.loads(path.read_text()) if path.is_file() else None


def _check_same(folder: pathlib.Path, config) -> None:
  """A folder holding a unit of another config is an error, not a silent reuse."""
  path = folder / "unit_config.json"
  want = json.loads(config.to_json_best_effort())
  if path.is_file():
    saved = json.loads(path.read_text())
    if saved != want:
      diff = sorted(k for k in set(saved) | set(want) if saved.get(k) != want.get(k))
      raise ValueError(f"{folder} holds a unit made with another config (sections "
                       f"{diff} differ): delete it or use a new workdir")
  else:
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(want, indent=1, sort_keys=True) + "\n")


@contextlib.contextmanager
def _claim(folder: pathlib.Path, wait: bool):
  """An exclusive lock on a unit (the file `.<name>.lock` beside its folder): yields
  True once held, or False at once if another process holds it and not `wait`. The
  lock goes with the process, so a killed run's units can be taken over."""
  folder.parent.mkdir(parents=True, exist_ok=True)
  with open(folder.parent / f".{folder.name}.lock", "a") as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
      yield False
      return
    try:
      yield True
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def ensure_pretrained(plan: Plan, variant: str, setting: Setting,
                      fold: Optional[tuple[int, int]], runner: Callable,
                      extra: Sequence[str] = (), wait: bool = True
                      ) -> Optional[pathlib.Path]:
  """Runs (or resumes, or reuses) one pre-training; returns its workdir. Another
  process running it is waited for, or without `wait`, left to it (None)."""
  workdir = pretrain_workdir(plan, variant, setting, fold, extra)
  with _claim(workdir, wait) as mine:
    if not mine:
      return None
    if _done(workdir) is None:
      config = pretrain_config(plan, variant, setting, fold, extra)
      _check_same(workdir, config)
      config.lock()
      logging.info("pre-training %s in %s", variant, workdir)
      start = time.monotonic()
      runner(config, str(workdir))
      (workdir / UNIT_FILE).write_text(json.dumps(
          {"seconds": time.monotonic() - start}) + "\n")
  return workdir


def _write_predictions(folder: pathlib.Path, paths: Sequence[str], labels, scores,
                       name: str = PREDICTIONS_FILE) -> None:
  with open(folder / name, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["path", "label", "probability"])
    for p, y, s in zip(paths, labels, scores):
      writer.writerow([p, int(y), repr(float(s))])


def read_predictions(folder: pathlib.Path, name: str = PREDICTIONS_FILE
                     ) -> dict[str, tuple[int, float]]:
  """{recording key: (label, score)} of one unit (its test part, or the file `name`)."""
  with open(folder / name, newline="") as f:
    return {splits_lib.recording_key(r["path"]): (int(r["label"]), float(r["probability"]))
            for r in csv.DictReader(f)}


def _epochs_used(run_dir: pathlib.Path) -> dict[str, int]:
  """Epochs trained and the best validation epoch, from a run's metrics.jsonl."""
  val = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()
         if l.strip() and json.loads(l)["split"] == "val"]
  best = [v["epoch"] for v in val if v.get("best")]
  return {"epochs": len(val), "best_epoch": (best[-1] + 1) if best else 0}


def run_unit(plan: Plan, setting: Setting, row: Row, repeat: int, fold: int,
             runner: Callable, wait: bool = True) -> Optional[dict]:
  """Trains and scores one (setting, row, repeat, fold); returns its unit.json, or
  None without `wait` if another process is running it or a pre-training it needs."""
  folder = plan.workdir / setting.name / row.name / f"r{repeat}f{fold}"
  with _claim(folder, wait) as mine:
    return _run_unit(plan, setting, row, repeat, fold, runner, folder, wait) if mine else None


def _run_unit(plan, setting, row, repeat, fold, runner, folder, wait) -> Optional[dict]:
  done = _done(folder)
  if done is not None:
    return done
  config = downstream_config(plan, setting, row, repeat, fold)
  start = time.monotonic()
  if row.is_baseline:
    _check_same(folder, config)
    parts = baselines.load_split_features(config)
    scored, info = baselines.BASELINES[row.variant](parts, config.seed)
    for part, name in (("test", PREDICTIONS_FILE), ("val", VAL_PREDICTIONS_FILE)):
      _write_predictions(folder, [r.path for r in parts[part].records],
                         parts[part].labels, scored[part], name)
    unit = {"info": info}
  else:
    for branch in _cp_branches(config):
      if not branch.checkpoint:
        where = (repeat, fold) if row.pretraining == INDUCTIVE else None
        pdir = ensure_pretrained(plan, branch.pretrain, setting, where, runner,
                                 row.pretrain_overrides, wait)
        if pdir is None:  # another process pre-trains it: other units first
          return None
        branch.checkpoint = str(pdir)
    _check_same(folder, config)
    config.lock()
    logging.info("%s / %s: repeat %d fold %d in %s", setting.name, row.name, repeat, fold,
                 folder)
    runner(config, str(folder))
    run_dir = folder / "run_0"
    from coughjax.train import downstream  # pylint: disable=g-import-not-at-top
    rows = downstream.read_predictions(run_dir / downstream.PREDICTIONS_FILE)
    _write_predictions(folder, [r["path"] for r in rows], [r["label"] for r in rows],
                       [r["probability"] for r in rows])
    unit = _epochs_used(run_dir)
  unit["seconds"] = time.monotonic() - start
  (folder / UNIT_FILE).write_text(json.dumps(unit) + "\n")
  return unit


def default_runner(config, workdir: str) -> Any:
  from coughjax.train import run as run_lib  # pylint: disable=g-import-not-at-top
  return run_lib.run(config, workdir)


def run_row(plan: Plan, setting: Setting, row: Row, strata: dict[str, str],
            runner: Callable = default_runner) -> Scores:
  """Every unit of `row` in `setting`; its out-of-fold scores, repeat by repeat."""
  per_repeat, units, fold_of, validation = [], [], [], []
  for repeat in range(plan.repeats_of(row)):
    merged: dict[str, tuple[int, float]] = {}
    units.append([])
    fold_of.append({})
    validation.append([])
    for fold in range(plan.k):
      units[-1].append(run_unit(plan, setting, row, repeat, fold, runner))
      folder = plan.workdir / setting.name / row.name / f"r{repeat}f{fold}"
      part = read_predictions(folder)
      overlap = set(part) & set(merged)
      if overlap:
        raise ValueError(f"{folder}: {len(overlap)} recordings scored in two folds "
                         f"(e.g. {sorted(overlap)[0]}): the folds are not a partition")
      merged.update(part)
      fold_of[-1].update(dict.fromkeys(part, fold))
      val = (read_predictions(folder, VAL_PREDICTIONS_FILE)
             if (folder / VAL_PREDICTIONS_FILE).is_file() else None)
      validation[-1].append(None if val is None else tuple(
          np.array(v) for v in zip(*val.values())))
    per_repeat.append(merged)
  keys = sorted(per_repeat[0])
  for r, merged in enumerate(per_repeat[1:], 1):
    if sorted(merged) != keys:
      raise ValueError(f"{setting.name} / {row.name}: repeat {r} scored other "
                       f"recordings than repeat 0 ({len(merged)} vs {len(keys)})")
  return Scores(keys=keys,
                labels=np.array([per_repeat[0][k][0] for k in keys]),
                strata=[strata.get(k, "") for k in keys],
                scores=np.array([[m[k][1] for k in keys] for m in per_repeat]),
                units=units,
                folds=np.array([[f[k] for k in keys] for f in fold_of]),
                validation=validation)


def run_plan(plan: Plan, runner: Callable = default_runner
             ) -> dict[str, dict[str, Scores]]:
  """Every setting's rows: {setting: {row: Scores}}. Resumes where it stopped; units
  another process is running (or whose pre-training it is running) are left to it,
  then waited for."""
  ensure_folds(plan)
  # Each setting's first row, then each one's second, ...: a study whose settings
  # list their rows by importance has the important ones everywhere first.
  for position in range(max(len(s.rows) for s in plan.settings)):
    for setting in (s for s in plan.settings if position < len(s.rows)):
      row = plan.row(setting.rows[position])
      for repeat in range(plan.repeats_of(row)):
        for fold in range(plan.k):
          run_unit(plan, setting, row, repeat, fold, runner, wait=False)
  out: dict[str, dict[str, Scores]] = {}
  for setting in plan.settings:
    config = downstream_config(plan, setting, Row("base", "transformer"))
    strata = {splits_lib.recording_key(r.path): r.stratum
              for r in data.get_manifest(config.data)}
    out[setting.name] = {name: run_row(plan, setting, plan.row(name), strata, runner)
                         for name in setting.rows}
  return out


def run_plan_in_processes(plan: Plan, processes: int, helper_command: Sequence[str],
                          runner: Callable = default_runner
                          ) -> dict[str, dict[str, Scores]]:
  """`run_plan` here and in `processes - 1` helper processes that share its units.

  On a CPU, one process rarely keeps every core busy with these small models: two
  processes on two cores get through a study about twice as fast.

  Args:
    plan: the study.
    processes: how many processes in all (1 = this one alone).
    helper_command: argv of a process that runs the same plan and nothing else
      (its output goes to `<workdir>/helper_<i>.log`).
    runner: as `run_plan`.
  """
  plan.workdir.mkdir(parents=True, exist_ok=True)
  helpers = []
  for i in range(1, processes):
    log = open(plan.workdir / f"helper_{i}.log", "w")  # pylint: disable=consider-using-with
    helpers.append((subprocess.Popen(list(helper_command), stdout=log,
                                     stderr=subprocess.STDOUT), log))
  try:
    results = run_plan(plan, runner)
  finally:
    failed = []
    for i, (proc, log) in enumerate(helpers, 1):
      if proc.wait() != 0:
        failed.append(f"{log.name} (exit {proc.returncode})")
      log.close()
  if failed:  # their units were finished here; say so rather than hide it
    logging.warning("helper processes failed: %s; this process ran their units",
                    ", ".join(failed))
  return results


def command_main(plan: Plan, module: str, *, helper: bool, processes: int,
                 report: pathlib.Path, format_report: Callable[[dict, str], str]) -> None:
  """What a study command does: run `plan` (in `processes` processes, helpers
  started as `python -m <module> <this argv> --helper`) and write the report
  `format_report(results, command)` to `report`. A helper runs units only."""
  if helper:
    run_plan(plan)
    return
  plan.workdir.mkdir(parents=True, exist_ok=True)
  try:  # before the work, not after
    report = files.check_output(report, flag="--report")
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  args = sys.argv[1:]
  results = run_plan_in_processes(plan, processes,
                                  [sys.executable, "-m", module, *args, "--helper"])
  text = format_report(results, " ".join(["python -m", module, *map(shlex.quote, args)]))
  files.atomic_write(report, lambda f: f.write(text.encode()))
  print(text)
  print(f"written to {report}")
