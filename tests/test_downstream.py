"""Downstream classifier: every paper row's runlocal variant, frozen vs fine-tuned,
evaluation metrics, the missing-checkpoint message, predict and the reproduction
report."""

import functools
import json
import os
import random
import re
import shutil
import subprocess
import sys
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import soundfile as sf
import soxr

import conftest
from configs import downstream as downstream_configs
from configs import pretrain as pretrain_configs
from coughjax import audio
from coughjax import checkpoints
from coughjax import data
from coughjax import files
from coughjax import evaluate
from coughjax import infer
from coughjax import inputs
from coughjax import models
from coughjax import predict
from coughjax.data import synthetic
from coughjax.models import classifier as classifier_lib
from coughjax.models import randomness
from coughjax.models import vggish
from coughjax.models import vggish_convert
from coughjax.train import downstream
from coughjax.train import fingerprint
from coughjax.train import run
from coughjax.train import validate

PAPER_ROWS = [
    "vggish", "vggish_frozen", "vggish_ft", "gru", "transformer", "gru_cp_frozen",
    "gru_cp_ft", "transformer_cp_frozen", "transformer_cp_ft", "gru_cp_cosine_ft",
    "transformer_cp_cosine_ft", *[f"transformer_cp_m{r}_ft" for r in (0, 25, 50, 75, 100)],
    "ens_vggish_transformer", "ens_gru_transformer", "ens_gru_cp_transformer_cp",
    *[f"ens_transformer_cp_ds{r}" for r in (0, 25, 50, 75, 100)], "ensemble"]


def test_every_paper_row_has_a_variant():
  assert set(PAPER_ROWS) <= set(downstream_configs.VARIANTS)
  best = downstream_configs.get_config("ensemble")
  assert (best.encoder_a.pretrain, best.encoder_b.pretrain) == ("transformer_m50",) * 2
  assert best.model.mask_rate == 0.5 and best.model.mask_at_eval
  assert best.batch_size == 128 and best.num_runs == 5
  assert downstream_configs.get_config("transformer_cp_m75_ft").encoder_a.pretrain == (
      "transformer_m75")


@pytest.fixture(scope="session")
def workspace(tmp_path_factory):
  """A folder with runlocal pre-training runs for every CP variant (two real runs,
  transformer and gru; the others are copies of them recorded under their own
  config, `fingerprint.record`: only encoder weights are loaded) and a converted
  VGGish 'AudioSet' checkpoint."""
  root = tmp_path_factory.mktemp("workspace")
  runs = root / "runs"
  for arch, variants in {"transformer_m0": ("transformer_m25", "transformer_m50",
                                            "transformer_m75", "transformer_m100",
                                            "transformer_cosine"),
                         "gru": ("gru_cosine",)}.items():
    config = pretrain_configs.get_config(f"{arch},runlocal")
    config.num_epochs = 1
    config.lock()
    run.run(config, str(runs / f"{arch}_runlocal"))
    for v in variants:
      shutil.copytree(runs / f"{arch}_runlocal", runs / f"{v}_runlocal")
      config = pretrain_configs.get_config(f"{v},runlocal")
      config.num_epochs = 1
      fingerprint.record(config, runs / f"{v}_runlocal")
  # Zero weights compress to almost nothing on disk; real ones come from a .pth file.
  zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), vggish.abstract_params())
  vggish_convert.save_flax_params(zeros, root / "vggish_audioset")
  return root


def _params(path):
  params, _ = checkpoints.restore_params(path)
  return params


@pytest.mark.parametrize("variant", PAPER_ROWS)
def test_runlocal_variant(variant, workspace, monkeypatch):
  monkeypatch.chdir(workspace)
  config = downstream_configs.get_config(f"{variant},runlocal")
  if config.encoder_a.init == "audioset":
    config.encoder_a.checkpoint = str(workspace / "vggish_audioset")
  if "vggish" in variant:
    # VGGish costs ~1.7 GFLOP per clip: one epoch of non-overlapping clips keeps
    # these rows to seconds on a 2-core CI machine.
    config.num_epochs = 1
    config.features.train_hop = config.features.clip_frames
  config.lock()
  workdir = workspace / "out" / variant
  results = run.run(config, str(workdir))
  for name in ("results.json", "results.md", "roc.png", "curves.png", "config.json",
               "encoders.json"):
    assert (workdir / name).is_file(), name
  assert json.loads((workdir / "results.json").read_text()) == json.loads(
      json.dumps(results))
  assert results["num_runs"] == 2 and len(results["runs"]) == 2
  _check_results_against_split(config, workdir, results)
  # The report's row is the numpy mean (std) of the runs' recording metrics.
  s = results["summary"]["recording"]
  for k in evaluate.METRICS:
    values = [r["recording"][k] for r in results["runs"]]
    np.testing.assert_allclose([s[f"{k}_mean"], s[f"{k}_std"]],
                               [np.mean(values), np.std(values)])
  assert evaluate.format_row(variant, s) in (workdir / "results.md").read_text()
  _check_encoder_params(config, workspace, workdir)


