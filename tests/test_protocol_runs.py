"""The evaluation protocol's runner: folds in the data path, front end, baselines;
units published once, resumed, waited for; a study on Dask workers, one of them
killed, two commands on one workdir; the checks before any work; the command."""

import dataclasses
import json
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time
import zlib

from absl import app
import ml_collections
import numpy as np
import pytest

from coughjax import baselines
from coughjax import data
from coughjax.data import features as features_lib
from coughjax.data import splits
from coughjax.data.manifest import Recording
from coughjax.protocol import claims
from coughjax.protocol import folds as folds_lib
from coughjax.protocol import report as rep
from coughjax.protocol import runs
from coughjax.protocol import stats
from coughjax.protocol import units
from coughjax.protocol import __main__ as cli
from coughjax.train import downstream
from coughjax.train import many
from conftest import REPO


def _records(n=40):
  return [Recording(f"synthetic://x/{i}", f"p{i // 2}", "cough", i % 3 == 0,
                    stratum="ab"[i % 2]) for i in range(n)]


def _folds_file(tmp_path, records, k=4, repeats=2):
  fold_of = np.array([[(int(r.participant_id[1:]) + rep_) % k for r in records]
                      for rep_ in range(repeats)])
  path = tmp_path / "folds.json"
  folds_lib.write_folds(path, [folds_lib.recording_key(r.path) for r in records], fold_of,
                        seed=0)
  return folds_lib.read_folds(path)


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
  (tmp_path / "bad.json").write_text('{"version": 1, "k"')  # a truncated file
  with pytest.raises(ValueError, match="bad.json: folds file: not valid JSON .* can be "
                     "deleted and drawn again"):
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


# --- one unit: published whole and once, resumed, waited for (no Dask) --------------


def _work(calls, content="mine"):
  """A unit's work: records what its workdir held and which folders it was given,
  writes an output into each."""
  def work(scratch, todo):
    calls.append((sorted(p.name for p in scratch.iterdir()), [f.name for f in todo]))
    for folder in todo:
      (scratch / folder.name).mkdir(exist_ok=True)
      (scratch / folder.name / "out.txt").write_text(content)
    return {f: {"seconds": 0.5} for f in todo}
  return work


def _claim(folder, n, **owner):
  side = claims.attempts_folder(folder)
  side.mkdir(parents=True, exist_ok=True)
  (side / f"claim.{n}").write_text(json.dumps(owner))
  return side


def _run_once(folder, work, **kwargs):
  """run_once of a unit publishing the one folder `folder`: its record."""
  (record,) = claims.run_once(claims.attempts_folder(folder), [folder], work, **kwargs)
  return record


def test_a_unit_is_published_whole_and_once(tmp_path):
  folder, calls = tmp_path / "all" / "row" / "r0f0", []
  side = claims.attempts_folder(folder)
  assert claims.state(side, [folder]) == "to do"
  unit = _run_once(folder, _work(calls))
  assert (unit["attempt"], unit["resumed_from"], unit["seconds"]) == (0, None, 0.5)
  assert claims.read_unit(folder) == unit and (folder / "out.txt").read_text() == "mine"
  assert not side.exists() and claims.state(side, [folder]) == "done"
  assert _run_once(folder, _work(calls)) == unit and len(calls) == 1


def test_a_unit_of_several_folders_works_on_those_not_published(tmp_path):
  """A row's repeat publishes a folder per fold; an attempt killed between two
  renames leaves the others to the next, which does not redo the published one."""
  folders = [tmp_path / "all" / "row" / f"r0f{f}" for f in range(3)]
  side = claims.attempts_folder(tmp_path / "all" / "row" / "r0")
  assert side.name == ".r0.attempts"
  folders[1].mkdir(parents=True)
  (folders[1] / "unit.json").write_text('{"seconds": 3.0}')
  (folders[1] / "out.txt").write_text("earlier")
  assert claims.state(side, folders) == "partial (1 of 3 published)"
  calls = []
  records = claims.run_once(side, folders, _work(calls))
  assert calls == [([], ["r0f0", "r0f2"])]
  assert [r["seconds"] for r in records] == [0.5, 3.0, 0.5]
  assert [r.get("shared_by") for r in records] == [2, None, 2]
  assert [(f / "out.txt").read_text() for f in folders] == ["mine", "earlier", "mine"]
  assert not side.exists() and claims.state(side, folders) == "done"


