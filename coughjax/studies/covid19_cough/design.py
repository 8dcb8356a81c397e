"""What the covid19_cough study runs and claims, declared before anything runs.

Its rows (the paper's deep rows, the references and attempts, the baselines and
confound controls), its five settings with their pre-training pools, the primary and
secondary families of comparisons, and the `runs.Plan` that puts them together
(`make_plan`). The package docstring says why each is there.
"""

from __future__ import annotations

import os
import pathlib
from typing import Sequence

from coughjax.overrides import config_modules
from coughjax.protocol import runs
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
AUGMENTATION_WORDS = (
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
DEEP = ("transformer", BEST, "transformer_cp_ft", "gru", "gru_cp_ft", "transformer_cp_frozen",
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
  cc = [r for r in DEEP if r in deep_rows]
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
                                              else fewer)) for v in DEEP)
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


def default_root() -> pathlib.Path:
  pretrain_cfgs, _ = config_modules()
  var, default = pretrain_cfgs.REAL_SOURCES["covid19_cough"]
  return pathlib.Path(os.environ.get(var) or default)


def make_plan(root: pathlib.Path, coswara_root: str, workdir: pathlib.Path, *,
              k: int = 3, repeats: int = 5, baseline_repeats: int = 5,
              secondary_repeats: int = 2, seed: int = 0,
              deep_rows: Sequence[str] = DEEP, setting_names: Sequence[str] = (
                  CC, GAIN, VERIFIED, POOLED, TG), attempts: bool = False,
              runlocal: bool = False, downstream_set=(), pretrain_set=()) -> runs.Plan:
  unknown = sorted(set(deep_rows) - set(DEEP))
  if unknown:
    raise ValueError(f"--rows: unknown rows {unknown}; choose from {list(DEEP)}")
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


def plan_fields(plan: runs.Plan) -> dict:
  """What `make_plan` needs to rebuild the plan's report (`from_scores`)."""
  cc = next((s for s in plan.settings if s.name == CC), None)
  return dict(k=plan.k, repeats=plan.repeats, baseline_repeats=plan.baseline_repeats,
              secondary_repeats=plan.row("transformer").repeats,
              seed=plan.seed, setting_names=[s.name for s in plan.settings],
              deep_rows=[r for r in (cc.rows if cc else ()) if r in DEEP],
              attempts=bool(cc and set(ATTEMPTS) <= set(cc.rows)))
