"""The work of one unit of a study: a pre-training, a row's folds trained as one
program, or a baseline's fits; what each fold's folder holds.

A row's unit is (setting, row, repeat): its k folds (`plan.Unit.parts`). A deep
row's folds not published yet train as one program (`coughjax.train.many`, through
`downstream.run_many`: each fold a run of its own, with its own seed, data, early
stopping and best checkpoint, equal to training it alone up to float rounding),
their stacked checkpoints shared in the attempt's workdir; each fold's folder is
then a downstream workdir of its own (`run_0/best`, `encoders.json`,
`config.json`, as `coughjax.predict` reads it) with the files the protocol reads:

* `predictions.csv`: the fold's test part, scored by its best checkpoint;
* `val_predictions.csv`: its validation part (thresholds are chosen on these);
* `predictions_gain-10.csv`, `predictions_gain+10.csv`: the test part at other
  gains (`score_again`);
* `unit_config.json` (its config: a rerun with another is refused, `check_same`)
  and `unit.json` (its record: epochs, best epoch, seconds, attempt).

A baseline's unit fits its folds one after the other, each folder holding
`predictions.csv` and `val_predictions.csv`. A pre-training unit's folder is the
pre-training workdir. Running a unit once, resumably, and publishing its folders
whole: `coughjax.protocol.claims`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from typing import Any, Callable, Optional, Sequence

from absl import logging
import numpy as np

from coughjax import baselines
from coughjax import data
from coughjax import files
from coughjax.data import features as features_lib
from coughjax.data import manifest as manifest_lib
from coughjax.data import splits as splits_lib
from coughjax.protocol import claims
from coughjax.protocol import folds as folds_lib
from coughjax.protocol import plan as plan_lib

CONFIG_FILE = "unit_config.json"
PREDICTIONS_FILE = "predictions.csv"
# A unit's scores of its validation part (columns as predictions.csv), where the
# row writes them: thresholds are chosen on these, never on the test part.
VAL_PREDICTIONS_FILE = "val_predictions.csv"
# A deep row's test part scored again with every input's level shifted by these
# gains (dB), in `gain_file(db)`: how far a model's AUC moves with loudness alone.
GAINS_DB = (-10.0, 10.0)
# The largest difference allowed between the trainer's test scores and the serving
# path's (`coughjax.predict`) from the unit's checkpoint: more means another
# checkpoint or another input pipeline scored the validation and perturbed parts.
SERVING_TOLERANCE = 1e-4
# Where a trained fold's test scores are (`downstream.run`'s layout, one run).
TRAINED_PREDICTIONS = pathlib.Path("run_0") / "test_predictions.csv"


def perturbation(db: float) -> str:
  """How scores and reports name a gain: "gain-10", "gain+10", ..."""
  return f"gain{db:+g}"


def gain_file(db: float) -> str:
  """predictions_gain-10.csv, predictions_gain+10.csv, ..."""
  return f"predictions_{perturbation(db)}.csv"


def state(unit: plan_lib.Unit) -> str:
  """"done", "partial (...)" or "to do" (`claims.state`)."""
  return claims.state(claims.attempts_folder(unit.folder), [p.folder for p in unit.parts])


def check_same(folder: pathlib.Path, config) -> None:
  """A folder holding a unit (or an attempt) of another config is an error, not a
  silent reuse."""
  path = folder / CONFIG_FILE
  if not path.is_file():
    return
  want = json.loads(config.to_json_best_effort())
  try:
    saved = files.read_json(path, "unit config")
  except ValueError as e:
    raise ValueError(f"{e}; delete {folder} to run the unit again") from None
  if saved != want:
    diff = sorted(k for k in set(saved) | set(want) if saved.get(k) != want.get(k))
    raise ValueError(f"{folder} holds a unit made with another config (sections "
                     f"{diff} differ): delete it or use a new workdir")


def read_predictions(folder: pathlib.Path, name: str = PREDICTIONS_FILE
                     ) -> dict[str, tuple[int, float]]:
  """{recording key: (label, score)} of one fold (its test part, or the file `name`)."""
  return {folds_lib.recording_key(r["path"]): (r["label"], r["probability"])
          for r in files.read_predictions(folder / name)}


# --- the work of a unit -------------------------------------------------------------


def default_runner(configs: dict[str, Any], workdir: str) -> dict[str, Optional[dict]]:
  """Trains each of `configs` in `workdir/<its name>`: a pre-training alone; the
  downstream ones (a row's folds) as one program (`downstream.run_many`, its
  stacked checkpoints in `workdir`), after which each fold's model scores its
  validation part and its test part at other gains (`score_again`), whose record is
  returned for the fold's unit record."""
  import jax  # pylint: disable=g-import-not-at-top
  from coughjax.train import downstream  # pylint: disable=g-import-not-at-top
  from coughjax.train import run as run_lib  # pylint: disable=g-import-not-at-top
  from coughjax.train import validate  # pylint: disable=g-import-not-at-top
  workdir = pathlib.Path(workdir)
  if any(c.task != "downstream" for c in configs.values()):
    for name, config in configs.items():
      run_lib.run(config, str(workdir / name))
    return dict.fromkeys(configs)
  for config in configs.values():
    validate.check(config, jax.device_count())
  downstream.run_many(list(configs.values()), [workdir / n for n in configs], workdir)
  return {name: score_again(config, workdir / name, {
      r["path"]: r["probability"]
      for r in files.read_predictions(workdir / name / TRAINED_PREDICTIONS)})
          for name, config in configs.items()}


