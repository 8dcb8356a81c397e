"""The trainer loop: kill -9 and Ctrl-C at chosen moments, SIGTERM and Ctrl-C on one of
two processes, resuming on another number of devices, refused checkpoints, and no
deprecated JAX API on the way of a tiny pre-training and downstream run."""

import dataclasses
import errno
import json
import math
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import conftest
from configs import pretrain as pretrain_configs
from coughjax import checkpoints
from coughjax.train import checkpointing
from coughjax.train import metrics
from coughjax.train import pretrain
from coughjax.train import run
from coughjax.train import stopping
from coughjax.train import trainer

REPO = pathlib.Path(__file__).resolve().parents[1]
VARIANT = "transformer_m50,runlocal"
# 3 epochs of 2 steps; checkpoints at epoch ends only (and where Ctrl-C stops).
OVERRIDES = {"num_epochs": 3, "checkpoint_every_steps": 100}


def _config(**overrides):
  config = pretrain_configs.get_config(VARIANT)
  for k, v in {**OVERRIDES, **overrides}.items():
    config[k] = v
  config.lock()
  return config


def _launch(workdir, at=None, signal_name=None):
  """launch.py on `workdir`, or tests/interrupted_run.py signalling itself at `at`."""
  script = (["launch.py"] if at is None else
            [str(REPO / "tests" / "interrupted_run.py"), f"--at={at}",
             f"--signal={signal_name}"])
  return subprocess.run(
      [sys.executable, *script, f"--config=configs/pretrain.py:{VARIANT}",
       f"--workdir={workdir}", *(f"--config.{k}={v}" for k, v in OVERRIDES.items())],
      cwd=REPO, capture_output=True, text=True, timeout=300, check=False)


def _tmp_folders(workdir: pathlib.Path) -> list[str]:
  return sorted(str(p.relative_to(workdir)) for p in workdir.rglob("*orbax-checkpoint-tmp*"))


def test_killed_or_interrupted_at_any_moment_resumes_to_the_same_run(tmp_path):
  """kill -9 before the first checkpoint, during it and between a metrics line and
  its checkpoint, and a Ctrl-C mid-epoch, one after the other in one workdir: the
  final rerun logs each (step, split) once, with the losses and the final
  parameters of an uninterrupted run."""
  reference = run.run(_config(), str(tmp_path / "reference"))
  work = tmp_path / "work"
  for at in ("metrics:1:train", "save:2"):  # no checkpoint yet / the first one in flight
    killed = _launch(work, at, "KILL")
    assert killed.returncode == -9, (at, killed.stderr[-3000:])
  # Orbax was still writing step 2 (in a background thread) when the process died.
  assert "checkpoints/2.orbax-checkpoint-tmp" in _tmp_folders(work)

  stopped = _launch(work, "metrics:3:train", "INT")
  assert stopped.returncode == 130, stopped.stderr[-3000:]
  assert stopped.stderr.strip().splitlines()[-1] == (
      "interrupted at step 3; rerun the same command to resume")
  assert "Traceback" not in stopped.stderr + stopped.stdout
  assert not _tmp_folders(work)
  assert 3 in [int(p.name) for p in (work / "checkpoints").iterdir() if p.name.isdigit()]

  killed = _launch(work, "metrics:4:val", "KILL")  # before epoch 1's checkpoint
  assert killed.returncode == -9, killed.stderr[-3000:]
  final = _launch(work)
  assert final.returncode == 0, final.stderr[-3000:]
  assert "resumed from" in final.stderr and "at step 3" in final.stderr
  assert not _tmp_folders(work)

  lines = checkpoints.read_metrics(work)
  keys = [(l["step"], l["split"]) for l in lines]
  assert len(keys) == len(set(keys)), keys
  expected = {(l["step"], l["split"]): l["loss"]
              for l in checkpoints.read_metrics(tmp_path / "reference")}
  assert {(l["step"], l["split"]): l["loss"] for l in lines} == expected
  state, meta = trainer.restore(work / "checkpoints", reference)
  assert int(state.step) == 6 and meta["epochs_done"] == 3
  for x, y in zip(jax.tree.leaves(state.params), jax.tree.leaves(reference.params)):
    np.testing.assert_array_equal(x, y)


