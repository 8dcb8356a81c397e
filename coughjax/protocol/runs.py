"""Running a study: every row fold by fold, out-of-fold scores for every recording.

A *row* scores recordings: a downstream variant of `configs/downstream.py`, trained
on each fold's training part with early stopping on its validation part (the best
validation checkpoint scores the test part), or a baseline of `coughjax.baselines`
fitted on the same parts. A *setting* is a selection of the data (config
overrides: one source, a front-end option, verified labels only, ...). The test
parts of one repeat's k folds cover every recording once, so each (setting, row,
repeat) yields one out-of-fold score per recording, which `coughjax.protocol.report`
turns into AUCs with intervals and paired comparisons.

Folds are drawn once per study, before any unit runs, over the recordings of its
base data (every setting's recordings are among them), by
`coughjax.protocol.folds.assign`: groups (participants) kept together, stratified by
(stratum, label); they are written to `<workdir>/folds.json` and every unit reads
its fold from there (`data.folds`).

A -CP row's pre-training is *inductive* by default: one pre-training per (repeat,
fold) on the pre-training data without that fold's test recordings (their audio is
never seen before they are scored; pre-training data that holds none of them is an
error, not a silent transductive run: `coughjax.data.splits.fold_split`);
`pretraining="pool"` pre-trains once per repeat on the setting's *pool*, data that
holds none of the setting's recordings (checked before any work, by path and by
content: `check_pools`), which serves every fold; `pretraining="transductive"`
pre-trains once per repeat on all of it, as a reference for what seeing the test
audio is worth.

The pieces: `plan` (rows, settings, units, configs, the workdir's layout), `units`
(the work of one unit: a row's folds trained as one program, each published as a
folder), `claims` (a unit run once and resumably, its folders published whole),
`schedule` (the units as a Dask graph on a local or a running cluster). Here: the
checks made before any work, the folds, the scores, and what a study command does
(`command_main`).

Running a study on a cluster: start a scheduler and workers that share the workdir
and the data at the same paths and import this coughjax, then pass the scheduler:

  dask scheduler --port 8786 &                  # on one machine
  export DASK_DISTRIBUTED__WORKER__DAEMON=False JAX_PLATFORMS=cpu
  dask worker tcp://HOST:8786 --nworkers 2 --nthreads 1 --memory-limit 0 &
                                                # on each machine with work to give
  python -m coughjax.protocol --scheduler=tcp://HOST:8786 ...

(`--scheduler=scheduler.json` for `dask scheduler --scheduler-file`; on SLURM or
PBS, dask-jobqueue's `SLURMCluster` / `PBSCluster` start the workers as jobs).
Kill a worker, or lose a machine, and its unit resumes on another worker from its
checkpoints; rerun a stopped command and it resumes where the units stopped.
"""

from __future__ import annotations

import collections
import pathlib
import shlex
import sys
from typing import Callable, Optional, Sequence

from absl import app
from absl import flags
from absl import logging
import numpy as np

from coughjax import data
from coughjax import files
from coughjax.data import manifest as manifest_lib
from coughjax.protocol import claims
from coughjax.protocol import folds as folds_lib
from coughjax.protocol import schedule
from coughjax.protocol import units as units_lib
# What a study module builds its plan from (re-exported: `runs.Plan`, ...).
from coughjax.protocol.plan import INDUCTIVE  # pylint: disable=unused-import
from coughjax.protocol.plan import Plan
from coughjax.protocol.plan import POOL  # pylint: disable=unused-import
from coughjax.protocol.plan import pretrain_config  # pylint: disable=unused-import
from coughjax.protocol.plan import pretrain_workdir  # pylint: disable=unused-import
from coughjax.protocol.plan import Row
from coughjax.protocol.plan import Setting
from coughjax.protocol.plan import TRANSDUCTIVE  # pylint: disable=unused-import
from coughjax.protocol.plan import Unit
from coughjax.protocol.plan import downstream_config
from coughjax.protocol.plan import units_of
from coughjax.protocol.scores import Scores
from coughjax.protocol.units import default_runner

# --- before any work: the data and the folds ----------------------------------------


def labelled_records(config) -> list[manifest_lib.Recording]:
  records = manifest_lib.select(data.get_manifest(config.data), labelled=True)
  if not records:
    raise ValueError(f"{config.data.name}: no labelled recordings "
                     f"(data.label={config.data.label!r})")
  return records