def _epochs_used(run_dir: pathlib.Path) -> dict[str, int]:
  """Epochs trained and the best validation epoch, from a run's metrics.jsonl."""
  val = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()
         if l.strip() and json.loads(l)["split"] == "val"]
  best = [v["epoch"] for v in val if v.get("best")]
  return {"epochs": len(val), "best_epoch": (best[-1] + 1) if best else 0}


def _work(unit: plan_lib.Unit, runner: Callable, scratch: pathlib.Path,
          todo: Sequence[pathlib.Path]) -> dict[pathlib.Path, dict]:
  """Trains, pre-trains or fits the parts of `unit` published as `todo`, each in
  `scratch/<its folder's name>`; their unit records."""
  parts = [p for p in unit.parts if p.folder in todo]
  configs = {}
  for part in parts:
    config, where = part.config(), scratch / part.folder.name
    where.mkdir(exist_ok=True)
    check_same(where, config)
    claims.write_json(where / CONFIG_FILE, json.loads(config.to_json_best_effort()))
    configs[part.folder.name] = config
  if unit.row is not None and unit.row.is_baseline:
    return {p.folder: _fit(p.row.variant, configs[p.folder.name], scratch / p.folder.name)
            for p in parts}
  logging.info("%s (%s) in %s", unit.name, ", ".join(configs), scratch)
  for config in configs.values():
    config.lock()
  scored_again = runner(configs, str(scratch)) or {}
  if unit.is_pretraining:
    return {p.folder: {} for p in parts}
  out = {}
  for part in parts:
    where = scratch / part.folder.name
    rows = files.read_predictions(where / TRAINED_PREDICTIONS)
    files.write_predictions(where / PREDICTIONS_FILE, [r["path"] for r in rows],
                            [r["label"] for r in rows], [r["probability"] for r in rows])
    out[part.folder] = {**_epochs_used(where / TRAINED_PREDICTIONS.parent),
                        **(scored_again.get(part.folder.name) or {})}
  return out


def _fit(variant: str, config, where: pathlib.Path) -> dict:
  """Fits baseline `variant` on one fold's parts; writes its test and validation
  scores into `where`; its unit record."""
  parts = baselines.load_split_features(config)
  scored, info = baselines.BASELINES[variant](parts, config.seed)
  for part, name in (("test", PREDICTIONS_FILE), ("val", VAL_PREDICTIONS_FILE)):
    files.write_predictions(where / name, [r.path for r in parts[part].records],
                            parts[part].labels, scored[part])
  return {"info": info}