def _check_results_against_split(config, workdir, results):
  """Every run's saved scores, labels and metrics against an independent
  recomputation: the run's own test split, sklearn on the saved scores, the CSV."""
  for i, r in enumerate(results["runs"]):
    test = data.load_splits(downstream._run_config(config, i), ("test",),
                            labelled=True)["test"]
    labels = np.array(r["labels"])
    scores = np.array(r["scores"])
    np.testing.assert_array_equal(labels, test.labels)
    assert scores.shape == (len(test),) and np.all((scores > 0) & (scores < 1))
    rec = r["recording"]
    assert (rec["positives"], rec["negatives"]) == (int(test.labels.sum()),
                                                    int((1 - test.labels).sum()))
    clips_per_rec = (test.lengths - test.clip_frames) // config.features.eval_hop + 1
    assert r["clip"]["positives"] + r["clip"]["negatives"] == clips_per_rec.sum()
    assert r["clip"]["positives"] == clips_per_rec[test.labels == 1].sum()
    pred = scores >= config.threshold
    assert rec["accuracy"] == pytest.approx(100 * np.mean(pred == labels))
    true_pos = np.sum(pred & (labels == 1))
    assert rec["precision"] == pytest.approx(100 * true_pos / max(pred.sum(), 1))
    assert rec["recall"] == pytest.approx(100 * true_pos / max(labels.sum(), 1))
    if len(np.unique(labels)) == 2:
      # Mann-Whitney: the fraction of (positive, negative) pairs ranked right.
      pos, neg = scores[labels == 1][:, None], scores[labels == 0][None, :]
      assert rec["auc"] == pytest.approx(100 * np.mean((pos > neg) + 0.5 * (pos == neg)))
    else:
      assert np.isnan(rec["auc"])
    rows = files.read_predictions(workdir / f"run_{i}" / downstream.PREDICTIONS_FILE)
    assert [row["path"] for row in rows] == [rc.path for rc in test.records]
    assert [row["label"] for row in rows] == test.labels.tolist()
    np.testing.assert_allclose([row["probability"] for row in rows], scores, rtol=1e-12)


def _check_encoder_params(config, workspace, workdir):
  """Frozen pre-trained encoders stay bit-identical; fine-tuned CP encoders change (in
  the best checkpoint, after at least one epoch)."""
  for i, key in enumerate(downstream_configs.branch_keys(config)):
    branch = config[key]
    if branch.init == "scratch":
      continue
    if branch.init == "cp":
      before = _params(workspace / "runs" / f"{branch.pretrain}_runlocal" / "best")["encoder"]
    else:
      before = vggish_convert.load_flax_params(branch.checkpoint)
    for run_index in range(config.num_runs):
      after = _params(workdir / f"run_{run_index}" / "best")[
          classifier_lib.encoder_param_name(i)]
      assert jax.tree.structure(before) == jax.tree.structure(after)
      same = [np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before),
                                                   jax.tree.leaves(after))]
      if branch.frozen:
        assert all(same), f"{key}: a frozen encoder changed (run {run_index})"
      elif branch.init == "cp":
        # (The all-zero stand-in for AudioSet VGGish has zero gradients through its
        # ReLUs, so only CP encoders must move when fine-tuned.)
        assert not all(same), f"{key}: a fine-tuned encoder did not change"


def test_get_config_returns_independent_configs():
  config = downstream_configs.get_config("vggish_ft")
  config.encoder_a.checkpoint = "/somewhere"
  assert downstream_configs.get_config("vggish_ft").encoder_a.checkpoint == ""


