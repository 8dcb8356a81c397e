r"""Linear probe of frozen recording embeddings (OPERA's protocol): encoder vs baseline.

  python -m coughjax.probe --encoder=runs/transformer_m50
  python -m coughjax.probe --encoder=runs/transformer_m50 \
      --config.data.name=coswara --config.data.root=../shared/data/coswara_ci \
      --config.data.label=sex --config.data.sounds=cough-heavy,cough-shallow

For each encoder (`--encoder`, repeatable: a workdir or a shipped encoder's name,
as `coughjax.load_encoder` takes; `logmel_stats` is the raw log-mel baseline, always
added) every labelled recording of `config.data` is embedded once (mean over its
clips, `coughjax.embed`), then for each of `config.num_runs` participant splits
(`coughjax.data.splits`, seed `data.split_seed + i`: the splits of downstream run
i) a logistic regression on standardised embeddings is fitted on the training
participants (train + validation of the split) and scored on the test participants.
C is `config.probe.C`, or, when 0, the best of `config.probe.C_grid` by ROC-AUC over
participant-grouped, label-stratified folds of the training split only. Prints a
markdown table of test ROC-AUC (%), mean (std) over the splits.

`logmel_stats`: per log-mel band, the mean, standard deviation and mean absolute
frame-to-frame difference over the whole recording ([3 * nfilt]), with the
config's feature parameters.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from typing import Sequence

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags
import numpy as np
from sklearn import metrics as skm
from sklearn import model_selection

from coughjax import baselines
from coughjax import cli
from coughjax import configs
from coughjax.data import manifest as manifest_lib
from coughjax.data import splits as splits_lib
from coughjax.data.manifest import Recording

BASELINE = "logmel_stats"


@dataclasses.dataclass
class Table:
  """Recording embeddings of one encoder, in the order of `records`."""
  name: str
  records: list[Recording]
  x: np.ndarray  # [n, d]


def embed(name: str, records: Sequence[Recording], config) -> Table:
  """Embeds `records` once with encoder `name` (or the baseline)."""
  from coughjax import embed as embed_lib  # pylint: disable=g-import-not-at-top
  if name == BASELINE:
    from coughjax.data import features as features_lib  # pylint: disable=g-import-not-at-top
    cache = features_lib.FeatureCache(features_lib.FeatureParams.from_config(config.features))
    kept, feats, _ = cache.load(records, name=config.data.name, workers=config.data.workers)
    return Table(name, kept, baselines.statistics_matrix(feats).astype(np.float32))
  encoder = embed_lib.load_encoder(name)
  kept, out = embed_lib.embed_records(encoder, records, name=config.data.name,
                                      workers=config.data.workers)
  return Table(name, kept, out.recordings)


def fit_and_score(x_train, y_train, groups, x_test, y_test, probe_cfg) -> tuple[float, float]:
  """(test ROC-AUC in %, chosen C) of a standardised logistic regression."""

  def model(c):
    return baselines.logistic_model(c, max_iter=probe_cfg.max_iter)

  c = float(probe_cfg.C)
  if c <= 0:
    # Folds need both classes: at most as many folds as the rarer class has
    # participants.
    per_class = [len(set(groups[y_train == k])) for k in (0, 1)]
    folds = min(probe_cfg.cv_folds, *per_class)
    if folds >= 2:
      search = model_selection.GridSearchCV(
          model(1.0), {"logisticregression__C": list(probe_cfg.C_grid)},
          scoring="roc_auc",
          cv=model_selection.StratifiedGroupKFold(folds, shuffle=True, random_state=0))
      search.fit(x_train, y_train, groups=groups)
      c = float(search.best_params_["logisticregression__C"])
    else:
      c = 1.0
      logging.warning("too few participants of one class for CV over C; C = 1")
  clf = model(c).fit(x_train, y_train)
  if len(set(y_test.tolist())) < 2:
    return float("nan"), c
  return 100 * skm.roc_auc_score(y_test, clf.predict_proba(x_test)[:, 1]), c


def probe(table: Table, all_records: Sequence[Recording], config) -> list[dict]:
  """One result per split: {"run", "auc", "C", "train", "test"}."""
  index = {r: i for i, r in enumerate(table.records)}
  y = np.array([r.label for r in table.records])
  groups = np.array([r.participant_id for r in table.records])
  results = []
  for run in range(config.num_runs):
    parts = splits_lib.split(all_records, config.data.split, config.data.split_seed + run)
    train = [index[r] for r in parts["train"] + parts["val"] if r in index]
    test = [index[r] for r in parts["test"] if r in index]
    if not train or not test:
      raise ValueError(f"{config.data.name}: split {run} leaves {len(train)} training and "
                       f"{len(test)} test recordings; the probe needs both (data.split = "
                       f"{tuple(config.data.split)})")
    if len(set(y[train].tolist())) < 2:
      raise ValueError(f"{config.data.name}: split {run}'s training participants have one "
                       "class only")
    auc, c = fit_and_score(table.x[train], y[train], groups[train], table.x[test], y[test],
                           config.probe)
    results.append({"run": run, "auc": auc, "C": c, "train": len(train), "test": len(test)})
  return results


def run(encoders: Sequence[str], config) -> list[tuple[str, int, list[dict]]]:
  """(encoder, d, per-split results) for each encoder and the baseline."""
  from coughjax import data  # pylint: disable=g-import-not-at-top
  records = manifest_lib.select(data.get_manifest(config.data), labelled=True)
  if not records:
    raise ValueError(f"{config.data.name}: no labelled recordings "
                     f"(data.label={config.data.label!r})")
  logging.info("%s: %s", config.data.name, manifest_lib.describe(records))
  names = list(dict.fromkeys(list(encoders) + [BASELINE]))
  out = []
  for name in names:
    start = time.time()
    table = embed(name, records, config)
    logging.info("%s: %d recordings embedded (d = %d) in %.1f s", name, len(table.records),
                 table.x.shape[1], time.time() - start)
    out.append((name, table.x.shape[1], probe(table, records, config)))
  return out


def markdown(results: list[tuple[str, int, list[dict]]], config) -> str:
  d = config.data
  what = d.name + (f" ({d.label})" if d.label else "") + (
      f", {d.source_filter}" if d.get("source_filter") else "")
  lines = [f"Linear probe on {what}: test ROC-AUC (%), mean (std) over "
           f"{config.num_runs} participant splits", "",
           "| encoder | d | ROC-AUC | per split | C |", "|---|---|---|---|---|"]
  for name, dim, runs in results:
    aucs = np.array([r["auc"] for r in runs])
    per = ", ".join(f"{a:.1f}" for a in aucs)
    cs = ", ".join(f"{r['C']:g}" for r in runs)
    lines.append(f"| {name} | {dim} | {np.nanmean(aucs):.2f} ({np.nanstd(aucs):.2f}) | "
                 f"{per} | {cs} |")
  return "\n".join(lines)


@cli.user_errors
def main(argv):
  cli.quiet_logging()
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = flags.FLAGS.config
  print(markdown(run(flags.FLAGS.encoder, config), config))
  sys.stdout.flush()


if __name__ == "__main__":
  flags.DEFINE_multi_string("encoder", [], f"workdir or shipped encoder name (repeatable); "
                            f"{BASELINE} is always added")
  config_flags.DEFINE_config_file("config", configs.path("probe"),
                                  "configs/probe.py[:runlocal] and --config.* overrides",
                                  lock_config=True)
  app.run(main)
