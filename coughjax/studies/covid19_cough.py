r"""Does the paper's method detect COVID-19 in real coughs? The covid19_cough study.

  python -m coughjax.studies.covid19_cough            # the committed report
  python -m coughjax.studies.covid19_cough --rows=transformer,ens_transformer_cp_ds50 \
      --noattempts                                    # fewer rows, same protocol
  python -m coughjax.studies.covid19_cough --runlocal --folds=2 --workdir=/tmp/s
  python -m coughjax.studies.covid19_cough \
      --from_scores=docs/covid19_cough/scores.csv.gz   # the report again, no training

Every score behind the report goes to `--scores_dir` (`scores.csv.gz`, with
`units.json` and the reliability plot beside it), and `--from_scores` regenerates
the report from them alone (the release is read for the Data section only).

The paper's Tables 1/3/4/5 (VGGish rows aside: no AudioSet weights here, and from
scratch each costs many Transformer rows) on covid19_cough's induced coughs, through
the evaluation protocol of `coughjax.protocol` (repeated stratified k-fold over
participants, out-of-fold scores, DeLong intervals, Holm-corrected paired
comparisons), with the confound controls beside every setting:

* settings: within the call centre (the paper's tables), within Telegram, pooled
  (broken down by source), the call centre with loudness-normalised features
  (`features.normalise=gain`: deep rows, their pre-training and the baselines alike)
  and the call centre with PCR-verified positives only (`data.verified_only`);
* baselines: log-mel statistics + logistic regression, the 64 band means alone,
  loudness alone (mean log-mel energy), duration alone, and pooled, the channel
  alone;
* -CP rows pre-train once per repeat (own seed) on a pool disjoint from the
  evaluated source, serving every fold (`runs.POOL`): Coswara + covid19_cough's
  Telegram recordings when the call centre (raw, gain-normalised, verified) is
  evaluated, Coswara + the call centre when Telegram is (`CC_POOL`, `TG_POOL`;
  checked before any run to hold no evaluated recording, by path and by content).
  Pooled has no disjoint pool worth the name: there they pre-train per fold,
  inductively (Coswara + covid19_cough without the fold's test recordings). Two
  reference rows in the call centre: per-fold inductive pre-training
  (`PER_FOLD_BEST`, finding ix: pool against per fold) and pre-training on
  everything (transductive, finding vi: what seeing the test audio is worth);
* repeats: the primary family (the paper's best model, log-mel + LR) and every
  baseline run 5 repeats of 3-fold CV (`--repeats`, `--baseline_repeats`), the other
  deep rows 2 (`--secondary_repeats`); each repeat draws its own folds and its own
  seeds for everything, pre-training included, and comparisons use the repeats
  both rows ran;
* every deep row trains up to 40 epochs with early stopping (patience 10) on its
  fold's validation monitor (`configs/downstream.py`'s `monitor`) and is scored from
  its best validation checkpoint;
* attempts at making the paper's best model win, beside the loudness-normalised
  setting (`--noattempts` leaves them out): pre-training twice as long, and
  training augmentation (`ATTEMPTS`).

Everything lands in `--workdir` (resumable unit by unit, see
`coughjax.protocol.runs`); the report, `docs/reproduction_covid19_cough.md`, is
written from what is there.

Cost in units (`--dry_run` lists them). The primary family alone at 5 repeats is 180
units: 75 baseline fits, 75 deep trainings and 30 pre-trainings, with the pools as
without them: per-fold pre-training on the same data is shared by every setting
with one front end (15 for the raw front end, 15 for the gain-normalised one), and
the pools take 5 per (front end, pool) (call centre raw and verified share one,
gain-normalised, Telegram) plus pooled's 15 per fold. So the pools save no units
here; what they buy is pre-training that has seen no audio of the evaluated source
at all, one per repeat for every fold, and each of them is cheaper (Coswara + one
source, against Coswara + two thirds of both for a per-fold one). The whole
default study (attempts included) is 653 units: 390 baseline fits, 219 deep
trainings, 44 pre-trainings (677 units with every -CP row pre-trained per fold;
574 with `--secondary_repeats=1`; 502, 87 of them deep trainings and 25
pre-trainings, for the committed report's 1 repeat per fold). The report's Cost
section sums the units' wall time; benchmarks/README.md says what the committed
report took.
"""