def _module_dropouts(model, config):
  """{module path: (class name, dropout rate)} of every module of `model` that has
  a dropout rate (a `dropout` field, or ClipDropout's `rate`), as initialised."""
  seen = {}

  def record(next_fun, args, kwargs, context):
    m = context.module
    rate = (m.rate if isinstance(m, (nn.Dropout, randomness.ClipDropout))
            else getattr(m, "dropout", None))
    if rate is not None:
      seen["/".join(m.scope.path)] = (type(m).__name__, rate)
    return next_fun(*args, **kwargs)

  x = jax.ShapeDtypeStruct((2, config.features.clip_frames, config.features.nfilt),
                           jnp.float32)
  with nn.intercept_methods(record):
    jax.eval_shape(lambda x: model.init({"params": jax.random.PRNGKey(0),
                                         "mask": jax.random.PRNGKey(0),
                                         "dropout": jax.random.PRNGKey(0)}, x,
                                        train=True), x)
  return seen


# The paper's dropout (§5.2, Fig. 5: 0.2) for its sequence encoders and the head;
# VGGish was trained without dropout (0.0), and nothing asks for it downstream.
EXPECTED_DROPOUT = {"transformer": 0.2, "gru": 0.2, "vggish": 0.0}


@pytest.mark.parametrize("variant", sorted(downstream_configs.VARIANTS))
def test_every_module_gets_its_own_dropout(variant, workspace, monkeypatch):
  monkeypatch.chdir(workspace)  # CP branches read their pre-training config
  config = downstream_configs.get_config(f"{variant},runlocal")
  names = [config[k].name for k in downstream_configs.branch_keys(config)]
  seen = _module_dropouts(downstream.build_classifier(config), config)
  for i, name in enumerate(names):
    mine = {p: v for p, v in seen.items() if p.split("/")[0] == f"encoders_{i}"}
    assert mine, f"no module of {name} seen"
    assert {rate for _, rate in mine.values()} == {EXPECTED_DROPOUT[name]}, (name, mine)
    if name == "vggish":  # the two dropout layers after fc1_1 and fc1_2
      assert sum(cls == "ClipDropout" for cls, _ in mine.values()) == 2
  head = {p: v for p, v in seen.items() if not p.startswith("encoders_")}
  assert head == {"": ("Classifier", 0.2), "ClipDropout_0": ("ClipDropout", 0.2)}
  spec = downstream.model_spec(config)
  assert [e["dropout"] for e in spec["encoders"]] == [EXPECTED_DROPOUT[n] for n in names]
  assert spec["head_dropout"] == 0.2

  # An override reaches its own encoder only; the head has its own knob.
  config.model.vggish.dropout = 0.5
  config.model.head_dropout = 0.1
  seen = _module_dropouts(downstream.build_classifier(config), config)
  for i, name in enumerate(names):
    want = 0.5 if name == "vggish" else EXPECTED_DROPOUT[name]
    assert {rate for p, (_, rate) in seen.items()
            if p.split("/")[0] == f"encoders_{i}"} == {want}
  assert seen["ClipDropout_0"] == ("ClipDropout", 0.1)
  assert [e["dropout"] for e in downstream.model_spec(config)["encoders"]] == [
      0.5 if n == "vggish" else EXPECTED_DROPOUT[n] for n in names]


def test_encoder_settings_are_checked():
  config = downstream_configs.get_config("vggish,runlocal")
  config.model.vggish.d_model = 64
  with pytest.raises(ValueError, match=r"model.vggish sets \['d_model'\], which VGGish"):
    downstream.build_classifier(config)


