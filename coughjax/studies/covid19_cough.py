r"""Does the paper's method detect COVID-19 in real coughs? The covid19_cough study.

  python -m coughjax.studies.covid19_cough            # the committed report
  python -m coughjax.studies.covid19_cough --rows=transformer,ens_transformer_cp_ds50 \
      --noattempts                                    # fewer rows, same protocol
  python -m coughjax.studies.covid19_cough --runlocal --folds=2 --workdir=/tmp/s

The paper's Tables 1/3/4/5 (VGGish rows aside: no AudioSet weights here, and from
scratch they cost ~15x a Transformer) on covid19_cough's induced coughs, through the
evaluation protocol of `coughjax.protocol` (repeated stratified k-fold over
participants, out-of-fold scores, DeLong intervals, Holm-corrected paired
comparisons), with the confound controls beside every setting:

* settings: within the call centre (the paper's tables), within Telegram, pooled
  (broken down by source), the call centre with loudness-normalised features
  (`features.normalise=gain`: deep rows, their pre-training and the baselines alike)
  and the call centre with PCR-verified positives only (`data.verified_only`);
* baselines: log-mel statistics + logistic regression, the 64 band means alone,
  loudness alone (mean log-mel energy), duration alone, and pooled, the channel
  alone;
* -CP rows pre-train inductively: per fold, on Coswara + covid19_cough without that
  fold's test recordings; one row pre-trains on everything (transductive) to
  measure what seeing the test audio is worth;
* every deep row trains up to 40 epochs with early stopping (patience 10) on its
  fold's validation AUC and is scored from its best validation checkpoint;
* attempts at making the paper's best model win, beside the loudness-normalised
  setting (`--noattempts` leaves them out): pre-training twice as long, and
  training augmentation (`ATTEMPTS`).

Everything lands in `--workdir` (resumable unit by unit, see
`coughjax.protocol.runs`); the report, `docs/reproduction_covid19_cough.md`, is
written from what is there. Its Cost section sums the units' wall time: 13.1 h for
the committed report. 6.7 h of it ran on 2026-12-04/05 with 2-3 study processes,
tests and benchmarks sharing 2 cores (so those units ran slower than alone); the
other 6.4 h (the GRU, frozen, Table 4, DS 25/75/100 % and Table 3 25/75/100 % rows,
the attempts) took 2 h 1 min of wall time with 2 processes on an otherwise idle
2-core machine. From scratch on such a machine the whole report should take about
4 h (an estimate from those two runs, not measured).
"""

from __future__ import annotations

import collections
import datetime
import json
import pathlib
from typing import Sequence

from absl import app
from absl import flags

from coughjax import data
from coughjax import paper
from coughjax.data import covid19_cough
from coughjax.data import features as features_lib
from coughjax.data import manifest as manifest_lib
from coughjax.overrides import config_modules
from coughjax.protocol import report as rep
from coughjax.protocol import runs
from coughjax.protocol.report import Comparison
from coughjax.protocol.runs import Row, Setting

BEST = "ens_transformer_cp_ds50"  # the paper's best model (Table 5)
TRANSDUCTIVE_BEST = BEST + "_transductive"
# Attempts at making the method win honestly (besides the loudness-normalised
# setting), settled before any of them ran: pre-training twice as long (still
# inductive), and training augmentation (coughjax/train/augment.py): a random gain of
# up to +-10 dB per clip, which makes loudness useless to the classifier, and
# SpecAugment's masks scaled to a 96 x 64 clip (2 spans of up to 10 frames, 2 of up
# to 8 bands).
LONG_BEST = BEST + "_long_pretraining"
LONG_EPOCHS = 80
AUGMENTED_BEST = BEST + "_augmented"
AUGMENTATION = dict(gain_db=10.0, time_masks=2, time_mask_width=10, freq_masks=2,
                    freq_mask_width=8)
ATTEMPTS = (LONG_BEST, AUGMENTED_BEST)
_AUGMENTATION_WORDS = (
    "per clip, a random gain of up to ±{gain_db:g} dB and SpecAugment masks: "
    "{time_masks} spans of up to {time_mask_width} frames, {freq_masks} of up to "
    "{freq_mask_width} bands").format(**AUGMENTATION)
CONFOUNDS = ("band_means", "loudness_only", "duration_only", "channel_only")
BASELINE_ROWS = ("logmel_logreg",) + CONFOUNDS