from __future__ import annotations

import collections
import datetime
import json
import pathlib
import shlex
import sys
from typing import Optional, Sequence

from absl import app
from absl import flags
import numpy as np

from coughjax import baselines
from coughjax import cli
from coughjax import data
from coughjax import files
from coughjax import paper
from coughjax.data import covid19_cough
from coughjax.data import features as features_lib
from coughjax.data import manifest as manifest_lib
from coughjax.overrides import config_modules
from coughjax.protocol import folds as folds_lib
from coughjax.protocol import report as rep
from coughjax.protocol import runs
from coughjax.protocol import scores as scores_lib
from coughjax.protocol.report import Comparison
from coughjax.protocol.runs import Row, Setting

MODULE = "coughjax.studies.covid19_cough"
BEST = "ens_transformer_cp_ds50"  # the paper's best model (Table 5)
TRANSDUCTIVE_BEST = BEST + "_transductive"
# The paper's best model pre-trained per fold (inductive) where the others pre-train
# once per repeat on a pool disjoint from the evaluated source: what the pool costs
# or gains.
PER_FOLD_BEST = BEST + "_per_fold"
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
# Channel only last: it runs in the pooled setting only.
CONFOUNDS = ("band_means", "loudness_only", "duration_only", "level_dynamics",
             "channel_only")
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
    "level_dynamics": "*confound: level and dynamics*",
    "channel_only": "*confound: channel only*",
    TRANSDUCTIVE_BEST: "Transformer-CP x2, DS 50 %, transductive pre-training",
    PER_FOLD_BEST: "Transformer-CP x2, DS 50 %, per-fold inductive pre-training",
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
# The pre-training pools, disjoint from the evaluated source (`runs.POOL`): the
# pre-training data (Coswara + covid19_cough) with covid19_cough's other source only.
# Pooled has none worth the name (its test recordings are both sources): there the
# -CP rows pre-train per fold, without the fold's test recordings.
CC_POOL = ("data.source_filter=telegram",)
TG_POOL = ("data.source_filter=call-center",)
# The rows of the secondary settings: the paper's best, the Transformer from scratch
# and what they are measured against.
_CORE = ("transformer", BEST)


def settings(deep_rows: Sequence[str], attempts: bool = False) -> tuple[Setting, ...]:
  """The study's five settings; `deep_rows` runs in the call centre (and with
  `attempts`, the attempts at making the paper's best model win)."""
  cc = [r for r in _DEEP if r in deep_rows]
  if BEST in cc:  # right after it
    at = cc.index(BEST) + 1
    cc[at:at] = ([PER_FOLD_BEST, TRANSDUCTIVE_BEST]
                 + (list(ATTEMPTS) if attempts else []))
  # The primary family's rows first (the paper's best model and log-mel + LR), in
  # every setting, so a cut-short run has them everywhere.
  first = ("logmel_logreg", BEST)
  def ordered(names):
    return tuple(n for n in first if n in names) + tuple(
        n for n in names if n not in first)
  return (
      Setting(CC, ("data.source_filter=call-center",),
              ordered(BASELINE_ROWS[:-1] + tuple(cc)),
              "within the call centre: the paper's tables", pool=CC_POOL),
      Setting(GAIN, ("data.source_filter=call-center", "features.normalise=gain"),
              ordered(BASELINE_ROWS[:-1] + _CORE),
              "call centre, every recording gain-normalised (mean log-mel energy "
              "removed) for deep rows, pre-training and baselines alike", pool=CC_POOL),
      Setting(VERIFIED, ("data.source_filter=call-center", "data.verified_only=True"),
              ordered(BASELINE_ROWS[:-1] + _CORE),
              "call centre, positives only where PCR-verified (negatives all kept)",
              pool=CC_POOL),
      Setting(POOLED, (), ordered(BASELINE_ROWS + _CORE), "both sources pooled"),
      Setting(TG, ("data.source_filter=telegram",), ordered(BASELINE_ROWS[:-1] + _CORE),
              "within Telegram", pool=TG_POOL),
  )


