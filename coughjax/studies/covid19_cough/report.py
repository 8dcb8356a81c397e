"""The covid19_cough study's report, and the files of scores behind it.

The report (`format_report`): the answer in words from the primary family, the data
the release holds, the protocol, both families of comparisons with their verdicts,
the confounds, the symptom and loudness breakdowns, each setting's rows with the
paper's AUCs, and the cost. `publish` writes every score behind it
(`coughjax.protocol.scores`) and the reliability plot; `from_scores` regenerates the
report from those files alone.
"""

from __future__ import annotations

import collections
import datetime
import json
import pathlib
from typing import Optional, Sequence

import numpy as np

from coughjax import baselines
from coughjax import data
from coughjax import paper
from coughjax.data import covid19_cough
from coughjax.data import features as features_lib
from coughjax.data import manifest as manifest_lib
from coughjax.protocol import folds as folds_lib
from coughjax.protocol import report as rep
from coughjax.protocol import runs
from coughjax.protocol import scores as scores_lib
from coughjax.protocol.runs import Row, Setting
from coughjax.studies.covid19_cough.design import (
    ATTEMPTS, AUGMENTATION_WORDS, BASELINE_ROWS, BEST, CC, CONFOUNDS, DEEP, LONG_EPOCHS,
    NICE, PRIMARY, SAME_AS, findings, make_plan, plan_fields)


# --- the data -----------------------------------------------------------------------


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


def titles_of(plan: runs.Plan) -> dict[str, str]:
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
    if not rep.above_chance(best):
      words.append(f"- {setting}: the paper's best model is not above chance "
                   f"({rep.auc_cell(best)}), so no share of its AUC is computed.")
    elif strongest is not None:
      words.append(f"- {setting}: {titles[strongest].strip('*')} alone reaches "
                   f"{100 * shares[strongest]:.0f} % of the paper's best model's AUC "
                   f"above chance ({rep.auc_cell(rep.row_auc(res[strongest]))} against "
                   f"{rep.auc_cell(best)}).")
  return lines + ["", "In parentheses: the control's AUC above chance as a share of "
                  "the paper's best model's, (AUC_control − 0.5) / (AUC_best − 0.5), "
                  "where the best model is above chance (its interval above 50). "
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
# The power line says what the primary family would detect with this many repeats.
MORE_REPEATS = 10
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
                  pretrain_minutes: Optional[float] = None,
                  progress: Optional[tuple[int, int]] = None) -> str:
  """The report. `attributes` (`recording_attributes`) are read from `root` and the
  pre-training minutes from the plan's workdir unless given (as `from_scores` gives
  them); `progress` (units done, units of the plan) makes it an interim report
  (`rep.provenance`)."""
  if attributes is None:
    attributes = recording_attributes(plan, root)
  if pretrain_minutes is None:
    pretrain_minutes = rep.pretrain_minutes(plan.workdir)
  titles = titles_of(plan)
  monitor = runs.downstream_config(plan, Setting("all", (), ()),
                                   Row("x", "transformer")).monitor
  ran = {r for s in plan.settings for r in s.rows}
  not_run = [r for r in DEEP if r not in ran]
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
      "`coughjax.protocol`.", "", *rep.provenance(command, progress), "",
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
      "(each side's AUC is shown over exactly those repeats, from its out-of-fold "
      "scores pooled over the folds). Its A − B is the mean of the repeat × fold "
      "differences, so it need not equal AUC A − AUC B: a pooled AUC also rewards "
      "scores calibrated alike across folds. The verdict's test is "
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
      "its 95 % interval excludes (where the interval lies on one side of 0, p < "
      "0.05 before Holm's correction but not after: the lead or lag it holds). "
      "\"detectable (80 %)\": the smallest difference "
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
         f"({AUGMENTATION_WORDS})." if ran >= set(ATTEMPTS) else
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
  """The primary family's minimum detectable differences, in words, and what more
  repeats would buy."""
  tested = [j for j in primary if np.isfinite(j.detectable)]
  if not tested:
    return ["No primary comparison ran: no power to state."]
  alpha = rep.ALPHA / len(primary)

  def points(values):
    low, high = f"{100 * min(values):.1f}", f"{100 * max(values):.1f}"
    return low if low == high else f"{low}–{high}"

  now = points([j.detectable for j in tested])
  where = (" (the one setting that ran)" if len(tested) == 1 else
           ", depending on the setting" if "–" in now else " (in every setting)")
  ratio = np.mean([j.test_train_ratio for j in tested])
  more, unlimited = (points([j.detectable_with(r, alpha) for j in tested])
                     for r in (MORE_REPEATS, np.inf))
  return [f"Power: with the standard errors observed, the smallest lead of the paper's "
          f"best model this family detects with 80 % power at Holm's strictest level "
          f"(α = {rep.ALPHA:g} / {len(primary)} = {alpha:.3g}) is {now} AUC "
          f"points{where}; smaller true differences are likely to end as *cannot "
          "tell*. More repeats buy little: the corrected test's variance (1/J + "
          f"n_test/n_train) s² keeps its n_test/n_train term ({ratio:.2f} here) however "
          "many repeats run, so at the spread of fold differences observed "
          f"{MORE_REPEATS} repeats would detect {more} and unlimited repeats {unlimited} "
          "AUC points."]


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


def reliability(results, titles, path: pathlib.Path) -> None:
  """The reliability plot of the primary rows, one panel per setting."""
  panels = {setting: {n: res[n] for n in (BEST, "logmel_logreg") if n in res}
            for setting, res in results.items()}
  rep.reliability_plot({k: v for k, v in panels.items() if v}, titles, path)


def publish(plan: runs.Plan, results, root: pathlib.Path, command: str,
            scores_dir: pathlib.Path, progress: Optional[tuple[int, int]] = None) -> str:
  """Writes every score behind the report (`scores.csv.gz`, `units.json`) and the
  reliability plot into `scores_dir`; returns the report (interim with `progress`:
  see `format_report`)."""
  attributes = recording_attributes(plan, root)
  pretrain = rep.pretrain_minutes(plan.workdir)
  # The report first: its provenance asks git whether the checkout is clean, which
  # these files (committed beside it) are not once rewritten.
  text = format_report(plan, results, root, command, attributes, pretrain, progress)
  scores_lib.write(scores_dir, results, root=root, attributes=attributes,
                   extra=dict(plan=plan_fields(plan), workdir=str(plan.workdir),
                              pretrain_minutes=pretrain, progress=progress))
  reliability(results, titles_of(plan), scores_dir / RELIABILITY_FILE)
  return text


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
  progress = extra.get("progress")  # absent in files written before interim reports
  return plan, results, format_report(plan, results, root, command, attributes,
                                      extra["pretrain_minutes"],
                                      None if progress is None else tuple(progress))