# The non-VGGish rows of Tables 1/3/4/5, in the order they run (what matters most
# first, so a cut-short run has it; Table 3's 25 / 75 / 100 % rows last: they need
# three more pre-trainings per fold).
_DEEP = ("transformer", BEST, "transformer_cp_ft", "gru", "gru_cp_ft", "transformer_cp_frozen",
         "gru_cp_frozen", "transformer_cp_m50_ft", "ens_gru_transformer",
         "ens_gru_cp_transformer_cp", *(f"ens_transformer_cp_ds{r}" for r in (0, 25, 75, 100)),
         *(f"transformer_cp_m{r}_ft" for r in (25, 75, 100)))
NICE = {
    "gru": "GRU", "transformer": "Transformer", "gru_cp_frozen": "GRU-CP frozen",
    "gru_cp_ft": "GRU-CP fine-tuned", "transformer_cp_frozen": "Transformer-CP frozen",
    "transformer_cp_ft": "Transformer-CP fine-tuned (CP mask 0 %)",
    "ens_gru_transformer": "GRU + Transformer",
    "ens_gru_cp_transformer_cp": "GRU-CP + Transformer-CP",
    "logmel_logreg": "*baseline: log-mel statistics + LR*",
    "band_means": "*confound: band means + LR*",
    "loudness_only": "*confound: loudness only*",
    "duration_only": "*confound: duration only*",
    "channel_only": "*confound: channel only*",
    TRANSDUCTIVE_BEST: "Transformer-CP x2, DS 50 %, transductive pre-training",
    LONG_BEST: f"Transformer-CP x2, DS 50 %, pre-training {LONG_EPOCHS} epochs",
    AUGMENTED_BEST: "Transformer-CP x2, DS 50 %, augmented training",
}
NICE.update({f"transformer_cp_m{r}_ft": f"Transformer-CP fine-tuned (CP mask {r} %)"
             for r in (25, 50, 75, 100)})
NICE.update({f"ens_transformer_cp_ds{r}": f"Transformer-CP x2, DS {r} %"
             for r in (0, 25, 50, 75, 100)})
# Rows whose config is another's: Table 3's 0 % row is Table 1's Transformer-CP ft.
SAME_AS = {"transformer_cp_m0_ft": "transformer_cp_ft"}

CC, TG, POOLED, GAIN, VERIFIED = ("call-center", "telegram", "pooled",
                                  "call-center-gain", "call-center-verified")
# The rows of the secondary settings: the paper's best, the Transformer from scratch
# and what they are measured against.
_CORE = ("transformer", BEST)


def settings(deep_rows: Sequence[str], attempts: bool = False) -> tuple[Setting, ...]:
  """The study's five settings; `deep_rows` runs in the call centre (and with
  `attempts`, the attempts at making the paper's best model win)."""
  cc = [r for r in _DEEP if r in deep_rows]
  if BEST in cc:  # right after it
    at = cc.index(BEST) + 1
    cc[at:at] = [TRANSDUCTIVE_BEST] + (list(ATTEMPTS) if attempts else [])
  return (
      Setting(CC, ("data.source_filter=call-center",), BASELINE_ROWS[:-1] + tuple(cc),
              "within the call centre: the paper's tables"),
      Setting(GAIN, ("data.source_filter=call-center", "features.normalise=gain"),
              BASELINE_ROWS[:-1] + _CORE,
              "call centre, every recording gain-normalised (mean log-mel energy "
              "removed) for deep rows, pre-training and baselines alike"),
      Setting(VERIFIED, ("data.source_filter=call-center", "data.verified_only=True"),
              BASELINE_ROWS[:-1] + _CORE,
              "call centre, positives only where PCR-verified (negatives all kept)"),
      Setting(POOLED, (), BASELINE_ROWS + _CORE, "both sources pooled"),
      Setting(TG, ("data.source_filter=telegram",), BASELINE_ROWS[:-1] + _CORE,
              "within Telegram"),
  )


def rows() -> tuple[Row, ...]:
  return (tuple(Row(v, v, NICE.get(v, v)) for v in _DEEP)
          + (Row(TRANSDUCTIVE_BEST, BEST, NICE[TRANSDUCTIVE_BEST],
                 pretraining=runs.TRANSDUCTIVE),
             Row(LONG_BEST, BEST, NICE[LONG_BEST],
                 pretrain_overrides=(f"num_epochs={LONG_EPOCHS}",)),
             Row(AUGMENTED_BEST, BEST, NICE[AUGMENTED_BEST],
                 overrides=tuple(f"augment.{k}={v}" for k, v in AUGMENTATION.items())))
          + tuple(Row(b, b, NICE[b]) for b in BASELINE_ROWS))