def check_data(plan: Plan) -> list[manifest_lib.Recording]:
  """The base data's labelled recordings (the folds are drawn over them), once every
  setting is checked: its labelled recordings are among them and hold both labels
  (every row is trained or fitted, and scored, on both). Raises a one-line
  ValueError naming the setting."""
  base = labelled_records(downstream_config(plan, Setting("base", (), ()),
                                            Row("base", "transformer")))
  keys = {folds_lib.recording_key(r.path) for r in base}
  for setting in plan.settings:
    where = f"setting {setting.name}" + (f" ({', '.join(setting.overrides)})"
                                         if setting.overrides else "")
    records = labelled_records(downstream_config(plan, setting, Row("x", "transformer")))
    labels = collections.Counter(int(r.label) for r in records)
    if len(labels) < 2:
      (label, n), = labels.items()
      raise ValueError(f"{where}: all {n} labelled recordings have label {label}; its "
                       "rows need both labels: check data.label and the setting's "
                       "filters")
    outside = [r.path for r in records if folds_lib.recording_key(r.path) not in keys]
    if outside:
      raise ValueError(f"{where}: {len(outside)} of its recordings are not in the "
                       f"study's data (e.g. {outside[0]}): a setting selects from the "
                       "data of --data, it cannot add to it")
  return base


def ensure_folds(plan: Plan, records: Sequence[manifest_lib.Recording],
                 write: bool = True) -> None:
  """Draws the study's folds over `records` (groups = participants, strata =
  (stratum, label)) and writes them once; later calls (and other commands) check
  that the file fits the data. Without `write`, only an existing file is checked."""
  repeats = plan.most_repeats
  keys = [folds_lib.recording_key(r.path) for r in records]
  path = plan.folds_path
  if not path.is_file():
    if not write:
      return
    fold_of = folds_lib.assign([r.participant_id for r in records],
                               [(r.stratum, r.label) for r in records],
                               k=plan.k, repeats=repeats, seed=plan.seed)
    if folds_lib.write_folds(path, keys, fold_of, seed=plan.seed,
                             description=" ".join(plan.data)):
      logging.info("%s: %d recordings in %d folds x %d repeats", path, len(records),
                   plan.k, repeats)
  found = folds_lib.read_folds(path)
  if (set(found["recordings"]) != set(keys) or found["k"] != plan.k
      or found["repeats"] < repeats):
    raise ValueError(f"{path}: written for other data or another k / number of "
                     f"repeats (k={found['k']}, repeats={found['repeats']}, "
                     f"{len(found['recordings'])} recordings; now k={plan.k}, "
                     f"repeats={repeats}, {len(keys)} recordings): use a new workdir")


def check_pools(todo: Sequence[Unit]) -> None:
  """Every pool pre-training of `todo` holds none of the recordings of the settings
  whose rows load it: no recording by path (`folds.recording_key`), none by content
  (the feature cache's digest of the file: the same audio under another root or
  name). Raises a one-line ValueError naming the setting, the pool and a recording."""
  from coughjax.data import features as features_lib  # pylint: disable=g-import-not-at-top
  checked = set()
  for unit in todo:
    for need in unit.needs:
      if not need.pool or (unit.setting.name, need.folder) in checked:
        continue
      checked.add((unit.setting.name, need.folder))
      config = unit.parts[0].config()
      pool = data.get_manifest(need.config().data)
      evaluated = data.get_manifest(config.data)
      cache = features_lib.FeatureCache(
          features_lib.FeatureParams.from_config(config.features))
      for what, key in (("path", lambda r: folds_lib.recording_key(r.path)),
                        ("content", cache.content_key)):
        mine = {key(r): r.path for r in pool}
        theirs = {key(r): r.path for r in evaluated}
        shared = sorted((mine[k], theirs[k]) for k in mine.keys() & theirs.keys())
        if shared:
          raise ValueError(
              f"setting {unit.setting.name}: its pool ({', '.join(unit.setting.pool)}) "
              f"holds {len(shared)} of the recordings it evaluates (same {what}: e.g. "
              f"{shared[0][0]} is {shared[0][1]}): a pool must be disjoint from them")


def prepare(plan: Plan, write: bool = True) -> list[Unit]:
  """Every check made before any work (the data, the folds, the pools, the units
  already done were made with today's configs), and the folds drawn (with
  `write`); the plan's units in the order they run."""
  ensure_folds(plan, check_data(plan), write)
  todo = units_of(plan)
  check_pools(todo)
  for part in (p for unit in todo for p in unit.parts):
    if claims.read_unit(part.folder) is not None:
      units_lib.check_same(part.folder, part.config())
  return todo


def run_units(plan: Plan, todo: Sequence[Unit], runner: Callable = default_runner, *,
              processes: int = 1, scheduler: str = "") -> None:
  """Runs the units of `todo` not done yet on a Dask cluster (`schedule.connect`)."""
  pending = [u for u in todo if units_lib.state(u) != "done"]
  if not pending:
    return
  plan.workdir.mkdir(parents=True, exist_ok=True)
  logging.info("%d of %d units to run", len(pending), len(todo))
  with schedule.connect(scheduler, processes) as client:
    if scheduler:
      schedule.check_workers(client, plan.workdir)
    schedule.run_units(client, pending, runner)