def test_missing_pretraining_says_what_to_run(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  config = downstream_configs.get_config("ensemble")
  with pytest.raises(FileNotFoundError, match=r"runs/transformer_m50(.|\n)*python launch\.py "
                     r"--config=configs/pretrain\.py:transformer_m50\n"):
    downstream.Setup.create(config)
  config = downstream_configs.get_config("vggish_ft")
  with pytest.raises(ValueError, match="init='audioset' needs"):
    downstream.initial_encoder_params(config, "encoder_a")


def test_metrics_and_average_f1():
  labels = np.array([0, 0, 1, 1, 1])
  scores = np.array([0.1, 0.6, 0.4, 0.8, 0.9])
  m = evaluate.binary_metrics(labels, scores)
  assert m["auc"] == pytest.approx(100 * 5 / 6)
  assert m["precision"] == pytest.approx(100 * 2 / 3)
  assert m["recall"] == pytest.approx(100 * 2 / 3)
  assert m["accuracy"] == pytest.approx(60.0)
  runs = [dict(auc=80, precision=60, recall=40, accuracy=70),
          dict(auc=90, precision=80, recall=60, accuracy=80)]
  s = evaluate.summarize(runs)
  assert s["auc_mean"] == 85 and s["auc_std"] == 5
  assert s["avg_f1"] == pytest.approx(2 * 70 * 50 / 120)  # from average P and R
  np.testing.assert_allclose(
      evaluate.recording_scores(np.array([0.2, 0.4, 1.0]), np.array([0, 0, 1]), 2),
      [0.3, 1.0])
  with pytest.raises(ValueError, match="no clip scores"):
    evaluate.recording_scores(np.array([0.2]), np.array([0]), 2)


def test_ensemble_branches_draw_their_own_masks(workspace, monkeypatch):
  monkeypatch.chdir(workspace)
  config = downstream_configs.get_config("ensemble,runlocal")
  setup = downstream.Setup.create(config)
  state = setup.init_state(config, jax.random.PRNGKey(0))
  assert set(state.params) == {"encoders_0", "encoders_1", "fc"}
  # Both branches start from the same checkpoint ...
  for a, b in zip(jax.tree.leaves(state.params["encoders_0"]),
                  jax.tree.leaves(state.params["encoders_1"])):
    np.testing.assert_array_equal(a, b)
  # ... yet differ in output because each draws its own DS mask, also at inference.
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 96, 64))
  logits, inter = setup.model.apply(
      {"params": state.params}, x, train=False, rngs={"mask": jax.random.PRNGKey(2)},
      capture_intermediates=lambda mdl, method: mdl.name in ("encoders_0", "encoders_1"),
      mutable=["intermediates"])
  h0 = inter["intermediates"]["encoders_0"]["__call__"][0]
  h1 = inter["intermediates"]["encoders_1"]["__call__"][0]
  assert logits.shape == (4,) and jnp.all(jnp.isfinite(logits))
  assert not np.allclose(h0, h1)


@pytest.fixture(scope="module")
def trained(workspace):
  """A finished downstream workdir: the paper's best, the runlocal `ensemble`
  (two Transformer-CP branches with DS masking at 50 %, also at inference)."""
  old = os.getcwd()
  os.chdir(workspace)
  try:
    config = downstream_configs.get_config("ensemble,runlocal")
    config.lock()
    workdir = workspace / "out" / "predict_model"
    run.run(config, str(workdir))
  finally:
    os.chdir(old)
  return workdir


def _write_wav(path, address):
  # Float samples: the file decodes to exactly the waveform the data pipeline renders.
  sf.write(path, synthetic.render(address, 16000), 16000, subtype="FLOAT")
  return str(path)


def test_predict_reproduces_the_evaluation_scores(trained, tmp_path):
  rows = files.read_predictions(predict.best_run(trained) / downstream.PREDICTIONS_FILE)
  assert len(rows) >= 2
  wavs = {_write_wav(tmp_path / f"test_{i}.wav", r["path"]): r for i, r in enumerate(rows)}
  extras = [_write_wav(tmp_path / f"extra_{i}.wav", f"synthetic://7/{i}/cough-heavy")
            for i in range(2)]
  # Scored beside other files and in another order, from other paths: the same
  # probabilities as the evaluation loop wrote.
  order = [extras[0], *reversed(list(wavs)), extras[1]]
  proc = subprocess.run([sys.executable, "-m", "coughjax.predict", f"--workdir={trained}",
                         *order], capture_output=True, text=True, check=True, timeout=600)
  cli = dict(line.split("\t") for line in proc.stdout.strip().splitlines())
  assert sorted(cli) == sorted(order)
  for path, r in wavs.items():
    assert float(cli[path]) == pytest.approx(r["probability"], abs=1e-5), r["path"]
  shuffled = list(wavs) + extras
  random.Random(0).shuffle(shuffled)
  api = dict(predict.predict_files(trained, shuffled))
  predict_fn = predict.load(trained)
  for path, r in wavs.items():
    assert api[path] == pytest.approx(r["probability"], abs=1e-5), r["path"]
    wave = synthetic.render(r["path"], 16000)
    assert predict_fn(wave, 16000) == pytest.approx(r["probability"], abs=1e-5)


