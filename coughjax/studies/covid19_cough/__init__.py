"""Does the paper's method detect COVID-19 in real coughs? The covid19_cough study.

`python -m coughjax.studies.covid19_cough` writes the committed report
(`__main__` shows the command's other uses). The study's rooms: `design` (its rows,
settings, pools and families of comparisons, declared before anything runs, and its
plan), `report` (the report and the files behind it) and `__main__` (the command).

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
written from what is there (`--interim`: while units are left, saying so).

Cost in fits and trainings (a unit, which `--dry_run` lists, is a pre-training or
one repeat of a row in a setting: its 3 folds, a deep row's trained as one program).
The primary family alone at 5 repeats is 180 of them: 75 baseline fits, 75 deep
trainings and 30 pre-trainings (25 + 25 + 30 units), with the pools as
without them: per-fold pre-training on the same data is shared by every setting
with one front end (15 for the raw front end, 15 for the gain-normalised one), and
the pools take 5 per (front end, pool) (call centre raw and verified share one,
gain-normalised, Telegram) plus pooled's 15 per fold. So the pools save no
pre-trainings here; what they buy is pre-training that has seen no audio of the
evaluated source at all, one per repeat for every fold, and each of them is cheaper
(Coswara + one source, against Coswara + two thirds of both for a per-fold one). The whole
default study (attempts included) is 653: 390 baseline fits, 219 deep
trainings, 44 pre-trainings, in 247 units (677 with every -CP row pre-trained per
fold; 574 with `--secondary_repeats=1`; 502, 87 of them deep trainings and 25
pre-trainings, with 1 repeat everywhere). The report's Cost section sums the units'
wall time; benchmarks/README.md says what the study has taken.
"""
