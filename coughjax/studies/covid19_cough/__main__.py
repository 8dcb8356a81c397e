r"""The covid19_cough study's command (the package docstring says what it runs).

  python -m coughjax.studies.covid19_cough            # the committed report
  python -m coughjax.studies.covid19_cough --rows=transformer,ens_transformer_cp_ds50 \
      --noattempts                                    # fewer rows, same protocol
  python -m coughjax.studies.covid19_cough --runlocal --folds=2 --workdir=/tmp/s
  python -m coughjax.studies.covid19_cough \
      --from_scores=docs/covid19_cough/scores.csv.gz   # the report again, no training
  python -m coughjax.studies.covid19_cough --interim  # the units done so far, no training
"""

from __future__ import annotations

import pathlib
import shlex
import sys

from absl import app
from absl import flags

from coughjax import cli
from coughjax import data
from coughjax import files
from coughjax.overrides import config_modules
from coughjax.protocol import runs
from coughjax.protocol import scores as scores_lib
from coughjax.studies.covid19_cough import report as report_lib
from coughjax.studies.covid19_cough.design import (
    CC, DEEP, GAIN, MODULE, POOLED, TG, VERIFIED, default_root, make_plan)


def define_flags() -> None:
  """The command's flags (defined when run as a command only: other commands that
  a process may import define some of the same names)."""
  global _ROOT, _COSWARA, _WORKDIR, _REPORT, _FOLDS, _REPEATS, _BASELINE_REPEATS
  global _SEED, _ROWS, _SETTINGS, _ATTEMPTS
  global _SECONDARY_REPEATS
  global _SCORES_DIR, _FROM_SCORES
  _ROOT = flags.DEFINE_string("root", None, "covid19_cough release folder (default: "
                              "$COUGHJAX_COVID19_COUGH or ../shared/data/covid19_cough)")
  _COSWARA = flags.DEFINE_string("coswara_root", None, "Coswara folder joined to the "
                                 "pre-training data (default: as configs/pretrain.py's "
                                 "real option; '' = covid19_cough alone)")
  _WORKDIR = flags.DEFINE_string("workdir", "runs/covid19_cough", "where every unit goes")
  _REPORT = flags.DEFINE_string("report", "docs/reproduction_covid19_cough.md", "report path")
  _SCORES_DIR = flags.DEFINE_string(
      "scores_dir", "docs/covid19_cough", f"where {scores_lib.SCORES_FILE} (every score "
      f"behind the report), {scores_lib.UNITS_FILE} and {report_lib.RELIABILITY_FILE} go")
  _FROM_SCORES = flags.DEFINE_string(
      "from_scores", None, f"regenerate the report from this {scores_lib.SCORES_FILE} "
      "(and the units.json beside it) without running anything")
  _FOLDS = flags.DEFINE_integer("folds", 3, "k of the k-fold")
  _REPEATS = flags.DEFINE_integer("repeats", 5, "repeats of the k-fold for the primary "
                                  "family's deep row (the paper's best model)")
  _BASELINE_REPEATS = flags.DEFINE_integer("baseline_repeats", 5, "repeats for baselines")
  _SECONDARY_REPEATS = flags.DEFINE_integer(
      "secondary_repeats", 2, "repeats for the other deep rows (compared on the repeats "
      "both rows ran)")
  _SEED = flags.DEFINE_integer("seed", 0, "seed of the folds and of every unit")
  _ROWS = flags.DEFINE_list("rows", list(DEEP), "deep rows run in the call centre "
                            "(default: all)")
  _SETTINGS = flags.DEFINE_list("settings", [CC, GAIN, VERIFIED, POOLED, TG], "settings")
  _ATTEMPTS = flags.DEFINE_bool("attempts", True, "also the attempts at making the "
                                "paper's best model win: 80-epoch pre-training, augmented "
                                "training (the loudness-normalised one is a setting)")
  runs.define_study_flags(processes=2)


@cli.user_errors
def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  root = pathlib.Path(_ROOT.value) if _ROOT.value else default_root()
  coswara = _COSWARA.value
  if coswara is None:  # as configs/pretrain.py's `real` option
    pretrain_cfgs, _ = config_modules()
    coswara = data.parse_roots(pretrain_cfgs.real_roots())["coswara"]
  try:
    plan = make_plan(root, coswara, pathlib.Path(_WORKDIR.value), k=_FOLDS.value,
                     repeats=_REPEATS.value, baseline_repeats=_BASELINE_REPEATS.value,
                     secondary_repeats=_SECONDARY_REPEATS.value,
                     seed=_SEED.value, deep_rows=_ROWS.value,
                     setting_names=_SETTINGS.value, attempts=_ATTEMPTS.value,
                     **runs.config_args())
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  scores_dir = pathlib.Path(_SCORES_DIR.value)
  if _FROM_SCORES.value:
    if runs.cluster_args()["interim"]:
      raise app.UsageError("--from_scores and --interim: a scores file says itself "
                           "whether its report was interim; drop --interim")
    path = pathlib.Path(_FROM_SCORES.value)
    try:
      report = runs.check_report(pathlib.Path(_REPORT.value), MODULE)
    except ValueError as e:
      raise app.UsageError(str(e)) from None
    plan, results, text = report_lib.from_scores(path, root, " ".join(
        ["python -m", MODULE, *map(shlex.quote, sys.argv[1:])]))
    report_lib.reliability(results, report_lib.titles_of(plan),
                           path.parent / report_lib.RELIABILITY_FILE)
    files.atomic_write(report, lambda f: f.write(text.encode()))
    print(text)
    print(f"written to {report}")
    return
  runs.command_main(
      plan, MODULE, **runs.cluster_args(), report=pathlib.Path(_REPORT.value),
      format_report=lambda results, command, progress: report_lib.publish(
          plan, results, root, command, scores_dir, progress))


if __name__ == "__main__":
  define_flags()
  app.run(main)