def test_an_attempt_whose_process_died_is_resumed_at_once(tmp_path):
  folder = tmp_path / "r0f0"
  dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                        capture_output=True, text=True, check=True)
  side = _claim(folder, 0, **dict(claims._me(), pid=int(dead.stdout)))
  (side / "work.0").mkdir()
  (side / "work.0" / "checkpoint").write_text("epoch 1")
  assert claims.state(side, [folder]).startswith("partial (attempt 0 by ")
  calls, start = [], time.monotonic()
  unit = _run_once(folder, _work(calls), stale_s=600)
  assert time.monotonic() - start < 60  # not after stale_s: the owner is known dead
  assert calls == [(["checkpoint"], ["r0f0"])]  # its workdir, copied
  assert (unit["attempt"], unit["resumed_from"]) == (1, 0)


def test_another_machines_attempt_is_taken_over_once_its_heartbeat_stops(tmp_path):
  folder = tmp_path / "r0f0"
  _claim(folder, 0, host="elsewhere", boot="x", pid=1, started="1")
  calls, start = [], time.monotonic()
  unit = _run_once(folder, _work(calls), stale_s=0.5, poll_s=0.05)
  assert time.monotonic() - start >= 0.5 and unit["attempt"] == 1
  assert calls == [([], ["r0f0"])]


def test_a_live_attempt_is_waited_for(tmp_path):
  folder = tmp_path / "r0f0"
  side = _claim(folder, 0, **claims._me())  # alive: this very process

  def other_attempt_finishes():
    time.sleep(0.5)
    (side / "work.0").mkdir()
    (side / "work.0" / "unit.json").write_text('{"seconds": 7.0}')
    os.rename(side / "work.0", folder)

  thread = threading.Thread(target=other_attempt_finishes)
  thread.start()
  calls = []
  assert _run_once(folder, _work(calls), poll_s=0.05) == {"seconds": 7.0}
  thread.join()
  assert not calls


def test_of_two_finishers_the_first_ones_outputs_stay(tmp_path):
  folder = tmp_path / "r0f0"

  def work(scratch, todo):  # another attempt publishes while this one works
    rival = tmp_path / "rival"
    rival.mkdir()
    (rival / "unit.json").write_text('{"seconds": 2.0}')
    (rival / "out.txt").write_text("rival")
    os.rename(rival, folder)
    (scratch / "r0f0").mkdir()
    (scratch / "r0f0" / "out.txt").write_text("mine")
    return {f: {"seconds": 1.0} for f in todo}

  assert _run_once(folder, work) == {"seconds": 2.0}
  assert (folder / "out.txt").read_text() == "rival"


def test_a_damaged_unit_record_is_named_with_what_to_do(tmp_path):
  folder = tmp_path / "r0f0"
  folder.mkdir()
  (folder / "unit.json").write_text("")  # a full disk, say
  with pytest.raises(ValueError, match=r"r0f0/unit.json: unit record: not valid JSON .*"
                     r"delete \S*r0f0 to run the unit again"):
    claims.read_unit(folder)
  (folder / "unit.json").unlink()
  with pytest.raises(ValueError, match="without unit.json .* delete it"):
    claims.read_unit(folder)


# --- a study on Dask workers (the built-in synthetic data, runlocal) ------------------


ROWS = ["transformer", "duration_only"]


def _plan(workdir, rows=ROWS, **kwargs):
  kwargs = dict(dict(k=2, repeats=1, baseline_repeats=1, runlocal=True), **kwargs)
  return cli.make_plan(workdir, ["data.num_participants=24"], [], rows, **kwargs)


