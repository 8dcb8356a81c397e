"""A user's mistakes, in every command, are one line on stderr (no traceback unless
--verbosity=1) with exit status 1, and Ctrl-C exits with 130 (coughjax.cli)."""

import re
import subprocess
import sys

import pytest

from coughjax import cli
from coughjax import overrides
from tests.conftest import REPO

ABSL_LOG = re.compile(r"^[IWEF]\d{4} ")


def _run(*args, env=None):
  import os  # pylint: disable=g-import-not-at-top
  return subprocess.run([sys.executable, *map(str, args)], cwd=REPO, capture_output=True,
                        text=True, timeout=300, check=False, env={**os.environ, **(env or {})})


def _one_error_line(proc) -> str:
  assert proc.returncode == cli.EXIT_ERROR, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1, proc.stderr
  assert lines[0].startswith("error: ") and lines[0].endswith("(--verbosity=1 shows where)")
  return lines[0]


def test_a_missing_workdir_is_one_line_and_verbosity_shows_the_traceback(tmp_path):
  missing = tmp_path / "no_such_run"
  line = _one_error_line(_run("-m", "coughjax.predict", f"--workdir={missing}", "a.wav"))
  assert str(missing) in line
  verbose = _run("-m", "coughjax.predict", f"--workdir={missing}", "a.wav", "--verbosity=1")
  assert verbose.returncode != 0 and "Traceback" in verbose.stderr


def test_a_bad_override_is_one_line(tmp_path):
  line = _one_error_line(_run("-m", "coughjax.reproduce", "--table=1", "--runlocal",
                              f"--runs={tmp_path}", "--downstream_set=num_epochs=many"))
  assert "num_epochs=many" in line and "int" in line
  assert not list(tmp_path.iterdir())  # nothing ran


def test_an_invalid_config_value_stops_launch_without_a_traceback(tmp_path):
  proc = _run("launch.py", "--config=configs/pretrain.py:transformer_m50,runlocal",
              "--config.batch_size=0", f"--workdir={tmp_path / 'w'}")
  assert proc.returncode == cli.EXIT_ERROR and "Traceback" not in proc.stderr, proc.stderr
  # launch.py logs its progress at INFO; after that, the message listing each bad key.
  first, *keys = [l for l in proc.stderr.strip().splitlines() if not ABSL_LOG.match(l)]
  assert first.startswith("error: 1 invalid config value(s)")
  assert len(keys) == 1 and keys[0].strip().startswith("config.batch_size=0:")
  assert not (tmp_path / "w").exists()


def test_a_cache_that_is_a_file_is_one_line_naming_coughjax_cache(tmp_path):
  (tmp_path / "file").write_text("")
  line = _one_error_line(_run("-m", "coughjax.cache", "list",
                              env={"COUGHJAX_CACHE": str(tmp_path / "file")}))
  assert "COUGHJAX_CACHE" in line and str(tmp_path / "file") in line


def test_user_errors_and_ctrl_c(capsys, monkeypatch):
  monkeypatch.setattr(cli, "_verbose", lambda: False)

  def raises(error):
    @cli.user_errors
    def main(argv):
      del argv
      raise error
    return main

  for error, status, message in (
      (KeyboardInterrupt("interrupted at step 3; rerun the same command to resume"), 130,
       "interrupted at step 3; rerun the same command to resume"),
      (KeyboardInterrupt(), 130, "interrupted"),
      (FileNotFoundError("x.csv: labels not found"), 1,
       "error: x.csv: labels not found (--verbosity=1 shows where)")):
    with pytest.raises(SystemExit) as stop:
      raises(error)(["cmd"])
    assert stop.value.code == status
    assert capsys.readouterr().err == message + "\n"
  with pytest.raises(ZeroDivisionError):  # a bug keeps its traceback
    raises(ZeroDivisionError("bug"))(["cmd"])
  monkeypatch.setattr(cli, "_verbose", lambda: True)
  with pytest.raises(ValueError):
    raises(ValueError("shown with its traceback"))(["cmd"])


def test_overrides_name_the_key_and_what_it_takes():
  _, downstream = overrides.config_modules()
  config = downstream.get_config("ensemble,runlocal")
  overrides.apply_overrides(config, ["data.name=coswara", "num_epochs=3",
                                     "data.manifest_any_paths=true"])
  assert (config.data.name, config.num_epochs, config.data.manifest_any_paths) == (
      "coswara", 3, True)
  for bad, message in (("data.nmae=x", "no field 'data.nmae'"),
                       ("num_epochs=3.5", "num_epochs takes int values"),
                       ("data.manifest_any_paths=ture", "takes true or false"),
                       ("num_epochs", "not key=value")):
    with pytest.raises(ValueError, match=message):
      overrides.apply_overrides(config, [bad])
