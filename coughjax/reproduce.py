r"""Reproduces a results table of the paper: runs its rows, writes ours beside theirs.

  python -m coughjax.reproduce --table=5                 # built-in synthetic data
  python -m coughjax.reproduce --table=1 --runlocal      # a seconds-long smoke run
  python -m coughjax.reproduce --table=3 \
      --pretrain_set=data.name=coswara --pretrain_set=data.root=/data/Coswara-Data \
      --downstream_set=data.name=covid19_sounds --downstream_set=data.root=/data/c19s

Every contrastive pre-training a row needs is run once (in runs/<variant>; a
finished one is reused, an interrupted one resumed), then every row (in
runs/<variant>, skipped if its results.json exists). A workdir belongs to its
overrides: with `--pretrain_set` / `--downstream_set`, its name gets a digest of
them (runs/<variant>-<digest>; a downstream row's covers the pre-training
overrides too if it starts from a pre-training), so a rerun with other overrides
never reuses another config's runs or results. The table — ours mean (std) over the
runs beside the paper's numbers (coughjax.paper) — goes to stdout and
runs/reproduce/table<N>[-<digest>].md.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
from typing import Sequence

from absl import app
from absl import flags
from absl import logging

from coughjax import cli
from coughjax import files
from coughjax import overrides
from coughjax import paper
from coughjax.train import run as run_lib

_TABLE = flags.DEFINE_integer("table", None, "paper table (1-5)", required=True)
_RUNLOCAL = flags.DEFINE_bool("runlocal", False, "tiny configs (smoke run)")
_RUNS = flags.DEFINE_string("runs", "runs", "folder holding the workdirs")
_PRETRAIN_SET = flags.DEFINE_multi_string("pretrain_set", [], "key=value for pre-training")
_DOWNSTREAM_SET = flags.DEFINE_multi_string("downstream_set", [], "key=value for downstream")


def run_table(table: int, runs: pathlib.Path, runlocal: bool = False,
              pretrain_set=(), downstream_set=()) -> str:
  """Runs every row of `table`; returns the markdown report."""
  if table not in paper.TABLES:
    raise ValueError(f"--table must be one of {sorted(paper.TABLES)}, got {table}")
  pretrain_cfgs, downstream_cfgs = overrides.config_modules()
  suffix = ",runlocal" if runlocal else ""
  rows = {}
  for variant in paper.TABLES[table]:
    config = downstream_cfgs.get_config(variant + suffix)
    overrides.apply_overrides(config, downstream_set)
    pretrained = False
    for key in ("encoder_a", "encoder_b"):
      branch = config[key]
      if branch.name and branch.init == "cp" and not branch.checkpoint:
        pcfg = pretrain_cfgs.get_config(branch.pretrain + suffix)
        overrides.apply_overrides(pcfg, pretrain_set)
        pdir = runs / workdir_name(branch.pretrain, runlocal, pretrain=pretrain_set)
        branch.checkpoint = str(pdir)
        pretrained = True
        # Resumes an interrupted run; returns at once if it already finished.
        logging.info("table %d: pre-training %s in %s", table, branch.pretrain, pdir)
        pcfg.lock()
        run_lib.run(pcfg, str(pdir))
    workdir = runs / workdir_name(variant, runlocal, downstream=downstream_set,
                                  pretrain=pretrain_set if pretrained else ())
    if not (workdir / "results.json").is_file():
      logging.info("table %d: %s in %s", table, variant, workdir)
      config.lock()
      run_lib.run(config, str(workdir))
    rows[variant] = json.loads((workdir / "results.json").read_text())
  return format_table(table, rows)


def workdir_name(variant: str, runlocal: bool = False, *, downstream: Sequence[str] = (),
                 pretrain: Sequence[str] = ()) -> str:
  """`<variant>[_runlocal]`, and `-<digest>` of the overrides if there are any.

  The digest covers the overrides as given (order included: a later one wins), so
  two runs share a workdir only if they ran with the same overrides.
  """
  name = variant + ("_runlocal" if runlocal else "")
  if not downstream and not pretrain:
    return name
  blob = json.dumps({"downstream": list(downstream), "pretrain": list(pretrain)})
  return f"{name}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


def format_table(table: int, rows: dict[str, dict]) -> str:
  metrics = ("auc", "precision", "recall", "accuracy")
  datasets = sorted({r["dataset"] for r in rows.values()})
  lines = [f"# Table {table}: ours (mean (std) over runs, recording level) vs the paper",
           "", f"Ours: {'; '.join(datasets)}. Paper: COVID-19 Sounds test set, "
           f"{paper.SOURCE}.", "",
           "| row | " + " | ".join(f"{m} ours | {m} paper" for m in metrics)
           + " | avg F1 ours | avg F1 paper |",
           "|---|" + "---|---|" * (len(metrics) + 1)]
  notes = []
  for variant, r in rows.items():
    s = r["summary"]["recording"]
    ref, source = paper.reference(variant)
    if not source.startswith(f"Table {table}"):
      notes.append(f"- {variant}: paper numbers from {source}.")
      variant = f"{variant} †"
    cells = []
    for m in metrics:
      cells.append(f"{s[f'{m}_mean']:.2f} ({s[f'{m}_std']:.2f})")
      cells.append(f"{ref[m]:.2f}" if m in ref else "–")
    cells.append(f"{s['avg_f1']:.2f}")
    cells.append(f"{ref['avg_f1']:.2f}" if "avg_f1" in ref else "–")
    lines.append(f"| {variant} | " + " | ".join(cells) + " |")
  if notes:
    lines += ["", "† the paper's numbers for this row come from elsewhere:", *notes]
  return "\n".join(lines) + "\n"


@cli.user_errors
def main(argv):
  del argv
  runs = pathlib.Path(_RUNS.value)
  report = run_table(_TABLE.value, runs, _RUNLOCAL.value, _PRETRAIN_SET.value,
                     _DOWNSTREAM_SET.value)
  out = runs / "reproduce" / (workdir_name(
      f"table{_TABLE.value}", _RUNLOCAL.value, downstream=_DOWNSTREAM_SET.value,
      pretrain=_PRETRAIN_SET.value) + ".md")
  files.atomic_write(out, lambda f: f.write(report.encode()))
  print(report)
  print(f"written to {out}")


if __name__ == "__main__":
  app.run(main)
