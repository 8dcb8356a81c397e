"""A workdir belongs to one config: launch.py's default workdir refuses a rerun of
another config (naming the keys) and leaves the workdir as it was; extendable keys,
a copy of the workdir (the protocol's attempts) and older workdirs are accepted."""

import json
import pathlib
import shutil
import subprocess
import sys

import pytest

from configs import downstream as downstream_configs
from configs import pretrain as pretrain_configs
from coughjax.train import fingerprint
from coughjax.train import run
from tests import test_pretrain

REPO = pathlib.Path(__file__).resolve().parents[1]
VARIANT = "transformer_m50,runlocal"


def _config(**changes):
  """The runlocal config of one epoch with `changes` (a__b for the key a.b)."""
  return test_pretrain._config(**{"num_epochs": 1,  # pylint: disable=protected-access
                                  **{k.replace("__", "."): v for k, v in changes.items()}})


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> pathlib.Path:
  """A finished runlocal pre-training in launch.py's default workdir under a temp
  folder: <tmp>/runs/transformer_m50_runlocal."""
  root = tmp_path_factory.mktemp("launch")
  run.run(_config(), str(root / "runs" / "transformer_m50_runlocal"))
  return root


def _snapshot(workdir: pathlib.Path) -> dict[str, bytes]:
  return {str(p.relative_to(workdir)): p.read_bytes()
          for p in sorted(workdir.rglob("*")) if p.is_file()}


def test_launch_refuses_another_config_in_a_finished_default_workdir(finished, tmp_path):
  root = tmp_path / "root"
  shutil.copytree(finished, root)
  workdir = root / "runs" / "transformer_m50_runlocal"
  before = _snapshot(workdir)
  proc = subprocess.run(
      [sys.executable, str(REPO / "launch.py"),
       f"--config={REPO / 'configs' / 'pretrain.py'}:{VARIANT}",
       "--config.model.mask_rate=0.75"],
      cwd=root, capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 1, proc.stderr[-3000:]
  # launch.py logs its progress at INFO; the refusal is one line, the last.
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error: runs/transformer_m50_runlocal holds the training of "
                             "another config: model.mask_rate is 0.75 here, 0.5 there")
  assert "new --workdir" in last
  assert _snapshot(workdir) == before  # config.json, checkpoints, metrics: untouched


def test_extendable_keys_a_copied_workdir_and_an_old_workdir_are_accepted(finished,
                                                                          tmp_path):
  workdir = finished / "runs" / "transformer_m50_runlocal"
  recorded = json.loads((workdir / fingerprint.FINGERPRINT_FILE).read_text())
  assert recorded == fingerprint.fingerprint(_config())
  # More epochs, other logging and checkpointing, other chunking: the same run.
  longer = _config(num_epochs=3, log_every_steps=5, checkpoint_every_steps=7,
                   keep_checkpoints=4, model__chunk_size=4, data__workers=1)
  fingerprint.check(longer, workdir)
  # The protocol's next attempt resumes in a copy of the workdir.
  copy = tmp_path / "work.1"
  shutil.copytree(workdir, copy)
  fingerprint.check(longer, copy)
  # A workdir from before fingerprints: compared with its config.json.
  (copy / fingerprint.FINGERPRINT_FILE).unlink()
  fingerprint.check(longer, copy)
  with pytest.raises(fingerprint.WorkdirConfigError,
                     match=r"optim.learning_rate is 0.01 here, 0.001 there"):
    fingerprint.check(_config(optim__learning_rate=1e-2, model__chunk_size=4), copy)
  with pytest.raises(fingerprint.WorkdirConfigError,
                     match=r'another config: model.mask_rate is 0.0 here, 0.5 there; '
                           r'model.name is "gru" here, "transformer" there; variant is '
                           r'"gru" here, "transformer_m50" there\. '):
    fingerprint.check(pretrain_configs.get_config("gru,runlocal"), copy)
  # A downstream config: every differing key is named, absent ones too.
  with pytest.raises(fingerprint.WorkdirConfigError) as e:
    fingerprint.check(downstream_configs.get_config("transformer,runlocal"), copy)
  assert 'augment.freq_mask_width is 0 here, absent there' in str(e.value)
  for key in ("encoder_a.name", "task", "threshold"):
    assert f" {key}," in str(e.value) or f" {key}." in str(e.value)


def test_a_workdir_without_training_is_claimed_afresh(tmp_path):
  """A run that stopped before its first checkpoint (a wrong data path, say) does
  not bind its workdir: the corrected command runs there."""
  workdir = tmp_path / "run"
  workdir.mkdir()
  fingerprint.record(_config(), workdir)
  other = _config(seed=3)
  fingerprint.check(other, workdir)  # no checkpoint: accepted
  fingerprint.record(other, workdir)
  assert json.loads((workdir / "config.json").read_text())["seed"] == 3
  (workdir / "checkpoints" / "2").mkdir(parents=True)
  with pytest.raises(fingerprint.WorkdirConfigError, match="seed is 0 here, 3 there"):
    fingerprint.check(_config(), workdir)
