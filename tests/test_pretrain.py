"""Contrastive pre-training: runlocal end to end, 1 vs 4 devices, 2 processes, resume,
NaN stop (kill -9 and Ctrl-C: tests/test_trainer.py)."""

import json
import pathlib

import jax
import numpy as np
import pytest

import conftest
from configs import pretrain as pretrain_configs
from coughjax import checkpoints
from coughjax.train import mesh as mesh_lib
from coughjax.train import pretrain
from coughjax.train import run
from coughjax.train import stopping
from coughjax.train import trainer


def _config(arg="transformer_m50,runlocal", **overrides):
  config = pretrain_configs.get_config(arg)
  for k, v in overrides.items():
    target = config
    *path, leaf = k.split(".")
    for p in path:
      target = target[p]
    target[leaf] = v
  config.lock()
  return config


def test_every_variant_builds():
  for name in pretrain_configs.VARIANTS:
    config = pretrain_configs.get_config(f"{name},runlocal")
    assert config.batch_size == 16 and config.variant == name
    pretrain.build_model(config.model)
  full = pretrain_configs.get_config("transformer_m50")
  assert (full.batch_size, full.model.transformer.d_model, full.model.transformer.dropout,
          full.model.mask_rate,
          full.model.similarity, full.data.name) == (1024, 64, 0.2, 0.5, "bilinear",
                                                     "synthetic")
  with pytest.raises(ValueError, match="unknown config variant 'transformer_m60'"):
    pretrain_configs.get_config("transformer_m60")
  with pytest.raises(ValueError, match="unknown config option"):
    pretrain_configs.get_config("gru,fast")
  config = pretrain_configs.get_config("gru")
  config.lock()
  with pytest.raises(AttributeError):
    config.model.hiden = 3  # a typo in an override is an error


def test_runlocal_end_to_end(tmp_path):
  config = _config()
  state = run.run(config, str(tmp_path))
  lines = checkpoints.read_metrics(tmp_path)
  train = [l for l in lines if l["split"] == "train"]
  val = [l for l in lines if l["split"] == "val"]
  assert len(train) == 4 and len(val) == 2
  assert all(np.isfinite(l["loss"]) for l in lines)
  assert {"loss", "accuracy", "lr", "steps_per_sec"} <= set(train[0])
  saved = json.loads((tmp_path / "config.json").read_text())
  assert saved["model"]["mask_rate"] == 0.5 and saved["batch_size"] == 16
  assert (tmp_path / "checkpoints").is_dir() and (tmp_path / "best").is_dir()
  assert int(state.step) == 4
  # Running again finds the finished run and does nothing.
  again = run.run(config, str(tmp_path))
  np.testing.assert_array_equal(jax.tree.leaves(again.params)[0],
                                jax.tree.leaves(state.params)[0])
  assert len(checkpoints.read_metrics(tmp_path)) == len(lines)


def test_finished_run_extends_with_more_epochs(tmp_path):
  """`finished` is decided from the current config: more epochs train more."""
  run.run(_config(num_epochs=2), str(tmp_path))
  longer = run.run(_config(num_epochs=3), str(tmp_path))
  assert int(longer.step) == 6
  val = [l for l in checkpoints.read_metrics(tmp_path) if l["split"] == "val"]
  assert [l["epoch"] for l in val] == [0, 1, 2]
  # Early stopping's patience is the current config's too.
  assert stopping.is_finished({"epochs_done": 3, "bad_epochs": 2},
                             _config(num_epochs=9, early_stopping_patience=2))
  assert not stopping.is_finished({"epochs_done": 3, "bad_epochs": 2},
                                 _config(num_epochs=9, early_stopping_patience=3))


def _corrupt(step_dir: pathlib.Path) -> int:
  """Overwrites bytes of every array data file of an Orbax checkpoint."""
  files = [f for f in (step_dir / "state").rglob("*") if f.is_file() and f.parent.name == "d"]
  for f in files:
    data = bytearray(f.read_bytes())
    data[::3] = bytes((b + 77) % 256 for b in data[::3])
    f.write_bytes(bytes(data))
  return len(files)


def test_corrupted_latest_checkpoint_falls_back_to_previous(tmp_path, caplog):
  config = _config(num_epochs=2, keep_checkpoints=2)
  run.run(config, str(tmp_path))
  ckpts = tmp_path / "checkpoints"
  assert sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit()) == [3, 4]
  assert _corrupt(ckpts / "4") > 0
  with caplog.at_level("WARNING"):
    state = run.run(_config(num_epochs=3, keep_checkpoints=2), str(tmp_path))
  assert "corrupted checkpoint" in caplog.text and "/4:" in caplog.text
  assert int(state.step) == 6  # resumed at step 3, then trained to the end
  aside = list((tmp_path / "corrupted_checkpoints").iterdir())
  assert [p.name.split(".")[0] for p in aside] == ["4"]  # kept, not deleted
  # A checkpoint of another model is a config mismatch, not corruption.
  other = _config("gru,runlocal")
  model = pretrain.build_model(other.model)
  target = pretrain.init_state(model, other, jax.random.key(0))
  with pytest.raises(ValueError, match="does not fit this config's model") as e:
    trainer.restore(ckpts, target)
  assert not isinstance(e.value, checkpoints.CorruptCheckpointError)