# Findings: (key, claim, [(setting, A, B)]): "A scores a higher AUC than B".
def findings(plan: runs.Plan) -> list[tuple[str, str, list[Comparison]]]:
  """The paper's findings and the confound checks, as comparisons on what ran."""
  ran = {s.name: set(s.rows) for s in plan.settings}

  def comparisons(key, pairs):
    return [Comparison(s, a, b, key) for s, a, b in pairs
            if s in ran and a in ran[s] and b in ran[s]]

  m0 = SAME_AS["transformer_cp_m0_ft"]
  out = [
      ("i", "contrastive pre-training beats training from scratch",
       comparisons("i", [(CC, "transformer_cp_ft", "transformer"),
                         (CC, "gru_cp_ft", "gru")])),
      ("ii", "50 % CP masking beats the other CP masking rates (Table 3)",
       comparisons("ii", [(CC, "transformer_cp_m50_ft", b) for b in
                          (m0, "transformer_cp_m25_ft", "transformer_cp_m75_ft",
                           "transformer_cp_m100_ft")])),
      ("iii", "the DS 50 % ensemble beats the other ensembles, DS rates and the single "
       "Transformer-CP",
       comparisons("iii", [(CC, BEST, b) for b in
                           ("ens_gru_transformer", "ens_gru_cp_transformer_cp",
                            "transformer_cp_ft", "transformer_cp_m50_ft",
                            *(f"ens_transformer_cp_ds{r}" for r in (0, 25, 75, 100)))])),
      ("iv", "the paper's best model beats the baselines and confounds",
       comparisons("iv", [(s, BEST, b) for s in (CC, TG, POOLED, GAIN, VERIFIED)
                          for b in BASELINE_ROWS])),
      ("v", "the paper's best model beats the Transformer from scratch",
       comparisons("v", [(s, BEST, "transformer") for s in (TG, POOLED, GAIN, VERIFIED)])),
      ("vi", "pre-training on the test recordings' audio (transductive) scores higher "
       "than inductive pre-training",
       comparisons("vi", [(CC, TRANSDUCTIVE_BEST, BEST)])),
      ("vii", f"pre-training twice as long ({LONG_EPOCHS} epochs, inductive) improves "
       "the paper's best model, enough to beat the log-mel baseline",
       comparisons("vii", [(CC, LONG_BEST, b) for b in (BEST, "logmel_logreg")])),
      ("viii", "training augmentation (random gain, SpecAugment masks) improves the "
       "paper's best model, enough to beat the log-mel baseline and loudness",
       comparisons("viii", [(CC, AUGMENTED_BEST, b)
                            for b in (BEST, "logmel_logreg", "loudness_only")])),
  ]
  return [f for f in out if f[2]]


# --- the data ------------------------------------------------------------------------


def data_lines(root: pathlib.Path, plan: runs.Plan) -> list[str]:
  """What the release holds, what near-duplicate merging and the 0.5 s minimum
  leave, per source and label."""
  metadata = json.loads((root / covid19_cough.METADATA).read_text())
  files = collections.Counter((m["source"], int(m["covid19"])) for m in metadata)
  config = runs.downstream_config(plan, Setting("all", (), ()), Row("x", "transformer"))
  records = data.get_manifest(config.data)
  groups = collections.Counter(r.participant_id for r in records)
  recordings = collections.Counter((r.stratum, r.label) for r in records)
  labelled = manifest_lib.select(records, labelled=True)
  cache = features_lib.FeatureCache(features_lib.FeatureParams.from_config(config.features))
  kept, _, skipped = cache.load(labelled, name="covid19_cough", progress=False)
  usable = collections.Counter((r.stratum, r.label) for r in kept)
  lines = ["| source | label | files in metadata.json | recordings kept (near-duplicates "
           "merged; conflicting labels unlabelled) | usable (≥ 0.5 s) |",
           "|---|---|---:|---:|---:|"]
  for source in covid19_cough.SOURCES:
    for label, name in ((1, "positive"), (0, "negative"), (None, "unlabelled")):
      n = recordings.get((source, label), 0)
      if label is None and not n:
        continue
      lines.append(f"| {source} | {name} | "
                   f"{files.get((source, label), '–') if label is not None else '–'} | "
                   f"{n} | {usable.get((source, label), '–') if label is not None else '–'} |")
  share = {s: usable[s, 1] / max(usable[s, 0] + usable[s, 1], 1)
           for s in covid19_cough.SOURCES}
  multi = sum(n > 1 for n in groups.values())
  return lines + [
      "",
      f"{len(metadata)} files; {len(records)} recordings in {len(groups)} groups "
      f"({multi} groups of near-duplicate copies share a participant id, so they "
      f"never straddle folds); {len(skipped)} labelled recordings shorter than 0.5 s "
      f"are skipped. Usable positives: call centre {100 * share['call-center']:.0f} %, "
      f"Telegram {100 * share['telegram']:.0f} %."]


