"""What a study runs: its rows, settings and units, each unit's config and folder.

A *row* scores recordings: a downstream variant of `configs/downstream.py`, or a
baseline of `coughjax.baselines`. A *setting* is a selection of the data (config
overrides). A `Plan` runs rows in settings over k folds, repeated; it is made of
*units* (`units_of`): one (setting, row, repeat) each, whose k folds are published
one folder each (a deep row's folds train as one program), and for -CP rows the
pre-trainings they need: per (repeat, fold) without the fold's test recordings
(INDUCTIVE), once per repeat on all the data (TRANSDUCTIVE), or once per repeat on
the setting's *pool* (POOL): pre-training data disjoint from every recording the
setting evaluates (`Setting.pool`), which serves every fold of the repeat. In a
setting without a pool, a POOL row pre-trains per fold, as an INDUCTIVE one.

Seeds: fold f of repeat r (a row's, or its inductive pre-training's) has seed
`seed + r * k + f` for its model and for its train / validation split; a
pre-training once per repeat has fold 0's. So every repeat draws its own folds
and its own seeds for everything (initialisation, dropout, masks, shuffles,
pre-training), and no two folds of one row share a seed.

Everything here is a frozen dataclass or a pure function of one, so a unit pickles
to a Dask worker as it is and gives the same config there.

Layout of `<workdir>`:

  folds.json
  pretrain/<variant>[-<front end>][-<extra>]/                  pre-training workdirs:
      r<repeat>f<fold>/                                        inductive,
      r<repeat>all/                                            transductive,
      r<repeat>pool-<pool>/                                    on a pool
  <setting>/<row>/r<repeat>f<fold>/                            a fold's downstream
      workdir, or a baseline's folder; both hold predictions.csv and unit.json

each published whole; while a unit runs, its attempts live beside its folders in
`.<name>.attempts/` (a row's repeat: `<setting>/<row>/.r<repeat>.attempts/`;
`coughjax.protocol.claims`).
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
from typing import Optional, Sequence

import ml_collections

from coughjax import baselines
from coughjax.overrides import apply_overrides
from coughjax.overrides import config_modules

INDUCTIVE, TRANSDUCTIVE, POOL = "inductive", "transductive", "pool"
PRETRAININGS = (INDUCTIVE, TRANSDUCTIVE, POOL)


@dataclasses.dataclass(frozen=True)
class Row:
  """Something that scores recordings.

  Attributes:
    name: unique within a study (a folder name).
    variant: a `configs/downstream.py` variant, or a `coughjax.baselines` name.
    label: how the report names it ("" = the name).
    overrides: "key=value" for this row's downstream config.
    pretraining: for -CP branches: INDUCTIVE (per fold), TRANSDUCTIVE (once per
      repeat, on all the data) or POOL (once per repeat, on the setting's pool;
      per fold where the setting has none).
    pretrain_overrides: "key=value" for its -CP branches' pre-training (e.g. a
      longer schedule); such pre-trainings get their own workdirs.
    repeats: how many repeats of the folds it runs; 0 = the plan's (`repeats` for
      deep rows, `baseline_repeats` for baselines).
  """
  name: str
  variant: str
  label: str = ""
  overrides: tuple[str, ...] = ()
  pretraining: str = INDUCTIVE
  pretrain_overrides: tuple[str, ...] = ()
  repeats: int = 0

  def __post_init__(self):
    if self.pretraining not in PRETRAININGS:
      raise ValueError(f"row {self.name}: pretraining must be one of {PRETRAININGS}, "
                       f"got {self.pretraining!r}")
    if self.repeats < 0:
      raise ValueError(f"row {self.name}: repeats must be >= 0, got {self.repeats}")

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
    pool: "key=value" overrides of the plan's pre-training data (`pretrain_data`)
      that make POOL rows' pre-training data here: none of it may be a recording
      this setting evaluates (`coughjax.protocol.runs.check_pools` checks, by path
      and by content). () = no disjoint pool: POOL rows pre-train per fold.
  """
  name: str
  overrides: tuple[str, ...]
  rows: tuple[str, ...]
  description: str = ""
  pool: tuple[str, ...] = ()

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
    seed: of the folds; fold f of repeat r trains with seed `seed + r * k + f`.
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
    _, downstream_cfgs = config_modules()
    known = sorted(downstream_cfgs.VARIANTS) + sorted(baselines.BASELINES)
    for r in self.rows:
      if r.variant not in known:
        raise ValueError(f"row {r.name}: unknown variant {r.variant!r}; choose from "
                         f"{', '.join(known)}")
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
    return row.repeats or (self.baseline_repeats if row.is_baseline else self.repeats)

  @property
  def most_repeats(self) -> int:
    """The repeats the folds are drawn for: the most any row runs."""
    return max([self.repeats, self.baseline_repeats] + [r.repeats for r in self.rows])

  def seed_of(self, repeat: int, fold: int = 0) -> int:
    """The seed of fold `fold` of repeat `repeat`: distinct for every fold of a row."""
    return self.seed + repeat * self.k + fold

  @property
  def folds_path(self) -> pathlib.Path:
    return self.workdir / "folds.json"

  def unit_folder(self, setting: Setting, row: Row, repeat: int, fold: int
                  ) -> pathlib.Path:
    return self.workdir / setting.name / row.name / f"r{repeat}f{fold}"


