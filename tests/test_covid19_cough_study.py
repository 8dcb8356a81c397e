"""The covid19_cough study on a slice of the real release (runlocal configs, 2 folds):
its report states what ran, with intervals, Holm-corrected verdicts and confounds."""

import csv
import dataclasses
import gzip
import itertools
import json
import pathlib
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

import conftest
from coughjax.protocol import report as rep
from coughjax.protocol import runs
from coughjax.protocol import stats
from coughjax.studies.covid19_cough import design as study
from coughjax.studies.covid19_cough import report as study_report

REPO = conftest.REPO


@pytest.fixture(scope="module")
def release_slice(covid19_cough, tmp_path_factory):
  """24 call-centre + 24 Telegram recordings (distinct contents, > 6 kB so none is
  under 0.5 s), plus a copy of one Telegram file under a second name with the other
  label: the source makes the two one unlabelled recording."""
  root = tmp_path_factory.mktemp("covid19_cough_slice")
  want = {("call-center", True): 12, ("call-center", False): 12,
          ("telegram", True): 12, ("telegram", False): 12}
  kept = conftest.copy_covid19_cough_slice(
      covid19_cough, root, want, lambda r: (r["source"], r["covid19"]), min_bytes=6000)
  twin = next(r for r in kept if r["source"] == "telegram" and not r["covid19"])
  shutil.copy(root / "raw" / twin["filename"], root / "raw" / "twin.mp3")
  kept.append(dict(twin, filename="twin.mp3", covid19=True))
  (root / "metadata.json").write_text(json.dumps(kept))
  return root


@pytest.fixture(scope="module")
def done(release_slice, tmp_path_factory):
  work = tmp_path_factory.mktemp("study")
  plan = study.make_plan(release_slice, "", work, k=2, repeats=1, baseline_repeats=2,
                         secondary_repeats=1, deep_rows=("transformer", study.BEST),
                         setting_names=(study.CC, study.POOLED), runlocal=True)
  results = runs.run_plan(plan)
  text = study_report.format_report(plan, results, release_slice, "python -m ... (test)")
  return plan, results, text


def test_report_states_provenance_protocol_and_data(done):
  _, _, text = done
  assert re.search(r"Commit: `[0-9a-f]{40}`", text)
  assert re.search(r"jax \d+\.\d+", text) and "Command (from the repository root)" in text
  assert "2-fold cross-validation over participants" in text
  assert "inductive" in text and "Holm" in text
  # 49 files: the twin and its original are one unlabelled recording.
  assert "| telegram | unlabelled | – | 1 | – |" in text
  assert "| telegram | positive | 13 | 12 | 12 |" in text
  assert "49 files; 48 recordings" in text
  cut = re.search(r"Cut to fit this report's budget .*?: (.*)\.\n", text).group(1)
  assert "GRU-CP fine-tuned, " in cut and "Transformer-CP x2, DS 0 %" in cut
  assert study.NICE[study.BEST] not in cut.split(", ")


def test_every_row_has_an_auc_interval_and_its_epochs(done):
  plan, results, text = done
  cc = text.split(f"## {study.CC}:", 1)[1]
  for name, scores in results[study.CC].items():
    title = plan.row(name).title
    line = next(l for l in cc.splitlines() if l.startswith(f"| {title} |"))
    assert rep.row_auc(scores).format(scale=100) in line, line
    if name in (study.BEST, "transformer", study.TRANSDUCTIVE_BEST):
      assert re.search(r"\| 2 \[2–2\]; best [12] \[[12]–[12]\] \|", line), line
  # Pooled scores broken down by source.
  pooled = text.split(f"## {study.POOLED}:", 1)[1]
  assert "By source" in pooled and "| call-center | telegram |" in pooled


def test_verdicts_are_holm_corrected_within_each_pre_declared_family(done):
  plan, results, text = done
  secondary = rep.judge([c for _, _, cs in study.findings() for c in cs], results)
  primary = rep.judge(study.PRIMARY, results)
  for family in (primary, secondary):
    ran = [j for j in family if j.estimate is not None]
    raw = np.array([j.estimate.p for j in ran])
    holm = np.array([j.p_holm for j in ran])
    # m counts every declared comparison, the ones that did not run too.
    np.testing.assert_allclose(holm.min(), min(1, len(family) * raw.min()))
    for j in ran:
      assert j.verdict in ("holds", "does not hold", "cannot tell")
      if j.p_holm >= 0.05:
        assert j.verdict == "cannot tell"
  assert len([j for j in secondary if j.estimate is not None]) >= 10
  # Settings that did not run are in the primary family, as not run.
  assert [j.comparison.setting for j in primary if j.verdict == rep.NOT_RUN] == [
      study.GAIN, study.VERIFIED, study.TG]
  assert f"## Primary family: the paper's best model against log-mel statistics + LR " \
         f"(Holm over {len(study.PRIMARY)})" in text
  assert "corrected resampled t-test" in text and "Power: " in text
  # Finding (vi): inductive against transductive pre-training, on the same folds.
  assert "(vi) pre-training on the test recordings' audio" in text
  assert "## Confounds" in text and "loudness only" in text and "duration only" in text