# --- the report ---------------------------------------------------------------------


def _titles(plan: runs.Plan) -> dict[str, str]:
  return {r.name: r.title for r in plan.rows}


def _paper_aucs() -> dict[str, float]:
  out = {}
  for t in (1, 3, 4, 5):
    for variant in paper.TABLES[t]:
      ref = paper.reference(variant)
      name = SAME_AS.get(variant, variant)
      if ref and "auc" in ref[0]:
        out.setdefault(name, ref[0]["auc"])
  return out


def confound_lines(results, titles) -> list[str]:
  """Per setting: the best deep row and how far each confound alone gets."""
  lines = ["| setting | best deep row: AUC | " + " | ".join(
      titles[c] for c in ("logmel_logreg",) + CONFOUNDS) + " |",
           "|---|---|" + "---|" * (1 + len(CONFOUNDS))]
  words = []
  for setting, res in results.items():
    deep = {n: rep.row_auc(s) for n, s in res.items() if n not in BASELINE_ROWS}
    if not deep:
      continue
    best = max(deep, key=lambda n: deep[n].mean)
    cells = [f"{titles[best]}: {rep.auc_cell(deep[best])}"]
    shares = {}
    for c in ("logmel_logreg",) + CONFOUNDS:
      if c not in res:
        cells.append("–")
        continue
      est = rep.row_auc(res[c])
      share = rep.share_explained(est, deep[best])
      shares[c] = share
      cells.append(rep.auc_cell(est) + ("" if share is None else f" ({100 * share:.0f} %)"))
    lines.append(f"| {setting} | " + " | ".join(cells) + " |")
    strongest = max((c for c in CONFOUNDS if shares.get(c) is not None),
                    key=lambda c: shares[c], default=None)
    if strongest is not None:
      words.append(f"- {setting}: {titles[strongest].strip('*')} alone reaches "
                   f"{100 * shares[strongest]:.0f} % of the best deep row's AUC above "
                   f"chance ({rep.auc_cell(rep.row_auc(res[strongest]))} against "
                   f"{rep.auc_cell(deep[best])}).")
  return lines + ["", "In parentheses: the confound's AUC above chance as a share of "
                  "the best deep row's, (AUC_confound − 0.5) / (AUC_row − 0.5).", ""] + words