def rows(secondary_repeats: int = 0) -> tuple[Row, ...]:
  """Every row of the study. -CP rows pre-train on the setting's pool (per fold
  where it has none), but for the per-fold and transductive references. The primary
  family's rows (the paper's best model, log-mel + LR) and the other baselines run
  the plan's repeats; the other deep rows `secondary_repeats` (0: the plan's)."""
  fewer = dict(repeats=secondary_repeats, pretraining=runs.POOL)
  return (tuple(Row(v, v, NICE.get(v, v), **(dict(pretraining=runs.POOL) if v == BEST
                                              else fewer)) for v in _DEEP)
          + (Row(PER_FOLD_BEST, BEST, NICE[PER_FOLD_BEST], pretraining=runs.INDUCTIVE,
                 repeats=secondary_repeats),
             Row(TRANSDUCTIVE_BEST, BEST, NICE[TRANSDUCTIVE_BEST],
                 pretraining=runs.TRANSDUCTIVE, repeats=secondary_repeats),
             Row(LONG_BEST, BEST, NICE[LONG_BEST],
                 pretrain_overrides=(f"num_epochs={LONG_EPOCHS}",), **fewer),
             Row(AUGMENTED_BEST, BEST, NICE[AUGMENTED_BEST],
                 overrides=tuple(f"augment.{k}={v}" for k, v in AUGMENTATION.items()),
                 **fewer))
          + tuple(Row(b, b, NICE[b]) for b in BASELINE_ROWS))


SETTINGS = (CC, GAIN, VERIFIED, POOLED, TG)
# The primary family, fixed before anything runs: the paper's best model against the
# log-mel baseline in every setting. Holm runs over these comparisons only (m = 5,
# whether or not a setting ran).
PRIMARY = tuple(Comparison(s, BEST, "logmel_logreg", "primary") for s in SETTINGS)


# Findings: (key, claim, [comparisons]): "A scores a higher AUC than B".
def findings() -> list[tuple[str, str, list[Comparison]]]:
  """The secondary family, declared in full whatever runs: the paper's findings
  (i)-(iii), the confound checks and the attempts. One Holm correction runs over
  all of it (m = every comparison declared here; those whose rows did not run are
  shown as not run and count as p = 1)."""
  def comparisons(key, pairs):
    return [Comparison(s, a, b, key) for s, a, b in pairs]

  m0 = SAME_AS["transformer_cp_m0_ft"]
  return [
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
      ("iv", "the paper's best model beats the confound controls",
       comparisons("iv", [(s, BEST, b) for s in SETTINGS for b in CONFOUNDS
                          if b != "channel_only" or s == POOLED])),
      ("v", "the paper's best model beats the Transformer from scratch",
       comparisons("v", [(s, BEST, "transformer") for s in SETTINGS])),
      ("vi", "pre-training on the test recordings' audio (transductive) scores higher "
       "than per-fold inductive pre-training",
       comparisons("vi", [(CC, TRANSDUCTIVE_BEST, PER_FOLD_BEST)])),
      ("vii", f"pre-training twice as long ({LONG_EPOCHS} epochs, on the pool) improves "
       "the paper's best model, enough to beat the log-mel baseline",
       comparisons("vii", [(CC, LONG_BEST, b) for b in (BEST, "logmel_logreg")])),
      ("viii", "training augmentation (random gain, SpecAugment masks) improves the "
       "paper's best model, enough to beat the log-mel baseline and loudness",
       comparisons("viii", [(CC, AUGMENTED_BEST, b)
                            for b in (BEST, "logmel_logreg", "loudness_only")])),
      ("ix", "pre-training once per repeat on a pool without the call centre "
       "(Coswara + Telegram) scores higher than per-fold inductive pre-training "
       "(on everything but the fold's test recordings)",
       comparisons("ix", [(CC, BEST, PER_FOLD_BEST)])),
  ]


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