def _test_clips(trained):
  """(model, params, clips [n, T, mel], rec_keys [n, 2], clip index [n], store) of
  the best run's test recordings."""
  best = predict.best_run(trained)
  run_index = int(best.name.split("_")[1])
  run_cfg = downstream._run_config(
      downstream_configs.get_config("ensemble,runlocal"), run_index)
  store = data.load_splits(run_cfg, ("test",), labelled=True)["test"]
  starts, rec = store.clip_starts(run_cfg.features.eval_hop)
  clip = (starts - store.offsets[rec]) // run_cfg.features.eval_hop
  spec = json.loads((trained / predict.ENCODERS_FILE).read_text())
  model = classifier_lib.Classifier(
      [models.build_encoder(c) for c in spec["encoders"]],
      tuple(spec["frozen"]), dropout=spec["head_dropout"])
  params, _ = checkpoints.restore_params(best / "best")
  keys = infer.store_recording_keys(store)[rec]
  return model, params, store.gather(starts), keys, clip, store, run_cfg


def test_clip_probability_does_not_depend_on_the_batch(trained):
  model, params, x, keys, clip, store, run_cfg = _test_clips(trained)
  probs = jax.jit(functools.partial(infer.probabilities, model))
  chunked = jax.jit(functools.partial(infer.probabilities, model, chunk_size=4))
  whole = np.asarray(probs(params, x, keys, clip))
  n = len(x)
  assert n >= 8 and np.max(clip) >= 1  # several recordings of several clips
  perm = np.random.default_rng(0).permutation(n)
  permuted = np.asarray(chunked(params, x[perm], keys[perm], clip[perm]))
  np.testing.assert_allclose(permuted, whole[perm], atol=1e-5)
  for i in (0, n - 1):  # alone, in a batch padded with zeros
    pad = np.zeros((3,) + x.shape[1:], np.float32)
    alone = probs(params, np.concatenate([x[i:i + 1], pad]),
                  np.repeat(keys[i:i + 1], 4, 0), np.full(4, clip[i]))
    assert float(alone[0]) == pytest.approx(float(whole[i]), abs=1e-5)
  # The evaluation loop at other batch sizes gives the same clip probabilities.
  predict_step = downstream.make_steps(model, run_cfg)[1]
  for batch_size in (16, 5):
    run_cfg.eval_batch_size = batch_size
    p, rec = downstream.predict_clips(predict_step, ParamsOnly(params), store, run_cfg)
    np.testing.assert_array_equal(rec, np.repeat(np.arange(len(store)), np.bincount(rec)))
    np.testing.assert_allclose(p, whole, atol=1e-5)
  # ... and the masks matter: other recording keys give other probabilities.
  other = np.asarray(probs(params, x, keys + 1, clip))
  assert np.max(np.abs(other - whole)) > 1e-4


class ParamsOnly(NamedTuple):
  """What `predict_step` reads of a TrainState."""
  params: Any


def test_predict_api_is_a_repeatable_probability(trained):
  predict_fn = predict.load(trained)
  wave = synthetic.render("synthetic://1/3/cough-heavy", 16000)
  p = predict_fn(wave, 16000)
  assert 0.0 < p < 1.0 and predict_fn(wave, 16000) == p
  # Another rate is resampled to the model's 16 kHz first: nearly the same answer.
  wave_44k = soxr.resample(wave, 16000, 44100)
  assert abs(predict_fn(np.stack([wave_44k, wave_44k], axis=1), 44100) - p) < 0.05
  with pytest.raises(audio.AudioError, match="silent"):
    predict_fn(np.zeros(16000, np.float32), 16000)
  with pytest.raises(FileNotFoundError, match="not found; is .* a downstream workdir"):
    predict.load(trained / "run_0")


def test_predict_padding_changes_nothing(trained, monkeypatch):
  # Clips are scored in zero-padded power-of-two batches; another padding gives the
  # same probability.
  waves = [synthetic.render(f"synthetic://1/{i}/cough-heavy", 16000) for i in (3, 4)]
  before = [predict.load(trained)(w, 16000) for w in waves]
  monkeypatch.setattr(inputs, "MIN_BATCH", 64)
  after = [predict.load(trained)(w, 16000) for w in waves]
  np.testing.assert_allclose(after, before, rtol=1e-6)