def format_report(plan: runs.Plan, results, root: pathlib.Path, command: str) -> str:
  titles = _titles(plan)
  ran = {r for s in plan.settings for r in s.rows}
  not_run = [r for r in _DEEP if r not in ran]
  judged = rep.judge([c for _, _, cs in findings(plan) for c in cs], results)
  by_finding = collections.defaultdict(list)
  for j in judged:
    by_finding[j.comparison.finding].append(j)
  rows_min, pre_min = rep.cost_minutes(plan, results)
  lines = [
      "# Does the paper's method detect COVID-19 in real coughs? (covid19_cough)", "",
      f"Generated {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC by "
      "`coughjax.studies.covid19_cough` on the evaluation protocol of "
      "`coughjax.protocol`.", "", *rep.provenance(command), "",
      "## Answer", "", *answer_lines(judged, results, titles), "",
      "## Data", "", *data_lines(root, plan), "",
      "## Protocol", "",
      f"- {plan.k}-fold cross-validation over participants (near-duplicate copies are "
      f"one participant), stratified by source × label, {plan.repeats} repeat(s) for "
      f"deep rows and {plan.baseline_repeats} for baselines (seed {plan.seed}); the "
      "folds are drawn once over all labelled recordings, so every setting's folds are "
      "the same recordings' folds. In each fold the remaining recordings are split "
      "7 : 1 into training and validation (stratified); every recording gets one "
      "out-of-fold score per repeat.",
      "- Deep rows: up to 40 epochs, early stopping after 10 epochs without a better "
      "validation ROC-AUC, scored from the best validation checkpoint (the epochs each "
      "row used are in its table). -CP rows start from contrastive pre-training on "
      "Coswara (breathing and coughs) + covid19_cough (labels unused) at its full "
      "schedule (`configs/pretrain.py:<variant>,real`, 40 epochs), **inductive**: one "
      "pre-training per fold, without that fold's test recordings; one row "
      "(transductive) pre-trains on all the audio to measure what that is worth.",
      "- AUC: recording level, per repeat over all out-of-fold scores, with DeLong's "
      "variance; over repeats, the mean AUC and the mean variance (conservative for "
      "correlated repeats); 95 % normal interval. Comparisons: paired DeLong "
      "differences on the same recordings, combined the same way; two-sided p; Holm's "
      f"correction over all {len(judged)} comparisons of this report. A finding "
      "*holds* only at a corrected p < 0.05 in its favour, *does not hold* at p < 0.05 "
      "against it, and is otherwise *cannot tell*.",
      "- Threshold metrics at 0.5 from the pooled out-of-fold scores (mean over "
      "repeats); \"one class\" where a row's scores fall on one side of 0.5 for every "
      "recording of a repeat (they are not comparable then).",
      "- Not run: the VGGish rows (AudioSet weights cannot be downloaded here; from "
      "scratch one VGGish row costs about as much as 15 Transformer rows): not "
      "comparable, not shown."
      + (" Cut to fit this report's budget (see Cost; add them with `--rows`, the "
         "units that ran are reused): " + ", ".join(NICE.get(r, r) for r in not_run)
         + "." if not_run else ""),
      "- Attempts at making the paper's best model win, fixed before any of them ran "
      "and trained like every row (early stopping on the validation part, never on "
      "the test fold): the loudness-normalised setting; "
      + (f"{LONG_EPOCHS}-epoch inductive pre-training; augmented training "
         f"({_AUGMENTATION_WORDS})." if ran >= set(ATTEMPTS) else
         f"not run: {LONG_EPOCHS}-epoch pre-training and augmented training "
         "(`--attempts`)."), "",
      "## Findings", ""]
  for key, claim, _ in findings(plan):
    verdicts = {j.verdict for j in by_finding[key]}
    overall = ("holds" if verdicts == {"holds"} else "does not hold"
               if "does not hold" in verdicts else "cannot tell")
    lines += [f"### ({key}) {claim}: **{overall}**", "",
              *rep.comparison_lines(by_finding[key], titles), ""]
  lines += ["## Confounds", "", *confound_lines(results, titles), ""]
  paper_auc = _paper_aucs()
  for setting in plan.settings:
    res = results[setting.name]
    lines += [f"## {setting.name}: {setting.description}", "",
              *rep.rows_table(res, titles, paper_auc if setting.name == CC else None), ""]
    if len({s for r in res.values() for s in r.strata}) > 1:
      lines += ["By source (AUC of the pooled out-of-fold scores within each source):",
                "", *rep.strata_table(res, titles), ""]
  lines += ["## Cost", "",
            f"Rows and baselines {rows_min:.0f} min, pre-training {pre_min:.0f} min: "
            f"{(rows_min + pre_min) / 60:.1f} h in all on the machine above "
            "(the sum of every unit's wall time; a resumed run counts each unit once).",
            ""]
  return "\n".join(lines)


def answer_lines(judged, results, titles) -> list[str]:
  """The short answer, in words, from the verdicts."""
  def verdict_of(setting, a, b):
    for j in judged:
      c = j.comparison
      if (c.setting, c.a, c.b) == (setting, a, b):
        return j
    return None

  out = []
  for setting in (CC, TG, POOLED, GAIN, VERIFIED):
    if setting not in results or BEST not in results[setting]:
      continue
    best = rep.row_auc(results[setting][BEST])
    parts = []
    for b in BASELINE_ROWS:
      j = verdict_of(setting, BEST, b)
      if j is not None:
        parts.append(f"{titles[b].strip('*')}: {rep.signed_cell(j.estimate)} "
                     f"→ {j.verdict}")
    out.append(f"- {setting}: the paper's best model scores {rep.auc_cell(best)}; "
               "its lead over " + "; ".join(parts) + ".")
  return out


# --- the command --------------------------------------------------------------------