def gain_offset(db: float) -> float:
  """A gain of `db` dB in the log-mel domain (natural log of filterbank energies):
  a constant added to every frame and band, as `coughjax.train.augment` applies its
  random gain."""
  return db * math.log(10.0) / 10.0


def score_again(config, workdir: pathlib.Path, trained: dict[str, float],
                gains_db: Sequence[float] = GAINS_DB) -> dict:
  """Scores a trained downstream unit's validation part (`VAL_PREDICTIONS_FILE`)
  and its test part with every input shifted by each of `gains_db`
  (`gain_file(db)`), from the checkpoint that scored its test part, through the
  serving path (`coughjax.predict`); writes them into `workdir`.

  The parts are the trainer's (`config.data`: the same manifest, labelled filter and
  fold). A gain is applied to the raw log-mel features, before the front end's
  `features.normalise` (which removes it again where it is "gain" or "cmn"), and a
  recording keeps the DS masks of its unshifted features, so a score moves by what
  the level does alone.

  Args:
    config: the unit's downstream config.
    workdir: the unit's trained workdir (run_0 and its best checkpoint).
    trained: {path: score} the trainer wrote for the test part.

  Returns:
    {"serving_max_diff": the largest difference between `trained` and the serving
    path's scores of the unshifted test part}.

  Raises:
    RuntimeError: that difference is above `SERVING_TOLERANCE`.
  """
  from coughjax import predict  # pylint: disable=g-import-not-at-top
  records = manifest_lib.select(data.get_manifest(config.data), labelled=True)
  parts = splits_lib.from_config(records, config.data, require_all=True)
  params = features_lib.FeatureParams.from_config(config.features)
  raw = features_lib.FeatureCache(dataclasses.replace(params, normalise=""))
  classifier = predict.load_classifier(workdir)

  def load(part):  # (paths, labels, raw features) of a part's usable recordings
    kept, feats, _ = raw.load(parts[part], name=f"{config.data.name}/{part}",
                              workers=config.data.workers, progress=False)
    return [r.path for r in kept], [r.label for r in kept], feats

  def scores(paths, feats, db):
    shifted = [features_lib.normalise(f + np.float32(gain_offset(db)), params.normalise)
               for f in feats]
    unshifted = [features_lib.normalise(f, params.normalise) for f in feats]
    return classifier.predict_features(shifted, paths, unshifted)

  paths, labels, feats = load("val")
  files.write_predictions(workdir / VAL_PREDICTIONS_FILE, paths, labels,
                     scores(paths, feats, 0.0))
  paths, labels, feats = load("test")
  again = dict(zip(paths, scores(paths, feats, 0.0)))
  if set(again) != set(trained):
    raise RuntimeError(f"{workdir}: the serving path scored other test recordings "
                       f"({len(again)}) than the trainer ({len(trained)})")
  out = {"serving_max_diff": max(abs(again[k] - v) for k, v in trained.items())}
  if out["serving_max_diff"] > SERVING_TOLERANCE:
    raise RuntimeError(f"{workdir}: the serving path's test scores differ from the "
                       f"trainer's by up to {out['serving_max_diff']:.3g}: its "
                       "validation and perturbed scores would not be the same model's")
  for db in gains_db:
    files.write_predictions(workdir / gain_file(db), paths, labels,
                            scores(paths, feats, db))
  return out


def run(unit: plan_lib.Unit, runner: Callable = default_runner) -> list[dict]:
  """Runs, resumes or finds done one unit (`claims.run_once`); the unit records of
  its parts. `runner` ({name: config}, workdir) trains each config in
  workdir/<name> (writing run_0/test_predictions.csv for downstream configs) and
  may return {name: dict} for the parts' unit records; a module-level function, so
  that it pickles."""
  return claims.run_once(claims.attempts_folder(unit.folder),
                         [p.folder for p in unit.parts],
                         lambda scratch, todo: _work(unit, runner, scratch, todo))
