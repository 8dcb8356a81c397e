"""The evaluation protocol's runner: folds in the data path, front end, baselines,
out-of-fold scores, inductive pre-training, resume, and the generic command."""

import dataclasses
import json

import ml_collections
import numpy as np
import pytest

from coughjax import baselines
from coughjax.data import features as features_lib
from coughjax.data import splits
from coughjax.data.manifest import Recording
from coughjax.protocol import report as rep
from coughjax.protocol import runs
from coughjax.protocol import __main__ as cli


def _records(n=40):
  return [Recording(f"synthetic://x/{i}", f"p{i // 2}", "cough", i % 3 == 0,
                    stratum="ab"[i % 2]) for i in range(n)]


def _folds_file(tmp_path, records, k=4, repeats=2):
  fold_of = np.array([[(int(r.participant_id[1:]) + rep_) % k for r in records]
                      for rep_ in range(repeats)])
  path = tmp_path / "folds.json"
  splits.write_folds(path, records, fold_of, seed=0)
  return splits.read_folds(path)


def test_fold_split_tests_the_fold_and_keeps_participants_together(tmp_path):
  records = _records()
  folds = _folds_file(tmp_path, records)
  seen = []
  for fold in range(4):
    parts = splits.fold_split(records, folds, fold, 1, (0.7, 0.1, 0.2), seed=3)
    assert sorted(map(id, sum(parts.values(), []))) == sorted(map(id, records))
    test = {r.participant_id for r in parts["test"]}
    assert all((int(p[1:]) + 1) % 4 == fold for p in test)
    train = {r.participant_id for r in parts["train"]}
    val = {r.participant_id for r in parts["val"]}
    assert not (test & train) and not (test & val) and not (train & val) and val
    seen += [r.path for r in parts["test"]]
  assert sorted(seen) == sorted(r.path for r in records)  # each recording tested once


def test_fold_split_never_tests_recordings_the_file_lacks(tmp_path):
  records = _records()
  folds = _folds_file(tmp_path, records[:20])
  parts = splits.fold_split(records, folds, 0, 0)
  assert all(r in records[:20] for r in parts["test"])
  with pytest.raises(ValueError, match="20 of 40 recordings are not in this folds file"):
    splits.fold_split(records, folds, 0, 0, require_all=True)
  with pytest.raises(ValueError, match="has 4 folds x 2 repeats; data.fold=4"):
    splits.fold_split(records, folds, 4, 0)


def test_from_config_chooses_the_split(tmp_path):
  records = _records()
  folds = _folds_file(tmp_path, records)
  cfg = ml_collections.ConfigDict(dict(split=(0.7, 0.1, 0.2), split_seed=0, folds="",
                                       fold=0, fold_repeat=0))
  assert splits.from_config(records, cfg) == splits.split(records, cfg.split, 0)
  cfg.folds, cfg.fold = folds["path"], 2
  assert splits.from_config(records, cfg) == splits.fold_split(records, folds, 2, 0,
                                                               cfg.split, 0)
  (tmp_path / "bad.json").write_text("{}")
  cfg.folds = str(tmp_path / "bad.json")
  with pytest.raises(ValueError, match="bad.json: not a coughjax folds file"):
    splits.from_config(records, cfg)


def test_normalise_removes_the_level():
  feats = np.random.default_rng(0).normal(size=(50, 8)).astype(np.float32) + 3
  gain = features_lib.normalise(feats, "gain")
  assert abs(gain.mean()) < 1e-5
  np.testing.assert_allclose(gain - feats, np.full_like(feats, gain[0, 0] - feats[0, 0]),
                             atol=1e-5)  # one offset for every entry: the shape is kept
  np.testing.assert_allclose(features_lib.normalise(feats, "cmn").mean(0), 0, atol=1e-5)
  assert features_lib.normalise(feats, "") is feats
  with pytest.raises(ValueError, match="features.normalise must be one of"):
    features_lib.FeatureParams(normalise="loud")


