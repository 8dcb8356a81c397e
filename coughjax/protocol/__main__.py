r"""The evaluation protocol on any data: rows and baselines, fold by fold, one report.

  python -m coughjax.protocol --workdir=runs/proto --report=proto.md \
      --data=data.name=coswara --data=data.root=/data/coswara_ci --data=data.label=sex \
      --rows=transformer,gru,logmel_logreg,loudness_only,duration_only --folds=5

  # two settings, a -CP row pre-trained per fold on the same data:
  python -m coughjax.protocol --data=data.name=covid19_cough \
      --data=data.root=../shared/data/covid19_cough --data=data.label=covid19 \
      --setting=cc:data.source_filter=call-center --setting=all \
      --pretrain_data=data.name=covid19_cough \
      --pretrain_data=data.root=../shared/data/covid19_cough \
      --rows=transformer,transformer_cp_ft,logmel_logreg,loudness_only

Rows are `configs/downstream.py` variants and `coughjax.baselines` names (the
confound controls among them); every row runs in every setting. Each deep row is
compared with each baseline (and any `--compare=A,B`), Holm-corrected over all
comparisons. See `coughjax.protocol` for the statistics.

The units (a row on a fold, a pre-training) run on Dask: by default on an embedded
cluster of `--processes` worker processes; `--scheduler=tcp://HOST:8786` (or a
scheduler file) runs them on a running cluster (`coughjax.protocol.runs` says how
to start one). A killed worker's unit resumes elsewhere, a stopped command resumes
unit by unit, and `--dry_run` lists the units and their state without running any;
`--interim` reports the units done so far without running any.
"""

from __future__ import annotations

import datetime
import pathlib
from typing import Optional

from absl import app
from absl import flags

from coughjax import cli
from coughjax.protocol import report as rep
from coughjax.protocol import runs


def parse_setting(text: str) -> runs.Setting:
  name, *overrides = text.split(":")
  if not name or any("=" not in o for o in overrides):
    raise ValueError(f"--setting={text!r}: expected NAME or NAME:key=value[:key=value]")
  return runs.Setting(name, tuple(overrides), ())


def make_plan(workdir, data, setting_texts, row_names, *, pretraining=runs.INDUCTIVE,
              pretrain_data=None, **kwargs) -> runs.Plan:
  """A plan running every row in every setting; -CP rows pre-train on
  `pretrain_data` (default: `data` without its label)."""
  if not pretrain_data:
    pretrain_data = tuple(d for d in data if not d.startswith("data.label="))
  rows = tuple(runs.Row(n, n, pretraining=pretraining) for n in row_names)
  settings = [parse_setting(t) for t in setting_texts] or [runs.Setting("all", (), ())]
  settings = tuple(runs.Setting(s.name, s.overrides, tuple(row_names)) for s in settings)
  return runs.Plan(workdir=pathlib.Path(workdir), data=tuple(data), rows=rows,
                   settings=settings, pretrain_data=tuple(pretrain_data), **kwargs)


def comparisons(plan: runs.Plan, extra=()) -> list[rep.Comparison]:
  """Every deep row against every baseline, then the `extra` (A, B) pairs, in every
  setting."""
  deep = [r.name for r in plan.rows if not r.is_baseline]
  base = [r.name for r in plan.rows if r.is_baseline]
  pairs = [(a, b) for a in deep for b in base] + [p for p in extra]
  return [rep.Comparison(s.name, a, b) for s in plan.settings for a, b in pairs]