def test_predict_cli_scores_files_and_names_bad_ones(trained, tmp_path):
  good = _write_wav(tmp_path / "cough.wav", "synthetic://1/5/cough-shallow")
  short = tmp_path / "short.wav"
  sf.write(short, np.full(800, 0.1, np.float32), 16000)  # 0.05 s < min_duration
  proc = subprocess.run([sys.executable, "-m", "coughjax.predict", f"--workdir={trained}",
                         str(good), str(short)], capture_output=True, text=True,
                        check=False, timeout=600)
  assert proc.returncode != 0  # one file could not be scored
  path, prob = proc.stdout.strip().split("\t")
  expected = predict.load(trained)(synthetic.render("synthetic://1/5/cough-shallow", 16000),
                                   16000)
  assert path == good and float(prob) == pytest.approx(expected, abs=1e-6)
  assert str(short) in proc.stderr and "1 of 2 files could not be scored" in proc.stderr
  assert not re.search(r"^I\d{4} ", proc.stderr, re.M)  # no INFO logs unless --verbosity


def test_a_one_class_validation_split_stops_before_any_training(tmp_path, monkeypatch):
  """Run 1's validation split holds negatives only: the command stops, naming it,
  before run 0 trains (every run's splits are checked first)."""
  config = downstream_configs.get_config("transformer,runlocal")
  config.lock()
  load = data.load_splits

  def negatives_only_in_run_1(cfg, needed, labelled=False):
    stores = load(cfg, needed, labelled)
    if cfg.data.split_seed == config.data.split_seed + 1:
      stores["val"].labels = np.zeros_like(stores["val"].labels)
    return stores

  monkeypatch.setattr(data, "load_splits", negatives_only_in_run_1)
  with pytest.raises(validate.ConfigError, match=r"transformer/run_1: the validation split "
                                                 r"has 0 positive and \d+ negative recordings"):
    run.run(config, str(tmp_path))
  assert not list(tmp_path.glob("run_*"))


def test_resuming_another_models_checkpoint_is_a_clear_error(workspace, tmp_path):
  # runs/gru_cosine_runlocal holds the (bilinear) gru run: restoring it into a model
  # with a cosine head must say what is wrong, not fail deep inside Orbax.
  config = pretrain_configs.get_config("gru_cosine,runlocal")
  config.lock()
  with pytest.raises(ValueError, match="does not fit this config's model"):
    run.run(config, str(workspace / "runs" / "gru_cosine_runlocal"))


def test_two_processes_score_every_recording_as_one(tmp_path):
  """`launch.py` of a downstream run on 2 processes x 1 device (gloo): validation and
  test see every recording (the predict step gathers them), both processes take the
  same decisions, and process 0 writes the test predictions of 1 process."""
  flags = ["--config=configs/downstream.py:transformer,runlocal", "--config.num_runs=1"]
  one = subprocess.run([sys.executable, "launch.py", *flags, f"--workdir={tmp_path / 'one'}"],
                       cwd=conftest.REPO, capture_output=True, text=True, timeout=600,
                       check=False)
  assert one.returncode == 0, one.stderr[-3000:]
  two = conftest.run_processes("launch.py", *flags, f"--workdir={tmp_path / 'two'}")
  for p in two:
    assert p.returncode == 0, p.stdout[-3000:]
  want = files.read_predictions(tmp_path / "one" / "run_0" / downstream.PREDICTIONS_FILE)
  got = files.read_predictions(tmp_path / "two" / "run_0" / downstream.PREDICTIONS_FILE)
  assert [r["path"] for r in got] == [r["path"] for r in want]
  np.testing.assert_allclose([r["probability"] for r in got],
                             [r["probability"] for r in want], atol=1e-5, rtol=0)
  for name in ("results.json", "results.md", "roc.png", "curves.png", "encoders.json"):
    assert (tmp_path / "two" / name).is_file(), name
  assert not list((tmp_path / "two").rglob("*.tmp"))
  # Validation chose the same best checkpoint from the same (gathered) scores.
  assert json.loads((tmp_path / "two" / "results.json").read_text())["runs"][0][
      "best_step"] == json.loads((tmp_path / "one" / "results.json").read_text())["runs"][0][
          "best_step"]
