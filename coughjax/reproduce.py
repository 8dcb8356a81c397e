r"""A results table of the paper, run as a study on the evaluation protocol.

  python -m coughjax.reproduce --table=5                 # built-in synthetic data
  python -m coughjax.reproduce --table=3 --runlocal      # a smoke run (2 folds)
  python -m coughjax.reproduce --table=3 \
      --pretrain_set=data.name=coswara --pretrain_set=data.root=/data/Coswara-Data \
      --downstream_set=data.name=covid19_sounds --downstream_set=data.root=/data/c19s
  python -m coughjax.reproduce --table=1 --rows=gru,transformer,gru_cp_ft --dry_run

The rows of paper Table N (`coughjax.paper.TABLES`, `configs/downstream.py`
variants) run through `coughjax.protocol`: k-fold cross-validation over the
participants of the downstream data (`--folds`, `--repeats`), each row trained on a
fold's training part with early stopping on its validation part and scored on its
test part, so every recording gets an out-of-fold score. -CP rows start from
contrastive pre-training once per repeat (own seeds) on the pre-training configs'
data (`--pretrain_set` changes it), the protocol's *pool*: it must hold none of the
evaluated recordings, which is checked by path and by content before any work, as
the paper pre-trains on other recordings than it tests on.

The report: each row's recording-level AUC [95 % DeLong interval] and threshold
metrics (at thresholds chosen on each fold's validation part) with the paper's AUC
in a column (the paper's Table N, or for `gru_cp_ft` Table 2's bilinear row: see
`coughjax.paper`), the paper's whole row beside it, and the table's claim — the row
the paper ranks first scores a higher AUC than each other row — as paired
comparisons, Holm-corrected. The paper's numbers are one test split's mean over 5
runs at a 0.5 threshold, on COVID-19 Sounds: on other data, or our synthetic set,
they are a reference, not a target.

Every unit lands in runs/reproduce/<table>/, and the report in it (report.md),
where <table> is `table<N>[_runlocal]_k<folds>r<repeats>s<seed>` and, with
`--pretrain_set` / `--downstream_set`, `-<digest of them>`: a rerun with other
overrides or another protocol never reuses another's units. A stopped run resumes
unit by unit; `--dry_run` lists the units and their state; the units run on an
embedded Dask cluster (`--processes`) or a running one (`--scheduler`).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import pathlib
from typing import Optional, Sequence

from absl import app
from absl import flags

from coughjax import cli
from coughjax import paper
from coughjax.overrides import apply_overrides
from coughjax.overrides import config_modules
from coughjax.protocol import report as rep
from coughjax.protocol import runs

MODULE = "coughjax.reproduce"
SETTING = "paper"
PAPER_METRICS = ("auc", "precision", "recall", "accuracy", "avg_f1")


def workdir_name(stem: str, runlocal: bool = False, *, downstream: Sequence[str] = (),
                 pretrain: Sequence[str] = ()) -> str:
  """`<stem>[_runlocal]`, and `-<digest>` of the overrides if there are any.

  The digest covers the overrides as given (order included: a later one wins), so
  two runs share a workdir only if they ran with the same overrides.
  """
  name = stem + ("_runlocal" if runlocal else "")
  if not downstream and not pretrain:
    return name
  blob = json.dumps({"downstream": list(downstream), "pretrain": list(pretrain)})
  return f"{name}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


def best_row(table: int) -> str:
  """The row the paper ranks first in `table` (its highest AUC)."""
  rows = paper.TABLES[table]
  return max(rows, key=lambda v: rows[v]["auc"])


def pool(pretrain_set: Sequence[str] = (), runlocal: bool = False) -> tuple[str, ...]:
  """The -CP rows' pre-training data as a protocol pool: the pre-training configs'
  own data with `pretrain_set`, named by its `data.name` (the pool's overrides name
  its folders; `--pretrain_set` applies after them)."""
  pretrain_cfgs, _ = config_modules()
  config = pretrain_cfgs.get_config("transformer_m50" + (",runlocal" if runlocal else ""))
  apply_overrides(config, pretrain_set)
  return (f"data.name={config.data.name}",)


def make_plan(table: int, runs_dir: pathlib.Path, *, rows: Optional[Sequence[str]] = None,
              k: int = 5, repeats: int = 1, seed: int = 0, runlocal: bool = False,
              downstream_set: Sequence[str] = (), pretrain_set: Sequence[str] = ()
              ) -> runs.Plan:
  """Table `table`'s rows (or those of them in `rows`) in one setting, the
  downstream configs' data; -CP rows pre-train once per repeat on the pool
  (`pool`). Builds every unit's config, so a bad override is an error here, before
  anything is written."""
  if table not in paper.TABLES:
    raise ValueError(f"--table must be one of {sorted(paper.TABLES)}, got {table}")
  variants = list(paper.TABLES[table])
  unknown = sorted(set(rows or ()) - set(variants))
  if unknown:
    raise ValueError(f"--rows: {unknown} are not rows of Table {table}; its rows: "
                     f"{', '.join(variants)}")
  names = [v for v in variants if not rows or v in rows]
  stem = f"table{table}" + ("_runlocal" if runlocal else "") + f"_k{k}r{repeats}s{seed}"
  workdir = runs_dir / "reproduce" / workdir_name(stem, downstream=downstream_set,
                                                  pretrain=pretrain_set)
  plan = runs.Plan(
      workdir=workdir, data=(),
      rows=tuple(runs.Row(v, v, pretraining=runs.POOL) for v in names),
      settings=(runs.Setting(SETTING, (), tuple(names), f"Table {table}'s rows",
                             pool=pool(pretrain_set, runlocal)),),
      k=k, repeats=repeats, baseline_repeats=repeats, seed=seed, runlocal=runlocal,
      downstream_set=tuple(downstream_set), pretrain_set=tuple(pretrain_set))
  for unit in runs.units_of(plan):
    for part in unit.parts:
      part.config()
  return plan


def claim(plan: runs.Plan, table: int) -> list[rep.Comparison]:
  """The table's claim, declared before anything runs: the paper's first row scores
  a higher AUC than each other row that runs (none where it does not run)."""
  best = best_row(table)
  ran = [r.name for r in plan.rows]
  return [rep.Comparison(SETTING, best, b, f"table{table}")
          for b in ran if b != best and best in ran]


def paper_lines(plan: runs.Plan, table: int) -> list[str]:
  """The paper's row of every variant (`paper.reference`) and where it comes from."""
  lines = ["| row | " + " | ".join(PAPER_METRICS) + " | from |",
           "|---|" + "---:|" * len(PAPER_METRICS) + "---|"]
  for row in plan.rows:
    numbers, source = paper.reference(row.variant)
    cells = [f"{numbers[m]:.2f}" if m in numbers else "–" for m in PAPER_METRICS]
    lines.append(f"| {row.title} | " + " | ".join(cells) + f" | {source} |")
  return lines