def _command(workdir, *flags):
  return subprocess.run(
      [sys.executable, "-m", "coughjax.protocol", f"--workdir={workdir}", "--runlocal",
       f"--rows={','.join(ROWS)}", "--data=data.num_participants=24", "--folds=2",
       "--baseline_repeats=1", *flags],
      cwd=REPO, capture_output=True, text=True, timeout=900, check=False)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
  """The command on an embedded cluster of 2 worker processes."""
  work = tmp_path_factory.mktemp("study") / "work"
  proc = _command(work, "--processes=2")
  assert proc.returncode == 0, proc.stderr[-3000:]
  return _plan(work)


def _predictions(plan):
  return {p.relative_to(plan.workdir): p.read_bytes()
          for p in plan.workdir.glob("all/*/*/predictions.csv")}


def test_a_study_runs_on_two_worker_processes(study):
  records = {p.parent.relative_to(study.workdir).as_posix(): claims.read_unit(p.parent)
             for p in study.workdir.glob("all/*/*/unit.json")}
  assert len(records) == 4 and all(r["attempt"] == 0 for r in records.values())
  # One unit per row (its repeat), both folds in it: the transformer's as one program.
  assert {r["shared_by"] for r in records.values()} == {2}
  assert len({r["ran_on"] for r in records.values()}) == 2  # both workers ran units
  assert not list(study.workdir.glob("**/*.attempts"))
  report = (study.workdir / "report.md").read_text()
  assert "| all | transformer | duration_only |" in report
  assert "python -m coughjax.protocol" in report
  results = runs.collect(study)["all"]
  labelled = set(folds_lib.read_folds(study.folds_path)["recordings"])
  for name, scores in results.items():
    assert set(scores.keys) <= labelled
    assert scores.scores.shape == (study.repeats_of(study.row(name)), len(scores.keys))
    assert np.all((scores.scores >= 0) & (scores.scores <= 1))
  assert results["transformer"].keys == results["duration_only"].keys
  unit = results["transformer"].units[0][0]
  assert unit["epochs"] == 2 and 1 <= unit["best_epoch"] <= 2
  # Its validation part and its test part at +-10 dB, scored by coughjax.predict from
  # the checkpoint that scored the test part: the trainer's test scores reproduced.
  for fold in range(study.k):
    record = results["transformer"].units[0][fold]
    assert record["serving_max_diff"] <= 1e-6
    val = results["transformer"].validation[0][fold]
    assert val is not None and len(val[0]) > 0
  assert sorted(results["transformer"].perturbed) == ["gain+10", "gain-10"]
  assert not results["duration_only"].perturbed
  assert rep.perturbation_table(results, {})[2].startswith("| transformer | ")
  text = cli.format_report(study, {"all": results},
                           rep.judge(cli.comparisons(study), {"all": results}), "cmd")
  assert "| transformer |" in text and "Commit: `" in text


def test_a_rerun_runs_nothing_and_refuses_another_config(study):
  before = _predictions(study)
  runs.run_plan(study, runner=_must_not_run)  # every unit done: no cluster, no work
  assert _predictions(study) == before
  other = dataclasses.replace(study, downstream_set=("num_epochs=3",))
  with pytest.raises(ValueError, match="holds a unit made with another config"):
    runs.run_plan(other, runner=_must_not_run)


def _must_not_run(configs, workdir):
  raise AssertionError(f"{workdir}: a unit ran again")


def _dies_after_its_first_checkpoint(configs, workdir):
  """The trainer, in a worker process that is killed (SIGKILL) once the first
  attempt at transformer r0 (both folds) has checkpointed its first epoch: a worker
  lost mid-unit."""
  work = pathlib.Path(workdir)
  if work.name == "work.0" and work.parent.name == ".r0.attempts":
    def kill_when_checkpointed():
      while not any(p.name.isdigit() for p in (work / many.CHECKPOINTS).glob("*")):
        time.sleep(0.05)
      os.kill(os.getpid(), signal.SIGKILL)
    threading.Thread(target=kill_when_checkpointed, daemon=True).start()
  return units.default_runner(configs, workdir)