def test_metrics_truncation_drops_a_torn_last_line(tmp_path):
  writer = metrics.MetricsWriter(tmp_path)
  for step in (1, 2, 3):
    writer.write(step=step, split="train", loss=1.0)
  with open(writer.path, "a") as f:
    f.write('{"step": 4, "spl')  # a write cut short by kill -9
  writer.truncate_after(2)
  assert [l["step"] for l in checkpoints.read_metrics(tmp_path)] == [1, 2]
  writer.truncate_after(0)  # a fresh start: no checkpoint to resume from
  assert checkpoints.read_metrics(tmp_path) == []
  writer.path.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
  with pytest.raises(ValueError, match=r"metrics.jsonl, line 2: not JSON"):
    writer.truncate_after(1)


def _rewrite_meta(workdir: pathlib.Path, edit) -> None:
  """Applies `edit` to the meta (JSON) of every checkpoint in the workdir."""
  files = list(workdir.glob("*/*/meta/metadata"))
  assert files
  for f in files:
    meta = json.loads(f.read_text())
    edit(meta)
    f.write_text(json.dumps(meta))


def test_old_newer_or_non_finite_checkpoints_are_refused_with_the_reason(tmp_path):
  state = run.run(_config(num_epochs=1), str(tmp_path / "run"))  # checkpoint 2
  longer = _config(num_epochs=2)

  old = tmp_path / "old"  # a workdir from before formats were recorded
  shutil.copytree(tmp_path / "run", old)
  _rewrite_meta(old, lambda m: (m.pop("format"), m.pop("coughjax")))
  message = (r"old/checkpoints/2: written by an older version of coughjax \(a coughjax "
             r"from before .*, workdir format 1\); this one reads workdir format 2 only.*"
             r"Start afresh with a new --workdir")
  saved_config = (old / "config.json").read_text()
  with pytest.raises(checkpoints.WorkdirFormatError, match=message):
    run.run(longer, str(old))
  assert (old / "config.json").read_text() == saved_config  # refused before any write
  # Said before any shape check: an old GRU checkpoint, whose parameter layout has
  # changed since, is said to be old rather than "another config's model".
  gru = pretrain_configs.get_config("gru,runlocal")
  gru_state = pretrain.init_state(pretrain.build_model(gru.model), gru, jax.random.key(0))
  with pytest.raises(checkpoints.WorkdirFormatError, match="older version"):
    trainer.restore(old / "checkpoints", gru_state)
  with pytest.raises(checkpoints.WorkdirFormatError, match="old/best/2: written by an older"):
    checkpoints.restore_params(old / "best")

  newer = tmp_path / "newer"
  shutil.copytree(tmp_path / "run", newer)
  _rewrite_meta(newer, lambda m: m.update(format=checkpoints.WORKDIR_FORMAT + 1,
                                          coughjax="9.0"))
  with pytest.raises(checkpoints.WorkdirFormatError,
                     match=r"a newer version of coughjax \(coughjax 9\.0, workdir format 3\)"):
    run.run(longer, str(newer))

  nan = tmp_path / "nan"  # step 2 rewritten with a NaN-filled first parameter array
  shutil.copytree(tmp_path / "run", nan)
  leaves, treedef = jax.tree.flatten(jax.device_get(state.params))
  leaves[0] = np.full_like(leaves[0], np.nan)
  mgr = checkpoints.manager(nan / "checkpoints", 2, write=True)
  checkpointing.save(mgr, 2, state.replace(params=jax.tree.unflatten(treedef, leaves)),
                     {"epochs_done": 1, "best": None, "bad_epochs": 0})
  mgr.close()
  message = (r"nan/checkpoints/2: the checkpoint of step 2 holds \d+ non-finite parameter "
             r"values .* refused")
  with pytest.raises(checkpoints.NonFiniteCheckpointError, match=message):
    run.run(longer, str(nan))
  with pytest.raises(checkpoints.NonFiniteCheckpointError, match="step 2"):
    checkpoints.restore_params(nan / "checkpoints")


_TINY_RUNS = r"""
import sys
import warnings

sys.path.insert(0, sys.argv[1])
warnings.filterwarnings("error", category=DeprecationWarning, module=r"coughjax(\.|$)")
try:  # the filter is live for coughjax's modules
  warnings.warn_explicit("probe", DeprecationWarning, "trainer.py", 1,
                         module="coughjax.train.trainer")
  raise SystemExit("the DeprecationWarning filter did not fire")
except DeprecationWarning:
  pass

from configs import downstream
from configs import pretrain
from coughjax.train import run

pre = pretrain.get_config("transformer_m50,runlocal")
pre.num_epochs = 1
pre.lock()
run.run(pre, sys.argv[2] + "/pretrain")
ds = downstream.get_config("ensemble,runlocal")
ds.num_runs = ds.num_epochs = 1
ds.encoder_a.checkpoint = ds.encoder_b.checkpoint = sys.argv[2] + "/pretrain"
ds.lock()
run.run(ds, sys.argv[2] + "/downstream")
print("done")
"""