def format_report(plan: runs.Plan, table: int, results, command: str,
                  progress: Optional[tuple[int, int]] = None) -> str:
  """The report of `plan`'s `results` ({setting: {row: Scores}})."""
  titles = {r.name: r.title for r in plan.rows}
  res = results[SETTING]
  paper_auc = {v: paper.reference(v)[0]["auc"] for v in res}
  judged = rep.judge(claim(plan, table), results)
  config = runs.downstream_config(plan, plan.settings[0], plan.rows[0])
  rows_min, pre_min = rep.cost_minutes(plan, results)
  lines = [
      f"# Table {table} of the paper, on the evaluation protocol", "",
      f"Generated {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC by "
      f"`{MODULE}` on the evaluation protocol of `coughjax.protocol`.", "",
      *rep.provenance(command, progress), "",
      f"Data: {config.data.name}. {plan.k}-fold cross-validation over participants, stratified by stratum × "
      f"label, {plan.repeats} repeat(s) (seed {plan.seed}); each fold's remaining "
      "participants are split into training and validation, early stopping on the "
      f"validation {config.monitor}. -CP rows pre-train once per repeat on "
      f"{', '.join(plan.settings[0].pool)} (checked to hold no evaluated recording). "
      "AUC [95 % DeLong interval, combined over repeats]; precision, recall, F1 and "
      "accuracy at thresholds chosen on each fold's validation part.", "",
      "## Rows", "", *rep.rows_table(res, titles, paper_auc), "",
      f"The paper's numbers ({paper.SOURCE}): the COVID-19 Sounds test set, mean over "
      "5 runs, threshold 0.5, in %:", "", *paper_lines(plan, table), ""]
  if judged:
    lines += [f"## The table's claim: {titles[best_row(table)]} scores higher than "
              f"each other row (Holm over {len(judged)})", "",
              *rep.comparison_lines(judged, titles), ""]
  lines += [f"Cost: rows {rows_min:.0f} min, pre-training {pre_min:.0f} min.", ""]
  return "\n".join(lines)


# --- the command --------------------------------------------------------------------


def define_flags() -> None:
  """The command's flags (defined when run as a command only: tests import this
  module, and other commands define some of the same names)."""
  global _TABLE, _ROWS, _RUNS, _FOLDS, _REPEATS, _SEED
  _TABLE = flags.DEFINE_integer("table", None, "paper table (1-5)", required=True)
  _ROWS = flags.DEFINE_list("rows", None, "only these rows of the table (default: all)")
  _RUNS = flags.DEFINE_string("runs", "runs", "folder holding runs/reproduce/")
  _FOLDS = flags.DEFINE_integer("folds", None, "k of the k-fold (default 5; 2 with "
                                "--runlocal)")
  _REPEATS = flags.DEFINE_integer("repeats", 1, "repeats of the k-fold")
  _SEED = flags.DEFINE_integer("seed", 0, "seed of the folds and of every unit")
  runs.define_study_flags(processes=1)


@cli.user_errors
def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  table = _TABLE.value
  config_args = runs.config_args()
  k = _FOLDS.value or (2 if config_args["runlocal"] else 5)
  plan = make_plan(table, pathlib.Path(_RUNS.value), rows=_ROWS.value, k=k,
                   repeats=_REPEATS.value, seed=_SEED.value, **config_args)
  runs.command_main(
      plan, MODULE, **runs.cluster_args(), report=plan.workdir / "report.md",
      format_report=lambda results, command, progress: format_report(
          plan, table, results, command, progress))


if __name__ == "__main__":
  define_flags()
  app.run(main)
