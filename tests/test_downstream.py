"""Downstream classifier: every paper row's runlocal variant, frozen vs fine-tuned,
evaluation metrics, the missing-checkpoint message, predict and the reproduction
report."""

import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import soundfile as sf
import soxr

from configs import downstream as downstream_configs
from configs import pretrain as pretrain_configs
from coughjax import audio
from coughjax import evaluate
from coughjax import paper
from coughjax import predict
from coughjax import reproduce
from coughjax.data import synthetic
from coughjax.models import vggish
from coughjax.models import vggish_convert
from coughjax.train import downstream
from coughjax.train import run
from coughjax.train import trainer

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
  transformer and gru; the others are links: only encoder weights are loaded) and a
  converted VGGish 'AudioSet' checkpoint."""
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
      os.symlink(runs / f"{arch}_runlocal", runs / f"{v}_runlocal")
  # Zero weights compress to almost nothing on disk; real ones come from a .pth file.
  zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), vggish.abstract_params())
  vggish_convert.save_flax_params(zeros, root / "vggish_audioset")
  return root


def _params(path):
  params, _ = trainer.restore_params(path)
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
  for name in ("results.json", "results.md", "roc.png", "curves.png", "config.json"):
    assert (workdir / name).is_file(), name
  assert json.loads((workdir / "results.json").read_text())["num_runs"] == 2
  s = results["summary"]["recording"]
  assert 0 <= s["accuracy_mean"] <= 100 and s["avg_f1"] >= 0
  assert "| " + variant + " |" in (workdir / "results.md").read_text()
  if variant in ("transformer_cp_frozen", "transformer_cp_ft", "gru_cp_frozen"):
    before = _params(workspace / "runs" / f"{config.encoder_a.pretrain}_runlocal" /
                     "best")["encoder"]
    after = _params(workdir / "run_0" / "checkpoints")["encoders_0"]
    same = [np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before),
                                                 jax.tree.leaves(after))]
    if "frozen" in variant:
      assert all(same), "a frozen encoder changed"
    else:
      assert not all(same), "a fine-tuned encoder did not change"


def test_get_config_returns_independent_configs():
  config = downstream_configs.get_config("vggish_ft")
  config.encoder_a.checkpoint = "/somewhere"
  assert downstream_configs.get_config("vggish_ft").encoder_a.checkpoint == ""


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
  """A finished downstream workdir (runlocal Transformer-CP, fine-tuned)."""
  old = os.getcwd()
  os.chdir(workspace)
  try:
    config = downstream_configs.get_config("transformer_cp_ft,runlocal")
    config.lock()
    workdir = workspace / "out" / "predict_model"
    run.run(config, str(workdir))
  finally:
    os.chdir(old)
  return workdir


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
  monkeypatch.setattr(predict, "MIN_BATCH", 64)
  after = [predict.load(trained)(w, 16000) for w in waves]
  np.testing.assert_allclose(after, before, rtol=1e-6)


def test_predict_cli_scores_files_and_names_bad_ones(trained, tmp_path):
  good = tmp_path / "cough.wav"
  sf.write(good, synthetic.render("synthetic://1/5/cough-shallow", 16000), 16000)
  short = tmp_path / "short.wav"
  sf.write(short, np.full(800, 0.1, np.float32), 16000)  # 0.05 s < min_duration
  proc = subprocess.run([sys.executable, "-m", "coughjax.predict", f"--workdir={trained}",
                         str(good), str(short)], capture_output=True, text=True,
                        check=False, timeout=600)
  assert proc.returncode != 0  # one file could not be scored
  path, prob = proc.stdout.strip().split("\t")
  assert path == str(good) and 0.0 < float(prob) < 1.0
  assert str(short) in proc.stderr and "1 of 2 files could not be scored" in proc.stderr


def test_reproduce_writes_ours_beside_the_paper(workspace):
  # Table 3's rows fine-tune Transformer-CP encoders pre-trained at 0-100 % masking;
  # their runlocal pre-training runs are in the workspace already (finished, reused).
  report = reproduce.run_table(3, workspace / "runs", runlocal=True)
  rows = [line for line in report.splitlines() if line.startswith("| ")][1:]
  assert [r.split("|")[1].strip() for r in rows] == list(paper.TABLES[3])
  for variant, r in zip(paper.TABLES[3], rows):
    # Ours (a mean (std)) beside the paper's AUC from coughjax.paper.
    assert re.search(r"\| \d+\.\d\d \(\d+\.\d\d\) \| " + f"{paper.TABLES[3][variant]['auc']:.2f}",
                     r), r
  assert "synthetic" in report


def test_resuming_another_models_checkpoint_is_a_clear_error(workspace, tmp_path):
  # runs/gru_cosine_runlocal holds the (bilinear) gru run: restoring it into a model
  # with a cosine head must say what is wrong, not fail deep inside Orbax.
  config = pretrain_configs.get_config("gru_cosine,runlocal")
  config.lock()
  with pytest.raises(ValueError, match="does not fit this config's model"):
    run.run(config, str(workspace / "runs" / "gru_cosine_runlocal"))