def recording_attributes(plan: runs.Plan, root: pathlib.Path) -> dict[str, dict]:
  """{recording key: {"asymptomatic": the release's flag (None: none given),
  "loudness": mean log-mel energy of its raw (not normalised) features}} of every
  labelled recording the study can score."""
  config = runs.downstream_config(plan, Setting("all", (), ()), Row("x", "transformer"))
  records = manifest_lib.select(data.get_manifest(config.data), labelled=True)
  cache = features_lib.FeatureCache(features_lib.FeatureParams.from_config(config.features))
  kept, feats, _ = cache.load(records, name="covid19_cough", progress=False)
  symptom_free = covid19_cough.asymptomatic(root)
  keys = [folds_lib.recording_key(r.path) for r in kept]
  return {k: {"asymptomatic": symptom_free.get(k), "loudness": baselines.loudness(f)}
          for k, f in zip(keys, feats)}


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
  """Per setting: the paper's best model (declared before anything ran, not the
  highest-scoring row, which would be chosen on the test scores) and how far each
  confound alone gets."""
  lines = [f"| setting | {titles[BEST]}: AUC | " + " | ".join(
      titles[c] for c in BASELINE_ROWS) + " |",
           "|---|---|" + "---|" * len(BASELINE_ROWS)]
  words = []
  for setting, res in results.items():
    if BEST not in res:
      continue
    best = rep.row_auc(res[BEST])
    cells = [rep.auc_cell(best)]
    shares = {}
    for c in BASELINE_ROWS:
      if c not in res:
        cells.append("–")
        continue
      est = rep.row_auc(res[c])
      shares[c] = rep.share_explained(est, best)
      cells.append(rep.auc_cell(est) + ("" if shares[c] is None
                                        else f" ({100 * shares[c]:.0f} %)"))
    lines.append(f"| {setting} | " + " | ".join(cells) + " |")
    strongest = max((c for c in CONFOUNDS if shares.get(c) is not None),
                    key=lambda c: shares[c], default=None)
    if strongest is not None:
      words.append(f"- {setting}: {titles[strongest].strip('*')} alone reaches "
                   f"{100 * shares[strongest]:.0f} % of the paper's best model's AUC "
                   f"above chance ({rep.auc_cell(rep.row_auc(res[strongest]))} against "
                   f"{rep.auc_cell(best)}).")
  return lines + ["", "In parentheses: the control's AUC above chance as a share of "
                  "the paper's best model's, (AUC_control − 0.5) / (AUC_best − 0.5). "
                  "Each AUC over its own row's repeats (see the setting's table). "
                  "Where features are gain-normalised, loudness only sees a constant "
                  "(the mean level is what normalisation removes): there the level-"
                  "and-dynamics control (peak, percentiles and spread of the frame "
                  "energy, duration, a short flag) is the loudness control that "
                  "counts.", ""] + words


# How the report names `configs/downstream.py`'s `monitor`.
MONITOR_WORDS = {"auc": "validation ROC-AUC",
                 "loss": "validation loss (clip-level cross-entropy)"}
RELIABILITY_FILE = "reliability.png"
# The rows whose AUC the symptom and loudness breakdowns show.
BREAKDOWN_ROWS = (BEST, "logmel_logreg", "loudness_only", "level_dynamics")


def symptom_lines(results, titles, attributes: dict[str, dict]) -> list[str]:
  """Per setting: the AUC of asymptomatic (and of symptomatic) positives against all
  negatives, and within each fifth of the recordings by loudness."""
  flag = {k: a["asymptomatic"] for k, a in attributes.items()}
  symptoms = {
      "asymptomatic positives vs negatives":
          lambda sc: np.array([y == 0 or flag.get(k) is True
                               for k, y in zip(sc.keys, sc.labels)]),
      "symptomatic positives vs negatives":
          lambda sc: np.array([y == 0 or flag.get(k) is False
                               for k, y in zip(sc.keys, sc.labels)]),
  }
  loudness = rep.quintile_columns({k: a["loudness"] for k, a in attributes.items()})
  lines = []
  for setting, res in results.items():
    shown = {n: res[n] for n in BREAKDOWN_ROWS if n in res}
    if shown:
      lines += [f"### {setting}", "", *rep.breakdown_table(shown, titles, symptoms), "",
                "Within fifths of the recordings by loudness (mean log-mel energy of the "
                "raw features; Q1 quietest):", "",
                *rep.breakdown_table(shown, titles, loudness), ""]
  return lines