# --- configs ------------------------------------------------------------------------


def _suffix(plan: Plan) -> str:
  return ",runlocal" if plan.runlocal else ""


def downstream_config(plan: Plan, setting: Setting, row: Row, repeat: int = 0,
                      fold: int = 0) -> ml_collections.ConfigDict:
  """The config of one unit: `row`'s variant (a baseline takes the plain
  Transformer's, for its data and feature fields) on `setting`, fold `fold` of
  repeat `repeat` of the study's folds, one run. Its -CP branches' checkpoints are
  left empty (`Unit.config` points them at their pre-training units)."""
  _, downstream_cfgs = config_modules()
  variant = "transformer" if row.is_baseline else row.variant
  config = downstream_cfgs.get_config(variant + _suffix(plan))
  apply_overrides(config, plan.data + setting.overrides + row.overrides)
  seed = plan.seed_of(repeat, fold)
  config.data.folds = str(plan.folds_path)
  config.data.fold, config.data.fold_repeat = fold, repeat
  config.data.split_seed = seed
  config.seed = seed
  config.num_runs = 1
  apply_overrides(config, plan.downstream_set)
  return config


def pretrain_config(plan: Plan, variant: str, setting: Setting, repeat: int,
                    fold: Optional[int], extra: Sequence[str] = (),
                    pool: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """`configs/pretrain.py:<variant>` on the study's pre-training data (with the
  `pool` overrides, if any) with the setting's front end and `extra` overrides:
  without the test part of fold (`repeat`, `fold`), or on all of it when `fold` is
  None (transductive, or a pool). Its seeds are unit (`repeat`, `fold` or 0)'s."""
  pretrain_cfgs, _ = config_modules()
  options = ",".join(o for o in (plan.pretrain_option, "runlocal" * plan.runlocal) if o)
  config = pretrain_cfgs.get_config(variant + ("," + options if options else ""))
  apply_overrides(config, plan.pretrain_data + tuple(pool) + setting.front_end
                  + tuple(extra))
  if fold is not None:
    config.data.folds = str(plan.folds_path)
    config.data.fold_repeat, config.data.fold = repeat, fold
  config.seed = config.data.split_seed = plan.seed_of(repeat, fold or 0)
  apply_overrides(config, plan.pretrain_set)
  return config


def _tag(overrides: Sequence[str]) -> str:
  """'features.normalise=gain' -> 'normalise_gain' (a folder name part)."""
  return re.sub(r"[^\w.+=-]", "_", "-".join(o.rsplit(".", 1)[-1] for o in overrides)
                ).replace("=", "_")


def pretrain_workdir(plan: Plan, variant: str, setting: Setting, repeat: int,
                     fold: Optional[int], extra: Sequence[str] = (),
                     pool: Sequence[str] = ()) -> pathlib.Path:
  """Where pre-training (`pretrain_config`'s arguments) goes: one folder per
  variant, front end and extra overrides, then r<repeat>f<fold>, r<repeat>all or
  r<repeat>pool-<pool's overrides>."""
  name = "-".join([variant] + [_tag(o) for o in (setting.front_end, extra) if o])
  where = (f"f{fold}" if fold is not None else
           f"pool-{_tag(pool)}" if pool else "all")
  return plan.workdir / "pretrain" / name / f"r{repeat}{where}"


def _cp_branches(config) -> list:
  return [config[k] for k in config_modules()[1].branch_keys(config)
          if config[k].init == "cp"]


# --- units --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Unit:
  """One piece of a study's work: one task, run once and resumably, its outputs
  published as folders (`parts`).

  A row unit has `row` set and `fold` None: repeat `repeat` of the row, all its k
  folds (a deep row's folds train as one program, a baseline's fit one after the
  other), each published as its own folder: `parts` are the units of each fold
  alone (`fold` set), each with its config, folder and pre-trainings. A
  pre-training unit has `row` None and pre-trains `variant` with `extra` overrides
  with repeat `repeat`'s seeds: on the data without the test part of fold `fold`,
  or with `fold` None on all of it (transductive) or, with `pool` set, on the pool
  those overrides make; it is its own one part.
  """
  plan: Plan
  setting: Setting
  row: Optional[Row]
  repeat: int
  fold: Optional[int] = None
  variant: str = ""
  extra: tuple[str, ...] = ()
  pool: tuple[str, ...] = ()

  @property
  def is_pretraining(self) -> bool:
    return self.row is None

  @property
  def folder(self) -> pathlib.Path:
    """Where its output goes: a pre-training's or a fold's folder; for a row's
    repeat `<setting>/<row>/r<repeat>`, the name of its folds' attempts (no folder
    of that name is made)."""
    if self.row is None:
      return pretrain_workdir(self.plan, self.variant, self.setting, self.repeat,
                              self.fold, self.extra, self.pool)
    if self.fold is None:
      return self.plan.workdir / self.setting.name / self.row.name / f"r{self.repeat}"
    return self.plan.unit_folder(self.setting, self.row, self.repeat, self.fold)

  @property
  def name(self) -> str:
    """The folder relative to the workdir (what logs and --dry_run show)."""
    return str(self.folder.relative_to(self.plan.workdir))

  @property
  def parts(self) -> tuple[Unit, ...]:
    """What it publishes, one folder each: a row's repeat's folds, else itself."""
    if self.row is None or self.fold is not None:
      return (self,)
    return tuple(dataclasses.replace(self, fold=f) for f in range(self.plan.k))

  def _pretraining(self, variant: str) -> Unit:
    """The pre-training unit of this fold's -CP branch `variant`."""
    how = self.row.pretraining
    if how == POOL and not self.setting.pool:
      how = INDUCTIVE  # no disjoint pool here: per fold, without the test part
    return Unit(self.plan, self.setting, None, self.repeat,
                self.fold if how == INDUCTIVE else None, variant,
                self.row.pretrain_overrides, self.setting.pool if how == POOL else ())

  def _with_pretrainings(self) -> tuple[ml_collections.ConfigDict, list[Unit]]:
    """A fold's config with each -CP branch that names no checkpoint pointed at the
    folder of its pre-training unit, and those units (one per branch)."""
    config = downstream_config(self.plan, self.setting, self.row, self.repeat, self.fold)
    needs = []
    for branch in _cp_branches(config):
      if not branch.checkpoint:
        needs.append(self._pretraining(branch.pretrain))
        branch.checkpoint = str(needs[-1].folder)
    return config, needs

  @property
  def needs(self) -> tuple[Unit, ...]:
    """The pre-training units its folds load, each once (none for baselines and
    pre-trainings)."""
    if self.row is None or self.row.is_baseline:
      return ()
    return tuple({u.folder: u for p in self.parts
                  for u in p._with_pretrainings()[1]}.values())

  def config(self) -> ml_collections.ConfigDict:
    """The config of a pre-training or of one fold, the same wherever it is
    computed (a row's repeat has one per fold: its `parts`')."""
    if self.row is None:
      return pretrain_config(self.plan, self.variant, self.setting, self.repeat,
                             self.fold, self.extra, self.pool)
    if self.fold is None:
      raise ValueError(f"{self.name}: a unit of {self.plan.k} folds has a config per "
                       "fold (its parts')")
    return self._with_pretrainings()[0]


def units_of(plan: Plan) -> list[Unit]:
  """Every unit of `plan`, each once, in the order they should run: each setting's
  first row, then each one's second, ... (a study whose settings list their rows by
  importance has the important ones everywhere first), a row's repeat after the
  pre-trainings its folds need. Pre-trainings shared by several rows or settings
  (same variant, front end, overrides and fold) appear once."""
  out: dict[pathlib.Path, Unit] = {}
  for position in range(max(len(s.rows) for s in plan.settings)):
    for setting in (s for s in plan.settings if position < len(s.rows)):
      row = plan.row(setting.rows[position])
      for repeat in range(plan.repeats_of(row)):
        unit = Unit(plan, setting, row, repeat)
        for need in unit.needs:
          out.setdefault(need.folder, need)
        out[unit.folder] = unit
  return list(out.values())