def test_a_worker_killed_mid_unit_costs_nothing(tmp_path, study):
  plan = _plan(tmp_path / "work")
  runs.run_plan(plan, runner=_dies_after_its_first_checkpoint, processes=2)
  for fold in range(plan.k):
    killed = claims.read_unit(plan.workdir / "all" / "transformer" / f"r0f{fold}")
    assert (killed["attempt"], killed["resumed_from"]) == (1, 0)  # resumed elsewhere
    assert killed["epochs"] == 2
  assert len(list(plan.workdir.glob("all/*/*/unit.json"))) == 4
  assert not list(plan.workdir.glob("**/*.attempts"))
  assert _predictions(plan) == _predictions(study)  # the same scores, to the bit


def test_a_fold_trained_with_the_others_scores_as_trained_alone(tmp_path, study):
  """The transformer's folds trained as one program: fold 1's test scores equal
  training it alone (`downstream.run`, one run) to the bit. On CPU the program steps
  its runs one after another (runs_impl "auto" = map); batched (vmap), this fold
  moved up to 1.2e-4 from alone (median 1.3e-5; fold 0: 7e-8): the batched matmuls
  round unlike one run's, and Adam's first steps (g / |g|) turn a rounded gradient
  near 0 into a full step (tests/test_many.py holds vmap to its rounding)."""
  (unit,) = [u for u in runs.units_of(study) if u.row and u.row.name == "transformer"]
  part = unit.parts[1]
  config = part.config()
  config.lock()
  downstream.run(config, str(tmp_path))
  alone = units.read_predictions(tmp_path, units.TRAINED_PREDICTIONS)
  together = units.read_predictions(part.folder)
  assert alone.keys() == together.keys()
  assert [alone[k][0] for k in alone] == [together[k][0] for k in alone]
  assert [together[k][1] for k in alone] == [alone[k][1] for k in alone]


def _fake_trainer(configs, workdir):
  """Scores each fold's test part by a hash of each path (no JAX) and logs the call."""
  time.sleep(1.0)  # long enough for two commands to meet on a unit
  for name, config in configs.items():
    parts = splits.from_config(data.get_manifest(config.data), config.data)
    run_dir = pathlib.Path(workdir) / name / "run_0"
    run_dir.mkdir()
    rows = ["path,label,probability"] + [
        f"{r.path},{int(r.label)},{zlib.crc32(r.path.encode()) / 2**32!r}"
        for r in parts["test"]]
    (run_dir / "test_predictions.csv").write_text("\n".join(rows) + "\n")
    (run_dir / "metrics.jsonl").write_text('{"split": "val", "epoch": 0, "best": true}\n')
  with open(pathlib.Path(config.data.folds).parent / "trained.log", "a") as f:
    f.write(f"{workdir} {','.join(configs)}\n")
  return {}