def format_report(plan: runs.Plan, results, root: pathlib.Path, command: str,
                  attributes: Optional[dict[str, dict]] = None,
                  pretrain_minutes: Optional[float] = None) -> str:
  """The report. `attributes` (`recording_attributes`) are read from `root` and the
  pre-training minutes from the plan's workdir unless given (as `from_scores` gives
  them)."""
  if attributes is None:
    attributes = recording_attributes(plan, root)
  if pretrain_minutes is None:
    pretrain_minutes = rep.pretrain_minutes(plan.workdir)
  titles = _titles(plan)
  monitor = runs.downstream_config(plan, Setting("all", (), ()),
                                   Row("x", "transformer")).monitor
  ran = {r for s in plan.settings for r in s.rows}
  not_run = [r for r in _DEEP if r not in ran]
  primary = rep.judge(PRIMARY, results)
  judged = rep.judge([c for _, _, cs in findings() for c in cs], results)
  by_finding = collections.defaultdict(list)
  for j in judged:
    by_finding[j.comparison.finding].append(j)
  rows_min = sum(rep.minutes(s) for res in results.values() for s in res.values())
  pre_min = pretrain_minutes
  lines = [
      "# Does the paper's method detect COVID-19 in real coughs? (covid19_cough)", "",
      f"Generated {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC by "
      "`coughjax.studies.covid19_cough` on the evaluation protocol of "
      "`coughjax.protocol`.", "", *rep.provenance(command), "",
      "## Answer", "", *answer_lines(primary, titles), "",
      "## Data", "", *data_lines(root, plan), "",
      "## Protocol", "",
      f"- {plan.k}-fold cross-validation over participants (near-duplicate copies are "
      f"one participant), stratified by source × label: {plan.repeats} repeat(s) for "
      f"the paper's best model, {plan.baseline_repeats} for the baselines (log-mel + "
      f"LR among them: the primary family), "
      f"{plan.repeats_of(plan.row('transformer'))} for the other deep rows (seed "
      f"{plan.seed}); each repeat draws its own folds and its own seeds for everything "
      "(initialisation, dropout, masks, shuffles, pre-training); the folds are drawn "
      "once over all labelled recordings, so every setting's folds are the same "
      "recordings' folds. In each fold the remaining recordings are split "
      "7 : 1 into training and validation (stratified); every recording gets one "
      "out-of-fold score per repeat.",
      "- Deep rows: up to 40 epochs, early stopping after 10 epochs without a better "
      f"{MONITOR_WORDS[monitor]}, scored from the best validation checkpoint (the "
      "epochs each row used are in its table). -CP rows start from contrastive "
      "pre-training on Coswara (breathing and coughs) + covid19_cough (labels unused) at its full "
      "schedule (`configs/pretrain.py:<variant>,real`, 40 epochs) on a **pool "
      "disjoint from the evaluated source**, once per repeat (serving its folds): "
      "Coswara + Telegram where the call centre is evaluated (raw, gain-normalised, "
      "verified), Coswara + call centre where Telegram is; checked before any run to "
      "hold none of the evaluated recordings, by path and by file content (near-"
      "duplicates across the two sources are not checked). Pooled has no disjoint "
      "pool worth the name: there they pre-train **per fold, inductively** (without "
      "the fold's test recordings; pre-training data that would hold out none of them "
      "is an error). Two references in the call centre: the per-fold inductive "
      "pre-training (finding ix compares it with the pool) and a transductive one on "
      "all the audio (finding vi: what seeing the test audio is worth).",
      "- Test-time gain: every deep row's test part is scored again by the same "
      "models with every input 10 dB quieter and 10 dB louder (a constant ±ln(10) "
      "added to the raw log-mel features, before any normalisation, with each "
      "recording's DS masks kept); each setting's table shows how far the AUC moves. "
      "A gain-normalised front end removes such a shift, so its rows cannot move.",
      "- AUC: recording level, per repeat over all out-of-fold scores, with DeLong's "
      "variance; over repeats, the mean AUC and the mean variance, which is never too "
      "small *conditional on the fitted models* but leaves out training variance; "
      "95 % normal interval.",
      "- Comparisons: on the recordings both rows scored and the repeats both ran "
      "(each side's AUC is shown over exactly those repeats). The verdict's test is "
      "the corrected resampled t-test (Nadeau & Bengio 2003; Bouckaert & Frank 2004) "
      "over the repeat × fold AUC differences, which includes the variance of "
      "training again on other folds and seeds: variance (1/J + n_test/n_train) s², "
      "t on J − 1 degrees of freedom (J = repeats × folds); equal differences in "
      "every fold (no spread) give no test. Beside it, the paired DeLong difference "
      "of each repeat (conditional on that repeat's fitted models). Two families, "
      "declared in the study's code before anything ran, each with its own Holm "
      f"correction: the **primary** family ({len(primary)} comparisons: the paper's "
      "best model against log-mel statistics + LR in every setting) and the "
      f"**secondary** family ({len(judged)} comparisons: the paper's findings, the "
      "confound checks and the attempts). Holm's m is the number of declared "
      "comparisons: one whose rows did not run is shown as *not run* and counts as "
      "p = 1. A finding *holds* only at a corrected p < 0.05 in its favour, *does "
      "not hold* at p < 0.05 against it, and is otherwise *cannot tell*, with what "
      "its 95 % interval excludes. \"detectable (80 %)\": the smallest difference "
      "(AUC points) the comparison would detect with 80 % power at its family's "
      "strictest Holm level (α / m), given its observed standard error.",
      "- Threshold metrics (precision, recall, F1, accuracy) at thresholds chosen on "
      "each fold's validation part (Youden's J), never at 0.5 and never on the test "
      "part, beside an all-positive reference; rows whose units wrote no validation "
      "scores say so. Operating points as the field reports them: sensitivity at "
      "95 % specificity and specificity at 90 % sensitivity read off each repeat's "
      "ROC curve (mean over repeats) with 95 % percentile bootstrap intervals over "
      "recordings (1000 draws within each label; the fitted models held fixed), and "
      "the test sensitivity at the threshold where the validation part reaches 95 % "
      "specificity; Brier score and ECE (10 equal-width bins), beside a constant "
      f"score at the prevalence. Reliability plot of the primary rows: "
      f"`{RELIABILITY_FILE}` beside `{scores_lib.SCORES_FILE}`.",
      "- Short recordings (< 96 frames, ≥ 0.5 s) are repeat-padded (tiled) to one "
      "clip for the deep rows, not zero-padded: a zero block is a level no real frame "
      "has, so it marked short recordings. The level-and-dynamics control still sees "
      "duration and a short flag, and shows what they are worth.",
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
      f"## Primary family: the paper's best model against log-mel statistics + LR "
      f"(Holm over {len(primary)})", "",
      *rep.comparison_lines(primary, titles), "", *power_lines(primary), "",
      f"## Secondary family: the paper's findings, confound checks, attempts (Holm "
      f"over {len(judged)})", ""]
  for key, claim, _ in findings():
    lines += [f"### ({key}) {claim}: **{overall(by_finding[key])}**", "",
              *rep.comparison_lines(by_finding[key], titles), ""]
  lines += ["## Confounds", "", *confound_lines(results, titles), "",
            "## Symptoms and loudness", "",
            "Does a row detect COVID-19 in positives who report no symptoms, and does it "
            "still separate the classes among recordings of about the same loudness? "
            "(The release's `asymptomatic` flag; asymptomatic and symptomatic positives "
            "are each scored against all negatives.)", "",
            *symptom_lines(results, titles, attributes)]
  paper_auc = _paper_aucs()
  for setting in plan.settings:
    res = results[setting.name]
    lines += [f"## {setting.name}: {setting.description}", "",
              *rep.rows_table(res, titles, paper_auc if setting.name == CC else None), "",
              "Operating points (bootstrap intervals over recordings, fitted models "
              "held fixed) and calibration:", "", *rep.operating_table(res, titles), ""]
    shifts = rep.perturbation_table(res, titles)
    if shifts:
      lines += ["Test-time gain: how far each deep row's AUC moves (AUC points) when "
                "every test input is 10 dB quieter or louder; mean over its repeats "
                "[lowest, highest repeat]:", "", *shifts, ""]
    if len({s for r in res.values() for s in r.strata}) > 1:
      lines += ["By source (AUC of the pooled out-of-fold scores within each source):",
                "", *rep.strata_table(res, titles), ""]
  lines += ["## Cost", "",
            f"Rows and baselines {rows_min:.0f} min, pre-training {pre_min:.0f} min: "
            f"{(rows_min + pre_min) / 60:.1f} h in all on the machine above "
            "(the sum of every unit's wall time; a resumed run counts each unit once).",
            ""]
  return "\n".join(lines)


