"""Config validation: one pass before any data is loaded or anything is written."""

import re
import subprocess
import sys

import numpy as np
import pytest

from configs import downstream as downstream_configs
from configs import pretrain as pretrain_configs
from coughjax import data
from coughjax.train import run
from coughjax.train import validate
from tests.conftest import REPO


def _pretrain(**overrides):
  config = pretrain_configs.get_config("transformer_m50,runlocal")
  for key, value in overrides.items():
    *path, leaf = key.split(".")
    node = config
    for p in path:
      node = node[p]
    node[leaf] = value
  return config


@pytest.mark.parametrize("module", [pretrain_configs, downstream_configs])
def test_every_variant_is_valid(module, tmp_path):
  for variant in module.VARIANTS:
    for arg in (variant, f"{variant},runlocal"):
      config = module.get_config(arg)
      if config.task == "downstream" and config.encoder_a.init == "audioset":
        with pytest.raises(validate.ConfigError, match="config.encoder_a.init='audioset': "
                                                       "'audioset' needs .* checkpoint"):
          validate.check(config)
        config.encoder_a.checkpoint = str(tmp_path)
      validate.check(config)
      validate.check(config, num_devices=4)


@pytest.mark.parametrize("key,value,allowed", [
    ("batch_size", 0, "must be an integer >= 1"),
    ("batch_size", -8, "must be an integer >= 1"),
    ("optim.learning_rate", -1.0, r"must be a finite number in \(0, inf\)"),
    ("optim.learning_rate", float("nan"), r"must be a finite number in \(0, inf\)"),
    ("model.mask_rate", 1.5, r"must be a finite number in \[0, 1\]"),
    ("num_epochs", -1, r"must be an integer >= 0 \(0 builds the data only"),
    ("eval_batch_size", 0, "must be an integer >= 1"),
    ("model.similarity", "dot", "must be one of 'bilinear', 'cosine'"),
    ("model.name", "lstm", "must be one of 'gru', 'transformer', 'vggish'"),
    ("model.transformer.dropout", 1.0, r"must be a finite number in \[0, 1\)"),
    ("model.transformer.num_heads", 3, "must divide model.transformer.d_model=64"),
    ("model.chunk_size", -1, "must be an integer >= 0 or 'auto'"),
    ("model.temperature", 0.0, r"must be a finite number in \(0, inf\)"),
    ("optim.plateau_factor", 1.0, r"must be a finite number in \(0, 1\)"),
    ("features.sample_rate", 0, "must be an integer >= 1"),
    ("features.winstep", 0.0, r"must be a finite number in \(0, inf\)"),
    ("data.name", "coswarra", "must be one of synthetic, coswara"),
    ("data.split", (0.5, 0.5, 0.5), "must be 3 fractions"),
])
def test_bad_values_stop_before_anything_is_loaded_or_written(key, value, allowed, tmp_path,
                                                              monkeypatch):
  monkeypatch.setattr(data, "load_splits", lambda *a, **k: pytest.fail("data loaded"))
  config = _pretrain(**{key: value})
  config.lock()
  workdir = tmp_path / "run"
  with pytest.raises(validate.ConfigError, match=re.escape(f"config.{key}={value!r}: ")
                     + allowed):
    run.run(config, str(workdir))
  assert not workdir.exists()


def test_every_problem_is_listed_at_once():
  config = _pretrain(batch_size=-8, **{"model.mask_rate": 1.5, "optim.learning_rate": -1.0})
  with pytest.raises(validate.ConfigError) as e:
    validate.check(config)
  assert str(e.value).startswith("3 invalid config value(s); nothing was loaded or written")
  for key in ("batch_size=-8", "model.mask_rate=1.5", "optim.learning_rate=-1.0"):
    assert f"config.{key}: " in str(e.value)


def test_batches_must_split_over_the_devices():
  validate.check(_pretrain(batch_size=16), num_devices=4)
  with pytest.raises(validate.ConfigError, match="config.batch_size=6: must be a multiple of "
                                                 "the 4 devices"):
    validate.check(_pretrain(batch_size=6), num_devices=4)
  with pytest.raises(validate.ConfigError, match="config.eval_batch_size=2: must be at least "
                                                 "the 4 devices"):
    validate.check(_pretrain(eval_batch_size=2), num_devices=4)
  config = downstream_configs.get_config("transformer,runlocal")
  config.eval_batch_size = 6
  with pytest.raises(validate.ConfigError, match="config.eval_batch_size=6: must be a "
                                                 "multiple of the 4 devices"):
    validate.check(config, num_devices=4)
  config = downstream_configs.get_config("transformer,runlocal")
  config.runs_impl = "pmap"
  with pytest.raises(validate.ConfigError, match="config.runs_impl='pmap': must be one of "
                                                 "'auto', 'map', 'vmap'"):
    validate.check(config)