def test_feature_cache_keys_do_not_change_without_normalisation():
  params = features_lib.FeatureParams()
  fields = dataclasses.asdict(params)
  del fields["normalise"]
  want = features_lib.hashlib.sha256(json.dumps(
      [features_lib.FEATURE_VERSION, fields], sort_keys=True).encode()).hexdigest()[:16]
  assert params.key() == want
  assert features_lib.FeatureParams(normalise="gain").key() != want


def test_single_feature_baselines_score_what_they_name():
  rng = np.random.default_rng(0)

  def split(n):
    y = rng.integers(0, 2, n)
    feats = [rng.normal(size=(20 + 30 * int(l) + int(rng.integers(0, 5)), 4)) + 2 * l
             for l in y]
    return baselines.Split([Recording(f"r{i}", f"r{i}", "cough", int(l))
                            for i, l in enumerate(y)], feats)

  parts = {"train": split(60), "val": split(20), "test": split(40)}
  for name, value in (("loudness_only", baselines.loudness),
                      ("duration_only", baselines.duration)):
    scored, info = baselines.BASELINES[name](parts, 0)
    scores = scored["test"]
    assert len(scored["val"]) == 20
    raw = np.array([value(f) for f in parts["test"].features])
    # A one-feature logistic regression is a monotone map of the feature.
    assert np.all(np.diff(scores[np.argsort(raw)]) >= -1e-12), name
    assert info["num_features"] == 1
  assert baselines.loudness(np.full((3, 2), 4.0)) == 4.0
  assert baselines.duration(np.zeros((17, 2))) == 17.0


# --- the runner on the built-in synthetic data (runlocal) ----------------------------


def _plan(tmp_path, rows, **kwargs):
  return cli.make_plan(tmp_path / "work", ["data.num_participants=24"], [], rows,
                       k=2, repeats=1, baseline_repeats=2, runlocal=True, **kwargs)


def test_every_recording_gets_one_out_of_fold_score_per_repeat(tmp_path):
  plan = _plan(tmp_path, ["transformer", "logmel_logreg", "loudness_only"])
  results = runs.run_plan(plan)["all"]
  folds = splits.read_folds(plan.folds_path)
  labelled = set(folds["recordings"])
  for name, scores in results.items():
    assert set(scores.keys) <= labelled
    assert scores.scores.shape == (plan.repeats_of(plan.row(name)), len(scores.keys))
    assert np.all((scores.scores >= 0) & (scores.scores <= 1))
  # Deep rows and baselines score the same recordings (the same usable ones).
  assert results["transformer"].keys == results["logmel_logreg"].keys
  unit = results["transformer"].units[0][0]
  assert unit["epochs"] == 2 and 1 <= unit["best_epoch"] <= 2
  text = cli.format_report(plan, {"all": results},
                           rep.judge(cli.comparisons(plan), {"all": results}), "cmd")
  assert "| transformer |" in text and "Commit: `" in text
  assert "| all | transformer | loudness_only |" in text


def test_a_rerun_reuses_every_unit(tmp_path):
  plan = _plan(tmp_path, ["transformer", "duration_only"])
  first = runs.run_plan(plan)
  calls = []
  again = runs.run_plan(plan, runner=lambda *a: calls.append(a))
  assert not calls
  np.testing.assert_array_equal(first["all"]["transformer"].scores,
                                again["all"]["transformer"].scores)
  # Another config in the same workdir is an error, not a silent reuse.
  other = dataclasses.replace(plan, downstream_set=("num_epochs=3",))
  for unit in (plan.workdir / "all" / "transformer").glob("*/unit.json"):
    unit.unlink()
  with pytest.raises(ValueError, match="holds a unit made with another config"):
    runs.run_plan(other)


def test_a_unit_another_process_runs_is_left_to_it(tmp_path):
  import fcntl  # pylint: disable=g-import-not-at-top
  plan = _plan(tmp_path, ["duration_only"])
  runs.ensure_folds(plan)
  setting, row = plan.settings[0], plan.row("duration_only")
  lock = plan.workdir / "all" / "duration_only" / ".r0f1.lock"
  lock.parent.mkdir(parents=True)
  with open(lock, "a") as held:  # as another process would hold it
    fcntl.flock(held, fcntl.LOCK_EX)
    assert runs.run_unit(plan, setting, row, 0, 1, runs.default_runner, wait=False) is None
    assert runs.run_unit(plan, setting, row, 0, 0, runs.default_runner, wait=False)
  assert not (lock.parent / "r0f1").exists()
  assert runs.run_unit(plan, setting, row, 0, 1, runs.default_runner)["seconds"] >= 0