def overall(judged: Sequence[rep.Judged]) -> str:
  """A finding's verdict from its comparisons' (those that did not run aside)."""
  verdicts = {j.verdict for j in judged if j.estimate is not None}
  if not verdicts:
    return rep.NOT_RUN
  return ("holds" if verdicts == {"holds"} else "does not hold"
          if "does not hold" in verdicts else "cannot tell")


def power_lines(primary: Sequence[rep.Judged]) -> list[str]:
  """The primary family's minimum detectable differences, in words."""
  mdd = [100 * j.detectable for j in primary if np.isfinite(j.detectable)]
  if not mdd:
    return ["No primary comparison ran: no power to state."]
  return [f"Power: with the standard errors observed, the smallest lead of the paper's "
          f"best model this family detects with 80 % power at Holm's strictest level "
          f"(α = {rep.ALPHA:g} / {len(primary)} = {rep.ALPHA / len(primary):.3g}) is "
          f"{min(mdd):.1f}–{max(mdd):.1f} AUC points, depending on the setting; "
          "smaller true differences are likely to end as *cannot tell*."]


def answer_lines(primary: Sequence[rep.Judged], titles) -> list[str]:
  """The short answer, in words, from the primary family's verdicts."""
  out = []
  for j in primary:
    c = j.comparison
    if j.estimate is None:
      out.append(f"- {c.setting}: {j.verdict} ({j.note}).")
      continue
    words = rep.verdict_cell(j).replace("**", "")
    out.append(f"- {c.setting}: the paper's best model scores {rep.auc_cell(j.auc_a)} "
               f"against {titles[c.b].strip('*')} {rep.auc_cell(j.auc_b)} (the same "
               f"{j.repeats} repeat(s)); lead {rep.signed_cell(j.estimate)}, p "
               f"{rep.p_cell(j.estimate.p)}, Holm p {rep.p_cell(j.p_holm)} → {words}.")
  return out