def test_data_settings_are_checked_early(tmp_path):
  config = downstream_configs.get_config("transformer,runlocal")
  config.data.name, config.data.root = "covid19_cough", str(tmp_path / "nowhere")
  config.data.label = "covid_status"
  with pytest.raises(validate.ConfigError) as e:
    validate.check(config)
  assert "config.data.root=" in str(e.value) and "must be an existing folder" in str(e.value)
  assert "config.data.label='covid_status': must be one of '', 'covid19'" in str(e.value)
  config.data.name, config.data.roots = "coswara+covid19_cough", "coswara"
  with pytest.raises(validate.ConfigError, match="config.data.roots='coswara': .* not "
                                                 "name=path"):
    validate.check(config)


def test_front_end_folds_and_dedup_are_checked_early(tmp_path):
  config = _pretrain(**{"features.normalise": "loud", "data.folds": str(tmp_path / "f.json"),
                        "data.fold": -1})
  config.data.dedup = "maybe"
  with pytest.raises(validate.ConfigError) as e:
    validate.check(config)
  for want in ("config.features.normalise='loud': must be one of '', 'gain', 'cmn'",
               "config.data.folds=", "must be '' or an existing folds file",
               "config.data.fold=-1: must be an integer >= 0", "config.data.dedup='maybe'"):
    assert want in str(e.value)


def test_augmentation_is_checked_early():
  config = downstream_configs.get_config("transformer,runlocal")
  config.augment.update(gain_db=-3.0, time_masks=-1, time_mask_width=97, freq_masks=-2,
                        freq_mask_width=-2)
  with config.augment.unlocked():
    config.augment.mixup = 0.2
  with pytest.raises(validate.ConfigError) as e:
    validate.check(config)
  for want in ("config.augment.gain_db=-3.0: must be a finite number in [0, inf)",
               "config.augment.time_masks=-1: must be an integer >= 0",
               "config.augment.time_mask_width=97: a mask of 97 frames could blank all 96 "
               "frames of a clip",
               "(features.clip_frames=96)",
               "config.augment.freq_mask_width=-2: must be an integer >= 0",
               "config.augment.mixup=0.2: unknown field"):
    assert want in str(e.value)


def test_masks_that_together_could_blank_a_clip_are_checked_early():
  """The rule is augment's (`augment.mask_problem`), checked before any data."""
  config = downstream_configs.get_config("transformer,runlocal")
  config.augment.update(time_masks=2, time_mask_width=48, freq_masks=3, freq_mask_width=21)
  with pytest.raises(validate.ConfigError) as e:
    validate.check(config)
  assert ("config.augment.time_mask_width=48: 2 masks of up to 48 frames could blank all "
          "96 frames of a clip") in str(e.value)
  assert "freq_mask_width" not in str(e.value)  # 63 of 64 bands at most
  config.augment.time_mask_width = 47
  validate.check(config)


def test_a_validation_split_without_both_classes_is_an_error():
  config = downstream_configs.get_config("transformer,runlocal")
  validate.check_classes(np.array([0, 1, 0]), "validation", config)
  with pytest.raises(validate.ConfigError,
                     match=r"ensemble/run_1: the validation split has 0 positive and 3 "
                           r"negative recordings \(data.name='synthetic', data.split=\(0.6, "
                           r"0.2, 0.2\), data.split_seed=0\); its ROC-AUC needs both "
                           r"classes. .*data.split"):
    validate.check_classes(np.zeros(3), "validation", config, "ensemble/run_1")


def test_zero_epochs_builds_the_data_only(tmp_path, monkeypatch):
  monkeypatch.setenv("COUGHJAX_CACHE", str(tmp_path / "cache"))  # counts its packs
  config = _pretrain(num_epochs=0)
  config.lock()
  assert run.run(config, str(tmp_path / "run")) is None
  assert not (tmp_path / "run").exists()
  packs = tmp_path / "cache" / "packed"
  assert len(list(packs.glob("*.index.npz"))) == 1  # one pack for train and val


def test_launch_exits_naming_the_keys_before_creating_the_workdir(tmp_path):
  workdir = tmp_path / "run"
  proc = subprocess.run(
      [sys.executable, "launch.py", "--config=configs/pretrain.py:transformer_m50,runlocal",
       f"--workdir={workdir}", "--config.batch_size=-8", "--config.model.mask_rate=1.5"],
      cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode != 0
  assert "config.batch_size=-8: must be an integer >= 1" in proc.stderr
  assert "config.model.mask_rate=1.5: must be a finite number in [0, 1]" in proc.stderr
  assert not workdir.exists()