def test_pretraining_lowers_the_contrastive_loss(tmp_path):
  """On the built-in data, 30 steps of B = 16 bring the held-out loss well under
  chance, log(2B - 1), and under its first-epoch value."""
  config = _config(num_epochs=6, passes_per_epoch=5, log_every_steps=10,
                   checkpoint_every_steps=1000)
  run.run(config, str(tmp_path))
  val = [l["loss"] for l in checkpoints.read_metrics(tmp_path) if l["split"] == "val"]
  chance = np.log(2 * 8 - 1)  # validation batches hold 8 pairs
  assert val[-1] < val[0] - 0.05 and val[-1] < chance - 0.1, val


def test_put_replicated_keeps_typed_keys_and_strong_types():
  mesh = mesh_lib.data_mesh()
  key = jax.random.key(3)
  tree = mesh_lib.put_replicated(mesh, {"key": key, "step": 0})
  assert tree["key"].shape == () and tree["key"].sharding == mesh_lib.replicated(mesh)
  assert jax.dtypes.issubdtype(tree["key"].dtype, jax.dtypes.prng_key)
  np.testing.assert_array_equal(jax.random.key_data(tree["key"]), jax.random.key_data(key))
  assert tree["step"].dtype == np.int32 and not tree["step"].weak_type


def test_one_vs_four_devices_equal_at_batch_1024():
  """Same inputs, masks and dropout: the global-batch step is layout independent."""
  report = conftest.run_script("multidevice_step.py", devices=4)
  assert report["batch"] == 1024
  assert np.isfinite(report["loss1"])
  assert abs(report["loss1"] - report["loss4"]) <= 1e-5
  assert report["max_grad_diff"] <= 1e-6
  assert report["max_param_diff"] <= 1e-5
  # Coordinates with |g| < 1e-6 (the key biases, whose true gradient is 0, and the
  # small tail of the others) are compared by gradient only: ~0.3 % of them.
  assert report["near_zero_grad_coords"] <= 0.01 * report["num_params"]


def test_nan_loss_stops_with_step(tmp_path):
  config = _config(**{"optim.learning_rate": 1e30})
  with pytest.raises(FloatingPointError, match=r"loss is (nan|inf|-inf) at step \d+"):
    run.run(config, str(tmp_path))


def test_two_processes_on_loopback_agree_with_one(tmp_path):
  """2 processes x 1 CPU device (gloo collectives) vs 1 process x 2 devices."""
  reference = conftest.run_script("multihost_step.py", f"--out={tmp_path / 'one'}",
                                  devices=2)
  assert reference["devices"] == 2
  procs = conftest.run_processes("tests/multihost_step.py", f"--out={tmp_path / 'two'}",
                                 timeout=300)
  for p in procs:
    assert p.returncode == 0, p.stdout[-4000:]
  reports = [json.loads(p.stdout.strip().splitlines()[-1]) for p in procs]
  assert [(r["process"], r["processes"], r["devices"]) for r in reports] == [(0, 2, 2),
                                                                              (1, 2, 2)]
  one = np.load(tmp_path / "one" / "result.npz")
  two = np.load(tmp_path / "two" / "result.npz")
  assert abs(float(one["loss"]) - float(two["loss"])) <= 1e-5
  for k in one.files:
    np.testing.assert_allclose(one[k], two[k], atol=1e-5, rtol=0, err_msg=k)


def test_two_processes_resume_from_the_same_intact_checkpoint(tmp_path):
  """The latest checkpoint, on storage both processes share, is corrupted: process
  0 alone sets it aside and both resume from the same older step."""
  workdir = tmp_path / "run"
  run.run(_config(num_epochs=2, keep_checkpoints=2), str(workdir))  # checkpoints 3, 4
  assert _corrupt(workdir / "checkpoints" / "4") > 0
  procs = conftest.run_processes(
      "launch.py", "--config=configs/pretrain.py:transformer_m50,runlocal",
      f"--workdir={workdir}", "--config.num_epochs=3", "--config.keep_checkpoints=2",
      timeout=300)
  outs = [p.stdout for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-4000:]
    assert f"resumed from {workdir / 'checkpoints'} at step 3 (epoch 1)" in out, out[-4000:]
  assert "skipping corrupted checkpoint" in outs[0]
  assert "corrupted checkpoint" not in outs[1]  # process 1 only learns the step
  assert [p.name.split(".")[0] for p in (workdir / "corrupted_checkpoints").iterdir()] == ["4"]
  assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()) == [5, 6]
  steps = [(l["step"], l["split"]) for l in checkpoints.read_metrics(workdir)]
  assert len(steps) == len(set(steps)) and steps[-1] == (6, "val")