def test_the_report_is_regenerated_from_its_scores_file_alone(done, tmp_path):
  """Every score behind the report goes to scores.csv.gz (recordings named relative
  to the release, so alike in every setting); the report from that file equals the
  report from the units."""
  plan, results, _ = done
  root = pathlib.Path(plan.data[1].split("=", 1)[1])
  text = study_report.publish(plan, results, root, "cmd", tmp_path)
  assert (tmp_path / study_report.RELIABILITY_FILE).stat().st_size > 0
  with gzip.open(tmp_path / "scores.csv.gz", "rt") as f:
    lines = list(csv.DictReader(f))
  assert list(lines[0])[:7] == ["setting", "row", "repeat", "fold", "recording", "label",
                                "score"]
  test = [l for l in lines if l["part"] == "test"]
  assert {l["recording"].split("/")[0] for l in test} == {"raw"}
  n = sum(s.repeats * len(s.keys) for res in results.values() for s in res.values())
  assert len(test) == n
  assert any(l["part"] == "val" and l["row"] == "logmel_logreg" for l in lines)
  # A row's lines of one recording are adjacent (so the file compresses).
  scored = [(l["setting"], l["row"], l["recording"]) for l in lines if l["part"] != "val"]
  runs = [k for k, _ in itertools.groupby(scored)]
  assert len(runs) == len(set(scored)) and len(scored) > len(runs)
  _, again, regenerated = study_report.from_scores(tmp_path / "scores.csv.gz", root, "cmd")
  drop = lambda t: [l for l in t.splitlines() if not l.startswith("Generated ")]
  assert drop(regenerated) == drop(text)
  # The baselines' validation scores choose thresholds: numbers, not "no val scores".
  line = next(l for l in text.splitlines() if l.startswith("| *baseline: log-mel"))
  assert "no val scores" not in line
  assert "| *reference: all positive* |" in text
  # An interim report (a study still running) says so, from its scores file too.
  interim = study_report.publish(plan, results, root, "cmd", tmp_path / "interim",
                                 progress=(7, 9))
  assert "- **Interim report: 7 of 9 units done**" in interim
  _, _, regenerated = study_report.from_scores(tmp_path / "interim" / "scores.csv.gz",
                                               root, "cmd")
  assert drop(regenerated) == drop(interim)


def test_the_provenance_is_taken_before_the_scores_are_written(done, tmp_path,
                                                              monkeypatch):
  """The scores files are committed beside the report: rewritten first, they would
  make every regenerated report say "with uncommitted changes"."""
  plan, results, _ = done
  seen = []
  real = rep.provenance
  monkeypatch.setattr(rep, "provenance", lambda *args: seen.append(
      (tmp_path / "scores.csv.gz").exists()) or real(*args))
  study_report.publish(plan, results, pathlib.Path(plan.data[1].split("=", 1)[1]), "cmd",
                       tmp_path)
  assert seen == [False] and (tmp_path / "scores.csv.gz").exists()


def test_cp_rows_pretrain_on_a_disjoint_pool_or_per_fold(done):
  """In the call centre the paper's best model pre-trains once per repeat on the
  pool (covid19_cough's Telegram here: no Coswara given), serving both folds; pooled
  has no pool, so per fold there, as the per-fold reference row is everywhere."""
  plan, results, text = done
  pre = plan.workdir / "pretrain" / "transformer_m50"
  assert sorted(p.name for p in pre.iterdir() if p.is_dir()) == [
      "r0all", "r0f0", "r0f1", "r0pool-source_filter_telegram"]
  for fold in (0, 1):
    cfg = json.loads((pre / f"r0f{fold}" / "config.json").read_text())
    assert cfg["data"]["folds"] == str(plan.folds_path) and cfg["data"]["fold"] == fold
  cfg = json.loads((pre / "r0pool-source_filter_telegram" / "config.json").read_text())
  assert (cfg["data"]["folds"], cfg["data"]["source_filter"]) == ("", "telegram")
  for unit in runs.units_of(plan):
    if unit.row and unit.row.name == study.BEST:
      for part in unit.parts:  # each fold's
        (need,) = part.needs
        assert need.folder.name == ("r0pool-source_filter_telegram"
                                    if unit.setting.name == study.CC else f"r0f{part.fold}")
  assert "pool disjoint from the evaluated source" in text


def test_deep_rows_have_validation_thresholds_and_gain_shifts(done):
  plan, results, text = done
  cc = text.split(f"## {study.CC}:", 1)[1].split("\n## ", 1)[0]
  for name in ("transformer", study.BEST):
    scores = results[study.CC][name]
    assert all(v is not None for per in scores.validation for v in per)
    assert sorted(scores.perturbed) == ["gain+10", "gain-10"]
    assert all(u["serving_max_diff"] <= 1e-6 for per in scores.units for u in per)
    line = next(l for l in cc.splitlines() if l.startswith(f"| {plan.row(name).title} |"))
    assert "no val scores" not in line
  assert "Test-time gain" in cc and "| AUC moves at -10 dB | AUC moves at +10 dB |" in cc