# --- the command --------------------------------------------------------------------


def define_flags() -> None:
  """The command's flags (defined when run as a command only: other commands that
  a process may import define some of the same names)."""
  global _ROOT, _COSWARA, _WORKDIR, _REPORT, _FOLDS, _REPEATS, _BASELINE_REPEATS
  global _SEED, _ROWS, _SETTINGS, _ATTEMPTS, _RUNLOCAL, _DOWNSTREAM_SET, _PRETRAIN_SET
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
      f"behind the report), {scores_lib.UNITS_FILE} and {RELIABILITY_FILE} go")
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
              k: int = 3, repeats: int = 5, baseline_repeats: int = 5,
              secondary_repeats: int = 2, seed: int = 0,
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
      workdir=workdir, rows=rows(secondary_repeats), settings=tuple(chosen), k=k,
      repeats=repeats,
      baseline_repeats=baseline_repeats, seed=seed,
      data=("data.name=covid19_cough", f"data.root={root}", "data.label=covid19"),
      pretrain_data=pretrain_data, pretrain_option="real", runlocal=runlocal,
      downstream_set=tuple(downstream_set), pretrain_set=tuple(pretrain_set))


def _plan_fields(plan: runs.Plan) -> dict:
  """What `make_plan` needs to rebuild the plan's report (`from_scores`)."""
  cc = next((s for s in plan.settings if s.name == CC), None)
  return dict(k=plan.k, repeats=plan.repeats, baseline_repeats=plan.baseline_repeats,
              secondary_repeats=plan.row("transformer").repeats,
              seed=plan.seed, setting_names=[s.name for s in plan.settings],
              deep_rows=[r for r in (cc.rows if cc else ()) if r in _DEEP],
              attempts=bool(cc and set(ATTEMPTS) <= set(cc.rows)))