def define_flags() -> None:
  """The command's flags (defined when run as a command only: other commands that
  a process may import define some of the same names)."""
  global _ROOT, _COSWARA, _WORKDIR, _REPORT, _FOLDS, _REPEATS, _BASELINE_REPEATS
  global _SEED, _ROWS, _SETTINGS, _ATTEMPTS, _RUNLOCAL, _DOWNSTREAM_SET, _PRETRAIN_SET
  _ROOT = flags.DEFINE_string("root", None, "covid19_cough release folder (default: "
                              "$COUGHJAX_COVID19_COUGH or ../shared/data/covid19_cough)")
  _COSWARA = flags.DEFINE_string("coswara_root", None, "Coswara folder joined to the "
                                 "pre-training data (default: as configs/pretrain.py's "
                                 "real option; '' = covid19_cough alone)")
  _WORKDIR = flags.DEFINE_string("workdir", "runs/covid19_cough", "where every unit goes")
  _REPORT = flags.DEFINE_string("report", "docs/reproduction_covid19_cough.md", "report path")
  _FOLDS = flags.DEFINE_integer("folds", 3, "k of the k-fold")
  _REPEATS = flags.DEFINE_integer("repeats", 1, "repeats of the k-fold for deep rows")
  _BASELINE_REPEATS = flags.DEFINE_integer("baseline_repeats", 5, "repeats for baselines")
  _SEED = flags.DEFINE_integer("seed", 0, "seed of the folds and of every unit")
  _ROWS = flags.DEFINE_list("rows", list(_DEEP), "deep rows run in the call centre "
                            "(default: all)")
  _SETTINGS = flags.DEFINE_list("settings", [CC, GAIN, VERIFIED, POOLED, TG], "settings")
  _ATTEMPTS = flags.DEFINE_bool("attempts", True, "also the attempts at making the "
                                "paper's best model win: 80-epoch pre-training, augmented "
                                "training (the loudness-normalised one is a setting)")
  runs.define_cluster_flags(processes=2)
  _RUNLOCAL = flags.DEFINE_bool("runlocal", False, "runlocal-sized configs (smoke test)")
  _DOWNSTREAM_SET = flags.DEFINE_multi_string("downstream_set", [], "key=value, every row")
  _PRETRAIN_SET = flags.DEFINE_multi_string("pretrain_set", [], "key=value, pre-training")


def default_root() -> pathlib.Path:
  pretrain_cfgs, _ = config_modules()
  var, default = pretrain_cfgs.REAL_SOURCES["covid19_cough"]
  import os  # pylint: disable=g-import-not-at-top
  return pathlib.Path(os.environ.get(var) or default)


def make_plan(root: pathlib.Path, coswara_root: str, workdir: pathlib.Path, *,
              k: int = 3, repeats: int = 1, baseline_repeats: int = 5, seed: int = 0,
              deep_rows: Sequence[str] = _DEEP, setting_names: Sequence[str] = (
                  CC, GAIN, VERIFIED, POOLED, TG), attempts: bool = False,
              runlocal: bool = False, downstream_set=(), pretrain_set=()) -> runs.Plan:
  unknown = sorted(set(deep_rows) - set(_DEEP))
  if unknown:
    raise ValueError(f"--rows: unknown rows {unknown}; choose from {list(_DEEP)}")
  chosen = [s for s in settings(deep_rows, attempts) if s.name in setting_names]
  unknown = sorted(set(setting_names) - {s.name for s in chosen})
  if unknown:
    raise ValueError(f"--settings: unknown {unknown}; choose from "
                     f"{[s.name for s in settings(deep_rows)]}")
  if coswara_root:
    pretrain_data = ("data.name=coswara+covid19_cough",
                     f"data.roots=coswara={coswara_root},covid19_cough={root}")
  else:
    pretrain_data = ("data.name=covid19_cough", f"data.root={root}", "data.roots=")
  return runs.Plan(
      workdir=workdir, rows=rows(), settings=tuple(chosen), k=k, repeats=repeats,
      baseline_repeats=baseline_repeats, seed=seed,
      data=("data.name=covid19_cough", f"data.root={root}", "data.label=covid19"),
      pretrain_data=pretrain_data, pretrain_option="real", runlocal=runlocal,
      downstream_set=tuple(downstream_set), pretrain_set=tuple(pretrain_set))


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
                     seed=_SEED.value, deep_rows=_ROWS.value,
                     setting_names=_SETTINGS.value, attempts=_ATTEMPTS.value,
                     runlocal=_RUNLOCAL.value, downstream_set=_DOWNSTREAM_SET.value,
                     pretrain_set=_PRETRAIN_SET.value)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  runs.command_main(
      plan, "coughjax.studies.covid19_cough", **runs.cluster_args(),
      report=pathlib.Path(_REPORT.value),
      format_report=lambda results, command: format_report(plan, results, root, command))


if __name__ == "__main__":
  define_flags()
  app.run(main)