def test_command_line_rejects_unknown_rows_and_interim_from_scores():
  proc = subprocess.run([sys.executable, "-m", "coughjax.studies.covid19_cough",
                         "--rows=transformer,vggish_ft", "--root=/nonexistent"], cwd=REPO,
                        capture_output=True, text=True, timeout=120, check=False)
  assert proc.returncode != 0
  assert "--rows: unknown rows ['vggish_ft']" in proc.stderr
  proc = subprocess.run([sys.executable, "-m", "coughjax.studies.covid19_cough",
                         "--from_scores=docs/covid19_cough/scores.csv.gz", "--interim",
                         "--report=/nonexistent/report.md"], cwd=REPO,
                        capture_output=True, text=True, timeout=120, check=False)
  assert proc.returncode != 0 and "Traceback" not in proc.stderr
  assert "--from_scores and --interim: a scores file says itself" in proc.stderr


def test_attempts_are_rows_of_their_own(release_slice, tmp_path, done):
  """`--attempts` adds the longer pre-training and the augmented training, each
  compared with the paper's best model and the baselines; without it the report
  says they did not run."""
  assert "not run: 80-epoch pre-training and augmented training (`--attempts`)" in done[2]
  plan = study.make_plan(release_slice, "", tmp_path, k=2, deep_rows=(study.BEST,),
                         setting_names=(study.CC,), attempts=True, runlocal=True)
  (cc,) = plan.settings
  assert set(study.ATTEMPTS) <= set(cc.rows)
  config = runs.downstream_config(plan, cc, plan.row(study.AUGMENTED_BEST))
  assert (config.augment.gain_db, config.augment.time_mask_width) == (10.0, 10)
  assert runs.downstream_config(plan, cc, plan.row(study.BEST)).augment.gain_db == 0.0
  assert plan.row(study.LONG_BEST).pretrain_overrides == ("num_epochs=80",)
  compared = {(c.a, c.b) for key, _, cs in study.findings() if key in ("vii", "viii")
              for c in cs}
  assert compared == {(study.LONG_BEST, study.BEST), (study.LONG_BEST, "logmel_logreg"),
                      (study.AUGMENTED_BEST, study.BEST),
                      (study.AUGMENTED_BEST, "logmel_logreg"),
                      (study.AUGMENTED_BEST, "loudness_only")}


def test_power_line_states_the_detectable_lead_and_what_more_repeats_buy():
  rng = np.random.default_rng(0)
  ran = rep.Judged(rep.Comparison("s", "a", "b"), repeats=5, test_train_ratio=0.5)
  ran.estimate = stats.corrected_resampled_t(rng.normal(0, 0.05, (5, 3)), 0.5)
  ran.detectable = stats.minimum_detectable(ran.estimate.se, ran.estimate.df,
                                            alpha=0.05 / 2)
  not_run = rep.Judged(rep.Comparison("t", "a", "b"))
  (line,) = study_report.power_lines([ran, not_run])
  assert f"is {100 * ran.detectable:.1f} AUC points (the one setting that ran);" in line
  # 10 repeats of the same spread: a little smaller; unlimited: still far from 0.
  ten, unlimited = (ran.detectable_with(r, 0.05 / 2) for r in (10, np.inf))
  assert ran.detectable > ten > unlimited > 0.8 * ran.detectable
  assert (f"10 repeats would detect {100 * ten:.1f} and unlimited repeats "
          f"{100 * unlimited:.1f} AUC points") in line
  other = dataclasses.replace(ran, comparison=rep.Comparison("t", "a", "b"),
                              detectable=0.1)
  (line,) = study_report.power_lines([other, ran])
  assert f"is 10.0–{100 * ran.detectable:.1f} AUC points, depending on the setting;" in line
  assert study_report.power_lines([not_run]) == [
      "No primary comparison ran: no power to state."]


def test_the_committed_report_is_what_its_committed_scores_give(covid19_cough):
  """docs/reproduction_covid19_cough.md is regenerated from docs/covid19_cough alone
  (`--from_scores`): nothing in it is edited by hand, and report code that changes
  what it says must regenerate it. The Data section reads the release copy at hand,
  and the provenance names this run, so those lines are left out."""
  committed = (REPO / "docs" / "reproduction_covid19_cough.md").read_text()
  _, _, regenerated = study_report.from_scores(
      REPO / "docs" / "covid19_cough" / "scores.csv.gz", covid19_cough, "cmd")

  def kept(text):
    head, rest = text.split("\n## Answer\n", 1)
    answer_to_data, after_data = rest.split("\n## Data\n", 1)
    return ("\n".join(l for l in head.splitlines() if l.startswith("- **Interim"))
            + answer_to_data + after_data.split("\n## Protocol\n", 1)[1])

  assert kept(regenerated) == kept(committed)