def test_a_unit_whose_pretraining_another_process_runs_waits_for_it(tmp_path):
  import fcntl  # pylint: disable=g-import-not-at-top
  plan = _plan(tmp_path, ["transformer_cp_ft"])
  runs.ensure_folds(plan)
  setting, row = plan.settings[0], plan.row("transformer_cp_ft")
  pre = runs.pretrain_workdir(plan, "transformer_m0", setting, (0, 1))
  pre.parent.mkdir(parents=True)
  calls = []
  with open(pre.parent / f".{pre.name}.lock", "a") as held:  # another process's
    fcntl.flock(held, fcntl.LOCK_EX)
    # Left for later, not waited for: the unit is free for whoever comes back.
    assert runs.run_unit(plan, setting, row, 0, 1, lambda *a: calls.append(a),
                         wait=False) is None
  assert not calls and not (plan.workdir / "all" / row.name / "r0f1").exists()


def test_inductive_pretraining_never_sees_its_fold(tmp_path):
  # Pre-training on the downstream participants' coughs and breathing.
  plan = _plan(tmp_path, ["transformer_cp_ft"],
               pretrain_data=("data.num_participants=24", "data.seed=1"))
  runs.ensure_folds(plan)
  setting = plan.settings[0]
  folds = splits.read_folds(plan.folds_path)
  from coughjax import data  # pylint: disable=g-import-not-at-top
  for fold in range(plan.k):
    config = runs.pretrain_config(plan, "transformer_m0", setting, (0, fold))
    records = data.get_manifest(config.data)
    parts = splits.from_config(records, config.data)
    seen = {splits.recording_key(r.path) for p in ("train", "val") for r in parts[p]}
    tested = {k for k, f in folds["recordings"].items() if f[0] == fold}
    # Neither the test recordings nor their participants' other sounds (breathing).
    who = lambda keys: {k.split("/")[3] for k in keys}  # synthetic://seed/participant/..
    assert tested and who(tested) & who(splits.recording_key(r.path) for r in records)
    assert not who(seen) & who(tested)
    assert runs.pretrain_workdir(plan, "transformer_m0", setting, (0, fold)).name == \
        f"r0f{fold}"
  assert runs.pretrain_workdir(plan, "transformer_m0", setting, None).name == "all"


def test_command_shares_units_between_processes(tmp_path):
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  from tests.conftest import REPO  # pylint: disable=g-import-not-at-top
  work = tmp_path / "work"
  proc = subprocess.run(
      [sys.executable, "-m", "coughjax.protocol", f"--workdir={work}", "--runlocal",
       "--rows=transformer,duration_only", "--data=data.num_participants=24",
       "--folds=2", "--baseline_repeats=1", "--processes=2"],
      cwd=REPO, capture_output=True, text=True, timeout=900, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = (work / "report.md").read_text()
  assert "| all | transformer | duration_only |" in report
  assert "python -m coughjax.protocol" in report
  assert (work / "helper_1.log").is_file()
  assert len(list(work.glob("all/*/r0f*/unit.json"))) == 4


def test_command_checks_the_report_path_before_the_work(tmp_path):
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  from tests.conftest import REPO  # pylint: disable=g-import-not-at-top
  proc = subprocess.run(
      [sys.executable, "-m", "coughjax.protocol", f"--workdir={tmp_path / 'work'}",
       "--runlocal", "--rows=duration_only", "--data=data.num_participants=24",
       f"--report={tmp_path / 'missing' / 'report.md'}"],
      cwd=REPO, capture_output=True, text=True, timeout=900, check=False)
  assert proc.returncode != 0 and "--report=" in proc.stderr, proc.stderr[-3000:]
  assert not list((tmp_path / "work").glob("**/unit.json"))