def test_no_deprecated_jax_api_in_coughjax(tmp_path):
  """A tiny pre-training and a downstream ensemble (CP-initialised, DS-masked) with
  every DeprecationWarning attributed to a coughjax module turned into an error
  (pytest's own filters do not reach the subprocess)."""
  proc = subprocess.run([sys.executable, "-c", _TINY_RUNS, str(REPO), str(tmp_path)],
                        cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 0 and proc.stdout.strip().endswith("done"), proc.stderr[-4000:]


def _losses(workdir) -> dict[tuple[int, str], float]:
  lines = checkpoints.read_metrics(workdir)
  keys = [(l["step"], l["split"]) for l in lines]
  assert len(keys) == len(set(keys)), keys
  return {(l["step"], l["split"]): l["loss"] for l in lines}


def _assert_same_run(workdir, reference, atol=1e-5):
  """metrics.jsonl of `workdir` logs each (step, split) of `reference` once, with its
  loss up to float round-off (other device counts add in another order)."""
  got, want = _losses(workdir), _losses(reference)
  assert sorted(got) == sorted(want)
  for k, v in want.items():
    assert abs(got[k] - v) <= atol, (k, got[k], v)


def test_a_signal_to_one_of_two_processes_stops_both_at_one_step(tmp_path):
  """SIGTERM to process 1, then Ctrl-C to process 0, of a 2-process run (gloo): both
  processes stop after the same step with one checkpoint of it and exit 143, then
  130; the same command then finishes the run of one uninterrupted process."""
  run.run(_config(), str(tmp_path / "reference"))
  work = tmp_path / "work"
  launch = [f"--config=configs/pretrain.py:{VARIANT}", f"--workdir={work}",
            *(f"--config.{k}={v}" for k, v in OVERRIDES.items())]
  for at, sig, process, step, code in (("metrics:3:train", "TERM", 1, 3, 143),
                                       ("metrics:5:train", "INT", 0, 5, 130)):
    procs = conftest.run_processes("tests/interrupted_run.py", f"--at={at}",
                                   f"--signal={sig}", f"--only_process={process}", *launch,
                                   timeout=300)
    for p in procs:
      assert p.returncode == code, p.stdout[-3000:]
      assert "Traceback" not in p.stdout
    verb = "interrupted" if sig == "INT" else "stopped by SIGTERM"
    assert procs[0].stdout.strip().splitlines()[-1] == (
        f"{verb} at step {step}; rerun the same command to resume")
    assert not _tmp_folders(work)
    steps = sorted(int(p.name) for p in (work / "checkpoints").iterdir() if p.name.isdigit())
    assert steps[-1] == step, steps
  final = conftest.run_processes("launch.py", *launch, timeout=300)
  for p in final:
    assert p.returncode == 0, p.stdout[-3000:]
    assert "resumed from" in p.stdout and "at step 5" in p.stdout
  _assert_same_run(work, tmp_path / "reference")


def test_a_run_resumes_on_another_number_of_devices(tmp_path):
  """Epoch 1 on 1 device, epoch 2 on 4 (fake) devices, epoch 3 on 1 again: each
  resumes from the checkpoint of the last (the replicated state restored onto the
  other mesh), and the run logs the losses of one uninterrupted 1-device run."""
  reference = run.run(_config(), str(tmp_path / "reference"))
  work = tmp_path / "work"
  run.run(_config(num_epochs=1), str(work))
  four = subprocess.run(
      [sys.executable, "launch.py", f"--config=configs/pretrain.py:{VARIANT}",
       f"--workdir={work}", "--config.num_epochs=2",
       f"--config.checkpoint_every_steps={OVERRIDES['checkpoint_every_steps']}"],
      cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
      env={**os.environ, "XLA_FLAGS": (os.environ.get("XLA_FLAGS", "") + " "
                                       "--xla_force_host_platform_device_count=4")})
  assert four.returncode == 0, four.stderr[-3000:]
  assert "on 4 device(s)" in four.stderr and "resumed from" in four.stderr
  assert "at step 2 (epoch 1)" in four.stderr
  state = run.run(_config(), str(work))
  assert int(state.step) == 6
  _assert_same_run(work, tmp_path / "reference")
  for x, y in zip(jax.tree.leaves(state.params), jax.tree.leaves(reference.params)):
    assert x.sharding == y.sharding  # back on this process's one-device mesh


def test_a_nan_monitor_is_the_worst_value_never_the_best(tmp_path):
  """Validation AUCs NaN (a one-class split), 0.6, 0.7: epochs 1 and 2 improve on
  it, and the best checkpoint is epoch 2's."""
  assert not stopping.better("max", math.nan, None)
  assert stopping.better("max", 0.1, math.nan) and stopping.better("min", 9.0, math.nan)
  assert not stopping.better("min", math.nan, 1.0)
  config = _config()
  task = pretrain.make_task(config)
  aucs = iter([math.nan, 0.6, 0.7])
  validate = task.evaluate
  task = dataclasses.replace(task, evaluate=lambda s: dict(validate(s), auc=next(aucs)),
                             monitor="auc", monitor_mode="max")
  final = trainer.fit(task, config, tmp_path)
  val = [l for l in checkpoints.read_metrics(tmp_path) if l["split"] == "val"]
  assert [l["best"] for l in val] == [False, True, True]
  best, meta = trainer.restore(tmp_path / "best", final)
  assert int(best.step) == 6 and meta["best"] == 0.7 and meta["bad_epochs"] == 0


@pytest.fixture(scope="module")
def _one_epoch(tmp_path_factory) -> tuple[pathlib.Path, trainer.TrainState]:
  workdir = tmp_path_factory.mktemp("one_epoch") / "run"
  return workdir, run.run(_config(num_epochs=1), str(workdir))


def _one_checkpoint(one_epoch, tmp_path) -> tuple[pathlib.Path, trainer.TrainState]:
  """A copy of a workdir with one checkpoint (step 2), and a state of its model."""
  workdir = tmp_path / "run"
  shutil.copytree(one_epoch[0], workdir)
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["2"]
  return workdir, one_epoch[1]


@pytest.mark.parametrize("error", [
    OSError(errno.EIO, "Input/output error"),
    OSError(errno.ENOSPC, "No space left on device"),
    PermissionError(errno.EACCES, "Permission denied"),
    # What TensorStore (Orbax's reader) raises for EIO:
    ValueError('UNAVAILABLE: Error reading local file "x/state/d/0": [OS error 5]'),
    KeyboardInterrupt(),
], ids=["EIO", "ENOSPC", "EACCES", "tensorstore-EIO", "Ctrl-C"])
def test_a_transient_read_error_is_raised_and_no_checkpoint_is_moved(_one_epoch, tmp_path,
                                                                    monkeypatch, error):
  workdir, state = _one_checkpoint(_one_epoch, tmp_path)

  def fail(*args, **kwargs):
    raise error

  monkeypatch.setattr(ocp.CheckpointManager, "restore", fail)
  with pytest.raises(type(error)) as e:
    if isinstance(error, OSError) and error.errno == errno.EIO:
      run.run(_config(num_epochs=2), str(workdir))  # the trainer's own resume
    else:
      mgr = checkpoints.manager(workdir / "checkpoints")
      checkpointing.restore_newest_intact(
          mgr, state, set_aside=workdir / "corrupted_checkpoints")
  assert e.value is error
  assert not (workdir / "corrupted_checkpoints").exists()
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["2"]


@pytest.mark.parametrize("error", [
    FileNotFoundError(errno.ENOENT, "No such file or directory"),
    ValueError('NOT_FOUND: Error opening "zarr" driver: Metadata at "step/.zarray" does '
               "not exist"),
    ValueError("DATA_LOSS: Error reading local file: checksum mismatch"),
], ids=["missing file", "tensorstore-missing", "tensorstore-damaged"])
def test_a_checkpoint_unreadable_of_its_own_is_set_aside(_one_epoch, tmp_path, monkeypatch,
                                                         error):
  workdir, state = _one_checkpoint(_one_epoch, tmp_path)

  def fail(*args, **kwargs):
    raise error

  monkeypatch.setattr(ocp.CheckpointManager, "restore", fail)
  mgr = checkpoints.manager(workdir / "checkpoints")
  with pytest.raises(checkpoints.CorruptCheckpointError, match=r"no checkpoint can be read back"):
    checkpointing.restore_newest_intact(
        mgr, state, set_aside=workdir / "corrupted_checkpoints")
  assert [p.name.split(".")[0] for p in (workdir / "corrupted_checkpoints").iterdir()] == ["2"]