def test_two_commands_on_one_workdir_do_not_double_a_unit(tmp_path):
  plan = _plan(tmp_path / "work", baseline_repeats=2)
  results, errors = [None, None], []

  def command(i):
    try:
      results[i] = runs.run_plan(plan, runner=_fake_trainer)  # each its own cluster
    except Exception as e:  # pylint: disable=broad-except
      errors.append(e)

  threads = [threading.Thread(target=command, args=(i,)) for i in range(2)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  if errors:
    raise errors[0]
  trained = (plan.workdir / "trained.log").read_text().splitlines()
  units_trained = [(pathlib.Path(w).parent.name, folds) for w, folds in
                   (line.split() for line in trained)]
  assert units_trained == [(".r0.attempts", "r0f0,r0f1")]  # once, both folds
  assert len(list(plan.workdir.glob("all/*/*/unit.json"))) == 2 + 4
  for name in ROWS:
    np.testing.assert_array_equal(results[0]["all"][name].scores,
                                  results[1]["all"][name].scores)


def test_inductive_pretraining_never_sees_its_fold(tmp_path):
  # Pre-training on the downstream participants' coughs and breathing.
  plan = _plan(tmp_path, ["transformer_cp_ft"],
               pretrain_data=("data.num_participants=24", "data.seed=1"))
  runs.prepare(plan)
  setting = plan.settings[0]
  folds = folds_lib.read_folds(plan.folds_path)
  for fold in range(plan.k):
    config = runs.pretrain_config(plan, "transformer_m0", setting, 0, fold)
    records = data.get_manifest(config.data)
    parts = splits.from_config(records, config.data)
    seen = {folds_lib.recording_key(r.path) for p in ("train", "val") for r in parts[p]}
    tested = {k for k, f in folds["recordings"].items() if f[0] == fold}
    # Neither the test recordings nor their participants' other sounds (breathing).
    who = lambda keys: {k.split("/")[3] for k in keys}  # synthetic://seed/participant/..
    assert tested and who(tested) & who(folds_lib.recording_key(r.path) for r in records)
    assert not who(seen) & who(tested)
    assert runs.pretrain_workdir(plan, "transformer_m0", setting, 0, fold).name == \
        f"r0f{fold}"
  assert runs.pretrain_workdir(plan, "transformer_m0", setting, 0, None).name == "r0all"
  # Each fold loads the pre-training of its own fold; its unit needs them all.
  for unit in runs.units_of(plan):
    if unit.row:
      assert [n.folder.name for n in unit.needs] == [f"r0f{f}" for f in range(plan.k)]
      for part in unit.parts:
        (need,) = part.needs
        assert part.config().encoder_a.checkpoint == str(need.folder)
        assert need.folder.name == f"r0f{part.fold}"




def test_pretraining_that_holds_out_no_test_recording_is_an_error(tmp_path):
  # The default pre-training data here is another synthetic set (data.seed 0, not
  # the downstream's 1): none of a fold's test recordings is in it.
  plan = _plan(tmp_path, ["transformer_cp_ft"])
  runs.prepare(plan)
  need = runs.units_of(plan)[2].needs[0]
  config = need.config()
  with pytest.raises(ValueError, match=r"fold 0 of repeat 0: none of these 48 recordings "
                     r"\(under synthetic://0/\) is one of its 24 test recordings \(under "
                     r"synthetic://1/\)"):
    splits.from_config(data.get_manifest(config.data), config.data)


def _seeds(config, prefix=""):
  """{field: value} of every seed of a config but the synthetic generator's
  (data.seed names the data, not a draw)."""
  out = {}
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      out.update(_seeds(value, f"{prefix}{key}."))
    elif "seed" in key and f"{prefix}{key}" != "data.seed":
      out[f"{prefix}{key}"] = value
  return out


def _pool_plan(workdir, pool=("data.seed=7",), **kwargs):
  """transformer_cp_ft pre-training on the setting's pool (another synthetic set)."""
  plan = _plan(workdir, ["transformer_cp_ft"], **kwargs)
  return dataclasses.replace(
      plan, rows=(dataclasses.replace(plan.rows[0], pretraining=runs.POOL),),
      settings=(dataclasses.replace(plan.settings[0], pool=pool),))


@pytest.mark.parametrize("pretraining", [runs.INDUCTIVE, runs.TRANSDUCTIVE, runs.POOL])
def test_every_repeat_draws_its_own_seeds(tmp_path, pretraining):
  plan = _pool_plan(tmp_path, repeats=2)
  plan = dataclasses.replace(plan, rows=(dataclasses.replace(plan.rows[0],
                                                             pretraining=pretraining),))
  todo = runs.units_of(plan)
  rows = [p for u in todo if u.row for p in u.parts]
  for fold in range(plan.k):
    a, b = (next(p for p in rows if (p.repeat, p.fold) == (r, fold)) for r in (0, 1))
    for one, other in [(a, b)] + list(zip(a.needs, b.needs)):
      seeds, others = _seeds(one.config()), _seeds(other.config())
      assert {"seed", "data.split_seed"} <= set(seeds)
      assert all(seeds[k] != others[k] for k in seeds), (one.name, seeds, others)
  # Within a repeat, no two folds of a row share a seed either.
  assert len({p.config().seed for p in rows}) == len(rows)


def test_a_pool_pretrains_once_per_repeat_for_every_fold(tmp_path, capsys):
  plan = _pool_plan(tmp_path / "work", repeats=2)
  todo = runs.units_of(plan)
  pretrainings = [u for u in todo if u.is_pretraining]
  assert [u.name for u in pretrainings] == [
      f"pretrain/transformer_m0/r{r}pool-seed_7" for r in (0, 1)]
  for unit in (u for u in todo if u.row):
    (need,) = unit.needs
    assert need.folder == pretrainings[unit.repeat].folder
    assert all(p.config().encoder_a.checkpoint == str(need.folder) for p in unit.parts)
  config = pretrainings[0].config()
  assert (config.data.seed, config.data.folds) == (7, "")  # the pool, all of it
  _dry_run(plan)
  lines = capsys.readouterr().out.splitlines()
  assert len(lines) == 2 + 2  # a pre-training and a row's unit (both folds) per repeat
  # Without a pool, a pool row pre-trains per fold.
  plan = _pool_plan(tmp_path / "work", pool=())
  assert [u.name for u in runs.units_of(plan) if u.is_pretraining] == [
      "pretrain/transformer_m0/r0f0", "pretrain/transformer_m0/r0f1"]


def test_a_pool_holding_an_evaluated_recording_is_refused(tmp_path, monkeypatch):
  with pytest.raises(app.UsageError, match=r"setting all: its pool \(data.seed=1\) "
                     r"holds 24 of the recordings it evaluates \(same path: e.g. "
                     r"synthetic://1/"):
    _dry_run(_pool_plan(tmp_path / "a", pool=("data.seed=1",)))
  # The same audio under another name: a digest without the generator seed makes
  # synthetic://7/p/... the same content as synthetic://1/p/....
  monkeypatch.setattr(features_lib.FeatureCache, "content_key",
                      lambda self, r: r.path.split("/", 3)[3])
  with pytest.raises(app.UsageError, match=r"its pool \(data.seed=7\) holds 24 of the "
                     r"recordings it evaluates \(same content: e.g. synthetic://7/"):
    _dry_run(_pool_plan(tmp_path / "b"))


class _LoudnessModel:
  """A stand-in for a trained model that reads loudness alone and saturates: the
  mean log-mel energy of a recording's features, clipped to [lo, hi]."""

  def __init__(self, lo, hi):
    self.lo, self.hi, self.calls = lo, hi, []

  def __call__(self, feats):
    return float(np.clip(feats.mean(dtype=np.float64), self.lo, self.hi))

  def predict_features(self, features, names, mask_features):
    self.calls.append((features, mask_features))
    return np.array([self(f) for f in features])


@pytest.mark.parametrize("normalise", ["", "gain"])
def test_a_gain_moves_a_raw_models_auc_and_not_a_gain_normalised_ones(
    tmp_path, monkeypatch, normalise):
  """Scores at +-10 dB: the gain goes on the raw features, before the front end's
  normalisation, which takes it off again; DS masks stay those of the unshifted
  features. The labels here are loudness (above the median: positive), which the
  model reads."""
  plan = _plan(tmp_path, ["transformer"])
  plan = dataclasses.replace(plan, settings=(dataclasses.replace(
      plan.settings[0], overrides=(f"features.normalise={normalise}",)),))
  runs.prepare(plan)
  config = runs.units_of(plan)[0].parts[0].config()
  test = baselines.load_split_features(
      runs.downstream_config(plan, runs.Setting("raw", (), ()), plan.rows[0]))["test"]
  loud = {r.path: f.mean(dtype=np.float64) for r, f in zip(test.records, test.features)}
  model = _LoudnessModel(*np.quantile(list(loud.values()), [0.25, 0.75]))
  trained = {r.path: model(features_lib.normalise(f, normalise))
             for r, f in zip(test.records, test.features)}
  from coughjax import predict  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(predict, "load_classifier", lambda workdir: model)
  assert units.score_again(config, tmp_path, trained) == {"serving_max_diff": 0.0}
  val = units.read_predictions(tmp_path, units.VAL_PREDICTIONS_FILE)
  assert len(val) > 0 and not set(val) & {folds_lib.recording_key(p) for p in loud}
  median = np.median(list(loud.values()))
  y = np.array([loud[p] > median for p in trained])
  auc = {}
  for db in (0.0,) + units.GAINS_DB:
    name = units.gain_file(db) if db else None
    got = (units.read_predictions(tmp_path, name) if name else
           {folds_lib.recording_key(p): (0, s) for p, s in trained.items()})
    auc[db] = stats.auc(y, [got[folds_lib.recording_key(p)][1] for p in trained])
  for (features, masks), db in zip(model.calls[2:], units.GAINS_DB):
    for f, m, r in zip(features, masks, test.features):
      np.testing.assert_array_equal(m, features_lib.normalise(r, normalise))
      np.testing.assert_allclose(
          f, features_lib.normalise(r + db * np.log(10) / 10, normalise), atol=1e-5)
  if normalise:  # the level is gone, whatever the gain
    assert auc == {db: auc[0.0] for db in auc}
  else:  # louder, the loud half saturates at hi and ties; quieter, the quiet one
    assert auc[0.0] == 1.0 and max(auc[-10.0], auc[10.0]) < 0.9, auc


# --- checked before any work ----------------------------------------------------------


def _dry_run(plan, report=None, module="coughjax.protocol"):
  runs.command_main(plan, module, processes=1, scheduler="", dry_run=True,
                    report=report or plan.workdir / "report.md", format_report=None)


def test_unknown_rows_are_named_with_every_choice(tmp_path):
  with pytest.raises(ValueError, match="row loudnes_only: unknown variant 'loudnes_only'; "
                     "choose from .*transformer.*, loudness_only"):
    _plan(tmp_path, ["logmel_logreg", "loudnes_only"])
  proc = _command(tmp_path / "work", "--rows=logmel_logreg,loudnes_only")
  assert proc.returncode == 1 and "Traceback" not in proc.stderr
  assert "choose from" in proc.stderr.splitlines()[-1]
  assert not (tmp_path / "work").exists()


def test_each_setting_needs_both_labels(tmp_path, monkeypatch):
  plan = _plan(tmp_path / "work")
  real = data.get_manifest
  monkeypatch.setattr(data, "get_manifest", lambda cfg: [
      dataclasses.replace(r, label=0) for r in real(cfg)])
  with pytest.raises(app.UsageError, match=r"setting all: all \d+ labelled recordings "
                     "have label 0; its rows need both labels"):
    _dry_run(plan)
  assert not plan.workdir.exists()


def test_the_report_path_overwrites_only_a_report_of_the_command(tmp_path, capsys):
  plan = _plan(tmp_path / "work")
  plan.workdir.mkdir()
  for name in ("folds.json", "notes.md"):
    (plan.workdir / name).write_text("{}\n")
    with pytest.raises(app.UsageError, match=f"{name} exists and is not a report of "
                       "python -m coughjax.protocol"):
      _dry_run(plan, plan.workdir / name)
    (plan.workdir / name).unlink()
  with pytest.raises(app.UsageError, match="folder .*missing does not exist"):
    _dry_run(plan, tmp_path / "missing" / "report.md")
  old = plan.workdir / "old.md"
  old.write_text("# Evaluation protocol\n\n- Command (from the repository root): "
                 "`python -m coughjax.protocol --workdir=x`\n")
  _dry_run(plan, old)
  with pytest.raises(app.UsageError, match="not a report of python -m coughjax.studies"):
    _dry_run(plan, old, module="coughjax.studies.covid19_cough")
  capsys.readouterr()


def test_the_workdir_must_be_a_folder(tmp_path):
  (tmp_path / "file").write_text("")
  with pytest.raises(app.UsageError, match="--workdir=.*file/work: .*not a folder"):
    _dry_run(_plan(tmp_path / "file" / "work"), tmp_path / "report.md")


def test_a_dry_run_lists_units_needs_and_states(tmp_path, capsys):
  plan = _plan(tmp_path / "work", ["transformer_cp_ft", "duration_only"])
  _dry_run(plan)
  lines = capsys.readouterr().out.splitlines()
  # Two pre-trainings, then each row's unit: both its folds.
  assert len(lines) == 2 + 1 + 1 and all(l.endswith("to do") for l in lines)
  assert lines[0].startswith("pretrain/transformer_m0/r0f0 ")
  assert lines[2].split()[:4] == ["all/transformer_cp_ft/r0", "needs",
                                  "pretrain/transformer_m0/r0f0,",
                                  "pretrain/transformer_m0/r0f1"]
  assert not plan.workdir.exists()  # a dry run writes nothing
  for unit in runs.prepare(plan):  # the baseline's units, here, without a cluster
    if unit.row and unit.row.is_baseline:
      units.run(unit)
  _dry_run(plan)
  lines = capsys.readouterr().out.splitlines()
  assert [l.endswith(" done") for l in lines] == [False] * 3 + [True]


def test_an_interim_report_runs_nothing_and_reports_the_repeats_done(
    tmp_path, monkeypatch, capsys):
  plan = _plan(tmp_path / "work", baseline_repeats=2)
  reports = []

  def interim(report="report.md"):
    runs.command_main(plan, "coughjax.protocol", processes=1, scheduler="",
                      dry_run=False, interim=True, report=plan.workdir / report,
                      format_report=lambda *args: reports.append(args) or "\n".join(
                          rep.provenance(*args[1:])))
    return reports[-1]

  with pytest.raises(app.UsageError, match="--interim: no unit of the plan is done in "):
    interim()
  todo = runs.prepare(plan)
  assert [(u.row.name, u.repeat) for u in todo] == [
      ("transformer", 0), ("duration_only", 0), ("duration_only", 1)]
  monkeypatch.setattr(runs, "run_units", _must_not_run)
  units.run(todo[0], runner=_fake_trainer)
  results, command, progress = interim()
  # A row with no repeat done is left out (the report shows it as not run).
  assert progress == (1, 3) and list(results["all"]) == ["transformer"]
  assert "Interim report: 1 of 3 units" in (plan.workdir / "report.md").read_text()
  text = cli.format_report(plan, results, rep.judge(cli.comparisons(plan), results),
                           command, progress)
  assert "**Interim report: 1 of 3 units done** (`--interim`" in text
  line = next(l for l in text.splitlines() if l.startswith("| all | transformer | "))
  assert "not run" in line, line
  units.run(todo[1])
  results, _, progress = interim()
  # A row with one of its two repeats done is reported on that one.
  assert progress == (2, 3)
  assert {n: s.repeats for n, s in results["all"].items()} == {
      "transformer": 1, "duration_only": 1}
  units.run(todo[2])
  results, _, progress = interim()
  assert progress is None and results["all"]["duration_only"].repeats == 2
  assert "Interim" not in rep.provenance("cmd", progress)[0]
  capsys.readouterr()


def test_a_damaged_folds_file_is_named_with_what_to_do(tmp_path):
  plan = _plan(tmp_path / "work")
  plan.workdir.mkdir()
  plan.folds_path.write_text('{"version": 1, "k": 2, "rec')
  with pytest.raises(app.UsageError, match="folds.json: folds file: not valid JSON .*"
                     "deleted and drawn again"):
    _dry_run(plan)