def reliability(results, titles, path: pathlib.Path) -> None:
  """The reliability plot of the primary rows, one panel per setting."""
  panels = {setting: {n: res[n] for n in (BEST, "logmel_logreg") if n in res}
            for setting, res in results.items()}
  rep.reliability_plot({k: v for k, v in panels.items() if v}, titles, path)


def publish(plan: runs.Plan, results, root: pathlib.Path, command: str,
            scores_dir: pathlib.Path) -> str:
  """Writes every score behind the report (`scores.csv.gz`, `units.json`) and the
  reliability plot into `scores_dir`; returns the report."""
  attributes = recording_attributes(plan, root)
  pretrain = rep.pretrain_minutes(plan.workdir)
  scores_lib.write(scores_dir, results, root=root, attributes=attributes,
                   extra=dict(plan=_plan_fields(plan), workdir=str(plan.workdir),
                              pretrain_minutes=pretrain))
  reliability(results, _titles(plan), scores_dir / RELIABILITY_FILE)
  return format_report(plan, results, root, command, attributes, pretrain)


def from_scores(path: pathlib.Path, root: pathlib.Path, command: str
                ) -> tuple[runs.Plan, dict, str]:
  """(plan, results, report) regenerated from a `scores.csv.gz` (and the
  `units.json` beside it) without running anything; `root` (the release) is read for
  the Data section only."""
  results, attributes, extra = scores_lib.read(path)
  fields = dict(extra["plan"])
  # Files written before secondary rows had their own repeats: every deep row ran
  # `repeats`.
  fields.setdefault("secondary_repeats", fields["repeats"])
  plan = make_plan(root, "", pathlib.Path(extra["workdir"]), **fields)
  return plan, results, format_report(plan, results, root, command, attributes,
                                      extra["pretrain_minutes"])


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
                     runlocal=_RUNLOCAL.value, downstream_set=_DOWNSTREAM_SET.value,
                     pretrain_set=_PRETRAIN_SET.value)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  scores_dir = pathlib.Path(_SCORES_DIR.value)
  if _FROM_SCORES.value:
    path = pathlib.Path(_FROM_SCORES.value)
    try:
      report = runs.check_report(pathlib.Path(_REPORT.value), MODULE)
    except ValueError as e:
      raise app.UsageError(str(e)) from None
    plan, results, text = from_scores(path, root, " ".join(
        ["python -m", MODULE, *map(shlex.quote, sys.argv[1:])]))
    reliability(results, _titles(plan), path.parent / RELIABILITY_FILE)
    files.atomic_write(report, lambda f: f.write(text.encode()))
    print(text)
    print(f"written to {report}")
    return
  runs.command_main(
      plan, MODULE, **runs.cluster_args(), report=pathlib.Path(_REPORT.value),
      format_report=lambda results, command: publish(plan, results, root, command,
                                                     scores_dir))


if __name__ == "__main__":
  define_flags()
  app.run(main)