def format_report(plan: runs.Plan, results, judged, command: str,
                  progress: Optional[tuple[int, int]] = None) -> str:
  titles = {r.name: r.title for r in plan.rows}
  rows_min, pre_min = rep.cost_minutes(plan, results)
  lines = [f"# Evaluation protocol: {', '.join(plan.data)}", "",
           f"Generated {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC.",
           "", *rep.provenance(command, progress), "",
           f"{plan.k}-fold cross-validation over participants, stratified by stratum × "
           f"label; {plan.repeats} repeat(s) for deep rows, {plan.baseline_repeats} for "
           "baselines. AUC [95 % DeLong interval, combined over repeats]; comparisons "
           "paired on the same recordings, Holm-corrected (see coughjax/protocol).", ""]
  for setting in plan.settings:
    res = results[setting.name]
    lines += [f"## {setting.name}" + (f" ({', '.join(setting.overrides)})"
                                      if setting.overrides else ""), "",
              *rep.rows_table(res, titles), ""]
    shifts = rep.perturbation_table(res, titles)
    if shifts:
      lines += ["Test-time gain (AUC points the AUC moves; mean [range] over "
                "repeats):", "", *shifts, ""]
    if len({s for r in res.values() for s in r.strata}) > 1:
      lines += ["By stratum:", "", *rep.strata_table(res, titles), ""]
  lines += ["## Comparisons", "", *rep.comparison_lines(judged, titles), "",
            f"Cost: rows {rows_min:.0f} min, pre-training {pre_min:.0f} min.", ""]
  return "\n".join(lines)


def define_flags() -> None:
  """The command's flags (defined when run as a command only: tests import this
  module, and other commands define some of the same names)."""
  global _WORKDIR, _REPORT, _DATA, _SETTING, _ROWS, _COMPARE
  global _FOLDS, _REPEATS, _BASELINE_REPEATS, _SEED, _PRETRAINING, _PRETRAIN_DATA
  _WORKDIR = flags.DEFINE_string("workdir", None, "where every unit goes", required=True)
  _REPORT = flags.DEFINE_string("report", None, "report path (default <workdir>/report.md)")
  _DATA = flags.DEFINE_multi_string("data", [], "key=value for every config (data.name, "
                                    "data.root, data.label, ...)")
  _SETTING = flags.DEFINE_multi_string(
      "setting", [], "NAME or NAME:key=value:key=value (a data selection); default: one "
      "setting 'all'")
  _ROWS = flags.DEFINE_list("rows", None, "downstream variants and baselines",
                            required=True)
  _COMPARE = flags.DEFINE_multi_string("compare", [], "A,B: also test 'A beats B'")
  _FOLDS = flags.DEFINE_integer("folds", 5, "k of the k-fold")
  _REPEATS = flags.DEFINE_integer("repeats", 1, "repeats of the k-fold for deep rows")
  _BASELINE_REPEATS = flags.DEFINE_integer("baseline_repeats", 5, "repeats for baselines")
  _SEED = flags.DEFINE_integer("seed", 0, "seed of the folds and of every unit")
  _PRETRAINING = flags.DEFINE_enum("pretraining", runs.INDUCTIVE,
                                   [runs.INDUCTIVE, runs.TRANSDUCTIVE],
                                   "-CP rows: pre-train per fold or once on everything")
  _PRETRAIN_DATA = flags.DEFINE_multi_string(
      "pretrain_data", [], "key=value: the -CP rows' pre-training data (default: --data "
      "without data.label)")
  runs.define_study_flags(processes=1)


@cli.user_errors
def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  extra = []
  for text in _COMPARE.value:
    pair = tuple(p.strip() for p in text.split(","))
    if len(pair) != 2 or not all(pair) or not set(pair) <= set(_ROWS.value):
      raise app.UsageError(f"--compare={text!r}: expected A,B with rows of --rows")
    extra.append(pair)
  try:
    plan = make_plan(_WORKDIR.value, _DATA.value, _SETTING.value, _ROWS.value,
                     pretraining=_PRETRAINING.value, k=_FOLDS.value,
                     repeats=_REPEATS.value, baseline_repeats=_BASELINE_REPEATS.value,
                     seed=_SEED.value, pretrain_data=tuple(_PRETRAIN_DATA.value),
                     **runs.config_args())
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  runs.command_main(
      plan, "coughjax.protocol", **runs.cluster_args(),
      report=pathlib.Path(_REPORT.value or plan.workdir / "report.md"),
      format_report=lambda results, command, progress: format_report(
          plan, results, rep.judge(comparisons(plan, extra), results), command,
          progress))


if __name__ == "__main__":
  define_flags()
  app.run(main)