# --- scores -------------------------------------------------------------------------


def run_row(plan: Plan, setting: Setting, row: Row, strata: dict[str, str],
            repeats: Optional[int] = None) -> Scores:
  """`row`'s out-of-fold scores in `setting`, repeat by repeat, from its units: its
  first `repeats` (default: all the plan gives it)."""
  per_repeat, units, fold_of, validation = [], [], [], []
  perturbed = {db: [] for db in units_lib.GAINS_DB}
  for repeat in range(plan.repeats_of(row) if repeats is None else repeats):
    merged: dict[str, tuple[int, float]] = {}
    units.append([])
    fold_of.append({})
    validation.append([])
    for fold in range(plan.k):
      folder = plan.unit_folder(setting, row, repeat, fold)
      unit = claims.read_unit(folder)
      if unit is None:
        raise ValueError(f"{folder}: the unit has not run")
      units[-1].append(unit)
      part = units_lib.read_predictions(folder)
      overlap = set(part) & set(merged)
      if overlap:
        raise ValueError(f"{folder}: {len(overlap)} recordings scored in two folds "
                         f"(e.g. {sorted(overlap)[0]}): the folds are not a partition")
      merged.update(part)
      fold_of[-1].update(dict.fromkeys(part, fold))
      val = (units_lib.read_predictions(folder, units_lib.VAL_PREDICTIONS_FILE)
             if (folder / units_lib.VAL_PREDICTIONS_FILE).is_file() else None)
      validation[-1].append(None if val is None else tuple(
          np.array(v) for v in zip(*val.values())))
      for db, found in perturbed.items():
        if found is not None and (folder / units_lib.gain_file(db)).is_file():
          found.append(units_lib.read_predictions(folder, units_lib.gain_file(db)))
        else:
          perturbed[db] = None  # a row has a perturbation where every unit does
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
                validation=validation,
                perturbed={units_lib.perturbation(db): _out_of_fold(parts, keys, plan.k)
                           for db, parts in perturbed.items() if parts})


def _out_of_fold(parts: list[dict], keys: Sequence[str], k: int) -> np.ndarray:
  """[repeats, n]: the scores of `keys` from each repeat's k units' files (`parts`,
  repeat by repeat), in the order of `keys`."""
  merged = [dict(collections.ChainMap(*parts[r:r + k])) for r in range(0, len(parts), k)]
  return np.array([[m[key][1] for key in keys] for m in merged])


def done_repeats(plan: Plan, setting: Setting, row: Row) -> int:
  """How many of `row`'s first repeats in `setting` have every fold's unit done."""
  for repeat in range(plan.repeats_of(row)):
    if any(claims.read_unit(plan.unit_folder(setting, row, repeat, fold)) is None
           for fold in range(plan.k)):
      return repeat
  return plan.repeats_of(row)


def collect(plan: Plan, interim: bool = False) -> dict[str, dict[str, Scores]]:
  """Every setting's rows' scores, {setting: {row: Scores}}, from the units' folders.
  With `interim`, from the units done so far: each row on its first repeats whose
  every fold is done (`done_repeats`), a row with none left out (not run)."""
  out: dict[str, dict[str, Scores]] = {}
  for setting in plan.settings:
    config = downstream_config(plan, setting, Row("base", "transformer"))
    strata = {folds_lib.recording_key(r.path): r.stratum
              for r in data.get_manifest(config.data)}
    out[setting.name] = {}
    for name in setting.rows:
      row = plan.row(name)
      repeats = done_repeats(plan, setting, row) if interim else None
      if repeats != 0:
        out[setting.name][name] = run_row(plan, setting, row, strata, repeats)
  return out


def run_plan(plan: Plan, runner: Callable = default_runner, *, processes: int = 1,
             scheduler: str = "") -> dict[str, dict[str, Scores]]:
  """Every setting's rows: {setting: {row: Scores}}. Resumes where it stopped; units
  another command is running are left to it, then waited for.

  Args:
    plan: the study.
    runner: ({name: config}, workdir) -> trains (`units.default_runner`); a
      module-level function (it is pickled to the workers).
    processes: worker processes of the embedded cluster (spawned: a script that
      calls this needs the `if __name__ == "__main__":` guard).
    scheduler: a running cluster's scheduler address or file instead.
  """
  todo = prepare(plan)
  run_units(plan, todo, runner, processes=processes, scheduler=scheduler)
  return collect(plan)


# --- the command --------------------------------------------------------------------


def check_report(path: pathlib.Path, module: str) -> pathlib.Path:
  """The report path, checked: its folder exists and is writable, and a file there
  is a report of `python -m <module>` (its provenance names the command: see
  `report.provenance`), never another file."""
  out = files.check_output(path, flag="--report")
  if out.exists():
    marker = f"- Command (from the repository root): `python -m {module}"
    try:
      lines = out.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
      lines = []
    if not any(l.startswith(marker) and l[len(marker):][:1] in (" ", "`") for l in lines):
      raise ValueError(f"--report={path}: {out} exists and is not a report of python -m "
                       f"{module} (it has no '{marker}' line): give another path")
  return out


def define_study_flags(processes: int) -> None:
  """The flags every study command has: --processes, --scheduler, --dry_run and
  --interim (what it runs: `cluster_args`), --runlocal, --downstream_set and
  --pretrain_set (the configs: `config_args`)."""
  global _PROCESSES, _SCHEDULER, _DRY_RUN, _INTERIM, _RUNLOCAL, _DOWNSTREAM_SET
  global _PRETRAIN_SET
  _PROCESSES = flags.DEFINE_integer(
      "processes", processes, "worker processes of the embedded Dask cluster, one unit "
      "each at a time (one per core is about right on a CPU)")
  _SCHEDULER = flags.DEFINE_string(
      "scheduler", "", "a running Dask cluster instead: its scheduler's address "
      "(tcp://HOST:8786) or scheduler file")
  _DRY_RUN = flags.DEFINE_bool("dry_run", False, "list the units, what each needs and "
                               "its state (done / partial / to do), and stop")
  _INTERIM = flags.DEFINE_bool(
      "interim", False, "run no unit: write the report from the units done so far "
      "(each row on its first repeats whose every fold is done); the report says it "
      "is interim and how many units are left")
  _RUNLOCAL = flags.DEFINE_bool("runlocal", False, "runlocal-sized configs (smoke test)")
  _DOWNSTREAM_SET = flags.DEFINE_multi_string("downstream_set", [], "key=value, every row")
  _PRETRAIN_SET = flags.DEFINE_multi_string("pretrain_set", [], "key=value, pre-training")


def cluster_args() -> dict:
  """command_main's arguments from the flags of `define_study_flags`."""
  return dict(processes=_PROCESSES.value, scheduler=_SCHEDULER.value,
              dry_run=_DRY_RUN.value, interim=_INTERIM.value)


def config_args() -> dict:
  """A plan's runlocal, downstream_set and pretrain_set from the flags of
  `define_study_flags`."""
  return dict(runlocal=_RUNLOCAL.value, downstream_set=tuple(_DOWNSTREAM_SET.value),
              pretrain_set=tuple(_PRETRAIN_SET.value))


def command_main(plan: Plan, module: str, *, processes: int, scheduler: str,
                 dry_run: bool, report: pathlib.Path,
                 format_report: Callable[[dict, str, Optional[tuple[int, int]]], str],
                 interim: bool = False) -> None:
  """What a study command does: check everything it can before any work (the
  report path, the workdir, the data), then with `dry_run` list the units and stop;
  else run `plan` on a Dask cluster (`run_units`) and write the report
  `format_report(results, command, progress)` to `report`. With `interim`, run no
  unit and report the units done so far (`collect`); `progress` is then (units
  done, units of the plan), None once every unit is done."""
  try:
    files.check_output(plan.workdir, folder=True, flag="--workdir")
    if not (dry_run or interim):  # the report may go in it
      plan.workdir.mkdir(parents=True, exist_ok=True)
    if report.parent.is_dir() or not report.absolute().is_relative_to(
        plan.workdir.absolute()):  # else in the workdir a dry run does not create
      report = check_report(report, module)
    todo = prepare(plan, write=not (dry_run or interim))
  except (ValueError, FileNotFoundError) as e:
    raise app.UsageError(str(e)) from None
  except KeyError as e:  # an override naming no config field
    raise app.UsageError(e.args[0]) from None
  if dry_run:
    print("\n".join(schedule.describe(todo)))
    return
  progress = None
  if interim:
    done = sum(units_lib.state(u) == "done" for u in todo)
    if not done:
      raise app.UsageError(f"--interim: no unit of the plan is done in {plan.workdir}: "
                           "nothing to report")
    if done < len(todo):
      progress = (done, len(todo))
  else:
    try:
      run_units(plan, todo, processes=processes, scheduler=scheduler)
    except schedule.ClusterError as e:
      raise app.UsageError(str(e)) from None
  args = sys.argv[1:]
  text = format_report(collect(plan, interim=progress is not None),
                       " ".join(["python -m", module, *map(shlex.quote, args)]),
                       progress)
  files.atomic_write(report, lambda f: f.write(text.encode()))
  print(text)
  print(f"written to {report}")
